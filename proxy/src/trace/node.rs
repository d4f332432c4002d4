//! Who this proxy is, as its spans say: Envoy's node id and the `istio.*` tags Istio adds to
//! every span. The control plane's config may set them; what it leaves empty comes from the
//! pod's environment (the injector's variables), then Istio's defaults.

use std::collections::BTreeMap;
use std::net::IpAddr;

use trellis_xds::config as pb;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalNode {
    pub node_id: String,
    pub namespace: String,
    pub canonical_service: String,
    pub canonical_revision: String,
    pub mesh_id: String,
    pub cluster_id: String,
    /// Envoy's service cluster (`<canonical service>.<namespace>`): Zipkin's `localEndpoint`
    /// service name and OTLP's `service.name`, as Istio's proxies report them.
    pub service_name: String,
    pub ip: Option<IpAddr>,
}

/// The environment's view, read once: the variables do not change while the process runs.
#[derive(Default)]
struct FromEnv {
    node_id: Option<String>,
    namespace: Option<String>,
    labels: BTreeMap<String, String>,
    mesh_id: Option<String>,
    cluster_id: Option<String>,
    ip: Option<IpAddr>,
}

fn from_env() -> &'static FromEnv {
    static ENV: std::sync::OnceLock<FromEnv> = std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let namespace = var("POD_NAMESPACE");
        let ip = var("INSTANCE_IP");
        let node_id = match (var("POD_NAME"), &namespace) {
            (Some(pod), Some(ns)) => {
                Some(format!("sidecar~{}~{pod}.{ns}~{ns}.svc.cluster.local", ip.as_deref().unwrap_or("")))
            }
            _ => None,
        };
        // A label map that does not parse is ignored: the tags then take Istio's defaults.
        let labels = var("ISTIO_METAJSON_LABELS")
            .and_then(|json| serde_json::from_str::<BTreeMap<String, String>>(&json).ok())
            .unwrap_or_default();
        FromEnv {
            node_id,
            namespace,
            labels,
            mesh_id: var("ISTIO_META_MESH_ID"),
            cluster_id: var("ISTIO_META_CLUSTER_ID"),
            ip: ip.and_then(|ip| ip.parse().ok()),
        }
    })
}

impl LocalNode {
    pub fn resolve(config: Option<&pb::TracingNode>) -> LocalNode {
        let env = from_env();
        let pick = |configured: Option<&String>, fallback: Option<&String>, default: &str| {
            configured.filter(|v| !v.is_empty()).or(fallback).cloned().unwrap_or_else(|| default.to_owned())
        };
        let label = |names: &[&str]| names.iter().find_map(|n| env.labels.get(*n));
        let c = config.cloned().unwrap_or_default();
        let namespace = pick(Some(&c.namespace), env.namespace.as_ref(), "default");
        let canonical_service = pick(
            Some(&c.canonical_service),
            label(&["service.istio.io/canonical-name", "app.kubernetes.io/name", "app"]),
            "unknown",
        );
        let canonical_revision = pick(
            Some(&c.canonical_revision),
            label(&["service.istio.io/canonical-revision", "app.kubernetes.io/version", "version"]),
            "latest",
        );
        LocalNode {
            node_id: pick(Some(&c.node_id), env.node_id.as_ref(), "sidecar~~unknown~unknown"),
            service_name: format!("{canonical_service}.{namespace}"),
            namespace,
            canonical_service,
            canonical_revision,
            mesh_id: pick(Some(&c.mesh_id), env.mesh_id.as_ref(), "unknown"),
            cluster_id: pick(Some(&c.cluster_id), env.cluster_id.as_ref(), "unknown"),
            ip: env.ip,
        }
    }
}
