//! Envoy's `local_ratelimit` on a workload's inbound requests: one token bucket, filled in steps
//! as Envoy's timer does (`tokens_per_fill` every `fill_interval`, never above `max_tokens`),
//! worked out when a request arrives instead of by a timer.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use trellis_xds::config as pb;

use crate::config::ConfigError;

/// A token bucket. Starts full.
#[derive(Debug)]
pub struct TokenBucket {
    max_tokens: u64,
    tokens_per_fill: u64,
    fill_interval: Duration,
    state: Mutex<BucketState>,
}

#[derive(Debug)]
struct BucketState {
    tokens: u64,
    /// When the last fill happened (a whole number of intervals after the bucket was made).
    last_fill: Instant,
}

impl TokenBucket {
    pub fn new(max_tokens: u64, tokens_per_fill: u64, fill_interval: Duration, now: Instant) -> TokenBucket {
        TokenBucket {
            max_tokens,
            tokens_per_fill,
            fill_interval,
            state: Mutex::new(BucketState { tokens: max_tokens, last_fill: now }),
        }
    }

    /// Takes a token if there is one.
    pub fn try_take(&self, now: Instant) -> bool {
        let Ok(mut state) = self.state.lock() else {
            // A panic while holding the lock: let requests through rather than refuse them all.
            return true;
        };
        let elapsed = now.saturating_duration_since(state.last_fill);
        let interval = self.fill_interval.as_nanos().max(1);
        let fills = elapsed.as_nanos() / interval;
        if fills > 0 {
            let added = u64::try_from(fills).unwrap_or(u64::MAX).saturating_mul(self.tokens_per_fill);
            state.tokens = state.tokens.saturating_add(added).min(self.max_tokens);
            let remainder = u64::try_from(elapsed.as_nanos() % interval).unwrap_or(0);
            state.last_fill = now - Duration::from_nanos(remainder);
        }
        if state.tokens == 0 {
            return false;
        }
        state.tokens -= 1;
        true
    }

    fn same_settings(&self, other: &TokenBucket) -> bool {
        self.max_tokens == other.max_tokens
            && self.tokens_per_fill == other.tokens_per_fill
            && self.fill_interval == other.fill_interval
    }
}

/// What the local limit decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Not looked at (outside `filter_enabled`), or under the limit.
    Allow,
    /// Over the limit but not enforced: counted, let through.
    Counted,
    /// Over the limit and enforced: refused with 429.
    Refuse,
}

/// The compiled `LocalRateLimit`.
#[derive(Debug)]
pub struct LocalRateLimit {
    pub stat_prefix: String,
    bucket: std::sync::Arc<TokenBucket>,
    /// Parts per million.
    enabled: u32,
    enforced: u32,
    pub response_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// The inbound ports it applies to; empty: all.
    ports: Vec<u16>,
}

const MILLION: u32 = 1_000_000;

impl LocalRateLimit {
    /// Compiles the settings; the bucket of `previous` is kept when its settings did not change,
    /// so that a config push does not hand out a fresh burst.
    pub fn compile(
        c: &pb::LocalRateLimit,
        field: &str,
        previous: Option<&LocalRateLimit>,
    ) -> Result<LocalRateLimit, ConfigError> {
        let err = |f: &str, message: String| ConfigError { field: format!("{field}.{f}"), message };
        let bucket = c.token_bucket.as_ref().ok_or_else(|| err("token_bucket", "required".into()))?;
        if bucket.max_tokens == 0 {
            return Err(err("token_bucket.max_tokens", "must be at least 1".into()));
        }
        if bucket.tokens_per_fill == 0 {
            return Err(err("token_bucket.tokens_per_fill", "must be at least 1".into()));
        }
        let interval_field = format!("{field}.token_bucket.fill_interval");
        let interval = crate::config::duration(bucket.fill_interval.as_ref(), &interval_field)?
            .filter(|d| !d.is_zero())
            .ok_or_else(|| err("token_bucket.fill_interval", "must be a positive duration".into()))?;
        let share = |value: f64, f: &str| {
            if !(0.0..=100.0).contains(&value) {
                return Err(err(f, format!("{value} is not a percentage (0-100)")));
            }
            Ok((value * f64::from(MILLION) / 100.0).round() as u32)
        };
        let enabled = share(c.enabled_percent, "enabled_percent")?;
        let enforced = share(c.enforced_percent, "enforced_percent")?;
        let mut response_headers = Vec::new();
        for (name, value) in &c.response_headers {
            let parsed_name = http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| err("response_headers", format!("{name:?} is not a header name")))?;
            let parsed_value = http::HeaderValue::from_str(value)
                .map_err(|_| err("response_headers", format!("the value of {name} is not a header value")))?;
            response_headers.push((parsed_name, parsed_value));
        }
        let ports = c
            .ports
            .iter()
            .enumerate()
            .map(|(i, &p)| crate::config::port(p, &format!("{field}.ports[{i}]")))
            .collect::<Result<Vec<u16>, _>>()?;
        let fresh = TokenBucket::new(
            u64::from(bucket.max_tokens),
            u64::from(bucket.tokens_per_fill),
            interval,
            Instant::now(),
        );
        let bucket = match previous {
            Some(p) if p.bucket.same_settings(&fresh) => p.bucket.clone(),
            _ => std::sync::Arc::new(fresh),
        };
        Ok(LocalRateLimit {
            stat_prefix: c.stat_prefix.clone(),
            bucket,
            enabled,
            enforced,
            response_headers,
            ports,
        })
    }

    /// Whether it applies to requests for the app's `port`.
    pub fn applies_to(&self, port: u16) -> bool {
        self.ports.is_empty() || self.ports.contains(&port)
    }

    /// Decides one request.
    pub fn decide(&self, now: Instant) -> Decision {
        if !draw(self.enabled) {
            return Decision::Allow;
        }
        if self.bucket.try_take(now) {
            return Decision::Allow;
        }
        if draw(self.enforced) { Decision::Refuse } else { Decision::Counted }
    }
}

/// True for a share of calls, in parts per million.
fn draw(share: u32) -> bool {
    match share {
        0 => false,
        MILLION.. => true,
        share => crate::with_fast_rng(|rng| rand::RngExt::random_range(rng, 0..MILLION)) < share,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_starts_full_and_fills_in_steps_up_to_max() {
        let start = Instant::now();
        let bucket = TokenBucket::new(3, 2, Duration::from_secs(1), start);
        assert!((0..3).all(|_| bucket.try_take(start)));
        assert!(!bucket.try_take(start));
        // Not yet a whole interval.
        assert!(!bucket.try_take(start + Duration::from_millis(999)));
        let one = start + Duration::from_millis(1500);
        assert!(bucket.try_take(one) && bucket.try_take(one));
        assert!(!bucket.try_take(one));
        // The next fill is at 2 s, not 2.5 s: the remainder is kept.
        assert!(bucket.try_take(start + Duration::from_millis(2000)));
        // A long quiet time fills only up to max_tokens.
        let later = start + Duration::from_secs(100);
        assert_eq!((0..10).filter(|_| bucket.try_take(later)).count(), 3);
    }

    fn settings(max: u32, enabled: f64, enforced: f64) -> pb::LocalRateLimit {
        pb::LocalRateLimit {
            stat_prefix: "http_local_rate_limiter".into(),
            token_bucket: Some(pb::TokenBucket {
                max_tokens: max,
                tokens_per_fill: 1,
                fill_interval: Some(pbjson_types::Duration { seconds: 60, nanos: 0 }),
            }),
            enabled_percent: enabled,
            enforced_percent: enforced,
            response_headers: Default::default(),
            ports: Vec::new(),
        }
    }

    #[test]
    fn enabled_and_enforced_shares() {
        let now = Instant::now();
        let off = LocalRateLimit::compile(&settings(1, 0.0, 100.0), "l", None).unwrap();
        assert!((0..10).all(|_| off.decide(now) == Decision::Allow));
        let count_only = LocalRateLimit::compile(&settings(1, 100.0, 0.0), "l", None).unwrap();
        assert_eq!(count_only.decide(now), Decision::Allow);
        assert!((0..10).all(|_| count_only.decide(now) == Decision::Counted));
        let enforced = LocalRateLimit::compile(&settings(1, 100.0, 100.0), "l", None).unwrap();
        assert_eq!(enforced.decide(now), Decision::Allow);
        assert_eq!(enforced.decide(now), Decision::Refuse);
    }

    #[test]
    fn a_push_with_the_same_settings_keeps_the_bucket() {
        let now = Instant::now();
        let first = LocalRateLimit::compile(&settings(1, 100.0, 100.0), "l", None).unwrap();
        assert_eq!(first.decide(now), Decision::Allow);
        let same = LocalRateLimit::compile(&settings(1, 100.0, 100.0), "l", Some(&first)).unwrap();
        assert_eq!(same.decide(now), Decision::Refuse);
        let changed = LocalRateLimit::compile(&settings(2, 100.0, 100.0), "l", Some(&same)).unwrap();
        assert_eq!(changed.decide(now), Decision::Allow);
    }

    #[test]
    fn bad_settings_name_the_field() {
        let mut s = settings(0, 100.0, 100.0);
        let e = LocalRateLimit::compile(&s, "inbound_local_rate_limit", None).unwrap_err();
        assert_eq!(e.field, "inbound_local_rate_limit.token_bucket.max_tokens");
        s = settings(1, 100.0, 100.0);
        s.token_bucket.as_mut().unwrap().fill_interval = Some(pbjson_types::Duration::default());
        let e = LocalRateLimit::compile(&s, "l", None).unwrap_err();
        assert_eq!(e.field, "l.token_bucket.fill_interval");
        s = settings(1, 101.0, 100.0);
        let e = LocalRateLimit::compile(&s, "l", None).unwrap_err();
        assert_eq!(e.field, "l.enabled_percent");
    }
}
