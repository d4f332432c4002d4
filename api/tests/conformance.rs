//! Istio's own test data (`shared/istio-conformance`): what Istio's validation accepts, Trellis
//! accepts; what it rejects, Trellis rejects; and the kinds Trellis reads beyond the core eight
//! (RequestAuthentication) are read and validated, not refused as unknown.

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

/// Documents of `valid/` Trellis refuses today, each with the reason: none is a security policy.
const KNOWN_REFUSED: &[(&str, &str)] = &[
    (
        "virtualservice_destinationhosts.yaml--13-VirtualService-reviews-bookinfo-eu-wildcard.yaml",
        "wildcard destination hosts are refused",
    ),
    (
        "virtualservice_jwtclaimroute.yaml--1-VirtualService-foo.yaml",
        "@request.auth.claims header matches (gateway-only JWT routing) are not read",
    ),
    ("serviceentry-valid.yaml--1-ServiceEntry-full.yaml", "a non-string entry in addresses"),
    (
        "serviceentry-valid.yaml--4-ServiceEntry-partial-wildcard.yaml",
        "partial wildcard hosts (\"*x\") are refused",
    ),
    ("workloadentry-valid.yaml--3-WorkloadEntry-uds-abstract.yaml", "abstract unix sockets are refused"),
    ("ingress-gateway__configs.yaml--1-ServiceEntry-BACKEND.yaml", "upper-case object names are refused"),
];

/// Documents of `invalid/` Trellis accepts today, each with the reason: none is an
/// AuthorizationPolicy or RequestAuthentication.
const KNOWN_ACCEPTED: &[(&str, &str)] = &[
    ("destinationrule--1-bookinfo-ratings.yaml", "DestinationRule checks not mirrored yet"),
    ("destinationrule--2-bookinfo-ratings.yaml", "DestinationRule checks not mirrored yet"),
    ("destinationrule--3-bookinfo-ratings.yaml", "DestinationRule checks not mirrored yet"),
    ("peerauth--4-empty-port-level.yaml", "an empty portLevelMtls reads as an absent one"),
    ("serviceentry--11-none-with-endpoints.yaml", "ServiceEntry resolution NONE with endpoints is accepted"),
    (
        "serviceentry--6-bad-cidr-resolution.yaml",
        "ServiceEntry CIDR addresses with DNS resolution are accepted",
    ),
    ("workloadentry--3-bad-uds-dir.yaml", "unix socket paths are not checked for a file name"),
    ("workloadentry--7-bad-port-name.yaml", "WorkloadEntry port names are not checked"),
];

fn known(list: &[(&str, &str)], file: &str) -> bool {
    list.iter().any(|(suffix, _)| file.ends_with(suffix))
}

fn name(file: &Path) -> String {
    file.file_name().unwrap().to_string_lossy().into_owned()
}

/// The errors `trellis validate` reports for a file (what makes it exit 1).
fn errors(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap();
    let checked = check_text(&text, UnknownFields::Warn);
    checked.problems.iter().filter(|p| p.severity == Severity::Error).map(ToString::to_string).collect()
}

#[test]
fn every_document_istio_accepts_is_accepted() {
    let files = yaml_files(&corpus_dir().join("valid"));
    assert!(files.len() >= 400, "expected Istio's valid documents, found {}", files.len());
    let refused: Vec<String> = files
        .iter()
        .filter(|f| !known(KNOWN_REFUSED, &name(f)))
        .filter_map(|f| {
            let errors = errors(f);
            (!errors.is_empty()).then(|| format!("{}:\n  {}", name(f), errors.join("\n  ")))
        })
        .collect();
    assert!(refused.is_empty(), "{} valid documents refused:\n{}", refused.len(), refused.join("\n"));
    // A known gap that closed: take it off the list.
    let closed: Vec<&str> = KNOWN_REFUSED
        .iter()
        .filter(|(suffix, _)| files.iter().any(|f| name(f).ends_with(suffix) && errors(f).is_empty()))
        .map(|(suffix, _)| *suffix)
        .collect();
    assert!(closed.is_empty(), "now accepted, remove from KNOWN_REFUSED: {closed:?}");
}

#[test]
fn every_document_istio_rejects_is_rejected() {
    let files = yaml_files(&corpus_dir().join("invalid"));
    assert!(files.len() >= 50, "expected Istio's invalid documents, found {}", files.len());
    let accepted: Vec<String> = files.iter().filter(|f| errors(f).is_empty()).map(|f| name(f)).collect();
    let unexpected: Vec<&String> = accepted.iter().filter(|f| !known(KNOWN_ACCEPTED, f)).collect();
    assert!(unexpected.is_empty(), "{} invalid documents accepted:\n{unexpected:#?}", unexpected.len());
    let closed: Vec<&str> = KNOWN_ACCEPTED
        .iter()
        .filter(|(suffix, _)| !accepted.iter().any(|f| f.ends_with(suffix)))
        .map(|(suffix, _)| *suffix)
        .collect();
    assert!(closed.is_empty(), "now rejected, remove from KNOWN_ACCEPTED: {closed:?}");
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
