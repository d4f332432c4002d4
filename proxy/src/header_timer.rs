//! The timer behind hyper's HTTP/1 header-read timeout, made cheap for keep-alive connections.
//!
//! hyper asks its timer for a new sleep before every request head and drops it once the head is
//! in. With tokio's timer that is an allocation, a registration and a deregistration per
//! request, on the request's path (2% of the proxy's instructions). Here a connection keeps one
//! tokio sleep for its whole life. Each request's deadline is later than the last one, so the
//! sleep is armed for an earlier deadline. It then wakes the connection early, at most once per
//! timeout period, and the request's own sleep re-arms it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

type Shared = Arc<Mutex<Option<Pin<Box<tokio::time::Sleep>>>>>;

/// One connection's timer: give each connection's HTTP/1 builder its own.
#[derive(Clone, Default)]
pub struct ConnectionTimer {
    sleep: Shared,
}

/// One request head's deadline, over the connection's sleep.
struct HeaderSleep {
    deadline: tokio::time::Instant,
    sleep: Shared,
}

impl hyper::rt::Sleep for HeaderSleep {}

impl hyper::rt::Timer for ConnectionTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(self.now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HeaderSleep { deadline: deadline.into(), sleep: self.sleep.clone() })
    }

    // tokio's clock, so that tests with paused time see the timeout.
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<HeaderSleep>() {
            Some(mut header_sleep) => header_sleep.deadline = new_deadline.into(),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

impl Future for HeaderSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.deadline;
        let mut shared = self.sleep.lock().unwrap_or_else(|e| e.into_inner());
        let sleep = shared.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        loop {
            if sleep.deadline() > deadline {
                sleep.as_mut().reset(deadline);
            }
            match sleep.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) if sleep.deadline() >= deadline => return Poll::Ready(()),
                // An earlier request's deadline passed: wait on for this one.
                Poll::Ready(()) => sleep.as_mut().reset(deadline),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use hyper::rt::Timer;

    use super::*;

    /// Polls once; true when the sleep is over.
    async fn ready(sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>) -> bool {
        poll_fn(|cx| Poll::Ready(sleep.as_mut().poll(cx).is_ready())).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_sleep_ends_at_its_deadline() {
        let timer = ConnectionTimer::default();
        let mut sleep = timer.sleep(Duration::from_secs(10));
        assert!(!ready(&mut sleep).await);
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!ready(&mut sleep).await);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(ready(&mut sleep).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_request_is_not_cut_off_at_an_earlier_deadline() {
        let timer = ConnectionTimer::default();
        // The first request's head came in time; its sleep is gone but stays armed.
        let mut first = timer.sleep(Duration::from_secs(10));
        assert!(!ready(&mut first).await);
        drop(first);
        tokio::time::advance(Duration::from_secs(5)).await;
        let mut second = timer.sleep(Duration::from_secs(10));
        assert!(!ready(&mut second).await);
        // Past the first deadline, before the second's.
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(!ready(&mut second).await);
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(ready(&mut second).await);
    }

    #[tokio::test(start_paused = true)]
    async fn the_connection_is_woken_at_the_deadline() {
        let timer = ConnectionTimer::default();
        let sleep = timer.sleep(Duration::from_secs(3));
        let started = tokio::time::Instant::now();
        // Without a wake-up this would never finish (paused time only moves while all sleep).
        sleep.await;
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn reset_moves_the_deadline() {
        let timer = ConnectionTimer::default();
        let mut sleep = timer.sleep(Duration::from_secs(10));
        assert!(!ready(&mut sleep).await);
        timer.reset(&mut sleep, timer.now() + Duration::from_secs(2));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(ready(&mut sleep).await);
    }
}
