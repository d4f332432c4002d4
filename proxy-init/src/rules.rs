//! Settings in, an ordered rule set out: the redirect as data, independent of the backend, so
//! it can be tested and printed. The semantics are Istio's: exclusions before inclusions, the
//! proxy's own traffic (by UID and by GID) untouched, loopback handled so that the proxy's
//! hairpin to its own pod address is treated as inbound, and 127.0.0.6 (the proxy's source
//! towards the local app) passed through.
//!
//! The DNS capture, its conntrack zones and TPROXY follow istio-iptables rule for rule in
//! meaning; `tests/istio_iptables_conformance.rs` checks that against Istio's own goldens.
//!
//! Chains are prefixed `TRELLIS_` so they never clash with an Istio installation on the same
//! node.

use std::fmt;

use ipnet::IpNet;
use trellis_api::annotations::{IpRangeSelection, PortSelection};

use crate::settings::{
    ALWAYS_EXCLUDED_INBOUND, DNS_CAPTURE_PORT, DnsCapture, Interception, OUTBOUND_MARK, Settings,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The proxy's source address towards the local app (inbound passthrough).
    pub fn passthrough_source(self) -> IpNet {
        match self {
            Family::V4 => "127.0.0.6/32",
            Family::V6 => "::6/128",
        }
        .parse()
        .unwrap_or_else(|_| unreachable!("constant CIDR"))
    }

    pub fn localhost(self) -> IpNet {
        match self {
            Family::V4 => "127.0.0.1/32",
            Family::V6 => "::1/128",
        }
        .parse()
        .unwrap_or_else(|_| unreachable!("constant CIDR"))
    }

    pub fn contains(self, net: &IpNet) -> bool {
        matches!((self, net), (Family::V4, IpNet::V4(_)) | (Family::V6, IpNet::V6(_)))
    }
}

/// The netfilter tables we write to: `raw` for the DNS conntrack zones, `mangle` for TPROXY,
/// `nat` for the redirects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Table {
    Raw,
    Mangle,
    Nat,
}

impl Table {
    pub const ALL: [Table; 3] = [Table::Raw, Table::Mangle, Table::Nat];

    pub fn name(self) -> &'static str {
        match self {
            Table::Raw => "raw",
            Table::Mangle => "mangle",
            Table::Nat => "nat",
        }
    }
}

/// Built-in hooks and our own chains, each in one table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Chain {
    /// nat PREROUTING and OUTPUT.
    Prerouting,
    Output,
    ManglePrerouting,
    MangleOutput,
    RawPrerouting,
    RawOutput,
    /// Our rules at the hooks, each behind one jump from its built-in chain, so that applying
    /// again or cleaning up only has our jumps to find in the built-in chains.
    PreroutingHook,
    ManglePreroutingHook,
    MangleOutputHook,
    Inbound,
    InRedirect,
    OutboundCheck,
    Redirect,
    Dns,
    TproxyInbound,
    Divert,
    Tproxy,
    DnsZones,
    DnsReplyZones,
}

impl Chain {
    /// The name iptables knows it by (built-in chains share their names across tables).
    pub fn name(self) -> &'static str {
        match self {
            Chain::Prerouting | Chain::ManglePrerouting | Chain::RawPrerouting => "PREROUTING",
            Chain::Output | Chain::MangleOutput | Chain::RawOutput => "OUTPUT",
            Chain::PreroutingHook => "TRELLIS_PREROUTING",
            Chain::ManglePreroutingHook => "TRELLIS_MANGLE_PREROUTING",
            Chain::MangleOutputHook => "TRELLIS_MANGLE_OUTPUT",
            Chain::Inbound => "TRELLIS_INBOUND",
            Chain::InRedirect => "TRELLIS_IN_REDIRECT",
            Chain::OutboundCheck => "TRELLIS_OUTPUT",
            Chain::Redirect => "TRELLIS_REDIRECT",
            Chain::Dns => "TRELLIS_DNS",
            Chain::TproxyInbound => "TRELLIS_TPROXY_INBOUND",
            Chain::Divert => "TRELLIS_DIVERT",
            Chain::Tproxy => "TRELLIS_TPROXY",
            Chain::DnsZones => "TRELLIS_DNS_ZONES",
            Chain::DnsReplyZones => "TRELLIS_DNS_REPLY_ZONES",
        }
    }

    /// A name unique in our one nft table, where every chain lives side by side.
    pub fn nft_name(self) -> &'static str {
        match self {
            Chain::ManglePrerouting => "MANGLE_PREROUTING",
            Chain::MangleOutput => "MANGLE_OUTPUT",
            Chain::RawPrerouting => "RAW_PREROUTING",
            Chain::RawOutput => "RAW_OUTPUT",
            other => other.name(),
        }
    }

    pub fn table(self) -> Table {
        match self {
            Chain::RawPrerouting | Chain::RawOutput | Chain::DnsZones | Chain::DnsReplyZones => Table::Raw,
            Chain::ManglePrerouting
            | Chain::MangleOutput
            | Chain::ManglePreroutingHook
            | Chain::MangleOutputHook
            | Chain::TproxyInbound
            | Chain::Divert
            | Chain::Tproxy => Table::Mangle,
            _ => Table::Nat,
        }
    }

    pub fn is_builtin(self) -> bool {
        Chain::BUILTIN.contains(&self)
    }

    pub const BUILTIN: [Chain; 6] = [
        Chain::RawPrerouting,
        Chain::RawOutput,
        Chain::ManglePrerouting,
        Chain::MangleOutput,
        Chain::Prerouting,
        Chain::Output,
    ];

    /// Our chains, in the order they are declared.
    pub const OURS: [Chain; 13] = [
        Chain::DnsZones,
        Chain::DnsReplyZones,
        Chain::ManglePreroutingHook,
        Chain::MangleOutputHook,
        Chain::TproxyInbound,
        Chain::Divert,
        Chain::Tproxy,
        Chain::PreroutingHook,
        Chain::Inbound,
        Chain::InRedirect,
        Chain::OutboundCheck,
        Chain::Redirect,
        Chain::Dns,
    ];
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
    /// None of these destination ports.
    NotDstPorts(Vec<u16>),
    SrcPort(u16),
    InInterface(String),
    OutInterface(String),
    Source(IpNet),
    Destination(IpNet),
    NotDestination(IpNet),
    Uid(u32),
    NotUid(u32),
    Gid(u32),
    NotGid(u32),
    Mark(u32),
    NotMark(u32),
    ConnMark(u32),
    /// A packet of a connection conntrack already knows (RELATED or ESTABLISHED).
    Established,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Return,
    Accept,
    Jump(Chain),
    RedirectTo(u16),
    /// Hand the packet to the local socket on `port` without rewriting it, marking it `mark`.
    Tproxy {
        port: u16,
        mark: u32,
    },
    SetMark(u32),
    /// Track the packet in this conntrack zone (the first zone given to a packet stays).
    CtZone(u16),
    /// Copy the packet's mark to its connection.
    SaveMark,
    /// Copy the connection's mark to the packet.
    RestoreMark,
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

    /// The tables this family writes to, in `Table::ALL` order.
    pub fn tables(&self) -> Vec<Table> {
        Table::ALL.into_iter().filter(|t| self.rules.iter().any(|r| r.chain.table() == *t)).collect()
    }
}

/// The policy route TPROXY needs: packets with `mark` are looked up in `table`, which delivers
/// everything locally (`ip rule add fwmark MARK lookup TABLE`, `ip route add local default dev
/// lo table TABLE`), for each family of the rule set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TproxyRoute {
    pub mark: u32,
    pub table: u32,
}

/// The whole redirect: IPv4 always, IPv6 when enabled, and TPROXY's policy route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSet {
    pub families: Vec<FamilyRules>,
    pub tproxy_route: Option<TproxyRoute>,
}

impl RuleSet {
    /// The `ip` commands that set up the policy route, for printing (`--dry-run`).
    pub fn route_commands(&self) -> Vec<String> {
        let Some(route) = self.tproxy_route else { return Vec::new() };
        self.families
            .iter()
            .flat_map(|f| {
                let v = if f.family == Family::V4 { "-4" } else { "-6" };
                [
                    format!("ip {v} rule add fwmark {} lookup {}", route.mark, route.table),
                    format!("ip {v} route add local default dev lo table {}", route.table),
                ]
            })
            .collect()
    }
}

pub fn build(settings: &Settings) -> RuleSet {
    let mut families = vec![FamilyRules { family: Family::V4, rules: family_rules(settings, Family::V4) }];
    if settings.ipv6 {
        families.push(FamilyRules { family: Family::V6, rules: family_rules(settings, Family::V6) });
    }
    let tproxy_route = match settings.interception {
        Interception::Tproxy { mark, route_table } if inbound_captured(settings) => {
            Some(TproxyRoute { mark, table: route_table })
        }
        _ => None,
    };
    RuleSet { families, tproxy_route }
}

fn inbound_captured(s: &Settings) -> bool {
    !matches!(&s.include_inbound_ports, PortSelection::Ports(p) if p.is_empty())
}

/// What DNS capture means for one family.
struct DnsPlan {
    /// Capture is on at all (Istio's REDIRECT_DNS with somewhere to send it).
    on: bool,
    all: bool,
    /// This family's resolvers, as host ranges.
    servers: Vec<IpNet>,
}

impl DnsPlan {
    fn new(s: &Settings, family: Family) -> DnsPlan {
        match &s.capture_dns {
            DnsCapture::Off => DnsPlan { on: false, all: false, servers: Vec::new() },
            DnsCapture::All => DnsPlan { on: true, all: true, servers: Vec::new() },
            DnsCapture::Servers(servers) => DnsPlan {
                on: !servers.is_empty(),
                all: false,
                servers: servers.iter().map(|ip| IpNet::from(*ip)).filter(|n| family.contains(n)).collect(),
            },
        }
    }

    /// Whether this family sends any DNS to the proxy.
    fn captures(&self) -> bool {
        self.on && (self.all || !self.servers.is_empty())
    }
}

fn family_rules(s: &Settings, family: Family) -> Vec<Rule> {
    let mut rules = Rules(Vec::new());
    let dns = DnsPlan::new(s, family);
    kubevirt_rules(&mut rules, s, family);
    nat_inbound_rules(&mut rules, s);
    nat_outbound_rules(&mut rules, s, family, &dns);
    dns_zone_rules(&mut rules, s, &dns);
    if let Interception::Tproxy { mark, .. } = s.interception {
        tproxy_rules(&mut rules, s, family, mark);
    }
    behind_hook_jumps(rules.0)
}

/// Moves the rules written at PREROUTING (nat and mangle) and mangle OUTPUT into our own hook
/// chains, leaving one jump in each built-in chain.
fn behind_hook_jumps(rules: Vec<Rule>) -> Vec<Rule> {
    let hooks = [
        (Chain::Prerouting, Chain::PreroutingHook),
        (Chain::ManglePrerouting, Chain::ManglePreroutingHook),
        (Chain::MangleOutput, Chain::MangleOutputHook),
    ];
    let mut out: Vec<Rule> = hooks
        .iter()
        .filter(|(builtin, _)| rules.iter().any(|r| r.chain == *builtin))
        .map(|(builtin, hook)| Rule { chain: *builtin, matches: vec![], target: Target::Jump(*hook) })
        .collect();
    out.extend(rules.into_iter().map(|mut rule| {
        if let Some((_, hook)) = hooks.iter().find(|(builtin, _)| *builtin == rule.chain) {
            rule.chain = *hook;
        }
        rule
    }));
    out
}

struct Rules(Vec<Rule>);

impl Rules {
    fn add(&mut self, chain: Chain, matches: Vec<Match>, target: Target) {
        self.0.push(Rule { chain, matches, target });
    }
}

fn tcp() -> Match {
    Match::Protocol(Protocol::Tcp)
}

fn udp() -> Match {
    Match::Protocol(Protocol::Udp)
}

fn lo_out() -> Match {
    Match::OutInterface("lo".to_owned())
}

/// The included ranges name a loopback address (Istio's HasLoopBackIP): then the app's
/// loopback traffic is not passed over wholesale, so that those ranges are captured.
fn loopback_included(s: &Settings) -> bool {
    matches!(&s.include_outbound_cidrs, IpRangeSelection::Ranges(r) if r.iter().any(|n| n.addr().is_loopback()))
}

/// KubeVirt: what a VM sends arrives on these interfaces and is outbound traffic of the pod,
/// captured like the app's (to the included ranges); nothing arriving there is inbound.
fn kubevirt_rules(rules: &mut Rules, s: &Settings, family: Family) {
    use Match::*;
    for iface in &s.kubevirt_interfaces {
        match &s.include_outbound_cidrs {
            IpRangeSelection::All => {
                rules.add(Chain::Prerouting, vec![InInterface(iface.clone())], Target::Jump(Chain::Redirect))
            }
            IpRangeSelection::Ranges(cidrs) => {
                for cidr in cidrs.iter().filter(|c| family.contains(c)) {
                    rules.add(
                        Chain::Prerouting,
                        vec![InInterface(iface.clone()), Destination(*cidr)],
                        Target::Jump(Chain::Redirect),
                    );
                }
            }
        }
    }
    for iface in &s.kubevirt_interfaces {
        rules.add(Chain::Prerouting, vec![InInterface(iface.clone())], Target::Return);
    }
}

/// Inbound ports that stay out: the proxy's own, then the user's.
fn excluded_inbound_ports(s: &Settings) -> Vec<u16> {
    let mut excluded: Vec<u16> = ALWAYS_EXCLUDED_INBOUND.to_vec();
    excluded.extend(s.exclude_inbound_ports.iter().filter(|p| !ALWAYS_EXCLUDED_INBOUND.contains(p)));
    excluded
}

fn nat_inbound_rules(rules: &mut Rules, s: &Settings) {
    use Match::*;
    rules.add(Chain::InRedirect, vec![tcp()], Target::RedirectTo(s.inbound_capture_port));
    rules.add(Chain::Redirect, vec![tcp()], Target::RedirectTo(s.proxy_port));
    for iface in &s.exclude_interfaces {
        rules.add(Chain::Prerouting, vec![InInterface(iface.clone())], Target::Return);
    }
    if !inbound_captured(s) || s.interception != Interception::Redirect {
        return;
    }
    rules.add(Chain::Prerouting, vec![tcp()], Target::Jump(Chain::Inbound));
    for port in excluded_inbound_ports(s) {
        rules.add(Chain::Inbound, vec![tcp(), DstPort(port)], Target::Return);
    }
    match &s.include_inbound_ports {
        PortSelection::All => rules.add(Chain::Inbound, vec![tcp()], Target::Jump(Chain::InRedirect)),
        PortSelection::Ports(ports) => {
            for port in ports {
                rules.add(Chain::Inbound, vec![tcp(), DstPort(*port)], Target::Jump(Chain::InRedirect));
            }
        }
    }
}

fn nat_outbound_rules(rules: &mut Rules, s: &Settings, family: Family, dns: &DnsPlan) {
    use Match::*;
    rules.add(Chain::Output, vec![], Target::Jump(Chain::OutboundCheck));
    for iface in &s.exclude_interfaces {
        rules.add(Chain::OutboundCheck, vec![OutInterface(iface.clone())], Target::Return);
    }
    // Excluded ports first, so that not even the proxy's hairpin to them is captured.
    for port in &s.exclude_outbound_ports {
        rules.add(Chain::OutboundCheck, vec![tcp(), DstPort(*port)], Target::Return);
        rules.add(Chain::OutboundCheck, vec![udp(), DstPort(*port)], Target::Return);
    }
    rules.add(Chain::OutboundCheck, vec![lo_out(), Source(family.passthrough_source())], Target::Return);
    // The proxy calling its own pod address goes out over lo: treat it as inbound, so the
    // local app is reached through the inbound listener; anything else the proxy sends, and
    // loopback traffic of others, is left alone. With DNS capture the app's TCP DNS to a
    // resolver on loopback is not passed over here, so the DNS rules below can take it.
    // One triple per user, then per group, in Istio's order: with several users, a later
    // user's hairpin meets an earlier user's "not me over lo" rule first, as in Istio.
    let skip_lo = !loopback_included(s);
    let owners = s
        .proxy_uids
        .iter()
        .map(|id| (Uid(*id), NotUid(*id), true))
        .chain(s.proxy_gids.iter().map(|id| (Gid(*id), NotGid(*id), false)));
    for (owner, not_owner, is_user) in owners {
        // Istio keeps its own DNS resolver's TCP queries to a local address out of the inbound
        // path by user only; its group rule excludes the tunnel port alone.
        let not_ports = if dns.on && is_user { NotDstPorts(vec![53, 15008]) } else { NotDstPort(15008) };
        rules.add(
            Chain::OutboundCheck,
            vec![lo_out(), NotDestination(family.localhost()), tcp(), not_ports, owner.clone()],
            Target::Jump(Chain::InRedirect),
        );
        if skip_lo {
            let matches = if dns.on {
                vec![lo_out(), tcp(), NotDstPort(53), not_owner]
            } else {
                vec![lo_out(), not_owner]
            };
            rules.add(Chain::OutboundCheck, matches, Target::Return);
        }
        rules.add(Chain::OutboundCheck, vec![owner], Target::Return);
    }
    if dns.captures() {
        rules.add(Chain::OutboundCheck, vec![], Target::Jump(Chain::Dns));
        for proto in [tcp(), udp()] {
            if dns.all {
                rules.add(Chain::Dns, vec![proto, DstPort(53)], Target::RedirectTo(DNS_CAPTURE_PORT));
                continue;
            }
            for server in &dns.servers {
                rules.add(
                    Chain::Dns,
                    vec![proto.clone(), DstPort(53), Destination(*server)],
                    Target::RedirectTo(DNS_CAPTURE_PORT),
                );
            }
        }
    }
    rules.add(Chain::OutboundCheck, vec![Destination(family.localhost())], Target::Return);
    for cidr in s.exclude_outbound_cidrs.iter().filter(|c| family.contains(c)) {
        rules.add(Chain::OutboundCheck, vec![Destination(*cidr)], Target::Return);
    }
    for port in &s.include_outbound_ports {
        rules.add(Chain::OutboundCheck, vec![tcp(), DstPort(*port)], Target::Jump(Chain::Redirect));
    }
    match &s.include_outbound_cidrs {
        IpRangeSelection::All => rules.add(Chain::OutboundCheck, vec![], Target::Jump(Chain::Redirect)),
        IpRangeSelection::Ranges(cidrs) => {
            for cidr in cidrs.iter().filter(|c| family.contains(c)) {
                rules.add(Chain::OutboundCheck, vec![Destination(*cidr)], Target::Jump(Chain::Redirect));
            }
        }
    }
}

/// UDP DNS in two conntrack zones, so the proxy's query upstream and the app's query to the
/// proxy (same addresses and ports after NAT) are never taken for one flow: the proxy's
/// queries and the resolvers' answers in zone 1, the app's queries and the proxy's answers in
/// zone 2 (Istio's fix for the UDP conntrack race).
fn dns_zone_rules(rules: &mut Rules, s: &Settings, dns: &DnsPlan) {
    use Match::*;
    if !dns.on {
        return;
    }
    rules.add(Chain::RawOutput, vec![], Target::Jump(Chain::DnsZones));
    let owners = s.proxy_uids.iter().map(|id| Uid(*id)).chain(s.proxy_gids.iter().map(|id| Gid(*id)));
    for owner in owners {
        rules.add(Chain::DnsZones, vec![udp(), DstPort(53), owner.clone()], Target::CtZone(1));
        rules.add(Chain::DnsZones, vec![udp(), SrcPort(DNS_CAPTURE_PORT), owner], Target::CtZone(2));
    }
    if dns.all {
        rules.add(Chain::RawPrerouting, vec![], Target::Jump(Chain::DnsReplyZones));
        rules.add(Chain::DnsZones, vec![udp(), DstPort(53)], Target::CtZone(2));
        rules.add(Chain::DnsReplyZones, vec![udp(), SrcPort(53)], Target::CtZone(1));
        return;
    }
    if !dns.servers.is_empty() {
        rules.add(Chain::RawPrerouting, vec![], Target::Jump(Chain::DnsReplyZones));
    }
    for server in &dns.servers {
        rules.add(Chain::DnsZones, vec![udp(), DstPort(53), Destination(*server)], Target::CtZone(2));
        rules.add(Chain::DnsReplyZones, vec![udp(), SrcPort(53), Source(*server)], Target::CtZone(1));
    }
}

/// TPROXY in the mangle table: a new inbound connection is handed to the proxy's transparent
/// listener with its addresses untouched, its later packets follow the mark to loopback (the
/// policy route), and the proxy's own calls to its pod address (marked [`OUTBOUND_MARK`]) go
/// through the same capture; the proxy's deliveries to the app (which carry `mark`) do not.
fn tproxy_rules(rules: &mut Rules, s: &Settings, family: Family, mark: u32) {
    use Match::*;
    for iface in &s.exclude_interfaces {
        rules.add(Chain::ManglePrerouting, vec![InInterface(iface.clone())], Target::Return);
        rules.add(Chain::MangleOutput, vec![OutInterface(iface.clone())], Target::Return);
    }
    if inbound_captured(s) {
        rules.add(Chain::Divert, vec![], Target::SetMark(mark));
        rules.add(Chain::Divert, vec![], Target::Accept);
        rules.add(
            Chain::Tproxy,
            vec![NotDestination(family.localhost()), tcp()],
            Target::Tproxy { port: s.inbound_capture_port, mark },
        );
        rules.add(Chain::ManglePrerouting, vec![tcp()], Target::Jump(Chain::TproxyInbound));
        let inbound = Chain::TproxyInbound;
        rules.add(inbound, vec![tcp(), Mark(mark)], Target::Return);
        rules.add(
            inbound,
            vec![tcp(), Source(family.passthrough_source()), InInterface("lo".into())],
            Target::Return,
        );
        rules.add(inbound, vec![tcp(), InInterface("lo".into()), NotMark(OUTBOUND_MARK)], Target::Return);
        for port in excluded_inbound_ports(s) {
            rules.add(inbound, vec![tcp(), DstPort(port)], Target::Return);
        }
        let ports: Vec<Option<u16>> = match &s.include_inbound_ports {
            PortSelection::All => vec![None],
            PortSelection::Ports(ports) => ports.iter().map(|p| Some(*p)).collect(),
        };
        for port in ports {
            let base: Vec<Match> = std::iter::once(tcp()).chain(port.map(DstPort)).collect();
            rules.add(inbound, [base.clone(), vec![Established]].concat(), Target::Jump(Chain::Divert));
            rules.add(inbound, base, Target::Jump(Chain::Tproxy));
        }
    }
    rules.add(Chain::ManglePrerouting, vec![tcp(), Mark(mark)], Target::SaveMark);
    rules.add(Chain::MangleOutput, vec![tcp(), lo_out(), Mark(mark)], Target::Return);
    let owners = s.proxy_uids.iter().map(|id| Uid(*id)).chain(s.proxy_gids.iter().map(|id| Gid(*id)));
    for owner in owners {
        rules.add(
            Chain::MangleOutput,
            vec![NotDestination(family.localhost()), tcp(), lo_out(), owner],
            Target::SetMark(OUTBOUND_MARK),
        );
    }
    rules.add(Chain::MangleOutput, vec![tcp(), ConnMark(mark)], Target::RestoreMark);
}
