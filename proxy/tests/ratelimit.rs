//! Rate limits on inbound requests (an EnvoyFilter's `local_ratelimit` and `ratelimit`, as the
//! control plane resolves them): a real proxy on 127.0.0.1 in front of a real app.

mod common;

use std::time::{Duration, Instant};

use common::{Client, TestProxy, Upstream, get, wait_until};
use http::{StatusCode, Version};

fn local_limit(max: u32, per_fill: u32, interval: &str, enabled: f64, enforced: f64) -> String {
    format!(
        r#"
inboundLocalRateLimit:
  statPrefix: http_local_rate_limiter
  tokenBucket: {{ maxTokens: {max}, tokensPerFill: {per_fill}, fillInterval: {interval} }}
  enabledPercent: {enabled}
  enforcedPercent: {enforced}
  responseHeaders: {{ x-local-rate-limit: "true" }}
"#
    )
}

/// The sum of a counter's series whose labels contain all of `labels`.
fn counter(metrics: &str, name: &str, labels: &[&str]) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_limit_allows_the_bucket_rate_within_5_percent_at_a_fixed_rate() {
    let app = Upstream::start("app").await;
    // 100 requests per second (5 every 50 ms, Envoy's smallest interval), a burst of 20.
    let (max, per_fill, interval) = (20u64, 5u64, Duration::from_millis(50));
    let proxy = TestProxy::start(&local_limit(20, 5, "0.05s", 100.0, 100.0)).await;
    let authority = format!("app.local:{}", app.addr.port());
    // 4 clients at 100 requests per second each: twice the limit, 150 requests each.
    const CLIENTS: usize = 4;
    const EACH: usize = 150;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let addr = proxy.inbound();
        let authority = authority.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(addr, Version::HTTP_11).await;
            let mut ticks = tokio::time::interval(Duration::from_millis(10));
            let (mut allowed, mut refused) = (0u64, 0u64);
            for _ in 0..EACH {
                ticks.tick().await;
                let answer = client.send(get(&authority, "/", &[])).await.unwrap();
                match answer.status {
                    StatusCode::OK => allowed += 1,
                    StatusCode::TOO_MANY_REQUESTS => {
                        assert_eq!(answer.header("x-local-rate-limit"), Some("true"));
                        assert_eq!(answer.text(), "local_rate_limited");
                        refused += 1;
                    }
                    other => panic!("unexpected {other}"),
                }
            }
            (allowed, refused)
        }));
    }
    let (mut allowed, mut refused) = (0, 0);
    for t in tasks {
        let (a, r) = t.await.unwrap();
        allowed += a;
        refused += r;
    }
    let elapsed = started.elapsed();
    let sent = (CLIENTS * EACH) as u64;
    assert_eq!(allowed + refused, sent);
    // The bucket math over the measured time: the burst, then one fill per interval boundary
    // crossed (the boundaries are the proxy's, so one more may fall inside the window). A
    // machine too slow to reach the limit gets everything through, and the bound says so.
    let fills = (elapsed.as_nanos() / interval.as_nanos()) as u64;
    let low = (max + per_fill * fills).min(sent) as f64;
    let high = (max + per_fill * (fills + 1)).min(sent) as f64;
    let allowed_f = allowed as f64;
    assert!(
        allowed_f >= low * 0.95 && allowed_f <= high * 1.05,
        "allowed {allowed} of {sent} in {elapsed:?}: expected {low}..{high} within 5 %"
    );
    assert!(refused > 0, "the run was meant to exceed the limit ({elapsed:?})");
    let metrics = proxy.metrics().await;
    assert_eq!(
        counter(&metrics, "istio_requests_total", &["response_code=\"429\"", "response_flags=\"RL\""]),
        refused,
        "{metrics}"
    );
    assert_eq!(
        counter(&metrics, "trellis_rate_limited_requests_total", &["limit=\"local\"", "enforced=\"true\""]),
        refused,
        "{metrics}"
    );
}

#[tokio::test]
async fn local_limit_enabled_but_not_enforced_counts_and_lets_everything_through() {
    let app = Upstream::start("app").await;
    let proxy = TestProxy::start(&local_limit(2, 1, "3600s", 100.0, 0.0)).await;
    let authority = format!("app.local:{}", app.addr.port());
    let mut client = Client::connect(proxy.inbound(), Version::HTTP_11).await;
    for _ in 0..10 {
        let answer = client.get(&authority, "/").await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.header("x-local-rate-limit"), None);
    }
    assert_eq!(app.count(), 10);
    let metrics = proxy.metrics().await;
    assert_eq!(
        counter(&metrics, "trellis_rate_limited_requests_total", &["limit=\"local\"", "enforced=\"false\""]),
        8,
        "{metrics}"
    );
    assert_eq!(counter(&metrics, "istio_requests_total", &["response_flags=\"RL\""]), 0);
}

#[tokio::test]
async fn local_limit_not_enabled_does_nothing_and_a_reload_keeps_the_bucket() {
    let app = Upstream::start("app").await;
    let proxy = TestProxy::start(&local_limit(1, 1, "3600s", 0.0, 100.0)).await;
    let authority = format!("app.local:{}", app.addr.port());
    let mut client = Client::connect(proxy.inbound(), Version::HTTP_11).await;
    for _ in 0..5 {
        assert_eq!(client.get(&authority, "/").await.status, StatusCode::OK);
    }
    let enforced = local_limit(1, 1, "3600s", 100.0, 100.0);
    proxy.reload(&enforced).await;
    assert_eq!(client.get(&authority, "/").await.status, StatusCode::OK);
    assert_eq!(client.get(&authority, "/").await.status, StatusCode::TOO_MANY_REQUESTS);
    // The same settings again (another config version): no fresh burst.
    proxy.reload(&format!("{enforced}\nopaquePorts: [3306]\n")).await;
    assert_eq!(client.get(&authority, "/").await.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_malformed_local_limit_is_refused_naming_the_field_and_the_last_good_config_stays() {
    let app = Upstream::start("app").await;
    let proxy = TestProxy::start(&local_limit(1, 1, "3600s", 100.0, 100.0)).await;
    let authority = format!("app.local:{}", app.addr.port());
    let mut client = Client::connect(proxy.inbound(), Version::HTTP_11).await;
    let version = proxy.running.proxy.config.load().version;
    for (bad, field) in [
        (local_limit(1, 1, "0s", 100.0, 100.0), "inbound_local_rate_limit.token_bucket.fill_interval"),
        (local_limit(0, 1, "1s", 100.0, 100.0), "inbound_local_rate_limit.token_bucket.max_tokens"),
        (local_limit(1, 0, "1s", 100.0, 100.0), "inbound_local_rate_limit.token_bucket.tokens_per_fill"),
        (local_limit(1, 1, "1s", 100.0, 150.0), "inbound_local_rate_limit.enforced_percent"),
    ] {
        std::fs::write(&proxy.config_path, &bad).unwrap();
        let error = trellis_proxy::watch::load(&proxy.config_path, 99, None).err().expect("rejected");
        assert!(error.to_string().contains(field), "{error}");
    }
    // What the running proxy does with them: keeps the last good limit.
    assert_eq!(client.get(&authority, "/").await.status, StatusCode::OK);
    assert_eq!(client.get(&authority, "/").await.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(proxy.running.proxy.config.load().version, version);
}

// ---------------------------------------------------------------------------------------------
// The global rate limit against a RateLimitService written here, speaking Envoy's protocol.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use trellis_xds::envoy::config::core::v3 as core;
use trellis_xds::envoy::service::ratelimit::v3 as rls;

/// Allows `limit` requests per descriptor (its entries joined), then answers OVER_LIMIT; answers
/// only for its own domain (anything else is a test failure, seen as an error).
#[derive(Clone)]
struct CountingService {
    domain: &'static str,
    limit: u32,
    seen: Arc<Mutex<Vec<rls::RateLimitRequest>>>,
    counts: Arc<Mutex<HashMap<String, u32>>>,
}

#[tonic::async_trait]
impl rls::rate_limit_service_server::RateLimitService for CountingService {
    async fn should_rate_limit(
        &self,
        request: tonic::Request<rls::RateLimitRequest>,
    ) -> Result<tonic::Response<rls::RateLimitResponse>, tonic::Status> {
        let request = request.into_inner();
        self.seen.lock().unwrap().push(request.clone());
        if request.domain != self.domain {
            return Err(tonic::Status::invalid_argument(format!("unknown domain {}", request.domain)));
        }
        let mut over = false;
        let mut counts = self.counts.lock().unwrap();
        for d in &request.descriptors {
            let key =
                d.entries.iter().map(|e| format!("{}={}", e.key, e.value)).collect::<Vec<_>>().join(",");
            let n = counts.entry(key).or_default();
            *n += 1;
            over |= *n > self.limit;
        }
        use rls::rate_limit_response::Code;
        Ok(tonic::Response::new(rls::RateLimitResponse {
            overall_code: if over { Code::OverLimit } else { Code::Ok } as i32,
            response_headers_to_add: if over {
                vec![core::HeaderValue {
                    key: "x-ratelimit-limit".into(),
                    value: self.limit.to_string(),
                    raw_value: vec![],
                }]
            } else {
                vec![]
            },
            ..Default::default()
        }))
    }
}

async fn rate_limit_service(limit: u32) -> (std::net::SocketAddr, CountingService) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let service =
        CountingService { domain: "ratelimit", limit, seen: Default::default(), counts: Default::default() };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(rls::rate_limit_service_server::RateLimitServiceServer::new(service.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (address, service)
}

/// Istio's documented global limit: descriptors by `:path`, and a generic key with the client's
/// address.
fn global_limit(service: std::net::SocketAddr, deny: bool) -> String {
    format!(
        r#"
inboundGlobalRateLimit:
  domain: ratelimit
  service: "{service}"
  timeout: 2s
  failureModeDeny: {deny}
  rules:
    - actions: [{{ requestHeaders: {{ headerName: ":path", descriptorKey: PATH }} }}]
    - actions: [{{ genericKey: {{ descriptorValue: shop }} }}, {{ remoteAddress: true }}]
    - actions: [{{ requestHeaders: {{ headerName: x-user, descriptorKey: USER }} }}]
"#
    )
}

/// A port nothing listens on.
async fn closed_port() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test]
async fn global_limit_asks_the_service_with_envoys_descriptors_and_refuses_over_limit() {
    let app = Upstream::start("app").await;
    let (address, service) = rate_limit_service(2).await;
    let proxy = TestProxy::start(&global_limit(address, false)).await;
    let authority = format!("app.local:{}", app.addr.port());
    let mut client = Client::connect(proxy.inbound(), Version::HTTP_11).await;
    for _ in 0..2 {
        let answer = client.get(&authority, "/productpage").await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.header("x-envoy-ratelimited"), None);
    }
    let answer = client.get(&authority, "/productpage").await;
    assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(answer.header("x-envoy-ratelimited"), Some("true"));
    assert_eq!(answer.header("x-ratelimit-limit"), Some("2"));
    assert_eq!(app.count(), 2);
    // Another path is a descriptor of its own, but the client's generic key is over too.
    assert_eq!(client.get(&authority, "/reviews").await.status, StatusCode::TOO_MANY_REQUESTS);
    let seen = service.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4);
    let first = &seen[0];
    assert_eq!(first.domain, "ratelimit");
    let entries: Vec<Vec<(String, String)>> = first
        .descriptors
        .iter()
        .map(|d| d.entries.iter().map(|e| (e.key.clone(), e.value.clone())).collect())
        .collect();
    // No x-user header: the third rule gives no descriptor.
    assert_eq!(
        entries,
        vec![
            vec![("PATH".to_owned(), "/productpage".to_owned())],
            vec![
                ("generic_key".to_owned(), "shop".to_owned()),
                ("remote_address".to_owned(), "127.0.0.1".to_owned())
            ],
        ]
    );
    let metrics = proxy.metrics().await;
    assert_eq!(
        counter(&metrics, "istio_requests_total", &["response_code=\"429\"", "response_flags=\"RL\""]),
        2
    );
    assert_eq!(
        counter(&metrics, "trellis_rate_limited_requests_total", &["limit=\"global\"", "enforced=\"true\""]),
        2
    );
}

#[tokio::test]
async fn global_limit_fails_open_when_the_service_is_down() {
    let app = Upstream::start("app").await;
    let proxy = TestProxy::start(&global_limit(closed_port().await, false)).await;
    let authority = format!("app.local:{}", app.addr.port());
    let mut client = Client::connect(proxy.inbound(), Version::HTTP_11).await;
    for _ in 0..3 {
        assert_eq!(client.get(&authority, "/productpage").await.status, StatusCode::OK);
    }
    assert_eq!(app.count(), 3);
}

#[tokio::test]
async fn global_limit_with_failure_mode_deny_answers_500_when_the_service_is_down() {
    let app = Upstream::start("app").await;
    let proxy = TestProxy::start(&global_limit(closed_port().await, true)).await;
    let authority = format!("app.local:{}", app.addr.port());
    let mut client = Client::connect(proxy.inbound(), Version::HTTP_11).await;
    let answer = client.get(&authority, "/productpage").await;
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(answer.header("x-envoy-ratelimited"), None);
    assert_eq!(app.count(), 0);
    let metrics = proxy.metrics().await;
    assert_eq!(
        counter(&metrics, "istio_requests_total", &["response_code=\"500\"", "response_flags=\"RLSE\""]),
        1
    );
}

#[tokio::test]
async fn global_limit_fails_open_when_the_service_answers_an_error() {
    let app = Upstream::start("app").await;
    let (address, service) = rate_limit_service(100).await;
    // The service knows only the domain "ratelimit": another one is an error it answers.
    let config = global_limit(address, false).replace("domain: ratelimit", "domain: other");
    let proxy = TestProxy::start(&config).await;
    let authority = format!("app.local:{}", app.addr.port());
    let mut client = Client::connect(proxy.inbound(), Version::HTTP_11).await;
    assert_eq!(client.get(&authority, "/productpage").await.status, StatusCode::OK);
    assert_eq!(service.seen.lock().unwrap()[0].domain, "other");
}

#[tokio::test]
async fn global_limit_fails_open_when_the_service_never_answers_within_its_timeout() {
    let app = Upstream::start("app").await;
    // Accepts connections and never says a word.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            connections.push(stream);
        }
    });
    let config = global_limit(address, false).replace("timeout: 2s", "timeout: 0.2s");
    let proxy = TestProxy::start(&config).await;
    let authority = format!("app.local:{}", app.addr.port());
    let mut client = Client::connect(proxy.inbound(), Version::HTTP_11).await;
    let started = Instant::now();
    assert_eq!(client.get(&authority, "/productpage").await.status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(200), "{:?}", started.elapsed());
    held.abort();
}

#[tokio::test]
async fn a_local_limit_for_one_port_leaves_the_others_alone() {
    let (limited_app, free_app) = (Upstream::start("limited").await, Upstream::start("free").await);
    let config =
        format!("{}  ports: [{}]\n", local_limit(1, 1, "3600s", 100.0, 100.0), limited_app.addr.port());
    let proxy = TestProxy::start(&config).await;
    let mut client = Client::connect(proxy.inbound(), Version::HTTP_11).await;
    let limited = format!("app.local:{}", limited_app.addr.port());
    let free = format!("app.local:{}", free_app.addr.port());
    assert_eq!(client.get(&limited, "/").await.status, StatusCode::OK);
    assert_eq!(client.get(&limited, "/").await.status, StatusCode::TOO_MANY_REQUESTS);
    for _ in 0..5 {
        assert_eq!(client.get(&free, "/").await.status, StatusCode::OK);
    }
}

// ---------------------------------------------------------------------------------------------
// Local rate-limit descriptors: the route's actions make a request's descriptors, and a
// descriptor the limit lists has a bucket of its own.

/// A local limit whose descriptor `path=/limited` allows 2 requests an hour; `default` is the
/// default bucket's size (none: requests matching no descriptor pass), `extra` more settings.
fn descriptor_limit(default: Option<u32>, extra: &str) -> String {
    let default = default
        .map(|max| format!("  tokenBucket: {{ maxTokens: {max}, tokensPerFill: 1, fillInterval: 3600s }}\n"))
        .unwrap_or_default();
    format!(
        r#"
inboundLocalRateLimit:
  statPrefix: http_local_rate_limiter
  enabledPercent: 100
  enforcedPercent: 100
  responseHeaders: {{ x-local-rate-limit: "true" }}
{default}  descriptors:
    - entries: [{{ key: path, value: /limited }}]
      tokenBucket: {{ maxTokens: 2, tokensPerFill: 2, fillInterval: 3600s }}
  rules:
    - actions: [{{ requestHeaders: {{ headerName: ":path", descriptorKey: path }} }}]
{extra}"#
    )
}

#[tokio::test]
async fn a_descriptors_bucket_limits_only_the_requests_that_match_it() {
    let app = Upstream::start("app").await;
    let proxy = TestProxy::start(&descriptor_limit(None, "")).await;
    let authority = format!("app.local:{}", app.addr.port());
    let mut client = Client::connect(proxy.inbound(), Version::HTTP_11).await;
    for _ in 0..2 {
        assert_eq!(client.get(&authority, "/limited").await.status, StatusCode::OK);
    }
    let refused = client.get(&authority, "/limited").await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.header("x-local-rate-limit"), Some("true"));
    assert_eq!(refused.text(), "local_rate_limited");
    // Other paths match no descriptor, and there is no default bucket: all pass.
    for _ in 0..20 {
        assert_eq!(client.get(&authority, "/other").await.status, StatusCode::OK);
    }
    // The descriptor is the whole `:path`: a query makes another one.
    assert_eq!(client.get(&authority, "/limited?page=2").await.status, StatusCode::OK);
    assert_eq!(app.count(), 23);
    let metrics = proxy.metrics().await;
    assert_eq!(
        counter(&metrics, "istio_requests_total", &["response_code=\"429\"", "response_flags=\"RL\""]),
        1,
        "{metrics}"
    );
}

#[tokio::test]
async fn matching_requests_also_spend_the_default_bucket_unless_told_not_to() {
    let app = Upstream::start("app").await;
    let authority = format!("app.local:{}", app.addr.port());
    // Envoy's default: a matching request takes from its descriptor's bucket and the default.
    let proxy = TestProxy::start(&descriptor_limit(Some(3), "")).await;
    let mut client = Client::connect(proxy.inbound(), Version::HTTP_11).await;
    assert_eq!(client.get(&authority, "/limited").await.status, StatusCode::OK);
    assert_eq!(client.get(&authority, "/limited").await.status, StatusCode::OK);
    assert_eq!(client.get(&authority, "/other").await.status, StatusCode::OK);
    assert_eq!(client.get(&authority, "/other").await.status, StatusCode::TOO_MANY_REQUESTS);
    // always_consume_default_token_bucket: false — the default bucket is the others' alone.
    let proxy = TestProxy::start(&descriptor_limit(Some(3), "  defaultBucketUnmatchedOnly: true\n")).await;
    let mut client = Client::connect(proxy.inbound(), Version::HTTP_11).await;
    assert_eq!(client.get(&authority, "/limited").await.status, StatusCode::OK);
    assert_eq!(client.get(&authority, "/limited").await.status, StatusCode::OK);
    assert_eq!(client.get(&authority, "/limited").await.status, StatusCode::TOO_MANY_REQUESTS);
    for _ in 0..3 {
        assert_eq!(client.get(&authority, "/other").await.status, StatusCode::OK);
    }
    assert_eq!(client.get(&authority, "/other").await.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_wildcard_descriptor_limits_each_client_on_its_own_and_rules_keep_to_their_port() {
    let (limited_app, free_app) = (Upstream::start("limited").await, Upstream::start("free").await);
    // One request an hour per `x-user`; the rule is the route's of the limited app's port only.
    let config = format!(
        r#"
inboundLocalRateLimit:
  statPrefix: per_user
  enabledPercent: 100
  enforcedPercent: 100
  descriptors:
    - entries: [{{ key: user }}]
      tokenBucket: {{ maxTokens: 1, tokensPerFill: 1, fillInterval: 3600s }}
  rules:
    - actions: [{{ requestHeaders: {{ headerName: x-user, descriptorKey: user }} }}]
      ports: [{}]
"#,
        limited_app.addr.port()
    );
    let proxy = TestProxy::start(&config).await;
    let mut client = Client::connect(proxy.inbound(), Version::HTTP_11).await;
    let limited = format!("app.local:{}", limited_app.addr.port());
    let free = format!("app.local:{}", free_app.addr.port());
    let as_user = |user: &'static str| [("x-user", user)];
    for (user, expected) in [
        ("alice", StatusCode::OK),
        ("alice", StatusCode::TOO_MANY_REQUESTS),
        ("bob", StatusCode::OK),
        ("bob", StatusCode::TOO_MANY_REQUESTS),
        ("carol", StatusCode::OK),
    ] {
        let answer = client.send(get(&limited, "/", &as_user(user))).await.unwrap();
        assert_eq!(answer.status, expected, "{user}");
    }
    // No x-user: no descriptor; another port: no rule, so no descriptor either.
    assert_eq!(client.get(&limited, "/").await.status, StatusCode::OK);
    for _ in 0..3 {
        let answer = client.send(get(&free, "/", &as_user("alice"))).await.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
    }
    assert_eq!(limited_app.count(), 4);
    assert_eq!(free_app.count(), 3);
}

#[tokio::test]
async fn a_malformed_descriptor_is_refused_naming_the_field() {
    let app = Upstream::start("app").await;
    let proxy = TestProxy::start(&descriptor_limit(None, "")).await;
    for (bad, field) in [
        (
            descriptor_limit(None, "").replace("maxTokens: 2", "maxTokens: 0"),
            "inbound_local_rate_limit.descriptors[0].token_bucket.max_tokens",
        ),
        (
            descriptor_limit(None, "").replace("{ key: path, value: /limited }", ""),
            "inbound_local_rate_limit.descriptors[0].entries",
        ),
        (
            descriptor_limit(
                None,
                "    - actions: [{ requestHeaders: { headerName: \"bad header\", descriptorKey: k } }]\n",
            ),
            "inbound_local_rate_limit.rules[1].actions[0].request_headers.header_name",
        ),
    ] {
        std::fs::write(&proxy.config_path, &bad).unwrap();
        let error = trellis_proxy::watch::load(&proxy.config_path, 99, None).err().expect("rejected");
        assert!(error.to_string().contains(field), "{error}");
    }
    // The running proxy keeps its limit.
    let authority = format!("app.local:{}", app.addr.port());
    let mut client = Client::connect(proxy.inbound(), Version::HTTP_11).await;
    assert_eq!(client.get(&authority, "/limited").await.status, StatusCode::OK);
}

// ---------------------------------------------------------------------------------------------
// Outbound (SIDECAR_OUTBOUND) and gateway (GATEWAY) rate limits: the same limits, checked once a
// route is chosen, with ports of their own (the service's, the gateway listener's).

#[tokio::test]
async fn outbound_limits_apply_to_the_services_port_and_descriptors_work_there_too() {
    let upstream = Upstream::start("api").await;
    // One request an hour to /expensive (a descriptor); 4 in all (the default bucket).
    let limit = r#"
outboundLocalRateLimit:
  statPrefix: outbound
  tokenBucket: { maxTokens: 4, tokensPerFill: 1, fillInterval: 3600s }
  enabledPercent: 100
  enforcedPercent: 100
  responseHeaders: { x-local-rate-limit: "true" }
  ports: [PORT]
  descriptors:
    - entries: [{ key: path, value: /expensive }]
      tokenBucket: { maxTokens: 1, tokensPerFill: 1, fillInterval: 3600s }
  rules:
    - actions: [{ requestHeaders: { headerName: ":path", descriptorKey: path } }]
"#;
    let config = |port: u16| {
        format!(
            "{}{}",
            common::api_config(&[upstream.addr.port()], "HTTP", "", ""),
            limit.replace("PORT", &port.to_string())
        )
    };
    let proxy = TestProxy::start(&config(80)).await;
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    assert_eq!(client.get("api", "/expensive").await.status, StatusCode::OK);
    let refused = client.get("api", "/expensive").await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.header("x-local-rate-limit"), Some("true"));
    // The default bucket had 4; /expensive took one.
    for _ in 0..3 {
        assert_eq!(client.get("api", "/cheap").await.status, StatusCode::OK);
    }
    assert_eq!(client.get("api", "/cheap").await.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(upstream.count(), 4);
    let metrics = proxy.metrics().await;
    assert_eq!(
        counter(
            &metrics,
            "istio_requests_total",
            &["reporter=\"source\"", "response_code=\"429\"", "response_flags=\"RL\""]
        ),
        2,
        "{metrics}"
    );
    // The inbound side is not limited by the outbound limit.
    let app = Upstream::start("app").await;
    let mut inbound = Client::connect(proxy.inbound(), Version::HTTP_11).await;
    for _ in 0..6 {
        let answer = inbound.get(&format!("app.local:{}", app.addr.port()), "/cheap").await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    // A limit for another service port leaves port 80 alone.
    proxy.reload(&config(81)).await;
    for _ in 0..6 {
        assert_eq!(client.get("api", "/expensive").await.status, StatusCode::OK);
    }
}

#[tokio::test]
async fn outbound_limits_apply_to_requests_passed_through_to_unknown_destinations() {
    let outside = Upstream::start("outside").await;
    // No services: the request is passed through to its address, past the outbound limit.
    let proxy = TestProxy::start(
        r#"
outboundLocalRateLimit:
  statPrefix: outbound
  tokenBucket: { maxTokens: 2, tokensPerFill: 1, fillInterval: 3600s }
  enabledPercent: 100
  enforcedPercent: 100
"#,
    )
    .await;
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    let authority = outside.addr.to_string();
    assert_eq!(client.get(&authority, "/").await.status, StatusCode::OK);
    assert_eq!(client.get(&authority, "/").await.status, StatusCode::OK);
    assert_eq!(client.get(&authority, "/").await.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(outside.count(), 2);
    let metrics = proxy.metrics().await;
    assert_eq!(
        counter(
            &metrics,
            "istio_requests_total",
            &["destination_service=\"PassthroughCluster\"", "response_code=\"429\"", "response_flags=\"RL\""]
        ),
        1,
        "{metrics}"
    );
}

#[tokio::test]
async fn a_gateways_limits_apply_to_its_listeners_requests() {
    let upstream = Upstream::start("api").await;
    let (address, service) = rate_limit_service(2).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // Istio's documented gateway limit: the `*:PORT` virtual host's actions count by :path at
    // the RateLimitService; and a local limit of 3 requests per x-user.
    let config = format!(
        r#"
gatewayListeners:
  - port: {port}
    protocol: GATEWAY_HTTP
    servers:
      - name: edge/ingress/http
        hosts: ["*"]
        routes: [{{ host: "*", virtualHost: "gateway~{port}~*" }}]
virtualHosts:
  - name: "gateway~{port}~*"
    routes: [{{ name: all, forward: {{ clusters: [{{ cluster: api }}] }} }}]
clusters:
  - {{ name: api, service: api }}
endpoints:
  - {{ service: api, endpoints: [{{ address: 127.0.0.1, port: {app} }}] }}
gatewayLocalRateLimit:
  statPrefix: gateway
  enabledPercent: 100
  enforcedPercent: 100
  descriptors:
    - entries: [{{ key: user }}]
      tokenBucket: {{ maxTokens: 3, tokensPerFill: 1, fillInterval: 3600s }}
  rules:
    - actions: [{{ requestHeaders: {{ headerName: x-user, descriptorKey: user }} }}]
gatewayGlobalRateLimit:
  domain: ratelimit
  service: "{address}"
  timeout: 2s
  rules:
    - actions: [{{ requestHeaders: {{ headerName: ":path", descriptorKey: PATH }} }}]
      ports: [{port}]
      virtualHost: true
"#,
        app = upstream.addr.port()
    );
    let proxy = TestProxy::start(&config).await;
    trellis_proxy::gateway::listener::start(&proxy.running.proxy, &["127.0.0.1".parse().unwrap()]);
    let gateway: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    wait_until("the gateway listens", || std::net::TcpStream::connect(gateway).is_ok()).await;
    let mut client = Client::connect(gateway, Version::HTTP_11).await;
    // The global limit: 2 per path.
    for expected in [StatusCode::OK, StatusCode::OK, StatusCode::TOO_MANY_REQUESTS] {
        let answer = client.get("shop.example.com", "/productpage").await;
        assert_eq!(answer.status, expected);
    }
    let refused = client.get("shop.example.com", "/productpage").await;
    assert_eq!(refused.header("x-envoy-ratelimited"), Some("true"));
    assert_eq!(service.seen.lock().unwrap()[0].descriptors[0].entries[0].value, "/productpage");
    // The local limit: 3 per user, each path new to the service.
    for (i, expected) in [StatusCode::OK, StatusCode::OK, StatusCode::OK, StatusCode::TOO_MANY_REQUESTS]
        .into_iter()
        .enumerate()
    {
        let answer = client
            .send(get("shop.example.com", &format!("/item/{i}"), &[("x-user", "alice")]))
            .await
            .unwrap();
        assert_eq!(answer.status, expected, "request {i}");
    }
    let answer = client.send(get("shop.example.com", "/item/9", &[("x-user", "bob")])).await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(upstream.count(), 6);
}
