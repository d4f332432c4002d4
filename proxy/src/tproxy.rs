//! TPROXY interception (`sidecar.istio.io/interceptionMode: TPROXY`, which the injector hands
//! the proxy as `ISTIO_META_INTERCEPTION_MODE`): the redirect's mangle rules hand a new
//! inbound connection to the inbound listener without rewriting it, so
//!
//! - the listener must be transparent (`IP_TRANSPARENT`), or the kernel finds no socket for
//!   the connection and drops it;
//! - where the client was headed is the accepted socket's own local address (there is no NAT
//!   entry, so no `SO_ORIGINAL_DST`);
//! - the app gets the connection from the client's own address: the proxy binds its upstream
//!   socket to that (non-local) address with `IP_TRANSPARENT`, and marks it with the TPROXY
//!   mark, which the redirect's rules pass over and whose connection mark routes the app's
//!   answers back to the proxy (Istio's original-source delivery).
//!
//! As in Istio, this needs `CAP_NET_ADMIN`, and the proxy runs as root in the proxy's group
//! (the redirect tells the proxy's traffic apart by group then): as the proxy's user, its
//! deliveries to the pod's address would be sent back to the inbound listener.
//!
//! The mode is set once, at start, for the whole process.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, OnceLock};

use socket2::SockRef;
use tokio::net::{TcpListener, TcpSocket};

use crate::Side;
use crate::serve::Conn;

struct Transparent {
    /// The mark on deliveries to the app (proxy-init's `--inbound-tproxy-mark`).
    mark: u32,
    /// Ports of the transparent listeners: a connection whose local port is another one came
    /// through TPROXY.
    listener_ports: Mutex<Vec<u16>>,
}

static TRANSPARENT: OnceLock<Transparent> = OnceLock::new();

#[derive(Debug, thiserror::Error)]
pub enum TproxyError {
    #[error(
        "TPROXY interception needs the NET_ADMIN capability for transparent sockets ({0}); \
         the injector grants it when sidecar.istio.io/interceptionMode is TPROXY"
    )]
    NotPermitted(io::Error),
    #[error("TPROXY interception was already set up with mark {0}")]
    AlreadyEnabled(u32),
}

/// Turns TPROXY interception on for this process, after checking that transparent sockets
/// are allowed here (so a missing capability stops the proxy at start instead of dropping
/// every inbound connection).
pub fn enable(mark: u32) -> Result<(), TproxyError> {
    let probe = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .map_err(TproxyError::NotPermitted)?;
    probe.set_ip_transparent_v4(true).map_err(TproxyError::NotPermitted)?;
    probe.set_mark(mark).map_err(TproxyError::NotPermitted)?;
    let wanted = Transparent { mark, listener_ports: Mutex::new(Vec::new()) };
    match TRANSPARENT.set(wanted) {
        Ok(()) => Ok(()),
        Err(_) => match TRANSPARENT.get() {
            Some(current) if current.mark == mark => Ok(()),
            Some(current) => Err(TproxyError::AlreadyEnabled(current.mark)),
            None => Ok(()),
        },
    }
}

pub fn enabled() -> bool {
    TRANSPARENT.get().is_some()
}

fn set_transparent(socket: SockRef<'_>, ipv4: bool) -> io::Result<()> {
    if ipv4 { socket.set_ip_transparent_v4(true) } else { socket.set_ip_transparent_v6(true) }
}

/// Makes an inbound listener transparent, when TPROXY is on.
pub fn prepare_inbound_listener(listener: &TcpListener) -> io::Result<()> {
    let Some(transparent) = TRANSPARENT.get() else { return Ok(()) };
    let local = listener.local_addr()?;
    set_transparent(SockRef::from(listener), local.is_ipv4())?;
    if let Ok(mut ports) = transparent.listener_ports.lock()
        && !ports.contains(&local.port())
    {
        ports.push(local.port());
    }
    Ok(())
}

/// Where a TPROXY'd inbound connection was headed: its own local address (`None` for anything
/// else, which then has no original destination at all).
pub fn kept_destination(side: Side, local: SocketAddr) -> Option<SocketAddr> {
    let transparent = TRANSPARENT.get()?;
    let ports = transparent.listener_ports.lock().ok()?;
    (side == Side::Inbound && !ports.is_empty() && !ports.contains(&local.port())).then_some(local)
}

/// The delivery to the app of a TPROXY'd connection: to the address the client dialled, from
/// the client's own address.
pub fn delivery(original: SocketAddr, conn: &Conn) -> Option<(SocketAddr, Option<IpAddr>)> {
    (enabled() && conn.side == Side::Inbound && conn.original == Some(conn.local))
        .then(|| (original, Some(conn.peer.ip())))
}

/// Binds an upstream socket to `source`: transparently (and marked) when TPROXY is on and the
/// source is not a loopback address, so that it may be the client's own.
pub fn bind_source(socket: &TcpSocket, source: IpAddr) -> io::Result<()> {
    if let Some(transparent) = TRANSPARENT.get()
        && !source.is_loopback()
    {
        let sock = SockRef::from(socket);
        set_transparent(SockRef::from(socket), source.is_ipv4())?;
        sock.set_mark(transparent.mark)?;
    }
    socket.bind(SocketAddr::new(source, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_tproxy_nothing_changes() {
        // This test binary never enables TPROXY.
        assert!(!enabled());
        let local: SocketAddr = "10.0.0.5:8080".parse().unwrap();
        assert_eq!(kept_destination(Side::Inbound, local), None);
    }
}
