//! The redirect's knobs, named after `istio-iptables` so users recognise them, and their checks.
//! Conflicting or invalid settings fail here, before anything touches the network.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use trellis_api::annotations::{InterceptionMode, IpRangeSelection, PortSelection, TrafficAnnotations};

/// Ports the proxy serves and that are never captured inbound: the tunnel (15008), Prometheus
/// (15090), readiness (15021) and status (15020).
pub const ALWAYS_EXCLUDED_INBOUND: [u16; 4] = [15008, 15090, 15021, 15020];
/// Where captured DNS goes.
pub const DNS_CAPTURE_PORT: u16 = 15053;
/// The mark TPROXY puts on inbound packets, which the policy route sends to loopback (Istio's
/// default `--inbound-tproxy-mark`).
pub const DEFAULT_TPROXY_MARK: u32 = 1337;
/// The routing table that holds that route (Istio's default `--inbound-tproxy-route-table`).
pub const DEFAULT_TPROXY_ROUTE_TABLE: u32 = 133;
/// The mark on the proxy's own calls to its pod's address in TPROXY mode, which sends them
/// through the inbound capture (Istio's value).
pub const OUTBOUND_MARK: u32 = 1338;

/// Which DNS the redirect sends to the proxy's resolver on 15053.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum DnsCapture {
    #[default]
    Off,
    /// Only queries to these resolvers (the pod's nameservers, from its resolv.conf), as Istio
    /// does, so a local resolver's own upstream queries never loop back to the proxy.
    Servers(Vec<IpAddr>),
    /// Every query on port 53, wherever it goes (the CNI case, where the pod's resolv.conf is
    /// not known).
    All,
}

/// How inbound traffic reaches the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Interception {
    /// NAT REDIRECT: the app sees the proxy's 127.0.0.6 as the client.
    #[default]
    Redirect,
    /// TPROXY in the mangle table, with a policy route that delivers marked packets locally:
    /// the connection keeps its addresses, so the app can see the real client.
    Tproxy { mark: u32, route_table: u32 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub proxy_port: u16,
    pub inbound_capture_port: u16,
    /// The proxy's users and groups, whose traffic is never captured (Istio takes lists).
    pub proxy_uids: Vec<u32>,
    pub proxy_gids: Vec<u32>,
    pub interception: Interception,
    pub include_outbound_cidrs: IpRangeSelection,
    pub exclude_outbound_cidrs: Vec<IpNet>,
    pub include_inbound_ports: PortSelection,
    pub exclude_inbound_ports: Vec<u16>,
    pub include_outbound_ports: Vec<u16>,
    pub exclude_outbound_ports: Vec<u16>,
    pub exclude_interfaces: Vec<String>,
    /// KubeVirt VM interfaces: traffic arriving on them is the VM's outbound traffic, captured
    /// as outbound (to the proxy port) and never as inbound.
    pub kubevirt_interfaces: Vec<String>,
    pub capture_dns: DnsCapture,
    pub ipv6: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            proxy_port: 15001,
            inbound_capture_port: 15006,
            proxy_uids: vec![1337],
            proxy_gids: vec![1337],
            interception: Interception::Redirect,
            include_outbound_cidrs: IpRangeSelection::All,
            exclude_outbound_cidrs: Vec::new(),
            include_inbound_ports: PortSelection::All,
            exclude_inbound_ports: Vec::new(),
            include_outbound_ports: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            exclude_interfaces: Vec::new(),
            kubevirt_interfaces: Vec::new(),
            capture_dns: DnsCapture::Off,
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
        if self.proxy_uids.is_empty() && self.proxy_gids.is_empty() {
            return Err(SettingsError {
                flag: "-u/--proxy-uid",
                message: "name the proxy's user or group (-g): without them its own traffic would be \
                          captured in a loop"
                    .to_owned(),
            });
        }
        if let Interception::Tproxy { mark, .. } = self.interception
            && mark == OUTBOUND_MARK
        {
            return Err(SettingsError {
                flag: "-t/--inbound-tproxy-mark",
                message: format!("{mark} is the mark of the proxy's own calls to the pod; choose another"),
            });
        }
        if self.proxy_port == self.inbound_capture_port {
            return Err(SettingsError {
                flag: "-z/--inbound-capture-port",
                message: format!("{} is also the outbound capture port (-p)", self.inbound_capture_port),
            });
        }
        let mut warnings = Vec::new();
        if self.capture_dns == DnsCapture::Servers(Vec::new()) {
            warnings.push(
                "DNS capture is on but the pod has no nameservers and --capture-all-dns is off: no DNS is \
                 captured"
                    .to_owned(),
            );
        }
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

    /// The redirect a pod's annotations ask for (what the injector writes in CNI mode): `None`
    /// when interception is off. Absent annotations take the flags' defaults, so a pod reads
    /// exactly as proxy-init run with the matching flags. Every bad annotation is reported.
    pub fn from_pod_annotations(
        annotations: &BTreeMap<String, String>,
        ipv6: bool,
    ) -> Result<Option<Settings>, String> {
        let t = TrafficAnnotations::from_annotations(annotations)
            .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))?;
        let interception = match t.interception_mode.unwrap_or(InterceptionMode::Redirect) {
            InterceptionMode::None => return Ok(None),
            InterceptionMode::Redirect => Interception::Redirect,
            InterceptionMode::Tproxy => {
                Interception::Tproxy { mark: DEFAULT_TPROXY_MARK, route_table: DEFAULT_TPROXY_ROUTE_TABLE }
            }
        };
        let defaults = Settings::default();
        let settings = Settings {
            include_outbound_cidrs: t.include_outbound_ip_ranges.unwrap_or(defaults.include_outbound_cidrs),
            exclude_outbound_cidrs: t.exclude_outbound_ip_ranges.unwrap_or_default(),
            include_inbound_ports: t.include_inbound_ports.unwrap_or(defaults.include_inbound_ports),
            exclude_inbound_ports: t.exclude_inbound_ports.unwrap_or_default(),
            include_outbound_ports: t.include_outbound_ports.unwrap_or_default(),
            exclude_outbound_ports: t.exclude_outbound_ports.unwrap_or_default(),
            exclude_interfaces: t.exclude_interfaces.unwrap_or_default(),
            kubevirt_interfaces: t.kubevirt_interfaces.unwrap_or_default(),
            interception,
            ipv6,
            ..defaults
        };
        settings.check().map_err(|e| format!("pod annotations conflict: {e}"))?;
        Ok(Some(settings))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn a_pod_without_annotations_gets_the_defaults() {
        let got = Settings::from_pod_annotations(&BTreeMap::new(), false).unwrap();
        assert_eq!(got, Some(Settings::default()));
    }

    #[test]
    fn annotations_map_onto_the_flags_settings() {
        let got = Settings::from_pod_annotations(
            &annotations(&[
                ("traffic.sidecar.istio.io/includeOutboundIPRanges", "10.0.0.0/8"),
                ("traffic.sidecar.istio.io/excludeOutboundIPRanges", "10.96.0.0/12"),
                ("traffic.sidecar.istio.io/includeInboundPorts", ""),
                ("traffic.sidecar.istio.io/excludeOutboundPorts", "5432"),
                ("traffic.sidecar.istio.io/excludeInterfaces", "net1"),
                ("sidecar.istio.io/interceptionMode", "REDIRECT"),
            ]),
            true,
        )
        .unwrap()
        .unwrap();
        assert_eq!(got.include_outbound_cidrs, IpRangeSelection::Ranges(vec!["10.0.0.0/8".parse().unwrap()]));
        assert_eq!(got.exclude_outbound_cidrs, vec!["10.96.0.0/12".parse::<IpNet>().unwrap()]);
        assert_eq!(got.include_inbound_ports, PortSelection::Ports(vec![]));
        assert_eq!(got.exclude_outbound_ports, vec![5432]);
        assert_eq!(got.exclude_interfaces, vec!["net1".to_owned()]);
        assert!(got.ipv6);
    }

    #[test]
    fn interception_none_means_no_redirect_and_tproxy_takes_istios_mark_and_table() {
        let none = annotations(&[("sidecar.istio.io/interceptionMode", "NONE")]);
        assert_eq!(Settings::from_pod_annotations(&none, false), Ok(None));
        let tproxy = annotations(&[
            ("sidecar.istio.io/interceptionMode", "TPROXY"),
            ("traffic.sidecar.istio.io/kubevirtInterfaces", "net1"),
        ]);
        let got = Settings::from_pod_annotations(&tproxy, false).unwrap().unwrap();
        assert_eq!(got.interception, Interception::Tproxy { mark: 1337, route_table: 133 });
        assert_eq!(got.kubevirt_interfaces, vec!["net1".to_owned()]);
    }

    #[test]
    fn bad_annotations_are_all_named() {
        let bad = annotations(&[
            ("traffic.sidecar.istio.io/excludeOutboundPorts", "99999"),
            ("traffic.sidecar.istio.io/includeOutboundIPRanges", "10.0.0.0/33"),
        ]);
        let err = Settings::from_pod_annotations(&bad, false).unwrap_err();
        assert!(err.contains("traffic.sidecar.istio.io/excludeOutboundPorts"), "{err}");
        assert!(err.contains("traffic.sidecar.istio.io/includeOutboundIPRanges"), "{err}");
        let conflict = annotations(&[
            ("traffic.sidecar.istio.io/includeInboundPorts", "8080"),
            ("traffic.sidecar.istio.io/excludeInboundPorts", "8080"),
        ]);
        let err = Settings::from_pod_annotations(&conflict, false).unwrap_err();
        assert!(err.contains("port 8080 is also excluded"), "{err}");
    }
}
