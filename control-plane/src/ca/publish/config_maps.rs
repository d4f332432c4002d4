//! Kubernetes mode: the ConfigMap `istio-ca-root-cert` (key `root-cert.pem`) in every
//! namespace, which injected pods mount to trust trellisd and their peers.
//!
//! A reconcile every few seconds and at every change of root: list the namespaces and the
//! ConfigMaps of that name (two list calls, whatever the number of namespaces), then create
//! what is missing — a new namespace, a deleted ConfigMap — and correct what is stale. Simpler
//! than watches and as correct: whatever was missed is found at the next round. Conflicts
//! (another replica got there first, or changed it since the list) are left to the next round.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams, ObjectMeta, PostParams};

use crate::ca::material::CurrentCa;
use crate::ca::metrics::CaMetrics;

pub const ROOT_CONFIG_MAP: &str = "istio-ca-root-cert";
pub const ROOT_KEY: &str = "root-cert.pem";
/// How long a deleted ConfigMap or a new namespace may go without the root.
const RECONCILE_EVERY: Duration = Duration::from_secs(5);

/// Runs for the life of trellisd.
pub async fn keep_config_maps(client: kube::Client, mut current: CurrentCa, metrics: CaMetrics) {
    let mut can_change = true;
    let mut last_error = None;
    loop {
        let root = current.borrow_and_update().root_pem().to_owned();
        match reconcile(&client, &root).await {
            Ok(()) => {
                if last_error.take().is_some() {
                    tracing::info!("CA: root ConfigMaps up to date again");
                }
            }
            Err(e) => {
                metrics.publish_error("configmap");
                // A lasting failure (say, no RBAC to write ConfigMaps) is logged once, not
                // every round.
                if last_error.as_ref() != Some(&e) {
                    tracing::warn!("CA: root ConfigMaps: {e}");
                    last_error = Some(e);
                }
            }
        }
        if can_change {
            tokio::select! {
                _ = tokio::time::sleep(RECONCILE_EVERY) => {}
                changed = current.changed() => can_change = changed.is_ok(),
            }
        } else {
            tokio::time::sleep(RECONCILE_EVERY).await;
        }
    }
}

async fn reconcile(client: &kube::Client, root: &str) -> Result<(), String> {
    let namespaces = Api::<Namespace>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|e| format!("listing namespaces: {e}"))?;
    let existing = Api::<ConfigMap>::all(client.clone())
        .list(&ListParams::default().fields(&format!("metadata.name={ROOT_CONFIG_MAP}")))
        .await
        .map_err(|e| format!("listing ConfigMaps {ROOT_CONFIG_MAP}: {e}"))?;
    let existing: HashMap<String, ConfigMap> =
        existing.items.into_iter().filter_map(|m| Some((m.metadata.namespace.clone()?, m))).collect();
    let mut failures = Vec::new();
    for namespace in namespaces.items {
        let Some(name) = namespace.metadata.name else { continue };
        // A namespace being deleted refuses new objects.
        let terminating = namespace.metadata.deletion_timestamp.is_some()
            || namespace.status.and_then(|s| s.phase).as_deref() == Some("Terminating");
        if terminating {
            continue;
        }
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), &name);
        let result = match existing.get(&name) {
            None => api.create(&PostParams::default(), &config_map(&name, root)).await.map(|_| "created"),
            Some(map)
                if map.data.as_ref().and_then(|d| d.get(ROOT_KEY)).map(String::as_str) != Some(root) =>
            {
                let mut next = map.clone();
                next.data.get_or_insert_with(BTreeMap::new).insert(ROOT_KEY.to_owned(), root.to_owned());
                api.replace(ROOT_CONFIG_MAP, &PostParams::default(), &next).await.map(|_| "updated")
            }
            Some(_) => continue,
        };
        match result {
            Ok(what) => tracing::debug!(namespace = %name, "CA: root ConfigMap {what}"),
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(e) => failures.push(format!("{name}/{ROOT_CONFIG_MAP}: {e}")),
        }
    }
    if failures.is_empty() { Ok(()) } else { Err(failures.join("; ")) }
}

fn config_map(namespace: &str, root: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(ROOT_CONFIG_MAP.to_owned()),
            namespace: Some(namespace.to_owned()),
            // Istio's label on it.
            labels: Some(BTreeMap::from([("istio.io/config".to_owned(), "true".to_owned())])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(ROOT_KEY.to_owned(), root.to_owned())])),
        ..Default::default()
    }
}
