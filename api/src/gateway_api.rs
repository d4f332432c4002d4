//! The Kubernetes Gateway API (`gateway.networking.k8s.io/v1`): GatewayClass, Gateway,
//! HTTPRoute, GRPCRoute and ReferenceGrant (`v1beta1`), reduced to the fields Trellis reads.
//!
//! k8s-openapi has no Gateway API types and the project's own crates are generated and large;
//! these are written here with only what translation and status need. Unknown fields are
//! ignored on decoding (the API server has validated the objects against the CRDs' schemas);
//! [`not_enforced`] names the fields that are read but not enforced, for warnings.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const GROUP: &str = "gateway.networking.k8s.io";

/// What every Gateway API object carries that Trellis reads: where it is, its generation
/// (for `observedGeneration`), when it was created (route precedence breaks ties by age) and
/// its labels.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Meta {
    pub name: String,
    pub namespace: String,
    pub generation: i64,
    pub creation_timestamp: String,
    pub labels: BTreeMap<String, String>,
}

/// One object: metadata, spec, and its status as the API server last showed it (kept as
/// written, so a status writer can tell whether its own status is already there).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Object<S> {
    pub metadata: Meta,
    pub spec: S,
    pub status: Value,
}

pub type GatewayClass = Object<GatewayClassSpec>;
pub type Gateway = Object<GatewaySpec>;
pub type HttpRoute = Object<HttpRouteSpec>;
pub type GrpcRoute = Object<GrpcRouteSpec>;
pub type ReferenceGrant = Object<ReferenceGrantSpec>;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct GatewayClassSpec {
    pub controller_name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct GatewaySpec {
    pub gateway_class_name: String,
    pub listeners: Vec<Listener>,
    pub addresses: Vec<Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Listener {
    pub name: String,
    pub hostname: Option<String>,
    pub port: u32,
    /// HTTP, HTTPS, TLS, TCP, UDP (or a domain-prefixed custom one).
    pub protocol: String,
    pub tls: Option<ListenerTls>,
    pub allowed_routes: Option<AllowedRoutes>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ListenerTls {
    /// `Terminate` (the default) or `Passthrough`.
    pub mode: Option<String>,
    pub certificate_refs: Vec<ObjectRef>,
    pub options: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct AllowedRoutes {
    pub namespaces: Option<RouteNamespaces>,
    pub kinds: Vec<RouteGroupKind>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct RouteNamespaces {
    /// `Same` (the default), `All` or `Selector`.
    pub from: Option<String>,
    pub selector: Option<Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct RouteGroupKind {
    pub group: Option<String>,
    pub kind: String,
}

/// A reference to another object: a certificate Secret, a backend Service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ObjectRef {
    /// Empty: the core group.
    pub group: Option<String>,
    pub kind: Option<String>,
    pub name: String,
    pub namespace: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpRouteSpec {
    pub parent_refs: Vec<ParentRef>,
    pub hostnames: Vec<String>,
    pub rules: Vec<HttpRouteRule>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ParentRef {
    /// Default `gateway.networking.k8s.io`.
    pub group: Option<String>,
    /// Default `Gateway`.
    pub kind: Option<String>,
    pub namespace: Option<String>,
    pub name: String,
    pub section_name: Option<String>,
    pub port: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpRouteRule {
    pub name: Option<String>,
    pub matches: Vec<HttpRouteMatch>,
    pub filters: Vec<HttpRouteFilter>,
    pub backend_refs: Vec<HttpBackendRef>,
    pub timeouts: Option<HttpRouteTimeouts>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpRouteMatch {
    pub path: Option<HttpPathMatch>,
    pub headers: Vec<HttpValueMatch>,
    pub query_params: Vec<HttpValueMatch>,
    pub method: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpPathMatch {
    /// `Exact`, `PathPrefix` (the default) or `RegularExpression`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Default `/`.
    pub value: Option<String>,
}

/// A header or query parameter match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpValueMatch {
    /// `Exact` (the default) or `RegularExpression`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub name: String,
    pub value: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpRouteFilter {
    #[serde(rename = "type")]
    pub kind: String,
    pub request_header_modifier: Option<HeaderModifier>,
    pub response_header_modifier: Option<HeaderModifier>,
    pub request_redirect: Option<RequestRedirect>,
    pub url_rewrite: Option<UrlRewrite>,
    pub request_mirror: Option<Value>,
    pub extension_ref: Option<Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct HeaderModifier {
    pub set: Vec<Header>,
    pub add: Vec<Header>,
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Header {
    pub name: String,
    pub value: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct RequestRedirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
    pub port: Option<u32>,
    pub status_code: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct UrlRewrite {
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PathModifier {
    /// `ReplaceFullPath` or `ReplacePrefixMatch`.
    #[serde(rename = "type")]
    pub kind: String,
    pub replace_full_path: Option<String>,
    pub replace_prefix_match: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpBackendRef {
    pub group: Option<String>,
    pub kind: Option<String>,
    pub name: String,
    pub namespace: Option<String>,
    pub port: Option<u32>,
    /// Default 1.
    pub weight: Option<u32>,
    pub filters: Vec<HttpRouteFilter>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpRouteTimeouts {
    /// A Gateway API duration (`10s`, `1m`, `500ms`, ...).
    pub request: Option<String>,
    pub backend_request: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ReferenceGrantSpec {
    pub from: Vec<GrantFrom>,
    pub to: Vec<GrantTo>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct GrantFrom {
    pub group: String,
    pub kind: String,
    pub namespace: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct GrantTo {
    pub group: String,
    pub kind: String,
    pub name: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct GrpcRouteSpec {
    pub parent_refs: Vec<ParentRef>,
    pub hostnames: Vec<String>,
    pub rules: Vec<GrpcRouteRule>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct GrpcRouteRule {
    pub name: Option<String>,
    pub matches: Vec<GrpcRouteMatch>,
    /// GRPCRoute allows RequestHeaderModifier, ResponseHeaderModifier, RequestMirror and
    /// ExtensionRef: a subset of HTTPRoute's filters, with the same fields.
    pub filters: Vec<HttpRouteFilter>,
    pub backend_refs: Vec<HttpBackendRef>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct GrpcRouteMatch {
    pub method: Option<GrpcMethodMatch>,
    pub headers: Vec<HttpValueMatch>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct GrpcMethodMatch {
    /// `Exact` (the default) or `RegularExpression`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub service: Option<String>,
    pub method: Option<String>,
}

/// The filter types a GRPCRoute may carry.
const GRPC_FILTERS: [&str; 4] =
    ["RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror", "ExtensionRef"];

impl GrpcRouteSpec {
    /// The HTTPRoute this GRPCRoute means, as the Gateway API defines it: a gRPC call is an
    /// HTTP/2 POST to `/<service>/<method>`, so a method match is a path match. Exact service
    /// and method: the exact path; only a service: the prefix `/<service>/`; only a method:
    /// the expression `/[^/]+/<method>`; RegularExpression: the expression
    /// `/(service)/(method)`, a missing part matching any one path element.
    ///
    /// The first invalid field says why it cannot be used, as `(field, message)`.
    pub fn to_http_route(&self) -> Result<HttpRouteSpec, (String, String)> {
        let mut rules = Vec::with_capacity(self.rules.len());
        for (i, rule) in self.rules.iter().enumerate() {
            let at = format!("spec.rules[{i}]");
            for (j, filter) in rule.filters.iter().enumerate() {
                if !GRPC_FILTERS.contains(&filter.kind.as_str()) {
                    return Err((
                        format!("{at}.filters[{j}].type"),
                        format!(
                            "{:?} is not a GRPCRoute filter (one of {})",
                            filter.kind,
                            GRPC_FILTERS.join(", ")
                        ),
                    ));
                }
            }
            let mut matches = Vec::with_capacity(rule.matches.len());
            for (j, m) in rule.matches.iter().enumerate() {
                let at = format!("{at}.matches[{j}]");
                for (k, h) in m.headers.iter().enumerate() {
                    check_value_match(&format!("{at}.headers[{k}]"), h)?;
                }
                let path = match &m.method {
                    None => None,
                    Some(method) => Some(method_path(&format!("{at}.method"), method)?),
                };
                matches.push(HttpRouteMatch { path, headers: m.headers.clone(), ..Default::default() });
            }
            rules.push(HttpRouteRule {
                name: rule.name.clone(),
                matches,
                filters: rule.filters.clone(),
                backend_refs: rule.backend_refs.clone(),
                timeouts: None,
            });
        }
        Ok(HttpRouteSpec { parent_refs: self.parent_refs.clone(), hostnames: self.hostnames.clone(), rules })
    }
}

fn check_value_match(at: &str, h: &HttpValueMatch) -> Result<(), (String, String)> {
    match h.kind.as_deref().unwrap_or("Exact") {
        "Exact" => Ok(()),
        "RegularExpression" => {
            crate::primitives::check_re2_regex(&h.value).map(|_| ()).map_err(|e| (format!("{at}.value"), e))
        }
        other => Err((format!("{at}.type"), format!("{other:?} is not Exact or RegularExpression"))),
    }
}

/// The path match of one gRPC method match.
fn method_path(at: &str, m: &GrpcMethodMatch) -> Result<HttpPathMatch, (String, String)> {
    let service = m.service.as_deref().filter(|s| !s.is_empty());
    let method = m.method.as_deref().filter(|s| !s.is_empty());
    let neither = || (at.to_owned(), "a method match needs a service, a method or both".to_owned());
    let path = |kind: &str, value: String| HttpPathMatch { kind: Some(kind.to_owned()), value: Some(value) };
    match m.kind.as_deref().unwrap_or("Exact") {
        "Exact" => {
            if let Some(s) = service
                && !is_grpc_service(s)
            {
                return Err((
                    format!("{at}.service"),
                    format!("{s:?} is not a gRPC service name (e.g. pkg.Greeter)"),
                ));
            }
            if let Some(name) = method
                && !is_grpc_identifier(name)
            {
                return Err((
                    format!("{at}.method"),
                    format!("{name:?} is not a gRPC method name (e.g. SayHello)"),
                ));
            }
            // A method name holds only letters, digits and `_`: nothing to escape in the expression.
            match (service, method) {
                (Some(s), Some(name)) => Ok(path("Exact", format!("/{s}/{name}"))),
                (Some(s), None) => Ok(path("PathPrefix", format!("/{s}/"))),
                (None, Some(name)) => Ok(path("RegularExpression", format!("/[^/]+/{name}"))),
                (None, None) => Err(neither()),
            }
        }
        "RegularExpression" => {
            if service.is_none() && method.is_none() {
                return Err(neither());
            }
            let part = |field: &str, value: Option<&str>| -> Result<String, (String, String)> {
                let Some(value) = value else { return Ok("[^/]+".to_owned()) };
                crate::primitives::check_re2_regex(value).map_err(|e| (format!("{at}.{field}"), e))?;
                Ok(format!("(?:{value})"))
            };
            let service = part("service", service)?;
            let method = part("method", method)?;
            Ok(path("RegularExpression", format!("/{service}/{method}")))
        }
        other => Err((format!("{at}.type"), format!("{other:?} is not Exact or RegularExpression"))),
    }
}

/// `[.]ident(.ident)*`, as the GRPCRoute schema allows for an exact service.
fn is_grpc_service(s: &str) -> bool {
    let s = s.strip_prefix('.').unwrap_or(s);
    s.len() <= 1024 && s.split('.').all(is_grpc_identifier)
}

fn is_grpc_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 1024
}

/// Decodes one object, or says which field does not fit (with its path).
pub fn decode<S: serde::de::DeserializeOwned + Default>(value: &Value) -> Result<Object<S>, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        format!("{path}: {}", e.inner())
    })
}

/// The fields of an HTTPRoute that Trellis reads but does not enforce, as `(field, why)`.
pub fn not_enforced(route: &HttpRouteSpec) -> Vec<(String, &'static str)> {
    let mut out = Vec::new();
    for (i, rule) in route.rules.iter().enumerate() {
        for (j, filter) in rule.filters.iter().enumerate() {
            let redirect_prefix = filter.request_redirect.as_ref().and_then(|r| r.path.as_ref());
            if redirect_prefix.is_some_and(|p| p.kind == "ReplacePrefixMatch") {
                out.push((
                    format!("spec.rules[{i}].filters[{j}].requestRedirect.path"),
                    "ReplacePrefixMatch is not implemented for redirects by Trellis: the value replaces the whole path",
                ));
            }
            if matches!(filter.kind.as_str(), "RequestMirror" | "ExtensionRef" | "CORS") {
                out.push((
                    format!("spec.rules[{i}].filters[{j}]"),
                    "filter type not implemented by Trellis; ignored",
                ));
            }
        }
        for (j, backend) in rule.backend_refs.iter().enumerate() {
            if !backend.filters.is_empty() {
                out.push((
                    format!("spec.rules[{i}].backendRefs[{j}].filters"),
                    "per-backend filters are not implemented by Trellis; ignored",
                ));
            }
        }
        if rule.timeouts.as_ref().is_some_and(|t| t.backend_request.is_some()) {
            out.push((
                format!("spec.rules[{i}].timeouts.backendRequest"),
                "not enforced by Trellis (the request timeout applies); ignored",
            ));
        }
    }
    out
}

/// The fields of a GRPCRoute that Trellis reads but does not enforce: those of the HTTPRoute
/// it means (the rule and filter indices are the same).
pub fn grpc_not_enforced(route: &GrpcRouteSpec) -> Vec<(String, &'static str)> {
    route.to_http_route().map(|r| not_enforced(&r)).unwrap_or_default()
}

/// A Gateway API duration (`1h`, `10s`, `500ms`, combinations such as `1m30s`) in
/// milliseconds; the API allows at most 4 unit groups of up to 5 digits.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a Gateway API duration (e.g. 10s, 500ms, 1m30s)");
    if text.is_empty() || text.len() > 32 {
        return Err(bad());
    }
    let mut total: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 || digits > 5 {
            return Err(bad());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('s') {
            (1000, 1)
        } else {
            return Err(bad());
        };
        rest = &rest[len..];
        total = total.saturating_add(number.saturating_mul(unit));
    }
    Ok(total)
}

/// What `trellis validate` says of one Gateway API document (`text`, the `index`th of its
/// file): a field of the wrong type is an error, as trellisd would drop the object; fields and
/// kinds Trellis reads but does not enforce are warnings. Other documents: nothing.
pub fn check_document(index: usize, first_line: usize, text: &str) -> Vec<crate::check::Problem> {
    use crate::validate::Severity;
    let Ok(value) = serde_saphyr::from_str::<Value>(text) else { return Vec::new() };
    let api_version = value.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    if !api_version.starts_with(&format!("{GROUP}/")) {
        return Vec::new();
    }
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or_default();
    let meta = value.get("metadata");
    let text_of = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    let id = crate::resource::ResourceId {
        kind: kind.to_owned(),
        namespace: text_of(meta.and_then(|m| m.get("namespace"))),
        name: text_of(meta.and_then(|m| m.get("name"))).unwrap_or_default(),
    };
    let problem = |severity, field: String, message: String| crate::check::Problem {
        doc: index,
        item: None,
        line: Some(first_line as u64),
        column: None,
        resource: Some(id.clone()),
        severity,
        field,
        message,
    };
    let mut out = Vec::new();
    let mut warn =
        |field: String, message: &str| out.push(problem(Severity::Warning, field, message.to_owned()));
    let decoded = match kind {
        "GatewayClass" => decode::<GatewayClassSpec>(&value).map(|_| ()),
        "ReferenceGrant" => decode::<ReferenceGrantSpec>(&value).map(|_| ()),
        "Gateway" => decode::<GatewaySpec>(&value).map(|g| {
            if !g.spec.addresses.is_empty() {
                warn(
                    "spec.addresses".into(),
                    "not enforced by Trellis (the gateway proxy's Service gives the addresses); ignored",
                );
            }
            for (i, l) in g.spec.listeners.iter().enumerate() {
                if !matches!(l.protocol.as_str(), "HTTP" | "HTTPS") {
                    warn(
                        format!("spec.listeners[{i}].protocol"),
                        "only HTTP and HTTPS listeners are served by Trellis; this one is not",
                    );
                }
                if l.tls.as_ref().is_some_and(|t| t.mode.as_deref().is_some_and(|m| m != "Terminate")) {
                    warn(
                        format!("spec.listeners[{i}].tls.mode"),
                        "only Terminate is implemented by Trellis; the listener is not served",
                    );
                }
                if l.tls.as_ref().is_some_and(|t| t.certificate_refs.len() > 1) {
                    warn(
                        format!("spec.listeners[{i}].tls.certificateRefs"),
                        "only the first certificate is used by Trellis",
                    );
                }
                if l.tls.as_ref().is_some_and(|t| !t.options.is_empty()) {
                    warn(format!("spec.listeners[{i}].tls.options"), "not enforced by Trellis; ignored");
                }
                let selector = l
                    .allowed_routes
                    .as_ref()
                    .and_then(|a| a.namespaces.as_ref())
                    .and_then(|n| n.selector.as_ref());
                if selector.is_some_and(|s| s.get("matchExpressions").is_some()) {
                    warn(
                        format!("spec.listeners[{i}].allowedRoutes.namespaces.selector.matchExpressions"),
                        "not implemented by Trellis: the selector selects no namespace",
                    );
                }
            }
        }),
        "HTTPRoute" => decode::<HttpRouteSpec>(&value).map(|r| {
            for (field, why) in not_enforced(&r.spec) {
                warn(field, why);
            }
        }),
        "GRPCRoute" => decode::<GrpcRouteSpec>(&value).and_then(|r| {
            for (field, why) in grpc_not_enforced(&r.spec) {
                warn(field, why);
            }
            r.spec.to_http_route().map(|_| ()).map_err(|(field, message)| format!("{field}: {message}"))
        }),
        _ => {
            warn("kind".into(), "Trellis does not read this Gateway API kind: accepted but it has no effect");
            Ok(())
        }
    };
    if let Err(e) = decoded {
        let (field, message) =
            e.split_once(": ").map_or((String::new(), e.clone()), |(f, m)| (f.to_owned(), m.to_owned()));
        out.push(problem(Severity::Error, field, message));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn validate_accepts_gateway_api_documents_beside_istios() {
        let text = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: g}\n\
            spec: {gatewayClassName: trellis, listeners: [{name: a, port: 80, protocol: HTTP}]}\n---\n\
            apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\n\
            spec: {servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}]}\n";
        let checked = crate::check::check_text(text, crate::check::UnknownFields::Reject);
        assert_eq!(checked.errors(), 0, "{:?}", checked.problems);
        assert_eq!(checked.accepted.len(), 1, "the Istio Gateway");
    }

    #[test]
    fn validate_warns_for_what_is_not_enforced_and_refuses_what_does_not_decode() {
        let route = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  rules: [{filters: [{type: RequestMirror}], backendRefs: [{name: web, port: 80}]}]\n";
        let problems = check_document(1, 1, route);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "spec.rules[0].filters[0]");
        assert_eq!(problems[0].severity, crate::validate::Severity::Warning);
        let bad = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec: {listeners: [{name: a, port: eighty, protocol: HTTP}]}\n";
        let problems = check_document(1, 1, bad);
        assert_eq!(problems[0].severity, crate::validate::Severity::Error);
        assert!(problems[0].field.contains("listeners[0].port"), "{problems:?}");
        let tcp = "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TCPRoute\nmetadata: {name: t}\n";
        assert_eq!(check_document(1, 1, tcp)[0].field, "kind");
        assert!(check_document(1, 1, "apiVersion: v1\nkind: Service\n").is_empty());
        assert!(check_document(1, 1, ": not yaml [").is_empty());
    }

    #[test]
    fn decodes_what_it_reads_and_ignores_the_rest() {
        let route: HttpRoute = decode(&json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "r", "namespace": "shop", "generation": 3, "uid": "x"},
            "spec": {"parentRefs": [{"name": "gw", "sectionName": "http"}],
                "rules": [{"matches": [{"path": {"type": "Exact", "value": "/a"}}],
                    "backendRefs": [{"name": "web", "port": 80, "weight": 2}], "unknown": 1}]}
        }))
        .unwrap();
        assert_eq!(route.metadata.generation, 3);
        assert_eq!(route.spec.parent_refs[0].section_name.as_deref(), Some("http"));
        assert_eq!(route.spec.rules[0].backend_refs[0].weight, Some(2));
    }

    #[test]
    fn a_field_of_the_wrong_type_is_named() {
        let err = decode::<HttpRouteSpec>(&json!({"metadata": {"name": "r"},
            "spec": {"rules": [{"backendRefs": [{"name": "web", "port": "eighty"}]}]}}))
        .unwrap_err();
        assert!(err.contains("spec.rules[0].backendRefs[0].port"), "{err}");
        let err = decode::<GatewaySpec>(&json!("not an object")).unwrap_err();
        assert!(!err.is_empty());
    }

    fn grpc(matches: Value) -> Result<HttpRouteSpec, (String, String)> {
        let route: GrpcRoute = decode(&json!({"metadata": {"name": "g"},
            "spec": {"parentRefs": [{"name": "gw"}], "hostnames": ["api.example.com"],
                "rules": [{"matches": matches, "backendRefs": [{"name": "api", "port": 9000, "weight": 3}],
                    "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x", "value": "1"}]}}]}]}}))
        .unwrap();
        route.spec.to_http_route()
    }

    fn paths(spec: &HttpRouteSpec) -> Vec<(Option<String>, Option<String>)> {
        spec.rules[0]
            .matches
            .iter()
            .map(|m| m.path.clone().map_or((None, None), |p| (p.kind, p.value)))
            .collect()
    }

    #[test]
    fn a_grpc_method_match_is_a_path_match() {
        let spec = grpc(json!([
            {"method": {"service": "pkg.Greeter", "method": "SayHello"}},
            {"method": {"type": "Exact", "service": "pkg.Greeter"}},
            {"method": {"method": "SayHello"}},
            {"method": {"type": "RegularExpression", "service": "pkg\\..*", "method": "Say.*"}},
            {"method": {"type": "RegularExpression", "method": "Get.*"}},
            {"headers": [{"name": "tenant", "value": "a"}]},
        ]))
        .unwrap();
        let some = |k: &str, v: &str| (Some(k.to_owned()), Some(v.to_owned()));
        assert_eq!(
            paths(&spec),
            vec![
                some("Exact", "/pkg.Greeter/SayHello"),
                some("PathPrefix", "/pkg.Greeter/"),
                some("RegularExpression", "/[^/]+/SayHello"),
                some("RegularExpression", "/(?:pkg\\..*)/(?:Say.*)"),
                some("RegularExpression", "/[^/]+/(?:Get.*)"),
                (None, None),
            ]
        );
        assert_eq!(spec.rules[0].matches[5].headers[0].name, "tenant");
        assert_eq!(spec.rules[0].backend_refs[0].weight, Some(3));
        assert_eq!(spec.rules[0].filters[0].kind, "RequestHeaderModifier");
        assert_eq!(spec.hostnames, ["api.example.com"]);
        assert_eq!(spec.parent_refs[0].name, "gw");
    }

    #[test]
    fn bad_grpc_matches_are_refused_with_the_field_named() {
        let cases = [
            (json!([{"method": {}}]), "spec.rules[0].matches[0].method"),
            (
                json!([{"method": {"type": "RegularExpression", "service": "", "method": ""}}]),
                "spec.rules[0].matches[0].method",
            ),
            (
                json!([{"method": {"type": "RegularExpression", "service": "(unclosed"}}]),
                "spec.rules[0].matches[0].method.service",
            ),
            (
                json!([{"method": {"type": "RegularExpression", "method": "a{99999}"}}]),
                "spec.rules[0].matches[0].method.method",
            ),
            (json!([{"method": {"service": "pkg/Greeter"}}]), "spec.rules[0].matches[0].method.service"),
            (json!([{"method": {"service": "pkg..Greeter"}}]), "spec.rules[0].matches[0].method.service"),
            (json!([{"method": {"method": "Say Hello"}}]), "spec.rules[0].matches[0].method.method"),
            (
                json!([{"method": {"type": "Prefix", "method": "Say"}}]),
                "spec.rules[0].matches[0].method.type",
            ),
            (
                json!([{}, {"headers": [{"type": "RegularExpression", "name": "a", "value": "("}]}]),
                "spec.rules[0].matches[1].headers[0].value",
            ),
            (json!([{"method": {"service": "x".repeat(2000)}}]), "spec.rules[0].matches[0].method.service"),
        ];
        for (matches, field) in cases {
            let (got, message) = grpc(matches.clone()).unwrap_err();
            assert_eq!(got, field, "{matches}: {message}");
            assert!(!message.is_empty());
        }
        let redirect: GrpcRoute = decode(&json!({"metadata": {"name": "g"},
            "spec": {"rules": [{"filters": [{"type": "RequestRedirect"}]}]}}))
        .unwrap();
        assert_eq!(redirect.spec.to_http_route().unwrap_err().0, "spec.rules[0].filters[0].type");
    }

    #[test]
    fn validate_reads_grpc_routes() {
        let good = "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g}\nspec:\n  rules: [{matches: [{method: {service: pkg.Greeter}}], filters: [{type: RequestMirror}], backendRefs: [{name: api, port: 9000}]}]\n";
        let problems = check_document(1, 1, good);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "spec.rules[0].filters[0]");
        assert_eq!(problems[0].severity, crate::validate::Severity::Warning);
        let bad = "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g}\nspec:\n  rules: [{matches: [{method: {type: Exact}}]}]\n";
        let problems = check_document(1, 1, bad);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].severity, crate::validate::Severity::Error);
        assert_eq!(problems[0].field, "spec.rules[0].matches[0].method");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("10s"), Ok(10_000));
        assert_eq!(parse_duration_ms("1m30s"), Ok(90_000));
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
        for bad in ["", "10", "s", "1.5s", "123456s", "10x", "-1s", &"9".repeat(100)] {
            assert!(parse_duration_ms(bad).is_err(), "{bad}");
        }
    }
}
