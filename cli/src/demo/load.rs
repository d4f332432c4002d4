//! The demo's load: a steady rate of GETs into the entry pod, from outside the mesh, on
//! keep-alive connections. Every answer is read: its status and latency feed the table's first
//! row, and the pods named in its (nested) JSON say which canary subset served it, counted per
//! phase of the canary. One request may carry extra headers (the traced request's).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use serde_json::Value;

use super::trace::TracedAnswer;
use crate::http_client::Pool;

/// How long one request may take, end to end.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Requests in flight beyond this are not sent (counted as skipped): the load stays open-loop
/// without piling up on a stalled mesh.
const MAX_IN_FLIGHT: usize = 256;
/// Failures quoted in the summary.
const QUOTED_FAILURES: usize = 5;

/// Where the canary stands when a request is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// The original weights.
    Before,
    /// Edited; not yet acknowledged by every proxy that needs it. Not counted in either phase.
    Switching,
    After,
}

/// One second (or so) of the load, for the table.
#[derive(Clone, Debug, Default)]
pub struct Window {
    pub requests: u64,
    pub ok: u64,
    pub latencies_ms: Vec<f64>,
}

impl Window {
    pub fn add(&mut self, other: &Window) {
        self.requests += other.requests;
        self.ok += other.ok;
        self.latencies_ms.extend(&other.latencies_ms);
    }

    /// The exact q-quantile (nearest rank) of the latencies.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let mut sorted = self.latencies_ms.clone();
        sorted.sort_by(f64::total_cmp);
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
        sorted.get(rank - 1).copied()
    }
}

/// What the load has seen so far.
#[derive(Debug)]
pub struct Record {
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    pub skipped: u64,
    pub failures: Vec<String>,
    pub phase: Phase,
    /// Answers by the pods that served them, per phase (the pod named at every level).
    pub answers: BTreeMap<Phase, BTreeMap<String, u64>>,
    window: Window,
}

impl Default for Record {
    fn default() -> Self {
        Record {
            sent: 0,
            ok: 0,
            failed: 0,
            skipped: 0,
            failures: Vec::new(),
            phase: Phase::Before,
            answers: BTreeMap::new(),
            window: Window::default(),
        }
    }
}

impl Record {
    /// The requests finished since the last call.
    pub fn take_window(&mut self) -> Window {
        std::mem::take(&mut self.window)
    }
}

pub type Shared = Arc<Mutex<Record>>;

/// One request of the load that carries extra headers (the traced request's trace context):
/// which one (counted from 0), the headers, and where to say how it went.
pub type Marked = (u64, HeaderMap, tokio::sync::oneshot::Sender<TracedAnswer>);

/// Sends `rate` requests per second to `target` (Host `authority`) until `running` turns
/// false, then waits (bounded) for those in flight. The `marked` request carries its headers
/// and reports its answer.
pub async fn drive(
    target: SocketAddr,
    authority: String,
    rate: u32,
    record: Shared,
    mut running: tokio::sync::watch::Receiver<bool>,
    mut marked: Option<Marked>,
) {
    let pool = Arc::new(Pool::new(target));
    let authority: Arc<str> = authority.into();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    let mut sent: u64 = 0;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = running.wait_for(|r| !*r) => break,
        }
        if in_flight.load(Ordering::Acquire) >= MAX_IN_FLIGHT {
            if let Ok(mut r) = record.lock() {
                r.skipped += 1;
            }
            continue;
        }
        in_flight.fetch_add(1, Ordering::AcqRel);
        let (pool, authority, record, in_flight) =
            (pool.clone(), authority.clone(), record.clone(), in_flight.clone());
        let (headers, report) = match marked.take() {
            Some((index, headers, report)) if index <= sent => (headers, Some(report)),
            other => {
                marked = other;
                (HeaderMap::new(), None)
            }
        };
        sent += 1;
        tokio::spawn(async move {
            let answer = one(&pool, &authority, &record, &headers).await;
            if let Some(report) = report {
                let _ = report.send(answer);
            }
            in_flight.fetch_sub(1, Ordering::AcqRel);
        });
    }
    let deadline = Instant::now() + TIMEOUT + Duration::from_secs(1);
    while in_flight.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One request, recorded; what it got.
async fn one(pool: &Pool, authority: &str, record: &Mutex<Record>, headers: &HeaderMap) -> TracedAnswer {
    let mut seen = TracedAnswer::default();
    let phase = match record.lock() {
        Ok(mut r) => {
            r.sent += 1;
            r.phase
        }
        Err(_) => return seen,
    };
    seen.start_unix_micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    let start = Instant::now();
    let result = pool.get(authority, "/", headers, TIMEOUT).await;
    let millis = start.elapsed().as_secs_f64() * 1000.0;
    seen.duration_ms = millis;
    let Ok(mut r) = record.lock() else { return seen };
    r.window.requests += 1;
    r.window.latencies_ms.push(millis);
    let failure = match result {
        Ok(answer) if answer.status == http::StatusCode::OK => {
            seen.status = Some(answer.status.as_u16());
            r.ok += 1;
            r.window.ok += 1;
            let served =
                serde_json::from_slice::<Value>(&answer.body).map(|v| pods_in(&v)).unwrap_or_default();
            let counts = r.answers.entry(phase).or_default();
            for pod in &served {
                *counts.entry(pod.clone()).or_default() += 1;
            }
            seen.pods = served;
            return seen;
        }
        Ok(answer) => {
            seen.status = Some(answer.status.as_u16());
            let body = String::from_utf8_lossy(&answer.body);
            format!("{}: {}", answer.status, body.chars().take(300).collect::<String>())
        }
        Err(e) => e,
    };
    seen.error = Some(failure.clone());
    r.failed += 1;
    if r.failures.len() < QUOTED_FAILURES {
        r.failures.push(failure);
    }
    seen
}

/// Every `pod` named in a demo app's answer and the answers nested in it.
pub fn pods_in(answer: &Value) -> Vec<String> {
    let mut pods = Vec::new();
    let mut stack = vec![answer];
    while let Some(value) = stack.pop() {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(pod)) = map.get("pod") {
                    pods.push(pod.clone());
                }
                stack.extend(map.values());
            }
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    pods.sort();
    pods
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pods_of_a_nested_answer() {
        let answer = serde_json::json!({
            "name": "frontend", "pod": "frontend",
            "calls": [{"status": 200, "answer": {"name": "catalog", "pod": "catalog-v2",
                "calls": [{"answer": {"pod": "inventory"}}]}}]
        });
        assert_eq!(pods_in(&answer), ["catalog-v2", "frontend", "inventory"]);
        assert!(pods_in(&serde_json::json!("text")).is_empty());
    }

    #[test]
    fn window_quantiles_are_exact() {
        let window = Window { requests: 4, ok: 4, latencies_ms: vec![4.0, 1.0, 3.0, 2.0] };
        assert_eq!(window.quantile(0.5), Some(2.0));
        assert_eq!(window.quantile(0.99), Some(4.0));
        assert_eq!(Window::default().quantile(0.5), None);
    }
}
