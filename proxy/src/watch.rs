//! The configuration file: loaded at start, then watched. A change is compiled whole and swapped
//! in atomically (connections keep going; each request reads the configuration current when it
//! arrives); a file that does not compile is rejected with its field and the old one stays.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

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
/// Each look asks for the file's metadata first and reads it only when that says it may have
/// changed: the read happens on the proxy's own thread, and a large file read four times a
/// second would hold up requests.
pub async fn watch(path: PathBuf, loaded: Vec<u8>, proxy: Arc<Proxy>) {
    // What is in force: a change made before this task first ran is still a change.
    let mut applied = Some(loaded);
    let mut pending: Option<Vec<u8>> = None;
    let mut drained = std::pin::pin!(proxy.drain.wait());
    let mut last_read: Option<LastRead> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
            _ = &mut drained => return,
        }
        let Ok(stamp) = std::fs::metadata(&path).map(|m| Stamp::of(&m)) else { continue };
        if pending.is_none() && last_read.as_ref().is_some_and(|last| last.covers(&stamp)) {
            continue;
        }
        let read_at = SystemTime::now();
        let Ok(bytes) = std::fs::read(&path) else { continue };
        last_read = Some(LastRead { stamp, at: read_at });
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
                proxy.access_log.follow(&snapshot, &proxy.metrics);
                proxy.metrics.follow_overrides(&snapshot.source);
                proxy.config.store(Arc::new(snapshot));
                proxy.ready.store(true, Ordering::Release);
            }
            Err(e) => tracing::error!("configuration rejected, keeping version {}: {e}", current.version),
        }
    }
}

/// What the file's metadata says about its contents: a change of file (a ConfigMap's symlink
/// swap), of size or of modification time.
#[derive(Debug, PartialEq, Eq)]
struct Stamp {
    device: u64,
    inode: u64,
    len: u64,
    modified: Option<SystemTime>,
}

impl Stamp {
    fn of(metadata: &std::fs::Metadata) -> Stamp {
        Stamp {
            device: metadata.dev(),
            inode: metadata.ino(),
            len: metadata.len(),
            modified: metadata.modified().ok(),
        }
    }
}

/// Writes this close to a read may carry the same modification time as the one before it
/// (file systems keep it at a coarse granularity): the file is read again until its last
/// write is older than this when it was read.
const TIMESTAMP_SLACK: Duration = Duration::from_secs(1);

/// The stamp the file had when it was last read, and when that was.
#[derive(Debug)]
struct LastRead {
    stamp: Stamp,
    at: SystemTime,
}

impl LastRead {
    /// Whether that read already saw the contents `now` stands for, so that the file need not
    /// be read again (it is looked at four times a second, on the proxy's own thread).
    fn covers(&self, now: &Stamp) -> bool {
        *now == self.stamp && now.modified.is_some_and(|modified| modified + TIMESTAMP_SLACK < self.at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(len: u64, modified: SystemTime) -> Stamp {
        Stamp { device: 1, inode: 2, len, modified: Some(modified) }
    }

    #[test]
    fn a_file_is_read_again_only_when_it_may_have_changed() {
        let written = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let long_after = LastRead { stamp: stamp(10, written), at: written + Duration::from_secs(5) };
        assert!(
            long_after.covers(&stamp(10, written)),
            "nothing changed since a read well after the last write"
        );
        assert!(!long_after.covers(&stamp(11, written)), "size changed");
        assert!(!long_after.covers(&stamp(10, written + Duration::from_millis(1))), "modified again");
        assert!(!long_after.covers(&Stamp { inode: 3, ..stamp(10, written) }), "another file (symlink swap)");
        assert!(!long_after.covers(&Stamp { modified: None, ..stamp(10, written) }), "no modification time");
        // Read right after a write: a second write of the same size may keep the same time.
        let right_after = LastRead { stamp: stamp(10, written), at: written + Duration::from_millis(3) };
        assert!(!right_after.covers(&stamp(10, written)));
    }
}
