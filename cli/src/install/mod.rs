//! `trellis install` and `trellis uninstall`: the chart's objects applied to a cluster with
//! server-side apply (field manager `trellis`), labelled so that a later install prunes and
//! uninstall removes exactly what install made; install then waits for the control plane.
//!
//! `plan` (pure) decides what is applied in which order and what is pruned, `readiness` (pure)
//! reads objects' status, `cluster` is the kube-rs client and its errors, `apply` and
//! `uninstall` are the I/O.

mod apply;
pub(crate) mod cluster;
pub(crate) mod plan;
pub(crate) mod readiness;
mod uninstall;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use cluster::{KubeArgs, parse_duration};

use crate::chart;

/// The field manager of every apply, as `kubectl get -o yaml --show-managed-fields` shows it.
pub const FIELD_MANAGER: &str = "trellis";

#[derive(clap::Args)]
pub struct InstallArgs {
    /// The namespace of the control plane (created when missing).
    #[arg(short = 'n', long, value_name = "NAMESPACE", default_value = "trellis-system")]
    pub namespace: String,
    /// A chart value, `key=value` (`injector.replicaCount=3`, `cni.enabled=true`), as Helm's
    /// `--set`. Repeat for more; later ones win.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// A values file, as Helm's `-f`. Repeat for more; later ones win, `--set` wins over all.
    #[arg(short = 'f', long = "values", value_name = "FILE")]
    pub values: Vec<PathBuf>,
    /// Print the objects that would be applied, as YAML documents, and touch nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// How long install may take in all, applying and waiting for the control plane included
    /// (90s, 5m, 1h).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// The release name: in the chart's labels, and in the `install.trellis.io/release` label
    /// by which uninstall finds what install made.
    #[arg(long, value_name = "NAME", default_value = "trellis")]
    pub release: String,
    #[command(flatten)]
    pub kube: KubeArgs,
}

#[derive(clap::Args)]
pub struct UninstallArgs {
    /// Also remove what holds users' data: the Istio CRDs (and with them every Istio resource in
    /// the cluster) and the control plane's namespace (with everything in it), when install
    /// created them.
    #[arg(long)]
    pub purge: bool,
    /// How long uninstall may take in all, waiting for deletions included.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// The release name given to install.
    #[arg(long, value_name = "NAME", default_value = "trellis")]
    pub release: String,
    #[command(flatten)]
    pub kube: KubeArgs,
}

pub fn run_install(args: &InstallArgs) -> ExitCode {
    finish("install", block_on(apply::install(args)))
}

pub fn run_uninstall(args: &UninstallArgs) -> ExitCode {
    finish("uninstall", block_on(uninstall::uninstall(args)))
}

fn block_on<T>(future: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?
        .block_on(future)
}

fn finish(command: &str, result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("trellis {command}: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Renders the chart and prepares what install applies.
pub(crate) fn render_plan(
    namespace: &str,
    release: &str,
    values: &[PathBuf],
    set: &[String],
) -> Result<plan::Plan, String> {
    let options = chart::RenderOptions {
        release_name: release.to_owned(),
        namespace: namespace.to_owned(),
        value_files: values.to_vec(),
        set: set.to_vec(),
        include_crds: true,
    };
    let manifests = chart::render(&options).map_err(|e| format!("cannot render the chart: {e}"))?;
    plan::prepare(manifests.into_iter().map(|m| (m.source, m.object)), namespace, release)
}

/// A namespace name (a DNS label), or an error naming the flag and the value.
pub fn check_namespace(flag: &str, name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{flag} {name:?} is not a namespace name (lower-case letters, digits and '-', at most 63, starting and ending with a letter or digit)"
        ))
    }
}

/// A release name: it is a label value.
fn check_release(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    if valid {
        Ok(())
    } else {
        Err(format!(
            "--release {name:?} is not a valid label value (letters, digits, '-', '_' and '.', at most 63, starting and ending with a letter or digit)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_namespace("-n", "trellis-system").is_ok());
        for bad in ["", "Trellis", "-a", "a-", "a_b", &"a".repeat(64)] {
            let err = check_namespace("-n", bad).unwrap_err();
            assert!(err.starts_with(&format!("-n {bad:?} is not a namespace name")), "{err}");
        }
        assert!(check_release("trellis").is_ok());
        assert!(check_release("My_release.1").is_ok());
        for bad in ["", "a b", "-a", "a/b"] {
            assert!(check_release(bad).unwrap_err().contains("is not a valid label value"), "{bad}");
        }
    }
}
