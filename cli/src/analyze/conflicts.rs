//! Two VirtualServices for one host on the sidecars (IST0109). A sidecar uses one
//! VirtualService per host, so the routes of the others are silently ignored. Gateways merge
//! the VirtualServices of a host (as in Istio), so only those bound to `mesh` conflict.
//!
//! Hosts are compared per namespace that sees them: a VirtualService exported to some
//! namespaces only conflicts there, with those of the same host and with those exported
//! everywhere whose hosts overlap it (as Istio's analyzer compares them).

use std::collections::{BTreeMap, BTreeSet};

use trellis_api::networking::VirtualServiceSpec;

use super::finding::{CONFLICTING_MESH_GATEWAY_HOSTS, Finding};
use super::hosts;
use super::model::{Mesh, Obj};

/// `None` for every namespace.
type Scope = Option<String>;

pub fn check(mesh: &Mesh, out: &mut Vec<Finding>) {
    // (scope, host) → the VirtualServices (by index) that route it on sidecars.
    let mut by_host: BTreeMap<(Scope, String), BTreeSet<usize>> = BTreeMap::new();
    for (i, vs) in mesh.virtual_services.iter().enumerate() {
        if !bound_to_sidecars(&vs.spec) {
            continue;
        }
        for scope in scopes(vs) {
            for host in &vs.spec.hosts {
                by_host.entry((scope.clone(), hosts::fqdn(host, &vs.namespace))).or_default().insert(i);
            }
        }
    }
    let mut reported = BTreeSet::new();
    for ((scope, host), own) in &by_host {
        let mut rivals = own.clone();
        if scope.is_some() {
            for ((other_scope, other_host), list) in &by_host {
                if other_scope.is_none() && hosts::overlap(host, other_host) {
                    rivals.extend(list);
                }
            }
        }
        if rivals.len() < 2 {
            continue;
        }
        let all: Vec<&Obj<VirtualServiceSpec>> = rivals.iter().map(|i| &mesh.virtual_services[*i]).collect();
        let names =
            all.iter().map(|vs| format!("{}/{}", vs.namespace, vs.name)).collect::<Vec<_>>().join(", ");
        let seen_from = match scope {
            Some(ns) => format!("namespace {ns}"),
            None => "every namespace".to_owned(),
        };
        for (i, vs) in rivals.iter().zip(&all) {
            if !reported.insert(*i) {
                continue;
            }
            let mut finding = Finding::new(
                CONFLICTING_MESH_GATEWAY_HOSTS,
                &vs.subject,
                format!(
                    "the VirtualServices {names} all route host {host} on the sidecars of {seen_from}: a sidecar \
                     uses one VirtualService per host, so the routes of the others are ignored"
                ),
                "merge them into one VirtualService, or narrow their exportTo or gateways so that each host has one",
            );
            for other in &all {
                finding = finding.with(&other.subject);
            }
            out.push(finding);
        }
    }
}

/// Whether the VirtualService applies to sidecars: no `gateways`, or `mesh` among them.
pub fn bound_to_sidecars(spec: &VirtualServiceSpec) -> bool {
    spec.gateways.is_empty() || spec.gateways.iter().any(|g| g == "mesh")
}

/// The namespaces that see it, `None` standing for all.
fn scopes(vs: &Obj<VirtualServiceSpec>) -> Vec<Scope> {
    let export = &vs.spec.export_to;
    if export.is_empty() || export.iter().any(|e| e == "*") {
        return vec![None];
    }
    let set: BTreeSet<String> = export
        .iter()
        .filter(|e| *e != "~")
        .map(|e| if e == "." { vs.namespace.clone() } else { e.clone() })
        .collect();
    set.into_iter().map(Some).collect()
}
