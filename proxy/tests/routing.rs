//! Routing as Istio's VirtualService describes it, over real sockets: virtual hosts by
//! authority, route matches, weighted splits, redirects, direct responses, rewrites, header
//! edits, unknown destinations; HTTP/1.1 and HTTP/2.

mod common;

use common::{Client, TestProxy, Upstream, get};
use http::{StatusCode, Version};

/// Two subsets of `reviews` (v1 and v2, one endpoint each) and a catch-all `ratings`.
fn config(v1: &Upstream, v2: &Upstream, extra_routes: &str) -> String {
    format!(
        r#"
services:
  - name: reviews.shop.svc.cluster.local
    aliases: [reviews, reviews.shop]
    addresses: [10.96.0.20]
    ports: [{{ port: 9080, protocol: HTTP }}]
virtualHosts:
  - name: reviews.shop.svc.cluster.local:9080
    routes:
{extra_routes}
      - name: default
        forward: {{ clusters: [{{ cluster: v1 }}] }}
clusters:
  - {{ name: v1, service: reviews.shop.svc.cluster.local, subset: {{ version: v1 }} }}
  - {{ name: v2, service: reviews.shop.svc.cluster.local, subset: {{ version: v2 }} }}
endpoints:
  - service: reviews.shop.svc.cluster.local
    endpoints:
      - {{ address: 127.0.0.1, port: {}, labels: {{ version: v1 }} }}
      - {{ address: 127.0.0.1, port: {}, labels: {{ version: v2 }} }}
"#,
        v1.addr.port(),
        v2.addr.port()
    )
}

#[tokio::test]
async fn virtual_hosts_answer_to_every_name_of_the_service() {
    let (v1, v2) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let proxy = TestProxy::start(&config(&v1, &v2, "")).await;
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let mut client = Client::connect(proxy.outbound(), version).await;
        for authority in [
            "reviews:9080",
            "reviews.shop:9080",
            "reviews.shop.svc.cluster.local:9080",
            "REVIEWS:9080",
            "10.96.0.20:9080",
        ] {
            let answer = client.get(authority, "/").await;
            assert_eq!(
                (answer.status, answer.text().as_str()),
                (StatusCode::OK, "v1"),
                "{version:?} {authority}"
            );
        }
        assert_eq!(v1.last().version, version, "the upstream is spoken to as the client spoke");
    }
    // The request keeps its Host, and gets a request id.
    let seen = v1.last();
    assert_eq!(seen.headers.get("x-request-id").map(String::len), Some(32));
}

#[tokio::test]
async fn route_matches_pick_the_first_matching_route() {
    let (v1, v2) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let routes = r#"
      - name: jason
        matches: [{ headers: [{ name: end-user, value: { exact: jason } }] }]
        forward: { clusters: [{ cluster: v2 }] }
      - name: beta-prefix
        matches: [{ path: { prefix: /beta/ }, method: { exact: POST } }]
        forward: { clusters: [{ cluster: v2 }] }
      - name: regex-and-query
        matches: [{ path: { regex: "/items/[0-9]+" }, queryParams: [{ name: tier, value: { exact: gold } }] }]
        forward: { clusters: [{ cluster: v2 }] }
      - name: present-header-without-another
        matches: [{ headers: [{ name: x-canary }], withoutHeaders: [{ name: x-stable }] }]
        forward: { clusters: [{ cluster: v2 }] }
"#;
    let proxy = TestProxy::start(&config(&v1, &v2, routes)).await;
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    let cases: Vec<(http::Request<_>, &str)> = vec![
        (get("reviews:9080", "/", &[("end-user", "jason")]), "v2"),
        (get("reviews:9080", "/", &[("end-user", "Jason")]), "v1"),
        (
            http::Request::post("http://reviews:9080/beta/x")
                .header("host", "reviews:9080")
                .body(Default::default())
                .unwrap(),
            "v2",
        ),
        (get("reviews:9080", "/beta/x", &[]), "v1"),
        (get("reviews:9080", "/items/42?tier=gold", &[]), "v2"),
        (get("reviews:9080", "/items/42?tier=silver", &[]), "v1"),
        (get("reviews:9080", "/items/42x?tier=gold", &[]), "v1"),
        (get("reviews:9080", "/", &[("x-canary", "1")]), "v2"),
        (get("reviews:9080", "/", &[("x-canary", "1"), ("x-stable", "1")]), "v1"),
    ];
    for (request, expected) in cases {
        let what = format!("{} {} {:?}", request.method(), request.uri(), request.headers());
        let answer = client.send(request).await.unwrap();
        assert_eq!(answer.text(), expected, "{what}");
    }
}

#[tokio::test]
async fn redirects_direct_responses_rewrites_and_header_edits() {
    let (v1, v2) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let routes = r#"
      - name: moved
        matches: [{ path: { exact: /old } }]
        redirect: { uri: /new, authority: reviews.example.com, responseCode: 308 }
      - name: teapot
        matches: [{ path: { exact: /tea } }]
        directResponse: { status: 418, body: "short and stout" }
        responseHeaders: { set: { x-kettle: "on" } }
      - name: rewritten
        matches: [{ path: { prefix: /api/v1/ } }]
        rewrite: { uri: /v1/, authority: reviews-internal }
        requestHeaders: { set: { x-route: rewritten }, add: { x-trace: two }, remove: [x-drop-me] }
        responseHeaders: { set: { x-served-by: trellis }, remove: [x-upstream] }
        forward: { clusters: [{ cluster: v2 }] }
"#;
    let proxy = TestProxy::start(&config(&v1, &v2, routes)).await;
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;

    let answer = client.get("reviews:9080", "/old").await;
    assert_eq!(answer.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(answer.header("location"), Some("http://reviews.example.com/new"));

    let answer = client.get("reviews:9080", "/tea").await;
    assert_eq!((answer.status.as_u16(), answer.text().as_str()), (418, "short and stout"));
    assert_eq!(answer.header("x-kettle"), Some("on"));
    assert_eq!(v1.count() + v2.count(), 0, "direct responses and redirects never reach an upstream");

    let request = get("reviews:9080", "/api/v1/items?id=3", &[("x-drop-me", "1"), ("x-trace", "one")]);
    let answer = client.send(request).await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("x-served-by"), Some("trellis"));
    assert_eq!(answer.header("x-upstream"), None);
    let seen = v2.last();
    assert_eq!(seen.path, "/v1/items?id=3");
    assert_eq!(seen.headers.get("host").map(String::as_str), Some("reviews-internal"));
    assert_eq!(seen.headers.get("x-route").map(String::as_str), Some("rewritten"));
    assert!(!seen.headers.contains_key("x-drop-me"));
}

#[tokio::test]
async fn weighted_splits_converge_to_their_ratio() {
    let (v1, v2) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let routes = r#"
      - name: split
        forward: { clusters: [{ cluster: v1, weight: 90 }, { cluster: v2, weight: 10 }] }
"#;
    let proxy = TestProxy::start(&config(&v1, &v2, routes)).await;
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    let total = 2_000;
    for _ in 0..total {
        assert_eq!(client.get("reviews:9080", "/").await.status, StatusCode::OK);
    }
    // Chi-square with one degree of freedom; 10.83 is the 0.1% critical value.
    let (o1, o2) = (v1.count() as f64, v2.count() as f64);
    let (e1, e2) = (0.9 * total as f64, 0.1 * total as f64);
    let chi2 = (o1 - e1).powi(2) / e1 + (o2 - e2).powi(2) / e2;
    assert!(chi2 < 10.83, "v1 {o1}, v2 {o2}: chi-square {chi2:.2}");
    assert_eq!(o1 + o2, total as f64);
}

#[tokio::test]
async fn unknown_destinations_pass_through_or_are_refused() {
    let (v1, v2) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let other = Upstream::start("elsewhere").await;
    let proxy = TestProxy::start(&config(&v1, &v2, "")).await;
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    // ALLOW_ANY (the default): an address we know nothing of is reached directly.
    let answer = client.get(&other.addr.to_string(), "/").await;
    assert_eq!((answer.status, answer.text().as_str()), (StatusCode::OK, "elsewhere"));
    // Never back to the proxy itself.
    let answer = client.get(&proxy.outbound().to_string(), "/").await;
    assert_eq!(answer.status, StatusCode::LOOP_DETECTED);
    // No route for the path on a known host: 404.
    let only_api = config(&v1, &v2, "").replace(
        "      - name: default\n",
        "      - name: default\n        matches: [{ path: { prefix: /api } }]\n",
    );
    proxy.reload(&only_api).await;
    assert_eq!(client.get("reviews:9080", "/other").await.status, StatusCode::NOT_FOUND);

    let registry_only = format!("outboundPolicy: REGISTRY_ONLY\n{}", config(&v1, &v2, ""));
    proxy.reload(&registry_only).await;
    let answer = client.get(&other.addr.to_string(), "/").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(other.count(), 1);
}

#[tokio::test]
async fn dot_segments_cannot_slip_past_a_route() {
    let (v1, v2) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let routes = r#"
      - name: no-admin
        matches: [{ path: { prefix: /admin } }]
        directResponse: { status: 403, body: "denied" }
"#;
    let proxy = TestProxy::start(&config(&v1, &v2, routes)).await;
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    for path in ["/admin", "/public/../admin", "/./admin/x", "/a/b/../../admin", "/public/%2e%2E/admin"] {
        let answer = client.get("reviews:9080", path).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{path}");
    }
    let answer = client.get("reviews:9080", "/public/./page").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(v1.last().path, "/public/page", "the normalized path is what goes upstream");
}
