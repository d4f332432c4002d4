//! What the page is served from: the latest reading of the mesh (graph, proxy sync), made by
//! one task every `--interval`, and a short history of each service's golden signals for the
//! service view's charts.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;

use super::graph::{self, Graph, Signals};
use super::mesh::{self, Mesh};
use super::prometheus::Prometheus;
use crate::proxy_status::model::Syncz;
use crate::proxy_status::render::{Connected, JsonProxy};

/// Readings kept per service for the charts (at the default 2 s, five minutes).
pub const HISTORY: usize = 150;

/// The graph as `/api/graph` answers it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GraphAnswer {
    /// `prometheus <url>` or `trellisd <url>` (and/or the proxies given).
    pub source: String,
    /// Seconds since the Unix epoch.
    pub time: u64,
    #[serde(flatten)]
    pub graph: Graph,
    /// What could not be read while the rest could (a proxy that did not answer).
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxiesAnswer {
    pub control_plane: String,
    pub proxies: Vec<Value>,
    pub rejected_config: Vec<String>,
}

/// One reading.
pub struct Reading {
    pub graph: Result<GraphAnswer, String>,
    pub proxies: Result<ProxiesAnswer, String>,
    /// Outlier ejections so far by cluster (trellisd's view only).
    pub ejections: BTreeMap<String, f64>,
}

/// A point of a service's chart.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Point {
    pub time: u64,
    #[serde(flatten)]
    pub signals: Signals,
}

pub struct State {
    pub config_dir: Option<PathBuf>,
    latest: Mutex<Option<Reading>>,
    history: Mutex<VecDeque<(u64, BTreeMap<String, Signals>)>>,
}

impl State {
    pub fn new(config_dir: Option<PathBuf>) -> State {
        State { config_dir, latest: Mutex::new(None), history: Mutex::new(VecDeque::new()) }
    }

    /// Runs `f` on the latest reading (`None` before the first).
    pub fn with_latest<T>(&self, f: impl FnOnce(Option<&Reading>) -> T) -> T {
        f(self.latest.lock().unwrap_or_else(|p| p.into_inner()).as_ref())
    }

    pub fn history_of(&self, service: &str) -> Vec<Point> {
        let history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        history
            .iter()
            .map(|(time, by)| Point { time: *time, signals: by.get(service).cloned().unwrap_or_default() })
            .collect()
    }

    fn store(&self, reading: Reading, signals: Option<BTreeMap<String, Signals>>) {
        if let (Some(signals), Ok(graph)) = (signals, &reading.graph) {
            let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
            if history.len() == HISTORY {
                history.pop_front();
            }
            history.push_back((graph.time, signals));
        }
        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = Some(reading);
    }
}

/// Where the graph's numbers come from.
pub enum Source {
    Prometheus(Prometheus),
    /// trellisd and the proxies it knows (or those given).
    Mesh,
}

/// Reads the mesh every `interval`, forever.
pub async fn collect(
    state: std::sync::Arc<State>,
    source: Source,
    mut mesh: Mesh,
    describe: String,
    interval: Duration,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let (reading, signals) = read(&source, &mut mesh, &describe).await;
        state.store(reading, signals);
    }
}

async fn read(
    source: &Source,
    mesh: &mut Mesh,
    describe: &str,
) -> (Reading, Option<BTreeMap<String, Signals>>) {
    let time = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let syncz = mesh.syncz().await;
    let (control_plane, syncz) = match syncz {
        Some((url, result)) => (url, result),
        None => (String::new(), Err("no --control-plane given".to_owned())),
    };
    let proxies = syncz.as_ref().map(|s| proxies_answer(&control_plane, s)).map_err(Clone::clone);
    let mut ejections = BTreeMap::new();
    let rates = match source {
        Source::Prometheus(prometheus) => prometheus.rates().await.map(|(r, b)| (r, b, Vec::new())),
        Source::Mesh => {
            let targets = mesh.targets(syncz.as_ref().ok());
            match &syncz {
                Err(e) if targets.is_empty() => Err(format!("cannot find the proxies: {e}")),
                _ => {
                    let mut reading = mesh.read(&targets).await;
                    if let Err(e) = &syncz {
                        reading
                            .warnings
                            .insert(0, format!("only the --proxy-metrics addresses are read: {e}"));
                    }
                    ejections = mesh::ejections_by_cluster(&reading.ejections);
                    Ok((reading.requests, reading.buckets, reading.warnings))
                }
            }
        }
    };
    match rates {
        Ok((requests, buckets, warnings)) => {
            let (graph, signals) = graph::build(&requests, &buckets);
            let answer = GraphAnswer { source: describe.to_owned(), time, graph, warnings };
            (Reading { graph: Ok(answer), proxies, ejections }, Some(signals))
        }
        Err(e) => (Reading { graph: Err(e), proxies, ejections }, None),
    }
}

fn proxies_answer(control_plane: &str, syncz: &Syncz) -> ProxiesAnswer {
    let mut proxies: Vec<Connected> = syncz
        .proxies
        .iter()
        .map(|p| Connected { control_plane: control_plane.to_owned(), proxy: p.clone() })
        .collect();
    proxies.sort_by(|a, b| (&a.proxy.namespace, a.proxy.name()).cmp(&(&b.proxy.namespace, b.proxy.name())));
    ProxiesAnswer {
        control_plane: control_plane.to_owned(),
        proxies: proxies.iter().filter_map(|c| serde_json::to_value(JsonProxy::of(c)).ok()).collect(),
        rejected_config: syncz.rejected_config.clone(),
    }
}
