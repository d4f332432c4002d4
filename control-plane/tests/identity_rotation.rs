//! Rotation under load: two proxies take certificates of a few seconds' life from trellisd's CA
//! (Istio's CSR API over TLS, file-mode tokens), a steady stream of requests goes through the
//! pair over mutual TLS (the server STRICT), and after several renewals on both sides not one
//! request has failed. With the CA stopped, the proxies keep serving on their valid
//! certificates, count the failed requests, and renew once the same CA is back.

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
/// Long enough that the CA can be stopped and started again before it ends.
const OUTAGE_LIFETIME: Duration = Duration::from_secs(12);

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
    lifetime: Duration,
) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("config.yaml");
    std::fs::write(&config_path, config).unwrap();
    let tls = MeshTls::new("cluster.local");
    let renewal = Renewal {
        ca: CaClient::new(tls_channel(&ca.secure.to_string(), root, None).unwrap()),
        token_file: token_file.to_owned(),
        requested: SpiffeId::new("cluster.local", "test", account).unwrap(),
        ttl: lifetime,
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

/// trellisd's CA in file mode (its material in a `cacerts` directory, so that a restart keeps
/// the root), tokens for `frontend` and `web`, and the two proxies: `web` STRICT in front of the
/// app, `frontend` calling it.
struct Mesh {
    ca: Option<Trellisd>,
    dir: tempfile::TempDir,
    app: SocketAddr,
    server: Proxy,
    client: Proxy,
}

fn start_ca(dir: &std::path::Path, secure: &str) -> Trellisd {
    let (tokens, root_path, cacerts) =
        (dir.join("tokens.csv"), dir.join("root-cert.pem"), dir.join("cacerts"));
    Trellisd::start(&[
        "--token-auth-file".as_ref(),
        tokens.as_os_str(),
        "--root-cert-file".as_ref(),
        root_path.as_os_str(),
        "--ca-dir".as_ref(),
        cacerts.as_os_str(),
        "--secure-xds-address".as_ref(),
        std::ffi::OsStr::new(secure),
    ])
}

async fn mesh(lifetime: Duration) -> Mesh {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tokens.csv"),
        "frontend-token,system:serviceaccount:test:frontend,u1\nweb-token,system:serviceaccount:test:web,u2\n",
    )
    .unwrap();
    let cacerts = dir.path().join("cacerts");
    std::fs::create_dir(&cacerts).unwrap();
    ca_support::write_cacerts(
        &cacerts,
        &trellis_identity::ca::CaMaterial::generate_root("cluster.local").unwrap(),
    );
    let ca = start_ca(dir.path(), "127.0.0.1:0");
    let root_path = dir.path().join("root-cert.pem");
    eventually("trellisd writes its root", async || root_path.exists()).await;
    let root = std::fs::read_to_string(&root_path).unwrap();
    let (frontend_token, web_token) = (dir.path().join("frontend"), dir.path().join("web"));
    std::fs::write(&frontend_token, "frontend-token\n").unwrap();
    std::fs::write(&web_token, "web-token\n").unwrap();

    let app = app().await;
    let server = start_proxy("inboundTls: { mode: STRICT }\n", &ca, &root, &web_token, "web", lifetime);
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
    let client = start_proxy(&client_config, &ca, &root, &frontend_token, "frontend", lifetime);
    eventually("both proxies are certified and ready", async || {
        server.running.proxy.is_ready() && client.running.proxy.is_ready()
    })
    .await;
    Mesh { ca: Some(ca), dir, app, server, client }
}

/// A steady stream of requests through the pair: every tenth on a new connection, so that
/// renewed certificates are exercised in handshakes as well as kept-alive connections.
struct Stream {
    connection: Option<hyper::client::conn::http1::SendRequest<http_body_util::Empty<hyper::body::Bytes>>>,
    sent: u32,
    failed: Vec<String>,
}

impl Stream {
    fn new() -> Stream {
        Stream { connection: None, sent: 0, failed: Vec::new() }
    }

    async fn send(&mut self, mesh: &Mesh) {
        if self.sent.is_multiple_of(10) || self.connection.is_none() {
            let stream = tokio::net::TcpStream::connect(mesh.client.running.outbound[0]).await.unwrap();
            let (sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
            tokio::spawn(conn);
            self.connection = Some(sender);
        }
        let Some(sender) = self.connection.as_mut() else { return };
        let request = http::Request::get("/")
            .header("host", format!("web:{}", mesh.app.port()))
            .body(http_body_util::Empty::<hyper::body::Bytes>::new())
            .unwrap();
        self.sent += 1;
        match sender.send_request(request).await {
            Ok(response) if response.status() == 200 => {}
            Ok(response) => self.failed.push(format!("status {}", response.status())),
            Err(e) => {
                self.failed.push(e.to_string());
                self.connection = None;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    fn assert_none_failed(&self) {
        assert!(
            self.failed.is_empty(),
            "{} of {} requests failed: {:?}",
            self.failed.len(),
            self.sent,
            self.failed
        );
    }
}

fn serial(proxy: &Proxy) -> String {
    proxy.tls.current().unwrap().leaf.serial.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_a_steady_stream_without_a_failed_request() {
    let mesh = mesh(LIFETIME).await;
    assert_eq!(
        mesh.client.tls.current().unwrap().leaf.id.to_string(),
        "spiffe://cluster.local/ns/test/sa/frontend",
        "the identity the token names"
    );
    let (mut server_serials, mut client_serials) = (BTreeSet::new(), BTreeSet::new());
    let mut stream = Stream::new();
    let started = Instant::now();
    while (server_serials.len() < 4 || client_serials.len() < 4) && started.elapsed() < DEADLINE {
        server_serials.insert(serial(&mesh.server));
        client_serials.insert(serial(&mesh.client));
        stream.send(&mesh).await;
    }
    assert!(
        server_serials.len() >= 4 && client_serials.len() >= 4,
        "renewals seen: server {}, client {} in {:?}; log:\n{}",
        server_serials.len(),
        client_serials.len(),
        started.elapsed(),
        mesh.ca.as_ref().unwrap().logs()
    );
    stream.assert_none_failed();
    assert!(stream.sent > 100, "a steady stream: {}", stream.sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_keep_serving_while_the_ca_is_down_and_renew_once_it_is_back() {
    let mut mesh = mesh(OUTAGE_LIFETIME).await;
    let secure = mesh.ca.as_ref().unwrap().secure;
    let first = (serial(&mesh.server), serial(&mesh.client));
    drop(mesh.ca.take());

    // Both proxies try to renew at half life, fail, and keep serving on what they have.
    let mut stream = Stream::new();
    let started = Instant::now();
    while (mesh.server.tls.failed_requests() == 0 || mesh.client.tls.failed_requests() == 0)
        && started.elapsed() < DEADLINE
    {
        stream.send(&mesh).await;
    }
    assert!(
        mesh.server.tls.failed_requests() > 0 && mesh.client.tls.failed_requests() > 0,
        "both proxies tried the CA while it was down"
    );
    assert_eq!((serial(&mesh.server), serial(&mesh.client)), first, "nothing renewed while the CA was down");
    let metrics = mesh.client.running.proxy.metrics.render();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("trellis_workload_certificate_request_failures_total ")
                && !l.ends_with(" 0")),
        "the failures are counted:\n{metrics}"
    );
    stream.assert_none_failed();
    let during_outage = stream.sent;

    // The same CA (its cacerts) back on the same address: both renew, still no request lost.
    let ca = start_ca(mesh.dir.path(), &secure.to_string());
    let renewed = Instant::now();
    while (serial(&mesh.server) == first.0 || serial(&mesh.client) == first.1) && renewed.elapsed() < DEADLINE
    {
        stream.send(&mesh).await;
    }
    assert!(
        serial(&mesh.server) != first.0 && serial(&mesh.client) != first.1,
        "both renewed after the CA came back; log:\n{}",
        ca.logs()
    );
    stream.assert_none_failed();
    assert!(during_outage > 20, "requests went on during the outage: {during_outage}");
}
