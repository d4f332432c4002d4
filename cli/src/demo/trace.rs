//! One request, traced: one of the load's requests (a second in, once the proxies' connections
//! are open) carries a W3C `traceparent` with the sampled flag (and an `x-request-id`), so every
//! proxy on its path records it whatever the mesh's sampling rate, as an upstream sampling
//! decision is honoured in Istio. The apps pass the trace headers on; the proxies export their
//! CLIENT and SERVER spans to the demo's collector; at the end the spans of that one trace are
//! put back together as a tree under the demo's own timing of the request, with each span's
//! service, pod, duration and status.
//!
//! The spans came over the network: ids may repeat or point nowhere. A span is placed once at
//! most, and spans that hang from nothing the tree reaches are listed apart.

use std::collections::{BTreeMap, HashSet};

use http::{HeaderMap, HeaderValue};
use serde::Serialize;

use super::collector::{CollectorCounts, Span};

/// How deep a tree is drawn at most (the demo's path is five spans deep).
const MAX_DEPTH: usize = 32;

/// The request the demo traces: its ids, chosen here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TracedRequest {
    pub trace_id: u128,
    /// The demo's own span: the parent of the entry proxy's SERVER span.
    pub span_id: u64,
    pub request_id: String,
}

impl TracedRequest {
    pub fn new() -> TracedRequest {
        let trace_id = loop {
            let id = rand::random::<u128>();
            if id != 0 {
                break id;
            }
        };
        let span_id = loop {
            let id = rand::random::<u64>();
            if id != 0 {
                break id;
            }
        };
        TracedRequest {
            trace_id,
            span_id,
            request_id: format!("trellis-demo-traced-{:016x}", rand::random::<u64>()),
        }
    }

    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    pub fn span_id_hex(&self) -> String {
        format!("{:016x}", self.span_id)
    }

    /// W3C trace context, version 00, flags 01 (sampled).
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-01", self.trace_id_hex(), self.span_id_hex())
    }

    pub fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        // Both are plain ASCII made above.
        if let Ok(value) = HeaderValue::from_str(&self.traceparent()) {
            headers.insert("traceparent", value);
        }
        if let Ok(value) = HeaderValue::from_str(&self.request_id) {
            headers.insert("x-request-id", value);
        }
        headers
    }
}

/// The load's view of the traced request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TracedAnswer {
    pub status: Option<u16>,
    pub error: Option<String>,
    pub start_unix_micros: u64,
    pub duration_ms: f64,
    /// The pods its answer names, each of which served it.
    pub pods: Vec<String>,
}

impl TracedAnswer {
    /// Spans a complete trace has: a SERVER span per pod that served, and a CLIENT span per
    /// call between them (a retry adds more).
    pub fn expected_spans(&self) -> usize {
        (2 * self.pods.len()).saturating_sub(1).max(1)
    }
}

/// A span placed in the tree.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TraceNode {
    pub span_id: String,
    pub parent_id: Option<String>,
    /// `client` (the caller's proxy, outbound) or `server` (the callee's proxy, inbound).
    pub kind: String,
    /// The proxy's canonical service (`catalog`); `load` for the demo's own span.
    pub service: String,
    /// The pod whose proxy reported it (from its node id).
    pub pod: Option<String>,
    /// For a client span, the service it called.
    pub to: Option<String>,
    /// Istio's operation name (`catalog.shop.svc.cluster.local:8080/*`).
    pub name: String,
    pub duration_ms: f64,
    /// Since the demo sent the request.
    pub start_offset_ms: f64,
    pub status: Option<u16>,
    pub response_flags: Option<String>,
    /// The `x-request-id` the proxy saw (the access logs' too).
    pub request_id: Option<String>,
    pub children: Vec<TraceNode>,
}

impl TraceNode {
    fn label(&self) -> String {
        match (&self.kind[..], &self.to) {
            ("client", Some(to)) => format!("{} → {to}", self.service),
            _ => self.service.clone(),
        }
    }

    /// Every node of the tree.
    #[cfg(test)]
    pub fn count(&self) -> usize {
        1 + self.children.iter().map(TraceNode::count).sum::<usize>()
    }
}

/// The traced request, as the proxies reported it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TraceReport {
    pub trace_id: String,
    /// What the demo sent.
    pub traceparent: String,
    pub request_id: String,
    /// Where the demo's collector listened (`None`: it could not).
    pub collector: Option<String>,
    /// Spans of this trace the collector received, and how many a whole trace has.
    pub spans: usize,
    pub expected_spans: usize,
    /// The demo's own client span, with the proxies' spans under it.
    pub root: Option<TraceNode>,
    /// Spans of the trace whose parent is not in it.
    pub orphans: Vec<TraceNode>,
    /// Why there is no (whole) trace.
    pub error: Option<String>,
    /// All the collector took during the run (the mesh's own sampling included).
    pub received: CollectorCounts,
    /// The mesh config's `defaultConfig.tracing.sampling`.
    pub sampling_percent: f64,
    /// What the proxies counted of their exports (`trellis_trace_spans_total`, by result).
    pub proxies_counted: BTreeMap<String, u64>,
}

/// Puts the trace together: the demo's span (`entry_service` called) at the root, each span
/// under its parent, children by start time.
pub fn tree(
    traced: &TracedRequest,
    answer: &TracedAnswer,
    entry_service: &str,
    spans: &[Span],
) -> (TraceNode, Vec<TraceNode>) {
    let start = answer.start_unix_micros;
    let mut root = TraceNode {
        span_id: traced.span_id_hex(),
        parent_id: None,
        kind: "client".to_owned(),
        service: "load".to_owned(),
        pod: None,
        to: Some(entry_service.to_owned()),
        name: "the demo's request".to_owned(),
        duration_ms: answer.duration_ms,
        start_offset_ms: 0.0,
        status: answer.status,
        response_flags: None,
        request_id: Some(traced.request_id.clone()),
        children: Vec::new(),
    };
    let mut by_parent: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, span) in spans.iter().enumerate() {
        if let Some(parent) = &span.parent_id {
            by_parent.entry(parent.to_ascii_lowercase()).or_default().push(i);
        }
    }
    for list in by_parent.values_mut() {
        list.sort_by_key(|&i| (spans[i].timestamp.unwrap_or(u64::MAX), i));
    }
    let mut placed = HashSet::new();
    root.children = children(&root.span_id, spans, &by_parent, &mut placed, start, 1);
    let orphans = spans
        .iter()
        .enumerate()
        .filter(|(i, _)| !placed.contains(i))
        .map(|(_, span)| node(span, start))
        .collect();
    (root, orphans)
}

fn children(
    parent: &str,
    spans: &[Span],
    by_parent: &BTreeMap<String, Vec<usize>>,
    placed: &mut HashSet<usize>,
    start: u64,
    depth: usize,
) -> Vec<TraceNode> {
    let Some(list) = by_parent.get(parent) else { return Vec::new() };
    let mut out = Vec::new();
    for &i in list {
        // A span is placed once, however its ids repeat.
        if depth > MAX_DEPTH || !placed.insert(i) {
            continue;
        }
        let mut child = node(&spans[i], start);
        child.children = children(&child.span_id, spans, by_parent, placed, start, depth + 1);
        out.push(child);
    }
    out
}

fn node(span: &Span, start: u64) -> TraceNode {
    let tag = |name: &str| span.tags.get(name).filter(|v| !v.is_empty() && *v != "-").cloned();
    let local = span.local_endpoint.as_ref().and_then(|e| e.service_name.clone());
    let service = tag("istio.canonical_service")
        .or_else(|| local.map(|s| s.split('.').next().unwrap_or_default().to_owned()))
        .unwrap_or_else(|| "unknown".to_owned());
    let kind = span.kind.as_deref().unwrap_or("").to_ascii_lowercase();
    // Istio's node id: sidecar~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local
    let pod = tag("node_id").and_then(|id| {
        let pod_ns = id.split('~').nth(2)?.to_owned();
        match tag("istio.namespace") {
            Some(ns) => Some(pod_ns.strip_suffix(&format!(".{ns}")).unwrap_or(&pod_ns).to_owned()),
            None => Some(pod_ns),
        }
    });
    let name = span.name.clone().unwrap_or_default();
    let to = (kind == "client").then(|| {
        // outbound|8080|v1|catalog.shop.svc.cluster.local, else the operation's host.
        let host = tag("upstream_cluster")
            .and_then(|c| c.strip_prefix("outbound|").and_then(|c| c.split('|').nth(2)).map(str::to_owned))
            .unwrap_or_else(|| name.split(':').next().unwrap_or_default().to_owned());
        host.split('.').next().unwrap_or_default().to_owned()
    });
    let micros_to_ms = |us: u64| us as f64 / 1000.0;
    TraceNode {
        span_id: span.id.to_ascii_lowercase(),
        parent_id: span.parent_id.as_ref().map(|p| p.to_ascii_lowercase()),
        kind,
        service,
        pod,
        to,
        name,
        duration_ms: micros_to_ms(span.duration.unwrap_or(0)),
        start_offset_ms: span.timestamp.map_or(0.0, |t| (t as f64 - start as f64) / 1000.0),
        status: tag("http.status_code").and_then(|s| s.parse().ok()),
        response_flags: tag("response_flags"),
        request_id: tag("guid:x-request-id"),
        children: Vec::new(),
    }
}

impl TraceReport {
    /// The summary's lines: the tree with timings, or why there is none.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let head = format!(
            "Trace {} — one of the load's requests, sent with traceparent {} (sampled) and x-request-id {}",
            self.trace_id, self.traceparent, self.request_id
        );
        let Some(root) = &self.root else {
            lines.push(format!("{head}: no trace ({}).", self.error.as_deref().unwrap_or("no spans")));
            lines.extend(self.counts_line());
            return lines;
        };
        lines.push(format!(
            "{head}; {} of {} spans reached the demo's Zipkin collector{}:",
            self.spans,
            self.expected_spans,
            self.collector.as_ref().map_or(String::new(), |c| format!(" on {c}"))
        ));
        let mut rows = Vec::new();
        render(root, "", "", &mut rows);
        let width = rows.iter().map(|(label, _)| label.chars().count()).max().unwrap_or(0);
        for (label, node) in rows {
            let pad = width - label.chars().count();
            let status = node.status.map_or("-".to_owned(), |s| s.to_string());
            let flags = node.response_flags.as_deref().map_or(String::new(), |f| format!(" {f}"));
            let whose = match (&node.pod, node.service.as_str()) {
                (Some(pod), _) => format!("  {pod}'s proxy"),
                (None, "load") => "  the demo's own timing".to_owned(),
                _ => String::new(),
            };
            lines.push(format!(
                "  {label}{}  {:<6} {:>8.2} ms  {status}{flags}{whose}",
                " ".repeat(pad),
                node.kind,
                node.duration_ms
            ));
        }
        for orphan in &self.orphans {
            lines.push(format!(
                "  (a span whose parent {} is not in the trace: {} {} {:.2} ms)",
                orphan.parent_id.as_deref().unwrap_or("-"),
                orphan.label(),
                orphan.kind,
                orphan.duration_ms
            ));
        }
        if let Some(e) = &self.error {
            lines.push(format!("  ({e})"));
        }
        lines.extend(self.counts_line());
        lines
    }

    fn counts_line(&self) -> Option<String> {
        let r = &self.received;
        let counted: Vec<String> = self.proxies_counted.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let counted = if counted.is_empty() { "none".to_owned() } else { counted.join(", ") };
        Some(format!(
            "  The collector took {} spans of {} traces in all (the mesh samples {}% of the load besides); the \
             proxies counted their spans (trellis_trace_spans_total): {counted}.",
            r.spans, r.traces, self.sampling_percent
        ))
    }
}

/// Depth first: each node's label with its tree prefix.
fn render<'a>(node: &'a TraceNode, prefix: &str, branch: &str, rows: &mut Vec<(String, &'a TraceNode)>) {
    rows.push((format!("{prefix}{branch}{}", node.label()), node));
    let next = match branch {
        "" => prefix.to_owned(),
        "└─ " => format!("{prefix}   "),
        _ => format!("{prefix}│  "),
    };
    for (i, child) in node.children.iter().enumerate() {
        let last = i + 1 == node.children.len();
        render(child, &next, if last { "└─ " } else { "├─ " }, rows);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::collector::Endpoint;

    const START: u64 = 1_700_000_000_000_000;

    fn span(id: &str, parent: &str, kind: &str, pod: &str, service: &str, at: u64, us: u64) -> Span {
        let mut tags = BTreeMap::from([
            ("node_id".to_owned(), format!("sidecar~10.77.0.11~{pod}.shop~shop.svc.cluster.local")),
            ("istio.namespace".to_owned(), "shop".to_owned()),
            ("istio.canonical_service".to_owned(), service.to_owned()),
            ("http.status_code".to_owned(), "200".to_owned()),
            ("response_flags".to_owned(), "-".to_owned()),
        ]);
        if kind == "CLIENT" {
            let to = if service == "frontend" { "catalog" } else { "inventory" };
            tags.insert("upstream_cluster".to_owned(), format!("outbound|8080||{to}.shop.svc.cluster.local"));
        }
        Span {
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".to_owned(),
            id: id.to_owned(),
            parent_id: Some(parent.to_owned()),
            kind: Some(kind.to_owned()),
            name: Some(format!("{service}.shop.svc.cluster.local:8080/*")),
            timestamp: Some(START + at),
            duration: Some(us),
            local_endpoint: Some(Endpoint {
                service_name: Some(format!("{service}.shop")),
                ..Endpoint::default()
            }),
            remote_endpoint: None,
            tags,
        }
    }

    fn traced() -> TracedRequest {
        TracedRequest { trace_id: 0x4bf92f3577b34da6a3ce929d0e0e4736, span_id: 0xa, request_id: "r-1".into() }
    }

    fn answer() -> TracedAnswer {
        TracedAnswer {
            status: Some(200),
            error: None,
            start_unix_micros: START,
            duration_ms: 4.2,
            pods: vec!["catalog-v1".into(), "frontend".into(), "inventory".into()],
        }
    }

    /// The path frontend → catalog → inventory, given out of order: a chain under the demo's span.
    fn path() -> Vec<Span> {
        vec![
            span("0000000000000005", "0000000000000004", "SERVER", "inventory", "inventory", 1500, 600),
            span("0000000000000002", "0000000000000001", "CLIENT", "frontend", "frontend", 200, 3100),
            span("0000000000000001", "000000000000000a", "SERVER", "frontend", "frontend", 100, 3900),
            span("0000000000000004", "0000000000000003", "CLIENT", "catalog-v1", "catalog", 1200, 900),
            span("0000000000000003", "0000000000000002", "SERVER", "catalog-v1", "catalog", 400, 2800),
        ]
    }

    #[test]
    fn headers_say_sampled_with_the_requests_ids() {
        let t = traced();
        let headers = t.headers();
        assert_eq!(headers["traceparent"], "00-4bf92f3577b34da6a3ce929d0e0e4736-000000000000000a-01");
        assert_eq!(headers["x-request-id"], "r-1");
        let fresh = TracedRequest::new();
        assert_ne!((fresh.trace_id, fresh.span_id), (0, 0));
        assert_eq!(fresh.traceparent().len(), 55);
        assert_eq!(answer().expected_spans(), 5);
        assert_eq!(TracedAnswer::default().expected_spans(), 1);
    }

    #[test]
    fn the_spans_make_one_chain_under_the_demos_request() {
        let (root, orphans) = tree(&traced(), &answer(), "frontend", &path());
        assert!(orphans.is_empty(), "{orphans:?}");
        assert_eq!(root.count(), 6);
        let mut chain = Vec::new();
        let mut node = &root;
        loop {
            chain.push((node.kind.as_str(), node.label(), node.pod.clone()));
            match node.children.as_slice() {
                [] => break,
                [only] => {
                    assert_eq!(only.parent_id.as_deref(), Some(node.span_id.as_str()));
                    node = only;
                }
                more => panic!("{} children", more.len()),
            }
        }
        let pod = |p: &str| Some(p.to_owned());
        assert_eq!(
            chain,
            [
                ("client", "load → frontend".to_owned(), None),
                ("server", "frontend".to_owned(), pod("frontend")),
                ("client", "frontend → catalog".to_owned(), pod("frontend")),
                ("server", "catalog".to_owned(), pod("catalog-v1")),
                ("client", "catalog → inventory".to_owned(), pod("catalog-v1")),
                ("server", "inventory".to_owned(), pod("inventory")),
            ]
        );
        let report = TraceReport {
            trace_id: traced().trace_id_hex(),
            traceparent: traced().traceparent(),
            request_id: "r-1".into(),
            spans: 5,
            expected_spans: 5,
            root: Some(root),
            ..TraceReport::default()
        };
        let text = report.lines().join("\n");
        for expected in [
            "  load → frontend                  client     4.20 ms  200  the demo's own timing",
            "  └─ frontend                      server     3.90 ms  200  frontend's proxy",
            "           └─ catalog → inventory  client     0.90 ms  200  catalog-v1's proxy",
            "              └─ inventory         server     0.60 ms  200  inventory's proxy",
        ] {
            assert!(text.contains(expected), "{expected:?} not in\n{text}");
        }
    }

    #[test]
    fn spans_from_elsewhere_or_with_repeated_ids_are_placed_once_or_set_apart() {
        let mut spans = path();
        // A retry: a second SERVER span under the same CLIENT span, earlier than the first.
        let mut retry =
            span("0000000000000006", "0000000000000004", "SERVER", "inventory-2", "inventory", 1250, 100);
        retry.tags.insert("http.status_code".into(), "503".into());
        spans.push(retry);
        // A loop of repeated ids, and a span hanging from nothing.
        spans.push(span("0000000000000004", "0000000000000005", "CLIENT", "x", "x", 9, 1));
        spans.push(span("00000000000000ff", "00000000000000fe", "SERVER", "y", "y", 9, 1));
        let (root, orphans) = tree(&traced(), &answer(), "frontend", &spans);
        assert_eq!(root.count() + orphans.len(), spans.len() + 1, "every span placed once");
        let catalog_client = &root.children[0].children[0].children[0].children[0];
        let callees: Vec<_> = catalog_client.children.iter().map(|c| (c.pod.clone(), c.status)).collect();
        assert_eq!(callees, [(Some("inventory-2".into()), Some(503)), (Some("inventory".into()), Some(200))]);
        assert!(orphans.iter().any(|o| o.span_id == "00000000000000ff"));
        let text = TraceReport { root: Some(root), orphans, ..TraceReport::default() }.lines().join("\n");
        assert!(text.contains("├─ inventory"), "{text}");
        assert!(text.contains("a span whose parent 00000000000000fe is not in the trace"), "{text}");
    }

    #[test]
    fn no_trace_says_why() {
        let report = TraceReport {
            trace_id: "t".into(),
            error: Some("the collector could not listen".into()),
            proxies_counted: BTreeMap::from([("export_failed".into(), 5)]),
            ..TraceReport::default()
        };
        let text = report.lines().join("\n");
        assert!(text.contains(": no trace (the collector could not listen)."), "{text}");
        assert!(text.contains("(trellis_trace_spans_total): export_failed 5"), "{text}");
    }
}
