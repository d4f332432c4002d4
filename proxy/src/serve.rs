//! Serving one downstream connection as HTTP/1.1 or HTTP/2 (hyper), with the size limits and
//! header timeout that keep hostile clients from holding memory or connections, and a graceful
//! close when the proxy drains.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use http::HeaderValue;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::config::{ServicePort, Snapshot};
use crate::header_timer::ConnectionTimer;
use crate::{Proxy, Side, forward, pin_out_of_line};

/// Where a connection came from and was headed.
#[derive(Debug)]
pub struct Conn {
    pub side: Side,
    pub peer: SocketAddr,
    /// Before the redirect; `None` in explicit mode (the client dialled the proxy itself).
    pub original: Option<SocketAddr>,
    /// The listener's own address: never a destination (that would loop).
    pub local: SocketAddr,
    /// The verified peer of a mutual TLS connection; `None` for plaintext.
    pub tls_peer: Option<crate::security::xfcc::Peer>,
    /// The server name a TLS client asked for (terminated or passed through): the access log's
    /// `%REQUESTED_SERVER_NAME%`.
    pub sni: Option<Arc<str>>,
    /// `peer`'s address as a header value (`x-forwarded-for`), made on first use.
    peer_value: OnceLock<HeaderValue>,
    /// The last authority's service port: a keep-alive client names the same host on every
    /// request, and looking it up again was 2% of the proxy's instructions per request.
    last_lookup: Mutex<Option<Lookup>>,
    /// Inbound: the downstream's workload, looked up once per connection.
    peer_workload: OnceLock<crate::peers::PeerKey>,
    /// Gateway role: the gateway port the connection came in on; requests are routed by the
    /// gateway's virtual hosts for it (never passed through).
    pub gateway_port: Option<u16>,
    /// Gateway role, TLS terminated: the server the client's SNI picked, whose routes alone
    /// serve the connection (a SIMPLE server's clients never reach a MUTUAL server's routes).
    pub gateway_server: Option<Arc<str>>,
}

/// What an authority resolved to under one config snapshot.
#[derive(Debug)]
struct Lookup {
    /// Compared by address only; a `Weak` keeps the address from being reused by a later
    /// snapshot without keeping this one's contents alive.
    snapshot: Weak<Snapshot>,
    authority: Option<Box<str>>,
    found: (u16, Option<Arc<ServicePort>>),
}

impl Conn {
    pub fn new(side: Side, peer: SocketAddr, original: Option<SocketAddr>, local: SocketAddr) -> Conn {
        Conn {
            side,
            peer,
            original,
            local,
            tls_peer: None,
            sni: None,
            peer_value: OnceLock::new(),
            last_lookup: Mutex::new(None),
            peer_workload: OnceLock::new(),
            gateway_port: None,
            gateway_server: None,
        }
    }

    /// Inbound: who is calling, from the workload table by the connection's source address and
    /// the identity mutual TLS proved (see [`crate::peers::PeerTable::inbound`]); settled on
    /// first use, then the same for every request of the connection. A caller the table lacks
    /// is asked for and waited for (see [`crate::xds::OnDemand::fetch_peer`]); while the control
    /// plane cannot answer, the connection is named by what is known and looked up again on its
    /// next request.
    pub async fn peer_workload(&self, proxy: &crate::Proxy) -> crate::peers::PeerKey {
        if let Some(known) = self.peer_workload.get() {
            return known.clone();
        }
        let principal = self.tls_peer.as_ref().map(|p| &*p.principal);
        let address = self.peer.ip();
        if let Some(on_demand) = proxy.on_demand.get() {
            let missing = proxy.config.load().peers.missing(address, principal);
            if !missing.is_empty() {
                let settled = crate::box_out_of_line(|| async {
                    let mut settled = true;
                    for name in &missing {
                        let arrived = || proxy.config.load().peers.knows(name);
                        settled &= on_demand.fetch_peer(name, arrived).await
                            || on_demand.said_unknown(trellis_xds::types::ResourceType::Workload, name);
                    }
                    settled
                })
                .await;
                if !settled {
                    return proxy.config.load().peers.inbound(address, principal);
                }
            }
        }
        self.peer_workload.get_or_init(|| proxy.config.load().peers.inbound(address, principal)).clone()
    }

    /// Inbound: the caller's workload once [`Conn::peer_workload`] has settled it. Every
    /// request after a connection's first takes this way, which is no `async` call (callgrind:
    /// about 50 instructions per request).
    pub fn settled_peer(&self) -> Option<crate::peers::PeerKey> {
        self.peer_workload.get().cloned()
    }

    /// Inbound: asks for the caller's workload as the connection opens, if the table lacks it,
    /// so that it has usually arrived by the time the first response is counted.
    pub fn ask_for_peer(&self, proxy: &crate::Proxy) {
        let Some(on_demand) = proxy.on_demand.get() else { return };
        let principal = self.tls_peer.as_ref().map(|p| &*p.principal);
        for name in proxy.config.load().peers.missing(self.peer.ip(), principal) {
            on_demand.ask(trellis_xds::types::ResourceType::Workload, &name);
        }
    }

    /// How the downstream is secured, for the inbound metrics.
    pub fn security(&self) -> crate::metrics::Security {
        crate::metrics::Security {
            mutual_tls: self.tls_peer.is_some(),
            peer: self.tls_peer.as_ref().map(|p| p.principal.clone()),
        }
    }

    pub fn peer_value(&self) -> &HeaderValue {
        self.peer_value.get_or_init(|| crate::headers::address_value(self.peer.ip()))
    }

    /// The port and service port of `authority` under `snapshot`: remembered from this
    /// connection's previous request when both are the same, else `resolve`d.
    pub fn service_port(
        &self,
        snapshot: &Arc<Snapshot>,
        authority: Option<&str>,
        resolve: impl FnOnce() -> (u16, Option<Arc<ServicePort>>),
    ) -> (u16, Option<Arc<ServicePort>>) {
        let mut last = self.last_lookup.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = &*last
            && std::ptr::eq(l.snapshot.as_ptr(), Arc::as_ptr(snapshot))
            && l.authority.as_deref() == authority
        {
            return l.found.clone();
        }
        let found = resolve();
        *last = Some(Lookup {
            snapshot: Arc::downgrade(snapshot),
            authority: authority.map(Box::from),
            found: found.clone(),
        });
        found
    }
}

/// What the connection is known to speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Speaks {
    Http1,
    Http2,
}

pub async fn serve<S>(stream: S, conn: Conn, proxy: Arc<Proxy>, speaks: Speaks)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (max_header_bytes, header_timeout) = {
        let snapshot = proxy.config.load();
        (snapshot.limits.max_header_bytes, snapshot.limits.header_read_timeout)
    };
    let conn = Arc::new(conn);
    let service = {
        let proxy = proxy.clone();
        service_fn(move |request| {
            let (conn, proxy) = (conn.clone(), proxy.clone());
            async move { Ok::<_, Infallible>(forward::handle(request, &conn, &proxy).await) }
        })
    };
    let io = TokioIo::new(stream);
    // Each protocol's own server: detection has told which (hyper's auto server would look
    // again, on every read, and wait for a silent client's first bytes without a deadline).
    macro_rules! run {
        ($connection:expr) => {{
            // Boxed: the task then holds only the protocol's own connection state, not room
            // for the largest of the three; built out of line, so that the stack frame of
            // every later poll has no room for it either.
            let mut connection = pin_out_of_line(|| $connection);
            // Biased: the connection first, and no random pick on every wake-up.
            tokio::select! {
                biased;
                _ = connection.as_mut() => {}
                _ = proxy.drain.wait() => {
                    // Finish what is in flight, take nothing new.
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        }};
    }
    match speaks {
        Speaks::Http1 => {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(ConnectionTimer::default())
                .header_read_timeout(header_timeout)
                // hyper's floor is 8 KiB.
                .max_buf_size(max_header_bytes.max(8192));
            run!(builder.serve_connection(io, service).with_upgrades())
        }
        Speaks::Http2 => {
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            builder
                .timer(TokioTimer::new())
                .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX))
                .max_concurrent_streams(1024)
                .keep_alive_interval(Some(Duration::from_secs(60)));
            run!(builder.serve_connection(io, service))
        }
    }
}
