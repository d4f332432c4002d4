//! The gateway role (`trellis-proxy --role gateway`): no capture listeners; instead the ports
//! the Istio Gateways that select this proxy declare. `compile` turns the control plane's
//! `GatewayListener`s into lookup tables (kept in the config snapshot, so a new certificate or
//! route takes effect for the next connection while established ones keep theirs); `listener`
//! binds the ports and serves each connection: plaintext HTTP, TLS terminated with the
//! server a client's SNI picks (then HTTP or TCP) — its own certificate, or for ISTIO_MUTUAL
//! (an egress gateway) the mesh's mutual TLS with the proxy's workload certificate — TLS passed
//! through by SNI, or TCP. Requests
//! are then routed by the same code as a sidecar's outbound requests (`forward`), with the
//! gateway's own virtual hosts looked up by Host.

pub mod listener;
pub mod tls;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use trellis_xds::config as pb;
use trellis_xds::types::ResourceType;

use crate::cluster::Cluster;
use crate::config::{ConfigError, ServicePort, split_authority};
use crate::route::VirtualHost;

/// The gateway's listeners, compiled.
#[derive(Default)]
pub struct Gateway {
    pub listeners: Vec<Listener>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.listeners.iter().map(|l| (l.bind, l.port))).finish()
    }
}

pub struct Listener {
    /// `None`: every address (or the proxy's `--listen-address`).
    pub bind: Option<IpAddr>,
    pub port: u16,
    pub protocol: pb::GatewayProtocol,
    pub servers: Vec<Server>,
}

pub struct Server {
    pub name: String,
    pub hosts: Vec<String>,
    /// As sent, to reuse `terminate` while it does not change.
    source_tls: Option<pb::GatewayTls>,
    /// The TLS configuration of a server that terminates TLS; `None` for plaintext and
    /// passthrough servers, and for a server whose certificate could not be loaded (its
    /// connections are closed; the other servers go on).
    pub terminate: Option<Arc<rustls::ServerConfig>>,
    pub passthrough: bool,
    /// ISTIO_MUTUAL: terminated with the proxy's own workload certificate, the client's mesh
    /// certificate required (the handshake of a sidecar's inbound port).
    pub mesh: bool,
    /// Host pattern → its service port (a virtual host, maybe still to be fetched).
    pub routes: Vec<(String, Arc<ServicePort>)>,
    /// PASSTHROUGH: server-name patterns → weighted clusters.
    pub sni_routes: Vec<(Vec<String>, Weighted)>,
    pub tcp_clusters: Weighted,
}

/// Clusters by name, with their relative weights.
pub type Weighted = Vec<(String, u32)>;

/// Whether `pattern` (`example.com`, `*.example.com`, `*`) covers `host`.
fn host_matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => {
            host.len() > suffix.len()
                && host.is_char_boundary(host.len() - suffix.len())
                && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        }
        None => pattern.eq_ignore_ascii_case(host),
    }
}

/// Exact names first, then longer (narrower) wildcards.
fn specificity(pattern: &str) -> (bool, std::cmp::Reverse<usize>) {
    (pattern.starts_with('*'), std::cmp::Reverse(pattern.len()))
}

impl Gateway {
    pub fn listener(&self, port: u16) -> Option<&Listener> {
        self.listeners.iter().find(|l| l.port == port)
    }

    /// What the servers name that the proxy does not hold yet (over xDS): virtual hosts and
    /// clusters, to be fetched.
    pub fn missing(&self, clusters: &BTreeMap<String, Arc<Cluster>>) -> Vec<(ResourceType, String)> {
        let servers = self.listeners.iter().flat_map(|l| &l.servers);
        let hosts =
            servers.clone().flat_map(|s| &s.routes).filter_map(|(_, sp)| sp.missing_virtual_host.clone());
        let named =
            servers.flat_map(|s| s.tcp_clusters.iter().chain(s.sni_routes.iter().flat_map(|(_, c)| c)));
        let mut missing: Vec<_> = hosts
            .map(|name| (ResourceType::VirtualHost, name))
            .chain(
                named
                    .filter(|(name, _)| !clusters.contains_key(name))
                    .map(|(n, _)| (ResourceType::Cluster, n.clone())),
            )
            .collect();
        missing.sort();
        missing.dedup();
        missing
    }

    /// Whether the proxy now holds `name` of `kind`.
    pub fn holds(&self, kind: ResourceType, name: &str, clusters: &BTreeMap<String, Arc<Cluster>>) -> bool {
        match kind {
            ResourceType::Cluster => clusters.contains_key(name),
            _ => !self.missing(clusters).iter().any(|(k, n)| *k == kind && n == name),
        }
    }

    /// The addresses to listen on, `default_ips` for listeners without a `bind`.
    pub fn addresses(&self, default_ips: &[IpAddr]) -> Vec<SocketAddr> {
        let ips = |l: &Listener| l.bind.map_or_else(|| default_ips.to_vec(), |ip| vec![ip]);
        self.listeners.iter().flat_map(|l| ips(l).into_iter().map(|ip| SocketAddr::new(ip, l.port))).collect()
    }
}

impl Listener {
    /// The server a TLS client's server name picks: the most specific host that covers it.
    /// Without a server name, a server for `*`, or the port's only server.
    pub fn server_for(&self, sni: Option<&str>) -> Option<&Server> {
        match sni {
            Some(name) => self
                .servers
                .iter()
                .flat_map(|s| {
                    s.hosts.iter().filter(|h| host_matches(h, name)).map(move |h| (specificity(h), s))
                })
                .min_by_key(|(key, _)| *key)
                .map(|(_, s)| s),
            None => self.servers.iter().find(|s| s.hosts.iter().any(|h| h == "*")).or(
                match self.servers.as_slice() {
                    [only] => Some(only),
                    _ => None,
                },
            ),
        }
    }

    /// The service port an HTTP request's authority routes to (its port is ignored, as Istio's
    /// gateways match `host` and `host:*`): among the routes of `server` when TLS picked one,
    /// else of every server of the port (plaintext HTTP servers share one route table).
    pub fn http_route(&self, authority: Option<&str>, server: Option<&str>) -> Option<Arc<ServicePort>> {
        let host = authority.and_then(|a| split_authority(a, self.port)).map(|(h, _)| h).unwrap_or("");
        self.servers
            .iter()
            .filter(|s| server.is_none_or(|name| *s.name == *name))
            .flat_map(|s| &s.routes)
            .filter(|(pattern, _)| host_matches(pattern, host))
            .min_by_key(|(pattern, _)| specificity(pattern))
            .map(|(_, sp)| sp.clone())
    }
}

impl Server {
    /// PASSTHROUGH: the clusters for a server name (a route without names takes any).
    pub fn sni_clusters(&self, sni: Option<&str>) -> Option<&[(String, u32)]> {
        self.sni_routes
            .iter()
            .find(|(names, _)| {
                names.is_empty() || sni.is_some_and(|n| names.iter().any(|p| host_matches(p, n)))
            })
            .map(|(_, clusters)| clusters.as_slice())
    }
}

/// What a configuration defines that gateway servers refer to: virtual hosts and clusters.
pub type Defined<'a> = (&'a HashMap<String, Arc<VirtualHost>>, &'a BTreeMap<String, Arc<Cluster>>);

/// Compiles the listeners. A server whose TLS cannot be set up is kept without it (its
/// connections are refused, logged once per change); the others are unaffected. `complete`:
/// the configuration holds everything (a file), so every virtual host and cluster named must
/// be in it; otherwise (xDS) they are fetched on first use.
pub fn compile(
    listeners: &[pb::GatewayListener],
    (virtual_hosts, clusters): Defined<'_>,
    previous: Option<&Gateway>,
    complete: bool,
) -> Result<Option<Arc<Gateway>>, ConfigError> {
    if listeners.is_empty() {
        return Ok(None);
    }
    // A certificate that did not change is not parsed again on every push.
    let reusable: Vec<(&str, &pb::GatewayTls, &Arc<rustls::ServerConfig>)> = previous
        .into_iter()
        .flat_map(|g| &g.listeners)
        .flat_map(|l| &l.servers)
        .filter_map(|s| Some((s.name.as_str(), s.source_tls.as_ref()?, s.terminate.as_ref()?)))
        .collect();
    let mut out = Vec::new();
    for (i, l) in listeners.iter().enumerate() {
        let field = format!("gateway_listeners[{i}]");
        let port = u16::try_from(l.port).ok().filter(|p| *p != 0).ok_or_else(|| ConfigError {
            field: format!("{field}.port"),
            message: format!("{} is not a port", l.port),
        })?;
        let bind = match l.bind.as_str() {
            "" => None,
            text => Some(text.parse::<IpAddr>().map_err(|_| ConfigError {
                field: format!("{field}.bind"),
                message: format!("{text:?} is not an IP address"),
            })?),
        };
        let protocol = pb::GatewayProtocol::try_from(l.protocol).map_err(|_| ConfigError {
            field: format!("{field}.protocol"),
            message: format!("{} is not a protocol this proxy knows", l.protocol),
        })?;
        let mut servers = Vec::new();
        for (j, s) in l.servers.iter().enumerate() {
            if complete {
                let at = format!("{field}.servers[{j}]");
                check_complete(s, virtual_hosts, clusters, &at)?;
            }
            let passthrough =
                s.tls.as_ref().is_some_and(|t| t.mode() == pb::GatewayTlsMode::GatewayTlsPassthrough);
            let mesh = s.tls.as_ref().is_some_and(|t| t.mode() == pb::GatewayTlsMode::GatewayTlsIstioMutual);
            let terminate = match &s.tls {
                Some(t) if !passthrough && !mesh => {
                    match reusable.iter().find(|(n, old, _)| *n == s.name && *old == t) {
                        Some((_, _, config)) => Some((*config).clone()),
                        None => match tls::server_config(t, protocol != pb::GatewayProtocol::GatewayTls) {
                            Ok(config) => Some(config),
                            Err(e) => {
                                tracing::error!(server = %s.name, port, "gateway server's TLS: {e}; its connections are refused");
                                None
                            }
                        },
                    }
                }
                _ => None,
            };
            let routes = s
                .routes
                .iter()
                .map(|r| {
                    let virtual_host = virtual_hosts.get(&r.virtual_host).cloned();
                    let missing_virtual_host = virtual_host.is_none().then(|| r.virtual_host.clone());
                    let sp = ServicePort {
                        service: r.host.as_str().into(),
                        port,
                        protocol: pb::Protocol::Http,
                        virtual_host,
                        tcp_cluster: None,
                        tcp_split: Vec::new(),
                        missing_virtual_host,
                        missing_tcp_clusters: Vec::new(),
                    };
                    (r.host.to_ascii_lowercase(), Arc::new(sp))
                })
                .collect();
            let weighted =
                |list: &[pb::WeightedCluster]| list.iter().map(|c| (c.cluster.clone(), c.weight)).collect();
            servers.push(Server {
                name: s.name.clone(),
                hosts: s.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
                source_tls: s.tls.clone(),
                terminate,
                passthrough,
                mesh,
                routes,
                sni_routes: s
                    .sni_routes
                    .iter()
                    .map(|r| (r.sni_hosts.clone(), weighted(&r.clusters)))
                    .collect(),
                tcp_clusters: weighted(&s.tcp_clusters),
            });
        }
        out.push(Listener { bind, port, protocol, servers });
    }
    Ok(Some(Arc::new(Gateway { listeners: out })))
}

/// In a whole configuration, every name a server uses must be defined.
fn check_complete(
    s: &pb::GatewayServer,
    virtual_hosts: &HashMap<String, Arc<VirtualHost>>,
    clusters: &BTreeMap<String, Arc<Cluster>>,
    at: &str,
) -> Result<(), ConfigError> {
    for (k, r) in s.routes.iter().enumerate() {
        if !virtual_hosts.contains_key(&r.virtual_host) {
            let message = format!("no virtual host {:?}", r.virtual_host);
            return Err(ConfigError { field: format!("{at}.routes[{k}].virtual_host"), message });
        }
    }
    let sni = s.sni_routes.iter().enumerate().flat_map(|(k, r)| {
        r.clusters.iter().enumerate().map(move |(c, w)| (format!("{at}.sni_routes[{k}].clusters[{c}]"), w))
    });
    let tcp = s.tcp_clusters.iter().enumerate().map(|(c, w)| (format!("{at}.tcp_clusters[{c}]"), w));
    for (field, weighted) in sni.chain(tcp) {
        if !clusters.contains_key(&weighted.cluster) {
            return Err(ConfigError { field, message: format!("no cluster {:?}", weighted.cluster) });
        }
    }
    Ok(())
}

/// The configuration as kept for display (`/config_dump`): private keys are never shown.
pub fn redact(config: &mut pb::ProxyConfig) {
    for tls in config.gateway_listeners.iter_mut().flat_map(|l| &mut l.servers).filter_map(|s| s.tls.as_mut())
    {
        if !tls.private_key.is_empty() {
            tls.private_key = "[redacted]".into();
        }
    }
}

/// A weighted pick among clusters the snapshot holds (`None` when none is held yet).
pub fn pick(clusters: &[(String, u32)], held: &BTreeMap<String, Arc<Cluster>>) -> Option<Arc<Cluster>> {
    let present: Vec<(Arc<Cluster>, u32)> =
        clusters.iter().filter_map(|(name, w)| held.get(name).map(|c| (c.clone(), (*w).max(1)))).collect();
    let total: u32 = present.iter().map(|(_, w)| *w).sum();
    if total == 0 {
        return None;
    }
    let mut roll = crate::with_fast_rng(|rng| rand::RngExt::random_range(rng, 0..total));
    for (cluster, weight) in present {
        if roll < weight {
            return Some(cluster);
        }
        roll -= weight;
    }
    None
}

/// The addresses listeners without a `bind` use when the proxy has no `--listen-address`:
/// IPv4's, and IPv6's too on a dual-stack pod.
pub fn any_addresses(ipv6: bool) -> Vec<IpAddr> {
    let mut ips = vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)];
    if ipv6 {
        ips.push(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED));
    }
    ips
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(name: &str, hosts: &[&str], routes: &[&str]) -> Server {
        Server {
            name: name.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            source_tls: None,
            terminate: None,
            passthrough: false,
            mesh: false,
            routes: routes
                .iter()
                .map(|h| {
                    let sp = ServicePort {
                        service: (*h).into(),
                        port: 443,
                        protocol: pb::Protocol::Http,
                        virtual_host: None,
                        tcp_cluster: None,
                        tcp_split: Vec::new(),
                        missing_virtual_host: None,
                        missing_tcp_clusters: Vec::new(),
                    };
                    (h.to_string(), Arc::new(sp))
                })
                .collect(),
            sni_routes: Vec::new(),
            tcp_clusters: Vec::new(),
        }
    }

    #[test]
    fn the_most_specific_server_and_route_win() {
        let listener = Listener {
            bind: None,
            port: 443,
            protocol: pb::GatewayProtocol::GatewayHttps,
            servers: vec![
                server("wild", &["*.example.com"], &["*.example.com"]),
                server("exact", &["a.example.com"], &["a.example.com"]),
                server("any", &["*"], &["*"]),
            ],
        };
        let name = |sni| listener.server_for(sni).map(|s| s.name.as_str());
        assert_eq!(name(Some("a.example.com")), Some("exact"));
        assert_eq!(name(Some("B.example.com")), Some("wild"));
        assert_eq!(name(Some("example.org")), Some("any"));
        assert_eq!(name(None), Some("any"));
        let route = |a| listener.http_route(a, None).map(|sp| sp.service.to_string());
        assert_eq!(route(Some("a.example.com:8443")).as_deref(), Some("a.example.com"));
        assert_eq!(route(Some("b.example.com")).as_deref(), Some("*.example.com"));
        assert_eq!(route(Some("other")).as_deref(), Some("*"));
        assert_eq!(route(Some("[::1")).as_deref(), Some("*"), "a broken authority is no host");
        let within = |a, server| listener.http_route(Some(a), Some(server)).map(|sp| sp.service.to_string());
        assert_eq!(within("a.example.com", "wild").as_deref(), Some("*.example.com"));
        assert_eq!(within("a.example.com", "any").as_deref(), Some("*"), "only the server's own routes");
        assert!(!host_matches("*.example.com", "example.com"));
    }

    #[test]
    fn what_the_servers_name_and_the_proxy_lacks_is_listed_for_fetching() {
        let mut one = server("one", &["*"], &["a.example.com"]);
        let lacking = ServicePort {
            service: "a.example.com".into(),
            port: 80,
            protocol: pb::Protocol::Http,
            virtual_host: None,
            tcp_cluster: None,
            tcp_split: Vec::new(),
            missing_virtual_host: Some("vh".into()),
            missing_tcp_clusters: Vec::new(),
        };
        one.routes[0].1 = Arc::new(lacking);
        one.tcp_clusters = vec![("c".into(), 1)];
        let gateway = Gateway {
            listeners: vec![Listener {
                bind: None,
                port: 80,
                protocol: pb::GatewayProtocol::GatewayHttp,
                servers: vec![one],
            }],
        };
        let none = BTreeMap::new();
        let missing = gateway.missing(&none);
        assert_eq!(missing, [(ResourceType::Cluster, "c".into()), (ResourceType::VirtualHost, "vh".into())]);
        assert!(!gateway.holds(ResourceType::VirtualHost, "vh", &none));
        assert!(gateway.holds(ResourceType::VirtualHost, "other", &none));
    }

    #[test]
    fn a_server_without_a_usable_certificate_is_kept_without_tls_and_bad_fields_are_named() {
        let listener = pb::GatewayListener {
            port: 8443,
            protocol: pb::GatewayProtocol::GatewayHttps.into(),
            servers: vec![pb::GatewayServer {
                name: "ns/gw/0".into(),
                hosts: vec!["a.example.com".into()],
                tls: Some(pb::GatewayTls { certificate_chain: "not pem".into(), ..Default::default() }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let none = (&HashMap::new(), &BTreeMap::new());
        let compiled = compile(std::slice::from_ref(&listener), none, None, true).unwrap().unwrap();
        assert!(compiled.listeners[0].servers[0].terminate.is_none());
        let bad = pb::GatewayListener { port: 70000, ..listener.clone() };
        assert_eq!(compile(&[bad], none, None, true).unwrap_err().field, "gateway_listeners[0].port");
        let bad = pb::GatewayListener { bind: "nowhere".into(), ..listener.clone() };
        assert_eq!(compile(&[bad], none, None, true).unwrap_err().field, "gateway_listeners[0].bind");
        // Names that must be defined in a whole configuration, and may be fetched over xDS.
        let mut named = listener;
        named.servers[0].routes =
            vec![pb::GatewayRoute { host: "a.example.com".into(), virtual_host: "vh".into() }];
        named.servers[0].tcp_clusters = vec![pb::WeightedCluster { cluster: "c".into(), weight: 0 }];
        let err = compile(std::slice::from_ref(&named), none, None, true).unwrap_err();
        assert_eq!(err.field, "gateway_listeners[0].servers[0].routes[0].virtual_host");
        named.servers[0].routes.clear();
        let err = compile(std::slice::from_ref(&named), none, None, true).unwrap_err();
        assert_eq!(
            (err.field.as_str(), err.message.as_str()),
            ("gateway_listeners[0].servers[0].tcp_clusters[0]", "no cluster \"c\"")
        );
        assert!(compile(&[named], none, None, false).is_ok());
    }
}
