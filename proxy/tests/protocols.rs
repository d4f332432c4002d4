//! HTTP/2 multiplexing, gRPC with a real client and server (Python grpcio), upgrades
//! (WebSocket-style), and inbound delivery to the app from 127.0.0.6.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Client, KillOnDrop, TestProxy, Upstream, api_config, get};
use http::{StatusCode, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(upstream_port: u16, protocol: &str, upstream_protocol: &str) -> String {
    let retries = "        retries: { attempts: 2 }";
    api_config(&[upstream_port], protocol, retries, &format!("    upstreamProtocol: {upstream_protocol}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_share_one_connection_each_way() {
    let upstream = Upstream::start("api").await;
    let proxy = TestProxy::start(&config(upstream.addr.port(), "HTTP", "SAME_AS_DOWNSTREAM")).await;
    let client = Client::connect(proxy.outbound(), Version::HTTP_2).await;
    let Client::H2(sender) = client else { unreachable!() };
    // 50 concurrent streams, each waiting upstream, over one downstream connection.
    let mut calls = Vec::new();
    for _ in 0..50 {
        let mut s = sender.clone();
        calls.push(tokio::spawn(async move {
            s.send_request(get("api", "/", &[("x-delay-ms", "200")])).await.map(|r| r.status())
        }));
    }
    for c in calls {
        assert_eq!(c.await.unwrap().unwrap(), StatusCode::OK);
    }
    let peers: std::collections::BTreeSet<_> = upstream.seen.lock().unwrap().iter().map(|s| s.peer).collect();
    assert_eq!(peers.len(), 1, "the proxy multiplexed them upstream too: {peers:?}");
    assert!(upstream.seen.lock().unwrap().iter().all(|s| s.version == Version::HTTP_2));
}

#[tokio::test]
async fn http1_clients_can_reach_http2_only_upstreams() {
    let upstream = Upstream::start("api").await;
    let proxy = TestProxy::start(&config(upstream.addr.port(), "HTTP", "HTTP2_PRIOR_KNOWLEDGE")).await;
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    let answer = client.get("api", "/x").await;
    assert_eq!((answer.status, answer.text().as_str()), (StatusCode::OK, "api"));
    assert_eq!(upstream.last().version, Version::HTTP_2);
    assert_eq!(upstream.last().path, "/x");
}

/// A request that has to make a new HTTP/2 connection waits for that connection, not for the
/// answer to another request: with one request per connection every request dials, and a quick
/// one passes one whose answer is held.
#[tokio::test]
async fn a_request_dialing_http2_does_not_wait_for_another_requests_answer() {
    let upstream = Upstream::start("api").await;
    let cluster =
        "    upstreamProtocol: HTTP2_PRIOR_KNOWLEDGE\n    connectionPool: { maxRequestsPerConnection: 1 }";
    let proxy = TestProxy::start(&api_config(&[upstream.addr.port()], "HTTP", "", cluster)).await;
    let addr = proxy.outbound();
    let held = tokio::spawn(async move {
        let mut client = Client::connect(addr, Version::HTTP_11).await;
        client.send(get("api", "/held", &[("x-delay-ms", "60000")])).await.map(|a| a.status)
    });
    common::wait_until("the held request reached the upstream", || upstream.count() == 1).await;
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    let quick = tokio::time::timeout(Duration::from_secs(10), client.get("api", "/quick")).await;
    assert_eq!(quick.expect("the quick request waited for the held one's answer").status, StatusCode::OK);
    assert!(!held.is_finished(), "the held request is still held");
    held.abort();
}

/// grpcio, or a visible skip (a failure when CI requires every test to run).
fn python_grpc() -> bool {
    let ok = Command::new("python3").args(["-c", "import grpc"]).status().is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("TRELLIS_PRIVILEGED_TESTS").as_deref() != Ok("require"),
            "Python grpcio is missing (scripts/test.sh installs it)"
        );
        eprintln!("SKIPPED (needs Python grpcio): gRPC interop");
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_statuses_and_streams_pass_through() {
    if !python_grpc() {
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc_interop.py");
    let mut server = Command::new("python3").args([script, "serve"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let _server = KillOnDrop(server);
    let port: u16 = line.trim().parse().expect("the server prints its port");
    let proxy = TestProxy::start(&config(port, "GRPC", "SAME_AS_DOWNSTREAM")).await;
    let target = proxy.outbound().to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3").args([script, "call", &target, "api:80"]).output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Istio's gRPC labels and sizes: the status from the trailers (or a trailers-only answer),
    // the bytes of the streamed messages (no Content-Length on a gRPC response).
    let metrics = proxy.metrics().await;
    let value = |prefix: &str, grpc_status: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with(prefix)
                    && l.contains("request_protocol=\"grpc\"")
                    && l.contains(&format!("grpc_response_status=\"{grpc_status}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .unwrap_or_else(|| panic!("no {prefix} with grpc_response_status {grpc_status} in\n{metrics}"))
            .to_owned()
    };
    assert_eq!(value("istio_requests_total", "0"), "2", "Say and Count: {metrics}");
    assert_eq!(value("istio_requests_total", "5"), "1", "Fail, NOT_FOUND: {metrics}");
    // Say: one message of 13 bytes; Count: five of 1; each with gRPC's 5-byte prefix.
    assert_eq!(value("istio_response_bytes_sum", "0"), "48.0", "{metrics}");
    // The requests, sent without a length: "trellis" and "5", each with the prefix too.
    assert_eq!(value("istio_request_bytes_sum", "0"), "18.0", "{metrics}");
}

#[tokio::test]
async fn upgrades_switch_and_splice() {
    let upstream = Upstream::start("api").await;
    let proxy = TestProxy::start(&config(upstream.addr.port(), "HTTP", "SAME_AS_DOWNSTREAM")).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.outbound()).await.unwrap();
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nHost: api\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(stream.read(&mut byte).await.unwrap(), 1, "closed before the response");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    stream.write_all(b"ping over the upgraded connection").await.unwrap();
    let mut echoed = vec![0u8; 33];
    stream.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping over the upgraded connection");
}

#[tokio::test]
async fn inbound_requests_reach_the_app_from_127_0_0_6() {
    let app = Upstream::start("app").await;
    let proxy = TestProxy::start("").await;
    // Explicit mode: the port comes from the authority.
    let mut client = Client::connect(proxy.inbound(), Version::HTTP_11).await;
    let answer = client
        .send(get(&format!("app.local:{}", app.addr.port()), "/in", &[("x-forwarded-for", "10.9.9.9")]))
        .await
        .unwrap();
    assert_eq!((answer.status, answer.text().as_str()), (StatusCode::OK, "app"));
    let seen = app.last();
    assert_eq!(seen.peer.ip().to_string(), "127.0.0.6");
    assert_eq!(seen.headers.get("x-forwarded-for").map(String::as_str), Some("10.9.9.9, 127.0.0.1"));
    assert_eq!(seen.headers.get("x-forwarded-proto").map(String::as_str), Some("http"));
    let metrics = proxy.metrics().await;
    assert!(metrics.contains("reporter=\"destination\""), "{metrics}");
}

/// TLS that is not the mesh's passes through untouched; its server name (SNI) picks the service.
#[tokio::test]
async fn tls_passes_through_by_server_name() {
    use std::sync::Arc;

    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certified = rcgen::generate_simple_self_signed(vec!["secure.test".to_owned()]).unwrap();
    let cert = CertificateDer::from(certified.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()));
    let server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(stream).await.unwrap();
        let mut buf = [0u8; 5];
        tls.read_exact(&mut buf).await.unwrap();
        tls.write_all(b"secret reply").await.unwrap();
        tls.shutdown().await.unwrap();
    });

    let config = format!(
        r#"
services:
  - name: secure.test
    ports: [{{ port: 443, protocol: TLS, tcpCluster: secure }}]
clusters: [{{ name: secure, service: secure.test }}]
endpoints:
  - service: secure.test
    endpoints: [{{ address: 127.0.0.1, port: {upstream_port} }}]
"#
    );
    let proxy = TestProxy::start(&config).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let stream = tokio::net::TcpStream::connect(proxy.outbound()).await.unwrap();
    // The certificate is verified end to end: the proxy never terminated the TLS.
    let mut tls = connector.connect(ServerName::try_from("secure.test").unwrap(), stream).await.unwrap();
    tls.write_all(b"hello").await.unwrap();
    let mut reply = Vec::new();
    tls.read_to_end(&mut reply).await.unwrap();
    assert_eq!(reply, b"secret reply");
    let metrics = proxy.metrics().await;
    assert!(metrics.contains("istio_tcp_connections_opened_total{reporter=\"source\""), "{metrics}");
}

#[tokio::test]
async fn inbound_upgrades_switch_and_splice() {
    let app = Upstream::start("app").await;
    let proxy = TestProxy::start("").await;
    let mut stream = tokio::net::TcpStream::connect(proxy.inbound()).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: app:{}\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
        app.addr.port()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(stream.read(&mut byte).await.unwrap(), 1, "closed before the response");
        head.push(byte[0]);
    }
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 101"));
    stream.write_all(b"inbound ping").await.unwrap();
    let mut echoed = vec![0u8; 12];
    stream.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"inbound ping");
}
