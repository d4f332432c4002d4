//! Pods without the proxy in a namespace labelled for injection (IST0103): they run outside
//! the mesh (no mutual TLS, routing or policy), usually because they started before the label
//! or the injector. A namespace is labelled by `istio-injection=enabled`, or by `istio.io/rev`
//! unless `istio-injection=disabled`; a pod may opt out (`sidecar.istio.io/inject: "false"`),
//! and host-network pods are never injected.

use trellis_api::annotations::names::{PROXY_CONTAINER, label};
use trellis_api::annotations::{parse_namespace_injection, pod_inject_override};

use super::finding::{Finding, POD_MISSING_PROXY};
use super::model::{Labels, Mesh, WorkloadKind};

pub fn check(mesh: &Mesh, out: &mut Vec<Finding>) {
    for pod in mesh.workloads.iter().filter(|w| w.spec.kind == WorkloadKind::Pod) {
        let Some(namespace) = mesh.namespaces.iter().find(|n| n.name == pod.namespace) else { continue };
        let Some(why) = injection_label(&namespace.labels) else { continue };
        if pod_inject_override(&pod.labels, &pod.annotations) == Some(false) || pod.spec.host_network {
            continue;
        }
        let has_proxy =
            pod.spec.containers.iter().chain(&pod.spec.init_containers).any(|c| c == PROXY_CONTAINER);
        if has_proxy {
            continue;
        }
        out.push(
            Finding::new(
                POD_MISSING_PROXY,
                &pod.subject,
                format!(
                    "namespace {} is labelled for injection ({why}) but pod {} has no {PROXY_CONTAINER} container: \
                     it runs outside the mesh (no mutual TLS, routing or policy)",
                    pod.namespace, pod.name
                ),
                "restart or redeploy its workload (e.g. kubectl rollout restart) so that the injector adds the proxy; \
                 if it still has none, `trellis check` tells whether the injector runs",
            )
            .with(&namespace.subject),
        );
    }
}

/// The label that turns injection on for the namespace, as `key=value`.
fn injection_label(labels: &Labels) -> Option<String> {
    let injection = labels.get(label::ISTIO_INJECTION).and_then(|v| parse_namespace_injection(v));
    match (injection, labels.get(label::ISTIO_REV)) {
        (Some(false), _) => None,
        (Some(true), _) => Some(format!("{}={}", label::ISTIO_INJECTION, label::INJECTION_ENABLED)),
        (None, Some(rev)) => Some(format!("{}={rev}", label::ISTIO_REV)),
        (None, None) => None,
    }
}
