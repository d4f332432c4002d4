//! `trellis analyze` as users run it: the real binary over real files (a healthy mesh,
//! tests/analyze/shop.yaml, with one thing broken at a time), standard input, bad input, and a
//! live cluster (the stand-in API server of control-plane/tests/fake_api, through kube-rs's real
//! client); and Istio's own analyzer test data (shared/istio-conformance) where Trellis has the
//! same check.

#[path = "../../control-plane/tests/fake_api/mod.rs"]
mod fake_api;
mod kube_cluster;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

fn shop() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/analyze/shop.yaml")).unwrap()
}

fn trellis(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(args)
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run trellis");
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// What a run reported: its exit code and its JSON report.
struct Analysis {
    code: Option<i32>,
    report: Value,
    stderr: String,
}

impl Analysis {
    /// `(code, "Kind ns/name")` of every finding.
    fn found(&self) -> BTreeSet<(String, String)> {
        self.report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| (f["code"].as_str().unwrap().to_owned(), subject(&f["resources"][0])))
            .collect()
    }

    fn codes(&self) -> BTreeSet<String> {
        self.found().into_iter().map(|(code, _)| code).collect()
    }

    /// The findings with this code.
    fn with_code(&self, code: &str) -> Vec<&Value> {
        self.report["findings"].as_array().unwrap().iter().filter(|f| f["code"] == code).collect()
    }
}

fn subject(resource: &Value) -> String {
    let kind = resource["kind"].as_str().unwrap_or("?");
    let name = resource["name"].as_str().unwrap_or("?");
    match resource["namespace"].as_str() {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// Analyzes the documents (joined into one file) with `-o json`.
fn analyze(documents: &[&str]) -> Analysis {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    std::fs::write(&path, documents.join("\n---\n")).unwrap();
    analyze_paths(&[path])
}

fn analyze_paths(paths: &[PathBuf]) -> Analysis {
    let mut args = vec!["analyze".to_owned(), "-o".to_owned(), "json".to_owned()];
    for path in paths {
        args.push("-f".to_owned());
        args.push(path.display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = trellis(&args, None);
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", text(&out.stdout), text(&out.stderr)));
    Analysis { code: out.status.code(), report, stderr: text(&out.stderr) }
}

/// The shop with `extra` documents added.
fn shop_with(extra: &[&str]) -> Analysis {
    let base = shop();
    let mut documents = vec![base.as_str()];
    documents.extend_from_slice(extra);
    analyze(&documents)
}

fn assert_found(analysis: &Analysis, code: &str, resource: &str) {
    assert!(
        analysis.found().contains(&(code.to_owned(), resource.to_owned())),
        "expected {code} on {resource}; found {:?}\n{}",
        analysis.found(),
        analysis.stderr
    );
}

fn assert_clean(analysis: &Analysis) {
    assert_eq!(analysis.found(), BTreeSet::new(), "{:#}", analysis.report);
    assert_eq!(analysis.code, Some(0));
}

#[test]
fn a_healthy_mesh_has_no_findings() {
    let analysis = analyze(&[&shop()]);
    assert_clean(&analysis);
    assert_eq!(analysis.report["notes"], json!([]));
    // 17 documents, all read.
    assert_eq!(analysis.report["resources"], 17);
    let out = trellis(&["analyze", "-f", &format!("{}/tests/analyze", env!("CARGO_MANIFEST_DIR"))], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "no issues found in 17 resource(s) from 1 file(s)\n");
}

// ---- VirtualService destinations: IST0101 ----

const VS_UNKNOWN_SUBSET: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-canary, namespace: shop}
spec:
  hosts: [reviews.example.com]
  http:
  - route:
    - destination: {host: reviews, subset: v3}";

#[test]
fn a_subset_no_destination_rule_defines_is_an_error() {
    let analysis = shop_with(&[VS_UNKNOWN_SUBSET]);
    assert_eq!(analysis.code, Some(1), "an Error finding exits 1");
    assert_found(&analysis, "IST0101", "VirtualService shop/reviews-canary");
    let finding = analysis.with_code("IST0101")[0];
    assert_eq!(finding["level"], "Error");
    assert!(
        finding["message"].as_str().unwrap().contains("spec.http[0].route[0].destination.subset"),
        "{finding}"
    );
    assert!(finding["message"].as_str().unwrap().contains("\"v3\""), "{finding}");
    assert_eq!(
        subject(&finding["resources"][1]),
        "DestinationRule shop/reviews",
        "the rule of that host is named"
    );
    assert!(finding["fix"].as_str().unwrap().contains("v1, v2"), "{finding}");
}

#[test]
fn a_host_no_service_has_is_an_error_and_so_is_a_port_it_lacks() {
    let vs = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: shop}
spec:
  hosts: [ratings]
  http:
  - match: [{uri: {prefix: /v2}}]
    route:
    - destination: {host: reviews, port: {number: 8080}}
  - route:
    - destination: {host: ratings}";
    let analysis = shop_with(&[vs]);
    let messages: Vec<&str> =
        analysis.with_code("IST0101").iter().map(|f| f["message"].as_str().unwrap()).collect();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(messages.iter().any(|m| m.contains("ratings.shop.svc.cluster.local")), "{messages:?}");
    assert!(messages.iter().any(|m| m.contains("has no port 8080 (its ports: 9080)")), "{messages:?}");
    // A ServiceEntry makes the host known.
    let entry = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: shop}
spec:
  hosts: [ratings.shop.svc.cluster.local]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS";
    let fixed = vs.replace("port: {number: 8080}", "port: {number: 9080}");
    assert_clean(&shop_with(&[&fixed, entry]));
}

#[test]
fn without_services_in_the_input_hosts_are_not_checked_and_a_note_says_so() {
    let analysis = analyze(&[VS_UNKNOWN_SUBSET.replace("subset: v3", "subset: v1").as_str()]);
    assert_eq!(
        analysis.found(),
        BTreeSet::from([("IST0101".to_owned(), "VirtualService shop/reviews-canary".to_owned())])
    );
    let notes = analysis.report["notes"].to_string();
    assert!(notes.contains("destination hosts and ports were not checked"), "{notes}");
}

// ---- DestinationRule subsets: IST0173 ----

#[test]
fn a_subset_that_selects_no_workload_is_reported_where_workloads_are_known() {
    let base = shop();
    let broken =
        base.replace("  - name: v2\n    labels: {version: v2}", "  - name: v2\n    labels: {version: v3}");
    let analysis = analyze(&[&broken]);
    assert_found(&analysis, "IST0173", "DestinationRule shop/reviews");
    let finding = analysis.with_code("IST0173")[0];
    assert!(finding["message"].as_str().unwrap().contains("version=v3"), "{finding}");
    assert_eq!(subject(&finding["resources"][1]), "Service shop/reviews");
    assert_eq!(analysis.code, Some(0), "a warning does not fail");
    // Topology labels come from the node, not the pod.
    let topology = base.replace(
        "  - name: v2\n    labels: {version: v2}",
        "  - name: v2\n    labels: {version: v2, topology.kubernetes.io/zone: eu-1a}",
    );
    assert_clean(&analyze(&[&topology]));
    // Without workloads in the input, nothing can be said (and a note says so).
    let dr_only = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  subsets: [{name: v9, labels: {version: v9}}]";
    let analysis = analyze(&[dr_only]);
    assert!(analysis.found().is_empty(), "{:?}", analysis.found());
    assert!(analysis.report["notes"].to_string().contains("subsets and policy selectors were not checked"));
}

// ---- rule order: IST0130, IST0131 ----

#[test]
fn rules_after_a_catch_all_and_repeated_matches_are_never_used() {
    let vs = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: order, namespace: shop}
spec:
  hosts: [order.example.com]
  http:
  - name: products
    match: [{uri: {prefix: /products}}]
    route: [{destination: {host: web}}]
  - name: same-again
    match: [{name: renamed, uri: {prefix: /products}}]
    route: [{destination: {host: reviews}}]
  - match: [{uri: {prefix: /products/new}}]
    route: [{destination: {host: reviews}}]
  - route: [{destination: {host: web}}]
  - match: [{uri: {exact: /late}}]
    route: [{destination: {host: reviews}}]";
    let analysis = shop_with(&[vs]);
    let messages = |code: &str| -> Vec<String> {
        analysis.with_code(code).iter().map(|f| f["message"].as_str().unwrap().to_owned()).collect()
    };
    let unreachable = messages("IST0130");
    assert_eq!(unreachable.len(), 2, "{unreachable:?}");
    assert!(
        unreachable
            .iter()
            .any(|m| m.starts_with("rule spec.http[1] (\"same-again\") is never used: every match"))
    );
    assert!(unreachable.iter().any(|m| m.starts_with("rule spec.http[4] is never used: rule spec.http[3]")));
    let ineffective = messages("IST0131");
    assert_eq!(ineffective.len(), 2, "{ineffective:?}");
    assert!(
        ineffective.iter().any(|m| m.contains("spec.http[1].match[0] is never used: spec.http[0].match[0]"))
    );
    assert!(ineffective.iter().any(|m| m.contains("spec.http[2].match[0] (uri prefix \"/products/new\")")));
    assert_eq!(analysis.with_code("IST0131")[0]["level"], "Info");
    assert_eq!(analysis.code, Some(0), "warnings and info do not fail");
    // In the right order, every rule is used.
    let ordered = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: order, namespace: shop}
spec:
  hosts: [order.example.com]
  http:
  - match: [{uri: {prefix: /products/new}}]
    route: [{destination: {host: reviews}}]
  - match: [{uri: {prefix: /products}}, {uri: {exact: /late}}]
    route: [{destination: {host: web}}]
  - route: [{destination: {host: web}}]";
    assert_clean(&shop_with(&[ordered]));
}

// ---- one host, two VirtualServices: IST0109 ----

#[test]
fn two_virtual_services_for_one_host_on_the_sidecars_conflict() {
    let rival = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-timeouts, namespace: shop}
spec:
  hosts: [reviews.shop.svc.cluster.local]
  http:
  - timeout: 2s
    route: [{destination: {host: reviews}}]";
    let analysis = shop_with(&[rival]);
    assert_found(&analysis, "IST0109", "VirtualService shop/reviews");
    assert_found(&analysis, "IST0109", "VirtualService shop/reviews-timeouts");
    assert_eq!(analysis.code, Some(1));
    let finding = analysis.with_code("IST0109")[0];
    assert_eq!(finding["resources"].as_array().unwrap().len(), 2, "{finding}");
    // Bound to a gateway only, it is merged there and does not conflict.
    let on_gateway = rival.replace("  http:", "  gateways: [ingress]\n  http:");
    assert_clean(&shop_with(&[&on_gateway]));
    // Exported only to another namespace, it does not meet the other one there... unless that
    // one is exported everywhere.
    let elsewhere = rival.replace("  http:", "  exportTo: [web]\n  http:");
    assert_eq!(shop_with(&[&elsewhere]).with_code("IST0109").len(), 2);
}

#[test]
fn on_a_gateway_a_catch_all_rule_can_shadow_another_virtual_service_of_the_host() {
    let admin = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: admin, namespace: shop}
spec:
  hosts: [shop.example.com]
  gateways: [shop/ingress]
  http:
  - match: [{uri: {prefix: /admin}}]
    route: [{destination: {host: web}}]";
    let analysis = shop_with(&[admin]);
    assert_eq!(
        analysis.found(),
        BTreeSet::from([("TRL0004".to_owned(), "VirtualService shop/admin".to_owned())])
    );
    let finding = analysis.with_code("TRL0004")[0];
    let involved: Vec<String> = finding["resources"].as_array().unwrap().iter().map(subject).collect();
    assert_eq!(involved, ["VirtualService shop/admin", "VirtualService shop/web", "Gateway shop/ingress"]);
    assert!(finding["message"].as_str().unwrap().contains("spec.http[2] has no match"), "{finding}");
    // Another host on the same gateway is routed apart.
    let other_host = admin.replace("hosts: [shop.example.com]", "hosts: [admin.example.com]");
    let server_host =
        shop().replace("hosts: [shop.example.com]\n---", "hosts: [shop.example.com, admin.example.com]\n---");
    assert_clean(&analyze(&[&server_host, &other_host]));
}

// ---- TLS off towards STRICT: IST0113 ----

#[test]
fn a_destination_rule_without_tls_towards_strict_workloads_conflicts() {
    let plain = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db, namespace: shop}
spec:
  host: db.shop.svc.cluster.local
  trafficPolicy:
    tls: {mode: DISABLE}";
    let analysis = shop_with(&[plain]);
    assert_found(&analysis, "IST0113", "DestinationRule shop/db");
    let finding = analysis.with_code("IST0113")[0];
    assert_eq!(subject(&finding["resources"][1]), "PeerAuthentication shop/default");
    assert!(finding["message"].as_str().unwrap().contains("spec.trafficPolicy.tls.mode"), "{finding}");
    assert_eq!(analysis.code, Some(1));
    // A workload policy that is PERMISSIVE for the database decides instead.
    let permissive = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: db, namespace: shop}
spec:
  selector: {matchLabels: {app: db}}
  mtls: {mode: PERMISSIVE}";
    assert_clean(&shop_with(&[plain, permissive]));
    // Mutual TLS kept on: no conflict.
    assert_clean(&shop_with(&[&plain.replace("DISABLE", "ISTIO_MUTUAL")]));
    // A mesh-wide STRICT policy counts where the namespace has none.
    let mesh_wide = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}";
    let elsewhere = plain.replace("db.shop.svc.cluster.local", "api.payments.svc.cluster.local");
    let analysis = shop_with(&[&elsewhere, mesh_wide]);
    assert_found(&analysis, "IST0113", "DestinationRule shop/db");
}

// ---- DestinationRule TLS without a CA: IST0128, IST0129 ----

#[test]
fn tls_origination_without_a_ca_is_a_warning() {
    let dr = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: bank, namespace: shop}
spec:
  host: api.bank.example
  trafficPolicy:
    tls: {mode: SIMPLE}
    portLevelSettings:
    - port: {number: 8443}
      tls: {mode: MUTUAL, clientCertificate: /c.pem, privateKey: /k.pem}";
    let analysis = analyze(&[dr]);
    assert_eq!(analysis.codes(), BTreeSet::from(["IST0128".to_owned(), "IST0129".to_owned()]));
    let with_ca = dr
        .replace("{mode: SIMPLE}", "{mode: SIMPLE, caCertificates: /ca.pem}")
        .replace("privateKey: /k.pem}", "privateKey: /k.pem, caCertificates: /ca.pem}");
    assert_clean(&analyze(&[&with_ca]));
}

// ---- AuthorizationPolicy: IST0127, TRL0001 ----

#[test]
fn a_policy_that_selects_nothing_is_reported() {
    let policy = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ratings, namespace: shop}
spec:
  selector: {matchLabels: {app: ratings}}
  rules: [{from: [{source: {namespaces: [shop]}}]}]";
    let analysis = shop_with(&[policy]);
    assert_found(&analysis, "IST0127", "AuthorizationPolicy shop/ratings");
    assert!(analysis.with_code("IST0127")[0]["message"].as_str().unwrap().contains("app=ratings"));
    let empty_namespace = policy
        .replace("namespace: shop}", "namespace: billing}")
        .replace("  selector: {matchLabels: {app: ratings}}\n", "");
    assert_found(&shop_with(&[&empty_namespace]), "IST0127", "AuthorizationPolicy billing/ratings");
    assert_clean(&shop_with(&[&policy.replace("app: ratings", "app: web")]));
}

#[test]
fn http_fields_on_a_tcp_port_are_reported() {
    let policy = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: db-reads, namespace: shop}
spec:
  selector: {matchLabels: {app: db}}
  rules:
  - to: [{operation: {methods: [GET], paths: [/select]}}]";
    let analysis = shop_with(&[policy]);
    assert_found(&analysis, "TRL0001", "AuthorizationPolicy shop/db-reads");
    let finding = analysis.with_code("TRL0001")[0];
    let message = finding["message"].as_str().unwrap();
    assert!(message.contains("methods, paths") && message.contains("TCP port 5432"), "{message}");
    assert!(message.contains("this rule never matches there"), "{message}");
    assert_eq!(subject(&finding["resources"][1]), "Service shop/db");
    // Limited to another port, the rule does not apply to the TCP one.
    assert_clean(&shop_with(&[&policy.replace("methods: [GET]", "ports: [\"8080\"], methods: [GET]")]));
    // An HTTP port (named http) is fine: the shop's reviews policy uses methods and paths.
}

// ---- Sidecar: TRL0002 ----

#[test]
fn a_sidecar_that_hides_a_routed_host_is_reported() {
    let vs = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: payments, namespace: shop}
spec:
  hosts: [pay.shop.svc.cluster.local]
  http:
  - route: [{destination: {host: api.payments.svc.cluster.local}}]";
    let service = "apiVersion: v1
kind: Service
metadata: {name: api, namespace: payments}
spec:
  selector: {app: api}
  ports: [{name: http, port: 80}]";
    let pay = "apiVersion: v1
kind: Service
metadata: {name: pay, namespace: shop}
spec:
  ports: [{name: http, port: 80}]";
    let analysis = shop_with(&[vs, service, pay]);
    assert_found(&analysis, "TRL0002", "VirtualService shop/payments");
    let finding = analysis.with_code("TRL0002")[0];
    assert_eq!(subject(&finding["resources"][1]), "Sidecar shop/default");
    assert!(
        finding["fix"].as_str().unwrap().contains("\"payments/api.payments.svc.cluster.local\""),
        "{finding}"
    );
    let base = shop();
    let imported = base.replace("[./*, istio-system/*]", "[./*, istio-system/*, payments/*]");
    assert_clean(&analyze(&[&imported, vs, service, pay]));
}

// ---- injection: IST0103 ----

#[test]
fn pods_without_the_proxy_in_an_injected_namespace_are_reported() {
    let pod = "apiVersion: v1
kind: Pod
metadata:
  name: reviews-v1-abc
  namespace: shop
  labels: {app: reviews, version: v1}
spec:
  containers: [{name: reviews, image: reviews:1}]";
    let analysis = shop_with(&[pod]);
    assert_found(&analysis, "IST0103", "Pod shop/reviews-v1-abc");
    let finding = analysis.with_code("IST0103")[0];
    assert!(
        finding["message"].as_str().unwrap().starts_with("namespace shop label istio-injection=enabled asks"),
        "{finding}"
    );
    assert_eq!(subject(&finding["resources"][1]), "Namespace shop");
    // A pod that opts out, or a namespace not labelled, is fine.
    let opted_out = pod.replace(
        "labels: {app: reviews, version: v1}",
        "labels: {app: reviews, version: v1, sidecar.istio.io/inject: \"false\"}",
    );
    assert_clean(&shop_with(&[&opted_out]));
    let base = shop();
    let unlabelled = base.replace("  labels:\n    istio-injection: enabled\n", "");
    assert_clean(&analyze(&[&unlabelled, pod]));
    // istio.io/rev asks Istio's revision, which Trellis does not have: the fix says so.
    let revision = base.replace("istio-injection: enabled", "istio.io/rev: canary");
    let analysis = analyze(&[&revision, pod]);
    assert_found(&analysis, "IST0103", "Pod shop/reviews-v1-abc");
    assert!(analysis.with_code("IST0103")[0]["fix"].as_str().unwrap().contains("Trellis has no revisions"));
    // A pod asking for itself, in a namespace without labels.
    let asks = pod.replace(
        "labels: {app: reviews, version: v1}",
        "labels: {app: reviews, sidecar.istio.io/inject: \"true\"}",
    );
    assert_found(&analyze(&[&unlabelled, &asks]), "IST0103", "Pod shop/reviews-v1-abc");
}

// ---- gateways: TRL0003 ----

#[test]
fn gateway_hosts_without_a_virtual_service_are_reported() {
    let gateway = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: admin, namespace: shop}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [admin.example.com]
    tls: {mode: SIMPLE, credentialName: admin-cert}
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [admin.example.com]
    tls: {httpsRedirect: true}";
    let analysis = shop_with(&[gateway]);
    assert_eq!(analysis.found(), BTreeSet::from([("TRL0003".to_owned(), "Gateway shop/admin".to_owned())]));
    assert!(analysis.with_code("TRL0003")[0]["message"].as_str().unwrap().contains("spec.servers[0]"));
    let vs = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: admin, namespace: shop}
spec:
  hosts: [admin.example.com]
  gateways: [shop/admin]
  http: [{route: [{destination: {host: web}}]}]";
    assert_clean(&shop_with(&[gateway, vs]));
}

// ---- output, exit codes, bad input ----

#[test]
fn json_output_has_a_stable_shape() {
    let analysis = shop_with(&[VS_UNKNOWN_SUBSET]);
    let report = &analysis.report;
    for key in ["files", "resources", "errors", "warnings", "infos"] {
        assert!(report[key].is_u64(), "{key}: {report}");
    }
    assert_eq!(report["errors"], 1);
    assert!(report["notes"].is_array());
    let finding = &report["findings"][0];
    assert_eq!(finding["code"], "IST0101");
    assert_eq!(finding["name"], "ReferencedResourceNotFound");
    assert_eq!(finding["level"], "Error");
    assert!(finding["message"].is_string() && finding["fix"].is_string());
    let resource = &finding["resources"][0];
    assert_eq!(resource["kind"], "VirtualService");
    assert_eq!(resource["namespace"], "shop");
    assert_eq!(resource["name"], "reviews-canary");
    assert!(resource["origin"]["file"].as_str().unwrap().ends_with("mesh.yaml"));
    assert_eq!(resource["origin"]["doc"], 18);
}

#[test]
fn text_output_names_the_resource_the_problem_and_the_fix() {
    let out = trellis(&["analyze", "-f", "-"], Some(&format!("{}\n---\n{VS_UNKNOWN_SUBSET}", shop())));
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0]
            .starts_with("Error [IST0101] (VirtualService shop/reviews-canary <stdin> doc 18) spec.http[0]"),
        "{stdout}"
    );
    assert_eq!(lines[1], "    involves DestinationRule shop/reviews <stdin> doc 10");
    assert!(lines[2].starts_with("    fix: add a subset named \"v3\""), "{stdout}");
    assert_eq!(
        lines.last().copied(),
        Some("1 error(s), 0 warning(s), 0 info(s) in 18 resource(s) from 1 file(s)")
    );
}

#[test]
fn malformed_yaml_is_an_input_error_naming_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.yaml");
    std::fs::write(&path, "apiVersion: v1\nkind: Service\nmetadata: {name: a\n").unwrap();
    let out = trellis(&["analyze", "-f", &path.display().to_string()], None);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.starts_with(&format!("trellis analyze: {}: doc 1: ", path.display())), "{stderr}");
    assert!(stderr.contains("line "), "{stderr}");
}

#[test]
fn a_schema_error_is_a_finding_and_the_rest_is_analyzed() {
    let bad = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: weights, namespace: shop}
spec:
  hosts: [w]
  http: [{route: [{destination: {host: web}, weight: ten}]}]";
    let analysis = shop_with(&[bad, VS_UNKNOWN_SUBSET]);
    assert_found(&analysis, "IST0106", "VirtualService shop/weights");
    assert_found(&analysis, "IST0101", "VirtualService shop/reviews-canary");
    assert!(
        analysis.with_code("IST0106")[0]["message"]
            .as_str()
            .unwrap()
            .contains("spec.http[0].route[0].weight")
    );
}

#[test]
fn unknown_files_and_empty_directories_are_input_errors() {
    let out = trellis(&["analyze", "-f", "/nonexistent/mesh.yaml"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).starts_with("trellis analyze: /nonexistent/mesh.yaml: "),
        "{}",
        text(&out.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let out = trellis(&["analyze", "-f", &dir.path().display().to_string()], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no .yaml, .yml or .json files found"), "{}", text(&out.stderr));
    let out = trellis(&["analyze", "-f", "-", "-o", "yaml"], Some(""));
    assert_eq!(out.status.code(), Some(2), "an unknown output format is a usage error");
}

#[test]
fn empty_input_has_nothing_to_report() {
    let out = trellis(&["analyze", "-f", "-"], Some("# nothing here\n"));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "no issues found in 0 resource(s) from 1 file(s)\n");
}

// ---- the live cluster ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_cluster_is_analyzed_through_the_api_server() {
    let api = fake_api::FakeApi::start(fake_api::CLUSTER).await;
    for crd in trellis_api::crds::all() {
        api.apply(fake_api::CRDS, serde_json::to_value(crd).unwrap());
    }
    api.apply(
        "/api/v1/namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"istio-injection": "enabled"}}}),
    );
    api.apply(
        "/api/v1/services",
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "reviews", "namespace": "shop"},
            "spec": {"selector": {"app": "reviews"}, "ports": [{"name": "http", "port": 9080}]}}),
    );
    api.apply(
        "/api/v1/pods",
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "reviews-1", "namespace": "shop",
            "labels": {"app": "reviews", "version": "v1"}}, "spec": {"containers": [{"name": "reviews"}]}}),
    );
    api.apply(
        "/apis/networking.istio.io/v1/virtualservices",
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "reviews", "namespace": "shop"},
            "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews", "subset": "v2"}}]}]}}),
    );
    api.apply(
        "/apis/networking.istio.io/v1/destinationrules",
        json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "reviews", "namespace": "shop"},
            "spec": {"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}}),
    );
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kube_cluster::write_kubeconfig(&dir, &api.url);
    let run = kube_cluster::run_trellis(&["analyze", "-o", "json"], Some(&kubeconfig)).await;
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    let found: BTreeSet<(String, String)> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["code"].as_str().unwrap().to_owned(), subject(&f["resources"][0])))
        .collect();
    assert_eq!(
        found,
        BTreeSet::from([
            ("IST0101".to_owned(), "VirtualService shop/reviews".to_owned()),
            ("IST0103".to_owned(), "Pod shop/reviews-1".to_owned()),
        ])
    );
    assert!(
        report["findings"][0]["resources"][0].get("origin").is_none(),
        "read from the cluster, not a file"
    );

    // A file replaces the cluster's resource of the same name (here: adding the subset).
    let fixed = dir.path().join("dr.yaml");
    std::fs::write(
        &fixed,
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: shop}\nspec:\n  host: reviews\n  subsets: [{name: v2, labels: {version: v1}}]\n",
    )
    .unwrap();
    let path = fixed.display().to_string();
    let run =
        kube_cluster::run_trellis(&["analyze", "--use-kube", "-f", &path, "-o", "json"], Some(&kubeconfig))
            .await;
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    let codes: BTreeSet<&str> =
        report["findings"].as_array().unwrap().iter().map(|f| f["code"].as_str().unwrap()).collect();
    assert_eq!(codes, BTreeSet::from(["IST0103"]), "{report:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_without_istio_crds_is_analyzed_for_what_it_has() {
    let api = fake_api::FakeApi::start(fake_api::CLUSTER).await;
    api.apply(
        "/api/v1/namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"istio.io/rev": "stable"}}}),
    );
    api.apply(
        "/api/v1/pods",
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-1", "namespace": "shop"},
            "spec": {"containers": [{"name": "web"}]}}),
    );
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kube_cluster::write_kubeconfig(&dir, &api.url);
    let run = kube_cluster::run_trellis(&["analyze"], Some(&kubeconfig)).await;
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .starts_with("Warning [IST0103] (Pod shop/web-1) namespace shop label istio.io/rev=stable asks"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("note: the cluster does not serve VirtualService (networking.istio.io/v1): Istio's CRDs are not installed"),
        "{}",
        run.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_is_a_clear_error() {
    // A port nothing listens on.
    let api = fake_api::FakeApi::start(fake_api::CLUSTER).await;
    let url = api.url.clone();
    api.stop();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kube_cluster::write_kubeconfig(&dir, &url);
    let run = kube_cluster::run_trellis(&["analyze", "--timeout", "5s"], Some(&kubeconfig)).await;
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(
        run.stderr.starts_with(&format!("trellis analyze: cannot list Namespace from the cluster at {url}")),
        "{}",
        run.stderr
    );
    // An API server that never answers: bounded by --timeout.
    let api = fake_api::FakeApi::start(fake_api::CLUSTER).await;
    api.hang();
    let kubeconfig = kube_cluster::write_kubeconfig(&dir, &api.url);
    let run = kube_cluster::run_trellis(&["analyze", "--timeout", "1s"], Some(&kubeconfig)).await;
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("within 1s (--timeout)"), "{}", run.stderr);
    // No kubeconfig at all.
    let run = kube_cluster::run_trellis(&["analyze"], None).await;
    assert_eq!(run.code, Some(2));
    assert!(run.stderr.contains("kubeconfig"), "{}", run.stderr);
}

// ---- Istio's analyzer test data ----

fn corpus_dir() -> PathBuf {
    let dir = std::env::var_os("TRELLIS_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"))
        .join("istio-conformance/valid");
    assert!(dir.is_dir(), "conformance corpus not found at {} (set TRELLIS_SHARED_DIR)", dir.display());
    dir
}

/// One input of Istio's analyzer tests (`pkg/config/analysis/analyzers/testdata/<file>`, split
/// into one document per corpus file) and what Istio's analyzers_test.go expects of the
/// analyzers Trellis has the same check as: `(code, resource)`.
struct IstioCase {
    files: &'static [&'static str],
    codes: &'static [&'static str],
    expected: &'static [(&'static str, &'static str)],
}

const ISTIO_CASES: &[IstioCase] = &[
    IstioCase {
        files: &["virtualservice_conflictingmeshgatewayhosts.yaml"],
        codes: &["IST0109"],
        expected: &[
            ("IST0109", "VirtualService team3/ratings"),
            ("IST0109", "VirtualService team4/ratings"),
            ("IST0109", "VirtualService foo/ratings"),
            ("IST0109", "VirtualService bar/ratings"),
            ("IST0109", "VirtualService foo/productpage"),
            ("IST0109", "VirtualService foo/bogus-productpage"),
            ("IST0109", "VirtualService team2/ratings"),
        ],
    },
    IstioCase {
        files: &["virtualservice_conflictingmeshgatewayhosts_with_exportto.yaml"],
        codes: &["IST0109"],
        expected: &[
            ("IST0109", "VirtualService foo/productpage"),
            ("IST0109", "VirtualService bar/productpage"),
            ("IST0109", "VirtualService foo/productpage-c"),
            ("IST0109", "VirtualService bar/productpage-c"),
            ("IST0109", "VirtualService foo/productpage-d"),
            ("IST0109", "VirtualService bar/productpage-d"),
        ],
    },
    IstioCase {
        files: &["virtualservice_destinationrules.yaml"],
        codes: &["IST0101"],
        expected: &[
            ("IST0101", "VirtualService default/reviews-bogussubset"),
            ("IST0101", "VirtualService default/reviews-mirror-bogussubset"),
        ],
    },
    IstioCase {
        // Istio's corpus split leaves out document 4 of virtualservice_dupmatches.yaml; nothing
        // is expected of it.
        files: &["virtualservice_dupmatches.yaml", "virtualservice_overlappingmatches.yaml"],
        codes: &["IST0130", "IST0131"],
        expected: &[
            ("IST0130", "VirtualService duplicate-match"),
            ("IST0130", "VirtualService foo/sample-foo-cluster01"),
            ("IST0131", "VirtualService almost-duplicate-match"),
            ("IST0131", "VirtualService duplicate-match"),
            ("IST0130", "VirtualService duplicate-tcp-match"),
            ("IST0130", "VirtualService duplicate-empty-tcp"),
            ("IST0131", "VirtualService almost-duplicate-tcp-match"),
            ("IST0131", "VirtualService duplicate-tcp-match"),
            ("IST0130", "VirtualService none/tls-routing"),
            ("IST0131", "VirtualService none/tls-routing-almostmatch"),
            ("IST0131", "VirtualService none/tls-routing"),
            ("IST0131", "VirtualService non-method-get"),
            ("IST0131", "VirtualService overlapping-in-single-match"),
            ("IST0131", "VirtualService overlapping-in-two-matches"),
            ("IST0131", "VirtualService overlapping-mathes-with-different-methods"),
        ],
    },
    IstioCase {
        files: &["destinationrule-simple-destination.yaml"],
        codes: &["IST0128", "IST0129"],
        expected: &[("IST0128", "DestinationRule db-tls")],
    },
    IstioCase {
        files: &["destinationrule-mutual-destination.yaml"],
        codes: &["IST0128", "IST0129"],
        expected: &[("IST0128", "DestinationRule db-mtls")],
    },
    IstioCase {
        files: &["destinationrule-simple-port.yaml"],
        codes: &["IST0128", "IST0129"],
        expected: &[("IST0129", "DestinationRule db-tls")],
    },
    IstioCase {
        files: &["destinationrule-simple-destination-credentialname.yaml"],
        codes: &["IST0128", "IST0129"],
        expected: &[("IST0128", "DestinationRule db-tls")],
    },
    IstioCase {
        files: &["destinationrule-simple-destination-credentialname-selector.yaml"],
        codes: &["IST0128", "IST0129"],
        expected: &[],
    },
    IstioCase {
        files: &["destinationrule-simple-port-credentialname.yaml"],
        codes: &["IST0128", "IST0129"],
        expected: &[("IST0129", "DestinationRule db-tls")],
    },
    IstioCase {
        files: &["destinationrule-simple-port-credentialname-selector.yaml"],
        codes: &["IST0128", "IST0129"],
        expected: &[],
    },
    IstioCase {
        files: &["destinationrule-mutual-port.yaml"],
        codes: &["IST0128", "IST0129"],
        expected: &[("IST0129", "DestinationRule db-mtls")],
    },
    IstioCase {
        files: &["destinationrule-compound-simple-mutual.yaml"],
        codes: &["IST0128", "IST0129"],
        expected: &[("IST0128", "DestinationRule db-mtls"), ("IST0129", "DestinationRule db-mtls")],
    },
    IstioCase {
        files: &["destinationrule-compound-mutual-simple.yaml"],
        codes: &["IST0128", "IST0129"],
        expected: &[("IST0129", "DestinationRule db-mtls"), ("IST0128", "DestinationRule db-mtls")],
    },
    IstioCase { files: &["destinationrule-with-ca.yaml"], codes: &["IST0128", "IST0129"], expected: &[] },
];

#[test]
fn istio_analyzer_test_data_gets_the_same_codes() {
    let dir = corpus_dir();
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for case in ISTIO_CASES {
        let mut paths: Vec<PathBuf> = case
            .files
            .iter()
            .flat_map(|file| {
                let prefix = format!("pkg__config__analysis__analyzers__testdata__{file}--");
                names.iter().filter(move |n| n.starts_with(&prefix)).map(|n| dir.join(n))
            })
            .collect();
        paths.sort();
        assert!(!paths.is_empty(), "{:?}: no corpus files", case.files);
        let analysis = analyze_paths(&paths);
        assert!(analysis.stderr.is_empty(), "{:?}: {}", case.files, analysis.stderr);
        assert!(
            analysis.with_code("IST0106").is_empty(),
            "{:?}: Istio accepts these: {:#}",
            case.files,
            analysis.report
        );
        let found: BTreeSet<(String, String)> =
            analysis.found().into_iter().filter(|(code, _)| case.codes.contains(&code.as_str())).collect();
        let expected: BTreeSet<(String, String)> =
            case.expected.iter().map(|(c, r)| ((*c).to_owned(), (*r).to_owned())).collect();
        assert_eq!(found, expected, "{:?}", case.files);
    }
}

#[test]
fn the_whole_corpus_of_valid_documents_is_read_and_analyzed() {
    // Every document Istio accepts, together: nothing is an input error, and the report holds.
    let dir = corpus_dir();
    let analysis = analyze_paths(&[dir]);
    assert_ne!(analysis.code, Some(2), "{}", analysis.stderr);
    assert!(analysis.stderr.is_empty(), "{}", analysis.stderr);
    assert!(analysis.report["resources"].as_u64().unwrap() > 400, "{}", analysis.report["resources"]);
}

#[test]
fn a_resource_written_twice_is_analyzed_as_applied_last_with_a_note() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("a.yaml");
    let second = dir.path().join("b.yaml");
    std::fs::write(&first, format!("{}\n---\n{VS_UNKNOWN_SUBSET}", shop())).unwrap();
    std::fs::write(&second, VS_UNKNOWN_SUBSET.replace("subset: v3", "subset: v2")).unwrap();
    let analysis = analyze_paths(&[first.clone(), second.clone()]);
    assert_clean(&analysis);
    let notes = analysis.report["notes"].as_array().unwrap();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(
        notes[0],
        format!(
            "VirtualService shop/reviews-canary {} doc 18 is written again as VirtualService shop/reviews-canary {} doc 1; \
             the last one is analyzed",
            first.display(),
            second.display()
        )
    );
}
