//! Envoy's `ratelimit` filter on a workload's inbound requests: the route's `rate_limits`
//! actions make descriptors, and `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`
//! (lyft/ratelimit's protocol) decides, over one plaintext HTTP/2 channel made on first use.

use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use tonic::transport::{Channel, Endpoint};
use trellis_xds::config as pb;
use trellis_xds::envoy::extensions::common::ratelimit::v3 as common;
use trellis_xds::envoy::service::ratelimit::v3 as rls;

use crate::config::ConfigError;
use crate::route::StringMatcher;

/// Envoy's default when `timeout` is unset.
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(20);
/// The most answer headers taken from the service.
const MAX_ANSWER_HEADERS: usize = 32;
/// The largest answer read from the service.
const MAX_ANSWER_BYTES: usize = 64 << 10;

/// Where a `request_headers` action reads its value: a header, or one of HTTP/2's pseudo-headers
/// (Istio's documented example counts by `:path`).
#[derive(Debug)]
enum Source {
    Header(HeaderName),
    Path,
    Method,
    Authority,
    Scheme,
}

impl Source {
    fn read<'a, B>(&self, request: &'a http::Request<B>) -> Option<std::borrow::Cow<'a, str>> {
        use std::borrow::Cow;
        match self {
            Source::Header(name) => request.headers().get(name)?.to_str().ok().map(Cow::Borrowed),
            Source::Path => request.uri().path_and_query().map(|p| Cow::Borrowed(p.as_str())),
            Source::Method => Some(Cow::Borrowed(request.method().as_str())),
            Source::Authority => match request.uri().authority() {
                Some(a) => Some(Cow::Borrowed(a.as_str())),
                None => request.headers().get(http::header::HOST)?.to_str().ok().map(Cow::Borrowed),
            },
            Source::Scheme => Some(Cow::Borrowed(request.uri().scheme_str().unwrap_or("http"))),
        }
    }
}

enum Action {
    RequestHeaders {
        header: Source,
        key: String,
        skip_if_absent: bool,
    },
    RemoteAddress,
    GenericKey {
        key: String,
        value: String,
    },
    HeaderValueMatch {
        key: String,
        value: String,
        expect_match: bool,
        headers: Vec<(HeaderName, Option<StringMatcher>)>,
    },
}

impl std::fmt::Debug for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::RequestHeaders { header, key, .. } => write!(f, "request_headers({header:?} as {key})"),
            Action::RemoteAddress => f.write_str("remote_address"),
            Action::GenericKey { key, value } => write!(f, "generic_key({key}={value})"),
            Action::HeaderValueMatch { key, value, .. } => write!(f, "header_value_match({key}={value})"),
        }
    }
}

/// What the service (or its absence) decided.
#[derive(Debug)]
pub enum Verdict {
    /// Under the limits, or no descriptor to ask about.
    Allow,
    /// Over a limit: refuse with 429 and these headers from the service.
    OverLimit(Vec<(HeaderName, HeaderValue)>),
    /// The service did not answer (in time); what happens depends on `failure_mode_deny`.
    Unavailable(String),
}

/// The compiled `GlobalRateLimit`.
#[derive(Debug)]
pub struct GlobalRateLimit {
    pub domain: String,
    pub failure_mode_deny: bool,
    timeout: Duration,
    rules: Vec<Vec<Action>>,
    endpoint: Endpoint,
    /// Made on the first request (a channel needs a runtime, which compiling may not have).
    channel: OnceLock<Channel>,
}

impl GlobalRateLimit {
    pub fn compile(c: &pb::GlobalRateLimit, field: &str) -> Result<GlobalRateLimit, ConfigError> {
        let err = |f: String, message: String| ConfigError { field: format!("{field}.{f}"), message };
        if c.domain.is_empty() {
            return Err(err("domain".into(), "required".into()));
        }
        let authority = c
            .service
            .parse::<http::uri::Authority>()
            .ok()
            .filter(|a| a.port_u16().is_some())
            .ok_or_else(|| err("service".into(), format!("{:?} is not host:port", c.service)))?;
        let timeout_field = format!("{field}.timeout");
        let timeout = crate::config::duration(c.timeout.as_ref(), &timeout_field)?
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_TIMEOUT);
        let endpoint = Endpoint::from_shared(format!("http://{authority}"))
            .map_err(|e| err("service".into(), e.to_string()))?
            .connect_timeout(timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        let mut rules = Vec::with_capacity(c.rules.len());
        for (i, rule) in c.rules.iter().enumerate() {
            let mut actions = Vec::with_capacity(rule.actions.len());
            for (j, a) in rule.actions.iter().enumerate() {
                let f = format!("rules[{i}].actions[{j}]");
                actions.push(compile_action(a, &f).map_err(|(sub, m)| err(format!("{f}{sub}"), m))?);
            }
            rules.push(actions);
        }
        Ok(GlobalRateLimit {
            domain: c.domain.clone(),
            failure_mode_deny: c.failure_mode_deny,
            timeout,
            rules,
            endpoint,
            channel: OnceLock::new(),
        })
    }

    /// The descriptors of one request: one per rule whose actions all give an entry.
    pub fn descriptors<B>(
        &self,
        request: &http::Request<B>,
        remote: IpAddr,
    ) -> Vec<common::RateLimitDescriptor> {
        let headers = request.headers();
        let mut descriptors = Vec::new();
        'rules: for rule in &self.rules {
            let mut entries = Vec::with_capacity(rule.len());
            for action in rule {
                let entry = match action {
                    Action::RequestHeaders { header, key, skip_if_absent } => match header.read(request) {
                        Some(value) => (key.clone(), value.into_owned()),
                        None if *skip_if_absent => continue,
                        None => continue 'rules,
                    },
                    Action::RemoteAddress => ("remote_address".to_owned(), remote.to_string()),
                    Action::GenericKey { key, value } => (key.clone(), value.clone()),
                    Action::HeaderValueMatch { key, value, expect_match, headers: wanted } => {
                        let all = wanted.iter().all(|(name, matcher)| {
                            let mut values = headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
                            match matcher {
                                None => values.next().is_some(),
                                Some(m) => values.any(|v| m.matches(v)),
                            }
                        });
                        if all != *expect_match {
                            continue 'rules;
                        }
                        (key.clone(), value.clone())
                    }
                };
                entries.push(common::rate_limit_descriptor::Entry { key: entry.0, value: entry.1 });
            }
            if !entries.is_empty() {
                descriptors.push(common::RateLimitDescriptor { entries });
            }
        }
        descriptors
    }

    /// Asks the service about one request.
    pub async fn ask<B>(&self, request: &http::Request<B>, remote: IpAddr) -> Verdict {
        let descriptors = self.descriptors(request, remote);
        if descriptors.is_empty() {
            return Verdict::Allow;
        }
        let channel = self.channel.get_or_init(|| self.endpoint.connect_lazy()).clone();
        let mut client = rls::rate_limit_service_client::RateLimitServiceClient::new(channel)
            .max_decoding_message_size(MAX_ANSWER_BYTES);
        let mut request = tonic::Request::new(rls::RateLimitRequest {
            domain: self.domain.clone(),
            descriptors,
            hits_addend: 0,
        });
        request.set_timeout(self.timeout);
        let answer = match tokio::time::timeout(self.timeout, client.should_rate_limit(request)).await {
            Err(_) => return Verdict::Unavailable(format!("no answer within {:?}", self.timeout)),
            Ok(Err(status)) => return Verdict::Unavailable(status.to_string()),
            Ok(Ok(answer)) => answer.into_inner(),
        };
        match rls::rate_limit_response::Code::try_from(answer.overall_code) {
            Ok(rls::rate_limit_response::Code::OverLimit) => Verdict::OverLimit(
                answer
                    .response_headers_to_add
                    .iter()
                    .take(MAX_ANSWER_HEADERS)
                    .filter_map(|h| {
                        let name = HeaderName::from_bytes(h.key.as_bytes()).ok()?;
                        let value = HeaderValue::from_str(&h.value).ok()?;
                        Some((name, value))
                    })
                    .collect(),
            ),
            Ok(rls::rate_limit_response::Code::Ok) => Verdict::Allow,
            // Envoy treats an unknown code as an error of the service.
            _ => Verdict::Unavailable(format!("overall code {}", answer.overall_code)),
        }
    }
}

fn compile_action(a: &pb::RateLimitAction, field: &str) -> Result<Action, (String, String)> {
    use pb::rate_limit_action::Action as A;
    let header_name = |name: &str, f: &str| {
        HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
            .map_err(|_| (f.to_owned(), format!("{name:?} is not a header name")))
    };
    Ok(match &a.action {
        None => return Err((String::new(), "an action is required".into())),
        Some(A::RequestHeaders(h)) => {
            if h.descriptor_key.is_empty() {
                return Err((".request_headers.descriptor_key".into(), "required".into()));
            }
            Action::RequestHeaders {
                header: match h.header_name.to_ascii_lowercase().as_str() {
                    ":path" => Source::Path,
                    ":method" => Source::Method,
                    ":authority" => Source::Authority,
                    ":scheme" => Source::Scheme,
                    _ => Source::Header(header_name(&h.header_name, ".request_headers.header_name")?),
                },
                key: h.descriptor_key.clone(),
                skip_if_absent: h.skip_if_absent,
            }
        }
        Some(A::RemoteAddress(_)) => Action::RemoteAddress,
        Some(A::GenericKey(g)) => {
            if g.descriptor_value.is_empty() {
                return Err((".generic_key.descriptor_value".into(), "required".into()));
            }
            Action::GenericKey {
                key: if g.descriptor_key.is_empty() {
                    "generic_key".into()
                } else {
                    g.descriptor_key.clone()
                },
                value: g.descriptor_value.clone(),
            }
        }
        Some(A::HeaderValueMatch(m)) => {
            if m.descriptor_value.is_empty() {
                return Err((".header_value_match.descriptor_value".into(), "required".into()));
            }
            let mut headers = Vec::with_capacity(m.headers.len());
            for (i, h) in m.headers.iter().enumerate() {
                let f = format!(".header_value_match.headers[{i}]");
                let name = header_name(&h.name, &format!("{f}.name"))?;
                let matcher = h
                    .value
                    .as_ref()
                    .map(|s| StringMatcher::compile(s, &format!("{field}{f}.value")))
                    .transpose()
                    .map_err(|e| (format!("{f}.value"), e.message))?;
                headers.push((name, matcher));
            }
            Action::HeaderValueMatch {
                key: if m.descriptor_key.is_empty() {
                    "header_match".into()
                } else {
                    m.descriptor_key.clone()
                },
                value: m.descriptor_value.clone(),
                expect_match: m.expect_match,
                headers,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(a: pb::rate_limit_action::Action) -> pb::RateLimitAction {
        pb::RateLimitAction { action: Some(a) }
    }

    #[test]
    fn descriptors_follow_envoys_actions() {
        use pb::rate_limit_action::Action as A;
        let config = pb::GlobalRateLimit {
            domain: "ratelimit".into(),
            service: "127.0.0.1:8081".into(),
            rules: vec![
                pb::RateLimitDescriptorRule {
                    actions: vec![action(A::RequestHeaders(pb::RequestHeadersAction {
                        header_name: ":path".into(),
                        descriptor_key: "PATH".into(),
                        skip_if_absent: false,
                    }))],
                },
                pb::RateLimitDescriptorRule {
                    actions: vec![
                        action(A::GenericKey(pb::GenericKeyAction {
                            descriptor_key: String::new(),
                            descriptor_value: "shop".into(),
                        })),
                        action(A::RemoteAddress(true)),
                    ],
                },
                pb::RateLimitDescriptorRule {
                    actions: vec![action(A::HeaderValueMatch(pb::HeaderValueMatchAction {
                        descriptor_key: String::new(),
                        descriptor_value: "premium".into(),
                        expect_match: true,
                        headers: vec![pb::HeaderMatch {
                            name: "x-plan".into(),
                            value: Some(pb::StringMatch {
                                kind: Some(pb::string_match::Kind::Exact("premium".into())),
                            }),
                        }],
                    }))],
                },
            ],
            ..Default::default()
        };
        let limit = GlobalRateLimit::compile(&config, "g").unwrap();
        let remote: IpAddr = "10.0.0.7".parse().unwrap();
        let mut request = http::Request::get("/items?page=2").body(()).unwrap();
        let entries = |d: &[common::RateLimitDescriptor]| {
            d.iter()
                .map(|d| {
                    d.entries.iter().map(|e| format!("{}={}", e.key, e.value)).collect::<Vec<_>>().join(",")
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            entries(&limit.descriptors(&request, remote)),
            ["PATH=/items?page=2", "generic_key=shop,remote_address=10.0.0.7"]
        );
        request.headers_mut().insert("x-plan", HeaderValue::from_static("premium"));
        assert_eq!(
            entries(&limit.descriptors(&request, remote)),
            ["PATH=/items?page=2", "generic_key=shop,remote_address=10.0.0.7", "header_match=premium"]
        );
    }

    #[test]
    fn bad_settings_name_the_field() {
        let bad = pb::GlobalRateLimit { domain: "d".into(), service: "no-port".into(), ..Default::default() };
        assert_eq!(GlobalRateLimit::compile(&bad, "g").unwrap_err().field, "g.service");
        let bad = pb::GlobalRateLimit { service: "rls:8081".into(), ..Default::default() };
        assert_eq!(GlobalRateLimit::compile(&bad, "g").unwrap_err().field, "g.domain");
        let bad = pb::GlobalRateLimit {
            domain: "d".into(),
            service: "rls:8081".into(),
            rules: vec![pb::RateLimitDescriptorRule { actions: vec![pb::RateLimitAction { action: None }] }],
            ..Default::default()
        };
        assert_eq!(GlobalRateLimit::compile(&bad, "g").unwrap_err().field, "g.rules[0].actions[0]");
    }
}
