//! `trellisd`'s Prometheus metrics, served on 15014 with `/debug/syncz`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use trellis_xds::types::ResourceType;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConfigErrorLabels {
    pub source: &'static str,
    pub kind: String,
}

pub struct XdsMetrics {
    pub connected: Gauge,
    pub pushes: Family<TypeLabel, Counter>,
    pub push_latency: Histogram,
    pub nacks: Family<TypeLabel, Counter>,
    pub sent_bytes: Counter,
    pub config_errors: Family<ConfigErrorLabels, Counter>,
}

impl XdsMetrics {
    pub fn new(registry: &mut Registry) -> XdsMetrics {
        let metrics = XdsMetrics {
            connected: Gauge::default(),
            pushes: Family::default(),
            // 1 ms to ~16 s: from a change in the model to the proxy's push being sent.
            push_latency: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.001, 2.0, 15,
            )),
            nacks: Family::default(),
            sent_bytes: Counter::default(),
            config_errors: Family::default(),
        };
        registry.register(
            "trellisd_xds_connected_proxies",
            "Proxies with an open xDS stream",
            metrics.connected.clone(),
        );
        registry.register("trellisd_xds_pushes", "Responses sent, by resource type", metrics.pushes.clone());
        registry.register(
            "trellisd_xds_push_latency_seconds",
            "Time from a config change to a proxy's push being sent",
            metrics.push_latency.clone(),
        );
        registry.register(
            "trellisd_xds_nacks",
            "Responses proxies rejected, by resource type",
            metrics.nacks.clone(),
        );
        registry.register(
            "trellisd_xds_sent_bytes",
            "Encoded size of the responses sent",
            metrics.sent_bytes.clone(),
        );
        registry.register(
            "trellisd_config_errors",
            "Config objects rejected, by source and kind",
            metrics.config_errors.clone(),
        );
        metrics
    }

    pub fn pushed(&self, kind: ResourceType) {
        self.pushes.get_or_create(&TypeLabel { r#type: kind.short_name() }).inc();
    }

    pub fn nack(&self, kind: ResourceType) {
        self.nacks.get_or_create(&TypeLabel { r#type: kind.short_name() }).inc();
    }

    pub fn config_error(&self, source: &'static str, kind: &str) {
        let kind = if kind.is_empty() { "unknown".to_owned() } else { kind.to_owned() };
        self.config_errors.get_or_create(&ConfigErrorLabels { source, kind }).inc();
    }
}
