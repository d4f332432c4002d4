//! Where lines go: a bounded byte buffer that requests append to under a short lock, and a
//! thread of the sink's own that swaps it out and writes it to the file. A request never waits
//! for the file: when the buffer is full (the file is slow, a pipe nobody reads, a disk that
//! hangs) its line is dropped and counted. The writer opens the file itself, so that opening
//! a FIFO without a reader blocks only the writer, and starts with the first line, so that a
//! configuration that is only compiled (checked, fuzzed, replaced before any request) opens
//! nothing.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use prometheus_client::metrics::counter::Counter;

/// Bytes of lines waiting for the writer; past this, lines are dropped.
pub const BUFFER_BYTES: usize = 1 << 20;

pub struct Sink {
    pub path: String,
    shared: Arc<Shared>,
    writer: std::sync::Once,
}

struct Shared {
    pending: Mutex<Pending>,
    ready: Condvar,
    closed: AtomicBool,
    /// The proxy's `trellis_access_log_dropped_total`, once the sink's config is in force; drops
    /// before that are held in `early_drops`.
    dropped: OnceLock<Counter>,
    early_drops: AtomicU64,
    /// Lines written (tests wait on it).
    written: AtomicU64,
    capacity: usize,
}

impl Sink {
    /// A sink appending to `path`, with its writer thread.
    pub fn open(path: &str) -> Arc<Sink> {
        Sink::with_capacity(path, BUFFER_BYTES)
    }

    pub fn with_capacity(path: &str, capacity: usize) -> Arc<Sink> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending { bytes: Vec::with_capacity(capacity.min(64 << 10)), lines: 0 }),
            ready: Condvar::new(),
            closed: AtomicBool::new(false),
            dropped: OnceLock::new(),
            early_drops: AtomicU64::new(0),
            written: AtomicU64::new(0),
            capacity,
        });
        Arc::new(Sink { path: path.to_owned(), shared, writer: std::sync::Once::new() })
    }

    fn start_writer(&self) {
        let writer = self.shared.clone();
        let path = self.path.clone();
        let spawned = std::thread::Builder::new()
            .name("access-log".to_owned())
            .spawn(move || write_loop(&path, &writer));
        if let Err(e) = spawned {
            tracing::warn!(path = self.path, "access log: no writer thread ({e}); its lines are dropped");
            self.shared.closed.store(true, Ordering::Release);
        }
    }

    /// Queues one line (with its newline), or drops it when the buffer is full.
    pub fn push(&self, line: &str) {
        self.writer.call_once(|| self.start_writer());
        let shared = &self.shared;
        let was_empty = {
            let mut pending = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
            if shared.closed.load(Ordering::Relaxed) || pending.bytes.len() + line.len() > shared.capacity {
                drop(pending);
                shared.count_drops(1);
                return;
            }
            let was_empty = pending.bytes.is_empty();
            pending.bytes.extend_from_slice(line.as_bytes());
            pending.lines += 1;
            was_empty
        };
        // Only a buffer that was empty can have the writer waiting: a wake-up per batch, not
        // per line.
        if was_empty {
            shared.ready.notify_one();
        }
    }

    /// Counts this sink's drops in `counter` from now on (and those before).
    pub fn count_drops_in(&self, counter: &Counter) {
        if self.shared.dropped.set(counter.clone()).is_ok() {
            counter.inc_by(self.shared.early_drops.swap(0, Ordering::Relaxed));
        }
    }

    /// Lines written to the file so far.
    pub fn written(&self) -> u64 {
        self.shared.written.load(Ordering::Relaxed)
    }
}

/// Lines waiting for the writer: their bytes, and how many they are (counted as they come, so
/// that the writer need not count newlines).
struct Pending {
    bytes: Vec<u8>,
    lines: u64,
}

impl Shared {
    fn count_drops(&self, n: u64) {
        match self.dropped.get() {
            Some(counter) => {
                counter.inc_by(n);
            }
            None => {
                self.early_drops.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        // The writer finishes what is queued, then ends.
        self.shared.closed.store(true, Ordering::Release);
        self.shared.ready.notify_one();
    }
}

fn write_loop(path: &str, shared: &Shared) {
    let mut file = match std::fs::OpenOptions::new().append(true).create(true).open(path) {
        Ok(file) => file,
        Err(e) => {
            tracing::warn!(path, "access log: cannot open the file ({e}); its lines are dropped");
            shared.closed.store(true, Ordering::Release);
            return;
        }
    };
    let mut batch = Vec::with_capacity(64 << 10);
    let mut failed = false;
    loop {
        let lines = {
            let mut pending = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
            while pending.bytes.is_empty() {
                if shared.closed.load(Ordering::Acquire) {
                    return;
                }
                pending = shared.ready.wait(pending).unwrap_or_else(|e| e.into_inner());
            }
            std::mem::swap(&mut pending.bytes, &mut batch);
            std::mem::take(&mut pending.lines)
        };
        match file.write_all(&batch) {
            Ok(()) => {
                shared.written.fetch_add(lines, Ordering::Relaxed);
                failed = false;
            }
            Err(e) => {
                shared.count_drops(lines);
                // Once per run of failures: a full disk must not flood the proxy's own log.
                if !failed {
                    tracing::warn!(path, "access log: write failed ({e}); lines lost");
                }
                failed = true;
            }
        }
        batch.clear();
        // A burst's buffer is not kept for ever.
        if batch.capacity() > 256 << 10 {
            batch = Vec::with_capacity(64 << 10);
        }
    }
}
