//! Settings in, an ordered rule set out: the redirect as data, independent of the backend, so
//! it can be tested and printed. The semantics are Istio's: exclusions before inclusions, the
//! proxy's own traffic (by UID and by GID) untouched, loopback handled so that the proxy's
//! hairpin to its own pod address is treated as inbound, and 127.0.0.6 (the proxy's source
//! towards the local app) passed through.
//!
//! Chains are prefixed `TRELLIS_` so they never clash with an Istio installation on the same
//! node.

use std::fmt;

use ipnet::IpNet;
use trellis_api::annotations::{IpRangeSelection, PortSelection};

use crate::settings::{ALWAYS_EXCLUDED_INBOUND, DNS_CAPTURE_PORT, Settings};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The proxy's source address towards the local app (inbound passthrough).
    fn passthrough_source(self) -> IpNet {
        match self {
            Family::V4 => "127.0.0.6/32",
            Family::V6 => "::6/128",
        }
        .parse()
        .unwrap_or_else(|_| unreachable!("constant CIDR"))
    }

    fn localhost(self) -> IpNet {
        match self {
            Family::V4 => "127.0.0.1/32",
            Family::V6 => "::1/128",
        }
        .parse()
        .unwrap_or_else(|_| unreachable!("constant CIDR"))
    }

    fn contains(self, net: &IpNet) -> bool {
        matches!((self, net), (Family::V4, IpNet::V4(_)) | (Family::V6, IpNet::V6(_)))
    }
}

/// Built-in hooks and our own chains, all in the `nat` table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Chain {
    Prerouting,
    Output,
    Inbound,
    InRedirect,
    OutboundCheck,
    Redirect,
    Dns,
}

impl Chain {
    pub fn name(self) -> &'static str {
        match self {
            Chain::Prerouting => "PREROUTING",
            Chain::Output => "OUTPUT",
            Chain::Inbound => "TRELLIS_INBOUND",
            Chain::InRedirect => "TRELLIS_IN_REDIRECT",
            Chain::OutboundCheck => "TRELLIS_OUTPUT",
            Chain::Redirect => "TRELLIS_REDIRECT",
            Chain::Dns => "TRELLIS_DNS",
        }
    }

    /// Our chains, in the order they are declared.
    pub const OURS: [Chain; 5] =
        [Chain::Inbound, Chain::InRedirect, Chain::OutboundCheck, Chain::Redirect, Chain::Dns];
}

impl fmt::Display for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Match {
    Protocol(Protocol),
    DstPort(u16),
    NotDstPort(u16),
    InInterface(String),
    OutInterface(String),
    Source(IpNet),
    Destination(IpNet),
    NotDestination(IpNet),
    Uid(u32),
    NotUid(u32),
    Gid(u32),
    NotGid(u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Return,
    Jump(Chain),
    RedirectTo(u16),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub chain: Chain,
    pub matches: Vec<Match>,
    pub target: Target,
}

/// The rules for one address family, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyRules {
    pub family: Family,
    pub rules: Vec<Rule>,
}

impl FamilyRules {
    /// Our chains that hold rules or are jumped to.
    pub fn chains(&self) -> Vec<Chain> {
        Chain::OURS
            .into_iter()
            .filter(|c| self.rules.iter().any(|r| r.chain == *c || r.target == Target::Jump(*c)))
            .collect()
    }
}

/// The whole redirect: IPv4 always, IPv6 when enabled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSet {
    pub families: Vec<FamilyRules>,
}

pub fn build(settings: &Settings) -> RuleSet {
    let mut families = vec![FamilyRules { family: Family::V4, rules: family_rules(settings, Family::V4) }];
    if settings.ipv6 {
        families.push(FamilyRules { family: Family::V6, rules: family_rules(settings, Family::V6) });
    }
    RuleSet { families }
}

fn family_rules(s: &Settings, family: Family) -> Vec<Rule> {
    use Match::*;
    let tcp = || Protocol(self::Protocol::Tcp);
    let udp = || Protocol(self::Protocol::Udp);
    let mut rules = Vec::new();
    let mut add =
        |chain: Chain, matches: Vec<Match>, target: Target| rules.push(Rule { chain, matches, target });

    add(Chain::InRedirect, vec![tcp()], Target::RedirectTo(s.inbound_capture_port));
    add(Chain::Redirect, vec![tcp()], Target::RedirectTo(s.proxy_port));

    // Inbound: interfaces and ports that stay out, then what is captured.
    let inbound_captured = !matches!(&s.include_inbound_ports, PortSelection::Ports(p) if p.is_empty());
    if inbound_captured {
        add(Chain::Prerouting, vec![tcp()], Target::Jump(Chain::Inbound));
        for iface in &s.exclude_interfaces {
            add(Chain::Inbound, vec![InInterface(iface.clone())], Target::Return);
        }
        let mut excluded: Vec<u16> = ALWAYS_EXCLUDED_INBOUND.to_vec();
        excluded.extend(s.exclude_inbound_ports.iter().filter(|p| !ALWAYS_EXCLUDED_INBOUND.contains(p)));
        for port in excluded {
            add(Chain::Inbound, vec![tcp(), DstPort(port)], Target::Return);
        }
        match &s.include_inbound_ports {
            PortSelection::All => add(Chain::Inbound, vec![tcp()], Target::Jump(Chain::InRedirect)),
            PortSelection::Ports(ports) => {
                for port in ports {
                    add(Chain::Inbound, vec![tcp(), DstPort(*port)], Target::Jump(Chain::InRedirect));
                }
            }
        }
    }

    // Outbound.
    add(Chain::Output, vec![tcp()], Target::Jump(Chain::OutboundCheck));
    for iface in &s.exclude_interfaces {
        add(Chain::OutboundCheck, vec![OutInterface(iface.clone())], Target::Return);
    }
    let lo = || OutInterface("lo".to_owned());
    add(Chain::OutboundCheck, vec![lo(), Source(family.passthrough_source())], Target::Return);
    // The proxy calling its own pod address goes out over lo: treat it as inbound, so the
    // local app is reached through the inbound listener; anything else the proxy sends, and
    // loopback traffic of others, is left alone.
    for (owner, not_owner, id) in
        [(Uid as fn(u32) -> Match, NotUid as fn(u32) -> Match, s.proxy_uid), (Gid, NotGid, s.proxy_gid)]
    {
        add(
            Chain::OutboundCheck,
            vec![NotDestination(family.localhost()), lo(), tcp(), NotDstPort(15008), owner(id)],
            Target::Jump(Chain::InRedirect),
        );
        add(Chain::OutboundCheck, vec![lo(), not_owner(id)], Target::Return);
        add(Chain::OutboundCheck, vec![owner(id)], Target::Return);
    }
    if s.capture_dns {
        add(Chain::OutboundCheck, vec![tcp(), DstPort(53)], Target::RedirectTo(DNS_CAPTURE_PORT));
    }
    add(Chain::OutboundCheck, vec![Destination(family.localhost())], Target::Return);
    for cidr in s.exclude_outbound_cidrs.iter().filter(|c| family.contains(c)) {
        add(Chain::OutboundCheck, vec![Destination(*cidr)], Target::Return);
    }
    for port in &s.exclude_outbound_ports {
        add(Chain::OutboundCheck, vec![tcp(), DstPort(*port)], Target::Return);
    }
    for port in &s.include_outbound_ports {
        add(Chain::OutboundCheck, vec![tcp(), DstPort(*port)], Target::Jump(Chain::Redirect));
    }
    match &s.include_outbound_cidrs {
        IpRangeSelection::All => add(Chain::OutboundCheck, vec![], Target::Jump(Chain::Redirect)),
        IpRangeSelection::Ranges(cidrs) => {
            for cidr in cidrs.iter().filter(|c| family.contains(c)) {
                add(Chain::OutboundCheck, vec![Destination(*cidr)], Target::Jump(Chain::Redirect));
            }
        }
    }

    // DNS over UDP: everything but the proxy's own queries goes to the proxy's resolver.
    if s.capture_dns {
        add(Chain::Output, vec![udp(), DstPort(53)], Target::Jump(Chain::Dns));
        add(Chain::Dns, vec![Uid(s.proxy_uid)], Target::Return);
        add(Chain::Dns, vec![Gid(s.proxy_gid)], Target::Return);
        add(Chain::Dns, vec![udp()], Target::RedirectTo(DNS_CAPTURE_PORT));
    }
    rules
}
