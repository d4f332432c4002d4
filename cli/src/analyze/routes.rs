//! Where VirtualServices send traffic: every destination's host must be a Service or a
//! ServiceEntry (IST0101), its port one the service has (IST0101), and its subset one that a
//! DestinationRule for that host defines (IST0101, as `istioctl analyze` reports all three).

use trellis_api::networking::{Destination, VirtualServiceSpec};

use super::finding::{Finding, REFERENCED_RESOURCE_NOT_FOUND};
use super::hosts;
use super::model::Mesh;

/// Every destination of a VirtualService with the field it is in: routes, mirrors, TCP and TLS
/// routes.
pub fn destinations(spec: &VirtualServiceSpec) -> Vec<(String, &Destination)> {
    let mut out = Vec::new();
    for (i, rule) in spec.http.iter().enumerate() {
        for (j, route) in rule.route.iter().enumerate() {
            out.push((format!("spec.http[{i}].route[{j}].destination"), &route.destination));
        }
        if let Some(mirror) = &rule.mirror {
            out.push((format!("spec.http[{i}].mirror"), mirror));
        }
        for (j, mirror) in rule.mirrors.iter().enumerate() {
            out.push((format!("spec.http[{i}].mirrors[{j}].destination"), &mirror.destination));
        }
    }
    for (i, rule) in spec.tcp.iter().enumerate() {
        for (j, route) in rule.route.iter().enumerate() {
            out.push((format!("spec.tcp[{i}].route[{j}].destination"), &route.destination));
        }
    }
    for (i, rule) in spec.tls.iter().enumerate() {
        for (j, route) in rule.route.iter().enumerate() {
            out.push((format!("spec.tls[{i}].route[{j}].destination"), &route.destination));
        }
    }
    out
}

pub fn check(mesh: &Mesh, out: &mut Vec<Finding>) {
    for vs in &mesh.virtual_services {
        for (field, destination) in destinations(&vs.spec) {
            if destination.host.is_empty() || destination.host.contains('*') {
                continue; // `trellis validate` reports these
            }
            let host = hosts::fqdn(&destination.host, &vs.namespace);
            if mesh.knows_services() {
                match mesh.service(&host, &vs.namespace) {
                    None => {
                        out.push(Finding::new(
                            REFERENCED_RESOURCE_NOT_FOUND,
                            &vs.subject,
                            format!(
                                "{field}: host {:?} ({host}) is no Service or ServiceEntry seen from namespace {}; \
                                 requests routed there fail",
                                destination.host, vs.namespace
                            ),
                            "correct the host, or create the Service (or a ServiceEntry for a host outside the mesh)",
                        ));
                        continue;
                    }
                    Some(service) => {
                        let ports = service.port_numbers();
                        if let Some(port) = destination.port.as_ref().map(|p| p.number).filter(|n| *n != 0)
                            && !ports.is_empty()
                            && !ports.contains(&port)
                        {
                            let list = ports.iter().map(u32::to_string).collect::<Vec<_>>().join(", ");
                            out.push(
                                Finding::new(
                                    REFERENCED_RESOURCE_NOT_FOUND,
                                    &vs.subject,
                                    format!("{field}.port: {host} has no port {port} (its ports: {list})"),
                                    format!(
                                        "route to one of the ports {list}, or add port {port} to the service"
                                    ),
                                )
                                .with(service.subject()),
                            );
                        }
                    }
                }
            }
            if !destination.subset.is_empty() {
                check_subset(mesh, vs, &field, &host, &destination.subset, out);
            }
        }
    }
}

fn check_subset(
    mesh: &Mesh,
    vs: &super::model::Obj<VirtualServiceSpec>,
    field: &str,
    host: &str,
    subset: &str,
    out: &mut Vec<Finding>,
) {
    let rules = mesh.destination_rules_for(host, &vs.namespace);
    if rules.iter().any(|dr| dr.spec.subsets.iter().any(|s| s.name == subset)) {
        return;
    }
    let defined: Vec<&str> =
        rules.iter().flat_map(|dr| dr.spec.subsets.iter().map(|s| s.name.as_str())).collect();
    let fix = if defined.is_empty() {
        format!("add a DestinationRule for {host} with a subset named {subset:?} (its pods' labels)")
    } else {
        format!(
            "add a subset named {subset:?} to the DestinationRule, or route to one it defines: {}",
            defined.join(", ")
        )
    };
    let mut finding = Finding::new(
        REFERENCED_RESOURCE_NOT_FOUND,
        &vs.subject,
        format!(
            "{field}.subset: no DestinationRule for {host} defines subset {subset:?}; requests routed there fail (503)"
        ),
        fix,
    );
    for dr in rules {
        finding = finding.with(&dr.subject);
    }
    out.push(finding);
}
