//! `trellis validate -f PATH...`: like `istioctl validate`, one line per problem, a summary, and
//! an exit code scripts can use (0 valid, 1 invalid, 2 usage or I/O error). `--mesh-config FILE`
//! checks a mesh config too (Istio's `mesh` ConfigMap key, trellisd's `--mesh-config`): its
//! validation errors (such as an `accessLogFormat` operator the proxy does not fill), what
//! Trellis does not do, and unknown fields.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Serialize;
use trellis_api::check::{Problem, UnknownFields, check_text};
use trellis_api::mesh::MeshConfig;
use trellis_api::validate::Severity;

#[derive(clap::Args)]
pub struct Args {
    /// Files or directories to check (directories are searched for .yaml, .yml and .json
    /// files); `-` reads standard input.
    #[arg(short = 'f', long = "filename", required_unless_present = "mesh_config", num_args = 1..)]
    paths: Vec<PathBuf>,
    /// A mesh config (YAML, the `mesh` key of Istio's ConfigMap) to check as well.
    #[arg(long = "mesh-config")]
    mesh_config: Option<PathBuf>,
    /// Treat fields that Istio's API does not define as errors instead of warnings.
    #[arg(long)]
    strict: bool,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Text)]
    output: Format,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Text,
    Json,
}

/// A problem and the file it is in.
#[derive(Serialize)]
struct Finding {
    file: String,
    #[serde(flatten)]
    problem: Problem,
}

#[derive(Serialize)]
struct Report {
    files: usize,
    documents: usize,
    errors: usize,
    warnings: usize,
    findings: Vec<Finding>,
}

pub fn run(args: &Args) -> ExitCode {
    let unknown = if args.strict { UnknownFields::Reject } else { UnknownFields::Warn };
    let mut report = Report { files: 0, documents: 0, errors: 0, warnings: 0, findings: Vec::new() };
    let mut io_failed = false;
    for input in expand(&args.paths, &mut io_failed) {
        let text = match crate::input::read_input(&input) {
            Ok(text) => text,
            Err(message) => {
                eprintln!("trellis validate: {}: {message}", input.display());
                io_failed = true;
                continue;
            }
        };
        let checked = check_text(&text, unknown);
        report.files += 1;
        report.documents += checked.documents;
        report.errors += checked.errors();
        report.warnings += checked.warnings();
        let file = input.display().to_string();
        report
            .findings
            .extend(checked.problems.into_iter().map(|problem| Finding { file: file.clone(), problem }));
    }
    if let Some(path) = &args.mesh_config {
        match crate::input::read_input(path) {
            Ok(text) => {
                let problems = check_mesh_config(&text, unknown);
                report.files += 1;
                report.documents += 1;
                for problem in problems {
                    match problem.severity {
                        Severity::Error => report.errors += 1,
                        Severity::Warning => report.warnings += 1,
                    }
                    report.findings.push(Finding { file: path.display().to_string(), problem });
                }
            }
            Err(message) => {
                eprintln!("trellis validate: {}: {message}", path.display());
                io_failed = true;
            }
        }
    }
    print_report(&report, args.output);
    if io_failed {
        ExitCode::from(2)
    } else if report.errors > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// The problems of a mesh config, each on its field (`accessLogFormat`, `defaultConfig.statusPort`).
fn check_mesh_config(text: &str, unknown: UnknownFields) -> Vec<Problem> {
    let problem = |severity, field: &str, message: &str| Problem {
        doc: 1,
        item: None,
        line: None,
        column: None,
        resource: None,
        severity,
        field: field.to_owned(),
        message: message.to_owned(),
    };
    let (mesh, unknown_fields) = match MeshConfig::from_yaml(text) {
        Ok(parsed) => parsed,
        Err(e) => return vec![problem(Severity::Error, "", &e.to_string())],
    };
    let unknown_severity = match unknown {
        UnknownFields::Warn => Severity::Warning,
        UnknownFields::Reject => Severity::Error,
    };
    // `MeshConfig` reports `field: message`.
    let split = |line: &str| match line.split_once(": ") {
        Some((field, message)) if !field.contains(' ') => (field.to_owned(), message.to_owned()),
        _ => (String::new(), line.to_owned()),
    };
    let mut problems: Vec<Problem> =
        unknown_fields.iter().map(|field| problem(unknown_severity, field, "unknown field")).collect();
    for (severity, lines) in [(Severity::Error, mesh.validate()), (Severity::Warning, mesh.warnings())] {
        for line in lines {
            let (field, message) = split(&line);
            problems.push(problem(severity, &field, &message));
        }
    }
    problems
}

/// Expands directories into the config files they contain, in a stable order.
fn expand(paths: &[PathBuf], io_failed: &mut bool) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" || !path.is_dir() {
            files.push(path.clone());
            continue;
        }
        let mut found = Vec::new();
        if let Err(e) = walk(path, &mut found) {
            eprintln!("trellis validate: {}: {e}", path.display());
            *io_failed = true;
        }
        if found.is_empty() {
            eprintln!("trellis validate: {}: no .yaml, .yml or .json files found", path.display());
            *io_failed = true;
        }
        found.sort();
        files.extend(found);
    }
    files
}

fn walk(dir: &Path, found: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, found)?;
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml" || e == "json") {
            found.push(path);
        }
    }
    Ok(())
}

fn print_report(report: &Report, format: Format) {
    let mut out = std::io::stdout().lock();
    // A closed pipe (`trellis validate ... | head`) is not worth a panic or an error message.
    let _ = match format {
        Format::Json => serde_json::to_writer_pretty(&mut out, report)
            .map_err(std::io::Error::other)
            .and_then(|()| writeln!(out)),
        Format::Text => write_text(&mut out, report),
    };
}

fn write_text(out: &mut impl Write, report: &Report) -> std::io::Result<()> {
    for finding in &report.findings {
        writeln!(out, "{}:{}", finding.file, finding.problem)?;
    }
    let verdict = if report.errors == 0 { "valid" } else { "INVALID" };
    writeln!(
        out,
        "{verdict}: {} file(s), {} document(s), {} error(s), {} warning(s)",
        report.files, report.documents, report.errors, report.warnings
    )
}
