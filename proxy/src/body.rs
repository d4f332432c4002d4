//! Response bodies that carry what must last as long as the response: the request's place in
//! the cluster's limits and endpoint counts, the route's deadline, which covers the whole
//! response (as Envoy's route timeout does), not just its headers (`Guarded`); and the
//! request's metrics, recorded when the response is done (`Recorded`).

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::cluster::InFlight;
use crate::metrics::{Metrics, Reporter, RequestRecord, grpc_status_label};
use crate::upstream::BoxError;

pub struct Guarded<B> {
    inner: B,
    in_flight: Option<InFlight>,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<B> Guarded<B> {
    pub fn new(inner: B, in_flight: InFlight, deadline: Option<Instant>) -> Guarded<B> {
        Guarded {
            inner,
            in_flight: Some(in_flight),
            deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
        }
    }

    fn finish(&mut self) {
        self.in_flight = None;
        self.deadline = None;
    }
}

impl<B> Body for Guarded<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(deadline) = this.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            this.finish();
            return Poll::Ready(Some(Err("upstream response timeout".into())));
        }
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        match frame {
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.finish();
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What the metrics will say of a request, all but what only the response's end tells.
pub struct PendingRecord {
    /// The request's access log line, when access logs are on; written with the metrics.
    pub access_log: Option<Box<crate::access_log::HttpEntry>>,
    pub metrics: Arc<Metrics>,
    pub reporter: Reporter,
    pub service: Arc<str>,
    pub grpc: bool,
    pub status: u16,
    /// From the response headers (a trailers-only gRPC answer); trailers may still set it.
    pub grpc_status: &'static str,
    pub flags: &'static str,
    pub started: std::time::Instant,
    pub request_bytes: RequestBytes,
    pub security: crate::metrics::Security,
    /// The other side's workload, for the peer labels.
    pub peer: crate::peers::PeerKey,
}

/// The size of a request's body, as the metrics count it.
#[derive(Default)]
pub enum RequestBytes {
    /// Not known yet: the handler fills in the declared `Content-Length`, if any.
    #[default]
    Unknown,
    /// Declared, or buffered for a retry.
    Known(u64),
    /// Streamed without a declared length (`Counted`): read when the response is done.
    Counted(Arc<AtomicU64>),
}

impl RequestBytes {
    fn total(&self) -> u64 {
        match self {
            RequestBytes::Unknown => 0,
            RequestBytes::Known(n) => *n,
            RequestBytes::Counted(counter) => counter.load(Ordering::Relaxed),
        }
    }
}

/// A body passed on unchanged, with an observer told what goes through it.
pub struct Observed<B, O> {
    inner: B,
    observer: O,
}

/// What an `Observed` body tells its observer.
pub trait Observer {
    fn data(&mut self, len: usize);
    fn trailers(&mut self, _trailers: &http::HeaderMap) {}
    /// The body has ended, or failed (the upstream's failure, not the client's departure).
    fn ended(&mut self) {}
}

impl<B: Body<Data = Bytes> + Unpin, O: Observer + Unpin> Body for Observed<B, O> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.observer.data(data.len());
                } else if let Some(trailers) = frame.trailers_ref() {
                    this.observer.trailers(trailers);
                }
                // hyper stops polling a body once it says it has ended.
                if this.inner.is_end_stream() {
                    this.observer.ended();
                }
            }
            None | Some(Err(_)) => this.observer.ended(),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that records its request when it is dropped, which hyper does once the
/// response is sent or abandoned: the duration then covers the whole response and the bytes
/// are those that went out, as Istio's do, also for streams and chunked bodies; a gRPC status
/// comes from the trailers. A response abandoned before its end (the client went away) is
/// flagged `DC`, as Envoy does.
pub type Recorded<B> = Observed<B, Recording>;

pub fn recorded<B: Body>(inner: B, pending: PendingRecord) -> Recorded<B> {
    let ended = inner.is_end_stream();
    Observed { inner, observer: Recording { pending: Some(pending), sent: 0, ended } }
}

pub struct Recording {
    pending: Option<PendingRecord>,
    sent: u64,
    ended: bool,
}

impl Observer for Recording {
    fn data(&mut self, len: usize) {
        self.sent += len as u64;
    }

    fn trailers(&mut self, trailers: &http::HeaderMap) {
        if let Some(pending) = self.pending.as_mut()
            && pending.grpc
            && let Some(status) = trailers.get(&crate::headers::GRPC_STATUS)
        {
            pending.grpc_status = grpc_status_label(status.as_bytes());
        }
    }

    fn ended(&mut self) {
        self.ended = true;
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        let Some(p) = self.pending.take() else { return };
        if let Some(entry) = p.access_log {
            let flags = if self.ended { p.flags } else { "DC" };
            entry.finish(flags, p.grpc_status, p.request_bytes.total(), self.sent);
        }
        p.metrics.request(RequestRecord {
            reporter: p.reporter,
            service: &p.service,
            grpc: p.grpc,
            status: p.status,
            grpc_status: p.grpc_status,
            flags: if self.ended { p.flags } else { "DC" },
            millis: p.started.elapsed().as_secs_f64() * 1000.0,
            request_bytes: p.request_bytes.total(),
            response_bytes: self.sent,
            security: p.security,
            peer: p.peer,
        });
    }
}

/// A request body that counts the bytes it passes on, for the metrics of a body whose length
/// is not declared (a chunked upload, most gRPC requests).
pub type Counted<B> = Observed<B, Counter>;

/// The body, counted, and the size that reads its count.
pub fn counted<B>(inner: B) -> (Counted<B>, RequestBytes) {
    let counter = Arc::new(AtomicU64::new(0));
    (Observed { inner, observer: Counter(counter.clone()) }, RequestBytes::Counted(counter))
}

pub struct Counter(Arc<AtomicU64>);

impl Observer for Counter {
    fn data(&mut self, len: usize) {
        self.0.fetch_add(len as u64, Ordering::Relaxed);
    }
}
