//! A Sidecar whose egress hosts leave out a host that a VirtualService of its namespace routes
//! to (TRL0002). The Sidecar limits what the proxies of its namespace know; a destination it
//! does not import has no cluster there, so the route cannot work. Egress hosts are
//! `namespace/dnsName` (`*` any namespace, `.` the Sidecar's own, `~` none); the namespace of a
//! destination is its Service's, or its ServiceEntry's.

use std::collections::BTreeSet;

use trellis_api::networking::SidecarSpec;

use super::conflicts::bound_to_sidecars;
use super::finding::{Finding, SIDECAR_HIDES_DESTINATION};
use super::hosts;
use super::model::{Mesh, Obj};
use super::routes::destinations;

pub fn check(mesh: &Mesh, out: &mut Vec<Finding>) {
    for vs in mesh.virtual_services.iter().filter(|vs| bound_to_sidecars(&vs.spec)) {
        let mut reported = BTreeSet::new();
        for sidecar in sidecars_of(mesh, &vs.namespace) {
            let patterns: Vec<&str> =
                sidecar.spec.egress.iter().flat_map(|e| e.hosts.iter().map(String::as_str)).collect();
            if patterns.is_empty() {
                continue; // no egress listeners: everything is imported
            }
            for (field, destination) in destinations(&vs.spec) {
                if destination.host.is_empty() {
                    continue;
                }
                let host = hosts::fqdn(&destination.host, &vs.namespace);
                let owner = match mesh.service(&host, &vs.namespace) {
                    Some(service) => Some(service.namespace().to_owned()),
                    None => hosts::service_namespace(&host).map(str::to_owned),
                };
                if imports(&patterns, &sidecar.namespace, owner.as_deref(), &host)
                    || !reported.insert((sidecar.subject.clone(), host.clone()))
                {
                    continue;
                }
                let wanted = format!("{}/{host}", owner.as_deref().unwrap_or("*"));
                out.push(
                    Finding::new(
                        SIDECAR_HIDES_DESTINATION,
                        &vs.subject,
                        format!(
                            "{field}: routes to {host}, which Sidecar {}/{} hides from the proxies it applies to \
                             (its egress hosts: {}): the route cannot work there",
                            sidecar.namespace,
                            sidecar.name,
                            patterns.join(", ")
                        ),
                        format!("add {wanted:?} to the Sidecar's egress hosts, or route to a host it imports"),
                    )
                    .with(&sidecar.subject),
                );
            }
        }
    }
}

/// The Sidecars that apply to workloads of `namespace`, as trellisd picks them: those with a
/// selector (for the workloads they select), and for the rest the first by name without one in
/// the namespace, else in the root namespace.
fn sidecars_of<'a>(mesh: &'a Mesh, namespace: &str) -> Vec<&'a Obj<SidecarSpec>> {
    let default_of = |ns: &str| {
        mesh.sidecars
            .iter()
            .filter(|s| s.namespace == ns && s.spec.workload_selector.is_none())
            .min_by(|a, b| a.name.cmp(&b.name))
    };
    let mut list: Vec<_> = mesh
        .sidecars
        .iter()
        .filter(|s| s.namespace == namespace && s.spec.workload_selector.is_some())
        .collect();
    list.extend(default_of(namespace).or_else(|| default_of(&mesh.root_namespace)));
    list
}

/// Whether any egress host pattern imports `host` of a service in `owner` (unknown: any).
fn imports(patterns: &[&str], sidecar_namespace: &str, owner: Option<&str>, host: &str) -> bool {
    patterns.iter().any(|pattern| {
        let (namespace, name) = pattern.split_once('/').unwrap_or(("*", pattern));
        let namespace_ok = match namespace {
            "*" => true,
            "~" => false,
            "." => owner.is_none_or(|o| o == sidecar_namespace),
            other => owner.is_none_or(|o| o == other),
        };
        namespace_ok && hosts::covers(&name.to_ascii_lowercase(), host)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn egress_patterns() {
        let host = "reviews.shop.svc.cluster.local";
        assert!(imports(&["./*"], "shop", Some("shop"), host));
        assert!(!imports(&["./*"], "web", Some("shop"), host));
        assert!(imports(&["shop/*"], "web", Some("shop"), host));
        assert!(imports(&["*/reviews.shop.svc.cluster.local"], "web", Some("shop"), host));
        assert!(!imports(&["istio-system/*"], "web", Some("shop"), host));
        assert!(!imports(&["~/*"], "web", Some("shop"), host));
        assert!(imports(&["*/*.example.com"], "web", None, "api.example.com"));
    }
}
