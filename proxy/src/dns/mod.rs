//! The DNS proxy on 15053 (Istio's agent with `ISTIO_META_DNS_CAPTURE`): answers A and AAAA
//! for the mesh's hosts from the configuration in force and forwards every other query to the
//! pod's own resolvers.

/// The pod's DNS switches, as the injector writes them into the proxy's environment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Switches {
    /// `ISTIO_META_DNS_CAPTURE`: serve DNS on 15053.
    pub capture: bool,
    /// `ISTIO_META_DNS_AUTO_ALLOCATE`: addresses for ServiceEntries that have none.
    pub auto_allocate: bool,
}

impl Switches {
    pub fn from_env() -> Result<Switches, String> {
        Switches::read(|name| std::env::var(name).ok())
    }

    fn read(env: impl Fn(&str) -> Option<String>) -> Result<Switches, String> {
        let switch = |name: &str| match env(name) {
            None => Ok(false),
            Some(v) if v.is_empty() => Ok(false),
            Some(v) => {
                trellis_api::annotations::parse_bool(name, &v).map_err(|e| format!("{name}: {}", e.reason))
            }
        };
        Ok(Switches { capture: switch(CAPTURE)?, auto_allocate: switch(AUTO_ALLOCATE)? })
    }
}

const CAPTURE: &str = "ISTIO_META_DNS_CAPTURE";
const AUTO_ALLOCATE: &str = "ISTIO_META_DNS_AUTO_ALLOCATE";

pub mod answer;
pub mod server;
pub mod table;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use crate::Proxy;
pub use upstream::Upstreams;

/// Istio's agent port for the captured DNS.
pub const DEFAULT_PORT: u16 = 15053;

/// Binds UDP and TCP on each address (the same port for both) and serves DNS there; returns
/// where it listens. Called on the proxy's runtime.
pub fn start(
    proxy: &Arc<Proxy>,
    addrs: &[SocketAddr],
    upstreams: Upstreams,
) -> Result<Vec<SocketAddr>, String> {
    let dns = server::Dns::new(proxy.clone(), upstreams);
    let mut bound = Vec::new();
    for addr in addrs {
        let udp =
            std::net::UdpSocket::bind(addr).map_err(|e| format!("DNS: cannot listen on UDP {addr}: {e}"))?;
        // Port 0 (tests): TCP takes the port UDP got.
        let local = udp.local_addr().map_err(|e| format!("DNS: {addr}: {e}"))?;
        let tcp = crate::bind(local).map_err(|e| format!("DNS: cannot listen on TCP {local}: {e}"))?;
        udp.set_nonblocking(true).map_err(|e| format!("DNS: {local}: {e}"))?;
        let udp = tokio::net::UdpSocket::from_std(udp).map_err(|e| format!("DNS: {local}: {e}"))?;
        tokio::spawn(server::serve_udp(udp, dns.clone()));
        tokio::spawn(server::serve_tcp(tcp, dns.clone()));
        if let Ok(mut ports) = proxy.own_ports.write() {
            ports.push(local.port());
        }
        bound.push(local);
    }
    Ok(bound)
}
