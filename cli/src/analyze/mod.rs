//! `trellis analyze`: checks across resources, like `istioctl analyze`, over files (`-f`) or
//! the live cluster: routes to hosts, ports, subsets and gateways that do not exist, rules that
//! never match, VirtualServices that fight over a host (or shadow each other on a gateway), TLS
//! turned off towards STRICT workloads or originated without a CA, policies and subsets that
//! select nothing, HTTP rules on TCP ports, Sidecars hiding routed hosts, pods missing their
//! proxy, gateway hosts nobody routes.
//!
//! `source` and `cluster` build the model (`model`); each check is a pure function of it in a
//! file of its own; `report` prints. Exit status as `trellis validate`: 0 no error (warnings
//! and notes do not fail), 1 an Error finding, 2 usage, input or cluster error.

mod authz;
mod cluster;
mod conflicts;
mod finding;
mod gateways;
mod hosts;
mod injection;
mod matches;
mod model;
mod mtls;
mod report;
mod routes;
mod sidecar;
mod source;
mod subsets;
mod tls;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use finding::Finding;
use model::{Mesh, Obj};

use crate::install::cluster::{KubeArgs, parse_duration};

const EXIT_CODES: &str = "\
Exit status:
  0  no Error finding (warnings and info do not fail)
  1  at least one Error finding
  2  usage error, input that cannot be read, or a cluster that cannot be reached";

#[derive(clap::Args)]
#[command(after_help = EXIT_CODES)]
pub struct Args {
    /// Files or directories to analyze together (directories are searched for .yaml, .yml and
    /// .json files); `-` reads standard input. Without -f, the cluster is analyzed.
    #[arg(short = 'f', long = "filename", num_args = 1..)]
    paths: Vec<PathBuf>,
    /// With -f, read the cluster too; a file's resource replaces the cluster's of the same
    /// kind, namespace and name. Implied by --kubeconfig and --context.
    #[arg(long)]
    use_kube: bool,
    /// Istio's root namespace: policies and Sidecars there apply to the whole mesh.
    #[arg(long, value_name = "NAMESPACE", default_value = trellis_api::mesh::DEFAULT_ROOT_NAMESPACE)]
    root_namespace: String,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = report::Format::Text)]
    output: report::Format,
    /// How long reading the cluster may take.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,
    #[command(flatten)]
    kube: KubeArgs,
}

pub fn run(args: &Args) -> ExitCode {
    let mut mesh = Mesh::new(&args.root_namespace);
    let mut findings = Vec::new();
    let mut notes = Vec::new();
    let mut failed = false;
    let live = args.paths.is_empty()
        || args.use_kube
        || args.kube.kubeconfig.is_some()
        || args.kube.context.is_some();
    if live {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(e) => {
                eprintln!("trellis analyze: cannot start the runtime: {e}");
                return ExitCode::from(2);
            }
        };
        let read = cluster::read(&mut mesh, &args.kube, args.timeout, &mut findings, &mut notes);
        if let Err(e) = runtime.block_on(read) {
            eprintln!("trellis analyze: {e}");
            return ExitCode::from(2);
        }
    }
    let (files, errors) = source::expand(&args.paths);
    for error in errors {
        eprintln!("trellis analyze: {error}");
        failed = true;
    }
    for file in &files {
        let name = if file.as_os_str() == "-" { "<stdin>".to_owned() } else { file.display().to_string() };
        let text = match crate::input::read_input(file) {
            Ok(text) => text,
            Err(message) => {
                eprintln!("trellis analyze: {name}: {message}");
                failed = true;
                continue;
            }
        };
        for error in source::add_text(&mut mesh, &text, Some(&name), &mut findings) {
            eprintln!("trellis analyze: {error}");
            failed = true;
        }
    }
    notes.extend(keep_last_of_each(&mut mesh));
    mesh.index();
    notes.extend(skipped(&mesh));
    findings.extend(analyze(&mesh));
    let report = report::Report::new(files.len(), mesh.resources, findings, notes);
    report.print(args.output);
    if failed {
        ExitCode::from(2)
    } else if report.errors > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Every check over the model.
fn analyze(mesh: &Mesh) -> Vec<Finding> {
    let mut out = Vec::new();
    routes::check(mesh, &mut out);
    for vs in &mesh.virtual_services {
        matches::check(vs, &mut out);
    }
    conflicts::check(mesh, &mut out);
    conflicts::check_gateways(mesh, &mut out);
    subsets::check(mesh, &mut out);
    mtls::check(mesh, &mut out);
    tls::check(mesh, &mut out);
    authz::check(mesh, &mut out);
    sidecar::check(mesh, &mut out);
    injection::check(mesh, &mut out);
    gateways::check(mesh, &mut out);
    out
}

/// What could not be checked for lack of input, said so that silence is not read as a pass.
fn skipped(mesh: &Mesh) -> Vec<String> {
    let mut notes = Vec::new();
    let routes_somewhere = mesh.virtual_services.iter().any(|vs| !routes::destinations(&vs.spec).is_empty());
    if routes_somewhere && !mesh.knows_services() {
        notes.push(
            "destination hosts and ports were not checked: the input has no Service or ServiceEntry \
             (add them, or analyze the cluster)"
                .to_owned(),
        );
    }
    let selects = mesh.destination_rules.iter().any(|dr| !dr.spec.subsets.is_empty())
        || !mesh.authorization_policies.is_empty();
    if selects && !mesh.knows_workloads() {
        notes.push(
            "subsets and policy selectors were not checked against workloads: the input has no Pod, \
             Deployment (or other pod controller) or WorkloadEntry"
                .to_owned(),
        );
    }
    notes
}

/// One resource per kind, namespace and name, as `kubectl apply` leaves it: the last read wins
/// (a file's over the cluster's, which are read first). Returns a note for each resource
/// written twice in the files, which is likely a mistake.
fn keep_last_of_each(mesh: &mut Mesh) -> Vec<String> {
    fn keep_last<T>(list: &mut Vec<Obj<T>>, notes: &mut Vec<String>) {
        let mut seen = std::collections::BTreeMap::new();
        let mut keep = vec![true; list.len()];
        for (i, obj) in list.iter().enumerate().rev() {
            let key = (obj.subject.kind.clone(), obj.namespace.clone(), obj.name.clone());
            match seen.get(&key) {
                None => {
                    seen.insert(key, i);
                }
                Some(&kept) => {
                    keep[i] = false;
                    let kept: &Obj<T> = &list[kept];
                    if obj.subject.origin.is_some() {
                        notes.push(format!(
                            "{} is written again as {}; the last one is analyzed",
                            obj.subject, kept.subject
                        ));
                    }
                }
            }
        }
        let mut flags = keep.into_iter();
        list.retain(|_| flags.next().unwrap_or(true));
    }
    let mut notes = Vec::new();
    keep_last(&mut mesh.virtual_services, &mut notes);
    keep_last(&mut mesh.destination_rules, &mut notes);
    keep_last(&mut mesh.service_entries, &mut notes);
    keep_last(&mut mesh.sidecars, &mut notes);
    keep_last(&mut mesh.gateways, &mut notes);
    keep_last(&mut mesh.peer_authentications, &mut notes);
    keep_last(&mut mesh.authorization_policies, &mut notes);
    keep_last(&mut mesh.services, &mut notes);
    keep_last(&mut mesh.workloads, &mut notes);
    keep_last(&mut mesh.namespaces, &mut notes);
    notes.sort();
    notes
}

#[cfg(test)]
mod test_support {
    use super::finding::Finding;
    use super::model::Mesh;

    /// The model of a YAML text (which must read without input errors), indexed.
    pub fn mesh(text: &str) -> Mesh {
        let mut mesh = Mesh::new("istio-system");
        let mut findings = Vec::new();
        let errors = super::source::add_text(&mut mesh, text, None, &mut findings);
        assert!(errors.is_empty() && findings.is_empty(), "{errors:?} {findings:?}");
        mesh.index();
        mesh
    }

    /// `code Kind ns/name` of each finding, sorted.
    pub fn found(findings: &[Finding]) -> Vec<String> {
        let mut list: Vec<String> = findings.iter().map(|f| format!("{} {}", f.code, f.subject())).collect();
        list.sort();
        list
    }
}
