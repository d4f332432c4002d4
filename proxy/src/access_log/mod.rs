//! Access logs, as Istio's sidecars write them: one line per HTTP request (when its response
//! has been sent or abandoned) and per TCP connection (when it closes), in Envoy's format
//! language (TEXT or JSON), optionally filtered by a CEL expression, appended to a file by a
//! writer thread of its own (`sink`). The config's `access_logs` compile to [`AccessLogs`]; the
//! request path asks [`Switch::is_on`] (one load and a branch) and does nothing more when no
//! log is configured.
//!
//! A request's line is built from three moments: `capture` (the request as it came in, before
//! routing changes it), `HttpEntry::answered` (what answered it: status, flags, details,
//! upstream) and `HttpEntry::finish` (bytes and duration, when the body is done).

pub mod render;
pub mod sink;
mod template;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{Request, Response};
use trellis_api::access_log::cel::{self, Activation, Attribute, Filter, Headers};
use trellis_api::access_log::format;
use trellis_xds::config as pb;

use crate::config::ConfigError;
use crate::serve::Conn;
use crate::{Proxy, Side};

pub use render::{Captured, Facts, RequestFacts};
pub use sink::Sink;
use template::{JsonField, Registry, Template};

/// Whether the configuration in force has access logs: read on every request, so a plain flag.
#[derive(Debug, Default)]
pub struct Switch(AtomicBool);

impl Switch {
    #[inline]
    pub fn is_on(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Follows the snapshot about to be put in force; its sinks count drops in `metrics`.
    pub fn follow(&self, snapshot: &crate::config::Snapshot, metrics: &crate::metrics::Metrics) {
        if let Some(logs) = &snapshot.access_logs {
            for log in &logs.logs {
                log.sink.count_drops_in(&metrics.access_log_dropped);
            }
        }
        self.0.store(snapshot.access_logs.is_some(), Ordering::Relaxed);
    }
}

/// The compiled access logs of one configuration.
pub struct AccessLogs {
    logs: Vec<Log>,
    /// The headers some format or filter reads by name, each at its slot.
    names: Registry,
    /// A filter reads all the request's (response's) headers: they are all kept.
    all_request_headers: bool,
    all_response_headers: bool,
}

impl std::fmt::Debug for AccessLogs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLogs")
            .field("paths", &self.logs.iter().map(|l| &l.sink.path).collect::<Vec<_>>())
            .finish()
    }
}

struct Log {
    shape: Shape,
    filter: Option<Filter>,
    sink: Arc<Sink>,
}

enum Shape {
    Text(Template),
    Json(Vec<JsonField>),
}

fn err(field: String, message: impl Into<String>) -> ConfigError {
    ConfigError { field, message: message.into() }
}

impl AccessLogs {
    /// Compiles the config's access logs; `None` when there are none. A sink (and its writer
    /// thread) is kept from `previous` for a path that stays.
    pub fn compile(
        config: &[pb::AccessLog],
        previous: Option<&AccessLogs>,
    ) -> Result<Option<Arc<AccessLogs>>, ConfigError> {
        if config.is_empty() {
            return Ok(None);
        }
        let mut logs: Vec<Log> = Vec::with_capacity(config.len());
        let mut names = Registry::default();
        for (i, c) in config.iter().enumerate() {
            let field = format!("access_logs[{i}]");
            if c.path.is_empty() {
                return Err(err(format!("{field}.path"), "required"));
            }
            if c.path.contains('\0') {
                return Err(err(format!("{field}.path"), format!("{:?} is not a file name", c.path)));
            }
            let parse =
                |text: &str, field: String| format::parse(text).map_err(|e| err(field, e.to_string()));
            let shape = match pb::AccessLogEncoding::try_from(c.encoding) {
                Ok(pb::AccessLogEncoding::Text) => {
                    let text = trellis_api::access_log::text_format(Some(&c.text_format));
                    Shape::Text(names.text(&parse(&text, format!("{field}.text_format"))?))
                }
                Ok(pb::AccessLogEncoding::Json) => {
                    let fields = if c.json_fields.is_empty() {
                        trellis_api::access_log::json_fields(None)
                            .map_err(|e| err(format!("{field}.json_fields"), e))?
                    } else {
                        c.json_fields.iter().map(|f| (f.key.clone(), f.format.clone())).collect()
                    };
                    let mut compiled = Vec::with_capacity(fields.len());
                    for (j, (key, text)) in fields.into_iter().enumerate() {
                        compiled.push((key, parse(&text, format!("{field}.json_fields[{j}].format"))?));
                    }
                    Shape::Json(names.json(&compiled))
                }
                Err(_) => {
                    return Err(err(
                        format!("{field}.encoding"),
                        format!("{} is not an encoding this proxy knows", c.encoding),
                    ));
                }
            };
            let filter = match c.filter.trim() {
                "" => None,
                text => Some(Filter::parse(text).map_err(|e| err(format!("{field}.filter"), e.to_string()))?),
            };
            let sink = logs
                .iter()
                .map(|l| &l.sink)
                .chain(previous.into_iter().flat_map(|p| p.logs.iter().map(|l| &l.sink)))
                .find(|s| s.path == c.path)
                .cloned()
                .unwrap_or_else(|| Sink::open(&c.path));
            logs.push(Log { shape, filter, sink });
        }
        let filters_read =
            |attribute: Attribute| logs.iter().any(|l| l.filter.as_ref().is_some_and(|f| f.reads(attribute)));
        // What the filters' attributes read from headers.
        for (attribute, name) in [
            (Attribute::RequestReferer, "referer"),
            (Attribute::RequestUserAgent, "user-agent"),
            (Attribute::RequestId, "x-request-id"),
        ] {
            if filters_read(attribute) {
                names.request.slot(name);
            }
        }
        let all_request_headers = filters_read(Attribute::RequestHeaders);
        let all_response_headers = filters_read(Attribute::ResponseHeaders);
        Ok(Some(Arc::new(AccessLogs { logs, names, all_request_headers, all_response_headers })))
    }

    /// Writes one line to each log whose filter takes it.
    fn write(&self, facts: &Facts<'_>) {
        thread_local! {
            static LINE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        LINE.with_borrow_mut(|line| {
            for log in &self.logs {
                if let Some(filter) = &log.filter
                    && !filter.matches(facts)
                {
                    continue;
                }
                line.clear();
                match &log.shape {
                    Shape::Text(format) => render::text_line(format, facts, line),
                    Shape::Json(fields) => render::json_line(fields, facts, line),
                }
                log.sink.push(line);
            }
            // A huge line's buffer is not kept by the thread.
            if line.capacity() > 64 << 10 {
                *line = String::new();
            }
        });
    }
}

/// The access logs in force, when there are any.
#[inline]
pub fn current(proxy: &Proxy) -> Option<Arc<AccessLogs>> {
    if !proxy.access_log.is_on() {
        return None;
    }
    proxy.config.load().access_logs.clone()
}

fn unix_nanos() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// What forwarding learned of the upstream, for the line (kept in the forwarder's outcome).
#[derive(Debug, Default)]
pub struct Upstream {
    pub host: Option<SocketAddr>,
    pub route: Option<Box<str>>,
    /// Why the connection to the upstream failed.
    pub failure: Option<Box<str>>,
    /// `%RESPONSE_CODE_DETAILS%` when it is not the one the flags and status tell (denials).
    pub details: Option<Box<str>>,
}

/// One HTTP request's line in the making.
pub struct HttpEntry {
    logs: Arc<AccessLogs>,
    start_unix_nanos: u128,
    started: Instant,
    request: RequestFacts,
    protocol: &'static str,
    downstream_remote: SocketAddr,
    downstream_local: SocketAddr,
    peer: Option<Arc<str>>,
    sni: Option<Arc<str>>,
    inbound: bool,
    // From `answered`:
    status: u16,
    response_headers: Captured,
    response_duration: Option<Duration>,
    details: Cow<'static, str>,
    upstream: Upstream,
    cluster: Arc<str>,
}

/// Keeps what the line needs of `request` before it is routed (the path before rewrites, as
/// Envoy's `X-ENVOY-ORIGINAL-PATH?:PATH` shows it). Gives the request its `x-request-id` now,
/// so that the line shows the id the app sees.
pub fn capture<B>(
    logs: Arc<AccessLogs>,
    request: &mut Request<B>,
    conn: &Conn,
    started: Instant,
) -> Box<HttpEntry> {
    crate::headers::ensure_request_id(request.headers_mut());
    let protocol = match request.version() {
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    };
    let headers = Captured::keep(&logs.names.request, logs.all_request_headers, request.headers());
    let facts = RequestFacts::new(
        request.method().clone(),
        request.uri().path_and_query().map_or("/", |p| p.as_str()),
        request
            .uri()
            .authority()
            .map(|a| a.as_str())
            .or_else(|| request.headers().get(http::header::HOST).and_then(|h| h.to_str().ok())),
        if conn.tls_peer.is_some() { "https" } else { "http" },
        headers,
    );
    Box::new(HttpEntry {
        logs,
        start_unix_nanos: unix_nanos(),
        started,
        request: facts,
        protocol,
        downstream_remote: conn.peer,
        downstream_local: conn.original.unwrap_or(conn.local),
        peer: conn.tls_peer.as_ref().map(|p| p.principal.clone()),
        sni: conn.sni.clone(),
        inbound: conn.side == Side::Inbound,
        status: 0,
        response_headers: Captured::default(),
        response_duration: None,
        details: Cow::Borrowed(""),
        upstream: Upstream::default(),
        cluster: Arc::from(""),
    })
}

impl HttpEntry {
    /// What answered: the response's head, its flags, and what forwarding learned.
    /// `cluster`: the cluster, when the outcome's `service` is not it (outbound routes).
    pub fn answered<B>(
        &mut self,
        response: &Response<B>,
        service: &Arc<str>,
        cluster: Option<&Arc<str>>,
        flags: &'static str,
        upstream: Upstream,
    ) {
        self.status = response.status().as_u16();
        self.response_headers =
            Captured::keep(&self.logs.names.response, self.logs.all_response_headers, response.headers());
        self.response_duration = Some(self.started.elapsed());
        self.details = match &upstream.details {
            Some(d) => Cow::Owned(d.to_string()),
            None => Cow::Borrowed(details(flags, self.status, upstream.host.is_some())),
        };
        // Istio's names: inbound|PORT|| for deliveries to the app.
        self.cluster = match (cluster, self.inbound, upstream.host) {
            (Some(c), _, _) => c.clone(),
            (None, true, Some(app)) => inbound_cluster(app.port()),
            (None, false, _) if service.ends_with("Cluster") => service.clone(),
            _ => Arc::from(""),
        };
        self.upstream = upstream;
    }

    /// The response is done (or abandoned): the line is written.
    pub fn finish(
        self: Box<Self>,
        flags: &'static str,
        grpc_status: &'static str,
        bytes_received: u64,
        bytes_sent: u64,
    ) {
        let facts = Facts {
            start_unix_nanos: self.start_unix_nanos,
            protocol: Some(self.protocol),
            request: Some(&self.request),
            response_headers: Some(&self.response_headers),
            request_names: &self.logs.names.request,
            response_names: &self.logs.names.response,
            code: self.status,
            details: &self.details,
            flags,
            termination_details: None,
            duration: self.started.elapsed(),
            response_duration: self.response_duration,
            bytes_received,
            bytes_sent,
            upstream_host: self.upstream.host,
            upstream_cluster: Some(&self.cluster),
            upstream_local: None,
            upstream_failure: self.upstream.failure.as_deref(),
            downstream_remote: self.downstream_remote,
            downstream_local: self.downstream_local,
            peer_uri_san: self.peer.as_deref(),
            requested_server_name: self.sni.as_deref(),
            route_name: self.upstream.route.as_deref(),
            grpc_status,
        };
        self.logs.write(&facts);
    }
}

/// Istio's cluster name for deliveries to the app on `port` (`inbound|8080||`): a thread's
/// requests go to one or two ports, so it keeps the last name it made.
fn inbound_cluster(port: u16) -> Arc<str> {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(u16, Arc<str>)>> = const { std::cell::RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((p, name)) if *p == port => name.clone(),
        _ => {
            let name: Arc<str> = format!("inbound|{port}||").into();
            *last = Some((port, name.clone()));
            name
        }
    })
}

/// Envoy's `%RESPONSE_CODE_DETAILS%` for what the flags and status tell.
fn details(flags: &'static str, status: u16, from_upstream: bool) -> &'static str {
    match flags {
        "NR" => "route_not_found",
        "UH" => "no_healthy_upstream",
        "UO" => "upstream_reset_before_response_started{overflow}",
        "UF" => "upstream_reset_before_response_started{connection_failure}",
        "UR" => "upstream_reset_before_response_started{connection_termination}",
        "UT" => "response_timeout",
        "FI" => "fault_filter_abort",
        "RL" => "request_rate_limited",
        "RLSE" => "rate_limiter_error",
        "UAEX" => "ext_authz_denied",
        _ if from_upstream => "via_upstream",
        _ if status == 413 => "request_payload_too_large",
        _ => "direct_response",
    }
}

/// `%RESPONSE_CODE_DETAILS%` (HTTP) and `%CONNECTION_TERMINATION_DETAILS%` (TCP) of an
/// AuthorizationPolicy denial, in Envoy's words: the policy and rule that denied, or `none`
/// when no ALLOW policy matched.
pub fn denial_details(by: &crate::security::authz::DecidedBy) -> Box<str> {
    use crate::security::authz::DecidedBy;
    match by {
        DecidedBy::Rule { policy, rule } => {
            let (namespace, name) = policy.split_once('/').unwrap_or(("", policy));
            format!("rbac_access_denied_matched_policy[ns[{namespace}]-policy[{name}]-rule[{rule}]]").into()
        }
        DecidedBy::NoAllowMatched | DecidedBy::NoPolicy => "rbac_access_denied_matched_policy[none]".into(),
    }
}

/// The local address of a connection to an upstream.
pub fn local_of(stream: &crate::security::stream::MaybeTls) -> Option<SocketAddr> {
    use crate::security::stream::MaybeTls;
    match stream {
        MaybeTls::Plain(s) => s.local_addr().ok(),
        MaybeTls::Client(s) => s.get_ref().0.local_addr().ok(),
        MaybeTls::Server(s) => s.get_ref().0.local_addr().ok(),
    }
}

/// One TCP connection's line in the making.
pub struct TcpEntry {
    logs: Arc<AccessLogs>,
    start_unix_nanos: u128,
    started: Instant,
    downstream_remote: SocketAddr,
    downstream_local: SocketAddr,
    peer: Option<Arc<str>>,
    sni: Option<Arc<str>>,
    /// Where it was relayed (Istio's cluster name).
    pub cluster: Option<Arc<str>>,
}

/// What happened to a relayed connection.
#[derive(Default)]
pub struct TcpOutcome<'a> {
    pub upstream_host: Option<SocketAddr>,
    pub upstream_local: Option<SocketAddr>,
    pub flags: &'static str,
    pub termination_details: Option<&'a str>,
    pub failure: Option<&'a str>,
    /// Downstream to upstream.
    pub received: u64,
    /// Upstream to downstream.
    pub sent: u64,
}

impl TcpEntry {
    /// A line for `conn`, when access logs are on.
    pub fn start(proxy: &Proxy, conn: &Conn) -> Option<TcpEntry> {
        let logs = current(proxy)?;
        Some(TcpEntry {
            logs,
            start_unix_nanos: unix_nanos(),
            started: Instant::now(),
            downstream_remote: conn.peer,
            downstream_local: conn.original.unwrap_or(conn.local),
            peer: conn.tls_peer.as_ref().map(|p| p.principal.clone()),
            sni: conn.sni.clone(),
            cluster: None,
        })
    }

    /// AuthorizationPolicy closed the connection to the app's `port`.
    pub fn denied(mut self, port: u16, details: &str) {
        self.cluster = Some(format!("inbound|{port}||").into());
        self.finish(TcpOutcome { flags: "-", termination_details: Some(details), ..Default::default() });
    }

    pub fn finish(self, outcome: TcpOutcome<'_>) {
        let facts = Facts {
            start_unix_nanos: self.start_unix_nanos,
            protocol: None,
            request: None,
            response_headers: None,
            request_names: &self.logs.names.request,
            response_names: &self.logs.names.response,
            code: 0,
            details: "",
            flags: if outcome.flags.is_empty() { "-" } else { outcome.flags },
            termination_details: outcome.termination_details,
            duration: self.started.elapsed(),
            response_duration: None,
            bytes_received: outcome.received,
            bytes_sent: outcome.sent,
            upstream_host: outcome.upstream_host,
            upstream_cluster: self.cluster.as_deref(),
            upstream_local: outcome.upstream_local,
            upstream_failure: outcome.failure,
            downstream_remote: self.downstream_remote,
            downstream_local: self.downstream_local,
            peer_uri_san: self.peer.as_deref(),
            requested_server_name: self.sni.as_deref(),
            route_name: None,
            grpc_status: "",
        };
        self.logs.write(&facts);
    }
}

/// The filter's view of a line.
impl Activation for Facts<'_> {
    fn attribute(&self, attribute: Attribute) -> Option<cel::Value<'_>> {
        use cel::Value as V;
        let string = |s: &str| V::Str(Cow::Owned(s.to_owned()));
        let request = self.request;
        let header = |name: &str| {
            request
                .and_then(|r| r.header(name, self.request_names))
                .map(|v| V::Str(Cow::Owned(String::from_utf8_lossy(v).into_owned())))
        };
        let path = || request.map(|r| r.path());
        Some(match attribute {
            Attribute::RequestPath => string(path()?),
            Attribute::RequestUrlPath => string(path()?.split('?').next().unwrap_or_default()),
            Attribute::RequestQuery => string(path()?.split_once('?').map_or("", |(_, q)| q)),
            Attribute::RequestHost => return header(":authority"),
            Attribute::RequestScheme => string(request?.scheme),
            Attribute::RequestMethod => string(request?.method.as_str()),
            Attribute::RequestReferer => return header("referer"),
            Attribute::RequestUserAgent => return header("user-agent"),
            Attribute::RequestId => return header("x-request-id"),
            Attribute::RequestProtocol => string(self.protocol?),
            Attribute::RequestSize => V::Int(i64::try_from(self.bytes_received).unwrap_or(i64::MAX)),
            Attribute::RequestDuration => V::Duration(self.duration.as_nanos() as i128),
            Attribute::ResponseCode => {
                request?;
                V::Int(i64::from(self.code))
            }
            Attribute::ResponseCodeDetails => {
                request?;
                string(self.details)
            }
            Attribute::ResponseGrpcStatus => V::Int(self.grpc_status.parse().ok()?),
            Attribute::ResponseSize => V::Int(i64::try_from(self.bytes_sent).unwrap_or(i64::MAX)),
            Attribute::ConnectionMtls => V::Bool(self.peer_uri_san.is_some()),
            Attribute::ConnectionRequestedServerName => string(self.requested_server_name.unwrap_or("")),
            Attribute::ConnectionTerminationDetails => string(self.termination_details?),
            Attribute::ConnectionUriSanPeerCertificate => string(self.peer_uri_san?),
            Attribute::SourceAddress => string(&self.downstream_remote.ip().to_string()),
            Attribute::SourcePort => V::Int(i64::from(self.downstream_remote.port())),
            Attribute::DestinationAddress => string(&self.downstream_local.ip().to_string()),
            Attribute::DestinationPort => V::Int(i64::from(self.downstream_local.port())),
            Attribute::UpstreamAddress => string(&self.upstream_host?.ip().to_string()),
            Attribute::UpstreamPort => V::Int(i64::from(self.upstream_host?.port())),
            Attribute::XdsClusterName => string(self.upstream_cluster.filter(|c| !c.is_empty())?),
            Attribute::XdsRouteName => string(self.route_name?),
            Attribute::RequestHeaders | Attribute::ResponseHeaders => return None,
        })
    }

    fn header(&self, which: Headers, name: &str) -> Option<Cow<'_, str>> {
        let bytes = match which {
            Headers::Request => self.request?.header(name, self.request_names)?,
            Headers::Response => self.response_headers?.by_name(name, self.response_names)?.as_bytes(),
        };
        Some(String::from_utf8_lossy(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::authz::DecidedBy;

    #[test]
    fn denials_are_named_in_envoys_words() {
        let by = DecidedBy::Rule { policy: "shop/no-admin".into(), rule: 2 };
        assert_eq!(
            &*denial_details(&by),
            "rbac_access_denied_matched_policy[ns[shop]-policy[no-admin]-rule[2]]"
        );
        assert_eq!(&*denial_details(&DecidedBy::NoAllowMatched), "rbac_access_denied_matched_policy[none]");
    }

    #[test]
    fn details_follow_the_flags_then_where_the_answer_came_from() {
        assert_eq!(details("-", 200, true), "via_upstream");
        assert_eq!(details("DI", 200, true), "via_upstream");
        assert_eq!(details("URX", 503, true), "via_upstream");
        assert_eq!(details("NR", 404, false), "route_not_found");
        assert_eq!(details("UF", 503, true), "upstream_reset_before_response_started{connection_failure}");
        assert_eq!(details("-", 413, false), "request_payload_too_large");
        assert_eq!(details("-", 301, false), "direct_response");
    }

    #[test]
    fn only_the_headers_a_format_reads_are_kept() {
        let config = |text: &str, filter: &str| pb::AccessLog {
            path: "/dev/null".into(),
            text_format: text.into(),
            filter: filter.into(),
            ..Default::default()
        };
        let logs = AccessLogs::compile(&[config("%REQ(X-A?X-B)% %RESP(X-C)% %REQ(:PATH)%", "")], None)
            .unwrap()
            .unwrap();
        let names = |n: &template::Names| n.as_slice().iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(names(&logs.names.request), ["x-a", "x-b"]);
        assert_eq!(names(&logs.names.response), ["x-c"]);
        assert!(!logs.all_request_headers && !logs.all_response_headers);
        // A filter reading request headers keeps them all.
        let logs = AccessLogs::compile(&[config("%DURATION%", "request.headers['x'] == 'y'")], None)
            .unwrap()
            .unwrap();
        assert!(logs.all_request_headers && !logs.all_response_headers);
        assert_eq!(names(&logs.names.response), Vec::<String>::new());
        // A filter on the user agent keeps that header.
        let agent =
            AccessLogs::compile(&[config("%DURATION%", "request.useragent == 'x'")], None).unwrap().unwrap();
        assert_eq!(names(&agent.names.request), ["user-agent"]);
        // The same path in a later config keeps its sink (and writer).
        let again = AccessLogs::compile(&[config("%PROTOCOL%", "")], Some(&logs)).unwrap().unwrap();
        assert!(Arc::ptr_eq(&again.logs[0].sink, &logs.logs[0].sink));
    }

    #[test]
    fn the_inbound_cluster_name_follows_the_port() {
        assert_eq!(&*inbound_cluster(8080), "inbound|8080||");
        assert_eq!(&*inbound_cluster(8080), "inbound|8080||");
        assert_eq!(&*inbound_cluster(9090), "inbound|9090||");
    }
}
