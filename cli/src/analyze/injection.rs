//! Pods without the proxy where the injector would have added it (IST0103): they run outside
//! the mesh (no mutual TLS, routing or policy), usually because they started before the label
//! or the injector. Trellis's webhooks select as Istio's do: a namespace labelled
//! `istio-injection=enabled` (a pod may opt out with `sidecar.istio.io/inject: "false"`), or a
//! pod labelled `sidecar.istio.io/inject: "true"` in a namespace with neither injection label;
//! never in kube-system, kube-public or kube-node-lease, never a host-network pod.
//!
//! A namespace labelled `istio.io/rev` asks Istio's revision of that name to inject; Trellis has
//! no revisions, so its pods go without the proxy, and the finding says so.

use trellis_api::annotations::names::{PROXY_CONTAINER, label};
use trellis_api::annotations::{parse_namespace_injection, pod_inject_override};

use super::finding::{Finding, POD_MISSING_PROXY};
use super::model::{Labels, Mesh, Obj, Workload, WorkloadKind};

/// Namespaces the webhooks never see.
const NEVER_INJECTED: &[&str] = &["kube-system", "kube-public", "kube-node-lease"];

/// Why a pod should have the proxy.
enum Reason {
    /// A label that the injector acts on.
    Injected(String),
    /// `istio.io/rev`, which only Istio's revisions act on.
    Revision(String),
}

pub fn check(mesh: &Mesh, out: &mut Vec<Finding>) {
    for pod in mesh.workloads.iter().filter(|w| w.spec.kind == WorkloadKind::Pod) {
        let Some(namespace) = mesh.namespaces.iter().find(|n| n.name == pod.namespace) else { continue };
        let Some(reason) = reason(&namespace.labels, pod) else { continue };
        let has_proxy =
            pod.spec.containers.iter().chain(&pod.spec.init_containers).any(|c| c == PROXY_CONTAINER);
        if has_proxy {
            continue;
        }
        let (why, fix) = match reason {
            Reason::Injected(why) => (
                why,
                "restart or redeploy its workload (e.g. kubectl rollout restart) so that the injector adds \
                 the proxy; if it still has none, `trellis check` tells whether the injector runs"
                    .to_owned(),
            ),
            Reason::Revision(why) => (
                why,
                format!(
                    "Trellis has no revisions and does not inject for istio.io/rev: label the namespace \
                     {}={} instead (and remove istio.io/rev), then restart the workload",
                    label::ISTIO_INJECTION,
                    label::INJECTION_ENABLED
                ),
            ),
        };
        out.push(
            Finding::new(
                POD_MISSING_PROXY,
                &pod.subject,
                format!(
                    "{why} asks for injection but pod {} has no {PROXY_CONTAINER} container: it runs outside \
                     the mesh (no mutual TLS, routing or policy)",
                    pod.name
                ),
                fix,
            )
            .with(&namespace.subject),
        );
    }
}

fn reason(namespace_labels: &Labels, pod: &Obj<Workload>) -> Option<Reason> {
    if NEVER_INJECTED.contains(&pod.namespace.as_str()) || pod.spec.host_network {
        return None;
    }
    let pod_says = pod_inject_override(&pod.labels, &pod.annotations);
    let namespace_label = namespace_labels.get(label::ISTIO_INJECTION);
    match (namespace_label.and_then(|v| parse_namespace_injection(v)), namespace_labels.get(label::ISTIO_REV))
    {
        (Some(false), _) => None,
        (Some(true), _) if pod_says == Some(false) => None,
        (Some(true), _) => Some(Reason::Injected(format!(
            "namespace {} label {}={}",
            pod.namespace,
            label::ISTIO_INJECTION,
            label::INJECTION_ENABLED
        ))),
        (None, Some(rev)) if pod_says != Some(false) => {
            Some(Reason::Revision(format!("namespace {} label {}={rev}", pod.namespace, label::ISTIO_REV)))
        }
        (None, None)
            if namespace_label.is_none()
                && pod.labels.get(label::SIDECAR_INJECT).is_some_and(|v| v == "true")
                && !pod.labels.contains_key(label::ISTIO_REV) =>
        {
            Some(Reason::Injected(format!("pod label {}=true", label::SIDECAR_INJECT)))
        }
        _ => None,
    }
}
