//! `trellis proxy-status`: like `istioctl proxy-status`, from the control plane's
//! `/debug/syncz` (monitoring port 15014).
//!
//! `model` reads the JSON and decides what is synced, `render` prints it, `fetch` is the HTTP
//! client; this module wires them and decides the exit code.

pub(crate) mod fetch;
pub(crate) mod model;
pub(crate) mod render;

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fetch::Endpoint;
use render::{Connected, JsonProxy, JsonReport};

const EXIT_CODES: &str = "\
Exit status:
  0  every proxy shown is SYNCED and (without PROXY) no config is rejected; also when no proxy
     is connected
  1  some proxy shown is STALE or NACKED, the control plane rejected some config (without
     PROXY; with PROXY it is printed but does not count), or no connected proxy matches PROXY
  2  usage error, or an answer could not be had from every control plane: not reachable, no
     answer within --timeout, an HTTP error, or not /debug/syncz JSON

STALE is normal for a moment after a change; a script waiting for a rollout can retry while the
status is 1, and stop at 2.";

#[derive(clap::Args)]
#[command(after_help = EXIT_CODES)]
pub struct Args {
    /// A proxy to show in detail: its node id, its pod (`reviews-v1-7f9c`), `pod.namespace`, or
    /// the start of any of them. All proxies that match are shown.
    #[arg(value_name = "PROXY")]
    proxy: Option<String>,
    /// The control plane's monitoring address, e.g. after `kubectl -n trellis-system
    /// port-forward deploy/trellisd 15014`. A base path is kept (`kubectl proxy` URLs work).
    /// Repeat it, or separate with commas, to ask every replica: each knows only the proxies
    /// connected to it.
    #[arg(
        long = "control-plane",
        value_name = "URL",
        env = "TRELLIS_CONTROL_PLANE",
        default_value = "http://127.0.0.1:15014",
        value_delimiter = ','
    )]
    control_plane: Vec<String>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    output: Format,
    /// Seconds to wait for each control plane's answer.
    #[arg(long, value_name = "SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600))]
    timeout: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Table,
    Json,
}

pub fn run(args: &Args) -> ExitCode {
    match status(args) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("trellis proxy-status: {message}");
            ExitCode::from(2)
        }
    }
}

fn status(args: &Args) -> Result<ExitCode, String> {
    let endpoints =
        args.control_plane.iter().map(|url| Endpoint::parse(url)).collect::<Result<Vec<_>, _>>()?;
    let (mut proxies, rejected) = fetch_all(&endpoints, Duration::from_secs(args.timeout))?;
    proxies.sort_by(|a, b| {
        let key = |c: &Connected| (c.proxy.namespace.clone(), c.proxy.name().to_owned(), c.proxy.id.clone());
        key(a).cmp(&key(b))
    });
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let where_from = || endpoints.iter().map(|e| e.url.as_str()).collect::<Vec<_>>().join(", ");

    let (shown, rejected_counts) = match &args.proxy {
        None => (proxies, true),
        Some(query) => {
            let total = proxies.len();
            let matching: Vec<Connected> = proxies.into_iter().filter(|c| c.proxy.matches(query)).collect();
            if matching.is_empty() {
                eprintln!(
                    "trellis proxy-status: no connected proxy matches {query:?} ({total} connected to {})",
                    where_from()
                );
                return Ok(ExitCode::from(1));
            }
            (matching, false)
        }
    };

    let text = match args.output {
        Format::Json => {
            let report =
                JsonReport { proxies: shown.iter().map(JsonProxy::of).collect(), rejected_config: &rejected };
            let mut json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
            json.push('\n');
            json
        }
        Format::Table if args.proxy.is_none() => render::table(&shown, &rejected, &where_from(), now),
        Format::Table => {
            let mut text = shown
                .iter()
                .map(|c| render::detail(c, endpoints.len() > 1, now))
                .collect::<Vec<_>>()
                .join("\n---\n\n");
            render::rejected_config(&mut text, &rejected);
            text
        }
    };
    // A closed pipe (`trellis proxy-status | head`) is not worth a panic or an error message.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());

    let all_synced = shown.iter().all(|c| c.proxy.state().is_synced());
    let config_ok = !rejected_counts || rejected.is_empty();
    Ok(if all_synced && config_ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Asks every control plane at once; all must answer. Rejected config lines are merged without
/// repeats (replicas read the same config).
fn fetch_all(endpoints: &[Endpoint], timeout: Duration) -> Result<(Vec<Connected>, Vec<String>), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async {
        let tasks: Vec<_> = endpoints
            .iter()
            .cloned()
            .map(|e| tokio::spawn(async move { fetch::syncz(&e, timeout).await.map(|s| (e, s)) }))
            .collect();
        let mut proxies = Vec::new();
        let mut rejected: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut errors = Vec::new();
        for task in tasks {
            match task.await {
                Ok(Ok((endpoint, syncz))) => {
                    proxies.extend(
                        syncz
                            .proxies
                            .into_iter()
                            .map(|proxy| Connected { control_plane: endpoint.url.clone(), proxy }),
                    );
                    for line in syncz.rejected_config {
                        if seen.insert(line.clone()) {
                            rejected.push(line);
                        }
                    }
                }
                Ok(Err(e)) => errors.push(e),
                Err(e) => errors.push(format!("internal error: {e}")),
            }
        }
        if errors.is_empty() { Ok((proxies, rejected)) } else { Err(errors.join("\ntrellis proxy-status: ")) }
    })
}
