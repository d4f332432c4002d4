//! The proxy's drain switch: flipped once (SIGTERM, `/quitquitquit`), watched by every
//! connection, listener and background task.
//!
//! A connection's task checks it on every wake-up, so the check must be cheap: an atomic load,
//! and a waker registered in the watcher's own slot. (A `watch` channel cost a lock and a
//! `Notify` poll per wake-up, about 1% of the proxy's work per request.)

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;

#[derive(Default)]
pub struct Drain {
    draining: AtomicBool,
    /// One slot per waiting future; a slot whose future is gone is pruned when the list would
    /// otherwise grow, so a churn of connections does not pile them up.
    watchers: Mutex<Vec<Weak<AtomicWaker>>>,
}

impl Drain {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Flips the switch (once) and wakes everyone waiting.
    pub fn start(&self) {
        if self.draining.swap(true, Ordering::AcqRel) {
            return;
        }
        let watchers = std::mem::take(&mut *self.watchers.lock().unwrap_or_else(|e| e.into_inner()));
        for slot in watchers.iter().filter_map(Weak::upgrade) {
            slot.wake();
        }
    }

    /// Resolves once the proxy drains.
    pub fn wait(&self) -> Drained<'_> {
        Drained { drain: self, slot: None }
    }

    fn watch(&self) -> Arc<AtomicWaker> {
        let slot = Arc::new(AtomicWaker::new());
        let mut watchers = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        if watchers.len() == watchers.capacity() {
            watchers.retain(|w| w.strong_count() > 0);
            // Room for as many again before the next pruning: each costs a pass over the list.
            let live = watchers.len();
            watchers.reserve(live);
        }
        watchers.push(Arc::downgrade(&slot));
        slot
    }
}

pub struct Drained<'a> {
    drain: &'a Drain,
    slot: Option<Arc<AtomicWaker>>,
}

impl Future for Drained<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.drain.is_draining() {
            return Poll::Ready(());
        }
        this.slot.get_or_insert_with(|| this.drain.watch()).register(cx.waker());
        // Flipped between the first check and the registration: `start` may have woken the
        // slot before it held this waker.
        if this.drain.is_draining() { Poll::Ready(()) } else { Poll::Pending }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn every_waiter_wakes_when_the_drain_starts() {
        let drain = Arc::new(Drain::default());
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let drain = drain.clone();
                tokio::spawn(async move { drain.wait().await })
            })
            .collect();
        // Each waiter has registered once it has been polled; yielding lets them run.
        tokio::time::timeout(Duration::from_secs(5), async {
            while drain.watchers.lock().unwrap().len() < 3 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the waiters did not register");
        assert!(!drain.is_draining());
        drain.start();
        for waiter in waiters {
            tokio::time::timeout(Duration::from_secs(5), waiter)
                .await
                .expect("a waiter was not woken")
                .unwrap();
        }
        // Too late to wait: resolves at once.
        tokio::time::timeout(Duration::from_secs(5), drain.wait()).await.expect("wait after start");
    }

    #[test]
    fn slots_of_finished_waiters_are_pruned() {
        let drain = Drain::default();
        let waker = std::task::Waker::noop();
        for _ in 0..10_000 {
            let mut waiting = std::pin::pin!(drain.wait());
            assert!(waiting.as_mut().poll(&mut Context::from_waker(waker)).is_pending());
        }
        let held = drain.watchers.lock().unwrap().len();
        assert!(held <= 4, "{held} slots kept for waiters that are gone");
    }
}
