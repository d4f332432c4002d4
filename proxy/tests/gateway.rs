//! The gateway role from a configuration file (no control plane): a server whose certificate
//! and key are files on the gateway, its TLS versions and cipher suites pinned; JWT and
//! AuthorizationPolicy enforced at the gateway; a TCP server; hostile bytes on a TLS port; a
//! listener that moves to another port as the configuration changes. Real rustls clients on
//! loopback.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::jwt::{ec_jwk, ec_key, es256_token, now};
use common::{TestProxy, Upstream, wait_until};
use rcgen::{CertificateParams, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::rustls;

const ISSUER: &str = "https://issuer.example";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn at(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A TCP server that echoes what it reads.
async fn echo() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = tcp.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    port
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, request: &str) -> String {
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}

struct Gateway {
    proxy: TestProxy,
    https: u16,
    tcp: u16,
    cert_pem: String,
    jwt: ring::signature::EcdsaKeyPair,
    _app: Upstream,
    _dir: tempfile::TempDir,
}

fn config(https: u16, tcp: u16, dir: &std::path::Path, app: u16, echo: u16, jwks: &str) -> String {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    format!(
        r#"
gatewayListeners:
  - port: {https}
    protocol: GATEWAY_HTTPS
    servers:
      - name: edge/ingress/https
        hosts: [api.example.com]
        tls:
          certificateFile: {cert}
          privateKeyFile: {key}
          minProtocolVersion: TLSV1_2
          maxProtocolVersion: TLSV1_2
          cipherSuites: [ECDHE-ECDSA-AES256-GCM-SHA384, NOT-A-SUITE]
        routes: [{{ host: api.example.com, virtualHost: "gateway~{https}~api.example.com" }}]
  - port: {tcp}
    protocol: GATEWAY_TCP
    servers:
      - {{ name: edge/ingress/tcp, hosts: ["*"], tcpClusters: [{{ cluster: echo }}] }}
virtualHosts:
  - name: "gateway~{https}~api.example.com"
    routes: [{{ name: all, forward: {{ clusters: [{{ cluster: api }}] }} }}]
clusters:
  - {{ name: api, service: api }}
  - {{ name: echo, service: echo }}
endpoints:
  - {{ service: api, endpoints: [{{ address: 127.0.0.1, port: {app} }}] }}
  - {{ service: echo, endpoints: [{{ address: 127.0.0.1, port: {echo} }}] }}
authorization:
  - namespace: edge
    name: signed-in
    rules: [{{ from: [{{ requestPrincipals: ["{ISSUER}/*"] }}] }}]
jwtProviders:
  - {{ source: edge/jwt, issuer: "{ISSUER}", jwks: '{jwks}' }}
"#,
        cert = cert.display(),
        key = key.display()
    )
}

impl Gateway {
    /// A gateway listening on `ips` for its listeners.
    async fn start(ips: &[std::net::IpAddr]) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let cert =
            CertificateParams::new(vec!["api.example.com".to_owned()]).unwrap().self_signed(&key).unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
        let app = Upstream::start("api").await;
        let jwt = ec_key();
        let jwks = serde_json::json!({ "keys": [ec_jwk(&jwt, "k1")] }).to_string();
        let (https, tcp) = (free_port(), free_port());
        let text = config(https, tcp, dir.path(), app.addr.port(), echo().await, &jwks);
        let proxy = TestProxy::start(&text).await;
        trellis_proxy::gateway::listener::start(&proxy.running.proxy, ips);
        Gateway { proxy, https, tcp, cert_pem: cert.pem(), jwt, _app: app, _dir: dir }
    }

    fn client(&self) -> tokio_rustls::TlsConnector {
        self.client_offering(&[])
    }

    /// A TLS client trusting the gateway's certificate, offering these ALPN protocols.
    fn client_offering(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).unwrap()).unwrap();
        let mut config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    /// One TLS connection to the HTTPS port, offering `alpn`, once the port listens.
    async fn tls_connection(&self, alpn: &[&[u8]]) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let name = ServerName::try_from("api.example.com").unwrap();
        for _ in 0..200 {
            if let Ok(tcp) = tokio::net::TcpStream::connect(at(self.https)).await
                && let Ok(tls) = self.client_offering(alpn).connect(name.clone(), tcp).await
            {
                return tls;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("the gateway does not serve its HTTPS port");
    }

    /// An HTTPS request with an optional bearer token: the negotiated version and suite, and
    /// the answer.
    async fn get(&self, token: Option<&str>) -> Result<(String, String), String> {
        let tcp = tokio::net::TcpStream::connect(at(self.https)).await.map_err(|e| e.to_string())?;
        let name = ServerName::try_from("api.example.com").unwrap();
        let tls = self.client().connect(name, tcp).await.map_err(|e| e.to_string())?;
        let session = tls.get_ref().1;
        let negotiated = format!(
            "{:?} {:?}",
            session.protocol_version().unwrap(),
            session.negotiated_cipher_suite().unwrap().suite()
        );
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let request =
            format!("GET /items HTTP/1.1\r\nHost: api.example.com\r\n{auth}Connection: close\r\n\r\n");
        Ok((negotiated, exchange(tls, &request).await))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_from_files_terminates_tls_as_configured_and_enforces_jwt_at_the_edge() {
    let gateway = Gateway::start(&["127.0.0.1".parse().unwrap()]).await;
    let token = es256_token(
        &gateway.jwt,
        "k1",
        &serde_json::json!({ "iss": ISSUER, "sub": "alice", "exp": now() + 600 }),
    );
    let mut answer = None;
    for _ in 0..200 {
        if let Ok(got) = gateway.get(Some(&token)).await {
            answer = Some(got);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let (negotiated, text) = answer.expect("the gateway serves its HTTPS port");
    assert_eq!(negotiated, "TLSv1_2 TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "the pinned version and suite");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("api"), "the upstream answered: {text}");

    // No token: no request principal, denied at the gateway; a forged one: 401.
    let (_, text) = gateway.get(None).await.unwrap();
    assert!(text.starts_with("HTTP/1.1 403") && text.ends_with("RBAC: access denied"), "{text}");
    let (_, text) = gateway.get(Some(&format!("{token}x"))).await.unwrap();
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");

    // Hostile bytes on the TLS port: that connection closes, the port goes on.
    let mut garbage = tokio::net::TcpStream::connect(at(gateway.https)).await.unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\n\r\n\x16\x03\x01\xff\xff").await.unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(15), garbage.read_to_end(&mut sink)).await;
    assert!(gateway.get(Some(&token)).await.is_ok());

    // TCP: bytes to the TCP server's cluster and back.
    let tcp = tokio::net::TcpStream::connect(at(gateway.tcp)).await.unwrap();
    let (mut read, mut write) = tcp.into_split();
    write.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    read.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_follow_the_configuration() {
    // On both stacks when the host has IPv6 (a dual-stack pod's gateway listens on both).
    let ipv6 = std::net::TcpListener::bind("[::1]:0").is_ok();
    let mut ips = vec!["127.0.0.1".parse().unwrap()];
    if ipv6 {
        ips.push("::1".parse().unwrap());
    } else {
        eprintln!("no IPv6 on this host: the gateway is tested on IPv4 only");
    }
    let gateway = Gateway::start(&ips).await;
    wait_until("the TCP port listens", || std::net::TcpStream::connect(at(gateway.tcp)).is_ok()).await;
    if ipv6 {
        let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, gateway.tcp));
        wait_until("the TCP port listens on IPv6", || std::net::TcpStream::connect(v6).is_ok()).await;
    }
    let moved = free_port();
    let text = std::fs::read_to_string(&gateway.proxy.config_path).unwrap();
    gateway
        .proxy
        .reload(&text.replace(&format!("port: {}\n", gateway.tcp), &format!("port: {moved}\n")))
        .await;
    wait_until("the new port listens", || std::net::TcpStream::connect(at(moved)).is_ok()).await;
    wait_until("the old port is closed", || std::net::TcpStream::connect(at(gateway.tcp)).is_err()).await;
}

/// A request on a kept-alive gateway connection: its status and whether it asked to close.
fn kept_alive_request(token: &str) -> http::Request<http_body_util::Empty<bytes::Bytes>> {
    http::Request::get("/items")
        .header("host", "api.example.com")
        .header("authorization", format!("Bearer {token}"))
        .body(http_body_util::Empty::new())
        .unwrap()
}

/// A client's TLS connection to a gateway server carries request after request (HTTP/1.1
/// keep-alive, and streams of one HTTP/2 connection): none is answered with `Connection:
/// close` and none needs a new connection (each client below owns exactly one TCP connection,
/// so a connection the gateway closed fails the next request), and the gateway counts one
/// open connection for each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_tls_connection_to_a_gateway_serves_many_requests() {
    use http_body_util::BodyExt;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use std::sync::atomic::Ordering;

    let gateway = Gateway::start(&["127.0.0.1".parse().unwrap()]).await;
    let token = es256_token(
        &gateway.jwt,
        "k1",
        &serde_json::json!({ "iss": ISSUER, "sub": "alice", "exp": now() + 600 }),
    );
    let open = || gateway.proxy.running.proxy.connections.load(Ordering::Acquire);

    // HTTP/1.1 (ALPN http/1.1, as curl --http1.1 and oha offer).
    let tls = gateway.tls_connection(&[b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    let driver = tokio::spawn(conn);
    for i in 0..5 {
        sender.ready().await.unwrap_or_else(|e| panic!("request {i}: the connection closed: {e}"));
        let response = sender.send_request(kept_alive_request(&token)).await.unwrap();
        assert_eq!(response.status(), 200, "request {i}");
        let close =
            response.headers().get("connection").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        assert!(!close, "request {i} was answered with Connection: close");
        response.into_body().collect().await.unwrap();
    }
    assert!(!driver.is_finished(), "the gateway kept the HTTP/1.1 connection open");
    assert_eq!(open(), 1, "one client connection, one connection at the gateway");

    // HTTP/2 (ALPN h2): five streams on one connection.
    let tls = gateway.tls_connection(&[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
    let h2_driver = tokio::spawn(conn);
    for i in 0..5 {
        let mut request = kept_alive_request(&token);
        *request.uri_mut() = "https://api.example.com/items".parse().unwrap();
        request.headers_mut().remove("host");
        let response = h2.send_request(request).await.unwrap_or_else(|e| panic!("stream {i}: {e}"));
        assert_eq!(response.status(), 200, "stream {i}");
        response.into_body().collect().await.unwrap();
    }
    assert!(!h2_driver.is_finished(), "the gateway kept the HTTP/2 connection open");
    assert_eq!(open(), 2, "two client connections, two at the gateway");
    drop((sender, h2));
    wait_until("both connections are closed at the gateway", || open() == 0).await;
}
