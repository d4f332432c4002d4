//! The JSONPatch the webhook answers with: the difference between the pod as submitted and the
//! injected pod.
//!
//! Injection changes only the pod's labels, annotations, init containers, containers and
//! volumes, so only those are compared; everything else (including `managedFields`, which the
//! API server owns) is the same on both sides and stays out of the patch. The golden tests apply
//! every patch to its input and compare the result with the injected pod.

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Map, Value};

pub fn pod_patch(original: &Pod, injected: &Pod) -> json_patch::Patch {
    json_patch::diff(&touched_fields(original), &touched_fields(injected))
}

/// `{"metadata": {"labels", "annotations"}, "spec": {"initContainers", "containers",
/// "volumes"}}`, leaving out what the pod does not have, so that a field injection adds becomes
/// an `add` at the right path.
fn touched_fields(pod: &Pod) -> Value {
    fn put<T: serde::Serialize>(map: &mut Map<String, Value>, key: &str, value: Option<&T>) {
        if let Some(v) = value.and_then(|v| serde_json::to_value(v).ok()) {
            map.insert(key.to_owned(), v);
        }
    }
    let mut metadata = Map::new();
    put(&mut metadata, "labels", pod.metadata.labels.as_ref());
    put(&mut metadata, "annotations", pod.metadata.annotations.as_ref());
    let mut root = Map::new();
    root.insert("metadata".to_owned(), Value::Object(metadata));
    if let Some(spec) = &pod.spec {
        let mut s = Map::new();
        put(&mut s, "initContainers", spec.init_containers.as_ref());
        put(&mut s, "containers", Some(&spec.containers));
        put(&mut s, "volumes", spec.volumes.as_ref());
        root.insert("spec".to_owned(), Value::Object(s));
    }
    Value::Object(root)
}
