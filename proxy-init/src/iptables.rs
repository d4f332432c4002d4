//! The rule set as `iptables-restore` input, one payload per address family, so that each
//! family is changed in one atomic step.

use std::fmt::Write;

use crate::rules::{FamilyRules, Match, Protocol, Rule, Target};

/// The payload for `iptables-restore --noflush` (or `ip6tables-restore`): our chains declared
/// (which empties them), then every rule.
pub fn restore_payload(rules: &FamilyRules) -> String {
    format!("*nat\n{}COMMIT\n", declarations_and_rules(rules))
}

/// The inside of a nat payload: our chains declared (which empties them), then every rule.
pub fn declarations_and_rules(rules: &FamilyRules) -> String {
    let mut out = String::new();
    for chain in rules.chains() {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    for rule in &rules.rules {
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
            Match::InInterface(i) => format!("-i {i}"),
            Match::OutInterface(i) => format!("-o {i}"),
            Match::Source(n) => format!("-s {n}"),
            Match::Destination(n) => format!("-d {n}"),
            Match::NotDestination(n) => format!("! -d {n}"),
            Match::Uid(id) => format!("-m owner --uid-owner {id}"),
            Match::NotUid(id) => format!("-m owner ! --uid-owner {id}"),
            Match::Gid(id) => format!("-m owner --gid-owner {id}"),
            Match::NotGid(id) => format!("-m owner ! --gid-owner {id}"),
        });
    }
    words.push(match rule.target {
        Target::Return => "-j RETURN".to_owned(),
        Target::Jump(chain) => format!("-j {chain}"),
        Target::RedirectTo(port) => format!("-j REDIRECT --to-ports {port}"),
    });
    words.join(" ")
}
