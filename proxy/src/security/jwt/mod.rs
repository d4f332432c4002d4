//! Request authentication: the JWTs of Istio's RequestAuthentication, checked as Istio
//! configures Envoy's `jwt_authn` filter.
//!
//! Each provider (a `jwtRules` entry) reads tokens from its locations (headers with a prefix,
//! query parameters, cookies; by default `Authorization: Bearer` then `access_token`). Istio's
//! requirement is `OR(P1, .., Pn, AND(OR(P1, allow_missing), .., OR(Pn, allow_missing)))`, so
//! a request passes when it carries no token at all, or when some provider found tokens and
//! all of them are valid for it; any other token makes the request fail: 401 with
//! `WWW-Authenticate: Bearer realm="<request URL>", error="invalid_token"` and the reason as
//! the body, 403 when only the audience is wrong. CORS preflights are not checked.
//!
//! A token is checked as jwt_verify_lib does: its `iss` must be the provider's issuer, then
//! `nbf`/`exp` with 60 s of clock skew, then the audiences, then the signature, with a key of
//! the provider's JWKS chosen by `kid` and `alg`. Verified tokens are cached (`cache`).
//! Signatures are verified with ring, through a `jsonwebtoken` crypto provider (`keys`).

mod cache;
mod keys;
#[cfg(test)]
mod tests;
mod token;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use http::header::{AUTHORIZATION, COOKIE, HOST};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use serde_json::{Map, Value};
use trellis_xds::config as pb;

use crate::config::ConfigError;
use crate::security::authz::RequestAuth;

use cache::{TokenCache, Verified};
use keys::Key;
use token::Parsed;

/// A longer token is rejected as invalid without being decoded.
pub const MAX_TOKEN_BYTES: usize = 8 << 10;
/// Envoy's default `clock_skew_seconds`, which Istio does not change.
const CLOCK_SKEW_SECS: i64 = 60;
/// Envoy's limit on the path written into the `WWW-Authenticate` realm.
const MAX_REALM_PATH: usize = 256;
/// Claims that are always split on spaces for authorization.
const SPACE_DELIMITED: [&str; 2] = ["scope", "permission"];

/// The JWT providers of the workload's RequestAuthentications, compiled.
#[derive(Debug)]
pub struct JwtAuthn {
    providers: Vec<Provider>,
    /// Every provider's token locations, each once: a request is searched once per location.
    locations: Vec<Location>,
    cache: TokenCache,
    verifications: AtomicU64,
    cache_hits: AtomicU64,
}

#[derive(Debug)]
struct Provider {
    issuer: String,
    /// Sanitized as jwt_verify_lib does (`sanitize_audience`); empty: any audience.
    audiences: Vec<String>,
    keys: Vec<Key>,
    /// Indices into `JwtAuthn::locations`.
    locations: Vec<usize>,
    forward: bool,
    payload_header: Option<HeaderName>,
    /// The header and the claim's path (`a.b` is `b` inside `a`).
    claim_headers: Vec<(HeaderName, Vec<String>)>,
    space_delimited: Vec<String>,
}

#[derive(Debug, PartialEq, Eq)]
enum Location {
    /// `prefix` must start the value. `lenient`: a value without it is no token rather than an
    /// invalid one (the default `Authorization: Bearer`, which other schemes share).
    Header {
        name: HeaderName,
        prefix: String,
        lenient: bool,
    },
    Param(String),
    Cookie(String),
}

/// A request refused: the local reply to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtRejection {
    /// 401, or 403 when only the audience is not allowed.
    pub status: StatusCode,
    pub www_authenticate: Option<HeaderValue>,
    /// The reason, Envoy's wording (the response body).
    pub message: String,
}

impl fmt::Display for JwtRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.status.as_u16(), self.message)
    }
}

impl std::error::Error for JwtRejection {}

/// Why a provider did not accept a token.
#[derive(Clone, Copy, Debug)]
enum Failure {
    /// The token's issuer is not this provider's: an error only if no provider took it.
    UnknownIssuer,
    Invalid(&'static str),
    Audience,
}

const UNKNOWN_ISSUER: &str = "Jwt issuer is not configured";
const AUDIENCE_NOT_ALLOWED: &str = "Audiences in Jwt are not allowed";
const MISSING_PREFIX: &str = "Jwt header does not start with the configured prefix";
const BAD_ENCODING: &str = "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections";

/// A value found at a token location.
enum Found {
    Token(String),
    /// Present but not a token: a configured header without its prefix, undecodable bytes.
    Invalid(&'static str),
}

const B64URL: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// base64url, padded or not (as abseil's `WebSafeBase64Unescape` in Envoy).
fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    B64URL.decode(text).ok()
}

fn config_err(field: String, message: impl Into<String>) -> ConfigError {
    ConfigError { field, message: message.into() }
}

/// jwt_verify_lib's `sanitizeAudience`: `https://a/` and `a` are the same audience.
fn sanitize_audience(aud: &str) -> &str {
    let Some(rest) = aud.strip_prefix("https://").or_else(|| aud.strip_prefix("http://")) else {
        return aud;
    };
    rest.strip_suffix('/').unwrap_or(rest)
}

fn header_name(field: String, name: &str) -> Result<HeaderName, ConfigError> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| config_err(field, format!("{name:?} is not an HTTP header name")))
}

fn intern(locations: &mut Vec<Location>, location: Location) -> usize {
    match locations.iter().position(|l| *l == location) {
        Some(i) => i,
        None => {
            locations.push(location);
            locations.len() - 1
        }
    }
}

impl JwtAuthn {
    /// Compiles the providers; an error names the field (`jwt_providers[i].jwks`, ...).
    pub fn compile(providers: &[pb::JwtProvider]) -> Result<JwtAuthn, ConfigError> {
        let mut locations = Vec::new();
        let mut compiled = Vec::with_capacity(providers.len());
        for (i, p) in providers.iter().enumerate() {
            let field = |name: &str| format!("jwt_providers[{i}].{name}");
            if p.issuer.trim().is_empty() {
                return Err(config_err(field("issuer"), "required"));
            }
            // A key set that cannot be used (not fetched yet: trellisd sends it empty) refuses
            // this issuer's tokens, and only them: the rest of the configuration still applies.
            let keys = keys::parse_jwks(&p.jwks).unwrap_or_else(|why| {
                tracing::warn!(field = %field("jwks"), issuer = %p.issuer, "{why}; this issuer's tokens are refused");
                Vec::new()
            });

            let mut locs = Vec::new();
            for (j, h) in p.from_headers.iter().enumerate() {
                let name = header_name(field(&format!("from_headers[{j}].name")), &h.name)?;
                locs.push(intern(
                    &mut locations,
                    Location::Header { name, prefix: h.prefix.clone(), lenient: false },
                ));
            }
            for (j, name) in p.from_params.iter().enumerate() {
                if name.is_empty() {
                    return Err(config_err(field(&format!("from_params[{j}]")), "empty parameter name"));
                }
                locs.push(intern(&mut locations, Location::Param(name.clone())));
            }
            for (j, name) in p.from_cookies.iter().enumerate() {
                if name.is_empty() || name.contains(|c: char| c == '=' || c == ';' || c.is_whitespace()) {
                    return Err(config_err(
                        field(&format!("from_cookies[{j}]")),
                        format!("{name:?} is not a cookie name"),
                    ));
                }
                locs.push(intern(&mut locations, Location::Cookie(name.clone())));
            }
            if locs.is_empty() {
                let bearer =
                    Location::Header { name: AUTHORIZATION, prefix: "Bearer ".to_owned(), lenient: true };
                locs.push(intern(&mut locations, bearer));
                locs.push(intern(&mut locations, Location::Param("access_token".to_owned())));
            }
            locs.dedup();

            let payload_header = match p.output_payload_to_header.as_str() {
                "" => None,
                name => Some(header_name(field("output_payload_to_header"), name)?),
            };
            let mut claim_headers = Vec::with_capacity(p.output_claim_to_headers.len());
            for (j, c) in p.output_claim_to_headers.iter().enumerate() {
                let name = header_name(field(&format!("output_claim_to_headers[{j}].header")), &c.header)?;
                if c.claim.is_empty() || c.claim.split('.').any(str::is_empty) {
                    return Err(config_err(
                        field(&format!("output_claim_to_headers[{j}].claim")),
                        format!("{:?} is not a claim name", c.claim),
                    ));
                }
                claim_headers.push((name, c.claim.split('.').map(str::to_owned).collect()));
            }
            let mut space_delimited: Vec<String> = SPACE_DELIMITED.iter().map(|s| (*s).to_owned()).collect();
            for claim in &p.space_delimited_claims {
                if !claim.is_empty() && !space_delimited.contains(claim) {
                    space_delimited.push(claim.clone());
                }
            }
            compiled.push(Provider {
                issuer: p.issuer.clone(),
                audiences: p.audiences.iter().map(|a| sanitize_audience(a).to_owned()).collect(),
                keys,
                locations: locs,
                forward: p.forward_original_token,
                payload_header,
                claim_headers,
                space_delimited,
            });
        }
        Ok(JwtAuthn {
            providers: compiled,
            locations,
            cache: TokenCache::default(),
            verifications: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }

    /// Tokens whose signature was checked (cache misses that got that far).
    pub fn signature_verifications(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
    }

    /// Tokens accepted from the cache of verified tokens.
    pub fn cache_hits(&self) -> u64 {
        self.cache_hits.load(Ordering::Relaxed)
    }

    /// Checks the request's token(s). On success removes the token (unless the provider
    /// forwards it), sets the payload and claim headers, and returns the identity; `Ok(None)`:
    /// no token (which passes), or a CORS preflight.
    pub fn authenticate<B>(
        &self,
        request: &mut Request<B>,
    ) -> Result<Option<Arc<RequestAuth>>, JwtRejection> {
        if self.providers.is_empty() || is_cors_preflight(request) {
            return Ok(None);
        }
        let found: Vec<Vec<Found>> =
            self.locations.iter().map(|l| extract(l, request.headers(), request.uri())).collect();
        if found.iter().all(Vec::is_empty) {
            return Ok(None);
        }
        let now = unix_now();
        let mut parsed: Vec<(&str, Result<Parsed<'_>, token::Malformed>)> = Vec::new();
        let mut first_failure: Option<Failure> = None;
        for (index, provider) in self.providers.iter().enumerate() {
            let mut tokens = provider.locations.iter().flat_map(|l| &found[*l]).peekable();
            if tokens.peek().is_none() {
                continue;
            }
            // Every token the provider found must be valid for it (Envoy: a good token must not
            // carry a bad one past the check); the first is the identity.
            let mut accepted: Option<(&str, Arc<Verified>)> = None;
            let mut failed = false;
            for found in tokens {
                let checked = match found {
                    Found::Invalid(why) => Err(Failure::Invalid(why)),
                    Found::Token(token) => {
                        self.check(index, provider, token, now, &mut parsed).map(|v| (token, v))
                    }
                };
                match checked {
                    Ok((token, verified)) => {
                        accepted.get_or_insert((token.as_str(), verified));
                    }
                    Err(failure) => {
                        // Prefer a token's own fault to "not this provider's issuer".
                        match (first_failure, failure) {
                            (None, _)
                            | (Some(Failure::UnknownIssuer), Failure::Invalid(_) | Failure::Audience) => {
                                first_failure = Some(failure);
                            }
                            _ => {}
                        }
                        failed = true;
                        break;
                    }
                }
            }
            if !failed && let Some((token, verified)) = accepted {
                self.apply(provider, &found, token, &verified, request);
                return Ok(Some(Arc::clone(&verified.auth)));
            }
        }
        let (status, message) = match first_failure {
            Some(Failure::Audience) => (StatusCode::FORBIDDEN, AUDIENCE_NOT_ALLOWED),
            Some(Failure::Invalid(why)) => (StatusCode::UNAUTHORIZED, why),
            Some(Failure::UnknownIssuer) | None => (StatusCode::UNAUTHORIZED, UNKNOWN_ISSUER),
        };
        Err(JwtRejection { status, www_authenticate: www_authenticate(request), message: message.to_owned() })
    }

    /// One token against one provider: from the cache, or parsed, checked and verified.
    fn check<'t>(
        &self,
        index: usize,
        provider: &Provider,
        token: &'t str,
        now: i64,
        parsed: &mut Vec<(&'t str, Result<Parsed<'t>, token::Malformed>)>,
    ) -> Result<Arc<Verified>, Failure> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Failure::Invalid(token::TOO_LARGE));
        }
        let key = self.cache.key(index, token);
        if let Some(verified) = self.cache.get(&key, now, CLOCK_SKEW_SECS) {
            self.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(verified);
        }
        let position = match parsed.iter().position(|(t, _)| *t == token) {
            Some(i) => i,
            None => {
                parsed.push((token, token::parse(token)));
                parsed.len() - 1
            }
        };
        let jwt = match &parsed[position].1 {
            Ok(jwt) => jwt,
            Err(why) => return Err(Failure::Invalid(why)),
        };
        if jwt.iss.as_deref() != Some(provider.issuer.as_str()) {
            return Err(Failure::UnknownIssuer);
        }
        if jwt.nbf.is_some_and(|nbf| now.saturating_add(CLOCK_SKEW_SECS) < nbf) {
            return Err(Failure::Invalid("Jwt not yet valid"));
        }
        if jwt.exp.is_some_and(|exp| now > exp.saturating_add(CLOCK_SKEW_SECS)) {
            return Err(Failure::Invalid("Jwt is expired"));
        }
        if !provider.audiences.is_empty()
            && !jwt.audiences.iter().any(|a| provider.audiences.iter().any(|p| p == sanitize_audience(a)))
        {
            return Err(Failure::Audience);
        }
        let mut candidates =
            provider.keys.iter().filter(|k| k.matches(jwt.alg, jwt.kid.as_deref())).peekable();
        if candidates.peek().is_none() {
            return Err(Failure::Invalid("Jwks doesn't have key to match kid or alg from Jwt"));
        }
        self.verifications.fetch_add(1, Ordering::Relaxed);
        let message = jwt.signed.as_bytes();
        if !candidates.any(|k| k.can_verify(jwt.alg) && k.verify(jwt.alg, message, &jwt.signature)) {
            return Err(Failure::Invalid("Jwt verification fails"));
        }
        let verified = Arc::new(Verified {
            auth: Arc::new(request_auth(jwt, &provider.space_delimited)),
            exp: jwt.exp,
            claim_headers: provider
                .claim_headers
                .iter()
                .map(|(_, path)| claim_header(&jwt.payload, path))
                .collect(),
        });
        self.cache.insert(key, Arc::clone(&verified), now, CLOCK_SKEW_SECS);
        Ok(verified)
    }

    /// The accepting provider's changes to the request.
    fn apply<B>(
        &self,
        provider: &Provider,
        found: &[Vec<Found>],
        token: &str,
        verified: &Verified,
        request: &mut Request<B>,
    ) {
        if !provider.forward {
            for &l in &provider.locations {
                if !found[l].is_empty() {
                    remove(&self.locations[l], request);
                }
            }
        }
        let headers = request.headers_mut();
        if let Some(name) = &provider.payload_header {
            let payload = token.split('.').nth(1).and_then(|p| HeaderValue::from_str(p).ok());
            match payload {
                Some(value) => {
                    headers.insert(name.clone(), value);
                }
                None => {
                    headers.remove(name);
                }
            }
        }
        // The client's own values of these headers never reach the app beside the token's.
        for ((name, _), value) in provider.claim_headers.iter().zip(&verified.claim_headers) {
            match value {
                Some(value) => {
                    headers.insert(name.clone(), value.clone());
                }
                None => {
                    headers.remove(name);
                }
            }
        }
    }
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn is_cors_preflight<B>(request: &Request<B>) -> bool {
    let nonempty = |name: &str| request.headers().get(name).is_some_and(|v| !v.is_empty());
    request.method() == Method::OPTIONS && nonempty("origin") && nonempty("access-control-request-method")
}

fn extract(location: &Location, headers: &HeaderMap, uri: &Uri) -> Vec<Found> {
    let mut found = Vec::new();
    match location {
        Location::Header { name, prefix, lenient } => {
            for value in headers.get_all(name) {
                let Ok(value) = value.to_str() else {
                    if !lenient {
                        found.push(Found::Invalid(BAD_ENCODING));
                    }
                    continue;
                };
                let rest = if *lenient {
                    // The auth scheme is case-insensitive (RFC 9110 11.1).
                    match value.get(..prefix.len()) {
                        Some(p) if p.eq_ignore_ascii_case(prefix) => &value[prefix.len()..],
                        _ => continue,
                    }
                } else {
                    match value.strip_prefix(prefix.as_str()) {
                        Some(rest) => rest,
                        None => {
                            found.push(Found::Invalid(MISSING_PREFIX));
                            continue;
                        }
                    }
                };
                found.push(Found::Token(rest.trim().to_owned()));
            }
        }
        Location::Param(param) => {
            for (name, value) in query_pairs(uri.query().unwrap_or("")) {
                if percent_decode(name).as_deref() == Some(param.as_str()) {
                    found.push(match percent_decode(value) {
                        Some(token) => Found::Token(token),
                        None => Found::Invalid(BAD_ENCODING),
                    });
                }
            }
        }
        Location::Cookie(cookie) => {
            for value in headers.get_all(COOKIE) {
                let Ok(value) = value.to_str() else { continue };
                for (name, value) in cookie_pairs(value) {
                    if name == cookie {
                        found.push(Found::Token(value.to_owned()));
                    }
                }
            }
        }
    }
    found
}

fn query_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query.split('&').filter(|p| !p.is_empty()).map(|p| p.split_once('=').unwrap_or((p, "")))
}

fn cookie_pairs(header: &str) -> impl Iterator<Item = (&str, &str)> {
    header.split(';').filter_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        let value = value.trim();
        let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
        Some((name.trim(), value))
    })
}

/// `%XX` decoded; `None` when the result is not UTF-8 or an escape is broken.
fn percent_decode(text: &str) -> Option<String> {
    if !text.contains('%') {
        return Some(text.to_owned());
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Takes a verified token out of the request.
fn remove<B>(location: &Location, request: &mut Request<B>) {
    match location {
        Location::Header { name, .. } => {
            request.headers_mut().remove(name);
        }
        Location::Param(param) => {
            let Some(query) = request.uri().query() else { return };
            let kept: Vec<&str> = query
                .split('&')
                .filter(|pair| {
                    let name = pair.split_once('=').map_or(*pair, |(n, _)| n);
                    percent_decode(name).as_deref() != Some(param.as_str())
                })
                .collect();
            let path_and_query = if kept.is_empty() {
                request.uri().path().to_owned()
            } else {
                format!("{}?{}", request.uri().path(), kept.join("&"))
            };
            let mut parts = request.uri().clone().into_parts();
            let Ok(path_and_query) = PathAndQuery::try_from(path_and_query) else { return };
            parts.path_and_query = Some(path_and_query);
            if let Ok(uri) = Uri::from_parts(parts) {
                *request.uri_mut() = uri;
            }
        }
        Location::Cookie(cookie) => {
            let headers = request.headers_mut();
            let values: Vec<HeaderValue> = headers.get_all(COOKIE).iter().cloned().collect();
            headers.remove(COOKIE);
            for value in values {
                let Ok(text) = value.to_str() else {
                    headers.append(COOKIE, value);
                    continue;
                };
                let kept: Vec<&str> = text
                    .split(';')
                    .map(str::trim)
                    .filter(|pair| {
                        !pair.is_empty() && pair.split_once('=').is_none_or(|(n, _)| n.trim() != cookie)
                    })
                    .collect();
                if !kept.is_empty()
                    && let Ok(value) = HeaderValue::from_str(&kept.join("; "))
                {
                    headers.append(COOKIE, value);
                }
            }
        }
    }
}

/// Envoy's: `Bearer realm="<scheme>://<host><path>", error="invalid_token"`, the path cut at
/// 256 bytes; the query is left out (it may hold the token).
fn www_authenticate<B>(request: &Request<B>) -> Option<HeaderValue> {
    let uri = request.uri();
    let scheme = uri.scheme_str().unwrap_or("http");
    let host = match uri.authority() {
        Some(authority) => authority.as_str(),
        None => request.headers().get(HOST).and_then(|h| h.to_str().ok()).unwrap_or(""),
    };
    let path = uri.path();
    let path = path.get(..MAX_REALM_PATH).unwrap_or(path);
    let realm: String = format!("{scheme}://{host}{path}")
        .chars()
        .flat_map(|c| match c {
            '"' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect();
    HeaderValue::from_str(&format!("Bearer realm=\"{realm}\", error=\"invalid_token\"")).ok()
}

/// The identity AuthorizationPolicy reads.
fn request_auth(jwt: &Parsed<'_>, space_delimited: &[String]) -> RequestAuth {
    let principal = match (&jwt.iss, &jwt.sub) {
        (Some(iss), Some(sub)) => format!("{iss}/{sub}"),
        _ => String::new(),
    };
    let presenter = match jwt.payload.get("azp") {
        Some(Value::String(azp)) => Some(azp.clone()),
        _ => None,
    };
    let mut claims: Map<String, Value> = jwt.payload.clone();
    for name in space_delimited {
        if let Some(value) = claims.get_mut(name)
            && let Value::String(text) = value
        {
            let words =
                text.split(' ').filter(|w| !w.is_empty()).map(|w| Value::String(w.to_owned())).collect();
            *value = Value::Array(words);
        }
    }
    RequestAuth { principal, audiences: jwt.audiences.clone(), presenter, claims }
}

/// A claim as a header value, as Envoy's `claim_to_headers`: strings, numbers and booleans;
/// nothing for other types, a missing claim or an empty string.
fn claim_header(payload: &Map<String, Value>, path: &[String]) -> Option<HeaderValue> {
    let (first, rest) = path.split_first()?;
    let mut value = payload.get(first)?;
    for name in rest {
        value = value.get(name)?;
    }
    let text = match value {
        Value::String(s) if !s.is_empty() => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    HeaderValue::from_str(&text).ok()
}
