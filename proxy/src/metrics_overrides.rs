//! The Telemetry API's metric overrides (`ProxyConfig.metrics_overrides`), applied when a
//! series is made — never per request: a metric turned off gets a handle that no family holds
//! (counted, never rendered), a label changed or removed is set in the series' label set once
//! (removed = empty, which Prometheus reads as no label). Series whose labels become equal share
//! one, as they would in Envoy. Without overrides, nothing here runs.

use std::sync::Arc;

use trellis_xds::config as pb;

use crate::metrics::{Peers, RequestLabels, TcpLabels};

/// Istio's standard metrics the proxy counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StandardMetric {
    RequestCount,
    RequestDuration,
    RequestSize,
    ResponseSize,
    TcpOpened,
    TcpClosed,
    TcpSent,
    TcpReceived,
}

const COUNT: usize = 8;

impl StandardMetric {
    fn index(self) -> usize {
        self as usize
    }

    fn from_pb(metric: pb::TelemetryMetric) -> Option<StandardMetric> {
        use pb::TelemetryMetric as M;
        Some(match metric {
            M::RequestCount => StandardMetric::RequestCount,
            M::RequestDuration => StandardMetric::RequestDuration,
            M::RequestSize => StandardMetric::RequestSize,
            M::ResponseSize => StandardMetric::ResponseSize,
            M::TcpOpenedConnections => StandardMetric::TcpOpened,
            M::TcpClosedConnections => StandardMetric::TcpClosed,
            M::TcpSentBytes => StandardMetric::TcpSent,
            M::TcpReceivedBytes => StandardMetric::TcpReceived,
            M::Unspecified => return None,
        })
    }
}

/// What becomes of one metric on one side.
#[derive(Clone, Debug, Default, PartialEq)]
struct Rule {
    disabled: bool,
    /// Label name → the new value (`None`: removed).
    tags: Vec<(String, Option<Arc<str>>)>,
}

/// The overrides of one proxy, compiled from its config.
#[derive(Debug, PartialEq)]
pub struct MetricOverrides {
    all_disabled: bool,
    /// Indexed by [`StandardMetric`]; outbound (`reporter="source"`) then inbound.
    client: [Option<Rule>; COUNT],
    server: [Option<Rule>; COUNT],
}

impl MetricOverrides {
    /// `None` when the config changes nothing.
    pub fn from_pb(config: Option<&pb::TelemetryMetricsOverrides>) -> Option<MetricOverrides> {
        let config = config?;
        let side = |list: &[pb::TelemetryMetricOverride]| {
            let mut rules: [Option<Rule>; COUNT] = Default::default();
            for o in list {
                // An unknown value (a newer control plane) changes nothing.
                let Some(metric) =
                    pb::TelemetryMetric::try_from(o.metric).ok().and_then(StandardMetric::from_pb)
                else {
                    continue;
                };
                let tags = o
                    .tags
                    .iter()
                    .map(|t| (t.name.clone(), (!t.remove).then(|| Arc::from(t.value.as_str()))))
                    .collect();
                rules[metric.index()] = Some(Rule { disabled: o.disabled, tags });
            }
            rules
        };
        let compiled = MetricOverrides {
            all_disabled: config.all_disabled,
            client: side(&config.client),
            server: side(&config.server),
        };
        let nothing = !compiled.all_disabled
            && compiled
                .client
                .iter()
                .chain(&compiled.server)
                .all(|r| r.as_ref().is_none_or(|r| *r == Rule::default()));
        (!nothing).then_some(compiled)
    }

    fn rule(&self, source_side: bool, metric: StandardMetric) -> Option<&Rule> {
        let side = if source_side { &self.client } else { &self.server };
        side[metric.index()].as_ref()
    }

    /// The labels of `metric`'s series, or `None` when the metric is off.
    pub fn request_labels(&self, metric: StandardMetric, labels: &RequestLabels) -> Option<RequestLabels> {
        if self.all_disabled {
            return None;
        }
        let mut labels = labels.clone();
        if let Some(rule) = self.rule(labels.peers.reporter == "source", metric) {
            if rule.disabled {
                return None;
            }
            for (name, value) in &rule.tags {
                let set = match name.as_str() {
                    "request_protocol" => remove_static(&mut labels.request_protocol, value),
                    "grpc_response_status" => remove_static(&mut labels.grpc_response_status, value),
                    "response_flags" => remove_static(&mut labels.response_flags, value),
                    "connection_security_policy" => {
                        remove_static(&mut labels.connection_security_policy, value)
                    }
                    _ => set_peer_label(&mut labels.peers, name, value),
                };
                if !set {
                    tracing::debug!(label = %name, "metric label override not applicable; left as it is");
                }
            }
        }
        Some(labels)
    }

    /// As [`MetricOverrides::request_labels`], for the TCP metrics.
    pub fn tcp_labels(&self, metric: StandardMetric, labels: &TcpLabels) -> Option<TcpLabels> {
        if self.all_disabled {
            return None;
        }
        let mut labels = labels.clone();
        if let Some(rule) = self.rule(labels.peers.reporter == "source", metric) {
            if rule.disabled {
                return None;
            }
            for (name, value) in &rule.tags {
                match name.as_str() {
                    "request_protocol" => remove_static(&mut labels.request_protocol, value),
                    "response_flags" => remove_static(&mut labels.response_flags, value),
                    "connection_security_policy" => {
                        remove_static(&mut labels.connection_security_policy, value)
                    }
                    _ => set_peer_label(&mut labels.peers, name, value),
                };
            }
        }
        Some(labels)
    }
}

/// Labels with a fixed set of values can only be removed.
fn remove_static(label: &mut &'static str, value: &Option<Arc<str>>) -> bool {
    if value.is_none() {
        *label = "";
        true
    } else {
        false
    }
}

fn set_peer_label(peers: &mut Peers, name: &str, value: &Option<Arc<str>>) -> bool {
    let field = match name {
        "source_workload" => &mut peers.source_workload,
        "source_canonical_service" => &mut peers.source_canonical_service,
        "source_canonical_revision" => &mut peers.source_canonical_revision,
        "source_workload_namespace" => &mut peers.source_workload_namespace,
        "source_principal" => &mut peers.source_principal,
        "source_app" => &mut peers.source_app,
        "source_version" => &mut peers.source_version,
        "source_cluster" => &mut peers.source_cluster,
        "destination_workload" => &mut peers.destination_workload,
        "destination_workload_namespace" => &mut peers.destination_workload_namespace,
        "destination_principal" => &mut peers.destination_principal,
        "destination_app" => &mut peers.destination_app,
        "destination_version" => &mut peers.destination_version,
        "destination_service" => &mut peers.destination_service,
        "destination_canonical_service" => &mut peers.destination_canonical_service,
        "destination_canonical_revision" => &mut peers.destination_canonical_revision,
        "destination_service_name" => &mut peers.destination_service_name,
        "destination_service_namespace" => &mut peers.destination_service_namespace,
        "destination_cluster" => &mut peers.destination_cluster,
        _ => return false,
    };
    *field = value.clone().unwrap_or_else(|| Arc::from(""));
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(client: Vec<pb::TelemetryMetricOverride>) -> pb::TelemetryMetricsOverrides {
        pb::TelemetryMetricsOverrides { all_disabled: false, client, server: Vec::new() }
    }

    #[test]
    fn nothing_to_change_compiles_to_nothing() {
        assert!(MetricOverrides::from_pb(None).is_none());
        assert!(MetricOverrides::from_pb(Some(&config(Vec::new()))).is_none());
        let empty = pb::TelemetryMetricOverride {
            metric: pb::TelemetryMetric::RequestCount.into(),
            ..Default::default()
        };
        assert!(MetricOverrides::from_pb(Some(&config(vec![empty]))).is_none());
        let unknown = pb::TelemetryMetricOverride { metric: 99, disabled: true, ..Default::default() };
        assert!(
            MetricOverrides::from_pb(Some(&config(vec![unknown]))).is_none(),
            "an unknown metric changes nothing"
        );
    }

    #[test]
    fn sides_are_told_apart_by_the_reporter() {
        let o = MetricOverrides::from_pb(Some(&config(vec![pb::TelemetryMetricOverride {
            metric: pb::TelemetryMetric::TcpSentBytes.into(),
            disabled: true,
            tags: Vec::new(),
        }])))
        .unwrap();
        assert!(o.rule(true, StandardMetric::TcpSent).is_some_and(|r| r.disabled));
        assert!(o.rule(false, StandardMetric::TcpSent).is_none(), "only the client side");
        assert!(o.rule(true, StandardMetric::TcpReceived).is_none());
    }
}
