//! Where the proxy's admin port is, and a connection to it.
//!
//! The admin port listens on the pod's localhost only (it can stop the proxy and change its log
//! level), so neither the pod's IP nor trellisd (which the proxy dials, never the reverse) can
//! reach it. For a pod, the API server's port-forward subresource opens a stream into the pod's
//! network namespace, as `istioctl proxy-config` and `kubectl port-forward` do; `--admin` takes
//! an address the user already reaches (a port-forward of their own, or a proxy on this host).

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::install::cluster::{self, ApiError, KubeArgs};

/// The container the injector adds (Istio's name).
const PROXY_CONTAINER: &str = "istio-proxy";

/// A connection to an admin port, and what to call it in messages.
pub struct Connection {
    pub source: String,
    pub stream: Box<dyn Stream>,
    /// The port-forward the stream runs through: keep it until the stream is done with.
    pub forwarder: Option<kube::api::Portforwarder>,
    /// The port-forward's error channel: the kubelet's word when it cannot reach the port
    /// (the data stream then just ends, or never answers).
    pub forward_error: Option<ForwardError>,
}

pub type ForwardError = std::pin::Pin<Box<dyn std::future::Future<Output = Option<String>> + Send>>;

pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// `host:port`, `[v6]:port`, optionally as `http://host:port`.
pub fn parse_admin(input: &str) -> Result<(String, u16), String> {
    let trimmed = input.trim();
    let bare = trimmed.strip_prefix("http://").unwrap_or(trimmed).trim_end_matches('/');
    if bare.contains("://") {
        return Err(format!("--admin {input:?}: only http:// (the admin port serves plain HTTP)"));
    }
    if bare.contains('/') {
        return Err(format!("--admin {input:?}: an address (host:port), not a URL with a path"));
    }
    let (host, port) = bare
        .rsplit_once(':')
        .ok_or_else(|| format!("--admin {input:?}: host:port expected (e.g. 127.0.0.1:15000)"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("--admin {input:?}: no host"));
    }
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok((host.to_owned(), port)),
        _ => Err(format!("--admin {input:?}: {port:?} is not a port number")),
    }
}

pub async fn connect_admin(input: &str) -> Result<Connection, String> {
    let (host, port) = parse_admin(input)?;
    let source = format!("{host}:{port}");
    let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::ConnectionRefused => {
                "; is a proxy's admin port there? (e.g. `kubectl port-forward <pod> 15000`)"
            }
            _ => "",
        };
        format!("--admin {source}: cannot connect: {e}{hint}")
    })?;
    Ok(Connection { source, stream: Box::new(stream), forwarder: None, forward_error: None })
}

/// `name` or `name.namespace`, as istioctl takes pods.
pub fn split_pod<'a>(pod: &'a str, namespace: Option<&'a str>) -> Result<(&'a str, Option<&'a str>), String> {
    let (name, from_name) = match pod.split_once('.') {
        Some((name, ns)) => (name, Some(ns)),
        None => (pod, None),
    };
    let valid = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    };
    if !valid(name) {
        return Err(format!("pod {pod:?}: not a pod name (lower-case letters, digits and '-')"));
    }
    let namespace = match (from_name, namespace) {
        (Some(a), Some(b)) if a != b => {
            return Err(format!("pod {pod:?} is in namespace {a:?}, but --namespace says {b:?}"));
        }
        (Some(ns), _) | (None, Some(ns)) => Some(ns),
        (None, None) => None,
    };
    if let Some(ns) = namespace.filter(|ns| !valid(ns)) {
        return Err(format!("namespace {ns:?}: not a namespace name"));
    }
    Ok((name, namespace))
}

/// Finds the pod, checks it runs the proxy, and opens a port-forward to its admin port.
pub async fn connect_pod(
    kube: &KubeArgs,
    pod: &str,
    namespace: Option<&str>,
    admin_port: u16,
    timeout: Duration,
) -> Result<Connection, String> {
    let (workload, pod) = match pod.split_once('/') {
        Some(("deployment" | "deploy", name)) => (true, name),
        Some((kind, _)) => {
            return Err(format!(
                "{pod:?}: a pod (`name[.namespace]`) or `deployment/name[.namespace]`, not {kind:?}"
            ));
        }
        None => (false, pod),
    };
    let (name, namespace) = split_pod(pod, namespace)?;
    let deadline = tokio::time::Instant::now() + timeout;
    let cluster = cluster::connect(kube, timeout).await?;
    let namespace = namespace.unwrap_or(cluster.client.default_namespace()).to_owned();
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &namespace);
    let found = if workload {
        deployment_pod(&cluster, &pods, name, &namespace, deadline).await?
    } else {
        let source = format!("pod {name}.{namespace}");
        match cluster::within(deadline, pods.get(name)).await {
            Ok(found) => found,
            Err(e) if e.is_not_found() => {
                return Err(format!(
                    "pod {name:?} not found in namespace {namespace:?} (at {})",
                    cluster.server
                ));
            }
            Err(ApiError::TimedOut) => {
                return Err(format!(
                    "{source}: the API server {} did not answer within {timeout:?}",
                    cluster.server
                ));
            }
            Err(e) => return Err(format!("{source}: reading the pod from {}: {e}", cluster.server)),
        }
    };
    let name = found.metadata.name.clone().unwrap_or_default();
    let name = name.as_str();
    let source = format!("pod {name}.{namespace}");
    check_proxy(&found, &source)?;
    let mut forwarder = match cluster::within(deadline, pods.portforward(name, &[admin_port])).await {
        Ok(forwarder) => forwarder,
        Err(ApiError::TimedOut) => {
            return Err(format!(
                "{source}: the port-forward to {admin_port} did not open within {timeout:?}"
            ));
        }
        Err(e) => return Err(format!("{source}: cannot port-forward to the admin port {admin_port}: {e}")),
    };
    let stream = forwarder
        .take_stream(admin_port)
        .ok_or_else(|| format!("{source}: the port-forward gave no stream for port {admin_port}"))?;
    let forward_error = forwarder.take_error(admin_port).map(|e| Box::pin(e) as ForwardError);
    Ok(Connection {
        source: format!("{source} (admin port {admin_port}, port-forwarded)"),
        stream: Box::new(stream),
        forwarder: Some(forwarder),
        forward_error,
    })
}

/// The first running pod (by name) of a Deployment that has the proxy, as istioctl picks one.
async fn deployment_pod(
    cluster: &cluster::Cluster,
    pods: &Api<Pod>,
    name: &str,
    namespace: &str,
    deadline: tokio::time::Instant,
) -> Result<Pod, String> {
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), namespace);
    let source = format!("deployment {name}.{namespace}");
    let deployment = match cluster::within(deadline, deployments.get(name)).await {
        Ok(found) => found,
        Err(e) if e.is_not_found() => {
            return Err(format!(
                "deployment {name:?} not found in namespace {namespace:?} (at {})",
                cluster.server
            ));
        }
        Err(e) => return Err(format!("{source}: reading it from {}: {e}", cluster.server)),
    };
    let selector = deployment.spec.map(|spec| spec.selector).unwrap_or_default();
    if selector.match_expressions.as_ref().is_some_and(|e| !e.is_empty()) {
        return Err(format!(
            "{source}: its selector has matchExpressions, which this command does not read; name a pod instead"
        ));
    }
    let labels: Vec<String> =
        selector.match_labels.unwrap_or_default().iter().map(|(k, v)| format!("{k}={v}")).collect();
    if labels.is_empty() {
        return Err(format!("{source}: its selector selects no labels; name a pod instead"));
    }
    let listed = cluster::within(deadline, pods.list(&ListParams::default().labels(&labels.join(","))))
        .await
        .map_err(|e| format!("{source}: listing its pods at {}: {e}", cluster.server))?;
    let total = listed.items.len();
    let mut candidates: Vec<Pod> =
        listed.items.into_iter().filter(|pod| check_proxy(pod, "").is_ok()).collect();
    candidates.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    candidates.into_iter().next().ok_or_else(|| {
        let pods = if total == 1 { "1 pod".to_owned() } else { format!("{total} pods") };
        format!("{source}: none of its {pods} is Running with an istio-proxy container")
    })
}

/// A pod without the proxy, or not running, is said so before a port-forward fails obscurely.
fn check_proxy(pod: &Pod, source: &str) -> Result<(), String> {
    let spec = pod.spec.as_ref();
    let has_proxy = spec.is_some_and(|spec| {
        spec.containers.iter().chain(spec.init_containers.iter().flatten()).any(|c| c.name == PROXY_CONTAINER)
    });
    if !has_proxy {
        return Err(format!(
            "{source} has no {PROXY_CONTAINER} container: it is not in the mesh (is its namespace labelled \
             istio-injection=enabled, and was it created after?)"
        ));
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Unknown");
    if phase != "Running" {
        return Err(format!("{source} is {phase}, not Running: its proxy cannot answer"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_addresses() {
        assert_eq!(parse_admin("127.0.0.1:15000").unwrap(), ("127.0.0.1".into(), 15000));
        assert_eq!(parse_admin("http://localhost:15000/").unwrap(), ("localhost".into(), 15000));
        assert_eq!(parse_admin("[::1]:15000").unwrap(), ("::1".into(), 15000));
        for (bad, why) in [
            ("127.0.0.1", "host:port expected"),
            (":15000", "no host"),
            ("h:0", "\"0\" is not a port number"),
            ("h:99999", "\"99999\" is not a port number"),
            ("https://h:15000", "only http://"),
            ("http://h:1/config_dump", "not a URL with a path"),
        ] {
            let err = parse_admin(bad).unwrap_err();
            assert!(err.contains(why) && err.contains("--admin"), "{bad}: {err}");
        }
    }

    #[test]
    fn pods_and_namespaces() {
        assert_eq!(split_pod("web-1", None).unwrap(), ("web-1", None));
        assert_eq!(split_pod("web-1.shop", None).unwrap(), ("web-1", Some("shop")));
        assert_eq!(split_pod("web-1", Some("shop")).unwrap(), ("web-1", Some("shop")));
        assert_eq!(split_pod("web-1.shop", Some("shop")).unwrap(), ("web-1", Some("shop")));
        let err = split_pod("web-1.shop", Some("other")).unwrap_err();
        assert!(err.contains("--namespace says \"other\""), "{err}");
        assert!(split_pod("Web", None).unwrap_err().contains("not a pod name"));
        assert!(split_pod("", None).unwrap_err().contains("not a pod name"));
        assert!(split_pod("a/b", None).unwrap_err().contains("not a pod name"));
        assert!(split_pod("a.b_c", None).unwrap_err().contains("not a namespace name"));
    }
}
