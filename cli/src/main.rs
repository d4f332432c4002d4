//! `trellis`: the user's command for the Trellis service mesh.

#![forbid(unsafe_code)]

mod analyze;
mod authz;
// The chart renderer `trellis install` uses (not called by any command yet).
#[allow(dead_code)]
mod chart;
mod check;
mod dashboard;
mod demo;
mod demo_app;
mod embedded;
mod http_client;
mod inject;
mod input;
mod install;
mod proxy_config;
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
    /// Run the whole mesh on this machine: a small shop injected, intercepted and routed by
    /// Trellis, with a canary and live golden signals. As root for the real thing.
    Demo(demo::Args),
    /// The demo's tiny HTTP service: answers with its name, calls its downstreams, and can be
    /// told to fail or slow down a share of requests.
    DemoApp(demo_app::Args),
    /// Authorization: why a request to a workload is allowed or denied.
    #[command(subcommand)]
    Authz(authz::Command),
    /// Check Istio resource files the way the mesh will read them.
    Validate(validate::Args),
    /// Find what is wrong across resources (files or the live cluster), like `istioctl
    /// analyze`: each finding with a code, the resources involved and a fix.
    Analyze(analyze::Args),
    /// Add the sidecar to the workloads in a manifest, as the webhook would.
    Inject(inject::Args),
    /// Show whether each proxy has the control plane's latest config, like `istioctl
    /// proxy-status`.
    ProxyStatus(proxy_status::Args),
    /// Show what one proxy holds (listeners, routes, clusters, endpoints with their health,
    /// its certificate), read from its admin port, like `istioctl proxy-config`.
    ProxyConfig(proxy_config::Args),
    /// Serve a local web page of the mesh, like Kiali: the service graph with traffic, errors,
    /// latency, mTLS and denials, a view per service, and the proxies' sync state.
    Dashboard(dashboard::Args),
    /// Print the CustomResourceDefinitions of the Istio kinds Trellis reads (for the chart).
    Crds,
    /// Install (or upgrade) the control plane in the current cluster: the chart's objects,
    /// applied server-side, then wait until it is ready.
    Install(install::InstallArgs),
    /// Remove what `trellis install` made (with --purge also the CRDs and the namespace).
    Uninstall(install::UninstallArgs),
    /// Check that the cluster is ready for Trellis (--pre) or that Trellis runs well in it, like
    /// `linkerd check`.
    Check(check::Args),
    /// trellis-proxy, run from this executable (the demo's sidecars).
    #[command(hide = true, disable_help_flag = true, disable_version_flag = true)]
    Proxy(embedded::Args),
    /// trellisd, run from this executable (the demo's control plane).
    #[command(hide = true, disable_help_flag = true, disable_version_flag = true)]
    ControlPlane(embedded::Args),
    /// trellis-proxy-init, run from this executable (the demo's redirect).
    #[command(hide = true, disable_help_flag = true, disable_version_flag = true)]
    ProxyInit(embedded::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::DemoApp(args) => demo_app::run(args),
        Command::Validate(args) => validate::run(&args),
        Command::Analyze(args) => analyze::run(&args),
        Command::Authz(command) => authz::run(&command),
        Command::Inject(args) => inject::run(&args),
        Command::ProxyStatus(args) => proxy_status::run(&args),
        Command::ProxyConfig(args) => proxy_config::run(&args),
        Command::Dashboard(args) => dashboard::run(&args),
        Command::Install(args) => install::run_install(&args),
        Command::Uninstall(args) => install::run_uninstall(&args),
        Command::Check(args) => check::run(&args),
        Command::Crds => {
            print!("{}", trellis_api::crds::to_yaml());
            ExitCode::SUCCESS
        }
        Command::Proxy(args) => trellis_proxy::cli::run(args.with_program("trellis-proxy")),
        Command::ControlPlane(args) => trellis_control_plane::cli::run(args.with_program("trellisd")),
        Command::ProxyInit(args) => trellis_proxy_init::cli::run(args.with_program("trellis-proxy-init")),
    }
}
