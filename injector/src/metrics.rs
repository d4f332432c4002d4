//! The injector's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::decision::SkipReason;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

pub struct Metrics {
    registry: Registry,
    requests: Counter,
    bad_requests: Counter,
    injections: Counter,
    skips: Family<ReasonLabel, Counter>,
    denials: Counter,
    latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("trellis_injector");
        let requests = Counter::default();
        let bad_requests = Counter::default();
        let injections = Counter::default();
        let skips = Family::<ReasonLabel, Counter>::default();
        let denials = Counter::default();
        // 50µs to 1s: an injection takes well under a millisecond; the tail shows trouble.
        let latency =
            Histogram::new([0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0]);
        registry.register("requests", "Admission requests received", requests.clone());
        registry.register(
            "bad_requests",
            "Requests answered 4xx (malformed, wrong type, too large)",
            bad_requests.clone(),
        );
        registry.register("injections", "Pods injected", injections.clone());
        registry.register("skips", "Pods left alone, by reason", skips.clone());
        registry.register("denials", "Admissions denied (invalid annotations, conflicts)", denials.clone());
        registry.register("request_duration_seconds", "Time to answer an admission request", latency.clone());
        for reason in SkipReason::ALL {
            // Present every reason from the start so rates work before the first skip.
            drop(skips.get_or_create(&ReasonLabel { reason: reason.as_str() }));
        }
        Metrics { registry, requests, bad_requests, injections, skips, denials, latency }
    }
}

impl Metrics {
    pub fn request(&self) {
        self.requests.inc();
    }

    pub fn bad_request(&self) {
        self.bad_requests.inc();
    }

    pub fn injected(&self) {
        self.injections.inc();
    }

    pub fn skipped(&self, reason: SkipReason) {
        self.skips.get_or_create(&ReasonLabel { reason: reason.as_str() }).inc();
    }

    pub fn denied(&self) {
        self.denials.inc();
    }

    pub fn observe_latency(&self, seconds: f64) {
        self.latency.observe(seconds);
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
