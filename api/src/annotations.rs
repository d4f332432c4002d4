//! The pod labels and annotations that the injector, the redirect (proxy-init / CNI) and the
//! proxy read, spelled exactly as Istio spells them, with one typed parser per kind of value.
//!
//! Every parser returns either the value or an [`AnnotationError`] that names the annotation,
//! echoes (a bounded prefix of) the bad value and says what is wrong, so that the injector can
//! reject a pod with a message the user can act on. No parser panics, whatever the input.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::str::FromStr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Volume, VolumeMount};
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::mesh::ProxyConfig;
use crate::primitives::{check_dns1123_label, parse_cidr, parse_port};

/// Label and annotation names, grouped the way Istio groups them (its `label` and `annotation`
/// packages). `sidecar.istio.io/inject` exists in both groups: the label is the current form,
/// the annotation the legacy one, and the label wins when both are set.
pub mod names {
    /// The proxy's container name, kept from Istio so that its tooling (and the CNI plugin)
    /// finds the proxy.
    pub const PROXY_CONTAINER: &str = "istio-proxy";

    /// Labels (on namespaces or pods).
    pub mod label {
        /// Namespace label: `enabled` turns injection on for the namespace, `disabled` off.
        pub const ISTIO_INJECTION: &str = "istio-injection";
        /// Pod label that forces injection on or off for one pod.
        pub const SIDECAR_INJECT: &str = "sidecar.istio.io/inject";
        /// Control-plane revision a namespace or pod is bound to.
        pub const ISTIO_REV: &str = "istio.io/rev";
        /// Set to `istio` on injected pods so that peers know they can use mutual TLS.
        pub const TLS_MODE: &str = "security.istio.io/tlsMode";
        pub const CANONICAL_NAME: &str = "service.istio.io/canonical-name";
        pub const CANONICAL_REVISION: &str = "service.istio.io/canonical-revision";
        pub const APP: &str = "app";
        pub const VERSION: &str = "version";
        pub const APP_KUBERNETES_NAME: &str = "app.kubernetes.io/name";
        pub const APP_KUBERNETES_VERSION: &str = "app.kubernetes.io/version";

        /// Values of [`ISTIO_INJECTION`].
        pub const INJECTION_ENABLED: &str = "enabled";
        pub const INJECTION_DISABLED: &str = "disabled";
        /// Value of [`TLS_MODE`] on injected pods.
        pub const TLS_MODE_ISTIO: &str = "istio";
    }

    /// Pod annotations.
    pub mod annotation {
        /// Legacy annotation form of the inject switch; the label of the same name wins.
        pub const SIDECAR_INJECT: &str = "sidecar.istio.io/inject";
        /// JSON written by the injector listing what it added (see `SidecarStatus`).
        pub const SIDECAR_STATUS: &str = "sidecar.istio.io/status";
        pub const PROXY_CPU: &str = "sidecar.istio.io/proxyCPU";
        pub const PROXY_MEMORY: &str = "sidecar.istio.io/proxyMemory";
        pub const PROXY_CPU_LIMIT: &str = "sidecar.istio.io/proxyCPULimit";
        pub const PROXY_MEMORY_LIMIT: &str = "sidecar.istio.io/proxyMemoryLimit";
        pub const PROXY_IMAGE: &str = "sidecar.istio.io/proxyImage";
        pub const LOG_LEVEL: &str = "sidecar.istio.io/logLevel";
        pub const COMPONENT_LOG_LEVEL: &str = "sidecar.istio.io/componentLogLevel";
        pub const INTERCEPTION_MODE: &str = "sidecar.istio.io/interceptionMode";
        pub const REWRITE_APP_HTTP_PROBERS: &str = "sidecar.istio.io/rewriteAppHTTPProbers";
        pub const NATIVE_SIDECAR: &str = "sidecar.istio.io/nativeSidecar";
        pub const USER_VOLUME: &str = "sidecar.istio.io/userVolume";
        pub const USER_VOLUME_MOUNT: &str = "sidecar.istio.io/userVolumeMount";
        pub const STATUS_PORT: &str = "status.sidecar.istio.io/port";
        pub const READINESS_INITIAL_DELAY_SECONDS: &str =
            "readiness.status.sidecar.istio.io/initialDelaySeconds";
        pub const READINESS_PERIOD_SECONDS: &str = "readiness.status.sidecar.istio.io/periodSeconds";
        pub const READINESS_FAILURE_THRESHOLD: &str = "readiness.status.sidecar.istio.io/failureThreshold";
        pub const READINESS_APPLICATION_PORTS: &str = "readiness.status.sidecar.istio.io/applicationPorts";
        pub const INCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/includeOutboundIPRanges";
        pub const EXCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";
        pub const INCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeInboundPorts";
        pub const EXCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
        pub const INCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeOutboundPorts";
        pub const EXCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
        pub const EXCLUDE_INTERFACES: &str = "traffic.sidecar.istio.io/excludeInterfaces";
        pub const KUBEVIRT_INTERFACES: &str = "traffic.sidecar.istio.io/kubevirtInterfaces";
        /// The newer name of `kubevirtInterfaces`; it wins when both are set, as in Istio.
        pub const REROUTE_VIRTUAL_INTERFACES: &str = "istio.io/reroute-virtual-interfaces";
        /// Per-pod `ProxyConfig` overrides (YAML or JSON), merged over the mesh default.
        pub const PROXY_CONFIG: &str = "proxy.istio.io/config";
        pub const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";
        pub const DEFAULT_LOGS_CONTAINER: &str = "kubectl.kubernetes.io/default-logs-container";
        pub const PROMETHEUS_SCRAPE: &str = "prometheus.io/scrape";
        pub const PROMETHEUS_PORT: &str = "prometheus.io/port";
        pub const PROMETHEUS_PATH: &str = "prometheus.io/path";
        /// `"false"` keeps the pod's `prometheus.io/*` annotations as written: the app is
        /// scraped directly, not through the proxy's status port. Overrides the mesh config's
        /// `enablePrometheusMerge`.
        pub const PROMETHEUS_MERGE_METRICS: &str = "prometheus.istio.io/merge-metrics";

        /// Every annotation above, for tools that look for typos under the Istio prefixes.
        pub const ALL: &[&str] = &[
            SIDECAR_INJECT,
            SIDECAR_STATUS,
            PROXY_CPU,
            PROXY_MEMORY,
            PROXY_CPU_LIMIT,
            PROXY_MEMORY_LIMIT,
            PROXY_IMAGE,
            LOG_LEVEL,
            COMPONENT_LOG_LEVEL,
            INTERCEPTION_MODE,
            REWRITE_APP_HTTP_PROBERS,
            NATIVE_SIDECAR,
            USER_VOLUME,
            USER_VOLUME_MOUNT,
            STATUS_PORT,
            READINESS_INITIAL_DELAY_SECONDS,
            READINESS_PERIOD_SECONDS,
            READINESS_FAILURE_THRESHOLD,
            READINESS_APPLICATION_PORTS,
            INCLUDE_OUTBOUND_IP_RANGES,
            EXCLUDE_OUTBOUND_IP_RANGES,
            INCLUDE_INBOUND_PORTS,
            EXCLUDE_INBOUND_PORTS,
            INCLUDE_OUTBOUND_PORTS,
            EXCLUDE_OUTBOUND_PORTS,
            EXCLUDE_INTERFACES,
            KUBEVIRT_INTERFACES,
            REROUTE_VIRTUAL_INTERFACES,
            PROXY_CONFIG,
            DEFAULT_CONTAINER,
            DEFAULT_LOGS_CONTAINER,
            PROMETHEUS_SCRAPE,
            PROMETHEUS_PORT,
            PROMETHEUS_PATH,
            PROMETHEUS_MERGE_METRICS,
        ];
    }
}

use names::annotation as ann;

/// Largest annotation value any parser looks at. Real values are a few hundred bytes; the cap
/// keeps a hostile pod from making the injector do unbounded work or echo megabytes back.
pub const MAX_VALUE_LEN: usize = 4096;

/// How much of a bad value an error repeats back.
const MAX_ECHO_CHARS: usize = 64;

/// A pod annotation (or label) whose value cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}: invalid value {value:?}: {reason}")]
pub struct AnnotationError {
    pub annotation: String,
    /// The value as written, cut to its first 64 characters (plus `...`) when longer.
    pub value: String,
    pub reason: String,
}

impl AnnotationError {
    pub fn new(annotation: &str, value: &str, reason: impl Into<String>) -> Self {
        AnnotationError { annotation: annotation.to_owned(), value: shorten(value), reason: reason.into() }
    }
}

/// Cuts `text` to [`MAX_ECHO_CHARS`] characters, marking the cut, so errors stay readable.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(MAX_ECHO_CHARS) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

/// First check of every parser: refuse oversized values before looking inside them.
fn check_size(annotation: &str, value: &str) -> Result<(), AnnotationError> {
    if value.len() > MAX_VALUE_LEN {
        return Err(AnnotationError::new(
            annotation,
            value,
            format!("value is {} bytes, at most {MAX_VALUE_LEN} are allowed", value.len()),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Booleans and switches

/// A boolean as Go's `strconv.ParseBool` reads it, which is what Istio uses for its boolean
/// annotations (`rewriteAppHTTPProbers`, `nativeSidecar`, `prometheus.io/scrape`).
pub fn parse_bool(annotation: &str, value: &str) -> Result<bool, AnnotationError> {
    check_size(annotation, value)?;
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(AnnotationError::new(annotation, value, "expected true or false")),
    }
}

/// The `sidecar.istio.io/inject` switch. Istio reads it loosely: `y`, `yes`, `true` or `on` in
/// any case mean inject, an empty value means "use the namespace default" (`None`), and any
/// other value means do not inject. It never fails, so that a pod Istio accepts is accepted.
pub fn parse_sidecar_inject(value: &str) -> Option<bool> {
    if value.is_empty() {
        return None;
    }
    let yes = ["y", "yes", "true", "on"].iter().any(|v| value.eq_ignore_ascii_case(v));
    Some(yes)
}

/// The pod's own inject decision, if it made one: the label wins over the legacy annotation.
pub fn pod_inject_override(
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> Option<bool> {
    let value = labels.get(names::label::SIDECAR_INJECT).or_else(|| annotations.get(ann::SIDECAR_INJECT))?;
    parse_sidecar_inject(value)
}

/// The `istio-injection` namespace label: `Some(true)` for `enabled`, `Some(false)` for
/// `disabled`, `None` for anything else (the webhook selector matches neither, as in Istio).
pub fn parse_namespace_injection(value: &str) -> Option<bool> {
    match value {
        names::label::INJECTION_ENABLED => Some(true),
        names::label::INJECTION_DISABLED => Some(false),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Interception mode

/// How the redirect captures traffic (`sidecar.istio.io/interceptionMode`, and
/// `interceptionMode` in `ProxyConfig`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InterceptionMode {
    /// NAT `REDIRECT`; the original destination comes from `SO_ORIGINAL_DST`.
    #[default]
    Redirect,
    /// `TPROXY`: the original source address is preserved for inbound traffic.
    Tproxy,
    /// No redirect at all; the application talks to the proxy explicitly.
    None,
}

impl InterceptionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            InterceptionMode::Redirect => "REDIRECT",
            InterceptionMode::Tproxy => "TPROXY",
            InterceptionMode::None => "NONE",
        }
    }
}

impl fmt::Display for InterceptionMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for InterceptionMode {
    type Err = String;

    /// Case-sensitive, as in Istio: `redirect` is rejected, with a hint.
    fn from_str(text: &str) -> Result<Self, String> {
        let all = [InterceptionMode::Redirect, InterceptionMode::Tproxy, InterceptionMode::None];
        if let Some(mode) = all.iter().find(|m| m.as_str() == text) {
            return Ok(*mode);
        }
        match all.iter().find(|m| m.as_str().eq_ignore_ascii_case(text)) {
            Some(mode) => Err(format!("expected {:?}; the value is case-sensitive", mode.as_str())),
            None => Err("expected one of REDIRECT, TPROXY, NONE".to_owned()),
        }
    }
}

pub fn parse_interception_mode(value: &str) -> Result<InterceptionMode, AnnotationError> {
    check_size(ann::INTERCEPTION_MODE, value)?;
    value.parse().map_err(|reason| AnnotationError::new(ann::INTERCEPTION_MODE, value, reason))
}

// ---------------------------------------------------------------------------------------------
// Comma-separated lists

/// Splits a comma-separated list, trimming each entry. An empty (or blank) value is an empty
/// list; an empty entry inside a list is an error because it is almost always a stray comma.
fn split_list(value: &str) -> Result<Vec<&str>, String> {
    if value.trim().is_empty() {
        return Ok(Vec::new());
    }
    let entries: Vec<&str> = value.split(',').map(str::trim).collect();
    if entries.iter().any(|e| e.is_empty()) {
        return Err("empty entry in the list (check for a stray comma)".to_owned());
    }
    Ok(entries)
}

/// Keeps the first occurrence of each item, in order.
fn dedup_in_order<T: Clone + Eq + std::hash::Hash>(items: Vec<T>) -> Vec<T> {
    let mut seen = HashSet::new();
    items.into_iter().filter(|item| seen.insert(item.clone())).collect()
}

/// The longest text that could still be a valid port, CIDR or interface name. Longer entries
/// are rejected without handing them to the element parser, whose message would echo them.
const MAX_ENTRY_LEN: usize = 64;

fn parse_entry<T>(entry: &str, what: &str, parse: impl Fn(&str) -> Result<T, String>) -> Result<T, String> {
    if entry.len() > MAX_ENTRY_LEN {
        return Err(format!("{:?} is not {what}", shorten(entry)));
    }
    parse(entry)
}

/// Ports a traffic annotation selects: every port (`*`) or a list.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PortSelection {
    All,
    Ports(Vec<u16>),
}

impl PortSelection {
    pub fn contains(&self, port: u16) -> bool {
        match self {
            PortSelection::All => true,
            PortSelection::Ports(ports) => ports.contains(&port),
        }
    }
}

/// A comma-separated list of ports (1-65535). `*` is refused: only `includeInboundPorts`
/// means "every port" and it goes through [`parse_port_selection`].
pub fn parse_port_list(annotation: &str, value: &str) -> Result<Vec<u16>, AnnotationError> {
    check_size(annotation, value)?;
    port_list(value).map_err(|reason| AnnotationError::new(annotation, value, reason))
}

fn port_list(value: &str) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for entry in split_list(value)? {
        if entry == "*" {
            return Err("\"*\" (all ports) cannot be used in this list".to_owned());
        }
        ports.push(parse_entry(entry, "a port number", parse_port)?);
    }
    Ok(dedup_in_order(ports))
}

/// `*` alone, or a comma-separated port list (an empty value selects no port).
pub fn parse_port_selection(annotation: &str, value: &str) -> Result<PortSelection, AnnotationError> {
    check_size(annotation, value)?;
    if value.trim() == "*" {
        return Ok(PortSelection::All);
    }
    port_list(value).map(PortSelection::Ports).map_err(|reason| {
        AnnotationError::new(annotation, value, star_with_others(value, reason, "port numbers"))
    })
}

/// When `*` appears among other entries, say that rather than "not allowed in this list".
fn star_with_others(value: &str, reason: String, others: &str) -> String {
    if value.split(',').any(|e| e.trim() == "*") {
        format!("\"*\" selects everything and cannot be combined with {others}")
    } else {
        reason
    }
}

/// Outbound address ranges a traffic annotation selects: every address (`*`) or CIDRs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IpRangeSelection {
    All,
    Ranges(Vec<IpNet>),
}

impl IpRangeSelection {
    pub fn contains(&self, addr: std::net::IpAddr) -> bool {
        match self {
            IpRangeSelection::All => true,
            IpRangeSelection::Ranges(ranges) => ranges.iter().any(|r| r.contains(&addr)),
        }
    }
}

/// A comma-separated list of CIDRs, each with its prefix length (Istio's injector refuses a
/// bare address, and so do we, so that a pod valid here is valid there).
pub fn parse_cidr_list(annotation: &str, value: &str) -> Result<Vec<IpNet>, AnnotationError> {
    check_size(annotation, value)?;
    cidr_list(value).map_err(|reason| AnnotationError::new(annotation, value, reason))
}

fn cidr_list(value: &str) -> Result<Vec<IpNet>, String> {
    let mut ranges = Vec::new();
    for entry in split_list(value)? {
        if entry == "*" {
            return Err("\"*\" (all addresses) cannot be used in this list".to_owned());
        }
        ranges.push(parse_entry(entry, "a valid CIDR", parse_cidr)?);
    }
    Ok(dedup_in_order(ranges))
}

/// `*` alone, or a comma-separated CIDR list (an empty value selects no address).
pub fn parse_ip_range_selection(annotation: &str, value: &str) -> Result<IpRangeSelection, AnnotationError> {
    check_size(annotation, value)?;
    if value.trim() == "*" {
        return Ok(IpRangeSelection::All);
    }
    cidr_list(value)
        .map(IpRangeSelection::Ranges)
        .map_err(|reason| AnnotationError::new(annotation, value, star_with_others(value, reason, "CIDRs")))
}

/// Linux's limit on interface names (IFNAMSIZ is 16, including the terminating NUL).
const MAX_INTERFACE_NAME_LEN: usize = 15;

/// A Linux network interface name, checked the way the kernel checks a new name.
pub fn check_interface_name(name: &str) -> Result<(), String> {
    let shown = shorten(name);
    if name.is_empty() || name.len() > MAX_INTERFACE_NAME_LEN {
        return Err(format!("interface name {shown:?} must be 1 to {MAX_INTERFACE_NAME_LEN} bytes long"));
    }
    if name == "." || name == ".." {
        return Err(format!("{shown:?} is not a valid interface name"));
    }
    // Names reach proxy-init's command line; one that looks like a flag would be read as one.
    if name.starts_with('-') {
        return Err(format!("interface name {shown:?} must not start with '-'"));
    }
    // The kernel refuses '/', ':' and white space; control characters would also corrupt the
    // rule text handed to iptables or nft.
    if let Some(bad) = name.chars().find(|c| matches!(c, '/' | ':') || c.is_whitespace() || c.is_control()) {
        return Err(format!("interface name {shown:?} contains {bad:?}, which is not allowed"));
    }
    Ok(())
}

/// A comma-separated list of interface names (`excludeInterfaces`, `kubevirtInterfaces`).
pub fn parse_interface_list(annotation: &str, value: &str) -> Result<Vec<String>, AnnotationError> {
    check_size(annotation, value)?;
    let names = split_list(value).and_then(|entries| {
        entries
            .into_iter()
            .map(|e| check_interface_name(e).map(|()| e.to_owned()))
            .collect::<Result<Vec<_>, _>>()
    });
    names.map(dedup_in_order).map_err(|reason| AnnotationError::new(annotation, value, reason))
}

// ---------------------------------------------------------------------------------------------
// Integers

enum UintError {
    NotANumber,
    TooLarge,
}

/// Decimal digits only: no sign, no white space inside, as Go's `ParseUint` wants.
fn parse_uint(text: &str) -> Result<u64, UintError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(UintError::NotANumber);
    }
    text.parse::<u64>().map_err(|_| UintError::TooLarge)
}

/// A single port number, 1-65535 (`prometheus.io/port`).
pub fn parse_single_port(annotation: &str, value: &str) -> Result<u16, AnnotationError> {
    check_size(annotation, value)?;
    parse_entry(value.trim(), "a port number", parse_port)
        .map_err(|reason| AnnotationError::new(annotation, value, reason))
}

/// `status.sidecar.istio.io/port`: 0-65535, where 0 turns the status server (and with it the
/// readiness probe) off.
pub fn parse_status_port(value: &str) -> Result<u16, AnnotationError> {
    check_size(ann::STATUS_PORT, value)?;
    let text = value.trim();
    let reason = match parse_uint(text) {
        Ok(n) => match u16::try_from(n) {
            Ok(port) => return Ok(port),
            Err(_) => format!("port {n} is out of range 0-65535 (0 disables the status port)"),
        },
        Err(UintError::TooLarge) => "port is out of range 0-65535 (0 disables the status port)".to_owned(),
        Err(UintError::NotANumber) => format!("{:?} is not a port number", shorten(text)),
    };
    Err(AnnotationError::new(ann::STATUS_PORT, value, reason))
}

/// An integer in `min..=i32::MAX` (probe fields are `int32` in the Kubernetes API).
fn parse_int_at_least(annotation: &str, value: &str, min: i32) -> Result<i32, AnnotationError> {
    check_size(annotation, value)?;
    let text = value.trim();
    let range = format!("expected an integer from {min} to {}", i32::MAX);
    let reason = match parse_uint(text) {
        Ok(n) => match i32::try_from(n) {
            Ok(v) if v >= min => return Ok(v),
            _ => format!("{n} is out of range; {range}"),
        },
        Err(UintError::TooLarge) => format!("the number is out of range; {range}"),
        Err(UintError::NotANumber) => format!("{:?} is not a number; {range}", shorten(text)),
    };
    Err(AnnotationError::new(annotation, value, reason))
}

/// A whole number ≥ 0 (`readiness.status.sidecar.istio.io/initialDelaySeconds`).
pub fn parse_non_negative_int(annotation: &str, value: &str) -> Result<i32, AnnotationError> {
    parse_int_at_least(annotation, value, 0)
}

/// A whole number ≥ 1 (`periodSeconds` and `failureThreshold`: Kubernetes needs at least 1).
pub fn parse_positive_int(annotation: &str, value: &str) -> Result<i32, AnnotationError> {
    parse_int_at_least(annotation, value, 1)
}

// ---------------------------------------------------------------------------------------------
// Resource quantities

/// A Kubernetes resource quantity (`100m`, `1.5Gi`, `128Mi`, `1e3`), kept as written.
///
/// Grammar: an optional sign, digits with an optional decimal point (`1`, `1.5`, `1.`, `.5`),
/// then either a binary suffix (`Ki` … `Ei`), a decimal suffix (`n`, `u`, `m`, `k`, `M`, `G`,
/// `T`, `P`, `E`) or a decimal exponent (`e`/`E`, optional sign, digits).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
pub struct Quantity(String);

/// A quantity broken into `mantissa × 10^pow10 × 2^pow2`, with the mantissa still as digits.
struct QuantityParts<'a> {
    negative: bool,
    /// The number as written, without sign and suffix (`1.5`, `.5`, `100`).
    number: &'a str,
    pow10: i64,
    pow2: u32,
}

/// Bounds the exponent so that nobody can ask for 10^(10^9); real quantities stay far inside.
const MAX_QUANTITY_EXPONENT: i64 = 1_000;

fn split_quantity(text: &str) -> Result<QuantityParts<'_>, String> {
    let bad = || format!("{:?} is not a valid quantity (e.g. 100m, 1.5Gi, 128Mi, 1e3)", shorten(text));
    let (negative, unsigned) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let number_len = unsigned.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(number_len);
    let digits = number.bytes().filter(u8::is_ascii_digit).count();
    if digits == 0 || number.matches('.').count() > 1 {
        return Err(bad());
    }
    let (pow10, pow2) = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        _ => (parse_exponent(suffix).ok_or_else(bad)?, 0),
    };
    Ok(QuantityParts { negative, number, pow10, pow2 })
}

/// `e3`, `E-2`, `e+6`: a decimal exponent suffix.
fn parse_exponent(suffix: &str) -> Option<i64> {
    let rest = suffix.strip_prefix(['e', 'E'])?;
    let (negative, digits) = match rest.as_bytes().first() {
        Some(b'-') => (true, &rest[1..]),
        Some(b'+') => (false, &rest[1..]),
        _ => (false, rest),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: i64 = digits.parse().ok().filter(|v| *v <= MAX_QUANTITY_EXPONENT)?;
    Some(if negative { -value } else { value })
}

impl Quantity {
    pub fn parse(text: &str) -> Result<Quantity, String> {
        split_quantity(text)?;
        Ok(Quantity(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_negative(&self) -> bool {
        // Only a non-zero mantissa makes it negative: "-0" is zero.
        split_quantity(&self.0)
            .is_ok_and(|p| p.negative && p.number.bytes().any(|b| matches!(b, b'1'..=b'9')))
    }

    /// The value in base units (cores, bytes) as a float; exact enough for display and ratios.
    pub fn as_f64(&self) -> f64 {
        let Ok(parts) = split_quantity(&self.0) else {
            return f64::NAN;
        };
        // Rust's float parser accepts "1.", ".5" and "100", which is all `number` can be.
        let mantissa: f64 = parts.number.parse().unwrap_or(f64::NAN);
        let sign = if parts.negative { -1.0 } else { 1.0 };
        let pow10 = i32::try_from(parts.pow10).unwrap_or(i32::MAX);
        sign * mantissa * 10f64.powi(pow10) * 2f64.powi(parts.pow2 as i32)
    }

    /// The value in whole base units (bytes), rounded up as Kubernetes rounds; `None` when
    /// negative or too large for a `u128`.
    pub fn to_units(&self) -> Option<u128> {
        self.scaled_ceil(0)
    }

    /// The value in thousandths of a base unit (millicores), rounded up as Kubernetes rounds;
    /// `None` when negative or too large for a `u128`.
    pub fn to_millis(&self) -> Option<u128> {
        self.scaled_ceil(3)
    }

    /// `ceil(value × 10^extra_pow10)` in exact integer arithmetic.
    fn scaled_ceil(&self, extra_pow10: i64) -> Option<u128> {
        let parts = split_quantity(&self.0).ok()?;
        if self.is_negative() {
            return None;
        }
        let (whole, fraction) = parts.number.split_once('.').unwrap_or((parts.number, ""));
        let digits = format!("{whole}{fraction}");
        let digits = digits.trim_start_matches('0');
        let mantissa: u128 = if digits.is_empty() { 0 } else { digits.parse().ok()? };
        let mantissa = mantissa.checked_mul(1u128.checked_shl(parts.pow2)?)?;
        let fraction_len = i64::try_from(fraction.len()).ok()?;
        let exponent = parts.pow10 + extra_pow10 - fraction_len;
        if exponent >= 0 {
            mantissa.checked_mul(10u128.checked_pow(u32::try_from(exponent).ok()?)?)
        } else {
            match 10u128.checked_pow(u32::try_from(-exponent).ok()?) {
                Some(divisor) => Some(mantissa.div_ceil(divisor)),
                // The divisor exceeds any mantissa: the value is below one unit.
                None => Some(u128::from(mantissa > 0)),
            }
        }
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Quantity {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Quantity::parse(text)
    }
}

impl TryFrom<String> for Quantity {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        split_quantity(&text)?;
        Ok(Quantity(text))
    }
}

impl From<Quantity> for String {
    fn from(q: Quantity) -> String {
        q.0
    }
}

/// A CPU or memory request/limit (`sidecar.istio.io/proxyCPU`, `proxyMemory`, …): a valid
/// quantity that is not negative.
pub fn parse_resource_quantity(annotation: &str, value: &str) -> Result<Quantity, AnnotationError> {
    check_size(annotation, value)?;
    let quantity =
        Quantity::parse(value).map_err(|reason| AnnotationError::new(annotation, value, reason))?;
    if quantity.is_negative() {
        return Err(AnnotationError::new(annotation, value, "a resource quantity must not be negative"));
    }
    Ok(quantity)
}

// ---------------------------------------------------------------------------------------------
// Log levels

/// Proxy log levels, as Envoy names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warning,
    Error,
    Critical,
    Off,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warning => "warning",
            LogLevel::Error => "error",
            LogLevel::Critical => "critical",
            LogLevel::Off => "off",
        }
    }
}

impl FromStr for LogLevel {
    type Err = String;

    /// Lower case, as Envoy's `--log-level` takes them; `warn` is Envoy's alias for `warning`.
    fn from_str(text: &str) -> Result<Self, String> {
        Ok(match text {
            "trace" => LogLevel::Trace,
            "debug" => LogLevel::Debug,
            "info" => LogLevel::Info,
            "warning" | "warn" => LogLevel::Warning,
            "error" => LogLevel::Error,
            "critical" => LogLevel::Critical,
            "off" => LogLevel::Off,
            _ => {
                return Err(format!(
                    "{:?} is not a log level (trace, debug, info, warning, error, critical, off)",
                    shorten(text)
                ));
            }
        })
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `sidecar.istio.io/logLevel`.
pub fn parse_log_level(value: &str) -> Result<LogLevel, AnnotationError> {
    check_size(ann::LOG_LEVEL, value)?;
    value.trim().parse().map_err(|reason| AnnotationError::new(ann::LOG_LEVEL, value, reason))
}

/// `sidecar.istio.io/componentLogLevel`: `component:level` pairs, e.g. `misc:error,rbac:debug`.
pub fn parse_component_log_levels(value: &str) -> Result<Vec<(String, LogLevel)>, AnnotationError> {
    check_size(ann::COMPONENT_LOG_LEVEL, value)?;
    component_levels(value).map_err(|reason| AnnotationError::new(ann::COMPONENT_LOG_LEVEL, value, reason))
}

fn component_levels(value: &str) -> Result<Vec<(String, LogLevel)>, String> {
    let mut levels = Vec::new();
    for entry in split_list(value)? {
        let Some((component, level)) = entry.split_once(':') else {
            return Err(format!("{:?} is not of the form component:level", shorten(entry)));
        };
        let component = component.trim();
        let valid_name = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
        if component.is_empty() || !component.chars().all(valid_name) {
            return Err(format!("{:?} is not a proxy component name", shorten(component)));
        }
        levels.push((component.to_owned(), level.trim().parse()?));
    }
    Ok(levels)
}

// ---------------------------------------------------------------------------------------------
// Free-form strings with light checks

/// `sidecar.istio.io/proxyImage`: a container image reference. Only what would break the pod
/// spec is refused (empty, white space, control characters); the registry decides the rest.
pub fn parse_image(value: &str) -> Result<String, AnnotationError> {
    check_size(ann::PROXY_IMAGE, value)?;
    let reason = if value.is_empty() {
        "an image reference must not be empty"
    } else if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        "an image reference must not contain white space or control characters"
    } else {
        return Ok(value.to_owned());
    };
    Err(AnnotationError::new(ann::PROXY_IMAGE, value, reason))
}

/// `prometheus.io/path`: an absolute URL path.
pub fn parse_http_path(annotation: &str, value: &str) -> Result<String, AnnotationError> {
    check_size(annotation, value)?;
    let reason = if !value.starts_with('/') {
        "the path must start with '/'"
    } else if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        "the path must not contain white space or control characters"
    } else {
        return Ok(value.to_owned());
    };
    Err(AnnotationError::new(annotation, value, reason))
}

/// `kubectl.kubernetes.io/default-container` and `default-logs-container`: a container name.
pub fn parse_container_name(annotation: &str, value: &str) -> Result<String, AnnotationError> {
    check_size(annotation, value)?;
    check_dns1123_label(value)
        .map(|()| value.to_owned())
        .map_err(|_| AnnotationError::new(annotation, value, "not a valid container name (a DNS-1123 label)"))
}

// ---------------------------------------------------------------------------------------------
// JSON-valued annotations

/// One-line description of a JSON error, without echoing the input.
fn json_reason(err: &serde_json::Error) -> String {
    format!("invalid JSON: {err}")
}

/// `sidecar.istio.io/userVolume`: extra volumes for the proxy. Istio accepts a JSON object
/// mapping each volume's name to its definition, or a JSON list of full volumes.
pub fn parse_user_volumes(value: &str) -> Result<Vec<Volume>, AnnotationError> {
    let volumes: Vec<Volume> = parse_named_list(ann::USER_VOLUME, value)?;
    for volume in &volumes {
        // k8s-openapi reads a missing name as ""; the API server would refuse the pod later,
        // with a message that no longer points at the annotation.
        check_dns1123_label(&volume.name).map_err(|reason| {
            AnnotationError::new(ann::USER_VOLUME, value, format!("volume name: {reason}"))
        })?;
    }
    Ok(volumes)
}

/// `sidecar.istio.io/userVolumeMount`: extra mounts for the proxy, in the same two shapes
/// (`{"name": {"mountPath": "/x"}}` or `[{"name": "name", "mountPath": "/x"}]`).
pub fn parse_user_volume_mounts(value: &str) -> Result<Vec<VolumeMount>, AnnotationError> {
    let mounts: Vec<VolumeMount> = parse_named_list(ann::USER_VOLUME_MOUNT, value)?;
    let fail = |reason: String| AnnotationError::new(ann::USER_VOLUME_MOUNT, value, reason);
    for mount in &mounts {
        check_dns1123_label(&mount.name).map_err(|reason| fail(format!("volume name: {reason}")))?;
        if mount.mount_path.is_empty() {
            return Err(fail(format!("mount {:?} has no mountPath", shorten(&mount.name))));
        }
    }
    Ok(mounts)
}

fn parse_named_list<T: serde::de::DeserializeOwned>(
    annotation: &str,
    value: &str,
) -> Result<Vec<T>, AnnotationError> {
    check_size(annotation, value)?;
    let fail = |reason: String| AnnotationError::new(annotation, value, reason);
    let json: serde_json::Value = serde_json::from_str(value).map_err(|e| fail(json_reason(&e)))?;
    let items = match json {
        serde_json::Value::Array(items) => items,
        serde_json::Value::Object(map) => named_entries(map).map_err(fail)?,
        _ => return Err(fail("expected a JSON object or list".to_owned())),
    };
    items
        .into_iter()
        .map(|item| serde_json::from_value(item).map_err(|e| fail(format!("invalid entry: {e}"))))
        .collect()
}

/// Turns `{"a": {...}}` into `[{"name": "a", ...}]`.
fn named_entries(map: serde_json::Map<String, serde_json::Value>) -> Result<Vec<serde_json::Value>, String> {
    map.into_iter()
        .map(|(name, body)| match body {
            serde_json::Value::Object(mut fields) => {
                fields.insert("name".to_owned(), serde_json::Value::String(name));
                Ok(serde_json::Value::Object(fields))
            }
            _ => Err(format!("entry {:?} must be a JSON object", shorten(&name))),
        })
        .collect()
}

/// What the injector added to a pod: the JSON value of `sidecar.istio.io/status`, in Istio's
/// shape so that Istio tooling (and a later re-injection) can read it. Empty lists are written
/// as `null`, as Istio writes them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SidecarStatus {
    #[serde(default, deserialize_with = "null_as_empty", serialize_with = "empty_as_null")]
    pub init_containers: Vec<String>,
    #[serde(default, deserialize_with = "null_as_empty", serialize_with = "empty_as_null")]
    pub containers: Vec<String>,
    #[serde(default, deserialize_with = "null_as_empty", serialize_with = "empty_as_null")]
    pub volumes: Vec<String>,
    #[serde(default, deserialize_with = "null_as_empty", serialize_with = "empty_as_null")]
    pub image_pull_secrets: Vec<String>,
    #[serde(default)]
    pub revision: String,
}

fn null_as_empty<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(de)?.unwrap_or_default())
}

fn empty_as_null<S: Serializer>(items: &[String], ser: S) -> Result<S::Ok, S::Error> {
    if items.is_empty() { ser.serialize_none() } else { items.serialize(ser) }
}

impl SidecarStatus {
    pub fn parse(value: &str) -> Result<SidecarStatus, AnnotationError> {
        check_size(ann::SIDECAR_STATUS, value)?;
        serde_json::from_str(value)
            .map_err(|e| AnnotationError::new(ann::SIDECAR_STATUS, value, json_reason(&e)))
    }

    pub fn to_json(&self) -> String {
        // Serializing strings and lists of strings into JSON cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------------------------
// proxy.istio.io/config

/// `proxy.istio.io/config`: per-pod `ProxyConfig` overrides, as YAML or JSON. Fields Trellis
/// does not model are ignored, as Istio ignores fields it does not use, so that pods written
/// for Istio still start; [`parse_proxy_config_with_unknown_fields`] lists them for warnings.
pub fn parse_proxy_config(value: &str) -> Result<ProxyConfig, AnnotationError> {
    parse_proxy_config_with_unknown_fields(value).map(|(config, _)| config)
}

/// Like [`parse_proxy_config`], also returning the paths of fields that were ignored.
pub fn parse_proxy_config_with_unknown_fields(
    value: &str,
) -> Result<(ProxyConfig, Vec<String>), AnnotationError> {
    check_size(ann::PROXY_CONFIG, value)?;
    let fail = |reason: String| AnnotationError::new(ann::PROXY_CONFIG, value, reason);
    let (config, unknown) = ProxyConfig::from_yaml(value).map_err(|e| fail(e.to_string()))?;
    let problems = config.validate();
    if !problems.is_empty() {
        return Err(fail(problems.join("; ")));
    }
    Ok((config, unknown))
}

// ---------------------------------------------------------------------------------------------
// Whole-pod readers

/// Reads one annotation with `parse` when present, collecting its error instead of stopping.
fn read<T>(
    annotations: &BTreeMap<String, String>,
    name: &str,
    parse: impl FnOnce(&str) -> Result<T, AnnotationError>,
    errors: &mut Vec<AnnotationError>,
) -> Option<T> {
    let value = annotations.get(name)?;
    parse(value).map_err(|e| errors.push(e)).ok()
}

/// The redirect settings a pod asks for with its annotations; `None` means "not set, use the
/// mesh or injector default".
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TrafficAnnotations {
    pub include_outbound_ip_ranges: Option<IpRangeSelection>,
    pub exclude_outbound_ip_ranges: Option<Vec<IpNet>>,
    pub include_inbound_ports: Option<PortSelection>,
    pub exclude_inbound_ports: Option<Vec<u16>>,
    pub include_outbound_ports: Option<Vec<u16>>,
    pub exclude_outbound_ports: Option<Vec<u16>>,
    pub exclude_interfaces: Option<Vec<String>>,
    pub kubevirt_interfaces: Option<Vec<String>>,
    pub interception_mode: Option<InterceptionMode>,
}

impl TrafficAnnotations {
    /// Reads every traffic annotation and reports every bad one, so that a user fixes them all
    /// in one round.
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Result<Self, Vec<AnnotationError>> {
        let mut errors = Vec::new();
        let e = &mut errors;
        let parsed = TrafficAnnotations {
            include_outbound_ip_ranges: read(
                annotations,
                ann::INCLUDE_OUTBOUND_IP_RANGES,
                |v| parse_ip_range_selection(ann::INCLUDE_OUTBOUND_IP_RANGES, v),
                e,
            ),
            exclude_outbound_ip_ranges: read(
                annotations,
                ann::EXCLUDE_OUTBOUND_IP_RANGES,
                |v| parse_cidr_list(ann::EXCLUDE_OUTBOUND_IP_RANGES, v),
                e,
            ),
            include_inbound_ports: read(
                annotations,
                ann::INCLUDE_INBOUND_PORTS,
                |v| parse_port_selection(ann::INCLUDE_INBOUND_PORTS, v),
                e,
            ),
            exclude_inbound_ports: read(
                annotations,
                ann::EXCLUDE_INBOUND_PORTS,
                |v| parse_port_list(ann::EXCLUDE_INBOUND_PORTS, v),
                e,
            ),
            include_outbound_ports: read(
                annotations,
                ann::INCLUDE_OUTBOUND_PORTS,
                |v| parse_port_list(ann::INCLUDE_OUTBOUND_PORTS, v),
                e,
            ),
            exclude_outbound_ports: read(
                annotations,
                ann::EXCLUDE_OUTBOUND_PORTS,
                |v| parse_port_list(ann::EXCLUDE_OUTBOUND_PORTS, v),
                e,
            ),
            exclude_interfaces: read(
                annotations,
                ann::EXCLUDE_INTERFACES,
                |v| parse_interface_list(ann::EXCLUDE_INTERFACES, v),
                e,
            ),
            kubevirt_interfaces: read(
                annotations,
                ann::REROUTE_VIRTUAL_INTERFACES,
                |v| parse_interface_list(ann::REROUTE_VIRTUAL_INTERFACES, v),
                e,
            )
            .or_else(|| {
                read(
                    annotations,
                    ann::KUBEVIRT_INTERFACES,
                    |v| parse_interface_list(ann::KUBEVIRT_INTERFACES, v),
                    e,
                )
            }),
            interception_mode: read(annotations, ann::INTERCEPTION_MODE, parse_interception_mode, e),
        };
        if errors.is_empty() { Ok(parsed) } else { Err(errors) }
    }
}

/// The readiness-probe overrides a pod asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReadinessAnnotations {
    pub initial_delay_seconds: Option<i32>,
    pub period_seconds: Option<i32>,
    pub failure_threshold: Option<i32>,
    pub application_ports: Option<Vec<u16>>,
}

impl ReadinessAnnotations {
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Result<Self, Vec<AnnotationError>> {
        let mut errors = Vec::new();
        let e = &mut errors;
        let parsed = ReadinessAnnotations {
            initial_delay_seconds: read(
                annotations,
                ann::READINESS_INITIAL_DELAY_SECONDS,
                |v| parse_non_negative_int(ann::READINESS_INITIAL_DELAY_SECONDS, v),
                e,
            ),
            period_seconds: read(
                annotations,
                ann::READINESS_PERIOD_SECONDS,
                |v| parse_positive_int(ann::READINESS_PERIOD_SECONDS, v),
                e,
            ),
            failure_threshold: read(
                annotations,
                ann::READINESS_FAILURE_THRESHOLD,
                |v| parse_positive_int(ann::READINESS_FAILURE_THRESHOLD, v),
                e,
            ),
            application_ports: read(
                annotations,
                ann::READINESS_APPLICATION_PORTS,
                |v| parse_port_list(ann::READINESS_APPLICATION_PORTS, v),
                e,
            ),
        };
        if errors.is_empty() { Ok(parsed) } else { Err(errors) }
    }
}

/// Checks every known annotation present on a pod and returns all the errors, in the order of
/// the annotation names. Unknown annotations are not errors (anything may annotate a pod).
pub fn validate_pod_annotations(annotations: &BTreeMap<String, String>) -> Vec<AnnotationError> {
    let mut errors = Vec::new();
    let mut check = |name: &str, parse: &dyn Fn(&str) -> Result<(), AnnotationError>| {
        if let Some(value) = annotations.get(name)
            && let Err(e) = parse(value)
        {
            errors.push(e);
        }
    };
    for name in [ann::PROXY_CPU, ann::PROXY_MEMORY, ann::PROXY_CPU_LIMIT, ann::PROXY_MEMORY_LIMIT] {
        check(name, &|v| parse_resource_quantity(name, v).map(drop));
    }
    for name in [
        ann::REWRITE_APP_HTTP_PROBERS,
        ann::NATIVE_SIDECAR,
        ann::PROMETHEUS_SCRAPE,
        ann::PROMETHEUS_MERGE_METRICS,
    ] {
        check(name, &|v| parse_bool(name, v).map(drop));
    }
    for name in [ann::DEFAULT_CONTAINER, ann::DEFAULT_LOGS_CONTAINER] {
        check(name, &|v| parse_container_name(name, v).map(drop));
    }
    check(ann::SIDECAR_STATUS, &|v| SidecarStatus::parse(v).map(drop));
    check(ann::PROXY_IMAGE, &|v| parse_image(v).map(drop));
    check(ann::LOG_LEVEL, &|v| parse_log_level(v).map(drop));
    check(ann::COMPONENT_LOG_LEVEL, &|v| parse_component_log_levels(v).map(drop));
    check(ann::USER_VOLUME, &|v| parse_user_volumes(v).map(drop));
    check(ann::USER_VOLUME_MOUNT, &|v| parse_user_volume_mounts(v).map(drop));
    check(ann::STATUS_PORT, &|v| parse_status_port(v).map(drop));
    check(ann::PROXY_CONFIG, &|v| parse_proxy_config(v).map(drop));
    check(ann::PROMETHEUS_PORT, &|v| parse_single_port(ann::PROMETHEUS_PORT, v).map(drop));
    check(ann::PROMETHEUS_PATH, &|v| parse_http_path(ann::PROMETHEUS_PATH, v).map(drop));
    if let Err(found) = TrafficAnnotations::from_annotations(annotations) {
        errors.extend(found);
    }
    if let Err(found) = ReadinessAnnotations::from_annotations(annotations) {
        errors.extend(found);
    }
    errors.sort_by(|a, b| a.annotation.cmp(&b.annotation));
    errors
}

/// Annotations under Istio's prefixes that are not known names: almost always typos
/// (`sidecar.istio.io/proxyCpu`), which Istio would silently ignore.
pub fn unknown_istio_annotations(annotations: &BTreeMap<String, String>) -> Vec<String> {
    const PREFIXES: [&str; 5] = [
        "sidecar.istio.io/",
        "traffic.sidecar.istio.io/",
        "status.sidecar.istio.io/",
        "readiness.status.sidecar.istio.io/",
        "proxy.istio.io/",
    ];
    let known: BTreeSet<&str> = ann::ALL.iter().copied().collect();
    annotations
        .keys()
        .filter(|k| PREFIXES.iter().any(|p| k.starts_with(p)) && !known.contains(k.as_str()))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn err_text<T: fmt::Debug>(r: Result<T, AnnotationError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn error_display_names_annotation_value_and_reason() {
        assert_eq!(
            err_text(parse_port_list(ann::EXCLUDE_INBOUND_PORTS, "80,abc")),
            "annotation traffic.sidecar.istio.io/excludeInboundPorts: invalid value \"80,abc\": \"abc\" is not a port number"
        );
    }

    #[test]
    fn oversized_values_are_refused_without_echoing_them() {
        let huge = "1".repeat(MAX_VALUE_LEN + 1);
        let err = parse_port_list(ann::EXCLUDE_INBOUND_PORTS, &huge).unwrap_err();
        assert_eq!(err.reason, "value is 4097 bytes, at most 4096 are allowed");
        assert_eq!(err.value, format!("{}...", "1".repeat(64)));
        assert_eq!(
            err.to_string(),
            format!(
                "annotation traffic.sidecar.istio.io/excludeInboundPorts: invalid value \"{}...\": value is 4097 bytes, at most 4096 are allowed",
                "1".repeat(64)
            )
        );
        // Exactly at the limit is looked at (and here fails for its content, not its size).
        let at_limit = "8".repeat(MAX_VALUE_LEN);
        assert!(
            !parse_port_list(ann::EXCLUDE_INBOUND_PORTS, &at_limit).unwrap_err().reason.contains("bytes")
        );
        // Every parser applies the limit.
        let big = "x".repeat(10_000);
        assert!(parse_bool("b", &big).unwrap_err().reason.starts_with("value is 10000 bytes"));
        assert!(parse_interception_mode(&big).unwrap_err().reason.starts_with("value is 10000 bytes"));
        assert!(parse_proxy_config(&big).unwrap_err().reason.starts_with("value is 10000 bytes"));
        assert!(SidecarStatus::parse(&big).unwrap_err().reason.starts_with("value is 10000 bytes"));
        assert!(parse_resource_quantity("q", &big).unwrap_err().reason.starts_with("value is 10000 bytes"));
    }

    #[test]
    fn long_values_are_cut_on_a_character_boundary() {
        let value = "é".repeat(100);
        let err = parse_bool("b", &value).unwrap_err();
        assert_eq!(err.value, format!("{}...", "é".repeat(64)));
    }

    #[test]
    fn bools_follow_go_parse_bool() {
        for yes in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(parse_bool("a", yes), Ok(true), "{yes}");
        }
        for no in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_bool("a", no), Ok(false), "{no}");
        }
        for bad in ["", "yes", "tRUE", " true", "true\0", "2", "ｔｒｕｅ"] {
            assert!(parse_bool("a", bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            err_text(parse_bool(ann::NATIVE_SIDECAR, "yes")),
            "annotation sidecar.istio.io/nativeSidecar: invalid value \"yes\": expected true or false"
        );
    }

    #[test]
    fn inject_switch_reads_like_istio() {
        for yes in ["y", "yes", "true", "on", "TRUE", "Yes"] {
            assert_eq!(parse_sidecar_inject(yes), Some(true), "{yes}");
        }
        for no in ["false", "no", "n", "off", "disabled", "1", "enabled"] {
            assert_eq!(parse_sidecar_inject(no), Some(false), "{no}");
        }
        assert_eq!(parse_sidecar_inject(""), None);
        let labels = map(&[(names::label::SIDECAR_INJECT, "false")]);
        let annotations = map(&[(ann::SIDECAR_INJECT, "true")]);
        assert_eq!(pod_inject_override(&labels, &annotations), Some(false), "the label wins");
        assert_eq!(pod_inject_override(&BTreeMap::new(), &annotations), Some(true));
        assert_eq!(pod_inject_override(&BTreeMap::new(), &BTreeMap::new()), None);
        assert_eq!(parse_namespace_injection("enabled"), Some(true));
        assert_eq!(parse_namespace_injection("disabled"), Some(false));
        assert_eq!(parse_namespace_injection("Enabled"), None);
    }

    #[test]
    fn interception_modes() {
        assert_eq!(parse_interception_mode("REDIRECT"), Ok(InterceptionMode::Redirect));
        assert_eq!(parse_interception_mode("TPROXY"), Ok(InterceptionMode::Tproxy));
        assert_eq!(parse_interception_mode("NONE"), Ok(InterceptionMode::None));
        assert_eq!(InterceptionMode::default(), InterceptionMode::Redirect);
        assert_eq!(
            err_text(parse_interception_mode("tproxy")),
            "annotation sidecar.istio.io/interceptionMode: invalid value \"tproxy\": expected \"TPROXY\"; the value is case-sensitive"
        );
        assert_eq!(
            err_text(parse_interception_mode("NAT")),
            "annotation sidecar.istio.io/interceptionMode: invalid value \"NAT\": expected one of REDIRECT, TPROXY, NONE"
        );
        assert!(parse_interception_mode("").is_err());
        assert!(parse_interception_mode(" REDIRECT").is_err());
        assert!(parse_interception_mode("REDIRECT\0").is_err());
        assert_eq!(serde_json::to_string(&InterceptionMode::Tproxy).unwrap(), "\"TPROXY\"");
        assert_eq!(InterceptionMode::None.to_string(), "NONE");
    }

    #[test]
    fn port_lists() {
        let p = |v: &str| parse_port_list(ann::EXCLUDE_OUTBOUND_PORTS, v);
        assert_eq!(p("80"), Ok(vec![80]));
        assert_eq!(p(" 80 , 443,8080 "), Ok(vec![80, 443, 8080]));
        assert_eq!(p("443,80,443,80"), Ok(vec![443, 80]), "duplicates removed, order kept");
        assert_eq!(p(""), Ok(vec![]));
        assert_eq!(p("   "), Ok(vec![]));
        assert_eq!(p("1,65535"), Ok(vec![1, 65535]));
        assert_eq!(
            err_text(p("80,,90")),
            "annotation traffic.sidecar.istio.io/excludeOutboundPorts: invalid value \"80,,90\": empty entry in the list (check for a stray comma)"
        );
        assert_eq!(p("80,").unwrap_err().reason, "empty entry in the list (check for a stray comma)");
        assert_eq!(p(",").unwrap_err().reason, "empty entry in the list (check for a stray comma)");
        assert_eq!(p("0").unwrap_err().reason, "port 0 is out of range 1-65535");
        assert_eq!(p("65536").unwrap_err().reason, "port 65536 is out of range 1-65535");
        assert_eq!(p("-1").unwrap_err().reason, "\"-1\" is not a port number");
        assert_eq!(p("*").unwrap_err().reason, "\"*\" (all ports) cannot be used in this list");
        assert_eq!(p("80;90").unwrap_err().reason, "\"80;90\" is not a port number");
        assert_eq!(p("８０").unwrap_err().reason, "\"８０\" is not a port number");
        assert_eq!(p("80\u{0}").unwrap_err().reason, "\"80\\0\" is not a port number");
        let long_entry = "9".repeat(500);
        assert_eq!(
            p(&long_entry).unwrap_err().reason,
            format!("\"{}...\" is not a port number", "9".repeat(64))
        );
    }

    #[test]
    fn port_selections() {
        let p = |v: &str| parse_port_selection(ann::INCLUDE_INBOUND_PORTS, v);
        assert_eq!(p("*"), Ok(PortSelection::All));
        assert_eq!(p(" * "), Ok(PortSelection::All));
        assert_eq!(p(""), Ok(PortSelection::Ports(vec![])));
        assert_eq!(p("9080,9090"), Ok(PortSelection::Ports(vec![9080, 9090])));
        assert_eq!(
            err_text(p("*,80")),
            "annotation traffic.sidecar.istio.io/includeInboundPorts: invalid value \"*,80\": \"*\" selects everything and cannot be combined with port numbers"
        );
        assert!(p("80,*").is_err());
        assert!(p("**").is_err());
        assert!(PortSelection::All.contains(1));
        assert!(PortSelection::Ports(vec![80]).contains(80));
        assert!(!PortSelection::Ports(vec![80]).contains(81));
    }

    #[test]
    fn ip_ranges() {
        let sel = |v: &str| parse_ip_range_selection(ann::INCLUDE_OUTBOUND_IP_RANGES, v);
        assert_eq!(sel("*"), Ok(IpRangeSelection::All));
        assert_eq!(sel(""), Ok(IpRangeSelection::Ranges(vec![])));
        assert_eq!(
            sel("10.0.0.0/8, fd00::/8,10.0.0.0/8"),
            Ok(IpRangeSelection::Ranges(vec![net("10.0.0.0/8"), net("fd00::/8")]))
        );
        assert_eq!(
            err_text(sel("*,10.0.0.0/8")),
            "annotation traffic.sidecar.istio.io/includeOutboundIPRanges: invalid value \"*,10.0.0.0/8\": \"*\" selects everything and cannot be combined with CIDRs"
        );
        assert_eq!(
            err_text(sel("10.0.0.1")),
            "annotation traffic.sidecar.istio.io/includeOutboundIPRanges: invalid value \"10.0.0.1\": \"10.0.0.1\" is not a CIDR (missing /prefix-length)"
        );
        assert_eq!(sel("10.0.0.0/33").unwrap_err().reason, "\"10.0.0.0/33\" is not a valid CIDR");
        assert_eq!(
            sel("10.0.0.0/8,,").unwrap_err().reason,
            "empty entry in the list (check for a stray comma)"
        );
        assert!(sel("localhost/8").is_err());
        assert!(sel("10.0.0.0/8\u{0}").is_err());
        let list = |v: &str| parse_cidr_list(ann::EXCLUDE_OUTBOUND_IP_RANGES, v);
        assert_eq!(list("169.254.169.254/32"), Ok(vec![net("169.254.169.254/32")]));
        assert_eq!(list("*").unwrap_err().reason, "\"*\" (all addresses) cannot be used in this list");
        let long_entry = format!("10.0.0.0/{}", "8".repeat(100));
        assert!(list(&long_entry).unwrap_err().reason.ends_with("...\" is not a valid CIDR"));
        let all = IpRangeSelection::All;
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        let some = IpRangeSelection::Ranges(vec![net("10.0.0.0/8")]);
        assert!(some.contains("10.9.9.9".parse().unwrap()));
        assert!(!some.contains("11.0.0.1".parse().unwrap()));
    }

    #[test]
    fn interface_lists() {
        let p = |v: &str| parse_interface_list(ann::EXCLUDE_INTERFACES, v);
        assert_eq!(p("eth1, net1,eth1"), Ok(vec!["eth1".to_owned(), "net1".to_owned()]));
        assert_eq!(p(""), Ok(vec![]));
        assert_eq!(p("abcdefghijklmno"), Ok(vec!["abcdefghijklmno".to_owned()]));
        assert_eq!(
            err_text(p("abcdefghijklmnop")),
            "annotation traffic.sidecar.istio.io/excludeInterfaces: invalid value \"abcdefghijklmnop\": interface name \"abcdefghijklmnop\" must be 1 to 15 bytes long"
        );
        assert_eq!(
            p("eth0:1").unwrap_err().reason,
            "interface name \"eth0:1\" contains ':', which is not allowed"
        );
        assert!(p("a/b").is_err());
        assert!(p("a b").is_err());
        assert!(p("a\0b").is_err());
        assert!(p(".").is_err());
        assert!(p("..").is_err());
        assert!(p("eth0,,eth1").is_err());
        // Eight two-byte characters are 16 bytes: too long for the kernel.
        assert!(p(&"é".repeat(8)).is_err());
        assert!(p("é").is_ok());
    }

    #[test]
    fn status_port_and_small_integers() {
        assert_eq!(parse_status_port("15020"), Ok(15020));
        assert_eq!(parse_status_port("0"), Ok(0));
        assert_eq!(parse_status_port("65535"), Ok(65535));
        assert_eq!(
            err_text(parse_status_port("65536")),
            "annotation status.sidecar.istio.io/port: invalid value \"65536\": port 65536 is out of range 0-65535 (0 disables the status port)"
        );
        assert_eq!(
            parse_status_port("99999999999999999999999").unwrap_err().reason,
            "port is out of range 0-65535 (0 disables the status port)"
        );
        assert_eq!(parse_status_port("-1").unwrap_err().reason, "\"-1\" is not a port number");
        assert!(parse_status_port("+80").is_err());
        assert!(parse_status_port("").is_err());
        assert_eq!(parse_non_negative_int("a", "0"), Ok(0));
        assert_eq!(parse_non_negative_int("a", "2147483647"), Ok(i32::MAX));
        assert_eq!(
            err_text(parse_positive_int(ann::READINESS_PERIOD_SECONDS, "0")),
            "annotation readiness.status.sidecar.istio.io/periodSeconds: invalid value \"0\": 0 is out of range; expected an integer from 1 to 2147483647"
        );
        assert_eq!(
            parse_non_negative_int("a", "2147483648").unwrap_err().reason,
            "2147483648 is out of range; expected an integer from 0 to 2147483647"
        );
        assert_eq!(
            parse_non_negative_int("a", "1.5").unwrap_err().reason,
            "\"1.5\" is not a number; expected an integer from 0 to 2147483647"
        );
        assert!(parse_non_negative_int("a", "-3").is_err());
        assert_eq!(parse_single_port(ann::PROMETHEUS_PORT, "9090"), Ok(9090));
        assert!(parse_single_port(ann::PROMETHEUS_PORT, "0").is_err());
    }

    #[test]
    fn quantities_follow_the_kubernetes_grammar() {
        for ok in [
            "100m", "1.5Gi", "128Mi", "1e3", "1E3", "2", "0", "0.5", ".5", "1.", "+1", "1Ki", "5E", "1e-3",
            "1e+3",
        ] {
            assert!(Quantity::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "1.2.3", "10MB", "abc", ".", "Mi", "1 Mi", "1e", "1e+", "1e1.5", "1Kib", "--1", "1m\0", "١٢",
            "1e99999",
        ] {
            assert!(Quantity::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Quantity::parse("10MB").unwrap_err(),
            "\"10MB\" is not a valid quantity (e.g. 100m, 1.5Gi, 128Mi, 1e3)"
        );
        assert_eq!(
            err_text(parse_resource_quantity(ann::PROXY_CPU, "-100m")),
            "annotation sidecar.istio.io/proxyCPU: invalid value \"-100m\": a resource quantity must not be negative"
        );
        assert_eq!(
            err_text(parse_resource_quantity(ann::PROXY_MEMORY, "1.2.3")),
            "annotation sidecar.istio.io/proxyMemory: invalid value \"1.2.3\": \"1.2.3\" is not a valid quantity (e.g. 100m, 1.5Gi, 128Mi, 1e3)"
        );
        assert!(parse_resource_quantity(ann::PROXY_CPU, "-0").is_ok(), "-0 is zero, not negative");
        assert!(parse_resource_quantity(ann::PROXY_CPU, "").is_err());
    }

    #[test]
    fn quantity_values() {
        let q = |s: &str| Quantity::parse(s).unwrap();
        assert_eq!(q("100m").to_millis(), Some(100));
        assert_eq!(q("2").to_millis(), Some(2000));
        assert_eq!(q("1.5").to_millis(), Some(1500));
        assert_eq!(q("0.0001").to_millis(), Some(1), "rounded up, as Kubernetes does");
        assert_eq!(q("128Mi").to_units(), Some(128 * 1024 * 1024));
        assert_eq!(q("1.5Gi").to_units(), Some(1_610_612_736));
        assert_eq!(q("1e3").to_units(), Some(1000));
        assert_eq!(q("1k").to_units(), Some(1000));
        assert_eq!(q("500n").to_units(), Some(1));
        assert_eq!(q("1e-900").to_units(), Some(1));
        assert_eq!(q("0e-900").to_units(), Some(0));
        assert_eq!(q("1e900").to_units(), None, "too large");
        assert_eq!(q("-1").to_units(), None);
        assert_eq!(q(&"9".repeat(60)).to_units(), None);
        assert!((q("1.5Gi").as_f64() - 1_610_612_736.0).abs() < 1.0);
        assert!((q("-250m").as_f64() + 0.25).abs() < 1e-12);
        assert_eq!(q("1.5Gi").to_string(), "1.5Gi");
        let json: Quantity = serde_json::from_str("\"64Mi\"").unwrap();
        assert_eq!(json.as_str(), "64Mi");
        assert!(serde_json::from_str::<Quantity>("\"64MB\"").is_err());
    }

    #[test]
    fn log_levels() {
        assert_eq!(parse_log_level("debug"), Ok(LogLevel::Debug));
        assert_eq!(parse_log_level("warn"), Ok(LogLevel::Warning));
        assert_eq!(
            err_text(parse_log_level("verbose")),
            "annotation sidecar.istio.io/logLevel: invalid value \"verbose\": \"verbose\" is not a log level (trace, debug, info, warning, error, critical, off)"
        );
        assert!(parse_log_level("DEBUG").is_err());
        assert_eq!(
            parse_component_log_levels("misc:error, rbac:debug"),
            Ok(vec![("misc".to_owned(), LogLevel::Error), ("rbac".to_owned(), LogLevel::Debug)])
        );
        assert_eq!(parse_component_log_levels(""), Ok(vec![]));
        assert_eq!(
            parse_component_log_levels("misc").unwrap_err().reason,
            "\"misc\" is not of the form component:level"
        );
        assert!(parse_component_log_levels("misc:loud").is_err());
        assert!(parse_component_log_levels("Mi sc:info").is_err());
        assert!(parse_component_log_levels(":info").is_err());
    }

    #[test]
    fn strings_with_light_checks() {
        assert_eq!(
            parse_image("docker.io/istio/proxyv2:1.22.0"),
            Ok("docker.io/istio/proxyv2:1.22.0".to_owned())
        );
        assert!(parse_image("").is_err());
        assert!(parse_image("a b").is_err());
        assert!(parse_image("a\0b").is_err());
        assert_eq!(
            parse_http_path(ann::PROMETHEUS_PATH, "/stats/prometheus"),
            Ok("/stats/prometheus".to_owned())
        );
        assert_eq!(
            err_text(parse_http_path(ann::PROMETHEUS_PATH, "metrics")),
            "annotation prometheus.io/path: invalid value \"metrics\": the path must start with '/'"
        );
        assert_eq!(parse_container_name(ann::DEFAULT_CONTAINER, "app"), Ok("app".to_owned()));
        assert!(parse_container_name(ann::DEFAULT_CONTAINER, "App_1").is_err());
    }

    #[test]
    fn user_volumes_in_both_shapes() {
        let from_map = parse_user_volumes(r#"{"certs":{"secret":{"secretName":"my-certs"}}}"#).unwrap();
        assert_eq!(from_map.len(), 1);
        assert_eq!(from_map[0].name, "certs");
        assert_eq!(from_map[0].secret.as_ref().unwrap().secret_name.as_deref(), Some("my-certs"));
        let from_list = parse_user_volumes(r#"[{"name":"cfg","configMap":{"name":"cm"}}]"#).unwrap();
        assert_eq!(from_list[0].name, "cfg");
        let mounts =
            parse_user_volume_mounts(r#"{"certs":{"mountPath":"/etc/certs","readOnly":true}}"#).unwrap();
        assert_eq!(mounts[0].name, "certs");
        assert_eq!(mounts[0].mount_path, "/etc/certs");
        assert_eq!(
            parse_user_volume_mounts(r#"[{"name":"x"}]"#).unwrap_err().reason,
            "mount \"x\" has no mountPath"
        );
        assert!(
            parse_user_volume_mounts(r#"[{"mountPath":"/x"}]"#)
                .unwrap_err()
                .reason
                .starts_with("volume name: ")
        );
        assert!(parse_user_volumes(r#"[{"emptyDir":{}}]"#).unwrap_err().reason.starts_with("volume name: "));
        assert!(parse_user_volumes(r#"{"Bad_Name":{"emptyDir":{}}}"#).is_err());
        assert!(
            parse_user_volumes(r#"[{"name":"x","emptyDir":5}]"#)
                .unwrap_err()
                .reason
                .starts_with("invalid entry:")
        );
        assert_eq!(parse_user_volumes("[]"), Ok(vec![]));
        assert_eq!(parse_user_volumes("{}"), Ok(vec![]));
        assert!(parse_user_volumes("{").unwrap_err().reason.starts_with("invalid JSON:"));
        assert_eq!(
            err_text(parse_user_volumes("42")),
            "annotation sidecar.istio.io/userVolume: invalid value \"42\": expected a JSON object or list"
        );
        assert_eq!(parse_user_volumes(r#"{"a":1}"#).unwrap_err().reason, "entry \"a\" must be a JSON object");
    }

    #[test]
    fn sidecar_status_round_trips_in_istio_shape() {
        let istio = r#"{"initContainers":["istio-init"],"containers":["istio-proxy"],"volumes":["workload-socket","istio-envoy"],"imagePullSecrets":null,"revision":"default"}"#;
        let status = SidecarStatus::parse(istio).unwrap();
        assert_eq!(status.init_containers, vec!["istio-init"]);
        assert_eq!(status.containers, vec!["istio-proxy"]);
        assert!(status.image_pull_secrets.is_empty());
        assert_eq!(status.revision, "default");
        assert_eq!(status.to_json(), istio);
        assert_eq!(SidecarStatus::parse(&status.to_json()), Ok(status));
        // Older injectors omit fields; unknown fields from newer ones are ignored.
        let sparse = SidecarStatus::parse(r#"{"containers":["istio-proxy"],"extra":1}"#).unwrap();
        assert_eq!(sparse.revision, "");
        assert_eq!(
            SidecarStatus::default().to_json(),
            r#"{"initContainers":null,"containers":null,"volumes":null,"imagePullSecrets":null,"revision":""}"#
        );
        let err = SidecarStatus::parse("{\"containers\": 5}").unwrap_err();
        assert_eq!(err.annotation, "sidecar.istio.io/status");
        assert!(err.reason.starts_with("invalid JSON: invalid type: integer `5`"), "{}", err.reason);
        assert!(SidecarStatus::parse("").is_err());
        assert!(SidecarStatus::parse("\0").is_err());
    }

    #[test]
    fn proxy_config_annotation() {
        let yaml =
            "holdApplicationUntilProxyStarts: true\nproxyMetadata:\n  ISTIO_META_DNS_CAPTURE: \"true\"\n";
        let config = parse_proxy_config(yaml).unwrap();
        assert_eq!(config.hold_application_until_proxy_starts, Some(true));
        assert_eq!(config.proxy_metadata.get("ISTIO_META_DNS_CAPTURE").map(String::as_str), Some("true"));
        let json = parse_proxy_config(r#"{"concurrency": 2, "interceptionMode": "TPROXY"}"#).unwrap();
        assert_eq!(json.concurrency, Some(2));
        assert_eq!(json.interception_mode, Some(InterceptionMode::Tproxy));
        assert_eq!(parse_proxy_config(""), Ok(ProxyConfig::default()));
        let (_, unknown) =
            parse_proxy_config_with_unknown_fields("concurrency: 1\nreadinessProbe: {}\n").unwrap();
        assert_eq!(unknown, vec!["readinessProbe"]);
        assert_eq!(
            err_text(parse_proxy_config("statusPort: 70000")),
            "annotation proxy.istio.io/config: invalid value \"statusPort: 70000\": statusPort: port 70000 is out of range 1-65535"
        );
        let err = parse_proxy_config("concurrency: [1").unwrap_err();
        assert!(err.reason.contains("(line 1, column "), "{}", err.reason);
        assert!(parse_proxy_config("interceptionMode: redirect").is_err());
        assert!(parse_proxy_config("\0").is_err());
    }

    #[test]
    fn traffic_annotations_collect_every_error() {
        let pod = map(&[
            (ann::INCLUDE_OUTBOUND_IP_RANGES, "*"),
            (ann::EXCLUDE_OUTBOUND_IP_RANGES, "169.254.169.254/32"),
            (ann::INCLUDE_INBOUND_PORTS, "9080"),
            (ann::EXCLUDE_INBOUND_PORTS, "15020"),
            (ann::EXCLUDE_OUTBOUND_PORTS, "5432,5432"),
            (ann::EXCLUDE_INTERFACES, "net1"),
            (ann::INTERCEPTION_MODE, "TPROXY"),
            ("unrelated", "whatever"),
        ]);
        let t = TrafficAnnotations::from_annotations(&pod).unwrap();
        assert_eq!(t.include_outbound_ip_ranges, Some(IpRangeSelection::All));
        assert_eq!(t.exclude_outbound_ip_ranges, Some(vec![net("169.254.169.254/32")]));
        assert_eq!(t.include_inbound_ports, Some(PortSelection::Ports(vec![9080])));
        assert_eq!(t.exclude_inbound_ports, Some(vec![15020]));
        assert_eq!(t.include_outbound_ports, None);
        assert_eq!(t.exclude_outbound_ports, Some(vec![5432]));
        assert_eq!(t.exclude_interfaces, Some(vec!["net1".to_owned()]));
        assert_eq!(t.kubevirt_interfaces, None);
        assert_eq!(
            check_interface_name("--dry-run").unwrap_err(),
            "interface name \"--dry-run\" must not start with '-'"
        );
        assert_eq!(t.interception_mode, Some(InterceptionMode::Tproxy));
        assert_eq!(TrafficAnnotations::from_annotations(&BTreeMap::new()), Ok(TrafficAnnotations::default()));

        // KubeVirt interfaces under either name; Istio's newer one wins.
        let virt = |pairs: &[(&str, &str)]| {
            TrafficAnnotations::from_annotations(&map(pairs)).map(|t| t.kubevirt_interfaces)
        };
        assert_eq!(virt(&[(ann::KUBEVIRT_INTERFACES, "net1")]), Ok(Some(vec!["net1".to_owned()])));
        assert_eq!(
            virt(&[(ann::KUBEVIRT_INTERFACES, "net1"), (ann::REROUTE_VIRTUAL_INTERFACES, "k6t-eth0")]),
            Ok(Some(vec!["k6t-eth0".to_owned()]))
        );
        let errors = virt(&[(ann::REROUTE_VIRTUAL_INTERFACES, "-x")]).unwrap_err();
        assert!(
            errors[0].to_string().starts_with("annotation istio.io/reroute-virtual-interfaces: "),
            "{errors:?}"
        );

        let bad = map(&[
            (ann::INCLUDE_INBOUND_PORTS, "*,80"),
            (ann::EXCLUDE_OUTBOUND_IP_RANGES, "10.0.0.1"),
            (ann::INTERCEPTION_MODE, "redirect"),
            (ann::EXCLUDE_OUTBOUND_PORTS, "53"),
        ]);
        let errors = TrafficAnnotations::from_annotations(&bad).unwrap_err();
        let names: Vec<&str> = errors.iter().map(|e| e.annotation.as_str()).collect();
        assert_eq!(
            names,
            vec![ann::EXCLUDE_OUTBOUND_IP_RANGES, ann::INCLUDE_INBOUND_PORTS, ann::INTERCEPTION_MODE]
        );
    }

    #[test]
    fn readiness_annotations() {
        let pod = map(&[
            (ann::READINESS_INITIAL_DELAY_SECONDS, "0"),
            (ann::READINESS_PERIOD_SECONDS, "5"),
            (ann::READINESS_APPLICATION_PORTS, "8080,9090"),
        ]);
        let r = ReadinessAnnotations::from_annotations(&pod).unwrap();
        assert_eq!(r.initial_delay_seconds, Some(0));
        assert_eq!(r.period_seconds, Some(5));
        assert_eq!(r.failure_threshold, None);
        assert_eq!(r.application_ports, Some(vec![8080, 9090]));
        let bad = map(&[(ann::READINESS_FAILURE_THRESHOLD, "0"), (ann::READINESS_PERIOD_SECONDS, "x")]);
        assert_eq!(ReadinessAnnotations::from_annotations(&bad).unwrap_err().len(), 2);
    }

    #[test]
    fn whole_pod_validation() {
        let pod = map(&[
            (ann::PROXY_CPU, "100m"),
            (ann::PROXY_MEMORY, "lots"),
            (ann::STATUS_PORT, "0"),
            (ann::NATIVE_SIDECAR, "maybe"),
            (ann::EXCLUDE_INBOUND_PORTS, "80,abc"),
            (ann::PROXY_CONFIG, "concurrency: -1"),
            (ann::PROMETHEUS_SCRAPE, "true"),
            ("sidecar.istio.io/proxyCpu", "100m"),
        ]);
        let errors = validate_pod_annotations(&pod);
        let names: Vec<&str> = errors.iter().map(|e| e.annotation.as_str()).collect();
        assert_eq!(
            names,
            vec![ann::PROXY_CONFIG, ann::NATIVE_SIDECAR, ann::PROXY_MEMORY, ann::EXCLUDE_INBOUND_PORTS]
        );
        assert_eq!(unknown_istio_annotations(&pod), vec!["sidecar.istio.io/proxyCpu"]);
        assert!(validate_pod_annotations(&BTreeMap::new()).is_empty());
    }

    proptest::proptest! {
        #[test]
        fn no_parser_panics(value in "\\PC{0,40}|[0-9,*. :/a-fA-FxKMGiemun+-]{0,40}") {
            let pod: BTreeMap<String, String> = ann::ALL.iter().map(|n| (n.to_string(), value.clone())).collect();
            let _ = validate_pod_annotations(&pod);
            let _ = parse_status_port(&value);
            if let Ok(q) = Quantity::parse(&value) {
                let _ = (q.to_millis(), q.to_units(), q.as_f64(), q.is_negative());
            }
            if let Ok(status) = SidecarStatus::parse(&value) {
                proptest::prop_assert_eq!(SidecarStatus::parse(&status.to_json()), Ok(status));
            }
            if let Ok(PortSelection::Ports(ports)) = parse_port_selection("a", &value) {
                let mut unique = ports.clone();
                unique.sort_unstable();
                unique.dedup();
                proptest::prop_assert_eq!(unique.len(), ports.len());
            }
        }
    }

    #[test]
    fn names_are_istios() {
        assert_eq!(ann::ALL.len(), 35);
        let unique: BTreeSet<&str> = ann::ALL.iter().copied().collect();
        assert_eq!(unique.len(), ann::ALL.len());
        assert_eq!(ann::INCLUDE_OUTBOUND_IP_RANGES, "traffic.sidecar.istio.io/includeOutboundIPRanges");
        assert_eq!(names::label::ISTIO_INJECTION, "istio-injection");
        assert_eq!(names::label::SIDECAR_INJECT, ann::SIDECAR_INJECT);
    }
}
