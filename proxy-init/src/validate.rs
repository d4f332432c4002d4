//! `trellis-proxy-init validate`: proves that the redirect is in place before the app starts,
//! for pods whose rules the CNI plugin wrote (the pod itself may not write them).
//!
//! It runs as the proxy's user, listens where the redirect sends traffic (loopback, on the
//! inbound and outbound capture ports) and dials a probe port that nothing serves, at a local
//! address other than loopback's own: 127.0.0.6, and with IPv6 the pod's own IPv6 address.
//! The rules send the proxy's traffic to such addresses to the inbound capture port, so with the
//! redirect in place the connection arrives there, still carrying the probe port as its
//! original destination; without it, the connection is refused.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::original_dst::original_destination;
use crate::settings::Settings;

/// The port the probe dials (Istio's probe port too).
pub const PROBE_PORT: u16 = 15002;
/// The exit code when the redirect is missing (Istio's validation code, which operators and
/// alerts already know).
pub const EXIT_NOT_REDIRECTED: u8 = 126;

/// The IPv4 probe target: on loopback, yet not 127.0.0.1, so it takes the proxy's hairpin rule.
const PROBE_V4: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);
/// How long one connection attempt may take, and the pause between attempts.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
const RETRY_PAUSE: Duration = Duration::from_millis(100);
const ACCEPT_WAIT: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error("cannot listen on {addr} to receive the probe: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error(
        "traffic is not redirected: a connection to {target} {outcome} instead of arriving on \
         port {capture_port}. The Trellis CNI plugin did not run for this pod, or ran with other \
         settings; check the trellis-cni agent on this node"
    )]
    NotRedirected { target: SocketAddr, capture_port: u16, outcome: String },
    #[error("--probe-port {0} is also a capture port; choose a port nothing listens on")]
    ProbePortInUse(u16),
}

/// What was checked, for the log.
#[derive(Debug, PartialEq, Eq)]
pub struct Passed {
    pub target: SocketAddr,
    pub arrived_on: SocketAddr,
}

/// Checks every family the settings capture; retries each until `timeout`.
pub fn validate(
    settings: &Settings,
    probe_port: u16,
    timeout: Duration,
) -> Result<Vec<Passed>, ValidateError> {
    if probe_port == settings.proxy_port || probe_port == settings.inbound_capture_port {
        return Err(ValidateError::ProbePortInUse(probe_port));
    }
    let deadline = Instant::now() + timeout;
    let mut targets = vec![(IpAddr::V4(PROBE_V4), IpAddr::V4(Ipv4Addr::LOCALHOST))];
    if settings.ipv6 {
        // A pod without an IPv6 address has no IPv6 traffic to capture.
        if let Some(own) = own_ipv6_address() {
            targets.push((IpAddr::V6(own), IpAddr::V6(Ipv6Addr::LOCALHOST)));
        }
    }
    targets
        .into_iter()
        .map(|(target, loopback)| probe(SocketAddr::new(target, probe_port), loopback, settings, deadline))
        .collect()
}

fn probe(
    target: SocketAddr,
    loopback: IpAddr,
    settings: &Settings,
    deadline: Instant,
) -> Result<Passed, ValidateError> {
    // The outbound port listens too, so a redirect to the wrong port is reported as such.
    let listeners = [settings.inbound_capture_port, settings.proxy_port]
        .into_iter()
        .map(|port| {
            let addr = SocketAddr::new(loopback, port);
            let listener =
                TcpListener::bind(addr).map_err(|source| ValidateError::Listen { addr, source })?;
            listener.set_nonblocking(true).map_err(|source| ValidateError::Listen { addr, source })?;
            Ok(listener)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let not_redirected = |outcome: String| ValidateError::NotRedirected {
        target,
        capture_port: settings.inbound_capture_port,
        outcome,
    };
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let outcome = match TcpStream::connect_timeout(&target, remaining.min(ATTEMPT_TIMEOUT)) {
            // The handshake was answered by one of our listeners, or by something else.
            Ok(_client) => match accept_any(&listeners, deadline) {
                Some((stream, arrived_on)) => match original_destination(&stream) {
                    Ok(original)
                        if original == target && arrived_on.port() == settings.inbound_capture_port =>
                    {
                        return Ok(Passed { target, arrived_on });
                    }
                    Ok(original) => format!("arrived on port {} headed for {original}", arrived_on.port()),
                    Err(e) => {
                        format!("arrived on port {} without an original destination ({e})", arrived_on.port())
                    }
                },
                None => "was answered by something other than the capture ports".to_owned(),
            },
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => "was refused".to_owned(),
            Err(e) => format!("failed ({e})"),
        };
        if Instant::now() + RETRY_PAUSE >= deadline {
            return Err(not_redirected(outcome));
        }
        std::thread::sleep(RETRY_PAUSE);
    }
}

/// The connection a completed handshake put in one of the listeners' queues. The client's
/// final ACK may still be on its way when `connect` returns, so this waits a little.
fn accept_any(listeners: &[TcpListener], deadline: Instant) -> Option<(TcpStream, SocketAddr)> {
    let give_up = deadline.min(Instant::now() + ACCEPT_WAIT);
    loop {
        let found =
            listeners.iter().find_map(|l| l.accept().ok().and_then(|(s, _)| Some((s, l.local_addr().ok()?))));
        if found.is_some() || Instant::now() >= give_up {
            return found;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The pod's first global IPv6 address: a local address that is not loopback's own.
fn own_ipv6_address() -> Option<Ipv6Addr> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    addrs
        .filter_map(|ifa| ifa.address?.as_sockaddr_in6().map(|sa| sa.ip()))
        .find(|ip| !ip.is_loopback() && !ip.is_unicast_link_local() && !ip.is_unspecified())
}
