//! Noticing that a few small files changed, by looking at them once a second: device, inode,
//! size and modification time of each. Polling a handful of `stat`s costs nothing and works
//! the same on every filesystem, including the symlink swaps of a mounted Secret or ConfigMap
//! (`stat` follows the link, so the new file's inode shows).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How often the files are looked at.
pub const POLL: Duration = Duration::from_secs(1);

/// The largest file read: CA material and token files are a few kilobytes; a file this large
/// is a mistake, and reading it every change would be costly.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// A write this recent may hide another in the same clock tick (same size, same time), so the
/// files are read again until it is older.
const RECENT: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: Option<SystemTime>,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp { dev: meta.dev(), ino: meta.ino(), len: meta.len(), mtime: meta.modified().ok() })
}

/// A set of files and what they looked like.
#[derive(Debug)]
pub struct Watched {
    paths: Vec<PathBuf>,
    last: Vec<Option<Stamp>>,
    /// Changed at the last look; read once they hold still, so that a copy of several files
    /// in turn is not read half-done (and reported as an error) on the way.
    pending: bool,
    /// The look at which reading last failed, so that one bad state is reported once.
    failed: Option<Vec<Option<Stamp>>>,
}

impl Watched {
    /// Starts from the files as they are now (just read by the caller).
    pub fn new(paths: Vec<PathBuf>) -> Watched {
        let last = paths.iter().map(|p| stamp(p)).collect();
        Watched { paths, last, pending: false, failed: None }
    }

    /// Whether to read the files again now.
    pub fn due(&mut self) -> bool {
        let now: Vec<Option<Stamp>> = self.paths.iter().map(|p| stamp(p)).collect();
        if now != self.last {
            self.last = now;
            self.pending = true;
            return false;
        }
        let recent = self.last.iter().flatten().any(|s| {
            s.mtime.and_then(|t| SystemTime::now().duration_since(t).ok()).is_some_and(|age| age < RECENT)
        });
        std::mem::take(&mut self.pending) || recent
    }

    /// Records that reading the files as they are failed; true the first time for this state
    /// (report it), false when the same files fail again.
    pub fn failed(&mut self) -> bool {
        let first = self.failed.as_ref() != Some(&self.last);
        self.failed = Some(self.last.clone());
        first
    }

    /// A file over [`MAX_FILE_BYTES`], if any, with its size.
    pub fn oversized(&self) -> Option<(&Path, u64)> {
        self.paths
            .iter()
            .zip(&self.last)
            .find_map(|(p, s)| s.filter(|s| s.len > MAX_FILE_BYTES).map(|s| (p.as_path(), s.len)))
    }
}

/// What [`follow`] does with one file set: read it, tell whether a reading is news, and report
/// what went right or wrong.
pub trait Follow: Send + 'static {
    type Value: Send + Sync + 'static;
    type Error: Send;
    fn read(&mut self, watched: &Watched) -> Result<Self::Value, Self::Error>;
    fn same(&self, old: &Self::Value, new: &Self::Value) -> bool;
    fn accepted(&mut self, value: &Self::Value);
    /// Called once per bad state of the files; the last good value stays published.
    fn refused(&mut self, error: Self::Error);
}

/// Publishes on `publish` each new reading of the files once they changed and held still,
/// until nobody listens any more. The caller read them once already (`Watched::new`).
pub fn follow<F: Follow>(
    mut watched: Watched,
    publish: tokio::sync::watch::Sender<std::sync::Arc<F::Value>>,
    mut files: F,
) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(POLL).await;
            if publish.is_closed() {
                return;
            }
            if !watched.due() {
                continue;
            }
            match files.read(&watched) {
                Ok(value) => {
                    if !files.same(&publish.borrow(), &value) {
                        files.accepted(&value);
                        publish.send_replace(std::sync::Arc::new(value));
                    }
                }
                Err(e) => {
                    if watched.failed() {
                        files.refused(e);
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_read_once_it_holds_still() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "one").unwrap();
        let mut watched = Watched::new(vec![path.clone()]);
        // Freshly written: read again while the write is recent.
        assert!(watched.due());
        std::fs::write(&path, "three").unwrap();
        assert!(!watched.due(), "changed at this look: wait for the next");
        assert!(watched.due(), "held still: read");
        assert!(watched.failed(), "a new failure is reported");
        assert!(!watched.failed(), "the same state failing again is not");
        std::fs::remove_file(&path).unwrap();
        assert!(!watched.due());
        assert!(watched.due(), "a removal is a change too");
    }

    #[test]
    fn oversized_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        std::fs::write(&path, vec![b'x'; (MAX_FILE_BYTES + 1) as usize]).unwrap();
        let watched = Watched::new(vec![path.clone()]);
        assert_eq!(watched.oversized(), Some((path.as_path(), MAX_FILE_BYTES + 1)));
    }
}
