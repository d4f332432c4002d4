//! Reading the live cluster, through the client `trellis install` and `check` use: every kind
//! the checks need, listed across namespaces, each call bounded by the overall deadline. An
//! Istio kind the cluster does not serve (CRDs not installed) is read as none.

use std::time::Duration;

use kube::api::ListParams;
use tokio::time::Instant;

use super::finding::Finding;
use super::model::Mesh;
use super::source::add_text;
use crate::install::cluster::{ApiError, KubeArgs, api, connect, known_kind, show_duration, within};

/// `(apiVersion, kind)` of what is read; Istio's kinds at their storage version.
const KINDS: &[(&str, &str)] = &[
    ("v1", "Namespace"),
    ("v1", "Service"),
    ("v1", "Pod"),
    ("networking.istio.io/v1", "VirtualService"),
    ("networking.istio.io/v1", "DestinationRule"),
    ("networking.istio.io/v1", "ServiceEntry"),
    ("networking.istio.io/v1", "WorkloadEntry"),
    ("networking.istio.io/v1", "Sidecar"),
    ("networking.istio.io/v1", "Gateway"),
    ("security.istio.io/v1", "PeerAuthentication"),
    ("security.istio.io/v1", "AuthorizationPolicy"),
];

/// Adds the cluster's objects to the model; notes what could not be read but does not stop the
/// analysis. An unreachable cluster, or one that refuses, is an error.
pub async fn read(
    mesh: &mut Mesh,
    args: &KubeArgs,
    timeout: Duration,
    findings: &mut Vec<Finding>,
    notes: &mut Vec<String>,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let cluster = connect(args, timeout).await?;
    for (api_version, kind) in KINDS {
        let info = known_kind(api_version, kind)
            .ok_or_else(|| format!("{kind} in {api_version} is not a known kind"))?;
        let list = match within(deadline, api(&cluster, &info, None).list(&ListParams::default())).await {
            Ok(list) => list,
            Err(e) if e.is_not_found() && api_version.contains(".istio.io/") => {
                notes.push(format!(
                    "the cluster does not serve {kind} ({api_version}): Istio's CRDs are not installed"
                ));
                continue;
            }
            Err(ApiError::TimedOut) => {
                return Err(format!(
                    "no answer from the cluster at {} within {} (--timeout)",
                    cluster.server,
                    show_duration(timeout)
                ));
            }
            Err(e) => return Err(format!("cannot list {kind} from the cluster at {}: {e}", cluster.server)),
        };
        for object in list.items {
            let mut value = serde_json::to_value(&object).unwrap_or_default();
            // List items come without their type.
            value["apiVersion"] = (*api_version).into();
            value["kind"] = (*kind).into();
            if matches!(*kind, "Service" | "Pod") {
                mesh.add_kube_object(&value, None);
            } else {
                // JSON is YAML: the Istio kinds (and Namespace) go through the loader.
                let errors = add_text(mesh, &value.to_string(), None, findings);
                notes.extend(errors);
            }
        }
    }
    mesh.live = true;
    Ok(())
}
