//! Two VirtualServices for one host on the sidecars (IST0109). A sidecar uses one
//! VirtualService per host, so the routes of the others are silently ignored.
//!
//! A gateway merges the rules of the VirtualServices of a host into one list (Istio puts the
//! oldest first, Trellis orders by namespace and name), so that is no conflict by itself; but a
//! rule without match in one of them takes every request and can leave the other's rules
//! unused (TRL0004).
//!
//! Hosts are compared per namespace that sees them: a VirtualService exported to some
//! namespaces only conflicts there, with those of the same host and with those exported
//! everywhere whose hosts overlap it (as Istio's analyzer compares them).

use std::collections::{BTreeMap, BTreeSet};

use trellis_api::networking::VirtualServiceSpec;

use super::finding::{CONFLICTING_MESH_GATEWAY_HOSTS, Finding, GATEWAY_ROUTES_SHADOWED};
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

/// VirtualServices sharing a host on a gateway where one of them has an HTTP rule without
/// match: the other's HTTP rules may never be tried.
pub fn check_gateways(mesh: &Mesh, out: &mut Vec<Finding>) {
    let vss = &mesh.virtual_services;
    // gateway → the VirtualServices with HTTP rules bound to it, with their full host names.
    let mut bound: BTreeMap<String, Vec<(usize, Vec<String>)>> = BTreeMap::new();
    for (i, vs) in vss.iter().enumerate().filter(|(_, vs)| !vs.spec.http.is_empty()) {
        let names: Vec<String> = vs.spec.hosts.iter().map(|h| hosts::fqdn(h, &vs.namespace)).collect();
        for gateway in gateway_keys(vs) {
            bound.entry(gateway).or_default().push((i, names.clone()));
        }
    }
    let mut reported = BTreeSet::new();
    for (gateway, members) in &bound {
        // Exact host → members; members with a wildcard host are compared one by one.
        let mut by_host: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        let mut wildcard: Vec<usize> = Vec::new();
        for (m, (_, names)) in members.iter().enumerate() {
            for name in names {
                if name.starts_with('*') {
                    wildcard.push(m);
                } else {
                    by_host.entry(name).or_default().push(m);
                }
            }
        }
        for (i, names) in members {
            let Some(catch_all) = vss[*i].spec.http.iter().position(|r| r.matches.is_empty()) else {
                continue;
            };
            for host in names {
                let exact = if host.starts_with('*') {
                    // A wildcard meets every exact host it covers.
                    by_host
                        .iter()
                        .filter(|(h, _)| hosts::covers(host, h))
                        .flat_map(|(_, list)| list.clone())
                        .collect()
                } else {
                    by_host.get(host.as_str()).cloned().unwrap_or_default()
                };
                let others = exact.into_iter().chain(
                    wildcard
                        .iter()
                        .copied()
                        .filter(|m| members[*m].1.iter().any(|h| hosts::overlap(h, host))),
                );
                for m in others {
                    let j = members[m].0;
                    if j != *i && reported.insert((j, *i)) {
                        out.push(shadowed(mesh, gateway, &vss[*i], catch_all, &vss[j], host));
                    }
                }
            }
        }
    }
}

fn shadowed(
    mesh: &Mesh,
    gateway: &str,
    shadowing: &Obj<VirtualServiceSpec>,
    catch_all: usize,
    shadowed: &Obj<VirtualServiceSpec>,
    host: &str,
) -> Finding {
    let mut finding = Finding::new(
        GATEWAY_ROUTES_SHADOWED,
        &shadowed.subject,
        format!(
            "gateway {gateway} merges the rules of this VirtualService and of {}/{} for host {host} into one \
             list (in Istio the older first, in Trellis by namespace and name); its rule spec.http[{catch_all}] \
             has no match and takes every request, so the rules after it are not tried",
            shadowing.namespace, shadowing.name
        ),
        "give the rule without match a match, or merge the two VirtualServices into one whose catch-all rule comes last",
    )
    .with(&shadowing.subject);
    if let Some(g) = mesh.gateways.iter().find(|g| format!("{}/{}", g.namespace, g.name) == gateway) {
        finding = finding.with(&g.subject);
    }
    finding
}

/// The gateways a VirtualService is bound to, as `namespace/name` (a bare name is in its own
/// namespace); `mesh` is not a gateway.
fn gateway_keys(vs: &Obj<VirtualServiceSpec>) -> Vec<String> {
    vs.spec
        .gateways
        .iter()
        .filter(|g| *g != "mesh")
        .map(|g| if g.contains('/') { g.clone() } else { format!("{}/{g}", vs.namespace) })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::super::test_support::{found, mesh};
    use super::*;

    fn vs(namespace: &str, name: &str, host: &str, extra: &str) -> String {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  hosts: [{host}]\n{extra}  http: [{{route: [{{destination: {{host: {host}}}}}]}}]\n---\n"
        )
    }

    #[test]
    fn short_names_are_compared_in_their_namespace() {
        let text = vs("a", "r", "ratings", "") + &vs("b", "r", "ratings", "");
        let mut out = Vec::new();
        check(&mesh(&text), &mut out);
        assert!(out.is_empty(), "ratings.a and ratings.b differ: {out:?}");
        let text = vs("a", "r", "ratings", "") + &vs("b", "r", "ratings.a.svc.cluster.local", "");
        check(&mesh(&text), &mut out);
        assert_eq!(found(&out), ["IST0109 VirtualService a/r", "IST0109 VirtualService b/r"]);
    }

    #[test]
    fn export_to_limits_where_they_meet() {
        let only_here = "  exportTo: ['.']\n";
        let text = vs("a", "r", "x.example.com", only_here) + &vs("b", "r", "x.example.com", only_here);
        let mut out = Vec::new();
        check(&mesh(&text), &mut out);
        assert!(out.is_empty(), "{out:?}");
        let text = vs("a", "r", "x.example.com", only_here) + &vs("b", "r", "'*.example.com'", "");
        check(&mesh(&text), &mut out);
        assert_eq!(found(&out), ["IST0109 VirtualService a/r", "IST0109 VirtualService b/r"]);
    }

    #[test]
    fn a_wildcard_catch_all_on_a_gateway_shadows_the_hosts_it_covers() {
        let on_gateway = |name: &str, host: &str, http: &str| {
            format!(
                "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: edge}}\nspec:\n  hosts: ['{host}']\n  gateways: [gw]\n  http: [{http}]\n---\n"
            )
        };
        let catch_all = "{route: [{destination: {host: web}}]}";
        let specific = "{match: [{uri: {prefix: /a}}], route: [{destination: {host: web}}]}";
        let text = on_gateway("all", "*.example.com", catch_all)
            + &on_gateway("a", "a.example.com", specific)
            + &on_gateway("b", "b.example.org", specific);
        let mut out = Vec::new();
        check_gateways(&mesh(&text), &mut out);
        assert_eq!(found(&out), ["TRL0004 VirtualService edge/a"]);
        // Another gateway: no merge.
        let text = on_gateway("all", "*.example.com", catch_all)
            + &on_gateway("a", "a.example.com", specific).replace("[gw]", "[other]");
        out.clear();
        check_gateways(&mesh(&text), &mut out);
        assert!(out.is_empty(), "{out:?}");
    }
}
