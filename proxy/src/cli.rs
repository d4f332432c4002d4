//! The `trellis-proxy` command line: `trellis-proxy --config FILE` runs the sidecar;
//! `trellis-proxy wait` blocks until it is ready (the injected postStart hook that holds the app
//! back). A library entry point, so that `trellis demo` can run the proxy from its own
//! executable; the `trellis-proxy` binary is a thin wrapper around [`run`].

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;
use trellis_xds::types::ProxyNode;

use crate::metrics::{Metrics, Workload};
use crate::xds::XdsOptions;
use crate::{LogControl, Options};

#[derive(Parser)]
#[command(name = "trellis-proxy", version, about = "Trellis sidecar proxy")]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Configuration file (YAML or JSON, trellis.config.v1.ProxyConfig); watched for changes.
    #[arg(long, env = "TRELLIS_PROXY_CONFIG")]
    config: Option<PathBuf>,
    /// The control plane's xDS address (`host:port`), when config does not come from --config.
    /// Default: PROXY_CONFIG's `discoveryAddress`.
    #[arg(long)]
    discovery_address: Option<String>,
    /// The pod's labels as the downward API writes them (`key="value"` lines); the xDS node
    /// carries them. ISTIO_METAJSON_LABELS (a JSON object) is read first when set.
    #[arg(long, default_value = "/etc/istio/pod/labels")]
    pod_labels_file: PathBuf,
    /// Worker threads (0: one per CPU). Default: PROXY_CONFIG's `concurrency` (the injector sets
    /// it from `proxy.istio.io/config`), else 2.
    #[arg(long)]
    concurrency: Option<usize>,
    #[arg(long, default_value_t = 15001)]
    outbound_port: u16,
    #[arg(long, default_value_t = 15006)]
    inbound_port: u16,
    #[arg(long, default_value_t = 15000)]
    admin_port: u16,
    #[arg(long, default_value_t = 15021)]
    readiness_port: u16,
    #[arg(long, default_value_t = 15090)]
    stats_port: u16,
    /// The status port, where the kubelet's probes of the app arrive
    /// (`/app-health/<container>/livez|readyz|startupz`, run as ISTIO_KUBE_APP_PROBERS describes
    /// them) and `/healthz/ready`. Default: PROXY_CONFIG's `statusPort` (0 there: no status
    /// port), else 15020.
    #[arg(long, env = "STATUS_PORT")]
    status_port: Option<u16>,
    /// Also listen on IPv6. Without it the proxy still does when ISTIO_AGENT_DUAL_STACK is
    /// true, INSTANCE_IP(S) or one of the pod's interfaces has an IPv6 address (the redirect
    /// then covers IPv6), and the host can listen on IPv6.
    #[arg(long)]
    ipv6: bool,
    /// Listen on this address only, instead of every address (0.0.0.0, and [::] with --ipv6).
    /// For several proxies sharing one host outside a pod, each on a loopback address of its
    /// own (`trellis demo` without root); the admin port moves there too when it is a loopback
    /// address, and stays on 127.0.0.1 otherwise.
    #[arg(long, value_name = "IP")]
    listen_address: Option<IpAddr>,
    /// Serve inbound connections that did not come through the redirect, delivering to the
    /// port their authority names (for running without iptables; never in a pod).
    #[arg(long)]
    explicit_inbound: bool,
    /// How the redirect brings inbound connections: REDIRECT (NAT; the app sees the proxy's
    /// 127.0.0.6) or TPROXY (the app sees the client's own address; needs NET_ADMIN). The
    /// injector sets ISTIO_META_INTERCEPTION_MODE from sidecar.istio.io/interceptionMode.
    #[arg(long, env = "ISTIO_META_INTERCEPTION_MODE", default_value = "REDIRECT")]
    interception_mode: String,
    /// TPROXY: the mark of deliveries to the app (trellis-proxy-init's --inbound-tproxy-mark).
    #[arg(long, default_value_t = 1337)]
    tproxy_mark: u32,
    /// On SIGTERM, how long in-flight requests may take before the proxy exits. Default:
    /// PROXY_CONFIG's `terminationDrainDuration`, else 5s.
    #[arg(long, value_parser = parse_duration)]
    drain_timeout: Option<Duration>,
    /// The CA that signs this workload's certificate (`host:port`, trellisd's 15012; Istio's
    /// CA_ADDR). Default: the discovery address's host on port 15012. Without a CA and a
    /// discovery address the proxy has no mesh identity: no mutual TLS either way.
    #[arg(long, env = "CA_ADDR")]
    ca_address: Option<String>,
    /// The mesh root certificate the CA's own certificate is verified against (the
    /// `istio-ca-root-cert` ConfigMap, as the injector mounts it).
    #[arg(long, default_value = "/var/run/secrets/istio/root-cert.pem")]
    ca_root_cert: PathBuf,
    /// The name the CA's certificate must carry. Default: the CA address's host.
    #[arg(long)]
    ca_server_name: Option<String>,
    /// The pod's service-account token (audience istio-ca), read before every request: the
    /// kubelet rotates it in place.
    #[arg(long, default_value = "/var/run/secrets/tokens/istio-token")]
    token_file: PathBuf,
    /// The mesh's trust domain.
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// The workload certificate's lifetime to ask for (Istio's SECRET_TTL).
    #[arg(long, env = "SECRET_TTL", default_value = "24h", value_parser = parse_duration)]
    cert_ttl: Duration,
    /// Answer the pod's DNS on --dns-port (UDP and TCP, on localhost): the mesh's names from
    /// the configuration, the rest from the resolvers in --resolv-conf. Also on when
    /// ISTIO_META_DNS_CAPTURE is true, as the injector sets it from the pod's proxy config.
    #[arg(long)]
    dns_capture: bool,
    /// Where the redirect sends captured DNS.
    #[arg(long, default_value_t = crate::dns::DEFAULT_PORT)]
    dns_port: u16,
    /// The pod's resolvers, for the names that are not the mesh's.
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// A tracing filter; default RUST_LOG, else the injector's LOG_LEVEL, else info.
    #[arg(long)]
    log_level: Option<String>,
    /// `sidecar`, or `gateway` (Istio's `router`): an ingress or egress gateway, which captures
    /// nothing (no outbound or inbound port) and listens on the ports of the Istio Gateways
    /// whose selector matches its pod's labels.
    #[arg(long, env = "TRELLIS_PROXY_ROLE", default_value = "sidecar", value_parser = ["sidecar", "gateway", "router"])]
    role: String,
}

impl Args {
    fn is_gateway(&self) -> bool {
        self.role != "sidecar"
    }
}

/// What the proxy takes from the ProxyConfig the injector puts in its environment.
struct FromEnvironment {
    concurrency: Option<usize>,
    drain: Option<Duration>,
    discovery_address: Option<String>,
    status_port: Option<u16>,
}

/// Reads `PROXY_CONFIG` (JSON); a value that cannot be used is an error naming the field.
fn proxy_config_env() -> Result<FromEnvironment, String> {
    let Ok(text) = std::env::var("PROXY_CONFIG") else {
        return Ok(FromEnvironment {
            concurrency: None,
            drain: None,
            discovery_address: None,
            status_port: None,
        });
    };
    let config: trellis_api::mesh::ProxyConfig =
        serde_json::from_str(&text).map_err(|e| format!("PROXY_CONFIG: {e}"))?;
    let concurrency = match config.concurrency {
        None => None,
        Some(n) if n < 0 => return Err(format!("PROXY_CONFIG: concurrency: {n} is negative")),
        Some(n) => Some(n as usize),
    };
    let drain = config
        .termination_drain_duration
        .map(|d| d.to_std().map_err(|e| format!("PROXY_CONFIG: terminationDrainDuration: {e}")))
        .transpose()?;
    let discovery_address = config.discovery_address.filter(|a| !a.is_empty());
    let status_port = config
        .status_port
        .map(|n| {
            u16::try_from(n).map_err(|_| format!("PROXY_CONFIG: statusPort: {n} is out of range 0-65535"))
        })
        .transpose()?;
    Ok(FromEnvironment { concurrency, drain, discovery_address, status_port })
}

/// The status port: the flag (or STATUS_PORT), else PROXY_CONFIG's, else Istio's 15020.
/// `None` when PROXY_CONFIG says 0: the injector writes that for a pod annotated
/// `status.sidecar.istio.io/port: "0"`, whose probes it then leaves alone. (A flag of 0 picks
/// a free port, as for every listener.)
fn status_port(flag: Option<u16>, from_config: Option<u16>) -> Option<u16> {
    match (flag, from_config) {
        (Some(port), _) => Some(port),
        (None, Some(0)) => None,
        (None, Some(port)) => Some(port),
        (None, None) => Some(trellis_api::mesh::DEFAULT_STATUS_PORT),
    }
}

/// Istio's level names, as tracing filters.
fn log_filter(args: &Args) -> String {
    if let Some(level) = &args.log_level {
        return level.clone();
    }
    if let Ok(filter) = std::env::var("RUST_LOG") {
        return filter;
    }
    match std::env::var("LOG_LEVEL").ok().as_deref() {
        Some("warning") => "warn".to_owned(),
        Some("critical") => "error".to_owned(),
        Some("none") => "off".to_owned(),
        Some(level) if !level.is_empty() => level.to_owned(),
        _ => "info".to_owned(),
    }
}

#[derive(Subcommand)]
enum Command {
    /// Wait until the proxy on this host is ready (GET 127.0.0.1:<readiness-port>/healthz/ready).
    Wait {
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        timeout: Duration,
        #[arg(long, default_value_t = 15021)]
        readiness_port: u16,
    },
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    trellis_api::primitives::parse_go_duration(text)
}

/// More workers than a sidecar could use: a value above it is a mistake, not a wish.
const MAX_WORKERS: usize = 256;

/// Sets up the interception mode the redirect uses: TPROXY needs transparent sockets.
fn interception(mode: &str, tproxy_mark: u32) -> Result<(), String> {
    use trellis_api::annotations::InterceptionMode;
    match mode.parse::<InterceptionMode>() {
        Ok(InterceptionMode::Tproxy) => crate::tproxy::enable(tproxy_mark).map_err(|e| e.to_string()),
        Ok(InterceptionMode::Redirect | InterceptionMode::None) => Ok(()),
        Err(reason) => Err(format!("--interception-mode (ISTIO_META_INTERCEPTION_MODE): {mode:?}: {reason}")),
    }
}

/// Runs the proxy with a command line (`args[0]` is the program name), as `main` would.
pub fn run<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = Args::parse_from(args);
    if let Some(Command::Wait { timeout, readiness_port }) = args.command {
        return wait(timeout, readiness_port);
    }
    if let Err(e) = interception(&args.interception_mode, args.tproxy_mark) {
        eprintln!("trellis-proxy: {e}");
        return ExitCode::from(2);
    }
    let from_env = match proxy_config_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("trellis-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    // Checked before anything starts: a variable that is not a map of probes is a broken
    // injection, not one bad probe (those fail alone, with their reason, at 15020).
    let probers = match crate::app_health::AppProbers::from_env() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("trellis-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    let status = match status_port(args.status_port, from_env.status_port) {
        None => None,
        // Istio's agent refuses to start on a bad one too: it is a broken injection.
        Some(port) => match crate::app_health::AppMetricsTarget::from_env(port) {
            Ok(app_metrics) => Some((port, probers, app_metrics)),
            Err(e) => {
                eprintln!("trellis-proxy: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let filter = EnvFilter::try_new(log_filter(&args)).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .init();
    let log_control: LogControl = Box::new(move |level: &str| {
        let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    });
    // One worker needs no work stealing: a current-thread runtime is cheaper.
    let concurrency = match args.concurrency.or(from_env.concurrency).unwrap_or(2) {
        // Istio's meaning of 0: every CPU (up to the most a sidecar could use).
        0 => std::thread::available_parallelism().map(usize::from).unwrap_or(2).min(MAX_WORKERS),
        n => n,
    };
    if concurrency > MAX_WORKERS {
        // tokio would try to start them all and panic when the pod's thread limit refuses one.
        eprintln!("trellis-proxy: concurrency: {concurrency} is more than {MAX_WORKERS} worker threads");
        return ExitCode::from(2);
    }
    let drain_timeout = args.drain_timeout.or(from_env.drain).unwrap_or(Duration::from_secs(5));
    let mut builder = if concurrency <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(concurrency);
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("trellis-proxy: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let xds = match (&args.config, args.discovery_address.clone().or(from_env.discovery_address)) {
        (None, Some(address)) => match xds_options(address, &args) {
            Ok(options) => Some(options),
            Err(e) => {
                eprintln!("trellis-proxy: {e}");
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    // The CA's gRPC channel starts a task of its own: it is made inside the runtime.
    let entered = runtime.enter();
    let mut xds = xds;
    let identity = match identity_options(&args, xds.as_mut()) {
        Ok(identity) => identity,
        Err(e) => {
            eprintln!("trellis-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    drop(entered);
    runtime.block_on(serve(args, drain_timeout, log_control, xds, identity, status))
}

/// The mesh identity from the command line and the pod's environment: who to ask (the CA),
/// how to trust it (the root file), and as whom (POD_NAMESPACE, SERVICE_ACCOUNT). When the CA
/// is the discovery address over TLS (15012, as injected), certificates and config share one
/// connection: a second one would cost the control plane a TLS connection per proxy for a
/// request made once in twelve hours.
fn identity_options(args: &Args, xds: Option<&mut XdsOptions>) -> Result<Option<crate::Identity>, String> {
    let ca_address = match (&args.ca_address, xds.as_deref()) {
        (Some(address), _) => address.clone(),
        // In a pod the root certificate is mounted (the kubelet does not start the pod without
        // it); without one, this proxy runs outside the mesh's identity (a local control plane).
        (None, Some(_)) if !args.ca_root_cert.exists() => {
            tracing::warn!(root = %args.ca_root_cert.display(), "no mesh root certificate: no identity, and no mutual TLS either way");
            return Ok(None);
        }
        (None, Some(xds)) => {
            let host_port = xds.address.split_once("://").map_or(xds.address.as_str(), |(_, rest)| rest);
            let host = host_port.rsplit_once(':').map_or(host_port, |(host, _)| host);
            format!("{host}:15012")
        }
        (None, None) => return Ok(None),
    };
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let namespace = env("POD_NAMESPACE").unwrap_or_else(|| "default".to_owned());
    let account = env("SERVICE_ACCOUNT").unwrap_or_else(|| "default".to_owned());
    let requested = trellis_identity::SpiffeId::new(&args.trust_domain, &namespace, &account)
        .map_err(|e| format!("--trust-domain, POD_NAMESPACE or SERVICE_ACCOUNT: {e}"))?;
    let root = std::fs::read_to_string(&args.ca_root_cert)
        .map_err(|e| format!("--ca-root-cert {}: {e}", args.ca_root_cert.display()))?;
    let channel = trellis_identity::client::tls_channel(&ca_address, &root, args.ca_server_name.as_deref())
        .map_err(|e| format!("--ca-address {ca_address}: {e}"))?;
    if let Some(secure) = xds.and_then(|xds| xds.secure.as_mut()) {
        // Same address, root file and server name (both come from these flags): one channel.
        if secure.authority == ca_address && secure.root_pem == root {
            secure.channel = Some(channel.clone());
        }
    }
    let renewal = trellis_identity::manager::Renewal {
        ca: trellis_identity::client::CaClient::new(channel),
        token_file: args.token_file.clone(),
        requested,
        ttl: args.cert_ttl,
    };
    let tls = trellis_identity::tls::MeshTls::new(&args.trust_domain);
    Ok(Some(crate::Identity { tls, renewal: Some(renewal) }))
}

/// Who this proxy is, from the pod's environment (as the injection template sets it).
fn xds_options(address: String, args: &Args) -> Result<XdsOptions, String> {
    let labels_file = &args.pod_labels_file;
    let env = |name: &str| std::env::var(name).unwrap_or_default();
    let namespace = env("POD_NAMESPACE");
    if namespace.is_empty() {
        return Err("POD_NAMESPACE: required to fetch config from the control plane".to_owned());
    }
    let pod = env("POD_NAME");
    let workload = match env("ISTIO_META_WORKLOAD_NAME") {
        w if w.is_empty() => pod.clone(),
        w => w,
    };
    let labels = match std::env::var("ISTIO_METAJSON_LABELS") {
        Ok(json) => serde_json::from_str(&json).map_err(|e| format!("ISTIO_METAJSON_LABELS: {e}"))?,
        Err(_) => match std::fs::read_to_string(labels_file) {
            Ok(text) => parse_labels(&text).map_err(|e| format!("{}: {e}", labels_file.display()))?,
            Err(_) => Default::default(),
        },
    };
    let secure = secure_xds(&address, args)?;
    let address = if address.contains("://") { address } else { format!("http://{address}") };
    // Istio's node types: the control plane tells a gateway by its `router`.
    let node_type = if args.is_gateway() { "router" } else { "sidecar" };
    let id = format!("{node_type}~{}~{pod}.{namespace}~{namespace}.svc.cluster.local", env("INSTANCE_IP"));
    let dns = crate::dns::Switches::from_env()?;
    let node = ProxyNode {
        id,
        namespace,
        workload,
        labels,
        dns_capture: dns.capture,
        dns_auto_allocate: dns.auto_allocate,
    };
    Ok(XdsOptions { address, node, secure })
}

/// xDS over TLS when the discovery address says so (`https://`, or Istio's TLS port 15012):
/// verified against the mesh root, authenticated by the pod's token.
fn secure_xds(address: &str, args: &Args) -> Result<Option<crate::xds::SecureXds>, String> {
    let (scheme, authority) = address.split_once("://").unwrap_or(("", address));
    let port = authority.rsplit_once(':').map(|(_, port)| port);
    if scheme != "https" && port != Some("15012") {
        return Ok(None);
    }
    let root_pem = std::fs::read_to_string(&args.ca_root_cert).map_err(|e| {
        format!(
            "discovery address {address} is TLS, which needs the mesh root: --ca-root-cert {}: {e}",
            args.ca_root_cert.display()
        )
    })?;
    Ok(Some(crate::xds::SecureXds {
        authority: authority.to_owned(),
        root_pem,
        server_name: args.ca_server_name.clone(),
        token_file: args.token_file.clone(),
        channel: None,
    }))
}

/// The metrics, with this proxy's own labels: its workload from the environment, its app,
/// version and canonical service and revision from its pod's labels (as the xDS node carries
/// them, else read the same way), its cluster from ISTIO_META_CLUSTER_ID (Istio's default
/// `Kubernetes`).
fn local_metrics(args: &Args, xds: Option<&XdsOptions>) -> Metrics {
    let labels = match xds {
        Some(xds) => xds.node.labels.clone(),
        None => match std::env::var("ISTIO_METAJSON_LABELS") {
            Ok(json) => serde_json::from_str(&json).unwrap_or_else(|e| {
                tracing::warn!("ISTIO_METAJSON_LABELS: {e}; the metrics name no app or version");
                Default::default()
            }),
            Err(_) => std::fs::read_to_string(&args.pod_labels_file)
                .ok()
                .and_then(|text| parse_labels(&text).ok())
                .unwrap_or_default(),
        },
    };
    let cluster = std::env::var("ISTIO_META_CLUSTER_ID")
        .ok()
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| trellis_api::workload::DEFAULT_CLUSTER_ID.to_owned());
    let workload = Workload::from_env();
    let local = workload.labels(&labels, &cluster);
    Metrics::with_labels(workload, local)
}

/// The downward API's label file: `key="value"` per line, the value quoted as in Go.
fn parse_labels(text: &str) -> Result<std::collections::BTreeMap<String, String>, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, line)| {
            let (key, value) = line.split_once('=').ok_or_else(|| format!("line {}: no '='", i + 1))?;
            let value: String =
                serde_json::from_str(value).map_err(|e| format!("line {}: value {value:?}: {e}", i + 1))?;
            Ok((key.to_owned(), value))
        })
        .collect()
}

async fn serve(
    args: Args,
    drain_timeout: Duration,
    log_control: LogControl,
    xds: Option<XdsOptions>,
    identity: Option<crate::Identity>,
    status: Option<(u16, crate::app_health::AppProbers, Option<crate::app_health::AppMetricsTarget>)>,
) -> ExitCode {
    // Without a chosen address, IPv6 too whenever the pod's redirect may send it IPv6.
    let ipv6 = args.listen_address.is_none() && crate::dual_stack::listen_on_ipv6(args.ipv6);
    let any = |port| match args.listen_address {
        Some(ip) => vec![SocketAddr::new(ip, port)],
        None if ipv6 => vec![
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
        ],
        None => vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)],
    };
    // The admin port is never reachable from outside the host.
    let admin_ip = args.listen_address.filter(IpAddr::is_loopback).unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let metrics = local_metrics(&args, xds.as_ref());
    // A gateway captures nothing: its ports come from its Gateways.
    let (outbound, inbound) = match args.is_gateway() {
        true => (Vec::new(), Vec::new()),
        false => (any(args.outbound_port), any(args.inbound_port)),
    };
    let options = Options {
        outbound,
        inbound,
        admin: vec![SocketAddr::new(admin_ip, args.admin_port)],
        readiness: any(args.readiness_port),
        stats: any(args.stats_port),
        config_file: args.config.clone(),
        xds,
        explicit_inbound: args.explicit_inbound,
        identity,
    };
    let running = match crate::start(options, metrics, Some(log_control)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("trellis-proxy: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.is_gateway() {
        let ips = args.listen_address.map_or_else(|| crate::gateway::any_addresses(ipv6), |ip| vec![ip]);
        crate::gateway::listener::start(&running.proxy, &ips);
    }
    let status = match status {
        Some((port, probers, app_metrics)) => {
            // The app listens on localhost (or every address) in its pod; next to other pods on
            // one host (--listen-address), on its pod's own address.
            let app_host = args
                .listen_address
                .filter(|ip| !ip.is_unspecified())
                .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
            match crate::app_health::start_merging(&running.proxy, &any(port), probers, app_metrics, app_host)
            {
                Ok(bound) => bound,
                Err(e) => {
                    eprintln!("trellis-proxy: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        None => Vec::new(),
    };
    let dns = match start_dns(&args, &running.proxy, ipv6) {
        Ok(bound) => bound,
        Err(e) => {
            eprintln!("trellis-proxy: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(outbound = ?running.outbound, inbound = ?running.inbound, "trellis-proxy started");
    // One line a supervisor (or a test) can read: where each listener ended up.
    let first = |addrs: &[SocketAddr]| addrs.first().map(ToString::to_string).unwrap_or_default();
    println!(
        "trellis-proxy listening: outbound {} inbound {} admin {} readiness {} stats {} status {}",
        first(&running.outbound),
        first(&running.inbound),
        first(&running.admin),
        first(&running.readiness),
        first(&running.stats),
        status.first().map_or_else(|| "off".to_owned(), ToString::to_string)
    );
    if let Some(addr) = dns.first() {
        println!("trellis-proxy dns: udp and tcp {addr}");
    }
    let proxy = running.proxy;
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("trellis-proxy: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        _ = term.recv() => proxy.start_drain(),
        _ = tokio::signal::ctrl_c() => proxy.start_drain(),
        _ = proxy.drain.wait() => {}
    }
    // Draining: listeners are closed, connections finish what they have in flight.
    let deadline = Instant::now() + drain_timeout;
    while proxy.connections.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::info!(left = proxy.connections.load(Ordering::Acquire), "trellis-proxy stopped");
    ExitCode::SUCCESS
}

/// The DNS proxy, when the pod captures its DNS: on localhost (and ::1 when the redirect covers
/// IPv6), or on a loopback --listen-address of its own.
fn start_dns(
    args: &Args,
    proxy: &std::sync::Arc<crate::Proxy>,
    ipv6: bool,
) -> Result<Vec<SocketAddr>, String> {
    let switches = crate::dns::Switches::from_env()?;
    if !(args.dns_capture || switches.capture) {
        return Ok(Vec::new());
    }
    let upstreams = crate::dns::Upstreams::from_resolv_conf(&args.resolv_conf)
        .map_err(|e| format!("--resolv-conf {e}"))?;
    let ips = match args.listen_address {
        Some(ip) if ip.is_loopback() => vec![ip],
        _ if ipv6 => vec![IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)],
        _ => vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
    };
    let addrs: Vec<SocketAddr> = ips.into_iter().map(|ip| SocketAddr::new(ip, args.dns_port)).collect();
    tracing::info!(resolvers = ?upstreams.servers, listen = ?addrs, "DNS proxy");
    crate::dns::start(proxy, &addrs, upstreams)
}

fn wait(timeout: Duration, port: u16) -> ExitCode {
    use std::io::{Read, Write};
    let deadline = Instant::now() + timeout;
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    loop {
        let ready =
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok().and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
                s.write_all(b"GET /healthz/ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                    .ok()?;
                let mut head = [0u8; 12];
                s.read_exact(&mut head).ok()?;
                Some(&head[9..12] == b"200")
            });
        if ready == Some(true) {
            return ExitCode::SUCCESS;
        }
        if Instant::now() >= deadline {
            eprintln!("trellis-proxy wait: not ready after {timeout:?}");
            return ExitCode::FAILURE;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::{Args, secure_xds, status_port};
    use clap::Parser;

    #[test]
    fn xds_goes_over_tls_to_15012_or_https_and_then_needs_the_mesh_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root-cert.pem");
        std::fs::write(&root, "a root").unwrap();
        let with_root =
            Args::try_parse_from(["trellis-proxy", "--ca-root-cert", root.to_str().unwrap()]).unwrap();
        assert!(secure_xds("http://trellisd.trellis-system.svc:15010", &with_root).unwrap().is_none());
        let secure = secure_xds("http://trellisd.trellis-system.svc:15012", &with_root).unwrap().unwrap();
        assert_eq!(
            (secure.authority.as_str(), secure.root_pem.as_str()),
            ("trellisd.trellis-system.svc:15012", "a root")
        );
        assert!(secure_xds("https://cp.example:443", &with_root).unwrap().is_some());
        let without =
            Args::try_parse_from(["trellis-proxy", "--ca-root-cert", "/nonexistent/root.pem"]).unwrap();
        let err = secure_xds("http://trellisd:15012", &without).unwrap_err();
        assert!(err.contains("is TLS") && err.contains("--ca-root-cert /nonexistent/root.pem"), "{err}");
    }

    #[test]
    fn the_gateway_role_is_named_on_the_command_line_and_anything_else_is_refused() {
        let role =
            |args: &[&str]| Args::try_parse_from([&["trellis-proxy"], args].concat()).map(|a| a.is_gateway());
        assert!(!role(&[]).unwrap(), "a sidecar by default");
        assert!(role(&["--role", "gateway"]).unwrap());
        assert!(role(&["--role=router"]).unwrap(), "Istio's node type");
        let err = role(&["--role", "waypoint"]).err().unwrap().to_string();
        assert!(err.contains("waypoint") && err.contains("--role"), "{err}");
    }

    #[test]
    fn the_status_port_is_the_flags_then_proxy_configs_then_15020() {
        assert_eq!(status_port(Some(0), Some(0)), Some(0), "a flag of 0 is a free port");
        assert_eq!(status_port(Some(15999), Some(15020)), Some(15999));
        assert_eq!(status_port(None, Some(0)), None, "statusPort 0: off");
        assert_eq!(status_port(None, Some(16000)), Some(16000));
        assert_eq!(status_port(None, None), Some(15020));
    }
}
