//! The status port (15020): the kubelet's rewritten probes of the app, run by the proxy against
//! real apps on 127.0.0.1 (HTTP, HTTPS with a self-signed certificate, TCP, gRPC health), its
//! `/healthz/ready`, and the binary's start-up with good and bad ISTIO_KUBE_APP_PROBERS.

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{KillOnDrop, TestProxy, get_text};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use trellis_proxy::app_health::grpc::{HealthCheckRequest, HealthCheckResponse, ServingStatus};
use trellis_proxy::app_health::{self, AppProbers};

/// The status port of an in-process proxy (explicit mode, empty config: ready at once) with
/// these probers, as ISTIO_KUBE_APP_PROBERS would carry them.
async fn status_port(probers: &str) -> (TestProxy, SocketAddr) {
    let proxy = TestProxy::start("").await;
    let probers = AppProbers::parse(probers).unwrap();
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let bound =
        app_health::start(&proxy.running.proxy, &[local], probers, IpAddr::V4(Ipv4Addr::LOCALHOST)).unwrap();
    (proxy, bound[0])
}

/// What the app saw of a probe.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    headers: BTreeMap<String, String>,
}

/// An HTTP app whose every answer has the status it is told, recording what it was sent;
/// over TLS when given an acceptor.
struct App {
    port: u16,
    status: Arc<AtomicU16>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl App {
    async fn start(tls: Option<tokio_rustls::TlsAcceptor>) -> App {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = App {
            port: listener.local_addr().unwrap().port(),
            status: Arc::new(AtomicU16::new(200)),
            seen: Arc::default(),
        };
        let (status, seen) = (app.status.clone(), app.seen.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (status, seen, tls) = (status.clone(), seen.clone(), tls.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        seen.lock().unwrap().push(Seen {
                            path: request.uri().to_string(),
                            headers: request
                                .headers()
                                .iter()
                                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
                                .collect(),
                        });
                        let mut response = Response::new(Full::new(Bytes::from_static(b"app")));
                        *response.status_mut() = StatusCode::from_u16(status.load(Ordering::SeqCst)).unwrap();
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    let _ = match tls {
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(tls) => http.serve_connection(TokioIo::new(tls), service).await,
                            Err(_) => return,
                        },
                        None => http.serve_connection(TokioIo::new(stream), service).await,
                    };
                });
            }
        });
        app
    }

    fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    fn last(&self) -> Seen {
        self.seen.lock().unwrap().last().cloned().expect("the app was probed")
    }
}

/// A TLS acceptor with a fresh self-signed certificate, as apps serving HTTPS probes have.
fn self_signed() -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let certified = rcgen::generate_simple_self_signed(vec!["app.internal".to_owned()]).unwrap();
    let cert = CertificateDer::from(certified.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()));
    let config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

#[tokio::test]
async fn an_http_probe_answers_as_the_app_does_now() {
    let app = App::start(None).await;
    let probers = format!(
        r#"{{"/app-health/web/livez": {{"httpGet": {{"path": "/healthz?deep=1", "port": {}, "scheme": "HTTP",
            "httpHeaders": [{{"name": "X-Custom", "value": "probe-me"}}, {{"name": "Host", "value": "web.local"}}]}},
            "timeoutSeconds": 2}}}}"#,
        app.port
    );
    let (_proxy, status) = status_port(&probers).await;

    assert_eq!(get_text(status, "/app-health/web/livez").await, (StatusCode::OK, "ok\n".to_owned()));
    let seen = app.last();
    assert_eq!(seen.path, "/healthz?deep=1", "the probe's path and query reach the app");
    assert_eq!(seen.headers.get("x-custom").map(String::as_str), Some("probe-me"));
    assert_eq!(seen.headers.get("host").map(String::as_str), Some("web.local"), "the probe's Host wins");
    assert!(seen.headers.get("user-agent").is_some_and(|a| a.starts_with("kube-probe/")), "{seen:?}");

    app.set_status(500);
    let (code, body) = get_text(status, "/app-health/web/livez").await;
    assert_eq!((code, body.as_str()), (StatusCode::SERVICE_UNAVAILABLE, "status 500\n"));

    // Redirects pass, as for the kubelet; the probe runs again each time.
    app.set_status(302);
    assert_eq!(get_text(status, "/app-health/web/livez").await.0, StatusCode::OK);
    app.set_status(200);
    assert_eq!(get_text(status, "/app-health/web/livez").await.0, StatusCode::OK);
    assert_eq!(app.seen.lock().unwrap().len(), 4);
}

#[tokio::test]
async fn lifecycle_hooks_reach_the_app_through_the_status_port() {
    // What the injector writes for a preStop httpGet and a postStart tcpSocket hook (Istio's
    // hello-probes case): the kubelet calls /app-lifecycle/... and the proxy runs the original.
    let app = App::start(None).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let probers = format!(
        r#"{{"/app-lifecycle/web/prestopz": {{"httpGet": {{"path": "/drain", "port": {app}, "scheme": "HTTP"}}}},
            "/app-lifecycle/web/poststartz": {{"tcpSocket": {{"port": {app}}}}},
            "/app-lifecycle/side/poststartz": {{"tcpSocket": {{"port": {closed_port}}}}}}}"#,
        app = app.port
    );
    let (_proxy, status) = status_port(&probers).await;
    assert_eq!(get_text(status, "/app-lifecycle/web/prestopz").await, (StatusCode::OK, "ok\n".to_owned()));
    assert_eq!(app.last().path, "/drain");
    assert_eq!(get_text(status, "/app-lifecycle/web/poststartz").await.0, StatusCode::OK);
    // A hook that fails answers 503, which the kubelet takes as the hook failing.
    assert_eq!(get_text(status, "/app-lifecycle/side/poststartz").await.0, StatusCode::SERVICE_UNAVAILABLE);
    app.set_status(500);
    assert_eq!(get_text(status, "/app-lifecycle/web/prestopz").await.0, StatusCode::SERVICE_UNAVAILABLE);
    // Only the hooks handed over are served.
    assert_eq!(get_text(status, "/app-lifecycle/web/other").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn an_https_probe_accepts_a_self_signed_certificate() {
    let app = App::start(Some(self_signed())).await;
    let probers = format!(
        r#"{{"/app-health/web/readyz": {{"httpGet": {{"path": "/ready", "port": {port}, "scheme": "HTTPS"}}}},
            "/app-health/web/livez": {{"httpGet": {{"path": "/ready", "port": {port}, "scheme": "HTTP"}}}}}}"#,
        port = app.port
    );
    let (_proxy, status) = status_port(&probers).await;
    assert_eq!(get_text(status, "/app-health/web/readyz").await, (StatusCode::OK, "ok\n".to_owned()));
    assert_eq!(app.last().path, "/ready");
    app.set_status(503);
    let (code, body) = get_text(status, "/app-health/web/readyz").await;
    assert_eq!((code, body.as_str()), (StatusCode::SERVICE_UNAVAILABLE, "status 503\n"));
    // Plaintext to a TLS port is not an answer.
    assert_eq!(get_text(status, "/app-health/web/livez").await.0, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn a_tcp_probe_passes_when_the_port_is_open() {
    // Listening is enough: the kernel completes the handshake before anyone accepts.
    let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let probers = format!(
        r#"{{"/app-health/db/livez": {{"tcpSocket": {{"port": {}}}}},
            "/app-health/db/readyz": {{"tcpSocket": {{"port": {closed_port}, "host": "127.0.0.1"}}}}}}"#,
        open.local_addr().unwrap().port()
    );
    let (_proxy, status) = status_port(&probers).await;
    assert_eq!(get_text(status, "/app-health/db/livez").await.0, StatusCode::OK);
    let (code, body) = get_text(status, "/app-health/db/readyz").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, format!("connect 127.0.0.1:{closed_port}: connection refused\n"));
}

/// A gRPC health server (tonic) that knows one service, `app`, whose status the test sets.
#[derive(Clone)]
struct Health {
    app: Arc<AtomicI32>,
}

impl tonic::server::NamedService for Health {
    const NAME: &'static str = "grpc.health.v1.Health";
}

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for Health {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let check = Check(self.app.load(Ordering::SeqCst));
        Box::pin(async move {
            let codec = tonic_prost::ProstCodec::<HealthCheckResponse, HealthCheckRequest>::default();
            Ok(tonic::server::Grpc::new(codec).unary(check, request).await)
        })
    }
}

struct Check(i32);

impl tonic::server::UnaryService<HealthCheckRequest> for Check {
    type Response = HealthCheckResponse;
    type Future = std::future::Ready<Result<tonic::Response<HealthCheckResponse>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<HealthCheckRequest>) -> Self::Future {
        std::future::ready(match request.get_ref().service.as_str() {
            "app" => Ok(tonic::Response::new(HealthCheckResponse { status: self.0 })),
            other => Err(tonic::Status::not_found(format!("unknown service {other:?}"))),
        })
    }
}

#[tokio::test]
async fn a_grpc_probe_passes_while_the_service_is_serving() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let health = Health { app: Arc::new(AtomicI32::new(ServingStatus::Serving as i32)) };
    let app = health.app.clone();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let probers = format!(
        r#"{{"/app-health/api/startupz": {{"grpc": {{"port": {port}, "service": "app"}}, "timeoutSeconds": 2}},
            "/app-health/api/livez": {{"grpc": {{"port": {port}, "service": "other"}}}}}}"#
    );
    let (_proxy, status) = status_port(&probers).await;

    assert_eq!(get_text(status, "/app-health/api/startupz").await, (StatusCode::OK, "ok\n".to_owned()));
    app.store(ServingStatus::NotServing as i32, Ordering::SeqCst);
    let (code, body) = get_text(status, "/app-health/api/startupz").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "service unhealthy (responded with NOT_SERVING)\n");
    // The service name goes through: the server does not know this one.
    let (code, body) = get_text(status, "/app-health/api/livez").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.starts_with("rpc error: code = NotFound desc = unknown service \"other\""), "{body}");
}

#[tokio::test]
async fn an_app_that_never_answers_fails_the_probe_at_its_timeout() {
    // Accepts, reads nothing, answers nothing; keeps every connection open.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let probers = format!(
        r#"{{"/app-health/web/livez": {{"httpGet": {{"port": {port}}}, "timeoutSeconds": 1}},
            "/app-health/web/startupz": {{"grpc": {{"port": {port}}}, "timeoutSeconds": 1}}}}"#
    );
    let (_proxy, status) = status_port(&probers).await;
    for path in ["/app-health/web/livez", "/app-health/web/startupz"] {
        let started = Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(10), get_text(status, path)).await;
        let (code, body) = answer.expect("the status port answers within the probe's timeout, not never");
        assert_eq!(
            (code, body.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "no answer within 1s\n"),
            "{path}"
        );
        assert!(started.elapsed() >= Duration::from_secs(1), "{path}: gave up before the timeout");
    }
}

#[tokio::test]
async fn unknown_paths_are_404_and_healthz_ready_follows_the_proxy() {
    let app = App::start(None).await;
    let probers = format!(r#"{{"/app-health/web/livez": {{"httpGet": {{"port": {}}}}}}}"#, app.port);
    let (proxy, status) = status_port(&probers).await;
    for path in
        ["/app-health/other/livez", "/app-health/web/readyz", "/app-health/web", "/", "/stats/nothing"]
    {
        assert_eq!(get_text(status, path).await.0, StatusCode::NOT_FOUND, "{path}");
    }
    let mut client = common::Client::connect(status, http::Version::HTTP_11).await;
    let post = Request::post("/app-health/web/livez").header("host", "x").body(Full::default()).unwrap();
    assert_eq!(client.send(post).await.unwrap().status, StatusCode::NOT_FOUND, "probes are GETs");
    assert!(app.seen.lock().unwrap().is_empty(), "nothing reached the app");

    let readiness = proxy.running.readiness[0];
    assert_eq!(get_text(status, "/healthz/ready").await, get_text(readiness, "/healthz/ready").await);
    assert_eq!(get_text(status, "/healthz/ready").await.0, StatusCode::OK);
    let (code, metrics) = get_text(status, "/stats/prometheus").await;
    assert_eq!(code, StatusCode::OK);
    assert!(
        metrics.contains("# TYPE trellis_workload_certificate_expiration_timestamp_seconds gauge"),
        "the proxy's metrics, as 15090 serves them: {metrics}"
    );
    proxy.running.proxy.start_drain();
    assert_eq!(get_text(status, "/healthz/ready").await, get_text(readiness, "/healthz/ready").await);
    assert_eq!(get_text(status, "/healthz/ready").await.0, StatusCode::SERVICE_UNAVAILABLE);
}

/// The proxy binary on free ports, `--status-port` as given (none: its default), with `env`.
fn proxy_binary(status_port: Option<&str>, env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_trellis-proxy"));
    for listener in ["--outbound-port", "--inbound-port", "--admin-port", "--readiness-port", "--stats-port"]
    {
        command.args([listener, "0"]);
    }
    if let Some(port) = status_port {
        command.args(["--status-port", port]);
    }
    command.args(["--listen-address", "127.0.0.1", "--log-level", "warn"]);
    command.env_remove("STATUS_PORT").env_remove("PROXY_CONFIG").env_remove("ISTIO_KUBE_APP_PROBERS");
    command.envs(env.iter().copied());
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    command
}

/// The listening line the binary prints first, as `name -> address`.
fn listening(child: &mut std::process::Child) -> BTreeMap<String, String> {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let words: Vec<&str> = line.split_whitespace().skip(2).collect();
    words.chunks(2).filter_map(|w| Some((w[0].to_owned(), w.get(1)?.to_string()))).collect()
}

#[tokio::test]
async fn the_binary_serves_probes_from_its_environment() {
    let app = App::start(None).await;
    let probers =
        format!(r#"{{"/app-health/web/livez": {{"httpGet": {{"path": "/live", "port": {}}}}}}}"#, app.port);
    let mut child = proxy_binary(Some("0"), &[("ISTIO_KUBE_APP_PROBERS", &probers)]).spawn().unwrap();
    let addrs = listening(&mut child);
    let _child = KillOnDrop(child);
    let status: SocketAddr =
        addrs.get("status").and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("{addrs:?}"));
    assert_eq!(get_text(status, "/app-health/web/livez").await.0, StatusCode::OK);
    assert_eq!(app.last().path, "/live");
    assert_eq!(get_text(status, "/healthz/ready").await.0, StatusCode::OK);
}

#[test]
fn status_port_0_in_proxy_config_turns_the_port_off() {
    // As the injector writes it for `status.sidecar.istio.io/port: "0"`; without the flag,
    // PROXY_CONFIG decides.
    let mut child = proxy_binary(None, &[("PROXY_CONFIG", r#"{"statusPort": 0}"#)]).spawn().unwrap();
    let addrs = listening(&mut child);
    drop(KillOnDrop(child));
    assert_eq!(addrs.get("status").map(String::as_str), Some("off"), "{addrs:?}");
}

/// Runs the binary, which must exit by itself within a bounded time; its code and stderr.
fn exits(mut command: Command) -> (Option<i32>, String) {
    use std::io::Read;
    let mut child = KillOnDrop(command.spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the proxy started instead of refusing its environment");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child.0.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    (status.code(), stderr)
}

#[test]
fn a_malformed_probers_variable_stops_the_binary_with_a_clear_error() {
    let too_long = format!(r#"{{"x": "{}"}}"#, "a".repeat(app_health::MAX_PROBERS_LEN));
    for (probers, expected) in [
        ("{not json", "ISTIO_KUBE_APP_PROBERS: not a JSON object of probes: key must be a string".to_owned()),
        ("[1]", "ISTIO_KUBE_APP_PROBERS: not a JSON object of probes: invalid type".to_owned()),
        (
            &too_long,
            format!("ISTIO_KUBE_APP_PROBERS: {} bytes, more than the 65536 accepted", too_long.len()),
        ),
    ] {
        let (code, stderr) = exits(proxy_binary(Some("0"), &[("ISTIO_KUBE_APP_PROBERS", probers)]));
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.starts_with(&format!("trellis-proxy: {expected}")), "{probers:.80}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[tokio::test]
async fn a_probe_that_cannot_run_fails_alone_and_says_why() {
    let app = App::start(None).await;
    let probers = format!(
        r#"{{"/app-health/web/readyz": {{"httpGet": {{"path": "/ready", "port": {}}}}},
            "/app-health/web/livez": {{"httpGet": {{"path": "/", "port": 70000}}}},
            "/app-health/side/livez": {{"tcpSocket": {{"host": "467.0.0.1", "port": 80}}}},
            "/app-health/side/readyz": {{"httpGet": {{"port": 80, "scheme": "gopher"}}}}}}"#,
        app.port
    );
    let mut child = proxy_binary(Some("0"), &[("ISTIO_KUBE_APP_PROBERS", &probers)]).spawn().unwrap();
    let addrs = listening(&mut child);
    let _child = KillOnDrop(child);
    let status: SocketAddr =
        addrs.get("status").and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("{addrs:?}"));
    assert_eq!(get_text(status, "/app-health/web/readyz").await.0, StatusCode::OK);
    assert_eq!(app.last().path, "/ready");
    for (path, reason) in [
        ("/app-health/web/livez", "httpGet.port: 70000: out of range 1-65535"),
        ("/app-health/side/livez", r#"tcpSocket.host: "467.0.0.1": not a DNS name or IP address"#),
        ("/app-health/side/readyz", r#"httpGet.scheme: "gopher": not HTTP or HTTPS"#),
    ] {
        let (code, body) = get_text(status, path).await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{path}: {body}");
        assert!(body.starts_with(&format!("ISTIO_KUBE_APP_PROBERS: {path:?}: {reason}")), "{path}: {body}");
    }
    assert_eq!(get_text(status, "/app-health/other/livez").await.0, StatusCode::NOT_FOUND);
}
