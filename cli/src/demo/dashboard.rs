//! The running demo: a plaintext client from outside the mesh tries a pod first, and a pod an
//! AuthorizationPolicy leaves out calls the service it protects; then the load goes in, every
//! second each proxy's metrics are read and the table redrawn, halfway the canary is edited,
//! and at the end (or on Ctrl-C) the load stops and the summary is made, with the trace of the
//! request the demo traced and the proxies' access logs read back — with `--keep`, the mesh stays
//! up and the table keeps showing whatever calls the user makes, until Ctrl-C.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::access_logs::{self, AccessLogReport};
use super::authorization::{self, AuthorizationReport};
use super::console::Console;
use super::identity::{self, ProbeReport};
use super::load::{self, Phase, Record, Shared, Window};
use super::metrics::{self, Reporter};
use super::plan::{Canary, Mode, Plan};
use super::processes;
use super::session::Session;
use super::summary::{CanaryReport, FaultReport, OutlierReport, ProxyReport, Requests, Split, Summary};
use super::table::{History, Snapshot, Topology, rows};
use super::trace::{self, TraceReport, TracedAnswer, TracedRequest};

/// Seconds of history the live table averages over.
const SPAN: usize = 5;
/// How long the entry pod's proxy may take to count the last answered requests.
const SETTLE: Duration = Duration::from_secs(3);
/// How long the traced request's answer is waited for at the end (it is sent a second in).
const TRACED_ANSWER: Duration = Duration::from_secs(6);
/// How long its spans may take to reach the collector once the run ends (proxies export every
/// half second).
const TRACE_WAIT: Duration = Duration::from_secs(3);

/// Where the canary edit stands.
enum CanaryState {
    Waiting,
    Switching(tokio::task::JoinHandle<Result<Duration, String>>),
    Done(Result<Duration, String>),
}

pub async fn run(session: &mut Session, console: &mut Console, startup: Duration) -> Result<Summary, String> {
    let plan = session.plan.clone();
    let topology = Topology {
        entry: plan.entry.pod.clone(),
        pods: plan.pods.iter().map(|p| p.name.clone()).collect(),
        services: plan.services.clone(),
    };
    let record: Shared = Arc::new(Mutex::new(Record::default()));
    let (running, running_rx) = tokio::sync::watch::channel(true);
    let probe = plaintext_client(&plan, console).await;
    let mut authorization = denied_call(session, console).await;
    let baseline = scrape(&plan, None).await;
    let mut history = History::new(SPAN);
    history.push(0.0, baseline.clone(), Window::default());
    let mut total = Window::default();
    // With a collector to see it, one request of the load is traced: the one a second in, when
    // the proxies' connections are open, so its timings are the steady state's.
    let traced = plan.collector.is_some().then(TracedRequest::new);
    let (marked, traced_answer) = match &traced {
        Some(t) => {
            let (send, receive) = tokio::sync::oneshot::channel();
            (Some((u64::from(session.args.rate), t.headers(), send)), Some(receive))
        }
        None => (None, None),
    };
    let began = tokio::time::Instant::now();
    let mut load = Some(tokio::spawn(load::drive(
        plan.entry.target,
        plan.entry.authority.clone(),
        session.args.rate,
        record.clone(),
        running_rx,
        marked,
    )));
    let duration = session.args.duration;
    let mut canary = CanaryState::Waiting;
    let mut went_bad: Option<(f64, Vec<String>)> = None;
    let mut load_seconds = 0.0;
    let mut ticks = tokio::time::interval_at(began + Duration::from_secs(1), Duration::from_secs(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Wake often enough to answer Ctrl-C quickly.
        tokio::select! {
            _ = ticks.tick() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                if session.stop.requested() { break }
                continue;
            }
        }
        if session.stop.requested() {
            break;
        }
        let seconds = began.elapsed().as_secs_f64();
        let window = record.lock().map(|mut r| r.take_window()).unwrap_or_default();
        total.add(&window);
        let snapshot = scrape(&plan, history.latest()).await;
        history.push(seconds, snapshot, window);
        canary = advance(canary, &plan, session, &record, seconds, duration, console).await;
        if went_bad.is_none() && seconds >= duration.as_secs_f64() / 2.0 {
            went_bad = Some((seconds, go_bad(session, console, seconds)));
        }
        let mut lines =
            title(&plan, session, seconds, &canary, load.is_some(), probe.as_ref(), authorization.as_ref());
        if let Some(latest) = history.latest() {
            lines.extend(resilience_lines(&plan, went_bad.as_ref(), &baseline, latest));
        }
        console.table(seconds, &lines, &history.rows(&topology));
        if load.is_some() && began.elapsed() >= duration {
            load_seconds = stop_load(&running, &mut load, &began).await;
            if !session.args.keep {
                break;
            }
            console.note(&how_to_call(&plan, session));
        }
    }
    if load.is_some() {
        load_seconds = stop_load(&running, &mut load, &began).await;
    }
    if let CanaryState::Switching(task) = canary {
        task.abort();
        canary = CanaryState::Done(Err("the run ended before the change reached every proxy".to_owned()));
    }
    let window = record.lock().map(|mut r| r.take_window()).unwrap_or_default();
    total.add(&window);
    let answered = record.lock().map(|r| r.ok).unwrap_or(0);
    let last = settle(&plan, answered).await;
    let traced_answer = match traced_answer {
        Some(receive) => tokio::time::timeout(TRACED_ANSWER, receive).await.ok().and_then(Result::ok),
        None => None,
    };
    let trace = match (&traced, traced_answer) {
        (Some(traced), answer) => Some(trace_report(session, &plan, traced, answer, &last).await),
        _ => None,
    };
    // Read while the run directory is still there.
    let access_logs = access_log_report(session, &plan, trace.as_ref());
    let record = record.lock().map_err(|_| "the load's record is unreadable".to_owned())?;
    if let (Some(report), Some(call)) = (authorization.as_mut(), plan.denied_call.as_ref()) {
        report.counter_delta_since_load =
            Some(authorization::denied_between(&call.to_pods, &baseline, &last));
    }
    Ok(summary(
        session,
        &plan,
        &topology,
        startup,
        load_seconds,
        &record,
        &baseline,
        &last,
        &total,
        canary,
        went_bad,
        probe,
        authorization,
        trace,
        access_logs,
    ))
}

/// The traced request's spans from the demo's collector, as a tree: waited for (bounded) until
/// every span its answer implies is there.
async fn trace_report(
    session: &Session,
    plan: &Plan,
    traced: &TracedRequest,
    answer: Option<TracedAnswer>,
    last: &Snapshot,
) -> TraceReport {
    let mut proxies_counted = BTreeMap::new();
    for stats in last.values() {
        for (result, n) in &stats.spans {
            *proxies_counted.entry(result.clone()).or_insert(0) += *n as u64;
        }
    }
    let mut report = TraceReport {
        trace_id: traced.trace_id_hex(),
        traceparent: traced.traceparent(),
        request_id: traced.request_id.clone(),
        proxies_counted,
        sampling_percent: plan.telemetry.sampling_percent,
        ..TraceReport::default()
    };
    let collector = match &session.collector {
        Ok(Some(collector)) => collector,
        Ok(None) => {
            report.error = Some("no collector".to_owned());
            return report;
        }
        Err(why) => {
            report.error = Some(why.clone());
            return report;
        }
    };
    report.collector = Some(collector.address.to_string());
    let Some(answer) = answer else {
        report.error = Some("the traced request was not sent, or not answered in time".to_owned());
        report.received = collector.counts();
        return report;
    };
    report.expected_spans = answer.expected_spans();
    let waited = tokio::time::Instant::now();
    let spans = loop {
        let spans = collector.trace(&report.trace_id);
        if spans.len() >= report.expected_spans || waited.elapsed() > TRACE_WAIT {
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    report.spans = spans.len();
    report.received = collector.counts();
    if spans.is_empty() {
        report.error = Some(format!(
            "none of its spans reached the collector on {} within {}s of the end",
            collector.address,
            TRACE_WAIT.as_secs()
        ));
        return report;
    }
    let entry_service = plan
        .services
        .iter()
        .find(|s| s.pods.contains(&plan.entry.pod))
        .map_or_else(|| plan.entry.pod.clone(), |s| s.short.clone());
    let (root, orphans) = trace::tree(traced, &answer, &entry_service, &spans);
    if spans.len() < report.expected_spans {
        report.error =
            Some(format!("{} of the {} spans expected arrived", spans.len(), report.expected_spans));
    }
    if let Some(e) = &answer.error {
        report.error = Some(format!("the traced request failed: {e}"));
    }
    report.root = Some(root);
    report.orphans = orphans;
    report
}

/// Each proxy's access log lines, when the mesh config sends them to the proxy's standard
/// output or error (which the demo keeps per pod).
fn access_log_report(session: &Session, plan: &Plan, trace: Option<&TraceReport>) -> Option<AccessLogReport> {
    let telemetry = &plan.telemetry;
    let file = telemetry.access_log_file.clone()?;
    if file != "/dev/stdout" && file != "/dev/stderr" {
        return None;
    }
    // The id the proxies logged for the traced request (the entry proxy keeps the one sent).
    let request_id = trace.and_then(|t| {
        let root = t.root.as_ref()?;
        root.children.first().and_then(|s| s.request_id.clone()).or_else(|| Some(t.request_id.clone()))
    });
    let logs: Vec<(String, std::path::PathBuf)> =
        plan.pods.iter().map(|p| (p.name.clone(), session.log(&format!("{}-proxy", p.name)))).collect();
    let format = match (&telemetry.access_log_format, telemetry.access_log_encoding.as_str()) {
        (None, "TEXT") => "Istio's default format".to_owned(),
        (None, _) => "Istio's default format (the demo reads lines back only in the TEXT one)".to_owned(),
        (Some(_), _) => {
            "the mesh config's accessLogFormat (the demo reads lines back only in Istio's default TEXT \
                         format)"
                .to_owned()
        }
    };
    Some(access_logs::read(
        &logs,
        &plan.services,
        &plan.entry.pod,
        request_id.as_deref(),
        (file, telemetry.access_log_encoding.clone(), format),
    ))
}

/// The pods whose app goes bad halfway (`--fail-on-signal`).
fn going_bad(plan: &Plan) -> Vec<String> {
    plan.pods
        .iter()
        .filter(|p| p.app_args.iter().any(|a| a == "--fail-on-signal"))
        .map(|p| p.name.clone())
        .collect()
}

/// Halfway: sends SIGUSR1 to the app of each pod that goes bad then; the pods it reached.
fn go_bad(session: &Session, console: &mut Console, seconds: f64) -> Vec<String> {
    let mut reached = Vec::new();
    for pod in going_bad(&session.plan) {
        let role = format!("app of {pod}");
        let Some(process) = session.processes.iter().find(|p| p.role == role) else { continue };
        let pid = nix::unistd::Pid::from_raw(i32::try_from(process.pid()).unwrap_or(i32::MAX));
        match nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR1) {
            Ok(()) => {
                console.note(&format!(
                    "trellis demo: {seconds:.0}s: {pod} goes bad (its app answers 503 to everything from now on)"
                ));
                reached.push(pod);
            }
            Err(e) => console.note(&format!("trellis demo: cannot make {pod} go bad: {e}")),
        }
    }
    reached
}

/// Outlier ejections the proxies counted since `baseline`: in total, by reason, by proxy.
fn ejections(baseline: &Snapshot, last: &Snapshot) -> (u64, BTreeMap<String, u64>, BTreeMap<String, u64>) {
    let (mut total, mut by_reason, mut by_proxy) = (0, BTreeMap::new(), BTreeMap::new());
    for (pod, stats) in last {
        let before = baseline.get(pod);
        for (key, n) in &stats.ejections {
            let was = before.and_then(|b| b.ejections.get(key)).copied().unwrap_or(0.0);
            let added = (n - was).max(0.0) as u64;
            if added > 0 {
                total += added;
                *by_reason.entry(key.1.clone()).or_insert(0) += added;
                *by_proxy.entry(pod.clone()).or_insert(0) += added;
            }
        }
    }
    (total, by_reason, by_proxy)
}

/// Requests delayed (`DI`) and aborted (`FI`) by fault injection since `baseline`.
fn faults(baseline: &Snapshot, last: &Snapshot) -> FaultReport {
    let count = |flag: &str| -> u64 {
        last.iter()
            .map(|(pod, s)| {
                let was = baseline.get(pod).map_or(0.0, |b| b.fault_total(flag));
                (s.fault_total(flag) - was).max(0.0) as u64
            })
            .sum()
    };
    FaultReport { delayed: count("DI"), aborted: count("FI") }
}

/// Lines over the table: the replica gone bad and its ejections, and the faults injected.
fn resilience_lines(
    plan: &Plan,
    went_bad: Option<&(f64, Vec<String>)>,
    baseline: &Snapshot,
    latest: &Snapshot,
) -> Vec<String> {
    let mut lines = Vec::new();
    let bad = going_bad(plan);
    if !bad.is_empty() {
        let (total, by_reason, _) = ejections(baseline, latest);
        let reasons: Vec<String> =
            by_reason.iter().map(|(r, n)| format!("{n} {}", r.replace('_', " "))).collect();
        lines.push(match went_bad {
            None => format!("outlier detection: {} goes bad halfway", bad.join(", ")),
            Some((at, pods)) if total > 0 => format!(
                "outlier detection: {} bad since {at:.0}s; ejected {total}x by callers' proxies ({})",
                pods.join(", "),
                reasons.join(", ")
            ),
            Some((at, pods)) => {
                format!("outlier detection: {} bad since {at:.0}s; not ejected yet", pods.join(", "))
            }
        });
    }
    let f = faults(baseline, latest);
    if f.delayed + f.aborted > 0 {
        lines.push(format!(
            "fault injection: {} requests delayed (DI), {} aborted (FI)",
            f.delayed, f.aborted
        ));
    }
    lines
}

/// The call an AuthorizationPolicy denies, before the load: its lines stay above the table.
async fn denied_call(session: &mut Session, console: &mut Console) -> Option<AuthorizationReport> {
    let call = session.plan.denied_call.clone()?;
    let report = authorization::call(session, &call).await;
    let mut lines = vec![format!("trellis demo: {}", report.line())];
    lines.extend(report.details().iter().map(|l| format!("trellis demo: {l}")));
    console.note(&lines.join("\n"));
    Some(report)
}

/// The plaintext client from outside the mesh, before the load: its line stays above the table.
async fn plaintext_client(plan: &Plan, console: &mut Console) -> Option<ProbeReport> {
    let probe = plan.probe.as_ref()?;
    let pod = plan.pods.iter().find(|p| p.name == probe.pod)?;
    let report = identity::probe(probe, pod.stats(), pod).await;
    console.note(&format!("trellis demo: {}", report.line()));
    Some(report)
}

async fn stop_load(
    running: &tokio::sync::watch::Sender<bool>,
    load: &mut Option<tokio::task::JoinHandle<()>>,
    began: &tokio::time::Instant,
) -> f64 {
    let seconds = began.elapsed().as_secs_f64();
    running.send_replace(false);
    if let Some(task) = load.take() {
        // Returns once the requests in flight are answered (bounded).
        let _ = task.await;
    }
    seconds
}

/// Every proxy's counts now; a proxy that does not answer keeps its counts from `previous`
/// (so its next answer does not look like a burst).
async fn scrape(plan: &Plan, previous: Option<&Snapshot>) -> Snapshot {
    let mut snapshot = Snapshot::new();
    for pod in &plan.pods {
        let stats = match metrics::scrape(pod.stats()).await {
            Ok(stats) => Some(stats),
            Err(_) => previous.and_then(|p| p.get(&pod.name)).cloned(),
        };
        if let Some(stats) = stats {
            snapshot.insert(pod.name.clone(), stats);
        }
    }
    snapshot
}

fn counted(snapshot: &Snapshot, pod: &str, reporter: Reporter) -> u64 {
    snapshot.get(pod).map_or(0.0, |s| {
        s.traffic.iter().filter(|((r, _), _)| *r == reporter).map(|(_, t)| t.requests).sum::<f64>()
    }) as u64
}

/// Requests a pod's proxy received over mutual TLS.
fn received_over_mutual_tls(snapshot: &Snapshot, pod: &str) -> u64 {
    snapshot.get(pod).map_or(0.0, |s| {
        s.traffic
            .iter()
            .filter(|((r, _), _)| *r == Reporter::Destination)
            .flat_map(|(_, t)| &t.security)
            .filter(|(security, _)| security.mutual_tls())
            .map(|(_, n)| n)
            .sum::<f64>()
    }) as u64
}

/// The last counts, once the entry pod's proxy has counted every answered request (it counts a
/// request as its answer completes, a moment after the client has it).
async fn settle(plan: &Plan, answered: u64) -> Snapshot {
    let start = tokio::time::Instant::now();
    loop {
        let snapshot = scrape(plan, None).await;
        if counted(&snapshot, &plan.entry.pod, Reporter::Destination) >= answered || start.elapsed() > SETTLE
        {
            return snapshot;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts the edit halfway through the load, and notes when it is done.
async fn advance(
    state: CanaryState,
    plan: &Plan,
    session: &Session,
    record: &Shared,
    seconds: f64,
    duration: Duration,
    console: &mut Console,
) -> CanaryState {
    let Some(canary) = plan.canary.clone() else { return state };
    match state {
        CanaryState::Waiting if seconds >= duration.as_secs_f64() / 2.0 => {
            console.note(&format!(
                "trellis demo: {:.0}s: VirtualService {}: weights {} → {}",
                seconds,
                canary.virtual_service,
                weights(&canary, &canary.before),
                weights(&canary, &canary.after)
            ));
            let (dir, monitoring, record) = (session.run_dir.join("config"), plan.monitoring, record.clone());
            CanaryState::Switching(tokio::spawn(async move {
                super::canary::switch(&canary, &dir, monitoring, &record).await
            }))
        }
        CanaryState::Switching(task) if task.is_finished() => {
            let result = task.await.unwrap_or_else(|e| Err(format!("the edit failed: {e}")));
            match &result {
                Ok(took) => console.note(&format!(
                    "trellis demo: every proxy has the new weights, {:.2}s after the file changed",
                    took.as_secs_f64()
                )),
                Err(e) => console.note(&format!("trellis demo: {e}")),
            }
            CanaryState::Done(result)
        }
        other => other,
    }
}

fn weights(canary: &Canary, weights: &[u32]) -> String {
    canary.subsets.iter().zip(weights).map(|(s, w)| format!("{s} {w}")).collect::<Vec<_>>().join(" / ")
}

fn title(
    plan: &Plan,
    session: &Session,
    seconds: f64,
    canary: &CanaryState,
    loading: bool,
    probe: Option<&ProbeReport>,
    authorization: Option<&AuthorizationReport>,
) -> Vec<String> {
    let mode = match plan.mode {
        Mode::Namespaces => "network namespaces",
        Mode::Explicit => "explicit mode",
    };
    let duration = session.args.duration.as_secs();
    let mut lines = vec![if loading {
        format!(
            "trellis demo · {seconds:.0}s of {duration}s · {mode} · {} req/s into {}",
            session.args.rate, plan.entry.pod
        )
    } else {
        format!("trellis demo · {seconds:.0}s · {mode} · the load ran {duration}s; Ctrl-C removes the mesh")
    }];
    if let Some(c) = &plan.canary {
        let now = match canary {
            CanaryState::Waiting => format!(
                "{} ({} at {:.0}s)",
                weights(c, &c.before),
                weights(c, &c.after),
                session.args.duration.as_secs_f64() / 2.0
            ),
            CanaryState::Switching(_) => {
                format!("{} → {} (arriving)", weights(c, &c.before), weights(c, &c.after))
            }
            CanaryState::Done(Ok(_)) => format!("{} (was {})", weights(c, &c.after), weights(c, &c.before)),
            CanaryState::Done(Err(_)) => format!("{} (the edit did not arrive)", weights(c, &c.before)),
        };
        lines.push(format!("canary: VirtualService {}: {now}", c.virtual_service));
    }
    if let Some(probe) = probe {
        lines.push(probe.short());
    }
    if let Some(report) = authorization {
        lines.push(report.short());
    }
    lines
}

/// Where the proxies' access logs are, and what the collector does meanwhile, for `--keep`.
fn telemetry_lines(plan: &Plan, session: &Session) -> Vec<String> {
    let mut lines = Vec::new();
    let to_output =
        plan.telemetry.access_log_file.as_deref().is_some_and(|f| f == "/dev/stdout" || f == "/dev/stderr");
    if to_output {
        let files: Vec<String> = plan
            .pods
            .iter()
            .map(|p| session.log(&format!("{}-proxy", p.name)).display().to_string())
            .collect();
        lines.push(format!(
            "Access logs (each proxy's standard output, a line per request; `grep '^\\['` leaves out the proxy's own \
             messages):\n  tail -f {}",
            files.join(" \\\n          ")
        ));
    }
    if let Ok(Some(collector)) = &session.collector {
        lines.push(format!(
            "Spans go to the demo's Zipkin collector on {} ({}% sampled; a request with `traceparent: \
             00-<32 hex>-<16 hex>-01` is always traced); the traced request's tree is in the summary.",
            collector.address, plan.telemetry.sampling_percent
        ));
    }
    lines
}

fn how_to_call(plan: &Plan, session: &Session) -> String {
    let telemetry = telemetry_lines(plan, session);
    let text = call_lines(plan);
    if telemetry.is_empty() {
        return text;
    }
    // Before the last line (Ctrl-C removes it).
    match text.rsplit_once('\n') {
        Some((calls, last)) => format!("{calls}\n{}\n{last}", telemetry.join("\n")),
        None => format!("{text}\n{}", telemetry.join("\n")),
    }
}

fn call_lines(plan: &Plan) -> String {
    let entry = &plan.entry;
    let stats = plan.pods.last().map_or(entry.target, |p| p.stats());
    match plan.mode {
        Mode::Namespaces => {
            let hub = super::network::hub_namespace();
            let mut lines = vec![
                "The mesh stays up. Call it (as root):".to_owned(),
                format!(
                    "  ip netns exec {hub} curl -s http://{}/   # into {}, captured inbound",
                    entry.target, entry.pod
                ),
            ];
            if let Some(probe) = &plan.probe {
                lines.push(format!(
                    "  ip netns exec {hub} curl -sS http://{}/   # plaintext into {}: refused under STRICT",
                    probe.target, probe.pod
                ));
            }
            lines.push(format!(
                "  ip netns exec {hub} curl -s http://{stats}/stats/prometheus   # a proxy's metrics"
            ));
            // As an app would: from inside a pod, as its user, to a service's virtual IP.
            let called = plan.services.iter().find(|s| s.subsets.len() > 1).or(plan.services.last());
            if let Some((service, vip)) = called.and_then(|s| Some((s, s.vip?))) {
                lines.push(format!(
                    "  ip netns exec {} setpriv --reuid {uid} --regid {uid} --clear-groups curl -s \\\n      \
                     --resolve {host}:{port}:{vip} http://{host}:{port}/   # from {}, captured outbound",
                    super::network::pod_namespace(&entry.pod),
                    entry.pod,
                    host = service.host,
                    port = service.port,
                    uid = super::session::APP_UID,
                ));
            }
            if let Some(call) = &plan.denied_call {
                lines.push(format!(
                    "  ip netns exec {} setpriv --reuid {uid} --regid {uid} --clear-groups curl -s \\\n      \
                     --resolve {authority}:{} {}   # from {}: 403, {} allows only {}",
                    super::network::pod_namespace(&call.from),
                    call.via.ip(),
                    call.url,
                    call.from,
                    call.policy,
                    call.allowed.join(", "),
                    authority = call.authority(),
                    uid = super::session::APP_UID,
                ));
                lines.push(format!(
                    "  ip netns exec {hub} trellis authz check --control-plane {} -n {} -l {} --from {} --path {}   \
                     # the same decision, from trellisd",
                    plan.xds,
                    call.namespace,
                    labels(call),
                    call.principal,
                    call.path()
                ));
            }
            lines.push("Ctrl-C removes it.".to_owned());
            lines.join("\n")
        }
        Mode::Explicit => {
            let refused = plan.probe.as_ref().map_or(String::new(), |p| {
                format!(
                    "  curl -sS -H 'Host: {}' http://{}/   # plaintext into {}: refused under STRICT\n",
                    p.authority, p.target, p.pod
                )
            });
            let denied = plan.denied_call.as_ref().map_or(String::new(), |call| {
                format!(
                    "  curl -s -H 'Host: {}' http://{}{}   # from {} through its proxy: 403, {} allows only {}\n  \
                     trellis authz check --control-plane {} -n {} -l {} --from {} --path {}   # the same decision, \
                     from trellisd\n",
                    call.authority(),
                    call.via,
                    call.path(),
                    call.from,
                    call.policy,
                    call.allowed.join(", "),
                    plan.xds,
                    call.namespace,
                    labels(call),
                    call.principal,
                    call.path()
                )
            });
            format!(
                "The mesh stays up. Call it:\n  \
                 curl -s -H 'Host: {}' http://{}/   # into {} through its proxy\n\
                 {refused}{denied}  \
                 curl -s http://{stats}/stats/prometheus   # a proxy's metrics\n\
                 Ctrl-C removes it.",
                entry.authority, entry.target, entry.pod
            )
        }
    }
}

/// A policy's selector as `trellis authz check -l` takes it.
fn labels(call: &super::plan::DeniedCall) -> String {
    call.selector.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

#[allow(clippy::too_many_arguments)]
fn summary(
    session: &Session,
    plan: &Plan,
    topology: &Topology,
    startup: Duration,
    load_seconds: f64,
    record: &Record,
    baseline: &Snapshot,
    last: &Snapshot,
    total: &Window,
    canary: CanaryState,
    went_bad: Option<(f64, Vec<String>)>,
    plaintext_client: Option<ProbeReport>,
    authorization: Option<AuthorizationReport>,
    trace: Option<TraceReport>,
    access_logs: Option<AccessLogReport>,
) -> Summary {
    let outlier = (!going_bad(plan).is_empty()).then(|| {
        let (ejections, by_reason, by_proxy) = ejections(baseline, last);
        let (went_bad_seconds, went_bad) = match went_bad {
            Some((at, pods)) => (Some(at), pods),
            None => (None, Vec::new()),
        };
        OutlierReport { went_bad, went_bad_seconds, ejections, by_reason, by_proxy }
    });
    let proxies: Vec<ProxyReport> = plan
        .pods
        .iter()
        .zip(&session.proxies)
        .enumerate()
        .map(|(i, (pod, &index))| {
            let pid = session.processes[index].pid();
            let (rss_bytes, anon_bytes) = processes::memory(pid).unwrap_or_default();
            ProxyReport {
                pod: pod.name.clone(),
                pid,
                rss_bytes,
                anon_bytes,
                inbound_requests: counted(last, &pod.name, Reporter::Destination),
                outbound_requests: counted(last, &pod.name, Reporter::Source),
                inbound_mutual_tls_requests: received_over_mutual_tls(last, &pod.name),
                refused_connections: last.get(&pod.name).map_or(0, |s| s.refused_total() as u64),
                denied_requests: last.get(&pod.name).map_or(0, |s| s.denied_total() as u64),
                spiffe_id: session
                    .certificates
                    .get(i)
                    .and_then(|c| c.as_ref().ok())
                    .map(|c| c.identity.clone()),
            }
        })
        .collect();
    let canary = plan.canary.as_ref().map(|c| {
        let service = plan.services.iter().find(|s| s.short == c.service);
        let split = |weights: &[u32], phase: Phase| Split {
            weights: c.subsets.iter().cloned().zip(weights.iter().copied()).collect(),
            answers: service
                .map(|s| {
                    let answers = record.answers.get(&phase);
                    s.subsets
                        .iter()
                        .map(|subset| {
                            let n = subset
                                .pods
                                .iter()
                                .map(|p| answers.and_then(|a| a.get(p)).copied().unwrap_or(0))
                                .sum();
                            (subset.name.clone(), n)
                        })
                        .collect()
                })
                .unwrap_or_else(BTreeMap::new),
        };
        let (switch_seconds, error) = match &canary {
            CanaryState::Done(Ok(took)) => (Some(took.as_secs_f64()), None),
            CanaryState::Done(Err(e)) => (None, Some(e.clone())),
            _ => (None, None),
        };
        CanaryReport {
            virtual_service: c.virtual_service.clone(),
            service: c.service.clone(),
            before: split(&c.before, Phase::Before),
            after: split(&c.after, Phase::After),
            switch_seconds,
            error,
        }
    });
    Summary {
        mode: match plan.mode {
            Mode::Namespaces => "namespaces",
            Mode::Explicit => "explicit",
        },
        startup_seconds: startup.as_secs_f64(),
        load_seconds,
        rate: session.args.rate,
        requests: Requests {
            sent: record.sent,
            ok: record.ok,
            failed: record.failed,
            skipped: record.skipped,
        },
        failures: record.failures.clone(),
        canary,
        outlier,
        faults: faults(baseline, last),
        total_proxy_rss_bytes: proxies.iter().map(|p| p.rss_bytes).sum(),
        total_proxy_anon_bytes: proxies.iter().map(|p| p.anon_bytes).sum(),
        proxies,
        edges: rows(topology, baseline, baseline, last, total, load_seconds.max(0.001)),
        plaintext_client,
        authorization,
        trace,
        access_logs,
        pids: session.pids(),
        namespaces: session.namespaces(),
        run_dir: session.run_dir.display().to_string(),
        cleaned_up: false,
    }
}
