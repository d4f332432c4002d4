//! Merged metrics on the status port (`/stats/prometheus`, Istio's agent's page): the app's
//! metrics, scraped from a real HTTP server on 127.0.0.1, served together with the proxy's own;
//! and an app that is down, slow, oversized, malformed or speaks another format costs only its
//! own part of the page, counted by reason, never the proxy's series or a hung scrape.

mod common;

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use common::{TestProxy, get_text};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use trellis_proxy::app_health::{self, AppMetricsTarget, AppProbers, MAX_APP_METRICS_BYTES};

/// A series the proxy always serves: its presence shows the proxy's part of the page is there.
const PROXY_SERIES: &str = "# TYPE trellis_workload_certificate_expiration_timestamp_seconds gauge";

/// What the test app answers.
#[derive(Clone)]
enum Answer {
    Page {
        content_type: Option<&'static str>,
        body: Bytes,
    },
    Status(u16),
    /// Never answers (the connection stays open).
    Stall,
}

/// An app serving its metrics over HTTP/1.1 on 127.0.0.1, counting the requests it gets.
struct App {
    port: u16,
    requests: Arc<AtomicUsize>,
    paths: Arc<std::sync::Mutex<Vec<String>>>,
}

impl App {
    async fn start(answer: Answer) -> App {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = App {
            port: listener.local_addr().unwrap().port(),
            requests: Arc::default(),
            paths: Arc::default(),
        };
        let (requests, paths) = (app.requests.clone(), app.paths.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (answer, requests, paths) = (answer.clone(), requests.clone(), paths.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        requests.fetch_add(1, Ordering::SeqCst);
                        paths.lock().unwrap().push(request.uri().to_string());
                        let answer = answer.clone();
                        async move {
                            let response = match answer {
                                Answer::Page { content_type, body } => {
                                    let mut r = Response::new(Full::new(body));
                                    if let Some(ct) = content_type {
                                        r.headers_mut().insert("content-type", ct.parse().unwrap());
                                    }
                                    r
                                }
                                Answer::Status(code) => {
                                    let mut r = Response::new(Full::new(Bytes::from_static(b"app_up 1\n")));
                                    *r.status_mut() = StatusCode::from_u16(code).unwrap();
                                    r
                                }
                                Answer::Stall => std::future::pending().await,
                            };
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        app
    }

    fn text(body: &'static str) -> Answer {
        Answer::Page {
            content_type: Some("text/plain; version=0.0.4"),
            body: Bytes::from_static(body.as_bytes()),
        }
    }
}

/// The status port of an in-process proxy merging the app's metrics as the injector's
/// `ISTIO_PROMETHEUS_ANNOTATIONS` would describe them.
async fn status_port(scrape_config: &str) -> (TestProxy, SocketAddr) {
    let proxy = TestProxy::start("").await;
    let target = AppMetricsTarget::parse(scrape_config, 15020).unwrap();
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let bound = app_health::start_merging(
        &proxy.running.proxy,
        &[local],
        AppProbers::default(),
        target,
        IpAddr::V4(Ipv4Addr::LOCALHOST),
    )
    .unwrap();
    (proxy, bound[0])
}

/// A scrape as Prometheus sends it, with its timeout header.
async fn scrape(status: SocketAddr, timeout_seconds: &str) -> (StatusCode, String) {
    let mut client = common::Client::connect(status, http::Version::HTTP_11).await;
    let request = Request::get("/stats/prometheus")
        .header("host", "pod")
        .header("user-agent", "Prometheus/3.0.0")
        .header("x-prometheus-scrape-timeout-seconds", timeout_seconds)
        .body(Full::default())
        .unwrap();
    let response = client.send(request).await.unwrap();
    (response.status, response.text())
}

fn failures(page: &str, reason: &str) -> u64 {
    let series = format!("istio_agent_scrape_failures_total{{type=\"application\",reason=\"{reason}\"}} ");
    page.lines().find_map(|l| l.strip_prefix(&series)).map_or(0, |v| v.trim().parse().unwrap())
}

/// The proxy's part is served, the app's is not, and the failure is counted under `reason`.
fn assert_left_out(page: &str, app_marker: &str, reason: &str) {
    assert!(page.contains(PROXY_SERIES), "the proxy's own series: {page}");
    assert!(!page.contains(app_marker), "the app's part is left out whole: {page}");
    assert_eq!(failures(page, reason), 1, "counted as {reason}: {page}");
}

#[tokio::test]
async fn the_apps_metrics_are_served_with_the_proxys() {
    let app = App::start(App::text(
        "# HELP orders_total Orders placed.\n# TYPE orders_total counter\norders_total{shop=\"a\"} 42\n",
    ))
    .await;
    let (_proxy, status) =
        status_port(&format!(r#"{{"scrape":"true","path":"/app-metrics","port":"{}"}}"#, app.port)).await;
    let (code, page) = scrape(status, "10").await;
    assert_eq!(code, StatusCode::OK);
    assert!(page.contains(PROXY_SERIES), "{page}");
    assert!(page.contains("orders_total{shop=\"a\"} 42\n"), "{page}");
    assert!(page.contains("istio_agent_scrapes_total 1\n"), "{page}");
    // One page: the proxy's OpenMetrics end marker is not left in the middle of it.
    assert!(!page.contains("# EOF"), "{page}");
    // The app's part comes last, as in Istio.
    assert!(page.find(PROXY_SERIES).unwrap() < page.find("orders_total").unwrap());
    assert_eq!(app.paths.lock().unwrap().as_slice(), ["/app-metrics"]);

    // Each scrape of the proxy is a fresh scrape of the app.
    let (_, page) = scrape(status, "10").await;
    assert!(page.contains("istio_agent_scrapes_total 2\n"), "{page}");
    assert_eq!(app.requests.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn openmetrics_from_the_app_is_served_as_text() {
    let app = App::start(Answer::Page {
        content_type: Some("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        body: Bytes::from_static(
            b"# TYPE jobs counter\n# UNIT jobs_seconds seconds\njobs_total 3 # {trace_id=\"x\"} 1.0\n# EOF\n",
        ),
    })
    .await;
    let (_proxy, status) = status_port(&format!(r#"{{"port":"{}"}}"#, app.port)).await;
    let mut client = common::Client::connect(status, http::Version::HTTP_11).await;
    let request = Request::get("/stats/prometheus").header("host", "pod").body(Full::default()).unwrap();
    let response = client.send(request).await.unwrap();
    assert_eq!(response.headers["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    let page = response.text();
    assert!(page.contains("jobs_total 3\n"), "{page}");
    assert!(!page.contains("# EOF") && !page.contains("trace_id"), "{page}");
    assert_eq!(app.paths.lock().unwrap().as_slice(), ["/metrics"], "Istio's default path");
}

#[tokio::test]
async fn an_app_that_is_down_costs_only_its_part() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let (_proxy, status) = status_port(&format!(r#"{{"port":"{port}"}}"#)).await;
    let (code, page) = scrape(status, "10").await;
    assert_eq!(code, StatusCode::OK);
    assert_left_out(&page, "app_up", "connect");
}

#[tokio::test]
async fn a_slow_app_is_given_up_on_before_the_scraper_gives_up() {
    let app = App::start(Answer::Stall).await;
    let (_proxy, status) = status_port(&format!(r#"{{"port":"{}"}}"#, app.port)).await;
    // Prometheus waits half a second here: the proxy gives the app a little less, and answers.
    let (code, page) = scrape(status, "0.5").await;
    assert_eq!(code, StatusCode::OK);
    assert_left_out(&page, "app_up", "timeout");
    assert_eq!(app.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_oversized_page_is_left_out() {
    let huge = format!("app_up 1\n{}", "x 1\n".repeat(MAX_APP_METRICS_BYTES / 4 + 1));
    let app = App::start(Answer::Page { content_type: None, body: Bytes::from(huge) }).await;
    let (_proxy, status) = status_port(&format!(r#"{{"port":"{}"}}"#, app.port)).await;
    let (code, page) = scrape(status, "10").await;
    assert_eq!(code, StatusCode::OK);
    assert_left_out(&page, "app_up", "too_large");
}

/// Without a Content-Length: the limit is enforced while reading.
#[tokio::test]
async fn an_endless_chunked_page_is_cut_off() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = [0u8; 4096];
        let _ = stream.read(&mut head).await;
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").await;
        let chunk = format!("{:x}\r\n{}\r\n", 65536, "app_up 1\n".repeat(65536 / 9) + &" ".repeat(65536 % 9));
        // Writes until the proxy hangs up.
        while stream.write_all(chunk.as_bytes()).await.is_ok() {}
    });
    let (_proxy, status) = status_port(&format!(r#"{{"port":"{port}"}}"#)).await;
    let (code, page) = scrape(status, "10").await;
    assert_eq!(code, StatusCode::OK);
    assert_left_out(&page, "app_up", "too_large");
}

#[tokio::test]
async fn malformed_or_foreign_pages_are_left_out() {
    for (answer, reason) in [
        (App::text("app_up 1\n<html>not metrics</html>\n"), "malformed"),
        (App::text("app_up{a=\"unterminated} 1\n"), "malformed"),
        (
            Answer::Page {
                content_type: Some("text/plain"),
                body: Bytes::from_static(b"app_up 1\n\xff\xfe\n"),
            },
            "malformed",
        ),
        (
            Answer::Page {
                content_type: Some("application/json"),
                body: Bytes::from_static(b"{\"app_up\":1}"),
            },
            "format",
        ),
        (
            Answer::Page {
                content_type: Some(
                    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily",
                ),
                body: Bytes::from_static(b"\x0a\x06app_up"),
            },
            "format",
        ),
        (Answer::Status(500), "status"),
        (Answer::Status(404), "status"),
        // The proxy's own family: two TYPE lines for one name would break the page.
        (App::text("app_up 1\n# TYPE istio_requests counter\nistio_requests_total 5\n"), "conflict"),
    ] {
        let app = App::start(answer).await;
        let (_proxy, status) = status_port(&format!(r#"{{"port":"{}"}}"#, app.port)).await;
        let (code, page) = scrape(status, "10").await;
        assert_eq!(code, StatusCode::OK, "{reason}");
        assert_left_out(&page, "app_up", reason);
        assert!(!page.contains("istio_requests_total 5"), "{page}");
    }
}

#[tokio::test]
async fn without_an_app_target_the_page_is_the_proxys() {
    let proxy = TestProxy::start("").await;
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let bound = app_health::start(
        &proxy.running.proxy,
        &[local],
        AppProbers::default(),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
    )
    .unwrap();
    let (code, page) = get_text(bound[0], "/stats/prometheus").await;
    assert_eq!(code, StatusCode::OK);
    assert!(page.contains(PROXY_SERIES), "{page}");
    assert!(!page.contains("istio_agent_scrape_failures_total{"), "no failures without an app: {page}");
}

/// Istio's agent refuses to start on a scrape config that would loop or cannot be read: it is a
/// broken injection, said once at start-up instead of at every scrape.
#[test]
fn the_binary_refuses_a_bad_scrape_config() {
    for (config, expected) in [
        (r#"{"port":"15020"}"#, "ISTIO_PROMETHEUS_ANNOTATIONS: port: \"15020\": the status port itself"),
        (r#"{"port":"http"}"#, "ISTIO_PROMETHEUS_ANNOTATIONS: port: \"http\": not a port number 1-65535"),
        ("not json", "ISTIO_PROMETHEUS_ANNOTATIONS: not a JSON object"),
    ] {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_trellis-proxy"));
        for listener in
            ["--outbound-port", "--inbound-port", "--admin-port", "--readiness-port", "--stats-port"]
        {
            command.args([listener, "0"]);
        }
        command.args(["--status-port", "15020", "--listen-address", "127.0.0.1"]);
        command.env_remove("STATUS_PORT").env_remove("PROXY_CONFIG").env_remove("ISTIO_KUBE_APP_PROBERS");
        command.env("ISTIO_PROMETHEUS_ANNOTATIONS", config);
        // Refused before anything is bound: the process ends on its own.
        let output = command.output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{config}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{config}: {stderr}");
    }
}

/// The binary as injected: ISTIO_PROMETHEUS_ANNOTATIONS in its environment, the app's metrics
/// on its status port.
#[tokio::test]
async fn the_binary_merges_the_app_named_in_its_environment() {
    use std::io::BufRead;
    let app = App::start(App::text("# TYPE checkout_total counter\ncheckout_total 7\n")).await;
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_trellis-proxy"));
    for listener in [
        "--outbound-port",
        "--inbound-port",
        "--admin-port",
        "--readiness-port",
        "--stats-port",
        "--status-port",
    ] {
        command.args([listener, "0"]);
    }
    command.args(["--listen-address", "127.0.0.1", "--log-level", "warn"]);
    command.env_remove("STATUS_PORT").env_remove("PROXY_CONFIG").env_remove("ISTIO_KUBE_APP_PROBERS");
    command.env(
        "ISTIO_PROMETHEUS_ANNOTATIONS",
        format!(r#"{{"scrape":"true","path":"/stats","port":"{}"}}"#, app.port),
    );
    command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null());
    let mut child = command.spawn().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let _child = common::KillOnDrop(child);
    let words: Vec<&str> = line.split_whitespace().collect();
    let status: SocketAddr = words
        .iter()
        .position(|w| *w == "status")
        .and_then(|i| words.get(i + 1))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    let (code, page) = get_text(status, "/stats/prometheus").await;
    assert_eq!(code, StatusCode::OK);
    assert!(page.contains(PROXY_SERIES) && page.contains("checkout_total 7\n"), "{page}");
    assert_eq!(app.paths.lock().unwrap().as_slice(), ["/stats"]);
}
