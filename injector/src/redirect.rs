//! The pod's redirect: what `trellis-proxy-init` is told to capture (its arguments, named after
//! istio-iptables' flags), or in CNI mode the annotations the CNI plugin reads instead.
//!
//! Istio's template gives istio-iptables the traffic annotations as flags and the pod's
//! `proxyMetadata` as environment, from which istio-iptables reads switches of its own:
//! `ISTIO_META_DNS_CAPTURE` (send DNS to the agent on 15053), `CAPTURE_ALL_DNS` (all of port 53,
//! not only the pod's nameservers) and `ISTIO_AGENT_DUAL_STACK` (write the IPv6 rules as well).
//! `trellis-proxy-init` takes everything as flags, so the injector turns those switches into
//! `--capture-dns`, `--capture-all-dns` and `--ipv6`.

use std::collections::BTreeMap;

use trellis_api::annotations::{
    self, AnnotationError, InterceptionMode, IpRangeSelection, PortSelection, TrafficAnnotations, names,
};

/// Ports the proxy serves itself; inbound traffic to them is never redirected.
const PROXY_INBOUND_EXCLUDES: [u16; 2] = [15090, 15021];

/// `proxyMetadata` switch: capture the pod's DNS and answer it from the proxy (port 15053).
pub const DNS_CAPTURE_METADATA: &str = "ISTIO_META_DNS_CAPTURE";
/// `proxyMetadata` switch: with DNS capture, take every query on port 53.
pub const CAPTURE_ALL_DNS_METADATA: &str = "CAPTURE_ALL_DNS";
/// `proxyMetadata` switch: redirect IPv6 as well as IPv4.
pub const DUAL_STACK_METADATA: &str = "ISTIO_AGENT_DUAL_STACK";

/// Everything that decides how the pod's traffic reaches the proxy.
#[derive(Clone, Debug)]
pub struct Redirect {
    pub traffic: TrafficAnnotations,
    pub mode: InterceptionMode,
    /// Never captured inbound, like the proxy's other ports; 0 means the proxy serves none.
    pub status_port: u16,
    pub switches: MetadataSwitches,
}

/// The `proxyMetadata` switches the redirect reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetadataSwitches {
    pub capture_dns: bool,
    pub capture_all_dns: bool,
    pub dual_stack: bool,
}

impl MetadataSwitches {
    /// Reads the switches, checked as booleans the way istio-iptables reads them. `source`
    /// names where the metadata came from, for the error.
    pub fn read(
        metadata: &BTreeMap<String, String>,
        source: &dyn Fn(&str) -> String,
    ) -> Result<MetadataSwitches, Vec<AnnotationError>> {
        let mut errors = Vec::new();
        let mut switch = |key: &str| match metadata.get(key) {
            None => false,
            Some(value) => annotations::parse_bool(&source(key), value).unwrap_or_else(|e| {
                errors.push(e);
                false
            }),
        };
        let switches = MetadataSwitches {
            capture_dns: switch(DNS_CAPTURE_METADATA),
            capture_all_dns: switch(CAPTURE_ALL_DNS_METADATA),
            dual_stack: switch(DUAL_STACK_METADATA),
        };
        if errors.is_empty() { Ok(switches) } else { Err(errors) }
    }
}

impl Redirect {
    /// Whether anything is redirected at all (`NONE` leaves the pod's traffic alone).
    pub fn is_on(&self) -> bool {
        self.mode != InterceptionMode::None
    }

    /// `trellis-proxy-init` arguments.
    pub fn args(&self) -> Vec<String> {
        let mut args: Vec<String> =
            ["-p", "15001", "-z", "15006", "-u", "1337", "-g", "1337", "-m", self.mode.as_str()]
                .map(String::from)
                .to_vec();
        for (flag, value) in self.effective().flags() {
            if flag.always || !value.is_empty() {
                args.push(flag.flag.to_owned());
                args.push(value);
            }
        }
        let MetadataSwitches { capture_dns, capture_all_dns, dual_stack } = self.switches;
        if capture_dns {
            args.push("--capture-dns".to_owned());
            // Only meaningful with capture, as in istio-iptables.
            if capture_all_dns {
                args.push("--capture-all-dns".to_owned());
            }
        }
        if dual_stack {
            args.push("--ipv6".to_owned());
        }
        args
    }

    /// The traffic annotations the CNI plugin programs the redirect from, every one written
    /// (empty ones too: an empty include list means "capture nothing", which an absent
    /// annotation would not say).
    pub fn cni_annotations(&self) -> impl Iterator<Item = (&'static str, String)> {
        self.effective().flags().map(|(flag, value)| (flag.annotation, value))
    }

    /// The settings with Istio's defaults filled in.
    fn effective(&self) -> EffectiveTraffic {
        let t = &self.traffic;
        let ports = |p: &[u16]| p.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
        let ranges = |r: &[ipnet::IpNet]| r.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
        // The proxy's own ports are never captured inbound; the user's exclusions come first.
        let mut exclude_inbound = t.exclude_inbound_ports.clone().unwrap_or_default();
        let status = (self.status_port != 0).then_some(self.status_port);
        for port in PROXY_INBOUND_EXCLUDES.into_iter().chain(status) {
            if !exclude_inbound.contains(&port) {
                exclude_inbound.push(port);
            }
        }
        EffectiveTraffic {
            include_outbound: match &t.include_outbound_ip_ranges {
                None | Some(IpRangeSelection::All) => "*".to_owned(),
                Some(IpRangeSelection::Ranges(r)) => ranges(r),
            },
            exclude_outbound: ranges(t.exclude_outbound_ip_ranges.as_deref().unwrap_or_default()),
            include_inbound: match &t.include_inbound_ports {
                None | Some(PortSelection::All) => "*".to_owned(),
                Some(PortSelection::Ports(p)) => ports(p),
            },
            exclude_inbound: ports(&exclude_inbound),
            include_outbound_ports: ports(t.include_outbound_ports.as_deref().unwrap_or_default()),
            exclude_outbound_ports: ports(t.exclude_outbound_ports.as_deref().unwrap_or_default()),
            exclude_interfaces: t.exclude_interfaces.as_deref().unwrap_or_default().join(","),
            kubevirt_interfaces: t.kubevirt_interfaces.as_deref().unwrap_or_default().join(","),
        }
    }
}

/// The effective redirect settings, each as its flag's value.
struct EffectiveTraffic {
    include_outbound: String,
    exclude_outbound: String,
    include_inbound: String,
    exclude_inbound: String,
    include_outbound_ports: String,
    exclude_outbound_ports: String,
    exclude_interfaces: String,
    kubevirt_interfaces: String,
}

/// A redirect setting as both a proxy-init flag and the annotation the CNI plugin reads.
struct RedirectFlag {
    flag: &'static str,
    annotation: &'static str,
    /// Passed even when empty: for the include lists, empty means "nothing".
    always: bool,
}

const REDIRECT_FLAGS: [RedirectFlag; 8] = {
    use names::annotation as ann;
    [
        RedirectFlag { flag: "-i", annotation: ann::INCLUDE_OUTBOUND_IP_RANGES, always: true },
        RedirectFlag { flag: "-x", annotation: ann::EXCLUDE_OUTBOUND_IP_RANGES, always: false },
        RedirectFlag { flag: "-b", annotation: ann::INCLUDE_INBOUND_PORTS, always: true },
        RedirectFlag { flag: "-d", annotation: ann::EXCLUDE_INBOUND_PORTS, always: false },
        RedirectFlag { flag: "-q", annotation: ann::INCLUDE_OUTBOUND_PORTS, always: false },
        RedirectFlag { flag: "-o", annotation: ann::EXCLUDE_OUTBOUND_PORTS, always: false },
        RedirectFlag { flag: "-c", annotation: ann::EXCLUDE_INTERFACES, always: false },
        RedirectFlag { flag: "-k", annotation: ann::KUBEVIRT_INTERFACES, always: false },
    ]
};

impl EffectiveTraffic {
    /// Each setting with its flag, in `REDIRECT_FLAGS` order.
    fn flags(self) -> impl Iterator<Item = (&'static RedirectFlag, String)> {
        let values = [
            self.include_outbound,
            self.exclude_outbound,
            self.include_inbound,
            self.exclude_inbound,
            self.include_outbound_ports,
            self.exclude_outbound_ports,
            self.exclude_interfaces,
            self.kubevirt_interfaces,
        ];
        REDIRECT_FLAGS.iter().zip(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect(traffic: TrafficAnnotations) -> Redirect {
        Redirect {
            traffic,
            mode: InterceptionMode::Redirect,
            status_port: 15020,
            switches: MetadataSwitches::default(),
        }
    }

    #[test]
    fn arguments_carry_istio_defaults() {
        let args = redirect(TrafficAnnotations::default()).args();
        assert_eq!(
            args.join(" "),
            "-p 15001 -z 15006 -u 1337 -g 1337 -m REDIRECT -i * -b * -d 15090,15021,15020"
        );
        let t = TrafficAnnotations {
            exclude_inbound_ports: Some(vec![9901, 15021]),
            exclude_outbound_ports: Some(vec![5432]),
            ..TrafficAnnotations::default()
        };
        let args = redirect(t).args();
        assert!(args.join(" ").ends_with("-d 9901,15021,15090,15020 -o 5432"), "{args:?}");
    }

    #[test]
    fn tproxy_dns_capture_and_dual_stack_reach_the_flags() {
        let switches = MetadataSwitches { capture_dns: true, capture_all_dns: true, dual_stack: true };
        let r =
            Redirect { mode: InterceptionMode::Tproxy, switches, ..redirect(TrafficAnnotations::default()) };
        let args = r.args().join(" ");
        assert!(args.contains("-m TPROXY"), "{args}");
        assert!(args.ends_with("--capture-dns --capture-all-dns --ipv6"), "{args}");
        // Capturing all DNS means nothing without capturing DNS.
        let switches = MetadataSwitches { capture_all_dns: true, ..MetadataSwitches::default() };
        let args = Redirect { switches, ..redirect(TrafficAnnotations::default()) }.args().join(" ");
        assert!(!args.contains("dns"), "{args}");
    }

    #[test]
    fn metadata_switches_read_istio_booleans() {
        let source = |key: &str| format!("proxy.istio.io/config proxyMetadata.{key}");
        let meta = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
        };
        let read = |pairs: &[(&str, &str)]| MetadataSwitches::read(&meta(pairs), &source);
        assert_eq!(read(&[]).unwrap(), MetadataSwitches::default());
        let on =
            [("ISTIO_META_DNS_CAPTURE", "true"), ("CAPTURE_ALL_DNS", "T"), ("ISTIO_AGENT_DUAL_STACK", "1")];
        assert_eq!(
            read(&on).unwrap(),
            MetadataSwitches { capture_dns: true, capture_all_dns: true, dual_stack: true }
        );
        assert_eq!(read(&[("ISTIO_META_DNS_CAPTURE", "False")]).unwrap(), MetadataSwitches::default());
        let bad = [("ISTIO_META_DNS_CAPTURE", "yes"), ("ISTIO_AGENT_DUAL_STACK", "")];
        let errors = read(&bad).unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                r#"annotation proxy.istio.io/config proxyMetadata.ISTIO_META_DNS_CAPTURE: invalid value "yes": expected true or false"#,
                r#"annotation proxy.istio.io/config proxyMetadata.ISTIO_AGENT_DUAL_STACK: invalid value "": expected true or false"#,
            ]
        );
    }
}
