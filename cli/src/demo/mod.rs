//! `trellis demo`: the whole mesh on one machine. The pods of `examples/demo` are injected by
//! the injector's own code; as root each gets a network namespace programmed by proxy-init with
//! the injected flags, a sidecar running as UID 1337 and its app as another user; the control
//! plane routes a canary that is edited halfway; its CA gives every proxy a certificate for its
//! pod's service account, and the proxies speak mutual TLS to each other (STRICT: a plaintext
//! client from outside the mesh is refused); an AuthorizationPolicy lets only frontend call
//! catalog (inventory tries once, and is denied); a steady load goes in and a live table shows
//! the golden signals and each edge's identities. Every proxy writes access logs to its standard
//! output, and exports spans to a Zipkin collector the demo runs itself; one request of the load
//! is traced, and the summary draws its trace. Without root it runs in explicit mode (apps call
//! their local proxy).
//!
//! `plan` decides everything from the files; `session` makes it real and removes it;
//! `dashboard` drives the load and draws the table; `state` finds what a crashed run left.

mod access_logs;
mod authorization;
mod canary;
mod collector;
mod console;
mod dashboard;
mod example;
mod identity;
mod kubelet;
mod load;
mod metrics;
mod network;
mod plan;
mod processes;
mod session;
mod signals;
mod state;
mod summary;
mod table;
mod trace;
mod yaml_edit;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use console::{Console, Output};
use plan::Mode;

const NOT_ROOT: &str = "trellis demo: not running as root, so no network namespaces and no traffic \
capture: running in explicit mode, where each app calls its own proxy directly (every pod on a \
127.77.0.x address of its own). Routing, the canary and telemetry work the same; run as root \
(sudo -E) to see injection and interception for real.";

#[derive(clap::Args, Clone)]
pub struct Args {
    /// How long the load runs (seconds, or a duration like 1m); the canary's weights change
    /// halfway.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Requests per second into the first pod.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=5000))]
    rate: u32,
    /// After the load, keep the mesh running and say how to call it; Ctrl-C removes it.
    #[arg(long)]
    keep: bool,
    /// Explicit mode even as root: no namespaces, apps call their proxy directly.
    #[arg(long)]
    explicit: bool,
    /// Read the demo from this directory (mesh.yaml, pods.yaml, istio/) instead of the copy of
    /// examples/demo built into trellis.
    #[arg(long, value_name = "DIR")]
    from: Option<PathBuf>,
    /// `table`: a live table (in place on a terminal); `json`: a JSON object per line, the last
    /// one the summary.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Remove what an earlier run left (processes, namespaces, files), and exit.
    #[arg(long)]
    cleanup: bool,
    /// The demo's own caller, run inside a pod as its app: one GET of URL, sent to
    /// --call-via with the URL's host as authority; prints the answer as JSON, and exits.
    #[arg(long, hide = true, value_name = "URL", requires = "call_via")]
    call: Option<String>,
    /// Where the caller connects (the service's virtual IP, or the pod's proxy).
    #[arg(long, hide = true, value_name = "ADDR", requires = "call")]
    call_via: Option<SocketAddr>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = match text.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => trellis_api::primitives::parse_go_duration(text)?,
    };
    if duration < Duration::from_secs(2) || duration > Duration::from_secs(24 * 3600) {
        return Err("between 2s and 24h, please".to_owned());
    }
    Ok(duration)
}

pub fn run(args: &Args) -> ExitCode {
    if let (Some(url), Some(via)) = (&args.call, args.call_via) {
        return authorization::call_once(url, via);
    }
    // First: from here on Ctrl-C asks the demo to stop instead of ending it.
    let stop = match signals::install() {
        Ok(stop) => stop,
        Err(e) => {
            eprintln!("trellis demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut console = Console::new(args.output);
    match demo(args, &stop, &mut console) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("trellis demo: {e}");
            if stop.requested() { ExitCode::from(130) } else { ExitCode::FAILURE }
        }
    }
}

fn demo(args: &Args, stop: &signals::Stop, console: &mut Console) -> Result<ExitCode, String> {
    let started = Instant::now();
    let root = nix::unistd::geteuid().is_root();
    let run_dir = state::run_dir();
    if args.cleanup {
        let left = state::clean(&run_dir, root, true)?;
        console.note(&format!(
            "trellis demo: removed {} processes and {} network namespaces of earlier runs",
            left.processes, left.namespaces
        ));
        return Ok(ExitCode::SUCCESS);
    }
    let mode = match (root, args.explicit) {
        (true, false) => ensure_tools(console),
        (true, true) => Mode::Explicit,
        (false, _) => {
            console.note(NOT_ROOT);
            Mode::Explicit
        }
    };
    let example = match &args.from {
        Some(dir) => example::Example::from_dir(dir)?,
        None => example::Example::built_in(),
    };
    // Everything is checked before anything is made.
    let plan = plan::build(&example, mode).map_err(|e| format!("{}:\n{e}", example.origin))?;
    let left = state::clean(&run_dir, root, false)?;
    if left.processes + left.namespaces > 0 {
        console.note(&format!(
            "trellis demo: removed what an earlier run left: {} processes, {} network namespaces",
            left.processes, left.namespaces
        ));
    }
    let mut session = session::Session::new(plan, run_dir, args.clone(), stop.clone(), started)?;
    let outcome = session.run(console);
    let cleaned_up = session.teardown();
    let mut summary = outcome?;
    summary.cleaned_up = cleaned_up;
    console.summary(&summary);
    let failed = summary.requests.failed > 0 || summary.canary.as_ref().is_some_and(|c| c.error.is_some());
    Ok(match (stop.requested(), failed || !cleaned_up) {
        (true, _) => ExitCode::from(130),
        (false, true) => ExitCode::FAILURE,
        (false, false) => ExitCode::SUCCESS,
    })
}

/// The Debian packages whose tools the namespaces and the redirect need and this machine lacks.
fn missing_packages() -> Vec<&'static str> {
    let found = |names: &[&str]| {
        names.iter().any(|name| {
            ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
                .iter()
                .any(|dir| std::path::Path::new(dir).join(name).exists())
        })
    };
    let mut missing = Vec::new();
    if !found(&["ip"]) {
        missing.push("iproute2");
    }
    if !found(&["nft", "iptables-restore"]) {
        missing.push("nftables");
    }
    missing
}

/// As root on a machine without the tools the redirect needs (a fresh Debian has no nft): the
/// demo installs them with apt-get, as `scripts/test.sh` does, saying so; where it cannot, it
/// runs in explicit mode and says why, rather than stopping a newcomer at the first command.
fn ensure_tools(console: &mut Console) -> Mode {
    let missing = missing_packages();
    if missing.is_empty() {
        return Mode::Namespaces;
    }
    let packages = missing.join(" ");
    let apt = std::path::Path::new("/usr/bin/apt-get");
    if !apt.exists() {
        console.note(&format!(
            "trellis demo: the traffic capture needs {packages}, and there is no apt-get to install them: \
             running in explicit mode. Install them and run again to see interception for real."
        ));
        return Mode::Explicit;
    }
    console.note(&format!("trellis demo: installing {packages} (apt-get), which the traffic capture needs"));
    let run = |args: &[&str]| {
        let output = std::process::Command::new(apt)
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if output.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
        Err(format!("apt-get {}: {}: {last}", args[0], output.status))
    };
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend(&missing);
    match run(&["update", "-qq"]).and_then(|()| run(&install)) {
        Ok(()) if missing_packages().is_empty() => Mode::Namespaces,
        outcome => {
            let why = outcome.err().unwrap_or_else(|| "the tools are still missing".to_owned());
            console.note(&format!(
                "trellis demo: could not install {packages} ({why}): running in explicit mode, where \
                 each app calls its own proxy directly. Install them and run again to see \
                 interception for real."
            ));
            Mode::Explicit
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn flags() {
        let args =
            Cli::try_parse_from(["demo", "--duration", "20", "--rate", "80", "-o", "json"]).unwrap().args;
        assert_eq!((args.duration, args.rate, args.output), (Duration::from_secs(20), 80, Output::Json));
        let args = Cli::try_parse_from(["demo", "--duration", "1m30s"]).unwrap().args;
        assert_eq!(args.duration, Duration::from_secs(90));
        for (flag, value) in
            [("--duration", "1"), ("--duration", "soon"), ("--rate", "0"), ("--output", "xml")]
        {
            let err = Cli::try_parse_from(["demo", flag, value]).err().unwrap().to_string();
            assert!(err.contains(flag) && err.contains(value), "{err}");
        }
        let args = Cli::try_parse_from([
            "demo",
            "--call",
            "http://catalog:8080/items",
            "--call-via",
            "10.96.0.20:8080",
        ])
        .unwrap()
        .args;
        assert_eq!(args.call.as_deref(), Some("http://catalog:8080/items"));
        assert_eq!(args.call_via, Some("10.96.0.20:8080".parse().unwrap()));
        assert!(
            Cli::try_parse_from(["demo", "--call", "http://catalog:8080/"]).is_err(),
            "--call needs --call-via"
        );
    }
}
