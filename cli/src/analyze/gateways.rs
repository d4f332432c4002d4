//! Gateways and the VirtualServices bound to them:
//!
//! - a VirtualService bound to a Gateway that does not exist (IST0101) routes nothing there;
//!   checked where the input has Gateways (a file of routes alone says nothing of them);
//! - Gateway server hosts that no VirtualService bound to the Gateway routes (TRL0003): requests
//!   for them reach the gateway and get 404 (HTTP) or are closed (TLS, TCP). Servers that need
//!   no VirtualService are passed over: an HTTPS redirect, and AUTO_PASSTHROUGH (SNI routing).
//!   A host `ns/name` only takes VirtualServices of namespace `ns` (`.` the Gateway's, `*` any).

use trellis_api::networking::{GatewaySpec, ServerTlsMode, VirtualServiceSpec};

use super::finding::{Finding, GATEWAY_HOST_WITHOUT_ROUTE, REFERENCED_RESOURCE_NOT_FOUND};
use super::hosts;
use super::model::{Mesh, Obj};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Routes {
    Http,
    Tls,
    Tcp,
}

pub fn check(mesh: &Mesh, out: &mut Vec<Finding>) {
    missing_gateways(mesh, out);
    for gateway in &mesh.gateways {
        for (i, server) in gateway.spec.servers.iter().enumerate() {
            let tls_mode = server.tls.as_ref().map(|t| t.mode);
            if server.tls.as_ref().is_some_and(|t| t.https_redirect)
                || tls_mode == Some(ServerTlsMode::AutoPassthrough)
            {
                continue;
            }
            let protocol = server.port.as_ref().map(|p| p.protocol.to_ascii_uppercase()).unwrap_or_default();
            let routes = match protocol.as_str() {
                "HTTP" | "HTTP2" | "GRPC" | "GRPC-WEB" => Routes::Http,
                "HTTPS" if tls_mode == Some(ServerTlsMode::Passthrough) => Routes::Tls,
                "HTTPS" => Routes::Http,
                "TLS" if tls_mode == Some(ServerTlsMode::Passthrough) => Routes::Tls,
                // TLS ended at the gateway, and any other protocol, is routed as TCP.
                _ => Routes::Tcp,
            };
            for host in &server.hosts {
                let (namespace, name) = host.split_once('/').unwrap_or(("*", host));
                let name = name.to_ascii_lowercase();
                let routed = mesh.virtual_services.iter().any(|vs| {
                    binds(&vs.spec, &vs.namespace, gateway)
                        && namespace_allows(namespace, &vs.namespace, &gateway.namespace)
                        && vs.spec.hosts.iter().any(|h| hosts::overlap(&name, &hosts::fqdn(h, &vs.namespace)))
                        && has_routes(&vs.spec, routes)
                });
                if routed {
                    continue;
                }
                let (kind, effect) = match routes {
                    Routes::Http => ("http", "get 404"),
                    Routes::Tls => ("tls", "are closed"),
                    Routes::Tcp => ("tcp", "are closed"),
                };
                out.push(Finding::new(
                    GATEWAY_HOST_WITHOUT_ROUTE,
                    &gateway.subject,
                    format!(
                        "spec.servers[{i}]: no VirtualService bound to this Gateway has {kind} routes for host {host:?}: \
                         requests for it {effect}"
                    ),
                    format!(
                        "add a VirtualService with host {name:?}, `gateways: [{}/{}]` and {kind} routes, or remove the host",
                        gateway.namespace, gateway.name
                    ),
                ));
            }
        }
    }
}

fn missing_gateways(mesh: &Mesh, out: &mut Vec<Finding>) {
    if mesh.gateways.is_empty() && !mesh.live {
        return;
    }
    for vs in &mesh.virtual_services {
        for (i, reference) in vs.spec.gateways.iter().enumerate() {
            if reference == "mesh" || mesh.gateways.iter().any(|g| binds_one(reference, &vs.namespace, g)) {
                continue;
            }
            out.push(Finding::new(
                REFERENCED_RESOURCE_NOT_FOUND,
                &vs.subject,
                format!("spec.gateways[{i}]: no Gateway {reference:?} exists; this VirtualService routes nothing there"),
                "name an existing Gateway as namespace/name (a bare name is in the VirtualService's namespace)",
            ));
        }
    }
}

/// Whether a VirtualService names this Gateway: `ns/name`, or `name` in its own namespace (as
/// trellisd binds them; Istio's legacy `name.namespace` form binds nothing in Trellis).
fn binds(spec: &VirtualServiceSpec, vs_namespace: &str, gateway: &Obj<GatewaySpec>) -> bool {
    spec.gateways.iter().any(|g| binds_one(g, vs_namespace, gateway))
}

fn binds_one(reference: &str, vs_namespace: &str, gateway: &Obj<GatewaySpec>) -> bool {
    match reference.split_once('/') {
        Some((ns, name)) => ns == gateway.namespace && name == gateway.name,
        None => reference == gateway.name && vs_namespace == gateway.namespace,
    }
}

fn namespace_allows(pattern: &str, vs_namespace: &str, gateway_namespace: &str) -> bool {
    match pattern {
        "*" => true,
        "." => vs_namespace == gateway_namespace,
        other => other == vs_namespace,
    }
}

fn has_routes(spec: &VirtualServiceSpec, routes: Routes) -> bool {
    match routes {
        Routes::Http => !spec.http.is_empty(),
        Routes::Tls => !spec.tls.is_empty(),
        Routes::Tcp => !spec.tcp.is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{found, mesh};
    use super::*;

    const GATEWAY: &str = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: edge}\nspec:\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [shop/*.example.com]\n---\n";

    fn run(vs: &str) -> Vec<String> {
        let mut out = Vec::new();
        check(&mesh(&format!("{GATEWAY}{vs}")), &mut out);
        found(&out)
    }

    fn vs(namespace: &str, gateways: &str, host: &str) -> String {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: v, namespace: {namespace}}}\nspec:\n  hosts: [{host}]\n  gateways: [{gateways}]\n  http: [{{route: [{{destination: {{host: web}}}}]}}]\n"
        )
    }

    #[test]
    fn a_host_is_routed_by_a_bound_virtual_service_of_an_allowed_namespace() {
        assert!(run(&vs("shop", "edge/gw", "a.example.com")).is_empty());
        assert_eq!(
            run(&vs("other", "edge/gw", "a.example.com")),
            ["TRL0003 Gateway edge/gw"],
            "namespace shop only"
        );
        assert_eq!(
            run(&vs("shop", "gw", "a.example.com")),
            ["IST0101 VirtualService shop/v", "TRL0003 Gateway edge/gw"],
            "gw would be shop/gw"
        );
        assert_eq!(run(&vs("shop", "edge/gw", "a.example.org")), ["TRL0003 Gateway edge/gw"]);
        assert_eq!(run(""), ["TRL0003 Gateway edge/gw"]);
        assert_eq!(
            run(&vs("shop", "edge/gw, edge/gone, mesh", "a.example.com")),
            ["IST0101 VirtualService shop/v"],
            "a Gateway that is not there"
        );
    }
}
