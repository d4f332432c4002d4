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
pub fn load(path: &Path, version: u64, previous: Option<&Snapshot>) -> Result<Snapshot, LoadError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| LoadError::Read { path: path.to_owned(), source })?;
    let invalid = |source| LoadError::Invalid { path: path.to_owned(), source };
    let parsed = config::parse(&text).map_err(invalid)?;
    Snapshot::compile(parsed, version, previous).map_err(invalid)
}

/// Watches `path` until the proxy drains, swapping in each valid change.
pub async fn watch(path: PathBuf, proxy: Arc<Proxy>) {
    let mut last = std::fs::read(&path).ok();
    let mut drain = proxy.drain.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
            _ = crate::drained(&mut drain) => return,
        }
        let Ok(bytes) = std::fs::read(&path) else { continue };
        if last.as_ref() == Some(&bytes) {
            continue;
        }
        last = Some(bytes);
        let current = proxy.config.load_full();
        match load(&path, current.version + 1, Some(&current)) {
            Ok(snapshot) => {
                tracing::info!(version = snapshot.version, "configuration reloaded");
                proxy.config.store(Arc::new(snapshot));
                proxy.ready.store(true, Ordering::Release);
            }
            Err(e) => tracing::error!("configuration rejected, keeping version {}: {e}", current.version),
        }
    }
}
