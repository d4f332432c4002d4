//! Probe and hook rewriting. Under STRICT mTLS the kubelet's plain-text probes cannot reach the
//! app through the proxy, so the app's probes are pointed at the proxy's status port
//! (`/app-health/<container>/livez|readyz|startupz` on 15020), and so are its `postStart` and
//! `preStop` hooks (`/app-lifecycle/<container>/poststartz|prestopz`), as Istio does. The
//! originals go to the proxy in `ISTIO_KUBE_APP_PROBERS`, in the shape Istio uses, so the proxy
//! can run them from inside the pod.
//!
//! The app's containers are rewritten, and so are the user's own native sidecars (init
//! containers with `restartPolicy: Always`, the only init containers that may have probes or
//! hooks): they sit behind the same redirect.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, GRPCAction, HTTPGetAction, PodSpec, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

use crate::config::PROXY_CONTAINER;

/// The environment variable carrying the original probes to the proxy.
pub const APP_PROBERS_ENV: &str = "ISTIO_KUBE_APP_PROBERS";

/// A place where the kubelet calls into a container: a probe or a lifecycle hook.
#[derive(Clone, Copy)]
enum Check {
    Liveness,
    Readiness,
    Startup,
    PostStart,
    PreStop,
}

impl Check {
    const ALL: [Check; 5] =
        [Check::Liveness, Check::Readiness, Check::Startup, Check::PostStart, Check::PreStop];

    /// The status-port path the kubelet calls instead, as Istio names it.
    fn path(self, container: &str) -> String {
        match self {
            Check::Liveness => format!("/app-health/{container}/livez"),
            Check::Readiness => format!("/app-health/{container}/readyz"),
            Check::Startup => format!("/app-health/{container}/startupz"),
            Check::PostStart => format!("/app-lifecycle/{container}/poststartz"),
            Check::PreStop => format!("/app-lifecycle/{container}/prestopz"),
        }
    }

    /// The actions of this check in `c`, when it has one.
    fn actions(self, c: &mut Container) -> Option<Actions<'_>> {
        let probe = match self {
            Check::Liveness => c.liveness_probe.as_mut(),
            Check::Readiness => c.readiness_probe.as_mut(),
            Check::Startup => c.startup_probe.as_mut(),
            Check::PostStart | Check::PreStop => {
                let lifecycle = c.lifecycle.as_mut()?;
                let hook = match self {
                    Check::PostStart => lifecycle.post_start.as_mut()?,
                    _ => lifecycle.pre_stop.as_mut()?,
                };
                // A hook has no timeout of its own (the kubelet bounds preStop by the pod's
                // grace period), and Kubernetes has no gRPC hook.
                return Some(Actions {
                    http_get: &mut hook.http_get,
                    tcp_socket: &mut hook.tcp_socket,
                    grpc: None,
                    timeout_seconds: None,
                });
            }
        }?;
        Some(Actions {
            http_get: &mut probe.http_get,
            tcp_socket: &mut probe.tcp_socket,
            grpc: Some(&mut probe.grpc),
            // Kubernetes's default, written out so the proxy gives the app the same time.
            timeout_seconds: Some(probe.timeout_seconds.unwrap_or(1)),
        })
    }
}

/// The actions of a probe or hook that the proxy can run for it.
struct Actions<'a> {
    http_get: &'a mut Option<HTTPGetAction>,
    tcp_socket: &'a mut Option<TCPSocketAction>,
    grpc: Option<&'a mut Option<GRPCAction>>,
    timeout_seconds: Option<i32>,
}

/// The containers whose probes and hooks are rewritten: the app's and the user's native
/// sidecars, never the proxy.
fn checked_containers(spec: &mut PodSpec) -> impl Iterator<Item = &mut Container> {
    let sidecars =
        spec.init_containers.iter_mut().flatten().filter(|c| c.restart_policy.as_deref() == Some("Always"));
    sidecars.chain(spec.containers.iter_mut()).filter(|c| c.name != PROXY_CONTAINER)
}

/// Rewrites the httpGet, tcpSocket and gRPC probes and the httpGet and tcpSocket hooks of the
/// pod's containers to the status port, and returns the originals keyed by their new path.
/// Exec probes and exec or sleep hooks stay as they are.
pub fn rewrite(spec: &mut PodSpec, status_port: u16) -> BTreeMap<String, Value> {
    let mut probers = BTreeMap::new();
    for container in checked_containers(spec) {
        let ports = container.ports.clone().unwrap_or_default();
        let name = container.name.clone();
        for check in Check::ALL {
            let Some(actions) = check.actions(container) else { continue };
            if points_at_status_port(actions.http_get.as_ref(), status_port) {
                // Already rewritten (an earlier injection whose proxy is gone): wrapping it
                // again would make the proxy call itself.
                continue;
            }
            let Some(original) = prober(&actions, &ports) else { continue };
            let path = check.path(&name);
            *actions.http_get = Some(HTTPGetAction {
                path: Some(path.clone()),
                port: IntOrString::Int(i32::from(status_port)),
                scheme: Some("HTTP".to_owned()),
                ..HTTPGetAction::default()
            });
            *actions.tcp_socket = None;
            if let Some(grpc) = actions.grpc {
                *grpc = None;
            }
            probers.insert(path, original);
        }
    }
    probers
}

fn points_at_status_port(http_get: Option<&HTTPGetAction>, status_port: u16) -> bool {
    http_get.is_some_and(|h| {
        h.port == IntOrString::Int(i32::from(status_port))
            && h.path
                .as_deref()
                .is_some_and(|p| p.starts_with("/app-health/") || p.starts_with("/app-lifecycle/"))
    })
}

/// The proxy-side description of a probe or hook: its action with named ports resolved to
/// numbers, and a probe's timeout. `None` for what the proxy does not run (exec, or a port name
/// that the container does not declare, which the kubelet would reject anyway).
fn prober(actions: &Actions<'_>, ports: &[ContainerPort]) -> Option<Value> {
    let resolve = |port: &IntOrString| -> Option<i32> {
        match port {
            IntOrString::Int(n) => Some(*n),
            IntOrString::String(name) => {
                ports.iter().find(|p| p.name.as_deref() == Some(name)).map(|p| p.container_port)
            }
        }
    };
    let mut action = if let Some(http) = actions.http_get.as_ref() {
        let mut get = serde_json::to_value(http).ok()?;
        get["port"] = json!(resolve(&http.port)?);
        if get.get("scheme").is_none() {
            get["scheme"] = json!("HTTP");
        }
        json!({ "httpGet": get })
    } else if let Some(tcp) = actions.tcp_socket.as_ref() {
        let mut socket = serde_json::to_value(tcp).ok()?;
        socket["port"] = json!(resolve(&tcp.port)?);
        json!({ "tcpSocket": socket })
    } else if let Some(grpc) = actions.grpc.as_ref().and_then(|g| g.as_ref()) {
        json!({ "grpc": serde_json::to_value(grpc).ok()? })
    } else {
        return None;
    };
    if let Some(timeout) = actions.timeout_seconds {
        action["timeoutSeconds"] = json!(timeout);
    }
    Some(action)
}

/// Undoes [`rewrite`] for a pod injected before: each probe or hook that points at our path is
/// given back its original action, so re-injection starts from the pod the user wrote.
pub fn restore(spec: &mut PodSpec, probers: &BTreeMap<String, Value>) {
    for container in checked_containers(spec) {
        let name = container.name.clone();
        for check in Check::ALL {
            let Some(actions) = check.actions(container) else { continue };
            let path = check.path(&name);
            let ours = actions.http_get.as_ref().is_some_and(|h| h.path.as_deref() == Some(path.as_str()));
            let Some(original) = probers.get(&path).filter(|_| ours) else { continue };
            let field = |key: &str| original.get(key).cloned();
            *actions.http_get = field("httpGet").and_then(|v| serde_json::from_value(v).ok());
            *actions.tcp_socket = field("tcpSocket").and_then(|v| serde_json::from_value(v).ok());
            if let Some(grpc) = actions.grpc {
                *grpc = field("grpc").and_then(|v| serde_json::from_value(v).ok());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(probes: Value) -> Container {
        container_named("app", probes)
    }

    fn container_named(name: &str, probes: Value) -> Container {
        let mut c = json!({"name": name, "ports": [{"name": "http", "containerPort": 8080}]});
        for (k, v) in probes.as_object().unwrap() {
            c[k] = v.clone();
        }
        serde_json::from_value(c).unwrap()
    }

    fn spec(containers: Vec<Container>) -> PodSpec {
        PodSpec { containers, ..PodSpec::default() }
    }

    #[test]
    fn http_tcp_and_grpc_probes_move_to_the_status_port() {
        let mut pod = spec(vec![container(json!({
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 5},
            "readinessProbe": {"tcpSocket": {"port": 8080}},
            "startupProbe": {"grpc": {"port": 9090, "service": "health"}, "timeoutSeconds": 3}
        }))]);
        let probers = rewrite(&mut pod, 15020);
        let cs = &pod.containers;
        let live = cs[0].liveness_probe.as_ref().unwrap();
        assert_eq!(live.http_get.as_ref().unwrap().path.as_deref(), Some("/app-health/app/livez"));
        assert_eq!(live.http_get.as_ref().unwrap().port, IntOrString::Int(15020));
        assert_eq!(live.period_seconds, Some(5), "timing is kept");
        assert!(cs[0].readiness_probe.as_ref().unwrap().tcp_socket.is_none());
        assert!(cs[0].startup_probe.as_ref().unwrap().grpc.is_none());
        assert_eq!(
            serde_json::to_value(&probers).unwrap(),
            json!({
                "/app-health/app/livez": {"httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP"}, "timeoutSeconds": 1},
                "/app-health/app/readyz": {"tcpSocket": {"port": 8080}, "timeoutSeconds": 1},
                "/app-health/app/startupz": {"grpc": {"port": 9090, "service": "health"}, "timeoutSeconds": 3}
            })
        );
    }

    #[test]
    fn http_and_tcp_hooks_move_to_the_status_port() {
        // Istio's hello-probes case: a preStop httpGet and a postStart tcpSocket hook.
        let mut pod = spec(vec![container(json!({
            "lifecycle": {
                "preStop": {"httpGet": {"port": 91}},
                "postStart": {"tcpSocket": {"port": "http"}}
            }
        }))]);
        let probers = rewrite(&mut pod, 15020);
        let lifecycle = pod.containers[0].lifecycle.as_ref().unwrap();
        let post_start = lifecycle.post_start.as_ref().unwrap();
        assert!(post_start.tcp_socket.is_none());
        let get = post_start.http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some("/app-lifecycle/app/poststartz"));
        assert_eq!(get.port, IntOrString::Int(15020));
        let get = lifecycle.pre_stop.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some("/app-lifecycle/app/prestopz"));
        // Hooks have no timeout of their own: none is invented for them.
        assert_eq!(
            serde_json::to_value(&probers).unwrap(),
            json!({
                "/app-lifecycle/app/poststartz": {"tcpSocket": {"port": 8080}},
                "/app-lifecycle/app/prestopz": {"httpGet": {"port": 91, "scheme": "HTTP"}}
            })
        );
    }

    #[test]
    fn exec_and_sleep_hooks_stay() {
        let mut pod = spec(vec![container(json!({
            "lifecycle": {"preStop": {"exec": {"command": ["sleep", "5"]}}, "postStart": {"sleep": {"seconds": 1}}}
        }))]);
        let before = pod.clone();
        assert!(rewrite(&mut pod, 15020).is_empty());
        assert_eq!(pod, before);
    }

    #[test]
    fn native_sidecars_of_the_user_are_rewritten_but_plain_init_containers_are_not() {
        // Istio's native-sidecar case: the user's own sidecar's readiness probe.
        let mut sidecar =
            container_named("other-sidecar", json!({"readinessProbe": {"httpGet": {"port": 3333}}}));
        sidecar.restart_policy = Some("Always".to_owned());
        // Kubernetes refuses probes on a plain init container; if one came anyway, it is not ours
        // to change.
        let plain = container_named("migrate", json!({"readinessProbe": {"httpGet": {"port": 4444}}}));
        let mut pod = PodSpec {
            init_containers: Some(vec![sidecar, plain.clone()]),
            containers: vec![container(json!({}))],
            ..PodSpec::default()
        };
        let probers = rewrite(&mut pod, 15020);
        assert_eq!(
            serde_json::to_value(&probers).unwrap(),
            json!({"/app-health/other-sidecar/readyz": {"httpGet": {"port": 3333, "scheme": "HTTP"}, "timeoutSeconds": 1}})
        );
        let inits = pod.init_containers.as_ref().unwrap();
        let probe = inits[0].readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(probe.path.as_deref(), Some("/app-health/other-sidecar/readyz"));
        assert_eq!(inits[1], plain);
    }

    #[test]
    fn the_proxy_itself_is_never_rewritten() {
        let mut proxy = container_named(
            PROXY_CONTAINER,
            json!({"readinessProbe": {"httpGet": {"port": 15021, "path": "/healthz/ready"}}}),
        );
        proxy.restart_policy = Some("Always".to_owned());
        let mut pod = PodSpec { init_containers: Some(vec![proxy]), ..PodSpec::default() };
        let before = pod.clone();
        assert!(rewrite(&mut pod, 15020).is_empty());
        assert_eq!(pod, before);
    }

    #[test]
    fn exec_and_unresolvable_probes_stay() {
        let mut pod = spec(vec![container(json!({
            "livenessProbe": {"exec": {"command": ["true"]}},
            "readinessProbe": {"httpGet": {"path": "/", "port": "admin"}},
            "lifecycle": {"preStop": {"httpGet": {"port": "admin"}}}
        }))]);
        let before = pod.clone();
        assert!(rewrite(&mut pod, 15020).is_empty());
        assert_eq!(pod, before);
    }

    #[test]
    fn probes_and_hooks_already_on_the_status_port_are_not_wrapped_again() {
        let mut pod = spec(vec![container(json!({
            "livenessProbe": {"httpGet": {"path": "/app-health/app/livez", "port": 15020}},
            "lifecycle": {"preStop": {"httpGet": {"path": "/app-lifecycle/app/prestopz", "port": 15020}}}
        }))]);
        let before = pod.clone();
        assert!(rewrite(&mut pod, 15020).is_empty());
        assert_eq!(pod, before);
    }

    #[test]
    fn restore_undoes_rewrite() {
        let mut sidecar = container_named("side", json!({"startupProbe": {"tcpSocket": {"port": 9000}}}));
        sidecar.restart_policy = Some("Always".to_owned());
        let original = PodSpec {
            init_containers: Some(vec![sidecar]),
            ..spec(vec![container(json!({
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP"}},
                "readinessProbe": {"tcpSocket": {"port": 8080}},
                "lifecycle": {"preStop": {"httpGet": {"path": "/drain", "port": 8080, "scheme": "HTTP"}},
                              "postStart": {"tcpSocket": {"port": 8080}}}
            }))])
        };
        let mut pod = original.clone();
        let probers = rewrite(&mut pod, 15020);
        assert_eq!(probers.len(), 5);
        assert_ne!(pod, original);
        restore(&mut pod, &probers);
        assert_eq!(pod, original);
    }
}
