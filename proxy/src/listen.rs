//! The capture listeners: accept, hand each connection to its own task, stop on drain.

use std::sync::Arc;

use tokio::net::TcpListener;

use crate::{Proxy, Side, connection};

pub async fn accept_loop(listener: TcpListener, side: Side, proxy: Arc<Proxy>) {
    if side == Side::Inbound
        && let Err(e) = crate::tproxy::prepare_inbound_listener(&listener)
    {
        tracing::error!(error = %e, "cannot make the inbound listener transparent: TPROXY'd connections will be dropped");
    }
    let mut drained = std::pin::pin!(proxy.drain.wait());
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tokio::spawn(connection::handle(stream, peer, side, proxy.clone()));
                }
                // Out of file descriptors and the like: keep serving the connections we have.
                Err(e) => {
                    tracing::warn!(error = %e, ?side, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = &mut drained => return,
        }
    }
}
