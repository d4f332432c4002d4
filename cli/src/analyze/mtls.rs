//! A DestinationRule that turns TLS off (`tls.mode: DISABLE`) towards workloads whose
//! PeerAuthentication is STRICT (IST0113): the client sidecar sends plain text, the server
//! sidecar accepts only mutual TLS, and every request fails.
//!
//! The mode is resolved as trellisd resolves it for the server's proxy: the port-level mode of
//! the policy selecting the workload (by the Service's selector and the subset's labels) for the
//! port the DestinationRule names, else the first mode set of that policy, the namespace's and
//! the mesh's (the root namespace's); UNSET defers to the next; none at all is PERMISSIVE.

use std::collections::BTreeSet;

use trellis_api::networking::{ClientTlsMode, DestinationRuleSpec, TrafficPolicy};
use trellis_api::security::{MtlsMode, PeerAuthenticationSpec};

use super::finding::{Finding, MTLS_POLICY_CONFLICT};
use super::hosts;
use super::model::{Labels, Mesh, Obj, ServiceRef, selects};

/// Where a DestinationRule disables TLS: the field, the service port it is limited to, and the
/// subset's labels.
struct Disabled<'a> {
    field: String,
    port: Option<u32>,
    subset_labels: Option<&'a Labels>,
}

pub fn check(mesh: &Mesh, out: &mut Vec<Finding>) {
    for dr in &mesh.destination_rules {
        let host = hosts::fqdn(&dr.spec.host, &dr.namespace);
        for spot in disabled(&dr.spec) {
            for namespace in destination_namespaces(mesh, &host) {
                let service = hosts::service_namespace(&host)
                    .and_then(|_| mesh.service(&host, &dr.namespace))
                    .and_then(|s| match s {
                        ServiceRef::Kube(k) => Some(k),
                        ServiceRef::Entry(_) => None,
                    });
                let mut labels: Option<Labels> = service.and_then(|s| s.spec.selector.clone());
                if let Some(subset) = spot.subset_labels {
                    labels.get_or_insert_with(Labels::new).extend(subset.clone());
                }
                let target_port = spot.port.map(|port| {
                    service
                        .and_then(|s| s.spec.ports.iter().find(|p| p.port == port))
                        .map_or(port, |p| p.target_port.parse().unwrap_or(port))
                });
                let Some((policy, MtlsMode::Strict)) =
                    effective_mode(mesh, &namespace, labels.as_ref(), target_port)
                else {
                    continue;
                };
                out.push(
                    Finding::new(
                        MTLS_POLICY_CONFLICT,
                        &dr.subject,
                        format!(
                            "{}: TLS is disabled towards {host}, but PeerAuthentication {}/{} requires mutual TLS \
                             (STRICT) for those workloads in namespace {namespace}: every request from a sidecar fails",
                            spot.field, policy.namespace, policy.name
                        ),
                        "remove the tls setting (or set mode ISTIO_MUTUAL) so sidecars use mutual TLS, or make the \
                         PeerAuthentication PERMISSIVE for clients without a sidecar",
                    )
                    .with(&policy.subject),
                );
            }
        }
    }
}

fn disabled(spec: &DestinationRuleSpec) -> Vec<Disabled<'_>> {
    let mut out = Vec::new();
    if let Some(policy) = &spec.traffic_policy {
        from_policy(policy, "spec.trafficPolicy", None, &mut out);
    }
    for (i, subset) in spec.subsets.iter().enumerate() {
        if let Some(policy) = &subset.traffic_policy {
            from_policy(policy, &format!("spec.subsets[{i}].trafficPolicy"), Some(&subset.labels), &mut out);
        }
    }
    out
}

fn from_policy<'a>(
    policy: &TrafficPolicy,
    prefix: &str,
    subset_labels: Option<&'a Labels>,
    out: &mut Vec<Disabled<'a>>,
) {
    let off = |tls: &Option<trellis_api::networking::ClientTlsSettings>| {
        tls.as_ref().is_some_and(|t| t.mode == ClientTlsMode::Disable)
    };
    if off(&policy.tls) {
        out.push(Disabled { field: format!("{prefix}.tls.mode"), port: None, subset_labels });
    }
    for (i, port) in policy.port_level_settings.iter().enumerate() {
        if off(&port.tls) {
            out.push(Disabled {
                field: format!("{prefix}.portLevelSettings[{i}].tls.mode"),
                port: port.port.as_ref().map(|p| p.number),
                subset_labels,
            });
        }
    }
}

/// The namespaces whose workloads a host names: a Service's own, or for a wildcard those of
/// the Services it covers and of the PeerAuthentications there could be workloads under it.
fn destination_namespaces(mesh: &Mesh, host: &str) -> BTreeSet<String> {
    if let Some(ns) = hosts::service_namespace(host) {
        return BTreeSet::from([ns.to_owned()]);
    }
    if !host.starts_with('*') {
        return BTreeSet::new(); // outside the mesh: no PeerAuthentication governs it
    }
    let covered = |ns: &str| hosts::covers(host, &format!("any.{ns}.{}", hosts::CLUSTER_SUFFIX));
    let mut namespaces: BTreeSet<String> = mesh
        .services
        .iter()
        .filter(|s| hosts::covers(host, &hosts::fqdn(&s.name, &s.namespace)))
        .map(|s| s.namespace.clone())
        .collect();
    namespaces.extend(mesh.peer_authentications.iter().map(|p| p.namespace.clone()).filter(|ns| covered(ns)));
    namespaces
}

/// The mode for workloads with `labels` in `namespace` on `target_port`, and the policy that
/// sets it: the workload policy's port-level mode, else the first mode set (not UNSET) of the
/// workload policy, the namespace's, the mesh's. Several at one scope: the first by name.
/// `None` when no policy sets one (PERMISSIVE).
fn effective_mode<'a>(
    mesh: &'a Mesh,
    namespace: &str,
    labels: Option<&Labels>,
    target_port: Option<u32>,
) -> Option<(&'a Obj<PeerAuthenticationSpec>, MtlsMode)> {
    let by_name = |ns: &str| {
        let mut list: Vec<&'a Obj<PeerAuthenticationSpec>> =
            mesh.peer_authentications.iter().filter(|p| p.namespace == ns).collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    };
    let local = by_name(namespace);
    let workload = labels
        .and_then(|labels| local.iter().copied().find(|p| selector(p).is_some_and(|s| selects(s, labels))));
    let wide =
        |list: &[&'a Obj<PeerAuthenticationSpec>]| list.iter().copied().find(|p| selector(p).is_none());
    let port_level = workload.and_then(|p| {
        let mode = target_port.and_then(|port| p.spec.port_level_mtls.get(&port)).map(|m| m.mode)?;
        (mode != MtlsMode::Unset).then_some((p, mode))
    });
    let root = by_name(&mesh.root_namespace);
    port_level.or_else(|| {
        [workload, wide(&local), wide(&root)]
            .into_iter()
            .flatten()
            .find_map(|p| whole_mode(p).map(|mode| (p, mode)))
    })
}

/// A policy's selector, unless empty (which selects the whole namespace).
fn selector(policy: &Obj<PeerAuthenticationSpec>) -> Option<&Labels> {
    policy.spec.selector.as_ref().map(|s| &s.match_labels).filter(|s| !s.is_empty())
}

fn whole_mode(policy: &Obj<PeerAuthenticationSpec>) -> Option<MtlsMode> {
    policy.spec.mtls.as_ref().map(|m| m.mode).filter(|m| *m != MtlsMode::Unset)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{found, mesh};
    use super::*;

    const DR: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: db, namespace: app}\nspec:\n  host: db\n  trafficPolicy:\n    portLevelSettings:\n    - port: {number: 5432}\n      tls: {mode: DISABLE}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: app}\nspec:\n  selector: {app: db}\n  ports: [{name: tcp, port: 5432, targetPort: 15432}]\n---\n";

    fn run(policies: &str) -> Vec<String> {
        let mut out = Vec::new();
        check(&mesh(&format!("{DR}{policies}")), &mut out);
        found(&out)
    }

    #[test]
    fn the_most_specific_policy_decides() {
        let namespace_strict = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: app}\nspec: {mtls: {mode: STRICT}}\n---\n";
        assert_eq!(run(namespace_strict), ["IST0113 DestinationRule app/db"]);
        let workload_permissive = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: db, namespace: app}\nspec: {selector: {matchLabels: {app: db}}, mtls: {mode: PERMISSIVE}}\n---\n";
        assert!(run(&format!("{namespace_strict}{workload_permissive}")).is_empty());
        // UNSET defers to the namespace.
        let workload_unset = workload_permissive.replace("PERMISSIVE", "UNSET");
        assert_eq!(run(&format!("{namespace_strict}{workload_unset}")), ["IST0113 DestinationRule app/db"]);
        // A port-level mode counts for the DestinationRule's port, by target port.
        let port_level = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: db, namespace: app}\nspec:\n  selector: {matchLabels: {app: db}}\n  mtls: {mode: STRICT}\n  portLevelMtls: {15432: {mode: PERMISSIVE}}\n---\n";
        assert!(run(port_level).is_empty());
        // A port-level mode for another port, with the policy's own mode UNSET: the namespace's.
        let other_port = port_level
            .replace("15432: {mode: PERMISSIVE}", "8080: {mode: PERMISSIVE}")
            .replace("mtls: {mode: STRICT}\n  portLevelMtls", "mtls: {mode: UNSET}\n  portLevelMtls");
        assert!(other_port.contains("UNSET") && other_port.contains("8080"), "{other_port}");
        assert_eq!(run(&format!("{namespace_strict}{other_port}")), ["IST0113 DestinationRule app/db"]);
        let mesh_strict = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n---\n";
        assert_eq!(run(mesh_strict), ["IST0113 DestinationRule app/db"]);
        let namespace_permissive = namespace_strict.replace("STRICT", "PERMISSIVE");
        assert!(run(&format!("{mesh_strict}{namespace_permissive}")).is_empty());
        assert!(run("").is_empty(), "no policy: PERMISSIVE");
    }
}
