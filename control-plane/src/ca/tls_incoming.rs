//! The TLS port's connections for tonic: accepted here, the TLS handshake done in a task of its
//! own with a deadline (a client that connects and says nothing holds a task for at most
//! [`HANDSHAKE_TIMEOUT`], and never the accept loop), and handed over once they are TLS. A
//! failed handshake (a client that trusts another root, plaintext on the TLS port) is that
//! connection's end only.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; beyond, new connections wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 256;

/// A server-side TLS connection. tonic knows tokio-rustls's stream only with its own TLS
/// features, which would bring a second TLS setup; this wrapper is all it needs.
pub struct TlsConn(tokio_rustls::server::TlsStream<TcpStream>);

impl Connected for TlsConn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.0.get_ref().0.connect_info()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// The TLS connections of `listener`, each with the config in force when it was accepted.
/// Only finished handshakes come out; failures are logged here, where the peer is known.
pub fn incoming(
    listener: TcpListener,
    configs: watch::Receiver<Arc<ServerConfig>>,
) -> ReceiverStream<Result<TlsConn, io::Error>> {
    let (ready, stream) = mpsc::channel(64);
    tokio::spawn(accept(listener, configs, ready));
    ReceiverStream::new(stream)
}

async fn accept(
    listener: TcpListener,
    configs: watch::Receiver<Arc<ServerConfig>>,
    ready: mpsc::Sender<Result<TlsConn, io::Error>>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(permit) = handshakes.clone().acquire_owned().await else { return };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: give the open connections a moment to
                    // finish instead of spinning on the error.
                    tracing::warn!("TLS port: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = ready.closed() => return,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = TlsAcceptor::from(configs.borrow().clone());
        let ready = ready.clone();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
            drop(permit);
            match handshake {
                Ok(Ok(tls)) => {
                    let _ = ready.send(Ok(TlsConn(tls))).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, "TLS port: handshake failed: {e}"),
                Err(_) => tracing::debug!(%peer, "TLS port: no handshake within {HANDSHAKE_TIMEOUT:?}"),
            }
        });
    }
}
