//! Outlier detection over real sockets: upstreams that answer 5xx, hang or reset on command,
//! ejections of each kind, ejection times that grow, `maxEjectionPercent` with every endpoint
//! failing, panic mode, return after the ejection time, and state kept across configuration
//! pushes.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Behaviour, Client, Scripted, TestProxy, api_config};
use http::{StatusCode, Version};

/// The `api` service over these upstreams, round robin, with this outlier detection.
fn config(upstreams: &[&Scripted], route_extra: &str, outlier: &str) -> String {
    let ports: Vec<u16> = upstreams.iter().map(|u| u.addr.port()).collect();
    let cluster =
        format!("    loadBalancer: {{ policy: ROUND_ROBIN }}\n    outlierDetection: {{ {outlier} }}");
    api_config(&ports, "HTTP", route_extra, &cluster)
}

/// Whether outlier detection has `addr` ejected now.
fn is_ejected(proxy: &TestProxy, addr: SocketAddr) -> bool {
    let snapshot = proxy.running.proxy.config.load();
    let cluster = &snapshot.clusters["api"];
    let detector = cluster.outlier.as_ref().expect("outlier detection is configured");
    detector.refresh();
    let index = cluster.balancer.targets().iter().position(|t| t.addr == addr).expect("an endpoint");
    detector.health()[index].ejected
}

fn ejected_count(proxy: &TestProxy) -> usize {
    let snapshot = proxy.running.proxy.config.load();
    let detector = snapshot.clusters["api"].outlier.as_ref().expect("outlier detection is configured");
    detector.refresh();
    detector.ejected_now()
}

/// Sends requests until `addr` is ejected (at most `limit`); returns the time just before the
/// request that ejected it.
async fn fail_until_ejected(
    proxy: &TestProxy,
    client: &mut Client,
    addr: SocketAddr,
    limit: usize,
) -> Instant {
    for _ in 0..limit {
        let before = Instant::now();
        client.get("api", "/").await;
        if is_ejected(proxy, addr) {
            return before;
        }
    }
    panic!("{addr} was not ejected after {limit} requests");
}

/// Keeps sending requests (as traffic would) until `addr` is back; returns when it came back.
async fn serve_until_back(proxy: &TestProxy, client: &mut Client, addr: SocketAddr) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        client.get("api", "/").await;
        if !is_ejected(proxy, addr) {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "{addr} never came back");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn consecutive_5xx_eject_and_the_endpoint_returns_after_its_time() {
    let bad = Scripted::start("bad", Behaviour::Status(500)).await;
    let good = Scripted::start("good", Behaviour::Status(200)).await;
    let od = "consecutive5xxErrors: 3, interval: 0.05s, baseEjectionTime: 0.5s, maxEjectionPercent: 50";
    let proxy = TestProxy::start(&config(&[&bad, &good], "", od)).await;
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;

    // Two failures, then a success, then two more: never three in a row.
    for status in [500, 500, 200, 500, 500, 200] {
        bad.set(Behaviour::Status(status));
        let before = bad.count();
        while bad.count() == before {
            client.get("api", "/").await;
        }
    }
    assert!(!is_ejected(&proxy, bad.addr), "a success starts the count again");
    bad.set(Behaviour::Status(500));
    let ejected_at = fail_until_ejected(&proxy, &mut client, bad.addr, 20).await;
    let (_, clusters) = proxy.admin_get("/clusters").await;
    assert!(
        clusters.contains(&format!("api::{}::health_flags::/failed_outlier_check", bad.addr)),
        "{clusters}"
    );
    assert!(clusters.contains(&format!("api::{}::health_flags::healthy", good.addr)), "{clusters}");
    assert!(clusters.contains("api::outlier_detection.ejections_active::1"), "{clusters}");
    assert!(clusters.contains(&format!("api::{}::outlier_ejections::1", bad.addr)), "{clusters}");

    // Ejected: every request goes to the other endpoint.
    bad.set(Behaviour::Status(200));
    let before = bad.count();
    for _ in 0..10 {
        let answer = client.get("api", "/").await;
        assert_eq!((answer.status, answer.text().as_str()), (StatusCode::OK, "good"));
    }
    assert_eq!(bad.count(), before, "an ejected endpoint gets no requests");

    // Back after the base ejection time (at the next interval tick), and used again.
    let back_at = serve_until_back(&proxy, &mut client, bad.addr).await;
    let ejected_for = back_at - ejected_at;
    assert!(ejected_for >= Duration::from_millis(500), "back after {ejected_for:?}");
    assert!(ejected_for < Duration::from_secs(5), "back after {ejected_for:?}");
    let before = bad.count();
    for _ in 0..4 {
        client.get("api", "/").await;
    }
    assert!(bad.count() > before, "the returned endpoint gets requests again");

    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains(r#"trellis_outlier_ejections_total{cluster_name="api",reason="consecutive_5xx"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn each_ejection_in_a_row_lasts_longer() {
    let bad = Scripted::start("bad", Behaviour::Status(503)).await;
    let good = Scripted::start("good", Behaviour::Status(200)).await;
    // An interval long enough that the endpoint fails again before it counts as healthy.
    let od = "consecutive5xxErrors: 2, interval: 0.25s, baseEjectionTime: 0.3s, maxEjectionPercent: 50";
    let proxy = TestProxy::start(&config(&[&bad, &good], "", od)).await;
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;

    let first_at = fail_until_ejected(&proxy, &mut client, bad.addr, 20).await;
    let first = serve_until_back(&proxy, &mut client, bad.addr).await - first_at;
    // Still failing: ejected again at once, for twice as long.
    let second_at = fail_until_ejected(&proxy, &mut client, bad.addr, 20).await;
    let second = serve_until_back(&proxy, &mut client, bad.addr).await - second_at;
    assert!(first >= Duration::from_millis(300), "first ejection {first:?}");
    assert!(second >= Duration::from_millis(600), "second ejection {second:?} (first {first:?})");
    assert!(second < Duration::from_secs(5), "second ejection {second:?}");
    let (_, clusters) = proxy.admin_get("/clusters").await;
    assert!(clusters.contains(&format!("api::{}::outlier_ejections::2", bad.addr)), "{clusters}");
}

#[tokio::test]
async fn gateway_errors_count_only_502_503_504() {
    let bad = Scripted::start("bad", Behaviour::Status(500)).await;
    let good = Scripted::start("good", Behaviour::Status(200)).await;
    let od = "consecutive5xxErrors: 0, consecutiveGatewayErrors: 2, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 50";
    let proxy = TestProxy::start(&config(&[&bad, &good], "", od)).await;
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    while bad.count() < 6 {
        client.get("api", "/").await;
    }
    assert!(!is_ejected(&proxy, bad.addr), "500 is not a gateway error, and 5xx ejection is off");
    bad.set(Behaviour::Status(502));
    fail_until_ejected(&proxy, &mut client, bad.addr, 10).await;
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains(
            r#"trellis_outlier_ejections_total{cluster_name="api",reason="consecutive_gateway_failure"} 1"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn resets_and_hangs_are_local_origin_failures_when_split() {
    let resets = Scripted::start("resets", Behaviour::Reset).await;
    let hangs = Scripted::start("hangs", Behaviour::Hang).await;
    let errors = Scripted::start("errors", Behaviour::Status(500)).await;
    let good = Scripted::start("good", Behaviour::Status(200)).await;
    let od = "splitExternalLocalOriginErrors: true, consecutiveLocalOriginFailures: 2, consecutive5xxErrors: 0, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 75";
    let proxy =
        TestProxy::start(&config(&[&resets, &hangs, &errors, &good], "        timeout: 0.2s", od)).await;
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(is_ejected(&proxy, resets.addr) && is_ejected(&proxy, hangs.addr)) {
        assert!(Instant::now() < deadline, "the resetting and hanging endpoints were not ejected");
        let answer = client.get("api", "/").await;
        assert!(
            [
                StatusCode::OK,
                StatusCode::SERVICE_UNAVAILABLE,
                StatusCode::GATEWAY_TIMEOUT,
                StatusCode::INTERNAL_SERVER_ERROR
            ]
            .contains(&answer.status),
            "{answer:?}"
        );
    }
    let before = errors.count();
    for _ in 0..20 {
        client.get("api", "/").await;
    }
    assert!(errors.count() >= before + 5, "5xx answers are not local-origin failures");
    assert!(!is_ejected(&proxy, errors.addr));
    assert_eq!(ejected_count(&proxy), 2);
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains(r#"trellis_outlier_ejections_total{cluster_name="api",reason="consecutive_local_origin_failure"} 2"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn without_split_resets_count_as_5xx() {
    let resets = Scripted::start("resets", Behaviour::Reset).await;
    let good = Scripted::start("good", Behaviour::Status(200)).await;
    // A port nothing listens on: connect failures.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let od = "consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 70";
    let yaml = config(&[&resets, &good], "", od).replace(
        "    endpoints:\n",
        &format!("    endpoints:\n      - {{ address: 127.0.0.1, port: {} }}\n", closed.port()),
    );
    let proxy = TestProxy::start(&yaml).await;
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(is_ejected(&proxy, resets.addr) && is_ejected(&proxy, closed)) {
        assert!(Instant::now() < deadline, "resets and refused connections were not counted");
        client.get("api", "/").await;
    }
    for _ in 0..10 {
        assert_eq!(client.get("api", "/").await.text(), "good");
    }
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains(r#"trellis_outlier_ejections_total{cluster_name="api",reason="consecutive_5xx"} 2"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn with_every_endpoint_failing_at_most_max_ejection_percent_are_ejected() {
    let mut upstreams = Vec::new();
    for i in 0..4 {
        upstreams.push(Scripted::start(&format!("u{i}"), Behaviour::Status(503)).await);
    }
    let all: Vec<&Scripted> = upstreams.iter().collect();
    let od = "consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 50";
    let proxy = TestProxy::start(&config(&all, "", od)).await;
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    for _ in 0..40 {
        assert_eq!(client.get("api", "/").await.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(ejected_count(&proxy), 2, "half of four");
    // The other two keep serving.
    let serving: Vec<&Scripted> = upstreams.iter().filter(|u| !is_ejected(&proxy, u.addr)).collect();
    assert_eq!(serving.len(), 2);
    let before: Vec<usize> = serving.iter().map(|u| u.count()).collect();
    for _ in 0..20 {
        client.get("api", "/").await;
    }
    for (u, before) in serving.iter().zip(before) {
        assert!(u.count() >= before + 5, "{} stopped getting requests", u.name);
    }
    let (_, clusters) = proxy.admin_get("/clusters").await;
    assert!(clusters.contains("api::outlier_detection.ejections_active::2"), "{clusters}");
    let metrics = proxy.metrics().await;
    assert!(metrics.contains("trellis_outlier_ejections_overflow_total{"), "{metrics}");

    // Envoy's rule, not a rounding: with the default 10%, four endpoints eject none.
    proxy.reload(&config(&all, "", "consecutive5xxErrors: 2, interval: 1s")).await;
    for _ in 0..20 {
        client.get("api", "/").await;
    }
    let snapshot = proxy.running.proxy.config.load();
    let detector = snapshot.clusters["api"].outlier.as_ref().unwrap();
    assert_eq!(detector.policy().max_ejection_percent, 10);
}

#[tokio::test]
async fn below_min_health_percent_every_endpoint_is_used() {
    let bad = Scripted::start("bad", Behaviour::Status(500)).await;
    let good = Scripted::start("good", Behaviour::Status(200)).await;
    let od = "consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 100, minHealthPercent: 60";
    let proxy = TestProxy::start(&config(&[&bad, &good], "", od)).await;
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    fail_until_ejected(&proxy, &mut client, bad.addr, 20).await;
    // One of two healthy is 50%, under 60%: panic, the ejected endpoint is used too.
    let before = bad.count();
    for _ in 0..10 {
        client.get("api", "/").await;
    }
    assert!(bad.count() >= before + 3, "in panic mode the ejected endpoint still gets requests");

    // Without panic mode, a lone endpoint ejected leaves nothing to send to.
    let alone = Scripted::start("alone", Behaviour::Status(500)).await;
    let od = "consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 100";
    proxy.reload(&config(&[&alone], "", od)).await;
    fail_until_ejected(&proxy, &mut client, alone.addr, 10).await;
    let answer = client.get("api", "/").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(answer.text().contains("no healthy upstream"), "{}", answer.text());
}

#[tokio::test]
async fn ejections_survive_configuration_pushes() {
    let bad = Scripted::start("bad", Behaviour::Status(500)).await;
    let good = Scripted::start("good", Behaviour::Status(200)).await;
    let od = "consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 50";
    let yaml = config(&[&bad, &good], "", od);
    let proxy = TestProxy::start(&yaml).await;
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    fail_until_ejected(&proxy, &mut client, bad.addr, 20).await;

    // A push that leaves the cluster alone (a route timeout changes).
    proxy.reload(&config(&[&bad, &good], "        timeout: 5s", od)).await;
    assert!(is_ejected(&proxy, bad.addr), "an unchanged cluster keeps its detector");
    // A push that changes the cluster (one more endpoint, another pool setting): the state of
    // the endpoints it still has is kept by address.
    let third = Scripted::start("third", Behaviour::Status(200)).await;
    let changed = config(&[&bad, &good, &third], "        timeout: 5s", od).replace(
        "    loadBalancer:",
        "    connectionPool: { maxRequestsPerConnection: 100 }\n    loadBalancer:",
    );
    proxy.reload(&changed).await;
    assert!(is_ejected(&proxy, bad.addr), "a changed cluster keeps what it knew of the same address");
    let before = bad.count();
    for _ in 0..12 {
        assert_eq!(client.get("api", "/").await.status, StatusCode::OK);
    }
    assert_eq!(bad.count(), before);
    let (_, clusters) = proxy.admin_get("/clusters").await;
    assert!(clusters.contains(&format!("api::{}::outlier_ejections::1", bad.addr)), "{clusters}");
}
