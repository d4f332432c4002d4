//! Retry budgets (beyond Istio; Linkerd's and Finagle's): retries to a cluster are limited to a
//! share of its recent requests, so that a failing service deep in a call chain does not see
//! its load multiplied by every hop's retries. Also `maxRetries`, Envoy's cap on the retries in
//! flight to a cluster at once.
//!
//! The budget is a token bucket over a sliding window of `ttl`, kept in ten slots: each request
//! deposits `retry_ratio` tokens into the current slot, each retry withdraws one, and a retry is
//! allowed while the live slots' balance plus a reserve of `min_retries_per_second` × `ttl`
//! tokens holds a whole token. A slot older than the window counts nothing, so deposits (and
//! withdrawals) expire after `ttl` (to within a tenth of it). Tokens are counted in thousandths,
//! as Finagle does.
//!
//! A request pays one compare-and-swap on its slot's packed word (no lock, no allocation);
//! only a retry reads the other slots.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use trellis_xds::config as pb;

use crate::config::ConfigError;

/// Slots the window is divided into.
const SLOTS: usize = 10;
/// A token, in thousandths.
const TOKEN: i64 = 1000;
/// Linkerd's (and Finagle's) default window.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);
const MIN_TTL: Duration = Duration::from_secs(1);
const MAX_TTL: Duration = Duration::from_secs(60);
const MAX_RATIO: f64 = 1000.0;

// A slot is one word: the tick it belongs to (28 bits, wrapping: a slot left untouched for
// exactly 2^28 ticks, 310 days at the shortest window, would count once more), then requests
// and retries in that tick (18 bits each, saturating: 262,143 per tenth of the window).
const COUNT_BITS: u32 = 18;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;
const EPOCH_BITS: u32 = 64 - 2 * COUNT_BITS;
const EPOCH_MASK: u64 = (1 << EPOCH_BITS) - 1;

fn pack(epoch: u64, requests: u64, retries: u64) -> u64 {
    (epoch & EPOCH_MASK) << (2 * COUNT_BITS) | requests << COUNT_BITS | retries
}

fn unpack(word: u64) -> (u64, u64, u64) {
    (word >> (2 * COUNT_BITS), (word >> COUNT_BITS) & COUNT_MAX, word & COUNT_MAX)
}

/// A budget's settings, as configured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetPolicy {
    pub retry_ratio: f64,
    pub min_retries_per_second: u32,
    pub ttl: Duration,
}

impl BudgetPolicy {
    /// `None` when the cluster has no budget; out-of-range values are refused, naming the field.
    pub fn compile(b: Option<&pb::RetryBudget>, field: &str) -> Result<Option<BudgetPolicy>, ConfigError> {
        let Some(b) = b else { return Ok(None) };
        if !(0.0..=MAX_RATIO).contains(&b.retry_ratio) {
            return Err(ConfigError {
                field: format!("{field}.retry_ratio"),
                message: format!("{} is not a ratio between 0 and {MAX_RATIO}", b.retry_ratio),
            });
        }
        let ttl = crate::config::duration(b.ttl.as_ref(), &format!("{field}.ttl"))?.unwrap_or(DEFAULT_TTL);
        if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
            return Err(ConfigError {
                field: format!("{field}.ttl"),
                message: format!("{ttl:?} is not between 1s and 60s"),
            });
        }
        Ok(Some(BudgetPolicy {
            retry_ratio: b.retry_ratio,
            min_retries_per_second: b.min_retries_per_second,
            ttl,
        }))
    }
}

/// One cluster's retry budget.
#[derive(Debug)]
pub struct RetryBudget {
    pub policy: BudgetPolicy,
    /// Thousandths of a token each request deposits.
    deposit: i64,
    /// Thousandths of a token always available in the window.
    reserve: i64,
    origin: Instant,
    slot_nanos: u128,
    slots: [AtomicU64; SLOTS],
}

impl RetryBudget {
    pub fn new(policy: BudgetPolicy) -> RetryBudget {
        RetryBudget::starting_at(policy, Instant::now())
    }

    fn starting_at(policy: BudgetPolicy, origin: Instant) -> RetryBudget {
        let window_millis = policy.ttl.as_millis().min(MAX_TTL.as_millis()) as i64;
        RetryBudget {
            deposit: (policy.retry_ratio * TOKEN as f64).round() as i64,
            // Per second of the window: min × ttl tokens, in thousandths.
            reserve: i64::from(policy.min_retries_per_second) * window_millis,
            origin,
            slot_nanos: (policy.ttl.as_nanos() / SLOTS as u128).max(1),
            slots: Default::default(),
            policy,
        }
    }

    fn tick(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.origin).as_nanos() / self.slot_nanos) as u64
    }

    /// A request to the cluster: its share of a retry.
    #[inline]
    pub fn deposit(&self, now: Instant) {
        let tick = self.tick(now);
        let epoch = tick & EPOCH_MASK;
        let slot = &self.slots[tick as usize % SLOTS];
        let _ = slot.fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
            let (e, requests, retries) = unpack(word);
            match e == epoch {
                true if requests == COUNT_MAX => None,
                true => Some(pack(epoch, requests + 1, retries)),
                false => Some(pack(epoch, 1, 0)),
            }
        });
    }

    /// Takes one token for a retry, if the window (with the reserve) has one.
    pub fn try_withdraw(&self, now: Instant) -> bool {
        let tick = self.tick(now);
        let epoch = tick & EPOCH_MASK;
        let current = tick as usize % SLOTS;
        let live = |e: u64| epoch.wrapping_sub(e) & EPOCH_MASK < SLOTS as u64;
        let value = |requests: u64, retries: u64| requests as i64 * self.deposit - retries as i64 * TOKEN;
        let others: i64 = self
            .slots
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != current)
            .map(|(_, slot)| unpack(slot.load(Ordering::Acquire)))
            .filter(|(e, _, _)| live(*e))
            .map(|(_, requests, retries)| value(requests, retries))
            .sum();
        // Decided on the current slot's word: concurrent retries cannot both take the last token.
        self.slots[current]
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
                let (e, requests, retries) = unpack(word);
                let (requests, retries) = if e == epoch { (requests, retries) } else { (0, 0) };
                let balance = self.reserve + others + value(requests, retries);
                (balance >= TOKEN && retries < COUNT_MAX).then(|| pack(epoch, requests, retries + 1))
            })
            .is_ok()
    }

    /// Whole tokens available now (for the admin page).
    pub fn balance(&self, now: Instant) -> i64 {
        let epoch = self.tick(now) & EPOCH_MASK;
        let live: i64 = self
            .slots
            .iter()
            .map(|slot| unpack(slot.load(Ordering::Acquire)))
            .filter(|(e, _, _)| epoch.wrapping_sub(*e) & EPOCH_MASK < SLOTS as u64)
            .map(|(_, requests, retries)| requests as i64 * self.deposit - retries as i64 * TOKEN)
            .sum();
        (self.reserve + live) / TOKEN
    }
}

/// Why a retry was not made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The cluster's retry budget is spent.
    Budget,
    /// `maxRetries` retries are in flight already.
    MaxRetries,
}

impl Refused {
    pub fn label(self) -> &'static str {
        match self {
            Refused::Budget => "retry_budget",
            Refused::MaxRetries => "max_retries",
        }
    }
}

/// Retries in flight to a cluster, under `maxRetries` (0: no limit).
#[derive(Debug, Default)]
pub struct RetryLimit {
    max: u32,
    in_flight: AtomicU32,
}

/// A retry's place under `maxRetries`, given back when dropped.
#[derive(Debug)]
pub struct RetryPermit<'a>(Option<&'a AtomicU32>);

impl Drop for RetryPermit<'_> {
    fn drop(&mut self) {
        if let Some(count) = self.0 {
            count.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl RetryLimit {
    pub fn new(max: u32) -> RetryLimit {
        RetryLimit { max, in_flight: AtomicU32::new(0) }
    }

    /// A place for one more retry, unless `max` are in flight.
    pub fn try_acquire(&self) -> Option<RetryPermit<'_>> {
        if self.max == 0 {
            return Some(RetryPermit(None));
        }
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max).then_some(n + 1))
            .ok()
            .map(|_| RetryPermit(Some(&self.in_flight)))
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(ratio: f64, min: u32, ttl_secs: u64) -> (RetryBudget, Instant) {
        let origin = Instant::now();
        let policy = BudgetPolicy {
            retry_ratio: ratio,
            min_retries_per_second: min,
            ttl: Duration::from_secs(ttl_secs),
        };
        (RetryBudget::starting_at(policy, origin), origin)
    }

    fn withdrawals(budget: &RetryBudget, at: Instant, tries: usize) -> usize {
        (0..tries).filter(|_| budget.try_withdraw(at)).count()
    }

    #[test]
    fn each_request_buys_its_ratio_of_a_retry() {
        let (b, t0) = budget(0.2, 0, 10);
        assert_eq!(withdrawals(&b, t0, 10), 0, "no requests, no reserve: no retries");
        for _ in 0..100 {
            b.deposit(t0);
        }
        assert_eq!(withdrawals(&b, t0, 100), 20, "100 requests at 20% pay for exactly 20 retries");
        for _ in 0..4 {
            b.deposit(t0);
        }
        assert_eq!(withdrawals(&b, t0, 1), 0, "four fifths of a token is not a token");
        b.deposit(t0);
        assert_eq!(withdrawals(&b, t0, 5), 1);
        // A ratio above 1: each request pays for several retries.
        let (b, t0) = budget(2.5, 0, 10);
        b.deposit(t0);
        b.deposit(t0);
        assert_eq!(withdrawals(&b, t0, 10), 5);
    }

    #[test]
    fn the_reserve_is_min_per_second_times_the_window() {
        let (b, t0) = budget(0.2, 10, 10);
        assert_eq!(b.balance(t0), 100);
        assert_eq!(withdrawals(&b, t0, 1000), 100, "10 per second over 10 s, with no requests");
        // Spent withdrawals leave the window too: the reserve comes back after the ttl.
        assert_eq!(withdrawals(&b, t0 + Duration::from_secs(5), 10), 0);
        assert_eq!(withdrawals(&b, t0 + Duration::from_secs(10), 1000), 100);
        // A zero ratio: only the reserve.
        let (b, t0) = budget(0.0, 1, 3);
        for _ in 0..1000 {
            b.deposit(t0);
        }
        assert_eq!(withdrawals(&b, t0, 10), 3);
    }

    #[test]
    fn deposits_expire_after_the_ttl() {
        let (b, t0) = budget(1.0, 0, 10);
        for _ in 0..10 {
            b.deposit(t0);
        }
        assert_eq!(b.balance(t0 + Duration::from_millis(9_500)), 10, "still in the window");
        assert_eq!(b.balance(t0 + Duration::from_secs(10)), 0, "gone once the window has passed");
        assert_eq!(withdrawals(&b, t0 + Duration::from_secs(11), 1), 0);
        // Deposits across the window: only the last ttl's count.
        let (b, t0) = budget(1.0, 0, 10);
        for second in 0..20 {
            b.deposit(t0 + Duration::from_secs(second));
        }
        assert_eq!(b.balance(t0 + Duration::from_secs(19)), 10);
    }

    #[test]
    fn concurrent_retries_never_overdraw() {
        let (b, t0) = budget(0.0, 25, 4);
        let b = std::sync::Arc::new(b);
        let taken: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8).map(|_| s.spawn(|| withdrawals(&b, t0, 200))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(taken, 100, "exactly the reserve, however the threads interleave");
    }

    #[test]
    fn counts_saturate_instead_of_spilling_into_the_next_field() {
        let (b, t0) = budget(1.0, 0, 10);
        for _ in 0..COUNT_MAX + 10 {
            b.deposit(t0);
        }
        let (_, requests, retries) = unpack(b.slots[0].load(Ordering::Relaxed));
        assert_eq!((requests, retries), (COUNT_MAX, 0));
    }

    #[test]
    fn bad_settings_name_their_field() {
        let compile = |retry_ratio: f64, ttl: u64| {
            let b = pb::RetryBudget {
                retry_ratio,
                min_retries_per_second: 10,
                ttl: Some(Duration::from_secs(ttl).into()),
            };
            BudgetPolicy::compile(Some(&b), "clusters[0].retry_budget").map_err(|e| e.field)
        };
        assert_eq!(compile(-0.1, 10).unwrap_err(), "clusters[0].retry_budget.retry_ratio");
        assert_eq!(compile(f64::NAN, 10).unwrap_err(), "clusters[0].retry_budget.retry_ratio");
        assert_eq!(compile(1000.5, 10).unwrap_err(), "clusters[0].retry_budget.retry_ratio");
        assert_eq!(compile(0.2, 61).unwrap_err(), "clusters[0].retry_budget.ttl");
        assert!(compile(0.2, 1).is_ok() && compile(0.0, 60).is_ok());
        let unset_ttl = pb::RetryBudget { retry_ratio: 0.2, ..Default::default() };
        assert_eq!(BudgetPolicy::compile(Some(&unset_ttl), "x").unwrap().map(|p| p.ttl), Some(DEFAULT_TTL));
        assert_eq!(BudgetPolicy::compile(None, "x"), Ok(None));
    }

    #[test]
    fn max_retries_caps_retries_in_flight() {
        let limit = RetryLimit::new(2);
        let first = limit.try_acquire().expect("one");
        let second = limit.try_acquire().expect("two");
        assert!(limit.try_acquire().is_none(), "a third is refused while two are in flight");
        drop(first);
        assert_eq!(limit.in_flight(), 1);
        let third = limit.try_acquire().expect("a place came free");
        drop((second, third));
        assert_eq!(limit.in_flight(), 0);
        let unlimited = RetryLimit::new(0);
        let permits: Vec<_> = (0..10_000).map(|_| unlimited.try_acquire().expect("no limit")).collect();
        assert_eq!((permits.len(), unlimited.in_flight()), (10_000, 0), "0 means no limit, and no counting");
    }
}
