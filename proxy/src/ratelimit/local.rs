//! Envoy's `local_ratelimit` (on inbound, outbound or gateway requests): token buckets filled in
//! steps as Envoy's timer does (`tokens_per_fill` every `fill_interval`, never above
//! `max_tokens`), worked out when a request arrives instead of by a timer. A default bucket, and
//! Envoy's `descriptors`: buckets of their own for the requests whose descriptors (made by the
//! route's `rate_limits`) match one.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use trellis_xds::config as pb;

use super::descriptors::{Descriptor, Rules, VirtualHostRules};
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
        self.settings() == other.settings()
    }

    fn settings(&self) -> Settings {
        Settings {
            max_tokens: self.max_tokens,
            tokens_per_fill: self.tokens_per_fill,
            fill_interval: self.fill_interval,
        }
    }
}

/// A bucket's settings, from which buckets are made.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Settings {
    max_tokens: u64,
    tokens_per_fill: u64,
    fill_interval: Duration,
}

impl Settings {
    fn compile(bucket: &pb::TokenBucket, field: &str) -> Result<Settings, ConfigError> {
        let err =
            |f: &str, message: &str| ConfigError { field: format!("{field}.{f}"), message: message.into() };
        if bucket.max_tokens == 0 {
            return Err(err("max_tokens", "must be at least 1"));
        }
        if bucket.tokens_per_fill == 0 {
            return Err(err("tokens_per_fill", "must be at least 1"));
        }
        let interval_field = format!("{field}.fill_interval");
        let fill_interval = crate::config::duration(bucket.fill_interval.as_ref(), &interval_field)?
            .filter(|d| !d.is_zero())
            .ok_or_else(|| err("fill_interval", "must be a positive duration"))?;
        Ok(Settings {
            max_tokens: u64::from(bucket.max_tokens),
            tokens_per_fill: u64::from(bucket.tokens_per_fill),
            fill_interval,
        })
    }

    fn bucket(&self, now: Instant) -> TokenBucket {
        TokenBucket::new(self.max_tokens, self.tokens_per_fill, self.fill_interval, now)
    }

    /// Tokens per second: the order in which matching descriptors are taken from.
    fn fill_rate(&self) -> f64 {
        self.tokens_per_fill as f64 / self.fill_interval.as_secs_f64()
    }
}

/// Envoy's default for `max_dynamic_descriptors`.
const DEFAULT_DYNAMIC_DESCRIPTORS: usize = 20;

/// One configured descriptor and its bucket(s).
#[derive(Debug)]
struct DescriptorLimit {
    entries: Vec<(String, String)>,
    settings: Settings,
    buckets: DescriptorBuckets,
}

#[derive(Debug)]
enum DescriptorBuckets {
    /// Entries with values: one bucket.
    One(Arc<TokenBucket>),
    /// An entry with an empty value (a wildcard): a bucket per request descriptor seen.
    PerValue(Arc<Mutex<PerValue>>),
}

impl DescriptorLimit {
    /// Whether a request descriptor matches: the same keys in the same order, and the same values
    /// where this one has a value.
    fn matches(&self, descriptor: &Descriptor) -> bool {
        self.entries.len() == descriptor.len()
            && self
                .entries
                .iter()
                .zip(descriptor)
                .all(|((key, value), (k, v))| key == k && (value.is_empty() || value == v))
    }

    fn bucket_for(&self, descriptor: &Descriptor, now: Instant) -> Arc<TokenBucket> {
        match &self.buckets {
            DescriptorBuckets::One(bucket) => bucket.clone(),
            DescriptorBuckets::PerValue(per_value) => match per_value.lock() {
                Ok(mut per_value) => per_value.bucket(descriptor, self.settings, now),
                // A panic while holding the lock: a fresh bucket, rather than refusing.
                Err(_) => Arc::new(self.settings.bucket(now)),
            },
        }
    }
}

/// The buckets of a wildcard descriptor, at most `capacity`, the least recently used forgotten
/// first (as Envoy's LRU), so that a client sending ever new values cannot grow them.
#[derive(Debug)]
struct PerValue {
    capacity: usize,
    buckets: HashMap<Descriptor, (Arc<TokenBucket>, u64)>,
    /// Last use -> descriptor.
    order: BTreeMap<u64, Descriptor>,
    clock: u64,
}

impl PerValue {
    fn new(capacity: usize) -> PerValue {
        PerValue { capacity, buckets: HashMap::new(), order: BTreeMap::new(), clock: 0 }
    }

    fn bucket(&mut self, descriptor: &Descriptor, settings: Settings, now: Instant) -> Arc<TokenBucket> {
        self.clock += 1;
        let clock = self.clock;
        if let Some((bucket, used)) = self.buckets.get_mut(descriptor) {
            self.order.remove(used);
            *used = clock;
            self.order.insert(clock, descriptor.clone());
            return bucket.clone();
        }
        while self.buckets.len() >= self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else { break };
            self.buckets.remove(&oldest);
        }
        let bucket = Arc::new(settings.bucket(now));
        self.buckets.insert(descriptor.clone(), (bucket.clone(), clock));
        self.order.insert(clock, descriptor.clone());
        bucket
    }
}

/// A local limit's configured descriptors.
#[derive(Debug, Default)]
struct Descriptors {
    list: Vec<DescriptorLimit>,
    /// The descriptors without a wildcard, by their entries (an index into `list`), and those
    /// with one, in order: a request descriptor is looked up, not compared with each.
    verbatim: HashMap<Descriptor, usize>,
    wildcards: Vec<usize>,
}

impl Descriptors {
    /// Compiles `c.descriptors`; the buckets of `previous` are kept for a descriptor whose
    /// entries and bucket settings did not change.
    fn compile(
        c: &pb::LocalRateLimit,
        field: &str,
        previous: Option<&Descriptors>,
        now: Instant,
    ) -> Result<Descriptors, ConfigError> {
        let err = |f: &str, message: String| ConfigError { field: format!("{field}.{f}"), message };
        let capacity = match c.max_dynamic_descriptors {
            0 => DEFAULT_DYNAMIC_DESCRIPTORS,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        };
        let mut descriptors: Vec<DescriptorLimit> = Vec::with_capacity(c.descriptors.len());
        let (mut verbatim, mut wildcards) = (HashMap::new(), Vec::<usize>::new());
        for (i, d) in c.descriptors.iter().enumerate() {
            let f = format!("descriptors[{i}]");
            if d.entries.is_empty() {
                return Err(err(&format!("{f}.entries"), "at least one entry is required".into()));
            }
            let mut entries = Vec::with_capacity(d.entries.len());
            for (j, e) in d.entries.iter().enumerate() {
                if e.key.is_empty() {
                    return Err(err(&format!("{f}.entries[{j}].key"), "required".into()));
                }
                entries.push((e.key.clone(), e.value.clone()));
            }
            let wildcard = entries.iter().any(|(_, value)| value.is_empty());
            let duplicate = if wildcard {
                wildcards.iter().any(|&w| descriptors[w].entries == entries)
            } else {
                verbatim.contains_key(&entries)
            };
            if duplicate {
                return Err(err(&f, "the same entries as an earlier descriptor".into()));
            }
            let b = d
                .token_bucket
                .as_ref()
                .ok_or_else(|| err(&format!("{f}.token_bucket"), "required".into()))?;
            let settings = Settings::compile(b, &format!("{field}.{f}.token_bucket"))?;
            let kept = previous
                .and_then(|p| p.find(&entries, wildcard))
                .filter(|o| o.settings == settings)
                .map(|o| &o.buckets);
            let buckets = match (wildcard, kept) {
                (false, Some(DescriptorBuckets::One(b))) => DescriptorBuckets::One(b.clone()),
                (false, _) => DescriptorBuckets::One(Arc::new(settings.bucket(now))),
                (true, Some(DescriptorBuckets::PerValue(p)))
                    if p.lock().is_ok_and(|p| p.capacity == capacity) =>
                {
                    DescriptorBuckets::PerValue(p.clone())
                }
                (true, _) => DescriptorBuckets::PerValue(Arc::new(Mutex::new(PerValue::new(capacity)))),
            };
            if wildcard {
                wildcards.push(descriptors.len());
            } else {
                verbatim.insert(entries.clone(), descriptors.len());
            }
            descriptors.push(DescriptorLimit { entries, settings, buckets });
        }
        Ok(Descriptors { list: descriptors, verbatim, wildcards })
    }

    /// The configured descriptor with exactly these entries.
    fn find(&self, entries: &Descriptor, wildcard: bool) -> Option<&DescriptorLimit> {
        if wildcard {
            self.wildcards.iter().map(|&w| &self.list[w]).find(|d| d.entries == *entries)
        } else {
            self.verbatim.get(entries).map(|&i| &self.list[i])
        }
    }

    /// The configured descriptor a request descriptor counts against: a verbatim match wins over
    /// a wildcard one, as in Envoy.
    fn matching(&self, descriptor: &Descriptor) -> Option<&DescriptorLimit> {
        self.find(descriptor, false)
            .or_else(|| self.wildcards.iter().map(|&w| &self.list[w]).find(|d| d.matches(descriptor)))
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
    /// The default bucket; without one, requests that match no descriptor pass.
    bucket: Option<Arc<TokenBucket>>,
    descriptors: Descriptors,
    /// What makes a request's descriptors; looked at only when there are descriptors.
    rules: Rules,
    virtual_host_rules: VirtualHostRules,
    /// The default bucket is taken from only by requests that match no descriptor.
    default_unmatched_only: bool,
    /// Parts per million.
    enabled: u32,
    enforced: u32,
    pub response_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// The ports it applies to (the app's, the service's or the gateway listener's); empty: all.
    ports: Vec<u16>,
}

const MILLION: u32 = 1_000_000;

impl LocalRateLimit {
    /// Compiles the settings; the buckets of `previous` are kept when their settings did not
    /// change, so that a config push does not hand out a fresh burst.
    pub fn compile(
        c: &pb::LocalRateLimit,
        field: &str,
        previous: Option<&LocalRateLimit>,
    ) -> Result<LocalRateLimit, ConfigError> {
        let err = |f: &str, message: String| ConfigError { field: format!("{field}.{f}"), message };
        if c.token_bucket.is_none() && c.descriptors.is_empty() {
            return Err(err("token_bucket", "required (there are no descriptors)".into()));
        }
        let now = Instant::now();
        let bucket = match &c.token_bucket {
            None => None,
            Some(b) => {
                let fresh = Settings::compile(b, &format!("{field}.token_bucket"))?.bucket(now);
                Some(match previous.and_then(|p| p.bucket.as_ref()) {
                    Some(p) if p.same_settings(&fresh) => p.clone(),
                    _ => Arc::new(fresh),
                })
            }
        };
        let descriptors = Descriptors::compile(c, field, previous.map(|p| &p.descriptors), now)?;
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
        Ok(LocalRateLimit {
            stat_prefix: c.stat_prefix.clone(),
            bucket,
            descriptors,
            rules: Rules::compile(&c.rules, field)?,
            virtual_host_rules: VirtualHostRules::of(c.virtual_host_rate_limits),
            default_unmatched_only: c.default_bucket_unmatched_only,
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

    /// Decides one request to the app's `port` from `remote`.
    pub fn decide<B>(&self, request: &http::Request<B>, port: u16, remote: IpAddr, now: Instant) -> Decision {
        if !draw(self.enabled) {
            return Decision::Allow;
        }
        if self.take(request, port, remote, now) {
            return Decision::Allow;
        }
        if draw(self.enforced) { Decision::Refuse } else { Decision::Counted }
    }

    /// Takes a token from each bucket the request counts against, as Envoy does: every matching
    /// descriptor's, the slowest-filling first, stopping at the first that is empty (so that a
    /// refused request does not spend the others'); then the default bucket's, unless a
    /// descriptor matched and the default is kept for the unmatched.
    fn take<B>(&self, request: &http::Request<B>, port: u16, remote: IpAddr, now: Instant) -> bool {
        let mut matched: Vec<(f64, Arc<TokenBucket>)> = Vec::new();
        if !self.descriptors.list.is_empty() {
            for descriptor in self.rules.descriptors(request, port, remote, self.virtual_host_rules) {
                if let Some(limit) = self.descriptors.matching(&descriptor) {
                    matched.push((limit.settings.fill_rate(), limit.bucket_for(&descriptor, now)));
                }
            }
            matched.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        if !matched.iter().all(|(_, bucket)| bucket.try_take(now)) {
            return false;
        }
        if matched.is_empty() || !self.default_unmatched_only {
            return self.bucket.as_ref().is_none_or(|b| b.try_take(now));
        }
        true
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
            ..Default::default()
        }
    }

    /// Decides a request to port 80 from 10.0.0.1.
    fn decide(limit: &LocalRateLimit, path: &str, now: Instant) -> Decision {
        let request = http::Request::get(path).body(()).unwrap();
        limit.decide(&request, 80, "10.0.0.1".parse().unwrap(), now)
    }

    #[test]
    fn enabled_and_enforced_shares() {
        let now = Instant::now();
        let off = LocalRateLimit::compile(&settings(1, 0.0, 100.0), "l", None).unwrap();
        assert!((0..10).all(|_| decide(&off, "/", now) == Decision::Allow));
        let count_only = LocalRateLimit::compile(&settings(1, 100.0, 0.0), "l", None).unwrap();
        assert_eq!(decide(&count_only, "/", now), Decision::Allow);
        assert!((0..10).all(|_| decide(&count_only, "/", now) == Decision::Counted));
        let enforced = LocalRateLimit::compile(&settings(1, 100.0, 100.0), "l", None).unwrap();
        assert_eq!(decide(&enforced, "/", now), Decision::Allow);
        assert_eq!(decide(&enforced, "/", now), Decision::Refuse);
    }

    #[test]
    fn a_push_with_the_same_settings_keeps_the_bucket() {
        let now = Instant::now();
        let first = LocalRateLimit::compile(&settings(1, 100.0, 100.0), "l", None).unwrap();
        assert_eq!(decide(&first, "/", now), Decision::Allow);
        let same = LocalRateLimit::compile(&settings(1, 100.0, 100.0), "l", Some(&first)).unwrap();
        assert_eq!(decide(&same, "/", now), Decision::Refuse);
        let changed = LocalRateLimit::compile(&settings(2, 100.0, 100.0), "l", Some(&same)).unwrap();
        assert_eq!(decide(&changed, "/", now), Decision::Allow);
    }

    fn bucket(max: u32, per_fill: u32, seconds: i64) -> Option<pb::TokenBucket> {
        Some(pb::TokenBucket {
            max_tokens: max,
            tokens_per_fill: per_fill,
            fill_interval: Some(pbjson_types::Duration { seconds, nanos: 0 }),
        })
    }

    fn descriptor(
        entries: &[(&str, &str)],
        max: u32,
        per_fill: u32,
        seconds: i64,
    ) -> pb::LocalRateLimitDescriptor {
        pb::LocalRateLimitDescriptor {
            entries: entries
                .iter()
                .map(|(k, v)| pb::LocalRateLimitDescriptorEntry { key: (*k).into(), value: (*v).into() })
                .collect(),
            token_bucket: bucket(max, per_fill, seconds),
        }
    }

    /// `PATH` from `:path`, and `client` from `x-client` when present.
    fn with_descriptors(
        default: Option<u32>,
        descriptors: Vec<pb::LocalRateLimitDescriptor>,
    ) -> pb::LocalRateLimit {
        use pb::rate_limit_action::Action as A;
        let header = |name: &str, key: &str| pb::RateLimitDescriptorRule {
            actions: vec![pb::RateLimitAction {
                action: Some(A::RequestHeaders(pb::RequestHeadersAction {
                    header_name: name.into(),
                    descriptor_key: key.into(),
                    skip_if_absent: false,
                })),
            }],
            ..Default::default()
        };
        pb::LocalRateLimit {
            token_bucket: default.and_then(|max| bucket(max, 1, 3600)),
            descriptors,
            rules: vec![header(":path", "PATH"), header("x-client", "client")],
            ..settings(1, 100.0, 100.0)
        }
    }

    #[test]
    fn a_matching_descriptor_takes_from_its_bucket_and_the_default_one() {
        let now = Instant::now();
        let c = with_descriptors(Some(3), vec![descriptor(&[("PATH", "/slow")], 1, 1, 3600)]);
        let limit = LocalRateLimit::compile(&c, "l", None).unwrap();
        assert_eq!(decide(&limit, "/slow", now), Decision::Allow);
        // Its own bucket is empty; the default one still has 2.
        assert_eq!(decide(&limit, "/slow", now), Decision::Refuse);
        // Others take from the default bucket only: the matched request took one of its 3.
        assert_eq!(decide(&limit, "/fast", now), Decision::Allow);
        assert_eq!(decide(&limit, "/fast", now), Decision::Allow);
        assert_eq!(decide(&limit, "/fast", now), Decision::Refuse);
    }

    #[test]
    fn the_default_bucket_can_be_kept_for_requests_that_match_nothing() {
        let now = Instant::now();
        let mut c = with_descriptors(Some(1), vec![descriptor(&[("PATH", "/busy")], 3, 1, 3600)]);
        c.default_bucket_unmatched_only = true;
        let limit = LocalRateLimit::compile(&c, "l", None).unwrap();
        assert!((0..3).all(|_| decide(&limit, "/busy", now) == Decision::Allow));
        assert_eq!(decide(&limit, "/busy", now), Decision::Refuse);
        assert_eq!(decide(&limit, "/other", now), Decision::Allow);
        assert_eq!(decide(&limit, "/other", now), Decision::Refuse);
        // Without a default bucket, what matches nothing passes.
        let c = with_descriptors(None, vec![descriptor(&[("PATH", "/busy")], 1, 1, 3600)]);
        let limit = LocalRateLimit::compile(&c, "l", None).unwrap();
        assert_eq!(decide(&limit, "/busy", now), Decision::Allow);
        assert_eq!(decide(&limit, "/busy", now), Decision::Refuse);
        assert!((0..10).all(|_| decide(&limit, "/other", now) == Decision::Allow));
    }

    #[test]
    fn a_wildcard_descriptor_gives_each_value_its_own_bucket_and_forgets_the_oldest() {
        let now = Instant::now();
        let mut c = with_descriptors(None, vec![descriptor(&[("client", "")], 1, 1, 3600)]);
        c.max_dynamic_descriptors = 2;
        let limit = LocalRateLimit::compile(&c, "l", None).unwrap();
        let from = |client: &str| {
            let request = http::Request::get("/").header("x-client", client).body(()).unwrap();
            limit.decide(&request, 80, "10.0.0.1".parse().unwrap(), now)
        };
        assert_eq!(from("a"), Decision::Allow);
        assert_eq!(from("a"), Decision::Refuse);
        assert_eq!(from("b"), Decision::Allow);
        assert_eq!(from("b"), Decision::Refuse);
        // A third value: "a", the least recently used, is forgotten, and starts afresh.
        assert_eq!(from("c"), Decision::Allow);
        assert_eq!(from("a"), Decision::Allow);
        // No x-client header: no descriptor, and no default bucket.
        assert_eq!(decide(&limit, "/", now), Decision::Allow);
    }

    #[test]
    fn the_slowest_filling_matching_bucket_is_taken_from_first() {
        let now = Instant::now();
        // The request matches both; the per-hour one fills slower and refuses first, so the
        // per-second one keeps its token.
        let c = with_descriptors(
            None,
            vec![descriptor(&[("client", "a")], 5, 5, 1), descriptor(&[("PATH", "/")], 1, 1, 3600)],
        );
        let limit = LocalRateLimit::compile(&c, "l", None).unwrap();
        let request = http::Request::get("/").header("x-client", "a").body(()).unwrap();
        let remote = "10.0.0.1".parse().unwrap();
        assert_eq!(limit.decide(&request, 80, remote, now), Decision::Allow);
        assert!((0..5).all(|_| limit.decide(&request, 80, remote, now) == Decision::Refuse));
        let only_client = http::Request::get("/other").header("x-client", "a").body(()).unwrap();
        assert!((0..4).all(|_| limit.decide(&only_client, 80, remote, now) == Decision::Allow));
        assert_eq!(limit.decide(&only_client, 80, remote, now), Decision::Refuse);
    }

    #[test]
    fn a_push_with_the_same_descriptors_keeps_their_buckets() {
        let now = Instant::now();
        let c = with_descriptors(None, vec![descriptor(&[("PATH", "/a")], 1, 1, 3600)]);
        let first = LocalRateLimit::compile(&c, "l", None).unwrap();
        assert_eq!(decide(&first, "/a", now), Decision::Allow);
        let same = LocalRateLimit::compile(&c, "l", Some(&first)).unwrap();
        assert_eq!(decide(&same, "/a", now), Decision::Refuse);
        let changed = with_descriptors(None, vec![descriptor(&[("PATH", "/a")], 2, 1, 3600)]);
        let changed = LocalRateLimit::compile(&changed, "l", Some(&same)).unwrap();
        assert_eq!(decide(&changed, "/a", now), Decision::Allow);
    }

    #[test]
    fn bad_descriptors_name_the_field() {
        let cases = [
            (with_descriptors(None, vec![descriptor(&[], 1, 1, 1)]), "l.descriptors[0].entries"),
            (
                with_descriptors(None, vec![descriptor(&[("", "x")], 1, 1, 1)]),
                "l.descriptors[0].entries[0].key",
            ),
            (
                with_descriptors(None, vec![descriptor(&[("k", "v")], 0, 1, 1)]),
                "l.descriptors[0].token_bucket.max_tokens",
            ),
            (
                with_descriptors(None, vec![descriptor(&[("k", "v")], 1, 1, 0)]),
                "l.descriptors[0].token_bucket.fill_interval",
            ),
            (
                with_descriptors(
                    None,
                    vec![descriptor(&[("k", "v")], 1, 1, 1), descriptor(&[("k", "v")], 2, 1, 1)],
                ),
                "l.descriptors[1]",
            ),
            (with_descriptors(None, vec![]), "l.token_bucket"),
        ];
        for (c, field) in cases {
            assert_eq!(LocalRateLimit::compile(&c, "l", None).unwrap_err().field, field);
        }
        let mut c = with_descriptors(None, vec![descriptor(&[("k", "v")], 1, 1, 1)]);
        c.descriptors[0].token_bucket = None;
        assert_eq!(
            LocalRateLimit::compile(&c, "l", None).unwrap_err().field,
            "l.descriptors[0].token_bucket"
        );
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
