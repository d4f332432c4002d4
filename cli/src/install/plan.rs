//! What an install applies, in which order, and what it prunes: pure functions from the
//! rendered manifests and the objects an earlier install left, no I/O.
//!
//! Everything install applies carries two labels, so that a later install (pruning) and
//! `trellis uninstall` find exactly what install made, and nothing else:
//! `app.kubernetes.io/managed-by: trellis` and `install.trellis.io/release: <release>`.

use std::collections::BTreeSet;
use std::fmt;

use serde_json::{Map, Value, json};

use super::cluster::{known_kind, split_api_version};
use crate::chart::order::install_rank;

pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "trellis";
pub const RELEASE_LABEL: &str = "install.trellis.io/release";

/// The label selector of what the install of `release` made.
pub fn ownership_selector(release: &str) -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY},{RELEASE_LABEL}={release}")
}

/// One object on the cluster, as messages name it: `Deployment trellis-system/trellisd`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectRef {
    pub api_version: String,
    pub kind: String,
    /// Empty for a cluster-scoped object.
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    /// Reads the identity of an object; the error names the missing field.
    pub fn of(object: &Value) -> Result<ObjectRef, String> {
        let text = |value: &Value, field: &str| match value {
            Value::String(s) if !s.trim().is_empty() => Ok(s.clone()),
            Value::Null => Err(format!("has no {field}")),
            other => Err(format!("{field} must be a non-empty string, got {other}")),
        };
        let api_version = text(&object["apiVersion"], "apiVersion")?;
        let kind = text(&object["kind"], "kind")?;
        let name = text(&object["metadata"]["name"], "metadata.name")?;
        let namespace = match &object["metadata"]["namespace"] {
            Value::Null => String::new(),
            value => text(value, "metadata.namespace")?,
        };
        Ok(ObjectRef { api_version, kind, namespace, name })
    }

    pub fn group(&self) -> &str {
        split_api_version(&self.api_version).0
    }

    /// Group, kind, namespace and name: the same object whichever version it is read at.
    fn identity(&self) -> (&str, &str, &str, &str) {
        (self.group(), &self.kind, &self.namespace, &self.name)
    }

    pub fn same_object(&self, other: &ObjectRef) -> bool {
        self.identity() == other.identity()
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// One object to apply.
#[derive(Clone, Debug)]
pub struct Desired {
    pub reference: ObjectRef,
    /// The object as applied: the ownership labels added, the namespace filled in.
    pub object: Value,
    /// The template it came from, for messages.
    pub source: String,
}

/// Everything install applies, in order: namespaces, then CRDs, then the rest in the order the
/// chart gave (Helm's install order).
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub namespaces: Vec<Desired>,
    pub crds: Vec<Desired>,
    pub rest: Vec<Desired>,
}

impl Plan {
    pub fn all(&self) -> impl Iterator<Item = &Desired> {
        self.namespaces.iter().chain(&self.crds).chain(&self.rest)
    }
}

/// Checks and labels the rendered objects. `namespace` is the release namespace: namespaced
/// objects without one go there, and a Namespace object for it is added unless the chart
/// renders one.
pub fn prepare(
    rendered: impl IntoIterator<Item = (String, Value)>,
    namespace: &str,
    release: &str,
) -> Result<Plan, String> {
    let mut plan = Plan::default();
    let mut seen: Vec<ObjectRef> = Vec::new();
    for (source, mut object) in rendered {
        if object.is_null() {
            continue;
        }
        if !object.is_object() {
            return Err(format!("{source}: a rendered document is not an object: {object}"));
        }
        let mut reference = ObjectRef::of(&object).map_err(|e| format!("{source}: a rendered object {e}"))?;
        let namespaced = known_kind(&reference.api_version, &reference.kind).map(|k| k.namespaced);
        match namespaced {
            Some(true) if reference.namespace.is_empty() => {
                reference.namespace = namespace.to_owned();
                object["metadata"]["namespace"] = json!(namespace);
            }
            Some(false) if !reference.namespace.is_empty() => {
                return Err(format!(
                    "{source}: {} is cluster-scoped but has metadata.namespace {:?}",
                    reference.kind, reference.namespace
                ));
            }
            _ => {}
        }
        if let Some(earlier) = seen.iter().find(|r| r.same_object(&reference)) {
            return Err(format!("{source}: {earlier} is rendered twice"));
        }
        seen.push(reference.clone());
        label(&mut object, release)?;
        let desired = Desired { reference, object, source };
        match desired.reference.kind.as_str() {
            "Namespace" => plan.namespaces.push(desired),
            "CustomResourceDefinition" => plan.crds.push(desired),
            _ => plan.rest.push(desired),
        }
    }
    if !plan.namespaces.iter().any(|d| d.reference.name == namespace) {
        let mut object = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}});
        label(&mut object, release)?;
        let reference = ObjectRef::of(&object)?;
        plan.namespaces.insert(0, Desired { reference, object, source: "the release namespace".to_owned() });
    }
    Ok(plan)
}

/// Adds the ownership labels (replacing the chart's `managed-by`, which says Helm).
fn label(object: &mut Value, release: &str) -> Result<(), String> {
    let metadata = object
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| "metadata is not an object".to_owned())?;
    let labels = metadata.entry("labels").or_insert_with(|| Value::Object(Map::new()));
    if labels.is_null() {
        *labels = Value::Object(Map::new());
    }
    if !labels.is_object() {
        return Err(format!("metadata.labels is not a map: {labels}"));
    }
    let Some(labels) = labels.as_object_mut() else { return Ok(()) };
    labels.insert(MANAGED_BY_LABEL.to_owned(), json!(MANAGED_BY));
    labels.insert(RELEASE_LABEL.to_owned(), json!(release));
    Ok(())
}

/// Whether an object carries the labels of the install of `release`.
pub fn owned_by(object: &Value, release: &str) -> bool {
    let labels = &object["metadata"]["labels"];
    labels[MANAGED_BY_LABEL].as_str() == Some(MANAGED_BY) && labels[RELEASE_LABEL].as_str() == Some(release)
}

/// Kinds that hold other people's data: never pruned by an upgrade, only removed by
/// `trellis uninstall --purge`.
pub fn holds_user_data(kind: &str) -> bool {
    matches!(kind, "Namespace" | "CustomResourceDefinition")
}

/// What an earlier install made that the new plan no longer has, in the order to delete it.
/// Namespaces and CRDs are never pruned (they hold the users' objects).
pub fn to_prune(owned: &[ObjectRef], plan: &Plan) -> Vec<ObjectRef> {
    let desired: Vec<&ObjectRef> = plan.all().map(|d| &d.reference).collect();
    let mut prune: Vec<ObjectRef> = owned
        .iter()
        .filter(|o| !holds_user_data(&o.kind) && !desired.iter().any(|d| d.same_object(o)))
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    sort_for_deletion(&mut prune);
    prune
}

/// Reverse install order, as Helm uninstalls: the webhook goes first (so that pod creation never
/// waits on an injector that is gone), namespaces and CRDs last; then by name, for stable output.
pub fn sort_for_deletion(objects: &mut [ObjectRef]) {
    objects.sort_by(|a, b| {
        install_rank(&b.kind)
            .cmp(&install_rank(&a.kind))
            .then_with(|| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(docs: &[Value]) -> Vec<(String, Value)> {
        docs.iter().enumerate().map(|(i, d)| (format!("templates/t{i}.yaml"), d.clone())).collect()
    }

    fn reference(kind: &str, namespace: &str, name: &str) -> ObjectRef {
        let api_version = known_kind("v1", kind)
            .or_else(|| known_kind("apps/v1", kind))
            .or_else(|| known_kind("admissionregistration.k8s.io/v1", kind))
            .or_else(|| known_kind("apiextensions.k8s.io/v1", kind))
            .map(|k| k.resource.api_version)
            .unwrap_or_else(|| "v1".to_owned());
        ObjectRef { api_version, kind: kind.into(), namespace: namespace.into(), name: name.into() }
    }

    #[test]
    fn objects_are_labelled_placed_and_ordered() {
        let plan = prepare(
            rendered(&[
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "mesh",
                    "labels": {"app.kubernetes.io/managed-by": "Helm", "app": "x"}}}),
                json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                    "metadata": {"name": "a.b.c"}}),
                json!({"apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": "d", "namespace": "elsewhere", "labels": null}}),
                Value::Null,
            ]),
            "trellis-system",
            "trellis",
        )
        .unwrap();
        let order: Vec<String> = plan.all().map(|d| d.reference.to_string()).collect();
        assert_eq!(
            order,
            [
                "Namespace trellis-system",
                "CustomResourceDefinition a.b.c",
                "ConfigMap trellis-system/mesh",
                "Deployment elsewhere/d"
            ]
        );
        for desired in plan.all() {
            assert!(owned_by(&desired.object, "trellis"), "{}", desired.reference);
            assert!(!owned_by(&desired.object, "other"), "{}", desired.reference);
        }
        let config_map = &plan.rest[0].object;
        assert_eq!(config_map["metadata"]["namespace"], "trellis-system");
        assert_eq!(config_map["metadata"]["labels"]["app"], "x");
        assert_eq!(config_map["metadata"]["labels"]["app.kubernetes.io/managed-by"], "trellis");
    }

    #[test]
    fn a_rendered_namespace_is_not_added_twice() {
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "mesh"}});
        let plan = prepare(rendered(&[ns]), "mesh", "r").unwrap();
        assert_eq!(plan.namespaces.len(), 1);
        assert_eq!(plan.namespaces[0].source, "templates/t0.yaml");
    }

    #[test]
    fn bad_objects_are_named() {
        let cases = [
            (
                json!({"kind": "ConfigMap", "metadata": {"name": "x"}}),
                "templates/t0.yaml: a rendered object has no apiVersion",
            ),
            (json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}), "has no metadata.name"),
            (
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": 3}}),
                "metadata.name must be a non-empty string, got 3",
            ),
            (
                json!({"apiVersion": "v1", "kind": "", "metadata": {"name": "x"}}),
                "kind must be a non-empty string",
            ),
            (json!(["a"]), "is not an object"),
            (
                json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "x", "namespace": "n"}}),
                "ClusterRole is cluster-scoped but has metadata.namespace \"n\"",
            ),
            (
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "labels": ["a"]}}),
                "metadata.labels is not a map",
            ),
        ];
        for (object, expected) in cases {
            let err = prepare(rendered(std::slice::from_ref(&object)), "ns", "r").unwrap_err();
            assert!(err.contains(expected), "{object}: {err}");
        }
        let twice = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}});
        let err = prepare(rendered(&[twice.clone(), twice]), "ns", "r").unwrap_err();
        assert_eq!(err, "templates/t1.yaml: ConfigMap ns/x is rendered twice");
    }

    #[test]
    fn pruning_spares_what_is_rendered_and_what_holds_user_data() {
        let plan = prepare(
            rendered(&[
                json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "trellisd"}}),
            ]),
            "ns",
            "r",
        )
        .unwrap();
        let owned = vec![
            reference("Deployment", "ns", "trellisd"),
            reference("Service", "ns", "old"),
            reference("MutatingWebhookConfiguration", "", "old-webhook"),
            reference("Namespace", "", "ns"),
            reference("Namespace", "", "old-ns"),
            reference("CustomResourceDefinition", "", "gone.istio.io"),
            reference("Service", "ns", "old"),
        ];
        let prune: Vec<String> = to_prune(&owned, &plan).iter().map(ToString::to_string).collect();
        assert_eq!(prune, ["MutatingWebhookConfiguration old-webhook", "Service ns/old"]);
    }

    #[test]
    fn deletion_goes_in_reverse_install_order() {
        let mut objects = vec![
            reference("Namespace", "", "ns"),
            reference("ServiceAccount", "ns", "a"),
            reference("Widget", "ns", "w"),
            reference("Deployment", "ns", "d"),
            reference("CustomResourceDefinition", "", "c"),
            reference("MutatingWebhookConfiguration", "", "m"),
        ];
        sort_for_deletion(&mut objects);
        let kinds: Vec<&str> = objects.iter().map(|o| o.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "Widget",
                "MutatingWebhookConfiguration",
                "Deployment",
                "CustomResourceDefinition",
                "ServiceAccount",
                "Namespace"
            ]
        );
    }

    #[test]
    fn the_same_object_at_another_version() {
        let a = ObjectRef {
            api_version: "networking.istio.io/v1beta1".into(),
            kind: "VirtualService".into(),
            namespace: "n".into(),
            name: "x".into(),
        };
        let b = ObjectRef { api_version: "networking.istio.io/v1".into(), ..a.clone() };
        assert!(a.same_object(&b));
        assert_eq!(
            ownership_selector("t"),
            "app.kubernetes.io/managed-by=trellis,install.trellis.io/release=t"
        );
    }
}
