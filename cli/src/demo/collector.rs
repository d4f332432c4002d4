//! The demo's own Zipkin collector: a small HTTP server in the `trellis` process that takes what
//! the proxies export (`POST /api/v2/spans`, Zipkin's v2 JSON) and keeps it in memory, so the
//! summary can print one request's trace without a Zipkin, Jaeger or Tempo to install. It is
//! the address trellisd resolves the mesh config's tracing provider to (a ServiceEntry of the
//! demo's), on the demo network's gateway as trellisd is (on loopback in explicit mode).
//!
//! What comes in is outside input: bodies are capped, a body that is not a list of spans is
//! refused with 400, spans without valid ids are skipped and counted, and the store is bounded
//! (further spans are counted, not kept). A proxy never waits on it longer than its export.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};

/// Zipkin's path for v2 spans.
pub const SPANS_PATH: &str = "/api/v2/spans";
/// The largest body taken (a proxy sends at most 512 spans a batch, each well under 2 KiB).
const MAX_BODY: usize = 4 << 20;
/// Spans kept at most; the demo's 1 % sampling sends a few hundred.
const MAX_SPANS: usize = 50_000;

/// One span as Zipkin's v2 JSON has it; only what the demo reads.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Span {
    pub trace_id: String,
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Microseconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
    /// Microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_endpoint: Option<Endpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_endpoint: Option<Endpoint>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

impl Span {
    /// Zipkin's ids: a trace id of 16 or 32 hex digits, a span (and parent) id of 16.
    fn has_valid_ids(&self) -> bool {
        let hex = |s: &str, lengths: &[usize]| {
            lengths.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
        };
        hex(&self.trace_id, &[16, 32])
            && hex(&self.id, &[16])
            && self.parent_id.as_deref().is_none_or(|p| hex(p, &[16]))
    }
}

/// What the collector received.
#[derive(Debug, Default)]
pub struct Received {
    pub spans: Vec<Span>,
    /// Export requests answered 202.
    pub batches: u64,
    /// Spans skipped for ids that are not Zipkin's.
    pub invalid: u64,
    /// Spans not kept because the store was full.
    pub dropped: u64,
    /// Requests refused (not a list of spans, too large, wrong path or method).
    pub refused: u64,
}

/// A running collector.
pub struct Collector {
    pub address: SocketAddr,
    received: Arc<Mutex<Received>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Collector {
    /// Listens on `address` (on the current thread's network namespace) and serves until
    /// dropped.
    pub async fn start(address: SocketAddr) -> Result<Collector, String> {
        let listener = tokio::net::TcpListener::bind(address).await.map_err(|e| format!("{address}: {e}"))?;
        let address = listener.local_addr().map_err(|e| format!("{address}: {e}"))?;
        let received: Arc<Mutex<Received>> = Arc::default();
        let store = received.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let store = store.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let store = store.clone();
                        async move { Ok::<_, Infallible>(handle(request, &store).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Collector { address, received, task })
    }

    /// The spans of one trace (its id in lower-case hex, as the proxies write it).
    pub fn trace(&self, trace_id: &str) -> Vec<Span> {
        let received = self.received.lock().unwrap_or_else(|e| e.into_inner());
        received.spans.iter().filter(|s| s.trace_id.eq_ignore_ascii_case(trace_id)).cloned().collect()
    }

    /// Spans and traces received so far, and what was refused or not kept.
    pub fn counts(&self) -> CollectorCounts {
        let received = self.received.lock().unwrap_or_else(|e| e.into_inner());
        let mut traces: Vec<&str> = received.spans.iter().map(|s| s.trace_id.as_str()).collect();
        traces.sort_unstable();
        traces.dedup();
        CollectorCounts {
            spans: received.spans.len() as u64,
            traces: traces.len() as u64,
            batches: received.batches,
            invalid: received.invalid,
            dropped: received.dropped,
            refused: received.refused,
        }
    }
}

/// The collector's totals, for the summary.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CollectorCounts {
    pub spans: u64,
    pub traces: u64,
    pub batches: u64,
    pub invalid: u64,
    pub dropped: u64,
    pub refused: u64,
}

async fn handle(request: Request<Incoming>, store: &Mutex<Received>) -> Response<Full<Bytes>> {
    let (status, message) = receive(request, store).await;
    if !status.is_success() {
        store.lock().unwrap_or_else(|e| e.into_inner()).refused += 1;
    }
    let mut response = Response::new(Full::new(Bytes::from(message)));
    *response.status_mut() = status;
    response
}

async fn receive(request: Request<Incoming>, store: &Mutex<Received>) -> (StatusCode, String) {
    if request.uri().path() != SPANS_PATH {
        return (StatusCode::NOT_FOUND, format!("this collector takes only POST {SPANS_PATH}"));
    }
    if request.method() != Method::POST {
        return (StatusCode::METHOD_NOT_ALLOWED, format!("{SPANS_PATH} takes POST"));
    }
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return (StatusCode::PAYLOAD_TOO_LARGE, format!("a body of at most {MAX_BODY} bytes"));
        }
        Err(e) => return (StatusCode::BAD_REQUEST, format!("reading the body: {e}")),
    };
    match accept(&body, store) {
        Ok(()) => (StatusCode::ACCEPTED, String::new()),
        Err(e) => (StatusCode::BAD_REQUEST, e),
    }
}

/// Decodes a body of spans into the store: a body that is not a JSON list of spans is refused
/// whole; spans with ids that are not Zipkin's are skipped.
fn accept(body: &[u8], store: &Mutex<Received>) -> Result<(), String> {
    let spans: Vec<Span> =
        serde_json::from_slice(body).map_err(|e| format!("not a list of Zipkin v2 spans: {e}"))?;
    let mut received = store.lock().unwrap_or_else(|e| e.into_inner());
    received.batches += 1;
    for span in spans {
        if !span.has_valid_ids() {
            received.invalid += 1;
        } else if received.spans.len() >= MAX_SPANS {
            received.dropped += 1;
        } else {
            received.spans.push(span);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const SPAN: &str = r#"{"traceId":"4bf92f3577b34da6a3ce929d0e0e4736","id":"00f067aa0ba902b7","parentId":"00f067aa0ba902b6","kind":"SERVER","name":"catalog:8080/*","timestamp":1700000000000000,"duration":2800,"localEndpoint":{"serviceName":"catalog.shop","ipv4":"10.77.0.11"},"remoteEndpoint":{"ipv4":"10.77.0.10","port":41000},"tags":{"http.status_code":"200"}}"#;

    async fn post(address: SocketAddr, path: &str, method: Method, body: Vec<u8>) -> StatusCode {
        let stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(connection);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, "zipkin")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        match tokio::time::timeout(Duration::from_secs(10), sender.send_request(request)).await {
            Ok(Ok(response)) => response.status(),
            // The server may close before reading all of an oversized body.
            Ok(Err(_)) => StatusCode::PAYLOAD_TOO_LARGE,
            Err(_) => panic!("no answer"),
        }
    }

    /// Over a real socket: spans are kept and found by trace; every kind of bad input is
    /// refused with its status, and the collector keeps working.
    #[tokio::test]
    async fn takes_spans_and_refuses_what_is_not_spans() {
        let collector = Collector::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let address = collector.address;
        let batch = format!("[{SPAN}]").into_bytes();
        assert_eq!(post(address, SPANS_PATH, Method::POST, batch).await, StatusCode::ACCEPTED);
        let spans = collector.trace("4BF92F3577B34DA6A3CE929D0E0E4736");
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].parent_id.as_deref(), Some("00f067aa0ba902b6"));
        assert_eq!(spans[0].local_endpoint.as_ref().unwrap().service_name.as_deref(), Some("catalog.shop"));
        assert_eq!(spans[0].tags["http.status_code"], "200");

        let cases: Vec<(&str, Method, Vec<u8>, StatusCode)> = vec![
            (SPANS_PATH, Method::POST, b"{\"not\":\"a list\"}".to_vec(), StatusCode::BAD_REQUEST),
            (SPANS_PATH, Method::POST, b"[{\"id\":1}]".to_vec(), StatusCode::BAD_REQUEST),
            (SPANS_PATH, Method::POST, b"\xff\xfe".to_vec(), StatusCode::BAD_REQUEST),
            (SPANS_PATH, Method::POST, b"[[[[[[[[[[[[[[[[".to_vec(), StatusCode::BAD_REQUEST),
            (SPANS_PATH, Method::GET, Vec::new(), StatusCode::METHOD_NOT_ALLOWED),
            ("/api/v1/spans", Method::POST, b"[]".to_vec(), StatusCode::NOT_FOUND),
            (SPANS_PATH, Method::POST, vec![b' '; MAX_BODY + 1], StatusCode::PAYLOAD_TOO_LARGE),
        ];
        for (path, method, body, expected) in cases {
            assert_eq!(post(address, path, method.clone(), body).await, expected, "{method} {path}");
        }
        // Ids that are not Zipkin's: the span is skipped, the rest of the batch kept.
        let bad_ids = SPAN.replace("00f067aa0ba902b7", "zz").replace("4bf92f", "4bf92");
        let other = SPAN.replace("00f067aa0ba902b7", "00000000000000aa");
        let batch = format!("[{bad_ids},{other}]").into_bytes();
        assert_eq!(post(address, SPANS_PATH, Method::POST, batch).await, StatusCode::ACCEPTED);
        let counts = collector.counts();
        assert_eq!((counts.spans, counts.traces, counts.batches, counts.invalid), (2, 1, 2, 1));
        assert_eq!(counts.refused, 7);
    }

    #[test]
    fn the_store_is_bounded() {
        let store = Mutex::new(Received::default());
        let one = format!("[{SPAN}]");
        store.lock().unwrap().spans =
            vec![serde_json::from_str::<Vec<Span>>(&one).unwrap()[0].clone(); MAX_SPANS];
        accept(one.as_bytes(), &store).unwrap();
        let received = store.lock().unwrap();
        assert_eq!((received.spans.len(), received.dropped), (MAX_SPANS, 1));
    }

    #[tokio::test]
    async fn a_taken_address_is_an_error_naming_it() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = taken.local_addr().unwrap();
        let e = Collector::start(address).await.err().unwrap();
        assert!(e.starts_with(&address.to_string()), "{e}");
    }
}
