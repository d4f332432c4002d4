//! The call an AuthorizationPolicy denies, made for real. Once, before the load, a pod of the
//! mesh that the example's ALLOW policy leaves out (inventory, for catalog) calls that service
//! as its app would: this executable, run once inside the pod as the app's user
//! (`trellis demo --call URL --call-via ADDR`), so the pod's proxy captures the call and opens
//! mutual TLS with the pod's identity (in explicit mode it calls the proxy's outbound port, as
//! the app does). The callee's proxies' `trellis_authz_decisions_total` is read before and
//! after. What the report claims comes from the answer and those counters; only the policy's
//! name comes from the demo's own YAML (an ALLOW policy that matches nothing is counted as
//! `policy="none"`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use http::HeaderMap;
use serde::Serialize;
use serde_json::{Value, json};

use super::metrics::{self, AuthzDecision, ProxyStats, Reporter};
use super::plan::{DeniedCall, Mode};
use super::session::Session;
use super::table::Snapshot;
use crate::http_client::Pool;

/// What Istio's sidecars (and Trellis') answer a denied HTTP request with, after a 403.
const DENIED_BODY: &str = "RBAC: access denied";
/// How long the call may take, and the callee's proxies to count it.
const WAIT: Duration = Duration::from_secs(5);

/// `trellis demo --call URL --call-via ADDR` (hidden): one GET of URL sent to ADDR, with the
/// URL's host and port as its authority; the answer (or why there was none) as one JSON line.
pub fn call_once(url: &str, via: SocketAddr) -> ExitCode {
    let answer = (|| {
        let uri: http::Uri = url.parse().map_err(|e| format!("--call {url}: {e}"))?;
        let authority = uri.authority().ok_or(format!("--call {url}: no host"))?.to_string();
        let path = uri.path_and_query().map_or_else(|| "/".to_owned(), |p| p.to_string());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the runtime: {e}"))?;
        runtime.block_on(Pool::new(via).get(&authority, &path, &HeaderMap::new(), WAIT))
    })();
    match answer {
        Ok(answer) => {
            let body = String::from_utf8_lossy(&answer.body);
            println!("{}", json!({"status": answer.status.as_u16(), "body": body}));
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{}", json!({ "error": e }));
            ExitCode::FAILURE
        }
    }
}

/// One series of a callee's proxy that the call moved.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CounterChange {
    pub pod: String,
    #[serde(flatten)]
    pub series: AuthzDecision,
    pub before: u64,
    pub after: u64,
}

/// The denied call: what the caller got, what the callee's proxies counted.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AuthorizationReport {
    /// The calling pod (`inventory`) and its identity (Istio's principal form).
    pub from: String,
    pub principal: String,
    /// The service called (`catalog`) and what was asked of it.
    pub to: String,
    pub url: String,
    /// How the call was made: from where, as whom, through which proxy.
    pub made: String,
    /// The ALLOW policy that selects the service (`shop/catalog-callers`), its file, and whom
    /// its rules allow.
    pub policy: String,
    pub file: String,
    pub allowed: Vec<String>,
    /// The answer's status and body, as the caller got it.
    pub status: Option<u16>,
    pub body: String,
    /// Why there was no answer.
    pub error: Option<String>,
    /// Answered 403 `RBAC: access denied`, and counted as denied by the callee's proxies.
    pub denied: bool,
    /// What decided, as the counters say: `no ALLOW policy matched (shop/catalog-callers selects
    /// catalog)`, or the policy and rule they name.
    pub decision: String,
    /// How much the callee's proxies' `trellis_authz_decisions_total{decision="deny"}` went up.
    pub counter_delta: u64,
    /// Each series of theirs the call moved.
    pub counters: Vec<CounterChange>,
    /// Whom the callee's proxy saw calling (`source_principal` of its istio_requests_total).
    pub source_principal: Option<String>,
    /// How much the same counters went up from the load's start to the end of the run (none
    /// when the policy lets the load's callers through).
    pub counter_delta_since_load: Option<u64>,
    /// The same question for `trellis authz check`, offline from the demo's files.
    pub check: String,
}

impl AuthorizationReport {
    fn counted(&self) -> String {
        let changes: Vec<String> = self
            .counters
            .iter()
            .map(|c| format!("{}'s proxy: {} {} → {}", c.pod, c.series.series(), c.before, c.after))
            .collect();
        if changes.is_empty() {
            format!("{}'s proxies counted no denial (trellis_authz_decisions_total)", self.to)
        } else {
            format!("counted by {}", changes.join(", "))
        }
    }

    fn answer(&self) -> String {
        match (self.status, &self.error) {
            (Some(status), _) => format!("{status} {}", self.body.trim()).trim_end().to_owned(),
            (None, Some(e)) => format!("no answer ({e})"),
            (None, None) => "no answer".to_owned(),
        }
    }

    /// One line for people.
    pub fn line(&self) -> String {
        if self.denied {
            format!(
                "{} → {}: {} — denied by AuthorizationPolicy: {}; {}",
                self.from,
                self.to,
                self.answer(),
                self.decision,
                self.counted()
            )
        } else {
            format!("{} → {}: NOT denied: {}; {}", self.from, self.to, self.answer(), self.counted())
        }
    }

    /// How the call was made and whom the callee saw, and the command that asks the same
    /// question.
    pub fn details(&self) -> Vec<String> {
        let seen = self.source_principal.as_ref().map_or(String::new(), |p| {
            format!("; {}'s proxy received it from {p} (source_principal)", self.to)
        });
        vec![
            format!("  GET {} {}{seen}", self.url, self.made),
            format!("  {} ({}) allows only {}", self.policy, self.file, self.allowed.join(", ")),
            format!("  the same question, offline: {}", self.check),
        ]
    }

    /// A few words for the live table's title.
    pub fn short(&self) -> String {
        let counted: u64 = self.counter_delta;
        if self.denied {
            format!(
                "{} → {}: {} ({}: {}; {}'s proxy counted {counted})",
                self.from,
                self.to,
                self.answer(),
                self.policy,
                self.decision.split(" (").next().unwrap_or_default(),
                self.to
            )
        } else {
            format!("{} → {}: NOT denied ({})", self.from, self.to, self.answer())
        }
    }
}

/// The denial counters of the callee's pods, by pod.
async fn scrape(session: &Session, pods: &[String]) -> Snapshot {
    let mut out = BTreeMap::new();
    for pod in session.plan.pods.iter().filter(|p| pods.contains(&p.name)) {
        out.insert(pod.name.clone(), metrics::scrape(pod.stats()).await.unwrap_or_default());
    }
    out
}

fn denied(stats: &Snapshot) -> u64 {
    stats.values().map(ProxyStats::denied_total).sum::<f64>() as u64
}

/// Makes the call from inside the caller's pod, and reads what the callee's proxies counted.
pub async fn call(session: &mut Session, call: &DeniedCall) -> AuthorizationReport {
    let before = scrape(session, &call.to_pods).await;
    let args = vec![
        "demo".to_owned(),
        "--call".to_owned(),
        call.url.clone(),
        "--call-via".to_owned(),
        call.via.to_string(),
    ];
    let (status, body, error) = match session.run_in_pod(&call.from, "call", args, WAIT).await {
        Ok(output) => answer(&output),
        Err(e) => (None, String::new(), Some(e)),
    };
    // The proxy counts a denial before it answers; a moment's grace all the same.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut after = scrape(session, &call.to_pods).await;
    while status == Some(403) && denied(&after) <= denied(&before) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = scrape(session, &call.to_pods).await;
    }
    let mut report = report(call, &before, &after, status, body, error);
    report.check = check_command(call, session.args.from.as_deref());
    report.made = match session.plan.mode {
        Mode::Namespaces => format!(
            "from inside {from}'s pod as its app's user (UID {}), captured by {from}'s proxy",
            super::session::APP_UID,
            from = call.from
        ),
        Mode::Explicit => format!(
            "to {from}'s proxy's outbound port ({}), as {from}'s app does",
            call.via,
            from = call.from
        ),
    };
    report
}

/// The caller's JSON line: status and body, or the error.
fn answer(output: &str) -> (Option<u16>, String, Option<String>) {
    let line = output.lines().rev().find(|l| l.starts_with('{')).unwrap_or_default();
    let Ok(value) = serde_json::from_str::<Value>(line) else {
        return (None, String::new(), Some(format!("the caller printed {:?}", output.trim())));
    };
    let status = value["status"].as_u64().and_then(|s| u16::try_from(s).ok());
    let body: String = value["body"].as_str().unwrap_or_default().chars().take(200).collect();
    (status, body, value["error"].as_str().map(str::to_owned))
}

/// The report, from the answer and the callee's counters before and after.
fn report(
    call: &DeniedCall,
    before: &Snapshot,
    after: &Snapshot,
    status: Option<u16>,
    body: String,
    error: Option<String>,
) -> AuthorizationReport {
    let mut counters = Vec::new();
    let mut principals = Vec::new();
    for (pod, now) in after {
        let then = before.get(pod).cloned().unwrap_or_default();
        for (series, n) in now.authz.iter().filter(|(s, _)| s.decision == "deny") {
            let was = then.authz.get(series).copied().unwrap_or(0.0);
            if *n > was {
                counters.push(CounterChange {
                    pod: pod.clone(),
                    series: series.clone(),
                    before: was as u64,
                    after: *n as u64,
                });
            }
        }
        for (key, traffic) in now.traffic.iter().filter(|((r, _), _)| *r == Reporter::Destination) {
            let window = traffic.since(then.traffic.get(key));
            for (security, n) in window.security {
                if n > 0.0 && !principals.contains(&security.source_principal) {
                    principals.push(security.source_principal);
                }
            }
        }
    }
    let counter_delta = denied(after).saturating_sub(denied(before));
    let decision = match counters.iter().find(|c| c.series.policy != "none") {
        None if counters.is_empty() => String::new(),
        // An ALLOW policy selects the workload and none of its rules matched.
        None => format!("no ALLOW policy matched ({} selects {})", call.policy, call.to),
        Some(c) if c.series.rule.is_empty() => c.series.policy.clone(),
        Some(c) => format!("{} rule {}", c.series.policy, c.series.rule),
    };
    let denied = status == Some(403) && body.trim() == DENIED_BODY && counter_delta > 0;
    AuthorizationReport {
        from: call.from.clone(),
        principal: call.principal.clone(),
        to: call.to.clone(),
        url: call.url.clone(),
        made: String::new(),
        policy: call.policy.clone(),
        file: call.file.clone(),
        allowed: call.allowed.clone(),
        status,
        body,
        error,
        denied,
        decision,
        counter_delta,
        counters,
        source_principal: (principals.len() == 1).then(|| principals.remove(0)),
        counter_delta_since_load: None,
        check: String::new(),
    }
}

/// `trellis authz check` for the same request, from the demo's own files.
fn check_command(call: &DeniedCall, from: Option<&Path>) -> String {
    let dir = from.map_or_else(|| "examples/demo".to_owned(), |d| d.display().to_string());
    let labels: Vec<String> = call.selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(
        "trellis authz check --config-dir {dir}/istio --mesh-config {dir}/mesh.yaml -n {} -l {} --from {} --path {}",
        call.namespace,
        labels.join(","),
        call.principal,
        call.path()
    )
}

/// The denials `pods`' proxies counted between two snapshots (the load's start and end).
pub fn denied_between(pods: &[String], start: &Snapshot, end: &Snapshot) -> u64 {
    let total = |s: &Snapshot| -> u64 {
        pods.iter().filter_map(|p| s.get(p)).map(ProxyStats::denied_total).sum::<f64>() as u64
    };
    total(end).saturating_sub(total(start))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::metrics::parse;

    fn call() -> DeniedCall {
        DeniedCall {
            from: "inventory".into(),
            principal: "cluster.local/ns/shop/sa/inventory".into(),
            to: "catalog".into(),
            to_pods: vec!["catalog-v1".into(), "catalog-v2".into()],
            url: "http://catalog.shop.svc.cluster.local:8080/items".into(),
            via: "10.96.0.20:8080".parse().unwrap(),
            policy: "shop/catalog-callers".into(),
            file: "istio/authorization.yaml".into(),
            namespace: "shop".into(),
            selector: BTreeMap::from([("app".into(), "catalog".into())]),
            allowed: vec!["cluster.local/ns/shop/sa/frontend".into()],
        }
    }

    /// catalog-v1's page with `denied` denials (no ALLOW policy matched) and `requests` inbound
    /// requests from inventory answered 403.
    fn page(denied: u64, requests: u64) -> ProxyStats {
        parse(&format!(
            "trellis_authz_decisions_total{{decision=\"deny\",policy=\"none\",rule=\"\",protocol=\"http\"}} {denied}\n\
             trellis_authz_decisions_total{{decision=\"audit\",policy=\"shop/a\",rule=\"0\",protocol=\"http\"}} 7\n\
             istio_requests_total{{reporter=\"destination\",destination_service=\"inbound|8080\",response_code=\"403\",\
             connection_security_policy=\"mutual_tls\",source_principal=\"spiffe://cluster.local/ns/shop/sa/inventory\",\
             destination_principal=\"spiffe://cluster.local/ns/shop/sa/catalog\"}} {requests}\n"
        ))
    }

    fn pods(v1: ProxyStats) -> Snapshot {
        BTreeMap::from([("catalog-v1".to_owned(), v1), ("catalog-v2".to_owned(), ProxyStats::default())])
    }

    #[test]
    fn a_403_counted_by_the_callee_is_a_denial_named_after_the_selecting_policy() {
        let (before, after) = (pods(page(0, 0)), pods(page(1, 1)));
        let (status, body, error) = answer("{\"status\":403,\"body\":\"RBAC: access denied\"}\n");
        let report = report(&call(), &before, &after, status, body, error);
        assert!(report.denied, "{report:?}");
        assert_eq!(report.counter_delta, 1);
        assert_eq!(report.decision, "no ALLOW policy matched (shop/catalog-callers selects catalog)");
        assert_eq!(report.source_principal.as_deref(), Some("spiffe://cluster.local/ns/shop/sa/inventory"));
        assert_eq!(
            report.line(),
            "inventory → catalog: 403 RBAC: access denied — denied by AuthorizationPolicy: no ALLOW policy matched \
             (shop/catalog-callers selects catalog); counted by catalog-v1's proxy: \
             trellis_authz_decisions_total{decision=\"deny\",policy=\"none\",rule=\"\",protocol=\"http\"} 0 → 1"
        );
        assert_eq!(
            report.short(),
            "inventory → catalog: 403 RBAC: access denied (shop/catalog-callers: no ALLOW policy matched; catalog's \
             proxy counted 1)"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["counters"][0]["policy"], "none");
        assert_eq!(json["counters"][0]["after"], 1);
        assert_eq!(
            check_command(&call(), None),
            "trellis authz check --config-dir examples/demo/istio --mesh-config examples/demo/mesh.yaml -n shop -l \
             app=catalog --from cluster.local/ns/shop/sa/inventory --path /items"
        );
    }

    #[test]
    fn only_what_the_answer_and_the_counters_show_is_claimed() {
        // Answered 200: not denied, whatever the YAML says.
        let same = pods(page(0, 0));
        let report = report(&call(), &same, &same, Some(200), "{}".into(), None);
        assert!(!report.denied);
        assert_eq!(report.decision, "");
        assert!(
            report
                .line()
                .starts_with("inventory → catalog: NOT denied: 200 {}; catalog's proxies counted no denial")
        );
        // A 403 the callee's proxies did not count as a denial is not claimed as one.
        let report = report_of(Some(403), &same, &same);
        assert!(!report.denied);
        // A DENY policy's rule is named as the counter names it.
        let mut after = pods(page(0, 0));
        let by_rule = AuthzDecision {
            decision: "deny".into(),
            policy: "shop/no-inventory".into(),
            rule: "0".into(),
            protocol: "http".into(),
        };
        after.get_mut("catalog-v2").unwrap().authz.insert(by_rule, 1.0);
        let report = report_of(Some(403), &same, &after);
        assert!(report.denied);
        assert_eq!(report.decision, "shop/no-inventory rule 0");
        // No answer at all.
        let (status, body, error) = answer("{\"error\":\"cannot connect to 10.96.0.20:8080: refused\"}");
        let report = super::report(&call(), &same, &same, status, body, error);
        assert!(report.line().contains("NOT denied: no answer (cannot connect"), "{}", report.line());
        assert_eq!(answer("garbage").2.as_deref(), Some("the caller printed \"garbage\""));
    }

    fn report_of(status: Option<u16>, before: &Snapshot, after: &Snapshot) -> AuthorizationReport {
        report(&call(), before, after, status, "RBAC: access denied".into(), None)
    }

    #[test]
    fn denials_during_the_load_are_the_difference() {
        let pods_of = ["catalog-v1".to_owned(), "catalog-v2".to_owned()];
        assert_eq!(denied_between(&pods_of, &pods(page(1, 1)), &pods(page(1, 1))), 0);
        assert_eq!(denied_between(&pods_of, &pods(page(1, 1)), &pods(page(4, 4))), 3);
    }
}
