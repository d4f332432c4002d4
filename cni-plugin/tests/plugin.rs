//! The plugin binary as a runtime runs it, without root: every command, pass-through of the
//! previous result, and bad input of every kind getting its CNI error code and message (never
//! a panic, never anything else on stdout). Programming a real namespace is in `chain.rs`.

mod common;

use std::path::Path;

use common::{FakeApi, PLUGIN, kubeconfig_for, meshed_pod, pod, run_plugin};
use serde_json::{Value, json};

fn conf(version: &str, kubeconfig: &Path) -> Value {
    json!({
        "cniVersion": version, "name": "k8s-pod-network", "type": "trellis-cni",
        "kubernetes": {"kubeconfig": kubeconfig, "exclude_namespaces": ["kube-system"]},
        "prevResult": {
            "cniVersion": version,
            "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/none"}],
            "ips": [{"address": "10.78.0.9/24", "gateway": "10.78.0.1", "interface": 0}],
            "dns": {}
        }
    })
}

fn add_env<'a>(pod: &'a str, netns: &'a str) -> Vec<(&'static str, &'a str)> {
    vec![
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
        ("CNI_ARGS", pod),
    ]
}

const SHOP_WEB: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0";

/// Asserts a CNI error object on stdout with this code and words in it.
fn assert_error(run: &common::Run, code: u64, words: &str) {
    assert_eq!(run.code, Some(1), "{run:?}");
    let error = run.json();
    assert_eq!(error["code"], code, "{run:?}");
    let text = format!("{}: {}", error["msg"].as_str().unwrap(), error["details"].as_str().unwrap());
    assert!(text.contains(words), "expected {words:?} in {text:?}");
    assert!(error["cniVersion"].is_string());
}

#[test]
fn version_lists_what_we_speak() {
    let run = run_plugin(PLUGIN.as_ref(), &[("CNI_COMMAND", "VERSION")], br#"{"cniVersion":"1.0.0"}"#);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(
        run.json(),
        json!({"cniVersion": "1.0.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
    );
}

#[test]
fn status_answers_ready_and_gc_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let input = conf("1.1.0", &dir.path().join("kubeconfig")).to_string();
    for command in ["STATUS", "GC"] {
        let run = run_plugin(PLUGIN.as_ref(), &[("CNI_COMMAND", command)], input.as_bytes());
        assert_eq!((run.code, run.stdout.as_str()), (Some(0), ""), "{command}: {run:?}");
    }
}

#[test]
fn del_and_check_succeed_when_the_namespace_is_already_gone() {
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApi::on_loopback();
    let input = conf("1.0.0", &api.kubeconfig(dir.path())).to_string();
    for command in ["DEL", "CHECK"] {
        let mut env = add_env(SHOP_WEB, "/var/run/netns/trellis-never-existed");
        env[0] = ("CNI_COMMAND", command);
        let run = run_plugin(PLUGIN.as_ref(), &env, input.as_bytes());
        assert_eq!((run.code, run.stdout.as_str()), (Some(0), ""), "{command}: {run:?}");
    }
    // DEL must not fail a teardown, even with a configuration it cannot read.
    let run = run_plugin(PLUGIN.as_ref(), &[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "x")], b"{oops");
    assert_eq!((run.code, run.stdout.as_str()), (Some(0), ""), "{run:?}");
    assert_eq!(api.requests(), 0, "DEL and CHECK need not ask the API server");
}

#[test]
fn unmeshed_and_non_kubernetes_containers_get_the_previous_result_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApi::on_loopback();
    api.add_pod(pod("shop", "web-0", json!({})));
    api.add_pod(meshed_pod("kube-system", "coredns", json!({})));
    for version in ["0.3.1", "0.4.0", "1.0.0"] {
        let input = conf(version, &api.kubeconfig(dir.path()));
        for args in [SHOP_WEB, "K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns", ""] {
            // The namespace does not exist: these pods must not need it.
            let run = run_plugin(
                PLUGIN.as_ref(),
                &add_env(args, "/var/run/netns/none"),
                input.to_string().as_bytes(),
            );
            assert_eq!(run.code, Some(0), "{version} {args}: {run:?}");
            assert_eq!(run.json(), input["prevResult"], "{version} {args}");
        }
    }
    // The excluded namespace is decided without asking.
    assert_eq!(api.requests(), 3);
}

#[test]
fn bad_input_gets_the_right_code_and_message() {
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApi::on_loopback();
    api.add_pod(meshed_pod(
        "shop",
        "bad-ports",
        json!({"traffic.sidecar.istio.io/includeInboundPorts": "http"}),
    ));
    let good = conf("1.0.0", &api.kubeconfig(dir.path()));
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        f(&mut c);
        c.to_string().into_bytes()
    };
    // A port nothing listens on: bind, note the port, close.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let unreachable_dir = tempfile::tempdir().unwrap();
    let unreachable = kubeconfig_for(&format!("http://{closed}"), unreachable_dir.path());

    let cases: Vec<(&str, Vec<u8>, &str, u64, &str)> = vec![
        (
            "malformed JSON",
            b"{\"cniVersion\": \"1.0.0\", ".to_vec(),
            SHOP_WEB,
            6,
            "cannot decode the network configuration",
        ),
        ("not an object", b"42".to_vec(), SHOP_WEB, 6, "expected a JSON object"),
        ("oversized", vec![b' '; 2 << 20], SHOP_WEB, 6, "the limit is"),
        (
            "missing prevResult",
            with(&|c| {
                c.as_object_mut().unwrap().remove("prevResult");
            }),
            SHOP_WEB,
            7,
            "prevResult: missing",
        ),
        (
            "unknown cniVersion",
            with(&|c| c["cniVersion"] = json!("2.0.0")),
            SHOP_WEB,
            1,
            "\"2.0.0\" is not supported",
        ),
        (
            "missing kubeconfig",
            with(&|c| c["kubernetes"] = json!({})),
            SHOP_WEB,
            7,
            "kubernetes.kubeconfig: missing",
        ),
        (
            "wrong field type",
            with(&|c| c["kubernetes"]["exclude_namespaces"] = json!(1)),
            SHOP_WEB,
            7,
            "kubernetes.exclude_namespaces",
        ),
        (
            "unreadable kubeconfig",
            with(&|c| c["kubernetes"]["kubeconfig"] = json!("/nonexistent/kubeconfig")),
            SHOP_WEB,
            5,
            "cannot read the kubeconfig",
        ),
        (
            "unreachable API server",
            with(&|c| c["kubernetes"]["kubeconfig"] = json!(unreachable)),
            SHOP_WEB,
            11,
            "cannot reach the Kubernetes API server",
        ),
        (
            "pod not found",
            good.to_string().into_bytes(),
            "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=gone",
            3,
            "pod shop/gone does not exist",
        ),
        (
            "invalid redirect annotations",
            good.to_string().into_bytes(),
            "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=bad-ports",
            100,
            "traffic.sidecar.istio.io/includeInboundPorts",
        ),
        (
            "malformed CNI_ARGS",
            good.to_string().into_bytes(),
            "K8S_POD_NAME",
            4,
            "\"K8S_POD_NAME\" is not KEY=VALUE",
        ),
    ];
    for (what, input, args, code, words) in cases {
        let run = run_plugin(PLUGIN.as_ref(), &add_env(args, "/var/run/netns/none"), &input);
        assert!(!run.stderr.contains("panicked"), "{what}: {}", run.stderr);
        assert_error(&run, code, words);
    }
}

#[test]
fn excluded_namespaces_start_without_the_api_server() {
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let input = conf("1.0.0", &kubeconfig_for(&format!("http://{closed}"), dir.path()));
    let args = "K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-0";
    let run =
        run_plugin(PLUGIN.as_ref(), &add_env(args, "/var/run/netns/none"), input.to_string().as_bytes());
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.json(), input["prevResult"]);
}

#[test]
fn a_meshed_pod_without_its_namespace_fails_rather_than_starting_unredirected() {
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApi::on_loopback();
    api.add_pod(meshed_pod("shop", "web-0", json!({})));
    let input = conf("1.0.0", &api.kubeconfig(dir.path())).to_string();
    let run = run_plugin(
        PLUGIN.as_ref(),
        &add_env(SHOP_WEB, "/var/run/netns/trellis-never-existed"),
        input.as_bytes(),
    );
    assert_error(&run, 3, "the pod's network namespace does not exist");
}

#[test]
fn check_needs_version_0_4_0() {
    let dir = tempfile::tempdir().unwrap();
    let input = conf("0.3.1", &dir.path().join("kubeconfig")).to_string();
    let mut env = add_env(SHOP_WEB, "/var/run/netns/none");
    env[0] = ("CNI_COMMAND", "CHECK");
    assert_error(&run_plugin(PLUGIN.as_ref(), &env, input.as_bytes()), 1, "CHECK needs cniVersion 0.4.0");
}

#[test]
fn without_cni_command_it_is_the_agent_cli() {
    let run = run_plugin(PLUGIN.as_ref(), &[], b"");
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("install"), "{}", run.stderr);
    assert!(run.stdout.is_empty());
}
