//! Rate limits on a workload's inbound HTTP requests, as Istio users configure them with an
//! EnvoyFilter: Envoy's `local_ratelimit` (a token bucket in this proxy) and `ratelimit` (a
//! RateLimitService asked per request). The control plane resolves the EnvoyFilter into
//! `inbound_local_rate_limit` and `inbound_global_rate_limit`; without them the request path
//! pays one branch.
//!
//! A refused request gets Envoy's answers: 429 with the response flag `RL` (the global limit
//! adds `x-envoy-ratelimited: true`, the local one only its configured headers), and, when the
//! RateLimitService cannot answer and `failure_mode_deny` is set, 500 with `RLSE`.

pub mod descriptors;
pub mod global;
pub mod local;

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Request, StatusCode};
use trellis_xds::config as pb;

use crate::config::ConfigError;
use crate::upstream::Body;

/// What refusing a request answers, and its response flag.
pub struct Refusal {
    pub response: http::Response<Body>,
    pub flags: &'static str,
}

/// The rate limits of a workload's inbound requests.
#[derive(Debug)]
pub struct InboundRateLimit {
    pub local: Option<local::LocalRateLimit>,
    pub global: Option<global::GlobalRateLimit>,
}

impl InboundRateLimit {
    /// Compiles the config's rate limits; `None` when there are none.
    pub fn compile(
        config: &pb::ProxyConfig,
        previous: Option<&Arc<InboundRateLimit>>,
    ) -> Result<Option<Arc<InboundRateLimit>>, ConfigError> {
        let local = match &config.inbound_local_rate_limit {
            Some(c) => Some(local::LocalRateLimit::compile(
                c,
                "inbound_local_rate_limit",
                previous.and_then(|p| p.local.as_ref()),
            )?),
            None => None,
        };
        let global = config
            .inbound_global_rate_limit
            .as_ref()
            .map(|c| global::GlobalRateLimit::compile(c, "inbound_global_rate_limit"))
            .transpose()?;
        if local.is_none() && global.is_none() {
            return Ok(None);
        }
        Ok(Some(Arc::new(InboundRateLimit { local, global })))
    }

    /// Checks one request: `Err` with the answer when it is refused.
    pub async fn check<B>(
        &self,
        request: &Request<B>,
        port: u16,
        remote: std::net::IpAddr,
        metrics: &crate::metrics::Metrics,
        service: &str,
    ) -> Result<(), Refusal> {
        if let Some(local) = self.local.as_ref().filter(|l| l.applies_to(port)) {
            match local.decide(request, port, remote, Instant::now()) {
                local::Decision::Allow => {}
                local::Decision::Counted => metrics.rate_limited(service, "local", false),
                local::Decision::Refuse => {
                    metrics.rate_limited(service, "local", true);
                    let mut response =
                        crate::forward::text(StatusCode::TOO_MANY_REQUESTS, "local_rate_limited");
                    for (name, value) in &local.response_headers {
                        response.headers_mut().append(name.clone(), value.clone());
                    }
                    return Err(Refusal { response, flags: "RL" });
                }
            }
        }
        if let Some(global) = &self.global {
            match global.ask(request, port, remote).await {
                global::Verdict::Allow => {}
                global::Verdict::OverLimit(headers) => {
                    metrics.rate_limited(service, "global", true);
                    let mut response = crate::forward::text(StatusCode::TOO_MANY_REQUESTS, "");
                    let (name, value) = envoy_ratelimited();
                    response.headers_mut().insert(name, value);
                    for (name, value) in headers {
                        response.headers_mut().append(name, value);
                    }
                    return Err(Refusal { response, flags: "RL" });
                }
                global::Verdict::Unavailable(reason) => {
                    tracing::debug!(service, domain = %global.domain, %reason, "rate limit service did not answer");
                    if global.failure_mode_deny {
                        let response = crate::forward::text(StatusCode::INTERNAL_SERVER_ERROR, "");
                        return Err(Refusal { response, flags: "RLSE" });
                    }
                }
            }
        }
        Ok(())
    }
}

/// Envoy's header on answers the global limit refused.
pub fn envoy_ratelimited() -> (http::HeaderName, HeaderValue) {
    (http::HeaderName::from_static("x-envoy-ratelimited"), HeaderValue::from_static("true"))
}
