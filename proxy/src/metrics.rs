//! Istio's standard metrics, same names and labels (in Istio's order), so existing dashboards,
//! alerts and Kiali work. Served on 15090 at /stats/prometheus.
//!
//! Each series names both sides of the exchange: this proxy's own workload (from its
//! environment, as the injector sets it) and its peer's (from the workload table, see
//! [`crate::peers`]), with the principals mutual TLS proved.

use std::sync::{Arc, RwLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::FastMap;
use crate::peers::{PeerKey, UNKNOWN, WorkloadLabels, namespace_of};

/// Who this proxy is, from the environment the injector sets.
#[derive(Clone, Debug)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
}

impl Workload {
    pub fn from_env() -> Workload {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Workload {
            name: var("ISTIO_META_WORKLOAD_NAME").unwrap_or_else(|| "unknown".to_owned()),
            namespace: var("POD_NAMESPACE").unwrap_or_else(|| "unknown".to_owned()),
        }
    }

    /// Its labels as Istio's telemetry names them, from the pod's labels (app, version,
    /// canonical service and revision, defaulted as Istio does) and the cluster id.
    pub fn labels(
        &self,
        pod_labels: &std::collections::BTreeMap<String, String>,
        cluster: &str,
    ) -> WorkloadLabels {
        use trellis_api::workload as w;
        let value = |v: Option<&str>| -> Arc<str> { v.filter(|v| !v.is_empty()).unwrap_or(UNKNOWN).into() };
        WorkloadLabels {
            workload: value(Some(&self.name)),
            namespace: value(Some(&self.namespace)),
            app: value(w::app(pod_labels)),
            version: value(w::version(pod_labels)),
            canonical_service: w::canonical_service(pod_labels, &self.name).into(),
            canonical_revision: w::canonical_revision(pod_labels).into(),
            cluster: value(Some(cluster)),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reporter {
    /// The client's proxy (outbound).
    Source,
    /// The server's proxy (inbound).
    Destination,
}

/// Who talked to whom: the labels every Istio metric starts with, in the order Istio's
/// stats filter writes them.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Peers {
    pub reporter: &'static str,
    pub source_workload: Arc<str>,
    pub source_canonical_service: Arc<str>,
    pub source_canonical_revision: Arc<str>,
    pub source_workload_namespace: Arc<str>,
    pub source_principal: Arc<str>,
    pub source_app: Arc<str>,
    pub source_version: Arc<str>,
    pub source_cluster: Arc<str>,
    pub destination_workload: Arc<str>,
    pub destination_workload_namespace: Arc<str>,
    pub destination_principal: Arc<str>,
    pub destination_app: Arc<str>,
    pub destination_version: Arc<str>,
    pub destination_service: Arc<str>,
    pub destination_canonical_service: Arc<str>,
    pub destination_canonical_revision: Arc<str>,
    pub destination_service_name: Arc<str>,
    pub destination_service_namespace: Arc<str>,
    pub destination_cluster: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    #[prometheus(flatten)]
    pub peers: Peers,
    pub request_protocol: &'static str,
    pub response_code: u16,
    /// The gRPC status (from the trailers, or the headers of a trailers-only response); empty
    /// for other requests, as in Istio.
    pub grpc_response_status: &'static str,
    pub response_flags: &'static str,
    pub connection_security_policy: &'static str,
}

/// The TCP metrics' labels: Istio's, `request_protocol="tcp"`, without the HTTP ones.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    #[prometheus(flatten)]
    pub peers: Peers,
    pub request_protocol: &'static str,
    pub response_flags: &'static str,
    pub connection_security_policy: &'static str,
}

/// How a request or connection was secured, as the metrics label it.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct Security {
    pub mutual_tls: bool,
    /// The other side's SPIFFE ID, when mutual TLS proved it.
    pub peer: Option<Arc<str>>,
}

fn byte_histogram() -> Histogram {
    Histogram::new([1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0, 1_000_000.0, 10_000_000.0])
}

fn duration_histogram() -> Histogram {
    // Istio's buckets, in milliseconds.
    Histogram::new([
        0.5,
        1.0,
        5.0,
        10.0,
        25.0,
        50.0,
        100.0,
        250.0,
        500.0,
        1_000.0,
        2_500.0,
        5_000.0,
        10_000.0,
        30_000.0,
        60_000.0,
        300_000.0,
        600_000.0,
        1_800_000.0,
        3_600_000.0,
    ])
}

/// The four request series of one label set, looked up once per request.
struct RequestSeries {
    requests: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

/// What, besides the service, tells request series apart.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct SeriesKey {
    security: Security,
    /// The other side's workload: an `Arc`'d label set, hashed once when it was made.
    peer: PeerKey,
    source_side: bool,
    grpc: bool,
    status: u16,
    grpc_status: &'static str,
    flags: &'static str,
}

/// The label value of a `grpc-status`: the codes gRPC defines (0 to 16) as themselves, anything
/// else as "unknown", so that a misbehaving server cannot mint label values.
pub fn grpc_status_label(value: &[u8]) -> &'static str {
    const CODES: [&str; 17] =
        ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16"];
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .and_then(|code| CODES.get(code).copied())
        .unwrap_or("unknown")
}

type SeriesByService = FastMap<Arc<str>, FastMap<SeriesKey, Arc<RequestSeries>>>;

pub struct Metrics {
    registry: Registry,
    pub workload: Workload,
    /// This proxy's own side of every series.
    local: Arc<WorkloadLabels>,
    /// By service, then the rest: the hot path finds its series without building label strings.
    series: RwLock<SeriesByService>,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RequestLabels, Histogram>,
    request_bytes: Family<RequestLabels, Histogram>,
    response_bytes: Family<RequestLabels, Histogram>,
    tcp_sent: Family<TcpLabels, Counter>,
    tcp_received: Family<TcpLabels, Counter>,
    tcp_opened: Family<TcpLabels, Counter>,
    tcp_closed: Family<TcpLabels, Counter>,
    inbound_refused: Family<RefusalLabels, Counter>,
    authz: Family<AuthzLabels, Counter>,
    outlier_ejections: Family<OutlierLabels, Counter>,
    outlier_overflows: Family<OutlierLabels, Counter>,
    retries_refused: Family<RetryRefusalLabels, Counter>,
    mirrored: Family<MirrorLabels, Counter>,
    rate_limited: Family<RateLimitLabels, Counter>,
    trace_spans: Family<crate::trace::SpanLabels, Counter>,
    mesh: std::sync::OnceLock<Arc<trellis_identity::tls::MeshTls>>,
    /// Set when scraped, from the certificate held then.
    cert_expiry: prometheus_client::metrics::gauge::Gauge,
    csr_failures: prometheus_client::metrics::counter::Counter<u64, std::sync::atomic::AtomicU64>,
    csr_sync: std::sync::Mutex<()>,
    /// Access log lines dropped because the writer's buffer was full (or the file failed).
    pub access_log_dropped: Counter,
    /// The Telemetry API's metric overrides, read when a series is made (`metrics_overrides`).
    overrides: arc_swap::ArcSwapOption<crate::metrics_overrides::MetricOverrides>,
}

/// `connection_security_policy`: `mutual_tls` or `none`, as Istio's destination reporter says.
/// Istio's source reporter always says `unknown`; Trellis's client knows how it reached the
/// endpoint and says so too (`trellis demo` shows each edge's security from the caller's side).
fn policy_label(security: &Security) -> &'static str {
    if security.mutual_tls { "mutual_tls" } else { "none" }
}

/// `destination_service_name`: a Kubernetes service's name (`reviews` of
/// `reviews.shop.svc.cluster.local`), else the host itself (a ServiceEntry's, or Istio's
/// `PassthroughCluster` and `BlackHoleCluster`), as Istio's service metadata names them.
fn service_name(service: &Arc<str>) -> Arc<str> {
    let mut labels = service.split('.');
    match (labels.next(), labels.next(), labels.next()) {
        (Some(name), Some(_namespace), Some("svc")) => name.into(),
        _ => service.clone(),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub reason: &'static str,
}

/// An authorization outcome worth counting: what was decided, by which policy and rule
/// (`none` and empty when no ALLOW policy matched), on HTTP or TCP.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthzLabels {
    /// `deny`, `audit`, `custom_deny`, `dry_run_allow` or `dry_run_deny`.
    pub decision: &'static str,
    pub policy: Arc<str>,
    pub rule: String,
    pub protocol: &'static str,
}

/// An outlier detection event: the cluster, and which counter reached its threshold.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutlierLabels {
    pub cluster_name: String,
    pub reason: &'static str,
}

/// A retry not made: the cluster, and what refused it (`retry_budget` or `max_retries`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryRefusalLabels {
    pub cluster_name: String,
    pub reason: &'static str,
}

/// A mirrored copy: the mirror cluster, and how the copy ended (`answered`, `failed`,
/// `dropped_in_flight`, `dropped_body`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MirrorLabels {
    pub cluster_name: String,
    pub result: &'static str,
}

/// A request over a rate limit: the inbound service, which limit (`local`, `global`), and
/// whether it was refused (`enforced="true"`) or only counted.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RateLimitLabels {
    pub destination_service: String,
    pub limit: &'static str,
    pub enforced: &'static str,
}

/// One finished HTTP request, as the metrics see it.
pub struct RequestRecord<'a> {
    pub reporter: Reporter,
    pub service: &'a Arc<str>,
    /// The other side's workload (see [`crate::peers`]).
    pub peer: PeerKey,
    pub grpc: bool,
    pub status: u16,
    /// `grpc_status_label` of the response's `grpc-status`; "" when it has none.
    pub grpc_status: &'static str,
    pub flags: &'static str,
    pub millis: f64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub security: Security,
}

impl Metrics {
    /// With this proxy's own labels defaulted from its name alone (no pod labels, Istio's
    /// default cluster id).
    pub fn new(workload: Workload) -> Metrics {
        let local = workload.labels(&Default::default(), trellis_api::workload::DEFAULT_CLUSTER_ID);
        Metrics::with_labels(workload, local)
    }

    /// With this proxy's own labels as given (see [`Workload::labels`]).
    pub fn with_labels(workload: Workload, local: WorkloadLabels) -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let duration =
            Family::<RequestLabels, Histogram>::new_with_constructor(duration_histogram as fn() -> Histogram);
        let request_bytes =
            Family::<RequestLabels, Histogram>::new_with_constructor(byte_histogram as fn() -> Histogram);
        let response_bytes =
            Family::<RequestLabels, Histogram>::new_with_constructor(byte_histogram as fn() -> Histogram);
        let (tcp_sent, tcp_received, tcp_opened, tcp_closed) =
            (Family::default(), Family::default(), Family::default(), Family::default());
        registry.register("istio_requests", "Requests", requests.clone());
        registry.register("istio_request_duration_milliseconds", "Request duration", duration.clone());
        registry.register("istio_request_bytes", "Request body sizes", request_bytes.clone());
        registry.register("istio_response_bytes", "Response body sizes", response_bytes.clone());
        registry.register("istio_tcp_sent_bytes", "Bytes sent to the destination", tcp_sent.clone());
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received from the destination",
            tcp_received.clone(),
        );
        registry.register("istio_tcp_connections_opened", "TCP connections opened", tcp_opened.clone());
        registry.register("istio_tcp_connections_closed", "TCP connections closed", tcp_closed.clone());
        let inbound_refused = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "trellis_inbound_connections_refused",
            "Inbound connections closed by PeerAuthentication (plaintext under STRICT) or a failed mutual TLS handshake",
            inbound_refused.clone(),
        );
        let authz = Family::<AuthzLabels, Counter>::default();
        registry.register(
            "trellis_authz_decisions",
            "Requests and connections denied by AuthorizationPolicy (with the policy and rule that decided), matched by AUDIT rules, and what dry-run policies would have decided",
            authz.clone(),
        );
        let outlier_ejections = Family::<OutlierLabels, Counter>::default();
        registry.register(
            "trellis_outlier_ejections",
            "Endpoints ejected by outlier detection, by cluster and by the consecutive-error counter that reached its threshold",
            outlier_ejections.clone(),
        );
        let outlier_overflows = Family::<OutlierLabels, Counter>::default();
        registry.register(
            "trellis_outlier_ejections_overflow",
            "Ejections outlier detection decided but maxEjectionPercent refused",
            outlier_overflows.clone(),
        );
        let retries_refused = Family::<RetryRefusalLabels, Counter>::default();
        registry.register(
            "trellis_retries_refused",
            "Retries a route's policy asked for but the cluster's retry budget or maxRetries refused (the last answer stood)",
            retries_refused.clone(),
        );
        let mirrored = Family::<MirrorLabels, Counter>::default();
        registry.register(
            "trellis_mirrored_requests",
            "Copies of requests for mirror clusters: answered, failed (no answer in time), or not sent (too many in flight, or a body that cannot be copied)",
            mirrored.clone(),
        );
        let rate_limited = Family::<RateLimitLabels, Counter>::default();
        registry.register(
            "trellis_rate_limited_requests",
            "Inbound requests over a rate limit (an EnvoyFilter's local_ratelimit or ratelimit): refused (enforced=true) or only counted",
            rate_limited.clone(),
        );
        let trace_spans = Family::<crate::trace::SpanLabels, Counter>::default();
        registry.register(
            "trellis_trace_spans",
            "Sampled spans by tracing provider: exported, or dropped because the export queue was full (a slow or absent collector) or the export failed",
            trace_spans.clone(),
        );
        let access_log_dropped = Counter::default();
        registry.register(
            "trellis_access_log_dropped",
            "Access log lines not written: the writer's buffer was full (a slow, blocked or unread log file) or the write failed",
            access_log_dropped.clone(),
        );
        let cert_expiry = prometheus_client::metrics::gauge::Gauge::default();
        registry.register(
            "trellis_workload_certificate_expiration_timestamp_seconds",
            "When the workload certificate expires (Unix time); 0 without one",
            cert_expiry.clone(),
        );
        let csr_failures =
            prometheus_client::metrics::counter::Counter::<u64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "trellis_workload_certificate_request_failures",
            "Certificate requests to the CA that failed; the proxy keeps its valid certificate and retries",
            csr_failures.clone(),
        );
        Metrics {
            registry,
            workload,
            local: Arc::new(local),
            series: RwLock::default(),
            requests,
            duration,
            request_bytes,
            response_bytes,
            tcp_sent,
            tcp_received,
            tcp_opened,
            tcp_closed,
            inbound_refused,
            authz,
            outlier_ejections,
            outlier_overflows,
            retries_refused,
            mirrored,
            rate_limited,
            trace_spans,
            mesh: std::sync::OnceLock::new(),
            cert_expiry,
            csr_failures,
            access_log_dropped,
            csr_sync: std::sync::Mutex::new(()),
            overrides: arc_swap::ArcSwapOption::empty(),
        }
    }

    /// Takes the metric overrides of a new configuration. When they change, the series made so
    /// far are forgotten by the hot path, so that new requests make series under the new rules
    /// (those already rendered keep their counts).
    pub fn follow_overrides(&self, config: &trellis_xds::config::ProxyConfig) {
        use crate::metrics_overrides::MetricOverrides;
        let next = MetricOverrides::from_pb(config.metrics_overrides.as_ref());
        if self.overrides.load().as_deref() == next.as_ref() {
            return;
        }
        self.overrides.store(next.map(Arc::new));
        if let Ok(mut series) = self.series.write() {
            series.clear();
        }
    }

    pub fn inbound_refused(&self, reason: &'static str) {
        self.inbound_refused.get_or_create(&RefusalLabels { reason }).inc();
    }

    /// An ejection made or refused by outlier detection.
    pub fn outlier(&self, cluster: &str, verdict: crate::outlier::Verdict) {
        let (family, reason) = match verdict {
            crate::outlier::Verdict::Ejected(reason) => (&self.outlier_ejections, reason),
            crate::outlier::Verdict::Overflow(reason) => (&self.outlier_overflows, reason),
        };
        family
            .get_or_create(&OutlierLabels { cluster_name: cluster.to_owned(), reason: reason.label() })
            .inc();
    }

    /// A retry the cluster's retry budget or `maxRetries` refused.
    pub fn retry_refused(&self, cluster: &str, refused: crate::retry_budget::Refused) {
        let labels = RetryRefusalLabels { cluster_name: cluster.to_owned(), reason: refused.label() };
        self.retries_refused.get_or_create(&labels).inc();
    }

    /// A request over a rate limit.
    pub fn rate_limited(&self, service: &str, limit: &'static str, enforced: bool) {
        let labels = RateLimitLabels {
            destination_service: service.to_owned(),
            limit,
            enforced: if enforced { "true" } else { "false" },
        };
        self.rate_limited.get_or_create(&labels).inc();
    }

    /// Spans of a tracing provider, by what became of them.
    pub fn trace_spans(&self, provider: &str, result: &'static str, count: u64) {
        let labels = crate::trace::SpanLabels { provider: provider.to_owned(), result };
        self.trace_spans.get_or_create(&labels).inc_by(count);
    }

    /// A mirrored copy, by how it ended.
    pub fn mirrored(&self, cluster: &str, result: crate::mirror::Mirrored) {
        let labels = MirrorLabels { cluster_name: cluster.to_owned(), result: result.label() };
        self.mirrored.get_or_create(&labels).inc();
    }

    pub fn authz(&self, labels: &AuthzLabels) {
        self.authz.get_or_create(labels).inc();
    }

    /// This proxy's own labels.
    pub fn local(&self) -> &Arc<WorkloadLabels> {
        &self.local
    }

    /// Both sides of an exchange reported by `reporter` for `service`: this workload on its
    /// side, `peer` on the other, principals as mutual TLS proved them (`unknown` without).
    /// As Istio's, the peer's namespace is the one its proven identity names, and on the
    /// source side `destination_service_namespace` is the peer's.
    fn peers(
        &self,
        reporter: Reporter,
        service: &Arc<str>,
        peer: &WorkloadLabels,
        security: &Security,
    ) -> Peers {
        let unknown = || -> Arc<str> { UNKNOWN.into() };
        let (own_principal, peer_principal): (Arc<str>, Arc<str>) = if security.mutual_tls {
            let own = self.mesh.get().and_then(|m| m.current()).map(|c| c.leaf.id.to_string().into());
            (own.unwrap_or_else(unknown), security.peer.clone().unwrap_or_else(unknown))
        } else {
            (unknown(), unknown())
        };
        let peer_namespace: Arc<str> = security
            .peer
            .as_deref()
            .filter(|_| security.mutual_tls)
            .and_then(namespace_of)
            .map_or_else(|| peer.namespace.clone(), Into::into);
        let me = &*self.local;
        let (
            source,
            source_namespace,
            source_principal,
            destination,
            destination_namespace,
            destination_principal,
        ) = match reporter {
            Reporter::Source => {
                (me, me.namespace.clone(), own_principal, peer, peer_namespace, peer_principal)
            }
            Reporter::Destination => {
                (peer, peer_namespace, peer_principal, me, me.namespace.clone(), own_principal)
            }
        };
        Peers {
            reporter: match reporter {
                Reporter::Source => "source",
                Reporter::Destination => "destination",
            },
            source_workload: source.workload.clone(),
            source_canonical_service: source.canonical_service.clone(),
            source_canonical_revision: source.canonical_revision.clone(),
            source_workload_namespace: source_namespace,
            source_principal,
            source_app: source.app.clone(),
            source_version: source.version.clone(),
            source_cluster: source.cluster.clone(),
            destination_workload: destination.workload.clone(),
            destination_service_namespace: destination_namespace.clone(),
            destination_workload_namespace: destination_namespace,
            destination_principal,
            destination_app: destination.app.clone(),
            destination_version: destination.version.clone(),
            destination_service: service.clone(),
            destination_canonical_service: destination.canonical_service.clone(),
            destination_canonical_revision: destination.canonical_revision.clone(),
            destination_service_name: service_name(service),
            destination_cluster: destination.cluster.clone(),
        }
    }

    pub fn request(&self, mut r: RequestRecord<'_>) {
        let key = SeriesKey {
            security: std::mem::take(&mut r.security),
            peer: r.peer.clone(),
            source_side: r.reporter == Reporter::Source,
            grpc: r.grpc,
            status: r.status,
            grpc_status: r.grpc_status,
            flags: r.flags,
        };
        let found =
            self.series.read().ok().and_then(|m| m.get(&**r.service).and_then(|by| by.get(&key)).cloned());
        let series = match found {
            Some(s) => s,
            None => self.create_series(&r, key),
        };
        series.requests.inc();
        series.duration.observe(r.millis);
        series.request_bytes.observe(r.request_bytes as f64);
        series.response_bytes.observe(r.response_bytes as f64);
    }

    fn create_series(&self, r: &RequestRecord<'_>, key: SeriesKey) -> Arc<RequestSeries> {
        let labels = RequestLabels {
            peers: self.peers(r.reporter, r.service, &key.peer.labels, &key.security),
            request_protocol: if r.grpc { "grpc" } else { "http" },
            response_code: r.status,
            grpc_response_status: r.grpc_status,
            response_flags: r.flags,
            connection_security_policy: policy_label(&key.security),
        };
        let series = match self.overrides.load_full() {
            None => Arc::new(RequestSeries {
                requests: self.requests.get_or_create(&labels).clone(),
                duration: self.duration.get_or_create(&labels).clone(),
                request_bytes: self.request_bytes.get_or_create(&labels).clone(),
                response_bytes: self.response_bytes.get_or_create(&labels).clone(),
            }),
            Some(overrides) => {
                // A metric turned off counts into a handle no family holds: never rendered.
                use crate::metrics_overrides::StandardMetric as M;
                let histogram =
                    |family: &Family<RequestLabels, Histogram>, metric, fresh: fn() -> Histogram| {
                        overrides
                            .request_labels(metric, &labels)
                            .map_or_else(fresh, |l| family.get_or_create(&l).clone())
                    };
                Arc::new(RequestSeries {
                    requests: overrides
                        .request_labels(M::RequestCount, &labels)
                        .map_or_else(Counter::default, |l| self.requests.get_or_create(&l).clone()),
                    duration: histogram(&self.duration, M::RequestDuration, duration_histogram),
                    request_bytes: histogram(&self.request_bytes, M::RequestSize, byte_histogram),
                    response_bytes: histogram(&self.response_bytes, M::ResponseSize, byte_histogram),
                })
            }
        };
        if let Ok(mut map) = self.series.write() {
            map.entry(r.service.clone()).or_default().entry(key).or_insert_with(|| series.clone());
        }
        series
    }

    /// The labels of one TCP connection (made once per connection).
    pub fn tcp_labels(
        &self,
        reporter: Reporter,
        service: &Arc<str>,
        flags: &'static str,
        security: &Security,
        peer: &PeerKey,
    ) -> TcpLabels {
        TcpLabels {
            peers: self.peers(reporter, service, &peer.labels, security),
            request_protocol: "tcp",
            response_flags: flags,
            connection_security_policy: policy_label(security),
        }
    }

    /// Set once the proxy has a mesh identity: its own principal for the labels.
    pub fn set_mesh_tls(&self, mesh: Arc<trellis_identity::tls::MeshTls>) {
        let _ = self.mesh.set(mesh);
    }

    pub fn tcp_opened(&self, labels: &TcpLabels) {
        use crate::metrics_overrides::StandardMetric as M;
        match self.overrides.load().as_deref() {
            None => {
                self.tcp_opened.get_or_create(labels).inc();
            }
            Some(o) => {
                if let Some(l) = o.tcp_labels(M::TcpOpened, labels) {
                    self.tcp_opened.get_or_create(&l).inc();
                }
            }
        }
    }

    pub fn tcp_closed(&self, labels: &TcpLabels, sent: u64, received: u64) {
        use crate::metrics_overrides::StandardMetric as M;
        let Some(o) = self.overrides.load_full() else {
            self.tcp_sent.get_or_create(labels).inc_by(sent);
            self.tcp_received.get_or_create(labels).inc_by(received);
            self.tcp_closed.get_or_create(labels).inc();
            return;
        };
        // Applied once per connection, when its series are looked up.
        if let Some(l) = o.tcp_labels(M::TcpSent, labels) {
            self.tcp_sent.get_or_create(&l).inc_by(sent);
        }
        if let Some(l) = o.tcp_labels(M::TcpReceived, labels) {
            self.tcp_received.get_or_create(&l).inc_by(received);
        }
        if let Some(l) = o.tcp_labels(M::TcpClosed, labels) {
            self.tcp_closed.get_or_create(&l).inc();
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let expiry = self.mesh.get().and_then(|m| m.current()).map_or(0, |c| {
            c.leaf.not_after.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
        });
        self.cert_expiry.set(expiry);
        // The count lives in the identity crate; bring this counter up to it (one scrape at a
        // time, so that two do not both add the difference).
        if let (Some(mesh), Ok(_one)) = (self.mesh.get(), self.csr_sync.lock()) {
            let behind = mesh.failed_requests().saturating_sub(self.csr_failures.get());
            self.csr_failures.inc_by(behind);
        }
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::grpc_status_label;

    #[test]
    fn service_names_are_a_kubernetes_services_name_else_the_host() {
        let name = |host: &str| super::service_name(&host.into()).to_string();
        assert_eq!(name("reviews.shop.svc.cluster.local"), "reviews");
        assert_eq!(name("reviews.shop.svc.corp.example"), "reviews");
        // A ServiceEntry's host, Istio's passthrough names and a canonical service stay whole.
        for whole in ["api.example.com", "db.shop.internal", "PassthroughCluster", "BlackHoleCluster", "web"]
        {
            assert_eq!(name(whole), whole);
        }
    }

    #[test]
    fn grpc_status_labels_are_the_defined_codes_or_unknown() {
        assert_eq!(grpc_status_label(b"0"), "0");
        assert_eq!(grpc_status_label(b"16"), "16");
        // A server cannot make up label values: every other value is one label.
        for hostile in [&b"17"[..], b"-1", b"", b"abc", b"0x1", b" 5", b"99999999999999999999999", b"\xff"] {
            assert_eq!(grpc_status_label(hostile), "unknown", "{hostile:?}");
        }
    }
}
