//! Golden tests: every case in `tests/golden/` is injected and compared with its expected
//! output, injected a second time to prove idempotence, and (for pods) sent through the
//! admission path so that applying the returned JSONPatch to the input gives the expected pod.
//!
//! `TRELLIS_UPDATE_GOLDEN=1` rewrites the expected files; review the diff before committing.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;
use serde_json::{Value, json};
use trellis_injector::admission::{Outcome, review};
use trellis_injector::config::InjectorConfig;
use trellis_injector::decision::{InjectDecision, NamespaceInjection, decide};
use trellis_injector::inject::inject;
use trellis_injector::manual::inject_manifests;
use trellis_injector::template::Templates;

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CaseConfig {
    native_sidecars: Option<bool>,
    cni_mode: Option<bool>,
    namespace_injection: Option<bool>,
}

enum Expect {
    Inject,
    Deny,
    Skip(String),
}

struct Case {
    name: String,
    path: PathBuf,
    text: String,
    config: InjectorConfig,
    namespace_injection: NamespaceInjection,
    expect: Expect,
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn cases() -> Vec<Case> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.ends_with(".yaml") && !name.contains(".expected.")
        })
        .collect();
    paths.sort();
    paths.into_iter().map(|path| parse_case(&path)).collect()
}

fn parse_case(path: &Path) -> Case {
    let text = std::fs::read_to_string(path).unwrap();
    let mut case_config = CaseConfig::default();
    let mut expect = Expect::Inject;
    for line in text.lines().take_while(|l| l.starts_with('#')) {
        if let Some(json) = line.strip_prefix("# config:") {
            case_config =
                serde_json::from_str(json.trim()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        } else if let Some(what) = line.strip_prefix("# expect:") {
            let what = what.trim();
            expect = match what.split_once(' ') {
                Some(("skip", reason)) => Expect::Skip(reason.to_owned()),
                _ if what == "deny" => Expect::Deny,
                _ => panic!("{}: unknown expectation {what:?}", path.display()),
            };
        }
    }
    let config = InjectorConfig {
        native_sidecars: case_config.native_sidecars.unwrap_or(true),
        cni_mode: case_config.cni_mode.unwrap_or(false),
        ..InjectorConfig::default()
    };
    let namespace_injection = if case_config.namespace_injection.unwrap_or(true) {
        NamespaceInjection::Enabled
    } else {
        NamespaceInjection::NotEnabled
    };
    let name = path.file_stem().unwrap().to_string_lossy().into_owned();
    Case { name, path: path.to_owned(), text, config, namespace_injection, expect }
}

fn expected_path(case: &Case, ext: &str) -> PathBuf {
    case.path.with_file_name(format!("{}.expected.{ext}", case.name))
}

/// Compares with the expected file, or writes it when updating.
fn check_golden(case: &Case, ext: &str, actual: &str, failures: &mut Vec<String>) {
    let path = expected_path(case, ext);
    if std::env::var_os("TRELLIS_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    match std::fs::read_to_string(&path) {
        Ok(expected) if expected == actual => {}
        Ok(expected) => failures.push(format!(
            "{}: output differs from {}:\n{}",
            case.name,
            path.display(),
            diff(&expected, actual)
        )),
        Err(e) => failures.push(format!(
            "{}: {}: {e} (run with TRELLIS_UPDATE_GOLDEN=1)",
            case.name,
            path.display()
        )),
    }
}

fn diff(expected: &str, actual: &str) -> String {
    let (e, a): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
    let first = e.iter().zip(&a).position(|(x, y)| x != y).unwrap_or(e.len().min(a.len()));
    format!(
        "first difference at line {}:\n  expected: {:?}\n  actual:   {:?}",
        first + 1,
        e.get(first).unwrap_or(&"<end>"),
        a.get(first).unwrap_or(&"<end>")
    )
}

fn to_yaml(pod: &Pod) -> String {
    serde_saphyr::to_string(pod).unwrap()
}

fn admission_review(pod: &Value, namespace: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "d3b2c8f0-1111-2222-3333-444455556666",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "dryRun": false
        }
    }))
    .unwrap()
}

fn check_pod_case(case: &Case, templates: &Templates, failures: &mut Vec<String>) {
    let input: Value = serde_saphyr::from_str(&case.text).unwrap();
    let pod: Pod = serde_json::from_value(input.clone()).unwrap();
    let namespace = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let decision = decide(&pod, &namespace, case.namespace_injection, &case.config);
    match (&case.expect, decision) {
        (Expect::Skip(reason), InjectDecision::Skip(actual)) if actual.as_str() == reason => return,
        (Expect::Skip(reason), other) => {
            failures.push(format!("{}: expected skip {reason}, got {other:?}", case.name));
            return;
        }
        (_, InjectDecision::Skip(actual)) => {
            failures.push(format!("{}: unexpectedly skipped ({actual})", case.name));
            return;
        }
        (_, InjectDecision::Inject) => {}
    }
    let (body, outcome) = review(&admission_review(&input, &namespace), &case.config, templates)
        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
    let response: Value = serde_json::from_slice(&body).unwrap();
    let response = &response["response"];
    assert_eq!(response["uid"], "d3b2c8f0-1111-2222-3333-444455556666", "{}", case.name);
    match case.expect {
        Expect::Deny => {
            assert_eq!(outcome, Outcome::Denied, "{}", case.name);
            assert_eq!(response["allowed"], false, "{}", case.name);
            let message = response["status"]["message"].as_str().unwrap_or_default();
            check_golden(case, "txt", &format!("{message}\n"), failures);
        }
        Expect::Inject => {
            assert_eq!(outcome, Outcome::Injected, "{}: {}", case.name, response["status"]["message"]);
            let injected = inject(&pod, &namespace, None, &case.config, templates)
                .unwrap_or_else(|e| panic!("{}: {e}", case.name));
            check_golden(case, "yaml", &to_yaml(&injected), failures);
            let again = inject(&injected, &namespace, None, &case.config, templates).unwrap();
            if again != injected {
                failures.push(format!(
                    "{}: injecting twice changed the pod:\n{}",
                    case.name,
                    diff(&to_yaml(&injected), &to_yaml(&again))
                ));
            }
            // The webhook's patch, applied to what the API server sent, gives the injected pod.
            // base64, as Kubernetes documents the field.
            let bytes: k8s_openapi::ByteString = serde_json::from_value(response["patch"].clone()).unwrap();
            let bytes = bytes.0;
            let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(response["patchType"], "JSONPatch");
            let mut patched = input.clone();
            json_patch::patch(&mut patched, &patch)
                .unwrap_or_else(|e| panic!("{}: patch does not apply: {e}", case.name));
            // Compared as JSON, not re-read into a Pod, which would hide misplaced fields.
            let expected = serde_json::to_value(&injected).unwrap();
            if patched != expected {
                let as_yaml = |v: &Value| serde_saphyr::to_string(v).unwrap();
                failures.push(format!(
                    "{}: the patched pod differs from the injected pod:\n{}",
                    case.name,
                    diff(&as_yaml(&expected), &as_yaml(&patched))
                ));
            }
        }
        Expect::Skip(_) => unreachable!(),
    }
}

fn check_manual_case(case: &Case, templates: &Templates, failures: &mut Vec<String>) {
    let once = inject_manifests(&case.text, &case.config, templates)
        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
    check_golden(case, "yaml", &once, failures);
    let twice = inject_manifests(&once, &case.config, templates).unwrap();
    if twice != once {
        failures.push(format!(
            "{}: injecting twice changed the manifest:\n{}",
            case.name,
            diff(&once, &twice)
        ));
    }
}

#[test]
fn golden_cases() {
    let templates = Templates::embedded().unwrap();
    let cases = cases();
    assert!(cases.len() >= 30, "only {} golden cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let kind: Value = serde_saphyr::from_str(&case.text).unwrap();
        if kind["kind"] == "Pod" {
            check_pod_case(case, &templates, &mut failures);
        } else {
            check_manual_case(case, &templates, &mut failures);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} golden cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}
