//! Manual injection, like `istioctl kube-inject`: injects the pod template of every workload in
//! a manifest stream and passes every other object through unchanged.

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Map, Value};
use trellis_api::load::split_documents;

use crate::config::InjectorConfig;
use crate::decision::{InjectDecision, NamespaceInjection, decide};
use crate::inject::inject;
use crate::template::Templates;

#[derive(Debug, thiserror::Error)]
#[error("doc {doc}: {what}: {message}")]
pub struct ManualError {
    pub doc: usize,
    pub what: String,
    pub message: String,
}

/// Where a kind keeps its pod template, as a JSON pointer; `""` for a Pod itself.
fn template_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" | "ReplicationController" => {
            Some("/spec/template")
        }
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// Lists inside Lists are not something kubectl writes; the bound only stops a hostile input
/// from recursing without end.
const MAX_LIST_DEPTH: usize = 4;

/// Injects every workload in `text` (multi-document YAML or JSON) and returns YAML. The items of
/// a `List` (what `kubectl get deploy -o yaml` prints) are injected one by one.
pub fn inject_manifests(
    text: &str,
    config: &InjectorConfig,
    templates: &Templates,
) -> Result<String, ManualError> {
    let mut out = Vec::new();
    for doc in split_documents(text) {
        let fail =
            |what: &str, message: String| ManualError { doc: doc.index, what: what.to_owned(), message };
        let mut object: Value = serde_saphyr::from_str(doc.text)
            .map_err(|e| fail("document", e.without_snippet().to_string()))?;
        inject_object(&mut object, 0, config, templates).map_err(|e| fail(&e.what, e.message))?;
        let what = describe(&object);
        out.push(serde_saphyr::to_string(&object).map_err(|e| fail(&what, e.to_string()))?);
    }
    Ok(out.join("---\n"))
}

/// Why one object (or an item inside it) could not be injected.
struct ObjectError {
    what: String,
    message: String,
}

/// `Deployment reviews`, for messages.
fn describe(object: &Value) -> String {
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or_default();
    let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    format!("{kind} {name}").trim().to_owned()
}

/// `List`, or a typed list such as `DeploymentList` as the API server returns them.
fn is_list(kind: &str) -> bool {
    kind.ends_with("List")
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Injects one object in place: a workload's pod template, or each item of a List; any other
/// object passes through unchanged.
fn inject_object(
    object: &mut Value,
    depth: usize,
    config: &InjectorConfig,
    templates: &Templates,
) -> Result<(), ObjectError> {
    let what = describe(object);
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or_default().to_owned();
    let fail = |message: String| ObjectError { what: what.clone(), message };
    if is_list(&kind) {
        if depth >= MAX_LIST_DEPTH {
            return Err(fail(format!("Lists nested more than {MAX_LIST_DEPTH} deep")));
        }
        let items = match object.get_mut("items") {
            None | Some(Value::Null) => return Ok(()),
            Some(Value::Array(items)) => items,
            Some(other) => {
                return Err(fail(format!("items: expected a list of objects, found {}", json_type(other))));
            }
        };
        for (index, item) in items.iter_mut().enumerate() {
            if !item.is_object() {
                return Err(fail(format!("items[{index}]: expected an object, found {}", json_type(item))));
            }
            inject_object(item, depth + 1, config, templates).map_err(|e| ObjectError {
                what: format!("{what} items[{index}]: {}", e.what),
                message: e.message,
            })?;
        }
        return Ok(());
    }
    let Some(pointer) = template_pointer(&kind) else { return Ok(()) };
    if kind == "CronJob" {
        adopt_istio_cronjob_status(object);
    }
    let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_owned();
    let namespace =
        object.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default").to_owned();
    let workload = (kind != "Pod").then_some(name.as_str());
    let template =
        object.pointer_mut(pointer).ok_or_else(|| fail(format!("has no pod template at {pointer}")))?;
    inject_template(template, &namespace, workload, config, templates).map_err(fail)
}

/// `istioctl kube-inject` writes a CronJob's injection record (`sidecar.istio.io/status`) on
/// the Job template's metadata instead of the pod template's. Moved to the pod template, it
/// lets Trellis take out the sidecar Istio put into the pod template, as for any pod Istio
/// injected, instead of refusing the pod for its `istio-proxy` container.
fn adopt_istio_cronjob_status(cronjob: &mut Value) {
    use trellis_api::annotations::names::annotation::SIDECAR_STATUS;
    let pod_has_one = cronjob
        .pointer(&format!(
            "/spec/jobTemplate/spec/template/metadata/annotations/{}",
            SIDECAR_STATUS.replace('/', "~1")
        ))
        .is_some();
    if pod_has_one {
        return;
    }
    let Some(Value::Object(job_annotations)) = cronjob.pointer_mut("/spec/jobTemplate/metadata/annotations")
    else {
        return;
    };
    let Some(status) = job_annotations.remove(SIDECAR_STATUS) else { return };
    let Some(Value::Object(template)) = cronjob.pointer_mut("/spec/jobTemplate/spec/template") else {
        return;
    };
    let metadata = template.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(metadata) = metadata {
        let annotations = metadata.entry("annotations").or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(annotations) = annotations {
            annotations.insert(SIDECAR_STATUS.to_owned(), status);
        }
    }
}

/// Injects one pod (or pod template: `metadata` and `spec`) in place.
fn inject_template(
    template: &mut Value,
    namespace: &str,
    workload: Option<&str>,
    config: &InjectorConfig,
    templates: &Templates,
) -> Result<(), String> {
    let pod: Pod =
        serde_json::from_value(template.clone()).map_err(|e| format!("invalid pod template: {e}"))?;
    // Manual injection is an explicit request: the namespace label does not matter.
    if let InjectDecision::Skip(reason) = decide(&pod, namespace, NamespaceInjection::Enabled, config) {
        tracing::info!(%reason, "not injecting");
        return Ok(());
    }
    let injected = inject(&pod, namespace, workload, config, templates).map_err(|e| e.to_string())?;
    let injected = serde_json::to_value(&injected).map_err(|e| e.to_string())?;
    let Value::Object(target) = template else { return Err("pod template is not a mapping".to_owned()) };
    for key in ["metadata", "spec"] {
        target.insert(key.to_owned(), injected.get(key).cloned().unwrap_or(Value::Object(Map::new())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inject(text: &str) -> Result<String, String> {
        let templates = Templates::embedded().unwrap();
        inject_manifests(text, &InjectorConfig::default(), &templates).map_err(|e| e.to_string())
    }

    const DEPLOYMENT: &str = "{apiVersion: apps/v1, kind: Deployment, metadata: {name: web},
        spec: {template: {metadata: {labels: {app: web}}, spec: {containers: [{name: web, image: web}]}}}}";

    fn proxies(text: &str) -> usize {
        text.matches("name: istio-proxy").count()
    }

    #[test]
    fn every_item_of_a_list_is_injected() {
        let list = format!(
            "{{apiVersion: v1, kind: List, items: [{DEPLOYMENT}, {DEPLOYMENT}, {{apiVersion: v1, kind: Service, metadata: {{name: web}}}}]}}"
        );
        let out = inject(&list).unwrap();
        assert_eq!(proxies(&out), 2, "{out}");
        assert!(out.contains("kind: List") && out.contains("kind: Service"), "{out}");
        // The API server's typed lists too.
        let typed = format!("{{apiVersion: apps/v1, kind: DeploymentList, items: [{DEPLOYMENT}]}}");
        assert_eq!(proxies(&inject(&typed).unwrap()), 1);
        // An empty List is passed on.
        assert!(inject("{apiVersion: v1, kind: List, items: []}").is_ok());
        assert!(inject("{apiVersion: v1, kind: List}").is_ok());
    }

    #[test]
    fn a_list_item_that_is_not_an_object_is_named() {
        let list = format!("{{apiVersion: v1, kind: List, items: [{DEPLOYMENT}, 42]}}");
        assert_eq!(inject(&list).unwrap_err(), "doc 1: List: items[1]: expected an object, found a number");
        let items = "{apiVersion: v1, kind: List, items: {a: b}}";
        assert_eq!(
            inject(items).unwrap_err(),
            "doc 1: List: items: expected a list of objects, found an object"
        );
    }

    #[test]
    fn an_item_that_fails_is_named_with_its_place() {
        let bad = "{apiVersion: apps/v1, kind: Deployment, metadata: {name: bad}, spec: {template: {metadata: {annotations: {sidecar.istio.io/proxyCPU: lots}}, spec: {containers: [{name: a}]}}}}";
        let list = format!("{{apiVersion: v1, kind: List, items: [{DEPLOYMENT}, {bad}]}}");
        let error = inject(&list).unwrap_err();
        assert!(
            error.starts_with("doc 1: List items[1]: Deployment bad: annotation sidecar.istio.io/proxyCPU: invalid value \"lots\""),
            "{error}"
        );
    }

    #[test]
    fn a_cronjob_istioctl_injected_is_injected_again() {
        // istioctl kube-inject's CronJob: the status on the Job template, the sidecar in the pod.
        let istio = r#"{apiVersion: batch/v1, kind: CronJob, metadata: {name: nightly}, spec: {schedule: "0 3 * * *",
            jobTemplate: {metadata: {annotations: {sidecar.istio.io/status: '{"initContainers":["istio-init","istio-proxy"],"containers":null,"volumes":["istio-envoy"]}'}},
              spec: {template: {metadata: {}, spec: {restartPolicy: OnFailure,
                initContainers: [{name: istio-init, image: istio}, {name: istio-proxy, image: istio, restartPolicy: Always}],
                containers: [{name: job, image: job}], volumes: [{name: istio-envoy, emptyDir: {}}]}}}}}}"#;
        let out = inject(istio).unwrap();
        assert_eq!(proxies(&out), 1, "{out}");
        assert!(!out.contains("istio-init") && !out.contains("image: istio\n"), "{out}");
        // Odd shapes are left to the injection that follows, never a panic.
        for odd in [
            "{kind: CronJob, spec: {jobTemplate: {metadata: {annotations: 7}, spec: {template: {spec: {containers: [{name: a}]}}}}}}",
            "{kind: CronJob, spec: {jobTemplate: {metadata: {annotations: {sidecar.istio.io/status: x}}, spec: {template: 3}}}}",
        ] {
            let _ = inject(odd);
        }
    }

    #[test]
    fn lists_nested_without_end_are_refused() {
        let mut text = DEPLOYMENT.to_owned();
        for _ in 0..10 {
            text = format!("{{kind: List, items: [{text}]}}");
        }
        let error = inject(&text).unwrap_err();
        assert!(error.contains("Lists nested more than 4 deep"), "{error}");
    }
}
