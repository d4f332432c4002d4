//! Semantic checks on decoded resources, following the rules Istio's own validation applies, so
//! that a resource Trellis accepts is one Istio would accept, and each problem is reported with
//! the field it is in and the offending value.
//!
//! A check never stops at the first problem: users fix files faster when they see all of them.

mod networking;
mod security;
mod telemetry;

pub use security::{check_jwks_uri, is_claim_path, is_cookie_name};

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::primitives::{check_dns1123_label, check_dns1123_subdomain, check_label_key, check_label_value};
use crate::resource::Resource;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem in one field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// Path of the field, e.g. `spec.http[1].route`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Checks one resource and returns every problem found (empty when it is valid).
pub fn validate(resource: &Resource) -> Vec<Finding> {
    let mut r = Report::default();
    check_metadata(&mut r, resource);
    match resource {
        Resource::VirtualService(vs) => networking::virtual_service(&mut r, &vs.spec),
        Resource::DestinationRule(dr) => {
            networking::destination_rule(&mut r, &dr.spec);
            retry_budget_annotations(&mut r, dr.metadata.annotations.as_ref());
        }
        Resource::ServiceEntry(se) => networking::service_entry(&mut r, &se.spec),
        Resource::WorkloadEntry(we) => networking::workload_entry(&mut r, "spec", &we.spec, None),
        Resource::Sidecar(sc) => networking::sidecar(&mut r, &sc.spec),
        Resource::Gateway(gw) => networking::gateway(&mut r, &gw.spec),
        Resource::PeerAuthentication(pa) => security::peer_authentication(&mut r, &pa.spec),
        Resource::AuthorizationPolicy(ap) => {
            security::authorization_policy(&mut r, &ap.spec, ap.metadata.annotations.as_ref())
        }
        Resource::RequestAuthentication(ra) => security::request_authentication(&mut r, &ra.spec),
        Resource::EnvoyFilter(ef) => envoy_filter(&mut r, &ef.spec),
        Resource::Telemetry(t) => telemetry::telemetry(&mut r, &t.spec),
        Resource::Namespace(ns) => namespace_labels(&mut r, ns.metadata.labels.as_ref()),
    }
    r.findings
}

/// What makes one AuthorizationPolicy rule unusable, `path` naming it (`spec.rules[2]`): the
/// errors Istio's validation reports, and (as warnings) what Trellis's proxy cannot enforce. The
/// control plane leaves such a rule out of an ALLOW policy and makes any other policy deny all.
pub fn authorization_rule_defects(path: &str, rule: &crate::security::Rule) -> Vec<Finding> {
    let mut r = Report::default();
    security::authorization_rule(&mut r, path, rule);
    r.findings
}

/// The problems of a `localityLbSetting` whose field is `path` (a DestinationRule's, or the
/// mesh config's `localityLbSetting`).
pub fn locality_lb_setting(path: &str, setting: &crate::networking::LocalityLbSetting) -> Vec<Finding> {
    let mut r = Report::default();
    networking::locality_lb_setting(&mut r, path, setting);
    r.findings
}

/// Collects findings as checks run.
#[derive(Default)]
pub(crate) struct Report {
    findings: Vec<Finding>,
}

impl Report {
    pub(crate) fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Error, field.into(), message.into());
    }

    pub(crate) fn warn(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Warning, field.into(), message.into());
    }

    fn push(&mut self, severity: Severity, field: String, message: String) {
        self.findings.push(Finding { severity, field, message });
    }

    /// Records the error of a check that returns `Result<_, String>`.
    pub(crate) fn check<T>(&mut self, field: impl Into<String>, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(message) => {
                self.error(field, message);
                None
            }
        }
    }
}

fn check_metadata(r: &mut Report, resource: &Resource) {
    let meta = resource.metadata();
    match meta.name.as_deref() {
        None | Some("") => r.error("metadata.name", "required"),
        Some(name) if matches!(resource, Resource::Namespace(_)) => {
            r.check("metadata.name", check_dns1123_label(name));
        }
        Some(name) => {
            r.check("metadata.name", check_dns1123_subdomain(name));
        }
    }
    if let Some(ns) = meta.namespace.as_deref() {
        namespace_name(r, "metadata.namespace", ns);
    }
    // Istio: only an AuthorizationPolicy may carry the dry-run annotation.
    let annotated =
        meta.annotations.as_ref().is_some_and(|a| a.contains_key(crate::security::DRY_RUN_ANNOTATION));
    if annotated && !matches!(resource, Resource::AuthorizationPolicy(_) | Resource::Namespace(_)) {
        r.error(
            format!("metadata.annotations.{}", crate::security::DRY_RUN_ANNOTATION),
            "only an AuthorizationPolicy supports this annotation; remove it",
        );
    }
    if !matches!(resource, Resource::DestinationRule(_)) {
        let keys = meta.annotations.iter().flat_map(|a| a.keys());
        for key in keys.filter(|k| k.starts_with(crate::retry_budget::PREFIX)) {
            r.warn(
                format!("metadata.annotations.{key}"),
                "only a DestinationRule's retry budget annotations are read; this one has no effect",
            );
        }
    }
}

/// A DestinationRule's `retry-budget.trellis.io/*` annotations (Trellis's retry budget).
fn retry_budget_annotations(r: &mut Report, annotations: Option<&BTreeMap<String, String>>) {
    let Some(annotations) = annotations else { return };
    for (key, message) in crate::retry_budget::BudgetOverrides::from_annotations(annotations).1 {
        r.error(format!("metadata.annotations.{key}"), message);
    }
}

/// Kubernetes namespace names are lower-case DNS labels. Istio's own examples use names like
/// `nsA`, so a name that is only wrong in its case is a warning rather than an error.
pub(crate) fn namespace_name(r: &mut Report, field: &str, ns: &str) {
    if let Err(message) = check_dns1123_label(ns) {
        if check_dns1123_label(&ns.to_ascii_lowercase()).is_ok() {
            r.warn(
                field,
                format!("{ns:?} has upper-case letters; Kubernetes namespace names are lower case"),
            );
        } else {
            r.error(field, message);
        }
    }
}

/// Label selectors and label maps: every key and value must be a valid Kubernetes label.
pub(crate) fn labels(r: &mut Report, path: &str, labels: &BTreeMap<String, String>) {
    for (key, value) in labels {
        let field = format!("{path}.{key}");
        if r.check(field.clone(), check_label_key(key)).is_some() {
            r.check(field, check_label_value(value));
        }
    }
}

fn namespace_labels(r: &mut Report, labels: Option<&BTreeMap<String, String>>) {
    let Some(labels) = labels else { return };
    if let Some(value) = labels.get(crate::annotations::names::label::ISTIO_INJECTION) {
        if value != "enabled" && value != "disabled" {
            r.warn(
                "metadata.labels.istio-injection",
                format!("{value:?} has no effect; sidecars are injected only when the value is \"enabled\""),
            );
        }
        if labels.contains_key(crate::annotations::names::label::ISTIO_REV) {
            r.warn(
                "metadata.labels",
                "both istio-injection and istio.io/rev are set; istio-injection takes precedence",
            );
        }
    }
    self::labels(r, "metadata.labels", labels);
}

/// `exportTo`: `.` (this namespace), `*` (all), `~` (none) or namespace names.
pub(crate) fn export_to(r: &mut Report, path: &str, values: &[String]) {
    let mut seen = std::collections::BTreeSet::new();
    for (i, value) in values.iter().enumerate() {
        let field = format!("{path}[{i}]");
        if !seen.insert(value.as_str()) {
            r.error(field, format!("{value:?} is listed twice"));
            continue;
        }
        if !matches!(value.as_str(), "." | "*" | "~") {
            r.check(field, check_dns1123_label(value));
        }
    }
    if values.len() > 1 && seen.contains("~") {
        r.error(path, "\"~\" (visible nowhere) cannot be combined with other values");
    } else if values.len() > 1 && seen.contains("*") {
        r.error(path, "\"*\" (visible everywhere) cannot be combined with other values");
    }
}

/// An EnvoyFilter: its rate-limit patches are checked; any other patch makes the whole filter a
/// warning ("not supported, ignored"), since Trellis never applies a filter half-way.
fn envoy_filter(r: &mut Report, spec: &crate::envoy_filter::EnvoyFilterSpec) {
    use crate::envoy_filter::{Reading, read};
    match read(spec) {
        Reading::RateLimits(_) => {}
        Reading::Unsupported { field, reason } => r.warn(
            field,
            format!("not supported, ignored: {reason}; Trellis reads only the rate-limit patches of Istio's documented shape, and applies none of this EnvoyFilter"),
        ),
        Reading::Invalid(problems) => {
            for (field, message) in problems {
                r.error(field, message);
            }
        }
    }
}
