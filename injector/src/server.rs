//! The HTTPS shell: axum on rustls, `POST /inject` plus health and metrics, and a serving
//! certificate that is reloaded when its files change, without dropping the listener.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum_server::tls_rustls::RustlsConfig;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::admission::{Outcome, review};
use crate::config::InjectorConfig;
use crate::metrics::Metrics;
use crate::template::Templates;

/// AdmissionReviews for pods are a few KiB; anything this large is not one.
pub const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;
/// Admissions handled at once; more wait. Bounds the memory that bodies in flight can take
/// (this many times MAX_BODY_BYTES at worst) and keeps a flood from starving real requests.
const MAX_CONCURRENT_ADMISSIONS: usize = 64;

pub struct Injector {
    pub config: InjectorConfig,
    pub templates: Templates,
    pub metrics: Metrics,
    /// False until the API server can verify our certificate (Kubernetes mode).
    pub ready: Arc<AtomicBool>,
    admissions: Semaphore,
    /// A client has this long to send its headers, and then its body. The API server sends
    /// both at once; a slow trickle is a broken or hostile client holding a connection.
    pub client_timeout: Duration,
}

impl Injector {
    pub fn new(config: InjectorConfig, templates: Templates, ready: Arc<AtomicBool>) -> Self {
        Injector {
            config,
            templates,
            metrics: Metrics::default(),
            ready,
            admissions: Semaphore::new(MAX_CONCURRENT_ADMISSIONS),
            client_timeout: Duration::from_secs(10),
        }
    }
}

pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// How often the files are compared with what is being served.
    pub reload_interval: Duration,
}

pub fn router(injector: Arc<Injector>) -> Router {
    Router::new()
        .route("/inject", post(inject_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .route("/metrics", get(metrics_handler))
        .with_state(injector)
}

async fn ready_handler(State(injector): State<Arc<Injector>>) -> Response {
    if injector.ready.load(Ordering::Acquire) {
        "ok\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "waiting for the webhook caBundle to trust this replica\n")
            .into_response()
    }
}

async fn metrics_handler(State(injector): State<Arc<Injector>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], injector.metrics.encode())
        .into_response()
}

async fn inject_handler(State(injector): State<Arc<Injector>>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    injector.metrics.request();
    let response = handle(&injector, &headers, body).await;
    injector.metrics.observe_latency(started.elapsed().as_secs_f64());
    response
}

async fn handle(injector: &Injector, headers: &HeaderMap, body: Body) -> Response {
    let reject = |status: StatusCode, message: String| {
        injector.metrics.bad_request();
        tracing::warn!(%status, %message, "rejected admission request");
        (status, message + "\n").into_response()
    };
    // The semaphore is never closed, so acquiring only waits.
    let Ok(_permit) = injector.admissions.acquire().await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    };
    // Read the body before judging the request, so that a rejected request leaves the
    // connection usable for the next one.
    let bytes = match tokio::time::timeout(injector.client_timeout, to_bytes(body, MAX_BODY_BYTES)).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            return reject(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body (limit {MAX_BODY_BYTES} bytes): {e}"),
            );
        }
        Err(_) => {
            return reject(
                StatusCode::REQUEST_TIMEOUT,
                format!("the body took longer than {:?}", injector.client_timeout),
            );
        }
    };
    if !is_json(headers) {
        let got = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("none");
        return reject(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content type must be application/json, got {got}"),
        );
    }
    match review(&bytes, &injector.config, &injector.templates) {
        Ok((json, outcome)) => {
            match outcome {
                Outcome::Injected => injector.metrics.injected(),
                Outcome::Skipped(reason) => injector.metrics.skipped(reason),
                Outcome::Denied => injector.metrics.denied(),
                Outcome::NotForUs => {}
            }
            tracing::debug!(?outcome, "admission answered");
            ([(header::CONTENT_TYPE, "application/json")], json).into_response()
        }
        Err(e) => reject(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

/// A rustls server config from PEM files: TLS 1.2 and 1.3 (all rustls offers), HTTP/1.1.
pub fn load_tls(cert_pem: &[u8], key_pem: &[u8]) -> Result<ServerConfig, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate: {e}"))?;
    if certs.is_empty() {
        return Err("certificate: no PEM certificate found".to_owned());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("private key: {e}"))?;
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

async fn read_pair(files: &TlsFiles) -> Result<(Vec<u8>, Vec<u8>), String> {
    let cert = tokio::fs::read(&files.cert).await.map_err(|e| format!("{}: {e}", files.cert.display()))?;
    let key = tokio::fs::read(&files.key).await.map_err(|e| format!("{}: {e}", files.key.display()))?;
    Ok((cert, key))
}

/// Serves until `shutdown` resolves, then drains for up to `drain`.
pub async fn serve(
    listener: std::net::TcpListener,
    injector: Arc<Injector>,
    files: TlsFiles,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (cert, key) = read_pair(&files).await.map_err(anyhow::Error::msg)?;
    // Tests and scripts read the bound address (useful with port 0) from this line; a closed
    // stdout is no reason to stop serving.
    {
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), "listening on {}", listener.local_addr()?);
    }
    let tls = RustlsConfig::from_config(Arc::new(load_tls(&cert, &key).map_err(anyhow::Error::msg)?));
    tokio::spawn(watch_certificate(tls.clone(), files, (cert, key)));
    let handle = axum_server::Handle::<SocketAddr>::new();
    let on_shutdown = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        on_shutdown.graceful_shutdown(Some(Duration::from_secs(10)));
    });
    let mut server = axum_server::from_tcp_rustls(listener, tls)?.handle(handle);
    server
        .http_builder()
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(injector.client_timeout);
    server.serve(router(injector).into_make_service()).await?;
    Ok(())
}

/// Compares the files with what is served and swaps the config when they change. Contents, not
/// timestamps: Kubernetes updates mounted Secrets by swapping a symlink.
async fn watch_certificate(tls: RustlsConfig, files: TlsFiles, mut served: (Vec<u8>, Vec<u8>)) {
    let mut ticker = tokio::time::interval(files.reload_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let current = match read_pair(&files).await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the serving certificate; keeping the current one");
                continue;
            }
        };
        if current == served {
            continue;
        }
        // A writer may have replaced one file but not yet the other: wait for a pair that loads.
        match load_tls(&current.0, &current.1) {
            Ok(config) => {
                tls.reload_from_config(Arc::new(config));
                tracing::info!(cert = %files.cert.display(), "serving certificate reloaded");
                served = current;
            }
            Err(e) => {
                tracing::warn!(error = %e, "new certificate files do not load yet; keeping the current one")
            }
        }
    }
}
