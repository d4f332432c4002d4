//! `trellis`: the user's command for the Trellis service mesh.

#![forbid(unsafe_code)]

mod inject;
mod input;
mod proxy_status;
mod validate;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "trellis", version, about = "Trellis: a small, fast service mesh that speaks Istio's API")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check Istio resource files the way the mesh will read them.
    Validate(validate::Args),
    /// Add the sidecar to the workloads in a manifest, as the webhook would.
    Inject(inject::Args),
    /// Show whether each proxy has the control plane's latest config, like `istioctl
    /// proxy-status`.
    ProxyStatus(proxy_status::Args),
    /// Print the CustomResourceDefinitions of the Istio kinds Trellis reads (for the chart).
    Crds,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate(args) => validate::run(&args),
        Command::Inject(args) => inject::run(&args),
        Command::ProxyStatus(args) => proxy_status::run(&args),
        Command::Crds => {
            print!("{}", trellis_api::crds::to_yaml());
            ExitCode::SUCCESS
        }
    }
}
