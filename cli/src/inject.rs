//! `trellis inject -f FILE`: manual injection, like `istioctl kube-inject`, with the same code
//! the webhook runs.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use trellis_injector::config::InjectionFlags;
use trellis_injector::manual::inject_manifests;

#[derive(clap::Args)]
pub struct Args {
    /// Manifest to inject (Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob,
    /// and each of those in a List such as `kubectl get deploy -o yaml` prints; other objects
    /// pass through); `-` reads standard input.
    #[arg(short = 'f', long = "filename")]
    file: PathBuf,
    /// Write the result here instead of standard output.
    #[arg(short = 'o', long = "output")]
    output: Option<PathBuf>,
    #[command(flatten)]
    injection: InjectionFlags,
}

pub fn run(args: &Args) -> ExitCode {
    let text = match crate::input::read_input(&args.file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("trellis inject: {}: {e}", args.file.display());
            return ExitCode::from(2);
        }
    };
    let (config, templates) = match args.injection.load() {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("trellis inject: {e}");
            return ExitCode::from(2);
        }
    };
    let injected = match inject_manifests(&text, &config, &templates) {
        Ok(out) => out,
        Err(e) => {
            eprintln!("trellis inject: {}: {e}", args.file.display());
            return ExitCode::from(1);
        }
    };
    let written = match &args.output {
        Some(path) => std::fs::write(path, injected).map_err(|e| format!("{}: {e}", path.display())),
        None => std::io::stdout().lock().write_all(injected.as_bytes()).map_err(|e| e.to_string()),
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trellis inject: {e}");
            ExitCode::from(2)
        }
    }
}
