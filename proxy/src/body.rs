//! A response body that carries what must last as long as it: the request's place in the
//! cluster's limits and endpoint counts, and the route's deadline, which covers the whole
//! response (as Envoy's route timeout does), not just its headers.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::cluster::InFlight;
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
