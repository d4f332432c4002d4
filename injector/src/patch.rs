//! The JSONPatch the webhook answers with: the difference between the pod as submitted and the
//! injected pod.
//!
//! Injection changes only the pod's labels, annotations, init containers, containers and
//! volumes; nothing else is compared (`managedFields`, which the API server owns, included).
//! Lists are compared by element name, not by position: the sidecar's containers go in with
//! `add` at their index and the user's containers are patched where they end up, so a field
//! the API server knows and our Kubernetes model does not is never moved onto another container.

use k8s_openapi::api::core::v1::{Container, Pod, Volume};
use serde::Serialize;
use serde_json::{Map, Value, json};

pub fn pod_patch(original: &Pod, injected: &Pod) -> json_patch::Patch {
    let mut ops: Vec<Value> = Vec::new();
    let meta = |pod: &Pod| json!({"metadata": {"labels": pod.metadata.labels, "annotations": pod.metadata.annotations}});
    ops.extend(operations(json_patch::diff(&without_nulls(meta(original)), &without_nulls(meta(injected)))));
    match (&original.spec, &injected.spec) {
        (Some(before), Some(after)) => {
            let name = |c: &Container| c.name.clone();
            list_ops(
                "/spec/initContainers",
                before.init_containers.as_deref(),
                after.init_containers.as_deref(),
                name,
                &mut ops,
            );
            list_ops("/spec/containers", Some(&before.containers), Some(&after.containers), name, &mut ops);
            let name = |v: &Volume| v.name.clone();
            list_ops("/spec/volumes", before.volumes.as_deref(), after.volumes.as_deref(), name, &mut ops);
        }
        (None, Some(after)) => ops.push(json!({"op": "add", "path": "/spec", "value": after})),
        _ => {}
    }
    serde_json::from_value(Value::Array(ops)).unwrap_or_else(|_| json_patch::Patch(Vec::new()))
}

/// Operations turning list `before` into `after`, matching elements by name.
fn list_ops<T: Serialize + PartialEq>(
    path: &str,
    before: Option<&[T]>,
    after: Option<&[T]>,
    name: impl Fn(&T) -> String,
    ops: &mut Vec<Value>,
) {
    let (before, after) = match (before, after) {
        (None, None) => return,
        (None, Some(after)) => return ops.push(json!({"op": "add", "path": path, "value": after})),
        (Some(_), None) => return ops.push(json!({"op": "remove", "path": path})),
        (Some(b), Some(a)) => (b, a),
    };
    let after_names: Vec<String> = after.iter().map(&name).collect();
    let before_names: Vec<String> = before.iter().map(&name).collect();
    let mut current = before_names.clone();
    for i in (0..before.len()).rev() {
        if !after_names.contains(&before_names[i]) {
            ops.push(json!({"op": "remove", "path": format!("{path}/{i}")}));
            current.remove(i);
        }
    }
    for (j, item) in after.iter().enumerate() {
        if !before_names.contains(&after_names[j]) {
            ops.push(json!({"op": "add", "path": format!("{path}/{j}"), "value": item}));
            current.insert(j.min(current.len()), after_names[j].clone());
        }
    }
    if current != after_names {
        // Kept elements changed their order, which injection never does; say it plainly.
        ops.push(json!({"op": "replace", "path": path, "value": after}));
        return;
    }
    for (j, item) in after.iter().enumerate() {
        let Some(i) = before_names.iter().position(|n| *n == after_names[j]) else { continue };
        if before[i] != *item {
            let diff = json_patch::diff(&to_value(&before[i]), &to_value(item));
            ops.extend(operations(diff).map(|op| prefixed(op, &format!("{path}/{j}"))));
        }
    }
}

fn to_value<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn operations(patch: json_patch::Patch) -> impl Iterator<Item = Value> {
    match serde_json::to_value(patch) {
        Ok(Value::Array(ops)) => ops.into_iter(),
        _ => Vec::new().into_iter(),
    }
}

/// Moves an operation on an element to its place in the pod.
fn prefixed(mut op: Value, prefix: &str) -> Value {
    for key in ["path", "from"] {
        if let Some(Value::String(p)) = op.get_mut(key) {
            *p = format!("{prefix}{p}");
        }
    }
    op
}

/// Drops null members, so that an absent map compares as absent, not as `null`.
fn without_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, without_nulls(v)))
                .collect::<Map<_, _>>(),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A field our Kubernetes model does not know stays on the container it belongs to.
    #[test]
    fn unknown_fields_stay_with_their_container() {
        let raw = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "labels": {"app": "p"}},
            "spec": {
                "initContainers": [{"name": "migrate", "image": "m", "futureField": {"keep": true}}],
                "containers": [{"name": "app", "image": "a", "futureField": 1,
                                "livenessProbe": {"httpGet": {"path": "/", "port": 80}}}],
                "volumes": [{"name": "data", "emptyDir": {}, "futureField": "x"}]
            }
        });
        let original: Pod = serde_json::from_value(raw.clone()).unwrap();
        let mut injected = original.clone();
        let spec = injected.spec.as_mut().unwrap();
        let mut init = vec![Container { name: "trellis-init".into(), ..Container::default() }];
        init.extend(spec.init_containers.take().unwrap());
        spec.init_containers = Some(init);
        spec.containers[0].liveness_probe.as_mut().unwrap().period_seconds = Some(7);
        spec.containers.insert(0, Container { name: "istio-proxy".into(), ..Container::default() });
        spec.volumes.as_mut().unwrap().push(Volume { name: "istio-envoy".into(), ..Volume::default() });
        injected.metadata.labels.as_mut().unwrap().insert("security.istio.io/tlsMode".into(), "istio".into());

        let mut patched = raw.clone();
        json_patch::patch(&mut patched, &pod_patch(&original, &injected)).unwrap();
        let inits = &patched["spec"]["initContainers"];
        assert_eq!(inits[0]["name"], "trellis-init");
        assert!(inits[0].get("futureField").is_none(), "{patched:#}");
        assert_eq!(inits[1]["futureField"]["keep"], true);
        let containers = &patched["spec"]["containers"];
        assert_eq!(containers[0]["name"], "istio-proxy");
        assert_eq!(containers[1]["futureField"], 1);
        assert_eq!(containers[1]["livenessProbe"]["periodSeconds"], 7);
        assert_eq!(patched["spec"]["volumes"][0]["futureField"], "x");
        assert_eq!(patched["spec"]["volumes"][1]["name"], "istio-envoy");
        assert_eq!(patched["metadata"]["labels"]["security.istio.io/tlsMode"], "istio");
    }
}
