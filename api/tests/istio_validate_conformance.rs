//! `trellis validate` against Istio's own test data (`shared/istio-conformance`, see its README),
//! through the same library call the command makes (`check_text`): a document exits 0 when it has
//! no errors, 1 otherwise.
//!
//! - `valid/`, `mixed/`, `other-kinds/`: Istio accepts each, so must Trellis (kinds Trellis does
//!   not check, such as Deployment or WasmPlugin, are passed over or warned about, never errors).
//! - `invalid/`: Istio rejects each, so must Trellis.
//!
//! Any disagreement fails the test unless `istio_validate_differences.txt` lists it (`path |
//! reason`, the path relative to the corpus); a listed case that agrees now fails too, so the list
//! only shrinks as gaps close.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use trellis_api::check::{UnknownFields, check_text};
use trellis_api::validate::Severity;

fn corpus_dir() -> PathBuf {
    let dir = std::env::var_os("TRELLIS_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"))
        .join("istio-conformance");
    assert!(dir.is_dir(), "conformance corpus not found at {} (set TRELLIS_SHARED_DIR)", dir.display());
    dir
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap_or_else(|e| panic!("{}: {e}", d.display())).path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// `path | reason` lines; `#` starts a comment.
fn differences() -> BTreeMap<String, String> {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/istio_validate_differences.txt");
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let mut listed = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (path, reason) = line
            .split_once(" | ")
            .unwrap_or_else(|| panic!("{}:{}: expected `path | reason`", file.display(), n + 1));
        assert!(!reason.trim().is_empty(), "{}:{}: a difference needs its reason", file.display(), n + 1);
        assert!(
            listed.insert(path.trim().to_owned(), reason.trim().to_owned()).is_none(),
            "{}:{}: {path} listed twice",
            file.display(),
            n + 1
        );
    }
    listed
}

/// An Istio kind Trellis does not read gets one warning saying so, naming the kind, per document.
fn ignored_kind_warned_once(relative: &str, checked: &trellis_api::check::Checked) {
    for kind in ["WasmPlugin", "ProxyConfig", "WorkloadGroup"] {
        if relative.contains(&format!("-{kind}-")) {
            let warnings: Vec<_> =
                checked.problems.iter().filter(|p| p.severity == Severity::Warning).collect();
            assert!(
                warnings.len() == 1
                    && warnings[0].message.contains(kind)
                    && warnings[0].message.contains("no effect"),
                "{relative}: expected one warning that Trellis ignores {kind}, got {warnings:?}"
            );
        }
    }
}

#[test]
fn trellis_validate_agrees_with_istio_on_its_test_data() {
    let corpus = corpus_dir();
    let mut cases = 0;
    let mut agree = 0;
    let mut disagreements = BTreeMap::new();
    for (folder, istio_accepts) in [
        ("valid", true),
        ("mixed", true),
        ("other-kinds", true),
        ("invalid/crd", false),
        ("invalid/from-testdata", false),
    ] {
        let files = yaml_files(&corpus.join(folder));
        assert!(!files.is_empty(), "no documents in {folder}/");
        for file in files {
            cases += 1;
            let relative = file.strip_prefix(&corpus).unwrap_or(&file).display().to_string();
            let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{relative}: {e}"));
            let checked = check_text(&text, UnknownFields::Warn);
            let errors: Vec<String> = checked
                .problems
                .iter()
                .filter(|p| p.severity == Severity::Error)
                .map(ToString::to_string)
                .collect();
            let trellis_accepts = errors.is_empty();
            if folder == "other-kinds" {
                ignored_kind_warned_once(&relative, &checked);
            }
            if trellis_accepts == istio_accepts {
                agree += 1;
            } else if istio_accepts {
                disagreements.insert(relative, format!("refused: {}", errors.join("; ")));
            } else {
                disagreements.insert(relative, "accepted".to_owned());
            }
        }
    }
    let listed = differences();
    eprintln!("{cases} cases, {agree} agree, {} disagree", disagreements.len());
    let unlisted: Vec<String> = disagreements
        .iter()
        .filter(|(path, _)| !listed.contains_key(*path))
        .map(|(path, what)| format!("{path} | {what}"))
        .collect();
    let stale: Vec<&String> = listed.keys().filter(|path| !disagreements.contains_key(*path)).collect();
    assert!(
        unlisted.is_empty() && stale.is_empty(),
        "{} disagreements not in istio_validate_differences.txt:\n{}\n\n{} listed cases that agree now (delete their lines):\n{stale:#?}",
        unlisted.len(),
        unlisted.join("\n"),
        stale.len()
    );
}
