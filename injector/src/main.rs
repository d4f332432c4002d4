//! `trellis-injector`: the sidecar injection webhook.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use trellis_injector::config::InjectionFlags;
use trellis_injector::server::{Injector, TlsFiles, serve};
use trellis_injector::webhook_cert::{
    Authority, Serving, WebhookIdentity, keep_ca_bundle, renew_serving_certificate,
};

/// Admission handling builds and drops many small JSON and Kubernetes values; glibc's allocator
/// took a third of the CPU under load (bench/injector.sh), mimalloc a small fraction of that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// How long a client may take to send a request's headers, and then its body.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(50..))]
    client_timeout_ms: u64,
    #[command(flatten)]
    injection: InjectionFlags,
    /// Own the serving certificate: generate a CA and certificate at start, write them to
    /// --tls-cert/--tls-key, and keep the CA in the webhook configuration's caBundle.
    #[arg(long)]
    kubernetes: bool,
    /// The MutatingWebhookConfiguration whose caBundle to manage (Kubernetes mode).
    #[arg(long, default_value = "trellis-sidecar-injector")]
    webhook_config_name: String,
    /// The injector's Service, named in the certificate (Kubernetes mode).
    #[arg(long, default_value = "trellis-injector")]
    service_name: String,
    /// The injector's namespace (Kubernetes mode).
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: Option<String>,
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
    let ready = Arc::new(AtomicBool::new(!args.kubernetes));
    if args.kubernetes {
        start_kubernetes_mode(&args, ready.clone()).await?;
    }
    let mut injector = Injector::new(config, templates, ready);
    injector.client_timeout = Duration::from_millis(args.client_timeout_ms);
    let injector = Arc::new(injector);
    let files = TlsFiles {
        cert: args.tls_cert,
        key: args.tls_key,
        reload_interval: Duration::from_millis(args.cert_reload_interval_ms),
    };
    serve(listener, injector, files, shutdown_signal()).await
}

/// Issues the certificate into the files the server reads, then keeps the webhook's caBundle
/// trusting it and renews it before it expires.
async fn start_kubernetes_mode(args: &Args, ready: Arc<AtomicBool>) -> anyhow::Result<()> {
    let namespace = args.namespace.clone().context("--kubernetes needs --namespace (or POD_NAMESPACE)")?;
    let identity = Arc::new(WebhookIdentity {
        webhook_config: args.webhook_config_name.clone(),
        service: args.service_name.clone(),
        namespace,
    });
    let authority = Arc::new(Authority::generate(&identity)?);
    let serving = authority.issue(&identity)?;
    let (cert_path, key_path) = (args.tls_cert.clone(), args.tls_key.clone());
    let write = move |s: &Serving| -> std::io::Result<()> {
        write_atomically(&key_path, s.key_pem.as_bytes())?;
        write_atomically(&cert_path, s.cert_pem.as_bytes())
    };
    write(&serving).context("writing the serving certificate")?;
    let client = kube::Client::try_default().await.context("connecting to the Kubernetes API")?;
    let api = kube::Api::<MutatingWebhookConfiguration>::all(client);
    let ca = Arc::new(authority.ca_pem.clone());
    tokio::spawn(keep_ca_bundle(api, identity.clone(), ca, ready));
    tokio::spawn(renew_serving_certificate(authority, identity, serving.not_after, write));
    Ok(())
}

/// Writes through a temporary file and a rename, so the certificate watcher never reads half a
/// file; the key is readable by the owner only.
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut file =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
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
