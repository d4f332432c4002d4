//! The rule set as one `nft -f` transaction on our own `inet` table, replaced whole: the table
//! is created (if missing), deleted and written again in a single transaction, so applying
//! twice gives the same state and a failure changes nothing.

use std::fmt::Write;

use crate::rules::{Chain, Family, Match, Protocol, RuleSet, Target};

pub const TABLE: &str = "trellis";

pub fn script(set: &RuleSet) -> String {
    let mut out = format!("table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n");
    let mut chains: Vec<Chain> = vec![Chain::Prerouting, Chain::Output];
    for family in &set.families {
        for chain in family.chains() {
            if !chains.contains(&chain) {
                chains.push(chain);
            }
        }
    }
    for chain in chains {
        let _ = writeln!(out, "\tchain {chain} {{");
        match chain {
            Chain::Prerouting => {
                out.push_str("\t\ttype nat hook prerouting priority dstnat; policy accept;\n")
            }
            Chain::Output => out.push_str("\t\ttype nat hook output priority -100; policy accept;\n"),
            _ => {}
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
            Match::InInterface(i) => format!("iifname {i:?}"),
            Match::OutInterface(i) => format!("oifname {i:?}"),
            Match::Source(n) => format!("{ip} saddr {n}"),
            Match::Destination(n) => format!("{ip} daddr {n}"),
            Match::NotDestination(n) => format!("{ip} daddr != {n}"),
            Match::Uid(id) => format!("meta skuid {id}"),
            Match::NotUid(id) => format!("meta skuid != {id}"),
            Match::Gid(id) => format!("meta skgid {id}"),
            Match::NotGid(id) => format!("meta skgid != {id}"),
        });
    }
    words.push(match target {
        Target::Return => "return".to_owned(),
        Target::Jump(chain) => format!("jump {chain}"),
        Target::RedirectTo(port) => format!("redirect to :{port}"),
    });
    words.join(" ")
}
