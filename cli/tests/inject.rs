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

fn parse(text: &str) -> serde_json::Value {
    trellis_api::load::decode_single::<serde_json::Value>(text).unwrap().0
}
