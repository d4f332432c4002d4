//! `trellis install` and `trellis uninstall` as users run them: the real binary, through kube-rs's
//! real client (a kubeconfig, server-side apply), against the stand-in API server of
//! control-plane/tests/fake_api (a real one cannot run here), with stand-ins for the cluster's
//! controllers (tests/kube_cluster).

#[path = "../../control-plane/tests/fake_api/mod.rs"]
mod fake_api;
mod kube_cluster;

use std::collections::BTreeMap;
use std::time::Duration;

use kube_cluster::{
    CONFIG_MAPS, CRDS, Cluster, DAEMON_SETS, NAMESPACES, NS, WEBHOOKS, describe, run_trellis,
};
use serde_json::{Value, json};

/// The objects `trellis install --dry-run` prints, parsed.
fn documents(yaml: &str) -> Vec<Value> {
    trellis_api::load::split_documents(yaml)
        .iter()
        .map(|doc| serde_saphyr::from_str::<Value>(doc.text).unwrap_or_else(|e| panic!("{e}\n{}", doc.text)))
        .collect()
}

/// Every object's resourceVersion, by `Kind namespace/name`.
fn versions(cluster: &Cluster) -> BTreeMap<String, String> {
    cluster
        .everything()
        .into_iter()
        .map(|(_, o)| {
            (describe(&o), o["metadata"]["resourceVersion"].as_str().unwrap_or_default().to_owned())
        })
        .collect()
}

fn lines_with<'a>(text: &'a str, word: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.trim_start().starts_with(word)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_creates_every_object_and_a_second_install_changes_nothing() {
    let cluster = Cluster::start().await;
    let dry = cluster.trellis(&["install", "--dry-run"]).await;
    dry.assert_ok();
    let rendered = documents(&dry.stdout);
    assert!(rendered.len() >= 15, "{}", dry.stdout);

    let first = cluster.trellis(&["install", "--timeout", "60s"]).await;
    first.assert_ok();
    assert!(first.stdout.contains("✔ Trellis is installed and ready in trellis-system"), "{}", first.stdout);
    assert!(first.stdout.contains("CRDs established"), "{}", first.stdout);
    assert!(first.stdout.contains("ready      Deployment trellis-system/trellisd"), "{}", first.stdout);
    assert!(
        first.stdout.contains("ready      MutatingWebhookConfiguration trellis-sidecar-injector"),
        "{}",
        first.stdout
    );
    // Every rendered object is on the cluster, labelled as install's.
    let labelled = cluster.labelled();
    for object in &rendered {
        let name = describe(object);
        assert!(labelled.contains(&name), "{name} is not on the cluster (or not labelled)");
    }
    assert_eq!(labelled.len(), rendered.len(), "{labelled:?}");
    assert_eq!(lines_with(&first.stdout, "created").len(), rendered.len(), "{}", first.stdout);

    // The injector's caBundle (not install's field) survives a second install, which changes
    // nothing at all.
    let before = versions(&cluster);
    let second = cluster.trellis(&["install", "--timeout", "60s"]).await;
    second.assert_ok();
    assert_eq!(lines_with(&second.stdout, "unchanged").len(), rendered.len(), "{}", second.stdout);
    assert!(lines_with(&second.stdout, "created").is_empty(), "{}", second.stdout);
    assert!(lines_with(&second.stdout, "configured").is_empty(), "{}", second.stdout);
    assert!(second.stdout.contains(&format!("{} objects, {} unchanged", rendered.len(), rendered.len())));
    assert_eq!(versions(&cluster), before, "a second install changed objects");
    let webhook = cluster.api.get(WEBHOOKS, "", "trellis-sidecar-injector").unwrap();
    assert!(webhook["webhooks"][0]["clientConfig"]["caBundle"].is_string(), "{webhook}");

    // A changed value is an upgrade: that object is configured, the rest unchanged.
    let third = cluster.trellis(&["install", "--set", "injector.replicaCount=3"]).await;
    third.assert_ok();
    let configured = lines_with(&third.stdout, "configured");
    assert_eq!(configured, ["  configured Deployment trellis-system/trellis-injector"], "{}", third.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_prints_the_manifests_and_touches_nothing() {
    let cluster = Cluster::start().await;
    let run = cluster.trellis(&["install", "--dry-run", "-n", "mesh"]).await;
    run.assert_ok();
    assert!(run.stdout.starts_with("---\n# Source: "), "{}", &run.stdout[..200.min(run.stdout.len())]);
    let objects = documents(&run.stdout);
    let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(kinds[0], "Namespace");
    for kind in
        ["CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ConfigMap", "Service", "Deployment"]
    {
        assert!(kinds.contains(&kind), "{kind} not rendered: {kinds:?}");
    }
    assert_eq!(*kinds.last().unwrap(), "MutatingWebhookConfiguration");
    for object in &objects {
        assert_eq!(
            object["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "trellis",
            "{}",
            describe(object)
        );
        assert_eq!(
            object["metadata"]["labels"]["install.trellis.io/release"],
            "trellis",
            "{}",
            describe(object)
        );
    }
    let deployment = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
    assert_eq!(deployment["metadata"]["namespace"], "mesh");
    assert_eq!(cluster.api.requests(), Vec::<String>::new(), "--dry-run talked to the API server");
    // No cluster needed at all.
    run_trellis(&["install", "--dry-run"], None).await.assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uninstall_removes_what_install_made_and_nothing_else() {
    let cluster = Cluster::start().await;
    cluster.trellis(&["install"]).await.assert_ok();
    // A user's objects: one in the control plane's namespace, one namespace of their own.
    let user_map = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "users-own", "namespace": NS}, "data": {"a": "b"}});
    cluster.api.apply(CONFIG_MAPS, user_map);
    cluster
        .api
        .apply(NAMESPACES, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}));
    let crds = cluster.api.list(CRDS).len();
    assert_eq!(crds, trellis_api::crds::all().len());

    let run = cluster.trellis(&["uninstall"]).await;
    run.assert_ok();
    assert!(run.stdout.contains("✔ Trellis is uninstalled"), "{}", run.stdout);
    assert!(run.stdout.contains("--purge"), "{}", run.stdout);
    // The webhook goes first.
    let deleted = lines_with(&run.stdout, "deleted");
    assert!(deleted[0].contains("MutatingWebhookConfiguration trellis-sidecar-injector"), "{deleted:?}");
    // Left: what holds users' data (the namespace, the CRDs), the user's objects, and what
    // trellisd made itself (its root ConfigMap), nothing else install made.
    let mut expected: Vec<String> = vec![format!("Namespace {NS}")];
    expected.extend(
        trellis_api::crds::all()
            .iter()
            .map(|c| format!("CustomResourceDefinition {}", c.metadata.name.as_deref().unwrap_or_default())),
    );
    expected.sort();
    assert_eq!(cluster.labelled().into_iter().collect::<Vec<_>>(), expected);
    cluster.until("the controllers' pods are collected", |api| api.list(kube_cluster::PODS).is_empty()).await;
    let in_namespace: Vec<String> = cluster
        .everything()
        .into_iter()
        .filter(|(_, o)| o["metadata"]["namespace"] == NS)
        .map(|(_, o)| describe(&o))
        .collect();
    assert_eq!(
        in_namespace,
        [format!("ConfigMap {NS}/istio-ca-root-cert"), format!("ConfigMap {NS}/users-own")],
        "the namespace's own objects"
    );

    // Idempotent.
    let again = cluster.trellis(&["uninstall"]).await;
    again.assert_ok();
    assert!(lines_with(&again.stdout, "deleted").is_empty(), "{}", again.stdout);

    // --purge: the CRDs (and their kinds) and the namespace install created.
    let purge = cluster.trellis(&["uninstall", "--purge"]).await;
    purge.assert_ok();
    assert!(cluster.labelled().is_empty(), "{:?}", cluster.labelled());
    assert!(cluster.api.list(CRDS).is_empty());
    assert!(
        !cluster.api.collections().iter().any(|c| c.contains("istio.io")),
        "{:?}",
        cluster.api.collections()
    );
    assert!(cluster.api.get(NAMESPACES, "", NS).is_none());
    assert!(cluster.api.get(NAMESPACES, "", "shop").is_some(), "a namespace install did not make is kept");
    let nothing = cluster.trellis(&["uninstall", "--purge"]).await;
    nothing.assert_ok();
    assert!(nothing.stdout.contains("Nothing to remove"), "{}", nothing.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_namespace_is_used_and_never_purged() {
    let cluster = Cluster::start().await;
    cluster.api.apply(NAMESPACES, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}));
    let run = cluster.trellis(&["install"]).await;
    run.assert_ok();
    assert!(
        run.stdout.contains(&format!("kept       Namespace {NS} (it existed before install")),
        "{}",
        run.stdout
    );
    let namespace = cluster.api.get(NAMESPACES, "", NS).unwrap();
    assert!(
        namespace["metadata"]["labels"].is_null(),
        "install labelled a namespace it did not create: {namespace}"
    );
    cluster.trellis(&["uninstall", "--purge"]).await.assert_ok();
    assert!(cluster.api.get(NAMESPACES, "", NS).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_prunes_what_the_chart_no_longer_renders() {
    let cluster = Cluster::start().await;
    let with_cni = cluster.trellis(&["install", "--set", "cni.enabled=true"]).await;
    with_cni.assert_ok();
    assert!(
        with_cni.stdout.contains("ready      DaemonSet trellis-system/trellis-cni-node"),
        "{}",
        with_cni.stdout
    );
    assert!(cluster.api.get(DAEMON_SETS, NS, "trellis-cni-node").is_some());

    let without = cluster.trellis(&["install"]).await;
    without.assert_ok();
    assert!(
        without.stdout.contains("pruned     DaemonSet trellis-system/trellis-cni-node"),
        "{}",
        without.stdout
    );
    assert!(cluster.api.get(DAEMON_SETS, NS, "trellis-cni-node").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_that_is_down_or_hangs_is_a_clear_error_not_a_hang() {
    // Nothing listens there.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kube_cluster::write_kubeconfig(&dir, &format!("http://127.0.0.1:{port}"));
    for command in [&["install"][..], &["uninstall"]] {
        let run = run_trellis(command, Some(&kubeconfig)).await;
        assert!(!run.success);
        assert!(
            run.stderr
                .contains(&format!("cannot reach the Kubernetes API server at http://127.0.0.1:{port}")),
            "{}",
            run.stderr
        );
        assert!(run.stderr.to_lowercase().contains("connection refused"), "{}", run.stderr);
        assert!(run.took < Duration::from_secs(20), "took {:?}", run.took);
    }

    // Up, then it stops answering at all: bounded by --timeout.
    let cluster = Cluster::start().await;
    cluster.api.hang();
    let run = cluster.trellis(&["install", "--timeout", "2s"]).await;
    assert!(!run.success);
    assert!(
        run.stderr
            .contains(&format!("no answer from the Kubernetes API server at {} within 2s", cluster.api.url)),
        "{}",
        run.stderr
    );
    assert!(run.took < Duration::from_secs(10), "took {:?}", run.took);

    // No kubeconfig at all.
    let run = run_trellis(&["install"], None).await;
    assert!(!run.success);
    assert!(run.stderr.contains("no Kubernetes configuration"), "{}", run.stderr);
    let run = run_trellis(&["install", "--kubeconfig", "/nonexistent/config"], None).await;
    assert!(run.stderr.contains("cannot read the kubeconfig /nonexistent/config"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_object_is_named() {
    let cluster = Cluster::start().await;
    cluster.api.fail_requests(
        Some("PATCH"),
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/trellisd",
        403,
        "Forbidden",
    );
    let run = cluster.trellis(&["install"]).await;
    assert!(!run.success);
    assert!(
        run.stderr.contains("cannot apply ClusterRoleBinding trellisd (from templates/trellisd-rbac.yaml"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("clusterrolebindings \"trellisd\" is forbidden: User \"system:serviceaccount:ci:installer\" cannot patch"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("(403 Forbidden)"), "{}", run.stderr);
    assert!(run.stderr.contains("trellis check --pre"), "{}", run.stderr);
    // Stopped there: nothing after it in the chart's order was applied.
    assert!(cluster.api.get(WEBHOOKS, "", "trellis-sidecar-injector").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_that_never_becomes_ready_times_out_naming_what_is_not() {
    let cluster = Cluster::start().await;
    cluster.knobs(|k| {
        k.crashing.insert("trellis-injector".to_owned());
        k.ca_bundle = false;
    });
    let run = cluster.trellis(&["install", "--timeout", "8s"]).await;
    assert!(!run.success, "{}", run.stdout);
    assert!(run.took < Duration::from_secs(25), "took {:?}", run.took);
    let stderr = &run.stderr;
    assert!(stderr.contains("timed out after 8s waiting for the control plane; not ready:"), "{stderr}");
    assert!(
        stderr.contains("Deployment trellis-system/trellis-injector: 0 of 2 replicas available"),
        "{stderr}"
    );
    assert!(
        stderr.contains("pod trellis-injector-0: container injector waiting: CrashLoopBackOff (back-off 40s restarting failed container)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("MutatingWebhookConfiguration trellis-sidecar-injector: no caBundle yet"),
        "{stderr}"
    );
    assert!(!stderr.contains("Deployment trellis-system/trellisd:"), "trellisd is ready: {stderr}");
    // Progress was shown while waiting.
    assert!(run.stdout.contains("waiting    Deployment trellis-system/trellis-injector"), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_named() {
    let cluster = Cluster::start().await;
    for (args, expected) in [
        (&["install", "--timeout", "5x"][..], "\"5x\" is not a duration"),
        (&["install", "-n", "Trellis_System"], "-n \"Trellis_System\" is not a namespace name"),
        (&["install", "--release", "a b"], "--release \"a b\" is not a valid label value"),
        (&["install", "--dry-run", "--set", "novalue"], "novalue"),
        (&["install", "--dry-run", "-f", "/nonexistent/values.yaml"], "/nonexistent/values.yaml"),
        (&["uninstall", "--timeout=-1s"], "\"-1s\" is not a duration"),
    ] {
        let run = cluster.trellis(args).await;
        assert!(!run.success, "{args:?}");
        assert!(run.stderr.contains(expected), "{args:?}: {}", run.stderr);
    }
    assert_eq!(cluster.api.requests(), Vec::<String>::new(), "bad input reached the API server");
}
