//! Istio `Gateway` resources → the listeners of the gateway proxies they select.
//!
//! A gateway proxy (a `trellis-proxy --role gateway`, Istio's `router` node) is selected by
//! every Gateway, in any namespace, whose `selector` labels it carries (Istio's default; its
//! PILOT_SCOPE_GATEWAY_TO_NAMESPACE is not implemented). Each server becomes part of the
//! listener of its `bind` address and port; the VirtualServices bound to its Gateway (by
//! `gateways:`, restricted by the server's `namespace/host` and host overlap) give it routes,
//! built by the same route translation the sidecars use ([`super::routes`]).
//!
//! An `ISTIO_MUTUAL` server (the egress-gateway pattern) is sent as that mode alone: the gateway
//! terminates the mesh's mutual TLS with its own workload certificate.
//!
//! Certificates named by `credentialName` are read from Secrets in the gateway proxy's own
//! namespace (as in Istio) and sent inline; a server whose Secret is missing is left out with a
//! warning naming the Gateway, the server and the Secret, and the other servers stay.

use std::collections::BTreeMap;

use tracing::warn;
use trellis_api::networking::{GatewaySpec, Server, ServerTlsMode, ServerTlsSettings, TlsProtocol};
use trellis_api::resource::{Kind, Resource};
use trellis_xds::config as pb;

use super::hosts;
use super::names::resolve_host;
use super::objects::{self, Object};
use super::routes::{Registry, qualified_gateway};
use crate::model::Model;

/// A virtual host of a gateway: one per port and host, merged from every bound VirtualService.
pub fn virtual_host_name(port: u16, host: &str) -> String {
    format!("gateway~{port}~{host}")
}

/// The Gateways (`namespace/name`, sorted) whose selector matches a gateway proxy's labels. An
/// empty selector selects every gateway proxy.
pub fn selecting(model: &Model, labels: &BTreeMap<String, String>) -> Vec<String> {
    gateways(model).filter(|g| objects::selects(&g.spec.selector, labels)).map(|g| key(&g)).collect()
}

fn gateways(model: &Model) -> impl Iterator<Item = Object<'_, GatewaySpec>> {
    static NO_ANNOTATIONS: BTreeMap<String, String> = BTreeMap::new();
    model.of_kind(Kind::Gateway).filter_map(|(k, resource)| match &**resource {
        Resource::Gateway(g) => Some(Object {
            kind: Kind::Gateway,
            namespace: &k.namespace,
            name: &k.name,
            annotations: g.metadata.annotations.as_ref().unwrap_or(&NO_ANNOTATIONS),
            spec: &g.spec,
        }),
        _ => None,
    })
}

fn key(g: &Object<'_, GatewaySpec>) -> String {
    format!("{}/{}", g.namespace, g.name)
}

/// One server, as it joins its listener.
struct Placed<'a> {
    gateway: Object<'a, GatewaySpec>,
    gateway_key: String,
    index: usize,
    server: &'a Server,
    /// `(namespace filter, host)`: `*` any namespace, `.` the Gateway's.
    hosts: Vec<(String, String)>,
    tls: Option<pb::GatewayTls>,
    https_redirect: bool,
}

/// Adds the listeners of `gateways` (and their virtual hosts) to a gateway proxy's config.
/// `registry` must know the config's clusters. `secrets`: the namespace whose Secrets the
/// proxy may be sent (its own, when authenticated); `None`: servers naming one are left out.
pub fn add(
    config: &mut pb::ProxyConfig,
    model: &Model,
    secrets: Option<&str>,
    gateways_selected: &[String],
    registry: &Registry<'_>,
) {
    let mut listeners: BTreeMap<(String, u16), (pb::GatewayProtocol, Vec<Placed<'_>>)> = BTreeMap::new();
    for gateway in gateways(model).filter(|g| gateways_selected.contains(&key(g))) {
        for (index, server) in gateway.spec.servers.iter().enumerate() {
            let Some(placed) = place(gateway, index, server, model, secrets) else { continue };
            let Some((port, protocol)) = port_of(gateway, index, server) else { continue };
            let slot = listeners.entry((server.bind.clone(), port)).or_insert((protocol, Vec::new()));
            if slot.0 != protocol {
                warn!(resource = %gateway, field = %format!("spec.servers[{index}].port"), port,
                    "another server on this port speaks another protocol; server left out");
                continue;
            }
            if let Some(placed) = without_overlaps(placed, &slot.1, protocol, port) {
                slot.1.push(placed);
            }
        }
    }
    let virtual_services: Vec<_> = objects::virtual_services(model).collect();
    let mut merged: BTreeMap<String, (Vec<pb::Route>, Vec<String>)> = BTreeMap::new();
    for ((bind, port), (protocol, servers)) in listeners {
        let mut listener =
            pb::GatewayListener { bind, port: port.into(), protocol: protocol.into(), servers: Vec::new() };
        for placed in servers {
            let ours = [placed.gateway_key.clone()];
            let scoped = Registry {
                services: registry.services,
                clusters: registry.clusters,
                namespace: registry.namespace,
                default_retry: registry.default_retry.clone(),
                gateways: Some(&ours),
            };
            let bound: Vec<_> = virtual_services
                .iter()
                .filter(|vs| {
                    vs.spec.gateways.iter().any(|g| qualified_gateway(g, vs.namespace) == placed.gateway_key)
                })
                .collect();
            let mut out = pb::GatewayServer {
                name: match placed.server.name.as_str() {
                    "" => format!("{}/{}", placed.gateway_key, placed.index),
                    name => format!("{}/{name}", placed.gateway_key),
                },
                hosts: placed.hosts.iter().map(|(_, h)| h.clone()).collect(),
                tls: placed.tls.clone(),
                ..Default::default()
            };
            for vs in &bound {
                let admitted = |vs_host: &str| -> Option<String> {
                    placed.hosts.iter().find_map(|(ns, server_host)| {
                        let ns_ok = ns == "*"
                            || (ns == "." && vs.namespace == placed.gateway.namespace)
                            || ns == vs.namespace;
                        if !ns_ok {
                            return None;
                        }
                        if hosts::matches(server_host, vs_host) {
                            Some(vs_host.to_owned())
                        } else if hosts::matches(vs_host, server_host) {
                            Some(server_host.clone())
                        } else {
                            None
                        }
                    })
                };
                let domains: Vec<String> = vs
                    .spec
                    .hosts
                    .iter()
                    .map(|h| resolve_host(h, vs.namespace))
                    .filter_map(|h| admitted(&h))
                    .collect();
                if domains.is_empty() {
                    continue;
                }
                match protocol {
                    pb::GatewayProtocol::GatewayHttp | pb::GatewayProtocol::GatewayHttps
                        if !is_passthrough(&placed.tls) =>
                    {
                        let routes = if placed.https_redirect {
                            vec![https_redirect()]
                        } else {
                            scoped.gateway_http_routes(**vs, port)
                        };
                        for domain in domains {
                            let name = virtual_host_name(port, &domain);
                            let entry = merged.entry(name.clone()).or_default();
                            let vs_key = format!("{}/{}", vs.namespace, vs.name);
                            if !entry.1.contains(&vs_key) {
                                entry.1.push(vs_key);
                                entry.0.extend(routes.iter().cloned());
                            }
                            if !out.routes.iter().any(|r| r.host == domain) {
                                out.routes.push(pb::GatewayRoute { host: domain, virtual_host: name });
                            }
                        }
                    }
                    _ if is_passthrough(&placed.tls) => {
                        for (i, route) in vs.spec.tls.iter().enumerate() {
                            let field = format!("spec.tls[{i}]");
                            for m in &route.matches {
                                if !scoped.gateway_l4_applies(**vs, m.port, &m.gateways, port) {
                                    continue;
                                }
                                let sni_hosts: Vec<String> =
                                    m.sni_hosts.iter().map(|h| resolve_host(h, vs.namespace)).collect();
                                let clusters = scoped.gateway_l4_split(**vs, &field, &route.route, port);
                                if !clusters.is_empty() {
                                    out.sni_routes.push(pb::GatewaySniRoute { sni_hosts, clusters });
                                }
                            }
                        }
                    }
                    _ => {
                        if !out.tcp_clusters.is_empty() {
                            continue;
                        }
                        let chosen = vs.spec.tcp.iter().enumerate().find(|(_, r)| {
                            r.matches.is_empty()
                                || r.matches
                                    .iter()
                                    .any(|m| scoped.gateway_l4_applies(**vs, m.port, &m.gateways, port))
                        });
                        if let Some((i, r)) = chosen {
                            out.tcp_clusters =
                                scoped.gateway_l4_split(**vs, &format!("spec.tcp[{i}]"), &r.route, port);
                        }
                    }
                }
            }
            // An https redirect needs no VirtualService: every host of the server redirects.
            if placed.https_redirect {
                for host in &out.hosts.clone() {
                    if out.routes.iter().any(|r| r.host == *host) {
                        continue;
                    }
                    let name = virtual_host_name(port, host);
                    merged.entry(name.clone()).or_default().0.push(https_redirect());
                    out.routes.push(pb::GatewayRoute { host: host.clone(), virtual_host: name });
                }
            }
            listener.servers.push(out);
        }
        config.gateway_listeners.push(listener);
    }
    for (name, (routes, _)) in merged {
        config.virtual_hosts.push(pb::VirtualHost { name, routes });
    }
}

fn https_redirect() -> pb::Route {
    pb::Route {
        name: "https-redirect".into(),
        action: Some(pb::route::Action::Redirect(pb::Redirect {
            scheme: "https".into(),
            response_code: 301,
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn is_passthrough(tls: &Option<pb::GatewayTls>) -> bool {
    tls.as_ref().is_some_and(|t| t.mode() == pb::GatewayTlsMode::GatewayTlsPassthrough)
}

/// The server's port and what its listener speaks; `None` (with a warning) when unusable.
fn port_of(g: Object<'_, GatewaySpec>, index: usize, server: &Server) -> Option<(u16, pb::GatewayProtocol)> {
    let field = format!("spec.servers[{index}].port");
    let Some(port) = server.port.as_ref() else {
        warn!(resource = %g, field, "no port; server left out");
        return None;
    };
    let Some(number) = u16::try_from(port.number).ok().filter(|n| *n != 0) else {
        warn!(resource = %g, field = %format!("{field}.number"), number = port.number, "not a port; server left out");
        return None;
    };
    let protocol = match port.protocol.to_ascii_uppercase().as_str() {
        "HTTP" | "HTTP2" | "GRPC" | "GRPC-WEB" => pb::GatewayProtocol::GatewayHttp,
        "HTTPS" => pb::GatewayProtocol::GatewayHttps,
        "TLS" => pb::GatewayProtocol::GatewayTls,
        _ => pb::GatewayProtocol::GatewayTcp,
    };
    Some((number, protocol))
}

/// A server's hosts and TLS, or `None` (with a warning naming why) when it cannot be served.
fn place<'a>(
    gateway: Object<'a, GatewaySpec>,
    index: usize,
    server: &'a Server,
    model: &Model,
    secrets: Option<&str>,
) -> Option<Placed<'a>> {
    let field = format!("spec.servers[{index}]");
    let hosts = server
        .hosts
        .iter()
        .map(|h| match h.split_once('/') {
            Some((ns, host)) => (ns.to_owned(), host.to_ascii_lowercase()),
            None => ("*".to_owned(), h.to_ascii_lowercase()),
        })
        .collect::<Vec<_>>();
    if hosts.is_empty() {
        warn!(resource = %gateway, field = %format!("{field}.hosts"), "no hosts; server left out");
        return None;
    }
    if !server.default_endpoint.is_empty() {
        warn!(resource = %gateway, field = %format!("{field}.defaultEndpoint"), "not enforced by Trellis; ignored");
    }
    let (tls, https_redirect) = match &server.tls {
        None => (None, false),
        Some(tls) if tls.https_redirect && server_protocol_is_http(server) => (None, true),
        Some(tls) => (Some(server_tls(gateway, &field, tls, model, secrets)?), tls.https_redirect),
    };
    Some(Placed { gateway, gateway_key: key(&gateway), index, server, hosts, tls, https_redirect })
}

fn server_protocol_is_http(server: &Server) -> bool {
    server.port.as_ref().is_some_and(|p| p.protocol.eq_ignore_ascii_case("HTTP"))
}

fn server_tls(
    gateway: Object<'_, GatewaySpec>,
    field: &str,
    tls: &ServerTlsSettings,
    model: &Model,
    secrets: Option<&str>,
) -> Option<pb::GatewayTls> {
    let field = format!("{field}.tls");
    for (set, name) in [
        (!tls.credential_names.is_empty(), "credentialNames"),
        (!tls.subject_alt_names.is_empty(), "subjectAltNames"),
        (!tls.verify_certificate_spki.is_empty(), "verifyCertificateSpki"),
        (!tls.verify_certificate_hash.is_empty(), "verifyCertificateHash"),
        (!tls.ca_crl.is_empty(), "caCrl"),
    ] {
        if set {
            warn!(resource = %gateway, field = %format!("{field}.{name}"), "not enforced by Trellis; ignored");
        }
    }
    let mode = match tls.mode {
        ServerTlsMode::Simple => pb::GatewayTlsMode::GatewayTlsSimple,
        ServerTlsMode::Mutual => pb::GatewayTlsMode::GatewayTlsMutual,
        ServerTlsMode::Passthrough => pb::GatewayTlsMode::GatewayTlsPassthrough,
        // The mesh's own certificates (an egress gateway reached by sidecars): nothing to send
        // but the mode; the gateway uses its workload certificate, as a sidecar's inbound does.
        ServerTlsMode::IstioMutual => {
            if tls.min_protocol_version != TlsProtocol::TlsAuto
                || tls.max_protocol_version != TlsProtocol::TlsAuto
                || !tls.cipher_suites.is_empty()
            {
                warn!(resource = %gateway, field, "ISTIO_MUTUAL uses the mesh's TLS settings; minProtocolVersion, maxProtocolVersion and cipherSuites are ignored");
            }
            return Some(pb::GatewayTls {
                mode: pb::GatewayTlsMode::GatewayTlsIstioMutual.into(),
                ..Default::default()
            });
        }
        other => {
            warn!(resource = %gateway, field = %format!("{field}.mode"), mode = ?other, "TLS mode not implemented for gateways; server left out");
            return None;
        }
    };
    let mut out = pb::GatewayTls {
        mode: mode.into(),
        min_protocol_version: protocol_version(
            gateway,
            &format!("{field}.minProtocolVersion"),
            tls.min_protocol_version,
        ),
        max_protocol_version: protocol_version(
            gateway,
            &format!("{field}.maxProtocolVersion"),
            tls.max_protocol_version,
        ),
        cipher_suites: tls.cipher_suites.clone(),
        ..Default::default()
    };
    if mode == pb::GatewayTlsMode::GatewayTlsPassthrough {
        return Some(out);
    }
    let mutual = mode == pb::GatewayTlsMode::GatewayTlsMutual;
    if !tls.credential_name.is_empty() {
        let name = tls.credential_name.as_str();
        let Some(namespace) = secrets else {
            warn!(resource = %gateway, field = %format!("{field}.credentialName"),
                "Secrets go only to gateways whose namespace is authenticated (xDS over TLS, 15012); server left out");
            return None;
        };
        let Some(secret) = model.secrets.get(&(namespace.to_owned(), name.to_owned())) else {
            warn!(resource = %gateway, field = %format!("{field}.credentialName"), secret = %format!("{namespace}/{name}"),
                "no such Secret (with tls.crt/tls.key or cert/key) in the gateway's namespace; server left out");
            return None;
        };
        let get = |a: &str, b: &str| secret.data.get(a).or_else(|| secret.data.get(b)).cloned();
        let (Some(chain), Some(key)) = (get("tls.crt", "cert"), get("tls.key", "key")) else {
            warn!(resource = %gateway, field = %format!("{field}.credentialName"), secret = %format!("{namespace}/{name}"),
                "the Secret has no tls.crt and tls.key (or cert and key); server left out");
            return None;
        };
        out.certificate_chain = chain;
        out.private_key = key;
        if mutual {
            let companion = model.secrets.get(&(namespace.to_owned(), format!("{name}-cacert")));
            let ca = get("ca.crt", "cacert").or_else(|| {
                companion.and_then(|c| c.data.get("ca.crt").or_else(|| c.data.get("cacert")).cloned())
            });
            let Some(ca) = ca else {
                warn!(resource = %gateway, field = %format!("{field}.credentialName"), secret = %format!("{namespace}/{name}"),
                    "MUTUAL needs ca.crt (or cacert) in the Secret or in {name}-cacert; server left out");
                return None;
            };
            out.ca_certificates = ca;
        }
        return Some(out);
    }
    if tls.server_certificate.is_empty() || tls.private_key.is_empty() {
        warn!(resource = %gateway, field, "neither credentialName nor serverCertificate and privateKey; server left out");
        return None;
    }
    if mutual && tls.ca_certificates.is_empty() {
        warn!(resource = %gateway, field = %format!("{field}.caCertificates"), "MUTUAL needs caCertificates; server left out");
        return None;
    }
    out.certificate_file = tls.server_certificate.clone();
    out.private_key_file = tls.private_key.clone();
    out.ca_certificates_file = tls.ca_certificates.clone();
    Some(out)
}

/// rustls speaks TLS 1.2 and 1.3 only: older versions are raised to 1.2, with a warning.
fn protocol_version(gateway: Object<'_, GatewaySpec>, field: &str, version: TlsProtocol) -> String {
    match version {
        TlsProtocol::TlsAuto => String::new(),
        TlsProtocol::Tlsv1_0 | TlsProtocol::Tlsv1_1 => {
            warn!(resource = %gateway, field, version = ?version, "TLS 1.0 and 1.1 are not offered (rustls); TLSV1_2 is used");
            "TLSV1_2".into()
        }
        TlsProtocol::Tlsv1_2 => "TLSV1_2".into(),
        TlsProtocol::Tlsv1_3 => "TLSV1_3".into(),
    }
}

/// On a TLS port, a server name picks one server: a host another server of the port already
/// has is reported and dropped from the later server (which is left out when none remains).
fn without_overlaps<'a>(
    mut placed: Placed<'a>,
    earlier: &[Placed<'a>],
    protocol: pb::GatewayProtocol,
    port: u16,
) -> Option<Placed<'a>> {
    if protocol == pb::GatewayProtocol::GatewayHttp || protocol == pb::GatewayProtocol::GatewayTcp {
        return Some(placed);
    }
    let taken = |host: &str| {
        earlier
            .iter()
            .find(|e| e.hosts.iter().any(|(_, h)| h.eq_ignore_ascii_case(host)))
            .map(|e| format!("{} spec.servers[{}]", e.gateway, e.index))
    };
    let before = placed.hosts.len();
    placed.hosts.retain(|(_, host)| match taken(host) {
        Some(other) => {
            warn!(resource = %placed.gateway, field = %format!("spec.servers[{}].hosts", placed.index), host, port, %other,
                "overlapping hosts on one port: the host is already served by another server; left out here");
            false
        }
        None => true,
    });
    if placed.hosts.is_empty() && before > 0 {
        return None;
    }
    Some(placed)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::test_support::*;
    use super::super::{ProxyIdentity, check_consistent, scope_of, scope_of_router, translate};
    use super::*;
    use crate::model::KubeSecret;

    const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: web, namespace: shop }
spec:
  hosts: [web.shop.internal]
  ports: [{ number: 80, name: http, protocol: HTTP }]
  resolution: STATIC
  endpoints: [{ address: 10.0.0.1 }]
"#;

    fn gateway_config(model: &Model, namespace: &str, labels: &[(&str, &str)]) -> pb::ProxyConfig {
        let proxy =
            ProxyIdentity { namespace: namespace.into(), labels: labels_of(labels), ..Default::default() };
        let config = translate(model, &scope_of_router(model, &proxy, &Default::default(), true));
        check_consistent(&config).unwrap_or_else(|e| panic!("{e}"));
        config
    }

    fn with_secret(mut model: Model, namespace: &str, name: &str, data: &[(&str, &str)]) -> Model {
        let data = data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let secret = KubeSecret { namespace: namespace.into(), name: name.into(), data };
        model.secrets.insert((namespace.into(), name.into()), Arc::new(secret));
        model
    }

    fn routes_of<'a>(config: &'a pb::ProxyConfig, name: &str) -> Vec<&'a str> {
        let vh = config.virtual_hosts.iter().find(|v| v.name == name).unwrap_or_else(|| panic!("no {name}"));
        vh.routes.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn gateways_select_by_labels_in_any_namespace_and_bind_their_virtual_services() {
        let yaml = format!(
            r#"{MESH}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{ name: public, namespace: edge }}
spec:
  selector: {{ istio: ingressgateway }}
  servers: [{{ port: {{ number: 80, name: http, protocol: HTTP }}, hosts: ["*.example.com", "other/*.other.com"] }}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{ name: internal, namespace: edge }}
spec:
  selector: {{ istio: internalgateway }}
  servers: [{{ port: {{ number: 8080, name: http, protocol: HTTP }}, hosts: ["*"] }}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: web, namespace: shop }}
spec:
  hosts: [web.example.com, web.other.com]
  gateways: [edge/public, mesh]
  http:
    - name: only-at-the-gateway
      match: [{{ uri: {{ prefix: /a }}, gateways: [edge/public] }}]
      route: [{{ destination: {{ host: web.shop.internal }} }}]
    - name: only-in-the-mesh
      match: [{{ uri: {{ prefix: /b }}, gateways: [mesh] }}]
      route: [{{ destination: {{ host: web.shop.internal }} }}]
    - name: everywhere
      route: [{{ destination: {{ host: web.shop.internal }} }}]
"#
        );
        let m = model(&yaml);
        let config = gateway_config(&m, "istio-system", &[("istio", "ingressgateway")]);
        assert_eq!(config.gateway_listeners.len(), 1, "only the Gateway that selects it");
        let listener = &config.gateway_listeners[0];
        assert_eq!((listener.port, listener.protocol()), (80, pb::GatewayProtocol::GatewayHttp));
        let server = &listener.servers[0];
        assert_eq!(server.name, "edge/public/0");
        // web.other.com is restricted to VirtualServices of namespace `other`.
        let hosts: Vec<_> = server.routes.iter().map(|r| r.host.as_str()).collect();
        assert_eq!(hosts, ["web.example.com"]);
        assert_eq!(
            routes_of(&config, &virtual_host_name(80, "web.example.com")),
            ["only-at-the-gateway", "everywhere"]
        );
        // The sidecars' view of the same VirtualService keeps its mesh routes.
        let sidecar = config_for(&m, "shop", &[]);
        assert!(sidecar.gateway_listeners.is_empty(), "sidecars get no listeners");
        let other = gateway_config(&m, "istio-system", &[("istio", "other")]);
        assert!(other.gateway_listeners.is_empty(), "no Gateway selects it");
    }

    fn https(credential: &str) -> String {
        format!(
            r#"{MESH}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{ name: public, namespace: istio-system }}
spec:
  selector: {{ istio: ingressgateway }}
  servers:
    - port: {{ number: 443, name: https, protocol: HTTPS }}
      hosts: [a.example.com]
      tls: {{ mode: MUTUAL, credentialName: {credential} }}
    - port: {{ number: 443, name: https-b, protocol: HTTPS }}
      hosts: [b.example.com, a.example.com]
      tls: {{ mode: SIMPLE, serverCertificate: /etc/certs/b.pem, privateKey: /etc/certs/b.key }}
"#
        )
    }

    #[test]
    fn certificates_come_from_secrets_of_the_gateways_own_namespace_only() {
        let m = with_secret(
            model(&https("a-cert")),
            "istio-system",
            "a-cert",
            &[("cert", "CHAIN"), ("key", "KEY")],
        );
        let m = with_secret(m, "istio-system", "a-cert-cacert", &[("ca.crt", "CA")]);
        let m = with_secret(
            m,
            "elsewhere",
            "a-cert",
            &[("tls.crt", "OTHER"), ("tls.key", "OTHER-KEY"), ("ca.crt", "OTHER-CA")],
        );
        let config = gateway_config(&m, "istio-system", &[("istio", "ingressgateway")]);
        let servers = &config.gateway_listeners[0].servers;
        let tls = servers[0].tls.as_ref().unwrap();
        assert_eq!(
            (tls.certificate_chain.as_str(), tls.private_key.as_str(), tls.ca_certificates.as_str()),
            ("CHAIN", "KEY", "CA"),
            "generic keys, and the CA from the -cacert companion"
        );
        // The overlapping a.example.com is dropped from the second server; b.example.com stays.
        assert_eq!(servers[1].hosts, ["b.example.com"]);
        assert_eq!(servers[1].tls.as_ref().unwrap().certificate_file, "/etc/certs/b.pem");

        // A gateway of another namespace selected by the same Gateway gets that namespace's
        // Secret; a sidecar gets nothing.
        let elsewhere = gateway_config(&m, "elsewhere", &[("istio", "ingressgateway")]);
        let tls = elsewhere.gateway_listeners[0].servers[0].tls.as_ref().unwrap();
        assert_eq!(
            (tls.certificate_chain.as_str(), tls.private_key.as_str(), tls.ca_certificates.as_str()),
            ("OTHER", "OTHER-KEY", "OTHER-CA")
        );
        let sidecar = translate(
            &m,
            &scope_of(&m, &ProxyIdentity { namespace: "istio-system".into(), ..Default::default() }),
        );
        assert!(sidecar.gateway_listeners.is_empty());
        assert!(!format!("{sidecar:?}").contains("KEY"));
    }

    #[test]
    fn an_unauthenticated_gateway_gets_no_secret() {
        let m = with_secret(
            model(&https("a-cert")),
            "istio-system",
            "a-cert",
            &[("cert", "CHAIN"), ("key", "KEY")],
        );
        let m = with_secret(m, "istio-system", "a-cert-cacert", &[("ca.crt", "CA")]);
        let proxy = ProxyIdentity {
            namespace: "istio-system".into(),
            labels: labels_of(&[("istio", "ingressgateway")]),
            ..Default::default()
        };
        let config = translate(&m, &scope_of_router(&m, &proxy, &Default::default(), false));
        let names: Vec<_> = config.gateway_listeners[0].servers.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["istio-system/public/1"], "the server with files stays");
        assert!(!format!("{config:?}").contains("KEY"));
    }

    #[test]
    fn a_missing_secret_leaves_its_server_out_and_the_others_in() {
        let m = model(&https("no-such-secret"));
        let config = gateway_config(&m, "istio-system", &[("istio", "ingressgateway")]);
        let names: Vec<_> = config.gateway_listeners[0].servers.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["istio-system/public/1"]);
        assert_eq!(config.gateway_listeners[0].servers[0].hosts, ["b.example.com", "a.example.com"]);
    }

    /// Istio's "egress gateway with TLS origination" task, as its documentation writes it but
    /// for the ServiceEntry's endpoint: Trellis resolves no DNS names for ServiceEntries (an
    /// entry without IP endpoints is left to the outbound policy), so the external host's
    /// address is given.
    const EGRESS: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: cnn, namespace: shop }
spec:
  hosts: [edition.cnn.com]
  ports:
    - { number: 80, name: http-port, protocol: HTTP }
    - { number: 443, name: https, protocol: HTTPS }
  resolution: DNS
  endpoints: [{ address: 203.0.113.10 }]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: { name: istio-egressgateway, namespace: shop }
spec:
  selector: { istio: egressgateway }
  servers:
    - port: { number: 80, name: https-port-for-tls-origination, protocol: HTTPS }
      hosts: [edition.cnn.com]
      tls: { mode: ISTIO_MUTUAL }
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: egressgateway-for-cnn, namespace: shop }
spec:
  host: istio-egressgateway.istio-system.svc.cluster.local
  subsets:
    - name: cnn
      trafficPolicy:
        loadBalancer: { simple: ROUND_ROBIN }
        portLevelSettings: [{ port: { number: 80 }, tls: { mode: ISTIO_MUTUAL, sni: edition.cnn.com } }]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: direct-cnn-through-egress-gateway, namespace: shop }
spec:
  hosts: [edition.cnn.com]
  gateways: [istio-egressgateway, mesh]
  http:
    - match: [{ gateways: [mesh], port: 80 }]
      route: [{ destination: { host: istio-egressgateway.istio-system.svc.cluster.local, subset: cnn, port: { number: 80 } }, weight: 100 }]
    - match: [{ gateways: [istio-egressgateway], port: 80 }]
      route: [{ destination: { host: edition.cnn.com, port: { number: 443 } }, weight: 100 }]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: originate-tls-for-edition-cnn-com, namespace: shop }
spec:
  host: edition.cnn.com
  trafficPolicy:
    loadBalancer: { simple: ROUND_ROBIN }
    portLevelSettings: [{ port: { number: 443 }, tls: { mode: SIMPLE } }]
"#;

    #[test]
    fn the_egress_gateway_pattern_mesh_tls_in_and_tls_origination_out() {
        let mut m = model(EGRESS);
        add_kube_service(
            &mut m,
            "istio-system",
            "istio-egressgateway",
            "10.96.0.80",
            &[("http2", 80, Some(8080)), ("https", 443, Some(8443))],
        );
        // The egress gateway: port 80 terminates the mesh's mutual TLS (no certificate
        // fields) and routes edition.cnn.com to its port 443, which originates TLS.
        let gateway = gateway_config(&m, "istio-system", &[("istio", "egressgateway")]);
        let listener = &gateway.gateway_listeners[0];
        assert_eq!((listener.port, listener.protocol()), (80, pb::GatewayProtocol::GatewayHttps));
        let server = &listener.servers[0];
        assert_eq!(
            server.tls,
            Some(pb::GatewayTls {
                mode: pb::GatewayTlsMode::GatewayTlsIstioMutual.into(),
                ..Default::default()
            })
        );
        let out = routes(&gateway, &server.routes[0].virtual_host);
        let [(cluster_name, _)] = forwards(&out[0])[..] else { panic!("{out:?}") };
        let out_cluster = cluster(&gateway, cluster_name);
        let tls = out_cluster.tls.as_ref().expect("TLS origination to the external host");
        assert_eq!(tls.mode(), pb::client_tls::Mode::Simple, "{out_cluster:?}");
        assert_eq!(out.len(), 1, "the mesh route is not the gateway's");

        // A sidecar: edition.cnn.com:80 goes to the egress gateway's subset, over the mesh's
        // mutual TLS with the SNI the gateway picks its server by.
        let sidecar = config(&m, "shop");
        let mesh_routes = routes(&sidecar, "edition.cnn.com:80");
        let [(to_gateway, _)] = forwards(&mesh_routes[0])[..] else { panic!("{mesh_routes:?}") };
        let to_gateway = cluster(&sidecar, to_gateway);
        assert_eq!(to_gateway.service, "istio-egressgateway.istio-system.svc.cluster.local:80");
        let tls = to_gateway.tls.as_ref().expect("mesh TLS to the gateway");
        assert_eq!((tls.mode(), tls.sni.as_str()), (pb::client_tls::Mode::IstioMutual, "edition.cnn.com"));
    }

    #[test]
    fn https_redirect_passthrough_and_tcp_servers() {
        let yaml = format!(
            r#"{MESH}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{ name: gw, namespace: istio-system }}
spec:
  selector: {{}}
  servers:
    - {{ port: {{ number: 80, name: http, protocol: HTTP }}, hosts: [a.example.com], tls: {{ httpsRedirect: true }} }}
    - {{ port: {{ number: 443, name: tls, protocol: TLS }}, hosts: [pass.example.com], tls: {{ mode: PASSTHROUGH }} }}
    - {{ port: {{ number: 5432, name: tcp, protocol: TCP }}, hosts: ["*"], bind: 127.0.0.9 }}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: l4, namespace: shop }}
spec:
  hosts: [pass.example.com]
  gateways: [istio-system/gw]
  tls: [{{ match: [{{ sniHosts: [pass.example.com] }}], route: [{{ destination: {{ host: web.shop.internal, port: {{ number: 80 }} }} }}] }}]
  tcp: [{{ route: [{{ destination: {{ host: missing.example.com, port: {{ number: 5432 }} }} }}] }}]
"#
        );
        let config = gateway_config(&model(&yaml), "istio-system", &[("any", "labels")]);
        let listeners: Vec<_> =
            config.gateway_listeners.iter().map(|l| (l.bind.as_str(), l.port, l.protocol())).collect();
        assert_eq!(
            listeners,
            [
                ("", 80, pb::GatewayProtocol::GatewayHttp),
                ("", 443, pb::GatewayProtocol::GatewayTls),
                ("127.0.0.9", 5432, pb::GatewayProtocol::GatewayTcp)
            ]
        );
        let redirect =
            &config.virtual_hosts.iter().find(|v| v.name == virtual_host_name(80, "a.example.com")).unwrap();
        assert!(
            matches!(&redirect.routes[0].action, Some(pb::route::Action::Redirect(r)) if r.scheme == "https" && r.response_code == 301)
        );
        let sni = &config.gateway_listeners[1].servers[0].sni_routes[0];
        assert_eq!(sni.sni_hosts, ["pass.example.com"]);
        assert_eq!(sni.clusters[0].cluster, "outbound|80||web.shop.internal");
        // An unknown destination: the black hole, which the config then holds.
        let tcp = &config.gateway_listeners[2].servers[0].tcp_clusters;
        assert_eq!(tcp[0].cluster, super::super::names::BLACK_HOLE_CLUSTER);
        assert!(config.clusters.iter().any(|c| c.name == super::super::names::BLACK_HOLE_CLUSTER));
    }
}
