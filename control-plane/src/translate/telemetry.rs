//! The Telemetry API → one effective telemetry per proxy, as Istio resolves it
//! (`pilot/pkg/model/telemetry.go`): the root namespace's Telemetry without a selector, then the
//! proxy's namespace's without a selector, then the first of its namespace's whose selector
//! matches (each the oldest when several compete), applied in that order.
//!
//! - Access logging and tracing: a later level's value replaces an earlier one, field by field
//!   (`providers`, `disabled`/`disableSpanReporting`, `filter`, `randomSamplingPercentage`;
//!   `customTags` replace the earlier map whole, as in Istio). An entry without `providers`
//!   inherits the ones before it. Tracing with span reporting off, or without a provider, is
//!   off (trace headers pass through untouched), as Istio disables it.
//! - Metrics overrides merge deeply: per side and metric, `disabled` is replaced and tag
//!   overrides are merged by tag name; `ALL_METRICS` disabled turns every metric off until a
//!   later override turns something back on.
//!
//! Where Trellis departs, and why: the built-in `envoy` provider (Istio's default mesh config
//! has it: a file log to /dev/stdout) writes to `accessLogFile` when one is set, with the mesh's
//! encoding and format, and a mesh with `accessLogFile` but no `defaultProviders.accessLogging`
//! counts `envoy` as the default, so that a namespace's `filter` or a workload's `disabled`
//! applies to the log the mesh config turned on (in Istio they would end it). `prometheus` is the
//! default metrics provider (the proxy always serves Prometheus). Entries limited to one side
//! (`match.mode` CLIENT or SERVER) of access logging and tracing are not applied, with a warning:
//! the proxy's access logs and tracing settings are per proxy, not per side.

use std::collections::{BTreeMap, BTreeSet};

use tracing::warn;
use trellis_api::mesh::MeshConfig;
use trellis_api::resource::{Kind, Resource};
use trellis_api::telemetry::{
    AccessLogging, CustomTag, IstioMetric, MetricsOverrides, TagOperation, TelemetrySpec, Tracing,
    WorkloadMode, literal_tag_value,
};
use trellis_xds::config as pb;

use super::objects::selects;
use super::policies::{PolicyKey, lookup};
use crate::model::Model;

/// The built-in access log provider (Istio's default `envoyFileAccessLog`).
const ENVOY_PROVIDER: &str = "envoy";
const PROMETHEUS_PROVIDER: &str = "prometheus";

/// The Telemetries that apply to a workload in `namespace` with `labels`, `namespace/name`, in
/// the order they are applied (mesh, namespace, workload).
pub fn applicable(model: &Model, namespace: &str, labels: &BTreeMap<String, String>) -> Vec<PolicyKey> {
    let root = model.mesh.root_namespace();
    let mut mesh = Vec::new();
    let mut namespace_wide = Vec::new();
    let mut workload = Vec::new();
    for (key, resource) in model.of_kind(Kind::Telemetry) {
        let Resource::Telemetry(t) = &**resource else { continue };
        if t.spec.target_ref.is_some() || !t.spec.target_refs.is_empty() {
            continue; // for waypoints and gateways, which Trellis does not have
        }
        let created = t.metadata.creation_timestamp.as_ref().map(|c| c.0.to_string());
        let candidate = (created, format!("{}/{}", key.namespace, key.name));
        match t.spec.selector.as_ref().filter(|s| !s.match_labels.is_empty()) {
            None if key.namespace == root => mesh.push(candidate),
            None if key.namespace == namespace => namespace_wide.push(candidate),
            Some(s) if key.namespace == namespace && selects(&s.match_labels, labels) => {
                workload.push(candidate)
            }
            _ => {}
        }
    }
    // The oldest wins at each level (unknown creation times first, as Go's zero time does).
    let oldest = |mut list: Vec<(Option<String>, String)>| {
        list.sort();
        list.into_iter().next().map(|(_, key)| key)
    };
    [oldest(mesh), oldest(namespace_wide), oldest(workload)].into_iter().flatten().collect()
}

/// Applies the Telemetries `keys` (from [`applicable`]) to `config`, whose mesh-config access
/// logs and tracing are already in place.
pub fn apply(model: &Model, keys: &[PolicyKey], config: &mut pb::ProxyConfig) {
    let specs: Vec<(&str, &TelemetrySpec)> = keys
        .iter()
        .filter_map(|key| match lookup(model, Kind::Telemetry, key) {
            Some((_, Resource::Telemetry(t))) => Some((key.as_str(), &t.spec)),
            _ => None,
        })
        .collect();
    if specs.is_empty() {
        return;
    }
    if let Some(logs) = access_logs(&model.mesh, &specs) {
        config.access_logs = logs;
    }
    tracing_settings(model, &specs, &mut config.tracing);
    config.metrics_overrides = metrics_overrides(&model.mesh, &specs);
}

/// Only entries for both sides are applied (see the module's notes).
fn both_sides(key: &str, field: &str, mode: Option<&str>) -> bool {
    match mode.map(WorkloadMode::parse) {
        None | Some(Some(WorkloadMode::ClientAndServer)) => true,
        Some(_) => {
            warn!(
                telemetry = key,
                field, "an entry for one side only (match.mode CLIENT or SERVER) is not applied"
            );
            false
        }
    }
}

fn provider_names(providers: &[trellis_api::telemetry::ProviderRef]) -> Vec<String> {
    providers.iter().map(|p| p.name.clone()).filter(|n| !n.is_empty()).collect()
}

// ---------------------------------------------------------------------------------------------
// Access logging

/// The access logs the Telemetries give, or `None` when none of them says anything about access
/// logging (the mesh config's then apply alone).
pub fn access_logs(mesh: &MeshConfig, specs: &[(&str, &TelemetrySpec)]) -> Option<Vec<pb::AccessLog>> {
    let levels: Vec<(&str, Vec<&AccessLogging>)> = specs
        .iter()
        .filter(|(_, s)| !s.access_logging.is_empty())
        .map(|(key, s)| {
            let entries = s
                .access_logging
                .iter()
                .enumerate()
                .filter(|(i, e)| {
                    let field = format!("spec.accessLogging[{i}].match.mode");
                    both_sides(key, &field, e.r#match.as_ref().map(|m| m.mode.as_str()))
                })
                .map(|(_, e)| e)
                .collect();
            (*key, entries)
        })
        .filter(|(_, entries): &(&str, Vec<&AccessLogging>)| !entries.is_empty())
        .collect();
    if levels.is_empty() {
        return None;
    }
    let mut defaults = mesh.default_providers.as_ref().map(|d| d.access_logging.clone()).unwrap_or_default();
    if defaults.is_empty() && mesh.access_log_file().is_some() {
        defaults.push(ENVOY_PROVIDER.to_owned());
    }
    // The providers in scope: the last level that names any.
    let mut in_scope: BTreeSet<String> = defaults.iter().cloned().collect();
    for (_, entries) in &levels {
        let named: BTreeSet<String> = entries.iter().flat_map(|e| provider_names(&e.providers)).collect();
        if !named.is_empty() {
            in_scope = named;
        }
    }
    let mut parent = defaults;
    let mut result: BTreeMap<String, Option<String>> = BTreeMap::new();
    for (_, entries) in &levels {
        for entry in entries {
            let named = provider_names(&entry.providers);
            let names = if named.is_empty() { parent.clone() } else { named };
            parent = names.clone();
            for provider in names.into_iter().filter(|p| in_scope.contains(p)) {
                if entry.disabled == Some(true) {
                    result.remove(&provider);
                } else {
                    let filter =
                        entry.filter.as_ref().map(|f| f.expression.clone()).filter(|e| !e.is_empty());
                    result.insert(provider, filter);
                }
            }
        }
    }
    let mut logs = Vec::new();
    for (provider, filter) in result {
        if provider != ENVOY_PROVIDER {
            warn!(provider = %provider, "Telemetry accessLogging: only the built-in \"envoy\" file provider is supported; this provider writes nothing");
            continue;
        }
        if let Some(expression) = &filter
            && let Err(e) = trellis_api::access_log::cel::Filter::parse(expression)
        {
            // Validation rejects it; a resource that got here anyway logs nothing rather than all.
            warn!(provider = %provider, %e, "Telemetry accessLogging filter.expression does not parse; this log is off");
            continue;
        }
        logs.extend(envoy_file_log(mesh).into_iter().map(|mut log| {
            log.filter = filter.clone().unwrap_or_default();
            log
        }));
    }
    Some(logs)
}

/// The built-in provider's log: the mesh config's file, encoding and format (`/dev/stdout`
/// without a file, as Istio's `envoy` provider).
fn envoy_file_log(mesh: &MeshConfig) -> Vec<pb::AccessLog> {
    if mesh.access_log_file().is_some() {
        return super::mesh::access_logs(mesh);
    }
    let mut with_file = mesh.clone();
    with_file.access_log_file = Some("/dev/stdout".to_owned());
    super::mesh::access_logs(&with_file)
}

// ---------------------------------------------------------------------------------------------
// Tracing

/// Applies the Telemetries' tracing entries, in order, over the mesh config's settings.
fn tracing_settings(
    model: &Model,
    specs: &[(&str, &TelemetrySpec)],
    tracing: &mut Option<pb::TracingConfig>,
) {
    let entries: Vec<(&str, &Tracing)> = specs
        .iter()
        .flat_map(|(key, s)| s.tracing.iter().enumerate().map(move |(i, t)| (*key, i, t)))
        .filter(|(key, i, t)| {
            both_sides(
                key,
                &format!("spec.tracing[{i}].match.mode"),
                t.r#match.as_ref().map(|m| m.mode.as_str()),
            )
        })
        .map(|(key, _, t)| (key, t))
        .collect();
    if entries.is_empty() {
        return;
    }
    let mesh = &model.mesh;
    let mut config = tracing.take().unwrap_or_else(|| {
        let sampling = mesh.proxy_config().tracing_sampling();
        pb::TracingConfig {
            sampling_percent: if sampling.is_finite() { sampling.clamp(0.0, 100.0) } else { 1.0 },
            node: Some(pb::TracingNode { mesh_id: mesh.trust_domain().to_owned(), ..Default::default() }),
            ..Default::default()
        }
    });
    let mut disabled = false;
    for (key, entry) in entries {
        if let Some(name) = provider_names(&entry.providers).first() {
            config.provider = match mesh.extension_provider(name).filter(|p| p.is_tracing()) {
                Some(p) => super::tracing::resolve_provider(model, p),
                None => {
                    warn!(telemetry = key, provider = %name, "not a zipkin or opentelemetry provider of the mesh config; spans are not exported");
                    None
                }
            };
        }
        if let Some(off) = entry.disable_span_reporting {
            disabled = off;
        }
        if !entry.custom_tags.is_empty() {
            config.custom_tags = custom_tags(&entry.custom_tags);
        }
        if let Some(percent) = entry.random_sampling_percentage
            && percent.is_finite()
        {
            config.sampling_percent = percent.clamp(0.0, 100.0);
        }
    }
    // As in Istio, span reporting off, or no provider, is tracing off: the proxy then passes
    // trace headers through untouched instead of parenting spans it would never export.
    *tracing = (!disabled && config.provider.is_some()).then_some(config);
}

fn custom_tags(tags: &BTreeMap<String, CustomTag>) -> Vec<pb::TracingCustomTag> {
    use pb::tracing_custom_tag::Kind;
    tags.iter()
        .filter_map(|(name, tag)| {
            let kind = match (&tag.literal, &tag.environment, &tag.header) {
                (Some(l), None, None) => Kind::Literal(l.value.clone()),
                (None, Some(e), None) if !e.name.is_empty() => {
                    Kind::Environment(pb::TracingValueFrom { name: e.name.clone(), default_value: e.default_value.clone() })
                }
                (None, None, Some(h)) if http::HeaderName::from_bytes(h.name.as_bytes()).is_ok() => {
                    Kind::Header(pb::TracingValueFrom { name: h.name.clone(), default_value: h.default_value.clone() })
                }
                _ => {
                    warn!(tag = %name, "Telemetry tracing customTags: not one valid literal, environment or header; left out");
                    return None;
                }
            };
            Some(pb::TracingCustomTag { tag: name.clone(), kind: Some(kind) })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Metrics

#[derive(Default)]
struct MetricOverride {
    disabled: Option<bool>,
    /// Tag name → `None` to remove, or the constant value.
    tags: BTreeMap<String, Option<String>>,
}

/// The metric overrides for the `prometheus` provider, merged as Istio merges them.
fn metrics_overrides(
    mesh: &MeshConfig,
    specs: &[(&str, &TelemetrySpec)],
) -> Option<pb::TelemetryMetricsOverrides> {
    let entries: Vec<(&str, &trellis_api::telemetry::Metrics)> =
        specs.iter().flat_map(|(key, s)| s.metrics.iter().map(move |m| (*key, m))).collect();
    if entries.is_empty() {
        return None;
    }
    let mut defaults = mesh.default_providers.as_ref().map(|d| d.metrics.clone()).unwrap_or_default();
    if defaults.is_empty() {
        defaults.push(PROMETHEUS_PROVIDER.to_owned());
    }
    let mut in_scope = defaults.clone();
    for (_, m) in &entries {
        let named = provider_names(&m.providers);
        if !named.is_empty() {
            in_scope = named;
        }
    }
    if !in_scope.iter().any(|p| p == PROMETHEUS_PROVIDER) {
        // Istio drops the stats filter: no standard metrics at all.
        return Some(pb::TelemetryMetricsOverrides { all_disabled: true, ..Default::default() });
    }
    let mut parent = defaults;
    let mut all_disabled = false;
    let mut merged: BTreeMap<(bool, IstioMetric), MetricOverride> = BTreeMap::new();
    for (key, m) in entries {
        let named = provider_names(&m.providers);
        let names = if named.is_empty() { parent.clone() } else { named };
        parent = names.clone();
        if !names.iter().any(|p| p == PROMETHEUS_PROVIDER) {
            continue;
        }
        for o in &m.overrides {
            merge_override(key, o, &mut all_disabled, &mut merged);
        }
    }
    let mut out = pb::TelemetryMetricsOverrides { all_disabled, ..Default::default() };
    for ((server, metric), o) in merged {
        let Some(metric) = pb_metric(metric) else { continue };
        let entry = pb::TelemetryMetricOverride {
            metric: metric.into(),
            disabled: o.disabled.unwrap_or(false),
            tags: o
                .tags
                .into_iter()
                .map(|(name, value)| pb::TelemetryTagOverride {
                    remove: value.is_none(),
                    value: value.unwrap_or_default(),
                    name,
                })
                .collect(),
        };
        if server { out.server.push(entry) } else { out.client.push(entry) }
    }
    Some(out)
}

fn merge_override(
    key: &str,
    o: &MetricsOverrides,
    all_disabled: &mut bool,
    merged: &mut BTreeMap<(bool, IstioMetric), MetricOverride>,
) {
    let selector = o.r#match.clone().unwrap_or_default();
    if !selector.custom_metric.is_empty() {
        warn!(telemetry = key, metric = %selector.custom_metric, "customMetric: the proxy has only Istio's standard metrics; ignored");
        return;
    }
    let Some(metrics) = IstioMetric::parse(&selector.metric) else {
        warn!(telemetry = key, metric = %selector.metric, "unknown metric; override ignored");
        return;
    };
    let Some(mode) = WorkloadMode::parse(&selector.mode) else {
        warn!(telemetry = key, mode = %selector.mode, "unknown mode; override ignored");
        return;
    };
    // Only a selector naming ALL_METRICS turns everything off at once (whatever its mode);
    // without a metric, the override applies to each metric of its side.
    if selector.metric == "ALL_METRICS" && o.disabled == Some(true) {
        *all_disabled = true;
        return;
    }
    // A later level turning anything on undoes an earlier "all off", as in Istio.
    *all_disabled = false;
    let sides: &[bool] = match mode {
        WorkloadMode::Client => &[false],
        WorkloadMode::Server => &[true],
        WorkloadMode::ClientAndServer => &[false, true],
    };
    for &server in sides {
        for &metric in &metrics {
            let entry = merged.entry((server, metric)).or_default();
            if o.disabled.is_some() {
                entry.disabled = o.disabled;
            }
            for (tag, value) in &o.tag_overrides {
                if !applicable_tag(key, tag, value.operation.as_str(), &value.value) {
                    continue;
                }
                let setting = match TagOperation::parse(&value.operation) {
                    Some(TagOperation::Remove) => None,
                    _ => literal_tag_value(&value.value),
                };
                entry.tags.insert(tag.clone(), setting);
            }
        }
    }
}

/// Whether the proxy can apply this tag override (validation warns about the others).
fn applicable_tag(key: &str, tag: &str, operation: &str, value: &str) -> bool {
    let remove = TagOperation::parse(operation) == Some(TagOperation::Remove);
    let ok = match tag {
        "reporter" | "response_code" => false,
        "request_protocol" | "grpc_response_status" | "response_flags" | "connection_security_policy" => {
            remove
        }
        t if trellis_api::telemetry::STANDARD_TAGS.contains(&t) => {
            remove || (TagOperation::parse(operation).is_some() && literal_tag_value(value).is_some())
        }
        _ => false,
    };
    if !ok {
        warn!(
            telemetry = key,
            tag,
            "tag override not supported (only removing Istio's labels or setting one to a string literal); ignored"
        );
    }
    ok
}

fn pb_metric(metric: IstioMetric) -> Option<pb::TelemetryMetric> {
    Some(match metric {
        IstioMetric::RequestCount => pb::TelemetryMetric::RequestCount,
        IstioMetric::RequestDuration => pb::TelemetryMetric::RequestDuration,
        IstioMetric::RequestSize => pb::TelemetryMetric::RequestSize,
        IstioMetric::ResponseSize => pb::TelemetryMetric::ResponseSize,
        IstioMetric::TcpOpenedConnections => pb::TelemetryMetric::TcpOpenedConnections,
        IstioMetric::TcpClosedConnections => pb::TelemetryMetric::TcpClosedConnections,
        IstioMetric::TcpSentBytes => pb::TelemetryMetric::TcpSentBytes,
        IstioMetric::TcpReceivedBytes => pb::TelemetryMetric::TcpReceivedBytes,
        // The proxy does not count gRPC messages.
        IstioMetric::GrpcRequestMessages | IstioMetric::GrpcResponseMessages => return None,
    })
}

#[cfg(test)]
mod tests {
    use trellis_xds::config as pb;

    use super::super::test_support::{config_for, model, with_mesh};

    const MESH: &str = r#"
accessLogFile: /dev/stdout
extensionProviders:
- name: zipkin
  zipkin: {service: zipkin.observability.svc.cluster.local, port: 9411}
- name: otel
  opentelemetry: {service: otel.observability.svc.cluster.local, port: 4317}
"#;

    /// Istio's three levels: the mesh default in the root namespace, a namespace's, and one
    /// workload's (plus one selecting nobody here, and one attached to a gateway).
    const LEVELS: &str = r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  accessLogging:
  - filter: {expression: "response.code >= 500"}
  tracing:
  - providers: [{name: zipkin}]
    randomSamplingPercentage: 10
    customTags:
      team: {literal: {value: platform}}
  metrics:
  - overrides:
    - match: {metric: ALL_METRICS}
      disabled: true
---
apiVersion: telemetry.istio.io/v1alpha1
kind: Telemetry
metadata: {name: shop, namespace: shop}
spec:
  accessLogging:
  - filter: {expression: "response.code >= 400"}
  tracing:
  - randomSamplingPercentage: 50
  metrics:
  - overrides:
    - match: {metric: REQUEST_COUNT}
      tagOverrides:
        destination_canonical_revision: {operation: REMOVE}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: frontend, namespace: shop}
spec:
  selector: {matchLabels: {app: frontend}}
  accessLogging:
  - disabled: true
  tracing:
  - disableSpanReporting: true
  metrics:
  - overrides:
    - match: {metric: REQUEST_DURATION, mode: SERVER}
      disabled: true
    - match: {metric: REQUEST_COUNT, mode: CLIENT}
      tagOverrides:
        source_cluster: {value: "'east'"}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: batch-only, namespace: shop}
spec:
  selector: {matchLabels: {app: batch}}
  accessLogging:
  - providers: [{name: envoy}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: gateway, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: shop-gw}]
  accessLogging:
  - disabled: true
"#;

    fn levels() -> crate::model::Model {
        with_mesh(model(LEVELS), MESH)
    }

    fn filters(config: &pb::ProxyConfig) -> Vec<&str> {
        config.access_logs.iter().map(|l| l.filter.as_str()).collect()
    }

    #[test]
    fn applicable_telemetries_are_mesh_then_namespace_then_workload() {
        let m = levels();
        let keys = |ns: &str, labels: &[(&str, &str)]| {
            super::applicable(&m, ns, &super::super::test_support::labels_of(labels))
        };
        assert_eq!(keys("other", &[]), ["istio-system/mesh-default"]);
        assert_eq!(keys("shop", &[("app", "catalog")]), ["istio-system/mesh-default", "shop/shop"]);
        assert_eq!(
            keys("shop", &[("app", "frontend")]),
            ["istio-system/mesh-default", "shop/shop", "shop/frontend"],
            "the gateway's (targetRefs) is not a sidecar's"
        );
        assert_eq!(
            keys("istio-system", &[]),
            ["istio-system/mesh-default"],
            "the root namespace is not counted twice"
        );
    }

    #[test]
    fn access_logging_later_levels_override_earlier_ones() {
        let m = levels();
        assert_eq!(filters(&config_for(&m, "other", &[])), ["response.code >= 500"]);
        let catalog = config_for(&m, "shop", &[("app", "catalog")]);
        assert_eq!(filters(&catalog), ["response.code >= 400"]);
        assert_eq!(catalog.access_logs[0].path, "/dev/stdout", "the mesh config's file");
        assert!(
            config_for(&m, "shop", &[("app", "frontend")]).access_logs.is_empty(),
            "disabled for the workload"
        );
    }

    #[test]
    fn without_telemetry_the_mesh_config_applies_alone() {
        let m = with_mesh(model(""), MESH);
        let config = config_for(&m, "shop", &[]);
        assert_eq!(filters(&config), [""]);
        assert!(config.metrics_overrides.is_none());
        // And without accessLogFile, the built-in provider writes to /dev/stdout.
        let m = model(
            "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: logs, namespace: shop}\n\
             spec:\n  accessLogging:\n  - providers: [{name: envoy}]\n",
        );
        let config = config_for(&m, "shop", &[]);
        assert_eq!(config.access_logs.len(), 1);
        assert_eq!(config.access_logs[0].path, "/dev/stdout");
        assert!(config_for(&m, "other", &[]).access_logs.is_empty());
    }

    #[test]
    fn tracing_fields_override_one_by_one() {
        let m = levels();
        let tracing = |ns: &str, labels: &[(&str, &str)]| config_for(&m, ns, labels).tracing.unwrap();
        let other = tracing("other", &[]);
        assert_eq!(other.sampling_percent, 10.0);
        assert_eq!(other.provider.as_ref().unwrap().name, "zipkin");
        assert_eq!(other.custom_tags[0].tag, "team");
        let catalog = tracing("shop", &[("app", "catalog")]);
        assert_eq!(catalog.sampling_percent, 50.0, "the namespace's percentage");
        assert_eq!(catalog.provider.as_ref().unwrap().name, "zipkin", "the mesh's provider, inherited");
        assert_eq!(catalog.custom_tags.len(), 1, "the mesh's tags, inherited");
        assert!(
            config_for(&m, "shop", &[("app", "frontend")]).tracing.is_none(),
            "span reporting off: tracing off, headers pass through"
        );
    }

    #[test]
    fn metric_overrides_merge_deeply_and_all_off_is_undone_below() {
        use pb::TelemetryMetric as M;
        let m = levels();
        let overrides =
            |ns: &str, labels: &[(&str, &str)]| config_for(&m, ns, labels).metrics_overrides.unwrap();
        assert!(overrides("other", &[]).all_disabled, "the mesh turns every metric off");
        let catalog = overrides("shop", &[("app", "catalog")]);
        assert!(!catalog.all_disabled, "the namespace turns metrics back on");
        for side in [&catalog.client, &catalog.server] {
            assert_eq!(side.len(), 1);
            assert_eq!(side[0].metric(), M::RequestCount);
            assert_eq!(
                side[0].tags,
                [pb::TelemetryTagOverride {
                    name: "destination_canonical_revision".into(),
                    remove: true,
                    value: String::new()
                }]
            );
        }
        let frontend = overrides("shop", &[("app", "frontend")]);
        let server: Vec<(M, bool)> = frontend.server.iter().map(|o| (o.metric(), o.disabled)).collect();
        assert_eq!(server, [(M::RequestCount, false), (M::RequestDuration, true)]);
        let client_count = frontend.client.iter().find(|o| o.metric() == M::RequestCount).unwrap();
        let tags: Vec<(&str, bool, &str)> =
            client_count.tags.iter().map(|t| (t.name.as_str(), t.remove, t.value.as_str())).collect();
        assert_eq!(
            tags,
            [("destination_canonical_revision", true, ""), ("source_cluster", false, "east")],
            "merged by tag name across levels"
        );
    }

    #[test]
    fn another_metrics_provider_in_scope_turns_prometheus_off() {
        let m = model(
            "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: t, namespace: shop}\n\
             spec:\n  metrics:\n  - providers: [{name: stackdriver}]\n",
        );
        assert!(config_for(&m, "shop", &[]).metrics_overrides.unwrap().all_disabled);
    }

    #[test]
    fn the_oldest_namespace_wide_telemetry_wins() {
        let text = |name: &str, created: &str, percent: u32| {
            format!(
                "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: {name}, namespace: shop, \
                 creationTimestamp: '{created}'}}\nspec:\n  tracing:\n  - providers: [{{name: zipkin}}]\n    \
                 randomSamplingPercentage: {percent}\n---\n"
            )
        };
        let m = with_mesh(
            model(
                &(text("a-newer", "2026-02-01T00:00:00Z", 20) + &text("b-older", "2026-01-01T00:00:00Z", 30)),
            ),
            MESH,
        );
        assert_eq!(config_for(&m, "shop", &[]).tracing.unwrap().sampling_percent, 30.0);
    }

    #[test]
    fn one_sided_entries_are_not_applied() {
        let m = with_mesh(
            model(
                "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: t, namespace: shop}\n\
                 spec:\n  accessLogging:\n  - match: {mode: SERVER}\n    disabled: true\n",
            ),
            MESH,
        );
        assert_eq!(filters(&config_for(&m, "shop", &[])), [""], "the mesh config's log stays on both sides");
    }
}
