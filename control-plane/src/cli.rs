//! The `trellisd` command line: reads Istio config from a directory (`--config-dir`) and/or the
//! Kubernetes API (`--kubernetes`), and serves delta xDS on 15010, delta xDS and the CA over TLS
//! on 15012, and monitoring on 15014. A library entry point, so that `trellis demo` can run the
//! control plane from its own executable; the `trellisd` binary is a thin wrapper around
//! [`run`].

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;
use trellis_api::mesh::MeshConfig;

use crate::ca::material::MaterialSource;
use crate::ca::server::Lifetimes;
use crate::ca::serving_cert::ServingNames;
use crate::ca::{CaOptions, tls_incoming};
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
    /// TLS: delta xDS and Istio's CA service [default: the --xds-address IP, port 15012 (any
    /// free port when the xDS port is 0)].
    #[arg(long)]
    secure_xds_address: Option<SocketAddr>,
    /// SPIFFE trust domain of workload certificates [default: the mesh config's trustDomain,
    /// else cluster.local].
    #[arg(long)]
    trust_domain: Option<String>,
    /// Istio's plug-in CA files (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem),
    /// reloaded when they change [default: a generated self-signed root; in Kubernetes mode the
    /// Secret cacerts, else a generated root kept in the Secret istio-ca-secret].
    #[arg(long)]
    ca_dir: Option<PathBuf>,
    /// Kubernetes' static token file (token,user,uid[,"group1,group2"]) to authenticate CSRs
    /// [default in Kubernetes mode: TokenReview, audience istio-ca].
    #[arg(long)]
    token_auth_file: Option<PathBuf>,
    /// Where to write the CA's root certificate, again whenever it changes.
    #[arg(long)]
    root_cert_file: Option<PathBuf>,
    /// DNS names in trellisd's serving certificate (comma-separated); IP 127.0.0.1 and the
    /// secure address's IP (when specific) are added.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "trellisd,trellisd.istio-system.svc,istiod.istio-system.svc,localhost"
    )]
    serving_dns_names: Vec<String>,
    /// Lifetime of a workload certificate whose CSR asks for none.
    #[arg(long, default_value = "24h", value_parser = go_duration)]
    workload_cert_ttl: Duration,
    /// The longest lifetime issued (90 days); a longer request is refused.
    #[arg(long, default_value = "2160h", value_parser = go_duration)]
    max_workload_cert_ttl: Duration,
    /// Extra roots (PEM) trusted when fetching RequestAuthentication jwksUris over https,
    /// besides the system's (/etc/ssl/certs/ca-certificates.crt): a private issuer's CA.
    #[arg(long, env = "TRELLIS_JWKS_CA_FILE")]
    jwks_ca_file: Option<PathBuf>,
    /// How often each jwksUri is fetched again (Istio's PILOT_JWT_PUB_KEY_REFRESH_INTERVAL).
    #[arg(long, env = "PILOT_JWT_PUB_KEY_REFRESH_INTERVAL", default_value = "20m", value_parser = go_duration)]
    jwks_refresh_interval: Duration,
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
            .and_then(|text| MeshConfig::from_yaml(&text).map_err(|e| e.to_string()))
        {
            Ok((mesh, unknown)) => {
                let at = path.display();
                for field in unknown {
                    tracing::warn!("--mesh-config {at}: {field}: unknown field, ignored");
                }
                for problem in mesh.validate() {
                    tracing::warn!("--mesh-config {at}: {problem}");
                }
                for warning in mesh.warnings() {
                    tracing::warn!("--mesh-config {at}: {warning}");
                }
                mesh
            }
            Err(e) => {
                eprintln!("trellisd: --mesh-config {}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
    };
    if args.jwks_refresh_interval < Duration::from_millis(100) {
        eprintln!("trellisd: --jwks-refresh-interval {:?}: at least 100ms", args.jwks_refresh_interval);
        return ExitCode::from(2);
    }
    let jwks_client = match jwks_client(args.jwks_ca_file.as_deref()) {
        Ok(client) => client,
        Err(e) => {
            eprintln!("trellisd: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("trellisd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args, mesh, jwks_client)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trellisd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The JWKS client, trusting the system roots and `--jwks-ca-file`.
fn jwks_client(ca_file: Option<&std::path::Path>) -> Result<crate::jwks::JwksClient, String> {
    let extra = match ca_file {
        None => None,
        Some(path) => Some(
            std::fs::read_to_string(path).map_err(|e| format!("--jwks-ca-file {}: {e}", path.display()))?,
        ),
    };
    crate::jwks::JwksClient::new(extra.as_deref()).map_err(|e| match ca_file {
        Some(path) => format!("--jwks-ca-file {}: {e}", path.display()),
        None => e,
    })
}

async fn serve(args: Args, mesh: MeshConfig, jwks_client: crate::jwks::JwksClient) -> Result<(), String> {
    let trust_domain = trust_domain(&args, &mesh)?;
    let lifetimes = lifetimes(&args)?;
    let model = ModelHandle::new(Model { mesh: Arc::new(mesh), ..Default::default() });
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(XdsMetrics::new(&mut registry));
    let kube_client = if args.kubernetes {
        Some(kube::Client::try_default().await.map_err(|e| format!("kubernetes client: {e}"))?)
    } else {
        None
    };
    // Istio's 15012 beside 15010 on the same interface; tests and tools that ask for any free
    // xDS port get a free port here too, so that instances side by side do not collide.
    let secure_address = args.secure_xds_address.unwrap_or_else(|| {
        let port = if args.xds_address.port() == 0 { 0 } else { SECURE_XDS_PORT };
        SocketAddr::new(args.xds_address.ip(), port)
    });
    let ca = crate::ca::start(
        CaOptions {
            trust_domain,
            material: match (&args.ca_dir, &kube_client) {
                (Some(dir), _) => MaterialSource::Dir(dir.clone()),
                (None, Some(client)) => MaterialSource::Kubernetes {
                    client: client.clone(),
                    namespace: std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "istio-system".to_owned()),
                },
                (None, None) => MaterialSource::Generated,
            },
            token_auth_file: args.token_auth_file.clone(),
            kubernetes: kube_client.clone(),
            root_cert_file: args.root_cert_file.clone(),
            serving: serving_names(&args.serving_dns_names, secure_address.ip()),
            lifetimes,
        },
        &mut registry,
    )
    .await
    .map_err(|e| format!("CA: {e}"))?;
    let proxies = Arc::new(Registry::default());
    let rejected = RejectedConfig::default();

    if let Some(dir) = args.config_dir.clone() {
        // The first reading goes into the first generation, so no proxy starts on an empty
        // config.
        let mut watcher = files::DirWatcher::new(dir);
        report(&metrics, &rejected, &watcher.poll(&model).unwrap_or_default());
        let (model, metrics, rejected) = (model.clone(), metrics.clone(), rejected.clone());
        tokio::spawn(watcher.run(model, move |r| report(&metrics, &rejected, r)));
    }
    if let Some(client) = kube_client {
        let status = kube_source::SourceStatus::new();
        tokio::spawn(kube_source::run(client.clone(), model.clone(), status.clone()));
        tokio::spawn(count_kubernetes_rejections(status.clone(), metrics.clone()));
        // Pushing before every kind is listed would send services without their endpoints.
        if tokio::time::timeout(SYNC_WAIT, status.wait_synced()).await.is_err() {
            tracing::warn!(unsynced = ?status.unsynced(), "not every kind listed after {SYNC_WAIT:?}; serving anyway");
        }
        // Trellis controls the `trellis` GatewayClass: it writes its objects' status (after the
        // first full listing, so a route is not reported for a Service not yet listed).
        tokio::spawn(crate::gateway_status::run(client, model.clone()));
    }

    // Keys of RequestAuthentication jwksUris: the first round is awaited (bounded), so that the
    // first push carries them; until an issuer answers, proxies reject its tokens.
    let (jwks_ready, first_keys) = tokio::sync::oneshot::channel();
    tokio::spawn(crate::jwks::run(model.clone(), jwks_client, args.jwks_refresh_interval, Some(jwks_ready)));
    if tokio::time::timeout(JWKS_WAIT, first_keys).await.is_err() {
        tracing::warn!("the first JWKS fetches took longer than {JWKS_WAIT:?}; serving anyway");
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
    let secure = tokio::net::TcpListener::bind(secure_address)
        .await
        .map_err(|e| format!("--secure-xds-address {secure_address}: {e}"))?;
    let secure_local = secure.local_addr().map_err(|e| e.to_string())?;
    // One line a supervisor (or a test) can read: where each listener ended up. New words go
    // at the end: readers take the first ones by position.
    println!("trellisd listening: xds {xds_local} monitoring {monitoring_local} secure {secure_local}");
    let server = XdsServer::new(generations, proxies, metrics);
    let secure_service = AdsService::new(server.authenticated(ca.authenticator.clone()), 4 << 20);
    let plaintext = grpc_server()
        .add_service(AdsService::new(server, 4 << 20))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(xds));
    // The same ADS service over TLS, where a stream's token must match its node's namespace,
    // and the CA, which is only ever reached over TLS.
    let tls = grpc_server()
        // Room for a bearer token up to the CA's own bound (16 KiB), so that a longer one is
        // refused with the CA's message rather than a bare HTTP/2 error.
        .http2_max_header_list_size(Some(32 * 1024))
        .add_service(secure_service)
        .add_service(ca.service)
        .serve_with_incoming(tls_incoming::incoming(secure, ca.tls));
    // xDS streams never finish on their own, so a graceful drain would wait forever: on a
    // signal the streams are cut and the proxies reconnect.
    tokio::select! {
        served = plaintext => served.map_err(|e| format!("xds server: {e}")),
        served = tls => served.map_err(|e| format!("secure xds server: {e}")),
        () = shutdown() => Ok(()),
    }
}

/// Istio's TLS port for xDS and the CA.
const SECURE_XDS_PORT: u16 = 15012;

fn grpc_server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        // Every ACK is a small DATA frame. HTTP/2 allows a connection's unread small frames a
        // budget of half its receive window and closes the connection beyond it; with the
        // default 64 KiB window, proxies sharing a connection (a node agent, a load test)
        // exhausted it during the first sync. Streams keep their default 64 KiB windows.
        .initial_connection_window_size(1 << 20)
}

fn go_duration(text: &str) -> Result<Duration, String> {
    trellis_api::primitives::parse_go_duration(text)
}

/// `--trust-domain`, else the mesh config's, checked as a SPIFFE trust domain.
fn trust_domain(args: &Args, mesh: &MeshConfig) -> Result<String, String> {
    let (flag, configured) = match &args.trust_domain {
        Some(domain) => ("--trust-domain", domain.as_str()),
        None => ("the mesh config's trustDomain", mesh.trust_domain()),
    };
    // Istio's normalisation: '@' becomes '.'.
    let domain = trellis_identity::spiffe::normalize_trust_domain(configured);
    trellis_identity::SpiffeId::new(&domain, "ns", "sa").map_err(|_| {
        format!("{flag} {configured:?}: not a trust domain (lower-case letters, digits, '.', '-', '_')")
    })?;
    Ok(domain)
}

fn lifetimes(args: &Args) -> Result<Lifetimes, String> {
    let (default, max) = (args.workload_cert_ttl, args.max_workload_cert_ttl);
    let most = trellis_identity::ca::MAX_WORKLOAD_TTL;
    if max < Duration::from_secs(1) || max > most {
        return Err(format!(
            "--max-workload-cert-ttl {max:?}: between 1s and {}h (90 days, the most the CA signs)",
            most.as_secs() / 3600
        ));
    }
    if default < Duration::from_secs(1) || default > max {
        return Err(format!(
            "--workload-cert-ttl {default:?}: between 1s and --max-workload-cert-ttl ({max:?})"
        ));
    }
    Ok(Lifetimes { default, max })
}

/// The serving certificate's names: the DNS names given, 127.0.0.1 (local clients, tests and
/// port-forwards) and the address trellisd binds when it is a specific one.
fn serving_names(dns: &[String], bound: IpAddr) -> ServingNames {
    let dns = dns.iter().map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()).collect();
    let mut ips = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
    if !bound.is_unspecified() && !ips.contains(&bound) {
        ips.push(bound);
    }
    ServingNames { dns, ips }
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

/// How long the first push waits for the first round of JWKS fetches (each bounded by its
/// rule's timeout, 5 s by default).
const JWKS_WAIT: Duration = Duration::from_secs(10);

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
