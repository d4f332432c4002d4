//! The rule set as one `nft -f` transaction on our own `inet` table, replaced whole: the table
//! is created (if missing), deleted and written again in a single transaction, so applying
//! twice gives the same state and a failure changes nothing. iptables' tables become base
//! chains at their priorities (raw, mangle, nat) in this one table.

use std::fmt::Write;

use crate::rules::{Chain, Family, Match, Protocol, RuleSet, Target};

pub const TABLE: &str = "trellis";

pub fn script(set: &RuleSet) -> String {
    let mut out = format!("table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n");
    // The nat hooks always exist (an empty table still says where we hook); the others only
    // when something uses them.
    let mut chains: Vec<Chain> = vec![Chain::Prerouting, Chain::Output];
    for chain in Chain::BUILTIN.into_iter().chain(Chain::OURS) {
        let used = set.families.iter().any(|f| {
            f.rules.iter().any(|r| r.chain == chain) || (!chain.is_builtin() && f.chains().contains(&chain))
        });
        if used && !chains.contains(&chain) {
            chains.push(chain);
        }
    }
    for chain in chains {
        let _ = writeln!(out, "\tchain {} {{", chain.nft_name());
        if let Some(hook) = base_chain(chain) {
            let _ = writeln!(out, "\t\t{hook}");
        }
        for family in &set.families {
            for rule in family.rules.iter().filter(|r| r.chain == chain) {
                let _ = writeln!(out, "\t\t{}", rule_text(family.family, &rule.matches, rule.target));
            }
        }
        out.push_str("\t}\n");
    }
    out.push_str("}\n");
    out
}

fn base_chain(chain: Chain) -> Option<&'static str> {
    Some(match chain {
        Chain::Prerouting => "type nat hook prerouting priority dstnat; policy accept;",
        Chain::Output => "type nat hook output priority -100; policy accept;",
        Chain::ManglePrerouting => "type filter hook prerouting priority mangle; policy accept;",
        // A route chain: a changed mark makes the kernel route the packet again.
        Chain::MangleOutput => "type route hook output priority mangle; policy accept;",
        Chain::RawPrerouting => "type filter hook prerouting priority raw; policy accept;",
        Chain::RawOutput => "type filter hook output priority raw; policy accept;",
        _ => return None,
    })
}

/// Removes every trace: the table and all it holds.
pub fn cleanup_script() -> String {
    format!("table inet {TABLE}\ndelete table inet {TABLE}\n")
}

fn rule_text(family: Family, matches: &[Match], target: Target) -> String {
    let (nfproto, ip) = match family {
        Family::V4 => ("ipv4", "ip"),
        Family::V6 => ("ipv6", "ip6"),
    };
    let mut words = vec![format!("meta nfproto {nfproto}")];
    for m in matches {
        words.push(match m {
            Match::Protocol(Protocol::Tcp) => "meta l4proto tcp".to_owned(),
            Match::Protocol(Protocol::Udp) => "meta l4proto udp".to_owned(),
            Match::DstPort(p) => format!("th dport {p}"),
            Match::NotDstPort(p) => format!("th dport != {p}"),
            Match::NotDstPorts(ports) => {
                let list = ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ");
                format!("th dport != {{ {list} }}")
            }
            Match::SrcPort(p) => format!("th sport {p}"),
            Match::InInterface(i) => format!("iifname {i:?}"),
            Match::OutInterface(i) => format!("oifname {i:?}"),
            Match::Source(n) => format!("{ip} saddr {n}"),
            Match::Destination(n) => format!("{ip} daddr {n}"),
            Match::NotDestination(n) => format!("{ip} daddr != {n}"),
            Match::Uid(id) => format!("meta skuid {id}"),
            Match::NotUid(id) => format!("meta skuid != {id}"),
            Match::Gid(id) => format!("meta skgid {id}"),
            Match::NotGid(id) => format!("meta skgid != {id}"),
            Match::Mark(m) => format!("meta mark {m}"),
            Match::NotMark(m) => format!("meta mark != {m}"),
            Match::ConnMark(m) => format!("ct mark {m}"),
            Match::Established => "ct state established,related".to_owned(),
        });
    }
    words.push(match target {
        Target::Return => "return".to_owned(),
        Target::Accept => "accept".to_owned(),
        Target::Jump(chain) => format!("jump {}", chain.nft_name()),
        Target::RedirectTo(port) => format!("redirect to :{port}"),
        Target::Tproxy { port, mark } => format!("meta mark set {mark} tproxy {ip} to :{port} accept"),
        Target::SetMark(mark) => format!("meta mark set {mark}"),
        // iptables' CT keeps the first zone a packet is given; returning does the same here.
        Target::CtZone(zone) => format!("ct zone set {zone} return"),
        Target::SaveMark => "ct mark set meta mark".to_owned(),
        Target::RestoreMark => "meta mark set ct mark".to_owned(),
    });
    words.join(" ")
}
