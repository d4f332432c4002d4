//! `telemetry.istio.io` Telemetry (served at `v1alpha1` and `v1`): which access logs, traces and
//! metrics a workload's proxy produces. One in the root namespace without a selector applies
//! mesh-wide, one in a namespace without a selector to that namespace, one with a selector to
//! the workloads it selects; the control plane resolves the three into one effective setting
//! per proxy (`trellis-control-plane`'s `translate::telemetry`).
//!
//! Enumerated values (`mode`, `metric`, `operation`) are read as strings so that a wrong one is
//! reported by `trellis validate` with the field and the values allowed, instead of failing the
//! whole document; [`WorkloadMode::parse`], [`IstioMetric::parse`] and [`TagOperation::parse`]
//! read them.

use std::collections::BTreeMap;

use kube::CustomResource;

use crate::networking::MatchLabelsSelector;
use crate::primitives::GoDuration;
use crate::proto::istio_message;
use crate::security::PolicyTargetReference;

pub const TELEMETRY_GROUP: &str = "telemetry.istio.io";

istio_message! {
    #[derive(CustomResource)]
    #[kube(
        group = "telemetry.istio.io",
        version = "v1",
        kind = "Telemetry",
        namespaced,
        derive = "PartialEq",
        shortname = "telemetry",
        category = "istio-io",
        category = "telemetry-istio-io"
    )]
    pub struct TelemetrySpec {
        pub selector: Option<MatchLabelsSelector>,
        pub target_ref: Option<PolicyTargetReference>,
        pub target_refs: Vec<PolicyTargetReference>,
        pub tracing: Vec<Tracing>,
        pub metrics: Vec<Metrics>,
        pub access_logging: Vec<AccessLogging>,
    }
}

istio_message! {
    pub struct ProviderRef {
        pub name: String,
    }
}

istio_message! {
    /// `match` of tracing and access logging: which side of the proxy.
    pub struct ModeSelector {
        /// `CLIENT_AND_SERVER` (default), `CLIENT` (outbound) or `SERVER` (inbound).
        pub mode: String,
    }
}

istio_message! {
    pub struct Tracing {
        pub r#match: Option<ModeSelector>,
        pub providers: Vec<ProviderRef>,
        /// 0 to 100.
        pub random_sampling_percentage: Option<f64>,
        pub disable_span_reporting: Option<bool>,
        pub custom_tags: BTreeMap<String, CustomTag>,
        pub use_request_id_for_trace_sampling: Option<bool>,
        pub enable_istio_tags: Option<bool>,
    }
}

istio_message! {
    /// Exactly one of the four (Trellis adds the first three; a `formatter` tag is read only so
    /// that Istio's configuration is accepted, and left out with a warning).
    pub struct CustomTag {
        pub literal: Option<LiteralTag>,
        pub environment: Option<EnvironmentTag>,
        pub header: Option<HeaderTag>,
        pub formatter: Option<FormatterTag>,
    }
}

istio_message! {
    /// An Envoy access-log style format string (`%REQ(x-user)%`) for the tag's value.
    pub struct FormatterTag {
        pub value: String,
    }
}

istio_message! {
    pub struct LiteralTag {
        pub value: String,
    }
}

istio_message! {
    pub struct EnvironmentTag {
        pub name: String,
        pub default_value: String,
    }
}

istio_message! {
    pub struct HeaderTag {
        pub name: String,
        pub default_value: String,
    }
}

istio_message! {
    pub struct Metrics {
        pub providers: Vec<ProviderRef>,
        pub overrides: Vec<MetricsOverrides>,
        pub reporting_interval: Option<GoDuration>,
    }
}

istio_message! {
    pub struct MetricsOverrides {
        pub r#match: Option<MetricSelector>,
        pub disabled: Option<bool>,
        pub tag_overrides: BTreeMap<String, TagOverride>,
    }
}

istio_message! {
    pub struct MetricSelector {
        /// One of [`IstioMetric`]'s names; `ALL_METRICS` when neither this nor `customMetric`
        /// is set.
        pub metric: String,
        pub custom_metric: String,
        pub mode: String,
    }
}

istio_message! {
    pub struct TagOverride {
        /// `UPSERT` (default) or `REMOVE`.
        pub operation: String,
        /// For `UPSERT`: a CEL expression, as in Istio.
        pub value: String,
    }
}

istio_message! {
    pub struct AccessLogging {
        pub r#match: Option<ModeSelector>,
        pub providers: Vec<ProviderRef>,
        pub disabled: Option<bool>,
        pub filter: Option<AccessLogFilter>,
    }
}

istio_message! {
    pub struct AccessLogFilter {
        /// A CEL expression (the subset `trellis_api::access_log::cel` reads).
        pub expression: String,
    }
}

/// Which side of the proxy a setting applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WorkloadMode {
    ClientAndServer,
    /// Outbound: the proxy as its app's client.
    Client,
    /// Inbound: the proxy in front of its app.
    Server,
}

impl WorkloadMode {
    pub const NAMES: &'static str = "CLIENT_AND_SERVER, CLIENT, SERVER";

    /// An empty value is the default, `CLIENT_AND_SERVER`.
    pub fn parse(text: &str) -> Option<WorkloadMode> {
        match text {
            "" | "CLIENT_AND_SERVER" => Some(WorkloadMode::ClientAndServer),
            "CLIENT" => Some(WorkloadMode::Client),
            "SERVER" => Some(WorkloadMode::Server),
            _ => None,
        }
    }

    pub fn covers(self, side: WorkloadMode) -> bool {
        self == WorkloadMode::ClientAndServer || self == side
    }
}

/// Istio's standard metrics, as `MetricSelector.metric` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IstioMetric {
    RequestCount,
    RequestDuration,
    RequestSize,
    ResponseSize,
    TcpOpenedConnections,
    TcpClosedConnections,
    TcpSentBytes,
    TcpReceivedBytes,
    GrpcRequestMessages,
    GrpcResponseMessages,
}

impl IstioMetric {
    pub const ALL: [IstioMetric; 10] = [
        IstioMetric::RequestCount,
        IstioMetric::RequestDuration,
        IstioMetric::RequestSize,
        IstioMetric::ResponseSize,
        IstioMetric::TcpOpenedConnections,
        IstioMetric::TcpClosedConnections,
        IstioMetric::TcpSentBytes,
        IstioMetric::TcpReceivedBytes,
        IstioMetric::GrpcRequestMessages,
        IstioMetric::GrpcResponseMessages,
    ];

    pub const NAMES: &'static str = "ALL_METRICS, REQUEST_COUNT, REQUEST_DURATION, REQUEST_SIZE, RESPONSE_SIZE, \
        TCP_OPENED_CONNECTIONS, TCP_CLOSED_CONNECTIONS, TCP_SENT_BYTES, TCP_RECEIVED_BYTES, GRPC_REQUEST_MESSAGES, \
        GRPC_RESPONSE_MESSAGES";

    pub fn name(self) -> &'static str {
        match self {
            IstioMetric::RequestCount => "REQUEST_COUNT",
            IstioMetric::RequestDuration => "REQUEST_DURATION",
            IstioMetric::RequestSize => "REQUEST_SIZE",
            IstioMetric::ResponseSize => "RESPONSE_SIZE",
            IstioMetric::TcpOpenedConnections => "TCP_OPENED_CONNECTIONS",
            IstioMetric::TcpClosedConnections => "TCP_CLOSED_CONNECTIONS",
            IstioMetric::TcpSentBytes => "TCP_SENT_BYTES",
            IstioMetric::TcpReceivedBytes => "TCP_RECEIVED_BYTES",
            IstioMetric::GrpcRequestMessages => "GRPC_REQUEST_MESSAGES",
            IstioMetric::GrpcResponseMessages => "GRPC_RESPONSE_MESSAGES",
        }
    }

    /// The metrics a selector's `metric` names: all of them for `ALL_METRICS` or an empty
    /// value; `None` for a name Istio does not define.
    pub fn parse(text: &str) -> Option<Vec<IstioMetric>> {
        match text {
            "" | "ALL_METRICS" => Some(IstioMetric::ALL.to_vec()),
            name => IstioMetric::ALL.into_iter().find(|m| m.name() == name).map(|m| vec![m]),
        }
    }
}

/// `tagOverrides[].operation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TagOperation {
    Upsert,
    Remove,
}

impl TagOperation {
    pub fn parse(text: &str) -> Option<TagOperation> {
        match text {
            "" | "UPSERT" => Some(TagOperation::Upsert),
            "REMOVE" => Some(TagOperation::Remove),
            _ => None,
        }
    }
}

/// The labels of Istio's standard metrics a tag override may name (Trellis's metrics carry
/// exactly these).
pub const STANDARD_TAGS: &[&str] = &[
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_canonical_service",
    "source_canonical_revision",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
];

/// The constant an UPSERT's CEL `value` is, when it is a string literal (`'v1'` or `"v1"`):
/// the only kind Trellis applies, because it labels a series once, when the series is made,
/// not per request.
pub fn literal_tag_value(expression: &str) -> Option<String> {
    let text = expression.trim();
    let quote = text.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let inner = text.strip_prefix(quote)?.strip_suffix(quote)?;
    if inner.contains(quote) || inner.contains('\\') {
        return None;
    }
    Some(inner.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enumerations_read_istios_names() {
        assert_eq!(WorkloadMode::parse(""), Some(WorkloadMode::ClientAndServer));
        assert_eq!(WorkloadMode::parse("SERVER"), Some(WorkloadMode::Server));
        assert_eq!(WorkloadMode::parse("server"), None);
        assert_eq!(IstioMetric::parse("ALL_METRICS").unwrap().len(), 10);
        assert_eq!(IstioMetric::parse("REQUEST_COUNT"), Some(vec![IstioMetric::RequestCount]));
        assert_eq!(IstioMetric::parse("REQUEST_TOTAL"), None);
        assert_eq!(TagOperation::parse(""), Some(TagOperation::Upsert));
        assert_eq!(TagOperation::parse("DELETE"), None);
    }

    #[test]
    fn only_string_literals_are_constant_tag_values() {
        assert_eq!(literal_tag_value("'v1'").as_deref(), Some("v1"));
        assert_eq!(literal_tag_value(" \"prod\" ").as_deref(), Some("prod"));
        assert_eq!(literal_tag_value("''").as_deref(), Some(""));
        for expression in ["request.host", "'a' + 'b'", "'unterminated", "'it\\'s'", "upstream_peer.app"] {
            assert_eq!(literal_tag_value(expression), None, "{expression}");
        }
    }
}
