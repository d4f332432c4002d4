//! DestinationRule subsets that select no workload of their host (IST0173): a route to the
//! subset has no endpoint and fails. Checked where the input shows the host's workloads (its
//! Service or ServiceEntry and at least one pod, pod template, WorkloadEntry or endpoint behind
//! it); topology labels, which the proxy adds from the node and not from the pod, are left out
//! of the comparison.

use super::finding::{Finding, SUBSET_SELECTS_NO_PODS};
use super::hosts;
use super::model::{Labels, Mesh, show_labels};

/// Labels a proxy's endpoints carry from where they run, not from the pod's metadata.
const TOPOLOGY_LABELS: &[&str] = &[
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "topology.istio.io/subzone",
    "topology.istio.io/network",
    "topology.istio.io/cluster",
    "kubernetes.io/hostname",
];

pub fn check(mesh: &Mesh, out: &mut Vec<Finding>) {
    for dr in &mesh.destination_rules {
        if dr.spec.subsets.is_empty() {
            continue;
        }
        let host = hosts::fqdn(&dr.spec.host, &dr.namespace);
        let Some(service) = mesh.service(&host, &dr.namespace) else { continue };
        let endpoints = mesh.endpoint_labels(service);
        if endpoints.is_empty() {
            // Files: the input does not show this host's workloads. Cluster: the service has
            // none at all (scaled to zero, or a ServiceEntry resolved by DNS), which is not a
            // subset's fault.
            continue;
        }
        for (i, subset) in dr.spec.subsets.iter().enumerate() {
            let wanted: Labels = subset
                .labels
                .iter()
                .filter(|(k, _)| !TOPOLOGY_LABELS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if endpoints.iter().any(|labels| super::model::selects(&wanted, labels)) {
                continue;
            }
            out.push(
                Finding::new(
                    SUBSET_SELECTS_NO_PODS,
                    &dr.subject,
                    format!(
                        "spec.subsets[{i}] ({:?}): no workload of {host} has the labels {}; routes to this subset fail",
                        subset.name,
                        show_labels(&wanted)
                    ),
                    "correct the subset's labels to those of the pods (or deploy the version it names)",
                )
                .with(service.subject()),
            );
        }
    }
}
