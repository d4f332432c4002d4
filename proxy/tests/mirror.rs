//! Mirroring over real sockets: a mirror that hangs, resets or is not there never changes the
//! primary's answers nor holds them up; the mirrored share stays within a binomial bound over
//! thousands of requests; the mirror sees the `-shadow` authority and the body; bodies beyond
//! the bound are not mirrored, and each copy is counted.

mod common;

use std::sync::Arc;

use common::{Behaviour, Client, Scripted, TestProxy, Upstream, get, wait_until};
use http::{StatusCode, Version};

const REQUESTS: usize = 2000;

/// `api` routed to `primary`; the route's `mirrors` (a YAML list) name clusters `m0`, `m1`, ...
/// over these ports. Upstreams get HTTP/1.1, so that they see the authority as Host whatever
/// the client spoke.
fn config(primary: u16, mirror_ports: &[u16], mirrors: &str) -> String {
    let clusters: String = (0..mirror_ports.len())
        .map(|i| {
            format!("  - {{ name: m{i}, service: m{i}.test.svc.cluster.local, upstreamProtocol: HTTP1 }}\n")
        })
        .collect();
    let endpoints: String = mirror_ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            format!(
                "  - service: m{i}.test.svc.cluster.local\n    endpoints: [{{ address: 127.0.0.1, port: {port} }}]\n"
            )
        })
        .collect();
    format!(
        r#"
services:
  - name: api.test.svc.cluster.local
    aliases: [api]
    ports: [{{ port: 80, protocol: HTTP }}]
virtualHosts:
  - name: api.test.svc.cluster.local:80
    routes:
      - name: all
        forward: {{ clusters: [{{ cluster: api }}] }}
        mirrors: {mirrors}
clusters:
  - {{ name: api, service: api.test.svc.cluster.local, upstreamProtocol: HTTP1 }}
{clusters}endpoints:
  - service: api.test.svc.cluster.local
    endpoints: [{{ address: 127.0.0.1, port: {primary} }}]
{endpoints}"#
    )
}

/// Copies counted in the metrics for `cluster` with `result`.
async fn mirrored(proxy: &TestProxy, cluster: &str, result: &str) -> u64 {
    let (c, r) = (format!("cluster_name=\"{cluster}\""), format!("result=\"{result}\""));
    proxy
        .metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("trellis_mirrored_requests_total{") && l.contains(&c) && l.contains(&r))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn copies_done(proxy: &TestProxy) {
    wait_until("every copy has ended", || proxy.running.proxy.mirrors.now() == 0).await;
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

#[tokio::test]
async fn a_hanging_mirror_neither_changes_nor_holds_up_the_primarys_answers() {
    let primary = Upstream::start("api").await;
    let hanging = Scripted::start("hanging", Behaviour::Hang).await;
    let proxy = TestProxy::start(&config(
        primary.addr.port(),
        &[hanging.addr.port()],
        "[{ cluster: m0, percent: 100 }]",
    ))
    .await;
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    for _ in 0..20 {
        let answer = client.get("api", "/").await;
        assert_eq!((answer.status, answer.text().as_str()), (StatusCode::OK, "api"));
    }
    // Every copy reached the mirror, and none has been answered: the primary's twenty answers
    // came while the mirror still held all twenty copies.
    wait_until("the mirror holds all twenty copies", || hanging.count() == 20).await;
    assert_eq!(proxy.running.proxy.mirrors.now(), 20, "all twenty copies still in flight");
    assert_eq!(mirrored(&proxy, "m0", "answered").await, 0);
    assert_eq!(primary.count(), 20);
}

#[tokio::test]
async fn a_failing_or_missing_mirror_does_not_change_the_primarys_answers() {
    let primary = Upstream::start("api").await;
    let resetting = Scripted::start("resetting", Behaviour::Reset).await;
    let failing = Scripted::start("failing", Behaviour::Status(500)).await;
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mirrors =
        "[{ cluster: m0, percent: 100 }, { cluster: m1, percent: 100 }, { cluster: m2, percent: 100 }]";
    let proxy = TestProxy::start(&config(
        primary.addr.port(),
        &[resetting.addr.port(), failing.addr.port(), closed],
        mirrors,
    ))
    .await;
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    for i in 0..20 {
        let status = if i % 2 == 0 { "200" } else { "404" };
        let answer = client.send(get("api", "/", &[("x-status", status)])).await.unwrap();
        assert_eq!(answer.status.as_str(), status, "the primary's own answer");
        assert_eq!(answer.text(), "api");
    }
    copies_done(&proxy).await;
    assert_eq!(mirrored(&proxy, "m0", "failed").await, 20, "reset: no answer");
    assert_eq!(mirrored(&proxy, "m1", "answered").await, 20, "500 is an answer, thrown away");
    assert_eq!(mirrored(&proxy, "m2", "failed").await, 20, "refused connections");
    assert_eq!((resetting.count(), failing.count(), primary.count()), (20, 20, 20));
}

#[tokio::test]
async fn mirror_shares_stay_within_a_binomial_bound() {
    let primary = Upstream::start("api").await;
    let all = Upstream::start("all").await;
    let quarter = Upstream::start("quarter").await;
    let proxy = TestProxy::start(&config(
        primary.addr.port(),
        &[all.addr.port(), quarter.addr.port()],
        "[{ cluster: m0, percent: 100 }, { cluster: m1, percent: 25 }]",
    ))
    .await;
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    for _ in 0..REQUESTS {
        assert_eq!(client.get("api", "/").await.status, StatusCode::OK);
    }
    copies_done(&proxy).await;
    assert_eq!(all.count(), REQUESTS, "a 100% mirror gets every request");
    assert_binomial(quarter.count(), REQUESTS, 25.0, "mirrored to the 25% mirror");
    assert_eq!(mirrored(&proxy, "m1", "answered").await, quarter.count() as u64);
    assert_eq!(primary.count(), REQUESTS);
}

#[tokio::test]
async fn the_mirror_sees_the_shadow_authority_and_the_body() {
    let primary = Upstream::start("api").await;
    let mirror = Upstream::start("mirror").await;
    let proxy = Arc::new(
        TestProxy::start(&config(
            primary.addr.port(),
            &[mirror.addr.port()],
            "[{ cluster: m0, percent: 100 }]",
        ))
        .await,
    );
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let mut client = Client::connect(proxy.outbound(), version).await;
        let before = mirror.count();
        let answer = client.get("api:80", "/path?q=1").await;
        assert_eq!(answer.status, StatusCode::OK);
        wait_until("the copy arrives", || mirror.count() == before + 1).await;
        let seen = mirror.last();
        assert_eq!(seen.headers.get("host").map(String::as_str), Some("api-shadow:80"), "{version:?}");
        assert_eq!(seen.path, "/path?q=1");
        assert_eq!(
            primary.last().headers.get("host").map(String::as_str),
            Some("api:80"),
            "the primary's is kept"
        );
    }
    // A small body is copied; one beyond 64 KiB is not (counted), and the primary still gets it.
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    let post = |body: Vec<u8>| http::Request::post("/echo").header("host", "api").body(body.into()).unwrap();
    let answer = client.send(post(b"payload".to_vec())).await.unwrap();
    assert_eq!(answer.text(), "payload");
    wait_until("the copy with its body arrives", || mirror.count() == 3).await;
    assert_eq!(mirror.last().method, "POST");
    let large = vec![b'x'; 100 << 10];
    let answer = client.send(post(large.clone())).await.unwrap();
    assert_eq!((answer.status, answer.body.len()), (StatusCode::OK, large.len()));
    copies_done(&proxy).await;
    assert_eq!(mirrored(&proxy, "m0", "dropped_body").await, 1);
    assert_eq!(mirror.count(), 3, "the large body was not mirrored");
}
