//! The demo's network, as root: a hub network namespace of its own holding a bridge (the
//! control plane's address, the pods' gateway), and a namespace per pod joined to the bridge by
//! a veth pair. Every link lives inside a namespace the demo made, so removing the namespaces
//! removes everything; nothing touches the host's own network.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

use super::plan::PREFIX_LEN;

/// Every namespace of the demo starts with this (the hub is exactly this name).
pub const PREFIX: &str = "trellis-demo";
const BRIDGE: &str = "tdbr0";

pub fn hub_namespace() -> String {
    PREFIX.to_owned()
}

pub fn pod_namespace(pod: &str) -> String {
    format!("{PREFIX}-{pod}")
}

pub fn namespace_path(name: &str) -> PathBuf {
    PathBuf::from("/var/run/netns").join(name)
}

/// Runs `ip` with these arguments; the error quotes the command and what it said.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// The hub: a namespace with loopback up and the bridge holding `gateway`.
pub fn create_hub(gateway: Ipv4Addr) -> Result<(), String> {
    let hub = hub_namespace();
    ip(&["netns", "add", &hub])?;
    ip(&["-n", &hub, "link", "set", "lo", "up"])?;
    ip(&["-n", &hub, "link", "add", BRIDGE, "type", "bridge"])?;
    ip(&["-n", &hub, "addr", "add", &format!("{gateway}/{PREFIX_LEN}"), "dev", BRIDGE])?;
    ip(&["-n", &hub, "link", "set", BRIDGE, "up"])
}

/// A pod's namespace: `eth0` with the pod's address, the other end of the pair on the hub's
/// bridge, and a default route through the gateway (virtual IPs have no host; the redirect
/// takes such connections before they leave).
pub fn create_pod(index: usize, pod: &str, address: Ipv4Addr, gateway: Ipv4Addr) -> Result<(), String> {
    let (hub, ns) = (hub_namespace(), pod_namespace(pod));
    // Names are per namespace, so short ones cannot clash with the host's.
    let hub_end = format!("tdv{index}");
    ip(&["netns", "add", &ns])?;
    ip(&["-n", &ns, "link", "set", "lo", "up"])?;
    ip(&["-n", &hub, "link", "add", &hub_end, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
    ip(&["-n", &hub, "link", "set", &hub_end, "master", BRIDGE, "up"])?;
    ip(&["-n", &ns, "addr", "add", &format!("{address}/{PREFIX_LEN}"), "dev", "eth0"])?;
    ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
    ip(&["-n", &ns, "route", "add", "default", "via", &gateway.to_string()])
}

/// The demo's namespaces that exist now (from this run or an earlier one).
pub fn existing() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/var/run/netns") else { return Vec::new() };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name == PREFIX || name.starts_with(&format!("{PREFIX}-")))
        .collect();
    names.sort();
    names
}

/// Removes a namespace and with it every link inside.
pub fn delete(name: &str) -> Result<(), String> {
    ip(&["netns", "del", name])
}

/// The processes inside a namespace (`ip netns pids`).
pub fn pids_in(name: &str) -> Vec<u32> {
    let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect()
}
