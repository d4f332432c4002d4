//! Real sockets for the proxy's tests: upstream HTTP servers (HTTP/1.1 and HTTP/2) that can be
//! told to fail or stall, a proxy started in-process on free loopback ports (explicit mode: the
//! client dials the proxy and names the service in its authority), and an HTTP client.

#![allow(dead_code)]

pub mod jwt;
pub mod mesh;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use trellis_proxy::metrics::{Metrics, Workload};
use trellis_proxy::{Options, Running};

/// What an upstream saw of a request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub version: Version,
    pub headers: BTreeMap<String, String>,
    pub peer: SocketAddr,
}

/// An upstream HTTP server on 127.0.0.1. It answers 200 with its name; `fail_next(n)` makes the
/// next n requests get 503; the request header `x-delay-ms` delays the answer; `x-status` sets
/// the status.
pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
    failures: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    pub async fn start(name: &str) -> Upstream {
        Upstream::start_on(name, "127.0.0.1:0").await
    }

    pub async fn start_on(name: &str, addr: &str) -> Upstream {
        Upstream::serve(name, TcpListener::bind(addr).await.unwrap())
    }

    /// Serves on a listener bound elsewhere (in a test's network namespace).
    pub fn serve(name: &str, listener: TcpListener) -> Upstream {
        let addr = listener.local_addr().unwrap();
        let upstream = Upstream {
            name: name.to_owned(),
            addr,
            requests: Arc::default(),
            failures: Arc::default(),
            seen: Arc::default(),
        };
        let (name, requests, failures, seen) = (
            upstream.name.clone(),
            upstream.requests.clone(),
            upstream.failures.clone(),
            upstream.seen.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else { continue };
                let (name, requests, failures, seen) =
                    (name.clone(), requests.clone(), failures.clone(), seen.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let (name, requests, failures, seen) =
                            (name.clone(), requests.clone(), failures.clone(), seen.clone());
                        async move {
                            Ok::<_, Infallible>(
                                answer(request, peer, &name, &requests, &failures, &seen).await,
                            )
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        upstream
    }

    pub fn fail_next(&self, n: usize) {
        self.failures.store(n, Ordering::SeqCst);
    }

    pub fn count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn last(&self) -> Seen {
        self.seen.lock().unwrap().last().cloned().expect("a request arrived")
    }
}

async fn answer(
    mut request: Request<Incoming>,
    peer: SocketAddr,
    name: &str,
    requests: &AtomicUsize,
    failures: &AtomicUsize,
    seen: &Mutex<Vec<Seen>>,
) -> Response<BoxBody<Bytes, Infallible>> {
    requests.fetch_add(1, Ordering::SeqCst);
    let header = |n: &str| request.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
    seen.lock().unwrap().push(Seen {
        method: request.method().to_string(),
        path: request.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default(),
        version: request.version(),
        headers: request
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
            .collect(),
        peer,
    });
    if let Some(ms) = header("x-delay-ms").and_then(|v| v.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if request.headers().contains_key("upgrade") {
        // Switch, then echo whatever comes.
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let mut response = Response::new(Full::default().boxed());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        response.headers_mut().insert("connection", "upgrade".parse().unwrap());
        response.headers_mut().insert("upgrade", "echo".parse().unwrap());
        return response;
    }
    let failing = failures.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
    if failing && let Some(code) = header("x-fail-grpc-status") {
        // A gRPC failure: HTTP 200 with the status in the headers (a trailers-only response).
        let mut response = Response::new(Full::default().boxed());
        response.headers_mut().insert("content-type", "application/grpc".parse().unwrap());
        response.headers_mut().insert("grpc-status", code.parse().unwrap());
        return response;
    }
    let status = if failing {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        header("x-status")
            .and_then(|s| s.parse().ok())
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::OK)
    };
    let body_delay = header("x-body-delay-ms").and_then(|v| v.parse().ok()).map(Duration::from_millis);
    let body = request.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let content = if body.is_empty() { Bytes::from(name.to_owned()) } else { body };
    let mut response = Response::new(match body_delay {
        // Headers now, the body later.
        Some(delay) => {
            DelayedBody { sleep: Box::pin(tokio::time::sleep(delay)), content: Some(content) }.boxed()
        }
        None => Full::new(content).boxed(),
    });
    *response.status_mut() = status;
    response.headers_mut().insert("x-upstream", name.parse().unwrap());
    response
}

/// A body whose one chunk comes after a delay.
struct DelayedBody {
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    content: Option<Bytes>,
}

impl hyper::body::Body for DelayedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        use std::future::Future;
        if self.sleep.as_mut().poll(cx).is_pending() {
            return std::task::Poll::Pending;
        }
        std::task::Poll::Ready(self.content.take().map(|c| Ok(hyper::body::Frame::data(c))))
    }
}

/// One service, `api` (alias of `api.test.svc.cluster.local`, port 80 declared `protocol`), one
/// route to one cluster over `endpoint_ports` on 127.0.0.1; the extras are YAML lines added to
/// the route and to the cluster.
pub fn api_config(endpoint_ports: &[u16], protocol: &str, route_extra: &str, cluster_extra: &str) -> String {
    let list: String = endpoint_ports
        .iter()
        .map(|port| format!("      - {{ address: 127.0.0.1, port: {port} }}\n"))
        .collect();
    format!(
        r#"
services:
  - name: api.test.svc.cluster.local
    aliases: [api]
    ports: [{{ port: 80, protocol: {protocol} }}]
virtualHosts:
  - name: api.test.svc.cluster.local:80
    routes:
      - name: all
        forward: {{ clusters: [{{ cluster: api }}] }}
{route_extra}
clusters:
  - name: api
    service: api.test.svc.cluster.local
{cluster_extra}
endpoints:
  - service: api.test.svc.cluster.local
    endpoints:
{list}"#
    )
}

/// A child process, killed (by pid) and reaped when the test ends, however it ends.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A proxy on free loopback ports, with its configuration in a file it watches.
pub struct TestProxy {
    pub running: Running,
    pub config_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestProxy {
    pub async fn start(config: &str) -> TestProxy {
        TestProxy::start_with(config, true).await
    }

    /// As in a pod: inbound connections must come through the redirect.
    pub async fn start_strict(config: &str) -> TestProxy {
        TestProxy::start_with(config, false).await
    }

    async fn start_with(config: &str, explicit_inbound: bool) -> TestProxy {
        TestProxy::start_with_identity(config, explicit_inbound, None).await
    }

    /// With a mesh identity (mutual TLS on both sides).
    pub async fn start_with_identity(
        config: &str,
        explicit_inbound: bool,
        identity: Option<trellis_proxy::Identity>,
    ) -> TestProxy {
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("config.yaml");
        std::fs::write(&config_path, config).unwrap();
        let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let options = Options {
            outbound: vec![local],
            inbound: vec![local],
            admin: vec![local],
            readiness: vec![local],
            stats: vec![local],
            config_file: Some(config_path.clone()),
            xds: None,
            explicit_inbound,
            identity,
        };
        let workload = Workload { name: "test-client".into(), namespace: "test".into() };
        let running = trellis_proxy::start(options, Metrics::new(workload), None).unwrap();
        TestProxy { running, config_path, _dir: dir }
    }

    pub fn outbound(&self) -> SocketAddr {
        self.running.outbound[0]
    }

    pub fn inbound(&self) -> SocketAddr {
        self.running.inbound[0]
    }

    /// Replaces the configuration file and waits (bounded) until the proxy runs the new version.
    pub async fn reload(&self, config: &str) {
        let before = self.running.proxy.config.load().version;
        std::fs::write(&self.config_path, config).unwrap();
        wait_until("the new configuration is in force", || self.running.proxy.config.load().version > before)
            .await;
    }

    pub async fn admin_get(&self, path: &str) -> (StatusCode, String) {
        get_text(self.running.admin[0], path).await
    }

    pub async fn metrics(&self) -> String {
        get_text(self.running.stats[0], "/stats/prometheus").await.1
    }
}

pub async fn get_text(addr: SocketAddr, path: &str) -> (StatusCode, String) {
    let mut client = Client::connect(addr, Version::HTTP_11).await;
    let response =
        client.send(Request::get(path).header("host", "admin").body(Full::default()).unwrap()).await.unwrap();
    (response.status, response.text())
}

/// Waits for a condition, polling, with a deadline.
pub async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub trailers: Option<http::HeaderMap>,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// An HTTP/1.1 or HTTP/2 (prior knowledge) client on one connection.
pub enum Client {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Client {
    pub async fn connect(addr: SocketAddr, version: Version) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        let io = TokioIo::new(stream);
        if version == Version::HTTP_2 {
            let (sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
            tokio::spawn(conn);
            Client::H2(sender)
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn.with_upgrades());
            Client::H1(sender)
        }
    }

    pub async fn send(&mut self, mut request: Request<Full<Bytes>>) -> Result<Answer, hyper::Error> {
        let response = match self {
            Client::H1(s) => {
                // HTTP/1.1 clients send the path, and the authority in Host.
                if let Some(path) = request.uri().path_and_query().cloned() {
                    *request.uri_mut() = path.as_str().parse().unwrap();
                }
                s.ready().await?;
                s.send_request(request).await?
            }
            Client::H2(s) => s.send_request(request).await?,
        };
        let (parts, body) = response.into_parts();
        let collected = body.collect().await?;
        let trailers = collected.trailers().cloned();
        Ok(Answer { status: parts.status, headers: parts.headers, body: collected.to_bytes(), trailers })
    }

    /// GET `path` with this authority (Host for HTTP/1.1, :authority for HTTP/2).
    pub async fn get(&mut self, authority: &str, path: &str) -> Answer {
        self.send(get(authority, path, &[])).await.unwrap()
    }
}

/// A GET request naming `authority`, in the form each HTTP version carries it.
pub fn get(authority: &str, path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut builder = Request::get(format!("http://{authority}{path}"));
    builder = builder.header("host", authority);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    builder.body(Full::default()).unwrap()
}

/// How a [`Scripted`] upstream answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// This status, with the server's name as the body.
    Status(u16),
    /// Reads the request and never answers (until the connection is closed).
    Hang,
    /// Reads the request, then resets the connection (RST).
    Reset,
    /// Answers 200 after this many milliseconds.
    Slow(u64),
}

/// A plain HTTP/1.1 server on 127.0.0.1 whose behaviour a test changes at any time; it counts
/// requests, accepted connections, and connections open now (and the most at once).
pub struct Scripted {
    pub name: String,
    pub addr: SocketAddr,
    behaviour: Arc<Mutex<Behaviour>>,
    pub requests: Arc<AtomicUsize>,
    pub accepted: Arc<AtomicUsize>,
    pub open: Arc<AtomicUsize>,
    pub most_open: Arc<AtomicUsize>,
}

impl Scripted {
    pub async fn start(name: &str, behaviour: Behaviour) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = Scripted {
            name: name.to_owned(),
            addr: listener.local_addr().unwrap(),
            behaviour: Arc::new(Mutex::new(behaviour)),
            requests: Arc::default(),
            accepted: Arc::default(),
            open: Arc::default(),
            most_open: Arc::default(),
        };
        let (name, behaviour, requests, accepted, open, most_open) = (
            server.name.clone(),
            server.behaviour.clone(),
            server.requests.clone(),
            server.accepted.clone(),
            server.open.clone(),
            server.most_open.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                accepted.fetch_add(1, Ordering::SeqCst);
                let now_open = open.fetch_add(1, Ordering::SeqCst) + 1;
                most_open.fetch_max(now_open, Ordering::SeqCst);
                let (name, behaviour, requests, open) =
                    (name.clone(), behaviour.clone(), requests.clone(), open.clone());
                tokio::spawn(async move {
                    let _ = scripted_connection(stream, &name, &behaviour, &requests).await;
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        server
    }

    pub fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    pub fn count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Serves one connection: requests without bodies (GET), answered per the behaviour at the
/// time each arrives.
async fn scripted_connection(
    mut stream: TcpStream,
    name: &str,
    behaviour: &Mutex<Behaviour>,
    requests: &AtomicUsize,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.set_nodelay(true)?;
    let mut buffer = Vec::new();
    loop {
        // One request head.
        let end = loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buffer.extend_from_slice(&chunk[..n]);
        };
        buffer.drain(..end);
        requests.fetch_add(1, Ordering::SeqCst);
        let now = *behaviour.lock().unwrap();
        let status = match now {
            Behaviour::Status(status) => status,
            Behaviour::Slow(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                200
            }
            Behaviour::Hang => {
                // Until the client gives up and closes.
                let mut sink = [0u8; 1024];
                while stream.read(&mut sink).await? != 0 {}
                return Ok(());
            }
            Behaviour::Reset => {
                // A zero linger makes the close an RST and never blocks.
                #[allow(deprecated)]
                stream.set_linger(Some(Duration::ZERO))?;
                return Ok(());
            }
        };
        // One write: a head and a body in two would meet Nagle and delayed ACKs (40 ms).
        let answer = format!(
            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nx-upstream: {name}\r\n\r\n{name}",
            name.len()
        );
        stream.write_all(answer.as_bytes()).await?;
    }
}
