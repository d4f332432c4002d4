//! Retry policies: a route's own, else the mesh's `defaultHttpRetryPolicy`, else Istio's
//! default. As in Istio, a policy with zero attempts means no retries.

use std::fmt::Display;

use tracing::warn;
use trellis_api::mesh::MeshConfig;
use trellis_api::networking::HttpRetry;
use trellis_api::primitives::GoDuration;
use trellis_xds::config as pb;

use super::values::duration;

/// Istio retries every route twice unless told otherwise; an empty `retry_on` is Istio's
/// default condition set, which the proxy applies itself.
const ISTIO_DEFAULT_ATTEMPTS: u32 = 2;

/// Conditions the proxy implements; Envoy knows a few more that it would refuse.
const CONDITIONS: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "refused-stream",
    "retriable-4xx",
    "retriable-status-codes",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// The policy of routes that set none.
pub fn route_default(mesh: &MeshConfig) -> Option<pb::RetryPolicy> {
    match &mesh.default_http_retry_policy {
        None => Some(pb::RetryPolicy { attempts: ISTIO_DEFAULT_ATTEMPTS, ..Default::default() }),
        Some(policy) => convert(
            policy.attempts.unwrap_or(0),
            policy.per_try_timeout.as_ref(),
            policy.retry_on.as_deref().unwrap_or_default(),
            &"MeshConfig",
            "defaultHttpRetryPolicy",
        ),
    }
}

/// A route's policy: its own when it has one, else `default`.
pub fn for_route(
    retries: Option<&HttpRetry>,
    default: Option<&pb::RetryPolicy>,
    source: &dyn Display,
    field: &str,
) -> Option<pb::RetryPolicy> {
    match retries {
        Some(r) => convert(r.attempts, r.per_try_timeout.as_ref(), &r.retry_on, source, field),
        None => default.cloned(),
    }
}

fn convert(
    attempts: i32,
    per_try_timeout: Option<&GoDuration>,
    retry_on: &str,
    source: &dyn Display,
    field: &str,
) -> Option<pb::RetryPolicy> {
    let attempts = u32::try_from(attempts).ok().filter(|a| *a > 0)?;
    let retry_on = retry_on
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .filter(|c| {
            let known = CONDITIONS.contains(c) || c.parse::<u16>().is_ok_and(|code| (100..600).contains(&code));
            if !known {
                warn!(resource = %source, field = %format!("{field}.retryOn"), condition = c, "retry condition the proxy does not implement, dropped");
            }
            known
        })
        .map(str::to_owned)
        .collect();
    Some(pb::RetryPolicy {
        attempts,
        per_try_timeout: duration(per_try_timeout, source, &format!("{field}.perTryTimeout")).map(Into::into),
        retry_on,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn retry(attempts: i32, per_try: Option<&str>, retry_on: &str) -> HttpRetry {
        HttpRetry {
            attempts,
            per_try_timeout: per_try.map(GoDuration::from),
            retry_on: retry_on.into(),
            ..Default::default()
        }
    }

    #[test]
    fn route_policies_convert_and_zero_attempts_disable() {
        let default = route_default(&MeshConfig::default());
        assert_eq!(default.as_ref().map(|d| d.attempts), Some(2), "Istio retries twice by default");
        let own = for_route(Some(&retry(3, Some("2s"), "5xx, 503 ,sometimes")), default.as_ref(), &"vs", "f");
        let own = own.unwrap();
        assert_eq!(own.attempts, 3);
        assert_eq!(own.retry_on, ["5xx", "503"], "unknown conditions are dropped");
        assert_eq!(own.per_try_timeout, Some(Duration::from_secs(2).into()));
        assert_eq!(for_route(Some(&retry(0, None, "")), default.as_ref(), &"vs", "f"), None);
        assert_eq!(for_route(None, default.as_ref(), &"vs", "f"), default);
    }

    #[test]
    fn the_mesh_default_replaces_istios() {
        let (mesh, _) =
            MeshConfig::from_yaml("defaultHttpRetryPolicy: {attempts: 5, retryOn: gateway-error}").unwrap();
        let policy = route_default(&mesh).unwrap();
        assert_eq!((policy.attempts, policy.retry_on), (5, vec!["gateway-error".to_owned()]));
        let (mesh, _) = MeshConfig::from_yaml("defaultHttpRetryPolicy: {retryOn: 5xx}").unwrap();
        assert_eq!(route_default(&mesh), None, "unset attempts are zero, as in Istio's proto");
    }
}
