//! Where a redirected connection was headed: the kernel keeps the address the client dialled
//! (before NAT rewrote it) and hands it out through `SO_ORIGINAL_DST`.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::AsFd;

use nix::sys::socket::{getsockopt, sockopt};

/// The address the client dialled, or an error when the connection was not redirected (the
/// kernel has no NAT entry for it).
pub fn original_destination(stream: &TcpStream) -> io::Result<SocketAddr> {
    original_destination_of(stream, stream.local_addr()?)
}

/// The same for any connected socket (a tokio stream, say), given its local address, which
/// tells the family.
pub fn original_destination_of<S: AsFd>(socket: &S, local: SocketAddr) -> io::Result<SocketAddr> {
    let addr = if local.is_ipv4() {
        let sa = getsockopt(socket, sockopt::OriginalDst)?;
        SocketAddr::from((Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)), u16::from_be(sa.sin_port)))
    } else {
        let sa = getsockopt(socket, sockopt::Ip6tOriginalDst)?;
        SocketAddr::from((Ipv6Addr::from(sa.sin6_addr.s6_addr), u16::from_be(sa.sin6_port)))
    };
    Ok(addr)
}
