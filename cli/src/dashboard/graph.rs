//! The service graph from Istio's request metrics, as rates (requests per second by label set):
//! workloads and services as nodes; a workload's calls to a service, and a service's requests
//! to the workloads behind it, as edges. The same code serves both sources (a Prometheus
//! server's `rate()` and the dashboard's own differences between two scrapes), so the numbers
//! mean the same whichever feeds the page.
//!
//! Each request is counted once: the caller's proxy reports it (`reporter="source"`, which
//! knows the service it routed to), except for callers outside the mesh, whose requests only
//! the callee's proxy reports (`reporter="destination"` with `source_workload="unknown"`).

use std::collections::BTreeMap;

use serde::Serialize;

use super::exposition::Sample;

const UNKNOWN: &str = "unknown";

/// A workload or a service, by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Name {
    pub namespace: String,
    pub name: String,
}

impl Name {
    fn of(labels: &BTreeMap<String, String>, namespace: &str, name: &str) -> Name {
        let get =
            |k: &str| labels.get(k).filter(|v| !v.is_empty()).cloned().unwrap_or_else(|| UNKNOWN.to_owned());
        Name { namespace: get(namespace), name: get(name) }
    }

    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    /// `workload:ns/name` or `service:ns/name`.
    pub id: String,
    /// `workload` or `service`.
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Edge {
    pub id: String,
    pub source: String,
    pub target: String,
    #[serde(flatten)]
    pub signals: Signals,
    /// On a service's edges to its workloads: the percentage of the service's requests this
    /// workload answered (a canary's split, as it happens).
    pub share: Option<f64>,
}

/// The golden signals of some traffic over the window.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Signals {
    pub rps: f64,
    /// Share of requests not answered 5xx, 0..1; `None` without requests.
    pub success_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Every request of the window went over mutual TLS.
    pub mtls: bool,
    /// Requests per second refused by authorization (403, or the proxy's `UAEX`/`RBAC` flag).
    pub denied_rps: f64,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

/// Who called what, answered by whom.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct FlowKey {
    source: Name,
    service: Name,
    destination: Name,
}

#[derive(Clone, Debug, Default)]
struct Flow {
    requests: f64,
    server_errors: f64,
    denied: f64,
    mtls: f64,
    /// (upper bound in ms, cumulative rate), any order.
    buckets: Vec<(f64, f64)>,
}

impl Flow {
    fn add(&mut self, other: &Flow) {
        self.requests += other.requests;
        self.server_errors += other.server_errors;
        self.denied += other.denied;
        self.mtls += other.mtls;
        for (le, n) in &other.buckets {
            add_bucket(&mut self.buckets, *le, *n);
        }
    }

    fn signals(&self) -> Signals {
        let has = self.requests > 0.0;
        Signals {
            rps: self.requests,
            success_rate: has.then(|| 1.0 - (self.server_errors / self.requests).clamp(0.0, 1.0)),
            p50_ms: quantile(&self.buckets, 0.5),
            p99_ms: quantile(&self.buckets, 0.99),
            // Rates of float counters: allow for rounding.
            mtls: has && self.mtls >= self.requests * 0.999,
            denied_rps: self.denied,
        }
    }
}

fn add_bucket(buckets: &mut Vec<(f64, f64)>, le: f64, n: f64) {
    match buckets.iter_mut().find(|(l, _)| *l == le) {
        Some(bucket) => bucket.1 += n,
        None => buckets.push((le, n)),
    }
}

/// The q-quantile of a cumulative histogram, interpolated within its bucket as Prometheus'
/// `histogram_quantile` does; `None` without observations.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let mut sorted: Vec<(f64, f64)> = buckets.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = sorted.last().filter(|(le, _)| le.is_infinite()).map(|(_, n)| *n)?;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut previous = (0.0, 0.0);
    for (le, n) in sorted {
        if n >= rank {
            if le.is_infinite() {
                return Some(previous.0);
            }
            let within = if n > previous.1 { (rank - previous.1) / (n - previous.1) } else { 1.0 };
            return Some(previous.0 + (le - previous.0) * within);
        }
        previous = (le, n);
    }
    Some(previous.0)
}

/// Whether a series is the one report of its requests (see the module's comment).
fn counted(labels: &BTreeMap<String, String>) -> bool {
    match labels.get("reporter").map(String::as_str) {
        Some("source") => true,
        Some("destination") => labels.get("source_workload").is_none_or(|w| w.is_empty() || w == UNKNOWN),
        _ => false,
    }
}

fn flow_key(labels: &BTreeMap<String, String>) -> FlowKey {
    FlowKey {
        source: Name::of(labels, "source_workload_namespace", "source_workload"),
        service: Name::of(labels, "destination_service_namespace", "destination_service_name"),
        destination: Name::of(labels, "destination_workload_namespace", "destination_workload"),
    }
}

fn denied(labels: &BTreeMap<String, String>) -> bool {
    labels.get("response_code").is_some_and(|c| c == "403")
        || labels.get("response_flags").is_some_and(|f| f.split(',').any(|f| f == "UAEX" || f == "RBAC"))
}

/// The flows of the request and duration-bucket rates.
struct Flows(BTreeMap<FlowKey, Flow>);

impl Flows {
    fn of(requests: &[Sample], buckets: &[Sample]) -> Flows {
        let mut flows: BTreeMap<FlowKey, Flow> = BTreeMap::new();
        for s in requests.iter().filter(|s| counted(&s.labels) && s.value.is_finite() && s.value >= 0.0) {
            let flow = flows.entry(flow_key(&s.labels)).or_default();
            flow.requests += s.value;
            if s.labels.get("response_code").is_some_and(|c| c.starts_with('5')) {
                flow.server_errors += s.value;
            }
            if denied(&s.labels) {
                flow.denied += s.value;
            }
            if s.labels.get("connection_security_policy").is_some_and(|p| p == "mutual_tls") {
                flow.mtls += s.value;
            }
        }
        for s in buckets.iter().filter(|s| counted(&s.labels) && s.value.is_finite() && s.value >= 0.0) {
            let le = match s.labels.get("le").map(String::as_str) {
                Some("+Inf") => f64::INFINITY,
                Some(le) => match le.parse::<f64>() {
                    Ok(le) if !le.is_nan() => le,
                    _ => continue,
                },
                None => continue,
            };
            add_bucket(&mut flows.entry(flow_key(&s.labels)).or_default().buckets, le, s.value);
        }
        Flows(flows)
    }
}

/// The graph, and each service's signals (by `ns/name`).
pub fn build(requests: &[Sample], buckets: &[Sample]) -> (Graph, BTreeMap<String, Signals>) {
    let flows = Flows::of(requests, buckets);
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    let mut calls: BTreeMap<(String, String), Flow> = BTreeMap::new();
    let mut answers: BTreeMap<(String, String), Flow> = BTreeMap::new();
    let mut services: BTreeMap<String, Flow> = BTreeMap::new();
    for (key, flow) in &flows.0 {
        let source = node(&mut nodes, "workload", &key.source);
        let service = node(&mut nodes, "service", &key.service);
        let destination = node(&mut nodes, "workload", &key.destination);
        calls.entry((source, service.clone())).or_default().add(flow);
        answers.entry((service.clone(), destination)).or_default().add(flow);
        services.entry(key.service.key()).or_default().add(flow);
    }
    let mut edges = Vec::new();
    for ((source, target), flow) in calls {
        edges.push(Edge {
            id: format!("{source}->{target}"),
            source,
            target,
            signals: flow.signals(),
            share: None,
        });
    }
    for ((service, target), flow) in answers {
        let total =
            service.strip_prefix("service:").and_then(|k| services.get(k)).map_or(0.0, |f| f.requests);
        let share = (total > 0.0).then(|| 100.0 * flow.requests / total);
        edges.push(Edge {
            id: format!("{service}->{target}"),
            source: service,
            target,
            signals: flow.signals(),
            share,
        });
    }
    let signals = services.into_iter().map(|(k, f)| (k, f.signals())).collect();
    (Graph { nodes: nodes.into_values().collect(), edges }, signals)
}

fn node(nodes: &mut BTreeMap<String, Node>, kind: &'static str, name: &Name) -> String {
    let id = format!("{kind}:{}", name.key());
    nodes.entry(id.clone()).or_insert_with(|| Node {
        id: id.clone(),
        kind,
        namespace: name.namespace.clone(),
        name: name.name.clone(),
    });
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(labels: &[(&str, &str)], value: f64) -> Sample {
        Sample {
            name: "x".into(),
            labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            value,
        }
    }

    fn call(dst: &str, code: &str, policy: &str, value: f64) -> Sample {
        sample(
            &[
                ("reporter", "source"),
                ("source_workload", "web"),
                ("source_workload_namespace", "shop"),
                ("destination_service_name", "reviews"),
                ("destination_service_namespace", "shop"),
                ("destination_workload", dst),
                ("destination_workload_namespace", "shop"),
                ("response_code", code),
                ("connection_security_policy", policy),
            ],
            value,
        )
    }

    #[test]
    fn a_canary_splits_the_services_edges() {
        let requests = [
            call("reviews-v1", "200", "mutual_tls", 9.0),
            call("reviews-v2", "200", "mutual_tls", 0.5),
            call("reviews-v2", "503", "mutual_tls", 0.5),
            // The callee's report of the same requests is not counted again.
            sample(&[("reporter", "destination"), ("source_workload", "web"), ("response_code", "200")], 9.0),
        ];
        let (graph, signals) = build(&requests, &[]);
        assert_eq!(graph.nodes.len(), 4, "{:?}", graph.nodes);
        let edge = |id: &str| graph.edges.iter().find(|e| e.id == id).unwrap_or_else(|| panic!("{id}"));
        let web = edge("workload:shop/web->service:shop/reviews");
        assert_eq!(web.signals.rps, 10.0);
        assert_eq!(web.signals.success_rate, Some(0.95));
        assert!(web.signals.mtls);
        assert_eq!(edge("service:shop/reviews->workload:shop/reviews-v1").share, Some(90.0));
        let v2 = edge("service:shop/reviews->workload:shop/reviews-v2");
        assert_eq!(v2.share, Some(10.0));
        assert_eq!(v2.signals.success_rate, Some(0.5));
        assert_eq!(signals["shop/reviews"].rps, 10.0);
    }

    #[test]
    fn denied_and_plaintext_calls_show() {
        let requests = [call("reviews-v1", "403", "none", 2.0), call("reviews-v1", "200", "mutual_tls", 2.0)];
        let (graph, _) = build(&requests, &[]);
        assert_eq!(graph.edges[0].signals.denied_rps, 2.0);
        assert!(!graph.edges[0].signals.mtls);
    }

    #[test]
    fn quantiles_interpolate_like_prometheus() {
        let buckets = [(10.0, 50.0), (100.0, 100.0), (f64::INFINITY, 100.0)];
        assert_eq!(quantile(&buckets, 0.5), Some(10.0));
        assert_eq!(quantile(&buckets, 0.75), Some(55.0));
        assert_eq!(quantile(&[(f64::INFINITY, 0.0)], 0.5), None);
        assert_eq!(quantile(&[(5.0, 3.0)], 0.5), None, "without +Inf it is no histogram");
    }
}
