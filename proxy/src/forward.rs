//! One HTTP request, from the downstream connection to an upstream and back. Outbound: find the
//! service and virtual host (by authority, then by the address dialled), match a route, and
//! answer it (redirect, direct response) or forward it to a cluster's endpoint with the route's
//! timeout and retries. Inbound: deliver it to the app on localhost from 127.0.0.6.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version, header};
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Incoming;
use rand::RngExt;
use trellis_xds::config as pb;
use trellis_xds::types::ResourceType;

use crate::body::{Guarded, PendingRecord, RequestBytes, counted, recorded};
use crate::cluster::Cluster;
use crate::config::{ServicePort, Snapshot, split_authority};
use crate::headers;
use crate::metrics::{Reporter, grpc_status_label};
use crate::outlier::Observed;
use crate::route::{Action, CompiledRoute, RequestView, Retry, StringMatcher, normalize_path};
use crate::serve::Conn;
use crate::upstream::{self, Body, BoxError, ConnectionPolicy, Key, Protocol, UpstreamError};
use crate::{Proxy, Side, box_out_of_line};

/// Bodies up to this size are kept so that a retry can send them again.
const MAX_REPLAY_BODY: u64 = 64 << 10;
/// The source of inbound deliveries to the app, so that the redirect lets them through.
const INBOUND_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6));

/// What the metrics record of a request besides its status.
struct Outcome {
    response: Response<Body>,
    service: Arc<str>,
    flags: &'static str,
    request_bytes: RequestBytes,
    /// Outbound: how the endpoint was reached (inbound takes it from the connection).
    security: crate::metrics::Security,
    /// Outbound: the workload of the endpoint reached (inbound takes it from the connection).
    peer: Option<crate::peers::PeerKey>,
    /// Outbound: the upstream cluster that answered (the span's `upstream_cluster`).
    cluster: Option<Arc<str>>,
    /// What the access log says of the upstream (the endpoint, route, failure, details).
    log: crate::access_log::Upstream,
}

impl Outcome {
    fn with_request_bytes(mut self, request_bytes: RequestBytes) -> Outcome {
        self.request_bytes = request_bytes;
        self
    }

    fn new(response: Response<Body>, service: impl Into<Arc<str>>, flags: &'static str) -> Outcome {
        Outcome {
            response,
            service: service.into(),
            flags,
            request_bytes: RequestBytes::Unknown,
            security: crate::metrics::Security::default(),
            peer: None,
            cluster: None,
            log: crate::access_log::Upstream::default(),
        }
    }
}

pub async fn handle(mut request: Request<Incoming>, conn: &Conn, proxy: &Arc<Proxy>) -> Response<Body> {
    let started = Instant::now();
    // The trace context first: the request goes on with this hop's (tracing off: nothing runs).
    let span = crate::trace::begin(&mut request, conn, proxy);
    let grpc = is_grpc(&request);
    let declared_length = content_length(&request);
    // 413 before reading a body that says it is too large, whichever way it goes.
    let too_large = declared_length.is_some_and(|n| n > proxy.config.load().limits.max_body_bytes);
    // Access logs keep the request as it came (off: a branch).
    let mut logged = crate::access_log::current(proxy)
        .map(|logs| crate::access_log::capture(logs, &mut request, conn, started));
    let mut outcome = match conn.side {
        _ if too_large => {
            Outcome::new(text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n"), "unknown", "-")
        }
        Side::Outbound => outbound(request, conn, proxy).await,
        Side::Inbound => inbound(request, conn, proxy).await,
    };
    if let RequestBytes::Unknown = outcome.request_bytes {
        outcome.request_bytes = RequestBytes::Known(declared_length.unwrap_or(0));
    }
    // Looked up only for gRPC: a lookup by name costs every other request a header parse.
    let grpc_status = match grpc.then(|| outcome.response.headers().get(&headers::GRPC_STATUS)).flatten() {
        Some(status) => grpc_status_label(status.as_bytes()),
        None => "",
    };
    let span = span.map(|mut span| {
        let (status, peer) = (outcome.response.status().as_u16(), outcome.security.peer.as_ref());
        let (cluster, bytes) = (outcome.cluster.as_ref(), &outcome.request_bytes);
        span.answered(status, outcome.flags, &outcome.service, cluster, bytes, peer);
        span
    });
    if let Some(entry) = logged.as_mut() {
        let upstream = std::mem::take(&mut outcome.log);
        let (response, cluster) = (&outcome.response, outcome.cluster.as_ref());
        entry.answered(response, &outcome.service, cluster, outcome.flags, upstream);
    }
    let peer = match conn.side {
        Side::Outbound => outcome.peer.take().unwrap_or_else(crate::peers::PeerKey::unknown),
        Side::Inbound => match conn.settled_peer() {
            Some(peer) => peer,
            None => conn.peer_workload(proxy).await,
        },
    };
    let pending = PendingRecord {
        access_log: logged,
        metrics: proxy.metrics.clone(),
        reporter: match conn.side {
            Side::Outbound => Reporter::Source,
            Side::Inbound => Reporter::Destination,
        },
        service: outcome.service,
        grpc,
        status: outcome.response.status().as_u16(),
        grpc_status,
        flags: outcome.flags,
        started,
        request_bytes: outcome.request_bytes,
        security: match conn.side {
            Side::Outbound => outcome.security,
            Side::Inbound => conn.security(),
        },
        peer,
    };
    let response = outcome.response.map(|body| recorded(body, pending).boxed());
    match span {
        Some(span) => span.wrap(response),
        None => response,
    }
}

async fn outbound(mut request: Request<Incoming>, conn: &Conn, proxy: &Arc<Proxy>) -> Outcome {
    if conn.gateway_port.is_some()
        && let Err(refused) = box_out_of_line(|| gateway_policy(&mut request, conn, proxy)).await
    {
        return refused;
    }
    let snapshot = proxy.config.load_full();
    let (port, service_port) = {
        let authority = authority_ref(&request);
        conn.service_port(&snapshot, authority, || {
            let port = conn
                .original
                .map(|o| o.port())
                .or_else(|| authority.and_then(|a| split_authority(a, 80)).map(|(_, p)| p))
                .unwrap_or(80);
            (port, find_service_port(&snapshot, authority, conn, port))
        })
    };
    let service_port = match service_port {
        Some(sp) if sp.virtual_host.is_none() && sp.missing_virtual_host.is_some() => {
            let authority = authority_ref(&request).map(str::to_owned);
            box_out_of_line(|| fetch_virtual_host(proxy, sp, authority.as_deref(), conn, port)).await
        }
        other => other,
    };
    let Some((service_port, virtual_host)) =
        service_port.and_then(|sp| sp.virtual_host.clone().map(|vh| (sp, vh)))
    else {
        if conn.gateway_port.is_some() {
            // A gateway routes only what its Gateways and VirtualServices name.
            return Outcome::new(text(StatusCode::NOT_FOUND, "no route for this host\n"), "unknown", "NR");
        }
        // Not a mesh service: boxed, so that routed requests do not carry its state.
        return box_out_of_line(|| passthrough(request, conn, proxy, &snapshot)).await;
    };
    let service = service_port.service.clone();
    if let Some(normalized) = normalize_path(request.uri().path()) {
        set_path(&mut request, &normalized);
    }
    let selected = {
        let view = RequestView {
            method: request.method().as_str(),
            path: request.uri().path(),
            query: request.uri().query(),
            headers: request.headers(),
            port,
        };
        virtual_host.select(&view).map(|route| {
            // A prefix rewrite replaces the prefix that matched.
            let matched_prefix =
                route.matches.iter().find(|m| m.matches(&view)).and_then(|m| match &m.path {
                    Some(StringMatcher::Prefix(p)) => Some(p.as_str()),
                    _ => None,
                });
            (route, matched_prefix)
        })
    };
    let Some((route, matched_prefix)) = selected else {
        return Outcome::new(text(StatusCode::NOT_FOUND, "no route matched\n"), service, "NR");
    };
    // A route is chosen: the rate-limit filters run, as Envoy's before its router (and faults).
    let rate_limit = match conn.gateway_port {
        Some(_) => snapshot.gateway_rate_limit.as_ref(),
        None => snapshot.outbound_rate_limit.as_ref(),
    };
    if let Some(limit) = rate_limit {
        // A sidecar's rules name the service's port; a gateway's, its listener's.
        let limit_port = conn.gateway_port.unwrap_or(port);
        let checked =
            box_out_of_line(|| limit.check(&request, limit_port, conn.peer.ip(), &proxy.metrics, &service))
                .await;
        if let Err(refusal) = checked {
            return Outcome::new(refusal.response, service, refusal.flags);
        }
    }
    match &route.action {
        Action::Direct { status, body } => {
            let mut response = Response::new(full(body.clone()));
            *response.status_mut() = *status;
            route.response_headers.apply(response.headers_mut());
            Outcome::new(response, service, "-")
        }
        Action::Redirect { uri, authority: to_authority, scheme, code } => {
            let scheme = if scheme.is_empty() { "http" } else { scheme.as_str() };
            let host = if to_authority.is_empty() {
                authority_ref(&request).unwrap_or_default().to_owned()
            } else {
                to_authority.clone()
            };
            let target = if uri.is_empty() {
                request
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_else(|| "/".to_owned())
            } else {
                uri.clone()
            };
            let mut response = text(StatusCode::from_u16(*code).unwrap_or(StatusCode::MOVED_PERMANENTLY), "");
            if let Ok(location) = HeaderValue::from_str(&format!("{scheme}://{host}{target}")) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            Outcome::new(response, service, "-")
        }
        Action::Forward(targets) => {
            // Faults come before anything goes upstream (boxed: most routes have none).
            let mut fault_flags = "-";
            if let Some(fault) = &route.fault {
                let injected = box_out_of_line(|| fault.inject()).await;
                fault_flags = injected.flags();
                if let Some(mut response) = injected.abort {
                    route.response_headers.apply(response.headers_mut());
                    return Outcome::new(response, service, fault_flags);
                }
            }
            let total = Action::total_weight(targets);
            let roll = if total > 1 { crate::with_fast_rng(|rng| rng.random_range(0..total)) } else { 0 };
            let Some(cluster) = Action::pick_cluster(targets, roll).cloned() else {
                return Outcome::new(text(StatusCode::SERVICE_UNAVAILABLE, "no cluster\n"), service, "NR");
            };
            // Routing edits, then hop-by-hop hygiene.
            route.request_headers.apply(request.headers_mut());
            rewrite(&mut request, route, matched_prefix);
            let upgrade = headers::is_upgrade(request.headers());
            headers::strip_hop_by_hop(request.headers_mut(), upgrade);
            headers::ensure_request_id(request.headers_mut());
            crate::security::xfcc::sanitize(request.headers_mut());
            let mut outcome = to_cluster(request, upgrade, route, &cluster, conn, proxy, &snapshot).await;
            if proxy.access_log.is_on() {
                outcome.log.route = Some(route.name.as_str().into());
            }
            route.response_headers.apply(outcome.response.headers_mut());
            outcome.cluster = Some(std::mem::replace(&mut outcome.service, service));
            if fault_flags != "-" && outcome.flags == "-" {
                outcome.flags = fault_flags;
            }
            outcome
        }
    }
}

fn rewrite(request: &mut Request<Incoming>, route: &CompiledRoute, matched_prefix: Option<&str>) {
    if let Some(authority) = &route.rewrite_authority
        && let Ok(value) = HeaderValue::from_str(authority)
    {
        request.headers_mut().insert(header::HOST, value);
        // HTTP/2 carries the authority in the URI: rewrite it there too.
        if request.uri().authority().is_some() {
            let mut parts = request.uri().clone().into_parts();
            parts.authority = authority.parse().ok();
            if let Ok(uri) = Uri::from_parts(parts) {
                *request.uri_mut() = uri;
            }
        }
    }
    let Some(replacement) = &route.rewrite_uri else { return };
    let path = request.uri().path();
    let new_path = match matched_prefix {
        Some(prefix) if path.starts_with(prefix) => format!("{replacement}{}", &path[prefix.len()..]),
        _ => replacement.clone(),
    };
    set_path(request, &new_path);
}

/// Replaces the request's path, keeping its query, and the scheme and authority an HTTP/2
/// request carries in its URI.
fn set_path<B>(request: &mut Request<B>, path: &str) {
    let with_query = match request.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    // The config's paths are checked when it is read; should the result still not parse,
    // the request keeps its own path rather than going out with none.
    let Ok(path_and_query) = with_query.parse() else { return };
    let mut parts = request.uri().clone().into_parts();
    parts.path_and_query = Some(path_and_query);
    if let Ok(uri) = Uri::from_parts(parts) {
        *request.uri_mut() = uri;
    }
}

/// Forwards to one of the cluster's endpoints, within the route's timeout, retrying as its
/// policy says when the body can be sent again.
async fn to_cluster(
    request: Request<Incoming>,
    wants_upgrade: bool,
    route: &CompiledRoute,
    cluster: &Arc<Cluster>,
    conn: &Conn,
    proxy: &Arc<Proxy>,
    snapshot: &Snapshot,
) -> Outcome {
    cluster.count_request();
    // The mirrors this request goes to (routes without any: a branch).
    let mirrors = route.mirrors.as_ref().map(|m| m.draw()).filter(|m| !m.is_empty());
    // The route's timeout covers the whole response: its body carries the same deadline.
    let deadline = route.timeout.map(|t| tokio::time::Instant::now() + t);
    let attempts = async {
        if wants_upgrade {
            // Rare, and its handshake state is large: boxed (see `Pools::send_http1`).
            return box_out_of_line(|| upgrade(request, cluster, conn, proxy)).await;
        }
        let (parts, body) = request.into_parts();
        // Only bodies known to be small (or absent) are kept for a retry or a mirror; a stream
        // (gRPC, chunked uploads) goes through as it comes, without retries or mirrors.
        let small = content_length_of(&parts.headers).is_some_and(|n| n <= MAX_REPLAY_BODY)
            || hyper::body::Body::is_end_stream(&body);
        let replayable = (route.retries.is_some() || mirrors.is_some()) && small;
        let limit = snapshot.limits.max_body_bytes;
        if replayable {
            let bytes = match Limited::new(body, MAX_REPLAY_BODY.min(limit) as usize).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) => return body_error(e, cluster),
            };
            if let Some(mirrors) = mirrors {
                crate::mirror::send(proxy, mirrors, &parts, &bytes, route.timeout, conn.peer.ip());
            }
            let length = bytes.len() as u64;
            with_retries(&parts, bytes, route.retries.as_ref(), cluster, conn, proxy, deadline)
                .await
                .with_request_bytes(RequestBytes::Known(length))
        } else {
            if let Some(mirrors) = &mirrors {
                crate::mirror::dropped_body(proxy, mirrors);
            }
            let (body, request_bytes) = forwarded_body(body, limit as usize);
            attempt(
                Request::from_parts(parts, body),
                cluster,
                conn,
                proxy,
                None,
                route.retries.as_ref().and_then(|r| r.per_try_timeout),
                deadline,
            )
            .await
            .map_or_else(|failure| failure.into_outcome(cluster), |(outcome, _)| outcome)
            .with_request_bytes(request_bytes)
        }
    };
    let outcome = match route.timeout {
        Some(timeout) => tokio::time::timeout(timeout, attempts).await.unwrap_or_else(|_| {
            Outcome::new(
                text(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout\n"),
                cluster.name(),
                "UT",
            )
        }),
        None => attempts.await,
    };
    if outcome.response.status().is_server_error() {
        cluster.errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    outcome
}

async fn with_retries(
    parts: &http::request::Parts,
    body: Bytes,
    retry: Option<&Retry>,
    cluster: &Arc<Cluster>,
    conn: &Conn,
    proxy: &Proxy,
    deadline: Option<tokio::time::Instant>,
) -> Outcome {
    let Some(retry) = retry else {
        let request = Request::from_parts(parts.clone(), full(body));
        return attempt(request, cluster, conn, proxy, None, None, deadline)
            .await
            .map_or_else(|f| f.into_outcome(cluster), |(outcome, _)| outcome);
    };
    let mut previous = None;
    let mut backoff = retry.base_interval;
    // The retry under way's place under `maxRetries`, held until its attempt is done.
    let mut retrying = None;
    for left in (0..=retry.attempts).rev() {
        let request = Request::from_parts(parts.clone(), full(body.clone()));
        let result = attempt(request, cluster, conn, proxy, previous, retry.per_try_timeout, deadline).await;
        drop(retrying.take());
        let retry_it = match &result {
            Ok((outcome, _)) => {
                let grpc = outcome
                    .response
                    .headers()
                    .get(&headers::GRPC_STATUS)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok());
                retry.retries_response(outcome.response.status(), grpc)
            }
            Err(failure) => failure.retriable(retry),
        };
        if !retry_it || left == 0 {
            let exhausted = retry_it && left == 0 && retry.attempts > 0;
            let mut outcome = match result {
                Ok((outcome, _)) => outcome,
                Err(failure) => failure.into_outcome(cluster),
            };
            if exhausted {
                outcome.flags = "URX";
            }
            return outcome;
        }
        // `maxRetries` and the retry budget may refuse: then this answer stands.
        match cluster.admit_retry() {
            Ok(permit) => retrying = Some(permit),
            Err(refused) => {
                proxy.metrics.retry_refused(cluster.name(), refused);
                return result.map_or_else(|failure| failure.into_outcome(cluster), |(outcome, _)| outcome);
            }
        }
        previous = match &result {
            Ok((_, index)) => Some(*index),
            Err(failure) => failure.endpoint,
        };
        drop(result);
        // Exponential backoff with full jitter, capped at ten times the base.
        let jittered = crate::with_fast_rng(|rng| rng.random_range(0..=backoff.as_micros().max(1) as u64));
        tokio::time::sleep(Duration::from_micros(jittered)).await;
        backoff = backoff.saturating_mul(2).min(retry.base_interval.saturating_mul(10));
    }
    Outcome::new(text(StatusCode::SERVICE_UNAVAILABLE, "retries exhausted\n"), cluster.name(), "URX")
}

/// Why an attempt produced no response.
struct Failure {
    kind: FailureKind,
    endpoint: Option<usize>,
}

enum FailureKind {
    NoEndpoint,
    Overflow,
    Upstream(UpstreamError),
    PerTryTimeout,
    Body(StatusCode),
}

impl Failure {
    fn retriable(&self, retry: &Retry) -> bool {
        match &self.kind {
            FailureKind::Upstream(e) if e.is_connect_failure() => {
                retry.on.connect_failure || retry.on.five_xx || retry.on.gateway_error
            }
            FailureKind::Upstream(UpstreamError::RefusedStream(_)) => {
                retry.on.refused_stream || retry.on.reset || retry.on.five_xx
            }
            FailureKind::Upstream(_) => retry.on.reset || retry.on.five_xx || retry.on.gateway_error,
            FailureKind::PerTryTimeout => retry.on.five_xx || retry.on.gateway_error || retry.on.reset,
            FailureKind::NoEndpoint | FailureKind::Overflow | FailureKind::Body(_) => false,
        }
    }

    fn into_outcome(self, cluster: &Cluster) -> Outcome {
        let (status, message, flags) = match &self.kind {
            FailureKind::NoEndpoint => {
                (StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream".to_owned(), "UH")
            }
            FailureKind::Overflow => {
                (StatusCode::SERVICE_UNAVAILABLE, "upstream connection pool overflow".to_owned(), "UO")
            }
            FailureKind::Upstream(e) if e.is_connect_failure() => {
                (StatusCode::SERVICE_UNAVAILABLE, format!("upstream connect error: {e}"), "UF")
            }
            FailureKind::Upstream(e) => {
                (StatusCode::SERVICE_UNAVAILABLE, format!("upstream reset: {e}"), "UR")
            }
            FailureKind::PerTryTimeout => {
                (StatusCode::GATEWAY_TIMEOUT, "upstream request timeout".to_owned(), "UT")
            }
            FailureKind::Body(status) => (*status, "request body too large".to_owned(), "-"),
        };
        let mut outcome = Outcome::new(text(status, &format!("{message}\n")), cluster.name(), flags);
        outcome.log.host = self.endpoint.and_then(|i| cluster.balancer.targets().get(i)).map(|t| t.addr);
        if flags == "UF" {
            outcome.log.failure = Some(message.into());
        }
        outcome
    }
}

fn body_error(e: BoxError, cluster: &Cluster) -> Outcome {
    let status = if e.is::<http_body_util::LengthLimitError>() {
        StatusCode::PAYLOAD_TOO_LARGE
    } else {
        StatusCode::BAD_REQUEST
    };
    Failure { kind: FailureKind::Body(status), endpoint: None }.into_outcome(cluster)
}

/// One try: an endpoint, a place in the pool limits, and the exchange.
async fn attempt(
    mut request: Request<Body>,
    cluster: &Arc<Cluster>,
    conn: &Conn,
    proxy: &Proxy,
    avoid: Option<usize>,
    per_try_timeout: Option<Duration>,
    deadline: Option<tokio::time::Instant>,
) -> Result<(Outcome, usize), Failure> {
    let hash = cluster.hash_of(request.headers(), request.uri().query(), conn.peer.ip());
    let Some(picked) = cluster.pick(hash, avoid) else {
        return Err(Failure { kind: FailureKind::NoEndpoint, endpoint: None });
    };
    let index = picked.index();
    let Some(target) = cluster.balancer.targets().get(index).map(|t| t.addr) else {
        return Err(Failure { kind: FailureKind::NoEndpoint, endpoint: None });
    };
    let protocol = upstream_protocol(cluster.protocol, request.version());
    let Some(admitted) = cluster.admit(protocol == Protocol::Http2).await else {
        return Err(Failure { kind: FailureKind::Overflow, endpoint: Some(index) });
    };
    // Held until the response body ends (or the attempt fails).
    let in_flight = cluster.in_flight(admitted, picked);
    prepare_uri(&mut request, protocol, target);
    let key = Key { addr: target, protocol, source: None, tls: None, pool: 0 };
    let tls = cluster.tls_for(index);
    let exchange =
        proxy.pools.send(key, &cluster.connections, tls.map(Arc::as_ref), Some(&cluster.pool), request);
    // With outlier detection, the route's deadline ends the attempt here too, so that a hung
    // endpoint is counted (the route's own timeout would drop the attempt unseen).
    let limit = match (per_try_timeout, deadline.filter(|_| cluster.outlier.is_some())) {
        (Some(t), Some(d)) => Some(d.min(tokio::time::Instant::now() + t)),
        (Some(t), None) => Some(tokio::time::Instant::now() + t),
        (None, d) => d,
    };
    let result = match limit {
        Some(limit) => match tokio::time::timeout_at(limit, exchange).await {
            Ok(result) => result,
            Err(_) => {
                observe(cluster, index, Observed::Timeout, proxy);
                return Err(Failure { kind: FailureKind::PerTryTimeout, endpoint: Some(index) });
            }
        },
        None => exchange.await,
    };
    let response = match result {
        Ok(response) => response,
        Err(UpstreamError::Overflow(_)) => {
            cluster.overflows.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(Failure { kind: FailureKind::Overflow, endpoint: Some(index) });
        }
        Err(e) => {
            return Err(match body_limit(&e) {
                Some(status) => Failure { kind: FailureKind::Body(status), endpoint: Some(index) },
                None => {
                    observe(cluster, index, Observed::ConnectFailed, proxy);
                    Failure { kind: FailureKind::Upstream(e), endpoint: Some(index) }
                }
            });
        }
    };
    observe(cluster, index, Observed::Status(response.status().as_u16()), proxy);
    let (mut parts, body) = response.into_parts();
    let upgrade = parts.status == StatusCode::SWITCHING_PROTOCOLS;
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    let body = Guarded::new(body, in_flight, deadline).boxed();
    let mut outcome = Outcome::new(Response::from_parts(parts, body), cluster.name.clone(), "-");
    outcome.security = tls.map(|t| t.security()).unwrap_or_default();
    outcome.log.host = Some(target);
    outcome.peer = Some(proxy.config.load().peers.outbound(target.ip()));
    Ok((outcome, index))
}

/// Reports an exchange's outcome to the cluster's outlier detection (when it has one), and
/// counts the ejection it leads to.
#[inline]
pub(crate) fn observe(cluster: &Cluster, index: usize, observed: Observed, proxy: &Proxy) {
    if cluster.outlier.is_some()
        && let Some(verdict) = cluster.observe(index, observed)
    {
        proxy.metrics.outlier(cluster.name(), verdict);
    }
}

/// A request that failed because our own body limit cut it off is the client's fault (413).
fn body_limit(e: &UpstreamError) -> Option<StatusCode> {
    let UpstreamError::Reset { source, .. } = e else { return None };
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(source);
    while let Some(c) = cause {
        if c.is::<http_body_util::LengthLimitError>() {
            return Some(StatusCode::PAYLOAD_TOO_LARGE);
        }
        cause = c.source();
    }
    None
}

pub(crate) fn upstream_protocol(configured: pb::UpstreamProtocol, downstream: Version) -> Protocol {
    match configured {
        pb::UpstreamProtocol::Http1 => Protocol::Http1,
        pb::UpstreamProtocol::Http2PriorKnowledge => Protocol::Http2,
        pb::UpstreamProtocol::SameAsDownstream if downstream == Version::HTTP_2 => Protocol::Http2,
        pb::UpstreamProtocol::SameAsDownstream => Protocol::Http1,
    }
}

/// HTTP/1.1 goes out in origin form with its Host header; HTTP/2 carries the authority in the
/// URI (the `:authority` pseudo-header).
pub(crate) fn prepare_uri(request: &mut Request<Body>, protocol: Protocol, target: SocketAddr) {
    let authority = |request: &Request<Body>| {
        request
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| request.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_owned))
            .unwrap_or_else(|| target.to_string())
    };
    let path =
        |request: &Request<Body>| request.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
    match protocol {
        Protocol::Http1 => {
            if !request.headers().contains_key(header::HOST)
                && let Ok(host) = HeaderValue::from_str(&authority(request))
            {
                request.headers_mut().insert(header::HOST, host);
            }
            // Already origin form (HTTP/1.1 clients send that): nothing to rebuild.
            if request.uri().authority().is_some()
                && let Ok(uri) = path(request).parse()
            {
                *request.uri_mut() = uri;
            }
            *request.version_mut() = Version::HTTP_11;
        }
        Protocol::Http2 => {
            let uri = format!("http://{}{}", authority(request), path(request));
            request.headers_mut().remove(header::HOST);
            if let Ok(uri) = uri.parse() {
                *request.uri_mut() = uri;
            }
            *request.version_mut() = Version::HTTP_2;
        }
    }
}

fn clean_response(response: Response<Incoming>) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    let upgrade = parts.status == StatusCode::SWITCHING_PROTOCOLS;
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    Response::from_parts(parts, body.map_err(BoxError::from).boxed())
}

/// WebSocket and other upgrades: forward the handshake over a connection of its own, then
/// splice the two upgraded connections.
async fn upgrade(request: Request<Incoming>, cluster: &Arc<Cluster>, conn: &Conn, proxy: &Proxy) -> Outcome {
    let hash = cluster.hash_of(request.headers(), request.uri().query(), conn.peer.ip());
    let picked = cluster.pick(hash, None);
    let Some(target) =
        picked.as_ref().and_then(|p| cluster.balancer.targets().get(p.index())).map(|t| t.addr)
    else {
        return Failure { kind: FailureKind::NoEndpoint, endpoint: None }.into_outcome(cluster);
    };
    let tls = picked.as_ref().and_then(|p| cluster.tls_for(p.index())).map(Arc::as_ref);
    let key = Key { addr: target, protocol: Protocol::Http1, source: None, tls: None, pool: 0 };
    let index = picked.as_ref().map_or(0, |p| p.index());
    // An upgraded connection is one of the cluster's connections for as long as it lasts.
    let Some(opened) = cluster.open_connection() else {
        return Failure { kind: FailureKind::Overflow, endpoint: None }.into_outcome(cluster);
    };
    match splice_upgrade(request, key, &cluster.connections, tls, &proxy.pools, Some(opened)).await {
        Ok(response) => {
            observe(cluster, index, Observed::Status(response.status().as_u16()), proxy);
            Outcome::new(response, cluster.name.clone(), "-")
        }
        Err(e) => {
            observe(cluster, index, Observed::ConnectFailed, proxy);
            Failure { kind: FailureKind::Upstream(e), endpoint: None }.into_outcome(cluster)
        }
    }
}

/// Forwards an upgrade handshake over a connection of its own and, once both sides switch,
/// splices the two upgraded connections like TCP (an idle one is closed, not held forever).
async fn splice_upgrade(
    mut request: Request<Incoming>,
    key: Key,
    connections: &ConnectionPolicy,
    tls: Option<&crate::security::upstream::ClusterTls>,
    pools: &upstream::Pools,
    opened: Option<upstream::OpenConnection>,
) -> Result<Response<Body>, UpstreamError> {
    let downstream = hyper::upgrade::on(&mut request);
    let (parts, _) = request.into_parts();
    let mut outgoing = Request::from_parts(parts, empty());
    prepare_uri(&mut outgoing, Protocol::Http1, key.addr);
    let stream = pools.dial(key, connections, tls, trellis_identity::tls::Carries::Http1).await?;
    let reset = |source| UpstreamError::Reset { addr: key.addr, source };
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.map_err(reset)?;
    tokio::spawn(async move {
        let _ = connection.with_upgrades().await;
    });
    let mut response = sender.send_request(outgoing).await.map_err(reset)?;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream_side = hyper::upgrade::on(&mut response);
        let lifetime = connections.max_duration;
        tokio::spawn(async move {
            if let (Ok(down), Ok(up)) = (downstream.await, upstream_side.await) {
                let mut down = hyper_util::rt::TokioIo::new(down);
                let mut up = hyper_util::rt::TokioIo::new(up);
                let idle = crate::tcp::DEFAULT_IDLE_TIMEOUT;
                let _ = crate::tcp::relay_for(&mut down, &mut up, idle, lifetime).await;
            }
            drop(opened);
        });
    }
    Ok(clean_response(response))
}

/// No service or route of ours: reach the original destination (ALLOW_ANY) or refuse
/// (REGISTRY_ONLY).
async fn passthrough(
    mut request: Request<Incoming>,
    conn: &Conn,
    proxy: &Proxy,
    snapshot: &Snapshot,
) -> Outcome {
    let authority = authority_of(&request);
    let authority = authority.as_deref();
    // Istio's names for these destinations: a bounded label, whatever the Host header says.
    if snapshot.outbound_policy == pb::OutboundPolicy::RegistryOnly {
        return Outcome::new(
            text(StatusCode::BAD_GATEWAY, "destination not in the service registry\n"),
            "BlackHoleCluster",
            "NR",
        );
    }
    let service = "PassthroughCluster";
    let target = match conn.original {
        Some(original) => Some(original),
        // Explicit mode: only the authority says where the request goes.
        None => match authority.and_then(|a| split_authority(a, 80)) {
            Some((host, port)) => box_out_of_line(|| tokio::net::lookup_host((host, port)))
                .await
                .ok()
                .and_then(|mut addrs| addrs.next()),
            None => None,
        },
    };
    let Some(target) = target else {
        return Outcome::new(text(StatusCode::NOT_FOUND, "no route for this authority\n"), service, "NR");
    };
    if target == conn.local || proxy.is_own(target, conn.local.ip()) {
        return Outcome::new(
            text(StatusCode::LOOP_DETECTED, "the request is addressed to the proxy itself\n"),
            service,
            "NR",
        );
    }
    // Istio routes these through its `allow_any` virtual host, past the same HTTP filters.
    if let Some(limit) = &snapshot.outbound_rate_limit {
        let checked =
            box_out_of_line(|| limit.check(&request, target.port(), conn.peer.ip(), &proxy.metrics, service))
                .await;
        if let Err(refusal) = checked {
            return Outcome::new(refusal.response, service, refusal.flags);
        }
    }
    let upgrade = headers::is_upgrade(request.headers());
    headers::strip_hop_by_hop(request.headers_mut(), upgrade);
    headers::ensure_request_id(request.headers_mut());
    let key = Key { addr: target, protocol: Protocol::Http1, source: None, tls: None, pool: 0 };
    send_direct(request, upgrade, key, proxy, service.into()).await
}

fn protocol_of(version: Version) -> Protocol {
    if version == Version::HTTP_2 { Protocol::Http2 } else { Protocol::Http1 }
}

/// Sends to one address without routing (passthrough and inbound delivery), in the protocol
/// the request came in.
async fn send_direct(
    request: Request<Incoming>,
    wants_upgrade: bool,
    key: Key,
    proxy: &Proxy,
    service: Arc<str>,
) -> Outcome {
    if wants_upgrade {
        return match box_out_of_line(|| {
            splice_upgrade(
                request,
                Key { protocol: Protocol::Http1, ..key },
                &ConnectionPolicy::DEFAULT,
                None,
                &proxy.pools,
                None,
            )
        })
        .await
        {
            Ok(response) => Outcome::new(response, service, "-"),
            Err(e) => Outcome::new(
                text(StatusCode::SERVICE_UNAVAILABLE, &format!("upstream connect error: {e}\n")),
                service,
                "UF",
            ),
        };
    }
    let key = Key { protocol: protocol_of(request.version()), ..key };
    let (parts, body) = request.into_parts();
    let limit = proxy.config.load().limits.max_body_bytes as usize;
    let (body, request_bytes) = forwarded_body(body, limit);
    let mut outgoing = Request::from_parts(parts, body);
    prepare_uri(&mut outgoing, key.protocol, key.addr);
    let mut outcome = match proxy.pools.send(key, &ConnectionPolicy::default(), None, None, outgoing).await {
        Ok(response) => Outcome::new(clean_response(response), service, "-"),
        Err(e) => match body_limit(&e) {
            Some(status) => Outcome::new(text(status, "request body too large\n"), service, "-"),
            None if e.is_connect_failure() => {
                let mut failed = Outcome::new(
                    text(StatusCode::SERVICE_UNAVAILABLE, &format!("upstream connect error: {e}\n")),
                    service,
                    "UF",
                );
                failed.log.failure = Some(e.to_string().into());
                failed
            }
            None => Outcome::new(
                text(StatusCode::SERVICE_UNAVAILABLE, &format!("upstream reset: {e}\n")),
                service,
                "UR",
            ),
        },
    };
    outcome.log.host = Some(key.addr);
    outcome.with_request_bytes(request_bytes)
}

/// A request body on its way upstream: held to the size limit and, when its length is not
/// declared, counted for the metrics (a declared one is left `Unknown`: the handler reads it
/// from the headers, for free).
fn forwarded_body(body: Incoming, limit: usize) -> (Body, RequestBytes) {
    let limited = Limited::new(body, limit).map_err(BoxError::from);
    let declared = hyper::body::Body::size_hint(&limited).exact().is_some()
        || hyper::body::Body::is_end_stream(&limited);
    if declared {
        return (limited.boxed(), RequestBytes::Unknown);
    }
    let (counted, request_bytes) = counted(limited);
    (counted.boxed(), request_bytes)
}

async fn inbound(mut request: Request<Incoming>, conn: &Conn, proxy: &Proxy) -> Outcome {
    // Bounded label values: the inbound port, never a client's Host header.
    let target = match conn.original {
        Some(original) => Some(original),
        // Without a redirect (explicit mode, when enabled), the authority's port names the app.
        None if proxy.explicit_inbound => authority_ref(&request)
            .and_then(|a| split_authority(a, 80))
            .map(|(_, port)| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)),
        None => None,
    };
    let service: Arc<str> = match target {
        Some(t) => inbound_service(&request, conn, proxy, t.port()),
        None => "unknown".into(),
    };
    let Some(target) = target else {
        return Outcome::new(
            text(StatusCode::FORBIDDEN, "inbound requests come through the redirect\n"),
            service,
            "NR",
        );
    };
    if proxy.is_own(target, conn.local.ip()) {
        return Outcome::new(
            text(StatusCode::FORBIDDEN, "the proxy's own ports are not reachable\n"),
            service,
            "NR",
        );
    }
    // The app and the policies see one path: `/public/../admin` is `/admin` to both.
    if let Some(normalized) = normalize_path(request.uri().path()) {
        set_path(&mut request, &normalized);
    }
    // The snapshot is held across the CUSTOM provider's answer only when there are policies.
    let (with_policies, rate_limit) = {
        let current = proxy.config.load();
        let rate_limit = current.inbound_rate_limit.clone();
        ((!current.inbound_policy.is_empty()).then(|| arc_swap::Guard::into_inner(current)), rate_limit)
    };
    if let Some(snapshot) = with_policies {
        use crate::security::policy::{Checked, ask_custom, check_request};
        let policy = &snapshot.inbound_policy;
        let checked = match check_request(&mut request, conn, target, proxy, policy, is_grpc) {
            Checked::Done(checked) => checked,
            Checked::AskCustom(pending) => {
                box_out_of_line(|| ask_custom(pending, &mut request, conn, target, proxy, policy)).await
            }
        };
        if let Err(refusal) = checked {
            let mut refused = Outcome::new(refusal.response, service, refusal.flags);
            refused.log.details = refusal.details;
            return refused;
        }
    }
    // After authorization, as Istio's EnvoyFilter inserts the rate-limit filters before the router.
    if let Some(limit) = rate_limit {
        let checked = box_out_of_line(|| {
            limit.check(&request, target.port(), conn.peer.ip(), &proxy.metrics, &service)
        })
        .await;
        if let Err(refusal) = checked {
            return Outcome::new(refusal.response, service, refusal.flags);
        }
    }
    let upgrade = headers::is_upgrade(request.headers());
    headers::strip_hop_by_hop(request.headers_mut(), upgrade);
    headers::ensure_request_id(request.headers_mut());
    headers::add_forwarded(request.headers_mut(), conn.peer_value());
    if let Some(peer) = &conn.tls_peer {
        peer.append_to(request.headers_mut());
    }
    let (addr, source) = inbound_delivery(target, conn);
    send_direct(
        request,
        upgrade,
        Key { addr, protocol: Protocol::Http1, source, tls: None, pool: 0 },
        proxy,
        service,
    )
    .await
}

/// A gateway applies the RequestAuthentications and AuthorizationPolicies that select it to
/// every request before routing it, as a sidecar does to its inbound requests (the
/// destination port is the gateway's port).
async fn gateway_policy(request: &mut Request<Incoming>, conn: &Conn, proxy: &Proxy) -> Result<(), Outcome> {
    let current = proxy.config.load();
    if current.inbound_policy.is_empty() {
        return Ok(());
    }
    let snapshot = arc_swap::Guard::into_inner(current);
    if let Some(normalized) = normalize_path(request.uri().path()) {
        set_path(request, &normalized);
    }
    use crate::security::policy::{Checked, ask_custom, check_request};
    let target = SocketAddr::new(conn.local.ip(), conn.gateway_port.unwrap_or(0));
    let policy = &snapshot.inbound_policy;
    let checked = match check_request(request, conn, target, proxy, policy, is_grpc) {
        Checked::Done(checked) => checked,
        Checked::AskCustom(pending) => ask_custom(pending, request, conn, target, proxy, policy).await,
    };
    checked.map_err(|refusal| {
        let mut refused = Outcome::new(refusal.response, "unknown", refusal.flags);
        refused.log.details = refusal.details;
        refused
    })
}

/// The destination service of an inbound request, for the metrics: the mesh service its
/// authority names (remembered per connection), else this workload's canonical service, as
/// Istio falls back to. Never the authority itself: a client's Host header would mint label
/// values.
fn inbound_service<B>(request: &Request<B>, conn: &Conn, proxy: &Proxy, port: u16) -> Arc<str> {
    let snapshot = proxy.config.load_full();
    let authority = authority_ref(request);
    let (_, found) = conn.service_port(&snapshot, authority, || {
        // An authority without a port means HTTP's 80, as the client meant it.
        (port, authority.and_then(|a| snapshot.by_authority(a, 80)).cloned())
    });
    match found {
        Some(service_port) => service_port.service.clone(),
        None => proxy.metrics.local().canonical_service.clone(),
    }
}

/// Where inbound traffic goes: the app on localhost at the original port (as the design and
/// Istio before 1.10 do), from 127.0.0.6 so that the redirect lets it through. IPv6 goes to
/// `::1` without a chosen source: `::6` is not an address a pod has. In explicit mode on a
/// loopback address of the pod's own (pods sharing one host, as in `trellis demo` without
/// root), the app listens on that address instead of 127.0.0.1. With TPROXY interception the
/// app gets the connection at the address the client dialled, from the client's own address
/// ([`crate::tproxy`]).
pub fn inbound_delivery(original: SocketAddr, conn: &Conn) -> (SocketAddr, Option<IpAddr>) {
    if let Some(transparent) = crate::tproxy::delivery(original, conn) {
        return transparent;
    }
    match (original, conn.local.ip()) {
        (SocketAddr::V4(_), IpAddr::V4(local)) if conn.original.is_none() && local.is_loopback() => {
            (SocketAddr::new(IpAddr::V4(local), original.port()), Some(INBOUND_SOURCE))
        }
        (SocketAddr::V4(_), _) => {
            (SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), original.port()), Some(INBOUND_SOURCE))
        }
        (SocketAddr::V6(_), _) => (SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), original.port()), None),
    }
}

fn content_length<B>(request: &Request<B>) -> Option<u64> {
    content_length_of(request.headers())
}

fn content_length_of(headers: &http::HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

fn authority_of<B>(request: &Request<B>) -> Option<String> {
    authority_ref(request).map(str::to_owned)
}

/// The request's authority: the URI's (HTTP/2, absolute form), else the Host header.
/// The service port a request is for: the authority names the service, as Envoy routes by
/// Host within a port; the address dialled decides when the authority is unknown.
fn find_service_port(
    snapshot: &Snapshot,
    authority: Option<&str>,
    conn: &Conn,
    port: u16,
) -> Option<Arc<ServicePort>> {
    if let Some(gateway_port) = conn.gateway_port {
        let listener = snapshot.gateway.as_ref()?.listener(gateway_port)?;
        return listener.http_route(authority, conn.gateway_server.as_deref());
    }
    let original = conn.original;
    authority
        .and_then(|a| snapshot.by_authority(a, port))
        .or_else(|| original.and_then(|o| snapshot.by_address(o)))
        .cloned()
}

/// The first request to a service whose routes the proxy has not fetched yet waits (bounded)
/// for them; when they do not come, the service port is used as it is.
async fn fetch_virtual_host(
    proxy: &Proxy,
    service_port: Arc<ServicePort>,
    authority: Option<&str>,
    conn: &Conn,
    port: u16,
) -> Option<Arc<ServicePort>> {
    let (Some(on_demand), Some(name)) = (proxy.on_demand.get(), service_port.missing_virtual_host.as_deref())
    else {
        return Some(service_port);
    };
    let lookup = || find_service_port(&proxy.config.load(), authority, conn, port);
    let arrived = || lookup().is_some_and(|sp| sp.virtual_host.is_some());
    if box_out_of_line(|| on_demand.fetch(ResourceType::VirtualHost, name, arrived)).await {
        lookup()
    } else {
        Some(service_port)
    }
}

fn authority_ref<B>(request: &Request<B>) -> Option<&str> {
    request
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| request.headers().get(header::HOST).and_then(|h| h.to_str().ok()))
}

fn is_grpc<B>(request: &Request<B>) -> bool {
    request.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

pub fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

pub fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut response = Response::new(full(Bytes::copy_from_slice(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}
