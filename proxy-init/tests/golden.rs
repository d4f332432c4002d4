//! Golden tests of the rule text, for both backends, over the knobs one at a time and a few
//! combinations. `TRELLIS_UPDATE_GOLDEN=1` rewrites the files; review the diff.
//!
//! As root, every golden is also checked by the real tools inside a network namespace the test
//! creates and removes: `nft -c -f` and `iptables-restore --test`.

use std::path::{Path, PathBuf};

use trellis_proxy_init::testing::{in_scratch_namespace, run_in};

use trellis_api::annotations::{IpRangeSelection, PortSelection};
use trellis_proxy_init::rules::build;
use trellis_proxy_init::settings::{DnsCapture, Interception, Settings};
use trellis_proxy_init::{iptables, nft};

fn cidrs(list: &[&str]) -> Vec<ipnet::IpNet> {
    list.iter().map(|c| c.parse().unwrap()).collect()
}

fn dns(servers: &[&str]) -> DnsCapture {
    DnsCapture::Servers(servers.iter().map(|s| s.parse().unwrap()).collect())
}

fn cases() -> Vec<(&'static str, Settings)> {
    let d = Settings::default;
    vec![
        ("default", d()),
        ("proxy-port", Settings { proxy_port: 16001, ..d() }),
        ("inbound-capture-port", Settings { inbound_capture_port: 16006, ..d() }),
        ("proxy-uid-gid", Settings { proxy_uids: vec![2000], proxy_gids: vec![3000], ..d() }),
        (
            "include-outbound-cidrs",
            Settings {
                include_outbound_cidrs: IpRangeSelection::Ranges(cidrs(&["10.0.0.0/8", "172.16.0.0/12"])),
                ..d()
            },
        ),
        (
            "include-outbound-none",
            Settings { include_outbound_cidrs: IpRangeSelection::Ranges(vec![]), ..d() },
        ),
        (
            "exclude-outbound-cidrs",
            Settings { exclude_outbound_cidrs: cidrs(&["169.254.169.254/32", "10.96.0.0/12"]), ..d() },
        ),
        (
            "include-inbound-ports",
            Settings { include_inbound_ports: PortSelection::Ports(vec![8080, 9090]), ..d() },
        ),
        ("include-inbound-none", Settings { include_inbound_ports: PortSelection::Ports(vec![]), ..d() }),
        ("exclude-inbound-ports", Settings { exclude_inbound_ports: vec![9901, 15020], ..d() }),
        ("exclude-outbound-ports", Settings { exclude_outbound_ports: vec![5432, 6379], ..d() }),
        (
            "include-outbound-ports",
            Settings {
                include_outbound_ports: vec![443],
                include_outbound_cidrs: IpRangeSelection::Ranges(vec![]),
                ..d()
            },
        ),
        ("exclude-interfaces", Settings { exclude_interfaces: vec!["eth1".into(), "net1".into()], ..d() }),
        ("dns-capture", Settings { capture_dns: dns(&["10.96.0.10"]), ..d() }),
        ("dual-stack", Settings { ipv6: true, ..d() }),
        (
            "dual-stack-cidrs",
            Settings {
                ipv6: true,
                include_outbound_cidrs: IpRangeSelection::Ranges(cidrs(&["10.0.0.0/8", "fd00::/8"])),
                exclude_outbound_cidrs: cidrs(&["10.96.0.0/12", "fd00:96::/64"]),
                ..d()
            },
        ),
        ("dual-stack-dns", Settings { ipv6: true, capture_dns: dns(&["10.96.0.10", "fd00::a"]), ..d() }),
        (
            "ipv6-cidrs-ignored-without-ipv6",
            Settings { exclude_outbound_cidrs: cidrs(&["fd00::/8", "10.0.0.0/8"]), ..d() },
        ),
        ("injector-defaults", Settings { exclude_inbound_ports: vec![15090, 15021, 15020], ..d() }),
        (
            "cni-style",
            Settings {
                exclude_inbound_ports: vec![9901],
                exclude_outbound_cidrs: cidrs(&["169.254.169.254/32"]),
                exclude_outbound_ports: vec![5432],
                ..d()
            },
        ),
        (
            "everything",
            Settings {
                proxy_port: 16001,
                inbound_capture_port: 16006,
                include_outbound_cidrs: IpRangeSelection::Ranges(cidrs(&["10.0.0.0/8", "fd00::/8"])),
                exclude_outbound_cidrs: cidrs(&["10.0.0.1/32", "fd00::1/128"]),
                include_inbound_ports: PortSelection::Ports(vec![8080]),
                exclude_inbound_ports: vec![9901],
                include_outbound_ports: vec![443],
                exclude_outbound_ports: vec![5432],
                exclude_interfaces: vec!["eth1".into()],
                capture_dns: DnsCapture::All,
                ipv6: true,
                ..d()
            },
        ),
        (
            "proxy-uid-gid-lists",
            Settings {
                proxy_uids: vec![3, 4],
                proxy_gids: vec![1, 2],
                capture_dns: dns(&["10.96.0.10"]),
                ..d()
            },
        ),
        ("dns-capture-all", Settings { capture_dns: DnsCapture::All, ipv6: true, ..d() }),
        (
            "loopback-include",
            Settings { include_outbound_cidrs: IpRangeSelection::Ranges(cidrs(&["127.1.2.3/32"])), ..d() },
        ),
        (
            "kubevirt",
            Settings {
                kubevirt_interfaces: vec!["net1".into()],
                include_outbound_cidrs: IpRangeSelection::Ranges(cidrs(&["10.0.0.0/8"])),
                ..d()
            },
        ),
        (
            "tproxy",
            Settings {
                interception: Interception::Tproxy { mark: 1337, route_table: 133 },
                exclude_interfaces: vec!["eth1".into()],
                capture_dns: dns(&["10.96.0.10"]),
                ipv6: true,
                ..d()
            },
        ),
        (
            "tproxy-inbound-ports",
            Settings {
                interception: Interception::Tproxy { mark: 1337, route_table: 133 },
                include_inbound_ports: PortSelection::Ports(vec![8080]),
                ..d()
            },
        ),
        (
            "no-capture-at-all",
            Settings {
                include_outbound_cidrs: IpRangeSelection::Ranges(vec![]),
                include_inbound_ports: PortSelection::Ports(vec![]),
                ..d()
            },
        ),
    ]
}

fn iptables_text(settings: &Settings) -> String {
    build(settings)
        .families
        .iter()
        .map(|f| format!("# {:?}\n{}", f.family, iptables::restore_payload(f)))
        .collect()
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

#[test]
fn rule_text_matches_the_golden_files() {
    let cases = cases();
    assert!(cases.len() >= 20);
    let update = std::env::var_os("TRELLIS_UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for (name, settings) in &cases {
        assert!(settings.check().is_ok(), "{name}: settings rejected");
        let set = build(settings);
        for (ext, text) in [("nft", nft::script(&set)), ("iptables", iptables_text(settings))] {
            let path = golden_dir().join(format!("{name}.{ext}"));
            if update {
                std::fs::write(&path, &text).unwrap();
            } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                failures.push(format!(
                    "{}: differs (run with TRELLIS_UPDATE_GOLDEN=1 and review)",
                    path.display()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn conflicting_settings_fail_before_anything_is_applied() {
    let both_inbound = Settings {
        include_inbound_ports: PortSelection::Ports(vec![8080]),
        exclude_inbound_ports: vec![8080],
        ..Settings::default()
    };
    assert_eq!(
        both_inbound.check().unwrap_err().to_string(),
        "-b/--include-inbound-ports: port 8080 is also excluded by -d/--exclude-inbound-ports"
    );
    let both_outbound = Settings {
        include_outbound_ports: vec![443],
        exclude_outbound_ports: vec![443],
        ..Settings::default()
    };
    assert!(both_outbound.check().unwrap_err().to_string().starts_with("-q/--include-outbound-ports"));
    let same_ports = Settings { inbound_capture_port: 15001, ..Settings::default() };
    assert!(same_ports.check().is_err());
    let v6_off = Settings { exclude_outbound_cidrs: cidrs(&["fd00::/8"]), ..Settings::default() };
    assert_eq!(
        v6_off.check().unwrap(),
        vec!["IPv6 range fd00::/8 ignored: IPv6 redirection is off".to_owned()]
    );
}

#[test]
fn the_real_tools_accept_every_golden() {
    in_scratch_namespace(|ns| {
        for (name, settings) in cases() {
            let set = build(&settings);
            run_in(ns, &["nft", "-c", "-f", "-"], &nft::script(&set))
                .unwrap_or_else(|e| panic!("{name}: nft: {e}"));
            for family in &set.families {
                let tool = match family.family {
                    trellis_proxy_init::rules::Family::V4 => "iptables-restore",
                    trellis_proxy_init::rules::Family::V6 => "ip6tables-restore",
                };
                run_in(ns, &[tool, "--noflush", "--test"], &iptables::restore_payload(family))
                    .unwrap_or_else(|e| panic!("{name}: {tool}: {e}"));
            }
        }
    });
}
