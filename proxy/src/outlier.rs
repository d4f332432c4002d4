//! Outlier detection: passive health checking of a cluster's endpoints, with Envoy's semantics.
//!
//! Each answer (or local-origin failure) of an endpoint is reported here. Consecutive-error
//! counters live in atomics, so a report is a few atomic operations; reaching a threshold
//! (rare) takes the detector's lock and decides on an ejection: only while
//! `(ejected + 1) / endpoints` stays at or under `max_ejection_percent`, as Envoy does. The n-th
//! ejection in a row lasts `n * base_ejection_time` (capped at `max_ejection_time`), and the
//! multiplier goes down by one for each `interval` the endpoint stays healthy. Ejected endpoints
//! come back at the first interval tick after their time has passed. Ticks are computed lazily
//! (when something looks at the detector after one is due), so no timer task runs per cluster.
//!
//! With nothing ejected, a pick costs one atomic load more than without a detector.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::balance::{Balancer, Picked};

/// Envoy's defaults.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_BASE_EJECTION_TIME: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_EJECTION_TIME: Duration = Duration::from_secs(300);
pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;

/// A cluster's outlier detection settings, defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutlierPolicy {
    /// 0: not checked (likewise below).
    pub consecutive_5xx: u32,
    pub consecutive_gateway: u32,
    pub consecutive_local_origin: u32,
    /// Local-origin failures are counted apart from the answers.
    pub split_local_origin: bool,
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    /// 0..=100.
    pub max_ejection_percent: u32,
    /// 0..=100; 0: no panic mode.
    pub min_health_percent: u32,
}

/// What one exchange with an endpoint came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observed {
    /// The endpoint answered with this status.
    Status(u16),
    /// A TCP connection was made (the whole exchange, for opaque TCP).
    Connected,
    /// The connection could not be made, or broke (reset) before an answer.
    ConnectFailed,
    /// No answer in time.
    Timeout,
}

/// Why an endpoint was ejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    Consecutive5xx,
    ConsecutiveGatewayErrors,
    ConsecutiveLocalOriginFailures,
}

impl Reason {
    pub fn label(self) -> &'static str {
        match self {
            Reason::Consecutive5xx => "consecutive_5xx",
            Reason::ConsecutiveGatewayErrors => "consecutive_gateway_failure",
            Reason::ConsecutiveLocalOriginFailures => "consecutive_local_origin_failure",
        }
    }
}

/// What a report led to, for the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Ejected(Reason),
    /// A threshold was reached but `max_ejection_percent` did not allow the ejection.
    Overflow(Reason),
}

/// The counters of one endpoint, touched on every report.
#[derive(Default)]
struct Counters {
    five_xx: AtomicU32,
    gateway: AtomicU32,
    local_origin: AtomicU32,
    ejected: AtomicBool,
}

/// What only ejection decisions and ticks touch (under the lock). Times are milliseconds since
/// the detector's epoch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct History {
    /// Ejections in total, for the admin page.
    ejections: u64,
    /// The multiplier of the base ejection time for the next ejection, minus one.
    backoff: u32,
    ejected_at: Option<u64>,
    unejected_at: Option<u64>,
}

struct State {
    /// The last interval tick processed.
    last_tick: u64,
    history: Vec<History>,
}

/// The detector of one cluster; endpoint indexes are the balancer's.
pub struct Detector {
    policy: OutlierPolicy,
    addrs: Vec<SocketAddr>,
    counters: Vec<Counters>,
    /// Endpoints ejected now.
    ejected: AtomicUsize,
    /// When the next tick is due (ms since `epoch`).
    next_tick: AtomicU64,
    epoch: Instant,
    state: Mutex<State>,
    enforced: AtomicU64,
    overflows: AtomicU64,
}

/// What picks must leave out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Excluded {
    /// Nothing is ejected.
    Nothing,
    /// Fewer healthy endpoints than `min_health_percent`: every endpoint is used.
    Panic,
    /// These endpoints, ascending.
    These(Vec<usize>),
}

/// One endpoint as the admin page shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointHealth {
    pub ejected: bool,
    pub ejections: u64,
}

impl Detector {
    /// A detector for `addrs` (the balancer's targets, in order). State of an address the
    /// `previous` detector (the cluster's before a configuration change) knew is carried over.
    pub fn new(policy: OutlierPolicy, addrs: Vec<SocketAddr>, previous: Option<&Detector>) -> Detector {
        let interval_ms = millis(policy.interval).max(1);
        let counters: Vec<Counters> = addrs.iter().map(|_| Counters::default()).collect();
        let mut history = vec![History::default(); addrs.len()];
        let (epoch, last_tick) = match previous {
            Some(old) => {
                let old_state = old.state.lock().unwrap_or_else(|e| e.into_inner());
                for (i, addr) in addrs.iter().enumerate() {
                    let Some(j) = old.addrs.iter().position(|a| a == addr) else { continue };
                    history[i] = old_state.history[j].clone();
                    let (from, to) = (&old.counters[j], &counters[i]);
                    for (a, b) in [
                        (&from.five_xx, &to.five_xx),
                        (&from.gateway, &to.gateway),
                        (&from.local_origin, &to.local_origin),
                    ] {
                        b.store(a.load(Ordering::Relaxed), Ordering::Relaxed);
                    }
                    to.ejected.store(from.ejected.load(Ordering::Acquire), Ordering::Release);
                }
                (old.epoch, old_state.last_tick)
            }
            None => (Instant::now(), 0),
        };
        let ejected = counters.iter().filter(|c| c.ejected.load(Ordering::Relaxed)).count();
        let (enforced, overflows) = previous.map_or((0, 0), |old| {
            (old.enforced.load(Ordering::Relaxed), old.overflows.load(Ordering::Relaxed))
        });
        Detector {
            next_tick: AtomicU64::new(last_tick + interval_ms),
            policy,
            addrs,
            counters,
            ejected: AtomicUsize::new(ejected),
            epoch,
            state: Mutex::new(State { last_tick, history }),
            enforced: AtomicU64::new(enforced),
            overflows: AtomicU64::new(overflows),
        }
    }

    pub fn policy(&self) -> &OutlierPolicy {
        &self.policy
    }

    fn now(&self) -> u64 {
        millis(self.epoch.elapsed())
    }

    /// Picks an endpoint that is not ejected, unless the cluster is in panic (fewer healthy
    /// endpoints than `min_health_percent`), when every endpoint may be picked. `None` when
    /// every endpoint is ejected and there is no panic mode.
    pub fn pick<'b>(
        &self,
        balancer: &'b Balancer,
        hash: Option<u64>,
        avoid: Option<usize>,
    ) -> Option<Picked<'b>> {
        match self.excluded() {
            Excluded::Nothing | Excluded::Panic => balancer.pick(hash, avoid),
            Excluded::These(excluded) => balancer.pick_excluding(hash, avoid, &excluded),
        }
    }

    /// What picks must leave out now. With nothing ejected, one atomic load.
    pub fn excluded(&self) -> Excluded {
        if self.ejected.load(Ordering::Acquire) == 0 {
            return Excluded::Nothing;
        }
        self.tick_if_due(self.now());
        let excluded: Vec<usize> = self
            .counters
            .iter()
            .enumerate()
            .filter(|(_, c)| c.ejected.load(Ordering::Acquire))
            .map(|(i, _)| i)
            .collect();
        if excluded.is_empty() {
            Excluded::Nothing
        } else if self.in_panic(excluded.len()) {
            Excluded::Panic
        } else {
            Excluded::These(excluded)
        }
    }

    /// Whether `ejected` endpoints out of all leave fewer healthy than `min_health_percent`.
    fn in_panic(&self, ejected: usize) -> bool {
        let total = self.addrs.len() as u64;
        let healthy = total.saturating_sub(ejected as u64);
        healthy * 100 < u64::from(self.policy.min_health_percent) * total
    }

    /// Records what an exchange with endpoint `index` came to; says when it led to an ejection
    /// (or to one refused by `max_ejection_percent`).
    pub fn report(&self, index: usize, observed: Observed) -> Option<Verdict> {
        let counters = self.counters.get(index)?;
        let p = &self.policy;
        let status = match observed {
            Observed::Status(status) => {
                if p.split_local_origin {
                    counters.local_origin.store(0, Ordering::Relaxed);
                }
                status
            }
            Observed::Connected => {
                if p.split_local_origin {
                    counters.local_origin.store(0, Ordering::Relaxed);
                }
                200
            }
            Observed::ConnectFailed | Observed::Timeout if p.split_local_origin => {
                return self.count(
                    index,
                    &counters.local_origin,
                    p.consecutive_local_origin,
                    Reason::ConsecutiveLocalOriginFailures,
                );
            }
            Observed::ConnectFailed => 503,
            Observed::Timeout => 504,
        };
        if !(500..600).contains(&status) {
            counters.five_xx.store(0, Ordering::Relaxed);
            counters.gateway.store(0, Ordering::Relaxed);
            return None;
        }
        let gateway = if matches!(status, 502..=504) {
            self.count(index, &counters.gateway, p.consecutive_gateway, Reason::ConsecutiveGatewayErrors)
        } else {
            counters.gateway.store(0, Ordering::Relaxed);
            None
        };
        let five_xx = self.count(index, &counters.five_xx, p.consecutive_5xx, Reason::Consecutive5xx);
        gateway.or(five_xx)
    }

    /// One more consecutive error on `counter`; at the threshold, an ejection is considered.
    fn count(&self, index: usize, counter: &AtomicU32, threshold: u32, reason: Reason) -> Option<Verdict> {
        let reached = counter.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        if threshold == 0 || reached != threshold {
            return None;
        }
        self.consider_ejection(index, counter, reason)
    }

    fn consider_ejection(&self, index: usize, counter: &AtomicU32, reason: Reason) -> Option<Verdict> {
        let now = self.now();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.tick(&mut state, now);
        let counters = &self.counters[index];
        // Already out: the counter keeps counting (it is reset when the endpoint returns).
        if counters.ejected.load(Ordering::Acquire) {
            return None;
        }
        counter.store(0, Ordering::Relaxed);
        let total = self.addrs.len() as u64;
        let ejected = self.ejected.load(Ordering::Acquire) as u64;
        if 100 * (ejected + 1) > u64::from(self.policy.max_ejection_percent) * total {
            self.overflows.fetch_add(1, Ordering::Relaxed);
            return Some(Verdict::Overflow(reason));
        }
        let (base, max) = (millis(self.policy.base_ejection_time), millis(self.policy.max_ejection_time));
        let history = &mut state.history[index];
        history.ejections += 1;
        history.ejected_at = Some(now);
        if u64::from(history.backoff).saturating_mul(base) < max.saturating_add(base) {
            history.backoff += 1;
        }
        counters.ejected.store(true, Ordering::Release);
        self.ejected.fetch_add(1, Ordering::AcqRel);
        self.enforced.fetch_add(1, Ordering::Relaxed);
        tracing::info!(endpoint = %self.addrs[index], reason = reason.label(), ejections = history.ejections, "outlier ejected");
        Some(Verdict::Ejected(reason))
    }

    fn tick_if_due(&self, now: u64) {
        if now >= self.next_tick.load(Ordering::Acquire) {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            self.tick(&mut state, now);
        }
    }

    /// Processes the interval ticks up to `now`: returns endpoints whose ejection time has
    /// passed (at the first tick after it), and lowers the backoff of those healthy for an
    /// interval, tick by tick, as Envoy's interval timer would have.
    fn tick(&self, state: &mut State, now: u64) {
        let interval = millis(self.policy.interval).max(1);
        let current = now / interval * interval;
        if current <= state.last_tick {
            return;
        }
        let (base, max) = (millis(self.policy.base_ejection_time), millis(self.policy.max_ejection_time));
        let last = state.last_tick;
        for (history, counters) in state.history.iter_mut().zip(&self.counters) {
            if counters.ejected.load(Ordering::Acquire) {
                let Some(at) = history.ejected_at else { continue };
                let lasts = u64::from(history.backoff).saturating_mul(base).min(max);
                let back = (at.saturating_add(lasts)).div_ceil(interval).saturating_mul(interval);
                if back <= current {
                    counters.five_xx.store(0, Ordering::Relaxed);
                    counters.gateway.store(0, Ordering::Relaxed);
                    counters.local_origin.store(0, Ordering::Relaxed);
                    counters.ejected.store(false, Ordering::Release);
                    self.ejected.fetch_sub(1, Ordering::AcqRel);
                    history.unejected_at = Some(back);
                }
            }
            if !counters.ejected.load(Ordering::Acquire)
                && let Some(back) = history.unejected_at
            {
                // Ticks after `last`, at least an interval after the return.
                let first = (last + interval).max(back.div_ceil(interval) * interval + interval);
                if first <= current {
                    let ticks = (current - first) / interval + 1;
                    history.backoff =
                        history.backoff.saturating_sub(u32::try_from(ticks).unwrap_or(u32::MAX));
                }
            }
        }
        state.last_tick = current;
        self.next_tick.store(current + interval, Ordering::Release);
    }

    /// Brings ejections up to date (for the admin page).
    pub fn refresh(&self) {
        self.tick_if_due(self.now());
    }

    pub fn health(&self) -> Vec<EndpointHealth> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state
            .history
            .iter()
            .zip(&self.counters)
            .map(|(h, c)| EndpointHealth {
                ejected: c.ejected.load(Ordering::Acquire),
                ejections: h.ejections,
            })
            .collect()
    }

    pub fn ejected_now(&self) -> usize {
        self.ejected.load(Ordering::Acquire)
    }

    /// Ejections made, and ejections refused by `max_ejection_percent`.
    pub fn totals(&self) -> (u64, u64) {
        (self.enforced.load(Ordering::Relaxed), self.overflows.load(Ordering::Relaxed))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::{Policy, Target};

    fn policy() -> OutlierPolicy {
        OutlierPolicy {
            consecutive_5xx: 3,
            consecutive_gateway: 0,
            consecutive_local_origin: 0,
            split_local_origin: false,
            interval: Duration::from_millis(10),
            base_ejection_time: Duration::from_millis(100),
            max_ejection_time: Duration::from_millis(250),
            max_ejection_percent: 100,
            min_health_percent: 0,
        }
    }

    fn addrs(n: u8) -> Vec<SocketAddr> {
        (0..n).map(|i| SocketAddr::from(([10, 0, 0, i + 1], 80))).collect()
    }

    fn balancer(n: u8) -> Balancer {
        Balancer::new(
            Policy::RoundRobin,
            addrs(n).into_iter().map(|addr| Target { addr, weight: 1, mesh_tls: false }).collect(),
        )
    }

    /// Runs the lazy ticks as if `ms` had passed since the epoch.
    fn at(d: &Detector, ms: u64) {
        let mut state = d.state.lock().unwrap();
        d.tick(&mut state, ms);
    }

    #[test]
    fn the_threshold_ejects_and_a_success_resets_the_count() {
        let d = Detector::new(policy(), addrs(2), None);
        assert_eq!(d.report(0, Observed::Status(500)), None);
        assert_eq!(d.report(0, Observed::Status(500)), None);
        assert_eq!(d.report(0, Observed::Status(200)), None, "a success starts the count again");
        assert_eq!(d.report(0, Observed::Status(500)), None);
        assert_eq!(d.report(0, Observed::Status(404)), None, "4xx is a success here");
        for _ in 0..2 {
            assert_eq!(d.report(0, Observed::Status(503)), None);
        }
        assert_eq!(d.report(0, Observed::Status(503)), Some(Verdict::Ejected(Reason::Consecutive5xx)));
        assert_eq!(d.ejected_now(), 1);
        assert!(d.health()[0].ejected && !d.health()[1].ejected);
        // Picks avoid it.
        let b = balancer(2);
        for _ in 0..10 {
            assert_eq!(d.pick(&b, None, None).map(|p| p.index()), Some(1));
        }
    }

    #[test]
    fn gateway_errors_count_only_502_to_504() {
        let p = OutlierPolicy { consecutive_5xx: 0, consecutive_gateway: 2, ..policy() };
        let d = Detector::new(p, addrs(1), None);
        assert_eq!(d.report(0, Observed::Status(502)), None);
        assert_eq!(d.report(0, Observed::Status(500)), None, "500 is not a gateway error");
        assert_eq!(d.report(0, Observed::Status(504)), None);
        assert_eq!(d.report(0, Observed::Timeout), Some(Verdict::Ejected(Reason::ConsecutiveGatewayErrors)));
    }

    #[test]
    fn local_origin_failures_count_as_5xx_unless_split() {
        let d = Detector::new(policy(), addrs(1), None);
        d.report(0, Observed::ConnectFailed);
        d.report(0, Observed::Timeout);
        assert_eq!(d.report(0, Observed::ConnectFailed), Some(Verdict::Ejected(Reason::Consecutive5xx)));

        let split = OutlierPolicy { split_local_origin: true, consecutive_local_origin: 2, ..policy() };
        let d = Detector::new(split, addrs(1), None);
        d.report(0, Observed::ConnectFailed);
        d.report(0, Observed::Status(500));
        d.report(0, Observed::Status(500));
        assert_eq!(d.ejected_now(), 0, "an answer resets the local-origin count; two 5xx are under 3");
        assert_eq!(d.report(0, Observed::Timeout), None);
        assert_eq!(
            d.report(0, Observed::ConnectFailed),
            Some(Verdict::Ejected(Reason::ConsecutiveLocalOriginFailures))
        );
    }

    #[test]
    fn max_ejection_percent_follows_envoys_rule() {
        // 50% of 4: two ejections; the third is refused.
        let d = Detector::new(OutlierPolicy { max_ejection_percent: 50, ..policy() }, addrs(4), None);
        let mut verdicts = Vec::new();
        for i in 0..4 {
            for _ in 0..3 {
                if let Some(v) = d.report(i, Observed::Status(500)) {
                    verdicts.push(v);
                }
            }
        }
        assert_eq!(d.ejected_now(), 2);
        assert_eq!(verdicts.iter().filter(|v| matches!(v, Verdict::Overflow(_))).count(), 2);
        // The default 10% of 4 ejects none: (0 + 1) / 4 is 25%.
        let d = Detector::new(OutlierPolicy { max_ejection_percent: 10, ..policy() }, addrs(4), None);
        for _ in 0..3 {
            d.report(0, Observed::Status(500));
        }
        assert_eq!(d.ejected_now(), 0);
        assert_eq!(d.totals(), (0, 1));
    }

    #[test]
    fn ejection_time_grows_with_each_ejection_up_to_the_cap_and_decays() {
        let d = Detector::new(policy(), addrs(2), None);
        let eject = |at_ms: u64| {
            // Ejections happen "now"; place them by moving the epoch instead.
            let mut state = d.state.lock().unwrap();
            d.tick(&mut state, at_ms);
            drop(state);
            for _ in 0..3 {
                d.report(0, Observed::Status(500));
            }
            let mut state = d.state.lock().unwrap();
            state.history[0].ejected_at = Some(at_ms);
        };
        let back_after = |from: u64| {
            let mut t = from;
            while d.health()[0].ejected {
                t += 10;
                at(&d, t);
                assert!(t < from + 10_000);
            }
            d.state.lock().unwrap().history[0].unejected_at.unwrap() - from
        };
        eject(1000);
        assert_eq!(back_after(1000), 100, "first ejection: the base time");
        // Failing again right after its return (before an interval passes healthy).
        eject(1105);
        assert_eq!(back_after(1105), 205, "second in a row: twice the base (to the next tick)");
        eject(1315);
        assert_eq!(back_after(1315), 255, "third: capped at the maximum");
        assert_eq!(d.health()[0].ejections, 3);
        // Healthy for many intervals: the multiplier decays back to 1.
        at(&d, 5000);
        eject(5000);
        assert_eq!(back_after(5000), 100);
    }

    #[test]
    fn panic_mode_uses_every_endpoint() {
        let d = Detector::new(OutlierPolicy { min_health_percent: 60, ..policy() }, addrs(2), None);
        for _ in 0..3 {
            d.report(0, Observed::Status(500));
        }
        assert_eq!(d.ejected_now(), 1);
        let b = balancer(2);
        let picks: Vec<usize> = (0..10).filter_map(|_| d.pick(&b, None, None).map(|p| p.index())).collect();
        assert!(picks.contains(&0) && picks.contains(&1), "50% healthy < 60%: both used: {picks:?}");
        // Without panic mode, every endpoint ejected means none to pick.
        let d = Detector::new(policy(), addrs(1), None);
        for _ in 0..3 {
            d.report(0, Observed::Status(500));
        }
        assert!(d.pick(&balancer(1), None, None).is_none());
    }

    #[test]
    fn state_carries_over_by_address() {
        let old = Detector::new(policy(), addrs(2), None);
        for _ in 0..3 {
            old.report(1, Observed::Status(500));
        }
        old.report(0, Observed::Status(500));
        // The endpoints in another order, and a new one.
        let mut moved = addrs(3);
        moved.swap(0, 1);
        let new = Detector::new(policy(), moved, Some(&old));
        let health = new.health();
        assert!(health[0].ejected && !health[1].ejected && !health[2].ejected);
        assert_eq!(new.ejected_now(), 1);
        assert_eq!(new.health()[0].ejections, 1);
        new.report(1, Observed::Status(500));
        assert_eq!(new.report(1, Observed::Status(500)), Some(Verdict::Ejected(Reason::Consecutive5xx)));
    }
}
