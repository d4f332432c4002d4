//! Probe rewriting. Under STRICT mTLS the kubelet's plain-text probes cannot reach the app
//! through the proxy, so app probes are pointed at the proxy's status port
//! (`/app-health/<container>/livez|readyz|startupz` on 15020) and the original probes are
//! handed to the proxy in `ISTIO_KUBE_APP_PROBERS`, in the shape Istio uses, so the proxy can
//! run them from inside the pod.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, HTTPGetAction, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

/// The environment variable carrying the original probes to the proxy.
pub const APP_PROBERS_ENV: &str = "ISTIO_KUBE_APP_PROBERS";

#[derive(Clone, Copy)]
enum ProbeKind {
    Liveness,
    Readiness,
    Startup,
}

impl ProbeKind {
    const ALL: [ProbeKind; 3] = [ProbeKind::Liveness, ProbeKind::Readiness, ProbeKind::Startup];

    fn suffix(self) -> &'static str {
        match self {
            ProbeKind::Liveness => "livez",
            ProbeKind::Readiness => "readyz",
            ProbeKind::Startup => "startupz",
        }
    }

    fn slot(self, c: &mut Container) -> &mut Option<Probe> {
        match self {
            ProbeKind::Liveness => &mut c.liveness_probe,
            ProbeKind::Readiness => &mut c.readiness_probe,
            ProbeKind::Startup => &mut c.startup_probe,
        }
    }
}

fn health_path(container: &str, kind: ProbeKind) -> String {
    format!("/app-health/{container}/{}", kind.suffix())
}

/// Rewrites the httpGet, tcpSocket and gRPC probes of `containers` to the status port and
/// returns the originals keyed by their new path. Exec probes stay as they are.
pub fn rewrite(containers: &mut [Container], status_port: u16) -> BTreeMap<String, Value> {
    let mut probers = BTreeMap::new();
    for container in containers {
        let ports = container.ports.clone().unwrap_or_default();
        let name = container.name.clone();
        for kind in ProbeKind::ALL {
            let Some(probe) = kind.slot(container).as_mut() else { continue };
            if points_at_status_port(probe, status_port) {
                // Already rewritten (an earlier injection whose proxy is gone): wrapping it
                // again would make the proxy probe itself.
                continue;
            }
            let Some(original) = prober(probe, &ports) else { continue };
            let path = health_path(&name, kind);
            probe.http_get = Some(HTTPGetAction {
                path: Some(path.clone()),
                port: IntOrString::Int(i32::from(status_port)),
                scheme: Some("HTTP".to_owned()),
                ..HTTPGetAction::default()
            });
            probe.tcp_socket = None;
            probe.grpc = None;
            probers.insert(path, original);
        }
    }
    probers
}

fn points_at_status_port(probe: &Probe, status_port: u16) -> bool {
    probe.http_get.as_ref().is_some_and(|h| {
        h.port == IntOrString::Int(i32::from(status_port))
            && h.path.as_deref().is_some_and(|p| p.starts_with("/app-health/"))
    })
}

/// The proxy-side description of a probe: its action with named ports resolved to numbers,
/// and its timeout. `None` for probes the proxy does not run (exec, or a port name that the
/// container does not declare, which the kubelet would reject anyway).
fn prober(probe: &Probe, ports: &[k8s_openapi::api::core::v1::ContainerPort]) -> Option<Value> {
    let resolve = |port: &IntOrString| -> Option<i32> {
        match port {
            IntOrString::Int(n) => Some(*n),
            IntOrString::String(name) => {
                ports.iter().find(|p| p.name.as_deref() == Some(name)).map(|p| p.container_port)
            }
        }
    };
    let mut action = if let Some(http) = &probe.http_get {
        let mut get = serde_json::to_value(http).ok()?;
        get["port"] = json!(resolve(&http.port)?);
        if get.get("scheme").is_none() {
            get["scheme"] = json!("HTTP");
        }
        json!({ "httpGet": get })
    } else if let Some(tcp) = &probe.tcp_socket {
        let mut socket = serde_json::to_value(tcp).ok()?;
        socket["port"] = json!(resolve(&tcp.port)?);
        json!({ "tcpSocket": socket })
    } else if let Some(grpc) = &probe.grpc {
        json!({ "grpc": serde_json::to_value(grpc).ok()? })
    } else {
        return None;
    };
    action["timeoutSeconds"] = json!(probe.timeout_seconds.unwrap_or(1));
    Some(action)
}

/// Undoes [`rewrite`] for a pod injected before: each probe that points at our health path is
/// given back its original action, so re-injection starts from the pod the user wrote.
pub fn restore(containers: &mut [Container], probers: &BTreeMap<String, Value>) {
    for container in containers {
        let name = container.name.clone();
        for kind in ProbeKind::ALL {
            let Some(probe) = kind.slot(container).as_mut() else { continue };
            let path = health_path(&name, kind);
            let ours = probe.http_get.as_ref().is_some_and(|h| h.path.as_deref() == Some(path.as_str()));
            let Some(original) = probers.get(&path).filter(|_| ours) else { continue };
            probe.http_get = original.get("httpGet").and_then(|v| serde_json::from_value(v.clone()).ok());
            probe.tcp_socket = original.get("tcpSocket").and_then(|v| serde_json::from_value(v.clone()).ok());
            probe.grpc = original.get("grpc").and_then(|v| serde_json::from_value(v.clone()).ok());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(probes: Value) -> Container {
        let mut c = json!({"name": "app", "ports": [{"name": "http", "containerPort": 8080}]});
        for (k, v) in probes.as_object().unwrap() {
            c[k] = v.clone();
        }
        serde_json::from_value(c).unwrap()
    }

    #[test]
    fn http_tcp_and_grpc_probes_move_to_the_status_port() {
        let mut cs = vec![container(json!({
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 5},
            "readinessProbe": {"tcpSocket": {"port": 8080}},
            "startupProbe": {"grpc": {"port": 9090, "service": "health"}, "timeoutSeconds": 3}
        }))];
        let probers = rewrite(&mut cs, 15020);
        let live = cs[0].liveness_probe.as_ref().unwrap();
        assert_eq!(live.http_get.as_ref().unwrap().path.as_deref(), Some("/app-health/app/livez"));
        assert_eq!(live.http_get.as_ref().unwrap().port, IntOrString::Int(15020));
        assert_eq!(live.period_seconds, Some(5), "timing is kept");
        assert!(cs[0].readiness_probe.as_ref().unwrap().tcp_socket.is_none());
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
    fn exec_and_unresolvable_probes_stay() {
        let mut cs = vec![container(json!({
            "livenessProbe": {"exec": {"command": ["true"]}},
            "readinessProbe": {"httpGet": {"path": "/", "port": "admin"}}
        }))];
        let before = cs.clone();
        assert!(rewrite(&mut cs, 15020).is_empty());
        assert_eq!(cs, before);
    }

    #[test]
    fn probes_already_on_the_status_port_are_not_wrapped_again() {
        let mut cs = vec![container(json!({
            "livenessProbe": {"httpGet": {"path": "/app-health/app/livez", "port": 15020}}
        }))];
        let before = cs.clone();
        assert!(rewrite(&mut cs, 15020).is_empty());
        assert_eq!(cs, before);
    }

    #[test]
    fn restore_undoes_rewrite() {
        let original = vec![container(json!({
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP"}},
            "readinessProbe": {"tcpSocket": {"port": 8080}}
        }))];
        let mut cs = original.clone();
        let probers = rewrite(&mut cs, 15020);
        restore(&mut cs, &probers);
        assert_eq!(cs, original);
    }
}
