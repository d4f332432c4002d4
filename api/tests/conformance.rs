//! Istio's own test data (`shared/istio-conformance`): the kinds Trellis reads beyond the core
//! eight (RequestAuthentication) are read and validated, not refused as unknown. Accept/reject
//! agreement over the whole corpus is `istio_validate_conformance.rs`.

use std::path::{Path, PathBuf};

use trellis_api::check::{UnknownFields, check_text};
use trellis_api::resource::Kind;
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
            let path = entry.unwrap().path();
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

fn name(file: &Path) -> String {
    file.file_name().unwrap().to_string_lossy().into_owned()
}

/// RequestAuthentication is read and enforced: its documents load as that kind, without errors
/// and without unknown fields (warnings, e.g. for `targetRefs`, which sidecars ignore, are fine). The other kinds of this folder (Telemetry, EnvoyFilter,
/// WasmPlugin, ProxyConfig, WorkloadGroup) are not read by Trellis.
#[test]
fn request_authentications_are_read_and_validated() {
    let files: Vec<PathBuf> = yaml_files(&corpus_dir().join("other-kinds"))
        .into_iter()
        .filter(|f| name(f).contains("-RequestAuthentication-"))
        .collect();
    assert!(files.len() >= 5, "expected Istio's RequestAuthentications, found {files:?}");
    let mut problems = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let checked = check_text(&text, UnknownFields::Reject);
        for p in checked.problems.iter().filter(|p| p.severity == Severity::Error) {
            problems.push(format!("{}: {p}", name(file)));
        }
        for doc in &checked.accepted {
            assert_eq!(doc.resource.kind(), Kind::RequestAuthentication, "{}", name(file));
        }
        if checked.accepted.len() != checked.documents {
            problems.push(format!("{}: not accepted", name(file)));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
