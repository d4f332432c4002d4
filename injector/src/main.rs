//! `trellis-injector`: the sidecar injection webhook.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use trellis_api::mesh::MeshConfig;
use trellis_injector::config::{DEFAULT_PROXY_IMAGE, DEFAULT_PROXY_INIT_IMAGE, InjectorConfig};
use trellis_injector::metrics::Metrics;
use trellis_injector::selector::LabelSelector;
use trellis_injector::server::{Injector, TlsFiles, serve};
use trellis_injector::template::Templates;

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
    /// Directory with a sidecar.yaml template replacing the embedded one.
    #[arg(long)]
    templates: Option<PathBuf>,
    /// Mesh config (YAML): trust domain, proxy defaults.
    #[arg(long)]
    mesh_config: Option<PathBuf>,
    /// Leave the redirect to the CNI plugin: no privileged init container.
    #[arg(long)]
    cni_mode: bool,
    /// Run the proxy as a native sidecar (Kubernetes 1.29+).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    native_sidecars: bool,
    #[arg(long, default_value = DEFAULT_PROXY_IMAGE)]
    proxy_image: String,
    #[arg(long, default_value = DEFAULT_PROXY_INIT_IMAGE)]
    proxy_init_image: String,
    /// Never inject pods matching this label selector (repeatable).
    #[arg(long = "never-inject-selector")]
    never_inject: Vec<LabelSelector>,
    /// Inject pods matching this label selector even without the pod label (repeatable).
    #[arg(long = "always-inject-selector")]
    always_inject: Vec<LabelSelector>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("a TLS crypto provider was already installed"))?;

    let mesh = match &args.mesh_config {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let (mesh, unknown) =
                MeshConfig::from_yaml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            for field in unknown {
                tracing::warn!(%field, "unknown mesh config field ignored");
            }
            let problems = mesh.validate();
            anyhow::ensure!(problems.is_empty(), "{}: {}", path.display(), problems.join("; "));
            mesh
        }
        None => MeshConfig::default(),
    };
    let templates = match &args.templates {
        Some(dir) => Templates::from_dir(dir)?,
        None => Templates::embedded()?,
    };
    let config = InjectorConfig {
        mesh,
        proxy_image: args.proxy_image,
        proxy_init_image: args.proxy_init_image,
        cni_mode: args.cni_mode,
        native_sidecars: args.native_sidecars,
        never_inject: args.never_inject,
        always_inject: args.always_inject,
        ..InjectorConfig::default()
    };
    trellis_injector::inject::self_test(&config, &templates)
        .context("the injection template does not work")?;
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
