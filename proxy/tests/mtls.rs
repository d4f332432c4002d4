//! Mutual TLS between two proxies over real sockets with real certificates from the mesh CA:
//! the client side dials mTLS to endpoints with a sidecar and checks the server's identity; the
//! server side enforces PeerAuthentication (STRICT refuses plaintext, a missing certificate,
//! another CA, an expired certificate and another trust domain; PERMISSIVE takes plaintext and
//! mTLS on one port and passes the app's own TLS through); the app learns the caller from
//! `x-forwarded-client-cert`; the metrics carry both principals.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::mesh::{ca, certificate, identity, mesh};
use common::{Client, TestProxy, Upstream, wait_until};
use http::{StatusCode, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use trellis_identity::ca::{CaMaterial, CertificateAuthority};
use trellis_identity::cert::WorkloadCertificate;

const CLIENT_ID: &str = "spiffe://cluster.local/ns/test/sa/frontend";
const SERVER_ID: &str = "spiffe://cluster.local/ns/test/sa/web";

/// The caller's config: service `web` on the app's port, one endpoint (the server proxy's
/// inbound port) that has a sidecar and runs as `accounts`.
fn client_config(app_port: u16, inbound: SocketAddr, accounts: &[&str], tls_mode: &str) -> String {
    let accounts: Vec<String> = accounts.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        r#"
services:
  - name: web.test.svc.cluster.local
    aliases: [web]
    ports: [{{ port: {app_port}, protocol: HTTP }}]
virtualHosts:
  - name: web.test.svc.cluster.local:{app_port}
    routes: [{{ name: all, forward: {{ clusters: [{{ cluster: web }}] }} }}]
clusters:
  - {{ name: web, service: web.test.svc.cluster.local, tls: {{ mode: {tls_mode} }} }}
endpoints:
  - service: web.test.svc.cluster.local
    serviceAccounts: [{}]
    endpoints: [{{ address: 127.0.0.1, port: {}, meshTls: true }}]
"#,
        accounts.join(", "),
        inbound.port()
    )
}

struct Pair {
    app: Upstream,
    client: TestProxy,
    server: TestProxy,
}

async fn pair(ca: &CertificateAuthority, mode: &str, accounts: &[&str], tls_mode: &str) -> Pair {
    let app = Upstream::start("web").await;
    let server = TestProxy::start_with_identity(
        &format!("inboundTls: {{ mode: {mode} }}\n"),
        true,
        identity(mesh(ca, "cluster.local", SERVER_ID)),
    )
    .await;
    let client = TestProxy::start_with_identity(
        &client_config(app.addr.port(), server.inbound(), accounts, tls_mode),
        true,
        identity(mesh(ca, "cluster.local", CLIENT_ID)),
    )
    .await;
    Pair { app, client, server }
}

async fn call(pair: &Pair) -> common::Answer {
    let mut client = Client::connect(pair.client.outbound(), Version::HTTP_11).await;
    client.get(&format!("web:{}", pair.app.addr.port()), "/").await
}

/// Writes an HTTP request on `stream` and reads what comes back before the server closes it.
async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    authority: &str,
) -> String {
    let request = format!("GET / HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the server neither answered nor closed");
    String::from_utf8_lossy(&answer).into_owned()
}

/// A client handshake to `addr` that presents `cert` (or none) and accepts any server: for
/// probing the server's checks of its clients, and reading what the server presents.
async fn probe(
    addr: SocketAddr,
    cert: Option<&WorkloadCertificate>,
) -> Option<tokio_rustls::client::TlsStream<TcpStream>> {
    let builder =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny));
    let mut config = match cert {
        Some(cert) => builder.with_client_cert_resolver(Arc::new(Presents(cert.certified.clone()))),
        None => builder.with_no_client_auth(),
    };
    // What a mesh client offers for HTTP/1.1 (Istio's sidecar offers the same three).
    config.alpn_protocols = [&b"istio-http/1.1"[..], b"istio", b"http/1.1"].map(<[u8]>::to_vec).to_vec();
    let tcp = TcpStream::connect(addr).await.ok()?;
    let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
    tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.ok()
}

#[derive(Debug)]
struct Presents(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for Presents {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[tokio::test]
async fn strict_serves_mutual_tls_and_the_app_learns_the_caller() {
    let ca = ca();
    let pair = pair(&ca, "STRICT", &[SERVER_ID], "AUTO").await;
    let answer = call(&pair).await;
    assert_eq!((answer.status, answer.text()), (StatusCode::OK, "web".to_owned()));
    let xfcc = pair.app.last().headers.get("x-forwarded-client-cert").cloned().unwrap_or_default();
    assert!(xfcc.starts_with(&format!("By={SERVER_ID};Hash=")), "{xfcc}");
    assert!(xfcc.ends_with(&format!(";Subject=\"\";URI={CLIENT_ID}")), "{xfcc}");

    // Both sides count the request as mutual TLS, with both principals.
    let want = [
        "connection_security_policy=\"mutual_tls\"".to_owned(),
        format!("source_principal=\"{CLIENT_ID}\""),
        format!("destination_principal=\"{SERVER_ID}\""),
    ];
    for (side, proxy) in [("client", &pair.client), ("server", &pair.server)] {
        let metrics = proxy.metrics().await;
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("istio_requests_total") && want.iter().all(|w| l.contains(w.as_str()))),
            "{side}: {metrics}"
        );
        assert!(metrics.contains("trellis_workload_certificate_expiration_timestamp_seconds"), "{side}");
    }
    // The admin page shows the certificate.
    let (status, certs) = pair.server.admin_get("/certs").await;
    assert_eq!(status, StatusCode::OK);
    assert!(certs.contains(SERVER_ID) && certs.contains("serial_number"), "{certs}");
}

#[tokio::test]
async fn strict_refuses_everything_that_is_not_mutual_tls_of_this_mesh() {
    let ca = ca();
    let pair = pair(&ca, "STRICT", &[SERVER_ID], "AUTO").await;
    let inbound = pair.server.inbound();
    let authority = format!("web:{}", pair.app.addr.port());

    // Plaintext.
    let answer = exchange(TcpStream::connect(inbound).await.unwrap(), &authority).await;
    assert_eq!(answer, "", "plaintext got an answer under STRICT");

    // No client certificate, one from another CA, one of another trust domain, an expired one:
    // each from a client that accepts the server, so that the server's checks are what refuses.
    let other_ca = CertificateAuthority::new(&CaMaterial::generate_root("cluster.local").unwrap()).unwrap();
    let foreign = certificate(&other_ca, CLIENT_ID, 3600);
    let elsewhere = certificate(&ca, "spiffe://other.domain/ns/test/sa/frontend", 3600);
    // Backdated two minutes, living one second: expired well before the handshake.
    let expired = certificate(&ca, CLIENT_ID, 1);
    // Certificate times have one-second resolution: wait until a full second past the end.
    wait_until("the short certificate has expired", || {
        std::time::SystemTime::now() > expired.leaf.not_after + Duration::from_secs(1)
    })
    .await;
    let cases = [
        ("no client certificate", None),
        ("another CA", Some(&foreign)),
        ("another trust domain", Some(&elsewhere)),
        ("expired", Some(&expired)),
    ];
    for (what, cert) in cases {
        if let Some(stream) = probe(inbound, cert).await {
            assert_eq!(exchange(stream, &authority).await, "", "{what}: answered");
        }
    }
    // And a good certificate through the same probe is served: the refusals were the checks.
    let good = certificate(&ca, CLIENT_ID, 3600);
    let served = exchange(probe(inbound, Some(&good)).await.expect("handshake"), &authority).await;
    assert!(served.starts_with("HTTP/1.1 200"), "{served:?}");
    assert_eq!(pair.app.count(), 1, "only the good certificate's request reached the app");
    let metrics = pair.server.metrics().await;
    assert!(
        metrics.contains("trellis_inbound_connections_refused_total{reason=\"plaintext\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("trellis_inbound_connections_refused_total{reason=\"handshake\"} 4"),
        "{metrics}"
    );

    // And the proxies' own mTLS still works.
    assert_eq!(call(&pair).await.status, StatusCode::OK);
}

#[tokio::test]
async fn permissive_takes_plaintext_and_mutual_tls_and_passes_the_apps_tls_through() {
    let ca = ca();
    let pair = pair(&ca, "PERMISSIVE", &[SERVER_ID], "AUTO").await;
    let authority = format!("web:{}", pair.app.addr.port());
    assert_eq!(call(&pair).await.status, StatusCode::OK, "mutual TLS");
    assert!(pair.app.last().headers.contains_key("x-forwarded-client-cert"));
    let plain = exchange(TcpStream::connect(pair.server.inbound()).await.unwrap(), &authority).await;
    assert!(plain.starts_with("HTTP/1.1 200"), "plaintext: {plain:?}");
    assert!(
        !pair.app.last().headers.contains_key("x-forwarded-client-cert"),
        "no peer, no certificate header"
    );

    // The app's own TLS (no Istio ALPN) is left alone, bytes unread, for the relay to pass on;
    // a hello with Istio's ALPN is terminated.
    use trellis_proxy::security::inbound::{Decision, Mode, decide};
    for (alpn, want) in [(&b"h2"[..], Decision::AsIs), (b"istio-http/1.1", Decision::Terminate)] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAny))
                .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        let hello = tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = rustls_pki_types::ServerName::try_from("app.example").unwrap();
            // Never answered: only its ClientHello matters.
            let _ = tokio::time::timeout(
                Duration::from_secs(3),
                tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
            )
            .await;
        });
        let (mut stream, _) = listener.accept().await.unwrap();
        assert_eq!(decide(&stream, Mode::Permissive, true).await, want, "ALPN {alpn:?}");
        let mut first = [0u8; 1];
        stream.read_exact(&mut first).await.unwrap();
        assert_eq!(first[0], 0x16, "the ClientHello is still there to pass on");
        drop(stream);
        hello.abort();
    }
    assert_eq!(
        decide(&TcpStream::connect(pair.server.inbound()).await.unwrap(), Mode::Strict, false).await,
        Decision::Refuse("plaintext")
    );
}

#[tokio::test]
async fn the_client_refuses_a_server_that_is_not_the_destinations_identity() {
    let ca = ca();
    let pair = pair(&ca, "STRICT", &["spiffe://cluster.local/ns/test/sa/someone-else"], "AUTO").await;
    let answer = call(&pair).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{}", answer.text());
    assert!(answer.text().contains("not one of the destination's identities"), "{}", answer.text());
    assert_eq!(pair.app.count(), 0);
}

#[tokio::test]
async fn destination_rule_disable_sends_plaintext_which_strict_refuses_and_permissive_takes() {
    let ca = ca();
    let strict = pair(&ca, "STRICT", &[SERVER_ID], "DISABLE").await;
    assert_eq!(call(&strict).await.status, StatusCode::SERVICE_UNAVAILABLE);
    let permissive = pair(&ca, "PERMISSIVE", &[SERVER_ID], "DISABLE").await;
    assert_eq!(call(&permissive).await.status, StatusCode::OK);
    assert!(!permissive.app.last().headers.contains_key("x-forwarded-client-cert"), "plaintext");
    // ISTIO_MUTUAL forces mutual TLS even to an endpoint not marked as having a sidecar.
    let forced = pair(&ca, "STRICT", &[SERVER_ID], "ISTIO_MUTUAL").await;
    assert_eq!(call(&forced).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_renewed_certificate_is_used_by_new_handshakes_without_dropping_open_connections() {
    let ca = ca();
    let pair = pair(&ca, "STRICT", &[SERVER_ID], "AUTO").await;
    let mut open = Client::connect(pair.client.outbound(), Version::HTTP_11).await;
    let authority = format!("web:{}", pair.app.addr.port());
    assert_eq!(open.get(&authority, "/").await.status, StatusCode::OK);
    let server_tls = pair.server.running.proxy.pools.mesh_tls().unwrap().clone();
    let before = server_tls.current().unwrap().leaf.serial.clone();
    server_tls.install(certificate(&ca, SERVER_ID, 3600)).unwrap();
    assert_ne!(server_tls.current().unwrap().leaf.serial, before);
    for _ in 0..5 {
        assert_eq!(
            open.get(&authority, "/").await.status,
            StatusCode::OK,
            "the open connection keeps working"
        );
    }
    // A new handshake presents the new certificate.
    let client_tls = pair.client.running.proxy.pools.mesh_tls().unwrap().clone();
    let stream = probe(pair.server.inbound(), client_tls.current().as_deref()).await.expect("handshake");
    let presented = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
    let leaf = trellis_identity::cert::parse_leaf(&presented).unwrap();
    assert_eq!(leaf.serial, server_tls.current().unwrap().leaf.serial);
}

/// Accepts any server certificate: for clients that probe the server's checks, not its identity.
#[derive(Debug)]
struct AcceptAny;

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider().signature_verification_algorithms.supported_schemes()
    }
}
