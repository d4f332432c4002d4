//! `trellis dashboard`: a local web page of the mesh, like Kiali's: the service graph with
//! traffic, errors, latency, mTLS and denials on its edges, a view per service, and the
//! proxies' sync state.
//!
//! `exposition` and `prometheus` read the two sources' formats, `mesh` reads the proxies
//! trellisd knows, `graph` turns request rates into nodes and edges, `service` finds the
//! config that applies to a service, `state` holds the latest reading and a short history,
//! `server` serves the page (`assets/`, built into the binary) and the JSON API.

pub(crate) mod exposition;
mod graph;
mod mesh;
mod prometheus;
mod server;
mod service;
mod state;
mod url;

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::proxy_status::fetch::Endpoint;

#[derive(clap::Args)]
pub struct Args {
    /// The port to serve the page on (0: any free port).
    #[arg(long, default_value_t = 20001)]
    port: u16,
    /// The address to serve the page on. The page shows the mesh's traffic to whoever can
    /// reach it; keep it on loopback unless that is intended.
    #[arg(long, default_value = "127.0.0.1")]
    address: IpAddr,
    /// A Prometheus server that scrapes the proxies (e.g. `http://127.0.0.1:9090` after a
    /// port-forward): the graph is made from its rates of Istio's standard metrics. Without
    /// it, the dashboard reads the proxies trellisd knows itself.
    #[arg(long, value_name = "URL")]
    prometheus: Option<String>,
    /// The control plane's monitoring address (15014): its `/debug/syncz` gives the proxy sync
    /// table and, without --prometheus, the proxies to read.
    #[arg(
        long = "control-plane",
        value_name = "ADDR",
        env = "TRELLIS_CONTROL_PLANE",
        default_value = "http://127.0.0.1:15014"
    )]
    control_plane: String,
    /// Proxy metrics addresses (`host:port` of `/stats/prometheus`) to read besides those of
    /// the proxies trellisd lists (whose pod address may not be reachable from here).
    #[arg(long = "proxy-metrics", value_name = "ADDR", value_delimiter = ',')]
    proxy_metrics: Vec<SocketAddr>,
    /// The port of each listed proxy's Prometheus page.
    #[arg(long = "stats-port", default_value_t = 15090)]
    stats_port: u16,
    /// A directory of the mesh's Istio YAML (subdirectories too): the service view lists the
    /// routes, splits and policies in it that apply to the service (re-read on every view).
    #[arg(long, value_name = "DIR")]
    config: Option<PathBuf>,
    /// Seconds between readings of the mesh.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=60))]
    interval: u64,
    /// Seconds to wait for each answer (control plane, Prometheus, each proxy).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=60))]
    timeout: u64,
}

pub fn run(args: &Args) -> ExitCode {
    match serve(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("trellis dashboard: {message}");
            ExitCode::from(2)
        }
    }
}

fn serve(args: &Args) -> Result<(), String> {
    let timeout = Duration::from_secs(args.timeout);
    let settings = Settings {
        control_plane: Endpoint::parse(&args.control_plane)?,
        prometheus: args
            .prometheus
            .as_deref()
            .map(|url| prometheus::Prometheus::new(url, timeout))
            .transpose()?,
        prometheus_url: args.prometheus.clone(),
        proxy_metrics: args.proxy_metrics.clone(),
        stats_port: args.stats_port,
        config: args.config.clone(),
        interval: Duration::from_secs(args.interval),
        timeout,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind((args.address, args.port))
            .await
            .map_err(|e| format!("cannot listen on {}:{}: {e}", args.address, args.port))?;
        let started = start(listener, settings)?;
        println!("trellis dashboard: {} (from {}; Ctrl-C stops)", started.url, started.describe);
        let _ = std::io::stdout().flush();
        started.server.await.map_err(|e| format!("serving: {e}"))?
    })
}

/// What the dashboard reads, decided from the flags (or by the demo).
pub struct Settings {
    control_plane: Endpoint,
    prometheus: Option<prometheus::Prometheus>,
    prometheus_url: Option<String>,
    proxy_metrics: Vec<SocketAddr>,
    stats_port: u16,
    config: Option<PathBuf>,
    interval: Duration,
    timeout: Duration,
}

impl Settings {
    /// trellisd's view of the demo's mesh: its control plane, its proxies' metrics addresses
    /// and its config directory.
    pub fn for_demo(
        control_plane: SocketAddr,
        proxies: Vec<SocketAddr>,
        config: PathBuf,
    ) -> Result<Settings, String> {
        Ok(Settings {
            control_plane: Endpoint::parse(&control_plane.to_string())?,
            prometheus: None,
            prometheus_url: None,
            proxy_metrics: proxies,
            stats_port: 15090,
            config: Some(config),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(2),
        })
    }
}

/// A dashboard serving on the current runtime.
pub struct Started {
    pub url: String,
    /// Where its numbers come from.
    pub describe: String,
    /// Ends only when serving fails.
    pub server: tokio::task::JoinHandle<Result<(), String>>,
}

/// Starts reading the mesh and serving the page on the current runtime.
pub fn start(listener: tokio::net::TcpListener, settings: Settings) -> Result<Started, String> {
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let describe = match (&settings.prometheus_url, settings.proxy_metrics.is_empty()) {
        (Some(url), _) => format!("prometheus {url}"),
        (None, true) => format!("trellisd {}", settings.control_plane.url),
        (None, false) => {
            format!(
                "trellisd {} and {} proxies given",
                settings.control_plane.url,
                settings.proxy_metrics.len()
            )
        }
    };
    let source = match settings.prometheus {
        Some(p) => state::Source::Prometheus(p),
        None => state::Source::Mesh,
    };
    let mesh = mesh::Mesh::new(
        Some(settings.control_plane),
        settings.proxy_metrics,
        settings.stats_port,
        settings.timeout,
    );
    let shared = Arc::new(state::State::new(settings.config));
    tokio::spawn(state::collect(shared.clone(), source, mesh, describe.clone(), settings.interval));
    let host = match local.ip() {
        IpAddr::V6(ip) => format!("[{ip}]"),
        IpAddr::V4(ip) => ip.to_string(),
    };
    let server = tokio::spawn(async move {
        axum::serve(listener, server::router(shared)).await.map_err(|e| format!("serving: {e}"))
    });
    Ok(Started { url: format!("http://{host}:{}/", local.port()), describe, server })
}
