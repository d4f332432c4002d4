//! Connections to endpoints: a pool per endpoint (and source address) of HTTP/1.1 keep-alive
//! connections, or one multiplexed HTTP/2 connection, reused across requests and clusters.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpSocket, TcpStream};

use crate::box_out_of_line;
use crate::security::stream::MaybeTls;
use crate::security::upstream::ClusterTls;
use trellis_identity::tls::{Carries, MeshTls};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

/// Idle HTTP/1.1 connections kept per endpoint; more are closed once their response is done.
const MAX_IDLE_PER_ENDPOINT: usize = 128;
/// Pooled HTTP connections unused for this long are closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http1,
    Http2,
}

/// Where a connection goes and where it comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Key {
    pub addr: SocketAddr,
    pub protocol: Protocol,
    /// Bound before connecting (inbound delivery comes from 127.0.0.6).
    pub source: Option<IpAddr>,
    /// Mutual TLS, for the identities of this pool id ([`ClusterTls::pool_id`]): a TLS and a
    /// plaintext connection to one address are never mixed.
    pub tls: Option<u64>,
    /// The cluster whose connections these are ([`ClusterConnections::id`]; 0: none): each
    /// cluster has connections of its own, counted against its cap, as in Envoy.
    pub pool: u64,
}

/// The pool looks a key up twice per request: two integer writes here, where the derived hash
/// fed the hasher each enum tag and address byte on its own.
impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let bits = |ip: IpAddr| match ip {
            IpAddr::V4(v4) => u128::from(v4.to_bits()),
            IpAddr::V6(v6) => v6.to_bits(),
        };
        let source = self.source.map_or(0, bits);
        state.write_u128(bits(self.addr.ip()) ^ source.rotate_left(64));
        let tags = u32::from(self.addr.is_ipv6()) << 1 | u32::from(self.protocol == Protocol::Http2);
        state.write_u32(u32::from(self.addr.port()) << 16 | tags << 8 | u32::from(self.source.is_some()));
        if let Some(tls) = self.tls {
            state.write_u64(tls);
        }
        if self.pool != 0 {
            state.write_u64(self.pool);
        }
    }
}

/// How long a request at a cluster's connection cap waits for a change it might miss (a
/// connection of another endpoint turning idle) before it looks again.
const AT_CAP_RECHECK: Duration = Duration::from_millis(5);

/// The connections of one cluster, counted against its `max_connections`: open ones and ones
/// being opened, HTTP/1.1, HTTP/2, TCP and upgraded alike. Kept across configuration changes
/// of the cluster (by name), so that its pooled connections stay in use.
pub struct ClusterConnections {
    pub id: u64,
    max: std::sync::atomic::AtomicU32,
    open: std::sync::atomic::AtomicU32,
    /// A connection closed, or one of this cluster's went back to its pool.
    changed: tokio::sync::Notify,
}

/// One connection's place under its cluster's cap, given back when dropped (with the
/// connection).
pub struct OpenConnection(Arc<ClusterConnections>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}

/// A connection's stream together with its place under the cluster's cap: the place is given
/// back when the stream is dropped, which hyper does when the connection ends (or, upgraded,
/// when the upgraded connection does). Holding it here rather than in an `async` block around
/// the connection task spares tokio a poll layer on every wake-up of every pooled connection.
struct Placed {
    io: MaybeTls,
    _place: Option<OpenConnection>,
}

impl tokio::io::AsyncRead for Placed {
    #[inline]
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Placed {
    #[inline]
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    #[inline]
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    #[inline]
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    #[inline]
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl ClusterConnections {
    pub fn new(max: u32) -> Arc<ClusterConnections> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Arc::new(ClusterConnections {
            id: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            max: max.into(),
            open: 0.into(),
            changed: tokio::sync::Notify::new(),
        })
    }

    pub fn set_max(&self, max: u32) {
        self.max.store(max, std::sync::atomic::Ordering::Release);
    }

    /// Connections open (or being opened) now.
    pub fn open(&self) -> u32 {
        self.open.load(std::sync::atomic::Ordering::Acquire)
    }

    /// A place for one more connection, unless the cluster is at its cap.
    pub fn try_open(self: &Arc<Self>) -> Option<OpenConnection> {
        use std::sync::atomic::Ordering;
        let max = self.max.load(Ordering::Acquire);
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| OpenConnection(self.clone()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The endpoint could not be reached: nothing was sent.
    #[error("connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("connect to {0}: timed out")]
    ConnectTimeout(SocketAddr),
    /// The HTTP/2 peer refused the stream before processing it: safe to retry.
    #[error("stream refused by {0}")]
    RefusedStream(SocketAddr),
    /// The TLS handshake failed or could not start: nothing was sent.
    #[error("TLS to {addr}: {message}")]
    Tls { addr: SocketAddr, message: String },
    /// The connection broke during the exchange.
    #[error("{addr}: {source}")]
    Reset { addr: SocketAddr, source: hyper::Error },
    /// The cluster is at its connection cap and this request could not wait for one (HTTP/2).
    #[error("{0}: the cluster's connection limit is reached")]
    Overflow(SocketAddr),
}

impl UpstreamError {
    pub fn is_connect_failure(&self) -> bool {
        matches!(
            self,
            UpstreamError::Connect { .. } | UpstreamError::ConnectTimeout(_) | UpstreamError::Tls { .. }
        )
    }
}

struct Idle {
    sender: http1::SendRequest<Body>,
    since: Instant,
    /// When the connection was opened (for max_duration).
    opened: Instant,
    uses: u32,
}

#[derive(Default)]
struct Entry {
    http1: Vec<Idle>,
    http2: Option<http2::SendRequest<Body>>,
    http2_uses: u32,
    http2_opened: Option<Instant>,
    /// Held while an HTTP/2 connection is being made.
    connecting: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Default)]
pub struct Pools {
    entries: Mutex<crate::FastMap<Key, Entry>>,
    /// The proxy's mesh identity, once it has one configured.
    mesh: std::sync::OnceLock<Arc<MeshTls>>,
}

/// How connections to a cluster's endpoints are made and reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionPolicy {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// Requests per connection before it is retired (0: no limit).
    pub max_requests: u32,
    /// Keepalive probes on every connection opened; None: the socket's default (off).
    pub keepalive: Option<Keepalive>,
    /// How long after it was opened a connection still takes new requests; None: forever.
    pub max_duration: Option<Duration>,
}

/// SO_KEEPALIVE and its knobs; a None knob keeps the system's value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Keepalive {
    pub time: Option<Duration>,
    pub interval: Option<Duration>,
    pub probes: Option<u32>,
}

impl Keepalive {
    fn apply(&self, stream: &TcpStream) -> std::io::Result<()> {
        let mut params = socket2::TcpKeepalive::new();
        if let Some(time) = self.time {
            params = params.with_time(time);
        }
        if let Some(interval) = self.interval {
            params = params.with_interval(interval);
        }
        if let Some(probes) = self.probes {
            params = params.with_retries(probes);
        }
        socket2::SockRef::from(stream).set_tcp_keepalive(&params)
    }
}

impl Default for ConnectionPolicy {
    fn default() -> Self {
        ConnectionPolicy::DEFAULT
    }
}

impl ConnectionPolicy {
    /// For connections that belong to no cluster (passthrough, inbound delivery).
    pub const DEFAULT: ConnectionPolicy = ConnectionPolicy {
        connect_timeout: Duration::from_secs(10),
        idle_timeout: DEFAULT_IDLE_TIMEOUT,
        max_requests: 0,
        keepalive: None,
        max_duration: None,
    };

    fn exhausted(&self, uses: u32) -> bool {
        self.max_requests != 0 && uses >= self.max_requests
    }

    /// Whether a connection opened at `opened` is too old for another request.
    pub fn expired(&self, opened: Instant, now: Instant) -> bool {
        self.max_duration.is_some_and(|max| now.duration_since(opened) >= max)
    }
}

impl Pools {
    /// The mesh identity that mutual TLS connections present.
    pub fn set_mesh_tls(&self, mesh: Arc<MeshTls>) {
        let _ = self.mesh.set(mesh);
    }

    pub fn mesh_tls(&self) -> Option<&Arc<MeshTls>> {
        self.mesh.get()
    }

    /// A connection to `key.addr`: plaintext, or mutual TLS when `tls` is given.
    pub async fn dial(
        &self,
        key: Key,
        policy: &ConnectionPolicy,
        tls: Option<&ClusterTls>,
        carries: Carries,
    ) -> Result<MaybeTls, UpstreamError> {
        if let Some(Err(message)) = tls.map(ClusterTls::usable) {
            return Err(UpstreamError::Tls { addr: key.addr, message: message.to_string() });
        }
        let tcp = connect(key, policy.connect_timeout).await?;
        if let Some(keepalive) = &policy.keepalive {
            keepalive.apply(&tcp).map_err(|source| UpstreamError::Connect { addr: key.addr, source })?;
        }
        match tls {
            None => Ok(MaybeTls::Plain(tcp)),
            Some(tls) => {
                let mesh = self.mesh.get().map(Arc::as_ref);
                let stream = crate::security::upstream::handshake(tcp, key.addr, mesh, tls, carries).await?;
                Ok(MaybeTls::Client(Box::new(stream)))
            }
        }
    }

    /// Sends `request` (origin-form URI for HTTP/1.1; absolute for HTTP/2) over a pooled
    /// connection, or a new one. With `cap` (a cluster's), the connection is the cluster's own
    /// and new ones stay within its cap: an HTTP/1.1 request at the cap waits for one of the
    /// cluster's connections (its caller bounds how many wait); HTTP/2 fails with `Overflow`.
    pub async fn send(
        &self,
        key: Key,
        policy: &ConnectionPolicy,
        tls: Option<&ClusterTls>,
        cap: Option<&Arc<ClusterConnections>>,
        request: Request<Body>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let key = Key { tls: tls.map(|t| t.pool_id), pool: cap.map_or(0, |c| c.id), ..key };
        match key.protocol {
            Protocol::Http1 => self.send_http1(key, policy, tls, cap, request).await,
            Protocol::Http2 => self.send_http2(key, policy, tls, cap, request).await,
        }
    }

    async fn send_http1(
        &self,
        key: Key,
        policy: &ConnectionPolicy,
        tls: Option<&ClusterTls>,
        cap: Option<&Arc<ClusterConnections>>,
        mut request: Request<Body>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        loop {
            // A pooled connection may have been closed by the peer just now; then the request
            // comes back unsent and goes over another connection.
            if let Some((mut sender, uses, opened)) = self.take_idle(key, policy) {
                match sender.try_send_request(request).await {
                    Ok(response) => {
                        self.put_idle(key, sender, uses + 1, opened, policy);
                        return Ok(response);
                    }
                    Err(mut e) => match e.take_message() {
                        Some(unsent) => {
                            request = unsent;
                            continue;
                        }
                        None => return Err(UpstreamError::Reset { addr: key.addr, source: e.into_error() }),
                    },
                }
            }
            let opened = match cap {
                None => None,
                Some(cap) => match cap.try_open() {
                    Some(opened) => Some(opened),
                    None => {
                        box_out_of_line(|| self.make_room(key, cap, policy)).await;
                        continue;
                    }
                },
            };
            // A new connection is the rare case: its connect and handshake state lives in a box
            // of its own, so it does not enlarge every connection's request future.
            return box_out_of_line(|| self.dial_http1(key, policy, tls, opened, request)).await;
        }
    }

    /// At the cluster's cap with no ready connection to this endpoint: waits until a busy one
    /// of this endpoint can take a request (and pools it), or closes an idle connection of the
    /// cluster to another endpoint and waits for a connection to close or come back.
    async fn make_room(&self, key: Key, cap: &Arc<ClusterConnections>, policy: &ConnectionPolicy) {
        let changed = cap.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if let Some((mut sender, uses, opened)) = self.take_busy(key) {
            if sender.ready().await.is_ok() {
                self.put_idle(key, sender, uses, opened, policy);
            }
            return;
        }
        self.evict_idle(key);
        let _ = tokio::time::timeout(AT_CAP_RECHECK, changed).await;
    }

    /// A busy (not ready) HTTP/1.1 connection to `key`, taken out of the pool to be waited on.
    fn take_busy(&self, key: Key) -> Option<(http1::SendRequest<Body>, u32, Instant)> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let list = &mut entries.get_mut(&key)?.http1;
        let at = list.iter().position(|idle| !idle.sender.is_closed() && !idle.sender.is_ready())?;
        let idle = list.swap_remove(at);
        Some((idle.sender, idle.uses, idle.opened))
    }

    /// Closes one ready idle HTTP/1.1 connection of the same cluster to another endpoint.
    fn evict_idle(&self, key: Key) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        for (other, entry) in entries.iter_mut() {
            if other.pool != key.pool || *other == key {
                continue;
            }
            if let Some(at) = entry.http1.iter().position(|idle| idle.sender.is_ready()) {
                // Dropping the sender closes the idle connection; its place frees when it has.
                entry.http1.swap_remove(at);
                return;
            }
        }
    }

    async fn dial_http1(
        &self,
        key: Key,
        policy: &ConnectionPolicy,
        tls: Option<&ClusterTls>,
        opened: Option<OpenConnection>,
        request: Request<Body>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let opened_at = Instant::now();
        let stream = self.dial(key, policy, tls, Carries::Http1).await?;
        let (mut sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(Placed { io: stream, _place: opened }))
            .await
            .map_err(|source| UpstreamError::Reset { addr: key.addr, source })?;
        tokio::spawn(connection.with_upgrades());
        let response = sender
            .send_request(request)
            .await
            .map_err(|source| UpstreamError::Reset { addr: key.addr, source })?;
        self.put_idle(key, sender, 1, opened_at, policy);
        Ok(response)
    }

    async fn send_http2(
        &self,
        key: Key,
        policy: &ConnectionPolicy,
        tls: Option<&ClusterTls>,
        cap: Option<&Arc<ClusterConnections>>,
        request: Request<Body>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        if let Some(sender) = self.http2_sender(key, policy) {
            return send_on(sender, key, request).await;
        }
        box_out_of_line(|| self.dial_http2(key, policy, tls, cap, request)).await
    }

    async fn dial_http2(
        &self,
        key: Key,
        policy: &ConnectionPolicy,
        tls: Option<&ClusterTls>,
        cap: Option<&Arc<ClusterConnections>>,
        request: Request<Body>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let sender = self.http2_connection(key, policy, tls, cap).await?;
        send_on(sender, key, request).await
    }

    /// The endpoint's HTTP/2 connection, made now if there is none. One connection per
    /// endpoint: concurrent first requests wait for the one being made, but only for that;
    /// each then waits for its own answer on its own.
    async fn http2_connection(
        &self,
        key: Key,
        policy: &ConnectionPolicy,
        tls: Option<&ClusterTls>,
        cap: Option<&Arc<ClusterConnections>>,
    ) -> Result<http2::SendRequest<Body>, UpstreamError> {
        let connecting = {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            entries.entry(key).or_default().connecting.clone()
        };
        let _turn = connecting.lock().await;
        if let Some(sender) = self.http2_sender(key, policy) {
            return Ok(sender);
        }
        let opened = match cap.map(ClusterConnections::try_open) {
            Some(None) => return Err(UpstreamError::Overflow(key.addr)),
            Some(opened) => opened,
            None => None,
        };
        let opened_at = Instant::now();
        let stream = self.dial(key, policy, tls, Carries::Http2).await?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| UpstreamError::Reset { addr: key.addr, source })?;
        tokio::spawn(async move {
            let _ = connection.await;
            drop(opened);
        });
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entry = entries.entry(key).or_default();
        entry.http2 = Some(sender.clone());
        entry.http2_uses = 1;
        entry.http2_opened = Some(opened_at);
        Ok(sender)
    }

    /// The endpoint's HTTP/2 connection, unless closed or used up (then it is retired: its
    /// streams finish, new ones go to a new connection).
    fn http2_sender(&self, key: Key, policy: &ConnectionPolicy) -> Option<http2::SendRequest<Body>> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entry = entries.get_mut(&key)?;
        let sender = entry.http2.clone().filter(|s| !s.is_closed());
        let expired = entry.http2_opened.is_some_and(|opened| policy.expired(opened, Instant::now()));
        if sender.is_none() || policy.exhausted(entry.http2_uses) || expired {
            entry.http2 = None;
            return None;
        }
        entry.http2_uses += 1;
        sender
    }

    /// A ready idle connection, how often it was used and when it was opened; closed, idle
    /// too long and too old ones are dropped on the way, busy ones kept.
    fn take_idle(
        &self,
        key: Key,
        policy: &ConnectionPolicy,
    ) -> Option<(http1::SendRequest<Body>, u32, Instant)> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let list = &mut entries.get_mut(&key)?.http1;
        let now = Instant::now();
        let mut found = None;
        let mut busy = Vec::new();
        while let Some(idle) = list.pop() {
            if idle.sender.is_closed()
                || now.duration_since(idle.since) > policy.idle_timeout
                || policy.expired(idle.opened, now)
            {
                continue;
            }
            if idle.sender.is_ready() {
                found = Some((idle.sender, idle.uses, idle.opened));
                break;
            }
            busy.push(idle);
        }
        list.extend(busy);
        found
    }

    /// Back into the pool, unless used up (dropping the sender closes the connection once its
    /// response is done).
    fn put_idle(
        &self,
        key: Key,
        sender: http1::SendRequest<Body>,
        uses: u32,
        opened: Instant,
        policy: &ConnectionPolicy,
    ) {
        let now = Instant::now();
        if policy.exhausted(uses) || policy.expired(opened, now) {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let list = &mut entries.entry(key).or_default().http1;
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push(Idle { sender, since: now, opened, uses });
        }
    }

    /// Closes idle connections unused for `idle_timeout` and forgets endpoints with nothing
    /// left, so that endpoints that went away (or passthrough destinations) hold nothing.
    pub fn reap(&self, idle_timeout: Duration) {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|_, entry| {
            entry
                .http1
                .retain(|idle| !idle.sender.is_closed() && now.duration_since(idle.since) <= idle_timeout);
            if entry.http2.as_ref().is_some_and(|s| s.is_closed()) {
                entry.http2 = None;
            }
            let connecting = Arc::strong_count(&entry.connecting) > 1;
            !entry.http1.is_empty() || entry.http2.is_some() || connecting
        });
    }

    /// Connections currently pooled per endpoint (for the admin page).
    pub fn idle_counts(&self) -> Vec<(Key, usize)> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.iter().map(|(k, e)| (*k, e.http1.len() + usize::from(e.http2.is_some()))).collect()
    }
}

async fn send_on(
    mut sender: http2::SendRequest<Body>,
    key: Key,
    request: Request<Body>,
) -> Result<Response<Incoming>, UpstreamError> {
    sender.send_request(request).await.map_err(|source| {
        let refused = std::error::Error::source(&source)
            .and_then(|s| s.downcast_ref::<h2::Error>())
            .and_then(h2::Error::reason)
            == Some(h2::Reason::REFUSED_STREAM);
        if refused {
            UpstreamError::RefusedStream(key.addr)
        } else {
            UpstreamError::Reset { addr: key.addr, source }
        }
    })
}

/// A TCP connection to `key.addr`, from `key.source` when set.
pub async fn connect(key: Key, timeout: Duration) -> Result<TcpStream, UpstreamError> {
    let fail = |source| UpstreamError::Connect { addr: key.addr, source };
    let socket = if key.addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(fail)?;
    if let Some(source) = key.source {
        crate::tproxy::bind_source(&socket, source).map_err(fail)?;
    }
    let stream = tokio::time::timeout(timeout, socket.connect(key.addr))
        .await
        .map_err(|_| UpstreamError::ConnectTimeout(key.addr))?
        .map_err(fail)?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An HTTP/1.1 server answering 200 with an empty body, keeping connections open or closing
    /// each after one answer; counts its connections.
    async fn counting_server(keep_alive: bool) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|_r| async {
                        Ok::<_, std::convert::Infallible>(
                            Response::new(http_body_util::Empty::<Bytes>::new()),
                        )
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(keep_alive)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    async fn get(pools: &Pools, key: Key) {
        let request = Request::get("/").header("host", "x").body(crate::forward::full(Bytes::new())).unwrap();
        let response = pools.send(key, &ConnectionPolicy::default(), None, None, request).await.unwrap();
        assert_eq!(response.status(), http::StatusCode::OK);
        response.into_body().collect().await.unwrap();
    }

    #[tokio::test]
    async fn sequential_requests_share_one_connection_per_key() {
        let (addr, accepted) = counting_server(true).await;
        let pools = Pools::default();
        let direct = Key { addr, protocol: Protocol::Http1, source: None, tls: None, pool: 0 };
        for _ in 0..5 {
            get(&pools, direct).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "five requests in a row, one connection");
        // The same endpoint from a bound source address is another pool.
        let sourced = Key { source: Some("127.0.0.1".parse().unwrap()), ..direct };
        for _ in 0..3 {
            get(&pools, sourced).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        let mut counts = pools.idle_counts();
        counts.sort_by_key(|(k, _)| k.source);
        assert_eq!(counts, vec![(direct, 1), (sourced, 1)]);
    }

    #[tokio::test]
    async fn reaping_forgets_closed_connections_and_their_endpoints() {
        // Answers one request, then closes.
        let (addr, _) = counting_server(false).await;
        let pools = Pools::default();
        let key = Key { addr, protocol: Protocol::Http1, source: None, tls: None, pool: 0 };
        get(&pools, key).await;
        assert_eq!(pools.idle_counts().len(), 1);
        // The server closed the connection: once hyper notices, the reaper forgets it all.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            pools.reap(DEFAULT_IDLE_TIMEOUT);
            if pools.idle_counts().is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "the closed connection was kept");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
