//! The configuration file: loaded at start, then watched. A change is compiled whole and swapped
//! in atomically (connections keep going; each request reads the configuration current when it
//! arrives); a file that does not compile is rejected with its field and the old one stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::Proxy;
use crate::config::{self, ConfigError, Snapshot};

/// How often the file is looked at. Polling survives the way Kubernetes updates mounted
/// ConfigMaps (a symlink swap), which file events often miss.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Invalid { path: PathBuf, source: ConfigError },
}

/// Reads and compiles the file.
/// Returns the bytes it compiled too: the watcher compares later reads with them.
pub fn load(
    path: &Path,
    version: u64,
    previous: Option<&Snapshot>,
) -> Result<(Snapshot, Vec<u8>), LoadError> {
    let bytes = std::fs::read(path).map_err(|source| LoadError::Read { path: path.to_owned(), source })?;
    Ok((compile(path, &bytes, version, previous)?, bytes))
}

fn compile(
    path: &Path,
    bytes: &[u8],
    version: u64,
    previous: Option<&Snapshot>,
) -> Result<Snapshot, LoadError> {
    let invalid = |source| LoadError::Invalid { path: path.to_owned(), source };
    let text = std::str::from_utf8(bytes).map_err(|e| {
        invalid(ConfigError { field: "(file)".to_owned(), message: format!("not UTF-8: {e}") })
    })?;
    let parsed = config::parse(text).map_err(invalid)?;
    Snapshot::compile(parsed, version, previous).map_err(invalid)
}

/// Watches `path` until the proxy drains, swapping in each valid change. A change is applied
/// once two looks in a row see the same bytes, so that a file caught half-written (by a writer
/// that does not rename into place) is never taken for a configuration that happens to parse.
pub async fn watch(path: PathBuf, loaded: Vec<u8>, proxy: Arc<Proxy>) {
    // What is in force: a change made before this task first ran is still a change.
    let mut applied = Some(loaded);
    let mut pending: Option<Vec<u8>> = None;
    let mut drained = std::pin::pin!(proxy.drain.wait());
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
            _ = &mut drained => return,
        }
        let Ok(bytes) = std::fs::read(&path) else { continue };
        if applied.as_ref() == Some(&bytes) {
            pending = None;
            continue;
        }
        if pending.as_ref() != Some(&bytes) {
            pending = Some(bytes);
            continue;
        }
        pending = None;
        let current = proxy.config.load_full();
        let result = compile(&path, &bytes, current.version + 1, Some(&current));
        applied = Some(bytes);
        match result {
            Ok(snapshot) => {
                tracing::info!(version = snapshot.version, "configuration reloaded");
                proxy.config.store(Arc::new(snapshot));
                proxy.ready.store(true, Ordering::Release);
            }
            Err(e) => tracing::error!("configuration rejected, keeping version {}: {e}", current.version),
        }
    }
}
