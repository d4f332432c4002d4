//! Weighted TCP routes over real sockets: a port whose connections are split between clusters
//! sends each connection to one of them, in shares within a binomial bound over thousands of
//! connections. The connections are TLS that passes through (its server name picks the
//! service, as without a redirect), so no root is needed.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::TestProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CONNECTIONS: usize = 2000;
/// Connections at once.
const AT_ONCE: usize = 20;

/// A TCP server that answers each connection with its name and closes it, counting them.
async fn named_server(name: &'static str) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let _ = stream.write_all(name.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (port, accepted)
}

/// The first bytes of a TLS connection to `server_name`: a ClientHello, which is all the proxy
/// reads before it relays.
fn client_hello(server_name: &str) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).unwrap();
    let mut connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut hello = Vec::new();
    connection.write_tls(&mut hello).unwrap();
    hello
}

/// A fixed tolerance of 4.5 standard deviations of the binomial count.
fn assert_binomial(count: usize, n: usize, percent: f64, what: &str) {
    let p = percent / 100.0;
    let expected = n as f64 * p;
    let tolerance = 4.5 * (n as f64 * p * (1.0 - p)).sqrt();
    assert!(
        (count as f64 - expected).abs() <= tolerance,
        "{what}: {count} of {n}, expected {expected} ± {tolerance:.1}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weighted_tcp_route_splits_connections_by_weight() {
    let (a_port, a) = named_server("a").await;
    let (b_port, b) = named_server("b").await;
    let (c_port, c) = named_server("c").await;
    let config = format!(
        r#"
services:
  - name: db.test
    ports:
      - port: 443
        protocol: TLS
        tcpClusters: [{{ cluster: a, weight: 70 }}, {{ cluster: b, weight: 30 }}, {{ cluster: c, weight: 0 }}]
clusters: [{{ name: a, service: a.test }}, {{ name: b, service: b.test }}, {{ name: c, service: c.test }}]
endpoints:
  - {{ service: a.test, endpoints: [{{ address: 127.0.0.1, port: {a_port} }}] }}
  - {{ service: b.test, endpoints: [{{ address: 127.0.0.1, port: {b_port} }}] }}
  - {{ service: c.test, endpoints: [{{ address: 127.0.0.1, port: {c_port} }}] }}
"#
    );
    let proxy = TestProxy::start(&config).await;
    let hello = Arc::new(client_hello("db.test"));
    let outbound = proxy.outbound();
    let mut answers: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..CONNECTIONS / AT_ONCE {
        let batch: Vec<_> = (0..AT_ONCE)
            .map(|_| {
                let hello = hello.clone();
                tokio::spawn(async move {
                    let mut stream = TcpStream::connect(outbound).await.unwrap();
                    stream.write_all(&hello).await.unwrap();
                    let mut answer = String::new();
                    stream.read_to_string(&mut answer).await.unwrap();
                    answer
                })
            })
            .collect();
        for connection in batch {
            *answers.entry(connection.await.unwrap()).or_default() += 1;
        }
    }
    let (a, b, c) = (a.load(Ordering::SeqCst), b.load(Ordering::SeqCst), c.load(Ordering::SeqCst));
    assert_eq!(a + b + c, CONNECTIONS, "each connection reached one upstream: {answers:?}");
    assert_eq!(answers.get("a").copied().unwrap_or(0), a, "{answers:?}");
    assert_eq!(answers.get("b").copied().unwrap_or(0), b, "{answers:?}");
    assert_eq!(c, 0, "a zero weight gets no connection");
    assert_binomial(a, CONNECTIONS, 70.0, "connections to a");
}

#[tokio::test]
async fn max_connection_duration_closes_a_relayed_connection() {
    // An upstream that holds each connection open and silent until the other side closes.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut sink = [0u8; 1024];
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    });
    let config = format!(
        r#"
services:
  - name: db.test
    ports: [{{ port: 443, protocol: TLS, tcpClusters: [{{ cluster: db }}] }}]
clusters:
  - name: db
    service: db.test
    connectionPool: {{ maxConnectionDuration: 0.3s }}
endpoints:
  - {{ service: db.test, endpoints: [{{ address: 127.0.0.1, port: {port} }}] }}
"#
    );
    let proxy = TestProxy::start(&config).await;
    let mut stream = TcpStream::connect(proxy.outbound()).await.unwrap();
    let opened = std::time::Instant::now();
    stream.write_all(&client_hello("db.test")).await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the connection outlived maxConnectionDuration by 10s");
    assert!(opened.elapsed() >= std::time::Duration::from_millis(300), "closed after {:?}", opened.elapsed());
}
