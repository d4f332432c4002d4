//! Gives memory freed after a burst of xDS work back to the system.
//!
//! Connecting proxies and mesh-wide pushes allocate short-lived buffers in bursts (encoded
//! responses, HTTP/2 frames waiting to be written or read). glibc keeps what a burst freed
//! inside its heaps, so the resident size stays near the burst's peak. Once the server has been
//! quiet for a moment, `malloc_trim` returns the free pages: with 1,000 proxies sharing ten
//! connections, 21 MiB of the 60 MiB their first sync added (`bench/control-plane.sh`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Counts xDS work (connects, disconnects, responses) so that quiet can be told from busy.
#[derive(Debug, Default)]
pub struct Activity(AtomicU64);

impl Activity {
    pub fn note(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// How long the server must be quiet after work before freed memory is returned.
pub const QUIET: Duration = Duration::from_secs(1);

/// Runs forever: after each burst of activity, once [`QUIET`] has passed without any, returns
/// free memory to the system.
pub async fn release_after_bursts(activity: Arc<Activity>) {
    after_bursts(activity, QUIET, || async {
        // Walking the heaps takes milliseconds; keep it off the runtime's workers.
        let _ = tokio::task::spawn_blocking(release).await;
    })
    .await
}

async fn after_bursts<F: Future<Output = ()>>(
    activity: Arc<Activity>,
    quiet: Duration,
    action: impl Fn() -> F,
) {
    let mut seen = activity.count();
    let mut dirty = false;
    let mut ticks = tokio::time::interval(quiet);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let now = activity.count();
        if now != seen {
            seen = now;
            dirty = true;
        } else if dirty {
            dirty = false;
            action().await;
        }
    }
}

/// Allocations of at least this size get pages of their own from the system (glibc's default
/// starts at 128 KiB and moves up).
///
/// Every proxy connection holds HTTP/2 buffers of 16 KiB (write) and 8 KiB (read) of which
/// only the first page or two are ever written, and every response part is encoded into about
/// 8 KiB that lives until it is written. Inside the heap, the connection buffers are carved from
/// memory that earlier bursts' responses already touched, so all of it stays resident; in a
/// mapping of their own, the pages never written are never resident. With one connection per
/// proxy: 50.6 -> 47.6 KiB per proxy at 1,000 proxies, 52.5 -> 49.3 KiB at 10,000, with sync
/// and ACK times unchanged (`bench/control-plane.sh`, `MALLOC_MMAP_THRESHOLD_=8192`).
pub const MMAP_THRESHOLD: usize = 8 * 1024;

/// The allocator settings trellisd runs with; call once at start-up.
/// An operator's own `MALLOC_MMAP_THRESHOLD_` wins.
pub fn tune_allocator() {
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only changes glibc's allocation policy, under glibc's own lock.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
        }
    }
}

/// Returns whole free pages inside the allocator's heaps to the system.
fn release() {
    let started = Instant::now();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only inspects and releases the allocator's own free memory.
    let released = unsafe { libc::malloc_trim(0) } == 1;
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let released = false;
    tracing::debug!(released, took = ?started.elapsed(), "returned free memory to the system");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test(start_paused = true)]
    async fn released_once_per_burst_after_quiet() {
        let activity = Arc::new(Activity::default());
        let released = Arc::new(AtomicUsize::new(0));
        let count = released.clone();
        tokio::spawn(after_bursts(activity.clone(), QUIET, move || {
            count.fetch_add(1, Ordering::Relaxed);
            async {}
        }));
        let step = || tokio::time::sleep(QUIET + Duration::from_millis(1));
        step().await;
        step().await;
        assert_eq!(released.load(Ordering::Relaxed), 0, "nothing happened, nothing to release");
        // A burst over several periods: released once, after it.
        for _ in 0..3 {
            activity.note();
            step().await;
        }
        assert_eq!(released.load(Ordering::Relaxed), 0, "not while busy");
        step().await;
        step().await;
        assert_eq!(released.load(Ordering::Relaxed), 1);
        step().await;
        assert_eq!(released.load(Ordering::Relaxed), 1, "quiet stays quiet");
        activity.note();
        step().await;
        step().await;
        step().await;
        assert_eq!(released.load(Ordering::Relaxed), 2);
    }
}
