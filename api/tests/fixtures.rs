//! Every seed resource of the project and every example from Istio's reference documentation
//! loads without unknown fields, validates without errors, and round-trips: parse → serialize →
//! parse gives an equal value.

use std::path::{Path, PathBuf};

use trellis_api::load::load_str;
use trellis_api::validate::{Severity, validate};

fn seed_dir() -> PathBuf {
    // CI and developers have the steering repo's shared/ beside the clone.
    let dir = std::env::var_os("TRELLIS_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"))
        .join("examples/seed-resources");
    assert!(dir.is_dir(), "seed resources not found at {} (set TRELLIS_SHARED_DIR)", dir.display());
    dir
}

fn docs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/istio-docs")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    files
}

/// Loads, validates and round-trips every document of every file; returns the document count.
fn check_clean(files: &[PathBuf]) -> usize {
    let mut problems = Vec::new();
    let mut count = 0;
    for file in files {
        let text = std::fs::read_to_string(file).unwrap();
        for doc in load_str(&text) {
            let at = format!("{}:doc {}", file.display(), doc.index);
            let document = match &doc.outcome {
                Ok(d) => d,
                Err(e) => {
                    problems.push(format!("{at}: {e}"));
                    continue;
                }
            };
            count += 1;
            for field in &doc.unknown_fields {
                problems.push(format!("{at}: unknown field {field}"));
            }
            for finding in validate(&document.resource) {
                if finding.severity == Severity::Error {
                    problems.push(format!("{at}: {finding}"));
                }
            }
            let again = load_str(&document.to_yaml());
            assert_eq!(again.len(), 1, "{at}: round trip produced {} documents", again.len());
            match &again[0].outcome {
                Ok(back) => assert_eq!(back, document, "{at}: round trip changed the document"),
                Err(e) => problems.push(format!("{at}: round trip failed: {e}\n{}", document.to_yaml())),
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    count
}

#[test]
fn seed_resources_are_valid_and_round_trip() {
    let files = yaml_files(&seed_dir());
    assert!(files.len() >= 9, "expected the seed files, found {files:?}");
    assert!(check_clean(&files) >= 14);
}

#[test]
fn istio_documented_examples_are_valid_and_round_trip() {
    let files = yaml_files(&docs_dir());
    assert_eq!(files.len(), 8, "one fixture file per Istio kind: {files:?}");
    assert!(check_clean(&files) >= 70);
}

#[test]
fn json_round_trip_matches_yaml() {
    for file in yaml_files(&seed_dir()) {
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in load_str(&text) {
            let document = doc.outcome.unwrap();
            let json = serde_json::to_string_pretty(&document.to_json()).unwrap();
            let back = load_str(&json).remove(0).outcome.unwrap();
            assert_eq!(back, document, "{}", file.display());
        }
    }
}
