//! Telemetry: Istio's rules (sampling in 0-100, a custom tag of
//! exactly one kind, known metric names and modes, UPSERT with a value) as errors naming the
//! field, and warnings for what Trellis reads but does not do.

use super::{Report, labels};
use crate::access_log::cel;
use crate::telemetry::{
    AccessLogging, CustomTag, IstioMetric, Metrics, ModeSelector, ProviderRef, STANDARD_TAGS, TagOperation,
    TelemetrySpec, Tracing, WorkloadMode, literal_tag_value,
};

pub(super) fn telemetry(r: &mut Report, spec: &TelemetrySpec) {
    let targeted = spec.target_ref.is_some() || !spec.target_refs.is_empty();
    if let Some(selector) = &spec.selector {
        // Istio accepts both and lets targetRef/targetRefs decide (see its warning below).
        if targeted {
            r.warn("spec.selector", "ignored: targetRef/targetRefs is set and takes precedence, as in Istio");
        }
        labels(r, "spec.selector.matchLabels", &selector.match_labels);
    }
    if targeted {
        let field = if spec.target_ref.is_some() { "spec.targetRef" } else { "spec.targetRefs" };
        r.warn(
            field,
            "not supported, ignored: Trellis has no waypoints or Gateway API gateways to attach to; \
             this Telemetry applies to no workload",
        );
    }
    if spec.tracing.len() > 1 {
        r.warn(
            "spec.tracing",
            "more than one tracing entry: Istio does not support it either; they apply in order",
        );
    }
    for (i, tracing) in spec.tracing.iter().enumerate() {
        check_tracing(r, &format!("spec.tracing[{i}]"), tracing);
    }
    for (i, metrics) in spec.metrics.iter().enumerate() {
        check_metrics(r, &format!("spec.metrics[{i}]"), metrics);
    }
    for (i, logging) in spec.access_logging.iter().enumerate() {
        check_access_logging(r, &format!("spec.accessLogging[{i}]"), logging);
    }
}

/// Access logging's and tracing's `match.mode`: Trellis's settings are per proxy, so an entry
/// for one side only is not applied (metrics overrides do have sides).
fn check_mode(r: &mut Report, path: &str, selector: Option<&ModeSelector>) {
    let Some(selector) = selector else { return };
    match WorkloadMode::parse(&selector.mode) {
        None => r.error(
            format!("{path}.match.mode"),
            format!("unknown mode {:?}; one of {}", selector.mode, WorkloadMode::NAMES),
        ),
        Some(WorkloadMode::ClientAndServer) => {}
        Some(_) => r.warn(
            format!("{path}.match.mode"),
            format!(
                "{}: not supported, ignored: Trellis applies access logging and tracing to both sides of a proxy; \
                 this entry is not applied",
                selector.mode
            ),
        ),
    }
}

fn check_providers(r: &mut Report, path: &str, providers: &[ProviderRef]) {
    for (i, provider) in providers.iter().enumerate() {
        if provider.name.is_empty() {
            r.error(format!("{path}.providers[{i}].name"), "a provider needs a name");
        }
    }
}

fn check_tracing(r: &mut Report, path: &str, tracing: &Tracing) {
    check_mode(r, path, tracing.r#match.as_ref());
    check_providers(r, path, &tracing.providers);
    if tracing.providers.len() > 1 {
        r.warn(format!("{path}.providers"), "only the first provider is used (as in Istio)");
    }
    if let Some(percent) = tracing.random_sampling_percentage
        && !(0.0..=100.0).contains(&percent)
    {
        r.error(
            format!("{path}.randomSamplingPercentage"),
            format!("{percent} is not a percentage between 0 and 100"),
        );
    }
    for (name, tag) in &tracing.custom_tags {
        check_custom_tag(r, &format!("{path}.customTags.{name}"), name, tag);
    }
    if tracing.use_request_id_for_trace_sampling.is_some() {
        r.warn(
            format!("{path}.useRequestIdForTraceSampling"),
            "read but not enforced: Trellis samples by its own random draw, never by x-request-id",
        );
    }
    if tracing.enable_istio_tags.is_some() {
        r.warn(format!("{path}.enableIstioTags"), "read but not enforced: Istio's tags are always added");
    }
}

fn check_custom_tag(r: &mut Report, path: &str, name: &str, tag: &CustomTag) {
    if name.is_empty() {
        r.error(path, "a custom tag needs a name");
    }
    let kinds =
        [tag.literal.is_some(), tag.environment.is_some(), tag.header.is_some(), tag.formatter.is_some()];
    match kinds.iter().filter(|k| **k).count() {
        0 => r.error(path, "one of literal, environment, header and formatter must be set"),
        1 => {}
        _ => r.error(path, "only one of literal, environment, header and formatter may be set"),
    }
    if tag.formatter.is_some() {
        r.warn(
            format!("{path}.formatter"),
            "not supported, ignored: Trellis leaves formatter tags out of its spans",
        );
    }
    if let Some(env) = &tag.environment
        && env.name.is_empty()
    {
        r.error(format!("{path}.environment.name"), "the environment variable needs a name");
    }
    if let Some(header) = &tag.header
        && !is_header_name(&header.name)
    {
        r.error(format!("{path}.header.name"), format!("{:?} is not a header name", header.name));
    }
}

/// An HTTP field name: one or more token characters (RFC 9110).
fn is_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn check_metrics(r: &mut Report, path: &str, metrics: &Metrics) {
    check_providers(r, path, &metrics.providers);
    for (i, provider) in metrics.providers.iter().enumerate() {
        if !provider.name.is_empty() && provider.name != "prometheus" {
            r.warn(
                format!("{path}.providers[{i}].name"),
                format!(
                    "{:?}: read but not enforced: the proxy's metrics are Prometheus's only; this provider gets none",
                    provider.name
                ),
            );
        }
    }
    if metrics.reporting_interval.is_some() {
        r.warn(
            format!("{path}.reportingInterval"),
            "read but not enforced: Prometheus pulls the proxy's metrics when it scrapes",
        );
    }
    for (i, o) in metrics.overrides.iter().enumerate() {
        let path = format!("{path}.overrides[{i}]");
        if let Some(selector) = &o.r#match {
            if !selector.metric.is_empty() && !selector.custom_metric.is_empty() {
                r.error(format!("{path}.match"), "only one of metric and customMetric may be set");
            }
            if IstioMetric::parse(&selector.metric).is_none() {
                r.error(
                    format!("{path}.match.metric"),
                    format!("unknown metric {:?}; one of {}", selector.metric, IstioMetric::NAMES),
                );
            }
            if !selector.custom_metric.is_empty() {
                r.warn(
                    format!("{path}.match.customMetric"),
                    format!(
                        "{:?}: read but not enforced: the proxy has only Istio's standard metrics",
                        selector.custom_metric
                    ),
                );
            }
            if WorkloadMode::parse(&selector.mode).is_none() {
                r.error(
                    format!("{path}.match.mode"),
                    format!("unknown mode {:?}; one of {}", selector.mode, WorkloadMode::NAMES),
                );
            }
        }
        for (tag, value) in &o.tag_overrides {
            let field = format!("{path}.tagOverrides.{tag}");
            match TagOperation::parse(&value.operation) {
                None => r.error(
                    format!("{field}.operation"),
                    format!("unknown operation {:?}; one of UPSERT, REMOVE", value.operation),
                ),
                Some(TagOperation::Upsert) if value.value.is_empty() => {
                    r.error(format!("{field}.value"), "UPSERT needs a value (a CEL expression)")
                }
                Some(TagOperation::Upsert) if literal_tag_value(&value.value).is_none() => r.warn(
                    format!("{field}.value"),
                    format!(
                        "{:?}: not supported, ignored: Trellis labels a series once, when it is made, so only \
                         a string literal ('value') can be applied",
                        value.value
                    ),
                ),
                _ => {}
            }
            if !STANDARD_TAGS.contains(&tag.as_str()) {
                r.warn(
                    field,
                    "not supported, ignored: only the labels of Istio's standard metrics can be changed or removed",
                );
            } else if tag == "reporter" || tag == "response_code" {
                r.warn(field, "not supported, ignored: this label cannot be changed or removed in Trellis");
            } else if [
                "request_protocol",
                "grpc_response_status",
                "response_flags",
                "connection_security_policy",
            ]
            .contains(&tag.as_str())
                && TagOperation::parse(&value.operation) != Some(TagOperation::Remove)
            {
                r.warn(field, "not supported, ignored: this label can be removed, not set, in Trellis");
            }
        }
    }
}

fn check_access_logging(r: &mut Report, path: &str, logging: &AccessLogging) {
    check_mode(r, path, logging.r#match.as_ref());
    check_providers(r, path, &logging.providers);
    if let Some(filter) = &logging.filter
        && let Err(e) = cel::Filter::parse(&filter.expression)
    {
        r.error(format!("{path}.filter.expression"), e.to_string());
    }
}
