//! `trellis proxy-config`: what one proxy holds, like `istioctl proxy-config`, read from the
//! proxy's admin port.
//!
//! `target` finds the admin port (an address, or a pod through the API server's port-forward),
//! `fetch` GETs its pages, `answers` reads them, `views` turns them into rows, `render` prints
//! them; this module wires them.

mod answers;
mod fetch;
mod filter;
mod pem;
mod render;
mod target;
mod views;

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::install::cluster::KubeArgs;
use answers::{Certs, ClusterStatuses, ConfigDump};

const AFTER_HELP: &str = "\
Examples:
  trellis proxy-config clusters reviews-v1-7f9c.shop
  trellis proxy-config routes deploy/reviews-v1.shop
  trellis proxy-config endpoints reviews-v1-7f9c -n shop -o json
  trellis proxy-config endpoints reviews-v1-7f9c.shop --fqdn ratings --status unhealthy
  kubectl -n shop port-forward reviews-v1-7f9c 15000 &
  trellis proxy-config all --admin 127.0.0.1:15000

Exit status: 0 shown; 2 usage error, or the proxy could not be reached or read (not found, not
in the mesh, no answer within --timeout, an HTTP error, or an answer that is not the admin page).";

#[derive(clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// What to show.
    #[arg(value_enum, value_name = "WHAT")]
    what: What,
    /// The pod whose proxy to ask: `name` or `name.namespace`, or `deployment/name[.namespace]`
    /// (its first Running pod with the proxy, by name). Its admin port (localhost only in the
    /// pod) is reached through the API server's port-forward.
    #[arg(value_name = "POD", required_unless_present = "admin", conflicts_with = "admin")]
    pod: Option<String>,
    /// Ask the admin port at this address instead (`host:port`), e.g. after `kubectl
    /// port-forward <pod> 15000`, or a proxy on this host.
    #[arg(long, value_name = "HOST:PORT")]
    admin: Option<String>,
    /// The pod's namespace. Default: the kubeconfig context's.
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// The admin port inside the pod.
    #[arg(long, value_name = "PORT", default_value_t = 15000, value_parser = clap::value_parser!(u16).range(1..))]
    admin_port: u16,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    output: Format,
    /// Seconds the whole exchange may take (finding the pod, connecting, every answer).
    #[arg(long, value_name = "SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    timeout: u64,
    #[command(flatten)]
    filter: filter::Filter,
    #[command(flatten)]
    kube: KubeArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum What {
    /// The service ports the proxy captures, the catch-all, and the inbound side.
    #[value(alias = "listener", alias = "l")]
    Listeners,
    /// The routes of each virtual host.
    #[value(alias = "route", alias = "r")]
    Routes,
    /// The clusters (service, port, subset) with their balancing, TLS and outlier detection.
    #[value(alias = "cluster", alias = "c")]
    Clusters,
    /// Each cluster's endpoints with their health (outlier ejection).
    #[value(alias = "endpoint", alias = "ep")]
    Endpoints,
    /// The workload certificate and its root: serial, validity, identity.
    #[value(alias = "secrets", alias = "s")]
    Secret,
    /// All of the above.
    All,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Table,
    Json,
    Yaml,
}

const CONFIG_DUMP: &str = "/config_dump";
const CLUSTERS: &str = "/clusters?format=json";
const CERTS: &str = "/certs";

impl What {
    fn pages(self) -> &'static [&'static str] {
        match self {
            What::Listeners | What::Routes | What::Clusters => &[CONFIG_DUMP],
            What::Endpoints => &[CLUSTERS],
            What::Secret => &[CERTS],
            What::All => &[CONFIG_DUMP, CLUSTERS, CERTS],
        }
    }
}

pub fn run(args: &Args) -> ExitCode {
    match show(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("trellis proxy-config: {message}");
            ExitCode::from(2)
        }
    }
}

fn show(args: &Args) -> Result<(), String> {
    let timeout = Duration::from_secs(args.timeout);
    let (source, pages) = fetch_pages(args, timeout)?;
    let page = |path: &str| {
        args.what.pages().iter().position(|p| *p == path).and_then(|i| pages.get(i)).map(|b| b.as_ref())
    };
    let dump: Option<ConfigDump> = page(CONFIG_DUMP).map(|b| answers::read(CONFIG_DUMP, b)).transpose()?;
    let statuses: Option<ClusterStatuses> = page(CLUSTERS).map(|b| answers::read(CLUSTERS, b)).transpose()?;
    let certs: Option<Certs> = page(CERTS).map(|b| answers::read(CERTS, b)).transpose()?;
    let filter = &args.filter;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let report = Report {
        config_version: dump.as_ref().map(|d| d.version),
        listeners: dump
            .as_ref()
            .filter(|_| matches!(args.what, What::Listeners | What::All))
            .map(|d| kept(views::listeners(d), |r| filter.listener(r))),
        routes: dump
            .as_ref()
            .filter(|_| matches!(args.what, What::Routes | What::All))
            .map(|d| kept(views::routes(d), |r| filter.route(r))),
        clusters: dump
            .as_ref()
            .filter(|_| matches!(args.what, What::Clusters | What::All))
            .map(|d| kept(views::clusters(d), |r| filter.cluster(r))),
        endpoints: statuses.as_ref().map(|s| kept(views::endpoints(s), |r| filter.endpoint(r))),
        secrets: certs.as_ref().map(|c| views::secrets(c, now)),
    };
    let text = match args.output {
        Format::Json => render::json(&report)?,
        Format::Yaml => render::yaml(&report)?,
        Format::Table => table(&report, args.what == What::All, &source),
    };
    // A closed pipe (`trellis proxy-config ... | head`) is not worth a panic or a message.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    Ok(())
}

fn kept<T>(mut rows: Vec<T>, keep: impl Fn(&T) -> bool) -> Vec<T> {
    rows.retain(|row| keep(row));
    rows
}

/// What `-o json|yaml` prints: the views asked for, each under its name.
#[derive(Serialize)]
struct Report {
    /// The version of the configuration in force (the proxy's count of configs applied).
    #[serde(skip_serializing_if = "Option::is_none")]
    config_version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    listeners: Option<Vec<views::ListenerRow>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    routes: Option<Vec<views::RouteRow>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    clusters: Option<Vec<views::ClusterRow>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    endpoints: Option<Vec<views::EndpointRow>>,
    #[serde(skip_serializing_if = "Option::is_none", flatten)]
    secrets: Option<views::Secrets>,
}

fn table(report: &Report, titled: bool, source: &str) -> String {
    let mut sections = Vec::new();
    let mut add = |title: &str, text: String| {
        sections.push(if titled { format!("{title}\n{text}") } else { text });
    };
    if let Some(rows) = &report.listeners {
        add("LISTENERS", render::listeners(rows));
    }
    if let Some(rows) = &report.routes {
        add("ROUTES", render::routes(rows));
    }
    if let Some(rows) = &report.clusters {
        add("CLUSTERS", render::clusters(rows));
    }
    if let Some(rows) = &report.endpoints {
        add("ENDPOINTS", render::endpoints(rows));
    }
    if let Some(secrets) = &report.secrets {
        add("SECRETS", render::secrets(secrets));
    }
    let mut text = sections.join("\n");
    if titled {
        text = format!("{}\n\n{text}", render::heading(source));
    }
    text
}

/// Connects to the admin port (directly or through a pod's port-forward) and GETs the pages
/// `args.what` needs, all within `timeout`.
fn fetch_pages(args: &Args, timeout: Duration) -> Result<(String, Vec<bytes::Bytes>), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async {
        let exchange = async {
            let connection = match (&args.admin, &args.pod) {
                (Some(admin), _) => target::connect_admin(admin).await?,
                (None, Some(pod)) => {
                    target::connect_pod(&args.kube, pod, args.namespace.as_deref(), args.admin_port, timeout)
                        .await?
                }
                (None, None) => return Err("a POD or --admin HOST:PORT is needed".to_owned()),
            };
            let target::Connection { source, stream, forwarder, forward_error } = connection;
            let fetching = fetch::pages(stream, &source, args.what.pages());
            let pages = match forward_error {
                None => fetching.await,
                // The kubelet's error, when it has one, says more than the stream's end.
                Some(error) => {
                    tokio::pin!(fetching);
                    tokio::select! {
                        pages = &mut fetching => pages,
                        Some(message) = error => Err(format!("{source}: the port-forward failed: {message}")),
                    }
                }
            };
            if let Some(forwarder) = forwarder {
                forwarder.abort();
            }
            Ok((source, pages?))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => {
                let what = args.admin.as_deref().or(args.pod.as_deref()).unwrap_or("the proxy");
                Err(format!("{what}: no answer within {}s (--timeout)", timeout.as_secs()))
            }
        }
    })
}
