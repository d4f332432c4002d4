//! The listeners on 15053: UDP (one socket; answers from the table go out at once, forwarded
//! queries each in a task of their own) and TCP (length-prefixed messages, one after another
//! on a connection, as RFC 7766 allows).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

use super::answer::{self, Reply, Transport};
use super::table::NameTable;
use super::upstream::{Upstreams, read_framed};
use crate::Proxy;
use crate::config::Snapshot;

/// Forwarded queries in flight at once; past it a query is answered SERVFAIL at once rather
/// than queued behind resolvers that are not answering.
const MAX_FORWARDS: usize = 1024;
/// Open TCP connections at once; past it new ones are closed.
const MAX_TCP_CONNECTIONS: usize = 128;
/// A TCP connection with no query for this long is closed (RFC 7766 suggests seconds).
const TCP_IDLE: Duration = Duration::from_secs(10);
/// The largest UDP query read; a longer one arrives cut, fails to parse and gets FORMERR.
const UDP_BUFFER: usize = 4096;

/// What both listeners share.
pub struct Dns {
    proxy: Arc<Proxy>,
    upstreams: Upstreams,
    /// The table, and the configuration it was made from: remade when that changes.
    table: Mutex<(Weak<Snapshot>, Arc<NameTable>)>,
    forwards: Arc<Semaphore>,
    connections: Arc<Semaphore>,
}

impl Dns {
    pub fn new(proxy: Arc<Proxy>, upstreams: Upstreams) -> Arc<Dns> {
        Arc::new(Dns {
            proxy,
            upstreams,
            table: Mutex::new((Weak::new(), Arc::default())),
            forwards: Arc::new(Semaphore::new(MAX_FORWARDS)),
            connections: Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS)),
        })
    }

    /// The name table of the configuration in force.
    pub fn table(&self) -> Arc<NameTable> {
        let snapshot = self.proxy.config.load_full();
        let Ok(mut cached) = self.table.lock() else {
            return Arc::new(NameTable::from_config(&snapshot.source));
        };
        if !Weak::ptr_eq(&cached.0, &Arc::downgrade(&snapshot)) {
            let table = Arc::new(NameTable::from_config(&snapshot.source));
            tracing::debug!(names = table.len(), version = snapshot.version, "DNS name table");
            *cached = (Arc::downgrade(&snapshot), table);
        }
        cached.1.clone()
    }
}

pub async fn serve_udp(socket: UdpSocket, dns: Arc<Dns>) {
    let socket = Arc::new(socket);
    let mut buffer = vec![0u8; UDP_BUFFER];
    loop {
        let (n, client) = match socket.recv_from(&mut buffer).await {
            Ok(received) => received,
            // An ICMP error for an earlier answer (the client went away): nothing to do.
            Err(e) => {
                tracing::debug!("DNS over UDP: {e}");
                continue;
            }
        };
        let query = &buffer[..n];
        match answer::answer(query, &dns.table(), Transport::Udp) {
            Reply::Answer(bytes) => send(&socket, &bytes, client).await,
            Reply::Drop => {}
            Reply::Forward => match dns.forwards.clone().try_acquire_owned() {
                Ok(permit) => {
                    let (socket, dns, query) = (socket.clone(), dns.clone(), query.to_vec());
                    tokio::spawn(async move {
                        let reply = dns
                            .upstreams
                            .exchange_udp(&query)
                            .await
                            .map_or_else(|| answer::failure(&query), Reply::Answer);
                        if let Reply::Answer(bytes) = reply {
                            send(&socket, &bytes, client).await;
                        }
                        drop(permit);
                    });
                }
                Err(_) => {
                    if let Reply::Answer(bytes) = answer::failure(query) {
                        send(&socket, &bytes, client).await;
                    }
                }
            },
        }
    }
}

async fn send(socket: &UdpSocket, bytes: &[u8], client: SocketAddr) {
    if let Err(e) = socket.send_to(bytes, client).await {
        tracing::debug!(%client, "DNS over UDP: {e}");
    }
}

pub async fn serve_tcp(listener: TcpListener, dns: Arc<Dns>) {
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::debug!("DNS over TCP: accept: {e}");
                // Out of descriptors: give the others a moment to close.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = dns.connections.clone().try_acquire_owned() else {
            tracing::debug!(%client, "DNS over TCP: {MAX_TCP_CONNECTIONS} connections open, closing");
            continue;
        };
        let dns = dns.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_connection(stream, &dns).await {
                tracing::debug!(%client, "DNS over TCP: {e}");
            }
            drop(permit);
        });
    }
}

/// Queries one after another until the client closes or stays idle.
async fn serve_connection(mut stream: TcpStream, dns: &Dns) -> std::io::Result<()> {
    loop {
        let query = match tokio::time::timeout(TCP_IDLE, read_framed(&mut stream)).await {
            Ok(Ok(query)) => query,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()),
        };
        let reply = match answer::answer(&query, &dns.table(), Transport::Tcp) {
            Reply::Forward => dns
                .upstreams
                .exchange_tcp(&query)
                .await
                .map_or_else(|| answer::failure(&query), Reply::Answer),
            other => other,
        };
        let Reply::Answer(bytes) = reply else {
            // Nothing to say to something that is not a query: the connection is not a DNS client's.
            return Ok(());
        };
        let Ok(length) = u16::try_from(bytes.len()) else {
            return Ok(());
        };
        let mut framed = Vec::with_capacity(bytes.len() + 2);
        framed.extend_from_slice(&length.to_be_bytes());
        framed.extend_from_slice(&bytes);
        stream.write_all(&framed).await?;
    }
}
