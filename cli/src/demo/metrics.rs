//! What the table needs from a proxy's Prometheus page (`/stats/prometheus` on 15090): Istio's
//! `istio_requests_total` and `istio_request_duration_milliseconds` per reporter and destination
//! service, summed over the other labels except how the requests were secured
//! (`connection_security_policy`, `source_principal`, `destination_principal`); the
//! connections the proxy refused inbound (`trellis_inbound_connections_refused_total`); and its
//! AuthorizationPolicy decisions (`trellis_authz_decisions_total`); and what became of its
//! spans (`trellis_trace_spans_total`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use crate::dashboard::exposition::{Sample, sample};

/// Which side counted: the caller's proxy (outbound) or the callee's (inbound).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reporter {
    Source,
    Destination,
}

/// How requests were secured, as the reporting proxy labels them: `mutual_tls` with both
/// SPIFFE IDs, or `none` (plaintext) with `unknown` principals.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Security {
    pub policy: String,
    pub source_principal: String,
    pub destination_principal: String,
}

impl Security {
    pub fn mutual_tls(&self) -> bool {
        self.policy == "mutual_tls"
    }
}

/// Cumulative counts of one reporter and destination service.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Traffic {
    pub requests: f64,
    /// Answers 5xx (Istio's definition of a failed request).
    pub server_errors: f64,
    /// The duration histogram: (upper bound in ms, cumulative count), ascending, +Inf last.
    pub buckets: Vec<(f64, f64)>,
    /// Requests by how they were secured.
    pub security: BTreeMap<Security, f64>,
}

impl Traffic {
    /// What happened between `older` and this (counters only grow; a restarted proxy counts
    /// from zero again).
    pub fn since(&self, older: Option<&Traffic>) -> Traffic {
        let Some(older) = older else { return self.clone() };
        let minus = |a: f64, b: f64| if a >= b { a - b } else { a };
        Traffic {
            requests: minus(self.requests, older.requests),
            server_errors: minus(self.server_errors, older.server_errors),
            buckets: self
                .buckets
                .iter()
                .map(|(le, n)| {
                    let before = older.buckets.iter().find(|(l, _)| l == le).map_or(0.0, |(_, b)| *b);
                    (*le, minus(*n, before))
                })
                .collect(),
            security: self
                .security
                .iter()
                .map(|(s, n)| (s.clone(), minus(*n, older.security.get(s).copied().unwrap_or(0.0))))
                .collect(),
        }
    }

    /// The q-quantile (0..1) of the durations, interpolated within its bucket as Prometheus'
    /// `histogram_quantile` does; `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last().map(|(_, n)| *n)?;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut previous = (0.0, 0.0);
        for (le, n) in &self.buckets {
            if *n >= rank {
                if le.is_infinite() {
                    return Some(previous.0);
                }
                let within = if *n > previous.1 { (rank - previous.1) / (n - previous.1) } else { 1.0 };
                return Some(previous.0 + (le - previous.0) * within);
            }
            previous = (*le, *n);
        }
        Some(previous.0)
    }
}

fn add_bucket(buckets: &mut Vec<(f64, f64)>, le: f64, n: f64) {
    match buckets.iter_mut().find(|(l, _)| *l == le) {
        Some(bucket) => bucket.1 += n,
        None => {
            buckets.push((le, n));
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
    }
}

/// One series of `trellis_authz_decisions_total`: what was decided (`deny`, `audit`, ...), by
/// which policy (`namespace/name`, or `none` when no ALLOW policy matched) and rule (its index,
/// or empty), on `http` or `tcp`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct AuthzDecision {
    pub decision: String,
    pub policy: String,
    pub rule: String,
    pub protocol: String,
}

impl AuthzDecision {
    /// As the proxy's page writes it.
    pub fn series(&self) -> String {
        format!(
            "trellis_authz_decisions_total{{decision=\"{}\",policy=\"{}\",rule=\"{}\",protocol=\"{}\"}}",
            self.decision, self.policy, self.rule, self.protocol
        )
    }
}

/// One proxy's page.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProxyStats {
    /// By reporter and destination service (`catalog.shop.svc.cluster.local`, or `inbound|8080`
    /// for what the proxy delivered to its own app).
    pub traffic: BTreeMap<(Reporter, String), Traffic>,
    /// Inbound connections closed by PeerAuthentication or a failed mutual TLS handshake, by
    /// reason (`plaintext`, ...).
    pub refused: BTreeMap<String, f64>,
    /// AuthorizationPolicy's decisions, by series.
    pub authz: BTreeMap<AuthzDecision, f64>,
    /// Outlier ejections by (cluster, reason) (`trellis_outlier_ejections_total`).
    pub ejections: BTreeMap<(String, String), f64>,
    /// Requests this proxy sent with fault injection, by response flag (`DI` delayed, `FI`
    /// aborted; `istio_requests_total{reporter="source"}`).
    pub faults: BTreeMap<String, f64>,
    /// Spans the proxy exported or dropped, by result (`trellis_trace_spans_total`).
    pub spans: BTreeMap<String, f64>,
}

impl ProxyStats {
    pub fn refused_total(&self) -> f64 {
        self.refused.values().sum()
    }

    /// Requests and connections AuthorizationPolicy denied (`decision="deny"`).
    pub fn fault_total(&self, flag: &str) -> f64 {
        self.faults.get(flag).copied().unwrap_or(0.0)
    }

    pub fn denied_total(&self) -> f64 {
        self.authz.iter().filter(|(d, _)| d.decision == "deny").map(|(_, n)| n).sum()
    }
}

/// Reads the series the demo uses; every other line is skipped.
pub fn parse(text: &str) -> ProxyStats {
    let mut stats = ProxyStats::default();
    for line in text.lines() {
        let Some(Sample { name, labels, value }) = sample(line) else { continue };
        let name = name.as_str();
        if name == "trellis_inbound_connections_refused_total" {
            let reason = labels.get("reason").cloned().unwrap_or_default();
            *stats.refused.entry(reason).or_default() += value;
            continue;
        }
        if name == "trellis_authz_decisions_total" {
            let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
            let decision = AuthzDecision {
                decision: label("decision"),
                policy: label("policy"),
                rule: label("rule"),
                protocol: label("protocol"),
            };
            *stats.authz.entry(decision).or_default() += value;
            continue;
        }
        if name == "trellis_trace_spans_total" {
            let result = labels.get("result").cloned().unwrap_or_default();
            *stats.spans.entry(result).or_default() += value;
            continue;
        }
        if name == "trellis_outlier_ejections_total" {
            let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
            *stats.ejections.entry((label("cluster_name"), label("reason"))).or_default() += value;
            continue;
        }
        if name == "istio_requests_total"
            && labels.get("reporter").is_some_and(|r| r == "source")
            && let Some(flags) = labels.get("response_flags")
        {
            for flag in flags.split(',').filter(|f| *f == "DI" || *f == "FI") {
                *stats.faults.entry(flag.to_owned()).or_default() += value;
            }
        }
        let reporter = match labels.get("reporter").map(String::as_str) {
            Some("source") => Reporter::Source,
            Some("destination") => Reporter::Destination,
            _ => continue,
        };
        let Some(service) = labels.get("destination_service") else { continue };
        if name != "istio_requests_total" && name != "istio_request_duration_milliseconds_bucket" {
            continue;
        }
        let traffic = stats.traffic.entry((reporter, service.clone())).or_default();
        match name {
            "istio_requests_total" => {
                traffic.requests += value;
                if labels.get("response_code").is_some_and(|c| c.starts_with('5')) {
                    traffic.server_errors += value;
                }
                let label = |k: &str| labels.get(k).cloned().unwrap_or_else(|| "unknown".to_owned());
                let security = Security {
                    policy: label("connection_security_policy"),
                    source_principal: label("source_principal"),
                    destination_principal: label("destination_principal"),
                };
                *traffic.security.entry(security).or_default() += value;
            }
            "istio_request_duration_milliseconds_bucket" => {
                let le = match labels.get("le").map(String::as_str) {
                    Some("+Inf") => f64::INFINITY,
                    Some(le) => match le.parse() {
                        Ok(le) => le,
                        Err(_) => continue,
                    },
                    None => continue,
                };
                add_bucket(&mut traffic.buckets, le, value);
            }
            _ => {}
        }
    }
    stats
}

/// Reads one proxy's page.
pub async fn scrape(addr: SocketAddr) -> Result<ProxyStats, String> {
    let answer = crate::http_client::get_once(addr, "/stats/prometheus", Duration::from_secs(2)).await?;
    if !answer.status.is_success() {
        return Err(format!("{addr}/stats/prometheus answered {}", answer.status));
    }
    Ok(parse(&String::from_utf8_lossy(&answer.body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP istio_requests Requests.
# TYPE istio_requests counter
istio_requests_total{reporter="source",source_workload="frontend",destination_service="catalog.shop.svc.cluster.local",response_code="200",response_flags="-",connection_security_policy="mutual_tls",source_principal="spiffe://cluster.local/ns/shop/sa/frontend",destination_principal="spiffe://cluster.local/ns/shop/sa/catalog"} 90
istio_requests_total{reporter="source",source_workload="frontend",destination_service="catalog.shop.svc.cluster.local",response_code="503",response_flags="UF",connection_security_policy="none",source_principal="unknown",destination_principal="unknown"} 10
istio_requests_total{reporter="destination",destination_service="inbound|8080",response_code="200"} 100
istio_requests_total{reporter="destination",destination_service="we\"ird\\name",response_code="200"} 1
istio_request_duration_milliseconds_bucket{reporter="source",destination_service="catalog.shop.svc.cluster.local",response_code="200",le="1.0"} 10
istio_request_duration_milliseconds_bucket{reporter="source",destination_service="catalog.shop.svc.cluster.local",response_code="200",le="5.0"} 80
istio_request_duration_milliseconds_bucket{reporter="source",destination_service="catalog.shop.svc.cluster.local",response_code="200",le="+Inf"} 90
istio_request_duration_milliseconds_bucket{reporter="source",destination_service="catalog.shop.svc.cluster.local",response_code="503",le="1.0"} 10
istio_request_duration_milliseconds_bucket{reporter="source",destination_service="catalog.shop.svc.cluster.local",response_code="503",le="5.0"} 10
istio_request_duration_milliseconds_bucket{reporter="source",destination_service="catalog.shop.svc.cluster.local",response_code="503",le="+Inf"} 10
istio_request_duration_milliseconds_sum{reporter="source",destination_service="catalog.shop.svc.cluster.local",response_code="200"} 300
istio_tcp_connections_opened_total{reporter="source",destination_service="db"} 3
# TYPE trellis_inbound_connections_refused counter
trellis_inbound_connections_refused_total{reason="plaintext"} 2
trellis_inbound_connections_refused_total{reason="handshake"} 1
# TYPE trellis_authz_decisions counter
trellis_authz_decisions_total{decision="deny",policy="none",rule="",protocol="http"} 3
trellis_authz_decisions_total{decision="deny",policy="shop/no-orders",rule="0",protocol="tcp"} 1
trellis_authz_decisions_total{decision="audit",policy="shop/audit",rule="1",protocol="http"} 5
garbage {{{
istio_requests_total{reporter="source",destination_service="x",response_code="200"} not-a-number
"#;

    #[test]
    fn series_are_summed_by_reporter_and_service() {
        let stats = parse(PAGE);
        let catalog = &stats.traffic[&(Reporter::Source, "catalog.shop.svc.cluster.local".to_owned())];
        assert_eq!((catalog.requests, catalog.server_errors), (100.0, 10.0));
        assert_eq!(catalog.buckets, [(1.0, 20.0), (5.0, 90.0), (f64::INFINITY, 100.0)]);
        let inbound = &stats.traffic[&(Reporter::Destination, "inbound|8080".to_owned())];
        assert_eq!(inbound.requests, 100.0);
        assert_eq!(stats.traffic[&(Reporter::Destination, "we\"ird\\name".to_owned())].requests, 1.0);
        assert_eq!(stats.traffic.len(), 3, "{stats:?}");
        // Requests by how they were secured; a page without the labels says "unknown".
        let security = |policy: &str, from: &str, to: &str| Security {
            policy: policy.into(),
            source_principal: from.into(),
            destination_principal: to.into(),
        };
        assert_eq!(
            catalog.security,
            BTreeMap::from([
                (
                    security(
                        "mutual_tls",
                        "spiffe://cluster.local/ns/shop/sa/frontend",
                        "spiffe://cluster.local/ns/shop/sa/catalog"
                    ),
                    90.0
                ),
                (security("none", "unknown", "unknown"), 10.0),
            ])
        );
        assert_eq!(inbound.security, BTreeMap::from([(security("unknown", "unknown", "unknown"), 100.0)]));
        assert_eq!(stats.refused, BTreeMap::from([("plaintext".into(), 2.0), ("handshake".into(), 1.0)]));
        assert_eq!(stats.refused_total(), 3.0);
        // AuthorizationPolicy's decisions, by series; denials are the `deny` ones.
        let none = AuthzDecision {
            decision: "deny".into(),
            policy: "none".into(),
            rule: String::new(),
            protocol: "http".into(),
        };
        assert_eq!(stats.authz.len(), 3);
        assert_eq!(stats.authz[&none], 3.0);
        assert_eq!(stats.denied_total(), 4.0);
        assert_eq!(
            none.series(),
            r#"trellis_authz_decisions_total{decision="deny",policy="none",rule="",protocol="http"}"#
        );
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let traffic = Traffic {
            requests: 100.0,
            server_errors: 0.0,
            buckets: vec![(1.0, 20.0), (5.0, 90.0), (f64::INFINITY, 100.0)],
            ..Traffic::default()
        };
        assert_eq!(traffic.quantile(0.1), Some(0.5));
        assert_eq!(traffic.quantile(0.5), Some(1.0 + 4.0 * (30.0 / 70.0)));
        // Beyond the last finite bound: that bound.
        assert_eq!(traffic.quantile(0.99), Some(5.0));
        assert_eq!(Traffic::default().quantile(0.5), None);
    }

    #[test]
    fn ejections_and_injected_faults_are_counted() {
        let stats = parse(
            r#"trellis_outlier_ejections_total{cluster_name="outbound|8080||inventory.shop.svc.cluster.local",reason="consecutive_5xx"} 2
istio_requests_total{reporter="source",destination_service="catalog.shop.svc.cluster.local",response_code="200",response_flags="DI"} 7
istio_requests_total{reporter="source",destination_service="catalog.shop.svc.cluster.local",response_code="503",response_flags="DI,FI"} 3
istio_requests_total{reporter="destination",destination_service="inbound|8080",response_code="200",response_flags="DI"} 100
"#,
        );
        let cluster = "outbound|8080||inventory.shop.svc.cluster.local".to_owned();
        assert_eq!(stats.ejections, BTreeMap::from([((cluster, "consecutive_5xx".to_owned()), 2.0)]));
        assert_eq!(
            (stats.fault_total("DI"), stats.fault_total("FI"), stats.fault_total("UO")),
            (10.0, 3.0, 0.0)
        );
        // Still counted as traffic.
        assert_eq!(
            stats.traffic[&(Reporter::Source, "catalog.shop.svc.cluster.local".to_owned())].requests,
            10.0
        );
    }

    #[test]
    fn windows_are_differences() {
        let mtls = Security {
            policy: "mutual_tls".into(),
            source_principal: "spiffe://cluster.local/ns/shop/sa/a".into(),
            destination_principal: "spiffe://cluster.local/ns/shop/sa/b".into(),
        };
        let plain = Security {
            policy: "none".into(),
            source_principal: "unknown".into(),
            destination_principal: "unknown".into(),
        };
        let older = Traffic {
            requests: 40.0,
            server_errors: 1.0,
            buckets: vec![(1.0, 30.0), (f64::INFINITY, 40.0)],
            security: BTreeMap::from([(mtls.clone(), 40.0)]),
        };
        let newer = Traffic {
            requests: 100.0,
            server_errors: 1.0,
            buckets: vec![(1.0, 50.0), (f64::INFINITY, 100.0)],
            security: BTreeMap::from([(mtls.clone(), 95.0), (plain.clone(), 5.0)]),
        };
        let window = newer.since(Some(&older));
        assert_eq!((window.requests, window.server_errors), (60.0, 0.0));
        assert_eq!(window.buckets, [(1.0, 20.0), (f64::INFINITY, 60.0)]);
        assert_eq!(window.security, BTreeMap::from([(mtls, 55.0), (plain, 5.0)]));
        // A proxy that restarted: its counts start again.
        assert_eq!(older.since(Some(&newer)).requests, 40.0);
    }

    #[test]
    fn spans_are_counted_by_result() {
        let page = "trellis_trace_spans_total{provider=\"zipkin\",result=\"exported\"} 7\n\
                    trellis_trace_spans_total{provider=\"zipkin\",result=\"export_failed\"} 2\n\
                    trellis_trace_spans_total{provider=\"otel\",result=\"exported\"} 1\n";
        let stats = parse(page);
        assert_eq!(stats.spans, BTreeMap::from([("export_failed".into(), 2.0), ("exported".into(), 8.0)]));
    }
}
