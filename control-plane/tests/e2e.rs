//! The control plane end to end, on loopback in explicit mode (no root): `trellisd` reads a
//! config directory, two proxies take their config from it over delta xDS, and traffic follows
//! the directory — a weight change shifts the split, an invalid edit is rejected while traffic
//! keeps the last good routing, and a control-plane restart loses no request.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::Router;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use trellis_proxy::metrics::{Metrics, Workload};
use trellis_proxy::xds::XdsOptions;
use trellis_xds::types::ProxyNode;

const HOST: &str = "web.shop.svc.cluster.local";

fn config(v1: u16, v2: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: web, namespace: shop }}
spec:
  hosts: [{HOST}]
  addresses: [240.240.0.10]
  ports: [{{ number: 80, name: http, protocol: HTTP }}]
  resolution: STATIC
  location: MESH_INTERNAL
  workloadSelector: {{ labels: {{ app: web }} }}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{ name: web-v1, namespace: shop }}
spec: {{ address: 127.0.0.1, ports: {{ http: {v1} }}, labels: {{ app: web, version: v1 }} }}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{ name: web-v2, namespace: shop }}
spec: {{ address: 127.0.0.1, ports: {{ http: {v2} }}, labels: {{ app: web, version: v2 }} }}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{ name: web, namespace: shop }}
spec:
  host: {HOST}
  subsets:
    - {{ name: v1, labels: {{ version: v1 }} }}
    - {{ name: v2, labels: {{ version: v2 }} }}
"#
    )
}

fn virtual_service(v1: u32, v2: u32) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: web, namespace: shop }}
spec:
  hosts: [{HOST}]
  http:
    - route:
        - {{ destination: {{ host: {HOST}, subset: v1 }}, weight: {v1} }}
        - {{ destination: {{ host: {HOST}, subset: v2 }}, weight: {v2} }}
"#
    )
}

/// Writes by rename, as a careful editor or `kubectl cp` would: never a half-written file.
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// `trellisd` as a child process, killed (by pid) when dropped.
struct Trellisd {
    child: Child,
    xds: SocketAddr,
    monitoring: SocketAddr,
}

impl Trellisd {
    fn start(dir: &Path, xds: &str) -> Trellisd {
        let mut child = Command::new(env!("CARGO_BIN_EXE_trellisd"))
            .args(["--config-dir"])
            .arg(dir)
            .args(["--xds-address", xds, "--monitoring-address", "127.0.0.1:0", "--log-level", "warn"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        // "trellisd listening: xds A monitoring B"
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words.get(2), Some(&"xds"), "unexpected first line: {line:?}");
        Trellisd { xds: words[3].parse().unwrap(), monitoring: words[5].parse().unwrap(), child }
    }

    fn syncz(&self) -> serde_json::Value {
        let url = format!("http://{}/debug/syncz", self.monitoring);
        let out = Command::new("curl").args(["-s", "-m", "5", &url]).output().unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }
}

impl Drop for Trellisd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn app(name: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Router::new().fallback(move || async move { name });
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

fn start_proxy(xds: SocketAddr, name: &str) -> trellis_proxy::Running {
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let options = trellis_proxy::Options {
        outbound: vec![local],
        inbound: vec![local],
        admin: vec![local],
        readiness: vec![local],
        stats: vec![local],
        config_file: None,
        xds: Some(XdsOptions {
            address: format!("http://{xds}"),
            node: ProxyNode {
                id: format!("sidecar~127.0.0.1~{name}.shop~shop.svc.cluster.local"),
                namespace: "shop".into(),
                workload: name.into(),
                labels: [("app".to_owned(), name.to_owned())].into(),
                ..Default::default()
            },
            secure: None,
        }),
        explicit_inbound: false,
        identity: None,
    };
    let workload = Workload { name: name.into(), namespace: "shop".into() };
    trellis_proxy::start(options, Metrics::new(workload), None).unwrap()
}

/// A keep-alive HTTP/1.1 client to one proxy's outbound port, counting answers by body.
struct Client {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    failures: u32,
}

impl Client {
    async fn connect(proxy: SocketAddr) -> Client {
        let stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        Client { sender, failures: 0 }
    }

    /// Sends `n` requests; returns how many were answered by v2.
    async fn send(&mut self, n: u32) -> u32 {
        let mut v2 = 0;
        for i in 0..n {
            let request = http::Request::get("/").header("host", HOST).body(Empty::new()).unwrap();
            if let Err(e) = self.sender.ready().await {
                panic!("the connection to the proxy broke after {i} requests: {e:?}");
            }
            match self.sender.send_request(request).await {
                Ok(response) if response.status() == 200 => {
                    let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    if &body[..] == b"v2" {
                        v2 += 1;
                    }
                }
                Ok(response) => {
                    eprintln!("failed request: {}", response.status());
                    self.failures += 1;
                }
                Err(e) => panic!("the connection to the proxy broke: {e:?}"),
            }
        }
        v2
    }
}

/// Waits (bounded) for a condition that other processes make true.
async fn eventually(what: &str, deadline: Duration, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < deadline, "{what}: not within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_follows_the_config_directory_through_edits_rejections_and_restarts() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()))
        .try_init();
    let (v1, v2) = (app("v1").await, app("v2").await);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("web.yaml"), config(v1.port(), v2.port())).unwrap();
    let vs = dir.path().join("web-routes.yaml");
    std::fs::write(&vs, virtual_service(90, 10)).unwrap();

    let trellisd = Trellisd::start(dir.path(), "127.0.0.1:0");
    let proxies = [start_proxy(trellisd.xds, "frontend"), start_proxy(trellisd.xds, "checkout")];
    for p in &proxies {
        let proxy = p.proxy.clone();
        eventually("the proxy gets ready", Duration::from_secs(10), async || {
            proxy.ready.load(std::sync::atomic::Ordering::Acquire)
        })
        .await;
    }
    let mut clients =
        [Client::connect(proxies[0].outbound[0]).await, Client::connect(proxies[1].outbound[0]).await];

    // 90/10, through both proxies.
    for client in &mut clients {
        let v2 = client.send(1000).await;
        assert!((50..=150).contains(&v2), "expected about 100 of 1000 on v2, got {v2}");
    }
    let proxies_in_syncz = trellisd.syncz()["proxies"].as_array().map_or(0, Vec::len);
    assert_eq!(proxies_in_syncz, 2);

    // 50/50: the split moves within a bounded wait, with no failed request on the way.
    write_atomically(&vs, &virtual_service(50, 50));
    let took = eventually("the split changes", Duration::from_secs(10), async || {
        let v2 = clients[0].send(100).await;
        (30..=70).contains(&v2)
    })
    .await;
    eprintln!("weight change reached the traffic in {took:?}");
    for client in &mut clients {
        let v2 = client.send(1000).await;
        assert!((430..=570).contains(&v2), "expected about 500 of 1000 on v2, got {v2}");
    }

    // Weights that add up to nothing (Istio takes any other total as relative): rejected,
    // shown on the debug page, last good routing stays.
    write_atomically(&vs, &virtual_service(0, 0));
    eventually("the rejection shows in /debug/syncz", Duration::from_secs(10), async || {
        trellisd.syncz()["rejectedConfig"].to_string().contains("VirtualService shop/web")
    })
    .await;
    let v2 = clients[1].send(1000).await;
    assert!((430..=570).contains(&v2), "the last good split stays: got {v2} of 1000 on v2");

    // The control plane dies: proxies keep serving on their last config.
    let xds_address = trellisd.xds.to_string();
    drop(trellisd);
    for client in &mut clients {
        let v2 = client.send(500).await;
        assert!((180..=320).contains(&v2), "still 50/50 without a control plane: {v2} of 500");
    }
    // It comes back on the same address: both proxies reconnect and get back in sync.
    write_atomically(&vs, &virtual_service(0, 100));
    let trellisd = Trellisd::start(dir.path(), &xds_address);
    eventually("both proxies resync", Duration::from_secs(30), async || {
        let syncz = trellisd.syncz();
        let proxies = syncz["proxies"].as_array().cloned().unwrap_or_default();
        proxies.len() == 2 && proxies.iter().all(|p| p["status"] == "SYNCED")
    })
    .await;
    eventually("the change made while it was down applies", Duration::from_secs(10), async || {
        clients[0].send(50).await == 50 && clients[1].send(50).await == 50
    })
    .await;

    let failures: u32 = clients.iter().map(|c| c.failures).sum();
    assert_eq!(failures, 0, "no request may fail");
}
