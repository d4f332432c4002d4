//! The proxy's own endpoints: admin on localhost (15000), readiness (15021), Prometheus (15090).
//! The status port (15020) is `app_health`'s, served the same way.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::Proxy;
use crate::forward::{full, text};
use crate::upstream::Body;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoints {
    Admin,
    Readiness,
    Stats,
}

pub async fn serve(listener: TcpListener, which: Endpoints, proxy: Arc<Proxy>) {
    let shared = proxy.clone();
    serve_http1(listener, proxy, move |request| {
        let response = answer(request, which, &shared);
        async move { response }
    })
    .await
}

/// Bounds what a client of these ports can make the proxy buffer: as on the data path (60 KiB
/// of headers), far more than a kubelet's, Prometheus's or a browser's GET.
const MAX_REQUEST_HEAD: usize = 64 * 1024;

/// Serves HTTP/1.1 on `listener`, each request answered by `handle`. These ports face the
/// network, whose clients (kubelet, Prometheus) speak HTTP/1.1: hyper's HTTP/1 server, with
/// the proxy's header timeout, which also closes a connection that never sends a byte.
/// (Telling HTTP/1 from HTTP/2 first would wait for those bytes without a deadline.)
pub(crate) async fn serve_http1<H, F>(listener: TcpListener, proxy: Arc<Proxy>, handle: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors: let some close before trying again.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let header_timeout = proxy.config.load().limits.header_read_timeout;
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = handle(request);
                async move { Ok::<_, Infallible>(response.await) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(MAX_REQUEST_HEAD)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// `/healthz/ready`: ready once the proxy holds a first full configuration (and a certificate,
/// with a mesh identity), and not draining.
pub(crate) fn readiness(proxy: &Proxy) -> Response<Body> {
    if proxy.is_ready() {
        text(StatusCode::OK, "ready\n")
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// The proxy's metrics in Prometheus' text format.
pub(crate) fn prometheus(proxy: &Proxy) -> Response<Body> {
    prometheus_page(proxy.metrics.render())
}

/// A page of metrics in Prometheus' text format.
pub(crate) fn prometheus_page(page: String) -> Response<Body> {
    let mut response = Response::new(full(Bytes::from(page)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

fn answer(request: Request<Incoming>, which: Endpoints, proxy: &Proxy) -> Response<Body> {
    let path = request.uri().path();
    match (which, request.method(), path) {
        (Endpoints::Readiness, &Method::GET, "/healthz/ready") => readiness(proxy),
        (Endpoints::Stats, &Method::GET, "/stats/prometheus")
        | (Endpoints::Admin, &Method::GET, "/stats/prometheus") => prometheus(proxy),
        (Endpoints::Admin, &Method::GET, "/config_dump") => config_dump(proxy),
        (Endpoints::Admin, &Method::GET, "/clusters") if wants_json(request.uri().query()) => {
            json(&clusters_json(proxy))
        }
        (Endpoints::Admin, &Method::GET, "/clusters") => text(StatusCode::OK, &clusters(proxy)),
        (Endpoints::Admin, &Method::GET, "/certs") => json(&certs(proxy)),
        (Endpoints::Admin, &Method::POST, "/logging") => {
            let level =
                request.uri().query().and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("level=")));
            match (level, &proxy.log_control) {
                (Some(level), Some(control)) => match control(level) {
                    Ok(()) => text(StatusCode::OK, &format!("log level: {level}\n")),
                    Err(e) => text(StatusCode::BAD_REQUEST, &format!("level {level:?}: {e}\n")),
                },
                (None, _) => text(
                    StatusCode::BAD_REQUEST,
                    "POST /logging?level=debug (or info, warn, error, a tracing filter)\n",
                ),
                (_, None) => text(StatusCode::NOT_IMPLEMENTED, "log level control is off\n"),
            }
        }
        (Endpoints::Admin, &Method::POST, "/quitquitquit") => {
            proxy.start_drain();
            text(StatusCode::OK, "draining\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn config_dump(proxy: &Proxy) -> Response<Body> {
    let snapshot = proxy.config.load();
    let body = serde_json::json!({
        "version": snapshot.version,
        "config": serde_json::to_value(&snapshot.source).unwrap_or_default(),
    });
    let mut response = Response::new(full(Bytes::from(serde_json::to_vec_pretty(&body).unwrap_or_default())));
    response.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response
}

/// The workload certificate: identity, serial, validity and the chain, as `/certs` shows it.
fn certs(proxy: &Proxy) -> serde_json::Value {
    let to_unix =
        |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let Some(mesh) = proxy.pools.mesh_tls() else {
        return serde_json::json!({ "certificates": [], "note": "no mesh identity configured" });
    };
    let Some(cert) = mesh.current() else {
        return serde_json::json!({ "certificates": [], "note": "no certificate yet" });
    };
    serde_json::json!({
        "certificates": [{
            "identity": cert.leaf.id.to_string(),
            "serial_number": cert.leaf.serial,
            "valid_from": to_unix(cert.leaf.not_before),
            "expiration_time": to_unix(cert.leaf.not_after),
            "seconds_until_expiration": cert.remaining(std::time::SystemTime::now()).as_secs(),
            "trust_domain": mesh.trust_domain(),
            "cert_chain": cert.chain_pem,
        }]
    })
}

fn json(value: &serde_json::Value) -> Response<crate::upstream::Body> {
    let mut response = Response::new(full(Bytes::from(value.to_string())));
    response.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response
}

/// `?format=json`, as Envoy's admin takes it.
fn wants_json(query: Option<&str>) -> bool {
    query.is_some_and(|q| q.split('&').any(|kv| kv == "format=json"))
}

/// `/clusters?format=json`: what the text page shows, shaped like Envoy's `cluster_statuses`,
/// for tools (`trellis proxy-config endpoints`) rather than eyes.
fn clusters_json(proxy: &Proxy) -> serde_json::Value {
    let snapshot = proxy.config.load();
    let statuses: Vec<serde_json::Value> = snapshot
        .clusters
        .iter()
        .map(|(name, cluster)| {
            let health = cluster.outlier.as_ref().map(|detector| {
                detector.refresh();
                detector.health()
            });
            let outlier = cluster.outlier.as_ref().map(|detector| {
                let (enforced, overflow) = detector.totals();
                serde_json::json!({
                    "ejections_active": detector.ejected_now(),
                    "ejections_enforced_total": enforced,
                    "ejections_overflow": overflow,
                })
            });
            let hosts: Vec<serde_json::Value> = cluster
                .balancer
                .targets()
                .iter()
                .enumerate()
                .map(|(i, target)| {
                    let endpoint = health.as_ref().and_then(|h| h.get(i));
                    let mut host = serde_json::json!({
                        "address": target.addr.to_string(),
                        "weight": target.weight,
                        "mesh_tls": target.mesh_tls,
                        "rq_active": cluster.balancer.active(i),
                        "health_status": {
                            "failed_outlier_check": endpoint.is_some_and(|e| e.ejected),
                        },
                    });
                    if let Some(endpoint) = endpoint {
                        host["outlier_ejections"] = endpoint.ejections.into();
                    }
                    if let Some(locality) = &cluster.locality {
                        let (what, value) = locality.describe(i);
                        host[what] = value.into();
                    }
                    host
                })
                .collect();
            serde_json::json!({
                "name": name,
                "rq_total": cluster.requests.load(Ordering::Relaxed),
                "rq_error": cluster.errors.load(Ordering::Relaxed),
                "rq_active": cluster.active(),
                "cx_active": cluster.pool.open(),
                "outlier_detection": outlier,
                "host_statuses": hosts,
            })
        })
        .collect();
    serde_json::json!({ "version": snapshot.version, "cluster_statuses": statuses })
}

/// Envoy's `/clusters` text format: `cluster::endpoint::stat::value`.
fn clusters(proxy: &Proxy) -> String {
    let snapshot = proxy.config.load();
    let mut out = String::new();
    for (name, cluster) in &snapshot.clusters {
        let _ = writeln!(out, "{name}::rq_total::{}", cluster.requests.load(Ordering::Relaxed));
        let _ = writeln!(out, "{name}::rq_error::{}", cluster.errors.load(Ordering::Relaxed));
        let _ = writeln!(out, "{name}::rq_active::{}", cluster.active());
        let _ = writeln!(out, "{name}::rq_pending_active::{}", cluster.pending());
        let _ = writeln!(out, "{name}::cx_active::{}", cluster.pool.open());
        let _ = writeln!(
            out,
            "{name}::upstream_rq_pending_overflow::{}",
            cluster.overflows.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "{name}::rq_retry_active::{}", cluster.retry_limit.in_flight());
        if let Some(budget) = &cluster.retry_budget {
            let tokens = budget.balance(std::time::Instant::now());
            let _ = writeln!(out, "{name}::retry_budget.tokens::{tokens}");
        }
        let health = cluster.outlier.as_ref().map(|detector| {
            detector.refresh();
            let (enforced, overflow) = detector.totals();
            let _ = writeln!(out, "{name}::outlier_detection.ejections_active::{}", detector.ejected_now());
            let _ = writeln!(out, "{name}::outlier_detection.ejections_enforced_total::{enforced}");
            let _ = writeln!(out, "{name}::outlier_detection.ejections_overflow::{overflow}");
            detector.health()
        });
        for (i, target) in cluster.balancer.targets().iter().enumerate() {
            let _ = writeln!(out, "{name}::{}::weight::{}", target.addr, target.weight);
            let _ = writeln!(out, "{name}::{}::rq_active::{}", target.addr, cluster.balancer.active(i));
            let endpoint = health.as_ref().and_then(|h| h.get(i));
            // Envoy's words for an ejected host.
            let flags = if endpoint.is_some_and(|e| e.ejected) { "/failed_outlier_check" } else { "healthy" };
            let _ = writeln!(out, "{name}::{}::health_flags::{flags}", target.addr);
            if let Some(locality) = &cluster.locality {
                let (what, value) = locality.describe(i);
                let _ = writeln!(out, "{name}::{}::{what}::{value}", target.addr);
            }
            if let Some(endpoint) = endpoint {
                let _ = writeln!(out, "{name}::{}::outlier_ejections::{}", target.addr, endpoint.ejections);
            }
        }
    }
    out
}
