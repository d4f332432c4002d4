//! Istio's egress-gateway pattern on loopback: an app's plaintext request to an external host
//! leaves its sidecar over the mesh's mutual TLS to the egress gateway (a Gateway server with
//! `tls.mode: ISTIO_MUTUAL`, picked by the SNI the sidecar's DestinationRule names), and the
//! gateway originates TLS to the external server (DestinationRule `SIMPLE`). The gateway
//! presents its workload certificate and requires the sidecar's: its policies see the
//! sidecar's principal, and a client without a mesh certificate gets no handshake. Real rustls
//! on every hop; the configurations are what trellisd sends (see the control plane's
//! `the_egress_gateway_pattern_mesh_tls_in_and_tls_origination_out`).

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::mesh::{ca, identity, mesh};
use common::{Client, TestProxy};
use http::{Response, StatusCode, Version};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpListener;
use tokio_rustls::rustls;

const HOST: &str = "edition.cnn.com";
const GATEWAY_ID: &str = "spiffe://cluster.local/ns/istio-system/sa/istio-egressgateway-service-account";
const SLEEP_ID: &str = "spiffe://cluster.local/ns/shop/sa/sleep";

/// The external HTTPS server, with a certificate from a CA of its own: it answers with the
/// server name it was sent and records who connected.
struct External {
    addr: SocketAddr,
    ca_pem: String,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
}

async fn external() -> External {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "external root");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec![HOST.to_owned()]).unwrap().signed_by(&key, &issuer).unwrap();
    let chain = vec![CertificateDer::from(leaf.der().to_vec())];
    let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap();
    let config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let peers = Arc::new(Mutex::new(Vec::new()));
    let seen = peers.clone();
    tokio::spawn(async move {
        while let Ok((tcp, peer)) = listener.accept().await {
            seen.lock().unwrap().push(peer);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let sni = tls.get_ref().1.server_name().unwrap_or("").to_owned();
                let service = hyper::service::service_fn(move |request: http::Request<_>| {
                    let body = format!("external: sni={sni} host={:?}", request.headers().get("host"));
                    async move { Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(body)))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    External { addr, ca_pem: ca_cert.pem(), peers }
}

/// The egress gateway: port `port` terminates the mesh's mutual TLS for edition.cnn.com, lets
/// only the sleep workload through, and routes to the external server on 443 with TLS
/// origination.
fn gateway_config(port: u16, external: SocketAddr, ca_file: &str) -> String {
    format!(
        r#"
gatewayListeners:
  - port: {port}
    protocol: GATEWAY_HTTPS
    servers:
      - name: shop/istio-egressgateway/0
        hosts: [{HOST}]
        tls: {{ mode: GATEWAY_TLS_ISTIO_MUTUAL }}
        routes: [{{ host: {HOST}, virtualHost: "gateway~{port}~{HOST}" }}]
      # Another host on the port: without the server name the sidecar sends, the gateway
      # could not tell which server a connection is for.
      - name: shop/istio-egressgateway/1
        hosts: [other.example.com]
        tls: {{ mode: GATEWAY_TLS_ISTIO_MUTUAL }}
virtualHosts:
  - name: "gateway~{port}~{HOST}"
    routes: [{{ name: out, forward: {{ clusters: [{{ cluster: "outbound|443||{HOST}" }}] }} }}]
clusters:
  - name: "outbound|443||{HOST}"
    service: "{HOST}:443"
    upstreamProtocol: HTTP1
    tls: {{ mode: SIMPLE, caCertificates: {ca_file} }}
endpoints:
  - service: "{HOST}:443"
    endpoints: [{{ address: 127.0.0.1, port: {} }}]
authorization:
  - namespace: istio-system
    name: only-sleep
    rules: [{{ from: [{{ principals: ["cluster.local/ns/shop/sa/sleep"] }}] }}]
"#,
        external.port()
    )
}

/// The sidecar: edition.cnn.com:80 goes to the egress gateway's `cnn` subset over the mesh's
/// mutual TLS, with edition.cnn.com as the server name.
fn sidecar_config(gateway_port: u16) -> String {
    format!(
        r#"
services:
  - name: {HOST}
    ports: [{{ port: 80, protocol: HTTP }}]
virtualHosts:
  - name: {HOST}:80
    routes: [{{ name: to-gateway, forward: {{ clusters: [{{ cluster: egress-cnn }}] }} }}]
clusters:
  - name: egress-cnn
    service: "istio-egressgateway.istio-system.svc.cluster.local:80"
    tls: {{ mode: ISTIO_MUTUAL, sni: {HOST} }}
endpoints:
  - service: "istio-egressgateway.istio-system.svc.cluster.local:80"
    serviceAccounts: ["{GATEWAY_ID}"]
    endpoints: [{{ address: 127.0.0.1, port: {gateway_port}, meshTls: true }}]
"#
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn call(sidecar: &TestProxy) -> common::Answer {
    let mut client = Client::connect(sidecar.outbound(), Version::HTTP_11).await;
    client.get(HOST, "/headlines").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_reaches_an_external_host_only_through_the_egress_gateway() {
    let authority = ca();
    let server = external().await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("external-ca.pem");
    std::fs::write(&ca_file, &server.ca_pem).unwrap();

    let port = free_port();
    let gateway_tls = mesh(&authority, "cluster.local", GATEWAY_ID);
    let gateway = TestProxy::start_with_identity(
        &gateway_config(port, server.addr, &ca_file.display().to_string()),
        false,
        identity(gateway_tls),
    )
    .await;
    trellis_proxy::gateway::listener::start(&gateway.running.proxy, &["127.0.0.1".parse().unwrap()]);
    common::wait_until("the gateway listens", || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())
        .await;

    let sidecar = TestProxy::start_with_identity(
        &sidecar_config(port),
        true,
        identity(mesh(&authority, "cluster.local", SLEEP_ID)),
    )
    .await;
    let answer = call(&sidecar).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(
        answer.text(),
        format!("external: sni={HOST} host=Some(\"{HOST}\")"),
        "TLS originated at the gateway with the external host's name"
    );
    assert_eq!(server.peers.lock().unwrap().len(), 1, "one connection to the external server");

    // The gateway saw the sidecar's identity over mutual TLS: its policy admits only sleep.
    // Another mesh workload: mutual TLS works, and the gateway's policy denies it.
    let other = TestProxy::start_with_identity(
        &sidecar_config(port),
        true,
        identity(mesh(&authority, "cluster.local", "spiffe://cluster.local/ns/shop/sa/other")),
    )
    .await;
    let answer = call(&other).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.text());

    // A client without a mesh certificate (plain TLS, offering HTTP) gets no handshake.
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer))
            .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let connected = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(HOST).unwrap(), tcp)
        .await;
    let refused = match connected {
        Err(_) => true,
        // TLS 1.3: the client finishes first; the server's refusal arrives with the first read.
        Ok(mut tls) => {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = tls.write_all(b"GET / HTTP/1.1\r\nHost: edition.cnn.com\r\n\r\n").await;
            let mut buf = Vec::new();
            let read =
                tokio::time::timeout(std::time::Duration::from_secs(10), tls.read_to_end(&mut buf)).await;
            !matches!(read, Ok(Ok(_)) if !buf.is_empty())
        }
    };
    assert!(refused, "a client without a mesh certificate is refused");

    // Hostile bytes on the port: that connection closes, the port goes on serving.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut garbage = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        garbage.write_all(b"\x16\x03\x01\xff\xff\x01\x00\xff\xfbGET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut sink = Vec::new();
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(15), garbage.read_to_end(&mut sink)).await;
    }
    assert_eq!(call(&sidecar).await.status, StatusCode::OK);
    assert_eq!(server.peers.lock().unwrap().len(), 1, "the gateway's connection out was kept alive");
}

/// Accepts any server certificate: the client above is refused for lacking its own.
#[derive(Debug)]
struct AnyServer;

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider().signature_verification_algorithms.supported_schemes()
    }
}

/// An ISTIO_MUTUAL server on a TLS port: the mesh's mutual TLS terminated by the gateway, and
/// the bytes inside relayed to the server's TCP route (here an echo server). A client with a
/// mesh certificate offering Istio's TCP ALPN, as a sidecar relaying opaque TCP does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_port_with_istio_mutual_relays_the_mesh_clients_bytes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use trellis_identity::SpiffeId;
    use trellis_identity::tls::Carries;

    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_port = echo.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = tcp.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    let authority = ca();
    let port = free_port();
    let config = format!(
        r#"
gatewayListeners:
  - port: {port}
    protocol: GATEWAY_TLS
    servers:
      - name: shop/istio-egressgateway/tcp
        hosts: [tcp.example.com]
        tls: {{ mode: GATEWAY_TLS_ISTIO_MUTUAL }}
        tcpClusters: [{{ cluster: echo }}]
clusters: [{{ name: echo, service: echo }}]
endpoints:
  - {{ service: echo, endpoints: [{{ address: 127.0.0.1, port: {echo_port} }}] }}
"#
    );
    let gateway = TestProxy::start_with_identity(
        &config,
        false,
        identity(mesh(&authority, "cluster.local", GATEWAY_ID)),
    )
    .await;
    trellis_proxy::gateway::listener::start(&gateway.running.proxy, &["127.0.0.1".parse().unwrap()]);
    common::wait_until("the gateway listens", || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())
        .await;

    let client = mesh(&authority, "cluster.local", SLEEP_ID);
    let allowed: Arc<[SpiffeId]> = vec![SpiffeId::parse(GATEWAY_ID).unwrap()].into();
    let tls_config = client.client_config(Carries::Tcp, &allowed).unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(tls_config)
        .connect(ServerName::try_from("tcp.example.com").unwrap(), tcp)
        .await
        .expect("the gateway presents its mesh identity");
    tls.write_all(b"ping over mesh tls").await.unwrap();
    let mut buf = [0u8; 18];
    tokio::time::timeout(std::time::Duration::from_secs(10), tls.read_exact(&mut buf))
        .await
        .expect("echoed in time")
        .unwrap();
    assert_eq!(&buf, b"ping over mesh tls");
}
