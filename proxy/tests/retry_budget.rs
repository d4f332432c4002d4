//! Retry budgets and `maxRetries` over real sockets: a retry storm through a chain of five
//! proxies, each retrying a failing leaf, with the budget and without it, counting what reaches
//! the leaf; and `maxRetries` capping the retries in flight to a cluster.

mod common;

use std::sync::Arc;

use common::{Behaviour, Client, Scripted, TestProxy, Upstream, api_config};
use http::{StatusCode, Version};

const HOPS: usize = 5;
const REQUESTS: usize = 30;
/// Each hop retries twice: three tries per request it forwards.
const RETRIES: &str = "        retries: { attempts: 2, retryOn: [5xx], baseInterval: 0.001s }";

/// A chain of `HOPS` proxies, each routing `api` to the next one's outbound port (explicit
/// mode: the next proxy routes by the same authority), the last to `leaf`; each cluster with
/// `budget` (a YAML line, or nothing). The first proxy is first.
async fn chain(leaf: &Scripted, budget: &str) -> Vec<TestProxy> {
    let mut proxies: Vec<TestProxy> = Vec::new();
    let mut next = leaf.addr.port();
    for _ in 0..HOPS {
        let proxy = TestProxy::start(&api_config(&[next], "HTTP", RETRIES, budget)).await;
        next = proxy.outbound().port();
        proxies.push(proxy);
    }
    proxies.reverse();
    proxies
}

/// `REQUESTS` requests at once into the first proxy, each on a connection of its own; every
/// answer must be the leaf's 503.
async fn storm(first: &TestProxy) {
    let addr = first.outbound();
    let requests: Vec<_> = (0..REQUESTS)
        .map(|_| {
            tokio::spawn(async move {
                let mut client = Client::connect(addr, Version::HTTP_11).await;
                client.get("api", "/").await.status
            })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap(), StatusCode::SERVICE_UNAVAILABLE);
    }
}

/// Retries the budget refused, in all the proxies' metrics.
async fn refused(proxies: &[TestProxy], reason: &str) -> u64 {
    let label = format!("reason=\"{reason}\"");
    let mut total = 0;
    for proxy in proxies {
        total += proxy
            .metrics()
            .await
            .lines()
            .filter(|l| l.starts_with("trellis_retries_refused_total{") && l.contains(&label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>();
    }
    total
}

/// Without a budget every hop's three tries multiply: the leaf sees 3^5 requests per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_budget_a_retry_storm_multiplies_the_leafs_load_by_three_per_hop() {
    let leaf = Scripted::start("leaf", Behaviour::Status(503)).await;
    let proxies = chain(&leaf, "").await;
    storm(&proxies[0]).await;
    assert_eq!(leaf.count(), REQUESTS * 3usize.pow(HOPS as u32), "30 × 3^5");
    assert_eq!(refused(&proxies, "retry_budget").await, 0);
}

/// With Linkerd's default budget (20 % of requests, plus 10 per second over 10 s) each hop adds
/// at most a fifth of its requests plus its reserve of 100: the leaf's count stays under
/// N·1.2^5 + 100·(1 + 1.2 + … + 1.2^4) ≈ 819, where without it the leaf saw 7,290.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linkerds_default_budget_bounds_a_retry_storm() {
    let leaf = Scripted::start("leaf", Behaviour::Status(503)).await;
    let budget = "    retryBudget: { retryRatio: 0.2, minRetriesPerSecond: 10, ttl: 10s }";
    let proxies = chain(&leaf, budget).await;
    storm(&proxies[0]).await;
    let growth = 1.2f64;
    let reserve = 100.0;
    let bound = REQUESTS as f64 * growth.powi(HOPS as i32)
        + reserve * (0..HOPS as i32).map(|k| growth.powi(k)).sum::<f64>();
    let unbudgeted = REQUESTS * 3usize.pow(HOPS as u32);
    let count = leaf.count();
    assert!(count as f64 <= bound, "{count} requests reached the leaf; the budget allows {bound:.0}");
    assert!(count * 8 < unbudgeted, "{count} is not far below {unbudgeted}");
    assert!(refused(&proxies, "retry_budget").await > 0, "the budget refused retries, and counted them");
}

/// Without the reserve the ratio alone rules: each hop forwards at most 1.2 times what it got,
/// so the leaf sees at most ⌊…⌊⌊30·1.2⌋·1.2⌋…⌋ = 73 requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ratio_alone_grows_the_load_by_a_fifth_per_hop() {
    let leaf = Scripted::start("leaf", Behaviour::Status(503)).await;
    let budget = "    retryBudget: { retryRatio: 0.2, minRetriesPerSecond: 0, ttl: 10s }";
    let proxies = chain(&leaf, budget).await;
    storm(&proxies[0]).await;
    let bound = (0..HOPS).fold(REQUESTS, |n, _| n + n / 5);
    assert_eq!(bound, 73);
    let count = leaf.count();
    assert!(count > REQUESTS && count <= bound, "{count} requests reached the leaf, expected 31 to {bound}");
    assert!(refused(&proxies, "retry_budget").await > 0);
}

/// `maxRetries: 1`: of five requests failing at once (slowly), one is retried and the other
/// four answers stand.
#[tokio::test]
async fn max_retries_caps_the_retries_in_flight() {
    let upstream = Upstream::start("api").await;
    let config = api_config(
        &[upstream.addr.port()],
        "HTTP",
        "        retries: { attempts: 1, retryOn: [5xx], baseInterval: 0.001s }",
        "    connectionPool: { maxRetries: 1 }",
    );
    let proxy = Arc::new(TestProxy::start(&config).await);
    let requests: Vec<_> = (0..5)
        .map(|_| {
            let addr = proxy.outbound();
            tokio::spawn(async move {
                let mut client = Client::connect(addr, Version::HTTP_11).await;
                let request = common::get("api", "/", &[("x-status", "503"), ("x-delay-ms", "1000")]);
                client.send(request).await.unwrap().status
            })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap(), StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(upstream.count(), 6, "five tries and one retry");
    assert_eq!(refused(std::slice::from_ref(&*proxy), "max_retries").await, 4);
    let (_, clusters) = proxy.admin_get("/clusters").await;
    assert!(clusters.contains("api::rq_retry_active::0"), "{clusters}");
}
