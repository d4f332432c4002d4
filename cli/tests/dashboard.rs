//! `trellis dashboard`, run as the user runs it, against stand-ins on loopback that answer as
//! the real things do: a Prometheus server's query API (its JSON), trellisd's `/debug/syncz`
//! (the control plane's own types), and proxies' `/stats/prometheus` pages rendered by the
//! proxy's own metrics code from recorded requests. Then the page itself in headless Chromium
//! (skipped with a message when Chromium is missing, unless TRELLIS_PRIVILEGED_TESTS=require).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Stand-ins and helpers.

/// An HTTP server on loopback answering every GET with what `answer` makes of its path and query.
struct StandIn {
    addr: SocketAddr,
    /// Serves until dropped.
    _runtime: tokio::runtime::Runtime,
}

impl StandIn {
    fn start(answer: impl Fn(&str) -> (u16, String) + Send + Sync + 'static) -> StandIn {
        StandIn::start_at("127.0.0.1:0".parse().expect("addr"), answer)
    }

    fn start_at(at: SocketAddr, answer: impl Fn(&str) -> (u16, String) + Send + Sync + 'static) -> StandIn {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let answer = Arc::new(answer);
        let listener = runtime.block_on(tokio::net::TcpListener::bind(at)).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
            let answer = answer.clone();
            async move {
                let target = uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
                let (status, body) = answer(&target);
                (axum::http::StatusCode::from_u16(status).expect("status"), body)
            }
        });
        runtime.spawn(async move { axum::serve(listener, app).await });
        StandIn { addr, _runtime: runtime }
    }
}

/// `trellis dashboard` as a child process, stopped when dropped.
struct Dashboard {
    child: Child,
    url: String,
}

impl Dashboard {
    fn start(args: &[&str]) -> Dashboard {
        let mut child = Command::new(env!("CARGO_BIN_EXE_trellis"))
            .arg("dashboard")
            .args(["--port", "0", "--interval", "1"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start trellis dashboard");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read the first line");
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL in {line:?}"))
            .trim_end_matches('/')
            .to_owned();
        assert!(line.starts_with("trellis dashboard: http://127.0.0.1:"), "{line}");
        Dashboard { child, url }
    }

    fn get(&self, path: &str) -> (u16, Value) {
        let (status, body) = http_get(&format!("{}{path}", self.url));
        let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
        (status, json)
    }

    /// Polls `path` until `done` holds of its answer, within [`WAIT`].
    fn wait_for(&self, path: &str, done: impl Fn(u16, &Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let (status, json) = self.get(path);
            if done(status, &json) {
                return json;
            }
            assert!(
                Instant::now() < deadline,
                "{path} never became as expected; last answer {status}: {json:#}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain GET on a connection of its own: status and body.
fn http_get(url: &str) -> (u16, String) {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut stream = TcpStream::connect(host).unwrap_or_else(|e| panic!("{url}: {e}"));
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    let path = if path.is_empty() { "/" } else { path };
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").expect("write");
    // Until the server closes, or the body's Content-Length is in (DevTools keeps it open).
    let mut bytes = Vec::new();
    let mut buffer = [0u8; 16384];
    loop {
        let n = stream.read(&mut buffer).unwrap_or_else(|e| panic!("{url}: {e}"));
        bytes.extend_from_slice(&buffer[..n]);
        let text = String::from_utf8_lossy(&bytes);
        let complete = text.split_once("\r\n\r\n").is_some_and(|(head, body)| {
            head.lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse::<usize>().ok())
                .is_some_and(|length| body.len() >= length)
        });
        if n == 0 || complete {
            break;
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status line");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

fn edge<'a>(graph: &'a Value, id: &str) -> &'a Value {
    graph["edges"]
        .as_array()
        .and_then(|edges| edges.iter().find(|e| e["id"] == id))
        .unwrap_or_else(|| panic!("no edge {id} in {graph:#}"))
}

fn has_edge(graph: &Value, id: &str) -> bool {
    graph["edges"].as_array().is_some_and(|edges| edges.iter().any(|e| e["id"] == id))
}

fn close(a: &Value, b: f64) -> bool {
    a.as_f64().is_some_and(|a| (a - b).abs() < 1e-6)
}

/// A loopback port nothing listens on.
fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

// ---------------------------------------------------------------------------------------------
// A Prometheus server's answers.

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn call(src: &str, svc: &str, dst: &str, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut l = labels(&[
        ("reporter", "source"),
        ("source_workload", src),
        ("source_workload_namespace", "shop"),
        ("destination_service_name", svc),
        ("destination_service_namespace", "shop"),
        ("destination_workload", dst),
        ("destination_workload_namespace", "shop"),
    ]);
    l.extend(labels(extra));
    l
}

fn vector(items: &[(BTreeMap<String, String>, f64)]) -> String {
    let result: Vec<Value> = items
        .iter()
        .map(|(metric, v)| json!({"metric": metric, "value": [1_765_000_000.0, v.to_string()]}))
        .collect();
    json!({"status": "success", "data": {"resultType": "vector", "result": result}}).to_string()
}

/// The shop: web calls reviews (v1 90 %, v2 10 % of which half fail), all over mutual TLS;
/// web's plaintext calls to ratings are denied.
fn shop_requests() -> String {
    let ok = [("response_code", "200"), ("connection_security_policy", "mutual_tls")];
    vector(&[
        (call("web", "reviews", "reviews-v1", &ok), 9.0),
        (call("web", "reviews", "reviews-v2", &ok), 0.5),
        (
            call(
                "web",
                "reviews",
                "reviews-v2",
                &[("response_code", "503"), ("connection_security_policy", "mutual_tls")],
            ),
            0.5,
        ),
        (
            call(
                "web",
                "ratings",
                "ratings-v1",
                &[("response_code", "403"), ("connection_security_policy", "none")],
            ),
            2.0,
        ),
        // The callee's report of web's calls: counted once, from the caller's side.
        (
            {
                let mut l = call("web", "reviews", "reviews-v1", &ok);
                l.insert("reporter".into(), "destination".into());
                l
            },
            9.0,
        ),
    ])
}

fn shop_buckets() -> String {
    let mut items = Vec::new();
    for (dst, total) in [("reviews-v1", 9.0), ("reviews-v2", 1.0)] {
        // Half within 10 ms, all within 100 ms.
        for (le, share) in [("10", 0.5), ("100", 1.0), ("+Inf", 1.0)] {
            items.push((call("web", "reviews", dst, &[("le", le)]), total * share));
        }
    }
    vector(&items)
}

fn prometheus(queries: Arc<Mutex<Vec<String>>>) -> StandIn {
    StandIn::start(move |target| {
        queries.lock().expect("lock").push(target.to_owned());
        if !target.starts_with("/api/v1/query?query=") {
            return (404, "not found".into());
        }
        if target.contains("bucket") { (200, shop_buckets()) } else { (200, shop_requests()) }
    })
}

/// trellisd's `/debug/syncz`, in the control plane's own types.
fn syncz(proxies: &[(&str, &str, &str, Option<&str>)]) -> String {
    use trellis_control_plane::status::{SyncStatus, Syncz, TypeSync};
    let proxies = proxies
        .iter()
        .map(|(id, ns, workload, nack)| SyncStatus {
            id: (*id).to_owned(),
            namespace: (*ns).to_owned(),
            workload: (*workload).to_owned(),
            connected_since: 1_765_000_000,
            status: if nack.is_some() { "NACKED" } else { "SYNCED" }.to_owned(),
            types: [
                ("cluster".to_owned(), TypeSync { sent: Some(3), acked: Some(3), nack: None, held: 4 }),
                (
                    "virtualhost".to_owned(),
                    TypeSync {
                        sent: Some(3),
                        acked: Some(if nack.is_some() { 2 } else { 3 }),
                        nack: nack.map(str::to_owned),
                        held: 2,
                    },
                ),
            ]
            .into_iter()
            .collect(),
        })
        .collect();
    serde_json::to_string(&Syncz { proxies, rejected_config: vec!["vs.yaml: bad weight".into()] })
        .expect("json")
}

fn control_plane(body: String) -> StandIn {
    StandIn::start(
        move |target| if target == "/debug/syncz" { (200, body.clone()) } else { (404, "no".into()) },
    )
}

const SHOP_CONFIG: &str = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 90
    - destination: {host: reviews, subset: v2}
      weight: 10
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ratings, namespace: shop}
spec:
  selector: {matchLabels: {app: ratings}}
  action: DENY
  rules:
  - from:
    - source: {notPrincipals: ['*']}
";

// ---------------------------------------------------------------------------------------------
// The API.

#[test]
fn the_graph_from_prometheus_has_every_edge_with_its_signals() {
    let queries = Arc::new(Mutex::new(Vec::new()));
    let prom = prometheus(queries.clone());
    let cp = control_plane(syncz(&[
        ("sidecar~10.0.0.5~web-1.shop~shop.svc.cluster.local", "shop", "web", None),
        (
            "sidecar~10.0.0.6~reviews-v2-1.shop~shop.svc.cluster.local",
            "shop",
            "reviews-v2",
            Some("route refused"),
        ),
    ]));
    let config = tempfile::tempdir().expect("tempdir");
    std::fs::write(config.path().join("shop.yaml"), SHOP_CONFIG).expect("write");
    let dash = Dashboard::start(&[
        "--prometheus",
        &format!("http://{}", prom.addr),
        "--control-plane",
        &cp.addr.to_string(),
        "--config",
        config.path().to_str().expect("utf-8"),
    ]);

    let graph = dash.wait_for("/api/graph", |status, g| {
        status == 200 && has_edge(g, "workload:shop/web->service:shop/reviews")
    });
    assert_eq!(graph["source"], format!("prometheus http://{}", prom.addr));
    let nodes: Vec<&str> =
        graph["nodes"].as_array().expect("nodes").iter().filter_map(|n| n["id"].as_str()).collect();
    assert_eq!(
        nodes,
        [
            "service:shop/ratings",
            "service:shop/reviews",
            "workload:shop/ratings-v1",
            "workload:shop/reviews-v1",
            "workload:shop/reviews-v2",
            "workload:shop/web"
        ]
    );
    let calls = edge(&graph, "workload:shop/web->service:shop/reviews");
    assert!(close(&calls["rps"], 10.0), "{calls}");
    assert!(close(&calls["successRate"], 0.95), "{calls}");
    assert_eq!(calls["mtls"], true);
    assert!(close(&calls["deniedRps"], 0.0));
    // Half the requests within 10 ms; 99 % within 100 ms, interpolated as histogram_quantile.
    assert!(close(&calls["p50Ms"], 10.0), "{calls}");
    assert!(close(&calls["p99Ms"], 98.2), "{calls}");
    let v1 = edge(&graph, "service:shop/reviews->workload:shop/reviews-v1");
    let v2 = edge(&graph, "service:shop/reviews->workload:shop/reviews-v2");
    assert!(close(&v1["share"], 90.0) && close(&v2["share"], 10.0), "{v1} {v2}");
    assert!(close(&v2["successRate"], 0.5));
    let denied = edge(&graph, "workload:shop/web->service:shop/ratings");
    assert!(close(&denied["deniedRps"], 2.0), "{denied}");
    assert_eq!(denied["mtls"], false);

    let asked = queries.lock().expect("lock").clone();
    assert!(asked.iter().any(|q| q.contains("rate%28istio_requests_total%5B1m%5D%29")), "{asked:?}");
    assert!(asked.iter().any(|q| q.contains("istio_request_duration_milliseconds_bucket")), "{asked:?}");

    let (status, proxies) = dash.get("/api/proxies");
    assert_eq!(status, 200);
    assert_eq!(proxies["proxies"][0]["name"], "reviews-v2-1");
    assert_eq!(proxies["proxies"][0]["status"], "NACKED");
    assert_eq!(proxies["proxies"][0]["types"]["virtualhost"]["nack"], "route refused");
    assert_eq!(proxies["proxies"][1]["status"], "SYNCED");
    assert_eq!(proxies["rejectedConfig"][0], "vs.yaml: bad weight");

    let view = dash
        .wait_for("/api/service/shop/reviews", |_, v| v["history"].as_array().is_some_and(|h| !h.is_empty()));
    assert!(close(&view["signals"]["rps"], 10.0), "{view:#}");
    assert_eq!(view["endpoints"].as_array().map(Vec::len), Some(2));
    let config = &view["config"];
    assert_eq!(config["applied"][0]["kind"], "VirtualService");
    assert_eq!(config["splits"][0]["destinations"][1]["weight"], 10);
    let ratings = dash.get("/api/service/shop/ratings").1;
    assert_eq!(ratings["config"]["applied"][0]["kind"], "AuthorizationPolicy");
    assert!(ratings["config"]["applied"][0]["scope"].as_str().is_some_and(|s| s.contains("selector")));
}

/// A proxy's Prometheus page, rendered by the proxy's own metrics code from recorded requests.
struct ProxyPage {
    metrics: Mutex<trellis_proxy::metrics::Metrics>,
}

impl ProxyPage {
    fn new(workload: &str) -> Arc<ProxyPage> {
        let workload = trellis_proxy::metrics::Workload { name: workload.into(), namespace: "shop".into() };
        Arc::new(ProxyPage { metrics: Mutex::new(trellis_proxy::metrics::Metrics::new(workload)) })
    }

    fn serve(self: &Arc<ProxyPage>, at: &str) -> StandIn {
        let page = self.clone();
        StandIn::start_at(at.parse().expect("addr"), move |target| {
            if target == "/stats/prometheus" {
                (200, page.metrics.lock().expect("lock").render())
            } else {
                (404, String::new())
            }
        })
    }

    /// `count` requests, recorded at once so that one scrape sees all of them.
    fn record(&self, batches: &[(trellis_proxy::metrics::Reporter, &str, &str, u16, bool, u32)]) {
        use trellis_proxy::metrics::{RequestRecord, Security};
        use trellis_proxy::peers::PeerKey;
        let metrics = self.metrics.lock().expect("lock");
        for &(reporter, service, peer, status, mtls, count) in batches {
            let peer = match peer {
                "unknown" => PeerKey::unknown(),
                name => PeerKey::new(Arc::new(
                    trellis_proxy::metrics::Workload { name: name.into(), namespace: "shop".into() }
                        .labels(&BTreeMap::new(), "Kubernetes"),
                )),
            };
            let service: Arc<str> = service.into();
            for _ in 0..count {
                metrics.request(RequestRecord {
                    reporter,
                    service: &service,
                    peer: peer.clone(),
                    grpc: false,
                    status,
                    grpc_status: "",
                    flags: "-",
                    millis: 3.0,
                    request_bytes: 10,
                    response_bytes: 10,
                    security: Security {
                        mutual_tls: mtls,
                        peer: mtls.then(|| Arc::from("spiffe://cluster.local/ns/shop/sa/default")),
                    },
                });
            }
        }
    }
}

#[test]
fn the_graph_from_the_proxies_trellisd_lists() {
    use trellis_proxy::metrics::Reporter::{Destination, Source};
    // web's proxy is listed by trellisd (its node id names its address); reviews-v1's is
    // given with --proxy-metrics. Both on loopback, on one port each.
    let web = ProxyPage::new("web");
    let web_page = web.serve("127.0.0.1:0");
    let reviews = ProxyPage::new("reviews-v1");
    let reviews_page = reviews.serve("127.0.0.1:0");
    let cp =
        control_plane(syncz(&[("sidecar~127.0.0.1~web-1.shop~shop.svc.cluster.local", "shop", "web", None)]));
    let dash = Dashboard::start(&[
        "--control-plane",
        &format!("http://{}", cp.addr),
        "--stats-port",
        &web_page.addr.port().to_string(),
        "--proxy-metrics",
        &reviews_page.addr.to_string(),
    ]);
    // A first reading, then traffic: the next reading has its rate.
    dash.wait_for("/api/graph", |status, _| status == 200);
    let svc = "reviews.shop.svc.cluster.local";
    web.record(&[
        (Source, svc, "reviews-v1", 200, true, 90),
        (Source, svc, "reviews-v2", 200, true, 9),
        (Source, svc, "reviews-v2", 503, true, 1),
    ]);
    reviews.record(&[
        // web's calls as the callee saw them: not counted twice.
        (Destination, svc, "web", 200, true, 90),
    ]);
    let positive = |g: &Value, id: &str, field: &str| {
        has_edge(g, id) && edge(g, id)[field].as_f64().is_some_and(|r| r > 0.0)
    };
    let graph =
        dash.wait_for("/api/graph", |_, g| positive(g, "workload:shop/web->service:shop/reviews", "rps"));
    let calls = edge(&graph, "workload:shop/web->service:shop/reviews");
    // One proxy's requests are read at once: its numbers are exact whatever the interval.
    // Were the callee's report counted too, success and shares would differ.
    assert!(close(&calls["successRate"], 0.99), "{calls}");
    assert_eq!(calls["mtls"], true);
    assert!(calls["p50Ms"].as_f64().is_some_and(|p| p > 1.0 && p <= 5.0), "{calls}");
    let v1 = edge(&graph, "service:shop/reviews->workload:shop/reviews-v1");
    assert!(close(&v1["share"], 90.0), "{v1}");
    let v2 = edge(&graph, "service:shop/reviews->workload:shop/reviews-v2");
    assert!(close(&v2["successRate"], 0.9), "{v2}");
    // A caller outside the mesh, refused: reported by the callee only.
    reviews.record(&[(Destination, svc, "unknown", 403, false, 5)]);
    let id = "workload:unknown/unknown->service:shop/reviews";
    let graph = dash.wait_for("/api/graph", |_, g| positive(g, id, "deniedRps"));
    let outside = edge(&graph, id);
    assert_eq!(outside["deniedRps"], outside["rps"], "{outside}");
    assert_eq!(outside["mtls"], false);
    assert_eq!(graph["warnings"].as_array().map(Vec::len), Some(0), "{graph:#}");
}

#[test]
fn unreachable_and_malformed_sources_are_named_in_the_api() {
    // Nothing listens: the graph says which Prometheus and why.
    let nowhere = closed_port();
    let dash = Dashboard::start(&[
        "--prometheus",
        &format!("http://{nowhere}"),
        "--control-plane",
        &closed_port().to_string(),
    ]);
    let error = dash.wait_for("/api/graph", |status, _| status == 502);
    let text = error["error"].as_str().expect("error");
    assert!(text.contains(&format!("Prometheus at http://{nowhere}")) && text.contains("refused"), "{text}");
    let (status, proxies) = dash.get("/api/proxies");
    assert_eq!(status, 502);
    assert!(
        proxies["error"].as_str().is_some_and(|e| e.contains("/debug/syncz") && e.contains("cannot connect")),
        "{proxies}"
    );
    drop(dash);

    // Answers that are not what they should be.
    let html = StandIn::start(|_| (200, "<html>hello</html>".into()));
    let failing = StandIn::start(|_| {
        (400, r#"{"status":"error","errorType":"bad_data","error":"unknown function"}"#.into())
    });
    let dash = Dashboard::start(&[
        "--prometheus",
        &format!("http://{}", html.addr),
        "--control-plane",
        &html.addr.to_string(),
    ]);
    let error = dash.wait_for("/api/graph", |status, _| status == 502);
    assert!(error["error"].as_str().is_some_and(|e| e.contains("not Prometheus query JSON")), "{error}");
    let (_, proxies) = dash.get("/api/proxies");
    assert!(proxies["error"].as_str().is_some_and(|e| e.contains("not /debug/syncz JSON")), "{proxies}");
    drop(dash);
    let dash = Dashboard::start(&["--prometheus", &format!("http://{}", failing.addr)]);
    let error = dash.wait_for("/api/graph", |status, _| status == 502);
    assert!(
        error["error"].as_str().is_some_and(|e| e.contains("unknown function") && e.contains("bad_data")),
        "{error}"
    );

    // trellisd's view with no trellisd and no proxies given.
    let cp = closed_port();
    let dash = Dashboard::start(&["--control-plane", &cp.to_string()]);
    let error = dash.wait_for("/api/graph", |status, _| status == 502);
    assert!(
        error["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("cannot find the proxies") && e.contains(&cp.to_string())),
        "{error}"
    );
    // A proxy that does not answer is a warning; the others still count.
    let dash = Dashboard::start(&[
        "--control-plane",
        &cp.to_string(),
        "--proxy-metrics",
        &closed_port().to_string(),
    ]);
    let graph = dash.wait_for("/api/graph", |status, _| status == 200);
    let warnings: Vec<&str> =
        graph["warnings"].as_array().expect("warnings").iter().filter_map(Value::as_str).collect();
    assert!(
        warnings.iter().any(|w| w.starts_with("only the --proxy-metrics addresses are read")),
        "{warnings:?}"
    );
    assert!(warnings.iter().any(|w| w.starts_with("proxy metrics at")), "{warnings:?}");

    // Bad requests to the API.
    let (status, answer) = dash.get("/api/service/Shop/reviews");
    assert_eq!(status, 400);
    assert_eq!(answer["error"], "namespace \"Shop\" is not a Kubernetes name");
    assert_eq!(dash.get("/api/service/shop/a%2Fb").0, 400);
    assert_eq!(http_get(&format!("{}/assets/../../etc/passwd", dash.url)).0, 404);
}

#[test]
fn bad_arguments_are_refused_with_the_flag_named() {
    for (args, expected) in [
        (
            vec!["--prometheus", "https://prom:9090"],
            "--prometheus \"https://prom:9090\": only http:// is supported",
        ),
        (vec!["--prometheus", "http://prom:99999"], "is not a port number"),
        (vec!["--control-plane", "ftp://x"], "--control-plane \"ftp://x\""),
    ] {
        let out =
            Command::new(env!("CARGO_BIN_EXE_trellis")).arg("dashboard").args(&args).output().expect("run");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(["dashboard", "--port", &port])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("cannot listen on 127.0.0.1:{port}")));
}

// ---------------------------------------------------------------------------------------------
// The page in a real browser.

fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .or_else(|| {
            assert!(
                std::env::var("TRELLIS_PRIVILEGED_TESTS").as_deref() != Ok("require"),
                "TRELLIS_PRIVILEGED_TESTS=require but Chromium is not installed (apt-get install chromium; scripts/test.sh does)"
            );
            eprintln!("SKIPPED: the dashboard's browser test needs Chromium (apt-get install chromium)");
            None
        })
}

fn target_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard");
    std::fs::create_dir_all(&dir).expect("target/dashboard");
    dir
}

/// The page's DOM after its scripts ran for `budget_ms` of virtual time.
fn dump_dom(browser: &Path, url: &str, budget_ms: u32) -> String {
    let profile = tempfile::tempdir().expect("profile");
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1400,900",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--virtual-time-budget={budget_ms}"))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(out.status.success(), "chromium: {}", String::from_utf8_lossy(&out.stderr));
    // Newer Chromium escapes `>` in attribute values, older does not.
    String::from_utf8_lossy(&out.stdout).replace("&gt;", ">")
}

fn screenshot(browser: &Path, url: &str, file: &Path) {
    let profile = tempfile::tempdir().expect("profile");
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1400,900",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--virtual-time-budget=5000")
        .arg(format!("--screenshot={}", file.display()))
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success() && file.is_file(),
        "chromium screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("screenshot: {}", file.display());
}

fn attribute<'a>(dom: &'a str, element_id: &str, name: &str) -> Option<&'a str> {
    let start = dom.find(&format!("id=\"{element_id}\""))?;
    let tag_start = dom[..start].rfind('<')?;
    let tag = &dom[tag_start..tag_start + dom[tag_start..].find('>')?];
    let at = tag.find(&format!("{name}=\""))? + name.len() + 2;
    Some(&tag[at..at + tag[at..].find('"')?])
}

#[test]
fn the_page_draws_the_graph_in_a_real_browser() {
    let Some(browser) = chromium() else { return };
    let prom = prometheus(Arc::new(Mutex::new(Vec::new())));
    let cp = control_plane(syncz(&[(
        "sidecar~10.0.0.5~web-1.shop~shop.svc.cluster.local",
        "shop",
        "web",
        Some("bad route"),
    )]));
    let config = tempfile::tempdir().expect("tempdir");
    std::fs::write(config.path().join("shop.yaml"), SHOP_CONFIG).expect("write");
    let dash = Dashboard::start(&[
        "--prometheus",
        &format!("http://{}", prom.addr),
        "--control-plane",
        &cp.addr.to_string(),
        "--config",
        config.path().to_str().expect("utf-8"),
    ]);
    dash.wait_for("/api/graph", |status, _| status == 200);

    let dom = dump_dom(&browser, &format!("{}/", dash.url), 4000);
    assert_eq!(attribute(&dom, "graph", "data-nodes"), Some("6"), "cytoscape's node count");
    assert_eq!(attribute(&dom, "graph", "data-edges"), Some("5"), "cytoscape's edge count");
    for (edge, mtls, denied) in [
        ("workload:shop/web->service:shop/reviews", "true", "false"),
        ("service:shop/reviews->workload:shop/reviews-v2", "true", "false"),
        ("workload:shop/web->service:shop/ratings", "false", "true"),
    ] {
        let row = format!("data-edge=\"{edge}\" data-mtls=\"{mtls}\" data-denied=\"{denied}\"");
        assert!(dom.contains(&row), "no {row} in the page:\n{dom}");
    }
    assert!(dom.contains("<td>10%</td>"), "the canary's split on its edge");
    screenshot(&browser, &format!("{}/", dash.url), &target_dir().join("graph.png"));

    // The service view: its split and policies, and its charts.
    let dom = dump_dom(&browser, &format!("{}/#service/shop/reviews", dash.url), 4000);
    assert!(dom.contains("id=\"service-name\">reviews.shop</h2>"), "{dom}");
    assert!(dom.contains("Split (shop/reviews, route #0): v1 90%, v2 10%"), "{dom}");
    assert!(dom.contains("VirtualService shop/reviews (hosts)"), "{dom}");
    assert_eq!(dom.matches("class=\"uplot").count(), 3, "three charts");
    screenshot(&browser, &format!("{}/#service/shop/reviews", dash.url), &target_dir().join("service.png"));

    // The proxy sync table.
    let dom = dump_dom(&browser, &format!("{}/#proxies", dash.url), 3000);
    assert!(dom.contains("<td>web-1</td>") && dom.contains("NACKED (2): bad route"), "{dom}");
    drop(dash);

    // A Prometheus that is not there: the page says so.
    let nowhere = closed_port();
    let dash = Dashboard::start(&[
        "--prometheus",
        &format!("http://{nowhere}"),
        "--control-plane",
        &closed_port().to_string(),
    ]);
    dash.wait_for("/api/graph", |status, _| status == 502);
    let dom = dump_dom(&browser, &format!("{}/", dash.url), 3000);
    assert!(dom.contains(&format!("Graph: Prometheus at http://{nowhere}")), "{dom}");
    screenshot(&browser, &format!("{}/", dash.url), &target_dir().join("error.png"));
}

/// 500 services called by 50 front ends: how long the page takes to lay out and draw them
/// (printed, not asserted).
#[test]
fn a_mesh_of_500_services_renders() {
    let Some(browser) = chromium() else { return };
    let mut requests = Vec::new();
    for i in 0..500 {
        let service = format!("svc-{i:03}");
        let labels = call(
            &format!("front-{:02}", i % 50),
            &service,
            &format!("{service}-v1"),
            &[("response_code", "200"), ("connection_security_policy", "mutual_tls")],
        );
        requests.push((labels, 1.0 + i as f64 / 100.0));
    }
    let body = vector(&requests);
    let prom =
        StandIn::start(
            move |target| {
                if target.contains("bucket") { (200, vector(&[])) } else { (200, body.clone()) }
            },
        );
    let dash = Dashboard::start(&[
        "--prometheus",
        &format!("http://{}", prom.addr),
        "--control-plane",
        &closed_port().to_string(),
    ]);
    dash.wait_for("/api/graph", |status, _| status == 200);
    let dom = dump_dom(&browser, &format!("{}/", dash.url), 8000);
    assert_eq!(attribute(&dom, "graph", "data-nodes"), Some("1050"));
    assert_eq!(attribute(&dom, "graph", "data-edges"), Some("1000"));
    // In real time (the DOM dump above runs on virtual time): the first draw with its layout,
    // a refresh of every edge's numbers, and a zoom and a pan to the next frame.
    let measured = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(devtools::measure(&browser, &format!("{}/", dash.url)));
    match measured {
        Ok(m) => println!(
            "500 services (1050 nodes, 1000 edges) in headless Chromium: first draw with layout {} ms; a refresh {} ms; \
             zoom to the next frame {} ms; pan to the next frame {} ms",
            m.layout_ms, m.refresh_ms, m.zoom_ms, m.pan_ms
        ),
        Err(e) => println!("500 services: not measured in real time: {e}"),
    }
    screenshot(&browser, &format!("{}/", dash.url), &target_dir().join("graph-500.png"));
}

/// Just enough of the DevTools protocol to load a page and evaluate expressions in it.
mod devtools {
    use std::path::Path;
    use std::time::{Duration, Instant};

    use futures_util::{SinkExt, StreamExt};
    use serde_json::{Value, json};
    use std::io::{BufRead, BufReader};

    use tokio_tungstenite::tungstenite::Message;

    /// Chromium, stopped when the measurement ends however it ends.
    struct Killed(std::process::Child);

    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    pub struct Measured {
        pub layout_ms: String,
        pub refresh_ms: String,
        pub zoom_ms: String,
        pub pan_ms: String,
    }

    type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

    pub async fn measure(browser: &Path, url: &str) -> Result<Measured, String> {
        let profile = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut child = std::process::Command::new(browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--window-size=1400,900",
            ])
            .arg("--remote-debugging-port=0")
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let child = Killed(child);
        let (found, address) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("ws://") {
                    let _ = found.send(line[at..].trim().to_owned());
                }
            }
        });
        let browser_ws = address
            .recv_timeout(Duration::from_secs(20))
            .map_err(|_| "Chromium did not say where its DevTools listen")?;
        // The page target of about:blank, from the same port.
        let authority =
            browser_ws.trim_start_matches("ws://").split('/').next().unwrap_or_default().to_owned();
        let (_, list) =
            tokio::task::spawn_blocking(move || super::http_get(&format!("http://{authority}/json/list")))
                .await
                .map_err(|e| e.to_string())?;
        let targets: Value = serde_json::from_str(&list).map_err(|e| e.to_string())?;
        let page_ws = targets
            .as_array()
            .and_then(|t| t.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .ok_or("no page target")?
            .to_owned();
        let host = page_ws.trim_start_matches("ws://").split('/').next().unwrap_or_default().to_owned();
        let stream = tokio::net::TcpStream::connect(&host).await.map_err(|e| e.to_string())?;
        let (mut socket, _) =
            tokio_tungstenite::client_async(page_ws.as_str(), stream).await.map_err(|e| e.to_string())?;
        let mut id = 0;
        call(&mut socket, &mut id, "Page.navigate", json!({ "url": url })).await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let layout_ms = loop {
            let v = evaluate(&mut socket, &mut id, "(document.body && document.body.dataset.layoutMs) || ''")
                .await?;
            let text = v.as_str().unwrap_or_default().to_owned();
            let nodes = evaluate(
                &mut socket,
                &mut id,
                "(document.getElementById('graph') || { dataset: {} }).dataset.nodes || ''",
            )
            .await?;
            if !text.is_empty() && nodes == "1050" {
                break text;
            }
            if Instant::now() > deadline {
                return Err("the graph was not drawn within 60 s".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let refresh_ms = evaluate(
            &mut socket,
            &mut id,
            "(async () => { await refreshGraph(); return document.body.dataset.renderMs; })()",
        )
        .await?;
        let frame = |action: &str| {
            format!(
                "new Promise((done) => {{ const t = performance.now(); {action}; \
                 requestAnimationFrame(() => requestAnimationFrame(() => done((performance.now() - t).toFixed(0)))); }})"
            )
        };
        let zoom_ms = evaluate(
            &mut socket,
            &mut id,
            &frame("cy.zoom({ level: cy.zoom() * 2, renderedPosition: { x: 500, y: 400 } })"),
        )
        .await?;
        let pan_ms = evaluate(&mut socket, &mut id, &frame("cy.panBy({ x: 200, y: 100 })")).await?;
        let text = |v: Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
        drop(child);
        Ok(Measured { layout_ms, refresh_ms: text(refresh_ms), zoom_ms: text(zoom_ms), pan_ms: text(pan_ms) })
    }

    async fn evaluate(socket: &mut Socket, id: &mut u64, expression: &str) -> Result<Value, String> {
        let answer = call(
            socket,
            id,
            "Runtime.evaluate",
            json!({ "expression": expression, "awaitPromise": true, "returnByValue": true }),
        )
        .await?;
        if let Some(e) = answer.get("exceptionDetails") {
            return Err(format!("{expression}: {e}"));
        }
        Ok(answer["result"]["value"].clone())
    }

    /// Sends one command and waits for its answer (events in between are skipped).
    async fn call(socket: &mut Socket, id: &mut u64, method: &str, params: Value) -> Result<Value, String> {
        *id += 1;
        let message = json!({ "id": *id, "method": method, "params": params }).to_string();
        socket.send(Message::text(message)).await.map_err(|e| e.to_string())?;
        let answer = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(Ok(message)) = socket.next().await {
                let Message::Text(text) = message else { continue };
                let Ok(value) = serde_json::from_str::<Value>(&text) else { continue };
                if value["id"] == *id {
                    return Some(value);
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .ok_or_else(|| format!("{method}: no answer"))?;
        if let Some(e) = answer.get("error") {
            return Err(format!("{method}: {e}"));
        }
        Ok(answer["result"].clone())
    }
}

// ---------------------------------------------------------------------------------------------
// The demo's mesh.

/// `trellis demo --keep` (as root: network namespaces, real proxies, real traffic) serves the
/// dashboard: the graph has the demo's services and calls over mutual TLS, the canary's split
/// moves when the demo edits it halfway, and the page draws it.
#[test]
fn the_demo_serves_its_mesh_on_the_dashboard() {
    use std::sync::mpsc;
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var("TRELLIS_PRIVILEGED_TESTS").as_deref() != Ok("require"),
            "TRELLIS_PRIVILEGED_TESTS=require but this test needs root"
        );
        eprintln!("SKIPPED (needs root): the_demo_serves_its_mesh_on_the_dashboard");
        return;
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(["demo", "--keep", "--duration", "16", "-o", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the demo");
    let stderr = child.stderr.take().expect("stderr");
    struct Stopped(Child);
    impl Drop for Stopped {
        fn drop(&mut self) {
            let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
            let _ = self.0.wait();
        }
    }
    let demo = Stopped(child);
    let (lines, said) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let url = loop {
        let line = said
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the demo's dashboard line");
        if let Some(at) = line.find("the dashboard (graph, services, proxy sync) is on http://") {
            break line[at..].split_whitespace().last().expect("url").trim_end_matches('/').to_owned();
        }
        assert!(!line.contains("no dashboard"), "{line}");
    };
    let dash = Polled { url: url.clone(), denied: Mutex::new((0.0, String::new())) };
    let calls = "workload:shop/frontend->service:shop/catalog";
    let v2 = "service:shop/catalog->workload:shop/catalog-v2";
    let early = dash.wait_for(|g| {
        [calls, v2].iter().all(|id| has_edge(g, id))
            && edge(g, calls)["rps"].as_f64().is_some_and(|r| r > 0.0)
    });
    for id in [
        "workload:unknown/unknown->service:shop/frontend",
        "service:shop/frontend->workload:shop/frontend",
        "service:shop/catalog->workload:shop/catalog-v1",
        "workload:shop/catalog-v1->service:shop/inventory",
    ] {
        assert!(has_edge(&early, id), "no {id} in {early:#}");
    }
    assert_eq!(edge(&early, calls)["mtls"], true, "{early:#}");
    let share = |g: &Value| edge(g, v2)["share"].as_f64().unwrap_or(0.0);
    assert!(share(&early) < 30.0, "the canary starts at 10 %: {}", edge(&early, v2));
    // Halfway the demo edits the VirtualService to 50/50.
    let late = dash.wait_for(|g| has_edge(g, v2) && share(g) > 30.0);
    eprintln!("catalog-v2's share: {:.0} % then {:.0} %", share(&early), share(&late));
    // The demo's call from a pod its AuthorizationPolicy leaves out (inventory to catalog) is
    // made once, after the dashboard's first reading: the next reading has it as a rate.
    let denied = dash.denied.lock().expect("lock").clone();
    eprintln!("denied: {denied:?}");
    assert_eq!(denied.1, "workload:shop/inventory->service:shop/catalog", "{denied:?}");
    let (_, view) = http_get(&format!("{url}/api/service/shop/catalog"));
    let view: Value = serde_json::from_str(&view).expect("json");
    let kinds: Vec<&str> = view["config"]["applied"]
        .as_array()
        .expect("applied")
        .iter()
        .filter_map(|a| a["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"VirtualService") && kinds.contains(&"DestinationRule"), "{kinds:?}");
    let (_, proxies) = http_get(&format!("{url}/api/proxies"));
    let proxies: Value = serde_json::from_str(&proxies).expect("json");
    assert_eq!(proxies["proxies"].as_array().map(Vec::len), Some(5), "{proxies:#}");
    if let Some(browser) = chromium() {
        let dom = dump_dom(&browser, &format!("{url}/"), 4000);
        assert!(
            attribute(&dom, "graph", "data-nodes").is_some_and(|n| n.parse::<usize>().is_ok_and(|n| n >= 9)),
            "{dom}"
        );
        screenshot(&browser, &format!("{url}/#service/shop/catalog"), &target_dir().join("demo.png"));
    }
    drop(demo);
}

/// The demo's dashboard, polled.
struct Polled {
    url: String,
    /// The most requests per second seen denied on an edge, and which.
    denied: Mutex<(f64, String)>,
}

impl Polled {
    fn wait_for(&self, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, body) = http_get(&format!("{}/api/graph", self.url));
            let graph: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            for e in graph["edges"].as_array().map(Vec::as_slice).unwrap_or_default() {
                let rate = e["deniedRps"].as_f64().unwrap_or(0.0);
                let mut denied = self.denied.lock().expect("lock");
                if rate > denied.0 {
                    *denied = (rate, e["id"].as_str().unwrap_or_default().to_owned());
                }
            }
            if status == 200 && done(&graph) {
                return graph;
            }
            assert!(
                Instant::now() < deadline,
                "the demo's graph never became as expected: {status} {graph:#}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
