//! `--root-cert-file`: the root written whenever the CA's root changes, by rename, so that a
//! reader never sees half a file.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::ca::material::{self, CurrentCa};
use crate::ca::metrics::CaMetrics;

/// How soon a failed write is tried again.
const RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// Writes the current root now (an error is a start-up error: nobody could trust this CA), then
/// again after every change of root.
pub fn keep_root_file(path: PathBuf, mut current: CurrentCa, metrics: CaMetrics) -> Result<(), String> {
    let mut written = current.borrow_and_update().root_pem().to_owned();
    write_atomically(&path, &written).map_err(|e| format!("--root-cert-file {}: {e}", path.display()))?;
    tokio::spawn(async move {
        loop {
            let root = current.borrow_and_update().root_pem().to_owned();
            if root != written {
                match write_atomically(&path, &root) {
                    Ok(()) => {
                        tracing::info!(file = %path.display(), "CA: new root written");
                        written = root;
                    }
                    Err(e) => {
                        tracing::error!(file = %path.display(), "CA: cannot write the new root: {e}");
                        metrics.publish_error("file");
                        // Tried again a little later, or at the next change.
                        tokio::select! {
                            _ = tokio::time::sleep(RETRY) => {}
                            changed = current.changed() => {
                                if changed.is_err() {
                                    tokio::time::sleep(RETRY).await;
                                }
                            }
                        }
                        continue;
                    }
                }
            }
            if !material::changed(&mut current).await {
                return;
            }
        }
    });
    Ok(())
}

/// Writes `text` to a temporary file beside `path` and renames it over `path`.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let name = path.file_name().ok_or_else(|| std::io::Error::other("not a file name"))?;
    let tmp = path.with_file_name(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
