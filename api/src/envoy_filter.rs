//! `EnvoyFilter` (networking.istio.io/v1alpha3), read only for what Istio documents as its way to
//! rate-limit ("Enabling Rate Limits using Envoy"): HTTP_FILTER patches inserting
//! `envoy.filters.http.local_ratelimit` or `envoy.filters.http.ratelimit` on a sidecar's inbound
//! or outbound listeners or a gateway's (`match.context`; ANY is all three), and HTTP_ROUTE /
//! VIRTUAL_HOST MERGE patches adding a local limit (`typed_per_filter_config`) or the
//! `rate_limits` actions both filters make descriptors with. Every other patch
//! makes the whole EnvoyFilter "not supported, ignored" — a filter is never applied half-way.
//! Patch values are Envoy's own JSON (snake_case or camelCase, `@type` or a `TypedStruct`).

use std::collections::BTreeMap;
use std::time::Duration;

use kube::CustomResource;
use serde_json::{Map, Value};

use crate::proto::istio_message;

istio_message! {
    #[derive(CustomResource)]
    #[kube(
        group = "networking.istio.io",
        version = "v1alpha3",
        kind = "EnvoyFilter",
        namespaced,
        derive = "PartialEq",
        category = "istio-io",
        category = "networking-istio-io"
    )]
    pub struct EnvoyFilterSpec {
        pub workload_selector: Option<WorkloadSelector>,
        pub config_patches: Vec<EnvoyConfigObjectPatch>,
        pub priority: i32,
        #[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
        pub target_refs: Vec<Value>,
    }
}

istio_message! {
    /// `labels` (not `matchLabels`): EnvoyFilter's own selector.
    pub struct WorkloadSelector {
        pub labels: BTreeMap<String, String>,
    }
}

istio_message! {
    pub struct EnvoyConfigObjectPatch {
        pub apply_to: String,
        #[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
        pub r#match: Option<Value>,
        #[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
        pub patch: Option<Value>,
    }
}

/// A token bucket: `tokens_per_fill` every `fill_interval`, up to `max_tokens`.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenBucket {
    pub max_tokens: u32,
    pub tokens_per_fill: u32,
    pub fill_interval: Duration,
}

/// `local_ratelimit`'s settings. Percentages are Envoy's defaults (0) when unset.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalRateLimit {
    pub stat_prefix: String,
    pub token_bucket: Option<TokenBucket>,
    pub enabled_percent: f64,
    pub enforced_percent: f64,
    pub response_headers: BTreeMap<String, String>,
    /// The ports it applies to (a route patch's, by context: the app's, the service's or the
    /// gateway listener's); empty: all.
    pub ports: Vec<u16>,
    /// `descriptors`: buckets of their own for the requests whose descriptors match one.
    pub descriptors: Vec<LocalDescriptor>,
    /// Envoy's default: true.
    pub always_consume_default_token_bucket: bool,
    /// The filter's own `rate_limits`: when set, the routes' and virtual hosts' are not used.
    pub rate_limits: Option<Vec<Vec<RateLimitAction>>>,
    pub vh_rate_limits: VhRateLimits,
    /// `max_dynamic_descriptors` (Envoy's default, 20, when unset).
    pub max_dynamic_descriptors: Option<u32>,
}

/// One of a local limit's `descriptors`: (key, value) entries (an empty value matches any) and
/// the bucket of the requests whose descriptor matches them.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalDescriptor {
    pub entries: Vec<(String, String)>,
    pub token_bucket: TokenBucket,
}

/// Envoy's `vh_rate_limits`: whether a virtual host's `rate_limits` count next to a route's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VhRateLimits {
    /// Only for a route without its own (Envoy's default).
    #[default]
    Override,
    Include,
    Ignore,
}

/// One `rate_limits` entry, and where it was patched in.
#[derive(Clone, Debug, PartialEq)]
pub struct RateLimitRule {
    pub actions: Vec<RateLimitAction>,
    /// The ports of the route (as [`LocalRateLimit::ports`]); empty: every port.
    pub ports: Vec<u16>,
    /// A VIRTUAL_HOST patch's rather than an HTTP_ROUTE patch's.
    pub virtual_host: bool,
}

/// `ratelimit`'s settings.
#[derive(Clone, Debug, PartialEq)]
pub struct GlobalRateLimit {
    pub domain: String,
    pub failure_mode_deny: bool,
    pub timeout: Option<Duration>,
    /// `host:port`, from the `outbound|PORT||HOST` cluster name.
    pub service: String,
}

/// One `rate_limits` entry's actions.
#[derive(Clone, Debug, PartialEq)]
pub enum RateLimitAction {
    RequestHeaders {
        header_name: String,
        descriptor_key: String,
        skip_if_absent: bool,
    },
    RemoteAddress,
    GenericKey {
        descriptor_key: String,
        descriptor_value: String,
    },
    HeaderValueMatch {
        descriptor_key: String,
        descriptor_value: String,
        expect_match: bool,
        headers: Vec<HeaderCondition>,
    },
}

/// A header condition of `header_value_match`.
#[derive(Clone, Debug, PartialEq)]
pub struct HeaderCondition {
    pub name: String,
    pub value: Option<StringCondition>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum StringCondition {
    Exact(String),
    Prefix(String),
    Regex(String),
}

/// Where a patch applies (Istio's `match.context`): a sidecar's inbound or outbound requests,
/// or a gateway's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Context {
    Inbound,
    Outbound,
    Gateway,
}

impl Context {
    pub const ALL: [Context; 3] = [Context::Inbound, Context::Outbound, Context::Gateway];

    /// Istio's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Context::Inbound => "SIDECAR_INBOUND",
            Context::Outbound => "SIDECAR_OUTBOUND",
            Context::Gateway => "GATEWAY",
        }
    }
}

/// What an EnvoyFilter's rate-limit patches add up to, in each context.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RateLimits {
    pub inbound: ContextRateLimits,
    pub outbound: ContextRateLimits,
    pub gateway: ContextRateLimits,
}

impl RateLimits {
    pub fn of(&self, context: Context) -> &ContextRateLimits {
        match context {
            Context::Inbound => &self.inbound,
            Context::Outbound => &self.outbound,
            Context::Gateway => &self.gateway,
        }
    }

    fn of_mut(&mut self, context: Context) -> &mut ContextRateLimits {
        match context {
            Context::Inbound => &mut self.inbound,
            Context::Outbound => &mut self.outbound,
            Context::Gateway => &mut self.gateway,
        }
    }
}

/// The rate limits of one context: the filters, and the routes' `rate_limits` both use.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContextRateLimits {
    /// An HTTP_FILTER patch inserts `local_ratelimit` (without it, Envoy has no filter to use a
    /// route's local limit).
    pub local_filter: bool,
    pub local: Option<LocalRateLimit>,
    pub global: Option<GlobalRateLimit>,
    /// The routes' and virtual hosts' `rate_limits`, which both filters use.
    pub rules: Vec<RateLimitRule>,
}

/// How an EnvoyFilter reads.
#[derive(Clone, Debug, PartialEq)]
pub enum Reading {
    /// Every patch is a rate-limit patch Trellis applies.
    RateLimits(Box<RateLimits>),
    /// A patch Trellis does not support (its field and why): the whole filter is ignored.
    Unsupported { field: String, reason: String },
    /// A rate-limit patch with a bad value (its field and why): the filter is rejected.
    Invalid(Vec<(String, String)>),
}

enum Fault {
    Unsupported(String, String),
    Invalid(String, String),
}

type Read<T> = Result<T, Fault>;

fn unsupported<T>(field: &str, reason: impl Into<String>) -> Read<T> {
    Err(Fault::Unsupported(field.to_owned(), reason.into()))
}

fn invalid<T>(field: &str, message: impl Into<String>) -> Read<T> {
    Err(Fault::Invalid(field.to_owned(), message.into()))
}

/// Envoy's JSON accepts snake_case and camelCase names: looks a key up either way.
fn get<'a>(map: &'a Map<String, Value>, snake: &str) -> Option<&'a Value> {
    map.get(snake).or_else(|| map.get(&camel(snake)))
}

fn camel(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut upper = false;
    for c in snake.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Only these keys (snake_case, or their camelCase form) may appear in `map`.
fn only(map: &Map<String, Value>, allowed: &[&str], field: &str) -> Read<()> {
    for key in map.keys() {
        // A typed config's own type, read by `typed`.
        if key == "@type" {
            continue;
        }
        if !allowed.iter().any(|a| a == key || camel(a) == *key) {
            return unsupported(&format!("{field}.{key}"), format!("{key:?} is not supported"));
        }
    }
    Ok(())
}

fn object<'a>(v: &'a Value, field: &str) -> Read<&'a Map<String, Value>> {
    match v {
        Value::Object(m) => Ok(m),
        _ => invalid(field, "must be a mapping"),
    }
}

fn string<'a>(v: Option<&'a Value>, field: &str) -> Read<&'a str> {
    match v {
        None => Ok(""),
        Some(Value::String(s)) => Ok(s),
        Some(_) => invalid(field, "must be a string"),
    }
}

fn boolean(v: Option<&Value>, field: &str) -> Read<bool> {
    match v {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => invalid(field, "must be true or false"),
    }
}

/// A positive 32-bit count (Envoy's `uint32` with `gt: 0`); a proto JSON number may be a string.
fn count(v: Option<&Value>, field: &str) -> Read<Option<u32>> {
    let n = match v {
        None => return Ok(None),
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.parse::<i64>().ok(),
        Some(_) => None,
    };
    match n {
        Some(n) if n >= 1 && n <= i64::from(u32::MAX) => Ok(Some(n as u32)),
        Some(n) => invalid(field, format!("{n} must be at least 1")),
        None => invalid(field, "must be a whole number"),
    }
}

/// A proto JSON duration ("60s", "0.5s") or `{seconds, nanos}`.
fn duration(v: Option<&Value>, field: &str) -> Read<Option<Duration>> {
    let text = match v {
        None => return Ok(None),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(m)) => {
            let secs =
                m.get("seconds").and_then(|s| s.as_f64().or_else(|| s.as_str()?.parse().ok())).unwrap_or(0.0);
            let nanos = m.get("nanos").and_then(Value::as_f64).unwrap_or(0.0);
            format!("{}s", secs + nanos / 1e9)
        }
        Some(_) => return invalid(field, "must be a duration such as \"60s\""),
    };
    let seconds = text.strip_suffix('s').and_then(|n| n.parse::<f64>().ok()).ok_or_else(|| {
        Fault::Invalid(field.to_owned(), format!("{text:?} is not a duration such as \"60s\""))
    })?;
    if !seconds.is_finite() || seconds < 0.0 {
        return invalid(field, format!("{text:?} is negative"));
    }
    if seconds > 315_576_000_000.0 {
        return invalid(field, format!("{text:?} is too long"));
    }
    Ok(Some(Duration::from_secs_f64(seconds)))
}

const LOCAL: &str = "envoy.filters.http.local_ratelimit";
const GLOBAL: &str = "envoy.filters.http.ratelimit";
const LOCAL_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";
const GLOBAL_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit";
const TYPED_STRUCT: [&str; 2] =
    ["type.googleapis.com/udpa.type.v1.TypedStruct", "type.googleapis.com/xds.type.v3.TypedStruct"];

/// Reads an EnvoyFilter.
pub fn read(spec: &EnvoyFilterSpec) -> Reading {
    match read_all(spec) {
        Ok(limits) => Reading::RateLimits(Box::new(limits)),
        Err(Fault::Unsupported(field, reason)) => Reading::Unsupported { field, reason },
        Err(Fault::Invalid(field, message)) => Reading::Invalid(vec![(field, message)]),
    }
}

fn read_all(spec: &EnvoyFilterSpec) -> Read<RateLimits> {
    if !spec.target_refs.is_empty() {
        return unsupported(
            "spec.targetRefs",
            "targetRefs (attaching to a Gateway API gateway or a waypoint) are not supported; select workloads with workloadSelector",
        );
    }
    if spec.config_patches.is_empty() {
        return unsupported("spec.configPatches", "no patches");
    }
    let mut limits = RateLimits::default();
    for (i, p) in spec.config_patches.iter().enumerate() {
        let field = format!("spec.configPatches[{i}]");
        let empty = Map::new();
        let m = match &p.r#match {
            Some(v) => object(v, &format!("{field}.match"))?,
            None => &empty,
        };
        let context = string(m.get("context"), &format!("{field}.match.context"))?;
        let contexts: Vec<Context> = match context {
            "" | "ANY" => Context::ALL.to_vec(),
            "SIDECAR_INBOUND" => vec![Context::Inbound],
            "SIDECAR_OUTBOUND" => vec![Context::Outbound],
            "GATEWAY" => vec![Context::Gateway],
            other => {
                return unsupported(
                    &format!("{field}.match.context"),
                    format!(
                        "context {other}: Trellis applies rate limits in SIDECAR_INBOUND, SIDECAR_OUTBOUND and GATEWAY only"
                    ),
                );
            }
        };
        if !matches!(p.apply_to.as_str(), "HTTP_FILTER" | "HTTP_ROUTE" | "VIRTUAL_HOST") {
            return unsupported(
                &format!("{field}.applyTo"),
                format!(
                    "applyTo {}: only rate-limit patches (HTTP_FILTER, HTTP_ROUTE, VIRTUAL_HOST) are read",
                    p.apply_to
                ),
            );
        }
        let patch = match &p.patch {
            None | Some(Value::Null) => &empty,
            Some(v) => object(v, &format!("{field}.patch"))?,
        };
        only(patch, &["operation", "value"], &format!("{field}.patch"))?;
        let operation = string(patch.get("operation"), &format!("{field}.patch.operation"))?;
        // The value is looked at once the operation is one Trellis reads (REMOVE has none).
        let value = || object(patch.get("value").unwrap_or(&Value::Null), &format!("{field}.patch.value"));
        match p.apply_to.as_str() {
            "HTTP_FILTER" => {
                only(m, &["context", "listener"], &format!("{field}.match"))?;
                http_filter_match(m.get("listener"), &format!("{field}.match.listener"))?;
                if !matches!(operation, "INSERT_BEFORE" | "INSERT_AFTER" | "INSERT_FIRST" | "ADD") {
                    return unsupported(
                        &format!("{field}.patch.operation"),
                        format!("operation {operation:?} on an HTTP filter"),
                    );
                }
                let value = value()?;
                for &c in &contexts {
                    http_filter(value, &format!("{field}.patch.value"), limits.of_mut(c))?;
                }
            }
            // HTTP_ROUTE or VIRTUAL_HOST.
            _ => {
                only(m, &["context", "route_configuration"], &format!("{field}.match"))?;
                if operation != "MERGE" {
                    return unsupported(
                        &format!("{field}.patch.operation"),
                        format!("operation {operation:?} on a route"),
                    );
                }
                let value = value()?;
                let (port, contexts) = route_scope(
                    get(m, "route_configuration"),
                    &format!("{field}.match.routeConfiguration"),
                    &contexts,
                )?;
                let virtual_host = p.apply_to == "VIRTUAL_HOST";
                for c in contexts {
                    route_merge(
                        value,
                        &format!("{field}.patch.value"),
                        port,
                        virtual_host,
                        limits.of_mut(c),
                    )?;
                }
            }
        }
    }
    Ok(limits)
}

fn http_filter_match(listener: Option<&Value>, field: &str) -> Read<()> {
    let Some(listener) = listener else { return Ok(()) };
    let listener = object(listener, field)?;
    only(listener, &["filter_chain"], field)?;
    let Some(chain) = get(listener, "filter_chain") else { return Ok(()) };
    let chain = object(chain, &format!("{field}.filterChain"))?;
    only(chain, &["filter"], &format!("{field}.filterChain"))?;
    let Some(filter) = chain.get("filter") else { return Ok(()) };
    let filter = object(filter, &format!("{field}.filterChain.filter"))?;
    only(filter, &["name", "sub_filter"], &format!("{field}.filterChain.filter"))?;
    let name = string(filter.get("name"), &format!("{field}.filterChain.filter.name"))?;
    if !name.is_empty() && name != "envoy.filters.network.http_connection_manager" {
        return unsupported(&format!("{field}.filterChain.filter.name"), format!("filter {name:?}"));
    }
    Ok(())
}

/// The typed config of a filter: `@type` directly, or a TypedStruct's `type_url` and `value`.
fn typed<'a>(v: &'a Value, field: &str) -> Read<(&'a str, &'a Map<String, Value>, String)> {
    let m = object(v, field)?;
    let at_type = string(m.get("@type"), &format!("{field}.@type"))?;
    if TYPED_STRUCT.contains(&at_type) {
        only(m, &["@type", "type_url", "value"], field)?;
        let url = string(get(m, "type_url"), &format!("{field}.type_url"))?;
        let value = object(m.get("value").unwrap_or(&Value::Null), &format!("{field}.value"))?;
        return Ok((url, value, format!("{field}.value")));
    }
    Ok((at_type, m, field.to_owned()))
}

fn http_filter(value: &Map<String, Value>, field: &str, limits: &mut ContextRateLimits) -> Read<()> {
    only(value, &["name", "typed_config"], field)?;
    let name = string(value.get("name"), &format!("{field}.name"))?;
    let Some(config) = get(value, "typed_config") else {
        return unsupported(&format!("{field}.typed_config"), "a filter without typed_config");
    };
    let (url, config, config_field) = typed(config, &format!("{field}.typed_config"))?;
    match (name, url) {
        (LOCAL, LOCAL_TYPE) => {
            let local = local(config, &config_field, false)?;
            limits.local_filter = true;
            // A filter-level limit with neither a bucket nor descriptors only enables the filter
            // for the routes' limits.
            if local.limits_something() || limits.local.is_none() {
                limits.local = Some(local);
            }
        }
        (GLOBAL, GLOBAL_TYPE) => limits.global = Some(global(config, &config_field)?),
        _ => {
            return unsupported(
                &format!("{field}.name"),
                format!("filter {name:?} ({url}): only {LOCAL} and {GLOBAL} are read"),
            );
        }
    }
    Ok(())
}

/// The port a route patch's `routeConfiguration` names, and the contexts among `contexts` whose
/// virtual hosts it can match. Trellis scopes route patches by port only: an inbound virtual
/// host `inbound|http|PORT` (the app's port), a gateway's `*:PORT` (its listener's port), or
/// `portNumber` (the app's, the service's or the gateway's port, by context); `None`: every
/// port. A patch for one route of a virtual host, or a virtual host of one host, is not
/// supported.
fn route_scope(rc: Option<&Value>, field: &str, contexts: &[Context]) -> Read<(Option<u16>, Vec<Context>)> {
    let Some(rc) = rc else { return Ok((None, contexts.to_vec())) };
    let rc = object(rc, field)?;
    only(rc, &["port_number", "vhost"], field)?;
    let mut port = match get(rc, "port_number") {
        None => None,
        Some(p) => match p.as_u64().and_then(|p| u16::try_from(p).ok()).filter(|&p| p != 0) {
            Some(p) => Some(p),
            None => return invalid(&format!("{field}.portNumber"), format!("{p} is not a port")),
        },
    };
    let mut contexts = contexts.to_vec();
    if let Some(vhost) = rc.get("vhost") {
        let vf = format!("{field}.vhost");
        let vhost = object(vhost, &vf)?;
        only(vhost, &["name", "route"], &vf)?;
        if let Some(route) = vhost.get("route") {
            let rf = format!("{vf}.route");
            let route = object(route, &rf)?;
            only(route, &["action"], &rf)?;
            let action = string(route.get("action"), &format!("{rf}.action"))?;
            if !matches!(action, "" | "ANY") {
                return unsupported(&format!("{rf}.action"), format!("routes with action {action}"));
            }
        }
        let name = string(vhost.get("name"), &format!("{vf}.name"))?;
        if !name.is_empty() {
            let (named_context, named_port) = if let Some(p) = name.strip_prefix("inbound|http|") {
                (Context::Inbound, p)
            } else if let Some(p) = name.strip_prefix("*:") {
                (Context::Gateway, p)
            } else {
                return unsupported(
                    &format!("{vf}.name"),
                    format!(
                        "virtual host {name:?}: Trellis scopes route patches by port only (inbound|http|PORT, a gateway's *:PORT, or portNumber)"
                    ),
                );
            };
            let named = named_port.parse::<u16>().ok().filter(|&p| p != 0 && port.is_none_or(|q| q == p));
            let Some(named) = named else {
                return unsupported(
                    &format!("{vf}.name"),
                    format!("virtual host {name:?}: its port is not portNumber's"),
                );
            };
            if !contexts.contains(&named_context) {
                let shown: Vec<&str> = contexts.iter().map(|c| c.name()).collect();
                return unsupported(
                    &format!("{vf}.name"),
                    format!(
                        "virtual host {name:?} is {}'s, not {}'s: the patch would match nothing",
                        named_context.name(),
                        shown.join("/")
                    ),
                );
            }
            port = Some(named);
            contexts = vec![named_context];
        }
    }
    Ok((port, contexts))
}

/// A MERGE into a route (`route: {rate_limits}`, `typed_per_filter_config`) or a virtual host
/// (`rate_limits`, `typed_per_filter_config`).
fn route_merge(
    value: &Map<String, Value>,
    field: &str,
    port: Option<u16>,
    virtual_host: bool,
    limits: &mut ContextRateLimits,
) -> Read<()> {
    let ports: Vec<u16> = port.into_iter().collect();
    if virtual_host {
        only(value, &["typed_per_filter_config", "rate_limits"], field)?;
        if let Some(rules) = get(value, "rate_limits") {
            for actions in rate_limits(rules, &format!("{field}.rate_limits"))? {
                limits.rules.push(RateLimitRule { actions, ports: ports.clone(), virtual_host });
            }
        }
    } else {
        only(value, &["typed_per_filter_config", "route"], field)?;
        if let Some(route) = value.get("route") {
            // `route: {rate_limits: [...]}`: the route action's.
            let route = object(route, &format!("{field}.route"))?;
            only(route, &["rate_limits"], &format!("{field}.route"))?;
            if let Some(rules) = get(route, "rate_limits") {
                for actions in rate_limits(rules, &format!("{field}.route.rate_limits"))? {
                    limits.rules.push(RateLimitRule { actions, ports: ports.clone(), virtual_host });
                }
            }
        }
    }
    if let Some(per_filter) = get(value, "typed_per_filter_config") {
        let per_filter_field = format!("{field}.typed_per_filter_config");
        let per_filter = object(per_filter, &per_filter_field)?;
        for (name, config) in per_filter {
            let f = format!("{per_filter_field}.{name}");
            let (url, config, config_field) = typed(config, &f)?;
            if name != LOCAL || url != LOCAL_TYPE {
                return unsupported(&f, format!("per-route config of {name:?} ({url})"));
            }
            let mut limit = local(config, &config_field, true)?;
            limit.ports = ports.clone();
            limits.local = Some(limit);
        }
    }
    Ok(())
}

/// Envoy's shortest `fill_interval`.
const MIN_FILL_INTERVAL: Duration = Duration::from_millis(50);

/// The most descriptors, and entries in one, a local limit may have: far beyond what a person
/// writes, and a bound on what a request's matching walks through.
const MAX_DESCRIPTORS: usize = 1000;
const MAX_ENTRIES: usize = 64;
/// The largest `max_dynamic_descriptors`: a bound on the buckets one wildcard descriptor keeps.
const MAX_DYNAMIC_DESCRIPTORS: u32 = 100_000;

impl LocalRateLimit {
    /// Whether it limits anything by itself (a filter-level config may only enable the filter).
    pub fn limits_something(&self) -> bool {
        self.token_bucket.is_some() || !self.descriptors.is_empty()
    }
}

/// A local limit's config: the filter's (`per_route` false) or a route's, which must have a
/// bucket as Envoy requires.
fn local(c: &Map<String, Value>, field: &str, per_route: bool) -> Read<LocalRateLimit> {
    only(
        c,
        &[
            "stat_prefix",
            "token_bucket",
            "filter_enabled",
            "filter_enforced",
            "response_headers_to_add",
            "descriptors",
            "always_consume_default_token_bucket",
            "rate_limits",
            "vh_rate_limits",
            "max_dynamic_descriptors",
            "stage",
        ],
        field,
    )?;
    if get(c, "stage").is_some_and(|s| s.as_u64() != Some(0)) {
        return unsupported(&format!("{field}.stage"), "stages other than 0");
    }
    let token_bucket =
        get(c, "token_bucket").map(|b| token_bucket(b, &format!("{field}.token_bucket"))).transpose()?;
    if per_route && token_bucket.is_none() {
        return invalid(&format!("{field}.token_bucket"), "required in a route's local rate limit");
    }
    let descriptors = match get(c, "descriptors") {
        None => Vec::new(),
        Some(d) => descriptors(d, &format!("{field}.descriptors"))?,
    };
    let rate_limits =
        get(c, "rate_limits").map(|r| rate_limits(r, &format!("{field}.rate_limits"))).transpose()?;
    let vh_rate_limits = match get(c, "vh_rate_limits") {
        None => VhRateLimits::Override,
        Some(v) => match (v.as_str(), v.as_u64()) {
            (Some("OVERRIDE"), _) | (_, Some(0)) => VhRateLimits::Override,
            (Some("INCLUDE"), _) | (_, Some(1)) => VhRateLimits::Include,
            (Some("IGNORE"), _) | (_, Some(2)) => VhRateLimits::Ignore,
            _ => {
                return invalid(
                    &format!("{field}.vh_rate_limits"),
                    format!("{v} is not OVERRIDE, INCLUDE or IGNORE"),
                );
            }
        },
    };
    let max_dynamic_descriptors = match get(c, "max_dynamic_descriptors") {
        None => None,
        // A UInt32Value: `{value: n}` or a plain number.
        Some(Value::Object(m)) => count(m.get("value"), &format!("{field}.max_dynamic_descriptors.value"))?,
        v => count(v, &format!("{field}.max_dynamic_descriptors"))?,
    };
    if let Some(n) = max_dynamic_descriptors.filter(|&n| n > MAX_DYNAMIC_DESCRIPTORS) {
        return invalid(
            &format!("{field}.max_dynamic_descriptors"),
            format!("{n} is more than {MAX_DYNAMIC_DESCRIPTORS}"),
        );
    }
    let mut response_headers = BTreeMap::new();
    if let Some(list) = get(c, "response_headers_to_add") {
        let f = format!("{field}.response_headers_to_add");
        let list = list.as_array().ok_or_else(|| Fault::Invalid(f.clone(), "must be a list".into()))?;
        for (i, h) in list.iter().enumerate() {
            let hf = format!("{f}[{i}]");
            let h = object(h, &hf)?;
            only(h, &["header", "append", "append_action", "keep_empty_value"], &hf)?;
            let header = object(h.get("header").unwrap_or(&Value::Null), &format!("{hf}.header"))?;
            only(header, &["key", "value"], &format!("{hf}.header"))?;
            let key = string(header.get("key"), &format!("{hf}.header.key"))?;
            if key.is_empty() {
                return invalid(&format!("{hf}.header.key"), "required");
            }
            let value = string(header.get("value"), &format!("{hf}.header.value"))?;
            response_headers.insert(key.to_ascii_lowercase(), value.to_owned());
        }
    }
    Ok(LocalRateLimit {
        stat_prefix: string(get(c, "stat_prefix"), &format!("{field}.stat_prefix"))?.to_owned(),
        token_bucket,
        enabled_percent: percent(get(c, "filter_enabled"), &format!("{field}.filter_enabled"))?,
        enforced_percent: percent(get(c, "filter_enforced"), &format!("{field}.filter_enforced"))?,
        response_headers,
        ports: Vec::new(),
        descriptors,
        always_consume_default_token_bucket: bool_value(
            get(c, "always_consume_default_token_bucket"),
            &format!("{field}.always_consume_default_token_bucket"),
            true,
        )?,
        rate_limits,
        vh_rate_limits,
        max_dynamic_descriptors,
    })
}

/// A `BoolValue` (`{value: false}`) or a plain boolean; `default` when unset.
fn bool_value(v: Option<&Value>, field: &str, default: bool) -> Read<bool> {
    match v {
        None => Ok(default),
        Some(Value::Object(m)) => {
            only(m, &["value"], field)?;
            boolean(m.get("value"), &format!("{field}.value"))
        }
        v => boolean(v, field),
    }
}

fn token_bucket(b: &Value, f: &str) -> Read<TokenBucket> {
    let b = object(b, f)?;
    only(b, &["max_tokens", "tokens_per_fill", "fill_interval"], f)?;
    let max_tokens = count(get(b, "max_tokens"), &format!("{f}.max_tokens"))?
        .ok_or_else(|| Fault::Invalid(format!("{f}.max_tokens"), "required".into()))?;
    let tokens_per_fill = count(get(b, "tokens_per_fill"), &format!("{f}.tokens_per_fill"))?.unwrap_or(1);
    let fill_interval = duration(get(b, "fill_interval"), &format!("{f}.fill_interval"))?
        .ok_or_else(|| Fault::Invalid(format!("{f}.fill_interval"), "required".into()))?;
    if fill_interval.is_zero() {
        return invalid(&format!("{f}.fill_interval"), "must be more than 0s");
    }
    // Envoy refuses anything shorter, for the filter's bucket and the descriptors' alike.
    if fill_interval < MIN_FILL_INTERVAL {
        return invalid(&format!("{f}.fill_interval"), format!("{fill_interval:?} is less than 50ms"));
    }
    Ok(TokenBucket { max_tokens, tokens_per_fill, fill_interval })
}

/// A local limit's `descriptors`: each a non-empty list of entries with a key, and a bucket; no
/// two with the same entries (Envoy refuses them too).
fn descriptors(v: &Value, field: &str) -> Read<Vec<LocalDescriptor>> {
    let list = v.as_array().ok_or_else(|| Fault::Invalid(field.to_owned(), "must be a list".into()))?;
    if list.len() > MAX_DESCRIPTORS {
        return invalid(field, format!("{} descriptors: at most {MAX_DESCRIPTORS}", list.len()));
    }
    let mut out: Vec<LocalDescriptor> = Vec::with_capacity(list.len());
    for (i, d) in list.iter().enumerate() {
        let df = format!("{field}[{i}]");
        let d = object(d, &df)?;
        only(d, &["entries", "token_bucket"], &df)?;
        let ef = format!("{df}.entries");
        let entries = match get(d, "entries") {
            Some(Value::Array(entries)) if !entries.is_empty() => entries,
            Some(Value::Array(_)) | None => return invalid(&ef, "at least one entry is required"),
            Some(_) => return invalid(&ef, "must be a list"),
        };
        if entries.len() > MAX_ENTRIES {
            return invalid(&ef, format!("{} entries: at most {MAX_ENTRIES}", entries.len()));
        }
        let mut pairs = Vec::with_capacity(entries.len());
        for (j, e) in entries.iter().enumerate() {
            let f = format!("{ef}[{j}]");
            let e = object(e, &f)?;
            only(e, &["key", "value"], &f)?;
            let key = string(e.get("key"), &format!("{f}.key"))?;
            if key.is_empty() {
                return invalid(&format!("{f}.key"), "required");
            }
            pairs.push((key.to_owned(), string(e.get("value"), &format!("{f}.value"))?.to_owned()));
        }
        if out.iter().any(|o| o.entries == pairs) {
            return invalid(&ef, "the same entries as an earlier descriptor");
        }
        let bf = format!("{df}.token_bucket");
        let Some(bucket) = get(d, "token_bucket") else { return invalid(&bf, "required") };
        out.push(LocalDescriptor { entries: pairs, token_bucket: token_bucket(bucket, &bf)? });
    }
    Ok(out)
}

/// A `RuntimeFractionalPercent`: its default value as a percentage (0 when unset, as Envoy).
fn percent(v: Option<&Value>, field: &str) -> Read<f64> {
    let Some(v) = v else { return Ok(0.0) };
    let m = object(v, field)?;
    only(m, &["runtime_key", "default_value"], field)?;
    let Some(d) = get(m, "default_value") else { return Ok(0.0) };
    let f = format!("{field}.default_value");
    let d = object(d, &f)?;
    only(d, &["numerator", "denominator"], &f)?;
    let numerator = match d.get("numerator") {
        None => 0.0,
        Some(n) => match n.as_f64() {
            Some(n) if n >= 0.0 && n.fract() == 0.0 => n,
            _ => {
                return invalid(&format!("{f}.numerator"), format!("{n} is not a whole number of 0 or more"));
            }
        },
    };
    let denominator = match string(d.get("denominator"), &format!("{f}.denominator"))? {
        "" | "HUNDRED" => 100.0,
        "TEN_THOUSAND" => 10_000.0,
        "MILLION" => 1_000_000.0,
        other => {
            return invalid(
                &format!("{f}.denominator"),
                format!("{other:?} is not HUNDRED, TEN_THOUSAND or MILLION"),
            );
        }
    };
    // Envoy caps a fraction above 1 at 100 %.
    Ok((numerator / denominator * 100.0).min(100.0))
}

fn global(c: &Map<String, Value>, field: &str) -> Read<GlobalRateLimit> {
    only(
        c,
        &["domain", "failure_mode_deny", "timeout", "rate_limit_service", "stage", "request_type"],
        field,
    )?;
    if get(c, "stage").is_some_and(|s| s.as_u64() != Some(0)) {
        return unsupported(&format!("{field}.stage"), "stages other than 0");
    }
    let domain = string(c.get("domain"), &format!("{field}.domain"))?;
    if domain.is_empty() {
        return invalid(&format!("{field}.domain"), "required");
    }
    let sf = format!("{field}.rate_limit_service");
    let service = object(get(c, "rate_limit_service").unwrap_or(&Value::Null), &sf)?;
    only(service, &["grpc_service", "transport_api_version"], &sf)?;
    let version = string(get(service, "transport_api_version"), &format!("{sf}.transport_api_version"))?;
    if !matches!(version, "" | "V3") {
        return unsupported(&format!("{sf}.transport_api_version"), format!("{version}: only V3"));
    }
    let gf = format!("{sf}.grpc_service");
    let grpc = object(get(service, "grpc_service").unwrap_or(&Value::Null), &gf)?;
    only(grpc, &["envoy_grpc", "timeout"], &gf)?;
    let ef = format!("{gf}.envoy_grpc");
    let envoy_grpc = object(get(grpc, "envoy_grpc").unwrap_or(&Value::Null), &ef)?;
    only(envoy_grpc, &["cluster_name", "authority"], &ef)?;
    let cluster = string(get(envoy_grpc, "cluster_name"), &format!("{ef}.cluster_name"))?;
    let service = service_of_cluster(cluster).ok_or_else(|| {
        Fault::Invalid(
            format!("{ef}.cluster_name"),
            format!("{cluster:?} is not an outbound|PORT||HOST cluster"),
        )
    })?;
    Ok(GlobalRateLimit {
        domain: domain.to_owned(),
        failure_mode_deny: boolean(get(c, "failure_mode_deny"), &format!("{field}.failure_mode_deny"))?,
        timeout: duration(get(c, "timeout"), &format!("{field}.timeout"))?,
        service,
    })
}

/// `outbound|8081||ratelimit.default.svc.cluster.local` -> `ratelimit.default.svc.cluster.local:8081`.
pub fn service_of_cluster(cluster: &str) -> Option<String> {
    let mut parts = cluster.split('|');
    let (direction, port, subset, host) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if direction != "outbound" || !subset.is_empty() || host.is_empty() || parts.next().is_some() {
        return None;
    }
    let port: u16 = port.parse().ok().filter(|&p| p != 0)?;
    Some(format!("{host}:{port}"))
}

/// A `rate_limits` list: each entry's actions.
fn rate_limits(v: &Value, field: &str) -> Read<Vec<Vec<RateLimitAction>>> {
    let list = v.as_array().ok_or_else(|| Fault::Invalid(field.to_owned(), "must be a list".into()))?;
    let mut rules = Vec::with_capacity(list.len());
    for (i, rule) in list.iter().enumerate() {
        let rf = format!("{field}[{i}]");
        let rule = object(rule, &rf)?;
        only(rule, &["actions", "stage"], &rf)?;
        if get(rule, "stage").is_some_and(|s| s.as_u64() != Some(0)) {
            return unsupported(&format!("{rf}.stage"), "stages other than 0");
        }
        let af = format!("{rf}.actions");
        let actions = get(rule, "actions")
            .and_then(Value::as_array)
            .ok_or_else(|| Fault::Invalid(af.clone(), "a list is required".into()))?;
        let mut out = Vec::with_capacity(actions.len());
        for (j, a) in actions.iter().enumerate() {
            out.push(action(a, &format!("{af}[{j}]"))?);
        }
        rules.push(out);
    }
    Ok(rules)
}

fn action(v: &Value, field: &str) -> Read<RateLimitAction> {
    let a = object(v, field)?;
    if a.len() != 1 {
        return invalid(field, "one action per entry");
    }
    let Some((key, body)) = a.iter().next() else { return invalid(field, "one action per entry") };
    let f = format!("{field}.{key}");
    let empty = Map::new();
    let body = match body {
        Value::Object(m) => m,
        Value::Null => &empty,
        _ => return invalid(&f, "must be a mapping"),
    };
    Ok(match key.as_str() {
        "request_headers" | "requestHeaders" => {
            only(body, &["header_name", "descriptor_key", "skip_if_absent"], &f)?;
            let header_name = string(get(body, "header_name"), &format!("{f}.header_name"))?;
            let descriptor_key = string(get(body, "descriptor_key"), &format!("{f}.descriptor_key"))?;
            if header_name.is_empty() || descriptor_key.is_empty() {
                return invalid(&f, "header_name and descriptor_key are required");
            }
            RateLimitAction::RequestHeaders {
                header_name: header_name.to_owned(),
                descriptor_key: descriptor_key.to_owned(),
                skip_if_absent: boolean(get(body, "skip_if_absent"), &format!("{f}.skip_if_absent"))?,
            }
        }
        "remote_address" | "remoteAddress" => {
            only(body, &[], &f)?;
            RateLimitAction::RemoteAddress
        }
        "generic_key" | "genericKey" => {
            only(body, &["descriptor_key", "descriptor_value"], &f)?;
            let descriptor_value = string(get(body, "descriptor_value"), &format!("{f}.descriptor_value"))?;
            if descriptor_value.is_empty() {
                return invalid(&format!("{f}.descriptor_value"), "required");
            }
            RateLimitAction::GenericKey {
                descriptor_key: string(get(body, "descriptor_key"), &format!("{f}.descriptor_key"))?
                    .to_owned(),
                descriptor_value: descriptor_value.to_owned(),
            }
        }
        "header_value_match" | "headerValueMatch" => {
            only(body, &["descriptor_key", "descriptor_value", "expect_match", "headers"], &f)?;
            let descriptor_value = string(get(body, "descriptor_value"), &format!("{f}.descriptor_value"))?;
            if descriptor_value.is_empty() {
                return invalid(&format!("{f}.descriptor_value"), "required");
            }
            let expect_match = match get(body, "expect_match") {
                None => true,
                // A BoolValue: `{value: false}` or a plain boolean.
                Some(Value::Object(m)) => boolean(m.get("value"), &format!("{f}.expect_match.value"))?,
                v => boolean(v, &format!("{f}.expect_match"))?,
            };
            let hf = format!("{f}.headers");
            let list = get(body, "headers")
                .and_then(Value::as_array)
                .ok_or_else(|| Fault::Invalid(hf.clone(), "a list is required".into()))?;
            let mut headers = Vec::with_capacity(list.len());
            for (k, h) in list.iter().enumerate() {
                headers.push(header_condition(h, &format!("{hf}[{k}]"))?);
            }
            RateLimitAction::HeaderValueMatch {
                descriptor_key: string(get(body, "descriptor_key"), &format!("{f}.descriptor_key"))?
                    .to_owned(),
                descriptor_value: descriptor_value.to_owned(),
                expect_match,
                headers,
            }
        }
        other => {
            return unsupported(
                &f,
                format!(
                    "rate-limit action {other:?}: only request_headers, remote_address, generic_key and header_value_match"
                ),
            );
        }
    })
}

fn header_condition(v: &Value, field: &str) -> Read<HeaderCondition> {
    let h = object(v, field)?;
    only(
        h,
        &["name", "exact_match", "prefix_match", "safe_regex_match", "present_match", "string_match"],
        field,
    )?;
    let name = string(h.get("name"), &format!("{field}.name"))?;
    if name.is_empty() {
        return invalid(&format!("{field}.name"), "required");
    }
    let text = |k: &str| -> Read<Option<String>> {
        get(h, k).map(|v| string(Some(v), &format!("{field}.{k}")).map(str::to_owned)).transpose()
    };
    let regex = |v: &Value, f: &str| -> Read<String> {
        let m = object(v, f)?;
        Ok(string(m.get("regex"), &format!("{f}.regex"))?.to_owned())
    };
    let value = if let Some(s) = text("exact_match")? {
        Some(StringCondition::Exact(s))
    } else if let Some(s) = text("prefix_match")? {
        Some(StringCondition::Prefix(s))
    } else if let Some(r) = get(h, "safe_regex_match") {
        Some(StringCondition::Regex(regex(r, &format!("{field}.safe_regex_match"))?))
    } else if let Some(sm) = get(h, "string_match") {
        let sf = format!("{field}.string_match");
        let sm = object(sm, &sf)?;
        only(sm, &["exact", "prefix", "safe_regex"], &sf)?;
        if let Some(e) = sm.get("exact") {
            Some(StringCondition::Exact(string(Some(e), &format!("{sf}.exact"))?.to_owned()))
        } else if let Some(p) = sm.get("prefix") {
            Some(StringCondition::Prefix(string(Some(p), &format!("{sf}.prefix"))?.to_owned()))
        } else if let Some(r) = get(sm, "safe_regex") {
            Some(StringCondition::Regex(regex(r, &format!("{sf}.safe_regex"))?))
        } else {
            None
        }
    } else {
        if get(h, "present_match").is_some_and(|p| p != &Value::Bool(true)) {
            return unsupported(&format!("{field}.present_match"), "present_match false");
        }
        None
    };
    Ok(HeaderCondition { name: name.to_ascii_lowercase(), value })
}
