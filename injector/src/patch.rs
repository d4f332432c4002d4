//! The JSONPatch the webhook answers with: the difference between the pod as submitted and the
//! injected pod, both without `managedFields` (which the API server owns and a patch must not
//! touch).

use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

pub fn pod_patch(original: &Pod, injected: &Pod) -> json_patch::Patch {
    json_patch::diff(&comparable(original), &comparable(injected))
}

fn comparable(pod: &Pod) -> Value {
    let mut pod = pod.clone();
    pod.metadata.managed_fields = None;
    serde_json::to_value(&pod).unwrap_or(Value::Null)
}
