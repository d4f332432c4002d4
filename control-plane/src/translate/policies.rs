//! Which AuthorizationPolicies and RequestAuthentications apply to a workload, as Istio selects
//! them for a sidecar: every policy of the root namespace (its `selector`, if any, matched
//! against the workload's labels, whatever the workload's namespace) and the policies of the
//! workload's own namespace whose `selector.matchLabels` are all on the workload (none: the
//! whole namespace). A policy attached with `targetRef`/`targetRefs` is for gateways and
//! waypoints: sidecars ignore it. The result is sorted by (namespace, name).

use std::collections::BTreeMap;

use tracing::debug;
use trellis_api::networking::MatchLabelsSelector;
use trellis_api::resource::{Kind, Resource};

use super::objects::selects;
use crate::model::{Model, ObjectKey};

/// A selected policy: `namespace/name`.
pub type PolicyKey = String;

/// The keys of the policies of `kind` that select a workload in `namespace` with `labels`.
pub fn selecting(
    model: &Model,
    kind: Kind,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<PolicyKey> {
    let root = model.mesh.root_namespace();
    let mut keys = Vec::new();
    for (key, resource) in model.of_kind(kind) {
        if key.namespace != root && key.namespace != namespace {
            continue;
        }
        let Some((selector, targeted)) = attachment(resource) else { continue };
        if targeted {
            debug!(policy = %format!("{kind} {}/{}", key.namespace, key.name), "attached with targetRef: for gateways and waypoints, ignored by sidecars");
            continue;
        }
        if selector.is_none_or(|s| selects(&s.match_labels, labels)) {
            keys.push(format!("{}/{}", key.namespace, key.name));
        }
    }
    // The model is keyed by (kind, namespace, name): the order is already (namespace, name).
    keys
}

fn attachment(resource: &Resource) -> Option<(Option<&MatchLabelsSelector>, bool)> {
    match resource {
        Resource::AuthorizationPolicy(ap) => Some((ap.spec.selector.as_ref(), ap.spec.has_target_ref())),
        Resource::RequestAuthentication(ra) => Some((ra.spec.selector.as_ref(), ra.spec.has_target_ref())),
        _ => None,
    }
}

/// The resource a key names, if it is still in the model.
pub fn lookup<'a>(model: &'a Model, kind: Kind, key: &str) -> Option<(&'a ObjectKey, &'a Resource)> {
    let (namespace, name) = key.split_once('/')?;
    model.resources.get_key_value(&ObjectKey::new(kind, namespace, name)).map(|(k, r)| (k, &**r))
}
