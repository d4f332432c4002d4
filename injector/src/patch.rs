//! The JSONPatch the webhook answers with: the difference between the pod as submitted and the
//! injected pod.
//!
//! Injection changes only the pod's labels, annotations, init containers, containers and
//! volumes; nothing else is compared (`managedFields`, which the API server owns, included).
//! Lists are compared by element name, not by position: the sidecar's containers go in with
//! `add` at their index and the user's containers are patched where they end up, so a field
//! the API server knows and our Kubernetes model does not is never moved onto another container.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation, ReplaceOperation};
use k8s_openapi::api::core::v1::{Container, Pod, Volume};
use serde::Serialize;
use serde_json::{Map, Value, json};

pub fn pod_patch(original: &Pod, injected: &Pod) -> Patch {
    let mut ops = Vec::new();
    let meta = |pod: &Pod| {
        without_nulls(
            json!({"metadata": {"labels": pod.metadata.labels, "annotations": pod.metadata.annotations}}),
        )
    };
    ops.extend(json_patch::diff(&meta(original), &meta(injected)).0);
    match (&original.spec, &injected.spec) {
        (Some(before), Some(after)) => {
            let spec = PointerBuf::from_tokens(["spec"]);
            let (b, a) = (before.init_containers.as_deref(), after.init_containers.as_deref());
            list_ops(&spec, "initContainers", b, a, container_name, &mut ops);
            let (b, a) = (Some(before.containers.as_slice()), Some(after.containers.as_slice()));
            list_ops(&spec, "containers", b, a, container_name, &mut ops);
            list_ops(
                &spec,
                "volumes",
                before.volumes.as_deref(),
                after.volumes.as_deref(),
                volume_name,
                &mut ops,
            );
        }
        (None, Some(after)) => ops.push(add(PointerBuf::from_tokens(["spec"]), after)),
        _ => {}
    }
    Patch(ops)
}

fn container_name(c: &Container) -> &str {
    &c.name
}

fn volume_name(v: &Volume) -> &str {
    &v.name
}

/// Operations turning list `before` into `after` (at `parent/field`), matching elements by name.
fn list_ops<'a, T: Serialize + PartialEq + 'a>(
    parent: &PointerBuf,
    field: &str,
    before: Option<&'a [T]>,
    after: Option<&'a [T]>,
    name: impl Fn(&'a T) -> &'a str,
    ops: &mut Vec<PatchOperation>,
) {
    let mut path = parent.clone();
    path.push_back(field);
    let at = |i: usize| {
        let mut p = path.clone();
        p.push_back(i);
        p
    };
    let (before, after) = match (before, after) {
        (None, None) => return,
        (None, Some(after)) => return ops.push(add(path, after)),
        (Some(_), None) => return ops.push(PatchOperation::Remove(RemoveOperation { path })),
        (Some(b), Some(a)) => (b, a),
    };
    let after_names: Vec<&str> = after.iter().map(&name).collect();
    let before_names: Vec<&str> = before.iter().map(&name).collect();
    let mut current = before_names.clone();
    for i in (0..before.len()).rev() {
        if !after_names.contains(&before_names[i]) {
            ops.push(PatchOperation::Remove(RemoveOperation { path: at(i) }));
            current.remove(i);
        }
    }
    for (j, item) in after.iter().enumerate() {
        if !before_names.contains(&after_names[j]) {
            ops.push(add(at(j), item));
            current.insert(j.min(current.len()), after_names[j]);
        }
    }
    if current != after_names {
        // Kept elements changed their order, which injection never does; say it plainly.
        ops.push(PatchOperation::Replace(ReplaceOperation { path, value: to_value(after) }));
        return;
    }
    for (j, item) in after.iter().enumerate() {
        let Some(i) = before_names.iter().position(|n| *n == after_names[j]) else { continue };
        if before[i] != *item {
            let element = at(j);
            for mut op in json_patch::diff(&to_value(&before[i]), &to_value(item)).0 {
                prefix(&mut op, &element);
                ops.push(op);
            }
        }
    }
}

fn add<T: Serialize + ?Sized>(path: PointerBuf, value: &T) -> PatchOperation {
    PatchOperation::Add(AddOperation { path, value: to_value(value) })
}

fn to_value<T: Serialize + ?Sized>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// Moves an operation on an element to the element's place in the pod.
fn prefix(op: &mut PatchOperation, element: &PointerBuf) {
    let rebase = |p: &mut PointerBuf| *p = element.concat(p);
    match op {
        PatchOperation::Add(o) => rebase(&mut o.path),
        PatchOperation::Remove(o) => rebase(&mut o.path),
        PatchOperation::Replace(o) => rebase(&mut o.path),
        PatchOperation::Test(o) => rebase(&mut o.path),
        PatchOperation::Move(o) => {
            rebase(&mut o.path);
            rebase(&mut o.from);
        }
        PatchOperation::Copy(o) => {
            rebase(&mut o.path);
            rebase(&mut o.from);
        }
    }
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
