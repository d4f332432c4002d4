//! The live table: per edge of the call graph, requests per second, success rate, p50 and p99
//! latency, for a service split over subsets, each subset's share, and how the requests were
//! secured (mutual TLS and the two SPIFFE IDs, or plaintext) — over the last few seconds. Edges
//! inside the mesh come from the calling proxy's metrics (reporter "source"); subset shares from
//! what each subset's proxies received (reporter "destination"); the edge into the mesh from the
//! load's own measurements, and its security from what the entry pod's proxy received. An edge
//! shows once it carries a request after the run's first snapshot: the demo's own calls before
//! the load (the one an AuthorizationPolicy denies) are reported apart.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

use super::load::Window;
use super::metrics::{ProxyStats, Reporter, Security, Traffic};
use super::plan::Service;

/// Every proxy's cumulative counts at one moment, by pod.
pub type Snapshot = BTreeMap<String, ProxyStats>;

/// One line of the table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    pub from: String,
    pub to: String,
    pub rps: f64,
    /// Share of answers that are not 5xx (Istio's success rate); `None` without requests.
    pub success: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Each subset's share of the requests its service received, in the DestinationRule's order.
    pub split: Vec<(String, f64)>,
    /// How the requests were secured, most requests first; empty without requests.
    pub security: Vec<Secured>,
}

/// Requests secured one way, and their share of the edge's requests.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Secured {
    #[serde(flatten)]
    pub security: Security,
    pub requests: f64,
    pub share: f64,
}

/// The security of `traffic`'s requests, most first.
fn secured(traffic: &Traffic) -> Vec<Secured> {
    let total: f64 = traffic.security.values().sum();
    let mut out: Vec<Secured> = traffic
        .security
        .iter()
        .filter(|(_, n)| **n > 0.0)
        .map(|(s, n)| Secured { security: s.clone(), requests: *n, share: n / total })
        .collect();
    out.sort_by(|a, b| b.requests.total_cmp(&a.requests));
    out
}

/// What the table is about: the pods in order and the services they form.
pub struct Topology {
    pub entry: String,
    pub pods: Vec<String>,
    pub services: Vec<Service>,
}

/// The last seconds of snapshots and load windows; rows are over that span.
pub struct History {
    span: usize,
    /// The first snapshot ever pushed: edges show once they carry requests after it.
    start: Option<Snapshot>,
    samples: VecDeque<(f64, Snapshot, Window)>,
}

impl History {
    /// Keeps `span` seconds (at one sample a second).
    pub fn new(span: usize) -> History {
        History { span: span.max(1), start: None, samples: VecDeque::new() }
    }

    /// Adds a sample taken at `seconds` (since the start) with the load seen since the last one.
    pub fn push(&mut self, seconds: f64, snapshot: Snapshot, window: Window) {
        if self.start.is_none() {
            self.start = Some(snapshot.clone());
        }
        self.samples.push_back((seconds, snapshot, window));
        while self.samples.len() > self.span + 1 {
            self.samples.pop_front();
        }
    }

    pub fn latest(&self) -> Option<&Snapshot> {
        self.samples.back().map(|(_, s, _)| s)
    }

    /// The rows over the span kept (empty until two samples exist).
    pub fn rows(&self, topology: &Topology) -> Vec<Row> {
        let (Some(start), Some(first), Some(last)) = (&self.start, self.samples.front(), self.samples.back())
        else {
            return Vec::new();
        };
        let seconds = last.0 - first.0;
        if seconds <= 0.0 {
            return Vec::new();
        }
        let mut load = Window::default();
        self.samples.iter().skip(1).for_each(|(_, _, w)| load.add(w));
        rows(topology, start, &first.1, &last.1, &load, seconds)
    }
}

/// The rows between two snapshots `seconds` apart, with the load seen in between; edges that
/// carried no request since `start` are left out.
pub fn rows(
    topology: &Topology,
    start: &Snapshot,
    older: &Snapshot,
    newer: &Snapshot,
    load: &Window,
    seconds: f64,
) -> Vec<Row> {
    let delta = |pod: &str, key: &(Reporter, String)| -> Traffic {
        let now = newer.get(pod).and_then(|s| s.traffic.get(key)).cloned().unwrap_or_default();
        now.since(older.get(pod).and_then(|s| s.traffic.get(key)))
    };
    // What each pod's proxy delivered to its app, whoever called.
    let inbound = |pod: &str| -> Vec<Traffic> {
        newer
            .get(pod)
            .map(|stats| {
                stats
                    .traffic
                    .keys()
                    .filter(|(r, _)| *r == Reporter::Destination)
                    .map(|key| delta(pod, key))
                    .collect()
            })
            .unwrap_or_default()
    };
    let received = |pod: &str| -> f64 { inbound(pod).iter().map(|t| t.requests).sum() };
    let mut entry_security = Traffic::default();
    for traffic in inbound(&topology.entry) {
        for (security, n) in traffic.security {
            *entry_security.security.entry(security).or_default() += n;
        }
    }
    let entry_ok = (load.requests > 0).then(|| load.ok as f64 / load.requests as f64);
    let mut out = vec![Row {
        from: "load".to_owned(),
        to: topology.entry.clone(),
        rps: load.requests as f64 / seconds,
        success: entry_ok,
        p50_ms: load.quantile(0.5),
        p99_ms: load.quantile(0.99),
        split: Vec::new(),
        security: secured(&entry_security),
    }];
    for pod in &topology.pods {
        let Some(stats) = newer.get(pod) else { continue };
        for (key, now) in stats.traffic.iter().filter(|((r, _), _)| *r == Reporter::Source) {
            if now.since(start.get(pod).and_then(|s| s.traffic.get(key))).requests <= 0.0 {
                continue;
            }
            let window = delta(pod, key);
            let service = topology.services.iter().find(|s| s.host == key.1);
            let to = service
                .map(|s| s.short.clone())
                .unwrap_or_else(|| key.1.split('.').next().unwrap_or_default().to_owned());
            let split = match service {
                Some(s) if s.subsets.len() > 1 => {
                    let counts: Vec<(String, f64)> = s
                        .subsets
                        .iter()
                        .map(|subset| (subset.name.clone(), subset.pods.iter().map(|p| received(p)).sum()))
                        .collect();
                    let total: f64 = counts.iter().map(|(_, n)| n).sum();
                    if total > 0.0 {
                        counts.into_iter().map(|(name, n)| (name, n / total)).collect()
                    } else {
                        Vec::new()
                    }
                }
                _ => Vec::new(),
            };
            out.push(Row {
                from: pod.clone(),
                to,
                rps: window.requests / seconds,
                success: (window.requests > 0.0).then(|| 1.0 - window.server_errors / window.requests),
                p50_ms: window.quantile(0.5),
                p99_ms: window.quantile(0.99),
                split,
                security: secured(&window),
            });
        }
    }
    out
}

/// The part every SPIFFE ID of the rows shares up to the service account's name
/// (`spiffe://cluster.local/ns/shop/sa/`), if they all share one.
fn common_prefix(rows: &[Row]) -> Option<String> {
    let mut ids = rows
        .iter()
        .filter_map(|r| r.security.first())
        .filter(|s| s.security.mutual_tls())
        .flat_map(|s| [&s.security.source_principal, &s.security.destination_principal]);
    let first = ids.next()?;
    let prefix = &first[..first.rfind("/sa/")? + 4];
    (prefix.starts_with("spiffe://")
        && ids.all(|id| id.starts_with(prefix) && !id[prefix.len()..].contains('/')))
    .then(|| prefix.to_owned())
}

/// An edge's security in a few words: `mTLS frontend → catalog` (the SPIFFE IDs without their
/// common `prefix`), `plaintext`, or `-` without requests; when some requests were secured
/// otherwise, with the majority's share.
fn describe_security(security: &[Secured], prefix: Option<&str>) -> String {
    let Some(first) = security.first() else { return "-".to_owned() };
    let short = |id: &str| prefix.and_then(|p| id.strip_prefix(p)).unwrap_or(id).to_owned();
    let s = &first.security;
    let mut text = match s.policy.as_str() {
        "mutual_tls" => format!("mTLS {} → {}", short(&s.source_principal), short(&s.destination_principal)),
        "none" => "plaintext".to_owned(),
        other => other.to_owned(),
    };
    if security.len() > 1 {
        text.push_str(&format!(" ({:.1}%)", first.share * 100.0));
    }
    text
}

/// The table as text lines.
pub fn render(rows: &[Row]) -> Vec<String> {
    let edges: Vec<String> = rows.iter().map(|r| format!("{} → {}", r.from, r.to)).collect();
    let width = edges.iter().map(|e| e.chars().count()).max().unwrap_or(0).max(4);
    let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}ms"));
    let splits: Vec<String> = rows
        .iter()
        .map(|row| {
            let split: Vec<String> =
                row.split.iter().map(|(name, share)| format!("{name} {:.0}%", share * 100.0)).collect();
            split.join(" · ")
        })
        .collect();
    let split_width = splits.iter().map(|s| s.chars().count()).max().unwrap_or(0).max(5);
    let prefix = common_prefix(rows);
    let mut lines = vec![format!(
        "{:<width$}  {:>7}  {:>7}  {:>8}  {:>8}  {:<split_width$}  SECURITY",
        "EDGE", "RPS", "SUCCESS", "P50", "P99", "SPLIT"
    )];
    for ((row, edge), split) in rows.iter().zip(edges).zip(splits) {
        let success = row.success.map_or("-".to_owned(), |s| format!("{:.1}%", s * 100.0));
        let line = format!(
            "{edge:<width$}  {:>7.1}  {success:>7}  {:>8}  {:>8}  {split:<split_width$}  {}",
            row.rps,
            ms(row.p50_ms),
            ms(row.p99_ms),
            describe_security(&row.security, prefix.as_deref())
        );
        lines.push(line.trim_end().to_owned());
    }
    if let Some(prefix) = prefix {
        lines.push(format!("mTLS a → b: mutual_tls, {prefix}a → {prefix}b"));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::plan::Subset;

    fn sa(name: &str) -> String {
        format!("spiffe://cluster.local/ns/shop/sa/{name}")
    }

    fn mtls(from: &str, to: &str) -> Security {
        Security { policy: "mutual_tls".into(), source_principal: sa(from), destination_principal: sa(to) }
    }

    fn plaintext() -> Security {
        Security {
            policy: "none".into(),
            source_principal: "unknown".into(),
            destination_principal: "unknown".into(),
        }
    }

    fn traffic(requests: f64, errors: f64, fast: f64, security: Security) -> Traffic {
        Traffic {
            requests,
            server_errors: errors,
            buckets: vec![(5.0, fast), (50.0, requests), (f64::INFINITY, requests)],
            security: BTreeMap::from([(security, requests)]),
        }
    }

    fn topology() -> Topology {
        Topology {
            entry: "frontend".into(),
            pods: vec!["frontend".into(), "catalog-v1".into(), "catalog-v2".into()],
            services: vec![Service {
                host: "catalog.shop.svc.cluster.local".into(),
                short: "catalog".into(),
                vip: None,
                port: 8080,
                pods: vec!["catalog-v1".into(), "catalog-v2".into()],
                subsets: vec![
                    Subset { name: "v1".into(), pods: vec!["catalog-v1".into()] },
                    Subset { name: "v2".into(), pods: vec!["catalog-v2".into()] },
                ],
            }],
        }
    }

    fn stats(traffic: Vec<((Reporter, &str), Traffic)>) -> ProxyStats {
        ProxyStats {
            traffic: traffic.into_iter().map(|((r, s), t)| ((r, s.to_owned()), t)).collect(),
            ..ProxyStats::default()
        }
    }

    /// The load into frontend (plaintext, as frontend's proxy saw it), frontend's calls to
    /// catalog (mutual TLS), and what each catalog received.
    fn snapshot(frontend_out: Traffic, load_in: f64, v1_in: f64, v2_in: f64) -> Snapshot {
        let inbound = (Reporter::Destination, "inbound|8080");
        BTreeMap::from([
            (
                "frontend".to_owned(),
                stats(vec![
                    ((Reporter::Source, "catalog.shop.svc.cluster.local"), frontend_out),
                    (inbound, traffic(load_in, 0.0, load_in, plaintext())),
                ]),
            ),
            (
                "catalog-v1".to_owned(),
                stats(vec![(inbound, traffic(v1_in, 0.0, v1_in, mtls("frontend", "catalog")))]),
            ),
            (
                "catalog-v2".to_owned(),
                stats(vec![(inbound, traffic(v2_in, 0.0, 0.0, mtls("frontend", "catalog")))]),
            ),
        ])
    }

    #[test]
    fn edges_rates_latency_split_and_security_over_a_window() {
        let older = snapshot(traffic(100.0, 0.0, 100.0, mtls("frontend", "catalog")), 100.0, 90.0, 10.0);
        let newer = snapshot(traffic(200.0, 2.0, 150.0, mtls("frontend", "catalog")), 200.0, 140.0, 60.0);
        let load = Window { requests: 100, ok: 99, latencies_ms: (1..=100).map(f64::from).collect() };
        let rows = rows(&topology(), &Snapshot::new(), &older, &newer, &load, 2.0);
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].from.as_str(), rows[0].to.as_str(), rows[0].rps), ("load", "frontend", 50.0));
        assert_eq!((rows[0].success, rows[0].p50_ms, rows[0].p99_ms), (Some(0.99), Some(50.0), Some(99.0)));
        // The load's security is what the entry pod's proxy received.
        assert_eq!(rows[0].security, [Secured { security: plaintext(), requests: 100.0, share: 1.0 }]);
        let catalog = &rows[1];
        assert_eq!((catalog.from.as_str(), catalog.to.as_str(), catalog.rps), ("frontend", "catalog", 50.0));
        assert_eq!(catalog.success, Some(0.98));
        // 50 of the 100 in the window took up to 5ms, the rest up to 50ms.
        assert_eq!(catalog.p50_ms, Some(5.0));
        assert_eq!(catalog.split, [("v1".to_owned(), 0.5), ("v2".to_owned(), 0.5)]);
        assert_eq!(
            catalog.security,
            [Secured { security: mtls("frontend", "catalog"), requests: 100.0, share: 1.0 }]
        );

        let lines = render(&rows);
        assert_eq!(
            lines[0],
            "EDGE                    RPS  SUCCESS       P50       P99  SPLIT            SECURITY"
        );
        assert_eq!(
            lines[1],
            "load → frontend        50.0    99.0%    50.0ms    99.0ms                   plaintext"
        );
        assert_eq!(
            lines[2],
            "frontend → catalog     50.0    98.0%     5.0ms    49.1ms  v1 50% · v2 50%  mTLS frontend → catalog"
        );
        assert_eq!(
            lines[3],
            "mTLS a → b: mutual_tls, spiffe://cluster.local/ns/shop/sa/a → spiffe://cluster.local/ns/shop/sa/b"
        );
        // JSON carries the whole SPIFFE IDs.
        let json = serde_json::to_value(&rows[1]).unwrap();
        assert_eq!(json["security"][0]["policy"], "mutual_tls");
        assert_eq!(json["security"][0]["source_principal"], sa("frontend"));
        assert_eq!(json["security"][0]["destination_principal"], sa("catalog"));
    }

    #[test]
    fn mixed_security_shows_the_majority_and_its_share() {
        let older = snapshot(traffic(0.0, 0.0, 0.0, mtls("frontend", "catalog")), 0.0, 0.0, 0.0);
        let mut out = traffic(100.0, 0.0, 100.0, mtls("frontend", "catalog"));
        out.security = BTreeMap::from([(mtls("frontend", "catalog"), 90.0), (plaintext(), 10.0)]);
        let newer = snapshot(out, 0.0, 50.0, 50.0);
        let rows = rows(&topology(), &older, &older, &newer, &Window::default(), 1.0);
        assert_eq!(rows[1].security.len(), 2);
        assert_eq!((rows[1].security[1].security.policy.as_str(), rows[1].security[1].share), ("none", 0.1));
        assert!(render(&rows)[2].ends_with("mTLS frontend → catalog (90.0%)"), "{}", render(&rows)[2]);
        // Principals of different namespaces are shown whole, and no legend is printed.
        let mut other = rows.clone();
        other[1].security[0].security.destination_principal =
            "spiffe://cluster.local/ns/other/sa/catalog".into();
        let lines = render(&other);
        assert!(
            lines[2].ends_with(&format!(
                "mTLS {} → spiffe://cluster.local/ns/other/sa/catalog (90.0%)",
                sa("frontend")
            )),
            "{}",
            lines[2]
        );
        assert_eq!(lines.len(), 3);
    }

    #[test]
    fn an_idle_window_shows_dashes() {
        let same = snapshot(traffic(10.0, 0.0, 10.0, mtls("frontend", "catalog")), 10.0, 9.0, 1.0);
        let rows = rows(&topology(), &Snapshot::new(), &same, &same, &Window::default(), 1.0);
        assert_eq!((rows[1].rps, rows[1].success, rows[1].p50_ms), (0.0, None, None));
        assert!(rows[1].split.is_empty());
        assert!(rows[1].security.is_empty());
        // No split, no requests to tell the security of.
        assert_eq!(render(&rows)[2], "frontend → catalog      0.0        -         -         -         -");
    }

    #[test]
    fn an_edge_idle_since_the_start_is_left_out() {
        // frontend called catalog before the start (the demo's own call), never since.
        let start = snapshot(traffic(1.0, 0.0, 1.0, mtls("frontend", "catalog")), 0.0, 1.0, 0.0);
        let rows = rows(&topology(), &start, &start, &start, &Window::default(), 1.0);
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0].from, "load");
        let later = snapshot(traffic(2.0, 0.0, 2.0, mtls("frontend", "catalog")), 1.0, 2.0, 0.0);
        assert_eq!(super::rows(&topology(), &start, &start, &later, &Window::default(), 1.0).len(), 2);
    }

    #[test]
    fn history_keeps_its_span() {
        let mut history = History::new(2);
        assert!(history.rows(&topology()).is_empty());
        for (i, n) in [0.0, 10.0, 20.0, 30.0].iter().enumerate() {
            let window = Window { requests: 10, ok: 10, latencies_ms: vec![1.0; 10] };
            let security = mtls("frontend", "catalog");
            history.push(i as f64, snapshot(traffic(*n, 0.0, *n, security), *n, *n, 0.0), window);
        }
        let rows = history.rows(&topology());
        // Two seconds kept: 20 requests in 2s, and the load of the last two windows.
        assert_eq!((rows[0].rps, rows[1].rps), (10.0, 10.0));
        assert_eq!(rows[1].split, [("v1".to_owned(), 1.0), ("v2".to_owned(), 0.0)]);
    }
}
