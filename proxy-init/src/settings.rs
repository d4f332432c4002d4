//! The redirect's knobs, named after `istio-iptables` so users recognise them, and their checks.
//! Conflicting or invalid settings fail here, before anything touches the network.

use ipnet::IpNet;
use trellis_api::annotations::{IpRangeSelection, PortSelection};

/// Ports the proxy serves and that are never captured inbound: the tunnel (15008), Prometheus
/// (15090), readiness (15021) and status (15020).
pub const ALWAYS_EXCLUDED_INBOUND: [u16; 4] = [15008, 15090, 15021, 15020];
/// Where captured DNS goes.
pub const DNS_CAPTURE_PORT: u16 = 15053;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub proxy_port: u16,
    pub inbound_capture_port: u16,
    pub proxy_uid: u32,
    pub proxy_gid: u32,
    pub include_outbound_cidrs: IpRangeSelection,
    pub exclude_outbound_cidrs: Vec<IpNet>,
    pub include_inbound_ports: PortSelection,
    pub exclude_inbound_ports: Vec<u16>,
    pub include_outbound_ports: Vec<u16>,
    pub exclude_outbound_ports: Vec<u16>,
    pub exclude_interfaces: Vec<String>,
    pub capture_dns: bool,
    pub ipv6: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            proxy_port: 15001,
            inbound_capture_port: 15006,
            proxy_uid: 1337,
            proxy_gid: 1337,
            include_outbound_cidrs: IpRangeSelection::All,
            exclude_outbound_cidrs: Vec::new(),
            include_inbound_ports: PortSelection::All,
            exclude_inbound_ports: Vec::new(),
            include_outbound_ports: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            exclude_interfaces: Vec::new(),
            capture_dns: false,
            ipv6: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{flag}: {message}")]
pub struct SettingsError {
    pub flag: &'static str,
    pub message: String,
}

impl Settings {
    /// Checks settings that are each valid but do not fit together, and returns warnings for
    /// what is ignored (IPv6 ranges without IPv6, as Istio does).
    pub fn check(&self) -> Result<Vec<String>, SettingsError> {
        let both = |a: &[u16], b: &[u16]| a.iter().copied().find(|p| b.contains(p));
        if let PortSelection::Ports(included) = &self.include_inbound_ports
            && let Some(port) = both(included, &self.exclude_inbound_ports)
        {
            return Err(SettingsError {
                flag: "-b/--include-inbound-ports",
                message: format!("port {port} is also excluded by -d/--exclude-inbound-ports"),
            });
        }
        if let Some(port) = both(&self.include_outbound_ports, &self.exclude_outbound_ports) {
            return Err(SettingsError {
                flag: "-q/--include-outbound-ports",
                message: format!("port {port} is also excluded by -o/--exclude-outbound-ports"),
            });
        }
        if self.proxy_port == self.inbound_capture_port {
            return Err(SettingsError {
                flag: "-z/--inbound-capture-port",
                message: format!("{} is also the outbound capture port (-p)", self.inbound_capture_port),
            });
        }
        let mut warnings = Vec::new();
        if !self.ipv6 {
            let v6 = |cidrs: &[IpNet]| {
                cidrs
                    .iter()
                    .filter(|c| matches!(c, IpNet::V6(_)))
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
            };
            let included = match &self.include_outbound_cidrs {
                IpRangeSelection::Ranges(r) => v6(r),
                IpRangeSelection::All => Vec::new(),
            };
            for cidr in included.iter().chain(&v6(&self.exclude_outbound_cidrs)) {
                warnings.push(format!("IPv6 range {cidr} ignored: IPv6 redirection is off"));
            }
        }
        Ok(warnings)
    }
}
