//! Istio's mesh-wide configuration (`MeshConfig`, istio.mesh.v1alpha1) and the proxy settings
//! inside it (`ProxyConfig`): the subset a platform team sets, with Istio's field names and
//! Istio's defaults.
//!
//! Fields are `Option` (or empty collections) so that "not set" stays distinguishable from "set
//! to the default value"; accessors such as [`MeshConfig::trust_domain`] give the effective
//! value. Like Istio's protobuf JSON, both `camelCase` and the proto's `snake_case` names are
//! read; `camelCase` is written.

use std::collections::{BTreeMap, HashSet};

use std::net::Ipv6Addr;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

use crate::annotations::InterceptionMode;
use crate::primitives::{
    GoDuration, check_dns1123_label, check_dns1123_subdomain, check_duration_ms, check_header_name,
    check_host_or_ip, check_label_key, check_label_value, check_port, parse_go_duration, parse_port,
};

pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";
/// Trellis's control plane (`trellisd`), on the TLS xDS port, in the mesh's root namespace.
// Plaintext xDS until the identity work brings TLS on 15012.
pub const DEFAULT_DISCOVERY_ADDRESS: &str = "trellisd.istio-system.svc:15010";
pub const DEFAULT_STATUS_PORT: u16 = 15020;
pub const DEFAULT_PROXY_ADMIN_PORT: u16 = 15000;
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_DRAIN_DURATION: Duration = Duration::from_secs(45);
pub const DEFAULT_TERMINATION_DRAIN_DURATION: Duration = Duration::from_secs(5);
/// Percent of requests traced when `tracing.sampling` is not set.
pub const DEFAULT_TRACE_SAMPLING: f64 = 1.0;
pub const DEFAULT_IMAGE_TYPE: &str = "default";

/// A mesh config comes from a ConfigMap, which Kubernetes caps at 1 MiB.
pub const MAX_MESH_CONFIG_LEN: usize = 1 << 20;

/// Reads a missing or `null` collection as empty: Helm-rendered mesh configs often contain
/// `trustDomainAliases:` with nothing after it, and Istio accepts that.
fn null_as_default<'de, D, T>(de: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(de)?.unwrap_or_default())
}

// ---------------------------------------------------------------------------------------------
// MeshConfig

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct MeshConfig {
    /// The SPIFFE trust domain of workload identities. Default `cluster.local`.
    #[serde(skip_serializing_if = "Option::is_none", alias = "trust_domain")]
    pub trust_domain: Option<String>,
    /// Other trust domains whose identities are treated as this mesh's (migrations).
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default",
        alias = "trust_domain_aliases"
    )]
    pub trust_domain_aliases: Vec<String>,
    /// Namespace whose config applies mesh-wide. Default `istio-system`.
    #[serde(skip_serializing_if = "Option::is_none", alias = "root_namespace")]
    pub root_namespace: Option<String>,
    /// Proxy settings for every workload; a pod's `proxy.istio.io/config` is merged over them.
    #[serde(skip_serializing_if = "Option::is_none", alias = "default_config")]
    pub default_config: Option<ProxyConfig>,
    #[serde(skip_serializing_if = "Option::is_none", alias = "outbound_traffic_policy")]
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
    /// Use mutual TLS towards workloads that have a proxy, without a DestinationRule. Default
    /// true.
    #[serde(skip_serializing_if = "Option::is_none", alias = "enable_auto_mtls")]
    pub enable_auto_mtls: Option<bool>,
    /// Where proxies write access logs (`/dev/stdout`); empty or unset turns them off.
    #[serde(skip_serializing_if = "Option::is_none", alias = "access_log_file")]
    pub access_log_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", alias = "access_log_format")]
    pub access_log_format: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", alias = "access_log_encoding")]
    pub access_log_encoding: Option<AccessLogEncoding>,
    /// Default `exportTo` of Services and ServiceEntries; empty means every namespace (`*`).
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default",
        alias = "default_service_export_to"
    )]
    pub default_service_export_to: Vec<String>,
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default",
        alias = "default_virtual_service_export_to"
    )]
    pub default_virtual_service_export_to: Vec<String>,
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default",
        alias = "default_destination_rule_export_to"
    )]
    pub default_destination_rule_export_to: Vec<String>,
    /// The `kubernetes.io/ingress.class` (or IngressClass) this mesh serves.
    #[serde(skip_serializing_if = "Option::is_none", alias = "ingress_class")]
    pub ingress_class: Option<String>,
    /// Default true.
    #[serde(skip_serializing_if = "Option::is_none", alias = "enable_tracing")]
    pub enable_tracing: Option<bool>,
    /// Merge the app's Prometheus metrics into the proxy's on the status port (the injector
    /// points the pod's `prometheus.io/*` annotations there). Default true.
    #[serde(skip_serializing_if = "Option::is_none", alias = "enable_prometheus_merge")]
    pub enable_prometheus_merge: Option<bool>,
    /// Retry policy for HTTP routes that do not set one.
    #[serde(skip_serializing_if = "Option::is_none", alias = "default_http_retry_policy")]
    pub default_http_retry_policy: Option<HttpRetry>,
    /// TCP connect timeout towards upstreams. Default 10s.
    #[serde(skip_serializing_if = "Option::is_none", alias = "connect_timeout")]
    pub connect_timeout: Option<GoDuration>,
    /// How long to wait for a client to speak first when sniffing the protocol; 0 (the
    /// default) waits as long as it takes.
    #[serde(skip_serializing_if = "Option::is_none", alias = "protocol_detection_timeout")]
    pub protocol_detection_timeout: Option<GoDuration>,
    /// Namespaces the control plane watches, by namespace labels; empty means all.
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default",
        alias = "discovery_selectors"
    )]
    #[schemars(with = "Vec<LabelSelectorSchema>")]
    pub discovery_selectors: Vec<LabelSelector>,
    /// Named external services: the authorizers CUSTOM AuthorizationPolicies name. Other kinds
    /// of provider (tracing, logging) are not read.
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default",
        alias = "extension_providers"
    )]
    pub extension_providers: Vec<ExtensionProvider>,
    /// The providers used when no Telemetry resource names any: `tracing` names the
    /// extension provider spans go to.
    #[serde(skip_serializing_if = "Option::is_none", alias = "default_providers")]
    pub default_providers: Option<DefaultProviders>,
    /// Trellis's own field, not one of Istio's MeshConfig: the retry budget of every
    /// destination (Linkerd's), on by default with 20 % of requests plus 10 retries per second
    /// over 10 s. A DestinationRule's `retry-budget.trellis.io/*` annotations change it for
    /// its host (see [`crate::retry_budget`]).
    #[serde(skip_serializing_if = "Option::is_none", alias = "retry_budget")]
    pub retry_budget: Option<RetryBudgetConfig>,
    /// Locality-aware load balancing for destinations whose DestinationRule sets none. Unset, as
    /// in Istio, it is enabled: with outlier detection, traffic stays in the caller's locality
    /// while it has healthy endpoints; `enabled: false` turns it off mesh-wide.
    #[serde(skip_serializing_if = "Option::is_none", alias = "locality_lb_setting")]
    pub locality_lb_setting: Option<crate::networking::LocalityLbSetting>,
}

/// The mesh-wide retry budget (Trellis's own); unset fields keep the defaults. Numbers are read
/// wide so that a wrong one is reported with its field rather than failing the whole config.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct RetryBudgetConfig {
    /// Default true.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Retries per request, 0 to 1000. Default 0.2.
    #[serde(skip_serializing_if = "Option::is_none", alias = "retry_ratio")]
    pub retry_ratio: Option<f64>,
    /// Retries allowed on top of the ratio, per second of the window. Default 10.
    #[serde(skip_serializing_if = "Option::is_none", alias = "min_retries_per_second")]
    pub min_retries_per_second: Option<i64>,
    /// How long a request counts towards the budget, 1s to 60s. Default 10s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<GoDuration>,
}

impl RetryBudgetConfig {
    /// What it changes, and the problems of the values that cannot be used, each as (field
    /// under `retryBudget.`, message).
    pub fn overrides(&self) -> (crate::retry_budget::BudgetOverrides, Vec<(&'static str, String)>) {
        use crate::retry_budget as rb;
        let mut problems = Vec::new();
        let mut keep = |field: &'static str, result: Result<(), String>| match result {
            Ok(()) => true,
            Err(message) => {
                problems.push((field, message));
                false
            }
        };
        let retry_ratio = self.retry_ratio.filter(|r| keep("retryRatio", rb::check_retry_ratio(*r)));
        let min_retries_per_second = self.min_retries_per_second.and_then(|n| {
            let checked = rb::check_min_retries_per_second(n);
            let value = checked.as_ref().ok().copied();
            keep("minRetriesPerSecond", checked.map(drop));
            value
        });
        let ttl = self.ttl.as_ref().and_then(|t| {
            let checked = t.to_std().and_then(rb::check_ttl);
            let value = checked.as_ref().ok().copied();
            keep("ttl", checked.map(drop));
            value
        });
        (rb::BudgetOverrides { enabled: self.enabled, retry_ratio, min_retries_per_second, ttl }, problems)
    }
}

/// One of `extensionProviders`: Trellis reads Envoy's external authorization, over HTTP or gRPC.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct ExtensionProvider {
    /// What a CUSTOM policy's `provider.name` refers to; unique.
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none", alias = "envoy_ext_authz_http")]
    pub envoy_ext_authz_http: Option<EnvoyExtAuthzHttp>,
    #[serde(skip_serializing_if = "Option::is_none", alias = "envoy_ext_authz_grpc")]
    pub envoy_ext_authz_grpc: Option<EnvoyExtAuthzGrpc>,
    /// A Zipkin collector (v2 JSON over HTTP): tracing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zipkin: Option<ZipkinProvider>,
    /// An OpenTelemetry collector (OTLP over gRPC, or over HTTP with `http`): tracing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opentelemetry: Option<OpenTelemetryProvider>,
}

/// `defaultProviders`: extension provider names per kind of telemetry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct DefaultProviders {
    #[serde(skip_serializing_if = "Vec::is_empty", deserialize_with = "null_as_default")]
    pub tracing: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", deserialize_with = "null_as_default")]
    pub metrics: Vec<String>,
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default",
        alias = "access_logging"
    )]
    pub access_logging: Vec<String>,
}

/// Istio's `zipkin` tracing provider.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct ZipkinProvider {
    /// The collector's service: a host name, optionally `namespace/host`.
    pub service: String,
    pub port: u32,
    /// Where spans are posted. Default `/api/v2/spans`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The longest tag value sent. Default 256.
    #[serde(skip_serializing_if = "Option::is_none", alias = "max_tag_length")]
    pub max_tag_length: Option<u32>,
}

/// Istio's `opentelemetry` tracing provider: OTLP over gRPC unless `http` is set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct OpenTelemetryProvider {
    pub service: String,
    pub port: u32,
    #[serde(skip_serializing_if = "Option::is_none", alias = "max_tag_length")]
    pub max_tag_length: Option<u32>,
    /// OTLP over HTTP (protobuf).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<OtlpHttp>,
    /// OTLP over gRPC settings (the default transport).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc: Option<OtlpGrpc>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct OtlpHttp {
    /// Default `/v1/traces`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<GoDuration>,
    /// Headers sent with every export (`name: value`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "null_as_default")]
    pub headers: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct OtlpGrpc {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<GoDuration>,
    /// gRPC metadata sent with every export.
    #[serde(
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_as_default",
        alias = "initial_metadata"
    )]
    pub initial_metadata: BTreeMap<String, String>,
}

/// An authorizer that takes the request's headers as an HTTP request and answers 200 to allow
/// (oauth2-proxy, OPA's HTTP API).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct EnvoyExtAuthzHttp {
    /// The authorizer's host: `name.namespace.svc.cluster.local` (or a ServiceEntry host),
    /// optionally `namespace/` first to pick the namespace it is looked up in.
    pub service: String,
    pub port: u32,
    /// How long the authorizer may take to answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<GoDuration>,
    /// Prepended to the request's path in the check request; starts with `/`.
    #[serde(skip_serializing_if = "String::is_empty", alias = "path_prefix")]
    pub path_prefix: String,
    /// Allow the request when the authorizer cannot be reached or answers badly.
    #[serde(skip_serializing_if = "Option::is_none", alias = "fail_open")]
    pub fail_open: Option<bool>,
    /// The status sent when the authorizer cannot be reached (default 403), as a string.
    #[serde(skip_serializing_if = "String::is_empty", alias = "status_on_error")]
    pub status_on_error: String,
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default",
        alias = "include_request_headers_in_check"
    )]
    pub include_request_headers_in_check: Vec<String>,
    #[serde(
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_as_default",
        alias = "include_additional_headers_in_check"
    )]
    pub include_additional_headers_in_check: BTreeMap<String, String>,
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default",
        alias = "headers_to_upstream_on_allow"
    )]
    pub headers_to_upstream_on_allow: Vec<String>,
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default",
        alias = "headers_to_downstream_on_deny"
    )]
    pub headers_to_downstream_on_deny: Vec<String>,
    /// Not supported by Trellis: the body is never sent.
    #[serde(skip_serializing_if = "Option::is_none", alias = "include_request_body_in_check")]
    pub include_request_body_in_check: Option<RequestBodyInCheck>,
}

/// An authorizer that speaks `envoy.service.auth.v3.Authorization/Check` (OPA-Envoy).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct EnvoyExtAuthzGrpc {
    pub service: String,
    pub port: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<GoDuration>,
    #[serde(skip_serializing_if = "Option::is_none", alias = "fail_open")]
    pub fail_open: Option<bool>,
    #[serde(skip_serializing_if = "String::is_empty", alias = "status_on_error")]
    pub status_on_error: String,
    /// Not supported by Trellis: the body is never sent.
    #[serde(skip_serializing_if = "Option::is_none", alias = "include_request_body_in_check")]
    pub include_request_body_in_check: Option<RequestBodyInCheck>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct RequestBodyInCheck {
    #[serde(skip_serializing_if = "Option::is_none", alias = "max_request_bytes")]
    pub max_request_bytes: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", alias = "allow_partial_message")]
    pub allow_partial_message: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none", alias = "pack_as_bytes")]
    pub pack_as_bytes: Option<bool>,
}

/// The parts of an ext_authz provider both protocols have.
#[derive(Clone, Copy, Debug)]
pub struct ExtAuthzCommon<'a> {
    pub service: &'a str,
    pub port: u32,
    pub timeout: Option<&'a GoDuration>,
    pub fail_open: bool,
    pub status_on_error: &'a str,
}

impl ExtensionProvider {
    /// The external authorization settings, when this provider is one.
    pub fn ext_authz(&self) -> Option<ExtAuthzCommon<'_>> {
        if let Some(h) = &self.envoy_ext_authz_http {
            return Some(ExtAuthzCommon {
                service: &h.service,
                port: h.port,
                timeout: h.timeout.as_ref(),
                fail_open: h.fail_open.unwrap_or(false),
                status_on_error: &h.status_on_error,
            });
        }
        self.envoy_ext_authz_grpc.as_ref().map(|g| ExtAuthzCommon {
            service: &g.service,
            port: g.port,
            timeout: g.timeout.as_ref(),
            fail_open: g.fail_open.unwrap_or(false),
            status_on_error: &g.status_on_error,
        })
    }

    /// What is wrong with this provider alone (not its name being unique), each naming its
    /// field relative to it.
    pub fn problems(&self) -> Vec<String> {
        let mut errors = Vec::new();
        self.validate_into("", &mut HashSet::new(), &mut errors);
        errors
    }

    fn validate_into(&self, prefix: &str, seen: &mut HashSet<String>, errors: &mut Vec<String>) {
        if self.name.is_empty() {
            errors.push(format!("{prefix}name: required"));
        } else if !seen.insert(self.name.clone()) {
            errors.push(format!("{prefix}name: {:?} is defined more than once", self.name));
        }
        if self.envoy_ext_authz_http.is_some() && self.envoy_ext_authz_grpc.is_some() {
            errors.push(format!("{prefix}envoyExtAuthzHttp: cannot be combined with envoyExtAuthzGrpc"));
        }
        if let Some(http) = &self.envoy_ext_authz_http {
            let at = format!("{prefix}envoyExtAuthzHttp.");
            if !http.path_prefix.is_empty() && !http.path_prefix.starts_with('/') {
                errors.push(format!("{at}pathPrefix: {:?} must start with '/'", http.path_prefix));
            } else if http.path_prefix.contains(['?', '#', ' '])
                || http.path_prefix.chars().any(char::is_control)
            {
                errors.push(format!(
                    "{at}pathPrefix: {:?} must be a path, without query or fragment",
                    http.path_prefix
                ));
            }
            for (i, name) in http.include_request_headers_in_check.iter().enumerate() {
                push_err(
                    errors,
                    &format!("{at}includeRequestHeadersInCheck[{i}]"),
                    check_header_name(name, false),
                );
            }
            for (name, value) in &http.include_additional_headers_in_check {
                push_err(
                    errors,
                    &format!("{at}includeAdditionalHeadersInCheck"),
                    check_header_name(name, false),
                );
                if value.chars().any(char::is_control) {
                    errors.push(format!(
                        "{at}includeAdditionalHeadersInCheck.{name}: the value has control characters"
                    ));
                }
            }
            for (i, name) in http.headers_to_upstream_on_allow.iter().enumerate() {
                push_err(
                    errors,
                    &format!("{at}headersToUpstreamOnAllow[{i}]"),
                    check_header_name(name, false),
                );
            }
            for (i, name) in http.headers_to_downstream_on_deny.iter().enumerate() {
                push_err(
                    errors,
                    &format!("{at}headersToDownstreamOnDeny[{i}]"),
                    check_header_name(name, false),
                );
            }
        }
        self.tracing_problems(prefix, errors);
        if let Some(common) = self.ext_authz() {
            let kind =
                if self.envoy_ext_authz_http.is_some() { "envoyExtAuthzHttp" } else { "envoyExtAuthzGrpc" };
            let at = format!("{prefix}{kind}.");
            push_err(errors, &format!("{at}service"), check_provider_service(common.service));
            push_err(errors, &format!("{at}port"), check_port(common.port).map(drop));
            if let Some(timeout) = common.timeout {
                push_err(errors, &format!("{at}timeout"), check_duration_ms(timeout).map(drop));
            }
            if !common.status_on_error.is_empty() {
                push_err(
                    errors,
                    &format!("{at}statusOnError"),
                    parse_status_on_error(common.status_on_error).map(drop),
                );
            }
        }
    }

    fn warnings_into(&self, prefix: &str, warnings: &mut Vec<String>) {
        let http_body =
            self.envoy_ext_authz_http.as_ref().is_some_and(|h| h.include_request_body_in_check.is_some());
        let grpc_body =
            self.envoy_ext_authz_grpc.as_ref().is_some_and(|g| g.include_request_body_in_check.is_some());
        let body = if http_body {
            Some("envoyExtAuthzHttp")
        } else if grpc_body {
            Some("envoyExtAuthzGrpc")
        } else {
            None
        };
        if let Some(kind) = body {
            warnings.push(format!(
                "{prefix}.{kind}.includeRequestBodyInCheck: not supported by Trellis; the authorizer gets the request's headers only"
            ));
        }
        if self.ext_authz().is_none() && !self.is_tracing() {
            warnings.push(format!(
                "{prefix}: not an external authorizer (envoyExtAuthzHttp or envoyExtAuthzGrpc) or a tracing provider (zipkin, opentelemetry); Trellis does not read other providers, and a CUSTOM policy naming {:?} denies",
                self.name
            ));
        }
    }

    /// Whether spans can be sent to this provider (zipkin or opentelemetry).
    pub fn is_tracing(&self) -> bool {
        self.zipkin.is_some() || self.opentelemetry.is_some()
    }

    fn tracing_problems(&self, prefix: &str, errors: &mut Vec<String>) {
        let kinds = [
            self.envoy_ext_authz_http.is_some(),
            self.envoy_ext_authz_grpc.is_some(),
            self.zipkin.is_some(),
            self.opentelemetry.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() > 1 && self.is_tracing() {
            errors.push(format!("{prefix}name: {:?} sets more than one kind of provider", self.name));
        }
        if let Some(zipkin) = &self.zipkin {
            let at = format!("{prefix}zipkin.");
            push_err(errors, &format!("{at}service"), check_provider_service(&zipkin.service));
            push_err(errors, &format!("{at}port"), check_port(zipkin.port).map(drop));
            if let Some(path) = &zipkin.path {
                push_err(errors, &format!("{at}path"), check_collector_path(path));
            }
        }
        if let Some(otel) = &self.opentelemetry {
            let at = format!("{prefix}opentelemetry.");
            push_err(errors, &format!("{at}service"), check_provider_service(&otel.service));
            push_err(errors, &format!("{at}port"), check_port(otel.port).map(drop));
            if let Some(http) = &otel.http {
                if !http.path.is_empty() {
                    push_err(errors, &format!("{at}http.path"), check_collector_path(&http.path));
                }
                if let Some(timeout) = &http.timeout {
                    push_err(errors, &format!("{at}http.timeout"), check_duration_ms(timeout).map(drop));
                }
                for (name, value) in &http.headers {
                    push_err(errors, &format!("{at}http.headers"), check_header_name(name, false));
                    if value.chars().any(char::is_control) {
                        errors.push(format!("{at}http.headers.{name}: the value has control characters"));
                    }
                }
            }
            if let Some(grpc) = &otel.grpc {
                if let Some(timeout) = &grpc.timeout {
                    push_err(errors, &format!("{at}grpc.timeout"), check_duration_ms(timeout).map(drop));
                }
                for (name, value) in &grpc.initial_metadata {
                    push_err(errors, &format!("{at}grpc.initialMetadata"), check_header_name(name, false));
                    if value.chars().any(char::is_control) {
                        errors.push(format!(
                            "{at}grpc.initialMetadata.{name}: the value has control characters"
                        ));
                    }
                }
            }
        }
    }
}

/// A collector's path: absolute, without query, fragment, spaces or control characters.
fn check_collector_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} must start with '/'"));
    }
    if path.contains(['?', '#', ' ']) || path.chars().any(char::is_control) {
        return Err(format!("{path:?} must be a path, without query or fragment"));
    }
    Ok(())
}

/// Istio's `service` of an extension provider: a host name or IP, optionally `namespace/host`.
fn check_provider_service(service: &str) -> Result<(), String> {
    if service.is_empty() {
        return Err("required".into());
    }
    let host = match service.split_once('/') {
        Some((ns, host)) => {
            check_dns1123_label(ns).map_err(|e| format!("{service:?}: namespace {e}"))?;
            host
        }
        None => service,
    };
    if host.contains(['*', '/']) {
        return Err(format!("{service:?}: not a host name"));
    }
    check_host_or_ip(host).map_err(|e| format!("{service:?}: {e}"))
}

/// `statusOnError`: an HTTP status code Envoy knows (Envoy's `StatusCode` enum).
pub fn parse_status_on_error(text: &str) -> Result<u16, String> {
    let code: u16 = text.parse().map_err(|_| format!("{text:?} is not an HTTP status code"))?;
    let known = matches!(code, 100 | 200..=208 | 226 | 300..=305 | 307 | 308 | 400..=418 | 421..=424 | 426 | 428 | 429 | 431 | 500..=508 | 510 | 511);
    if known { Ok(code) } else { Err(format!("{code} is not an HTTP status code Envoy supports")) }
}

/// What happens to outbound traffic for destinations the mesh does not know.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundTrafficMode {
    /// Only destinations in the service registry (Services, ServiceEntries) are reachable.
    RegistryOnly,
    /// Unknown destinations are passed through.
    #[default]
    AllowAny,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct OutboundTrafficPolicy {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<OutboundTrafficMode>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AccessLogEncoding {
    #[default]
    Text,
    Json,
}

/// Istio's `HTTPRetry`, as used for `defaultHttpRetryPolicy`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRetry {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none", alias = "per_try_timeout")]
    pub per_try_timeout: Option<GoDuration>,
    /// Comma-separated Envoy retry conditions (`5xx,connect-failure`) and HTTP status codes.
    #[serde(skip_serializing_if = "Option::is_none", alias = "retry_on")]
    pub retry_on: Option<String>,
}

/// Schema stand-in for `LabelSelector`: k8s-openapi implements `JsonSchema` only behind a
/// feature this crate does not enable. Never constructed; it only describes the shape.
#[allow(dead_code)]
#[derive(JsonSchema)]
#[schemars(rename = "LabelSelector", rename_all = "camelCase")]
struct LabelSelectorSchema {
    match_labels: Option<BTreeMap<String, String>>,
    match_expressions: Option<Vec<LabelSelectorRequirementSchema>>,
}

#[allow(dead_code)]
#[derive(JsonSchema)]
#[schemars(rename = "LabelSelectorRequirement")]
struct LabelSelectorRequirementSchema {
    key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    operator: String,
    values: Option<Vec<String>>,
}

/// The proxy settings every workload gets when the mesh config sets none.
static EMPTY_PROXY_CONFIG: ProxyConfig = ProxyConfig {
    discovery_address: None,
    proxy_metadata: BTreeMap::new(),
    hold_application_until_proxy_starts: None,
    concurrency: None,
    drain_duration: None,
    termination_drain_duration: None,
    status_port: None,
    proxy_admin_port: None,
    interception_mode: None,
    tracing: None,
    image: None,
};

impl MeshConfig {
    /// Parses the mesh config YAML (the `mesh` key of Istio's ConfigMap). Fields Trellis does
    /// not know are not errors — Istio has many more — but their paths are returned so that
    /// typos can be shown as warnings.
    pub fn from_yaml(text: &str) -> Result<(MeshConfig, Vec<String>), MeshConfigError> {
        from_yaml_tracked(text)
    }

    pub fn to_yaml(&self) -> Result<String, String> {
        serde_saphyr::to_string(self).map_err(|e| e.to_string())
    }

    pub fn trust_domain(&self) -> &str {
        self.trust_domain.as_deref().unwrap_or(DEFAULT_TRUST_DOMAIN)
    }

    pub fn root_namespace(&self) -> &str {
        self.root_namespace.as_deref().unwrap_or(DEFAULT_ROOT_NAMESPACE)
    }

    /// The mesh-wide proxy settings (all unset when the mesh config has none).
    pub fn proxy_config(&self) -> &ProxyConfig {
        self.default_config.as_ref().unwrap_or(&EMPTY_PROXY_CONFIG)
    }

    pub fn outbound_mode(&self) -> OutboundTrafficMode {
        self.outbound_traffic_policy.as_ref().and_then(|p| p.mode).unwrap_or_default()
    }

    pub fn enable_auto_mtls(&self) -> bool {
        self.enable_auto_mtls.unwrap_or(true)
    }

    pub fn enable_tracing(&self) -> bool {
        self.enable_tracing.unwrap_or(true)
    }

    pub fn enable_prometheus_merge(&self) -> bool {
        self.enable_prometheus_merge.unwrap_or(true)
    }

    pub fn access_log_encoding(&self) -> AccessLogEncoding {
        self.access_log_encoding.unwrap_or_default()
    }

    /// The access log path, or `None` when access logs are off.
    pub fn access_log_file(&self) -> Option<&str> {
        self.access_log_file.as_deref().filter(|f| !f.is_empty())
    }

    /// Errors only if the value does not parse, which [`MeshConfig::validate`] reports too.
    pub fn connect_timeout(&self) -> Result<Duration, String> {
        effective_duration(&self.connect_timeout, DEFAULT_CONNECT_TIMEOUT)
    }

    pub fn protocol_detection_timeout(&self) -> Result<Duration, String> {
        effective_duration(&self.protocol_detection_timeout, Duration::ZERO)
    }

    pub fn default_service_export_to(&self) -> Vec<&str> {
        export_to_or_public(&self.default_service_export_to)
    }

    pub fn default_virtual_service_export_to(&self) -> Vec<&str> {
        export_to_or_public(&self.default_virtual_service_export_to)
    }

    pub fn default_destination_rule_export_to(&self) -> Vec<&str> {
        export_to_or_public(&self.default_destination_rule_export_to)
    }

    /// The mesh-wide retry budget: the default with `retryBudget` over it (values that cannot
    /// be used are left out; [`MeshConfig::validate`] reports them).
    pub fn retry_budget(&self) -> crate::retry_budget::BudgetSetting {
        let base = crate::retry_budget::BudgetSetting::default();
        self.retry_budget.as_ref().map_or(base, |config| config.overrides().0.apply(base))
    }

    /// Every problem in the config, each naming its field (`defaultConfig.statusPort: ...`).
    /// An empty list means the config can be used.
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if let Some(domain) = &self.trust_domain {
            push_err(&mut errors, "trustDomain", check_dns1123_subdomain(domain));
        }
        for (i, alias) in self.trust_domain_aliases.iter().enumerate() {
            push_err(&mut errors, &format!("trustDomainAliases[{i}]"), check_dns1123_subdomain(alias));
        }
        if let Some(ns) = &self.root_namespace {
            push_err(&mut errors, "rootNamespace", check_dns1123_label(ns));
        }
        if let Some(proxy) = &self.default_config {
            proxy.validate_into("defaultConfig.", &mut errors);
        }
        check_export_to("defaultServiceExportTo", &self.default_service_export_to, &mut errors);
        check_export_to(
            "defaultVirtualServiceExportTo",
            &self.default_virtual_service_export_to,
            &mut errors,
        );
        check_export_to(
            "defaultDestinationRuleExportTo",
            &self.default_destination_rule_export_to,
            &mut errors,
        );
        if let Some(retry) = &self.default_http_retry_policy {
            retry.validate_into("defaultHttpRetryPolicy.", &mut errors);
        }
        if let Some(timeout) = &self.connect_timeout {
            push_err(&mut errors, "connectTimeout", check_duration_ms(timeout).map(drop));
        }
        if let Some(timeout) = &self.protocol_detection_timeout {
            push_err(&mut errors, "protocolDetectionTimeout", check_optional_timeout(timeout));
        }
        push_err(
            &mut errors,
            "accessLogFormat",
            crate::access_log::check_format(self.access_log_format.as_deref(), self.access_log_encoding()),
        );
        for (i, selector) in self.discovery_selectors.iter().enumerate() {
            check_label_selector(&format!("discoverySelectors[{i}]"), selector, &mut errors);
        }
        let mut names = HashSet::new();
        for (i, provider) in self.extension_providers.iter().enumerate() {
            provider.validate_into(&format!("extensionProviders[{i}]."), &mut names, &mut errors);
        }
        if let Some(budget) = &self.retry_budget {
            for (field, message) in budget.overrides().1 {
                errors.push(format!("retryBudget.{field}: {message}"));
            }
        }
        if let Some(setting) = &self.locality_lb_setting {
            let findings = crate::validate::locality_lb_setting("localityLbSetting", setting);
            errors.extend(
                findings
                    .iter()
                    .filter(|f| f.severity == crate::validate::Severity::Error)
                    .map(|f| f.to_string()),
            );
        }
        errors
    }

    /// What the config asks for that Trellis does not do, each naming its field. The config can
    /// still be used.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        for (i, provider) in self.extension_providers.iter().enumerate() {
            provider.warnings_into(&format!("extensionProviders[{i}]"), &mut warnings);
        }
        self.tracing_provider_warnings(&mut warnings);
        warnings
    }

    /// `defaultProviders.tracing` names that no tracing provider answers to, and names past the
    /// first (Envoy sends a request's spans to one tracer).
    fn tracing_provider_warnings(&self, warnings: &mut Vec<String>) {
        let names = self.default_providers.as_ref().map(|d| d.tracing.as_slice()).unwrap_or_default();
        for (i, name) in names.iter().enumerate() {
            let at = format!("defaultProviders.tracing[{i}]");
            match self.extension_provider(name) {
                None => warnings.push(format!(
                    "{at}: {name:?} is not in extensionProviders; spans are not exported"
                )),
                Some(p) if !p.is_tracing() => warnings.push(format!(
                    "{at}: {name:?} is not a tracing provider (zipkin or opentelemetry); spans are not exported"
                )),
                Some(_) if i > 0 => warnings.push(format!(
                    "{at}: {name:?}: only the first tracing provider is used, as in Istio"
                )),
                Some(_) => {}
            }
        }
    }

    /// The tracing provider spans go to: the first of `defaultProviders.tracing`, when it names
    /// a zipkin or opentelemetry provider.
    pub fn default_tracing_provider(&self) -> Option<&ExtensionProvider> {
        let name = self.default_providers.as_ref()?.tracing.first()?;
        self.extension_provider(name).filter(|p| p.is_tracing())
    }

    /// The extension provider named `name`.
    pub fn extension_provider(&self, name: &str) -> Option<&ExtensionProvider> {
        self.extension_providers.iter().find(|p| p.name == name)
    }
}

fn effective_duration(value: &Option<GoDuration>, default: Duration) -> Result<Duration, String> {
    value.as_ref().map_or(Ok(default), GoDuration::to_std)
}

fn export_to_or_public(values: &[String]) -> Vec<&str> {
    if values.is_empty() { vec!["*"] } else { values.iter().map(String::as_str).collect() }
}

fn push_err(errors: &mut Vec<String>, field: &str, result: Result<(), String>) {
    if let Err(message) = result {
        errors.push(format!("{field}: {message}"));
    }
}

/// A zero duration means "disabled"; anything else must be a real timeout.
fn check_optional_timeout(value: &GoDuration) -> Result<(), String> {
    if value.to_std()? == Duration::ZERO { Ok(()) } else { check_duration_ms(value).map(drop) }
}

/// `exportTo` entries: `.` (own namespace), `*` (every namespace) or namespace names; `*`
/// alone, each entry once.
fn check_export_to(field: &str, values: &[String], errors: &mut Vec<String>) {
    let mut seen = HashSet::new();
    for (i, value) in values.iter().enumerate() {
        if value != "." && value != "*" && check_dns1123_label(value).is_err() {
            errors.push(format!("{field}[{i}]: {value:?} is not \".\", \"*\" or a namespace name"));
        }
        if !seen.insert(value) {
            errors.push(format!("{field}[{i}]: {value:?} is listed more than once"));
        }
    }
    if values.len() > 1 && values.iter().any(|v| v == "*") {
        errors.push(format!("{field}: \"*\" (every namespace) cannot be combined with other entries"));
    }
}

fn check_label_selector(field: &str, selector: &LabelSelector, errors: &mut Vec<String>) {
    for (key, value) in selector.match_labels.iter().flatten() {
        push_err(errors, &format!("{field}.matchLabels"), check_label_key(key));
        push_err(errors, &format!("{field}.matchLabels.{key}"), check_label_value(value));
    }
    for (i, req) in selector.match_expressions.iter().flatten().enumerate() {
        let at = format!("{field}.matchExpressions[{i}]");
        push_err(errors, &format!("{at}.key"), check_label_key(&req.key));
        let values = req.values.as_deref().unwrap_or_default();
        match req.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                errors.push(format!("{at}.values: operator {} needs at least one value", req.operator));
            }
            "In" | "NotIn" => {
                for (j, value) in values.iter().enumerate() {
                    push_err(errors, &format!("{at}.values[{j}]"), check_label_value(value));
                }
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                errors.push(format!("{at}.values: operator {} takes no values", req.operator));
            }
            "Exists" | "DoesNotExist" => {}
            other => {
                errors.push(format!("{at}.operator: {other:?} is not one of In, NotIn, Exists, DoesNotExist"))
            }
        }
    }
}

impl HttpRetry {
    fn validate_into(&self, prefix: &str, errors: &mut Vec<String>) {
        if let Some(attempts) = self.attempts
            && attempts < 0
        {
            errors.push(format!("{prefix}attempts: must not be negative (got {attempts})"));
        }
        if let Some(timeout) = &self.per_try_timeout {
            push_err(errors, &format!("{prefix}perTryTimeout"), check_duration_ms(timeout).map(drop));
        }
        if let Some(retry_on) = self.retry_on.as_deref().filter(|r| !r.is_empty()) {
            push_err(errors, &format!("{prefix}retryOn"), crate::primitives::check_retry_on(retry_on));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ProxyConfig

/// Settings of one workload's proxy: `meshConfig.defaultConfig`, overridden per pod by the
/// `proxy.istio.io/config` annotation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct ProxyConfig {
    /// Control plane address (`host:port`). Default `trellisd.istio-system.svc:15010`.
    #[serde(skip_serializing_if = "Option::is_none", alias = "discovery_address")]
    pub discovery_address: Option<String>,
    /// Extra environment for the proxy (`ISTIO_META_*` and feature switches).
    #[serde(
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_as_default",
        alias = "proxy_metadata"
    )]
    pub proxy_metadata: BTreeMap<String, String>,
    /// Start application containers only once the proxy is ready. Default false.
    #[serde(skip_serializing_if = "Option::is_none", alias = "hold_application_until_proxy_starts")]
    pub hold_application_until_proxy_starts: Option<bool>,
    /// Worker threads; 0 means one per CPU, unset means derived from the CPU limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<i32>,
    /// How long the proxy drains connections on hot restart. Default 45s.
    #[serde(skip_serializing_if = "Option::is_none", alias = "drain_duration")]
    pub drain_duration: Option<GoDuration>,
    /// How long the proxy drains on pod termination. Default 5s.
    #[serde(skip_serializing_if = "Option::is_none", alias = "termination_drain_duration")]
    pub termination_drain_duration: Option<GoDuration>,
    /// Status and merged-metrics port. Default 15020. Kept as the proto's int32 so that an out
    /// of range value is reported by `validate` with the field name rather than as a parse
    /// error.
    #[serde(skip_serializing_if = "Option::is_none", alias = "status_port")]
    pub status_port: Option<i32>,
    /// Admin port (localhost only). Default 15000.
    #[serde(skip_serializing_if = "Option::is_none", alias = "proxy_admin_port")]
    pub proxy_admin_port: Option<i32>,
    /// Default `REDIRECT`.
    #[serde(skip_serializing_if = "Option::is_none", alias = "interception_mode")]
    pub interception_mode: Option<InterceptionMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Tracing>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<ProxyImage>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct Tracing {
    /// Percent of requests traced, 0-100, in steps of 0.01. Default 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampling: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zipkin: Option<ZipkinTracing>,
    /// Tags added to every span, by tag name.
    #[serde(
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_as_default",
        alias = "custom_tags"
    )]
    pub custom_tags: BTreeMap<String, CustomTag>,
    /// The longest `http.url` tag. Default 256.
    #[serde(skip_serializing_if = "Option::is_none", alias = "max_path_tag_length")]
    pub max_path_tag_length: Option<u32>,
}

/// A span tag's value: a literal, an environment variable of the proxy, or a request header.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct CustomTag {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub literal: Option<LiteralTag>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<ValueFromTag>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<ValueFromTag>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct LiteralTag {
    pub value: String,
}

/// `environment` or `header`: the variable or header `name`, `defaultValue` when it is absent.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct ValueFromTag {
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty", alias = "default_value")]
    pub default_value: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct ZipkinTracing {
    /// Collector address, `host:port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct ProxyImage {
    /// Image variant: `default`, `debug`, `distroless`, or any tag suffix the registry has.
    #[serde(skip_serializing_if = "Option::is_none", alias = "image_type")]
    pub image_type: Option<String>,
}

impl ProxyConfig {
    /// Parses ProxyConfig YAML or JSON (JSON is read as YAML), returning the paths of fields
    /// Trellis does not know.
    pub fn from_yaml(text: &str) -> Result<(ProxyConfig, Vec<String>), MeshConfigError> {
        from_yaml_tracked(text)
    }

    pub fn discovery_address(&self) -> &str {
        self.discovery_address.as_deref().unwrap_or(DEFAULT_DISCOVERY_ADDRESS)
    }

    pub fn hold_application_until_proxy_starts(&self) -> bool {
        self.hold_application_until_proxy_starts.unwrap_or(false)
    }

    pub fn drain_duration(&self) -> Result<Duration, String> {
        effective_duration(&self.drain_duration, DEFAULT_DRAIN_DURATION)
    }

    pub fn termination_drain_duration(&self) -> Result<Duration, String> {
        effective_duration(&self.termination_drain_duration, DEFAULT_TERMINATION_DRAIN_DURATION)
    }

    /// Errors only if the value is out of range, which [`ProxyConfig::validate`] reports too.
    pub fn status_port(&self) -> Result<u16, String> {
        self.status_port.map_or(Ok(DEFAULT_STATUS_PORT), check_port_i32)
    }

    pub fn proxy_admin_port(&self) -> Result<u16, String> {
        self.proxy_admin_port.map_or(Ok(DEFAULT_PROXY_ADMIN_PORT), check_port_i32)
    }

    pub fn interception_mode(&self) -> InterceptionMode {
        self.interception_mode.unwrap_or_default()
    }

    pub fn tracing_sampling(&self) -> f64 {
        self.tracing.as_ref().and_then(|t| t.sampling).unwrap_or(DEFAULT_TRACE_SAMPLING)
    }

    pub fn image_type(&self) -> &str {
        self.image.as_ref().and_then(|i| i.image_type.as_deref()).unwrap_or(DEFAULT_IMAGE_TYPE)
    }

    /// Applies `overlay` on top of `self`, the way a pod's `proxy.istio.io/config` overrides
    /// the mesh default: fields the overlay sets win, `proxyMetadata` is merged key by key and
    /// `tracing` field by field.
    pub fn merge_from(&mut self, overlay: &ProxyConfig) {
        override_with(&mut self.discovery_address, &overlay.discovery_address);
        for (key, value) in &overlay.proxy_metadata {
            self.proxy_metadata.insert(key.clone(), value.clone());
        }
        override_with(
            &mut self.hold_application_until_proxy_starts,
            &overlay.hold_application_until_proxy_starts,
        );
        override_with(&mut self.concurrency, &overlay.concurrency);
        override_with(&mut self.drain_duration, &overlay.drain_duration);
        override_with(&mut self.termination_drain_duration, &overlay.termination_drain_duration);
        override_with(&mut self.status_port, &overlay.status_port);
        override_with(&mut self.proxy_admin_port, &overlay.proxy_admin_port);
        override_with(&mut self.interception_mode, &overlay.interception_mode);
        if let Some(over) = &overlay.tracing {
            let tracing = self.tracing.get_or_insert_with(Tracing::default);
            override_with(&mut tracing.sampling, &over.sampling);
            override_with(&mut tracing.zipkin, &over.zipkin);
            if !over.custom_tags.is_empty() {
                tracing.custom_tags.clone_from(&over.custom_tags);
            }
            override_with(&mut tracing.max_path_tag_length, &over.max_path_tag_length);
        }
        override_with(&mut self.image, &overlay.image);
    }

    /// Every problem, each naming its field relative to the ProxyConfig (`statusPort: ...`).
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        self.validate_into("", &mut errors);
        errors
    }

    fn validate_into(&self, prefix: &str, errors: &mut Vec<String>) {
        let field = |name: &str| format!("{prefix}{name}");
        if let Some(address) = &self.discovery_address {
            push_err(errors, &field("discoveryAddress"), check_host_port(address));
        }
        for key in self.proxy_metadata.keys() {
            push_err(errors, &field("proxyMetadata"), check_env_name(key));
        }
        if let Some(concurrency) = self.concurrency
            && concurrency < 0
        {
            errors.push(format!("{}: must not be negative (got {concurrency})", field("concurrency")));
        }
        for (name, value) in [
            ("drainDuration", &self.drain_duration),
            ("terminationDrainDuration", &self.termination_drain_duration),
        ] {
            if let Some(duration) = value {
                push_err(errors, &field(name), parse_go_duration(&duration.0).map(drop));
            }
        }
        let status = self.status_port.map(check_port_i32);
        let admin = self.proxy_admin_port.map(check_port_i32);
        if let Some(result) = &status {
            push_err(errors, &field("statusPort"), result.clone().map(drop));
        }
        if let Some(result) = &admin {
            push_err(errors, &field("proxyAdminPort"), result.clone().map(drop));
        }
        if let (Ok(status), Ok(admin)) = (self.status_port(), self.proxy_admin_port())
            && status == admin
        {
            errors.push(format!("{}: {status} is also the proxyAdminPort", field("statusPort")));
        }
        if let Some(tracing) = &self.tracing {
            tracing.validate_into(&field("tracing."), errors);
        }
        if let Some(image_type) = self.image.as_ref().and_then(|i| i.image_type.as_deref()) {
            push_err(errors, &field("image.imageType"), check_image_type(image_type));
        }
    }
}

fn override_with<T: Clone>(base: &mut Option<T>, overlay: &Option<T>) {
    if overlay.is_some() {
        base.clone_from(overlay);
    }
}

impl Tracing {
    fn validate_into(&self, prefix: &str, errors: &mut Vec<String>) {
        if let Some(sampling) = self.sampling
            && !(sampling.is_finite() && (0.0..=100.0).contains(&sampling))
        {
            errors.push(format!("{prefix}sampling: {sampling} is out of range 0-100 (a percentage)"));
        }
        if let Some(address) = self.zipkin.as_ref().and_then(|z| z.address.as_deref()) {
            push_err(errors, &format!("{prefix}zipkin.address"), check_host_port(address));
        }
        for (tag, value) in &self.custom_tags {
            custom_tag_problems(&format!("{prefix}customTags.{tag}"), value, errors);
        }
    }
}

/// A custom tag sets exactly one of literal, environment and header, with a name where one is
/// needed; a header name must be a valid one.
pub fn custom_tag_problems(at: &str, tag: &CustomTag, errors: &mut Vec<String>) {
    let set = [tag.literal.is_some(), tag.environment.is_some(), tag.header.is_some()];
    match set.iter().filter(|s| **s).count() {
        0 => errors.push(format!("{at}: set one of literal, environment or header")),
        1 => {}
        _ => errors.push(format!("{at}: set only one of literal, environment or header")),
    }
    if let Some(env) = &tag.environment
        && env.name.is_empty()
    {
        errors.push(format!("{at}.environment.name: required"));
    }
    if let Some(header) = &tag.header {
        push_err(errors, &format!("{at}.header.name"), check_header_name(&header.name, false));
    }
}

/// Ports are int32 in Istio's API; refuse what is not a port without wrapping negatives.
fn check_port_i32(port: i32) -> Result<u16, String> {
    u32::try_from(port).map_err(|_| format!("port {port} is out of range 1-65535")).and_then(check_port)
}

/// `host:port` or `[ipv6]:port`, as the proxy dials it.
fn check_host_port(text: &str) -> Result<(), String> {
    let bad = || format!("{text:?} is not host:port");
    let (host, port) = match text.strip_prefix('[') {
        Some(rest) => {
            let (ip, after) = rest.split_once(']').ok_or_else(bad)?;
            ip.parse::<Ipv6Addr>().map_err(|_| format!("{ip:?} is not an IPv6 address"))?;
            (None, after.strip_prefix(':').ok_or_else(bad)?)
        }
        None => {
            let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
            if host.contains(':') {
                return Err(format!("{text:?}: write an IPv6 address in brackets, e.g. [::1]:15012"));
            }
            (Some(host), port)
        }
    };
    if let Some(host) = host
        && (host.is_empty() || host.contains('*') || check_host_or_ip(host).is_err())
    {
        return Err(format!("{text:?}: {host:?} is not a host name or IP address"));
    }
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{text:?}: {port:?} is not a port number"));
    }
    parse_port(port).map(drop)
}

/// `proxyMetadata` keys become environment variables of the proxy container, so they must be
/// names Kubernetes accepts there.
fn check_env_name(name: &str) -> Result<(), String> {
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    if !name.is_empty() && !name.starts_with(|c: char| c.is_ascii_digit()) && name.chars().all(valid) {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid environment variable name (letters, digits, '_', '-', '.', not starting with a digit)"
        ))
    }
}

/// The image type becomes a tag suffix (`1.22.0-distroless`), so it must be tag characters.
fn check_image_type(image_type: &str) -> Result<(), String> {
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    if !image_type.is_empty() && image_type.len() <= 64 && image_type.chars().all(valid) {
        Ok(())
    } else {
        Err(format!(
            "{image_type:?} is not a valid image type (e.g. default, debug, distroless; letters, digits, '_', '-', '.')"
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing with unknown-field tracking and located errors

/// Why a mesh or proxy config could not be read: the field, the position and the reason.
pub type MeshConfigError = crate::load::LoadError;

/// Deserializes one YAML document, recording ignored fields and the path of a failing field.
fn from_yaml_tracked<T: DeserializeOwned>(text: &str) -> Result<(T, Vec<String>), MeshConfigError> {
    if text.len() > MAX_MESH_CONFIG_LEN {
        return Err(MeshConfigError::whole(format!(
            "document is {} bytes, at most {MAX_MESH_CONFIG_LEN} are allowed",
            text.len()
        )));
    }
    crate::load::decode_single(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_budget_is_on_by_default_and_its_fields_are_checked() {
        use crate::retry_budget::{DEFAULT, RetryBudget};
        assert_eq!(MeshConfig::default().retry_budget().effective(), Some(DEFAULT));
        let (mesh, unknown) =
            MeshConfig::from_yaml("retryBudget: {retryRatio: 0.5, minRetriesPerSecond: 3, ttl: 20s}")
                .unwrap();
        assert!(unknown.is_empty() && mesh.validate().is_empty(), "{unknown:?} {:?}", mesh.validate());
        assert_eq!(
            mesh.retry_budget().effective(),
            Some(RetryBudget { retry_ratio: 0.5, min_retries_per_second: 3, ttl: Duration::from_secs(20) })
        );
        let (off, _) = MeshConfig::from_yaml("retryBudget: {enabled: false}").unwrap();
        assert_eq!(off.retry_budget().effective(), None);
        let (bad, _) =
            MeshConfig::from_yaml("retryBudget: {retryRatio: -1, minRetriesPerSecond: -2, ttl: 2h}").unwrap();
        assert_eq!(
            bad.validate(),
            [
                "retryBudget.retryRatio: -1 is not a ratio between 0 and 1000 (0.2: one retry per five requests)",
                "retryBudget.minRetriesPerSecond: -2 is not between 0 and 2147483647",
                "retryBudget.ttl: 7200s is not between 1s and 60s",
            ]
        );
        assert_eq!(bad.retry_budget().effective(), Some(DEFAULT), "bad values are left out");
    }

    #[test]
    fn tracing_providers_custom_tags_and_default_providers_are_read_and_checked() {
        let text = r#"
extensionProviders:
- name: zipkin
  zipkin: { service: zipkin.istio-system.svc.cluster.local, port: 9411, path: /api/v2/spans, maxTagLength: 64 }
- name: otel
  opentelemetry: { service: observability/otel, port: 4317, grpc: { timeout: 2s, initialMetadata: { x-key: v } } }
- name: otel-http
  opentelemetry: { service: otel.observability.svc.cluster.local, port: 4318, http: { path: /v1/traces, timeout: 1s, headers: { authorization: Bearer x } } }
defaultProviders: { tracing: [otel, zipkin, nowhere] }
defaultConfig:
  tracing:
    sampling: 12.5
    maxPathTagLength: 300
    customTags:
      env: { literal: { value: prod } }
      user: { header: { name: x-user, defaultValue: anon } }
      pod: { environment: { name: POD_NAME } }
"#;
        let (mesh, unknown) = MeshConfig::from_yaml(text).unwrap();
        assert!(unknown.is_empty(), "{unknown:?}");
        assert_eq!(mesh.validate(), Vec::<String>::new());
        assert_eq!(mesh.default_tracing_provider().map(|p| p.name.as_str()), Some("otel"));
        let tracing = mesh.proxy_config().tracing.as_ref().unwrap();
        assert_eq!((tracing.custom_tags.len(), tracing.max_path_tag_length), (3, Some(300)));
        assert_eq!(
            mesh.warnings(),
            [
                "defaultProviders.tracing[1]: \"zipkin\": only the first tracing provider is used, as in Istio",
                "defaultProviders.tracing[2]: \"nowhere\" is not in extensionProviders; spans are not exported",
            ]
        );
        let bad = r#"
extensionProviders:
- name: z
  zipkin: { service: "", port: 0, path: api }
- name: o
  opentelemetry: { service: "bad host!", port: 70000, http: { path: "/x?y", headers: { "bad name": v } } }
defaultConfig:
  tracing:
    sampling: 150
    customTags:
      none: {}
      both: { literal: { value: a }, header: { name: x } }
      badheader: { header: { name: "x y" } }
"#;
        let (mesh, _) = MeshConfig::from_yaml(bad).unwrap();
        let errors = mesh.validate();
        for field in [
            "defaultConfig.tracing.sampling: 150 is out of range",
            "defaultConfig.tracing.customTags.none: set one of",
            "defaultConfig.tracing.customTags.both: set only one of",
            "defaultConfig.tracing.customTags.badheader.header.name",
            "extensionProviders[0].zipkin.service",
            "extensionProviders[0].zipkin.port",
            "extensionProviders[0].zipkin.path",
            "extensionProviders[1].opentelemetry.service",
            "extensionProviders[1].opentelemetry.port",
            "extensionProviders[1].opentelemetry.http.path",
            "extensionProviders[1].opentelemetry.http.headers",
        ] {
            assert!(errors.iter().any(|e| e.starts_with(field)), "{field} not in {errors:#?}");
        }
        let (not_tracing, _) = MeshConfig::from_yaml(
            "extensionProviders: [{ name: authz, envoyExtAuthzGrpc: { service: opa.svc, port: 9191 } }]\ndefaultProviders: { tracing: [authz] }",
        )
        .unwrap();
        assert_eq!(
            not_tracing.warnings(),
            [
                "defaultProviders.tracing[0]: \"authz\" is not a tracing provider (zipkin or opentelemetry); spans are not exported"
            ]
        );
    }

    const ISTIO_STYLE: &str = r#"
# as found in the istio ConfigMap's "mesh" key
trustDomain: example.org
trustDomainAliases: [old.example.org]
rootNamespace: istio-system
enableAutoMtls: false
accessLogFile: /dev/stdout
accessLogEncoding: JSON
outboundTrafficPolicy:
  mode: REGISTRY_ONLY
defaultServiceExportTo: ["."]
enableTracing: false
connectTimeout: 5s
protocolDetectionTimeout: 100ms
defaultHttpRetryPolicy:
  attempts: 3
  perTryTimeout: 2s
  retryOn: 5xx,connect-failure,503
discoverySelectors:
- matchLabels:
    env: prod
- matchExpressions:
  - key: team
    operator: In
    values: [payments, orders]
defaultConfig:
  discoveryAddress: trellisd.istio-system.svc:15010
  holdApplicationUntilProxyStarts: true
  concurrency: 2
  drainDuration: 30s
  terminationDrainDuration: 10s
  proxyMetadata:
    ISTIO_META_DNS_CAPTURE: "true"
  interceptionMode: TPROXY
  tracing:
    sampling: 10.5
    zipkin:
      address: zipkin.istio-system:9411
  image:
    imageType: distroless
"#;

    #[test]
    fn reads_istio_mesh_config() {
        let (mesh, unknown) = MeshConfig::from_yaml(ISTIO_STYLE).unwrap();
        assert!(unknown.is_empty(), "{unknown:?}");
        assert!(mesh.validate().is_empty(), "{:?}", mesh.validate());
        assert_eq!(mesh.trust_domain(), "example.org");
        assert_eq!(mesh.trust_domain_aliases, vec!["old.example.org"]);
        assert!(!mesh.enable_auto_mtls());
        assert_eq!(mesh.access_log_file(), Some("/dev/stdout"));
        assert_eq!(mesh.access_log_encoding(), AccessLogEncoding::Json);
        assert_eq!(mesh.outbound_mode(), OutboundTrafficMode::RegistryOnly);
        assert_eq!(mesh.default_service_export_to(), vec!["."]);
        assert_eq!(mesh.default_virtual_service_export_to(), vec!["*"]);
        assert!(!mesh.enable_tracing());
        assert_eq!(mesh.connect_timeout(), Ok(Duration::from_secs(5)));
        assert_eq!(mesh.protocol_detection_timeout(), Ok(Duration::from_millis(100)));
        let retry = mesh.default_http_retry_policy.as_ref().unwrap();
        assert_eq!(retry.attempts, Some(3));
        assert_eq!(mesh.discovery_selectors.len(), 2);
        assert_eq!(
            mesh.discovery_selectors[0].match_labels.as_ref().unwrap().get("env").map(String::as_str),
            Some("prod")
        );
        let proxy = mesh.proxy_config();
        assert!(proxy.hold_application_until_proxy_starts());
        assert_eq!(proxy.concurrency, Some(2));
        assert_eq!(proxy.drain_duration(), Ok(Duration::from_secs(30)));
        assert_eq!(proxy.termination_drain_duration(), Ok(Duration::from_secs(10)));
        assert_eq!(proxy.interception_mode(), InterceptionMode::Tproxy);
        assert_eq!(proxy.tracing_sampling(), 10.5);
        assert_eq!(proxy.image_type(), "distroless");
        assert_eq!(proxy.status_port(), Ok(15020));
    }

    #[test]
    fn defaults_apply_when_unset() {
        for text in ["", "{}", "# only a comment\n", "null"] {
            let (mesh, unknown) = MeshConfig::from_yaml(text).unwrap();
            assert_eq!(mesh, MeshConfig::default(), "{text:?}");
            assert!(unknown.is_empty());
        }
        let mesh = MeshConfig::default();
        assert_eq!(mesh.trust_domain(), "cluster.local");
        assert_eq!(mesh.root_namespace(), "istio-system");
        assert_eq!(mesh.outbound_mode(), OutboundTrafficMode::AllowAny);
        assert!(mesh.enable_auto_mtls());
        assert!(mesh.enable_tracing());
        assert_eq!(mesh.access_log_file(), None);
        assert_eq!(mesh.access_log_encoding(), AccessLogEncoding::Text);
        assert_eq!(mesh.connect_timeout(), Ok(Duration::from_secs(10)));
        assert_eq!(mesh.protocol_detection_timeout(), Ok(Duration::ZERO));
        assert_eq!(mesh.default_service_export_to(), vec!["*"]);
        let proxy = mesh.proxy_config();
        assert_eq!(proxy.discovery_address(), "trellisd.istio-system.svc:15010");
        assert_eq!(proxy.status_port(), Ok(15020));
        assert_eq!(proxy.proxy_admin_port(), Ok(15000));
        assert_eq!(proxy.interception_mode(), InterceptionMode::Redirect);
        assert_eq!(proxy.drain_duration(), Ok(Duration::from_secs(45)));
        assert_eq!(proxy.termination_drain_duration(), Ok(Duration::from_secs(5)));
        assert!(!proxy.hold_application_until_proxy_starts());
        assert_eq!(proxy.tracing_sampling(), 1.0);
        assert_eq!(proxy.image_type(), "default");
        assert!(mesh.validate().is_empty());
        // An empty outboundTrafficPolicy keeps ALLOW_ANY, as Istio's merge over its defaults does.
        let (mesh, _) = MeshConfig::from_yaml("outboundTrafficPolicy: {}").unwrap();
        assert_eq!(mesh.outbound_mode(), OutboundTrafficMode::AllowAny);
    }

    #[test]
    fn null_collections_read_as_empty() {
        let (mesh, _) = MeshConfig::from_yaml(
            "trustDomainAliases:\ndiscoverySelectors: null\ndefaultConfig:\n  proxyMetadata:\n",
        )
        .unwrap();
        assert!(mesh.trust_domain_aliases.is_empty());
        assert!(mesh.discovery_selectors.is_empty());
        assert!(mesh.proxy_config().proxy_metadata.is_empty());
    }

    #[test]
    fn snake_case_names_are_accepted_like_protobuf_json() {
        let (mesh, unknown) =
            MeshConfig::from_yaml("trust_domain: a.b\ndefault_config:\n  status_port: 15021\n").unwrap();
        assert!(unknown.is_empty());
        assert_eq!(mesh.trust_domain(), "a.b");
        assert_eq!(mesh.proxy_config().status_port(), Ok(15021));
    }

    #[test]
    fn unknown_fields_are_reported_with_their_path() {
        let text = "trustDomain: a.b\nenableAutoMTLS: true\ndefaultConfig:\n  statusport: 1\n  tracing:\n    zipkin:\n      adress: x:1\ndiscoverySelectors:\n- matchLabels: {a: b}\n  matchLabel: {c: d}\n";
        let (mesh, unknown) = MeshConfig::from_yaml(text).unwrap();
        assert_eq!(
            unknown,
            vec![
                "enableAutoMTLS",
                "defaultConfig.statusport",
                "defaultConfig.tracing.zipkin.adress",
                "discoverySelectors[0].matchLabel",
            ]
        );
        assert_eq!(mesh.trust_domain(), "a.b");
    }

    #[test]
    fn malformed_yaml_reports_line_and_column() {
        let err = MeshConfig::from_yaml("trustDomain: a.b\ndefaultConfig:\n  statusPort: abc\n").unwrap_err();
        assert_eq!(err.line, Some(3));
        assert_eq!(err.column, Some(15));
        assert_eq!(err.field.as_deref(), Some("defaultConfig.statusPort"));
        assert_eq!(err.to_string(), "defaultConfig.statusPort: invalid i32 (line 3, column 15)");

        let err = MeshConfig::from_yaml("trustDomain: a.b\n\tconnectTimeout: 1s\n").unwrap_err();
        assert_eq!(err.line, Some(1));
        assert!(!err.to_string().contains('\n'));

        let err = MeshConfig::from_yaml("defaultConfig: [1, 2").unwrap_err();
        assert!(err.line.is_some(), "{err}");

        let err = MeshConfig::from_yaml("outboundTrafficPolicy:\n  mode: allow_any\n").unwrap_err();
        assert_eq!(err.line, Some(2));
        assert_eq!(err.field.as_deref(), Some("outboundTrafficPolicy.mode"));

        let err = MeshConfig::from_yaml("trustDomain: a\ntrustDomain: b\n").unwrap_err();
        assert_eq!(err.line, Some(2));
        assert!(err.message.contains("duplicate"), "{err}");

        let err = MeshConfig::from_yaml("a: 1\n---\nb: 2\n").unwrap_err();
        assert!(err.message.contains("multiple"), "{err}");

        let err = MeshConfig::from_yaml("- just a list").unwrap_err();
        assert_eq!(err.line, Some(1));
    }

    #[test]
    fn hostile_documents_fail_cleanly() {
        let huge = "a".repeat(MAX_MESH_CONFIG_LEN + 1);
        assert_eq!(
            MeshConfig::from_yaml(&huge).unwrap_err().to_string(),
            format!("document is {} bytes, at most 1048576 are allowed", MAX_MESH_CONFIG_LEN + 1)
        );
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(MeshConfig::from_yaml(&deep).is_err());
        let bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: [*f, *f, *f, *f, *f, *f, *f, *f, *f]\n";
        let _ = MeshConfig::from_yaml(bomb);
        // A raw NUL is not allowed in YAML; an escaped one parses and then fails validation.
        assert!(MeshConfig::from_yaml("trustDomain: a\0b").is_err());
        let (mesh, _) = MeshConfig::from_yaml("trustDomain: \"a\\0b\"").unwrap();
        assert_eq!(mesh.trust_domain(), "a\0b");
        assert_eq!(mesh.validate().len(), 1);
        let long_value = format!("defaultConfig:\n  concurrency: {}\n", "9".repeat(5000));
        let err = MeshConfig::from_yaml(&long_value).unwrap_err();
        assert!(err.message.chars().count() <= 203);
        assert!(
            MeshConfig::from_yaml("trustDomain: ☃.example").unwrap().0.validate()[0]
                .starts_with("trustDomain: ")
        );
    }

    #[test]
    fn validation_names_each_field() {
        let text = r#"
trustDomain: Cluster.Local
trustDomainAliases: ["ok.example", "bad_domain"]
rootNamespace: Istio-System
defaultServiceExportTo: ["*", "."]
defaultDestinationRuleExportTo: [".", "."]
defaultVirtualServiceExportTo: ["Not_A_Namespace"]
connectTimeout: 0s
protocolDetectionTimeout: 10
defaultHttpRetryPolicy:
  attempts: -1
  perTryTimeout: 100us
  retryOn: 5xx,sometimes
discoverySelectors:
- matchLabels: {"bad key": v}
  matchExpressions:
  - {key: team, operator: In}
  - {key: team, operator: Exists, values: [a]}
  - {key: team, operator: Equals, values: [a]}
defaultConfig:
  discoveryAddress: istiod
  statusPort: 70000
  proxyAdminPort: -1
  concurrency: -2
  drainDuration: forever
  terminationDrainDuration: 5d
  proxyMetadata: {"1BAD": x}
  tracing:
    sampling: 101
    zipkin: {address: "zipkin:http"}
  image: {imageType: "debug build"}
"#;
        let (mesh, unknown) = MeshConfig::from_yaml(text).unwrap();
        assert!(unknown.is_empty());
        let errors = mesh.validate();
        let expected = [
            "trustDomain: \"Cluster.Local\" is not a valid DNS-1123 subdomain (lower-case labels separated by '.', at most 253 characters)",
            "trustDomainAliases[1]: \"bad_domain\" is not a valid DNS-1123 subdomain (lower-case labels separated by '.', at most 253 characters)",
            "rootNamespace: \"Istio-System\" is not a valid DNS-1123 label (lower-case letters, digits and '-', at most 63 characters, starting and ending with a letter or digit)",
            "defaultConfig.discoveryAddress: \"istiod\" is not host:port",
            "defaultConfig.proxyMetadata: \"1BAD\" is not a valid environment variable name (letters, digits, '_', '-', '.', not starting with a digit)",
            "defaultConfig.concurrency: must not be negative (got -2)",
            "defaultConfig.drainDuration: invalid duration \"forever\": use a number and a unit, e.g. 100ms, 1.5s, 2m",
            "defaultConfig.terminationDrainDuration: invalid duration \"5d\": unknown unit \"d\"",
            "defaultConfig.statusPort: port 70000 is out of range 1-65535",
            "defaultConfig.proxyAdminPort: port -1 is out of range 1-65535",
            "defaultConfig.tracing.sampling: 101 is out of range 0-100 (a percentage)",
            "defaultConfig.tracing.zipkin.address: \"zipkin:http\": \"http\" is not a port number",
            "defaultConfig.image.imageType: \"debug build\" is not a valid image type (e.g. default, debug, distroless; letters, digits, '_', '-', '.')",
            "defaultServiceExportTo: \"*\" (every namespace) cannot be combined with other entries",
            "defaultVirtualServiceExportTo[0]: \"Not_A_Namespace\" is not \".\", \"*\" or a namespace name",
            "defaultDestinationRuleExportTo[1]: \".\" is listed more than once",
            "defaultHttpRetryPolicy.attempts: must not be negative (got -1)",
            "defaultHttpRetryPolicy.perTryTimeout: duration \"100us\" must be at least 1ms",
            "defaultHttpRetryPolicy.retryOn: \"sometimes\" is not a retry condition; use an HTTP status code or one of 5xx, gateway-error, reset, reset-before-request, connect-failure, envoy-ratelimited, retriable-4xx, refused-stream, retriable-status-codes, retriable-headers, http3-post-connect-failure, cancelled, deadline-exceeded, internal, resource-exhausted, unavailable",
            "connectTimeout: duration \"0s\" must be at least 1ms",
            "protocolDetectionTimeout: invalid duration \"10\": missing unit (ns, us, ms, s, m, h)",
            "discoverySelectors[0].matchLabels: label key \"bad key\" is invalid (at most 63 of letters, digits, '-', '_', '.', starting and ending with a letter or digit)",
            "discoverySelectors[0].matchExpressions[0].values: operator In needs at least one value",
            "discoverySelectors[0].matchExpressions[1].values: operator Exists takes no values",
            "discoverySelectors[0].matchExpressions[2].operator: \"Equals\" is not one of In, NotIn, Exists, DoesNotExist",
        ];
        assert_eq!(errors, expected);
    }

    #[test]
    fn ports_and_addresses() {
        let with = |yaml: &str| ProxyConfig::from_yaml(yaml).unwrap().0.validate();
        assert!(with("discoveryAddress: \"[fd00::1]:15012\"").is_empty());
        assert!(with("discoveryAddress: 10.0.0.1:15012").is_empty());
        assert_eq!(
            with("discoveryAddress: \"fd00::1:15012\""),
            vec!["discoveryAddress: \"fd00::1:15012\": write an IPv6 address in brackets, e.g. [::1]:15012"]
        );
        assert!(!with("discoveryAddress: \"*.svc:15012\"").is_empty());
        assert!(!with("discoveryAddress: \"istiod:+15012\"").is_empty());
        assert!(!with("discoveryAddress: \"[zz]:1\"").is_empty());
        assert_eq!(with("statusPort: 0"), vec!["statusPort: port 0 is out of range 1-65535"]);
        assert_eq!(with("statusPort: 15000"), vec!["statusPort: 15000 is also the proxyAdminPort"]);
        assert!(with("statusPort: 15020\nproxyAdminPort: 15000\nconcurrency: 0").is_empty());
        assert!(!with("tracing: {sampling: .nan}").is_empty());
        assert!(with("terminationDrainDuration: 0s").is_empty());
        let err = ProxyConfig::from_yaml("statusPort: 99999999999").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("statusPort"));
        assert_eq!(
            ProxyConfig { status_port: Some(-5), ..Default::default() }.status_port(),
            Err("port -5 is out of range 1-65535".to_owned())
        );
    }

    #[test]
    fn proxy_config_merges_like_istio() {
        let (mut base, _) = ProxyConfig::from_yaml(
            "concurrency: 2\nproxyMetadata: {A: '1', B: '2'}\ntracing: {sampling: 5, zipkin: {address: 'z:9411'}}\n",
        )
        .unwrap();
        let (overlay, _) = ProxyConfig::from_yaml(
            r#"{"proxyMetadata": {"B": "3"}, "tracing": {"sampling": 50}, "statusPort": 15999}"#,
        )
        .unwrap();
        base.merge_from(&overlay);
        assert_eq!(base.concurrency, Some(2));
        assert_eq!(base.status_port(), Ok(15999));
        assert_eq!(base.proxy_metadata.get("A").map(String::as_str), Some("1"));
        assert_eq!(base.proxy_metadata.get("B").map(String::as_str), Some("3"));
        assert_eq!(base.tracing_sampling(), 50.0);
        assert_eq!(
            base.tracing.as_ref().unwrap().zipkin.as_ref().unwrap().address.as_deref(),
            Some("z:9411")
        );
    }

    #[test]
    fn round_trips_through_yaml_and_json() {
        let (mesh, _) = MeshConfig::from_yaml(ISTIO_STYLE).unwrap();
        let yaml = mesh.to_yaml().unwrap();
        let (again, unknown) = MeshConfig::from_yaml(&yaml).unwrap();
        assert!(unknown.is_empty());
        assert_eq!(again, mesh);
        let json = serde_json::to_string(&mesh).unwrap();
        assert!(json.contains("\"trustDomain\":\"example.org\""));
        assert!(json.contains("\"mode\":\"REGISTRY_ONLY\""));
        assert!(json.contains("\"interceptionMode\":\"TPROXY\""));
        assert!(json.contains("\"accessLogEncoding\":\"JSON\""));
        assert_eq!(serde_json::from_str::<MeshConfig>(&json).unwrap(), mesh);
        // Nothing unset is written.
        assert_eq!(serde_json::to_string(&MeshConfig::default()).unwrap(), "{}");
        assert_eq!(MeshConfig::default().to_yaml().unwrap().trim(), "{}");
    }

    proptest::proptest! {
        #[test]
        fn parsing_and_validating_never_panic(text in "\\PC{0,80}|[a-zA-Z:\\[\\]{}, \\n0-9.-]{0,80}") {
            if let Ok((mesh, _)) = MeshConfig::from_yaml(&text) {
                let _ = mesh.validate();
                let yaml = mesh.to_yaml().unwrap_or_default();
                proptest::prop_assert_eq!(MeshConfig::from_yaml(&yaml).map(|(m, _)| m), Ok(mesh));
            }
            if let Ok((proxy, _)) = ProxyConfig::from_yaml(&text) {
                let _ = proxy.validate();
            }
        }
    }

    #[test]
    fn extension_providers_are_read_validated_and_warned_about() {
        let text = r#"
extensionProviders:
- name: oauth2-proxy
  envoyExtAuthzHttp:
    service: oauth2-proxy.auth.svc.cluster.local
    port: 4180
    timeout: 2s
    pathPrefix: /check
    failOpen: true
    statusOnError: "503"
    includeRequestHeadersInCheck: [authorization, cookie]
    includeAdditionalHeadersInCheck: {x-ext-authz: "yes"}
    headersToUpstreamOnAllow: [x-auth-request-user]
    headersToDownstreamOnDeny: [set-cookie]
    includeRequestBodyInCheck: {maxRequestBytes: 4096}
- name: opa
  envoy_ext_authz_grpc:
    service: opa/opa.opa.svc.cluster.local
    port: 9191
- name: datadog
  datadog: {service: datadog.istio-system.svc.cluster.local, port: 8126}
"#;
        let (mesh, unknown) = MeshConfig::from_yaml(text).unwrap();
        assert_eq!(unknown, ["extensionProviders[2].datadog"]);
        assert!(mesh.validate().is_empty(), "{:?}", mesh.validate());
        let http = mesh.extension_provider("oauth2-proxy").unwrap();
        let common = http.ext_authz().unwrap();
        assert_eq!(
            (common.service, common.port, common.fail_open),
            ("oauth2-proxy.auth.svc.cluster.local", 4180, true)
        );
        assert_eq!(parse_status_on_error(common.status_on_error), Ok(503));
        let settings = http.envoy_ext_authz_http.as_ref().unwrap();
        assert_eq!(
            settings.include_additional_headers_in_check.get("x-ext-authz").map(String::as_str),
            Some("yes")
        );
        assert_eq!(mesh.extension_provider("opa").unwrap().ext_authz().unwrap().port, 9191);
        assert_eq!(
            mesh.warnings(),
            [
                "extensionProviders[0].envoyExtAuthzHttp.includeRequestBodyInCheck: not supported by Trellis; the authorizer gets the request's headers only",
                "extensionProviders[2]: not an external authorizer (envoyExtAuthzHttp or envoyExtAuthzGrpc) or a tracing provider (zipkin, opentelemetry); Trellis does not read other providers, and a CUSTOM policy naming \"datadog\" denies",
            ]
        );
        let (again, _) = MeshConfig::from_yaml(&mesh.to_yaml().unwrap()).unwrap();
        assert_eq!(again, mesh);

        let bad = r#"
extensionProviders:
- name: a
  envoyExtAuthzHttp: {service: "bad host", port: 0, pathPrefix: check, statusOnError: "999", timeout: 1d}
- name: a
  envoyExtAuthzGrpc: {service: "Shop/opa.svc", port: 70000}
- envoyExtAuthzHttp: {service: ok.svc, port: 1, includeRequestHeadersInCheck: ["bad header"]}
  envoyExtAuthzGrpc: {service: ok.svc, port: 1}
"#;
        let (mesh, _) = MeshConfig::from_yaml(bad).unwrap();
        assert_eq!(
            mesh.validate(),
            [
                "extensionProviders[0].envoyExtAuthzHttp.pathPrefix: \"check\" must start with '/'",
                "extensionProviders[0].envoyExtAuthzHttp.service: \"bad host\": host \"bad host\" is not a valid DNS name",
                "extensionProviders[0].envoyExtAuthzHttp.port: port 0 is out of range 1-65535",
                "extensionProviders[0].envoyExtAuthzHttp.timeout: invalid duration \"1d\": unknown unit \"d\"",
                "extensionProviders[0].envoyExtAuthzHttp.statusOnError: 999 is not an HTTP status code Envoy supports",
                "extensionProviders[1].name: \"a\" is defined more than once",
                "extensionProviders[1].envoyExtAuthzGrpc.service: \"Shop/opa.svc\": namespace \"Shop\" is not a valid DNS-1123 label (lower-case letters, digits and '-', at most 63 characters, starting and ending with a letter or digit)",
                "extensionProviders[1].envoyExtAuthzGrpc.port: port 70000 is out of range 1-65535",
                "extensionProviders[2].name: required",
                "extensionProviders[2].envoyExtAuthzHttp: cannot be combined with envoyExtAuthzGrpc",
                "extensionProviders[2].envoyExtAuthzHttp.includeRequestHeadersInCheck[0]: \"bad header\" is not a valid HTTP header name",
            ]
        );
    }

    #[test]
    fn the_mesh_locality_setting_is_read_and_checked_like_a_destination_rules() {
        let good = "localityLbSetting: {enabled: true, failover: [{from: us-east, to: eu-west}]}";
        let (mesh, unknown) = MeshConfig::from_yaml(good).unwrap();
        assert!(unknown.is_empty() && mesh.validate().is_empty(), "{unknown:?} {:?}", mesh.validate());
        assert_eq!(mesh.locality_lb_setting.as_ref().and_then(|l| l.enabled), Some(true));
        let bad = "locality_lb_setting: {distribute: [{from: 'us-east/*', to: {'us-east/*': 60}}], failover: [{from: a, to: a}]}";
        let (mesh, _) = MeshConfig::from_yaml(bad).unwrap();
        assert_eq!(
            mesh.validate(),
            [
                "localityLbSetting: distribute and failover cannot both be set",
                "localityLbSetting.distribute[0].to: weights sum to 60, must be 100",
                "localityLbSetting.failover[0]: from and to are the same region \"a\"",
            ]
        );
    }

    #[test]
    fn schema_describes_the_istio_names() {
        let schema = serde_json::to_string(&schemars::schema_for!(MeshConfig)).unwrap();
        for name in
            ["trustDomain", "defaultConfig", "discoverySelectors", "matchLabels", "REGISTRY_ONLY", "TPROXY"]
        {
            assert!(schema.contains(name), "{name} missing from the schema");
        }
    }
}
