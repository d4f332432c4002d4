//! A sampled request's span: started when the request arrives, given its answer's tags when the
//! response is ready, and finished (duration, response size) when the response body is done,
//! then handed to the exporter. Tag names and values are Envoy's, as Istio's proxies send them.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, Version, header};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use super::Tracing;
use super::context::Outgoing;
use crate::Proxy;
use crate::body::RequestBytes;
use crate::metrics::Metrics;
use crate::serve::Conn;
use crate::upstream::{Body, BoxError};

static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The outbound side: this proxy calls the next hop.
    Client,
    /// The inbound side: this proxy serves a caller.
    Server,
}

/// A finished span, as the exporters send it.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub trace_id: u128,
    /// The trace id came as 64 bits (B3): Zipkin gets it so.
    pub short_trace_id: bool,
    pub span_id: u64,
    pub parent_id: Option<u64>,
    pub kind: Kind,
    pub name: String,
    pub start_unix_nanos: u64,
    pub duration_nanos: u64,
    pub tags: Vec<(Cow<'static, str>, String)>,
    /// A 5xx answer (Envoy's `error` tag; OTLP's error status).
    pub error: bool,
    /// The downstream peer (the caller's address).
    pub peer: SocketAddr,
}

/// What a sampled request's span knows from the request.
pub struct Started {
    tracing: Arc<Tracing>,
    metrics: Arc<Metrics>,
    out: Outgoing,
    kind: Kind,
    start_unix_nanos: u64,
    started: Instant,
    method: http::Method,
    url: String,
    host: String,
    port: u16,
    protocol: &'static str,
    user_agent: Option<HeaderValue>,
    request_id: Option<HeaderValue>,
    header_tags: Vec<(Arc<str>, String)>,
    peer: SocketAddr,
    inbound_peer: Option<Arc<str>>,
    answer: Option<Answer>,
}

/// What the span learns from the answer.
struct Answer {
    status: u16,
    flags: &'static str,
    service: Arc<str>,
    cluster: Option<Arc<str>>,
    request_bytes: RequestBytes,
    peer_principal: Option<Arc<str>>,
}

impl Started {
    pub(super) fn new<B>(
        request: &mut Request<B>,
        conn: &Conn,
        proxy: &Arc<Proxy>,
        tracing: Arc<Tracing>,
        out: Outgoing,
        kind: Kind,
    ) -> Box<Started> {
        // Envoy gives every request an id before tracing it; the span carries it.
        crate::headers::ensure_request_id(request.headers_mut());
        let authority = request
            .uri()
            .authority()
            .map(|a| a.as_str())
            .or_else(|| request.headers().get(header::HOST).and_then(|h| h.to_str().ok()))
            .unwrap_or("");
        let default_port = conn.original.map_or(80, |o| o.port());
        let (host, port) =
            crate::config::split_authority(authority, default_port).unwrap_or(("", default_port));
        // The port dialled names the service, whatever the Host header says.
        let port = conn.original.map_or(port, |o| o.port());
        let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
        let mut url = format!("http://{authority}{path}");
        truncate(&mut url, tracing.max_path_tag_length);
        let headers = request.headers();
        let header_tags = tracing
            .header_tags
            .iter()
            .filter_map(|t| {
                let value = headers.get(&t.header).and_then(|v| v.to_str().ok()).map(str::to_owned);
                value.or_else(|| t.default.clone()).map(|v| (t.tag.clone(), v))
            })
            .collect();
        Box::new(Started {
            metrics: proxy.metrics.clone(),
            out,
            kind,
            start_unix_nanos: unix_nanos(),
            started: Instant::now(),
            method: request.method().clone(),
            url,
            host: host.to_owned(),
            port,
            protocol: protocol(request.version()),
            user_agent: headers.get(header::USER_AGENT).cloned(),
            request_id: headers.get(&X_REQUEST_ID).cloned(),
            header_tags,
            peer: conn.peer,
            inbound_peer: conn.tls_peer.as_ref().map(|p| p.principal.clone()),
            answer: None,
            tracing,
        })
    }

    /// The answer's part: status, response flags, the service and upstream cluster, the request
    /// size, and (outbound) the peer the mutual TLS connection proved.
    pub fn answered(
        &mut self,
        status: u16,
        flags: &'static str,
        service: &Arc<str>,
        cluster: Option<&Arc<str>>,
        request_bytes: &RequestBytes,
        outbound_peer: Option<&Arc<str>>,
    ) {
        self.answer = Some(Answer {
            status,
            flags,
            service: service.clone(),
            cluster: cluster.cloned(),
            request_bytes: match request_bytes {
                RequestBytes::Unknown => RequestBytes::Unknown,
                RequestBytes::Known(n) => RequestBytes::Known(*n),
                RequestBytes::Counted(counter) => RequestBytes::Counted(counter.clone()),
            },
            peer_principal: match self.kind {
                Kind::Client => outbound_peer.cloned(),
                Kind::Server => self.inbound_peer.clone(),
            },
        });
    }

    /// The response, with a body that finishes the span when it is done.
    pub fn wrap(self: Box<Self>, response: Response<Body>) -> Response<Body> {
        response.map(|body| Finishing { inner: body, span: Some(self), sent: 0 }.boxed())
    }

    fn finish(self: Box<Self>, response_bytes: u64) {
        let exporter = self.tracing.exporter.clone();
        let metrics = self.metrics.clone();
        exporter.submit(self.into_record(response_bytes), &metrics);
    }

    fn into_record(self: Box<Self>, response_bytes: u64) -> SpanRecord {
        let this = *self;
        let local = &this.tracing.local;
        let answer = this.answer;
        let status = answer.as_ref().map_or(0, |a| a.status);
        let service = answer.as_ref().map(|a| a.service.clone());
        // Istio's operation names: `<service host>:<port>/*` (the outbound side knows the
        // service's name; the inbound side names it by the request's authority).
        let name = match (this.kind, &service) {
            (Kind::Client, Some(service)) => format!("{service}:{}/*", this.port),
            _ => format!("{}:{}/*", this.host, this.port),
        };
        let cluster = match (this.kind, &answer) {
            (_, Some(Answer { cluster: Some(c), .. })) => c.to_string(),
            (Kind::Server, _) => format!("inbound|{}||", this.port),
            (Kind::Client, Some(a)) => a.service.to_string(),
            (Kind::Client, None) => "-".to_owned(),
        };
        let request_size = answer.as_ref().map_or(0, |a| request_total(&a.request_bytes));
        let text = |v: &Option<HeaderValue>| {
            v.as_ref().and_then(|v| v.to_str().ok()).map_or_else(|| "-".to_owned(), str::to_owned)
        };
        let mut tags: Vec<(Cow<'static, str>, String)> = Vec::with_capacity(24 + this.header_tags.len());
        let mut tag = |k: &'static str, v: String| tags.push((Cow::Borrowed(k), v));
        tag("node_id", local.node_id.clone());
        tag("guid:x-request-id", text(&this.request_id));
        tag("http.url", this.url);
        tag("http.method", this.method.as_str().to_owned());
        tag("downstream_cluster", "-".to_owned());
        tag("user_agent", text(&this.user_agent));
        tag("http.protocol", this.protocol.to_owned());
        tag("peer.address", this.peer.ip().to_string());
        tag("request_size", request_size.to_string());
        tag("response_size", response_bytes.to_string());
        tag("upstream_cluster", cluster.clone());
        tag("upstream_cluster.name", cluster);
        tag("http.status_code", status.to_string());
        tag("response_flags", answer.as_ref().map_or("-", |a| a.flags).to_owned());
        tag("component", "proxy".to_owned());
        tag("istio.canonical_revision", local.canonical_revision.clone());
        tag("istio.canonical_service", local.canonical_service.clone());
        tag("istio.mesh_id", local.mesh_id.clone());
        tag("istio.namespace", local.namespace.clone());
        tag("istio.cluster_id", local.cluster_id.clone());
        if let Some(principal) = answer.as_ref().and_then(|a| a.peer_principal.as_ref()) {
            tag("peer.principal", principal.to_string());
        }
        let error = status >= 500 || status == 0;
        if error {
            tag("error", "true".to_owned());
        }
        for (k, v) in this.tracing.literal_tags.iter().chain(this.header_tags.iter()) {
            tags.push((Cow::Owned(k.to_string()), v.clone()));
        }
        SpanRecord {
            trace_id: this.out.trace_id,
            short_trace_id: this.out.short_trace_id,
            span_id: this.out.span_id,
            parent_id: this.out.parent_id,
            kind: this.kind,
            name,
            start_unix_nanos: this.start_unix_nanos,
            duration_nanos: u64::try_from(this.started.elapsed().as_nanos()).unwrap_or(u64::MAX),
            tags,
            error,
            peer: this.peer,
        }
    }
}

fn request_total(bytes: &RequestBytes) -> u64 {
    match bytes {
        RequestBytes::Unknown => 0,
        RequestBytes::Known(n) => *n,
        RequestBytes::Counted(counter) => counter.load(std::sync::atomic::Ordering::Relaxed),
    }
}

fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

pub(super) fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Cuts `text` to at most `max` bytes, on a character boundary.
pub fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

/// A response body that finishes its span when it ends or is dropped (the client went away).
struct Finishing {
    inner: Body,
    span: Option<Box<Started>>,
    sent: u64,
}

impl HttpBody for Finishing {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
        {
            this.sent += data.len() as u64;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Finishing {
    fn drop(&mut self) {
        if let Some(span) = self.span.take() {
            span.finish(self.sent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_whole_characters() {
        let mut s = "http://h/é".to_owned();
        truncate(&mut s, 10);
        assert_eq!(s, "http://h/");
        let mut s = "short".to_owned();
        truncate(&mut s, 256);
        assert_eq!(s, "short");
    }
}
