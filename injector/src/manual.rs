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

/// Injects every workload in `text` (multi-document YAML or JSON) and returns YAML.
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
        let kind = object.get("kind").and_then(Value::as_str).unwrap_or_default().to_owned();
        let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_owned();
        let what = format!("{kind} {name}");
        if let Some(pointer) = template_pointer(&kind) {
            let namespace =
                object.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default").to_owned();
            let workload = (kind != "Pod").then_some(name.as_str());
            let template = object
                .pointer_mut(pointer)
                .ok_or_else(|| fail(&what, format!("has no pod template at {pointer}")))?;
            inject_template(template, &namespace, workload, config, templates).map_err(|m| fail(&what, m))?;
        }
        out.push(serde_saphyr::to_string(&object).map_err(|e| fail(&what, e.to_string()))?);
    }
    Ok(out.join("---\n"))
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
