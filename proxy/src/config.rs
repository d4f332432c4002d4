//! Reading the configuration (the `trellis.config.v1` messages, from a YAML or JSON file) and
//! compiling it into the lookup tables the data path uses: addresses and names to service
//! ports, virtual hosts with compiled matchers, clusters with their balancers and limits.
//! A configuration either compiles whole or is rejected with the field that is wrong.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use serde_path_to_error::Segment;
use trellis_xds::config as pb;

use crate::FastMap;
use crate::balance::{Balancer, Policy, Target};
use crate::cluster::{Cluster, HashSource, PoolLimits};
use crate::route::{Action, CompiledRoute, HeaderOps, Matcher, Retry, StringMatcher, VirtualHost};
use crate::security::inbound::InboundTls;
use crate::security::upstream::TlsPolicy;

/// Files bigger than this are not proxy configurations.
pub const MAX_CONFIG_BYTES: usize = 16 << 20;
const DEFAULT_DETECTION_TIMEOUT: Duration = Duration::from_millis(100);
const DEFAULT_MAX_HEADER_BYTES: usize = 60 << 10;
const DEFAULT_MAX_BODY_BYTES: u64 = 10 << 20;
const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Envoy's default for each connection-pool limit.
const DEFAULT_POOL_LIMIT: u32 = 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {message}")]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError { field: field.into(), message: message.into() }
}

/// Parses a configuration file's text (YAML; JSON is YAML too).
pub fn parse(text: &str) -> Result<pb::ProxyConfig, ConfigError> {
    if text.len() > MAX_CONFIG_BYTES {
        return Err(err("(file)", format!("{} bytes; the limit is {MAX_CONFIG_BYTES}", text.len())));
    }
    if text.trim().is_empty() {
        return Ok(pb::ProxyConfig::default());
    }
    // YAML to a plain tree first, then the tree to the messages: deserializing the messages
    // straight from YAML made a copy of the YAML deserializer for every message type (most of
    // the proxy's resident start-up code), and the second step names the field that is wrong.
    let tree: Value = serde_saphyr::from_str(text).map_err(|e| err("(file)", e.to_string()))?;
    serde_path_to_error::deserialize(&tree).map_err(|e| {
        // Some of the messages' parsers do not say what they were given.
        let found = match value_at(&tree, e.path()) {
            Some(v @ (Value::String(_) | Value::Number(_) | Value::Bool(_))) => format!(" (the value: {v})"),
            _ => String::new(),
        };
        err(e.path().to_string(), format!("{}{found}", e.inner()))
    })
}

fn value_at<'a>(tree: &'a Value, path: &serde_path_to_error::Path) -> Option<&'a Value> {
    path.iter().try_fold(tree, |value, segment| match segment {
        Segment::Seq { index } => value.get(index),
        Segment::Map { key } => value.get(key.as_str()),
        Segment::Enum { .. } | Segment::Unknown => Some(value),
    })
}

/// Whether every reference must resolve (a file holds the whole config) or service ports may
/// name resources still to be fetched (xDS on demand).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum References {
    Complete,
    OnDemand,
}

/// How a service port is reached.
#[derive(Debug)]
pub struct ServicePort {
    pub service: Arc<str>,
    pub port: u16,
    pub protocol: pb::Protocol,
    pub virtual_host: Option<Arc<VirtualHost>>,
    pub tcp_cluster: Option<Arc<Cluster>>,
    /// A weighted split of the port's TCP connections (a `tcp` or `tls` route with several
    /// destinations); empty when the port has one TCP cluster.
    pub tcp_split: Vec<(Arc<Cluster>, u32)>,
    /// With config on demand (xDS): the virtual host this port names, when the proxy has not
    /// fetched it yet.
    pub missing_virtual_host: Option<String>,
    /// Likewise for the TCP clusters.
    pub missing_tcp_clusters: Vec<String>,
}

impl ServicePort {
    /// Where a TCP connection on this port goes: a pick by weight when the port splits its
    /// connections, else its one cluster.
    pub fn tcp_target(&self) -> Option<Arc<Cluster>> {
        if self.tcp_split.is_empty() {
            return self.tcp_cluster.clone();
        }
        let total = Action::total_weight(&self.tcp_split);
        let roll =
            if total > 1 { crate::with_fast_rng(|rng| rand::RngExt::random_range(rng, 0..total)) } else { 0 };
        Action::pick_cluster(&self.tcp_split, roll).cloned()
    }
}

pub struct Limits {
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    /// How long a client may take to send its request headers (slowloris).
    pub header_read_timeout: Duration,
}

/// One compiled configuration version. Immutable: a change builds a new one.
pub struct Snapshot {
    pub version: u64,
    pub source: pb::ProxyConfig,
    pub outbound_policy: pb::OutboundPolicy,
    pub opaque_ports: HashSet<u16>,
    pub detection_timeout: Duration,
    pub limits: Limits,
    /// PeerAuthentication, resolved for this workload.
    pub inbound_tls: InboundTls,
    /// AuthorizationPolicy (and what else checks inbound requests), compiled.
    pub inbound_policy: crate::security::policy::InboundPolicy,
    /// Rate limits (an EnvoyFilter's) on inbound requests, outbound ones and a gateway's; `None`,
    /// the usual case, costs nothing.
    pub inbound_rate_limit: Option<Arc<crate::ratelimit::RateLimit>>,
    pub outbound_rate_limit: Option<Arc<crate::ratelimit::RateLimit>>,
    pub gateway_rate_limit: Option<Arc<crate::ratelimit::RateLimit>>,
    /// Access logs; `None` when the config has none.
    pub access_logs: Option<Arc<crate::access_log::AccessLogs>>,
    /// Distributed tracing; `None` (off) costs nothing per request.
    pub tracing: Option<Arc<crate::trace::Tracing>>,
    by_address: FastMap<SocketAddr, Arc<ServicePort>>,
    /// Lower-case host name, then port.
    by_name: FastMap<String, Vec<(u16, Arc<ServicePort>)>>,
    service_ports: HashSet<u16>,
    pub clusters: BTreeMap<String, Arc<Cluster>>,
    /// Where this proxy runs, for locality-aware balancing.
    pub place: crate::locality::Place,
    /// The mesh's workloads by address, for the metrics' peer labels.
    pub peers: Arc<crate::peers::PeerTable>,
    /// Gateway role: the Gateways' listeners; `None` for a sidecar.
    pub gateway: Option<Arc<crate::gateway::Gateway>>,
}

impl Snapshot {
    /// The empty configuration a proxy starts with: everything passes through.
    pub fn empty() -> Snapshot {
        Snapshot::compile(pb::ProxyConfig::default(), 0, None).expect("the empty configuration compiles")
    }

    /// The service port behind a virtual IP and port.
    pub fn by_address(&self, addr: SocketAddr) -> Option<&Arc<ServicePort>> {
        self.by_address.get(&addr)
    }

    /// The service port an HTTP authority names: `host`, `host:port`, `vip:port`; `default_port`
    /// when it has none.
    pub fn by_authority(&self, authority: &str, default_port: u16) -> Option<&Arc<ServicePort>> {
        let (host, port) = split_authority(authority, default_port)?;
        // Only something that looks like an address is parsed as one (a failed IPv6 parse of
        // every service name was 1% of the instructions per request).
        let maybe_ip = host.starts_with(|c: char| c.is_ascii_digit()) || host.contains(':');
        if maybe_ip && let Ok(ip) = host.parse::<IpAddr>() {
            return self.by_address.get(&SocketAddr::new(ip, port));
        }
        let ports = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            self.by_name.get(&host.to_ascii_lowercase())
        } else {
            self.by_name.get(host)
        }?;
        ports.iter().find(|(p, _)| *p == port).map(|(_, sp)| sp)
    }

    /// Whether any service listens on this port (so outbound traffic to it is worth inspecting).
    pub fn has_services_on(&self, port: u16) -> bool {
        self.service_ports.contains(&port)
    }

    /// Compiles `config`. Clusters whose definition and endpoints did not change keep their
    /// state from `previous` (active requests, pool limits, counters).
    pub fn compile(
        config: pb::ProxyConfig,
        version: u64,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, ConfigError> {
        Self::compile_with(config, version, previous, References::Complete)
    }

    /// Compiles config delivered on demand: a service port may name a virtual host or TCP
    /// cluster the proxy has not asked for yet (it is fetched on first use).
    pub fn compile_on_demand(
        config: pb::ProxyConfig,
        version: u64,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, ConfigError> {
        Self::compile_with(config, version, previous, References::OnDemand)
    }

    fn compile_with(
        config: pb::ProxyConfig,
        version: u64,
        previous: Option<&Snapshot>,
        references: References,
    ) -> Result<Snapshot, ConfigError> {
        let endpoints = endpoints_by_service(&config)?;
        // The same table as before is the same compiled table (pushes rarely change it).
        let peers = match previous.filter(|p| p.source.workloads == config.workloads) {
            Some(p) => p.peers.clone(),
            None => Arc::new(
                crate::peers::PeerTable::compile(&config.workloads).map_err(|e| err(e.field, e.message))?,
            ),
        };
        let place =
            crate::locality::Place::compile(&config).map_err(|(field, message)| err(field, message))?;
        // Clusters balanced by locality are worked out again when the proxy's place changes.
        let moved = previous.is_some_and(|p| p.place != place);
        let mut clusters = BTreeMap::new();
        for (i, c) in config.clusters.iter().enumerate() {
            let field = format!("clusters[{i}]");
            if c.name.is_empty() {
                return Err(err(format!("{field}.name"), "required"));
            }
            let set = endpoints.get(c.service.as_str()).copied();
            let mine = set.map(|s| s.endpoints.as_slice()).unwrap_or_default();
            let accounts = set.map(|s| s.service_accounts.as_slice()).unwrap_or_default();
            let host = c.service.rsplit_once(':').map_or(c.service.as_str(), |(host, _)| host);
            let tls = TlsPolicy::compile(c.tls.as_ref(), accounts, host)
                .map_err(|e| err(format!("{field}.tls (or its endpoints' service_accounts)"), e))?;
            let reused = previous
                .and_then(|p| p.clusters.get(&c.name))
                .filter(|old| old.definition == *c && old.endpoints.as_slice() == mine && old.tls == tls)
                .filter(|_| !(moved && c.locality_lb.is_some()));
            let cluster = match reused {
                Some(old) => old.clone(),
                None => {
                    // A changed cluster keeps what outlier detection knows of its endpoints, and
                    // its connections.
                    let old = previous.and_then(|p| p.clusters.get(&c.name));
                    Arc::new(compile_cluster(c, mine, tls, old.map(|o| &**o), &place, &field)?)
                }
            };
            if clusters.insert(c.name.clone(), cluster).is_some() {
                return Err(err(format!("{field}.name"), format!("cluster {:?} is defined twice", c.name)));
            }
        }

        let mut virtual_hosts = HashMap::new();
        for (i, vh) in config.virtual_hosts.iter().enumerate() {
            let compiled = compile_virtual_host(vh, &clusters, &format!("virtual_hosts[{i}]"))?;
            if virtual_hosts.insert(vh.name.clone(), Arc::new(compiled)).is_some() {
                return Err(err(
                    format!("virtual_hosts[{i}].name"),
                    format!("{:?} is defined twice", vh.name),
                ));
            }
        }

        let mut by_address = FastMap::default();
        let mut by_name: FastMap<String, Vec<(u16, Arc<ServicePort>)>> = FastMap::default();
        let mut service_ports = HashSet::new();
        for (i, s) in config.services.iter().enumerate() {
            let field = format!("services[{i}]");
            if s.name.is_empty() {
                return Err(err(format!("{field}.name"), "required"));
            }
            let addresses = s
                .addresses
                .iter()
                .enumerate()
                .map(|(j, a)| {
                    a.parse::<IpAddr>().map_err(|_| {
                        err(format!("{field}.addresses[{j}]"), format!("{a:?} is not an IP address"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            for (j, p) in s.ports.iter().enumerate() {
                let pfield = format!("{field}.ports[{j}]");
                let port = port(p.port, &format!("{pfield}.port"))?;
                let vh_name = if p.virtual_host.is_empty() {
                    format!("{}:{port}", s.name)
                } else {
                    p.virtual_host.clone()
                };
                let virtual_host = virtual_hosts.get(&vh_name).cloned();
                let (mut missing_virtual_host, mut missing_tcp_clusters) = (None, Vec::new());
                if virtual_host.is_none() && !p.virtual_host.is_empty() {
                    if references == References::Complete {
                        return Err(err(
                            format!("{pfield}.virtual_host"),
                            format!("no virtual host {vh_name:?}"),
                        ));
                    }
                    missing_virtual_host = Some(vh_name.clone());
                }
                // A TCP cluster, when the proxy has it; on demand, a missing one is noted.
                let mut tcp_lookup = |name: &str, field: String| match clusters.get(name) {
                    Some(cluster) => Ok(Some(cluster.clone())),
                    None if references == References::OnDemand => {
                        missing_tcp_clusters.push(name.to_owned());
                        Ok(None)
                    }
                    None => Err(err(field, format!("no cluster {name:?}"))),
                };
                let mut tcp_split = Vec::new();
                let tcp_cluster = match (p.tcp_cluster.as_str(), p.tcp_clusters.as_slice()) {
                    (_, [_, ..]) => {
                        let single = p.tcp_clusters.len() == 1;
                        for (j, wc) in p.tcp_clusters.iter().enumerate() {
                            let field = format!("{pfield}.tcp_clusters[{j}].cluster");
                            if let Some(cluster) = tcp_lookup(&wc.cluster, field)? {
                                tcp_split.push((cluster, if single { 1 } else { wc.weight }));
                            }
                        }
                        let all_zero = p.tcp_clusters.iter().all(|wc| wc.weight == 0);
                        if !single && all_zero {
                            return Err(err(format!("{pfield}.tcp_clusters"), "the weights add up to 0"));
                        }
                        None
                    }
                    ("", []) => virtual_host.as_ref().and_then(|vh| vh.first_cluster()),
                    (name, []) => tcp_lookup(name, format!("{pfield}.tcp_cluster"))?,
                };
                let protocol = pb::Protocol::try_from(p.protocol).unwrap_or(pb::Protocol::Auto);
                let entry = Arc::new(ServicePort {
                    service: s.name.as_str().into(),
                    port,
                    protocol,
                    virtual_host,
                    tcp_cluster,
                    tcp_split,
                    missing_virtual_host,
                    missing_tcp_clusters,
                });
                service_ports.insert(port);
                for ip in &addresses {
                    by_address.insert(SocketAddr::new(*ip, port), entry.clone());
                }
                for name in std::iter::once(&s.name).chain(&s.aliases) {
                    let ports = by_name.entry(name.to_ascii_lowercase()).or_default();
                    ports.retain(|(p, _)| *p != port);
                    ports.push((port, entry.clone()));
                }
            }
        }

        let gateway = crate::gateway::compile(
            &config.gateway_listeners,
            (&virtual_hosts, &clusters),
            previous.and_then(|p| p.gateway.as_deref()),
            references == References::Complete,
        )?;
        let limits = config.limits.unwrap_or_default();
        // A policy this proxy does not know (from a newer control plane) is refused rather than
        // read as the default, which would open what it was meant to close.
        let outbound_policy = pb::OutboundPolicy::try_from(config.outbound_policy).map_err(|_| {
            err("outbound_policy", format!("{} is not a policy this proxy knows", config.outbound_policy))
        })?;
        let opaque_ports = config
            .opaque_ports
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                u16::try_from(p)
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| err(format!("opaque_ports[{i}]"), format!("{p} is not a port")))
            })
            .collect::<Result<_, _>>()?;
        let inbound_tls = InboundTls::compile(config.inbound_tls.as_ref())?;
        let inbound_policy =
            crate::security::policy::InboundPolicy::compile(&config, previous.map(|p| &p.inbound_policy))?;
        let [inbound_rate_limit, outbound_rate_limit, gateway_rate_limit] =
            crate::ratelimit::RateLimit::compile_all(
                &config,
                [
                    previous.and_then(|p| p.inbound_rate_limit.as_ref()),
                    previous.and_then(|p| p.outbound_rate_limit.as_ref()),
                    previous.and_then(|p| p.gateway_rate_limit.as_ref()),
                ],
            )?;
        let previous_tracing = previous.and_then(|p| p.tracing.as_ref());
        let tracing = crate::trace::Tracing::compile(config.tracing.as_ref(), previous_tracing)?;
        let access_logs = crate::access_log::AccessLogs::compile(
            &config.access_logs,
            previous.and_then(|p| p.access_logs.as_deref()),
        )?;
        Ok(Snapshot {
            version,
            access_logs,
            inbound_tls,
            inbound_policy,
            inbound_rate_limit,
            outbound_rate_limit,
            gateway_rate_limit,
            tracing,
            outbound_policy,
            opaque_ports,
            detection_timeout: duration(
                config.protocol_detection_timeout.as_ref(),
                "protocol_detection_timeout",
            )?
            .unwrap_or(DEFAULT_DETECTION_TIMEOUT),
            limits: Limits {
                max_header_bytes: match limits.max_request_headers_bytes {
                    0 => DEFAULT_MAX_HEADER_BYTES,
                    n => n as usize,
                },
                max_body_bytes: match limits.max_request_body_bytes {
                    0 => DEFAULT_MAX_BODY_BYTES,
                    n => n,
                },
                header_read_timeout: duration(
                    limits.request_headers_timeout.as_ref(),
                    "limits.request_headers_timeout",
                )?
                .unwrap_or(DEFAULT_HEADER_READ_TIMEOUT),
            },
            by_address,
            by_name,
            service_ports,
            clusters,
            place,
            peers,
            gateway,
            source: {
                let mut config = config;
                crate::gateway::redact(&mut config);
                config
            },
        })
    }
}

/// `host[:port]` (IPv6 hosts in brackets) split, with the default port when there is none.
pub fn split_authority(authority: &str, default_port: u16) -> Option<(&str, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => parse_port(p)?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        return Some((host, port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Some((host, parse_port(port)?)),
        Some(_) => Some((authority, default_port)), // a bare IPv6 address
        None => Some((authority, default_port)),
    }
}

/// Digits only: `str::parse` would also take a sign (`+80`).
fn parse_port(text: &str) -> Option<u16> {
    if text.bytes().all(|b| b.is_ascii_digit()) { text.parse().ok() } else { None }
}

fn endpoints_by_service(
    config: &pb::ProxyConfig,
) -> Result<HashMap<&str, &pb::ServiceEndpoints>, ConfigError> {
    let mut map = HashMap::new();
    for (i, e) in config.endpoints.iter().enumerate() {
        for (j, ep) in e.endpoints.iter().enumerate() {
            let field = format!("endpoints[{i}].endpoints[{j}]");
            ep.address.parse::<IpAddr>().map_err(|_| {
                err(format!("{field}.address"), format!("{:?} is not an IP address", ep.address))
            })?;
            if ep.port != 0 {
                port(ep.port, &format!("{field}.port"))?;
            }
        }
        if map.insert(e.service.as_str(), e).is_some() {
            return Err(err(format!("endpoints[{i}].service"), format!("{:?} is listed twice", e.service)));
        }
    }
    Ok(map)
}

fn compile_cluster(
    c: &pb::Cluster,
    endpoints: &[pb::Endpoint],
    tls: TlsPolicy,
    previous: Option<&Cluster>,
    place: &crate::locality::Place,
    field: &str,
) -> Result<Cluster, ConfigError> {
    let previous_detector = previous.and_then(|p| p.outlier.as_ref());
    let lb = c.load_balancer.clone().unwrap_or_default();
    let policy = match pb::load_balancer::Policy::try_from(lb.policy).unwrap_or_default() {
        pb::load_balancer::Policy::RoundRobin => Policy::RoundRobin,
        pb::load_balancer::Policy::LeastRequest => Policy::LeastRequest,
        pb::load_balancer::Policy::Random => Policy::Random,
        pb::load_balancer::Policy::RingHash => Policy::RingHash,
        pb::load_balancer::Policy::Maglev => Policy::Maglev,
    };
    let hash = lb.hash_key.and_then(|h| h.kind).map(|k| match k {
        pb::hash_key::Kind::Header(h) => HashSource::Header(h.to_ascii_lowercase()),
        pb::hash_key::Kind::Cookie(c) => HashSource::Cookie(c),
        pb::hash_key::Kind::QueryParameter(q) => HashSource::Query(q),
        pb::hash_key::Kind::SourceIp(_) => HashSource::SourceIp,
    });
    let selected: Vec<pb::Endpoint> = endpoints
        .iter()
        .filter(|e| c.subset.iter().all(|(k, v)| e.labels.get(k) == Some(v)))
        .cloned()
        .collect();
    let mut targets = Vec::with_capacity(selected.len());
    let mut places = Vec::with_capacity(selected.len());
    for (j, e) in selected.iter().enumerate() {
        let ip: IpAddr =
            e.address.parse().map_err(|_| err(format!("{field}.service"), "bad endpoint address"))?;
        let port_number = if c.port != 0 { c.port } else { e.port };
        let port = port(port_number, &format!("{field}.port"))?;
        targets.push(Target {
            addr: SocketAddr::new(ip, port),
            weight: e.weight.max(1),
            mesh_tls: e.mesh_tls,
        });
        if c.locality_lb.is_some() {
            let locality = crate::locality::locality_of(e.locality.as_ref())
                .map_err(|m| err(format!("{field}.service: endpoint {j} ({}): locality", e.address), m))?;
            places.push(crate::locality::Endpoint { locality, labels: &e.labels, weight: e.weight });
        }
    }
    let locality = match &c.locality_lb {
        Some(setting) => {
            let setting = crate::locality::Setting::compile(setting, &format!("{field}.locality_lb"))
                .map_err(|(field, message)| err(field, message))?;
            crate::locality::Plan::new(&setting, place, &places, c.outlier_detection.is_some())
        }
        None => None,
    };
    let outlier = match &c.outlier_detection {
        Some(od) => {
            let policy = outlier_policy(od, &format!("{field}.outlier_detection"))?;
            let addrs = targets.iter().map(|t| t.addr).collect();
            Some(crate::outlier::Detector::new(policy, addrs, previous_detector))
        }
        None => None,
    };
    let pool = c.connection_pool.unwrap_or_default();
    let or = |v: u32, default: u32| if v == 0 { default } else { v };
    let limits = PoolLimits {
        max_connections: or(pool.max_connections, DEFAULT_POOL_LIMIT),
        max_pending: or(pool.http1_max_pending_requests, DEFAULT_POOL_LIMIT),
        max_requests: or(pool.http2_max_requests, DEFAULT_POOL_LIMIT),
    };
    let connections = match previous {
        Some(old) => old.pool.clone(),
        None => crate::upstream::ClusterConnections::new(limits.max_connections),
    };
    let mut cluster = Cluster::new(
        c.clone(),
        endpoints.to_vec(),
        match &locality {
            Some(plan) => Balancer::partitioned(policy, targets, plan.parts.clone()),
            None => Balancer::new(policy, targets),
        },
        hash,
        limits,
        pb::UpstreamProtocol::try_from(c.upstream_protocol).unwrap_or_default(),
        duration(pool.connect_timeout.as_ref(), &format!("{field}.connection_pool.connect_timeout"))?
            .unwrap_or(Duration::from_secs(10)),
        match pool.idle_timeout.as_ref() {
            Some(zero) if zero.seconds == 0 && zero.nanos == 0 => Some(NO_IDLE_TIMEOUT),
            other => duration(other, &format!("{field}.connection_pool.idle_timeout"))?,
        },
        pool.max_requests_per_connection,
        tls,
        connections,
    );
    cluster.connections.keepalive = match &pool.tcp_keepalive {
        Some(k) => Some(keepalive(k, &format!("{field}.connection_pool.tcp_keepalive"))?),
        None => None,
    };
    cluster.connections.max_duration = duration(
        pool.max_connection_duration.as_ref(),
        &format!("{field}.connection_pool.max_connection_duration"),
    )?;
    cluster.outlier = outlier;
    cluster.locality = locality.map(|plan| plan.lb);
    // A budget whose settings did not change keeps what it counted.
    cluster.retry_budget = crate::retry_budget::BudgetPolicy::compile(
        c.retry_budget.as_ref(),
        &format!("{field}.retry_budget"),
    )?
    .map(|policy| match previous.and_then(|p| p.retry_budget.as_ref()) {
        Some(old) if old.policy == policy => old.clone(),
        _ => Arc::new(crate::retry_budget::RetryBudget::new(policy)),
    });
    cluster.retry_limit = crate::retry_budget::RetryLimit::new(pool.max_retries);
    Ok(cluster)
}

/// A cluster's outlier detection, defaults applied; percentages over 100 are refused.
fn outlier_policy(
    od: &pb::OutlierDetection,
    field: &str,
) -> Result<crate::outlier::OutlierPolicy, ConfigError> {
    use crate::outlier as o;
    for (name, value) in
        [("max_ejection_percent", od.max_ejection_percent), ("min_health_percent", od.min_health_percent)]
    {
        if value > 100 {
            return Err(err(format!("{field}.{name}"), format!("{value} is more than 100")));
        }
    }
    let base_ejection_time =
        duration(od.base_ejection_time.as_ref(), &format!("{field}.base_ejection_time"))?
            .unwrap_or(o::DEFAULT_BASE_EJECTION_TIME);
    Ok(o::OutlierPolicy {
        consecutive_5xx: od.consecutive_5xx_errors,
        consecutive_gateway: od.consecutive_gateway_errors,
        consecutive_local_origin: od.consecutive_local_origin_failures,
        split_local_origin: od.split_external_local_origin_errors,
        interval: duration(od.interval.as_ref(), &format!("{field}.interval"))?
            .unwrap_or(o::DEFAULT_INTERVAL),
        base_ejection_time,
        max_ejection_time: duration(od.max_ejection_time.as_ref(), &format!("{field}.max_ejection_time"))?
            .unwrap_or(o::DEFAULT_MAX_EJECTION_TIME.max(base_ejection_time)),
        max_ejection_percent: match od.max_ejection_percent {
            0 => o::DEFAULT_MAX_EJECTION_PERCENT,
            n => n,
        },
        min_health_percent: od.min_health_percent,
    })
}

fn compile_virtual_host(
    vh: &pb::VirtualHost,
    clusters: &BTreeMap<String, Arc<Cluster>>,
    field: &str,
) -> Result<VirtualHost, ConfigError> {
    let mut routes = Vec::new();
    for (i, r) in vh.routes.iter().enumerate() {
        let rfield = format!("{field}.routes[{i}]");
        trellis_xds::uri::check_route(r)
            .map_err(|bad| err(format!("{rfield}.{}", bad.field), bad.to_string()))?;
        let matches = r
            .matches
            .iter()
            .enumerate()
            .map(|(j, m)| compile_match(m, &format!("{rfield}.matches[{j}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let action = match &r.action {
            None => {
                return Err(err(
                    format!("{rfield}.action"),
                    "one of forward, redirect, direct_response is required",
                ));
            }
            Some(pb::route::Action::Forward(f)) => {
                if f.clusters.is_empty() {
                    return Err(err(
                        format!("{rfield}.forward.clusters"),
                        "at least one cluster is required",
                    ));
                }
                let mut targets = Vec::new();
                for (j, wc) in f.clusters.iter().enumerate() {
                    let cluster = clusters.get(&wc.cluster).cloned().ok_or_else(|| {
                        err(
                            format!("{rfield}.forward.clusters[{j}].cluster"),
                            format!("no cluster {:?}", wc.cluster),
                        )
                    })?;
                    let weight = if f.clusters.len() == 1 { 1 } else { wc.weight };
                    targets.push((cluster, weight));
                }
                if targets.iter().all(|(_, w)| *w == 0) {
                    return Err(err(format!("{rfield}.forward.clusters"), "the weights add up to 0"));
                }
                Action::Forward(targets)
            }
            Some(pb::route::Action::Redirect(rd)) => {
                let code = if rd.response_code == 0 { 301 } else { rd.response_code };
                if ![301, 302, 303, 307, 308].contains(&code) {
                    return Err(err(
                        format!("{rfield}.redirect.response_code"),
                        format!("{code} is not a redirect status"),
                    ));
                }
                Action::Redirect {
                    uri: rd.uri.clone(),
                    authority: rd.authority.clone(),
                    scheme: rd.scheme.clone(),
                    code: code as u16,
                }
            }
            Some(pb::route::Action::DirectResponse(d)) => {
                let status =
                    http::StatusCode::from_u16(u16::try_from(d.status).unwrap_or(0)).map_err(|_| {
                        err(
                            format!("{rfield}.direct_response.status"),
                            format!("{} is not an HTTP status", d.status),
                        )
                    })?;
                Action::Direct { status, body: Bytes::from(d.body.clone()) }
            }
        };
        let retries = match &r.retries {
            Some(policy) if policy.attempts > 0 => {
                Some(Retry::compile(policy, &format!("{rfield}.retries"))?)
            }
            _ => None,
        };
        routes.push(CompiledRoute {
            name: r.name.clone(),
            matches,
            action,
            request_headers: HeaderOps::compile(
                r.request_headers.as_ref(),
                &format!("{rfield}.request_headers"),
            )?,
            response_headers: HeaderOps::compile(
                r.response_headers.as_ref(),
                &format!("{rfield}.response_headers"),
            )?,
            rewrite_uri: r.rewrite.as_ref().map(|rw| rw.uri.clone()).filter(|u| !u.is_empty()),
            rewrite_authority: r.rewrite.as_ref().map(|rw| rw.authority.clone()).filter(|a| !a.is_empty()),
            timeout: duration(r.timeout.as_ref(), &format!("{rfield}.timeout"))?,
            retries,
            fault: crate::fault::Fault::compile(r.fault.as_ref(), &format!("{rfield}.fault"))?,
            mirrors: crate::mirror::Mirrors::compile(&r.mirrors, clusters, &format!("{rfield}.mirrors"))?,
        });
    }
    Ok(VirtualHost { name: vh.name.clone(), routes })
}

fn compile_match(m: &pb::RouteMatch, field: &str) -> Result<Matcher, ConfigError> {
    let string = |s: &Option<pb::StringMatch>, f: &str| -> Result<Option<StringMatcher>, ConfigError> {
        s.as_ref().map(|s| StringMatcher::compile(s, f)).transpose()
    };
    let headers = |list: &[pb::HeaderMatch],
                   f: &str|
     -> Result<Vec<(http::HeaderName, Option<StringMatcher>)>, ConfigError> {
        list.iter()
            .enumerate()
            .map(|(i, h)| {
                let name =
                    http::HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes()).map_err(|_| {
                        err(format!("{f}[{i}].name"), format!("{:?} is not a header name", h.name))
                    })?;
                Ok((name, string(&h.value, &format!("{f}[{i}].value"))?))
            })
            .collect()
    };
    Ok(Matcher {
        path: string(&m.path, &format!("{field}.path"))?,
        method: string(&m.method, &format!("{field}.method"))?,
        headers: headers(&m.headers, &format!("{field}.headers"))?,
        without_headers: headers(&m.without_headers, &format!("{field}.without_headers"))?,
        query: m
            .query_params
            .iter()
            .enumerate()
            .map(|(i, q)| {
                Ok((q.name.clone(), string(&q.value, &format!("{field}.query_params[{i}].value"))?))
            })
            .collect::<Result<_, ConfigError>>()?,
        port: if m.port == 0 { None } else { Some(port(m.port, &format!("{field}.port"))?) },
    })
}

pub(crate) fn port(value: u32, field: &str) -> Result<u16, ConfigError> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| err(field, format!("{value} is not a port (1-65535)")))
}

/// Linux's limits: TCP_KEEPIDLE and TCP_KEEPINTVL take at most 32767 seconds, TCP_KEEPCNT 127;
/// beyond them every connect would fail, so the config is refused instead.
fn keepalive(k: &pb::TcpKeepalive, field: &str) -> Result<crate::upstream::Keepalive, ConfigError> {
    const MAX_SECONDS: u64 = 32_767;
    let knob = |d: Option<&pbjson_types::Duration>, name: &str| -> Result<Option<Duration>, ConfigError> {
        let value = duration(d, &format!("{field}.{name}"))?;
        match value {
            Some(v) if v.as_secs() > MAX_SECONDS => {
                Err(err(format!("{field}.{name}"), format!("{v:?} is more than {MAX_SECONDS}s")))
            }
            Some(v) if v < Duration::from_secs(1) => {
                Err(err(format!("{field}.{name}"), format!("{v:?} is less than the 1s the kernel counts in")))
            }
            _ => Ok(value),
        }
    };
    if k.probes > 127 {
        return Err(err(format!("{field}.probes"), format!("{} is more than 127", k.probes)));
    }
    Ok(crate::upstream::Keepalive {
        time: knob(k.time.as_ref(), "time")?,
        interval: knob(k.interval.as_ref(), "interval")?,
        probes: (k.probes != 0).then_some(k.probes),
    })
}

/// An idle timeout of zero turns it off (Istio's `tcp.idleTimeout: 0s`): a century stands for
/// never, a deadline every timer can hold.
pub const NO_IDLE_TIMEOUT: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

pub(crate) fn duration(
    d: Option<&pbjson_types::Duration>,
    field: &str,
) -> Result<Option<Duration>, ConfigError> {
    let Some(d) = d else { return Ok(None) };
    if d.seconds < 0 || d.nanos < 0 {
        return Err(err(field, "negative duration"));
    }
    if d.seconds > MAX_DURATION_SECONDS {
        return Err(err(field, format!("{}s is more than a year", d.seconds)));
    }
    // Zero means unset, as in Istio: no timeout, or the default.
    let value = Duration::new(d.seconds as u64, d.nanos as u32);
    Ok((!value.is_zero()).then_some(value))
}

/// Longer durations are mistakes, and would overflow the backoff arithmetic.
const MAX_DURATION_SECONDS: i64 = 365 * 24 * 3600;

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> String {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/proxy/config.yaml");
        std::fs::read_to_string(path).expect("the example exists")
    }

    #[test]
    fn the_documented_example_compiles() {
        let parsed = parse(&example()).unwrap();
        let snapshot = Snapshot::compile(parsed, 1, None).unwrap();
        assert_eq!(snapshot.clusters.len(), 3);
        assert_eq!(snapshot.opaque_ports, HashSet::from([3306]));
        let reviews = snapshot.by_authority("reviews:9080", 80).unwrap();
        assert_eq!(&*reviews.service, "reviews.shop.svc.cluster.local");
        assert!(snapshot.by_authority("REVIEWS.shop:9080", 80).is_some(), "host names are case-insensitive");
        assert!(snapshot.by_address("10.96.0.20:9080".parse().unwrap()).is_some());
        assert!(snapshot.by_authority("10.96.0.20:9080", 80).is_some());
        assert!(snapshot.by_authority("reviews", 80).is_none(), "port 80 is not a reviews port");
        let v1 = &snapshot.clusters["outbound|9080|v1|reviews.shop.svc.cluster.local"];
        assert_eq!(v1.balancer.targets().len(), 2, "the subset selects v1 endpoints");
        assert_eq!(snapshot.detection_timeout, Duration::from_millis(100));
    }

    #[test]
    fn a_policy_the_proxy_cannot_understand_refuses_the_whole_configuration() {
        // Compiling it without the bad rule would open access (a DENY rule lost): the config
        // is refused, so the last good one stays.
        for (policy, field) in [
            (
                "authorization: [{ namespace: shop, name: p, action: DENY, rules: [{ when: [{ key: destination.labels, values: [x] }] }] }]",
                "authorization[0].rules[0]",
            ),
            ("authorization: [{ namespace: shop, name: p, action: 9 }]", "authorization[0].action"),
            ("jwtProviders: [{ issuer: '' }]", "jwt_providers[0].issuer"),
        ] {
            let err =
                parse(policy).and_then(|c| Snapshot::compile(c, 1, None).map(|_| ())).expect_err(policy);
            assert_eq!(err.field, field, "{policy}: {}", err.message);
        }
    }

    #[test]
    fn an_idle_timeout_of_zero_means_never() {
        let text = example().replacen("connectTimeout: 1s,", "connectTimeout: 1s, idleTimeout: 0s,", 1);
        assert_ne!(text, example());
        let snapshot = Snapshot::compile(parse(&text).unwrap(), 1, None).unwrap();
        let name = "outbound|9080|v1|reviews.shop.svc.cluster.local";
        assert_eq!(snapshot.clusters[name].idle_timeout, Some(NO_IDLE_TIMEOUT));
        assert_eq!(snapshot.clusters[name].connections.idle_timeout, NO_IDLE_TIMEOUT);
    }

    #[test]
    fn unchanged_clusters_keep_their_state_across_reloads() {
        let first = Snapshot::compile(parse(&example()).unwrap(), 1, None).unwrap();
        let second = Snapshot::compile(parse(&example()).unwrap(), 2, Some(&first)).unwrap();
        let name = "outbound|9080|v1|reviews.shop.svc.cluster.local";
        assert!(Arc::ptr_eq(&first.clusters[name], &second.clusters[name]));
        let changed = example().replace("maxConnections: 100", "maxConnections: 5");
        let third = Snapshot::compile(parse(&changed).unwrap(), 3, Some(&second)).unwrap();
        assert!(!Arc::ptr_eq(&second.clusters[name], &third.clusters[name]));
        let budget = |s: &Snapshot| s.clusters[name].retry_budget.clone().expect("the example has a budget");
        assert!(
            Arc::ptr_eq(&budget(&second), &budget(&third)),
            "the same budget settings: what it counted stays"
        );
        let retuned = changed.replace("retryRatio: 0.2", "retryRatio: 0.1");
        let fourth = Snapshot::compile(parse(&retuned).unwrap(), 4, Some(&third)).unwrap();
        assert!(!Arc::ptr_eq(&budget(&third), &budget(&fourth)));
        assert_eq!(budget(&fourth).policy.retry_ratio, 0.1);
        assert_eq!(third.clusters[name].retry_limit.in_flight(), 0);
    }

    #[test]
    fn mistakes_name_their_field() {
        for (edit, field, words) in [
            (
                ("cluster: outbound|9080|v2|reviews", "cluster: outbound|9080|v3|reviews"),
                "virtual_hosts[0].routes[0].forward.clusters[0].cluster",
                "no cluster",
            ),
            (
                ("address: 10.244.1.5", "address: ten"),
                "endpoints[0].endpoints[0].address",
                "not an IP address",
            ),
            (
                ("port: 9080\n        protocol", "port: 90800\n        protocol"),
                "services[0].ports[0].port",
                "not a port",
            ),
            (
                ("value: { exact: jason }", "value: { regex: \"(\" }"),
                "virtual_hosts[0].routes[0].matches[0].headers[0].value",
                "invalid regex",
            ),
            (
                ("retryOn: [connect-failure", "retryOn: [sometimes"),
                "virtual_hosts[0].routes[2].retries.retry_on",
                "unknown condition",
            ),
            (
                ("responseCode: 301", "responseCode: 200"),
                "virtual_hosts[0].routes[1].redirect.response_code",
                "not a redirect",
            ),
            (("opaquePorts: [3306]", "opaquePorts: [3306, 70000]"), "opaque_ports[1]", "70000 is not a port"),
            (("retryRatio: 0.2", "retryRatio: -1"), "clusters[0].retry_budget.retry_ratio", "not a ratio"),
            (("ttl: 10s", "ttl: 0.5s"), "clusters[0].retry_budget.ttl", "not between 1s and 60s"),
            (
                (
                    "tcpCluster: outbound|3306||mysql.shop.svc.cluster.local",
                    "tcpClusters: [{ cluster: outbound|3306||mysql.shop.svc.cluster.local, weight: 50 }, { cluster: nope, weight: 50 }]",
                ),
                "services[1].ports[0].tcp_clusters[1].cluster",
                "no cluster \"nope\"",
            ),
            (
                (
                    "tcpCluster: outbound|3306||mysql.shop.svc.cluster.local",
                    "tcpClusters: [{ cluster: outbound|3306||mysql.shop.svc.cluster.local }, { cluster: outbound|3306||mysql.shop.svc.cluster.local }]",
                ),
                "services[1].ports[0].tcp_clusters",
                "the weights add up to 0",
            ),
            (
                ("connectTimeout: 1s,", "connectTimeout: 1s, tcpKeepalive: { probes: 128 },"),
                "clusters[0].connection_pool.tcp_keepalive.probes",
                "more than 127",
            ),
            (
                ("connectTimeout: 1s,", "connectTimeout: 1s, tcpKeepalive: { time: 40000s },"),
                "clusters[0].connection_pool.tcp_keepalive.time",
                "more than 32767s",
            ),
            (
                ("connectTimeout: 1s,", "connectTimeout: 1s, tcpKeepalive: { interval: 0.5s },"),
                "clusters[0].connection_pool.tcp_keepalive.interval",
                "less than the 1s",
            ),
            (
                ("connectTimeout: 1s,", "connectTimeout: 1s, maxConnectionDuration: -1s,"),
                "clusters[0].connection_pool.max_connection_duration",
                "negative",
            ),
            (
                (
                    "retryOn: [connect-failure",
                    "retriableStatusCodes: [503, 700]\n          retryOn: [connect-failure",
                ),
                "virtual_hosts[0].routes[2].retries.retriable_status_codes[1]",
                "700 is not an HTTP status",
            ),
            (
                ("uri: /reviews, responseCode", "uri: /re views, responseCode"),
                "virtual_hosts[0].routes[1].redirect.uri",
                "\"/re views\" is not a path",
            ),
            (
                ("uri: /reviews, responseCode", "uri: reviews, responseCode"),
                "virtual_hosts[0].routes[1].redirect.uri",
                "is not a path starting with /",
            ),
            (
                ("redirect: { uri: /reviews,", "redirect: { authority: \"a b\", uri: /reviews,"),
                "virtual_hosts[0].routes[1].redirect.authority",
                "\"a b\" is not a host",
            ),
            (
                ("redirect: { uri: /reviews,", "redirect: { scheme: \"ht tp\", uri: /reviews,"),
                "virtual_hosts[0].routes[1].redirect.scheme",
                "is not a URI scheme",
            ),
            (
                (
                    "redirect: { uri: /reviews, responseCode: 301 }",
                    "rewrite: { uri: \"/a b\" }\n        forward: { clusters: [{ cluster: outbound|9080|v1|reviews.shop.svc.cluster.local }] }",
                ),
                "virtual_hosts[0].routes[1].rewrite.uri",
                "is not a path",
            ),
            (
                (
                    "redirect: { uri: /reviews, responseCode: 301 }",
                    "rewrite: { authority: \"x/y\" }\n        forward: { clusters: [{ cluster: outbound|9080|v1|reviews.shop.svc.cluster.local }] }",
                ),
                "virtual_hosts[0].routes[1].rewrite.authority",
                "is not a host",
            ),
        ] {
            let text = example().replacen(edit.0, edit.1, 1);
            assert_ne!(text, example(), "{field}: the edit did not apply");
            let result = parse(&text).and_then(|c| Snapshot::compile(c, 1, None));
            let e = result.err().unwrap_or_else(|| panic!("{field}: accepted"));
            assert_eq!(e.field, field, "{e}");
            assert!(e.message.contains(words), "{e}");
        }
    }

    /// Over xDS (protobuf), an enum value this proxy does not know arrives as a number; the
    /// file's JSON mapping refuses it before this.
    #[test]
    fn an_unknown_outbound_policy_is_refused_not_opened() {
        let mut config = parse(&example()).expect("the example parses");
        config.outbound_policy = 7;
        let e = Snapshot::compile(config, 1, None).err().expect("refused");
        assert_eq!(
            (e.field.as_str(), e.message.as_str()),
            ("outbound_policy", "7 is not a policy this proxy knows")
        );
    }

    #[test]
    fn malformed_files_are_refused_with_a_reason() {
        for (text, field, words) in [
            ("services: {", "(file)", "line 1"),
            ("a: 1\nb: [\n", "(file)", "line"),
            ("clusters: 3", "clusters", "sequence"),
            ("services: []\nunknownField: 1", "unknownField", "unknown field"),
            ("outboundPolicy: SOMETIMES", "outboundPolicy", "SOMETIMES"),
            (
                "virtualHosts: [{ name: a, routes: [{ name: r, timeout: soon }] }]",
                "virtualHosts[0].routes[0].timeout",
                "suffix",
            ),
            (
                "endpoints: [{ service: a, endpoints: [{ address: 10.0.0.1, port: -3 }] }]",
                "endpoints[0].endpoints[0].port",
                "value: -3",
            ),
        ] {
            let e = parse(text).expect_err(text);
            assert_eq!(e.field, field, "{text}: {e}");
            assert!(e.message.contains(words), "{text}: {e}");
        }
        assert!(parse(&"#".repeat(MAX_CONFIG_BYTES + 1)).is_err());
        assert_eq!(parse("").unwrap(), pb::ProxyConfig::default());
    }

    #[test]
    fn authorities_split_like_urls() {
        assert_eq!(split_authority("a:80", 1), Some(("a", 80)));
        assert_eq!(split_authority("a", 8080), Some(("a", 8080)));
        assert_eq!(split_authority("[fd00::1]:443", 1), Some(("fd00::1", 443)));
        assert_eq!(split_authority("[fd00::1]", 9), Some(("fd00::1", 9)));
        assert_eq!(split_authority("a:port", 1), None);
        assert_eq!(split_authority("[fd00::1", 1), None);
        assert_eq!(split_authority("a:+80", 1), None);
        assert_eq!(split_authority("a:", 1), None);
        assert_eq!(split_authority("a:65536", 1), None);
        assert_eq!(split_authority("[fd00::1]:+1", 1), None);
        assert_eq!(split_authority("fd00::1", 7), Some(("fd00::1", 7)));
    }
}

#[cfg(test)]
mod truncation {
    use super::*;

    /// A file read while it is being written is cut anywhere: every prefix must be an error or a
    /// configuration, never a panic.
    #[test]
    fn every_prefix_of_a_file_parses_or_fails_cleanly() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/proxy/config.yaml"))
                .unwrap();
        for end in (0..text.len()).filter(|i| text.is_char_boundary(*i)) {
            let _ = parse(&text[..end]).and_then(|c| Snapshot::compile(c, 1, None));
        }
    }
}

#[cfg(test)]
mod durations {
    use super::*;

    #[test]
    fn zero_means_unset_and_absurd_lengths_are_refused() {
        let zero = pbjson_types::Duration { seconds: 0, nanos: 0 };
        assert_eq!(duration(Some(&zero), "timeout"), Ok(None));
        let half = pbjson_types::Duration { seconds: 0, nanos: 500_000_000 };
        assert_eq!(duration(Some(&half), "timeout"), Ok(Some(Duration::from_millis(500))));
        let century = pbjson_types::Duration { seconds: 100 * 365 * 24 * 3600, nanos: 0 };
        assert!(duration(Some(&century), "timeout").unwrap_err().message.contains("more than a year"));
        let negative = pbjson_types::Duration { seconds: -1, nanos: 0 };
        assert!(duration(Some(&negative), "timeout").is_err());
    }
}
