//! Fault injection over real sockets: abort and delay shares within a binomial bound over
//! thousands of requests, gRPC aborts, and the response flags in the metrics.

mod common;

use std::time::{Duration, Instant};

use common::{Client, TestProxy, Upstream, api_config, get};
use http::{StatusCode, Version};

const REQUESTS: usize = 2000;

fn config(upstream: &Upstream, fault: &str) -> String {
    api_config(&[upstream.addr.port()], "HTTP", &format!("        fault: {{ {fault} }}"), "")
}

/// Requests counted in the metrics with this response flag (any status).
fn with_flag(metrics: &str, flag: &str) -> u64 {
    let label = format!("response_flags=\"{flag}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A fixed tolerance of 4.5 standard deviations of the binomial count: a correct share fails
/// it about once in 150,000 runs.
fn assert_binomial(count: usize, n: usize, percent: f64, what: &str) {
    let p = percent / 100.0;
    let expected = n as f64 * p;
    let tolerance = 4.5 * (n as f64 * p * (1.0 - p)).sqrt();
    assert!(
        (count as f64 - expected).abs() <= tolerance,
        "{what}: {count} of {n}, expected {expected} ± {tolerance:.1}"
    );
}

#[tokio::test]
async fn aborts_hit_their_share_and_never_reach_the_upstream() {
    let upstream = Upstream::start("api").await;
    let proxy = TestProxy::start(&config(&upstream, "abortHttpStatus: 503, abortPercent: 30")).await;
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    let mut aborted = 0;
    for _ in 0..REQUESTS {
        let answer = client.get("api", "/").await;
        match answer.status {
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(answer.text(), "fault filter abort");
                aborted += 1;
            }
            StatusCode::OK => assert_eq!(answer.text(), "api"),
            other => panic!("unexpected {other}"),
        }
    }
    assert_binomial(aborted, REQUESTS, 30.0, "aborted");
    assert_eq!(upstream.count(), REQUESTS - aborted, "aborted requests go nowhere");
    let metrics = proxy.metrics().await;
    assert_eq!(with_flag(&metrics, "FI"), aborted as u64, "{metrics}");
}

#[tokio::test]
async fn delays_hit_their_share_and_the_request_still_goes_through() {
    let upstream = Upstream::start("api").await;
    let proxy = TestProxy::start(&config(&upstream, "delay: 0.001s, delayPercent: 25")).await;
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    for _ in 0..REQUESTS {
        assert_eq!(client.get("api", "/").await.status, StatusCode::OK);
    }
    assert_eq!(upstream.count(), REQUESTS);
    let metrics = proxy.metrics().await;
    assert_binomial(with_flag(&metrics, "DI") as usize, REQUESTS, 25.0, "delayed");

    // Every request delayed by 200 ms: each takes at least that long.
    proxy.reload(&config(&upstream, "delay: 0.2s, delayPercent: 100")).await;
    let started = Instant::now();
    assert_eq!(client.get("api", "/").await.status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(200), "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_delayed_request_may_also_be_aborted_and_grpc_aborts_answer_as_grpc() {
    let upstream = Upstream::start("api").await;
    let both = "delay: 0.001s, delayPercent: 100, abortHttpStatus: 429, abortPercent: 100";
    let proxy = TestProxy::start(&config(&upstream, both)).await;
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    assert_eq!(client.get("api", "/").await.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(with_flag(&proxy.metrics().await, "DI,FI"), 1);

    proxy.reload(&config(&upstream, "abortGrpcStatus: 14, abortPercent: 100")).await;
    let request = get("api", "/pkg.Svc/Call", &[("content-type", "application/grpc"), ("te", "trailers")]);
    let answer = client.send(request).await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("grpc-status"), Some("14"));
    assert_eq!(answer.header("content-type"), Some("application/grpc"));
    assert_eq!(upstream.count(), 0, "no request reached the upstream");
}

#[test]
fn a_bad_fault_is_refused_with_its_field() {
    use trellis_proxy::config::{Snapshot, parse};
    let upstream_port = 9;
    for (fault, field) in [
        ("abortHttpStatus: 700, abortPercent: 10", "virtual_hosts[0].routes[0].fault.abort_http_status"),
        ("abortHttpStatus: 503, abortPercent: 100.5", "virtual_hosts[0].routes[0].fault.abort_percent"),
        ("delay: 1s, delayPercent: -3", "virtual_hosts[0].routes[0].fault.delay_percent"),
        ("delay: -1s, delayPercent: 3", "virtual_hosts[0].routes[0].fault.delay"),
    ] {
        let yaml = api_config(&[upstream_port], "HTTP", &format!("        fault: {{ {fault} }}"), "");
        let e = parse(&yaml).and_then(|c| Snapshot::compile(c, 1, None)).err().expect(fault);
        assert_eq!(e.field, field, "{fault}: {e}");
    }
}
