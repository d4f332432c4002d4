//! `trellis validate` as users run it: the real binary, real files, exit codes and output.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const VALID: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: orders\n  namespace: production\nspec:\n  hosts: [orders]\n  http:\n  - route:\n    - destination: {host: orders, subset: v1}\n      weight: 90\n    - destination: {host: orders, subset: v2}\n      weight: 10\n";
const BAD_WEIGHTS: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: orders\n  namespace: production\nspec:\n  hosts: [orders]\n  http:\n  - route:\n    - destination: {host: orders, subset: v1}\n      weight: 100\n  - route:\n    - destination: {host: orders, subset: v1}\n      weight: 0\n    - destination: {host: orders, subset: v2}\n      weight: 0\n";
const UNKNOWN_FIELD: &str = "apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata: {name: orders}\nspec:\n  host: orders\n  subsets:\n  - name: v1\n    lables: {version: v1}\n";

fn trellis(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run trellis");
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn valid_files_exit_zero_with_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "vs.yaml", VALID);
    let out = trellis(&["validate", "-f", &file], None);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(stdout(&out), "valid: 1 file(s), 1 document(s), 0 error(s), 0 warning(s)\n");
}

#[test]
fn invalid_files_exit_one_with_one_line_per_problem() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "a.yaml", VALID);
    let bad = write(dir.path(), "b.yaml", &format!("{VALID}---\n{BAD_WEIGHTS}"));
    let out = trellis(&["validate", "-f", &good, &bad], None);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stdout(&out),
        format!(
            "{bad}:doc 2: VirtualService production/orders: spec.http[1].route: weights sum to 0; with several destinations, at least one needs a weight\n\
             INVALID: 2 file(s), 3 document(s), 1 error(s), 0 warning(s)\n"
        )
    );
}

#[test]
fn directories_are_searched_for_config_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("nested")).unwrap();
    write(dir.path(), "a.yaml", VALID);
    write(&dir.path().join("nested"), "b.yml", VALID);
    write(dir.path(), "notes.txt", "not yaml at all: [");
    let out = trellis(&["validate", "-f", &dir.path().display().to_string()], None);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("2 file(s), 2 document(s)"), "{}", stdout(&out));
}

#[test]
fn strict_turns_unknown_fields_into_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "dr.yaml", UNKNOWN_FIELD);
    let lenient = trellis(&["validate", "-f", &file], None);
    assert_eq!(lenient.status.code(), Some(0));
    assert!(
        stdout(&lenient).contains("DestinationRule orders: spec.subsets[0].lables: warning: unknown field")
    );
    let strict = trellis(&["validate", "--strict", "-f", &file], None);
    assert_eq!(strict.status.code(), Some(1));
    assert!(stdout(&strict).contains("DestinationRule orders: spec.subsets[0].lables: unknown field\n"));
}

#[test]
fn json_output_is_machine_readable() {
    let out = trellis(&["validate", "-o", "json", "-f", "-"], Some(BAD_WEIGHTS));
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON output");
    assert_eq!(report["errors"], 1);
    assert_eq!(report["documents"], 1);
    let finding = &report["findings"][0];
    assert_eq!(finding["file"], "-");
    assert_eq!(finding["doc"], 1);
    assert_eq!(finding["severity"], "error");
    assert_eq!(finding["field"], "spec.http[1].route");
    assert_eq!(
        finding["message"],
        "weights sum to 0; with several destinations, at least one needs a weight"
    );
    assert_eq!(finding["resource"]["kind"], "VirtualService");
    assert_eq!(finding["resource"]["namespace"], "production");
}

#[test]
fn io_and_usage_errors_exit_two() {
    let missing = trellis(&["validate", "-f", "/nonexistent/trellis.yaml"], None);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/trellis.yaml"));

    let no_files = trellis(&["validate"], None);
    assert_eq!(no_files.status.code(), Some(2));

    let bad_format = trellis(&["validate", "-o", "xml", "-f", "x.yaml"], None);
    assert_eq!(bad_format.status.code(), Some(2));

    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("bin.yaml");
    std::fs::write(&binary, [0xff, 0xfe, 0x00, 0x41]).unwrap();
    let out = trellis(&["validate", "-f", &binary.display().to_string()], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not UTF-8 text"));
}

#[test]
fn an_unreadable_file_does_not_hide_findings_in_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(dir.path(), "bad.yaml", BAD_WEIGHTS);
    let out = trellis(&["validate", "-f", "/nonexistent.yaml", &bad], None);
    assert_eq!(out.status.code(), Some(2), "I/O errors win over invalid documents");
    assert!(stdout(&out).contains("weights sum to 0"));
}

#[test]
fn a_mesh_config_is_checked_with_its_access_log_format() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(
        dir.path(),
        "mesh.yaml",
        "accessLogFile: /dev/stdout\naccessLogFormat: '%DURATION% %REQ(:PATH)%'\n",
    );
    let out = trellis(&["validate", "--mesh-config", &good], None);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(stdout(&out), "valid: 1 file(s), 1 document(s), 0 error(s), 0 warning(s)\n");
    let bad = write(
        dir.path(),
        "bad.yaml",
        "accessLogFile: /dev/stdout\naccessLogFormat: '%DURATION% %DYNAMIC_METADATA(a)%'\naccesLogEncoding: JSON\n",
    );
    let vs = write(dir.path(), "vs.yaml", VALID);
    let out = trellis(&["validate", "-f", &vs, "--mesh-config", &bad], None);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert_eq!(
        stdout(&out),
        format!(
            "{bad}:doc 1: accesLogEncoding: warning: unknown field\n\
             {bad}:doc 1: accessLogFormat: \"%DYNAMIC_METADATA(a)%\": DYNAMIC_METADATA is an Envoy operator Trellis does not support\n\
             INVALID: 2 file(s), 2 document(s), 1 error(s), 1 warning(s)\n"
        )
    );
    let json = write(
        dir.path(),
        "json.yaml",
        "accessLogFile: /dev/stdout\naccessLogEncoding: JSON\naccessLogFormat: '%DURATION%'\n",
    );
    let out = trellis(&["validate", "--mesh-config", &json], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("accessLogFormat: under JSON encoding, a JSON object"), "{}", stdout(&out));
}
