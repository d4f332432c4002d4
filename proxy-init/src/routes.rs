//! TPROXY's policy route, written over rtnetlink (the init image carries no `ip` tool): a rule
//! that looks packets carrying the TPROXY mark up in their own table, and in that table one
//! local default route on loopback, so that every marked packet is delivered to the pod
//! itself, where the proxy's transparent socket takes it. The same as
//! `ip rule add fwmark MARK lookup TABLE` and `ip route add local default dev lo table TABLE`,
//! per family. Adding twice and removing what is not there are not errors.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, send, socket,
};

use crate::rules::{Family, TproxyRoute};

const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_NEWRULE: u16 = 32;
const RTM_DELRULE: u16 = 33;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const FRA_PRIORITY: u16 = 6;
const FRA_FWMARK: u16 = 10;
const FRA_TABLE: u16 = 15;
const FR_ACT_TO_TBL: u8 = 1;
/// The rule's priority: the one `ip rule add` picks in a fresh namespace. Giving it explicitly
/// lets the kernel see that the rule is already there when the redirect is applied again.
const RULE_PRIORITY: u32 = 32765;
const RTA_OIF: u16 = 4;
const RTA_TABLE: u16 = 15;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_HOST: u8 = 254;
const RTN_LOCAL: u8 = 2;
/// The `table` byte of a request whose table is in the 32-bit attribute instead.
const RT_TABLE_COMPAT: u8 = 252;
const EEXIST: i32 = 17;
const ENOENT: i32 = 2;
const ESRCH: i32 = 3;
const EAFNOSUPPORT: i32 = 97;

fn af(family: Family) -> u8 {
    match family {
        Family::V4 => libc_af(AddressFamily::Inet),
        Family::V6 => libc_af(AddressFamily::Inet6),
    }
}

fn libc_af(family: AddressFamily) -> u8 {
    // AF_INET and AF_INET6 are 2 and 10 on Linux, which fit a byte.
    u8::try_from(family as i32).unwrap_or(0)
}

/// Adds the rule and the route for each family (in the current network namespace).
pub fn add(route: TproxyRoute, families: &[Family]) -> io::Result<()> {
    let socket = Netlink::open()?;
    for family in families {
        let create = NLM_F_CREATE | NLM_F_EXCL;
        socket.request(RTM_NEWRULE, create, &rule_body(route, *family)).or_else(ignore(&[EEXIST]))?;
        socket.request(RTM_NEWROUTE, create, &route_body(route, *family)?).or_else(ignore(&[EEXIST]))?;
    }
    Ok(())
}

/// Removes the rule (every copy) and the route, for both families.
pub fn remove(route: TproxyRoute) -> io::Result<()> {
    let socket = Netlink::open()?;
    const GONE: &[i32] = &[ENOENT, ESRCH, EAFNOSUPPORT];
    for family in [Family::V4, Family::V6] {
        // A bounded loop: each pass removes one copy of the rule.
        for _ in 0..16 {
            match socket.request(RTM_DELRULE, 0, &rule_body(route, family)) {
                Ok(()) => continue,
                Err(e) if is_errno(&e, GONE) => break,
                Err(e) => return Err(e),
            }
        }
        socket.request(RTM_DELROUTE, 0, &route_body(route, family)?).or_else(ignore(GONE))?;
    }
    Ok(())
}

/// Removes the route of Istio's default mark and table (what `--cleanup` knows of).
pub fn remove_all() -> io::Result<()> {
    remove(TproxyRoute {
        mark: crate::settings::DEFAULT_TPROXY_MARK,
        table: crate::settings::DEFAULT_TPROXY_ROUTE_TABLE,
    })
}

fn is_errno(e: &io::Error, codes: &[i32]) -> bool {
    e.raw_os_error().is_some_and(|c| codes.contains(&c))
}

fn ignore(codes: &'static [i32]) -> impl Fn(io::Error) -> io::Result<()> {
    move |e| if is_errno(&e, codes) { Ok(()) } else { Err(e) }
}

/// `struct fib_rule_hdr` and its attributes.
fn rule_body(route: TproxyRoute, family: Family) -> Vec<u8> {
    let table_byte = u8::try_from(route.table).unwrap_or(RT_TABLE_COMPAT);
    let mut body = vec![af(family), 0, 0, 0, table_byte, 0, 0, FR_ACT_TO_TBL];
    body.extend_from_slice(&0u32.to_ne_bytes());
    attr(&mut body, FRA_PRIORITY, &RULE_PRIORITY.to_ne_bytes());
    attr(&mut body, FRA_FWMARK, &route.mark.to_ne_bytes());
    attr(&mut body, FRA_TABLE, &route.table.to_ne_bytes());
    body
}

/// `struct rtmsg` and its attributes: a local default route out of loopback.
fn route_body(route: TproxyRoute, family: Family) -> io::Result<Vec<u8>> {
    let lo = nix::net::if_::if_nametoindex("lo").map_err(io::Error::from)?;
    let table_byte = u8::try_from(route.table).unwrap_or(RT_TABLE_COMPAT);
    let mut body = vec![af(family), 0, 0, 0, table_byte, RTPROT_BOOT, RT_SCOPE_HOST, RTN_LOCAL];
    body.extend_from_slice(&0u32.to_ne_bytes());
    attr(&mut body, RTA_TABLE, &route.table.to_ne_bytes());
    attr(&mut body, RTA_OIF, &lo.to_ne_bytes());
    Ok(body)
}

fn attr(body: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    body.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_ne_bytes());
    body.extend_from_slice(&kind.to_ne_bytes());
    body.extend_from_slice(payload);
    body.resize(body.len().next_multiple_of(4), 0);
}

struct Netlink(OwnedFd);

impl Netlink {
    fn open() -> io::Result<Netlink> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
        Ok(Netlink(fd))
    }

    /// Sends one request and waits for the kernel's acknowledgement.
    fn request(&self, kind: u16, flags: u16, body: &[u8]) -> io::Result<()> {
        let len =
            u32::try_from(16 + body.len()).map_err(|_| io::Error::other("netlink request too large"))?;
        let mut message = Vec::with_capacity(16 + body.len());
        message.extend_from_slice(&len.to_ne_bytes());
        message.extend_from_slice(&kind.to_ne_bytes());
        message.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        message.extend_from_slice(&1u32.to_ne_bytes());
        message.extend_from_slice(&0u32.to_ne_bytes());
        message.extend_from_slice(body);
        send(self.0.as_raw_fd(), &message, MsgFlags::empty())?;
        let mut answer = [0u8; 4096];
        let n = recv(self.0.as_raw_fd(), &mut answer, MsgFlags::empty())?;
        acknowledgement(&answer[..n])
    }
}

/// The error code of the kernel's answer: 0 is success, else a negative errno.
fn acknowledgement(answer: &[u8]) -> io::Result<()> {
    let field = |at: usize| answer.get(at..at + 4).and_then(|b| <[u8; 4]>::try_from(b).ok());
    let kind = answer.get(4..6).and_then(|b| <[u8; 2]>::try_from(b).ok()).map(u16::from_ne_bytes);
    match (kind, field(16).map(i32::from_ne_bytes)) {
        (Some(NLMSG_ERROR), Some(0)) => Ok(()),
        (Some(NLMSG_ERROR), Some(code)) => Err(io::Error::from_raw_os_error(code.saturating_neg())),
        _ => Err(io::Error::other("unexpected netlink answer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_request_carries_the_mark_and_the_table() {
        let body = rule_body(TproxyRoute { mark: 1337, table: 133 }, Family::V4);
        assert_eq!(body.len(), 12 + 8 + 8 + 8);
        assert_eq!(body[4], 133);
        assert_eq!(&body[24..28], &1337u32.to_ne_bytes());
        assert_eq!(&body[32..36], &133u32.to_ne_bytes());
    }

    #[test]
    fn answers_are_read_without_trusting_them() {
        assert!(acknowledgement(&[]).is_err());
        let mut ack = vec![0u8; 20];
        ack[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        assert!(acknowledgement(&ack).is_ok());
        ack[16..20].copy_from_slice(&(-EEXIST).to_ne_bytes());
        assert_eq!(acknowledgement(&ack).unwrap_err().raw_os_error(), Some(EEXIST));
    }
}
