//! Rate limits from EnvoyFilters: the filters that select a workload (the root namespace's and
//! its own namespace's, by `workloadSelector.labels`, as Istio selects them for a sidecar), read
//! by [`trellis_api::envoy_filter::read`] and added up into the proxy's local and global rate
//! limits of each context (a sidecar's inbound and outbound requests, a gateway's). A filter
//! Trellis does not (fully) support is ignored whole, with a warning that names it and the patch.

use std::collections::BTreeMap;

use tracing::warn;
use trellis_api::envoy_filter::{self as ef, Reading};
use trellis_api::resource::{Kind, Resource};
use trellis_xds::config as pb;

use super::objects::selects;
use super::policies::PolicyKey;
use crate::model::Model;

/// The EnvoyFilters that select a workload, in the order Istio applies them: the root
/// namespace's first, then the workload's own, each by priority, then name.
pub fn selecting(model: &Model, namespace: &str, labels: &BTreeMap<String, String>) -> Vec<PolicyKey> {
    let root = model.mesh.root_namespace();
    let mut found: Vec<(bool, i32, PolicyKey)> = Vec::new();
    for (key, resource) in model.of_kind(Kind::EnvoyFilter) {
        if key.namespace != root && key.namespace != namespace {
            continue;
        }
        let Resource::EnvoyFilter(filter) = &**resource else { continue };
        let selected = filter.spec.workload_selector.as_ref().is_none_or(|s| selects(&s.labels, labels));
        if selected {
            found.push((
                key.namespace != root,
                filter.spec.priority,
                format!("{}/{}", key.namespace, key.name),
            ));
        }
    }
    found.sort();
    found.into_iter().map(|(_, _, key)| key).collect()
}

/// What the selected filters add up to in one context, as read.
#[derive(Default)]
struct Found {
    local_filter: bool,
    /// The local limit, and the filter it came from.
    local: Option<(ef::LocalRateLimit, PolicyKey)>,
    global: Option<ef::GlobalRateLimit>,
    rules: Vec<ef::RateLimitRule>,
}

/// One context's rate limits, as the proxy takes them.
pub type ContextLimits = (Option<pb::LocalRateLimit>, Option<pb::GlobalRateLimit>);

/// The rate limits the selected filters add up to in each of `contexts`: the last local limit
/// that limits something (a bucket or descriptors) and the last global filter win; the routes'
/// `rate_limits` are all of theirs, in order, and serve both filters as in Envoy. Each filter is
/// read (and warned about) once.
pub fn limits<const N: usize>(
    model: &Model,
    keys: &[PolicyKey],
    contexts: [ef::Context; N],
) -> [ContextLimits; N] {
    let mut found: [Found; N] = std::array::from_fn(|_| Found::default());
    for key in keys {
        let Some((_, Resource::EnvoyFilter(filter))) = super::policies::lookup(model, Kind::EnvoyFilter, key)
        else {
            continue;
        };
        match ef::read(&filter.spec) {
            Reading::RateLimits(all) => {
                for (context, found) in contexts.iter().zip(found.iter_mut()) {
                    let limits = all.of(*context);
                    if let Some(l) = limits.local.as_ref().filter(|l| l.limits_something()) {
                        found.local = Some((l.clone(), key.clone()));
                    }
                    found.local_filter |= limits.local_filter;
                    if let Some(g) = &limits.global {
                        found.global = Some(g.clone());
                    }
                    found.rules.extend(limits.rules.iter().cloned());
                }
            }
            Reading::Unsupported { field, reason } => {
                warn!(envoy_filter = %key, field, "EnvoyFilter not supported, ignored: {reason}");
            }
            Reading::Invalid(problems) => {
                for (field, message) in problems {
                    warn!(envoy_filter = %key, field, "EnvoyFilter invalid, ignored: {message}");
                }
            }
        }
    }
    let mut contexts = contexts.into_iter();
    found.map(|Found { local_filter, local, global, rules }| {
        let context = contexts.next().map_or("", ef::Context::name);
        let route_rules: Vec<pb::RateLimitDescriptorRule> = rules.iter().map(rule_to_pb).collect();
        // A route's limit is the filter's per-route config: with no filter inserted, Envoy has
        // nothing to apply it.
        let local = local.and_then(|(l, key)| {
            if !local_filter {
                warn!(
                    envoy_filter = %key,
                    context,
                    "EnvoyFilter's route local rate limit ignored: no selected EnvoyFilter inserts envoy.filters.http.local_ratelimit in {context}"
                );
                return None;
            }
            Some(local_to_pb(&l, &route_rules))
        });
        let global = global.map(|g| pb::GlobalRateLimit {
            domain: g.domain,
            service: g.service,
            timeout: g.timeout.map(Into::into),
            failure_mode_deny: g.failure_mode_deny,
            rules: route_rules,
        });
        (local, global)
    })
}

fn bucket_to_pb(b: &ef::TokenBucket) -> pb::TokenBucket {
    pb::TokenBucket {
        max_tokens: b.max_tokens,
        tokens_per_fill: b.tokens_per_fill,
        fill_interval: Some(b.fill_interval.into()),
    }
}

/// A local limit; with descriptors, the rules that make a request's: its own `rate_limits`, or
/// else the routes'.
fn local_to_pb(l: &ef::LocalRateLimit, route_rules: &[pb::RateLimitDescriptorRule]) -> pb::LocalRateLimit {
    let rules = match (&l.rate_limits, l.descriptors.is_empty()) {
        (_, true) => Vec::new(),
        (Some(own), false) => own
            .iter()
            .map(|actions| {
                rule_to_pb(&ef::RateLimitRule {
                    actions: actions.clone(),
                    ports: Vec::new(),
                    virtual_host: false,
                })
            })
            .collect(),
        (None, false) => route_rules.to_vec(),
    };
    pb::LocalRateLimit {
        stat_prefix: l.stat_prefix.clone(),
        token_bucket: l.token_bucket.as_ref().map(bucket_to_pb),
        enabled_percent: l.enabled_percent,
        enforced_percent: l.enforced_percent,
        response_headers: l.response_headers.clone().into_iter().collect(),
        ports: l.ports.iter().map(|&p| u32::from(p)).collect(),
        descriptors: l
            .descriptors
            .iter()
            .map(|d| pb::LocalRateLimitDescriptor {
                entries: d
                    .entries
                    .iter()
                    .map(|(key, value)| pb::LocalRateLimitDescriptorEntry {
                        key: key.clone(),
                        value: value.clone(),
                    })
                    .collect(),
                token_bucket: Some(bucket_to_pb(&d.token_bucket)),
            })
            .collect(),
        default_bucket_unmatched_only: !l.always_consume_default_token_bucket,
        rules,
        virtual_host_rate_limits: match l.vh_rate_limits {
            ef::VhRateLimits::Override => pb::VirtualHostRateLimits::Override,
            ef::VhRateLimits::Include => pb::VirtualHostRateLimits::Include,
            ef::VhRateLimits::Ignore => pb::VirtualHostRateLimits::Ignore,
        } as i32,
        max_dynamic_descriptors: l.max_dynamic_descriptors.unwrap_or(0),
    }
}

fn rule_to_pb(rule: &ef::RateLimitRule) -> pb::RateLimitDescriptorRule {
    use pb::rate_limit_action::Action;
    let action = |a: &ef::RateLimitAction| {
        let action = match a {
            ef::RateLimitAction::RequestHeaders { header_name, descriptor_key, skip_if_absent } => {
                Action::RequestHeaders(pb::RequestHeadersAction {
                    header_name: header_name.clone(),
                    descriptor_key: descriptor_key.clone(),
                    skip_if_absent: *skip_if_absent,
                })
            }
            ef::RateLimitAction::RemoteAddress => Action::RemoteAddress(true),
            ef::RateLimitAction::GenericKey { descriptor_key, descriptor_value } => {
                Action::GenericKey(pb::GenericKeyAction {
                    descriptor_key: descriptor_key.clone(),
                    descriptor_value: descriptor_value.clone(),
                })
            }
            ef::RateLimitAction::HeaderValueMatch {
                descriptor_key,
                descriptor_value,
                expect_match,
                headers,
            } => Action::HeaderValueMatch(pb::HeaderValueMatchAction {
                descriptor_key: descriptor_key.clone(),
                descriptor_value: descriptor_value.clone(),
                expect_match: *expect_match,
                headers: headers
                    .iter()
                    .map(|h| pb::HeaderMatch {
                        name: h.name.clone(),
                        value: h.value.as_ref().map(|v| pb::StringMatch {
                            kind: Some(match v {
                                ef::StringCondition::Exact(s) => pb::string_match::Kind::Exact(s.clone()),
                                ef::StringCondition::Prefix(s) => pb::string_match::Kind::Prefix(s.clone()),
                                ef::StringCondition::Regex(s) => pb::string_match::Kind::Regex(s.clone()),
                            }),
                        }),
                    })
                    .collect(),
            }),
        };
        pb::RateLimitAction { action: Some(action) }
    };
    pb::RateLimitDescriptorRule {
        actions: rule.actions.iter().map(action).collect(),
        ports: rule.ports.iter().map(|&p| u32::from(p)).collect(),
        virtual_host: rule.virtual_host,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use trellis_xds::config as pb;

    use super::super::test_support::*;

    const LOCAL: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: { name: filter-local-ratelimit-svc, namespace: shop }
spec:
  workloadSelector: { labels: { app: productpage } }
  configPatches:
    - applyTo: HTTP_FILTER
      match:
        context: SIDECAR_INBOUND
        listener: { filterChain: { filter: { name: envoy.filters.network.http_connection_manager } } }
      patch:
        operation: INSERT_BEFORE
        value:
          name: envoy.filters.http.local_ratelimit
          typed_config:
            "@type": type.googleapis.com/udpa.type.v1.TypedStruct
            type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
            value:
              stat_prefix: http_local_rate_limiter
              token_bucket: { max_tokens: 4, tokens_per_fill: 4, fill_interval: 60s }
              filter_enabled: { runtime_key: e, default_value: { numerator: 100, denominator: HUNDRED } }
              filter_enforced: { runtime_key: f, default_value: { numerator: 100, denominator: HUNDRED } }
              response_headers_to_add: [{ append: false, header: { key: x-local-rate-limit, value: "true" } }]
"#;

    const GLOBAL: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: { name: filter-ratelimit, namespace: istio-system }
spec:
  workloadSelector: { labels: { app: productpage } }
  configPatches:
    - applyTo: HTTP_FILTER
      match:
        context: SIDECAR_INBOUND
        listener:
          filterChain:
            filter: { name: envoy.filters.network.http_connection_manager, subFilter: { name: envoy.filters.http.router } }
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
              grpc_service: { envoy_grpc: { cluster_name: outbound|8081||ratelimit.default.svc.cluster.local } }
              transport_api_version: V3
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: { name: filter-ratelimit-svc, namespace: istio-system }
spec:
  workloadSelector: { labels: { app: productpage } }
  configPatches:
    - applyTo: VIRTUAL_HOST
      match: { context: SIDECAR_INBOUND, routeConfiguration: { vhost: { name: "", route: { action: ANY } } } }
      patch:
        operation: MERGE
        value:
          rate_limits:
            - actions: [{ request_headers: { header_name: ":path", descriptor_key: PATH } }]
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: { name: lua, namespace: istio-system }
spec:
  configPatches:
    - applyTo: HTTP_FILTER
      match: { context: SIDECAR_INBOUND }
      patch:
        operation: INSERT_BEFORE
        value: { name: envoy.filters.http.lua, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua } }
"#;

    #[test]
    fn the_selected_workloads_get_istios_local_limit() {
        let model = model(LOCAL);
        let config = config_for(&model, "shop", &[("app", "productpage")]);
        let local = config.inbound_local_rate_limit.clone().unwrap();
        let bucket = local.token_bucket.unwrap();
        assert_eq!((bucket.max_tokens, bucket.tokens_per_fill), (4, 4));
        assert_eq!(bucket.fill_interval, Some(Duration::from_secs(60).into()));
        assert_eq!((local.enabled_percent, local.enforced_percent), (100.0, 100.0));
        assert_eq!(local.response_headers.get("x-local-rate-limit").map(String::as_str), Some("true"));
        assert!(config.inbound_global_rate_limit.is_none());
        // The settings resource carries it to the proxy.
        let settings = trellis_xds::types::settings_of(&config);
        assert_eq!(settings.inbound_local_rate_limit, config.inbound_local_rate_limit);
        // Other workloads, and other namespaces, get none.
        assert!(config_for(&model, "shop", &[("app", "reviews")]).inbound_local_rate_limit.is_none());
        assert!(config_for(&model, "other", &[("app", "productpage")]).inbound_local_rate_limit.is_none());
    }

    #[test]
    fn root_namespace_filters_add_up_to_the_global_limit_and_unsupported_ones_are_ignored() {
        let model = model(GLOBAL);
        let config = config_for(&model, "shop", &[("app", "productpage")]);
        let global = config.inbound_global_rate_limit.clone().unwrap();
        assert_eq!(global.domain, "ratelimit");
        assert_eq!(global.service, "ratelimit.default.svc.cluster.local:8081");
        assert!(global.failure_mode_deny);
        assert_eq!(global.timeout, Some(Duration::from_secs(10).into()));
        assert_eq!(global.rules.len(), 1);
        let settings = trellis_xds::types::settings_of(&config);
        assert_eq!(settings.inbound_global_rate_limit.as_ref(), Some(&global));
        // The Lua filter selects every workload and adds nothing.
        assert!(config.inbound_local_rate_limit.is_none());
        let other = config_for(&model, "shop", &[("app", "reviews")]);
        assert!(other.inbound_global_rate_limit.is_none() && other.inbound_local_rate_limit.is_none());
    }

    /// Istio's per-route local limit with Envoy's descriptors: the HTTP_ROUTE patch of port
    /// 9080 carries the route's actions and the descriptors' buckets; a VIRTUAL_HOST patch adds
    /// a rule for every port.
    const DESCRIPTORS: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: { name: filter-local-ratelimit-svc, namespace: istio-system }
spec:
  workloadSelector: { labels: { app: productpage } }
  configPatches:
    - applyTo: HTTP_FILTER
      match:
        context: SIDECAR_INBOUND
        listener: { filterChain: { filter: { name: envoy.filters.network.http_connection_manager } } }
      patch:
        operation: INSERT_BEFORE
        value:
          name: envoy.filters.http.local_ratelimit
          typed_config:
            "@type": type.googleapis.com/udpa.type.v1.TypedStruct
            type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
            value: { stat_prefix: http_local_rate_limiter }
    - applyTo: HTTP_ROUTE
      match:
        context: SIDECAR_INBOUND
        routeConfiguration: { vhost: { name: "inbound|http|9080", route: { action: ANY } } }
      patch:
        operation: MERGE
        value:
          route:
            rate_limits:
              - actions: [{ request_headers: { header_name: ":path", descriptor_key: path } }]
          typed_per_filter_config:
            envoy.filters.http.local_ratelimit:
              "@type": type.googleapis.com/udpa.type.v1.TypedStruct
              type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              value:
                stat_prefix: http_local_rate_limiter
                token_bucket: { max_tokens: 10, tokens_per_fill: 10, fill_interval: 60s }
                filter_enabled: { runtime_key: e, default_value: { numerator: 100, denominator: HUNDRED } }
                filter_enforced: { runtime_key: f, default_value: { numerator: 100, denominator: HUNDRED } }
                always_consume_default_token_bucket: false
                descriptors:
                  - entries: [{ key: path, value: /productpage }]
                    token_bucket: { max_tokens: 2, tokens_per_fill: 2, fill_interval: 60s }
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: { name: vhost-actions, namespace: istio-system }
spec:
  workloadSelector: { labels: { app: productpage } }
  configPatches:
    - applyTo: VIRTUAL_HOST
      match: { context: SIDECAR_INBOUND, routeConfiguration: { vhost: { name: "", route: { action: ANY } } } }
      patch:
        operation: MERGE
        value:
          rate_limits:
            - actions: [{ generic_key: { descriptor_value: productpage } }]
"#;

    #[test]
    fn istios_local_descriptors_reach_the_proxy_with_the_routes_actions() {
        let model = model(DESCRIPTORS);
        let config = config_for(&model, "shop", &[("app", "productpage")]);
        let local = config.inbound_local_rate_limit.clone().unwrap();
        assert_eq!(local.ports, [9080]);
        assert_eq!(local.token_bucket.as_ref().map(|b| b.max_tokens), Some(10));
        assert!(local.default_bucket_unmatched_only);
        assert_eq!(local.descriptors.len(), 1);
        let d = &local.descriptors[0];
        assert_eq!(
            d.entries,
            [pb::LocalRateLimitDescriptorEntry { key: "path".into(), value: "/productpage".into() }]
        );
        assert_eq!(d.token_bucket.as_ref().map(|b| (b.max_tokens, b.tokens_per_fill)), Some((2, 2)));
        assert_eq!(
            d.token_bucket.as_ref().and_then(|b| b.fill_interval),
            Some(Duration::from_secs(60).into())
        );
        // The route's rule (port 9080's) and the virtual host's (every port's), in order.
        let rules: Vec<_> =
            local.rules.iter().map(|r| (r.ports.clone(), r.virtual_host, r.actions.len())).collect();
        assert_eq!(rules, [(vec![9080], false, 1), (vec![], true, 1)]);
        assert_eq!(local.virtual_host_rate_limits, pb::VirtualHostRateLimits::Override as i32);
        // The settings resource carries them to the proxy.
        let settings = trellis_xds::types::settings_of(&config);
        assert_eq!(settings.inbound_local_rate_limit.as_ref(), Some(&local));
        // No global filter: the rules stay the local limit's.
        assert!(config.inbound_global_rate_limit.is_none());
    }

    /// A local limit on a sidecar's outbound requests to port 9080, and Istio's documented global
    /// limit on its ingress gateway (`*:80`), selecting both kinds of proxy.
    const CONTEXTS: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: { name: outbound-local, namespace: istio-system }
spec:
  configPatches:
    - applyTo: HTTP_FILTER
      match: { context: SIDECAR_OUTBOUND }
      patch:
        operation: INSERT_BEFORE
        value:
          name: envoy.filters.http.local_ratelimit
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
            stat_prefix: outbound
            token_bucket: { max_tokens: 5, tokens_per_fill: 5, fill_interval: 1s }
            filter_enabled: { default_value: { numerator: 100 } }
            filter_enforced: { default_value: { numerator: 100 } }
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: { name: filter-ratelimit, namespace: istio-system }
spec:
  configPatches:
    - applyTo: HTTP_FILTER
      match:
        context: GATEWAY
        listener: { filterChain: { filter: { name: envoy.filters.network.http_connection_manager, subFilter: { name: envoy.filters.http.router } } } }
      patch:
        operation: INSERT_BEFORE
        value:
          name: envoy.filters.http.ratelimit
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
            domain: productpage-ratelimit
            failure_mode_deny: true
            rate_limit_service:
              grpc_service: { envoy_grpc: { cluster_name: outbound|8081||ratelimit.default.svc.cluster.local } }
              transport_api_version: V3
    - applyTo: VIRTUAL_HOST
      match: { context: GATEWAY, routeConfiguration: { vhost: { name: "*:80", route: { action: ANY } } } }
      patch:
        operation: MERGE
        value:
          rate_limits:
            - actions: [{ request_headers: { header_name: ":path", descriptor_key: PATH } }]
"#;

    #[test]
    fn sidecars_get_their_outbound_limits_and_gateways_their_own() {
        let model = model(CONTEXTS);
        let sidecar = config_for(&model, "shop", &[("app", "productpage")]);
        let outbound = sidecar.outbound_local_rate_limit.clone().unwrap();
        assert_eq!(outbound.stat_prefix, "outbound");
        assert_eq!(outbound.token_bucket.map(|b| b.max_tokens), Some(5));
        assert!(sidecar.outbound_global_rate_limit.is_none());
        // Nothing inbound, nothing of the gateway's on a sidecar.
        assert!(sidecar.inbound_local_rate_limit.is_none() && sidecar.inbound_global_rate_limit.is_none());
        assert!(sidecar.gateway_local_rate_limit.is_none() && sidecar.gateway_global_rate_limit.is_none());
        let settings = trellis_xds::types::settings_of(&sidecar);
        assert_eq!(settings.outbound_local_rate_limit, sidecar.outbound_local_rate_limit);

        let proxy = crate::translate::ProxyIdentity {
            namespace: "istio-system".into(),
            labels: labels_of(&[("istio", "ingressgateway")]),
            ..Default::default()
        };
        let scope = crate::translate::scope_of_router(&model, &proxy, &Default::default(), false);
        let gateway = crate::translate::translate(&model, &scope);
        let global = gateway.gateway_global_rate_limit.clone().unwrap();
        assert_eq!(global.domain, "productpage-ratelimit");
        assert_eq!(global.service, "ratelimit.default.svc.cluster.local:8081");
        assert!(global.failure_mode_deny);
        let rules: Vec<_> = global.rules.iter().map(|r| (r.ports.clone(), r.virtual_host)).collect();
        assert_eq!(rules, [(vec![80], true)]);
        // A gateway has no sidecar contexts.
        assert!(gateway.outbound_local_rate_limit.is_none() && gateway.inbound_global_rate_limit.is_none());
        let settings = trellis_xds::types::settings_of(&gateway);
        assert_eq!(settings.gateway_global_rate_limit.as_ref(), Some(&global));
    }

    #[test]
    fn a_routes_local_limit_without_the_filter_is_ignored_as_envoy_would() {
        // The route patch alone: no HTTP_FILTER inserts local_ratelimit.
        let start = DESCRIPTORS.find("    - applyTo: HTTP_FILTER").unwrap();
        let end = DESCRIPTORS.find("    - applyTo: HTTP_ROUTE").unwrap();
        let route_only = format!("{}{}", &DESCRIPTORS[..start], &DESCRIPTORS[end..]);
        let config = config_for(&model(&route_only), "shop", &[("app", "productpage")]);
        assert!(config.inbound_local_rate_limit.is_none());
        // The filter inserted by another EnvoyFilter (in any context that covers inbound) is enough.
        let filter = &DESCRIPTORS[..end];
        let other = filter
            .replace("name: filter-local-ratelimit-svc", "name: the-filter")
            .replace("        context: SIDECAR_INBOUND\n", "");
        let split = format!("{route_only}---\n{other}");
        let config = config_for(&model(&split), "shop", &[("app", "productpage")]);
        assert!(config.inbound_local_rate_limit.is_some());
    }
}
