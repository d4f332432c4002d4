//! Ctrl-C, SIGTERM and SIGHUP become a stop request that the demo checks between steps and
//! every tick, so that it always removes what it made. A thread of their own waits for them
//! (tokio's handlers: the signal mask stays as it was, so the children the demo starts can be
//! stopped with SIGTERM; exec gives them the default handlers back).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::signal::unix::{SignalKind, signal};

#[derive(Clone, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    pub fn requested(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    pub fn request(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Returns once the handlers are in place: from then on a signal no longer ends the process.
pub fn install() -> Result<Stop, String> {
    let stop = Stop::default();
    let flag = stop.clone();
    let (ready, installed) = std::sync::mpsc::channel::<Result<(), String>>();
    std::thread::Builder::new()
        .name("signals".to_owned())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_io().build() {
                Ok(r) => r,
                Err(e) => {
                    let _ = ready.send(Err(format!("cannot watch signals: {e}")));
                    return;
                }
            };
            runtime.block_on(async move {
                let kinds = [SignalKind::interrupt(), SignalKind::terminate(), SignalKind::hangup()];
                let mut streams = Vec::new();
                for kind in kinds {
                    match signal(kind) {
                        Ok(s) => streams.push(s),
                        Err(e) => {
                            let _ = ready.send(Err(format!("cannot watch signals: {e}")));
                            return;
                        }
                    }
                }
                let _ = ready.send(Ok(()));
                let [interrupt, terminate, hangup] = streams.as_mut_slice() else { return };
                loop {
                    tokio::select! {
                        _ = interrupt.recv() => {}
                        _ = terminate.recv() => {}
                        _ = hangup.recv() => {}
                    }
                    if flag.requested() {
                        eprintln!("trellis demo: still removing what the demo made");
                    }
                    flag.request();
                }
            });
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    installed.recv().map_err(|_| "the signal thread ended".to_owned())??;
    Ok(stop)
}
