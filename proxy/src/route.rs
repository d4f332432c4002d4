//! Virtual hosts and routes as the data path uses them: compiled matchers, and the action a
//! matching request gets. Matching is pure and allocation-free.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use trellis_xds::config as pb;

use crate::cluster::Cluster;
use crate::config::{ConfigError, duration};

pub struct VirtualHost {
    pub name: String,
    pub routes: Vec<CompiledRoute>,
}

impl VirtualHost {
    /// The first route matching the request.
    pub fn select(&self, request: &RequestView<'_>) -> Option<&CompiledRoute> {
        self.routes.iter().find(|r| r.matches.is_empty() || r.matches.iter().any(|m| m.matches(request)))
    }

    /// Where TCP to this port goes when no TCP cluster is named: the heaviest cluster of the
    /// catch-all route, else of the first forwarding route.
    pub fn first_cluster(&self) -> Option<Arc<Cluster>> {
        let forward = |r: &CompiledRoute| match &r.action {
            Action::Forward(targets) => targets.iter().max_by_key(|(_, w)| *w).map(|(c, _)| c.clone()),
            _ => None,
        };
        // The catch-all route (no matches) says where the service's traffic goes by default;
        // a route for one header or path does not.
        self.routes
            .iter()
            .filter(|r| r.matches.is_empty())
            .find_map(forward)
            .or_else(|| self.routes.iter().find_map(forward))
    }
}

impl std::fmt::Debug for VirtualHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtualHost").field("name", &self.name).field("routes", &self.routes.len()).finish()
    }
}

/// The path with its `.` and `..` segments resolved (RFC 3986), as Istio's default path
/// normalization does, and runs of slashes merged, so that `/public/../admin` or `//admin`
/// cannot slip past a route or a policy on `/admin`. A dot may be percent-encoded (`%2e`):
/// `/public/%2e%2e/admin` is the same path to the app.
/// `None` when there is nothing to resolve.
pub fn normalize_path(path: &str) -> Option<String> {
    // Most paths have neither a dot, an escape nor an empty segment: one scan settles them.
    let doubled = path.as_bytes().windows(2).any(|w| w == b"//");
    if !doubled
        && (!path.bytes().any(|b| b == b'.' || b == b'%') || !path.split('/').any(|s| dots(s).is_some()))
    {
        return None;
    }
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut kept: Vec<&str> = Vec::new();
    for (i, segment) in segments.iter().enumerate() {
        match dots(segment) {
            Some(1) => {}
            Some(_) => {
                kept.pop();
            }
            // Slashes merged (Istio's MERGE_SLASHES, which its hardening guide recommends):
            // `//admin` is `/admin` to most apps, so it must be to the policies too. A
            // trailing slash stays.
            None if segment.is_empty() && i != last => {}
            None => kept.push(segment),
        }
    }
    // A path ending in a dot segment names a directory.
    let trailing = segments.last().is_some_and(|s| dots(s).is_some());
    Some(format!("/{}{}", kept.join("/"), if trailing && !kept.is_empty() { "/" } else { "" }))
}

/// 1 for a `.` segment, 2 for `..`, each dot written as itself or as `%2e` / `%2E`.
fn dots(segment: &str) -> Option<u8> {
    let mut rest = segment.as_bytes();
    let mut count = 0u8;
    while !rest.is_empty() && count < 3 {
        rest = match rest {
            [b'.', tail @ ..] => tail,
            [b'%', b'2', e, tail @ ..] if *e | 0x20 == b'e' => tail,
            _ => return None,
        };
        count += 1;
    }
    (rest.is_empty() && (1..=2).contains(&count)).then_some(count)
}

/// What matching looks at.
pub struct RequestView<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub port: u16,
}

pub struct CompiledRoute {
    pub name: String,
    pub matches: Vec<Matcher>,
    pub action: Action,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub rewrite_uri: Option<String>,
    pub rewrite_authority: Option<String>,
    pub timeout: Option<Duration>,
    pub retries: Option<Retry>,
    /// Fault injection, when the route has it.
    pub fault: Option<Box<crate::fault::Fault>>,
    /// Mirrors, when the route has them.
    pub mirrors: Option<Box<crate::mirror::Mirrors>>,
}

pub enum Action {
    /// Clusters with their weights.
    Forward(Vec<(Arc<Cluster>, u32)>),
    Redirect {
        uri: String,
        authority: String,
        scheme: String,
        code: u16,
    },
    Direct {
        status: StatusCode,
        body: Bytes,
    },
}

impl Action {
    /// A weighted pick among the forward targets (`roll` uniform in 0..total weight).
    pub fn pick_cluster(targets: &[(Arc<Cluster>, u32)], roll: u64) -> Option<&Arc<Cluster>> {
        let mut left = roll;
        for (cluster, weight) in targets {
            if left < u64::from(*weight) {
                return Some(cluster);
            }
            left -= u64::from(*weight);
        }
        targets.iter().rev().find(|(_, w)| *w > 0).map(|(c, _)| c)
    }

    pub fn total_weight(targets: &[(Arc<Cluster>, u32)]) -> u64 {
        targets.iter().map(|(_, w)| u64::from(*w)).sum()
    }
}

/// All the conditions set must hold.
pub struct Matcher {
    pub path: Option<StringMatcher>,
    pub method: Option<StringMatcher>,
    pub headers: Vec<(HeaderName, Option<StringMatcher>)>,
    pub without_headers: Vec<(HeaderName, Option<StringMatcher>)>,
    pub query: Vec<(String, Option<StringMatcher>)>,
    pub port: Option<u16>,
}

impl Matcher {
    pub fn matches(&self, r: &RequestView<'_>) -> bool {
        let header_ok = |(name, value): &(HeaderName, Option<StringMatcher>)| {
            r.headers.get_all(name).iter().any(|v| match (value, v.to_str()) {
                (None, _) => true,
                (Some(m), Ok(text)) => m.matches(text),
                (Some(_), Err(_)) => false,
            })
        };
        self.port.is_none_or(|p| p == r.port)
            && self.path.as_ref().is_none_or(|m| m.matches(r.path))
            && self.method.as_ref().is_none_or(|m| m.matches(r.method))
            && self.headers.iter().all(header_ok)
            && !self.without_headers.iter().any(header_ok)
            && self.query.iter().all(|(name, value)| {
                query_values(r.query, name).any(|v| value.as_ref().is_none_or(|m| m.matches(v)))
            })
    }
}

/// The values of `name` in a query string (as sent: not percent-decoded).
fn query_values<'a>(query: Option<&'a str>, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    query.unwrap_or_default().split('&').filter_map(move |pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

pub enum StringMatcher {
    Exact(String),
    Prefix(String),
    Regex(regex::Regex),
}

impl StringMatcher {
    pub fn compile(m: &pb::StringMatch, field: &str) -> Result<StringMatcher, ConfigError> {
        let bad = |message: String| ConfigError { field: field.to_owned(), message };
        match &m.kind {
            Some(pb::string_match::Kind::Exact(s)) => Ok(StringMatcher::Exact(s.clone())),
            Some(pb::string_match::Kind::Prefix(s)) => Ok(StringMatcher::Prefix(s.clone())),
            // Anchored: Istio's regex matches the whole value.
            Some(pb::string_match::Kind::Regex(r)) => regex::RegexBuilder::new(&format!("^(?:{r})$"))
                .size_limit(1 << 20)
                .build()
                .map(StringMatcher::Regex)
                .map_err(|e| bad(format!("invalid regex {r:?}: {e}"))),
            None => Err(bad("one of exact, prefix, regex is required".to_owned())),
        }
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatcher::Exact(s) => value == s,
            StringMatcher::Prefix(p) => value.starts_with(p.as_str()),
            StringMatcher::Regex(r) => r.is_match(value),
        }
    }
}

/// Header edits: set (replace), add (append), remove.
#[derive(Default)]
pub struct HeaderOps {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl HeaderOps {
    pub fn compile(ops: Option<&pb::HeaderOperations>, field: &str) -> Result<HeaderOps, ConfigError> {
        let Some(ops) = ops else { return Ok(HeaderOps::default()) };
        let name = |n: &str, f: &str| {
            HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()).map_err(|_| ConfigError {
                field: f.to_owned(),
                message: format!("{n:?} is not a header name"),
            })
        };
        let pairs = |map: &std::collections::BTreeMap<String, String>, f: &str| {
            map.iter()
                .map(|(k, v)| {
                    let value = HeaderValue::from_str(v).map_err(|_| ConfigError {
                        field: format!("{f}.{k}"),
                        message: format!("{v:?} is not a header value"),
                    })?;
                    Ok((name(k, &format!("{f}.{k}"))?, value))
                })
                .collect::<Result<Vec<_>, ConfigError>>()
        };
        Ok(HeaderOps {
            set: pairs(&ops.set, &format!("{field}.set"))?,
            add: pairs(&ops.add, &format!("{field}.add"))?,
            remove: ops
                .remove
                .iter()
                .enumerate()
                .map(|(i, n)| name(n, &format!("{field}.remove[{i}]")))
                .collect::<Result<_, _>>()?,
        })
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// When a retry is worth it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetryOn {
    pub five_xx: bool,
    pub gateway_error: bool,
    pub reset: bool,
    pub connect_failure: bool,
    pub refused_stream: bool,
    pub retriable_4xx: bool,
    pub retriable_status_codes: bool,
    /// gRPC status codes (from `grpc-status`) that are retried.
    pub grpc: Vec<u32>,
}

pub struct Retry {
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub on: RetryOn,
    pub status_codes: Vec<u16>,
    pub base_interval: Duration,
}

impl Retry {
    pub fn compile(p: &pb::RetryPolicy, field: &str) -> Result<Retry, ConfigError> {
        let mut on = RetryOn::default();
        let mut status_codes = Vec::with_capacity(p.retriable_status_codes.len());
        for (i, &code) in p.retriable_status_codes.iter().enumerate() {
            match u16::try_from(code) {
                Ok(code @ 100..=599) => status_codes.push(code),
                _ => {
                    return Err(ConfigError {
                        field: format!("{field}.retriable_status_codes[{i}]"),
                        message: format!("{code} is not an HTTP status"),
                    });
                }
            }
        }
        let conditions: Vec<&str> = if p.retry_on.is_empty() {
            // Istio's default policy, whose retriable status code is 503.
            if status_codes.is_empty() {
                status_codes.push(503);
            }
            vec!["connect-failure", "refused-stream", "unavailable", "cancelled", "retriable-status-codes"]
        } else {
            p.retry_on.iter().flat_map(|c| c.split(',')).map(str::trim).filter(|c| !c.is_empty()).collect()
        };
        for c in conditions {
            match c {
                "5xx" => on.five_xx = true,
                "gateway-error" => on.gateway_error = true,
                "reset" => on.reset = true,
                "connect-failure" => on.connect_failure = true,
                "refused-stream" => on.refused_stream = true,
                "retriable-4xx" => on.retriable_4xx = true,
                "retriable-status-codes" => on.retriable_status_codes = true,
                "cancelled" => on.grpc.push(1),
                "deadline-exceeded" => on.grpc.push(4),
                "resource-exhausted" => on.grpc.push(8),
                "internal" => on.grpc.push(13),
                "unavailable" => on.grpc.push(14),
                // Istio accepts bare status codes among the conditions.
                other => match other.parse::<u16>() {
                    Ok(code) if (100..600).contains(&code) => {
                        on.retriable_status_codes = true;
                        status_codes.push(code);
                    }
                    _ => {
                        return Err(ConfigError {
                            field: format!("{field}.retry_on"),
                            message: format!("unknown condition {other:?}"),
                        });
                    }
                },
            }
        }
        Ok(Retry {
            attempts: p.attempts.min(100),
            per_try_timeout: duration(p.per_try_timeout.as_ref(), &format!("{field}.per_try_timeout"))?,
            on,
            status_codes,
            base_interval: duration(p.base_interval.as_ref(), &format!("{field}.base_interval"))?
                .unwrap_or(Duration::from_millis(25)),
        })
    }

    /// Whether a response with this status (and gRPC status) is retried.
    pub fn retries_response(&self, status: StatusCode, grpc_status: Option<u32>) -> bool {
        let code = status.as_u16();
        (self.on.five_xx && status.is_server_error())
            || (self.on.gateway_error && matches!(code, 502..=504))
            || (self.on.retriable_4xx && code == 409)
            || (self.on.retriable_status_codes && self.status_codes.contains(&code))
            || grpc_status.is_some_and(|g| self.on.grpc.contains(&g))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_resolved() {
        assert_eq!(normalize_path("/a/b"), None);
        assert_eq!(normalize_path("/public/../admin").as_deref(), Some("/admin"));
        assert_eq!(normalize_path("/./admin").as_deref(), Some("/admin"));
        assert_eq!(normalize_path("/../../etc/passwd").as_deref(), Some("/etc/passwd"));
        assert_eq!(normalize_path("/a/b/..").as_deref(), Some("/a/"));
        assert_eq!(normalize_path("//admin").as_deref(), Some("/admin"));
        assert_eq!(normalize_path("/a//b///c/").as_deref(), Some("/a/b/c/"));
        assert_eq!(normalize_path("/a/b/").as_deref(), None, "a trailing slash is kept");
        assert_eq!(normalize_path("/..").as_deref(), Some("/"));
        assert_eq!(normalize_path("/a..b/c").as_deref(), None);
        assert_eq!(normalize_path("/.../c").as_deref(), None);
    }

    #[test]
    fn percent_encoded_dots_are_dots() {
        assert_eq!(normalize_path("/public/%2e%2e/admin").as_deref(), Some("/admin"));
        assert_eq!(normalize_path("/public/%2E./admin").as_deref(), Some("/admin"));
        assert_eq!(normalize_path("/public/.%2e/admin").as_deref(), Some("/admin"));
        assert_eq!(normalize_path("/%2e/admin").as_deref(), Some("/admin"));
        assert_eq!(normalize_path("/a/%2e%2e").as_deref(), Some("/"));
        // Not dot segments: left as they are.
        assert_eq!(normalize_path("/a%2eb/c"), None);
        assert_eq!(normalize_path("/%2e%2e%2e/c"), None);
        assert_eq!(normalize_path("/%2f../c"), None);
        assert_eq!(normalize_path("/%2"), None);
    }
}
