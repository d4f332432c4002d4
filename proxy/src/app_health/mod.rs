//! The status port (15020, Istio's pilot-agent port): the app's own probes, run from inside the
//! pod. Under STRICT mutual TLS the kubelet's plaintext probes cannot reach the app through the
//! inbound capture, so the injector points them here
//! (`/app-health/<container>/livez|readyz|startupz`, a port the redirect leaves alone), and so
//! are its httpGet and tcpSocket lifecycle hooks (`/app-lifecycle/<container>/poststartz|prestopz`);
//! the originals come in `ISTIO_KUBE_APP_PROBERS` (`probers`). Each GET runs the original probe
//! against the app now (`probe`, `grpc`) and answers 200, or 503 with the reason;
//! `/healthz/ready` answers as the readiness port does, `/stats/prometheus` serves the proxy's
//! metrics merged with the app's (`app_metrics`); anything else is 404.

mod app_metrics;
mod exposition;
pub mod grpc;
mod probe;
mod probers;

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::sync::Semaphore;

pub use app_metrics::{AppMetricsTarget, MAX_APP_METRICS_BYTES, SCRAPE_CONFIG_ENV, ScrapeConfigError};
pub use probers::{Action, AppProbers, HttpGet, MAX_PROBERS_LEN, PROBERS_ENV, Prober, ProbersError, Scheme};

use crate::forward::text;
use crate::upstream::Body;
use crate::{Proxy, StartError};

/// Probes running at once. A pod's kubelet sends a few (three per container at most, every
/// few seconds); the bound is for anyone else who can reach the port, so that they cannot make
/// the proxy open connections to the app without limit.
const MAX_PROBES_IN_FLIGHT: usize = 32;

/// What the status port needs to answer.
struct Status {
    proxy: Arc<Proxy>,
    probers: AppProbers,
    /// Where the app listens when a probe names no host.
    app_host: String,
    in_flight: Semaphore,
    app_metrics: app_metrics::AppMetrics,
}

/// Binds the status port on `addrs` and serves it (on the current tokio runtime); the
/// addresses actually bound are returned. Probes without a host go to `app_host`.
pub fn start(
    proxy: &Arc<Proxy>,
    addrs: &[SocketAddr],
    probers: AppProbers,
    app_host: std::net::IpAddr,
) -> Result<Vec<SocketAddr>, StartError> {
    start_merging(proxy, addrs, probers, None, app_host)
}

/// [`start`], with the app's metrics (at `app_metrics`, on `app_host`) merged into
/// `/stats/prometheus`.
pub fn start_merging(
    proxy: &Arc<Proxy>,
    addrs: &[SocketAddr],
    probers: AppProbers,
    app_metrics: Option<AppMetricsTarget>,
    app_host: std::net::IpAddr,
) -> Result<Vec<SocketAddr>, StartError> {
    let listeners = addrs
        .iter()
        .map(|a| crate::bind(*a).map_err(|source| StartError::Bind { addr: *a, source }))
        .collect::<Result<Vec<_>, _>>()?;
    let bound: Vec<SocketAddr> = listeners.iter().filter_map(|l| l.local_addr().ok()).collect();
    // Like every port of the proxy's own, never a destination it forwards to.
    if let Ok(mut ports) = proxy.own_ports.write() {
        ports.extend(bound.iter().map(SocketAddr::port));
    }
    tracing::info!(addrs = ?bound, probes = probers.len(), "status port serving app probes");
    for (path, reason) in probers.problems() {
        tracing::warn!(probe = path, %reason, "this app probe cannot run; the kubelet gets 503 for it");
    }
    if let Some(target) = &app_metrics {
        tracing::info!(port = target.port, path = %target.path, "status port merging the app's metrics");
    }
    let app_host = app_host.to_string();
    let status = Arc::new(Status {
        proxy: proxy.clone(),
        probers,
        app_metrics: app_metrics::AppMetrics::new(app_metrics, &app_host),
        app_host,
        in_flight: Semaphore::new(MAX_PROBES_IN_FLIGHT),
    });
    for listener in listeners {
        let status = status.clone();
        tokio::spawn(crate::admin::serve_http1(listener, proxy.clone(), move |request| {
            answer(request, status.clone())
        }));
    }
    Ok(bound)
}

async fn answer(request: Request<Incoming>, status: Arc<Status>) -> Response<Body> {
    let path = request.uri().path();
    if request.method() != Method::GET {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if path == "/healthz/ready" {
        return crate::admin::readiness(&status.proxy);
    }
    // Where Istio's pods are scraped (prometheus.io/port: 15020): the proxy's series and the
    // app's, on one page.
    if path == "/stats/prometheus" {
        let page = status.app_metrics.page(status.proxy.metrics.render(), request.headers()).await;
        return crate::admin::prometheus_page(page);
    }
    let Some(prober) = status.probers.get(path) else {
        return match status.probers.unusable(path) {
            Some(reason) => text(StatusCode::SERVICE_UNAVAILABLE, &format!("{reason}\n")),
            None => text(StatusCode::NOT_FOUND, "not found\n"),
        };
    };
    // The kubelet's clock runs from its request: waiting for a place counts against the probe.
    let deadline = tokio::time::Instant::now() + prober.timeout;
    let outcome = match tokio::time::timeout_at(deadline, status.in_flight.acquire()).await {
        Ok(Ok(_place)) => probe::run(prober, &status.app_host, deadline).await,
        Ok(Err(closed)) => Err(closed.to_string()),
        Err(_) => Err(format!("too many probes in flight for {:?}", prober.timeout)),
    };
    match outcome {
        Ok(()) => text(StatusCode::OK, "ok\n"),
        Err(reason) => {
            tracing::debug!(probe = path, %reason, "app probe failed");
            text(StatusCode::SERVICE_UNAVAILABLE, &format!("{reason}\n"))
        }
    }
}
