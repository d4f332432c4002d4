//! `trellis check` as users run it: the real binary, through kube-rs's real client, against the
//! stand-in API server (control-plane/tests/fake_api) with a control plane that `trellis
//! install` put there and stand-ins for the cluster's controllers (tests/kube_cluster). A
//! healthy cluster passes; then one thing at a time is broken, and check names it (and only it).

#[path = "../../control-plane/tests/fake_api/mod.rs"]
mod fake_api;
mod kube_cluster;

use std::collections::BTreeSet;

use kube_cluster::{
    CONFIG_MAPS, CRDS, Cluster, DAEMON_SETS, NAMESPACES, NS, PODS, SLICES, WEBHOOKS, base64,
    certificate_expiring_in, certificate_until, run_trellis,
};
use serde_json::{Value, json};

const SYNCZ: &str = "/api/v1/namespaces/trellis-system/services/trellisd:15014/proxy/debug/syncz";
const PEER_AUTHENTICATIONS: &str = "peerauthentications.security.istio.io";

fn syncz(status: &str) -> Value {
    json!({"proxies": [
        {"id": "sidecar~10.0.0.5~web-0.shop~shop.svc.cluster.local", "namespace": "shop", "workload": "web",
         "status": "SYNCED", "types": {"settings": {"sent": 2, "acked": 2, "held": 1}}},
        {"id": "sidecar~10.0.0.6~api-0.shop~shop.svc.cluster.local", "namespace": "shop", "workload": "api",
         "status": status, "types": {}},
    ], "rejectedConfig": []})
}

/// The results of `trellis check -o json`: (description, result) of each check, and success.
struct Results {
    checks: Vec<(String, String, Value)>,
    success: bool,
    code: Option<i32>,
    text: String,
}

impl Results {
    fn with(&self, result: &str) -> BTreeSet<&str> {
        self.checks.iter().filter(|(_, r, _)| r == result).map(|(d, _, _)| d.as_str()).collect()
    }

    fn failed(&self) -> BTreeSet<&str> {
        self.with("error")
    }

    fn detail(&self, description: &str) -> String {
        let check = self.checks.iter().find(|(d, _, _)| d == description);
        let check = check.unwrap_or_else(|| panic!("no check {description:?}:\n{}", self.text));
        format!(
            "{} (hint: {})",
            check.2["detail"].as_str().unwrap_or_default(),
            check.2["hint"].as_str().unwrap_or_default()
        )
    }
}

async fn check(cluster: &Cluster, extra: &[&str]) -> Results {
    let mut args = vec!["check", "-o", "json"];
    args.extend_from_slice(extra);
    let run = cluster.trellis(&args).await;
    let report: Value =
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}\n{}", run.stdout, run.stderr));
    let checks = report["categories"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["checks"].as_array().unwrap().clone())
        .map(|c| (c["description"].as_str().unwrap().to_owned(), c["result"].as_str().unwrap().to_owned(), c))
        .collect();
    let success = report["success"].as_bool().unwrap();
    assert_eq!(success, run.success, "the exit status and the report disagree");
    Results { checks, success, code: run.code, text: run.stdout }
}

/// A cluster with Trellis installed and settled, a namespace in the mesh with an injected pod,
/// and trellisd's sync report reachable through the API server's service proxy.
async fn healthy() -> Cluster {
    let cluster = Cluster::start().await;
    cluster.trellis(&["install", "--timeout", "60s"]).await.assert_ok();
    cluster.api.apply(
        NAMESPACES,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"istio-injection": "enabled"}}}),
    );
    cluster.api.apply(PODS, pod("web-0", true, "ghcr.io/trellis-mesh/proxy:0.1.0"));
    cluster.api.serve_raw(SYNCZ, 200, syncz("SYNCED"));
    cluster
}

fn pod(name: &str, injected: bool, proxy_image: &str) -> Value {
    let mut containers = vec![json!({"name": "app", "image": "shop/web:1"})];
    if injected {
        containers.push(json!({"name": "istio-proxy", "image": proxy_image}));
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "shop"},
        "spec": {"containers": containers}, "status": {"phase": "Running"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_on_a_healthy_cluster() {
    let cluster = healthy().await;
    let table = cluster.trellis(&["check"]).await;
    table.assert_ok();
    // Every CRD the chart installs (a new Istio kind adds one).
    let installed = format!("✔ the Istio CRDs are installed ({} CRDs)", trellis_api::crds::all().len());
    for line in [
        "kubernetes-api\n--------------\n✔ can initialize the client",
        "✔ can query the Kubernetes API (v1.33.0)",
        "✔ is running a supported Kubernetes version (1.33)",
        installed.as_str(),
        "✔ the Istio CRDs are current",
        "✔ trellisd is ready (1 of 1 replicas available)",
        "✔ the sidecar injector is ready (2 of 2 replicas available)",
        "✔ the injection webhook is configured (calls trellis-system/trellis-injector)",
        "✔ the webhook has a valid caBundle (CN=Trellis test root, expires",
        "✔ the injector Service has ready endpoints (2 ready)",
        "✔ the CA's root certificate is published (CN=Trellis test root)",
        "✔ the root certificate is not about to expire (expires in",
        "– the CNI agent is ready on every node (skipped: CNI mode is off",
        "✔ the control plane accepts every Istio resource",
        "✔ every connected proxy is synced (2 connected)",
        // The app's pod and the chart's ingress gateway (on by default) both run the proxy.
        "✔ proxies run the control plane's version (2 injected pods on 0.1.0)",
        "✔ pods of injection-enabled namespaces have a sidecar (1 namespace labelled istio-injection=enabled)",
        "Status check results are ✔",
    ] {
        assert!(table.stdout.contains(line), "missing {line:?} in:\n{}", table.stdout);
    }
    assert!(!table.stdout.contains('✖'), "{}", table.stdout);
    let results = check(&cluster, &[]).await;
    assert!(results.success && results.failed().is_empty(), "{}", results.text);
    assert!(results.with("warning").is_empty(), "{}", results.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_each_failure_one_at_a_time() {
    let cluster = healthy().await;
    assert!(check(&cluster, &[]).await.failed().is_empty());

    // A missing CRD.
    let crd = cluster.api.get(CRDS, "", PEER_AUTHENTICATIONS).unwrap();
    cluster.api.delete(CRDS, "", PEER_AUTHENTICATIONS);
    let r = check(&cluster, &[]).await;
    assert_eq!(r.failed(), BTreeSet::from(["the Istio CRDs are installed"]), "{}", r.text);
    assert_eq!(r.code, Some(1));
    assert!(r.detail("the Istio CRDs are installed").contains(&format!("missing: {PEER_AUTHENTICATIONS}")));
    assert!(r.detail("the Istio CRDs are installed").contains("trellis install"));
    cluster.api.apply(CRDS, crd.clone());

    // An outdated CRD.
    let mut old = crd.clone();
    old["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"] = json!({"type": "object"});
    cluster.api.apply(CRDS, old);
    let r = check(&cluster, &[]).await;
    assert_eq!(r.failed(), BTreeSet::from(["the Istio CRDs are current"]), "{}", r.text);
    assert!(r.detail("the Istio CRDs are current").contains(&format!("{PEER_AUTHENTICATIONS}: version")));
    cluster.api.apply(CRDS, crd);
    assert!(check(&cluster, &[]).await.failed().is_empty());

    // The webhook without a caBundle (the injector never wrote it).
    cluster.knobs(|k| k.ca_bundle = false);
    let set_bundle = |bundle: Value| {
        cluster.api.update(WEBHOOKS, "", "trellis-sidecar-injector", |w| {
            for hook in w["webhooks"].as_array_mut().unwrap() {
                hook["clientConfig"]["caBundle"] = bundle.clone();
            }
        });
    };
    set_bundle(Value::Null);
    let r = check(&cluster, &[]).await;
    assert_eq!(r.failed(), BTreeSet::from(["the webhook has a valid caBundle"]), "{}", r.text);
    assert!(r.detail("the webhook has a valid caBundle").contains("has no caBundle"), "{}", r.text);
    // ... with one that expired.
    set_bundle(json!(base64(certificate_until(2025).as_bytes())));
    let r = check(&cluster, &[]).await;
    assert_eq!(r.failed(), BTreeSet::from(["the webhook has a valid caBundle"]), "{}", r.text);
    assert!(
        r.detail("the webhook has a valid caBundle")
            .contains("CN=Trellis test root expired on Jan  1 00:00:00 2025")
    );
    // ... and with one that is not a certificate.
    set_bundle(json!(base64(b"not a certificate")));
    let r = check(&cluster, &[]).await;
    assert!(
        r.detail("the webhook has a valid caBundle").contains("caBundle: no PEM certificate"),
        "{}",
        r.text
    );
    set_bundle(json!(base64(cluster.ca_pem.as_bytes())));
    cluster.knobs(|k| k.ca_bundle = true);

    // trellisd not ready: its pod crashes.
    cluster.knobs(|k| {
        k.crashing.insert("trellisd".to_owned());
    });
    cluster
        .until("trellisd unavailable", |api| {
            api.get(kube_cluster::DEPLOYMENTS, NS, "trellisd").unwrap()["status"]["availableReplicas"] == 0
        })
        .await;
    let r = check(&cluster, &[]).await;
    assert_eq!(r.failed(), BTreeSet::from(["trellisd is ready"]), "{}", r.text);
    let detail = r.detail("trellisd is ready");
    assert!(detail.contains("Deployment trellis-system/trellisd: 0 of 1 replicas available"), "{detail}");
    assert!(detail.contains("pod trellisd-0: container trellisd waiting: CrashLoopBackOff"), "{detail}");
    assert!(detail.contains("kubectl -n trellis-system logs deploy/trellisd"), "{detail}");
    cluster.knobs(|k| k.crashing.clear());
    cluster
        .until("trellisd available", |api| {
            api.get(kube_cluster::DEPLOYMENTS, NS, "trellisd").unwrap()["status"]["availableReplicas"] == 1
        })
        .await;

    // The injector's Service without endpoints.
    cluster.knobs(|k| k.endpoints = false);
    cluster.api.delete(SLICES, NS, "trellis-injector-x7k2p");
    let r = check(&cluster, &[]).await;
    assert_eq!(r.failed(), BTreeSet::from(["the injector Service has ready endpoints"]), "{}", r.text);
    cluster.knobs(|k| k.endpoints = true);
    cluster.until("endpoints back", |api| api.get(SLICES, NS, "trellis-injector-x7k2p").is_some()).await;

    // A pod of an injection-enabled namespace without a sidecar.
    cluster.api.apply(PODS, pod("legacy-0", false, ""));
    let r = check(&cluster, &[]).await;
    assert_eq!(
        r.failed(),
        BTreeSet::from(["pods of injection-enabled namespaces have a sidecar"]),
        "{}",
        r.text
    );
    let detail = r.detail("pods of injection-enabled namespaces have a sidecar");
    assert!(detail.contains("1 pod without the istio-proxy container: shop/legacy-0"), "{detail}");
    assert!(detail.contains("restart them: kubectl -n shop rollout restart deployment"), "{detail}");
    cluster.api.delete(PODS, "shop", "legacy-0");

    // A proxy that is not synced.
    cluster.api.serve_raw(SYNCZ, 200, syncz("STALE"));
    let r = check(&cluster, &[]).await;
    assert_eq!(r.failed(), BTreeSet::from(["every connected proxy is synced"]), "{}", r.text);
    assert!(
        r.detail("every connected proxy is synced").contains("1 of 2 not synced: api-0.shop: STALE"),
        "{}",
        r.text
    );
    // trellisd's report out of reach: skipped with the reason, not failed.
    cluster.api.serve_raw(SYNCZ, 503, json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": "no endpoints available for service \"trellisd\"", "reason": "ServiceUnavailable", "code": 503}));
    let r = check(&cluster, &[]).await;
    assert!(r.failed().is_empty(), "{}", r.text);
    assert!(r.with("skipped").contains("every connected proxy is synced"), "{}", r.text);
    assert!(
        r.detail("every connected proxy is synced").contains("port-forward deploy/trellisd 15014"),
        "{}",
        r.text
    );
    cluster.api.serve_raw(SYNCZ, 200, syncz("SYNCED"));

    // A sidecar of another version: a warning, not a failure.
    cluster.api.apply(PODS, pod("old-0", true, "ghcr.io/trellis-mesh/proxy:0.0.9"));
    let r = check(&cluster, &[]).await;
    assert!(r.failed().is_empty() && r.success, "{}", r.text);
    assert_eq!(r.with("warning"), BTreeSet::from(["proxies run the control plane's version"]), "{}", r.text);
    assert!(r.detail("proxies run the control plane's version").contains("shop/old-0 (0.0.9)"), "{}", r.text);
    cluster.api.delete(PODS, "shop", "old-0");

    // The root certificate: about to expire (a warning), expired (a failure).
    let set_root = |pem: String| {
        cluster
            .api
            .update(CONFIG_MAPS, NS, "istio-ca-root-cert", |m| m["data"]["root-cert.pem"] = json!(pem));
    };
    set_root(certificate_expiring_in(10));
    let r = check(&cluster, &[]).await;
    assert!(r.failed().is_empty(), "{}", r.text);
    assert_eq!(
        r.with("warning"),
        BTreeSet::from(["the root certificate is not about to expire"]),
        "{}",
        r.text
    );
    let detail = r.detail("the root certificate is not about to expire");
    assert!(detail.contains("expires in 9 days") || detail.contains("expires in 10 days"), "{detail}");
    set_root(certificate_until(2025));
    let r = check(&cluster, &[]).await;
    assert_eq!(r.failed(), BTreeSet::from(["the root certificate is not about to expire"]), "{}", r.text);
    cluster.api.delete(CONFIG_MAPS, NS, "istio-ca-root-cert");
    cluster.knobs(|k| k.root_pem = None);
    let r = check(&cluster, &[]).await;
    assert_eq!(r.failed(), BTreeSet::from(["the CA's root certificate is published"]), "{}", r.text);
    cluster.api.apply(
        CONFIG_MAPS,
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "istio-ca-root-cert", "namespace": NS},
            "data": {"root-cert.pem": cluster.ca_pem}}),
    );

    // The CNI agent not ready on every node.
    cluster.api.apply(
        DAEMON_SETS,
        json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "trellis-cni-node", "namespace": NS},
            "spec": {"selector": {"matchLabels": {"app": "trellis-cni-node"}}}}),
    );
    cluster.knobs(|k| {
        k.crashing.insert("trellis-cni-node".to_owned());
    });
    cluster
        .until("the DaemonSet's status", |api| {
            api.get(DAEMON_SETS, NS, "trellis-cni-node").unwrap()["status"]["desiredNumberScheduled"] == 1
        })
        .await;
    let r = check(&cluster, &[]).await;
    assert_eq!(r.failed(), BTreeSet::from(["the CNI agent is ready on every node"]), "{}", r.text);
    assert!(r.detail("the CNI agent is ready on every node").contains("ready on 0 of 1 nodes"), "{}", r.text);
    cluster.knobs(|k| k.crashing.clear());
    cluster
        .until("the agent ready", |api| {
            api.get(DAEMON_SETS, NS, "trellis-cni-node").unwrap()["status"]["numberReady"] == 1
        })
        .await;
    let r = check(&cluster, &[]).await;
    assert!(r.failed().is_empty(), "{}", r.text);
    assert!(r.with("success").contains("the CNI agent is ready on every node"), "{}", r.text);

    // The whole control plane in another namespace than the one asked: named, the rest skipped.
    let r = check(&cluster, &["-n", "elsewhere"]).await;
    assert!(r.failed().contains("the control plane namespace exists"), "{}", r.text);
    assert!(r.failed().contains("the injection webhook is configured"), "{}", r.text);
    assert!(r.detail("the control plane namespace exists").contains("no namespace elsewhere"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_pre_before_install() {
    let cluster = Cluster::start().await;
    let r = check(&cluster, &["--pre"]).await;
    assert!(r.success && r.failed().is_empty(), "{}", r.text);
    for expected in [
        "the control plane namespace does not exist yet",
        "Trellis is not installed yet",
        "no Istio control plane is installed",
        "can create CustomResourceDefinitions",
        "can create ClusterRoles",
        "can create Deployments",
        "can create MutatingWebhookConfigurations",
        "can create Namespaces",
    ] {
        assert!(r.with("success").contains(expected), "{expected} did not pass:\n{}", r.text);
    }

    // No permission for one kind.
    cluster.api.deny_access("patch", "rbac.authorization.k8s.io", "clusterroles");
    let r = check(&cluster, &["--pre"]).await;
    assert_eq!(r.failed(), BTreeSet::from(["can create ClusterRoles"]), "{}", r.text);
    assert!(
        r.detail("can create ClusterRoles")
            .contains("not allowed to patch clusterroles (rbac.authorization.k8s.io API group) cluster-wide"),
        "{}",
        r.text
    );

    // An old cluster, Istio's injector, Trellis already there.
    let cluster = Cluster::start().await;
    cluster.api.set_version("1", "27");
    cluster.api.apply(
        WEBHOOKS,
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "istio-sidecar-injector"}, "webhooks": []}),
    );
    let r = check(&cluster, &["--pre"]).await;
    assert_eq!(
        r.failed(),
        BTreeSet::from(["is running a supported Kubernetes version", "no Istio control plane is installed"]),
        "{}",
        r.text
    );
    assert!(
        r.detail("is running a supported Kubernetes version").contains("Kubernetes 1.27 is older than 1.29")
    );
    assert!(
        r.detail("no Istio control plane is installed")
            .contains("MutatingWebhookConfiguration istio-sidecar-injector")
    );

    let cluster = healthy().await;
    let r = check(&cluster, &["--pre"]).await;
    assert_eq!(r.failed(), BTreeSet::from(["Trellis is not installed yet"]), "{}", r.text);
    assert!(
        r.detail("Trellis is not installed yet").contains("`trellis check -n trellis-system`"),
        "{}",
        r.text
    );
    assert_eq!(r.with("warning"), BTreeSet::from(["the control plane namespace does not exist yet"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_without_an_api_server_fails_first_and_stops() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kube_cluster::write_kubeconfig(&dir, &format!("http://127.0.0.1:{port}"));
    let run = run_trellis(&["check"], Some(&kubeconfig)).await;
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    assert!(run.stdout.contains("✔ can initialize the client"), "{}", run.stdout);
    assert!(run.stdout.contains("✖ can query the Kubernetes API"), "{}", run.stdout);
    assert!(run.stdout.to_lowercase().contains("connection refused"), "{}", run.stdout);
    assert!(run.stdout.contains("hint: is the API server up"), "{}", run.stdout);
    assert!(!run.stdout.contains("trellis-crds"), "{}", run.stdout);

    let cluster = Cluster::start().await;
    cluster.api.hang();
    let run = cluster.trellis(&["check", "--timeout", "2s"]).await;
    assert_eq!(run.code, Some(1));
    assert!(run.stdout.contains("no answer from"), "{}", run.stdout);
    assert!(run.took.as_secs() < 10, "{:?}", run.took);

    let run = run_trellis(&["check", "-n", "Bad"], Some(&kubeconfig)).await;
    assert_eq!(run.code, Some(2));
    assert!(run.stderr.contains("-n \"Bad\" is not a namespace name"), "{}", run.stderr);
}
