//! Distributed tracing over real sockets: a client proxy (outbound) and a server proxy (inbound)
//! in front of an app, each exporting spans to a collector written here — Zipkin (v2 JSON over
//! HTTP), OTLP over gRPC (a tonic TraceService) and OTLP over HTTP (protobuf), both decoded with
//! the OpenTelemetry protobufs. Checked: a W3C and a B3 (multi and single) parent continued, a
//! fresh trace started, parent/child ids chained across the two hops up to the headers the app
//! sees, Istio's tags, the sampling rate within a binomial tolerance and an upstream decision
//! followed, malformed headers ignored and not passed on, and a collector that is down costing
//! only counted drops.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::{Client, TestProxy, Upstream, get, wait_until};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use serde_json::Value;
use tokio::net::TcpListener;
use trellis_xds::opentelemetry::proto::collector::trace::v1 as collector;
use trellis_xds::opentelemetry::proto::trace::v1 as otlp;

/// A collector's view of spans, whatever the protocol: the fields the tests compare.
#[derive(Clone, Debug)]
struct Span {
    trace_id: String,
    id: String,
    parent_id: Option<String>,
    kind: String,
    name: String,
    tags: std::collections::BTreeMap<String, String>,
    service: String,
}

type Spans = Arc<Mutex<Vec<Span>>>;

/// A Zipkin collector: `POST /api/v2/spans` with a JSON list.
async fn zipkin_collector() -> (SocketAddr, Spans) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let spans: Spans = Arc::default();
    let store = spans.clone();
    serve_http(listener, move |path, content_type, body| {
        assert_eq!(path, "/api/v2/spans");
        assert_eq!(content_type, "application/json");
        let list: Vec<Value> = serde_json::from_slice(&body).expect("Zipkin v2 JSON");
        let mut store = store.lock().unwrap();
        for s in list {
            let text = |k: &str| s[k].as_str().map(str::to_owned);
            store.push(Span {
                trace_id: text("traceId").unwrap(),
                id: text("id").unwrap(),
                parent_id: text("parentId"),
                kind: text("kind").unwrap(),
                name: text("name").unwrap(),
                tags: s["tags"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                    .collect(),
                service: s["localEndpoint"]["serviceName"].as_str().unwrap().to_owned(),
            });
            assert!(s["timestamp"].as_u64().unwrap() > 1_600_000_000_000_000, "microseconds since 1970");
            assert!(s["duration"].as_u64().unwrap() >= 1);
        }
    });
    (addr, spans)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_otlp(request: collector::ExportTraceServiceRequest) -> Vec<Span> {
    let mut out = Vec::new();
    for rs in request.resource_spans {
        let service = rs
            .resource
            .unwrap()
            .attributes
            .into_iter()
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value)
            .and_then(|v| v.value)
            .map(|v| match v {
                trellis_xds::opentelemetry::proto::common::v1::any_value::Value::StringValue(s) => s,
                other => panic!("{other:?}"),
            })
            .unwrap();
        for ss in rs.scope_spans {
            assert_eq!(ss.scope.unwrap().name, "trellis-proxy");
            for s in ss.spans {
                let kind = match otlp::span::SpanKind::try_from(s.kind).unwrap() {
                    otlp::span::SpanKind::Client => "CLIENT",
                    otlp::span::SpanKind::Server => "SERVER",
                    other => panic!("{other:?}"),
                };
                assert!(s.end_time_unix_nano >= s.start_time_unix_nano);
                out.push(Span {
                    trace_id: hex(&s.trace_id),
                    id: hex(&s.span_id),
                    parent_id: (!s.parent_span_id.is_empty()).then(|| hex(&s.parent_span_id)),
                    kind: kind.to_owned(),
                    name: s.name,
                    tags: s
                        .attributes
                        .into_iter()
                        .map(|kv| {
                            let value = match kv.value.and_then(|v| v.value) {
                                Some(trellis_xds::opentelemetry::proto::common::v1::any_value::Value::StringValue(
                                    s,
                                )) => s,
                                other => panic!("{other:?}"),
                            };
                            (kv.key, value)
                        })
                        .collect(),
                    service: service.clone(),
                });
            }
        }
    }
    out
}

/// An OTLP/HTTP collector: `POST /v1/traces` with a protobuf `ExportTraceServiceRequest`.
async fn otlp_http_collector() -> (SocketAddr, Spans) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let spans: Spans = Arc::default();
    let store = spans.clone();
    serve_http(listener, move |path, content_type, body| {
        assert_eq!(path, "/custom/traces");
        assert_eq!(content_type, "application/x-protobuf");
        let request = collector::ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
        store.lock().unwrap().extend(from_otlp(request));
    });
    (addr, spans)
}

/// An HTTP/1.1 server handing each request's path, content type and body to `handle`.
fn serve_http(listener: TcpListener, handle: impl Fn(String, String, Bytes) + Send + Sync + 'static) {
    let handle = Arc::new(handle);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let handle = handle.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let handle = handle.clone();
                    async move {
                        let path = request.uri().path().to_owned();
                        let content_type = request
                            .headers()
                            .get("content-type")
                            .map(|v| v.to_str().unwrap().to_owned())
                            .unwrap_or_default();
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        handle(path, content_type, body);
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

#[derive(Clone, Default)]
struct GrpcCollector {
    spans: Spans,
    metadata: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl collector::trace_service_server::TraceService for GrpcCollector {
    async fn export(
        &self,
        request: tonic::Request<collector::ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<collector::ExportTraceServiceResponse>, tonic::Status> {
        if let Some(key) = request.metadata().get("x-api-key") {
            self.metadata.lock().unwrap().push(key.to_str().unwrap().to_owned());
        }
        self.spans.lock().unwrap().extend(from_otlp(request.into_inner()));
        Ok(tonic::Response::new(collector::ExportTraceServiceResponse::default()))
    }
}

async fn otlp_grpc_collector() -> (SocketAddr, GrpcCollector) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = GrpcCollector::default();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(collector::trace_service_server::TraceServiceServer::new(service.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (addr, service)
}

/// The `tracing` block of a proxy's config: sampling, the provider, and who the proxy is.
fn tracing_block(percent: f64, provider: &str, service: &str) -> String {
    format!(
        r#"
tracing:
  samplingPercent: {percent}
  {provider}
  customTags:
    - {{ tag: team, literal: payments }}
    - {{ tag: user, header: {{ name: x-user, defaultValue: anonymous }} }}
  node:
    nodeId: sidecar~127.0.0.1~{service}-1.test~test.svc.cluster.local
    namespace: test
    canonicalService: {service}
    canonicalRevision: v1
    meshId: cluster.local
    clusterId: Kubernetes
"#
    )
}

fn zipkin_provider(addr: SocketAddr) -> String {
    format!(
        "provider: {{ name: zipkin, addresses: ['{addr}'], authority: zipkin.istio-system, zipkin: {{}} }}"
    )
}

/// The client proxy's config: service `web` on the app's port, one endpoint (the server proxy's
/// inbound port).
fn client_config(app_port: u16, inbound: SocketAddr, tracing: &str) -> String {
    format!(
        r#"
services:
  - name: web.test.svc.cluster.local
    aliases: [web]
    ports: [{{ port: {app_port}, protocol: HTTP }}]
virtualHosts:
  - name: web.test.svc.cluster.local:{app_port}
    routes: [{{ name: all, forward: {{ clusters: [{{ cluster: outbound|{app_port}||web.test.svc.cluster.local }}] }} }}]
clusters:
  - {{ name: "outbound|{app_port}||web.test.svc.cluster.local", service: web.test.svc.cluster.local }}
endpoints:
  - service: web.test.svc.cluster.local
    endpoints: [{{ address: 127.0.0.1, port: {} }}]
{tracing}"#,
        inbound.port()
    )
}

/// client → client proxy (outbound) → server proxy (inbound) → app, both proxies tracing with
/// the given provider lines.
struct Hops {
    app: Upstream,
    client: TestProxy,
    server: TestProxy,
}

async fn hops(percent: f64, client_provider: &str, server_provider: &str) -> Hops {
    let app = Upstream::start("web").await;
    let server = TestProxy::start(&tracing_block(percent, server_provider, "web")).await;
    let client = TestProxy::start(&client_config(
        app.addr.port(),
        server.inbound(),
        &tracing_block(percent, client_provider, "frontend"),
    ))
    .await;
    Hops { app, client, server }
}

impl Hops {
    fn authority(&self) -> String {
        format!("web:{}", self.app.addr.port())
    }

    async fn call(&self, headers: &[(&str, &str)]) -> common::Answer {
        let mut client = Client::connect(self.client.outbound(), Version::HTTP_11).await;
        client.send(get(&self.authority(), "/orders?id=7", headers)).await.unwrap()
    }
}

async fn two_spans(spans: &Spans) -> (Span, Span) {
    wait_until("both proxies exported their span", || spans.lock().unwrap().len() >= 2).await;
    let spans = spans.lock().unwrap().clone();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let client = spans.iter().find(|s| s.kind == "CLIENT").expect("a CLIENT span").clone();
    let server = spans.iter().find(|s| s.kind == "SERVER").expect("a SERVER span").clone();
    (client, server)
}

/// The app's `traceparent`, split: trace id, parent span id, flags.
fn app_traceparent(app: &Upstream) -> (String, String, String) {
    let seen = app.last();
    let tp = seen.headers.get("traceparent").expect("the app got a traceparent").clone();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[0], "00");
    (parts[1].to_owned(), parts[2].to_owned(), parts[3].to_owned())
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn a_w3c_parent_is_continued_across_two_hops_with_istios_tags() {
    let (collector, spans) = zipkin_collector().await;
    let provider = zipkin_provider(collector);
    let h = hops(0.0, &provider, &provider).await;
    let traceparent = format!("00-{TRACE}-{PARENT}-01");
    let answer = h
        .call(&[("traceparent", &traceparent), ("tracestate", "congo=t61rcWkgMzE"), ("user-agent", "curl/8")])
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    let (client, server) = two_spans(&spans).await;
    // The chain: caller's span → client proxy's span → server proxy's span → the app's parent.
    assert_eq!(client.trace_id, TRACE);
    assert_eq!(server.trace_id, TRACE);
    assert_eq!(client.parent_id.as_deref(), Some(PARENT));
    assert_eq!(server.parent_id.as_deref(), Some(client.id.as_str()));
    let (trace, parent, flags) = app_traceparent(&h.app);
    assert_eq!((trace.as_str(), parent.as_str(), flags.as_str()), (TRACE, server.id.as_str(), "01"));
    let seen = h.app.last().headers;
    assert_eq!(seen.get("tracestate").map(String::as_str), Some("congo=t61rcWkgMzE"));
    // Only the format that came goes on, as Envoy passes on what its tracer reads.
    for b3 in ["x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "b3"] {
        assert!(!seen.contains_key(b3), "W3C came, {b3} went on");
    }

    // Istio's operation names and tags.
    let port = h.app.addr.port();
    assert_eq!(client.name, format!("web.test.svc.cluster.local:{port}/*"));
    assert_eq!(server.name, format!("web:{port}/*"));
    assert_eq!((client.service.as_str(), server.service.as_str()), ("frontend.test", "web.test"));
    let t = &client.tags;
    let tag = |k: &str| t.get(k).map(String::as_str);
    assert_eq!(tag("node_id"), Some("sidecar~127.0.0.1~frontend-1.test~test.svc.cluster.local"));
    assert_eq!(
        tag("upstream_cluster"),
        Some(format!("outbound|{port}||web.test.svc.cluster.local").as_str())
    );
    assert_eq!(tag("upstream_cluster.name"), tag("upstream_cluster"));
    assert_eq!(tag("http.method"), Some("GET"));
    assert_eq!(tag("http.url"), Some(format!("http://web:{port}/orders?id=7").as_str()));
    assert_eq!(tag("http.protocol"), Some("HTTP/1.1"));
    assert_eq!(tag("http.status_code"), Some("200"));
    assert_eq!(tag("response_flags"), Some("-"));
    assert_eq!(tag("downstream_cluster"), Some("-"));
    assert_eq!(tag("user_agent"), Some("curl/8"));
    assert_eq!(tag("request_size"), Some("0"));
    assert_eq!(tag("response_size"), Some("3"), "the app answers its name, \"web\"");
    assert_eq!(tag("peer.address"), Some("127.0.0.1"));
    assert_eq!(tag("component"), Some("proxy"));
    assert_eq!(tag("istio.canonical_service"), Some("frontend"));
    assert_eq!(tag("istio.canonical_revision"), Some("v1"));
    assert_eq!(tag("istio.namespace"), Some("test"));
    assert_eq!(tag("istio.mesh_id"), Some("cluster.local"));
    assert_eq!(tag("istio.cluster_id"), Some("Kubernetes"));
    assert_eq!(tag("team"), Some("payments"), "literal custom tag");
    assert_eq!(tag("user"), Some("anonymous"), "header custom tag, defaulted");
    assert_eq!(tag("error"), None);
    assert_eq!(tag("guid:x-request-id"), seen.get("x-request-id").map(String::as_str), "the id the app saw");
    assert_eq!(
        server.tags.get("upstream_cluster").map(String::as_str),
        Some(format!("inbound|{port}||").as_str())
    );
    assert_eq!(server.tags.get("istio.canonical_service").map(String::as_str), Some("web"));
}

#[tokio::test]
async fn b3_parents_are_continued_multi_and_single() {
    let (collector, spans) = zipkin_collector().await;
    let provider = zipkin_provider(collector);
    let h = hops(0.0, &provider, &provider).await;
    // Multi-header, 64-bit trace id: B3 keeps it 64-bit, W3C pads it.
    let answer = h
        .call(&[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", PARENT),
            ("x-b3-parentspanid", "1111111111111111"),
            ("x-b3-sampled", "1"),
            ("x-user", "alice"),
        ])
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    let (client, server) = two_spans(&spans).await;
    assert_eq!(client.trace_id, "a3ce929d0e0e4736");
    assert_eq!(client.parent_id.as_deref(), Some(PARENT));
    assert_eq!(server.parent_id.as_deref(), Some(client.id.as_str()));
    assert_eq!(client.tags.get("user").map(String::as_str), Some("alice"), "header custom tag");
    let seen = h.app.last().headers;
    assert_eq!(seen.get("x-b3-traceid").map(String::as_str), Some("a3ce929d0e0e4736"));
    assert_eq!(seen.get("x-b3-spanid"), Some(&server.id));
    assert_eq!(seen.get("x-b3-parentspanid"), Some(&client.id));
    assert_eq!(seen.get("x-b3-sampled").map(String::as_str), Some("1"));
    assert!(!seen.contains_key("traceparent") && !seen.contains_key("b3"), "B3 came, B3 goes on: {seen:?}");

    // Single header: passed on as a single header, alone.
    spans.lock().unwrap().clear();
    let b3 = format!("{TRACE}-{PARENT}-1");
    assert_eq!(h.call(&[("b3", &b3)]).await.status, StatusCode::OK);
    let (client, server) = two_spans(&spans).await;
    assert_eq!((client.trace_id.as_str(), client.parent_id.as_deref()), (TRACE, Some(PARENT)));
    assert_eq!(server.parent_id.as_deref(), Some(client.id.as_str()));
    let seen = h.app.last().headers;
    assert_eq!(seen.get("b3"), Some(&format!("{TRACE}-{}-1-{}", server.id, client.id)));
    assert!(
        !seen.contains_key("traceparent") && !seen.contains_key("x-b3-traceid"),
        "a single b3 came, a single b3 goes on: {seen:?}"
    );
}

#[tokio::test]
async fn a_fresh_trace_starts_when_none_arrives() {
    let (collector, spans) = zipkin_collector().await;
    let provider = zipkin_provider(collector);
    let h = hops(100.0, &provider, &provider).await;
    assert_eq!(h.call(&[]).await.status, StatusCode::OK);
    let (client, server) = two_spans(&spans).await;
    assert_eq!(client.parent_id, None, "the client proxy's span is the root");
    assert_eq!(client.trace_id.len(), 32);
    assert_ne!(client.trace_id, "0".repeat(32));
    assert_eq!(server.trace_id, client.trace_id);
    assert_eq!(server.parent_id.as_deref(), Some(client.id.as_str()));
    let (trace, parent, flags) = app_traceparent(&h.app);
    assert_eq!((trace, parent, flags.as_str()), (client.trace_id.clone(), server.id.clone(), "01"));
    // Nothing came: both formats go on, whichever the app reads.
    let seen = h.app.last().headers;
    assert_eq!(seen.get("x-b3-traceid"), Some(&client.trace_id));
    assert_eq!(seen.get("x-b3-spanid"), Some(&server.id));
    assert_eq!(seen.get("x-b3-sampled").map(String::as_str), Some("1"));
}

#[tokio::test]
async fn malformed_trace_headers_are_ignored_and_not_passed_on() {
    let (collector, spans) = zipkin_collector().await;
    let provider = zipkin_provider(collector);
    let h = hops(100.0, &provider, &provider).await;
    let long = format!("00-{TRACE}-{PARENT}-01{}", "0".repeat(4000));
    for bad in [
        vec![("traceparent", "00-zzzz-yyyy-01"), ("tracestate", "evil=1")],
        vec![("traceparent", long.as_str())],
        vec![("traceparent", "00-00000000000000000000000000000000-00f067aa0ba902b7-01")],
        vec![
            ("b3", "garbage-in"),
            ("x-b3-traceid", "not hex"),
            ("x-b3-spanid", "!"),
            ("x-b3-sampled", "maybe"),
        ],
        vec![("b3", "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1-nothex")],
    ] {
        spans.lock().unwrap().clear();
        assert_eq!(h.call(&bad).await.status, StatusCode::OK, "{bad:?}");
        let (client, server) = two_spans(&spans).await;
        assert_eq!(client.parent_id, None, "a fresh trace for {bad:?}");
        assert_ne!(client.trace_id, TRACE);
        let seen = h.app.last().headers;
        for (name, value) in &bad {
            assert_ne!(seen.get(*name).map(String::as_str), Some(*value), "{name} was echoed");
        }
        assert!(!seen.contains_key("tracestate"), "a tracestate without a valid traceparent goes");
        assert!(!seen.contains_key("b3"), "an invalid b3 is not rewritten as if it had been valid");
        let (trace, parent, _) = app_traceparent(&h.app);
        assert_eq!((trace, parent), (client.trace_id.clone(), server.id.clone()));
    }
}

#[tokio::test]
async fn sampling_follows_the_rate_and_an_upstream_decision() {
    // One proxy: the decision shows in the headers the app receives, and in the spans.
    let (collector, spans) = zipkin_collector().await;
    let app = Upstream::start("web").await;
    let tracing =
        |percent: u32| format!("tracing: {{ samplingPercent: {percent}, {} }}", zipkin_provider(collector));
    let proxy = TestProxy::start(&client_config(app.addr.port(), app.addr, &tracing(10))).await;
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    let authority = format!("web:{}", app.addr.port());
    const N: usize = 2_000;
    let mut sampled = 0;
    for _ in 0..N {
        assert_eq!(client.send(get(&authority, "/", &[])).await.unwrap().status, StatusCode::OK);
        let seen = app.last().headers;
        let flag = seen.get("x-b3-sampled").expect("a decision is always passed on").clone();
        let (_, _, flags) = app_traceparent(&app);
        assert_eq!(flag == "1", flags == "01", "B3 and W3C agree");
        sampled += usize::from(flag == "1");
    }
    // Binomial(2000, 0.1): mean 200, standard deviation 13.4; five of them either side.
    assert!((133..=267).contains(&sampled), "{sampled} of {N} sampled at 10%");
    wait_until("every sampled request's span is exported", || spans.lock().unwrap().len() == sampled).await;

    // An upstream decision is followed whatever the rate, and goes on in the format it came in.
    let decision = |seen: &std::collections::BTreeMap<String, String>| -> Option<String> {
        if let Some(flag) = seen.get("x-b3-sampled") {
            return Some(flag.clone());
        }
        if let Some(b3) = seen.get("b3") {
            return b3.split('-').nth(2).map(str::to_owned);
        }
        let tp = seen.get("traceparent")?;
        Some(if tp.ends_with("-01") { "1" } else { "0" }.to_owned())
    };
    for (headers, want) in [
        (vec![("x-b3-sampled", "1")], "1"),
        (vec![("b3", "1")], "1"),
        (vec![("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")], "1"),
        (vec![("x-b3-flags", "1")], "1"),
    ] {
        for _ in 0..50 {
            client.send(get(&authority, "/", &headers)).await.unwrap();
            assert_eq!(decision(&app.last().headers).as_deref(), Some(want), "{headers:?}");
        }
    }
    proxy.reload(&client_config(app.addr.port(), app.addr, &tracing(100))).await;
    for headers in [
        vec![("x-b3-sampled", "0")],
        vec![("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")],
    ] {
        for _ in 0..50 {
            client.send(get(&authority, "/", &headers)).await.unwrap();
            assert_eq!(decision(&app.last().headers).as_deref(), Some("0"), "{headers:?}");
        }
    }
}

#[tokio::test]
async fn spans_reach_an_otlp_grpc_collector() {
    let (addr, collector) = otlp_grpc_collector().await;
    let provider = format!(
        "provider: {{ name: otel, addresses: ['{addr}'], authority: otel.observability, otlpGrpc: {{ initialMetadata: {{ x-api-key: secret }} }} }}"
    );
    let h = hops(100.0, &provider, &provider).await;
    let traceparent = format!("00-{TRACE}-{PARENT}-01");
    assert_eq!(h.call(&[("traceparent", &traceparent)]).await.status, StatusCode::OK);
    let (client, server) = two_spans(&collector.spans).await;
    assert_eq!((client.trace_id.as_str(), client.parent_id.as_deref()), (TRACE, Some(PARENT)));
    assert_eq!(server.parent_id.as_deref(), Some(client.id.as_str()));
    assert_eq!(client.service, "frontend.test");
    assert_eq!(client.tags.get("http.status_code").map(String::as_str), Some("200"));
    assert_eq!(client.tags.get("component").map(String::as_str), Some("proxy"));
    assert!(collector.metadata.lock().unwrap().iter().all(|k| k == "secret"));
    assert!(!collector.metadata.lock().unwrap().is_empty(), "initial metadata sent");
    let (_, parent, _) = app_traceparent(&h.app);
    assert_eq!(parent, server.id);
    wait_until("the exports are counted", || {
        let text = h.client.running.proxy.metrics.render();
        text.contains(r#"trellis_trace_spans_total{provider="otel",result="exported"} 1"#)
    })
    .await;
}

#[tokio::test]
async fn spans_reach_an_otlp_http_collector_and_errors_are_marked() {
    let (addr, spans) = otlp_http_collector().await;
    let provider = format!(
        "provider: {{ name: otel-http, addresses: ['{addr}'], otlpHttp: {{ path: /custom/traces, headers: {{ x-api-key: k }} }} }}"
    );
    let h = hops(100.0, &provider, &provider).await;
    let mut client = Client::connect(h.client.outbound(), Version::HTTP_11).await;
    let answer = client.send(get(&h.authority(), "/", &[("x-status", "503")])).await.unwrap();
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    let (client_span, server_span) = two_spans(&spans).await;
    assert_eq!(server_span.parent_id.as_deref(), Some(client_span.id.as_str()));
    for s in [&client_span, &server_span] {
        assert_eq!(s.tags.get("error").map(String::as_str), Some("true"), "{s:?}");
        assert_eq!(s.tags.get("http.status_code").map(String::as_str), Some("503"));
    }
}

#[tokio::test]
async fn a_collector_that_is_down_costs_only_counted_drops() {
    // A port with nothing listening.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    drops_are_counted(closed).await;
}

#[tokio::test]
async fn a_collector_that_never_answers_costs_only_counted_drops() {
    // Takes connections and reads nothing: every export waits for its timeout.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    drops_are_counted(addr).await;
}

async fn drops_are_counted(collector: SocketAddr) {
    let closed = collector;
    let provider =
        format!("provider: {{ name: down, addresses: ['{closed}'], zipkin: {{}}, timeout: 0.5s }}");
    let h = hops(100.0, &provider, &provider).await;
    let mut client = Client::connect(h.client.outbound(), Version::HTTP_11).await;
    for _ in 0..20 {
        assert_eq!(client.send(get(&h.authority(), "/", &[])).await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(h.app.count(), 20);
    // Each proxy's 20 spans end up dropped: the export failed (or the queue was full).
    for proxy in [&h.client, &h.server] {
        let metrics = proxy.running.proxy.metrics.clone();
        wait_until("every span is counted as dropped", || {
            let text = metrics.render();
            let count = |result: &str| -> u64 {
                let prefix = format!("trellis_trace_spans_total{{provider=\"down\",result=\"{result}\"}} ");
                text.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0, |n| n.parse().unwrap())
            };
            count("export_failed") + count("queue_full") == 20
        })
        .await;
    }
}

#[tokio::test]
async fn http2_requests_are_traced_too() {
    let (collector, spans) = zipkin_collector().await;
    let provider = zipkin_provider(collector);
    let h = hops(100.0, &provider, &provider).await;
    let mut client = Client::connect(h.client.outbound(), Version::HTTP_2).await;
    let answer = client.send(get(&h.authority(), "/h2?x=1", &[("x-b3-sampled", "1")])).await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    let (client_span, server_span) = two_spans(&spans).await;
    assert_eq!(client_span.tags.get("http.protocol").map(String::as_str), Some("HTTP/2"));
    let port = h.app.addr.port();
    assert_eq!(client_span.tags.get("http.url"), Some(&format!("http://web:{port}/h2?x=1")));
    assert_eq!(server_span.parent_id.as_deref(), Some(client_span.id.as_str()));
    // B3 came: B3 goes on.
    assert_eq!(h.app.last().headers.get("x-b3-spanid"), Some(&server_span.id));
}
