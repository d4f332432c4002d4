//! The rule set as `iptables-restore` input, one payload per address family (a section per
//! table), so that each family is changed in one atomic step.

use std::fmt::Write;

use crate::rules::{FamilyRules, Match, Protocol, Rule, Table, Target};

/// The payload for `iptables-restore --noflush` (or `ip6tables-restore`): per table, our
/// chains declared (which empties them), then every rule.
pub fn restore_payload(rules: &FamilyRules) -> String {
    rules
        .tables()
        .into_iter()
        .map(|table| format!("*{}\n{}COMMIT\n", table.name(), declarations_and_rules(rules, table)))
        .collect()
}

/// The inside of one table's payload: our chains declared (which empties them), then every
/// rule.
pub fn declarations_and_rules(rules: &FamilyRules, table: Table) -> String {
    let mut out = String::new();
    for chain in rules.chains().into_iter().filter(|c| c.table() == table) {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    for rule in rules.rules.iter().filter(|r| r.chain.table() == table) {
        let _ = writeln!(out, "{}", rule_text(rule));
    }
    out
}

/// One rule as `iptables` writes it: `-A CHAIN matches -j TARGET`.
pub fn rule_text(rule: &Rule) -> String {
    let mut words = vec![format!("-A {}", rule.chain)];
    for m in &rule.matches {
        words.push(match m {
            Match::Protocol(Protocol::Tcp) => "-p tcp".to_owned(),
            Match::Protocol(Protocol::Udp) => "-p udp".to_owned(),
            Match::DstPort(p) => format!("--dport {p}"),
            Match::NotDstPort(p) => format!("! --dport {p}"),
            Match::NotDstPorts(ports) => format!("-m multiport ! --dports {}", join(ports)),
            Match::SrcPort(p) => format!("--sport {p}"),
            Match::InInterface(i) => format!("-i {i}"),
            Match::OutInterface(i) => format!("-o {i}"),
            Match::Source(n) => format!("-s {n}"),
            Match::Destination(n) => format!("-d {n}"),
            Match::NotDestination(n) => format!("! -d {n}"),
            Match::Uid(id) => format!("-m owner --uid-owner {id}"),
            Match::NotUid(id) => format!("-m owner ! --uid-owner {id}"),
            Match::Gid(id) => format!("-m owner --gid-owner {id}"),
            Match::NotGid(id) => format!("-m owner ! --gid-owner {id}"),
            Match::Mark(m) => format!("-m mark --mark {m}"),
            Match::NotMark(m) => format!("-m mark ! --mark {m}"),
            Match::ConnMark(m) => format!("-m connmark --mark {m}"),
            Match::Established => "-m conntrack --ctstate RELATED,ESTABLISHED".to_owned(),
        });
    }
    words.push(match rule.target {
        Target::Return => "-j RETURN".to_owned(),
        Target::Accept => "-j ACCEPT".to_owned(),
        Target::Jump(chain) => format!("-j {chain}"),
        Target::RedirectTo(port) => format!("-j REDIRECT --to-ports {port}"),
        Target::Tproxy { port, mark } => {
            format!("-j TPROXY --tproxy-mark {mark}/0xffffffff --on-port {port}")
        }
        Target::SetMark(mark) => format!("-j MARK --set-mark {mark}"),
        Target::CtZone(zone) => format!("-j CT --zone {zone}"),
        Target::SaveMark => "-j CONNMARK --save-mark".to_owned(),
        Target::RestoreMark => "-j CONNMARK --restore-mark".to_owned(),
    });
    words.join(" ")
}

fn join(ports: &[u16]) -> String {
    ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",")
}
