//! Fault injection (a VirtualService's `fault`): a fixed delay and an abort, each applied to a
//! share of the requests a route forwards, drawn on its own per request, as Envoy's fault
//! filter does (delay first, then abort). Routes without a fault pay one branch.

use std::time::Duration;

use http::{HeaderValue, Response, StatusCode};
use rand::RngExt;
use trellis_xds::config as pb;

use crate::config::ConfigError;
use crate::upstream::Body;

/// One route's faults.
#[derive(Debug, PartialEq)]
pub struct Fault {
    pub delay: Option<(Duration, Share)>,
    pub abort: Option<(Abort, Share)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Abort {
    Http(StatusCode),
    /// A gRPC status code (0-16), answered trailers-only.
    Grpc(u32),
}

/// A share of requests, in millionths (Envoy's finest fractional percent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share(u32);

const MILLION: u32 = 1_000_000;

impl Share {
    pub(crate) fn from_percent(percent: f64, field: &str) -> Result<Share, ConfigError> {
        if !(0.0..=100.0).contains(&percent) {
            return Err(ConfigError {
                field: field.to_owned(),
                message: format!("{percent} is not a percentage (0-100)"),
            });
        }
        Ok(Share((percent * 10_000.0).round() as u32))
    }

    /// Whether this request is in the share.
    pub(crate) fn draw(self) -> bool {
        match self.0 {
            0 => false,
            MILLION => true,
            share => crate::with_fast_rng(|rng| rng.random_range(0..MILLION)) < share,
        }
    }
}

/// What the fault does to one request.
pub struct Injected {
    pub delayed: bool,
    /// The answer that replaces forwarding, when the request is aborted.
    pub abort: Option<Response<Body>>,
}

impl Injected {
    /// The request's response flags: Envoy's `DI` (delayed), `FI` (aborted), or both.
    pub fn flags(&self) -> &'static str {
        match (self.delayed, self.abort.is_some()) {
            (true, true) => "DI,FI",
            (false, true) => "FI",
            (true, false) => "DI",
            (false, false) => "-",
        }
    }
}

impl Fault {
    /// `None` when the route has no fault.
    pub fn compile(f: Option<&pb::FaultInjection>, field: &str) -> Result<Option<Box<Fault>>, ConfigError> {
        let Some(f) = f else { return Ok(None) };
        let delay = match crate::config::duration(f.delay.as_ref(), &format!("{field}.delay"))? {
            Some(delay) => {
                Some((delay, Share::from_percent(f.delay_percent, &format!("{field}.delay_percent"))?))
            }
            None => None,
        };
        let abort = match f.abort {
            None => None,
            Some(pb::fault_injection::Abort::AbortHttpStatus(status)) => {
                let status = u16::try_from(status)
                    .ok()
                    .filter(|s| (200..=599).contains(s))
                    .and_then(|s| StatusCode::from_u16(s).ok())
                    .ok_or_else(|| ConfigError {
                        field: format!("{field}.abort_http_status"),
                        message: format!("{status} is not an HTTP status (200-599)"),
                    })?;
                Some(Abort::Http(status))
            }
            Some(pb::fault_injection::Abort::AbortGrpcStatus(code)) => {
                if code > 16 {
                    return Err(ConfigError {
                        field: format!("{field}.abort_grpc_status"),
                        message: format!("{code} is not a gRPC status (0-16)"),
                    });
                }
                Some(Abort::Grpc(code))
            }
        };
        let abort = match abort {
            Some(abort) => {
                Some((abort, Share::from_percent(f.abort_percent, &format!("{field}.abort_percent"))?))
            }
            None => None,
        };
        if delay.is_none() && abort.is_none() {
            return Ok(None);
        }
        Ok(Some(Box::new(Fault { delay, abort })))
    }

    /// Draws this request's faults, waits out the delay, and builds the abort's answer.
    pub async fn inject(&self) -> Injected {
        let mut delayed = false;
        if let Some((delay, share)) = self.delay
            && share.draw()
        {
            tokio::time::sleep(delay).await;
            delayed = true;
        }
        let abort = match self.abort {
            Some((abort, share)) if share.draw() => Some(abort_response(abort)),
            _ => None,
        };
        Injected { delayed, abort }
    }
}

fn abort_response(abort: Abort) -> Response<Body> {
    match abort {
        Abort::Http(status) => crate::forward::text(status, "fault filter abort"),
        Abort::Grpc(code) => {
            let mut response = Response::new(crate::forward::full(bytes::Bytes::new()));
            let headers = response.headers_mut();
            headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            headers.insert(&crate::headers::GRPC_STATUS, HeaderValue::from(code));
            headers.insert("grpc-message", HeaderValue::from_static("fault filter abort"));
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(f: pb::FaultInjection) -> Result<Option<Box<Fault>>, ConfigError> {
        Fault::compile(Some(&f), "route.fault")
    }

    #[test]
    fn bad_values_name_their_field() {
        let delay = Some(Duration::from_millis(5).into());
        for (f, field) in [
            (
                pb::FaultInjection { delay, delay_percent: 100.5, ..Default::default() },
                "route.fault.delay_percent",
            ),
            (
                pb::FaultInjection { delay, delay_percent: -1.0, ..Default::default() },
                "route.fault.delay_percent",
            ),
            (
                pb::FaultInjection { delay, delay_percent: f64::NAN, ..Default::default() },
                "route.fault.delay_percent",
            ),
            (
                pb::FaultInjection {
                    abort: Some(pb::fault_injection::Abort::AbortHttpStatus(600)),
                    ..Default::default()
                },
                "route.fault.abort_http_status",
            ),
            (
                pb::FaultInjection {
                    abort: Some(pb::fault_injection::Abort::AbortHttpStatus(100)),
                    ..Default::default()
                },
                "route.fault.abort_http_status",
            ),
            (
                pb::FaultInjection {
                    abort: Some(pb::fault_injection::Abort::AbortGrpcStatus(17)),
                    ..Default::default()
                },
                "route.fault.abort_grpc_status",
            ),
        ] {
            assert_eq!(fault(f).unwrap_err().field, field);
        }
        assert_eq!(fault(pb::FaultInjection::default()).unwrap(), None, "nothing to inject");
    }

    #[test]
    fn shares_are_exact_at_the_ends() {
        assert!((0..1000).all(|_| Share::from_percent(100.0, "x").unwrap().draw()));
        assert!((0..1000).all(|_| !Share::from_percent(0.0, "x").unwrap().draw()));
        assert_eq!(Share::from_percent(0.0001, "x").unwrap(), Share(1));
    }
}
