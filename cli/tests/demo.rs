//! `trellis demo` end to end, about 20 seconds each: as root (pods in network namespaces,
//! proxy-init's rules, proxies as UID 1337) and without root (explicit mode; when the test runs
//! as root, the demo runs as `nobody`). Each run must answer every request, split the canary
//! 90/10 and then 50/50 within tolerance, have every proxy count its calls, carry every call
//! inside the mesh over mutual TLS between the right SPIFFE IDs (as the proxies' metrics label
//! them), have the plaintext client from outside the mesh refused and counted, have inventory's
//! call to catalog denied by catalog's AuthorizationPolicy (403 `RBAC: access denied`, counted
//! once by catalog's proxies, the load never), trace one of its requests through frontend →
//! catalog → inventory (the spans at the demo's own collector, chained by their ids), have
//! both proxies of every edge write access log lines, and leave no process, namespace or file
//! behind. A collector that cannot be reached does not fail a run. As root also: a demo killed
//! outright is cleaned up by the next run, and Ctrl-C ends a run with everything removed.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use trellis_proxy_init::testing::{RunnableByAnyone, privileged};

const NOBODY: u32 = 65534;
/// The demo's own bound is its duration plus start and stop; this only catches a hang.
const DEADLINE: Duration = Duration::from_secs(120);

/// Runs the demo to its end (bounded): exit success, standard output, standard error.
fn run(command: Command) -> (bool, String, String) {
    run_with(command, &["--duration", "20", "--rate", "50"])
}

fn run_with(mut command: Command, args: &[&str]) -> (bool, String, String) {
    command.args(["demo", "--output", "json"]).args(args);
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let read = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = read(Box::new(child.stdout.take().unwrap()));
    let stderr = read(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the demo did not finish within {DEADLINE:?}: {}", stderr.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (status.success(), stdout.join().unwrap(), stderr.join().unwrap())
}

fn summary(stdout: &str, stderr: &str) -> Value {
    let last = stdout.lines().last().unwrap_or_default();
    let value: Value = serde_json::from_str(last).unwrap_or(Value::Null);
    assert!(value["summary"].is_object(), "no summary; stdout ends {last:?}; stderr:\n{stderr}");
    value["summary"].clone()
}

fn share(answers: &Value, subset: &str) -> (f64, u64) {
    let count = |s: &str| answers[s].as_u64().unwrap_or(0);
    let total = count("v1") + count("v2");
    assert!(total > 0, "no answers: {answers}");
    (count(subset) as f64 / total as f64, total)
}

fn proxy<'a>(summary: &'a Value, pod: &str) -> &'a Value {
    summary["proxies"].as_array().unwrap().iter().find(|p| p["pod"] == pod).unwrap()
}

fn count(value: &Value) -> u64 {
    value.as_u64().unwrap()
}

/// Whether any process still carries the demo's marker for this run directory.
fn demo_processes_of(run_dir: &str) -> Vec<u32> {
    let marker = format!("TRELLIS_DEMO_RUN={run_dir}");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == marker.as_bytes()))
        })
        .collect()
}

/// What every run must show.
fn check(summary: &Value, stdout: &str, mode: &str) {
    assert_eq!(summary["mode"], mode);
    let requests = &summary["requests"];
    let sent = count(&requests["sent"]);
    // 20 seconds at 50 per second, whatever the machine's load.
    assert!(sent >= 800, "{requests}");
    assert_eq!(count(&requests["failed"]), 0, "no request may fail: {}", summary["failures"]);
    assert_eq!(count(&requests["skipped"]), 0, "{requests}");
    assert_eq!(count(&requests["ok"]), sent);

    // The canary: 90/10 before the edit, 50/50 after it reached every proxy.
    let canary = &summary["canary"];
    assert_eq!(canary["virtual_service"], "shop/catalog");
    assert!(canary["error"].is_null(), "{canary}");
    assert!(canary["switch_seconds"].as_f64().is_some_and(|s| s < 15.0), "{canary}");
    let (before, n) = share(&canary["before"]["answers"], "v2");
    assert!(n >= 300 && (0.04..=0.16).contains(&before), "90/10: v2 served {before:.3} of {n}: {canary}");
    let (after, n) = share(&canary["after"]["answers"], "v2");
    assert!(n >= 300 && (0.40..=0.60).contains(&after), "50/50: v2 served {after:.3} of {n}: {canary}");

    // Every proxy counted the calls it carried, and the counts agree along the path.
    let (frontend, v1, v2, inventory) = (
        proxy(summary, "frontend"),
        proxy(summary, "catalog-v1"),
        proxy(summary, "catalog-v2"),
        proxy(summary, "inventory"),
    );
    assert_eq!(count(&frontend["inbound_requests"]), sent, "{frontend}");
    assert_eq!(count(&frontend["outbound_requests"]), sent, "{frontend}");
    // Catalog also received the demo's denied call from inventory, and passed it on to nobody.
    let denied = check_authorization(summary);
    assert_eq!(count(&v1["inbound_requests"]) + count(&v2["inbound_requests"]), sent + denied);
    for catalog in [v1, v2] {
        assert!(count(&catalog["inbound_requests"]) > 0, "{catalog}");
        assert_eq!(
            count(&catalog["inbound_requests"]),
            count(&catalog["outbound_requests"]) + count(&catalog["denied_requests"]),
            "{catalog}"
        );
    }
    assert_eq!(count(&inventory["outbound_requests"]), denied, "inventory called only the once: {inventory}");
    // Inventory fails now and then; the retries add to what its two replicas received.
    let inventory_2 = proxy(summary, "inventory-2");
    assert_eq!(count(&inventory_2["outbound_requests"]), 0, "{inventory_2}");
    assert!(count(&inventory_2["inbound_requests"]) > 0, "{inventory_2}");
    assert!(
        count(&inventory["inbound_requests"]) + count(&inventory_2["inbound_requests"]) >= sent,
        "{inventory} {inventory_2}"
    );
    // Halfway, inventory-2 went bad (503 to everything): catalog's proxies ejected it (outlier
    // detection, 3 consecutive 5xx), and their retries hid the 503s before that — no request
    // failed (asserted above).
    let outlier = &summary["outlier"];
    assert_eq!(outlier["went_bad"], serde_json::json!(["inventory-2"]), "{outlier}");
    assert!(outlier["went_bad_seconds"].as_f64().is_some(), "{outlier}");
    assert!(count(&outlier["ejections"]) >= 1, "the bad replica was ejected: {outlier}");
    assert!(count(&outlier["by_reason"]["consecutive_5xx"]) >= 1, "{outlier}");
    assert!(
        outlier["by_proxy"].as_object().unwrap().keys().all(|p| p.starts_with("catalog-")),
        "only catalog calls inventory: {outlier}"
    );
    // Fault injection: a tenth of frontend's calls to catalog delayed 5ms (DI), none aborted.
    let faults = &summary["faults"];
    assert!(count(&faults["delayed"]) >= sent / 40, "about a tenth delayed: {faults}");
    assert!(count(&faults["delayed"]) <= sent / 5, "about a tenth delayed: {faults}");
    assert_eq!(count(&faults["aborted"]), 0, "{faults}");
    let rss: u64 = summary["proxies"].as_array().unwrap().iter().map(|p| count(&p["rss_bytes"])).sum();
    assert!(rss > 0);
    assert_eq!(count(&summary["total_proxy_rss_bytes"]), rss);

    check_identities(summary, sent);
    check_trace(summary);
    check_access_logs(summary, sent);

    // The live table ran, and showed the split and mutual TLS.
    let ticks: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["tick"].is_object())
        .collect();
    assert!(ticks.len() >= 15, "{} ticks", ticks.len());
    let secured_ticks = ticks
        .iter()
        .filter(|t| {
            let rows = t["tick"]["rows"].as_array().unwrap();
            rows.len() == 4
                && rows
                    .iter()
                    .filter(|r| r["from"] != "load")
                    .all(|r| r["security"][0]["policy"] == "mutual_tls")
        })
        .count();
    assert!(secured_ticks >= 15, "{secured_ticks} ticks show every edge in the mesh as mutual TLS");
    assert!(
        ticks.iter().all(|t| t["tick"]["title"].as_array().unwrap().iter().any(|l| l
            .as_str()
            .unwrap()
            .starts_with("plaintext client outside the mesh → inventory:8080: refused"))),
        "every tick's title says the plaintext client was refused"
    );
    let denied_title = "inventory → catalog: 403 RBAC: access denied (shop/catalog-callers: no ALLOW policy matched; \
                        catalog's proxy counted 1)";
    assert!(
        ticks.iter().all(|t| t["tick"]["title"].as_array().unwrap().iter().any(|l| l == denied_title)),
        "every tick's title shows the denied call: {}",
        ticks[0]["tick"]["title"]
    );
    let edge =
        summary["edges"].as_array().unwrap().iter().find(|e| e["from"] == "frontend" && e["to"] == "catalog");
    let edge = edge.unwrap_or_else(|| panic!("no frontend → catalog edge: {}", summary["edges"]));
    assert_eq!(edge["success"], 1.0);
    assert_eq!(edge["split"].as_array().map(Vec::len), Some(2), "{edge}");

    // Nothing is left.
    assert_eq!(summary["cleaned_up"], true);
    for pid in summary["pids"].as_array().unwrap() {
        let pid = count(pid);
        assert!(
            !Path::new(&format!("/proc/{pid}/status")).exists() || zombie(pid),
            "pid {pid} is still running"
        );
    }
    let run_dir = summary["run_dir"].as_str().unwrap();
    assert!(!Path::new(run_dir).exists(), "{run_dir} is still there");
    assert_eq!(demo_processes_of(run_dir), Vec::<u32>::new());
    eprintln!(
        "demo ({mode}): mesh up in {:.2}s, {sent} requests, v2 served {before:.3} then {after:.3}, the edit arrived in \
         {:.2}s, proxies' total RSS {:.1} MiB ({:.1} MiB their own)",
        summary["startup_seconds"].as_f64().unwrap_or_default(),
        canary["switch_seconds"].as_f64().unwrap_or_default(),
        rss as f64 / 1048576.0,
        count(&summary["total_proxy_anon_bytes"]) as f64 / 1048576.0
    );
}

/// One request of the load, traced: the demo sent it with a sampled `traceparent`, and the
/// proxies' spans (exported to the demo's Zipkin collector) make one chain under the demo's
/// own span — frontend's SERVER span, its CLIENT span to catalog, catalog's SERVER span, its
/// CLIENT span to inventory, inventory's SERVER span — each the child of the one before by
/// its parent id, each reported by the right service's proxy.
fn check_trace(summary: &Value) {
    let trace = &summary["trace"];
    assert!(trace["error"].is_null(), "{trace}");
    assert!(trace["orphans"].as_array().unwrap().is_empty(), "{trace}");
    assert!(count(&trace["spans"]) >= 5, "{trace}");
    assert_eq!(count(&trace["expected_spans"]), 5, "{trace}");
    let root = &trace["root"];
    assert_eq!((root["service"].as_str(), root["to"].as_str()), (Some("load"), Some("frontend")), "{root}");
    assert_eq!(root["status"], 200, "{root}");
    let trace_id = trace["trace_id"].as_str().unwrap();
    assert_eq!(
        trace["traceparent"].as_str().unwrap(),
        format!("00-{trace_id}-{}-01", root["span_id"].as_str().unwrap()),
        "the demo's span is the one its traceparent named"
    );
    let path = [
        ("server", "frontend", None),
        ("client", "frontend", Some("catalog")),
        ("server", "catalog", None),
        ("client", "catalog", Some("inventory")),
        ("server", "inventory", None),
    ];
    let mut parent = root;
    for (kind, service, to) in path {
        let children = parent["children"].as_array().unwrap();
        // A retry adds a second SERVER span under a CLIENT span: the path goes on through the
        // one that answered 200.
        let child = children
            .iter()
            .filter(|c| c["kind"] == kind && c["service"] == service)
            .find(|c| c["status"] == 200)
            .unwrap_or_else(|| panic!("no {kind} span of {service} under {}: {trace}", parent["span_id"]));
        assert_eq!(child["parent_id"], parent["span_id"], "{child}");
        assert_ne!(child["span_id"], parent["span_id"], "{child}");
        assert_eq!(child["to"].as_str(), to, "{child}");
        let pod = child["pod"].as_str().unwrap_or_default();
        assert!(pod.starts_with(service), "{service}'s span reported by {pod}'s proxy: {child}");
        assert!(child["duration_ms"].as_f64().is_some_and(|d| d > 0.0), "{child}");
        if kind == "server" {
            assert_eq!(child["request_id"], root["request_id"], "the x-request-id went along: {child}");
        }
        parent = child;
    }
    assert!(parent["children"].as_array().unwrap().is_empty(), "inventory calls nobody: {parent}");
    let received = &trace["received"];
    assert!(count(&received["spans"]) >= 5 && count(&received["invalid"]) == 0, "{received}");
    assert!(count(&trace["proxies_counted"]["exported"]) >= 5, "{trace}");
}

/// Access logs: every edge's proxies wrote lines — the caller's (outbound, Istio's source
/// reporter) and the callee's (inbound, the destination reporter) — put on edges by the
/// x-request-id both lines carry; the load is outside the mesh, so only frontend's proxy logged
/// its requests. The denied call is logged too, by both of its proxies.
fn check_access_logs(summary: &Value, sent: u64) {
    let logs = &summary["access_logs"];
    assert_eq!(
        (logs["file"].as_str(), logs["encoding"].as_str()),
        (Some("/dev/stdout"), Some("TEXT")),
        "{logs}"
    );
    assert!(logs["errors"].as_array().unwrap().is_empty(), "{logs}");
    let pods = logs["pods"].as_array().unwrap();
    assert_eq!(pods.len(), 5, "{logs}");
    for pod in pods {
        assert!(pod["path"].as_str().unwrap().ends_with("-proxy.log"), "{pod}");
        assert!(count(&pod["lines"]) > 0, "{pod}");
    }
    let edge = |from: &str, to: &str| {
        logs["edges"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["from"] == from && e["to"] == to)
            .unwrap_or_else(|| panic!("no access log lines for {from} → {to}: {logs}"))
            .clone()
    };
    let load = edge("load", "frontend");
    assert_eq!(count(&load["caller_lines"]), 0, "{load}");
    // Written as each answer completes: the last few may still be on their way.
    assert!(count(&load["callee_lines"]) >= sent * 9 / 10, "{load}");
    for (from, to) in [
        ("frontend", "catalog"),
        ("catalog-v1", "inventory"),
        ("catalog-v2", "inventory"),
        ("inventory", "catalog"),
    ] {
        let e = edge(from, to);
        assert!(
            count(&e["caller_lines"]) > 0 && count(&e["callee_lines"]) > 0,
            "both reporters of {from} → {to}: {e}"
        );
        let example = e["example"].as_str().unwrap_or_default();
        assert!(example.starts_with('[') && example.contains(" outbound|8080|"), "{e}");
        assert_eq!(e["example_from"], from, "{e}");
    }
    let frontend = edge("frontend", "catalog");
    assert!(count(&frontend["caller_lines"]) >= sent * 9 / 10, "{frontend}");
    // The example is the traced request's line, found by its x-request-id.
    let request_id = summary["trace"]["root"]["request_id"].as_str().unwrap();
    assert!(frontend["example"].as_str().unwrap().contains(&format!("\"{request_id}\"")), "{frontend}");
    let denied = edge("inventory", "catalog");
    assert!(denied["example"].as_str().unwrap().contains("\" 403 "), "{denied}");
}

fn spiffe(account: &str) -> String {
    format!("spiffe://cluster.local/ns/shop/sa/{account}")
}

/// Identities and mutual TLS, from the proxies themselves: each one's certificate (its /certs),
/// how every edge's requests were labelled (connection_security_policy, source_principal,
/// destination_principal), and the plaintext client refused under STRICT.
fn check_identities(summary: &Value, sent: u64) {
    let accounts = [
        ("frontend", "frontend"),
        ("catalog-v1", "catalog"),
        ("catalog-v2", "catalog"),
        ("inventory-2", "inventory"),
        ("inventory", "inventory"),
    ];
    for (pod, account) in accounts {
        let p = proxy(summary, pod);
        assert_eq!(p["spiffe_id"], spiffe(account), "{pod}'s certificate: {p}");
        // Callees received everything over mutual TLS; the entry, the load's plaintext.
        let mutual = count(&p["inbound_mutual_tls_requests"]);
        if pod == "frontend" {
            assert_eq!(mutual, 0, "{p}");
        } else {
            assert_eq!(mutual, count(&p["inbound_requests"]), "{pod} received plaintext: {p}");
        }
    }
    let edges = summary["edges"].as_array().unwrap();
    assert_eq!(edges.len(), 4, "{edges:?}");
    for edge in edges {
        let security = edge["security"].as_array().unwrap();
        assert_eq!(security.len(), 1, "one way of securing per edge: {edge}");
        let (from, to) = (edge["from"].as_str().unwrap(), edge["to"].as_str().unwrap());
        let s = &security[0];
        if from == "load" {
            // From outside the mesh, into frontend (PERMISSIVE): plaintext, as frontend's proxy saw it.
            assert_eq!(s["policy"], "none", "{edge}");
            assert_eq!(s["requests"].as_f64(), Some(sent as f64), "{edge}");
            continue;
        }
        let account = accounts.iter().find(|(p, _)| *p == from).map_or(from, |(_, a)| *a);
        assert_eq!(s["policy"], "mutual_tls", "{edge}");
        assert_eq!(s["source_principal"], spiffe(account), "{edge}");
        assert_eq!(s["destination_principal"], spiffe(to), "{edge}");
        assert_eq!(s["share"], 1.0, "{edge}");
    }
    // The plaintext client: closed without an answer, counted by inventory's proxy (and that is
    // the only connection any proxy refused: none of the mesh's own).
    let probe = &summary["plaintext_client"];
    assert_eq!(probe["pod"], "inventory", "{probe}");
    assert_eq!(probe["refused"], true, "{probe}");
    assert_eq!(count(&probe["proxy_refused_added"]), 1, "{probe}");
    assert_eq!(probe["proxy_refused"], serde_json::json!({"plaintext": 1}), "{probe}");
    for p in summary["proxies"].as_array().unwrap() {
        let expected = u64::from(p["pod"] == "inventory");
        assert_eq!(count(&p["refused_connections"]), expected, "{p}");
    }
}

/// The AuthorizationPolicy: inventory's call to catalog (through inventory's own proxy, as
/// inventory's identity) answered 403 `RBAC: access denied`, and catalog's proxies' deny counter
/// up by exactly that one call — then not once more while frontend's calls (the load) went
/// through. Returns the denied calls.
fn check_authorization(summary: &Value) -> u64 {
    let a = &summary["authorization"];
    assert_eq!((a["from"].as_str(), a["to"].as_str()), (Some("inventory"), Some("catalog")), "{a}");
    assert_eq!(a["policy"], "shop/catalog-callers", "{a}");
    assert_eq!(a["status"], 403, "the denied call: {a}");
    assert_eq!(a["body"], "RBAC: access denied", "{a}");
    assert_eq!(a["denied"], true, "{a}");
    assert_eq!(a["decision"], "no ALLOW policy matched (shop/catalog-callers selects catalog)", "{a}");
    // Catalog's proxy saw inventory's identity, over mutual TLS from inventory's proxy.
    assert_eq!(a["source_principal"], spiffe("inventory"), "{a}");
    let denied = 1;
    assert_eq!(count(&a["counter_delta"]), denied, "the counter went up by the denied call, exactly: {a}");
    let counters = a["counters"].as_array().unwrap();
    assert_eq!(counters.len(), 1, "{a}");
    let c = &counters[0];
    assert!(c["pod"] == "catalog-v1" || c["pod"] == "catalog-v2", "{a}");
    assert_eq!(
        (&c["decision"], &c["policy"], &c["rule"], &c["protocol"]),
        (&"deny".into(), &"none".into(), &"".into(), &"http".into()),
        "{a}"
    );
    assert_eq!(count(&c["after"]), count(&c["before"]) + denied, "{a}");
    // Frontend's calls were all allowed: no denial while the load ran, and over the whole run
    // the only denials any proxy counted are the demo's call's.
    assert_eq!(count(&a["counter_delta_since_load"]), 0, "{a}");
    let all: u64 = summary["proxies"].as_array().unwrap().iter().map(|p| count(&p["denied_requests"])).sum();
    assert_eq!(all, denied, "{}", summary["proxies"]);
    assert_eq!(count(&proxy(summary, c["pod"].as_str().unwrap())["denied_requests"]), denied);
    assert!(a["check"].as_str().unwrap().starts_with("trellis authz check "), "{a}");
    denied
}

fn zombie(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')))
}

/// Root runs share the namespace names and the run directory: one at a time.
static ROOT_RUNS: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn as_root_the_demo_injects_intercepts_and_routes_for_real_and_leaves_nothing() {
    if !privileged() {
        return;
    }
    let _one_at_a_time = ROOT_RUNS.lock().unwrap_or_else(|e| e.into_inner());
    let (ok, stdout, stderr) = run(Command::new(env!("CARGO_BIN_EXE_trellis")));
    let summary = summary(&stdout, &stderr);
    assert!(ok, "{stderr}");
    check(&summary, &stdout, "namespaces");
    let namespaces: Vec<&str> =
        summary["namespaces"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(
        namespaces,
        [
            "trellis-demo",
            "trellis-demo-frontend",
            "trellis-demo-catalog-v1",
            "trellis-demo-catalog-v2",
            "trellis-demo-inventory-2",
            "trellis-demo-inventory"
        ]
    );
    for ns in namespaces {
        assert!(!Path::new("/var/run/netns").join(ns).exists(), "namespace {ns} is still there");
    }
    // The links lived inside those namespaces; none ever reached the host.
    let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(!links.contains("tdbr0") && !links.contains("tdv"), "{links}");
}

/// Explicit runs share the loopback addresses (127.77.0.x): one at a time.
static EXPLICIT_RUNS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The demo as the explicit-mode tests run it: as nobody when this test runs as root.
fn explicit_command(copy: Option<&RunnableByAnyone>) -> Command {
    let mut command = match copy {
        Some(copy) => {
            let mut command = Command::new(&copy.path);
            command.uid(NOBODY).gid(NOBODY).env_clear().env("PATH", "/usr/bin:/bin").current_dir("/");
            command
        }
        None => Command::new(env!("CARGO_BIN_EXE_trellis")),
    };
    command.stdin(Stdio::null());
    command
}

/// A collector that cannot be reached costs the demo its trace and nothing else: its address
/// is taken (bound, never listening), so the demo cannot listen there and the proxies' exports
/// are refused; the run ends as always, says why there is no trace, and the proxies counted the
/// spans they could not export.
#[test]
fn an_unreachable_collector_does_not_fail_the_demo() {
    use std::os::fd::AsRawFd;

    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, socket};
    let _one_at_a_time = EXPLICIT_RUNS.lock().unwrap_or_else(|e| e.into_inner());
    let taken = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).unwrap();
    bind(taken.as_raw_fd(), &SockaddrIn::new(127, 77, 0, 1, 9411)).unwrap();
    let root = nix::unistd::geteuid().is_root();
    let copy = root.then(|| RunnableByAnyone::copy(env!("CARGO_BIN_EXE_trellis")));
    let (ok, stdout, stderr) =
        run_with(explicit_command(copy.as_ref()), &["--duration", "3", "--rate", "20"]);
    let summary = summary(&stdout, &stderr);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("the demo's Zipkin collector cannot listen on 127.77.0.1:9411"),
        "the demo says so: {stderr}"
    );
    assert_eq!(count(&summary["requests"]["failed"]), 0, "{}", summary["failures"]);
    let trace = &summary["trace"];
    assert!(trace["root"].is_null(), "{trace}");
    assert!(trace["error"].as_str().unwrap().contains("cannot listen on 127.77.0.1:9411"), "{trace}");
    assert!(count(&trace["proxies_counted"]["export_failed"]) >= 1, "the dropped spans are counted: {trace}");
    assert!(!summary["access_logs"]["edges"].as_array().unwrap().is_empty(), "{}", summary["access_logs"]);
    assert_eq!(summary["cleaned_up"], true);
    drop(taken);
}

#[test]
fn without_root_the_demo_runs_in_explicit_mode() {
    let _one_at_a_time = EXPLICIT_RUNS.lock().unwrap_or_else(|e| e.into_inner());
    // As root (CI), the demo runs as nobody, from a copy nobody can execute.
    let root = nix::unistd::geteuid().is_root();
    let copy = root.then(|| RunnableByAnyone::copy(env!("CARGO_BIN_EXE_trellis")));
    let (ok, stdout, stderr) = run(explicit_command(copy.as_ref()));
    assert!(stderr.contains("not running as root"), "{stderr}");
    let summary = summary(&stdout, &stderr);
    assert!(ok, "{stderr}");
    check(&summary, &stdout, "explicit");
    assert_eq!(summary["namespaces"], serde_json::json!([]));
}

/// A broken demo directory stops the demo before it makes anything, with the file and field.
#[test]
fn a_broken_example_is_refused_before_anything_runs() {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("istio")).unwrap();
    for file in [
        "mesh.yaml",
        "pods.yaml",
        "istio/services.yaml",
        "istio/catalog.yaml",
        "istio/inventory.yaml",
        "istio/security.yaml",
        "istio/authorization.yaml",
        "istio/telemetry.yaml",
    ] {
        std::fs::copy(source.join(file), dir.path().join(file)).unwrap();
    }
    let services = dir.path().join("istio/services.yaml");
    let text =
        std::fs::read_to_string(&services).unwrap().replace("address: 10.77.0.12", "address: 10.99.0.12");
    std::fs::write(&services, text).unwrap();
    let demo = |from: &Path| {
        Command::new(env!("CARGO_BIN_EXE_trellis"))
            .args(["demo", "--explicit", "--duration", "2", "--from"])
            .arg(from)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = demo(dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("istio/services.yaml: WorkloadEntry shop/catalog-v2: spec.address: 10.99.0.12 is not a pod address"),
        "{stderr}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("mesh up"), "nothing started");

    let missing = dir.path().join("nowhere");
    let out = demo(&missing);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("{}: ", missing.join("istio").display())));
}

/// A demo started in the background; its standard output arrives line by line.
struct Background {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    stderr: std::thread::JoinHandle<String>,
}

impl Background {
    fn start() -> Background {
        let mut child = Command::new(env!("CARGO_BIN_EXE_trellis"))
            .args(["demo", "--duration", "60", "--rate", "20", "--output", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (send, lines) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = send.send(line);
            }
        });
        let mut stderr = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Background { child, lines, stderr }
    }

    /// Waits (bounded) for the first line of the live table: the mesh is up.
    fn wait_for_traffic(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with("{\"tick\"") => return,
                Ok(_) => {}
                Err(_) => panic!("no table within 30s"),
            }
        }
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        nix::sys::signal::kill(pid, signal).unwrap();
    }

    /// Waits (bounded) for the end: exit code, the last line of output, standard error.
    fn finish(mut self) -> (Option<i32>, String, String) {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > DEADLINE {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("the demo did not end within {DEADLINE:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let last = self.lines.iter().last().unwrap_or_default();
        (status.code(), last, self.stderr.join().unwrap())
    }
}

fn namespaces_now() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/var/run/netns")
        .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    names.retain(|n| n.starts_with("trellis-demo"));
    names.sort();
    names
}

/// A demo killed outright leaves its mesh behind; the next run removes it first, and Ctrl-C
/// ends that run with everything removed.
#[test]
fn after_a_crash_the_next_run_cleans_up_and_ctrl_c_removes_everything() {
    use nix::sys::signal::Signal;
    if !privileged() {
        return;
    }
    let _one_at_a_time = ROOT_RUNS.lock().unwrap_or_else(|e| e.into_inner());
    // Where the demo keeps its files as root (it inherits this test's environment).
    let run_dir = std::env::temp_dir().join("trellis-demo-0");
    let run_dir = run_dir.to_str().unwrap();
    let crashed = Background::start();
    crashed.wait_for_traffic();
    crashed.signal(Signal::SIGKILL);
    let (code, _, _) = crashed.finish();
    assert_eq!(code, None, "killed by a signal");
    assert_eq!(namespaces_now().len(), 6, "the crash leaves the namespaces");
    assert_eq!(demo_processes_of(run_dir).len(), 11, "and the processes");

    let next = Background::start();
    next.wait_for_traffic();
    next.signal(Signal::SIGINT);
    let (code, last, stderr) = next.finish();
    assert!(
        stderr.contains("removed what an earlier run left: 11 processes, 6 network namespaces"),
        "{stderr}"
    );
    assert_eq!(code, Some(130), "{stderr}");
    let summary = summary(&last, &stderr);
    assert_eq!(summary["cleaned_up"], true);
    assert_eq!(count(&summary["requests"]["failed"]), 0, "{}", summary["failures"]);
    assert_eq!(namespaces_now(), Vec::<String>::new());
    assert_eq!(demo_processes_of(run_dir), Vec::<u32>::new());
    assert!(!Path::new(run_dir).exists());
}
