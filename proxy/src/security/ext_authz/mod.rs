//! The external authorization client of CUSTOM AuthorizationPolicies: the request is asked
//! about at an extension provider of the mesh config, which allows it (possibly adding headers
//! for the app) or denies it (with the status, headers and body the client gets). Two
//! protocols, as Envoy's ext_authz filter speaks them:
//!
//! - `grpc` (Istio's `envoyExtAuthzGrpc`, what OPA-Envoy serves):
//!   `envoy.service.auth.v3.Authorization/Check` with the request's attributes (peers, method,
//!   path, host, headers; no body). Status `OK` allows, with `OkHttpResponse.headers` for the
//!   app; anything else denies, with `DeniedHttpResponse` (status, default 403; headers; body).
//! - `http` (`envoyExtAuthzHttp`, what oauth2-proxy serves): the request's method, `Host`,
//!   `Authorization`, `<path_prefix><path>` and the configured headers, without body
//!   (`Content-Length: 0`), sent to the provider. 200 allows, copying the provider's headers
//!   named by `headers_to_upstream_on_allow`; 5xx is a failure (as in Envoy); any other status
//!   denies with that status, the provider's body and its headers named by
//!   `headers_to_downstream_on_deny` (all but `Host` when none is named).
//!
//! A provider that cannot be reached, does not answer within `timeout` (600 s by default, as
//! Istio documents) or answers something malformed is a failure: the request is allowed when
//! the provider is `fail_open`, and otherwise denied with `status_on_error` (403 by default).
//! A name no provider has denies (403): a policy that cannot be checked never opens access.
//!
//! Header lists accept Istio's patterns: `abc` exact, `abc*` prefix, `*abc` suffix, matched
//! without regard to case.

mod grpc;
mod http_check;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use trellis_xds::config as pb;

use crate::config::ConfigError;

/// How long a check may take when the provider does not say: Istio's documented default for
/// both kinds of provider (Envoy's own default, 200 ms, is not what Istio configures).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// The status of a denial when the provider fails, unless the provider says otherwise.
pub const DEFAULT_STATUS_ON_ERROR: StatusCode = StatusCode::FORBIDDEN;
/// The largest body of a denial taken from an HTTP provider; a larger one is a failure.
pub const MAX_BODY_BYTES: usize = 64 << 10;
/// The largest gRPC answer: a denial's body and its headers.
const MAX_GRPC_ANSWER_BYTES: usize = MAX_BODY_BYTES + (64 << 10);
/// Headers taken from one answer; more is a failure.
const MAX_ANSWER_HEADERS: usize = 128;

/// The providers of the configuration, by name.
#[derive(Debug, Default)]
pub struct ExtAuthz {
    providers: HashMap<String, Provider>,
}

/// Who sent the request, and to where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckPeer {
    pub source: SocketAddr,
    pub destination: SocketAddr,
    /// The client's mesh identity (`spiffe://...`), when it came over mutual TLS.
    pub principal: Option<String>,
}

/// A provider's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExtDecision {
    /// Headers to set on the request to the app (`headers_to_upstream_on_allow` for HTTP,
    /// `OkHttpResponse.headers` for gRPC).
    Allow { headers: Vec<(HeaderName, HeaderValue)> },
    /// What the client gets: the provider's status (HTTP: its status; gRPC: the
    /// `DeniedHttpResponse` status or 403), headers (HTTP: `headers_to_downstream_on_deny`;
    /// gRPC: the `DeniedHttpResponse` headers) and body; `reason` is for logs.
    Deny { status: StatusCode, headers: Vec<(HeaderName, HeaderValue)>, body: Bytes, reason: String },
}

impl ExtDecision {
    pub fn is_allow(&self) -> bool {
        matches!(self, ExtDecision::Allow { .. })
    }
}

#[derive(Debug)]
struct Provider {
    name: String,
    /// `host:port`, each checked to be an authority with a port.
    addresses: Vec<String>,
    /// The address the next check starts at (round robin).
    next: AtomicUsize,
    timeout: Duration,
    fail_open: bool,
    status_on_error: StatusCode,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Grpc(grpc::GrpcCheck),
    Http(Box<http_check::HttpCheck>),
}

/// Why a check failed: the provider was not reached, or said nothing usable.
#[derive(Debug)]
enum Failure {
    /// Connecting failed: the next address is tried.
    Connect(String),
    Other(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Connect(m) | Failure::Other(m) => f.write_str(m),
        }
    }
}

fn err(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError { field: field.into(), message: message.into() }
}

impl ExtAuthz {
    /// Compiles `ProxyConfig.ext_authz`. Errors name the field `ext_authz[i].<field>`.
    pub fn compile(providers: &[pb::ExtAuthzProvider]) -> Result<ExtAuthz, ConfigError> {
        let mut compiled = HashMap::with_capacity(providers.len());
        for (i, p) in providers.iter().enumerate() {
            let field = format!("ext_authz[{i}]");
            if p.name.is_empty() {
                return Err(err(format!("{field}.name"), "required"));
            }
            if compiled.contains_key(&p.name) {
                return Err(err(format!("{field}.name"), format!("{:?} is named twice", p.name)));
            }
            if p.addresses.is_empty() {
                return Err(err(format!("{field}.addresses"), "at least one address is required"));
            }
            for (j, a) in p.addresses.iter().enumerate() {
                check_address(a).map_err(|m| err(format!("{field}.addresses[{j}]"), m))?;
            }
            let timeout = crate::config::duration(p.timeout.as_ref(), &format!("{field}.timeout"))?
                .unwrap_or(DEFAULT_TIMEOUT);
            let status_on_error = match p.status_on_error {
                0 => DEFAULT_STATUS_ON_ERROR,
                code => u16::try_from(code)
                    .ok()
                    .filter(|c| (200..=599).contains(c))
                    .and_then(|c| StatusCode::from_u16(c).ok())
                    .ok_or_else(|| {
                        err(
                            format!("{field}.status_on_error"),
                            format!("{code} is not an HTTP status (200-599)"),
                        )
                    })?,
            };
            let kind = match &p.kind {
                Some(pb::ext_authz_provider::Kind::Grpc(_)) => {
                    Kind::Grpc(grpc::GrpcCheck::compile(p, timeout, &field)?)
                }
                Some(pb::ext_authz_provider::Kind::Http(h)) => Kind::Http(Box::new(
                    http_check::HttpCheck::compile(h, timeout, &format!("{field}.http"))?,
                )),
                None => {
                    return Err(err(
                        format!("{field}.kind"),
                        "the provider's kind is missing or unknown: one of `grpc` or `http` is required",
                    ));
                }
            };
            compiled.insert(
                p.name.clone(),
                Provider {
                    name: p.name.clone(),
                    addresses: p.addresses.clone(),
                    next: AtomicUsize::new(0),
                    timeout,
                    fail_open: p.fail_open,
                    status_on_error,
                    kind,
                },
            );
        }
        Ok(ExtAuthz { providers: compiled })
    }

    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }

    /// Whether a provider of this name is configured.
    pub fn contains(&self, name: &str) -> bool {
        self.providers.contains_key(name)
    }

    /// Asks provider `name` about the request (headers, method, path with query, host; no
    /// body) from `peer`. Never fails: a failure is decided by the provider's `fail_open`, and
    /// an unknown provider denies.
    pub async fn check(&self, name: &str, request: &http::request::Parts, peer: &CheckPeer) -> ExtDecision {
        let Some(provider) = self.providers.get(name) else {
            return ExtDecision::Deny {
                status: StatusCode::FORBIDDEN,
                headers: Vec::new(),
                body: Bytes::new(),
                reason: format!("ext_authz provider {name:?} is not configured"),
            };
        };
        match tokio::time::timeout(provider.timeout, provider.ask(request, peer)).await {
            Ok(Ok(decision)) => decision,
            Ok(Err(failure)) => provider.failed(&failure.to_string()),
            Err(_) => provider.failed(&format!("no answer within {:?}", provider.timeout)),
        }
    }
}

impl Provider {
    /// Tries the addresses in turn, from the next one round robin, until one is reached.
    async fn ask(&self, request: &http::request::Parts, peer: &CheckPeer) -> Result<ExtDecision, Failure> {
        let n = self.addresses.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last = Failure::Other("no address".to_owned());
        for k in 0..n {
            let i = start.wrapping_add(k) % n;
            let result = match &self.kind {
                Kind::Grpc(g) => g.ask(i, &self.name, self.timeout, request, peer).await,
                Kind::Http(h) => h.ask(&self.addresses[i], &self.name, request).await,
            };
            match result {
                Err(Failure::Connect(m)) => {
                    tracing::debug!(provider = %self.name, address = %self.addresses[i], "ext_authz: {m}");
                    last = Failure::Connect(format!("{}: {m}", self.addresses[i]));
                }
                other => return other,
            }
        }
        Err(last)
    }

    fn failed(&self, failure: &str) -> ExtDecision {
        tracing::debug!(provider = %self.name, fail_open = self.fail_open, "ext_authz check failed: {failure}");
        if self.fail_open {
            return ExtDecision::Allow { headers: Vec::new() };
        }
        ExtDecision::Deny {
            status: self.status_on_error,
            headers: Vec::new(),
            body: Bytes::new(),
            reason: format!("ext_authz provider {:?} failed: {failure}", self.name),
        }
    }
}

/// `host:port` with a port: the form the control plane resolves a provider's service to.
fn check_address(address: &str) -> Result<(), String> {
    let authority: http::uri::Authority =
        address.parse().map_err(|e| format!("{address:?} is not host:port: {e}"))?;
    if authority.as_str().contains('@') {
        return Err(format!("{address:?} is not host:port"));
    }
    match authority.port_u16() {
        Some(p) if p != 0 => Ok(()),
        _ => Err(format!("{address:?} has no port")),
    }
}

/// An Istio header pattern: exact, `prefix*` or `*suffix`, lower-cased.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
}

impl Pattern {
    fn compile(pattern: &str) -> Result<Pattern, String> {
        let lower = pattern.to_ascii_lowercase();
        let (pattern, stem) = if let Some(stem) = lower.strip_suffix('*') {
            (Pattern::Prefix(stem.to_owned()), stem)
        } else if let Some(stem) = lower.strip_prefix('*') {
            (Pattern::Suffix(stem.to_owned()), stem)
        } else {
            (Pattern::Exact(lower.clone()), lower.as_str())
        };
        // The stem of a pattern is (part of) a header name; an empty one would be Istio's
        // presence match, which these lists do not take.
        if stem.is_empty() || HeaderName::from_bytes(stem.as_bytes()).is_err() {
            return Err(format!("{lower:?} is not a header name, `name*` or `*name`"));
        }
        Ok(pattern)
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            Pattern::Exact(e) => name == e,
            Pattern::Prefix(p) => name.starts_with(p.as_str()),
            Pattern::Suffix(s) => name.ends_with(s.as_str()),
        }
    }
}

fn compile_patterns(list: &[String], field: &str) -> Result<Vec<Pattern>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(j, p)| Pattern::compile(p).map_err(|m| err(format!("{field}[{j}]"), m)))
        .collect()
}

fn any_matches(patterns: &[Pattern], name: &HeaderName) -> bool {
    patterns.iter().any(|p| p.matches(name.as_str()))
}

/// Headers an answer never sets on a request or a response: they frame the message or the
/// connection, and the proxy writes them itself. `host` is added by the callers that exclude
/// it.
fn is_framing(name: &HeaderName) -> bool {
    use http::header::*;
    name == CONNECTION
        || name == TRANSFER_ENCODING
        || name == CONTENT_LENGTH
        || name == TE
        || name == TRAILER
        || name == UPGRADE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// The request's authority: the URI's (HTTP/2, absolute form) or the `Host` header.
fn request_host(request: &http::request::Parts) -> Option<&str> {
    match request.uri.authority() {
        Some(a) => Some(a.as_str()),
        None => request.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()),
    }
}

/// The request's target as it appears on the request line: path and query.
fn request_path(request: &http::request::Parts) -> &str {
    request.uri.path_and_query().map_or("/", |p| p.as_str())
}
