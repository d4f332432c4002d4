//! `trellis-injector`: the sidecar injection webhook.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use trellis_injector::config::InjectionFlags;
use trellis_injector::metrics::Metrics;
use trellis_injector::server::{Injector, TlsFiles, serve};

#[derive(Parser)]
#[command(name = "trellis-injector", version, about = "Trellis sidecar injection webhook")]
struct Args {
    /// Address to serve HTTPS on.
    #[arg(long, default_value = "0.0.0.0:15017")]
    listen: SocketAddr,
    /// Serving certificate (PEM), reloaded when the file changes.
    #[arg(long)]
    tls_cert: PathBuf,
    /// Serving key (PEM), reloaded when the file changes.
    #[arg(long)]
    tls_key: PathBuf,
    /// How often to check the certificate files for changes, in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..))]
    cert_reload_interval_ms: u64,
    #[command(flatten)]
    injection: InjectionFlags,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("a TLS crypto provider was already installed"))?;

    let (config, templates) = args.injection.load().map_err(anyhow::Error::msg)?;
    tracing::info!(listen = %args.listen, templates = templates.source(), cni_mode = config.cni_mode, "starting");

    let listener =
        std::net::TcpListener::bind(args.listen).with_context(|| format!("binding {}", args.listen))?;
    listener.set_nonblocking(true)?;
    let injector = Arc::new(Injector { config, templates, metrics: Metrics::default() });
    let files = TlsFiles {
        cert: args.tls_cert,
        key: args.tls_key,
        reload_interval: Duration::from_millis(args.cert_reload_interval_ms),
    };
    serve(listener, injector, files, shutdown_signal()).await
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; stop with Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("shutting down");
}
