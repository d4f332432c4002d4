//! EnvoyFilter: the rate-limit shapes of Istio's "Enabling Rate Limits using Envoy" are read;
//! anything else is warned about and ignored whole; bad rate-limit values are errors naming the
//! field.

use std::time::Duration;

use trellis_api::check::{UnknownFields, check_text};
use trellis_api::envoy_filter::{RateLimitAction, Reading, TokenBucket, VhRateLimits, read};
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
    let local = limits.inbound.local.unwrap();
    assert_eq!(
        local.token_bucket,
        Some(TokenBucket { max_tokens: 4, tokens_per_fill: 4, fill_interval: Duration::from_secs(60) })
    );
    assert_eq!((local.enabled_percent, local.enforced_percent), (100.0, 100.0));
    assert_eq!(local.response_headers.get("x-local-rate-limit").map(String::as_str), Some("true"));
    assert!(limits.inbound.global.is_none() && limits.inbound.rules.is_empty());
}

#[test]
fn istios_per_route_local_rate_limit_takes_the_routes_bucket() {
    let [Reading::RateLimits(limits)] = <[Reading; 1]>::try_from(readings(LOCAL_PER_ROUTE)).unwrap() else {
        panic!()
    };
    let local = limits.inbound.local.unwrap();
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
    let global = filter.inbound.global.unwrap();
    assert_eq!(global.domain, "ratelimit");
    assert_eq!(global.service, "ratelimit.default.svc.cluster.local:8081");
    assert!(global.failure_mode_deny);
    assert_eq!(global.timeout, Some(Duration::from_secs(10)));
    assert_eq!(actions.inbound.rules.len(), 2);
    assert_eq!(
        actions.inbound.rules[0].actions,
        [RateLimitAction::RequestHeaders {
            header_name: ":path".into(),
            descriptor_key: "PATH".into(),
            skip_if_absent: false
        }]
    );
    assert_eq!(actions.inbound.rules[1].actions[1], RateLimitAction::RemoteAddress);
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
    assert_eq!(w[0].1, "spec.configPatches[0].applyTo");
    let [reading] = <[Reading; 1]>::try_from(readings(&mixed)).unwrap();
    assert!(matches!(reading, Reading::Unsupported { .. }), "{reading:?}");

    // Istio's per-route example as its page has it: the route patch in SIDECAR_OUTBOUND names
    // an inbound virtual host, which matches nothing there.
    let outbound_route = LOCAL_PER_ROUTE.replacen("context: SIDECAR_INBOUND", "context: SIDECAR_OUTBOUND", 2);
    let outbound_route = outbound_route.replacen("context: SIDECAR_OUTBOUND", "context: SIDECAR_INBOUND", 1);
    let w = warnings(&outbound_route);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].1.ends_with("routeConfiguration.vhost.name"), "{w:?}");
    assert!(w[0].2.contains("is SIDECAR_INBOUND's, not SIDECAR_OUTBOUND's"), "{w:?}");

    // A route patch for the virtual host of one host, or for one named route: not read.
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
        ("fill_interval: 60s", "fill_interval: 0.02s", "token_bucket.fill_interval", "is less than 50ms"),
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

/// Istio's per-route local limit with Envoy's descriptors: the route's `rate_limits` make the
/// request's descriptors (`:path`, and a premium plan's header), each descriptor has its bucket,
/// and the default bucket is kept for the requests that match none.
const LOCAL_DESCRIPTORS: &str = r#"
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
          route:
            rate_limits:
              - actions:
                  - request_headers:
                      header_name: ":path"
                      descriptor_key: path
              - actions:
                  - header_value_match:
                      descriptor_value: premium
                      headers:
                        - name: x-plan
                          exact_match: premium
          typed_per_filter_config:
            envoy.filters.http.local_ratelimit:
              "@type": type.googleapis.com/udpa.type.v1.TypedStruct
              type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              value:
                stat_prefix: http_local_rate_limiter
                token_bucket:
                  max_tokens: 10
                  tokens_per_fill: 10
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
                always_consume_default_token_bucket: false
                descriptors:
                  - entries:
                      - key: path
                        value: /productpage
                    token_bucket:
                      max_tokens: 2
                      tokens_per_fill: 2
                      fill_interval: 60s
                  - entries:
                      - key: header_match
                        value: premium
                    token_bucket:
                      max_tokens: 100
                      tokens_per_fill: 100
                      fill_interval: 60s
"#;

#[test]
fn istios_local_rate_limit_with_descriptors_reads_each_bucket_and_the_routes_actions() {
    let [Reading::RateLimits(limits)] = <[Reading; 1]>::try_from(readings(LOCAL_DESCRIPTORS)).unwrap() else {
        panic!()
    };
    let local = limits.inbound.local.unwrap();
    assert_eq!(local.ports, [9080]);
    assert!(!local.always_consume_default_token_bucket);
    assert_eq!(local.token_bucket.map(|b| b.max_tokens), Some(10));
    let descriptors: Vec<_> =
        local.descriptors.iter().map(|d| (d.entries.clone(), d.token_bucket.max_tokens)).collect();
    assert_eq!(
        descriptors,
        [
            (vec![("path".to_owned(), "/productpage".to_owned())], 2),
            (vec![("header_match".to_owned(), "premium".to_owned())], 100)
        ]
    );
    assert_eq!(local.vh_rate_limits, VhRateLimits::Override);
    assert!(local.rate_limits.is_none());
    // The route's actions, for port 9080's route (not a virtual host's).
    assert_eq!(limits.inbound.rules.len(), 2);
    assert!(limits.inbound.rules.iter().all(|r| r.ports == [9080] && !r.virtual_host));
    assert_eq!(
        limits.inbound.rules[0].actions,
        [RateLimitAction::RequestHeaders {
            header_name: ":path".into(),
            descriptor_key: "path".into(),
            skip_if_absent: false
        }]
    );
    // validate has nothing to say about it.
    assert!(warnings(LOCAL_DESCRIPTORS).is_empty());
}

#[test]
fn a_filters_own_rate_limits_wildcards_and_envoys_other_spellings_are_read() {
    let own = LOCAL.replace(
        "              stat_prefix: http_local_rate_limiter\n",
        r#"              stat_prefix: http_local_rate_limiter
              alwaysConsumeDefaultTokenBucket: { value: true }
              vh_rate_limits: INCLUDE
              max_dynamic_descriptors: { value: 50 }
              rate_limits:
                - actions: [{ remote_address: {} }]
              descriptors:
                - entries: [{ key: remote_address }]
                  token_bucket: { max_tokens: 1, fill_interval: 1s }
"#,
    );
    let [Reading::RateLimits(limits)] = <[Reading; 1]>::try_from(readings(&own)).unwrap() else { panic!() };
    let local = limits.inbound.local.unwrap();
    assert!(local.always_consume_default_token_bucket);
    assert_eq!(local.vh_rate_limits, VhRateLimits::Include);
    assert_eq!(local.max_dynamic_descriptors, Some(50));
    assert_eq!(local.rate_limits, Some(vec![vec![RateLimitAction::RemoteAddress]]));
    // An entry without a value: any value, each with its own bucket.
    assert_eq!(local.descriptors[0].entries, [("remote_address".to_owned(), String::new())]);
    assert_eq!(local.descriptors[0].token_bucket.tokens_per_fill, 1);
    assert!(limits.inbound.rules.is_empty());
}

#[test]
fn malformed_descriptors_are_errors_naming_the_field() {
    let descriptors =
        "spec.configPatches[1].patch.value.typed_per_filter_config.envoy.filters.http.local_ratelimit.value";
    let cases = [
        (
            "                  - entries:\n                      - key: path\n                        value: /productpage\n",
            "                  - entries: []\n",
            "descriptors[0].entries",
            "at least one entry",
        ),
        ("- key: path\n", "- key: \"\"\n", "descriptors[0].entries[0].key", "required"),
        (
            "                      max_tokens: 2\n",
            "                      max_tokens: 0\n",
            "descriptors[0].token_bucket.max_tokens",
            "0 must be at least 1",
        ),
        (
            "                      tokens_per_fill: 2\n                      fill_interval: 60s\n",
            "                      tokens_per_fill: 2\n                      fill_interval: 0.01s\n",
            "descriptors[0].token_bucket.fill_interval",
            "is less than 50ms",
        ),
        (
            "key: header_match\n                        value: premium\n",
            "key: path\n                        value: /productpage\n",
            "descriptors[1].entries",
            "the same entries",
        ),
        (
            "                always_consume_default_token_bucket: false\n",
            "                always_consume_default_token_bucket: sometimes\n",
            "always_consume_default_token_bucket",
            "true or false",
        ),
        (
            "                always_consume_default_token_bucket: false\n",
            "                vh_rate_limits: SOMETIMES\n",
            "vh_rate_limits",
            "OVERRIDE, INCLUDE or IGNORE",
        ),
        (
            "                always_consume_default_token_bucket: false\n",
            "                max_dynamic_descriptors: 0\n",
            "max_dynamic_descriptors",
            "at least 1",
        ),
        (
            "                always_consume_default_token_bucket: false\n",
            "                max_dynamic_descriptors: 4000000\n",
            "max_dynamic_descriptors",
            "more than 100000",
        ),
    ];
    for (from, to, field, message) in cases {
        let text = LOCAL_DESCRIPTORS.replacen(from, to, 1);
        assert_ne!(text, LOCAL_DESCRIPTORS, "{to}");
        let checked = check_text(&text, UnknownFields::Reject);
        let errors: Vec<_> = checked.problems.iter().filter(|p| p.severity == Severity::Error).collect();
        assert_eq!(errors.len(), 1, "{to}: {:?}", checked.problems);
        assert_eq!(errors[0].field, format!("{descriptors}.{field}"), "{to}");
        assert!(errors[0].message.contains(message), "{to}: {}", errors[0].message);
        assert!(checked.accepted.is_empty());
    }
    let not_a_list = LOCAL.replacen(
        "              stat_prefix: http_local_rate_limiter\n",
        "              stat_prefix: http_local_rate_limiter\n              descriptors: { path: x }\n",
        1,
    );
    let checked = check_text(&not_a_list, UnknownFields::Reject);
    assert_eq!(checked.errors(), 1, "{:?}", checked.problems);
    assert_eq!(checked.problems[0].field, "spec.configPatches[0].patch.value.typed_config.value.descriptors");
    assert!(checked.problems[0].message.contains("must be a list"));
    // A descriptor without a bucket, and a route's limit without one (Envoy refuses both).
    let no_bucket = LOCAL_DESCRIPTORS.replacen(
        "                    token_bucket:\n                      max_tokens: 2\n                      tokens_per_fill: 2\n                      fill_interval: 60s\n",
        "",
        1,
    );
    let checked = check_text(&no_bucket, UnknownFields::Reject);
    assert_eq!(checked.errors(), 1, "{:?}", checked.problems);
    assert_eq!(checked.problems[0].field, format!("{descriptors}.descriptors[0].token_bucket"));
    let route_without_bucket = LOCAL_DESCRIPTORS.replacen(
        "                token_bucket:\n                  max_tokens: 10\n                  tokens_per_fill: 10\n                  fill_interval: 60s\n",
        "",
        1,
    );
    let checked = check_text(&route_without_bucket, UnknownFields::Reject);
    assert_eq!(checked.errors(), 1, "{:?}", checked.problems);
    assert_eq!(checked.problems[0].field, format!("{descriptors}.token_bucket"));
}

#[test]
fn hostile_descriptor_lists_are_refused_and_unknown_parts_ignored_whole() {
    // More descriptors than anyone writes: an error, not a slow matcher.
    let many: String = (0..1001)
        .map(|i| format!("                  - entries: [{{ key: k, value: \"v{i}\" }}]\n                    token_bucket: {{ max_tokens: 1, fill_interval: 1s }}\n"))
        .collect();
    let text = LOCAL_DESCRIPTORS.replacen(
        "                descriptors:\n",
        &format!("                descriptors:\n{many}"),
        1,
    );
    let checked = check_text(&text, UnknownFields::Reject);
    assert_eq!(checked.errors(), 1, "{:?}", checked.problems);
    assert!(checked.problems[0].message.contains("at most 1000"), "{}", checked.problems[0].message);
    // A field of a descriptor Trellis does not read, or a stage: the whole filter is ignored.
    for (from, to, field) in [
        (
            "                  - entries:\n                      - key: path\n",
            "                  - entries:\n                      - key: path\n                        limit: 3\n",
            "descriptors[0].entries[0].limit",
        ),
        (
            "                always_consume_default_token_bucket: false\n",
            "                stage: 2\n",
            "stage",
        ),
        (
            "                always_consume_default_token_bucket: false\n",
            "                local_rate_limit_per_downstream_connection: true\n",
            "local_rate_limit_per_downstream_connection",
        ),
    ] {
        let w = warnings(&LOCAL_DESCRIPTORS.replacen(from, to, 1));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].1.ends_with(field), "{w:?}");
        assert!(w[0].2.starts_with("not supported, ignored"), "{w:?}");
    }
    // A route's `rate_limits` belong in its `route`; a virtual host's at the top.
    let misplaced = LOCAL_DESCRIPTORS.replacen(
        "          route:\n            rate_limits:\n",
        "          rate_limits:\n",
        1,
    );
    let w = warnings(&misplaced);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].1.ends_with("patch.value.rate_limits"), "{w:?}");
}

#[test]
fn each_context_gets_its_own_limits_and_any_means_all_three() {
    // Istio's documented global limit, on a gateway: its `*:80` virtual host scopes the actions
    // to the gateway's port 80.
    let gateway = GLOBAL
        .replace("context: SIDECAR_INBOUND", "context: GATEWAY")
        .replace("name: \"\"", "name: \"*:80\"");
    assert!(warnings(&gateway).is_empty(), "{:?}", warnings(&gateway));
    let [Reading::RateLimits(filter), Reading::RateLimits(actions)] =
        <[Reading; 2]>::try_from(readings(&gateway)).unwrap()
    else {
        panic!()
    };
    assert_eq!(filter.gateway.global.as_ref().map(|g| g.domain.as_str()), Some("ratelimit"));
    assert!(filter.inbound.global.is_none() && filter.outbound.global.is_none());
    assert_eq!(actions.gateway.rules.len(), 2);
    assert!(actions.gateway.rules.iter().all(|r| r.ports == [80] && r.virtual_host));
    assert!(actions.inbound.rules.is_empty() && actions.outbound.rules.is_empty());

    // A sidecar's outbound requests, by the service's port.
    let outbound =
        LOCAL_DESCRIPTORS.replace("context: SIDECAR_INBOUND", "context: SIDECAR_OUTBOUND").replace(
            "          vhost:\n            name: \"inbound|http|9080\"\n",
            "          portNumber: 9080\n          vhost:\n            name: \"\"\n",
        );
    assert!(warnings(&outbound).is_empty(), "{:?}", warnings(&outbound));
    let [Reading::RateLimits(limits)] = <[Reading; 1]>::try_from(readings(&outbound)).unwrap() else {
        panic!()
    };
    let local = limits.outbound.local.as_ref().unwrap();
    assert_eq!((local.ports.as_slice(), local.descriptors.len()), ([9080].as_slice(), 2));
    assert!(limits.inbound == Default::default() && limits.gateway == Default::default());

    // No context (ANY): every context, each with the same filter.
    let any = LOCAL.replace("        context: SIDECAR_INBOUND\n", "");
    let [Reading::RateLimits(limits)] = <[Reading; 1]>::try_from(readings(&any)).unwrap() else { panic!() };
    assert!(limits.inbound.local.is_some());
    assert_eq!(limits.inbound, limits.outbound);
    assert_eq!(limits.inbound, limits.gateway);

    // A waypoint's context: not Trellis's, warned about and ignored whole.
    let w = warnings(&LOCAL.replace("context: SIDECAR_INBOUND", "context: WAYPOINT"));
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].1, "spec.configPatches[0].match.context");
    assert!(w[0].2.contains("context WAYPOINT"), "{w:?}");
    // A REMOVE (no value) of another kind of patch: warned about, not an error.
    let remove = LOCAL.replace(
        "    - applyTo: HTTP_FILTER\n",
        "    - applyTo: NETWORK_FILTER\n      patch: { operation: REMOVE }\n    - applyTo: HTTP_FILTER\n",
    );
    let w = warnings(&remove);
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].1, "spec.configPatches[0].applyTo");
}
