//! The end of a run, for people and for tests: what the load saw, how the canary's traffic
//! split before and after the edit, what each proxy counted and how much memory the proxies
//! held, and every process and namespace the run made (all gone by the time it is printed).

use std::collections::BTreeMap;

use serde::Serialize;

use super::table::{Row, render};

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
    pub proxies: Vec<ProxyReport>,
    pub total_proxy_rss_bytes: u64,
    /// Of that, the proxies' own memory (anonymous: heap and stacks); the rest is the
    /// executable's pages, shared with every other process of the demo.
    pub total_proxy_anon_bytes: u64,
    /// Each edge over the whole run.
    pub edges: Vec<Row>,
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
        let counted: Vec<String> = self
            .proxies
            .iter()
            .map(|p| format!("{} {} in / {} out", p.pod, p.inbound_requests, p.outbound_requests))
            .collect();
        lines.push(format!("Requests each proxy counted: {}.", counted.join(", ")));
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
