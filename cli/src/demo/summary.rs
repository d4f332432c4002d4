//! The end of a run, for people and for tests: what the load saw, how the canary's traffic
//! split before and after the edit, how each edge was secured (mutual TLS and the SPIFFE IDs
//! its proxies labelled it with), what the plaintext client from outside the mesh got, what the
//! call an AuthorizationPolicy denies got (and the callee's proxies counted), what each proxy
//! counted and how much memory the proxies held, the trace of one request and the access log
//! lines of every edge, and every process and namespace the run made (all gone by the time it
//! is printed).

use std::collections::BTreeMap;

use serde::Serialize;

use super::access_logs::AccessLogReport;
use super::authorization::AuthorizationReport;
use super::identity::ProbeReport;
use super::table::{Row, render};
use super::trace::TraceReport;

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// `namespaces` (root: injection, redirect, proxies as UID 1337) or `explicit`.
    pub mode: &'static str,
    /// From the command's start until every pod's app was up behind its ready proxy.
    pub startup_seconds: f64,
    pub load_seconds: f64,
    pub rate: u32,
    pub requests: Requests,
    /// The first few failed requests, as the load saw them.
    pub failures: Vec<String>,
    pub canary: Option<CanaryReport>,
    /// The replica that goes bad halfway and the ejections it led to (outlier detection).
    pub outlier: Option<OutlierReport>,
    /// Requests fault injection delayed or aborted.
    pub faults: FaultReport,
    pub proxies: Vec<ProxyReport>,
    pub total_proxy_rss_bytes: u64,
    /// Of that, the proxies' own memory (anonymous: heap and stacks); the rest is the
    /// executable's pages, shared with every other process of the demo.
    pub total_proxy_anon_bytes: u64,
    /// Each edge over the whole run.
    pub edges: Vec<Row>,
    /// The plaintext client from outside the mesh.
    pub plaintext_client: Option<ProbeReport>,
    /// The call from inside the mesh that an AuthorizationPolicy denies.
    pub authorization: Option<AuthorizationReport>,
    /// One request of the load, traced through the mesh (when the mesh config has a tracing
    /// provider for the demo's collector to stand in for).
    pub trace: Option<TraceReport>,
    /// The proxies' access log lines per edge (when they go to the proxies' standard output).
    pub access_logs: Option<AccessLogReport>,
    pub pids: Vec<u32>,
    pub namespaces: Vec<String>,
    pub run_dir: String,
    /// Whether every process and namespace the run made was gone at the end.
    pub cleaned_up: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Requests {
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    pub skipped: u64,
}

/// Outlier detection over the run: which pods went bad (their apps sent SIGUSR1 halfway), and
/// the ejections the callers' proxies counted (`trellis_outlier_ejections_total`).
#[derive(Clone, Debug, Serialize)]
pub struct OutlierReport {
    pub went_bad: Vec<String>,
    pub went_bad_seconds: Option<f64>,
    pub ejections: u64,
    pub by_reason: BTreeMap<String, u64>,
    pub by_proxy: BTreeMap<String, u64>,
}

/// Fault injection over the run, from the callers' `istio_requests_total` response flags.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FaultReport {
    /// Flag `DI`.
    pub delayed: u64,
    /// Flag `FI`.
    pub aborted: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct CanaryReport {
    pub virtual_service: String,
    pub service: String,
    pub before: Split,
    pub after: Split,
    /// From the edit until every proxy acknowledged a newer config.
    pub switch_seconds: Option<f64>,
    pub error: Option<String>,
}

/// Weights as configured and answers as served, by subset.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Split {
    pub weights: BTreeMap<String, u32>,
    pub answers: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProxyReport {
    pub pod: String,
    pub pid: u32,
    pub rss_bytes: u64,
    pub anon_bytes: u64,
    /// Requests the proxy delivered to its app.
    pub inbound_requests: u64,
    /// Requests the proxy sent out for its app.
    pub outbound_requests: u64,
    /// Of the inbound requests, those that came over mutual TLS.
    pub inbound_mutual_tls_requests: u64,
    /// Inbound connections it refused (`trellis_inbound_connections_refused_total`).
    pub refused_connections: u64,
    /// Requests and connections AuthorizationPolicy denied
    /// (`trellis_authz_decisions_total{decision="deny"}`).
    pub denied_requests: u64,
    /// Its certificate's identity, as its `/certs` showed it once ready.
    pub spiffe_id: Option<String>,
}

impl Summary {
    /// How each edge was secured, with the full SPIFFE IDs, and the plaintext client.
    fn security_lines(&self) -> Vec<String> {
        let mut lines = vec![
            "Mutual TLS, as the proxies labelled the requests (connection_security_policy, source_principal → \
             destination_principal):"
                .to_owned(),
        ];
        let edges: Vec<String> = self.edges.iter().map(|e| format!("{} → {}", e.from, e.to)).collect();
        let width = edges.iter().map(|e| e.chars().count()).max().unwrap_or(0);
        for (edge, name) in self.edges.iter().zip(&edges) {
            let total: f64 = edge.security.iter().map(|s| s.requests).sum();
            if edge.security.is_empty() {
                lines.push(format!("  {name:<width$}  no requests"));
            }
            for secured in &edge.security {
                let s = &secured.security;
                let share = format!("{:.0} of {:.0} requests", secured.requests, total);
                lines.push(if s.mutual_tls() {
                    format!(
                        "  {name:<width$}  {}  {} → {}  ({share})",
                        s.policy, s.source_principal, s.destination_principal
                    )
                } else if edge.from == "load" {
                    format!(
                        "  {name:<width$}  {} (plaintext: the load is outside the mesh, as {}'s proxy counted it; \
                         {share})",
                        s.policy, edge.to
                    )
                } else {
                    format!("  {name:<width$}  {} (plaintext; {share})", s.policy)
                });
            }
        }
        match &self.plaintext_client {
            Some(probe) => {
                let mut line = probe.line();
                line[..1].make_ascii_uppercase();
                lines.push(line + ".");
            }
            None => lines.push("No plaintext client tried the mesh (no pod besides the entry).".to_owned()),
        }
        lines
    }

    /// The denied call, and the callee's denials while the load ran.
    fn authorization_lines(&self) -> Vec<String> {
        let Some(report) = &self.authorization else {
            return vec![
                "No call to be denied: no ALLOW AuthorizationPolicy of the example plainly leaves a pod of the mesh \
                 out."
                    .to_owned(),
            ];
        };
        let mut lines = vec![
            format!(
                "Authorization: {} ({}) allows only {} to call {}:",
                report.policy,
                report.file,
                report.allowed.join(", "),
                report.to
            ),
            format!("  {}", report.line()),
        ];
        if let Some(during) = report.counter_delta_since_load {
            let callers: Vec<String> = self
                .edges
                .iter()
                .filter(|e| e.to == report.to)
                .map(|e| {
                    let n = e.security.iter().map(|s| s.requests).sum::<f64>();
                    format!("{} → {} {n:.0} request{}", e.from, e.to, if n == 1.0 { "" } else { "s" })
                })
                .collect();
            lines.push(format!(
                "  since the load began: {}; {}'s proxies counted {} denial{}{}",
                if callers.is_empty() { "no requests".to_owned() } else { callers.join(", ") },
                report.to,
                during,
                if during == 1 { "" } else { "s" },
                if during == 0 {
                    " (trellis_authz_decisions_total{decision=\"deny\"} unchanged)"
                } else {
                    ""
                }
            ));
        }
        lines
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

impl Split {
    fn describe(&self) -> String {
        let weights: Vec<String> = self.weights.iter().map(|(s, w)| format!("{s} {w}")).collect();
        let total: u64 = self.answers.values().sum();
        let shares: Vec<String> = self
            .answers
            .iter()
            .map(|(s, n)| {
                format!("{s} {:.1}%", if total > 0 { *n as f64 * 100.0 / total as f64 } else { 0.0 })
            })
            .collect();
        format!("weights {} → served {} (of {total})", weights.join(" / "), shares.join(" · "))
    }
}

impl Summary {
    pub fn text(&self) -> Vec<String> {
        let mode = match self.mode {
            "namespaces" => "pods in network namespaces, traffic intercepted",
            _ => "explicit mode, apps call their proxies directly",
        };
        let mut lines =
            vec![format!("Over the whole run ({:.0}s at {} req/s, {mode}):", self.load_seconds, self.rate)];
        lines.extend(render(&self.edges).into_iter().map(|l| format!("  {l}")));
        let r = &self.requests;
        let mut requests = format!("Requests: {} sent, {} answered 200, {} failed", r.sent, r.ok, r.failed);
        if r.skipped > 0 {
            requests.push_str(&format!(", {} not sent (too many in flight)", r.skipped));
        }
        lines.push(requests + ".");
        lines.extend(self.failures.iter().map(|f| format!("  failed: {f}")));
        lines.extend(self.security_lines());
        lines.extend(self.authorization_lines());
        if let Some(c) = &self.canary {
            lines.push(format!("Canary, VirtualService {} ({}):", c.virtual_service, c.service));
            lines.push(format!("  before the edit: {}", c.before.describe()));
            match (&c.error, c.switch_seconds) {
                (Some(e), _) => lines.push(format!("  the edit: {e}")),
                (None, Some(s)) => lines.push(format!(
                    "  after the edit:  {} (every proxy had it {:.2}s after the file changed)",
                    c.after.describe(),
                    s
                )),
                (None, None) => lines.push("  the run ended before the edit".to_owned()),
            }
        }
        if let Some(o) = &self.outlier {
            let reasons: Vec<String> = o.by_reason.iter().map(|(r, n)| format!("{n} {r}")).collect();
            let by: Vec<String> = o.by_proxy.iter().map(|(p, n)| format!("{p} {n}")).collect();
            lines.push(match o.went_bad_seconds {
                Some(at) => format!(
                    "Outlier detection: {} went bad at {at:.0}s; ejected {} times ({}) by the proxies of {}.",
                    o.went_bad.join(", "),
                    o.ejections,
                    if reasons.is_empty() { "none".to_owned() } else { reasons.join(", ") },
                    if by.is_empty() { "none".to_owned() } else { by.join(", ") }
                ),
                None => "Outlier detection: the run ended before any replica went bad.".to_owned(),
            });
        }
        if self.faults.delayed + self.faults.aborted > 0 {
            lines.push(format!(
                "Fault injection: {} requests delayed (DI), {} aborted (FI).",
                self.faults.delayed, self.faults.aborted
            ));
        }
        if let Some(trace) = &self.trace {
            lines.extend(trace.lines());
        }
        if let Some(logs) = &self.access_logs {
            lines.extend(logs.lines());
        }
        let counted: Vec<String> = self
            .proxies
            .iter()
            .map(|p| format!("{} {} in / {} out", p.pod, p.inbound_requests, p.outbound_requests))
            .collect();
        lines.push(format!("Requests each proxy counted: {}.", counted.join(", ")));
        let refused: Vec<String> =
            self.proxies.iter().map(|p| format!("{} {}", p.pod, p.refused_connections)).collect();
        lines.push(format!("Inbound connections each proxy refused: {}.", refused.join(", ")));
        let denied: Vec<String> =
            self.proxies.iter().map(|p| format!("{} {}", p.pod, p.denied_requests)).collect();
        lines.push(format!("Requests each proxy denied by AuthorizationPolicy: {}.", denied.join(", ")));
        let each: Vec<String> =
            self.proxies.iter().map(|p| format!("{} {}", p.pod, mib(p.rss_bytes))).collect();
        lines.push(format!(
            "Proxies' memory: {} total RSS for {} proxies ({}); of that, {} is their own heap and stacks, the rest \
             the trellis executable's pages, shared by every process of the demo.",
            mib(self.total_proxy_rss_bytes),
            self.proxies.len(),
            each.join(", "),
            mib(self.total_proxy_anon_bytes)
        ));
        lines.push(format!(
            "Mesh up in {:.2}s. {}",
            self.startup_seconds,
            if self.cleaned_up {
                format!(
                    "Removed what the demo made: {} processes, {} network namespaces.",
                    self.pids.len(),
                    self.namespaces.len()
                )
            } else {
                format!(
                    "Some of what the demo made is still there; `trellis demo --cleanup` removes it ({}).",
                    self.run_dir
                )
            }
        ));
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::authorization::CounterChange;
    use crate::demo::metrics::{AuthzDecision, Security};
    use crate::demo::table::Secured;

    fn edge(from: &str, to: &str, security: Vec<Secured>) -> Row {
        Row {
            from: from.into(),
            to: to.into(),
            rps: 50.0,
            success: Some(1.0),
            p50_ms: Some(1.0),
            p99_ms: Some(2.0),
            split: Vec::new(),
            security,
        }
    }

    fn secured(policy: &str, from: &str, to: &str, requests: f64, share: f64) -> Secured {
        Secured {
            security: Security {
                policy: policy.into(),
                source_principal: from.into(),
                destination_principal: to.into(),
            },
            requests,
            share,
        }
    }

    #[test]
    fn the_text_names_each_edges_security_and_the_plaintext_client() {
        let a = "spiffe://cluster.local/ns/shop/sa/frontend";
        let b = "spiffe://cluster.local/ns/shop/sa/catalog";
        let summary = Summary {
            mode: "explicit",
            startup_seconds: 0.3,
            load_seconds: 10.0,
            rate: 50,
            requests: Requests { sent: 500, ok: 500, failed: 0, skipped: 0 },
            failures: Vec::new(),
            canary: None,
            outlier: Some(OutlierReport {
                went_bad: vec!["inventory-2".into()],
                went_bad_seconds: Some(10.0),
                ejections: 2,
                by_reason: BTreeMap::from([("consecutive_5xx".into(), 2)]),
                by_proxy: BTreeMap::from([("catalog-v1".into(), 2)]),
            }),
            faults: FaultReport { delayed: 50, aborted: 0 },
            proxies: Vec::new(),
            total_proxy_rss_bytes: 0,
            total_proxy_anon_bytes: 0,
            edges: vec![
                edge("load", "frontend", vec![secured("none", "unknown", "unknown", 500.0, 1.0)]),
                edge(
                    "frontend",
                    "catalog",
                    vec![
                        secured("mutual_tls", a, b, 499.0, 0.998),
                        secured("none", "unknown", "unknown", 1.0, 0.002),
                    ],
                ),
                edge("catalog", "inventory", Vec::new()),
            ],
            plaintext_client: Some(ProbeReport {
                pod: "inventory".into(),
                target: "inventory:8080".into(),
                address: "127.77.0.13:15006".into(),
                refused: true,
                outcome: "the connection was reset without an answer".into(),
                proxy_refused: BTreeMap::from([("plaintext".into(), 1)]),
                proxy_refused_added: 1,
            }),
            authorization: Some(AuthorizationReport {
                from: "inventory".into(),
                to: "catalog".into(),
                policy: "shop/catalog-callers".into(),
                file: "istio/authorization.yaml".into(),
                allowed: vec!["cluster.local/ns/shop/sa/frontend".into()],
                status: Some(403),
                body: "RBAC: access denied".into(),
                denied: true,
                decision: "no ALLOW policy matched (shop/catalog-callers selects catalog)".into(),
                counter_delta: 1,
                counters: vec![CounterChange {
                    pod: "catalog-v1".into(),
                    series: AuthzDecision {
                        decision: "deny".into(),
                        policy: "none".into(),
                        rule: String::new(),
                        protocol: "http".into(),
                    },
                    before: 0,
                    after: 1,
                }],
                counter_delta_since_load: Some(0),
                ..AuthorizationReport::default()
            }),
            trace: None,
            access_logs: None,
            pids: Vec::new(),
            namespaces: Vec::new(),
            run_dir: String::new(),
            cleaned_up: true,
        };
        let text = summary.text().join("\n");
        // Even one plaintext request in five hundred shows in the table.
        assert!(text.contains("  frontend → catalog      50.0   100.0%     1.0ms     2.0ms         mTLS frontend → catalog (99.8%)"), "{text}");
        for expected in [
            "  load → frontend      none (plaintext: the load is outside the mesh, as frontend's proxy counted it; 500 of 500 requests)",
            &format!("  frontend → catalog   mutual_tls  {a} → {b}  (499 of 500 requests)"),
            "  frontend → catalog   none (plaintext; 1 of 500 requests)",
            "  catalog → inventory  no requests",
            "Plaintext client outside the mesh → inventory:8080 (127.77.0.13:15006): refused (STRICT mutual TLS): the \
             connection was reset without an answer; inventory's proxy counted 1 refused connection \
             (trellis_inbound_connections_refused_total: plaintext 1).",
            "Authorization: shop/catalog-callers (istio/authorization.yaml) allows only cluster.local/ns/shop/sa/frontend \
             to call catalog:\n  inventory → catalog: 403 RBAC: access denied — denied by AuthorizationPolicy: no ALLOW \
             policy matched (shop/catalog-callers selects catalog); counted by catalog-v1's proxy: \
             trellis_authz_decisions_total{decision=\"deny\",policy=\"none\",rule=\"\",protocol=\"http\"} 0 → 1",
            "  since the load began: frontend → catalog 500 requests; catalog's proxies counted 0 denials \
             (trellis_authz_decisions_total{decision=\"deny\"} unchanged)",
            "Outlier detection: inventory-2 went bad at 10s; ejected 2 times (2 consecutive_5xx) by the proxies of \
             catalog-v1 2.",
            "Fault injection: 50 requests delayed (DI), 0 aborted (FI).",
        ] {
            assert!(text.contains(expected), "{expected:?} not in:\n{text}");
        }
    }
}
