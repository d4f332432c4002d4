//! The monitoring port (15014): Prometheus metrics, `/debug/syncz` (per proxy: connected since,
//! sent and acknowledged generation per type, the last rejection) and `/ready`.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::xds::server::{ProxySync, Registry};

/// One proxy as `/debug/syncz` shows it; `trellis proxy-status` reads the same shape.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SyncStatus {
    pub id: String,
    pub namespace: String,
    pub workload: String,
    /// Seconds since the Unix epoch.
    pub connected_since: u64,
    /// SYNCED, STALE (a response not yet acknowledged) or NACKED (the last response of some
    /// type was rejected).
    pub status: String,
    pub types: BTreeMap<String, TypeSync>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TypeSync {
    /// Generation of the last response sent.
    pub sent: Option<u64>,
    /// Generation of the last response acknowledged.
    pub acked: Option<u64>,
    /// Why the proxy rejected the last response, while it stands.
    pub nack: Option<String>,
    /// Resources the proxy holds.
    pub held: usize,
}

impl SyncStatus {
    pub fn of(proxy: &ProxySync) -> SyncStatus {
        let types: BTreeMap<String, TypeSync> = proxy
            .types
            .iter()
            .map(|(kind, s, held)| {
                (
                    kind.short_name().to_owned(),
                    TypeSync {
                        sent: s.sent,
                        acked: s.acked,
                        nack: s.nack.as_ref().map(|n| n.message.clone()),
                        held: *held,
                    },
                )
            })
            .collect();
        let status = if types.values().any(|t| t.nack.is_some()) {
            "NACKED"
        } else if types.values().any(|t| t.sent.is_some() && t.sent != t.acked) {
            "STALE"
        } else {
            "SYNCED"
        };
        SyncStatus {
            id: proxy.node.id.clone(),
            namespace: proxy.node.namespace.clone(),
            workload: proxy.node.workload.clone(),
            connected_since: proxy.connected_since.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            status: status.to_owned(),
            types,
        }
    }
}

/// `/debug/syncz`: every connected proxy, and the config objects currently rejected (their
/// last good version is what proxies get).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Syncz {
    pub proxies: Vec<SyncStatus>,
    pub rejected_config: Vec<String>,
}

/// The config sources' current rejections, for the debug page.
#[derive(Clone, Default)]
pub struct RejectedConfig(Arc<std::sync::Mutex<Vec<String>>>);

impl RejectedConfig {
    pub fn replace(&self, messages: Vec<String>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = messages;
    }

    pub fn get(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[derive(Clone)]
struct Monitoring {
    registry: Arc<Registry>,
    rejected: RejectedConfig,
    metrics: Arc<prometheus_client::registry::Registry>,
}

pub fn router(
    registry: Arc<Registry>,
    rejected: RejectedConfig,
    metrics: Arc<prometheus_client::registry::Registry>,
) -> Router {
    Router::new()
        .route("/metrics", get(metrics_page))
        .route("/debug/syncz", get(syncz))
        .route("/ready", get(|| async { "ok" }))
        .with_state(Monitoring { registry, rejected, metrics })
}

async fn metrics_page(State(m): State<Monitoring>) -> impl IntoResponse {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &m.metrics) {
        Ok(()) => {
            (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn syncz(State(m): State<Monitoring>) -> impl IntoResponse {
    let mut proxies: Vec<SyncStatus> = m.registry.snapshot().iter().map(SyncStatus::of).collect();
    proxies.sort_by(|a, b| a.id.cmp(&b.id));
    axum::Json(Syncz { proxies, rejected_config: m.rejected.get() })
}
