//! Embeds the Helm chart (charts/trellis) in the `trellis` binary, so that `trellis install`
//! renders the same templates as `helm install` without a checkout: writes
//! `$OUT_DIR/chart_files.rs`, a list of `(path in the chart, include_str!(file))` for Chart.yaml,
//! values.yaml and every file under templates/ and crds/.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let chart = manifest_dir.join("../charts/trellis");
    println!("cargo:rerun-if-changed={}", chart.display());

    let mut files = Vec::new();
    for top in ["Chart.yaml", "values.yaml"] {
        files.push((top.to_owned(), chart.join(top)));
    }
    for dir in ["templates", "crds"] {
        collect(&chart, &chart.join(dir), &mut files);
    }
    files.sort();

    let mut out = String::from("&[\n");
    for (relative, absolute) in &files {
        let absolute = absolute.canonicalize().expect("chart file");
        out.push_str(&format!("    ({relative:?}, include_str!({:?})),\n", absolute.display().to_string()));
    }
    out.push_str("]\n");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    fs::write(out_dir.join("chart_files.rs"), out).expect("write chart_files.rs");
}

fn collect(chart: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(chart, &path, files);
        } else if path.file_name().is_some_and(|n| n != "README.md") {
            let relative = path.strip_prefix(chart).expect("under the chart");
            files.push((relative.to_string_lossy().into_owned(), path.clone()));
        }
    }
}
