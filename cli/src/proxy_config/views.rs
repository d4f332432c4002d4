//! What one proxy holds, as rows: pure functions from the admin answers to what the tables and
//! `-o json|yaml` show. Trellis's configuration is not Envoy's, so each view maps its concepts
//! onto istioctl's columns:
//!
//! - listeners: one row per service port the outbound side captures (its addresses, or its
//!   name when it has none: such a service is matched by the request's authority), what picks
//!   the protocol, and where the traffic goes (a virtual host's routes, or TCP clusters); then
//!   the catch-all for unknown destinations and the inbound side with its mutual TLS mode.
//! - routes: one row per route of each virtual host, with the service names (domains) that
//!   reach it and the VirtualService it came from when its name tells (`ns/name.http[i]`).
//! - clusters: one row per cluster, with the service, port and subset of its Istio-style name
//!   (`outbound|port|subset|host`), its balancing, TLS and outlier detection.
//! - endpoints: the endpoints each cluster balances over, from `/clusters`, with their outlier
//!   state (ejected endpoints are UNHEALTHY, as Envoy reports a failed outlier check).
//! - secret: the workload certificate and the root it chains to, with validity.

use std::collections::BTreeMap;

use serde::Serialize;
use trellis_xds::config as pb;

use super::answers::{Certs, ClusterStatuses, ConfigDump};
use super::pem;

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ListenerRow {
    pub address: String,
    pub port: String,
    #[serde(rename = "match")]
    pub matches: String,
    pub destination: String,
    /// The service this port belongs to ("-" for the catch-all and inbound rows).
    pub service: String,
}

#[derive(Debug, Serialize)]
pub struct RouteRow {
    /// The port of the virtual host (istioctl's route configuration name).
    pub name: String,
    pub virtual_host: String,
    pub domains: Vec<String>,
    #[serde(rename = "match")]
    pub matches: String,
    pub route: String,
    pub virtual_service: String,
    pub destination: String,
    /// The route as the proxy holds it.
    pub config: pb::Route,
}

#[derive(Debug, Serialize)]
pub struct ClusterRow {
    pub name: String,
    pub service: String,
    pub port: String,
    pub subset: String,
    pub direction: String,
    pub load_balancer: String,
    pub tls: String,
    pub outlier_detection: bool,
    pub endpoints: usize,
    /// The cluster as the proxy holds it.
    pub config: pb::Cluster,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct EndpointRow {
    pub endpoint: String,
    /// HEALTHY, or UNHEALTHY while outlier detection has it ejected.
    pub status: String,
    /// OK, FAILED (ejected), or "-" when the cluster has no outlier detection.
    pub outlier_check: String,
    pub cluster: String,
    pub weight: u32,
    pub mesh_tls: bool,
    /// Times outlier detection ejected it (absent without outlier detection).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ejections: Option<u64>,
    pub active_requests: u64,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct SecretRow {
    /// `default` (the workload certificate) or `ROOTCA`, as Istio names them.
    pub resource_name: String,
    /// `Cert Chain` or `CA`.
    #[serde(rename = "type")]
    pub kind: String,
    /// ACTIVE, EXPIRED or NOT YET VALID.
    pub status: String,
    pub valid: bool,
    pub serial_number: String,
    /// Seconds since the Unix epoch.
    pub not_after: u64,
    pub not_before: u64,
    pub seconds_remaining: u64,
    /// The SPIFFE ID (workload certificate) or the subject (root).
    pub identity: String,
    pub trust_domain: String,
}

/// Everything `secret` shows: the rows and, without a certificate, why.
#[derive(Debug, Serialize)]
pub struct Secrets {
    pub secrets: Vec<SecretRow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// `a 90%, b 10%` for weighted clusters (weights are relative); one cluster alone by name.
fn weighted(clusters: &[pb::WeightedCluster]) -> String {
    if let [one] = clusters {
        return one.cluster.clone();
    }
    let total: u64 = clusters.iter().map(|c| u64::from(c.weight.max(1))).sum();
    clusters
        .iter()
        .map(|c| {
            let share = u64::from(c.weight.max(1)) * 100 / total.max(1);
            format!("{} {share}%", c.cluster)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn listeners(dump: &ConfigDump) -> Vec<ListenerRow> {
    let config = &dump.config;
    let mut rows = Vec::new();
    for service in &config.services {
        let address =
            if service.addresses.is_empty() { service.name.clone() } else { service.addresses.join(",") };
        for port in &service.ports {
            let protocol = pb::Protocol::try_from(port.protocol).unwrap_or(pb::Protocol::Auto);
            let opaque = config.opaque_ports.contains(&port.port);
            let matches = match protocol {
                pb::Protocol::Auto if opaque => "TCP (opaque port)".to_owned(),
                pb::Protocol::Auto => "AUTO: HTTP or TCP, detected".to_owned(),
                other => other.as_str_name().to_owned(),
            };
            let tcp = if !port.tcp_clusters.is_empty() {
                Some(weighted(&port.tcp_clusters))
            } else if !port.tcp_cluster.is_empty() {
                Some(port.tcp_cluster.clone())
            } else {
                None
            };
            let http = (!port.virtual_host.is_empty()).then(|| format!("Route: {}", port.virtual_host));
            let destination = match (protocol, http, tcp) {
                (pb::Protocol::Tcp | pb::Protocol::Tls, _, Some(tcp)) => format!("Cluster: {tcp}"),
                (pb::Protocol::Auto, _, Some(tcp)) if opaque => format!("Cluster: {tcp}"),
                (_, Some(http), Some(tcp)) => format!("{http}; TCP: {tcp}"),
                (_, Some(http), None) => http,
                (_, None, Some(tcp)) => format!("Cluster: {tcp}"),
                (_, None, None) => "-".to_owned(),
            };
            rows.push(ListenerRow {
                address: address.clone(),
                port: port.port.to_string(),
                matches,
                destination,
                service: service.name.clone(),
            });
        }
    }
    rows.extend(gateway_listeners(&config.gateway_listeners));
    // A gateway captures nothing: no catch-all, no inbound side.
    if !config.gateway_listeners.is_empty() {
        return rows;
    }
    let unknown = match config.outbound_policy() {
        pb::OutboundPolicy::AllowAny => "PassthroughCluster (outboundTrafficPolicy ALLOW_ANY)",
        pb::OutboundPolicy::RegistryOnly => "BlackHoleCluster (outboundTrafficPolicy REGISTRY_ONLY)",
    };
    rows.push(ListenerRow {
        address: "0.0.0.0".into(),
        port: "*".into(),
        matches: "outbound: any other destination".into(),
        destination: unknown.into(),
        service: "-".into(),
    });
    let tls = config.inbound_tls.clone().unwrap_or_default();
    for (port, mode) in &tls.ports {
        let mode = pb::MtlsMode::try_from(*mode).map_or("UNKNOWN", |m| m.as_str_name());
        rows.push(ListenerRow {
            address: "0.0.0.0".into(),
            port: port.to_string(),
            matches: format!("inbound: mTLS {mode}"),
            destination: "Inbound: the app on this port".into(),
            service: "-".into(),
        });
    }
    rows.push(ListenerRow {
        address: "0.0.0.0".into(),
        port: "*".into(),
        matches: format!("inbound: mTLS {}", tls.mode().as_str_name()),
        destination: "Inbound: the app on the original port".into(),
        service: "-".into(),
    });
    rows
}

/// A gateway's ports (`--role gateway`): one row per Gateway server, in the order they match.
fn gateway_listeners(listeners: &[pb::GatewayListener]) -> Vec<ListenerRow> {
    let mut rows = Vec::new();
    for listener in listeners {
        let protocol = pb::GatewayProtocol::try_from(listener.protocol)
            .map_or("UNKNOWN", |p| p.as_str_name().trim_start_matches("GATEWAY_"));
        for server in &listener.servers {
            let tls = server.tls.as_ref().map_or(String::new(), |tls| {
                format!(" (TLS {})", tls.mode().as_str_name().trim_start_matches("GATEWAY_TLS_"))
            });
            let mut destinations = Vec::new();
            let mut hosts_seen = Vec::new();
            for route in &server.routes {
                if !hosts_seen.contains(&route.virtual_host) {
                    hosts_seen.push(route.virtual_host.clone());
                }
            }
            if !hosts_seen.is_empty() {
                destinations.push(format!("Route: {}", hosts_seen.join(", ")));
            }
            for sni in &server.sni_routes {
                destinations.push(format!("SNI {}: {}", sni.sni_hosts.join(","), weighted(&sni.clusters)));
            }
            if !server.tcp_clusters.is_empty() {
                destinations.push(format!("Cluster: {}", weighted(&server.tcp_clusters)));
            }
            rows.push(ListenerRow {
                address: if listener.bind.is_empty() { "0.0.0.0".to_owned() } else { listener.bind.clone() },
                port: listener.port.to_string(),
                matches: format!("gateway {protocol}{tls}: {}", server.hosts.join(",")),
                destination: if destinations.is_empty() { "-".to_owned() } else { destinations.join("; ") },
                service: server.name.clone(),
            });
        }
    }
    rows
}

/// The names that reach each virtual host: service names and aliases with the port, and the
/// hosts a gateway server routes to it.
fn domains_by_virtual_host(config: &pb::ProxyConfig) -> BTreeMap<&str, Vec<String>> {
    let mut domains: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for service in &config.services {
        for port in &service.ports {
            if port.virtual_host.is_empty() {
                continue;
            }
            let names = domains.entry(port.virtual_host.as_str()).or_default();
            for name in std::iter::once(&service.name).chain(&service.aliases) {
                let name = format!("{name}:{}", port.port);
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
    }
    let gateway_routes = config.gateway_listeners.iter().flat_map(|l| &l.servers).flat_map(|s| &s.routes);
    for route in gateway_routes {
        let names = domains.entry(route.virtual_host.as_str()).or_default();
        if !names.contains(&route.host) {
            names.push(route.host.clone());
        }
    }
    domains
}

fn string_match(m: &pb::StringMatch) -> String {
    match &m.kind {
        Some(pb::string_match::Kind::Exact(v)) => v.clone(),
        Some(pb::string_match::Kind::Prefix(v)) => format!("{v}*"),
        Some(pb::string_match::Kind::Regex(v)) => format!("~{v}"),
        None => "*".into(),
    }
}

/// One match, as istioctl writes them: the path, then the other conditions.
fn route_match(m: &pb::RouteMatch) -> String {
    let mut parts = vec![m.path.as_ref().map_or_else(|| "/*".to_owned(), string_match)];
    if let Some(method) = &m.method {
        parts.push(format!("method={}", string_match(method)));
    }
    for header in &m.headers {
        let value = header.value.as_ref().map_or_else(|| "(present)".to_owned(), string_match);
        parts.push(format!("header {}={value}", header.name));
    }
    for header in &m.without_headers {
        parts.push(format!("without header {}", header.name));
    }
    for query in &m.query_params {
        let value = query.value.as_ref().map_or_else(|| "(present)".to_owned(), string_match);
        parts.push(format!("query {}={value}", query.name));
    }
    if m.port != 0 {
        parts.push(format!("port={}", m.port));
    }
    parts.join(" ")
}

/// The VirtualService a route came from, when its name is the generated `ns/name.http[i]`
/// (`name.ns`, as istioctl writes it); `-` for the default route of a service.
fn virtual_service(route: &str) -> String {
    if route == "default" {
        return "-".into();
    }
    let generated = route.split_once('/').and_then(|(ns, rest)| {
        let (name, index) = rest.rsplit_once(".http[")?;
        index.strip_suffix(']')?.parse::<u32>().ok()?;
        Some(format!("{name}.{ns}"))
    });
    generated.unwrap_or_else(|| "(named route)".into())
}

fn action(route: &pb::Route) -> String {
    match &route.action {
        Some(pb::route::Action::Forward(forward)) => weighted(&forward.clusters),
        Some(pb::route::Action::Redirect(r)) => {
            let code = if r.response_code == 0 { 301 } else { r.response_code };
            format!("redirect {code} {}{}", r.authority, r.uri)
        }
        Some(pb::route::Action::DirectResponse(d)) => format!("direct response {}", d.status),
        None => "-".into(),
    }
}

pub fn routes(dump: &ConfigDump) -> Vec<RouteRow> {
    let domains = domains_by_virtual_host(&dump.config);
    let mut rows = Vec::new();
    for host in &dump.config.virtual_hosts {
        let port = match host.name.rsplit_once(':') {
            Some((_, port)) if port.parse::<u16>().is_ok() => port,
            _ => "-",
        };
        for route in &host.routes {
            let matches = if route.matches.is_empty() {
                "/*".to_owned()
            } else {
                route.matches.iter().map(route_match).collect::<Vec<_>>().join(" | ")
            };
            rows.push(RouteRow {
                name: port.to_owned(),
                virtual_host: host.name.clone(),
                domains: domains.get(host.name.as_str()).cloned().unwrap_or_default(),
                matches,
                route: route.name.clone(),
                virtual_service: virtual_service(&route.name),
                destination: action(route),
                config: route.clone(),
            });
        }
    }
    rows
}

/// `outbound|port|subset|host` split, when the name has that shape.
fn istio_cluster_name(name: &str) -> Option<(&str, &str, &str, &str)> {
    let mut parts = name.splitn(4, '|');
    let direction = parts.next()?;
    let port = parts.next()?;
    let subset = parts.next()?;
    let host = parts.next()?;
    Some((direction, port, subset, host))
}

pub fn clusters(dump: &ConfigDump) -> Vec<ClusterRow> {
    let sets: BTreeMap<&str, &[pb::Endpoint]> =
        dump.config.endpoints.iter().map(|e| (e.service.as_str(), e.endpoints.as_slice())).collect();
    dump.config
        .clusters
        .iter()
        .map(|cluster| {
            let parsed = istio_cluster_name(&cluster.name);
            // The service's name and port: from the Istio-style name when it has that shape,
            // else from the endpoint set's name (`host:port`).
            let (set_host, set_port) = match cluster.service.rsplit_once(':') {
                Some((host, port)) if port.parse::<u16>().is_ok() => (host, port),
                _ => (cluster.service.as_str(), ""),
            };
            let service = match parsed {
                Some((_, _, _, host)) => host,
                None if !set_host.is_empty() => set_host,
                None => "-",
            }
            .to_owned();
            let port = match parsed {
                Some((_, port, _, _)) if !port.is_empty() => port,
                _ if !set_port.is_empty() => set_port,
                _ => "-",
            }
            .to_owned();
            let subset = match parsed {
                Some((_, _, subset, _)) if !subset.is_empty() => subset.to_owned(),
                _ if !cluster.subset.is_empty() => {
                    cluster.subset.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
                }
                _ => "-".to_owned(),
            };
            let direction = parsed.map_or("-", |p| p.0).to_owned();
            let load_balancer =
                cluster.load_balancer.as_ref().map_or("ROUND_ROBIN", |lb| lb.policy().as_str_name());
            let tls = cluster.tls.as_ref().map_or("AUTO", |tls| tls.mode().as_str_name());
            // The endpoints of its set that carry the subset's labels, as the proxy picks them.
            let endpoints = sets.get(cluster.service.as_str()).map_or(0, |set| {
                set.iter().filter(|e| cluster.subset.iter().all(|(k, v)| e.labels.get(k) == Some(v))).count()
            });
            ClusterRow {
                name: cluster.name.clone(),
                service,
                port,
                subset,
                direction,
                load_balancer: load_balancer.to_owned(),
                tls: tls.to_owned(),
                outlier_detection: cluster.outlier_detection.is_some(),
                endpoints,
                config: cluster.clone(),
            }
        })
        .collect()
}

pub fn endpoints(statuses: &ClusterStatuses) -> Vec<EndpointRow> {
    let mut rows = Vec::new();
    for cluster in &statuses.cluster_statuses {
        for host in &cluster.host_statuses {
            let ejected = host.health_status.failed_outlier_check;
            let outlier_check = match (&cluster.outlier_detection, ejected) {
                (_, true) => "FAILED",
                (Some(_), false) => "OK",
                (None, false) => "-",
            };
            rows.push(EndpointRow {
                endpoint: host.address.clone(),
                status: if ejected { "UNHEALTHY" } else { "HEALTHY" }.to_owned(),
                outlier_check: outlier_check.to_owned(),
                cluster: cluster.name.clone(),
                weight: host.weight,
                mesh_tls: host.mesh_tls,
                ejections: host.outlier_ejections,
                active_requests: host.rq_active,
            });
        }
    }
    rows
}

fn validity(now: u64, not_before: u64, not_after: u64) -> (&'static str, bool) {
    if now < not_before {
        ("NOT YET VALID", false)
    } else if now >= not_after {
        ("EXPIRED", false)
    } else {
        ("ACTIVE", true)
    }
}

/// The workload certificate as `/certs` describes it, and the root at the end of its chain as
/// the PEM says (an unreadable root is reported in the row, not fatal).
pub fn secrets(certs: &Certs, now: u64) -> Secrets {
    let mut rows = Vec::new();
    for cert in &certs.certificates {
        let (status, valid) = validity(now, cert.valid_from, cert.expiration_time);
        rows.push(SecretRow {
            resource_name: "default".into(),
            kind: "Cert Chain".into(),
            status: status.into(),
            valid,
            serial_number: cert.serial_number.clone(),
            not_after: cert.expiration_time,
            not_before: cert.valid_from,
            seconds_remaining: cert.expiration_time.saturating_sub(now),
            identity: cert.identity.clone(),
            trust_domain: cert.trust_domain.clone(),
        });
        if cert.cert_chain.len() < 2 {
            continue;
        }
        let Some(root_pem) = cert.cert_chain.last() else { continue };
        let row = match pem::describe(root_pem) {
            Ok(root) => {
                let (status, valid) = validity(now, root.not_before, root.not_after);
                SecretRow {
                    resource_name: "ROOTCA".into(),
                    kind: "CA".into(),
                    status: status.into(),
                    valid,
                    serial_number: root.serial,
                    not_after: root.not_after,
                    not_before: root.not_before,
                    seconds_remaining: root.not_after.saturating_sub(now),
                    identity: root.subject,
                    trust_domain: cert.trust_domain.clone(),
                }
            }
            Err(e) => SecretRow {
                resource_name: "ROOTCA".into(),
                kind: "CA".into(),
                status: format!("UNREADABLE: {e}"),
                valid: false,
                serial_number: "-".into(),
                not_after: 0,
                not_before: 0,
                seconds_remaining: 0,
                identity: "-".into(),
                trust_domain: cert.trust_domain.clone(),
            },
        };
        rows.push(row);
    }
    Secrets { secrets: rows, note: certs.note.clone() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy_config::answers::read;

    fn dump(yaml_json: &str) -> ConfigDump {
        read("/config_dump", format!(r#"{{"version": 1, "config": {yaml_json}}}"#).as_bytes()).unwrap()
    }

    #[test]
    fn listeners_show_each_service_port_then_the_catch_all_and_inbound() {
        let dump = dump(
            r#"{
              "outboundPolicy": "REGISTRY_ONLY",
              "opaquePorts": [3306],
              "services": [
                {"name": "reviews.shop.svc.cluster.local", "aliases": ["reviews"], "addresses": ["10.96.0.5"],
                 "ports": [{"port": 9080, "protocol": "HTTP", "virtualHost": "reviews.shop.svc.cluster.local:9080"}]},
                {"name": "db.shop.svc.cluster.local", "addresses": ["10.96.0.6"],
                 "ports": [{"port": 3306, "virtualHost": "db:3306",
                            "tcpClusters": [{"cluster": "a", "weight": 3}, {"cluster": "b", "weight": 1}]}]},
                {"name": "api.example.com",
                 "ports": [{"port": 443, "protocol": "TLS", "tcpCluster": "outbound|443||api.example.com"}]}
              ],
              "inboundTls": {"mode": "STRICT", "ports": {"8080": "PERMISSIVE"}}
            }"#,
        );
        let rows = listeners(&dump);
        let line = |r: &ListenerRow| format!("{} {} [{}] {}", r.address, r.port, r.matches, r.destination);
        let lines: Vec<String> = rows.iter().map(line).collect();
        assert_eq!(
            lines,
            [
                "10.96.0.5 9080 [HTTP] Route: reviews.shop.svc.cluster.local:9080",
                "10.96.0.6 3306 [TCP (opaque port)] Cluster: a 75%, b 25%",
                "api.example.com 443 [TLS] Cluster: outbound|443||api.example.com",
                "0.0.0.0 * [outbound: any other destination] BlackHoleCluster (outboundTrafficPolicy REGISTRY_ONLY)",
                "0.0.0.0 8080 [inbound: mTLS PERMISSIVE] Inbound: the app on this port",
                "0.0.0.0 * [inbound: mTLS STRICT] Inbound: the app on the original port",
            ]
        );
    }

    #[test]
    fn a_gateway_shows_its_servers_and_no_capture() {
        let dump = dump(
            r#"{
              "gatewayListeners": [
                {"port": 443, "protocol": "GATEWAY_HTTPS", "servers": [
                  {"name": "shop/web/https", "hosts": ["shop.example.com", "*.shop.example.com"],
                   "tls": {"mode": "GATEWAY_TLS_SIMPLE", "privateKey": "[redacted]"},
                   "routes": [{"host": "shop.example.com", "virtualHost": "gw:shop"},
                              {"host": "*.shop.example.com", "virtualHost": "gw:shop"}]}]},
                {"bind": "10.0.0.1", "port": 8443, "protocol": "GATEWAY_TLS", "servers": [
                  {"name": "shop/web/pass", "hosts": ["db.example.com"], "tls": {"mode": "GATEWAY_TLS_PASSTHROUGH"},
                   "sniRoutes": [{"sniHosts": ["db.example.com"], "clusters": [{"cluster": "outbound|443||db"}]}]}]},
                {"port": 31400, "protocol": "GATEWAY_TCP", "servers": [
                  {"name": "shop/web/tcp", "hosts": ["*"], "tcpClusters": [{"cluster": "outbound|31400||tcp"}]}]}
              ],
              "virtualHosts": [{"name": "gw:shop", "routes": [{"name": "shop/web-vs.http[0]",
                "forward": {"clusters": [{"cluster": "outbound|80||web"}]}}]}]
            }"#,
        );
        let lines: Vec<String> = listeners(&dump)
            .iter()
            .map(|r| format!("{} {} [{}] {} ({})", r.address, r.port, r.matches, r.destination, r.service))
            .collect();
        assert_eq!(
            lines,
            [
                "0.0.0.0 443 [gateway HTTPS (TLS SIMPLE): shop.example.com,*.shop.example.com] Route: gw:shop (shop/web/https)",
                "10.0.0.1 8443 [gateway TLS (TLS PASSTHROUGH): db.example.com] SNI db.example.com: outbound|443||db (shop/web/pass)",
                "0.0.0.0 31400 [gateway TCP: *] Cluster: outbound|31400||tcp (shop/web/tcp)",
            ]
        );
        let routes = routes(&dump);
        assert_eq!(routes[0].domains, ["shop.example.com".to_owned(), "*.shop.example.com".to_owned()]);
        assert_eq!((routes[0].name.as_str(), routes[0].virtual_service.as_str()), ("-", "web-vs.shop"));
    }

    #[test]
    fn routes_name_their_domains_matches_and_virtual_service() {
        let dump = dump(
            r#"{
              "services": [{"name": "reviews.shop.svc.cluster.local", "aliases": ["reviews"],
                            "ports": [{"port": 9080, "virtualHost": "reviews.shop.svc.cluster.local:9080"}]}],
              "virtualHosts": [{"name": "reviews.shop.svc.cluster.local:9080", "routes": [
                {"name": "shop/reviews.http[0]",
                 "matches": [{"path": {"prefix": "/api"}, "method": {"exact": "GET"},
                              "headers": [{"name": "end-user", "value": {"exact": "jason"}}]},
                             {"path": {"regex": "/v[0-9]+"}}],
                 "forward": {"clusters": [{"cluster": "outbound|9080|v2|reviews", "weight": 1}]}},
                {"name": "canary", "forward": {"clusters": [
                    {"cluster": "v1", "weight": 90}, {"cluster": "v2", "weight": 10}]}},
                {"name": "default", "directResponse": {"status": 404}}
              ]}]
            }"#,
        );
        let rows = routes(&dump);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].name, "9080");
        assert_eq!(
            rows[0].domains,
            ["reviews.shop.svc.cluster.local:9080".to_owned(), "reviews:9080".to_owned()]
        );
        assert_eq!(rows[0].matches, "/api* method=GET header end-user=jason | ~/v[0-9]+");
        assert_eq!(rows[0].virtual_service, "reviews.shop");
        assert_eq!(rows[0].destination, "outbound|9080|v2|reviews");
        assert_eq!((rows[1].matches.as_str(), rows[1].virtual_service.as_str()), ("/*", "(named route)"));
        assert_eq!(rows[1].destination, "v1 90%, v2 10%");
        assert_eq!(
            (rows[2].virtual_service.as_str(), rows[2].destination.as_str()),
            ("-", "direct response 404")
        );
    }

    #[test]
    fn clusters_split_istio_names() {
        let dump = dump(
            r#"{
              "clusters": [
                {"name": "outbound|9080|v1|reviews.shop.svc.cluster.local", "service": "reviews.shop.svc.cluster.local:9080",
                 "subset": {"version": "v1"}, "loadBalancer": {"policy": "LEAST_REQUEST"},
                 "tls": {"mode": "ISTIO_MUTUAL"}, "outlierDetection": {"consecutive5xxErrors": 5}},
                {"name": "outbound|9080||reviews.shop.svc.cluster.local", "service": "reviews.shop.svc.cluster.local:9080"},
                {"name": "api", "service": "api.test.svc.cluster.local:8080", "port": 8081},
                {"name": "BlackHoleCluster"}
              ],
              "endpoints": [{"service": "reviews.shop.svc.cluster.local:9080",
                             "endpoints": [{"address": "10.1.0.1", "port": 9080, "labels": {"version": "v1"}},
                                           {"address": "10.1.0.2", "port": 9080, "labels": {"version": "v2"}},
                                           {"address": "10.1.0.3", "port": 9080, "labels": {"version": "v1"}}]}]
            }"#,
        );
        let rows = clusters(&dump);
        let summary: Vec<_> = rows
            .iter()
            .map(|r| {
                format!(
                    "{} {} {} {} {} {} {} {}",
                    r.service,
                    r.port,
                    r.subset,
                    r.direction,
                    r.load_balancer,
                    r.tls,
                    r.outlier_detection,
                    r.endpoints
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                "reviews.shop.svc.cluster.local 9080 v1 outbound LEAST_REQUEST ISTIO_MUTUAL true 2",
                "reviews.shop.svc.cluster.local 9080 - outbound ROUND_ROBIN AUTO false 3",
                "api.test.svc.cluster.local 8080 - - ROUND_ROBIN AUTO false 0",
                "- - - - ROUND_ROBIN AUTO false 0",
            ]
        );
    }

    #[test]
    fn endpoints_show_outlier_ejections() {
        let statuses: ClusterStatuses = read(
            "/clusters?format=json",
            br#"{"cluster_statuses": [
                {"name": "api", "outlier_detection": {"ejections_active": 1, "ejections_enforced_total": 2},
                 "host_statuses": [
                   {"address": "10.0.0.1:80", "weight": 1, "health_status": {"failed_outlier_check": true}, "outlier_ejections": 2},
                   {"address": "10.0.0.2:80", "weight": 1, "health_status": {"failed_outlier_check": false}, "outlier_ejections": 0}]},
                {"name": "plain", "outlier_detection": null,
                 "host_statuses": [{"address": "[::1]:80", "weight": 3, "mesh_tls": true, "health_status": {"failed_outlier_check": false}}]}
            ]}"#,
        )
        .unwrap();
        let rows = endpoints(&statuses);
        let summary: Vec<_> = rows
            .iter()
            .map(|r| format!("{} {} {} {}", r.endpoint, r.status, r.outlier_check, r.cluster))
            .collect();
        assert_eq!(
            summary,
            ["10.0.0.1:80 UNHEALTHY FAILED api", "10.0.0.2:80 HEALTHY OK api", "[::1]:80 HEALTHY - plain"]
        );
        assert_eq!((rows[0].ejections, rows[2].ejections, rows[2].mesh_tls), (Some(2), None, true));
    }

    #[test]
    fn certificates_are_active_expired_or_not_yet_valid() {
        let cert = |from: u64, to: u64| {
            format!(
                r#"{{"identity": "spiffe://cluster.local/ns/shop/sa/web", "serial_number": "0A1B", "valid_from": {from},
                    "expiration_time": {to}, "seconds_until_expiration": 0, "trust_domain": "cluster.local",
                    "cert_chain": ["leaf", "not a certificate"]}}"#
            )
        };
        let certs: Certs = read(
            "/certs",
            format!(r#"{{"certificates": [{}, {}, {}]}}"#, cert(100, 200), cert(10, 50), cert(150, 300))
                .as_bytes(),
        )
        .unwrap();
        let secrets = secrets(&certs, 120);
        let leaves: Vec<_> = secrets
            .secrets
            .iter()
            .filter(|r| r.resource_name == "default")
            .map(|r| (r.status.as_str(), r.valid, r.seconds_remaining))
            .collect();
        assert_eq!(leaves, [("ACTIVE", true, 80), ("EXPIRED", false, 0), ("NOT YET VALID", false, 180)]);
        // The root PEM is not a certificate: said in its row.
        let root = &secrets.secrets[1];
        assert_eq!((root.resource_name.as_str(), root.valid), ("ROOTCA", false));
        assert!(root.status.starts_with("UNREADABLE: "), "{}", root.status);

        let none: Certs = read("/certs", br#"{"certificates": [], "note": "no certificate yet"}"#).unwrap();
        let secrets = super::secrets(&none, 0);
        assert!(secrets.secrets.is_empty());
        assert_eq!(secrets.note.as_deref(), Some("no certificate yet"));
    }
}
