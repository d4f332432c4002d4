//! The dashboard's HTTP server: the page and its libraries (built into the binary), and the
//! JSON API the page polls. A source that cannot be read answers 502 with `{"error": ...}`
//! naming it; before the first reading, 503.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State as Extract};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use serde_json::json;

use super::graph::{Edge, Signals};
use super::service::{self, ServiceConfig};
use super::state::{Point, State};

const INDEX: &str = include_str!("assets/index.html");
const APP: &str = include_str!("assets/app.js");
const CYTOSCAPE: &str = include_str!("assets/cytoscape.min.js");
const UPLOT: &str = include_str!("assets/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("assets/uPlot.min.css");
const LICENSES: &str = concat!(
    "cytoscape.js\n\n",
    include_str!("assets/cytoscape.LICENSE"),
    "\n\nuPlot\n\n",
    include_str!("assets/uPlot.LICENSE")
);

pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/", get(|| async { page("text/html; charset=utf-8", INDEX) }))
        .route("/assets/{file}", get(asset))
        .route("/api/graph", get(graph))
        .route("/api/proxies", get(proxies))
        .route("/api/service/{namespace}/{name}", get(service_view))
        .with_state(state)
}

fn page(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

async fn asset(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "app.js" => page("text/javascript; charset=utf-8", APP),
        "cytoscape.min.js" => page("text/javascript; charset=utf-8", CYTOSCAPE),
        "uPlot.iife.min.js" => page("text/javascript; charset=utf-8", UPLOT),
        "uPlot.min.css" => page("text/css; charset=utf-8", UPLOT_CSS),
        "LICENSES.txt" => page("text/plain; charset=utf-8", LICENSES),
        _ => error(StatusCode::NOT_FOUND, format!("no asset {file:?}")),
    }
}

fn error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

fn not_yet() -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, "the first reading of the mesh is not done yet".to_owned())
}

async fn graph(Extract(state): Extract<Arc<State>>) -> Response {
    state.with_latest(|latest| match latest.map(|r| &r.graph) {
        None => not_yet(),
        Some(Ok(graph)) => axum::Json(graph).into_response(),
        Some(Err(e)) => error(StatusCode::BAD_GATEWAY, e.clone()),
    })
}

async fn proxies(Extract(state): Extract<Arc<State>>) -> Response {
    state.with_latest(|latest| match latest.map(|r| &r.proxies) {
        None => not_yet(),
        Some(Ok(proxies)) => axum::Json(proxies).into_response(),
        Some(Err(e)) => error(StatusCode::BAD_GATEWAY, e.clone()),
    })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ServiceAnswer {
    namespace: String,
    name: String,
    /// The service's signals now (`None` when the graph could not be read).
    signals: Option<Signals>,
    /// Its edges to the workloads that answered it.
    endpoints: Vec<Edge>,
    /// Outlier ejections so far of its clusters (trellisd's view only), by cluster.
    ejections: std::collections::BTreeMap<String, f64>,
    history: Vec<Point>,
    /// `None` without `--config`.
    config: Option<ServiceConfig>,
    /// Why the graph part is missing, when it is.
    error: Option<String>,
}

/// Kubernetes names: DNS labels (a service) and subdomains; nothing else is looked up.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

async fn service_view(
    Extract(state): Extract<Arc<State>>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    for (field, value) in [("namespace", &namespace), ("name", &name)] {
        if !valid_name(value) {
            return error(StatusCode::BAD_REQUEST, format!("{field} {value:?} is not a Kubernetes name"));
        }
    }
    let key = format!("{namespace}/{name}");
    let node = format!("service:{key}");
    let cluster_host = format!("{name}.{namespace}.svc");
    let (signals, endpoints, ejections, error_text) = state.with_latest(|latest| {
        let ejections = latest
            .map(|r| {
                r.ejections
                    .iter()
                    .filter(|(c, _)| c.contains(&cluster_host))
                    .map(|(c, n)| (c.clone(), *n))
                    .collect()
            })
            .unwrap_or_default();
        match latest.map(|r| &r.graph) {
            None => {
                (None, vec![], ejections, Some("the first reading of the mesh is not done yet".to_owned()))
            }
            Some(Err(e)) => (None, vec![], ejections, Some(e.clone())),
            Some(Ok(graph)) => {
                let endpoints: Vec<Edge> =
                    graph.graph.edges.iter().filter(|e| e.source == node).cloned().collect();
                let calls: Vec<&Edge> = graph.graph.edges.iter().filter(|e| e.target == node).collect();
                let signals =
                    (!calls.is_empty()).then(|| state.history_of(&key).pop().map(|p| p.signals)).flatten();
                (signals, endpoints, ejections, None)
            }
        }
    });
    let config = state.config_dir.as_ref().map(|dir| {
        let (docs, errors) = service::load_dir(dir);
        let mut config = service::for_service(&docs, &namespace, &name);
        config.errors = errors;
        config
    });
    let answer = ServiceAnswer {
        namespace,
        name,
        signals,
        endpoints,
        ejections,
        history: state.history_of(&key),
        config,
        error: error_text,
    };
    axum::Json(answer).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(valid_name("reviews"));
        assert!(valid_name("a.b-c9"));
        for bad in ["", "Reviews", "a/b", "..%2f", "a b", &"a".repeat(254)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
