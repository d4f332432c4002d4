//! `trellis authz check` as users run it: the real binary on Istio YAML (offline, through
//! trellisd's translation) and against a running trellisd over xDS, with exit codes that say
//! allowed (0) or denied (1) and output naming the deciding policy and rule.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

const POLICIES: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: frontend-only, namespace: shop }
spec:
  selector: { matchLabels: { app: catalog } }
  rules:
    - from: [{ source: { principals: ["cluster.local/ns/shop/sa/frontend"] } }]
      to: [{ operation: { methods: ["GET"], paths: ["/items*"] } }]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: no-admin, namespace: shop }
spec:
  action: DENY
  rules:
    - to: [{ operation: { paths: ["/nothing"] } }]
    - to: [{ operation: { paths: ["/admin*"] } }]
"#;

fn trellis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trellis")).args(args).output().expect("run trellis")
}

fn check(dir: &str, extra: &[&str]) -> (Option<i32>, String) {
    let mut args = vec!["authz", "check", "--config-dir", dir, "-n", "shop", "-l", "app=catalog"];
    args.extend_from_slice(extra);
    let out = trellis(&args);
    (
        out.status.code(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

#[test]
fn offline_decisions_name_the_policy_and_rule() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policies.yaml"), POLICIES).unwrap();
    let dir = dir.path().to_str().unwrap();
    let (code, out) =
        check(dir, &["--from", "spiffe://cluster.local/ns/shop/sa/frontend", "--path", "/items/3"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("decision: allowed by shop/frontend-only rule 0"), "{out}");
    let (code, out) = check(dir, &["--from", "cluster.local/ns/shop/sa/orders", "--path", "/items"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("decision: denied: no ALLOW policy matched"), "{out}");
    let (code, out) = check(dir, &["--from", "cluster.local/ns/shop/sa/frontend", "--path", "/admin/users"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("decision: denied by shop/no-admin rule 1"), "{out}");
    let (code, out) = check(dir, &["--path", "/items"]);
    assert_eq!(code, Some(1), "a plaintext caller has no principal: {out}");
    let out =
        trellis(&["authz", "check", "--config-dir", dir, "-n", "other", "-l", "app=catalog", "--path", "/x"]);
    let (code, out) = (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned());
    assert_eq!(code, Some(0), "another namespace: no policy selects it: {out}");
    assert!(out.contains("policies: none select it"), "{out}");
}

#[test]
fn bad_input_is_a_usage_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().to_str().unwrap();
    for (args, message) in [
        (vec!["--from", "not a spiffe id"], "--from"),
        (vec!["-l", "app"], "--labels"),
        (vec!["-H", "no colon"], "--header"),
    ] {
        let (code, out) = check(dir, &args);
        assert_eq!(code, Some(2), "{args:?}: {out}");
        assert!(out.contains(message), "{args:?}: {out}");
    }
    let (code, out) = check("/nonexistent/dir", &[]);
    assert_eq!(code, Some(2), "{out}");
}

#[test]
fn online_asks_the_control_plane_as_the_workloads_proxy_would() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policies.yaml"), POLICIES).unwrap();
    let mut trellisd = Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(["control-plane", "--config-dir", dir.path().to_str().unwrap()])
        .args(["--xds-address", "127.0.0.1:0", "--monitoring-address", "127.0.0.1:0"])
        .args(["--secure-xds-address", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    let _ = BufReader::new(trellisd.stdout.take().unwrap()).read_line(&mut first);
    let xds = first.split_whitespace().nth(3).unwrap_or_default().to_owned();
    let out = trellis(&[
        "authz",
        "check",
        "--control-plane",
        &xds,
        "-n",
        "shop",
        "-l",
        "app=catalog",
        "--from",
        "cluster.local/ns/shop/sa/orders",
        "--path",
        "/items",
    ]);
    let _ = trellisd.kill();
    let _ = trellisd.wait();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{first} {text} {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("policy: shop/frontend-only ALLOW"), "{text}");
    assert!(text.contains("decision: denied: no ALLOW policy matched"), "{text}");
}
