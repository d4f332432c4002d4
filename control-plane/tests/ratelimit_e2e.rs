//! Rate limits end to end, on loopback in explicit mode (no root): `trellisd` reads Istio's
//! local rate limit EnvoyFilter (and a Lua one it ignores; and, in other tests, one with Envoy's
//! descriptors, and a GATEWAY-context one) from a config directory, the selected proxy (a
//! sidecar, or an ingress gateway) takes it over delta xDS, and its requests are limited.

mod ca_support;

use std::net::SocketAddr;

use axum::Router;
use ca_support::{Trellisd, eventually_sync, xds_proxy};
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use trellis_proxy::metrics::{Metrics, Workload};
use trellis_xds::types::ProxyNode;

const FILTERS: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata:
  name: filter-local-ratelimit-svc
  namespace: shop
spec:
  workloadSelector:
    labels:
      app: web
  configPatches:
    - applyTo: HTTP_FILTER
      match:
        context: SIDECAR_INBOUND
        listener:
          filterChain:
            filter:
              name: "envoy.filters.network.http_connection_manager"
      patch:
        operation: INSERT_BEFORE
        value:
          name: envoy.filters.http.local_ratelimit
          typed_config:
            "@type": type.googleapis.com/udpa.type.v1.TypedStruct
            type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
            value:
              stat_prefix: http_local_rate_limiter
              token_bucket:
                max_tokens: 3
                tokens_per_fill: 3
                fill_interval: 3600s
              filter_enabled:
                runtime_key: local_rate_limit_enabled
                default_value:
                  numerator: 100
                  denominator: HUNDRED
              filter_enforced:
                runtime_key: local_rate_limit_enforced
                default_value:
                  numerator: 100
                  denominator: HUNDRED
              response_headers_to_add:
                - append: false
                  header:
                    key: x-local-rate-limit
                    value: 'true'
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata:
  name: lua
  namespace: shop
spec:
  configPatches:
    - applyTo: HTTP_FILTER
      match: { context: SIDECAR_INBOUND }
      patch:
        operation: INSERT_BEFORE
        value:
          name: envoy.filters.http.lua
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
            inlineCode: "function envoy_on_request(h) end"
"#;

fn start_proxy(xds: SocketAddr, name: &str) -> trellis_proxy::Running {
    let node = ProxyNode {
        id: format!("sidecar~127.0.0.1~{name}.shop~shop.svc.cluster.local"),
        namespace: "shop".into(),
        workload: name.into(),
        labels: [("app".to_owned(), name.to_owned())].into(),
        ..Default::default()
    };
    // Inbound without a redirect: the authority's port names the app.
    let metrics = Metrics::new(Workload { name: name.into(), namespace: "shop".into() });
    xds_proxy(xds, "127.0.0.1", node, true, metrics)
}

/// The statuses (and the x-local-rate-limit header) of `n` GETs of `path` to the proxy's inbound
/// port.
async fn statuses(proxy: SocketAddr, app: SocketAddr, path: &str, n: usize) -> Vec<(u16, Option<String>)> {
    let stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut out = Vec::new();
    for _ in 0..n {
        let request = http::Request::get(path)
            .header("host", format!("web.shop:{}", app.port()))
            .body(Empty::<Bytes>::new())
            .unwrap();
        sender.ready().await.unwrap();
        let response = sender.send_request(request).await.unwrap();
        let header =
            response.headers().get("x-local-rate-limit").and_then(|v| v.to_str().ok()).map(str::to_owned);
        out.push((response.status().as_u16(), header));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istios_local_rate_limit_envoy_filter_limits_the_selected_workloads_inbound_requests() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, Router::new().fallback(|| async { "web" })).await });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ratelimit.yaml"), FILTERS).unwrap();
    let trellisd = Trellisd::start_with(&["--config-dir".into(), dir.path().into()], &[]);
    let web = start_proxy(trellisd.xds, "web");
    let other = start_proxy(trellisd.xds, "reviews");
    eventually_sync("web has its rate limit", || web.proxy.config.load().inbound_rate_limit.is_some()).await;
    eventually_sync("reviews has its config", || {
        web.proxy.config.load().version > 0 && other.proxy.config.load().version > 0
    })
    .await;

    let limited = statuses(web.inbound[0], app, "/", 5).await;
    let refused = (429, Some("true".to_owned()));
    assert_eq!(limited, vec![(200, None), (200, None), (200, None), refused.clone(), refused]);
    // Not selected: no limit (and the Lua filter, ignored, adds nothing).
    assert!(other.proxy.config.load().inbound_rate_limit.is_none());
    assert!(statuses(other.inbound[0], app, "/", 5).await.iter().all(|(status, _)| *status == 200));
}

/// Istio's per-route local limit with Envoy's descriptors: the route's `:path` action, a bucket
/// of 2 for `/limited`, and no default bucket.
const DESCRIPTORS: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata:
  name: filter-local-ratelimit-svc
  namespace: shop
spec:
  workloadSelector:
    labels:
      app: web
  configPatches:
    - applyTo: HTTP_FILTER
      match:
        context: SIDECAR_INBOUND
        listener:
          filterChain:
            filter:
              name: "envoy.filters.network.http_connection_manager"
      patch:
        operation: INSERT_BEFORE
        value:
          name: envoy.filters.http.local_ratelimit
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
            stat_prefix: http_local_rate_limiter
            filter_enabled:
              default_value: { numerator: 100, denominator: HUNDRED }
            filter_enforced:
              default_value: { numerator: 100, denominator: HUNDRED }
            response_headers_to_add:
              - header: { key: x-local-rate-limit, value: 'true' }
            descriptors:
              - entries:
                  - key: path
                    value: /limited
                token_bucket:
                  max_tokens: 2
                  tokens_per_fill: 2
                  fill_interval: 3600s
    - applyTo: HTTP_ROUTE
      match:
        context: SIDECAR_INBOUND
        routeConfiguration:
          vhost:
            name: ""
            route:
              action: ANY
      patch:
        operation: MERGE
        value:
          route:
            rate_limits:
              - actions:
                  - request_headers:
                      header_name: ":path"
                      descriptor_key: path
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_rate_limit_descriptors_limit_only_the_matching_requests_over_xds() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, Router::new().fallback(|| async { "web" })).await });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ratelimit.yaml"), DESCRIPTORS).unwrap();
    let trellisd = Trellisd::start_with(&["--config-dir".into(), dir.path().into()], &[]);
    let web = start_proxy(trellisd.xds, "web");
    eventually_sync("web has its rate limit", || web.proxy.config.load().inbound_rate_limit.is_some()).await;

    let refused = (429, Some("true".to_owned()));
    assert_eq!(statuses(web.inbound[0], app, "/limited", 3).await, vec![(200, None), (200, None), refused]);
    // No default bucket: what matches no descriptor passes.
    assert!(statuses(web.inbound[0], app, "/other", 10).await.iter().all(|(status, _)| *status == 200));
}

/// An ingress gateway (Istio's `Gateway` on port `GW_PORT`, a VirtualService to `web` on the
/// app's `APP_PORT`) and a GATEWAY-context local limit of 2 requests an hour per `x-user` value
/// (a wildcard descriptor of the virtual host's actions) on the `*:GW_PORT` virtual host.
const GATEWAY: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: web, namespace: shop }
spec:
  hosts: [web.shop.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{ number: 80, name: http, protocol: HTTP }]
  endpoints: [{ address: 127.0.0.1, ports: { http: APP_PORT } }]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: { name: ingress, namespace: istio-system }
spec:
  selector: { istio: ingressgateway }
  servers: [{ port: { number: GW_PORT, name: http, protocol: HTTP }, hosts: ["*"] }]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: web, namespace: shop }
spec:
  hosts: ["*"]
  gateways: [istio-system/ingress]
  http: [{ route: [{ destination: { host: web.shop.svc.cluster.local, port: { number: 80 } } }] }]
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: { name: gateway-ratelimit, namespace: istio-system }
spec:
  workloadSelector: { labels: { istio: ingressgateway } }
  configPatches:
    - applyTo: HTTP_FILTER
      match:
        context: GATEWAY
        listener: { filterChain: { filter: { name: envoy.filters.network.http_connection_manager } } }
      patch:
        operation: INSERT_BEFORE
        value:
          name: envoy.filters.http.local_ratelimit
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
            stat_prefix: http_local_rate_limiter
            filter_enabled: { default_value: { numerator: 100 } }
            filter_enforced: { default_value: { numerator: 100 } }
            response_headers_to_add: [{ header: { key: x-local-rate-limit, value: "true" } }]
            descriptors:
              - entries: [{ key: user }]
                token_bucket: { max_tokens: 2, fill_interval: 3600s }
    - applyTo: VIRTUAL_HOST
      match: { context: GATEWAY, routeConfiguration: { vhost: { name: "*:GW_PORT" } } }
      patch:
        operation: MERGE
        value:
          rate_limits:
            - actions: [{ request_headers: { header_name: x-user, descriptor_key: user } }]
"#;

/// The statuses of GETs as `users` through the gateway at `at`.
async fn statuses_as(at: SocketAddr, users: &[&str]) -> Vec<u16> {
    let stream = tokio::net::TcpStream::connect(at).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut out = Vec::new();
    for user in users {
        let request = http::Request::get("/")
            .header("host", "shop.example.com")
            .header("x-user", *user)
            .body(Empty::<Bytes>::new())
            .unwrap();
        sender.ready().await.unwrap();
        out.push(sender.send_request(request).await.unwrap().status().as_u16());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_context_envoy_filter_limits_the_gateways_requests_over_xds() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, Router::new().fallback(|| async { "web" })).await });
    let gateway_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let config =
        GATEWAY.replace("APP_PORT", &app.port().to_string()).replace("GW_PORT", &gateway_port.to_string());
    std::fs::write(dir.path().join("gateway.yaml"), config).unwrap();
    let trellisd = Trellisd::start_with(&["--config-dir".into(), dir.path().into()], &[]);
    let node = ProxyNode {
        id: "router~127.0.0.1~ingress-1.istio-system~istio-system.svc.cluster.local".into(),
        namespace: "istio-system".into(),
        workload: "istio-ingressgateway".into(),
        labels: [("istio".to_owned(), "ingressgateway".to_owned())].into(),
        ..Default::default()
    };
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let options = trellis_proxy::Options {
        outbound: vec![],
        inbound: vec![],
        admin: vec![local],
        readiness: vec![],
        stats: vec![],
        config_file: None,
        xds: Some(trellis_proxy::xds::XdsOptions {
            address: format!("http://{}", trellisd.xds),
            node,
            secure: None,
        }),
        explicit_inbound: false,
        identity: None,
    };
    let metrics =
        Metrics::new(Workload { name: "istio-ingressgateway".into(), namespace: "istio-system".into() });
    let gateway = trellis_proxy::start(options, metrics, None).expect("the gateway starts");
    trellis_proxy::gateway::listener::start(&gateway.proxy, &["127.0.0.1".parse().unwrap()]);
    eventually_sync("the gateway has its rate limit", || {
        gateway.proxy.config.load().gateway_rate_limit.is_some()
    })
    .await;
    // Sidecar contexts do not reach a gateway.
    let config = gateway.proxy.config.load();
    assert!(config.inbound_rate_limit.is_none() && config.outbound_rate_limit.is_none());
    let at = SocketAddr::from(([127, 0, 0, 1], gateway_port));
    eventually_sync("the gateway listens", || std::net::TcpStream::connect(at).is_ok()).await;

    let answers = statuses_as(at, &["alice", "alice", "alice", "bob", "bob", "bob", "carol"]).await;
    assert_eq!(answers, [200, 200, 429, 200, 200, 429, 200], "{}", trellisd.logs());
}
