//! `trellis check`, like `linkerd check`: a list of checks of the cluster and the control
//! plane, each passed (✔), warned (‼), failed (✖) with a hint, or skipped with the reason.
//! `--pre` checks a cluster before install instead.
//!
//! `evaluate` (pure) concludes from objects and certificates, `report` shows the results,
//! `probes` reads the cluster (through the same client as `trellis install`).

mod evaluate;
mod probes;
mod report;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use crate::install::cluster::{KubeArgs, parse_duration};

const EXIT_CODES: &str = "\
Exit status:
  0  no check failed (warnings and skipped checks do not fail)
  1  a check failed
  2  usage error";

#[derive(clap::Args)]
#[command(after_help = EXIT_CODES)]
pub struct Args {
    /// Check the cluster before install: API access, permissions, Kubernetes version, no other
    /// mesh or Trellis already there.
    #[arg(long)]
    pub pre: bool,
    /// The namespace of the control plane.
    #[arg(short = 'n', long, value_name = "NAMESPACE", default_value = "trellis-system")]
    pub namespace: String,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// How long all the checks may take (each request to the API server included).
    #[arg(long, value_name = "DURATION", default_value = "1m", value_parser = parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub kube: KubeArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

pub fn run(args: &Args) -> ExitCode {
    if let Err(e) = crate::install::check_namespace("-n", &args.namespace) {
        eprintln!("trellis check: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("trellis check: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let checks = runtime.block_on(probes::run(args));
    let text = match args.output {
        Format::Table => report::text(&checks),
        Format::Json => report::json(&checks),
    };
    // A closed pipe (`trellis check | head`) is not worth a panic.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    if report::success(&checks) { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
