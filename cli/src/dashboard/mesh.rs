//! trellisd's own view, without a Prometheus: the control plane's `/debug/syncz` says which
//! proxies are connected, each sidecar's node id names its pod address
//! (`sidecar~<ip>~<pod>.<ns>~...`), and the dashboard reads every proxy's Prometheus page
//! (`<ip>:15090/stats/prometheus`) itself, a few at a time, each within a deadline. Rates are
//! the counters' growth between two reads. `--proxy-metrics` adds addresses the control plane
//! cannot tell (or replaces it when it is not given).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::exposition::{self, DURATION_BUCKETS, EJECTIONS, REQUESTS, Sample};
use crate::proxy_status::fetch::{self, Endpoint};
use crate::proxy_status::model::Syncz;

/// Proxies read at once.
const CONCURRENT_SCRAPES: usize = 16;

/// One read of the mesh.
pub struct Reading {
    pub requests: Vec<Sample>,
    pub buckets: Vec<Sample>,
    /// Outlier ejections so far, per proxy and cluster (counters, not rates).
    pub ejections: Vec<Sample>,
    /// Proxies that could not be read, with why; the rest still make the graph.
    pub warnings: Vec<String>,
}

pub struct Mesh {
    control_plane: Option<Endpoint>,
    extra: Vec<SocketAddr>,
    stats_port: u16,
    timeout: Duration,
    /// Per proxy address: when it was last read and its counters then (by series).
    previous: HashMap<SocketAddr, (Instant, HashMap<String, f64>)>,
}

impl Mesh {
    pub fn new(
        control_plane: Option<Endpoint>,
        extra: Vec<SocketAddr>,
        stats_port: u16,
        timeout: Duration,
    ) -> Mesh {
        Mesh { control_plane, extra, stats_port, timeout, previous: HashMap::new() }
    }

    /// The addresses given, and those of the proxies `/debug/syncz` lists.
    pub fn targets(&self, syncz: Option<&Syncz>) -> Vec<SocketAddr> {
        let mut targets = self.extra.clone();
        for proxy in syncz.map(|s| s.proxies.as_slice()).unwrap_or_default() {
            if let Some(ip) = address_of(&proxy.id) {
                let addr = SocketAddr::new(ip, self.stats_port);
                if !targets.contains(&addr) {
                    targets.push(addr);
                }
            }
        }
        targets
    }

    /// The control plane's URL and its `/debug/syncz`, when one is given.
    pub async fn syncz(&self) -> Option<(String, Result<Syncz, String>)> {
        let endpoint = self.control_plane.as_ref()?;
        Some((endpoint.url.clone(), fetch::syncz(endpoint, self.timeout).await))
    }

    /// Reads every target and turns counters into rates.
    pub async fn read(&mut self, targets: &[SocketAddr]) -> Reading {
        let permits = Arc::new(Semaphore::new(CONCURRENT_SCRAPES));
        let mut tasks = tokio::task::JoinSet::new();
        for &addr in targets {
            let permits = permits.clone();
            let timeout = self.timeout;
            tasks.spawn(async move {
                let _permit = permits.acquire_owned().await;
                (addr, scrape(addr, timeout).await, Instant::now())
            });
        }
        let mut reading = Reading { requests: vec![], buckets: vec![], ejections: vec![], warnings: vec![] };
        let mut current = HashMap::new();
        while let Some(joined) = tasks.join_next().await {
            let Ok((addr, result, at)) = joined else { continue };
            let samples = match result {
                Ok(samples) => samples,
                Err(e) => {
                    reading.warnings.push(e);
                    continue;
                }
            };
            let previous = self.previous.get(&addr);
            let mut counters = HashMap::new();
            for mut sample in samples {
                if sample.name == EJECTIONS {
                    sample.labels.insert("proxy".to_owned(), addr.to_string());
                    reading.ejections.push(sample);
                    continue;
                }
                let id = series_id(&sample);
                counters.insert(id.clone(), sample.value);
                // Without an earlier read of this proxy there is no rate yet; a series new
                // since the earlier read started from zero.
                let Some((then, before)) = previous else { continue };
                let seconds = at.duration_since(*then).as_secs_f64();
                if seconds <= 0.0 {
                    continue;
                }
                let old = before.get(&id).copied().unwrap_or(0.0);
                // A restarted proxy counts from zero again.
                let grown = if sample.value >= old { sample.value - old } else { sample.value };
                sample.value = grown / seconds;
                if sample.name == REQUESTS {
                    reading.requests.push(sample);
                } else {
                    reading.buckets.push(sample);
                }
            }
            current.insert(addr, (at, counters));
        }
        // Proxies gone from the mesh are forgotten.
        self.previous = current;
        reading.warnings.sort();
        reading
    }
}

fn series_id(sample: &Sample) -> String {
    let labels: Vec<String> = sample.labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{}{{{}}}", sample.name, labels.join(","))
}

/// The pod address of a sidecar's node id (`sidecar~10.1.2.3~pod.ns~...`).
pub fn address_of(node_id: &str) -> Option<IpAddr> {
    let mut parts = node_id.split('~');
    let _kind = parts.next()?;
    parts.next()?.parse().ok()
}

async fn scrape(addr: SocketAddr, timeout: Duration) -> Result<Vec<Sample>, String> {
    let answer = crate::http_client::get_once(addr, "/stats/prometheus", timeout)
        .await
        .map_err(|e| format!("proxy metrics at {addr}: {e}"))?;
    if !answer.status.is_success() {
        return Err(format!("proxy metrics at http://{addr}/stats/prometheus: answered {}", answer.status));
    }
    let text = String::from_utf8_lossy(&answer.body);
    Ok(exposition::samples(&text, &[REQUESTS, DURATION_BUCKETS, EJECTIONS]))
}

/// Ejections per cluster, summed over proxies.
pub fn ejections_by_cluster(ejections: &[Sample]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for s in ejections {
        let cluster = s.labels.get("cluster_name").cloned().unwrap_or_default();
        *out.entry(cluster).or_default() += s.value;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_name_the_pod_address() {
        assert_eq!(
            address_of("sidecar~10.1.2.3~web-1.shop~shop.svc.cluster.local"),
            Some("10.1.2.3".parse().unwrap())
        );
        assert_eq!(address_of("sidecar~fd00::5~web-1.shop~x"), Some("fd00::5".parse().unwrap()));
        assert_eq!(address_of("sidecar~~web-1.shop~x"), None);
        assert_eq!(address_of("router"), None);
        assert_eq!(address_of(""), None);
    }
}
