//! The `trellisd` command line: reads Istio config from a directory (`--config-dir`) and/or the
//! Kubernetes API (`--kubernetes`), and serves delta xDS on 15010 and monitoring on 15014. A
//! library entry point, so that `trellis demo` can run the control plane from its own
//! executable; the `trellisd` binary is a thin wrapper around [`run`].

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;
use trellis_api::mesh::MeshConfig;

use crate::model::{Model, ModelHandle};
use crate::sources::{files, kube as kube_source};
use crate::status::RejectedConfig;
use crate::xds::generation::{self, Generation};
use crate::xds::grpc::AdsService;
use crate::xds::metrics::XdsMetrics;
use crate::xds::server::{Registry, XdsServer};

#[derive(Parser)]
#[command(name = "trellisd", version, about = "Trellis control plane")]
struct Args {
    /// A directory of Istio YAML, watched for changes (service discovery from ServiceEntry and
    /// WorkloadEntry).
    #[arg(long)]
    config_dir: Option<PathBuf>,
    /// Watch the Kubernetes API (in-cluster config or KUBECONFIG).
    #[arg(long)]
    kubernetes: bool,
    /// Mesh config (YAML, Istio's MeshConfig).
    #[arg(long)]
    mesh_config: Option<PathBuf>,
    /// Plaintext delta xDS.
    #[arg(long, default_value = "0.0.0.0:15010")]
    xds_address: SocketAddr,
    /// Metrics, /debug/syncz and /ready.
    #[arg(long, default_value = "0.0.0.0:15014")]
    monitoring_address: SocketAddr,
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    log_level: String,
}

/// Runs the control plane with a command line (`args[0]` is the program name), as `main` would.
pub fn run<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = Args::parse_from(args);
    crate::memory::tune_allocator();
    let filter = match EnvFilter::try_new(&args.log_level) {
        Ok(filter) => filter,
        Err(e) => {
            eprintln!("trellisd: --log-level {:?}: {e}", args.log_level);
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    if args.config_dir.is_none() && !args.kubernetes {
        eprintln!("trellisd: give --config-dir DIR, --kubernetes, or both");
        return ExitCode::from(2);
    }
    let mesh = match &args.mesh_config {
        None => MeshConfig::default(),
        Some(path) => match std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| MeshConfig::from_yaml(&text).map(|(mesh, _)| mesh).map_err(|e| e.to_string()))
        {
            Ok(mesh) => mesh,
            Err(e) => {
                eprintln!("trellisd: --mesh-config {}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("trellisd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args, mesh)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trellisd: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args, mesh: MeshConfig) -> Result<(), String> {
    let model = ModelHandle::new(Model { mesh: Arc::new(mesh), ..Default::default() });
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(XdsMetrics::new(&mut registry));
    let proxies = Arc::new(Registry::default());
    tokio::spawn(crate::memory::release_after_bursts(proxies.activity()));
    let rejected = RejectedConfig::default();

    if let Some(dir) = args.config_dir.clone() {
        // The first reading goes into the first generation, so no proxy starts on an empty
        // config.
        let mut watcher = files::DirWatcher::new(dir);
        report(&metrics, &rejected, &watcher.poll(&model).unwrap_or_default());
        let (model, metrics, rejected) = (model.clone(), metrics.clone(), rejected.clone());
        tokio::spawn(watcher.run(model, move |r| report(&metrics, &rejected, r)));
    }
    if args.kubernetes {
        let client = kube::Client::try_default().await.map_err(|e| format!("kubernetes client: {e}"))?;
        let status = kube_source::SourceStatus::new();
        tokio::spawn(kube_source::run(client, model.clone(), status.clone()));
        tokio::spawn(count_kubernetes_rejections(status.clone(), metrics.clone()));
        // Pushing before every kind is listed would send services without their endpoints.
        if tokio::time::timeout(SYNC_WAIT, status.wait_synced()).await.is_err() {
            tracing::warn!(unsynced = ?status.unsynced(), "not every kind listed after {SYNC_WAIT:?}; serving anyway");
        }
    }

    let (publish, generations) = watch::channel(Arc::new(Generation::first(model.snapshot())));
    tokio::spawn(generation::debounce(model.clone(), publish, generation::QUIET, generation::MAX_DELAY));

    let monitoring = tokio::net::TcpListener::bind(args.monitoring_address)
        .await
        .map_err(|e| format!("--monitoring-address {}: {e}", args.monitoring_address))?;
    let monitoring_local = monitoring.local_addr().map_err(|e| e.to_string())?;
    let router = crate::status::router(proxies.clone(), rejected, Arc::new(registry));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(monitoring, router).await {
            tracing::error!("monitoring server: {e}");
        }
    });

    let xds = tokio::net::TcpListener::bind(args.xds_address)
        .await
        .map_err(|e| format!("--xds-address {}: {e}", args.xds_address))?;
    let xds_local = xds.local_addr().map_err(|e| e.to_string())?;
    // One line a supervisor (or a test) can read: where each listener ended up.
    println!("trellisd listening: xds {xds_local} monitoring {monitoring_local}");
    let service = AdsService::new(XdsServer::new(generations, proxies, metrics), 4 << 20);
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        // Every ACK is a small DATA frame. HTTP/2 allows a connection's unread small frames a
        // budget of half its receive window and closes the connection beyond it; with the
        // default 64 KiB window, proxies sharing a connection (a node agent, a load test)
        // exhausted it during the first sync. Streams keep their default 64 KiB windows.
        .initial_connection_window_size(1 << 20)
        .add_service(service)
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(xds));
    // xDS streams never finish on their own, so a graceful drain would wait forever: on a
    // signal the streams are cut and the proxies reconnect.
    tokio::select! {
        served = server => served.map_err(|e| format!("xds server: {e}")),
        () = shutdown() => Ok(()),
    }
}

/// Resolves on SIGTERM (the kubelet) or SIGINT. Proxies keep their config and reconnect, with
/// jitter, to another replica or to the restarted one.
async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutting down");
}

/// How long the first push waits for the Kubernetes source's first complete listing.
const SYNC_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Carries the Kubernetes source's rejection counts into the metrics, once a second.
async fn count_kubernetes_rejections(status: kube_source::SourceStatus, metrics: Arc<XdsMetrics>) {
    let mut seen = std::collections::BTreeMap::new();
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        for kind in kube_source::istio_kinds() {
            let now = status.config_errors(kind);
            let before = seen.insert(kind, now).unwrap_or(0);
            for _ in before..now {
                metrics.config_error("kubernetes", kind.name());
            }
        }
    }
}

/// Logs and counts a reading's rejections; the debug page shows the latest reading's.
fn report(metrics: &XdsMetrics, rejected: &RejectedConfig, rejections: &[files::Rejection]) {
    for r in rejections {
        tracing::warn!(file = %r.file.display(), "rejected: {}", r.message);
        metrics.config_error("files", &r.kind);
    }
    rejected.replace(rejections.iter().map(|r| format!("{}: {}", r.file.display(), r.message)).collect());
}
