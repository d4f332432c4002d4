//! Rotation under load: two proxies take certificates of a few seconds' life from trellisd's CA
//! (Istio's CSR API over TLS, file-mode tokens), a steady stream of requests goes through the
//! pair over mutual TLS (the server STRICT), and after several renewals on both sides not one
//! request has failed.

mod ca_support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ca_support::{DEADLINE, Trellisd, eventually};
use trellis_identity::SpiffeId;
use trellis_identity::client::{CaClient, tls_channel};
use trellis_identity::manager::Renewal;
use trellis_identity::tls::MeshTls;
use trellis_proxy::metrics::{Metrics, Workload};

const LIFETIME: Duration = Duration::from_secs(4);

struct Proxy {
    running: trellis_proxy::Running,
    tls: Arc<MeshTls>,
    _dir: tempfile::TempDir,
}

fn start_proxy(
    config: &str,
    ca: &Trellisd,
    root: &str,
    token_file: &std::path::Path,
    account: &str,
) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("config.yaml");
    std::fs::write(&config_path, config).unwrap();
    let tls = MeshTls::new("cluster.local");
    let renewal = Renewal {
        ca: CaClient::new(tls_channel(&ca.secure.to_string(), root, None).unwrap()),
        token_file: token_file.to_owned(),
        requested: SpiffeId::new("cluster.local", "test", account).unwrap(),
        ttl: LIFETIME,
    };
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let options = trellis_proxy::Options {
        outbound: vec![local],
        inbound: vec![local],
        admin: vec![local],
        readiness: vec![local],
        stats: vec![local],
        config_file: Some(config_path),
        xds: None,
        explicit_inbound: true,
        identity: Some(trellis_proxy::Identity { tls: tls.clone(), renewal: Some(renewal) }),
    };
    let workload = Workload { name: account.into(), namespace: "test".into() };
    let running = trellis_proxy::start(options, Metrics::new(workload), None).unwrap();
    Proxy { running, tls, _dir: dir }
}

/// An app that answers every request with 200.
async fn app() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_r| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                        hyper::body::Bytes::from_static(b"ok"),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_a_steady_stream_without_a_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(
        &tokens,
        "frontend-token,system:serviceaccount:test:frontend,u1\nweb-token,system:serviceaccount:test:web,u2\n",
    )
    .unwrap();
    let root_path = dir.path().join("root-cert.pem");
    let ca = Trellisd::start(&[
        "--token-auth-file".as_ref(),
        tokens.as_os_str(),
        "--root-cert-file".as_ref(),
        root_path.as_os_str(),
    ]);
    eventually("trellisd writes its root", async || root_path.exists()).await;
    let root = std::fs::read_to_string(&root_path).unwrap();
    let (frontend_token, web_token) = (dir.path().join("frontend"), dir.path().join("web"));
    std::fs::write(&frontend_token, "frontend-token\n").unwrap();
    std::fs::write(&web_token, "web-token\n").unwrap();

    let app = app().await;
    let server = start_proxy("inboundTls: { mode: STRICT }\n", &ca, &root, &web_token, "web");
    let inbound = server.running.inbound[0];
    let client_config = format!(
        r#"
services:
  - {{ name: web.test.svc.cluster.local, aliases: [web], ports: [{{ port: {port}, protocol: HTTP }}] }}
virtualHosts:
  - {{ name: "web.test.svc.cluster.local:{port}", routes: [{{ name: all, forward: {{ clusters: [{{ cluster: web }}] }} }}] }}
clusters: [{{ name: web, service: web.test.svc.cluster.local }}]
endpoints:
  - service: web.test.svc.cluster.local
    serviceAccounts: ["spiffe://cluster.local/ns/test/sa/web"]
    endpoints: [{{ address: 127.0.0.1, port: {inbound_port}, meshTls: true }}]
"#,
        port = app.port(),
        inbound_port = inbound.port()
    );
    let client = start_proxy(&client_config, &ca, &root, &frontend_token, "frontend");
    eventually("both proxies are certified and ready", async || {
        server.running.proxy.is_ready() && client.running.proxy.is_ready()
    })
    .await;
    assert_eq!(
        client.tls.current().unwrap().leaf.id.to_string(),
        "spiffe://cluster.local/ns/test/sa/frontend",
        "the identity the token names"
    );

    // New connections now and then (each request on its own connection every tenth time), so
    // renewed certificates are exercised in handshakes as well as kept-alive connections.
    let (mut server_serials, mut client_serials) = (BTreeSet::new(), BTreeSet::new());
    let (mut sent, mut failed) = (0u32, Vec::new());
    let started = Instant::now();
    let mut connection = None;
    while (server_serials.len() < 4 || client_serials.len() < 4) && started.elapsed() < DEADLINE {
        server_serials.insert(server.tls.current().unwrap().leaf.serial.clone());
        client_serials.insert(client.tls.current().unwrap().leaf.serial.clone());
        if sent % 10 == 0 || connection.is_none() {
            let stream = tokio::net::TcpStream::connect(client.running.outbound[0]).await.unwrap();
            let (sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
            tokio::spawn(conn);
            connection = Some(sender);
        }
        let sender = connection.as_mut().unwrap();
        let request = http::Request::get("/")
            .header("host", format!("web:{}", app.port()))
            .body(http_body_util::Empty::<hyper::body::Bytes>::new())
            .unwrap();
        sent += 1;
        match sender.send_request(request).await {
            Ok(response) if response.status() == 200 => {}
            Ok(response) => failed.push(format!("status {}", response.status())),
            Err(e) => {
                failed.push(e.to_string());
                connection = None;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        server_serials.len() >= 4 && client_serials.len() >= 4,
        "renewals seen: server {}, client {} in {:?}; log:\n{}",
        server_serials.len(),
        client_serials.len(),
        started.elapsed(),
        ca.logs()
    );
    assert!(failed.is_empty(), "{} of {sent} requests failed: {failed:?}", failed.len());
    assert!(sent > 100, "a steady stream: {sent}");
}
