//! Envoy's `ratelimit` filter (on inbound, outbound or gateway requests): the route's
//! `rate_limits` actions make descriptors ([`super::descriptors`]), and
//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` (lyft/ratelimit's protocol)
//! decides, over one plaintext HTTP/2 channel made on first use.

use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use tonic::transport::{Channel, Endpoint};
use trellis_xds::config as pb;
use trellis_xds::envoy::extensions::common::ratelimit::v3 as common;
use trellis_xds::envoy::service::ratelimit::v3 as rls;

use super::descriptors::{Rules, VirtualHostRules};
use crate::config::ConfigError;

/// Envoy's default when `timeout` is unset.
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(20);
/// The most answer headers taken from the service.
const MAX_ANSWER_HEADERS: usize = 32;
/// The largest answer read from the service.
const MAX_ANSWER_BYTES: usize = 64 << 10;

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
    rules: Rules,
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
        let rules = Rules::compile(&c.rules, field)?;
        Ok(GlobalRateLimit {
            domain: c.domain.clone(),
            failure_mode_deny: c.failure_mode_deny,
            timeout,
            rules,
            endpoint,
            channel: OnceLock::new(),
        })
    }

    /// Asks the service about one request.
    pub async fn ask<B>(&self, request: &http::Request<B>, port: u16, remote: IpAddr) -> Verdict {
        let descriptors = self.rules.descriptors(request, port, remote, VirtualHostRules::Override);
        if descriptors.is_empty() {
            return Verdict::Allow;
        }
        let descriptors = descriptors
            .into_iter()
            .map(|entries| common::RateLimitDescriptor {
                entries: entries
                    .into_iter()
                    .map(|(key, value)| common::rate_limit_descriptor::Entry { key, value })
                    .collect(),
            })
            .collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_name_the_field() {
        let bad = pb::GlobalRateLimit { domain: "d".into(), service: "no-port".into(), ..Default::default() };
        assert_eq!(GlobalRateLimit::compile(&bad, "g").unwrap_err().field, "g.service");
        let bad = pb::GlobalRateLimit { service: "rls:8081".into(), ..Default::default() };
        assert_eq!(GlobalRateLimit::compile(&bad, "g").unwrap_err().field, "g.domain");
        let bad = pb::GlobalRateLimit {
            domain: "d".into(),
            service: "rls:8081".into(),
            rules: vec![pb::RateLimitDescriptorRule {
                actions: vec![pb::RateLimitAction { action: None }],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(GlobalRateLimit::compile(&bad, "g").unwrap_err().field, "g.rules[0].actions[0]");
    }
}
