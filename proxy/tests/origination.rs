//! TLS origination to a service outside the mesh (DestinationRule `SIMPLE` and `MUTUAL`): the
//! app sends plaintext HTTP to the proxy, which opens TLS to a real rustls server with the rule's
//! files, checks the server's chain and name, sends SNI, and presents a client certificate for
//! `MUTUAL`. Settings that cannot be used fail the call rather than send plaintext.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use common::{Client, TestProxy};
use http::{Response, StatusCode, Version};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls_pki_types::pem::PemObject;
use tokio::net::TcpListener;

const HOST: &str = "api.example.com";

/// A CA that signs leaves.
struct TestCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        TestCa { pem: cert.pem(), issuer: Issuer::new(params, key) }
    }

    /// A leaf for `names` (DNS names) and its key, as PEM.
    fn leaf(&self, common_name: &str, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, common_name);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// An HTTPS server outside the mesh. It answers with the SNI it was sent, the ALPN agreed and
/// the client certificate's subject, and counts the handshakes that failed.
struct External {
    addr: SocketAddr,
    failed_handshakes: Arc<AtomicUsize>,
}

async fn external(ca: &TestCa, client_ca: Option<&TestCa>) -> External {
    let (cert, key) = ca.leaf(HOST, &[HOST]);
    let chain = rustls_pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(client_ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for der in rustls_pki_types::CertificateDer::pem_slice_iter(client_ca.pem.as_bytes()) {
                roots.add(der.unwrap()).unwrap();
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let failed_handshakes = Arc::new(AtomicUsize::new(0));
    let failed = failed_handshakes.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let failed = failed.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    failed.fetch_add(1, Ordering::SeqCst);
                    return;
                };
                let (_, session) = tls.get_ref();
                let sni = session.server_name().unwrap_or("").to_owned();
                let alpn = String::from_utf8_lossy(session.alpn_protocol().unwrap_or(b"")).into_owned();
                let client = session
                    .peer_certificates()
                    .and_then(|certs| certs.first())
                    .map(|der| {
                        let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
                        cert.subject().to_string()
                    })
                    .unwrap_or_default();
                let body = format!("sni={sni} alpn={alpn} client={client}");
                let service = hyper::service::service_fn(move |_request| {
                    let body = body.clone();
                    async move { Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(body)))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    External { addr, failed_handshakes }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Service `api.example.com:80` (the app calls it in plaintext) with one endpoint, the
/// external server, and the cluster TLS settings `tls`.
fn config(server: SocketAddr, tls: &str) -> String {
    format!(
        r#"
services:
  - name: {HOST}
    ports: [{{ port: 80, protocol: HTTP }}]
virtualHosts:
  - name: {HOST}:80
    routes: [{{ name: all, forward: {{ clusters: [{{ cluster: api }}] }} }}]
clusters:
  - {{ name: api, service: "{HOST}:80", upstreamProtocol: HTTP1, tls: {tls} }}
endpoints:
  - service: "{HOST}:80"
    endpoints: [{{ address: 127.0.0.1, port: {} }}]
"#,
        server.port()
    )
}

async fn call(proxy: &TestProxy) -> common::Answer {
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    client.get(&format!("{HOST}:80"), "/").await
}

#[tokio::test]
async fn simple_checks_the_servers_chain_and_name_and_sends_sni() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("external root");
    let other = TestCa::new("someone else");
    let ca_file = write(dir.path(), "ca.pem", &ca.pem);
    let other_file = write(dir.path(), "other.pem", &other.pem);
    let server = external(&ca, None).await;

    let proxy =
        TestProxy::start(&config(server.addr, &format!("{{ mode: SIMPLE, caCertificates: {ca_file} }}")))
            .await;
    let answer = call(&proxy).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(
        answer.text(),
        format!("sni={HOST} alpn=http/1.1 client="),
        "SNI is the service's host by default"
    );

    // Another CA's roots: the server is not trusted, and nothing is sent.
    proxy.reload(&config(server.addr, &format!("{{ mode: SIMPLE, caCertificates: {other_file} }}"))).await;
    let answer = call(&proxy).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{}", answer.text());

    // subjectAltNames the certificate does not carry.
    proxy
        .reload(&config(
            server.addr,
            &format!("{{ mode: SIMPLE, caCertificates: {ca_file}, subjectAltNames: [other.example.com] }}"),
        ))
        .await;
    assert_eq!(call(&proxy).await.status, StatusCode::SERVICE_UNAVAILABLE);

    // An explicit SNI is sent as written; the listed name is what the certificate must carry.
    proxy
        .reload(&config(
            server.addr,
            &format!("{{ mode: SIMPLE, caCertificates: {ca_file}, sni: edge.example.net, subjectAltNames: [{HOST}] }}"),
        ))
        .await;
    let answer = call(&proxy).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert!(answer.text().starts_with("sni=edge.example.net "), "{}", answer.text());

    // Without subjectAltNames the SNI name is checked, and edge.example.net is not the server's.
    proxy
        .reload(&config(
            server.addr,
            &format!("{{ mode: SIMPLE, caCertificates: {ca_file}, sni: edge.example.net }}"),
        ))
        .await;
    assert_eq!(call(&proxy).await.status, StatusCode::SERVICE_UNAVAILABLE);

    // insecureSkipVerify takes the server whatever its CA.
    proxy
        .reload(&config(
            server.addr,
            &format!("{{ mode: SIMPLE, caCertificates: {other_file}, insecureSkipVerify: true }}"),
        ))
        .await;
    assert_eq!(call(&proxy).await.status, StatusCode::OK);
}

#[tokio::test]
async fn mutual_presents_the_client_certificate_that_simple_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("external root");
    let client_ca = TestCa::new("clients");
    let (cert, key) = client_ca.leaf("orders-client", &[]);
    let ca_file = write(dir.path(), "ca.pem", &ca.pem);
    let cert_file = write(dir.path(), "cert.pem", &cert);
    let key_file = write(dir.path(), "key.pem", &key);
    let server = external(&ca, Some(&client_ca)).await;

    let proxy =
        TestProxy::start(&config(server.addr, &format!("{{ mode: SIMPLE, caCertificates: {ca_file} }}")))
            .await;
    let answer = call(&proxy).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "the server wants a client certificate");

    proxy
        .reload(&config(
            server.addr,
            &format!(
                "{{ mode: MUTUAL, caCertificates: {ca_file}, clientCertificate: {cert_file}, privateKey: {key_file} }}"
            ),
        ))
        .await;
    let answer = call(&proxy).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert!(answer.text().ends_with("client=CN=orders-client"), "{}", answer.text());
}

#[tokio::test]
async fn settings_that_cannot_be_used_fail_the_call_and_send_nothing_in_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("external root");
    let server = external(&ca, None).await;
    let garbage = write(dir.path(), "garbage.pem", "not a certificate");
    for tls in [
        "{ mode: SIMPLE, caCertificates: /nonexistent/ca.pem }".to_owned(),
        format!("{{ mode: SIMPLE, caCertificates: {garbage} }}"),
        format!("{{ mode: MUTUAL, caCertificates: {garbage} }}"),
    ] {
        let proxy = TestProxy::start(&config(server.addr, &tls)).await;
        let answer = call(&proxy).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{tls}: {}", answer.text());
    }
    assert_eq!(
        server.failed_handshakes.load(Ordering::SeqCst),
        0,
        "the proxy never reached the server, in plaintext or otherwise"
    );
}
