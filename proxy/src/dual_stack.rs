//! Whether the proxy listens on IPv6 as well as IPv4.
//!
//! The redirect (proxy-init's `--ipv6`, or the CNI plugin when the pod's network result has an
//! IPv6 address) sends IPv6 connections to the same 15001/15006 ports; a proxy listening on
//! IPv4 only would leave them refused. Istio's agent decides from ISTIO_AGENT_DUAL_STACK and
//! the pod's addresses; so does this: the flag, the metadata switch, INSTANCE_IP(S), or an
//! IPv6 address on one of the pod's interfaces (what the CNI plugin saw when it wrote the
//! rules). A host with IPv6 turned off keeps serving IPv4, with a log line saying why.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// Why the proxy listens on IPv6, for the log line; `None`: it does not.
pub fn reason(
    flag: bool,
    dual_stack_switch: Option<&str>,
    instance_ips: &[Option<String>],
    if_inet6: Option<&str>,
) -> Option<String> {
    if flag {
        return Some("--ipv6".to_owned());
    }
    match dual_stack_switch.map(parse_go_bool) {
        Some(Ok(true)) => return Some("ISTIO_AGENT_DUAL_STACK".to_owned()),
        Some(Ok(false)) | None => {}
        Some(Err(value)) => tracing::warn!(
            "ISTIO_AGENT_DUAL_STACK: invalid value {value:?}: expected true or false; deciding from the pod's addresses"
        ),
    }
    for ips in instance_ips.iter().flatten() {
        if let Some(v6) = ips.split(',').map(str::trim).find(|ip| matches!(ip.parse(), Ok(IpAddr::V6(_)))) {
            return Some(format!("the pod address {v6}"));
        }
    }
    let own = if_inet6.map(pod_ipv6_addresses).unwrap_or_default();
    own.first().map(|(ip, interface)| format!("the address {ip} on {interface}"))
}

/// The same values Go's `strconv.ParseBool` takes, as Istio reads its switches.
fn parse_go_bool(value: &str) -> Result<bool, &str> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        other => Err(other),
    }
}

/// The addresses of `/proc/net/if_inet6` a peer could dial: not loopback, not link-local
/// (the kernel gives every interface one of those, with or without an IPv6 network). Lines
/// that do not parse are skipped: the file is the kernel's, but a reader must not trust it.
pub fn pod_ipv6_addresses(if_inet6: &str) -> Vec<(Ipv6Addr, String)> {
    if_inet6
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let hex = fields.next()?;
            let interface = fields.nth(4)?;
            if hex.len() != 32 || fields.next().is_some() {
                return None;
            }
            let bits = u128::from_str_radix(hex, 16).ok()?;
            let ip = Ipv6Addr::from(bits);
            let usable = !ip.is_loopback() && !ip.is_unspecified() && !ip.is_unicast_link_local();
            usable.then(|| (ip, interface.to_owned()))
        })
        .collect()
}

/// Whether this host can serve IPv6: the kernel may have it off (`ipv6.disable=1`: no IPv6
/// sockets; `disable_ipv6`: no `::1`). Inbound IPv6 is delivered to the app on `::1`, so that
/// is the address tried.
pub fn ipv6_available() -> Result<(), std::io::Error> {
    std::net::TcpListener::bind(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 0)).map(drop)
}

/// The decision from the process's own environment, logged; falls back to IPv4 only when
/// IPv6 is wanted but the host cannot listen on it.
pub fn listen_on_ipv6(flag: bool) -> bool {
    let var = |name| std::env::var(name).ok();
    let if_inet6 = std::fs::read_to_string("/proc/net/if_inet6").ok();
    let switch = var("ISTIO_AGENT_DUAL_STACK");
    let Some(why) =
        reason(flag, switch.as_deref(), &[var("INSTANCE_IPS"), var("INSTANCE_IP")], if_inet6.as_deref())
    else {
        return false;
    };
    match ipv6_available() {
        Ok(()) => {
            tracing::info!("listening on IPv6 too ([::]): {why}");
            true
        }
        Err(e) => {
            tracing::warn!(
                error = %e,
                "IPv6 wanted ({why}) but this host cannot listen on it: listening on IPv4 only"
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{pod_ipv6_addresses, reason};

    const V4_ONLY_POD: &str = "00000000000000000000000000000001 01 80 10 80       lo\n\
                               fe8000000000000000fc00fffe000001 04 40 20 80     eth0\n";
    const DUAL_STACK_POD: &str = "00000000000000000000000000000001 01 80 10 80       lo\n\
                                  fd000000000000000000000000000002 04 40 00 82     eth0\n";

    #[test]
    fn a_pod_with_a_routable_ipv6_address_listens_on_ipv6() {
        assert_eq!(reason(false, None, &[], Some(V4_ONLY_POD)), None, "link-local and ::1 only");
        assert_eq!(reason(false, None, &[], Some(DUAL_STACK_POD)).unwrap(), "the address fd00::2 on eth0");
        assert_eq!(reason(false, None, &[], None), None, "no /proc/net/if_inet6: IPv6 is off");
    }

    #[test]
    fn the_flag_the_switch_and_instance_ips_decide_too() {
        assert_eq!(reason(true, None, &[], None).unwrap(), "--ipv6");
        assert_eq!(reason(false, Some("true"), &[], None).unwrap(), "ISTIO_AGENT_DUAL_STACK");
        assert_eq!(reason(false, Some("false"), &[], None), None);
        let ips = [Some("10.1.0.4, fd00:10::4".to_owned()), Some("10.1.0.4".to_owned())];
        assert_eq!(reason(false, None, &ips, None).unwrap(), "the pod address fd00:10::4");
        assert_eq!(reason(false, None, &[Some("10.1.0.4".to_owned()), None], Some(V4_ONLY_POD)), None);
    }

    #[test]
    fn hostile_values_are_ignored_not_trusted() {
        // A switch that is not a boolean is not "on".
        assert_eq!(reason(false, Some("maybe"), &[], None), None);
        let ips = [Some("::::,fd00::zz,\u{0}".to_owned())];
        assert_eq!(reason(false, None, &ips, None), None);
        let garbage = "not hex at all 1 2 3 4 eth0\n\
                       fd00000000000000000000000000002 04 40 00 82 eth0\n\
                       fd000000000000000000000000000002 04 40 00 82\n\
                       fd000000000000000000000000000002 04 40 00 82 eth0 extra\n\
                       \n";
        assert!(pod_ipv6_addresses(garbage).is_empty());
        let huge = "f".repeat(1 << 20);
        assert!(pod_ipv6_addresses(&huge).is_empty());
    }
}
