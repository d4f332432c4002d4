//! Spans leave the proxy in batches, off the request path: a finished span goes into a bounded
//! queue (`try_send`, never waiting), and one task per exporter takes up to `MAX_BATCH` spans at
//! a time — whatever arrived within `FLUSH_INTERVAL` of the first — and sends them to the
//! collector. A slow or absent collector fills the queue, and further spans are dropped and
//! counted (`trellis_trace_spans_total{result="queue_full"}`); a failed export counts its spans
//! as `export_failed`. Requests never wait for either.

mod otlp;
mod zipkin;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full};
use prometheus_client::encoding::EncodeLabelSet;
use tokio::sync::mpsc;
use trellis_xds::config as pb;

use super::node::LocalNode;
use super::span::SpanRecord;
use crate::config::ConfigError;
use crate::metrics::Metrics;

/// Spans waiting for the exporter at most; more are dropped.
pub const QUEUE_CAPACITY: usize = 4096;
/// Spans sent in one export at most.
const MAX_BATCH: usize = 512;
/// How long the first span of a batch waits for others.
const FLUSH_INTERVAL: Duration = Duration::from_millis(500);
/// An export's limit when the provider sets none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// The collector's answer is read up to this size (it is only checked for success).
const MAX_ANSWER_BYTES: usize = 64 << 10;

/// `trellis_trace_spans_total`: spans by provider and what became of them (`exported`,
/// `queue_full`, `export_failed`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpanLabels {
    pub provider: String,
    pub result: &'static str,
}

/// How spans reach one provider's collector.
#[derive(Debug)]
pub struct Exporter {
    provider: pb::TracingProvider,
    local: Arc<LocalNode>,
    sink: Arc<Sink>,
    /// Made with the task, on the first span (compiling a config may happen off a runtime).
    queue: OnceLock<Option<mpsc::Sender<SpanRecord>>>,
}

#[derive(Debug)]
enum Sink {
    Zipkin(HttpTarget),
    OtlpHttp(HttpTarget),
    OtlpGrpc(otlp::GrpcTarget),
}

/// A collector spoken to by HTTP POST.
#[derive(Debug)]
struct HttpTarget {
    addresses: Vec<String>,
    authority: HeaderValue,
    path: http::uri::PathAndQuery,
    headers: Vec<(HeaderName, HeaderValue)>,
    timeout: Duration,
}

fn err(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError { field: format!("tracing.provider.{field}"), message: message.into() }
}

impl Exporter {
    pub fn compile(provider: &pb::TracingProvider, local: Arc<LocalNode>) -> Result<Exporter, ConfigError> {
        if provider.addresses.is_empty() {
            return Err(err("addresses", "at least one collector address is required"));
        }
        for (i, address) in provider.addresses.iter().enumerate() {
            if crate::config::split_authority(address, 0)
                .is_none_or(|(host, port)| host.is_empty() || port == 0)
            {
                return Err(err(&format!("addresses[{i}]"), format!("{address:?} is not host:port")));
            }
        }
        let authority_text = if provider.authority.is_empty() {
            provider.addresses[0].as_str()
        } else {
            provider.authority.as_str()
        };
        let authority = HeaderValue::from_str(authority_text)
            .map_err(|_| err("authority", format!("{authority_text:?} is not a host")))?;
        let timeout = match crate::config::duration(provider.timeout.as_ref(), "tracing.provider.timeout")? {
            Some(t) if !t.is_zero() => t,
            _ => DEFAULT_TIMEOUT,
        };
        let http = |path: &str, default: &str, headers: &std::collections::BTreeMap<String, String>| {
            let path = if path.is_empty() { default } else { path };
            let path = path
                .parse::<http::uri::PathAndQuery>()
                .ok()
                .filter(|_| path.starts_with('/'))
                .ok_or_else(|| err("path", format!("{path:?} is not a path")))?;
            let mut pairs = Vec::with_capacity(headers.len());
            for (name, value) in headers {
                let name = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| err("headers", format!("{name:?} is not a header name")))?;
                let value = HeaderValue::from_str(value)
                    .map_err(|_| err(&format!("headers.{name}"), "the value is not a header value"))?;
                pairs.push((name, value));
            }
            Ok::<_, ConfigError>(HttpTarget {
                addresses: provider.addresses.clone(),
                authority: authority.clone(),
                path,
                headers: pairs,
                timeout,
            })
        };
        let sink = match &provider.kind {
            Some(pb::tracing_provider::Kind::Zipkin(z)) => {
                Sink::Zipkin(http(&z.path, "/api/v2/spans", &Default::default())?)
            }
            Some(pb::tracing_provider::Kind::OtlpHttp(h)) => {
                Sink::OtlpHttp(http(&h.path, "/v1/traces", &h.headers)?)
            }
            Some(pb::tracing_provider::Kind::OtlpGrpc(g)) => {
                Sink::OtlpGrpc(otlp::GrpcTarget::compile(&provider.addresses, authority_text, g, timeout)?)
            }
            None => return Err(err("kind", "one of zipkin, otlp_grpc, otlp_http is required")),
        };
        Ok(Exporter { provider: provider.clone(), local, sink: Arc::new(sink), queue: OnceLock::new() })
    }

    pub fn provider(&self) -> &pb::TracingProvider {
        &self.provider
    }

    pub fn local(&self) -> &LocalNode {
        &self.local
    }

    /// Queues a finished span; when the queue is full (or there is no runtime to export from),
    /// the span is dropped and counted.
    pub fn submit(&self, span: SpanRecord, metrics: &Arc<Metrics>) {
        let queue = self.queue.get_or_init(|| {
            let runtime = tokio::runtime::Handle::try_current().ok()?;
            let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
            runtime.spawn(run(
                rx,
                self.sink.clone(),
                self.provider.clone(),
                self.local.clone(),
                metrics.clone(),
            ));
            Some(tx)
        });
        let sent = queue.as_ref().is_some_and(|q| q.try_send(span).is_ok());
        if !sent {
            metrics.trace_spans(&self.provider.name, "queue_full", 1);
        }
    }
}

/// The exporter's task: batches from the queue, one export at a time, until the exporter (and
/// with it the queue's sender) is dropped and the queue is empty.
async fn run(
    mut queue: mpsc::Receiver<SpanRecord>,
    sink: Arc<Sink>,
    provider: pb::TracingProvider,
    local: Arc<LocalNode>,
    metrics: Arc<Metrics>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        if queue.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        let deadline = tokio::time::Instant::now() + FLUSH_INTERVAL;
        while batch.len() < MAX_BATCH {
            let room = MAX_BATCH - batch.len();
            match tokio::time::timeout_at(deadline, queue.recv_many(&mut batch, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let count = batch.len() as u64;
        let result = match sink.as_ref() {
            Sink::Zipkin(target) => {
                let body = zipkin::encode(&batch, &local, provider.max_tag_length as usize);
                post(target, "application/json", body).await
            }
            Sink::OtlpHttp(target) => {
                let body = otlp::encode(&batch, &local, provider.max_tag_length as usize);
                post(target, "application/x-protobuf", body).await
            }
            Sink::OtlpGrpc(target) => {
                target.export(otlp::request(&batch, &local, provider.max_tag_length as usize)).await
            }
        };
        match result {
            Ok(()) => metrics.trace_spans(&provider.name, "exported", count),
            Err(e) => {
                tracing::debug!(provider = %provider.name, spans = count, "span export failed: {e}");
                metrics.trace_spans(&provider.name, "export_failed", count);
            }
        }
        batch.clear();
    }
}

/// One POST to the first address that takes a connection, within the target's timeout.
async fn post(target: &HttpTarget, content_type: &'static str, body: Bytes) -> Result<(), String> {
    let attempt = async {
        let mut last = String::from("no address");
        for address in &target.addresses {
            let stream = match tokio::net::TcpStream::connect(address.as_str()).await {
                Ok(stream) => stream,
                Err(e) => {
                    last = format!("{address}: {e}");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let io = hyper_util::rt::TokioIo::new(stream);
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(io).await.map_err(|e| format!("{address}: {e}"))?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            let mut request = http::Request::post(target.path.as_str())
                .header(http::header::HOST, target.authority.clone())
                .header(http::header::CONTENT_TYPE, content_type)
                .body(Full::new(body.clone()))
                .map_err(|e| e.to_string())?;
            for (name, value) in &target.headers {
                request.headers_mut().insert(name.clone(), value.clone());
            }
            let response = sender.send_request(request).await.map_err(|e| format!("{address}: {e}"))?;
            let status = response.status();
            // Read (bounded) so that the connection ends cleanly; the content is not needed.
            let _ = http_body_util::Limited::new(response.into_body(), MAX_ANSWER_BYTES).collect().await;
            return if status.is_success() {
                Ok(())
            } else {
                Err(format!("{address}: the collector answered {status}"))
            };
        }
        Err(last)
    };
    tokio::time::timeout(target.timeout, attempt).await.unwrap_or_else(|_| Err("timed out".to_owned()))
}

/// A tag value cut to the provider's limit (0: none).
fn limited(value: &str, max: usize) -> &str {
    if max == 0 || value.len() <= max {
        return value;
    }
    let mut end = max;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::trace::span::Kind;

    fn span(tag: &str) -> SpanRecord {
        SpanRecord {
            trace_id: 0x4bf92f3577b34da6a3ce929d0e0e4736,
            short_trace_id: false,
            span_id: 0x00f067aa0ba902b7,
            parent_id: None,
            kind: Kind::Client,
            name: "web:80/*".into(),
            start_unix_nanos: 1_700_000_000_000_000_000,
            duration_nanos: 1_500,
            tags: vec![("http.url".into(), tag.to_owned())],
            error: false,
            peer: "127.0.0.1:5000".parse().unwrap(),
        }
    }

    fn provider(kind: pb::tracing_provider::Kind) -> pb::TracingProvider {
        pb::TracingProvider {
            name: "z".into(),
            addresses: vec!["127.0.0.1:9".into()],
            kind: Some(kind),
            ..Default::default()
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_full_queue_drops_and_counts_without_waiting() {
        let zipkin = provider(pb::tracing_provider::Kind::Zipkin(pb::TracingZipkin::default()));
        let exporter = Exporter::compile(&zipkin, Arc::new(LocalNode::resolve(None))).unwrap();
        let metrics = Arc::new(Metrics::new(crate::metrics::Workload::from_env()));
        // This thread never yields: the exporter's task cannot take anything yet.
        for _ in 0..QUEUE_CAPACITY + 100 {
            exporter.submit(span("/"), &metrics);
        }
        let text = metrics.render();
        assert!(
            text.contains(r#"trellis_trace_spans_total{provider="z",result="queue_full"} 100"#),
            "{text}"
        );
    }

    #[test]
    fn bad_providers_are_refused_with_their_field() {
        let mut p =
            provider(pb::tracing_provider::Kind::Zipkin(pb::TracingZipkin { path: "no-slash".into() }));
        let local = Arc::new(LocalNode::resolve(None));
        assert_eq!(Exporter::compile(&p, local.clone()).unwrap_err().field, "tracing.provider.path");
        p.kind = None;
        assert_eq!(Exporter::compile(&p, local.clone()).unwrap_err().field, "tracing.provider.kind");
        p.kind = Some(pb::tracing_provider::Kind::OtlpHttp(pb::TracingOtlpHttp {
            path: String::new(),
            headers: [("bad name".to_owned(), "v".to_owned())].into(),
        }));
        assert_eq!(Exporter::compile(&p, local.clone()).unwrap_err().field, "tracing.provider.headers");
        p.addresses = vec!["nowhere".into()];
        assert_eq!(Exporter::compile(&p, local.clone()).unwrap_err().field, "tracing.provider.addresses[0]");
        p.addresses = vec![];
        assert_eq!(Exporter::compile(&p, local).unwrap_err().field, "tracing.provider.addresses");
    }

    #[test]
    fn encodings_cut_tags_on_character_boundaries_and_round_trip() {
        let local = LocalNode::resolve(None);
        let long = "é".repeat(100);
        let json = zipkin::encode(&[span(&long)], &local, 11);
        let list: Vec<serde_json::Value> = serde_json::from_slice(&json).unwrap();
        assert_eq!(list[0]["tags"]["http.url"], "ééééé", "11 bytes is 5 whole characters");
        assert_eq!(list[0]["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(list[0]["timestamp"], 1_700_000_000_000_000u64);
        assert_eq!(list[0]["duration"], 1);
        let bytes = otlp::encode(&[span(&long)], &local, 0);
        let decoded =
            trellis_xds::opentelemetry::proto::collector::trace::v1::ExportTraceServiceRequest::decode(bytes)
                .unwrap();
        let span = &decoded.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736u128.to_be_bytes());
        assert_eq!(span.end_time_unix_nano - span.start_time_unix_nano, 1_500);
        assert!(span.parent_span_id.is_empty());
    }
}
