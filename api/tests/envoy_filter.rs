//! EnvoyFilter: the rate-limit shapes of Istio's "Enabling Rate Limits using Envoy" are read;
//! anything else is warned about and ignored whole; bad rate-limit values are errors naming the
//! field.

use std::time::Duration;

use trellis_api::check::{UnknownFields, check_text};
use trellis_api::envoy_filter::{RateLimitAction, Reading, TokenBucket, read};
use trellis_api::resource::Resource;
use trellis_api::validate::Severity;

/// Istio's local rate limit example (TypedStruct form), on a sidecar's inbound listener.
const LOCAL: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata:
  name: filter-local-ratelimit-svc
  namespace: istio-system
spec:
  workloadSelector:
    labels:
      app: productpage
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
                max_tokens: 4
                tokens_per_fill: 4
                fill_interval: 60s
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
"#;

/// Istio's per-route variant: the filter enabled on the listener, the bucket on the route.
const LOCAL_PER_ROUTE: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata:
  name: filter-local-ratelimit-svc
  namespace: istio-system
spec:
  workloadSelector:
    labels:
      app: productpage
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
    - applyTo: HTTP_ROUTE
      match:
        context: SIDECAR_INBOUND
        routeConfiguration:
          vhost:
            name: "inbound|http|9080"
            route:
              action: ANY
      patch:
        operation: MERGE
        value:
          typed_per_filter_config:
            envoy.filters.http.local_ratelimit:
              "@type": type.googleapis.com/udpa.type.v1.TypedStruct
              type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              value:
                stat_prefix: http_local_rate_limiter
                token_bucket:
                  max_tokens: 4
                  tokens_per_fill: 4
                  fill_interval: 60s
                filter_enabled:
                  runtime_key: local_rate_limit_enabled
                  default_value:
                    numerator: 100
                    denominator: HUNDRED
                filter_enforced:
                  runtime_key: local_rate_limit_enforced
                  default_value:
                    numerator: 50
                    denominator: HUNDRED
"#;

/// Istio's global rate limit example, with the sidecar's inbound context instead of the
/// gateway's (Trellis runs no gateway): the filter, and the route's actions.
const GLOBAL: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata:
  name: filter-ratelimit
  namespace: istio-system
spec:
  workloadSelector:
    labels:
      app: productpage
  configPatches:
    - applyTo: HTTP_FILTER
      match:
        context: SIDECAR_INBOUND
        listener:
          filterChain:
            filter:
              name: "envoy.filters.network.http_connection_manager"
              subFilter:
                name: "envoy.filters.http.router"
      patch:
        operation: INSERT_BEFORE
        value:
          name: envoy.filters.http.ratelimit
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
            domain: ratelimit
            failure_mode_deny: true
            timeout: 10s
            rate_limit_service:
              grpc_service:
                envoy_grpc:
                  cluster_name: outbound|8081||ratelimit.default.svc.cluster.local
                  authority: ratelimit.default.svc.cluster.local
              transport_api_version: V3
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata:
  name: filter-ratelimit-svc
  namespace: istio-system
spec:
  workloadSelector:
    labels:
      app: productpage
  configPatches:
    - applyTo: VIRTUAL_HOST
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
          rate_limits:
            - actions:
              - request_headers:
                  header_name: ":path"
                  descriptor_key: "PATH"
            - actions:
              - generic_key:
                  descriptor_value: shop
              - remote_address: {}
              - header_value_match:
                  descriptor_value: premium
                  headers:
                    - name: x-plan
                      exact_match: premium
"#;

fn readings(text: &str) -> Vec<Reading> {
    let checked = check_text(text, UnknownFields::Reject);
    assert_eq!(checked.errors(), 0, "{:?}", checked.problems);
    checked
        .accepted
        .iter()
        .map(|d| match &d.resource {
            Resource::EnvoyFilter(ef) => read(&ef.spec),
            other => panic!("not an EnvoyFilter: {:?}", other.kind()),
        })
        .collect()
}

#[test]
fn istios_local_rate_limit_reads_as_a_token_bucket() {
    let [Reading::RateLimits(limits)] = <[Reading; 1]>::try_from(readings(LOCAL)).unwrap() else { panic!() };
    let local = limits.local.unwrap();
    assert_eq!(
        local.token_bucket,
        Some(TokenBucket { max_tokens: 4, tokens_per_fill: 4, fill_interval: Duration::from_secs(60) })
    );
    assert_eq!((local.enabled_percent, local.enforced_percent), (100.0, 100.0));
    assert_eq!(local.response_headers.get("x-local-rate-limit").map(String::as_str), Some("true"));
    assert!(limits.global.is_none() && limits.rules.is_empty());
}

#[test]
fn istios_per_route_local_rate_limit_takes_the_routes_bucket() {
    let [Reading::RateLimits(limits)] = <[Reading; 1]>::try_from(readings(LOCAL_PER_ROUTE)).unwrap() else {
        panic!()
    };
    let local = limits.local.unwrap();
    assert_eq!(local.token_bucket.map(|b| b.max_tokens), Some(4));
    assert_eq!((local.enabled_percent, local.enforced_percent), (100.0, 50.0));
    // The route patch names the inbound virtual host of port 9080: the limit is that port's.
    assert_eq!(local.ports, [9080]);
}

#[test]
fn istios_global_rate_limit_reads_the_service_and_the_actions() {
    let [Reading::RateLimits(filter), Reading::RateLimits(actions)] =
        <[Reading; 2]>::try_from(readings(GLOBAL)).unwrap()
    else {
        panic!()
    };
    let global = filter.global.unwrap();
    assert_eq!(global.domain, "ratelimit");
    assert_eq!(global.service, "ratelimit.default.svc.cluster.local:8081");
    assert!(global.failure_mode_deny);
    assert_eq!(global.timeout, Some(Duration::from_secs(10)));
    assert_eq!(actions.rules.len(), 2);
    assert_eq!(
        actions.rules[0],
        [RateLimitAction::RequestHeaders {
            header_name: ":path".into(),
            descriptor_key: "PATH".into(),
            skip_if_absent: false
        }]
    );
    assert_eq!(actions.rules[1][1], RateLimitAction::RemoteAddress);
}

/// The warnings of a text, as (resource, field, message).
fn warnings(text: &str) -> Vec<(String, String, String)> {
    let checked = check_text(text, UnknownFields::Reject);
    assert_eq!(checked.errors(), 0, "{:?}", checked.problems);
    checked
        .problems
        .iter()
        .filter(|p| p.severity == Severity::Warning)
        .map(|p| {
            (
                p.resource.as_ref().map(ToString::to_string).unwrap_or_default(),
                p.field.clone(),
                p.message.clone(),
            )
        })
        .collect()
}

#[test]
fn other_envoy_filters_are_warned_about_and_ignored_whole() {
    let lua = r#"
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: { name: lua, namespace: default }
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
    let w = warnings(lua);
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].0, "EnvoyFilter default/lua");
    assert_eq!(w[0].1, "spec.configPatches[0].patch.value.name");
    assert!(w[0].2.starts_with("not supported, ignored: filter \"envoy.filters.http.lua\""), "{}", w[0].2);

    // A rate limit next to a patch Trellis does not read: the whole filter is ignored.
    let mixed = LOCAL.replace(
        "  configPatches:\n",
        "  configPatches:\n    - applyTo: CLUSTER\n      match: { context: SIDECAR_OUTBOUND }\n      patch: { operation: MERGE, value: { connect_timeout: 1s } }\n",
    );
    let w = warnings(&mixed);
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].1, "spec.configPatches[0].match.context");
    let [reading] = <[Reading; 1]>::try_from(readings(&mixed)).unwrap();
    assert!(matches!(reading, Reading::Unsupported { .. }), "{reading:?}");

    // The documented gateway context: no gateway in Trellis.
    let gateway = GLOBAL.replace("context: SIDECAR_INBOUND", "context: GATEWAY");
    let w = warnings(&gateway);
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(w[0].2.contains("context GATEWAY"), "{w:?}");

    // A route patch for an outbound virtual host, or for one named route: not read.
    for (from, to, field) in [
        ("name: \"inbound|http|9080\"", "name: \"reviews:9080\"", "vhost.name"),
        ("action: ANY", "action: ROUTE\n              name: r1", "vhost.route.name"),
    ] {
        let w = warnings(&LOCAL_PER_ROUTE.replace(from, to));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].1.ends_with(field), "{w:?}");
    }

    // An unknown field of the local limit: not applied half-way.
    let extra = LOCAL.replace(
        "stat_prefix: http_local_rate_limiter",
        "stat_prefix: x\n              local_rate_limit_per_downstream_connection: true",
    );
    let w = warnings(&extra);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].1.ends_with(".value.local_rate_limit_per_downstream_connection"), "{w:?}");
}

#[test]
fn malformed_rate_limit_values_are_errors_naming_the_field() {
    let cases = [
        ("fill_interval: 60s", "fill_interval: 0s", "token_bucket.fill_interval", "must be more than 0s"),
        ("max_tokens: 4", "max_tokens: -1", "token_bucket.max_tokens", "-1 must be at least 1"),
        ("tokens_per_fill: 4", "tokens_per_fill: 0", "token_bucket.tokens_per_fill", "0 must be at least 1"),
        ("fill_interval: 60s", "fill_interval: soon", "token_bucket.fill_interval", "is not a duration"),
        (
            "denominator: HUNDRED",
            "denominator: THOUSAND",
            "filter_enabled.default_value.denominator",
            "THOUSAND",
        ),
    ];
    for (from, to, field, message) in cases {
        let checked = check_text(&LOCAL.replacen(from, to, 1), UnknownFields::Reject);
        let errors: Vec<_> = checked.problems.iter().filter(|p| p.severity == Severity::Error).collect();
        assert_eq!(errors.len(), 1, "{to}: {:?}", checked.problems);
        assert_eq!(
            errors[0].field,
            format!("spec.configPatches[0].patch.value.typed_config.value.{field}"),
            "{to}"
        );
        assert!(errors[0].message.contains(message), "{to}: {}", errors[0].message);
        assert!(checked.accepted.is_empty());
    }
    let bad_cluster = GLOBAL.replace("outbound|8081||ratelimit", "ratelimit-cluster");
    let checked = check_text(&bad_cluster, UnknownFields::Reject);
    assert_eq!(checked.errors(), 1, "{:?}", checked.problems);
    assert!(checked.problems[0].field.ends_with("rate_limit_service.grpc_service.envoy_grpc.cluster_name"));
}
