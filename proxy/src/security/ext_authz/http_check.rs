//! The HTTP provider: the request, without its body, re-sent to the provider over HTTP/1.1,
//! connections pooled per address.

use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, HOST, LOCATION, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use trellis_xds::config as pb;

use super::{ExtDecision, Failure, MAX_ANSWER_HEADERS, MAX_BODY_BYTES, Pattern, any_matches, err};
use crate::config::ConfigError;

/// The longest a connection attempt waits before the next address is tried.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle connections kept per address, and for how long.
const MAX_IDLE_PER_ADDRESS: usize = 16;
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub(super) struct HttpCheck {
    client: Client<HttpConnector, Full<Bytes>>,
    path_prefix: String,
    pub(super) include_request_headers: Vec<Pattern>,
    additional_headers: Vec<(HeaderName, HeaderValue)>,
    upstream_on_allow: Vec<Pattern>,
    downstream_on_deny: Vec<Pattern>,
}

impl HttpCheck {
    pub(super) fn compile(
        h: &pb::ExtAuthzHttp,
        timeout: Duration,
        field: &str,
    ) -> Result<HttpCheck, ConfigError> {
        let prefix = &h.path_prefix;
        if !prefix.is_empty() {
            let valid = prefix.starts_with('/')
                && !prefix.contains(['?', '#'])
                && prefix.parse::<http::uri::PathAndQuery>().is_ok();
            if !valid {
                return Err(err(
                    format!("{field}.path_prefix"),
                    format!("{prefix:?} is not a path (`/...`, without query)"),
                ));
            }
        }
        let mut additional_headers = Vec::with_capacity(h.include_additional_headers_in_check.len());
        for (name, value) in &h.include_additional_headers_in_check {
            let at = format!("{field}.include_additional_headers_in_check.{name}");
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| err(at.clone(), format!("{name:?} is not a header name")))?;
            if super::is_framing(&header) {
                return Err(err(at, format!("{name:?} frames the request and cannot be set")));
            }
            let value = HeaderValue::from_str(value)
                .map_err(|_| err(at, format!("{value:?} is not a header value")))?;
            additional_headers.push((header, value));
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout.min(MAX_CONNECT_TIMEOUT)));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_max_idle_per_host(MAX_IDLE_PER_ADDRESS)
            .build(connector);
        Ok(HttpCheck {
            client,
            path_prefix: prefix.clone(),
            include_request_headers: super::compile_patterns(
                &h.include_request_headers_in_check,
                &format!("{field}.include_request_headers_in_check"),
            )?,
            additional_headers,
            upstream_on_allow: super::compile_patterns(
                &h.headers_to_upstream_on_allow,
                &format!("{field}.headers_to_upstream_on_allow"),
            )?,
            downstream_on_deny: super::compile_patterns(
                &h.headers_to_downstream_on_deny,
                &format!("{field}.headers_to_downstream_on_deny"),
            )?,
        })
    }

    /// The check request: the original method and `Host`, `<path_prefix><path?query>`,
    /// `Content-Length: 0`, `Authorization` and the headers named by
    /// `include_request_headers_in_check`, then `include_additional_headers_in_check` (which
    /// replace any of the same name).
    pub(super) fn request(
        &self,
        address: &str,
        request: &http::request::Parts,
    ) -> Result<http::Request<Full<Bytes>>, Failure> {
        let target = format!("http://{address}{}{}", self.path_prefix, super::request_path(request));
        let uri: http::Uri =
            target.parse().map_err(|e| Failure::Other(format!("check request target {target:?}: {e}")))?;
        let mut headers = HeaderMap::new();
        for (name, value) in &request.headers {
            if super::is_framing(name) || name == HOST {
                continue;
            }
            if name == AUTHORIZATION || any_matches(&self.include_request_headers, name) {
                headers.append(name.clone(), value.clone());
            }
        }
        if let Some(host) = super::request_host(request).and_then(|h| HeaderValue::from_str(h).ok()) {
            headers.insert(HOST, host);
        }
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        for (name, value) in &self.additional_headers {
            headers.insert(name.clone(), value.clone());
        }
        let mut check = http::Request::new(Full::new(Bytes::new()));
        *check.method_mut() = request.method.clone();
        *check.uri_mut() = uri;
        *check.headers_mut() = headers;
        Ok(check)
    }

    /// One check at `address`.
    pub(super) async fn ask(
        &self,
        address: &str,
        provider: &str,
        request: &http::request::Parts,
    ) -> Result<ExtDecision, Failure> {
        let check = self.request(address, request)?;
        let answer = self.client.request(check).await.map_err(|e| {
            let message = error_chain(&e);
            if e.is_connect() { Failure::Connect(message) } else { Failure::Other(message) }
        })?;
        let status = answer.status();
        // As Envoy: a 5xx is the provider failing, not a denial.
        if status.is_informational() || status.is_server_error() {
            return Err(Failure::Other(format!("answered {status}")));
        }
        let (parts, body) = answer.into_parts();
        if status == StatusCode::OK {
            let headers = pick(&parts.headers, |name| any_matches(&self.upstream_on_allow, name))?;
            // Read what the body holds (bounded) so that the connection can be used again.
            let _ = Limited::new(body, MAX_BODY_BYTES).collect().await;
            return Ok(ExtDecision::Allow { headers });
        }
        let body = Limited::new(body, MAX_BODY_BYTES)
            .collect()
            .await
            .map_err(|e| {
                Failure::Other(format!("reading the denial's body (at most {MAX_BODY_BYTES} bytes): {e}"))
            })?
            .to_bytes();
        // None named: all of them (but `host`); some named: those, and what a client needs to
        // follow a denial (`www-authenticate`, `location`), as Envoy adds.
        let headers = if self.downstream_on_deny.is_empty() {
            pick(&parts.headers, |_| true)?
        } else {
            pick(&parts.headers, |name| {
                name == WWW_AUTHENTICATE || name == LOCATION || any_matches(&self.downstream_on_deny, name)
            })?
        };
        Ok(ExtDecision::Deny {
            status,
            headers,
            body,
            reason: format!("denied by ext_authz provider {provider:?} with {status}"),
        })
    }
}

/// The answer's headers that `wanted` names, without `host` and the headers that frame a
/// message.
fn pick(
    headers: &HeaderMap,
    wanted: impl Fn(&HeaderName) -> bool,
) -> Result<Vec<(HeaderName, HeaderValue)>, Failure> {
    let mut picked = Vec::new();
    for (name, value) in headers {
        if name == HOST || super::is_framing(name) || !wanted(name) {
            continue;
        }
        if picked.len() == MAX_ANSWER_HEADERS {
            return Err(Failure::Other(format!("answer has more than {MAX_ANSWER_HEADERS} headers")));
        }
        picked.push((name.clone(), value.clone()));
    }
    Ok(picked)
}

/// An error and its causes, for a reason that says what happened ("client error (Connect):
/// tcp connect error: Connection refused").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}
