//! Rate limits on HTTP requests, as Istio users configure them with an EnvoyFilter: Envoy's
//! `local_ratelimit` (token buckets in this proxy) and `ratelimit` (a RateLimitService asked per
//! request). The control plane resolves the EnvoyFilters into a local and a global limit for each
//! context: a sidecar's inbound requests (`inbound_*_rate_limit`, checked after authorization),
//! its outbound ones (`outbound_*`) and a gateway's (`gateway_*`), both checked once a route is
//! chosen. The same [`RateLimit`] serves all three; without one a request pays one branch.
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

/// The rate limits of one kind of request: a sidecar's inbound or outbound requests, or a
/// gateway's.
#[derive(Debug)]
pub struct RateLimit {
    pub local: Option<local::LocalRateLimit>,
    pub global: Option<global::GlobalRateLimit>,
}

impl RateLimit {
    /// Compiles a context's rate limits (`local_field` and `global_field` name them in errors);
    /// `None` when there are none.
    pub fn compile(
        local: Option<&pb::LocalRateLimit>,
        global: Option<&pb::GlobalRateLimit>,
        (local_field, global_field): (&str, &str),
        previous: Option<&Arc<RateLimit>>,
    ) -> Result<Option<Arc<RateLimit>>, ConfigError> {
        let local = local
            .map(|c| local::LocalRateLimit::compile(c, local_field, previous.and_then(|p| p.local.as_ref())))
            .transpose()?;
        let global = global.map(|c| global::GlobalRateLimit::compile(c, global_field)).transpose()?;
        if local.is_none() && global.is_none() {
            return Ok(None);
        }
        Ok(Some(Arc::new(RateLimit { local, global })))
    }

    /// The config's three: inbound, outbound and gateway.
    pub fn compile_all(
        config: &pb::ProxyConfig,
        previous: [Option<&Arc<RateLimit>>; 3],
    ) -> Result<[Option<Arc<RateLimit>>; 3], ConfigError> {
        let [inbound, outbound, gateway] = previous;
        Ok([
            RateLimit::compile(
                config.inbound_local_rate_limit.as_ref(),
                config.inbound_global_rate_limit.as_ref(),
                ("inbound_local_rate_limit", "inbound_global_rate_limit"),
                inbound,
            )?,
            RateLimit::compile(
                config.outbound_local_rate_limit.as_ref(),
                config.outbound_global_rate_limit.as_ref(),
                ("outbound_local_rate_limit", "outbound_global_rate_limit"),
                outbound,
            )?,
            RateLimit::compile(
                config.gateway_local_rate_limit.as_ref(),
                config.gateway_global_rate_limit.as_ref(),
                ("gateway_local_rate_limit", "gateway_global_rate_limit"),
                gateway,
            )?,
        ])
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
