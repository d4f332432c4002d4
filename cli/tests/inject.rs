//! `trellis inject` as users run it.

use std::process::Command;

const DEPLOYMENT: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  selector:\n    matchLabels: {app: web}\n  template:\n    metadata:\n      labels: {app: web, version: v1}\n    spec:\n      containers:\n      - name: web\n        image: nginx\n        ports: [{containerPort: 80}]\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports: [{port: 80}]\n";

fn trellis(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_trellis")).args(args).output().unwrap()
}

#[test]
fn injects_workloads_and_passes_other_objects_through() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.yaml");
    std::fs::write(&file, DEPLOYMENT).unwrap();
    let out = trellis(&["inject", "-f", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let docs: Vec<serde_json::Value> = text.split("---\n").map(parse).collect();
    assert_eq!(docs.len(), 2);
    let pod = &docs[0]["spec"]["template"];
    let inits: Vec<&str> = pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(inits, ["trellis-init", "istio-proxy"]);
    assert_eq!(pod["metadata"]["labels"]["security.istio.io/tlsMode"], "istio");
    assert!(pod["metadata"]["annotations"]["sidecar.istio.io/status"].is_string());
    assert_eq!(docs[1]["kind"], "Service");
    assert!(docs[1].get("spec").and_then(|s| s.get("template")).is_none());

    // Injecting the output again changes nothing.
    let again_file = dir.path().join("again.yaml");
    std::fs::write(&again_file, &text).unwrap();
    let again = trellis(&["inject", "-f", again_file.to_str().unwrap()]);
    assert_eq!(String::from_utf8(again.stdout).unwrap(), text);

    // Non-native sidecars and CNI mode come from flags, as for the webhook.
    let out = trellis(&["inject", "--native-sidecars=false", "--cni-mode", "-f", file.to_str().unwrap()]);
    let doc = parse(String::from_utf8(out.stdout).unwrap().split("---\n").next().unwrap());
    let spec = &doc["spec"]["template"]["spec"];
    assert_eq!(spec["initContainers"][0]["name"], "trellis-validation");
    assert_eq!(spec["containers"][1]["name"], "istio-proxy");
}

#[test]
fn invalid_annotations_fail_with_the_annotation_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pod.yaml");
    std::fs::write(&file, "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n    sidecar.istio.io/proxyMemory: lots\nspec:\n  containers: [{name: a, image: a}]\n").unwrap();
    let out = trellis(&["inject", "-f", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("doc 1: Pod p: annotation sidecar.istio.io/proxyMemory: invalid value \"lots\""),
        "{stderr}"
    );
    let missing = trellis(&["inject", "-f", "/nonexistent.yaml"]);
    assert_eq!(missing.status.code(), Some(2));
}

/// What `kubectl get deploy -o yaml` prints: one List holding the workloads.
const KUBECTL_LIST: &str = "apiVersion: v1
kind: List
metadata:
  resourceVersion: \"\"
items:
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: web, namespace: shop}
  spec:
    selector: {matchLabels: {app: web}}
    template:
      metadata: {labels: {app: web}}
      spec:
        containers:
        - name: web
          image: nginx
          lifecycle:
            preStop: {httpGet: {path: /drain, port: 80}}
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: api, namespace: shop}
  spec:
    selector: {matchLabels: {app: api}}
    template:
      metadata:
        labels: {app: api}
        annotations: {sidecar.istio.io/proxyCPU: 4000m}
      spec:
        containers: [{name: api, image: api}]
";

fn trellis_with_stdin(args: &[&str], stdin: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn a_kubectl_list_on_standard_input_is_injected_item_by_item() {
    let out = trellis_with_stdin(&["inject", "-f", "-"], KUBECTL_LIST);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list = parse(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(list["kind"], "List");
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    for item in items {
        let inits = item["spec"]["template"]["spec"]["initContainers"].as_array().unwrap();
        assert!(inits.iter().any(|c| c["name"] == "istio-proxy"), "{item}");
    }
    // The hook is called on the proxy's status port, the original handed to the proxy.
    let web = &items[0]["spec"]["template"]["spec"];
    assert_eq!(
        web["containers"][0]["lifecycle"]["preStop"]["httpGet"]["path"],
        "/app-lifecycle/web/prestopz"
    );
    // proxyCPU alone: that request and no default limit below it.
    let proxy = items[1]["spec"]["template"]["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "istio-proxy")
        .unwrap();
    assert_eq!(proxy["resources"], serde_json::json!({"requests": {"cpu": "4000m"}}));

    // An item that is not an object is named.
    let bad =
        trellis_with_stdin(&["inject", "-f", "-"], "apiVersion: v1\nkind: List\nitems:\n- just a string\n");
    assert_eq!(bad.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("doc 1: List: items[0]: expected an object, found a string"), "{stderr}");
}

/// The redirect the injector writes is one trellis-proxy-init takes, for every interception
/// mode and switch the injector passes on (a flag it did not know would stop every pod at its
/// init container).
#[test]
fn the_redirect_the_injector_writes_is_one_proxy_init_accepts() {
    let pod = |annotations: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n{annotations}\nspec:\n  containers: [{{name: a, image: a}}]\n"
        )
    };
    let dns = "    proxy.istio.io/config: |\n      proxyMetadata: {ISTIO_META_DNS_CAPTURE: \"true\", CAPTURE_ALL_DNS: \"true\", ISTIO_AGENT_DUAL_STACK: \"true\"}";
    let cases = [
        ("    sidecar.istio.io/inject: \"true\"", "REDIRECT"),
        ("    sidecar.istio.io/interceptionMode: TPROXY", "TPROXY"),
        (dns, "15053"),
        (
            "    traffic.sidecar.istio.io/includeOutboundIPRanges: \"10.0.0.0/8\"\n    traffic.sidecar.istio.io/excludeInboundPorts: \"9000,9001\"\n    traffic.sidecar.istio.io/kubevirtInterfaces: net1",
            "10.0.0.0/8",
        ),
    ];
    for (annotations, expect) in cases {
        let out = trellis_with_stdin(&["inject", "-f", "-"], &pod(annotations));
        assert!(out.status.success(), "{annotations}: {}", String::from_utf8_lossy(&out.stderr));
        let injected = parse(&String::from_utf8(out.stdout).unwrap());
        let init = &injected["spec"]["initContainers"][0];
        assert_eq!(init["name"], "trellis-init");
        let args: Vec<&str> = init["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        let mut command = vec!["proxy-init", "--dry-run", "--backend", "iptables"];
        command.extend(&args);
        let dry_run = trellis(&command);
        let rules = String::from_utf8_lossy(&dry_run.stdout);
        assert!(dry_run.status.success(), "{args:?}: {}", String::from_utf8_lossy(&dry_run.stderr));
        assert!(rules.contains(expect), "{args:?} gave no {expect}:\n{rules}");
    }
}

fn parse(text: &str) -> serde_json::Value {
    trellis_api::load::decode_single::<serde_json::Value>(text).unwrap().0
}
