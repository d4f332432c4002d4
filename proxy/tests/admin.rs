//! The admin, readiness and Prometheus endpoints.

mod common;

use common::{Client, TestProxy, Upstream, api_config, get_text};
use http::{StatusCode, Version};

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
        "destination_service=\"api.test.svc.cluster.local\",destination_service_name=\"api\",request_protocol=\"http\",response_code=\"200\"",
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
