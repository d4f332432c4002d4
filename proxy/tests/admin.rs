//! The admin, readiness and Prometheus endpoints.

mod common;

use common::{Client, TestProxy, Upstream, api_config, get_text};
use http::{StatusCode, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(upstream: &Upstream) -> String {
    api_config(&[upstream.addr.port()], "HTTP", "", "")
}

#[tokio::test]
async fn admin_pages_show_config_clusters_and_metrics() {
    let upstream = Upstream::start("api").await;
    let proxy = TestProxy::start(&config(&upstream)).await;
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    let mut answered = 0;
    for _ in 0..3 {
        let answer = client.get("api", "/").await;
        assert_eq!(answer.status, StatusCode::OK);
        answered += answer.body.len();
    }
    assert!(answered > 0);
    upstream.fail_next(1);
    assert_eq!(client.get("api", "/").await.status, StatusCode::SERVICE_UNAVAILABLE);

    let (status, ready) = get_text(proxy.running.readiness[0], "/healthz/ready").await;
    assert_eq!((status, ready.as_str()), (StatusCode::OK, "ready\n"));

    let (status, dump) = proxy.admin_get("/config_dump").await;
    assert_eq!(status, StatusCode::OK);
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(dump["version"], 1);
    assert_eq!(dump["config"]["services"][0]["name"], "api.test.svc.cluster.local");

    let (_, clusters) = proxy.admin_get("/clusters").await;
    assert!(clusters.contains("api::rq_total::4"), "{clusters}");
    assert!(clusters.contains("api::rq_error::1"), "{clusters}");
    assert!(clusters.contains(&format!("api::{}::health_flags::healthy", upstream.addr)), "{clusters}");

    let metrics = proxy.metrics().await;
    for expected in [
        "istio_requests_total{reporter=\"source\",source_workload=\"test-client\"",
        // Istio's order; no workload table here: the endpoint's workload is unknown.
        "destination_service=\"api.test.svc.cluster.local\",destination_canonical_service=\"unknown\",\
         destination_canonical_revision=\"latest\",destination_service_name=\"api\",\
         destination_service_namespace=\"unknown\",destination_cluster=\"unknown\",request_protocol=\"http\",\
         response_code=\"200\"",
        "response_code=\"503\"",
        "istio_request_duration_milliseconds_bucket",
        "istio_request_bytes_count",
        "istio_response_bytes_sum",
    ] {
        assert!(metrics.contains(expected), "{expected} missing from\n{metrics}");
    }
    let two_hundreds = metrics
        .lines()
        .find(|l| l.starts_with("istio_requests_total") && l.contains("response_code=\"200\""))
        .unwrap();
    assert!(two_hundreds.ends_with(" 3"), "{two_hundreds}");
    // The bytes of the bodies the client received.
    let response_bytes = metrics
        .lines()
        .find(|l| l.starts_with("istio_response_bytes_sum") && l.contains("response_code=\"200\""))
        .unwrap();
    assert!(
        response_bytes.ends_with(&format!(" {answered}.0")),
        "{answered} bytes answered: {response_bytes}"
    );

    assert_eq!(proxy.admin_get("/nothing").await.0, StatusCode::NOT_FOUND);
}

/// The value of the first sample line that starts with `prefix` and has every label in `labels`.
fn sample(metrics: &str, prefix: &str, labels: &[&str]) -> Option<f64> {
    let line =
        metrics.lines().find(|l| l.starts_with(prefix) && labels.iter().all(|label| l.contains(label)))?;
    line.rsplit(' ').next()?.parse().ok()
}

/// Waits (bounded) until the proxy's metrics have a sample matching `prefix` and `labels` whose
/// value is `expected`; then returns them (the caller's assertion shows a timeout's last state).
async fn wait_for_sample(
    proxy: &TestProxy,
    prefix: &str,
    labels: &[&str],
    expected: f64,
) -> (Option<f64>, String) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let metrics = proxy.metrics().await;
        let value = sample(&metrics, prefix, labels);
        if value == Some(expected) || std::time::Instant::now() >= deadline {
            return (value, metrics);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A request is recorded when its response is done, as Istio's are: a body that comes later
/// (chunked, no Content-Length) counts in the duration and the response bytes; a response the
/// client walks away from is flagged DC.
#[tokio::test]
async fn request_metrics_cover_the_whole_response() {
    let upstream = Upstream::start("api").await;
    let proxy = TestProxy::start(&config(&upstream)).await;
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    let answer = client.send(common::get("api", "/", &[("x-body-delay-ms", "300")])).await.unwrap();
    assert_eq!((answer.status, answer.text().as_str()), (StatusCode::OK, "api"));
    assert!(answer.header("content-length").is_none(), "the body is chunked: {:?}", answer.headers);

    let ok = ["response_code=\"200\"", "response_flags=\"-\""];
    let (bytes, metrics) = wait_for_sample(&proxy, "istio_response_bytes_sum", &ok, 3.0).await;
    assert_eq!(bytes, Some(3.0), "the 3 bytes of the chunked body: {metrics}");
    let under_250 = sample(&metrics, "istio_request_duration_milliseconds_bucket", &[ok[0], "le=\"250.0\""]);
    let under_500 = sample(&metrics, "istio_request_duration_milliseconds_bucket", &[ok[0], "le=\"500.0\""]);
    assert_eq!(
        (under_250, under_500),
        (Some(0.0), Some(1.0)),
        "the body came 300 ms after the head: {metrics}"
    );

    // A chunked upload (no Content-Length) counts the bytes that went upstream.
    let mut stream = tokio::net::TcpStream::connect(proxy.outbound()).await.unwrap();
    stream
        .write_all(
            b"POST / HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
    let mut echoed = Vec::new();
    while !echoed.ends_with(b"hello") {
        let mut chunk = [0u8; 512];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before the echo: {}", String::from_utf8_lossy(&echoed));
        echoed.extend_from_slice(&chunk[..n]);
    }
    drop(stream);
    let (uploaded, metrics) = wait_for_sample(&proxy, "istio_request_bytes_sum", &ok, 5.0).await;
    assert_eq!(uploaded, Some(5.0), "the 5 bytes of the chunked upload: {metrics}");
    assert_eq!(sample(&metrics, "istio_requests_total", &ok), Some(2.0), "{metrics}");

    // The head, then the client leaves while the body is still on its way.
    let mut stream = tokio::net::TcpStream::connect(proxy.outbound()).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: api\r\nx-body-delay-ms: 5000\r\n\r\n").await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(stream.read(&mut byte).await.unwrap(), 1, "closed before the response head");
        head.push(byte[0]);
    }
    drop(stream);
    let dc = ["response_code=\"200\"", "response_flags=\"DC\""];
    let (abandoned, metrics) = wait_for_sample(&proxy, "istio_requests_total", &dc, 1.0).await;
    assert_eq!(abandoned, Some(1.0), "{metrics}");
    assert_eq!(sample(&metrics, "istio_requests_total", &ok), Some(2.0), "{metrics}");
}

#[tokio::test]
async fn quitquitquit_drains_and_readiness_follows() {
    let upstream = Upstream::start("api").await;
    let proxy = TestProxy::start(&config(&upstream)).await;
    let mut client = Client::connect(proxy.running.admin[0], Version::HTTP_11).await;
    let quit = http::Request::post("/quitquitquit").header("host", "admin").body(Default::default()).unwrap();
    assert_eq!(client.send(quit).await.unwrap().status, StatusCode::OK);
    assert!(proxy.running.proxy.is_draining());
    let (status, _) = get_text(proxy.running.readiness[0], "/healthz/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // The listeners stop: new connections are refused once the accept loops end.
    common::wait_until("the outbound listener is closed", || {
        std::net::TcpStream::connect(proxy.outbound()).is_err()
    })
    .await;
}

/// The readiness and Prometheus ports face the network: a client that connects and never sends
/// a byte is closed at the header timeout, as on the proxy's own ports.
#[tokio::test]
async fn silent_clients_of_the_network_facing_ports_are_closed() {
    let upstream = Upstream::start("api").await;
    let limits = "limits: { requestHeadersTimeout: 0.3s }";
    let proxy = TestProxy::start(&format!("{limits}\n{}", config(&upstream))).await;
    for addr in [proxy.running.readiness[0], proxy.running.stats[0]] {
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 256];
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), silent.read(&mut buf)).await;
        let n = read.unwrap_or_else(|_| panic!("{addr}: a silent client was held past 5 s"));
        let closed = match n {
            Ok(0) | Err(_) => true,
            Ok(n) => buf[..n].starts_with(b"HTTP/1.1 408"),
        };
        assert!(
            closed,
            "{addr}: neither closed nor timed out: {:?}",
            n.map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
        );
    }
    let (status, _) = get_text(proxy.running.readiness[0], "/healthz/ready").await;
    assert_eq!(status, StatusCode::OK, "others are still served");
}

/// `/clusters?format=json` (what `trellis proxy-config endpoints` reads): every endpoint with
/// its weight and outlier state; an endpoint that failed is shown ejected, the other healthy.
#[tokio::test]
async fn clusters_as_json_show_each_endpoint_and_its_ejection() {
    use common::{Behaviour, Scripted};
    let bad = Scripted::start("bad", Behaviour::Status(500)).await;
    let good = Scripted::start("good", Behaviour::Status(200)).await;
    let outlier = "    loadBalancer: { policy: ROUND_ROBIN }\n    outlierDetection: { consecutive5xxErrors: 1, \
                   interval: 60s, baseEjectionTime: 600s, maxEjectionPercent: 50 }";
    let proxy =
        TestProxy::start(&api_config(&[bad.addr.port(), good.addr.port()], "HTTP", "", outlier)).await;
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    // Round robin: two requests reach both; the 500 ejects `bad` at once (consecutive errors
    // do not wait for the interval).
    for _ in 0..2 {
        client.get("api", "/").await;
    }

    let (status, page) = proxy.admin_get("/clusters?format=json").await;
    assert_eq!(status, StatusCode::OK);
    let page: serde_json::Value = serde_json::from_str(&page).unwrap();
    let api = &page["cluster_statuses"][0];
    assert_eq!(api["name"], "api", "{page}");
    assert_eq!(api["rq_total"], 2, "{page}");
    assert_eq!(api["outlier_detection"]["ejections_active"], 1, "{page}");
    assert_eq!(api["outlier_detection"]["ejections_enforced_total"], 1, "{page}");
    let hosts = api["host_statuses"].as_array().unwrap();
    let host = |addr: std::net::SocketAddr| {
        hosts.iter().find(|h| h["address"] == addr.to_string()).unwrap_or_else(|| panic!("{addr}: {page}"))
    };
    assert_eq!(host(bad.addr)["health_status"]["failed_outlier_check"], true, "{page}");
    assert_eq!(host(bad.addr)["outlier_ejections"], 1, "{page}");
    assert_eq!(host(good.addr)["health_status"]["failed_outlier_check"], false, "{page}");
    assert_eq!(host(good.addr)["weight"], 1, "{page}");
    assert_eq!(host(good.addr)["mesh_tls"], false, "{page}");

    // The text page is still the default, and other query parameters do not switch it.
    let (_, text) = proxy.admin_get("/clusters?format=text").await;
    assert!(text.contains(&format!("api::{}::health_flags::/failed_outlier_check", bad.addr)), "{text}");
    // Without a mesh identity, /certs says so instead of failing.
    let (status, certs) = proxy.admin_get("/certs").await;
    assert_eq!(status, StatusCode::OK);
    assert!(certs.contains("\"certificates\":[]"), "{certs}");
}
