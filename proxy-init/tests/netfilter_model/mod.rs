//! A small model of netfilter, enough to say what a rule set does to a packet: it reads
//! `iptables-save`/`iptables-restore` text (Istio's goldens and our `--dry-run`) into tables of
//! chains, and walks a packet through raw, mangle and nat at its hook the way the kernel does.
//! It knows exactly the matches and targets the two rule sets use and refuses anything else,
//! so a new rule feature cannot be silently ignored.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Cond {
    Proto(String),
    InIface(String),
    OutIface(String),
    Src(IpNet),
    Dst(IpNet),
    DstPorts(Vec<u16>),
    SrcPort(u16),
    Uid(u32),
    Gid(u32),
    Mark { value: u32, mask: u32 },
    ConnMark { value: u32, mask: u32 },
    CtState(Vec<String>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Match {
    negated: bool,
    cond: Cond,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    Return,
    Accept,
    Jump(String),
    Redirect(u16),
    Tproxy { port: u16, value: u32, mask: u32 },
    SetMark(u32),
    CtZone(u16),
    SaveMark,
    RestoreMark,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    matches: Vec<Match>,
    /// What the rule does, in order (iptables: one target; nft: statements, the last maybe a
    /// verdict).
    actions: Vec<Target>,
}

/// One family's tables: table → chain → rules.
#[derive(Clone, Debug, Default)]
pub struct Tables(HashMap<String, HashMap<String, Vec<Rule>>>);

/// The rule sets of a dump, per family.
pub type Dump = HashMap<Family, Tables>;

/// Reads Istio's golden layout: `iptables-save`/`ip6tables-save` lines are the commands the
/// test ran, then the IPv4 tables, then (when IPv6 is on) the IPv6 ones; a table seen a second
/// time starts the IPv6 set.
pub fn parse_istio_golden(text: &str) -> Result<Dump, String> {
    let mut dump = Dump::new();
    let mut family = Family::V4;
    let mut seen: Vec<String> = Vec::new();
    let mut table: Option<String> = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line == "iptables-save" || line == "ip6tables-save" || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('*') {
            let name = name.trim().to_owned();
            if seen.contains(&name) {
                if family == Family::V6 {
                    return Err(format!("line {}: table {name} a third time", n + 1));
                }
                family = Family::V6;
                seen.clear();
            }
            seen.push(name.clone());
            table = Some(name);
            continue;
        }
        add_line(&mut dump, family, &mut table, line).map_err(|e| format!("line {}: {e}", n + 1))?;
    }
    Ok(dump)
}

/// Reads `trellis-proxy-init --dry-run --backend iptables`: `# V4` / `# V6` before each
/// family's restore payload.
pub fn parse_trellis_dry_run(text: &str) -> Result<Dump, String> {
    let mut dump = Dump::new();
    let mut family: Option<Family> = None;
    let mut table: Option<String> = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        match line {
            "# V4" => family = Some(Family::V4),
            "# V6" => family = Some(Family::V6),
            _ if line.is_empty() || line.starts_with('#') => {}
            _ => {
                let family = family.ok_or_else(|| format!("line {}: a rule before \"# V4\"", n + 1))?;
                if let Some(name) = line.strip_prefix('*') {
                    table = Some(name.trim().to_owned());
                    continue;
                }
                add_line(&mut dump, family, &mut table, line).map_err(|e| format!("line {}: {e}", n + 1))?;
            }
        }
    }
    Ok(dump)
}

/// Reads `trellis-proxy-init --dry-run --backend nft`: one `inet` table whose base chains stand
/// for iptables' tables by their hook and priority, and whose rules say their family
/// (`meta nfproto`).
pub fn parse_trellis_nft(text: &str) -> Result<Dump, String> {
    // chain name → (table, built-in chain) for base chains; regular chains are reachable from
    // any table's base chains by jumps, so they go into every table.
    let mut base: HashMap<String, (String, String)> = HashMap::new();
    let mut rules: Vec<(String, Family, Rule)> = Vec::new();
    let mut chain: Option<String> = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        let at = |e: String| format!("line {}: {e}", n + 1);
        // The transaction's opening (`table inet trellis`, `delete table ...`) and the table.
        if line.is_empty()
            || line.starts_with('#')
            || line.starts_with("table ")
            || line.starts_with("delete table")
        {
            continue;
        }
        if line == "}" {
            chain = None;
            continue;
        }
        if let Some(rest) = line.strip_prefix("chain ") {
            chain = Some(rest.trim_end_matches('{').trim().to_owned());
            continue;
        }
        let name = chain.clone().ok_or_else(|| at("a rule outside a chain".to_owned()))?;
        if let Some(hook) = line.strip_prefix("type ") {
            let words: Vec<&str> =
                hook.split(|c: char| c.is_whitespace() || c == ';').filter(|w| !w.is_empty()).collect();
            let (kind, hook, priority) = match words.as_slice() {
                [kind, "hook", hook, "priority", priority, ..] => (*kind, *hook, *priority),
                _ => return Err(at(format!("base chain {line:?}"))),
            };
            let table = match (kind, priority) {
                ("nat", _) => "nat",
                (_, "raw") => "raw",
                (_, "mangle") => "mangle",
                _ => return Err(at(format!("base chain {line:?} is not modelled"))),
            };
            let builtin = match hook {
                "prerouting" => "PREROUTING",
                "output" => "OUTPUT",
                other => return Err(at(format!("hook {other:?} is not modelled"))),
            };
            base.insert(name, (table.to_owned(), builtin.to_owned()));
            continue;
        }
        let (family, rule) = parse_nft_rule(line).map_err(at)?;
        rules.push((name, family, rule));
    }
    let mut dump = Dump::new();
    for (chain, family, rule) in rules {
        let tables = dump.entry(family).or_default();
        match base.get(&chain) {
            Some((table, builtin)) => {
                tables.0.entry(table.clone()).or_default().entry(builtin.clone()).or_default().push(rule)
            }
            None => {
                for table in ["raw", "mangle", "nat"] {
                    tables
                        .0
                        .entry(table.to_owned())
                        .or_default()
                        .entry(chain.clone())
                        .or_default()
                        .push(rule.clone());
                }
            }
        }
    }
    Ok(dump)
}

fn nft_words(line: &str) -> Vec<String> {
    // A set (`{ 53, 15008 }`) becomes one word (`53,15008`); names lose their quotes.
    let mut words: Vec<String> = Vec::new();
    let mut set: Option<Vec<String>> = None;
    for w in line.split_whitespace() {
        match (&mut set, w) {
            (None, "{") => set = Some(Vec::new()),
            (Some(items), "}") => {
                words.push(items.join(","));
                set = None;
            }
            (Some(items), w) => items.push(w.trim_end_matches(',').to_owned()),
            (None, w) => words.push(w.trim_matches('"').to_owned()),
        }
    }
    words
}

fn parse_nft_rule(line: &str) -> Result<(Family, Rule), String> {
    let owned = nft_words(line);
    let words: Vec<&str> = owned.iter().map(String::as_str).collect();
    let family = match words.as_slice() {
        ["meta", "nfproto", "ipv4", ..] => Family::V4,
        ["meta", "nfproto", "ipv6", ..] => Family::V6,
        _ => return Err(format!("a rule without its family: {line:?}")),
    };
    let word = |k: usize| words.get(k).copied();
    let number = |k: usize, what: &str| -> Result<u32, String> {
        let w = word(k).ok_or_else(|| format!("{what} without a value"))?;
        w.parse().map_err(|_| format!("{what} {w:?} is not a number"))
    };
    let mut matches = Vec::new();
    let mut actions = Vec::new();
    let mut i = 3;
    while i < words.len() {
        let (first, second) = (words[i], word(i + 1).unwrap_or(""));
        // Statements.
        let statement = match (first, second, word(i + 2)) {
            ("return", ..) => Some((Target::Return, 1)),
            ("accept", ..) => Some((Target::Accept, 1)),
            ("jump", chain, _) => Some((Target::Jump(chain.to_owned()), 2)),
            ("redirect", "to", Some(port)) => {
                let port = port.strip_prefix(':').and_then(|p| p.parse().ok()).ok_or("redirect port")?;
                Some((Target::Redirect(port), 3))
            }
            ("ct", "zone", Some("set")) => Some((Target::CtZone(number(i + 3, "ct zone")? as u16), 4)),
            ("ct", "mark", Some("set")) if (word(i + 3), word(i + 4)) == (Some("meta"), Some("mark")) => {
                Some((Target::SaveMark, 5))
            }
            ("meta", "mark", Some("set")) if (word(i + 3), word(i + 4)) == (Some("ct"), Some("mark")) => {
                Some((Target::RestoreMark, 5))
            }
            ("meta", "mark", Some("set")) => Some((Target::SetMark(number(i + 3, "meta mark set")?), 4)),
            // `tproxy ip to :PORT`, after the `meta mark set` that gives the mark.
            ("tproxy", _, Some("to")) => {
                let port = word(i + 3).and_then(|p| p.strip_prefix(':')).and_then(|p| p.parse().ok());
                let port = port.ok_or("tproxy port")?;
                let value = match actions.pop() {
                    Some(Target::SetMark(mark)) => mark,
                    _ => return Err(format!("tproxy without its mark: {line:?}")),
                };
                Some((Target::Tproxy { port, value, mask: u32::MAX }, 4))
            }
            _ => None,
        };
        if let Some((action, width)) = statement {
            actions.push(action);
            i += width;
            continue;
        }
        // Matches: `KEY [!=] VALUE` (interface names: one word of key).
        let key_width = if matches!(first, "iifname" | "oifname") { 1 } else { 2 };
        let negated = word(i + key_width) == Some("!=");
        let at = i + key_width + usize::from(negated);
        let value = word(at).ok_or_else(|| format!("{first} {second} without a value"))?;
        let cond = match (first, second) {
            ("iifname", _) => Cond::InIface(value.to_owned()),
            ("oifname", _) => Cond::OutIface(value.to_owned()),
            ("meta", "l4proto") => Cond::Proto(value.to_owned()),
            ("th", "dport") => Cond::DstPorts(
                value
                    .split(',')
                    .map(|p| p.parse().map_err(|_| format!("th dport {value:?}")))
                    .collect::<Result<_, _>>()?,
            ),
            ("th", "sport") => Cond::SrcPort(number(at, "th sport")? as u16),
            ("ip" | "ip6", "saddr") => Cond::Src(cidr(value)?),
            ("ip" | "ip6", "daddr") => Cond::Dst(cidr(value)?),
            ("meta", "skuid") => Cond::Uid(number(at, "skuid")?),
            ("meta", "skgid") => Cond::Gid(number(at, "skgid")?),
            ("meta", "mark") => Cond::Mark { value: number(at, "meta mark")?, mask: u32::MAX },
            ("ct", "mark") => Cond::ConnMark { value: number(at, "ct mark")?, mask: u32::MAX },
            ("ct", "state") => Cond::CtState(value.split(',').map(str::to_uppercase).collect()),
            (a, b) => return Err(format!("{a} {b} is not modelled")),
        };
        matches.push(Match { negated, cond });
        i = at + 1;
    }
    if actions.is_empty() {
        return Err(format!("a rule without a statement: {line:?}"));
    }
    Ok((family, Rule { matches, actions }))
}

fn add_line(dump: &mut Dump, family: Family, table: &mut Option<String>, line: &str) -> Result<(), String> {
    if line == "COMMIT" {
        *table = None;
        return Ok(());
    }
    let name = table.clone().ok_or("a rule outside a table")?;
    let chains = dump.entry(family).or_default().0.entry(name).or_default();
    if let Some(decl) = line.strip_prefix(':') {
        let chain = decl.split_whitespace().next().ok_or("an empty chain declaration")?;
        chains.entry(chain.to_owned()).or_default();
        return Ok(());
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["-N", chain] => {
            chains.entry((*chain).to_owned()).or_default();
            Ok(())
        }
        ["-A", chain, rest @ ..] => {
            let rule = parse_rule(rest)?;
            chains.entry((*chain).to_owned()).or_default().push(rule);
            Ok(())
        }
        ["-I", chain, rest @ ..] => {
            let (position, rest) = match rest.first().and_then(|w| w.parse::<usize>().ok()) {
                Some(p) => (p, &rest[1..]),
                None => (1, rest),
            };
            let rule = parse_rule(rest)?;
            let rules = chains.entry((*chain).to_owned()).or_default();
            let at = position.saturating_sub(1).min(rules.len());
            rules.insert(at, rule);
            Ok(())
        }
        _ => Err(format!("not a rule: {line:?}")),
    }
}

fn cidr(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is not an address or range"))
}

fn number<T: std::str::FromStr>(text: Option<&&str>, what: &str) -> Result<T, String> {
    let text = text.ok_or_else(|| format!("{what} without a value"))?;
    text.parse().map_err(|_| format!("{what} {text:?} is not a number"))
}

fn mark_and_mask(text: Option<&&str>, what: &str) -> Result<(u32, u32), String> {
    let text = text.ok_or_else(|| format!("{what} without a value"))?;
    let parse = |t: &str| {
        let (digits, radix) = match t.strip_prefix("0x") {
            Some(hex) => (hex, 16),
            None => (t, 10),
        };
        u32::from_str_radix(digits, radix).map_err(|_| format!("{what} {text:?} is not a mark"))
    };
    match text.split_once('/') {
        Some((value, mask)) => Ok((parse(value)?, parse(mask)?)),
        None => Ok((parse(text)?, u32::MAX)),
    }
}

fn parse_rule(words: &[&str]) -> Result<Rule, String> {
    let mut matches = Vec::new();
    let mut negated = false;
    let mut module = "";
    let mut i = 0;
    let push = |matches: &mut Vec<Match>, negated: &mut bool, cond: Cond| {
        matches.push(Match { negated: *negated, cond });
        *negated = false;
    };
    while i < words.len() {
        let word = words[i];
        let value = words.get(i + 1);
        match word {
            "!" => {
                negated = true;
                i += 1;
                continue;
            }
            "-p" => {
                push(&mut matches, &mut negated, Cond::Proto(value.ok_or("-p without a value")?.to_string()))
            }
            "-i" => push(
                &mut matches,
                &mut negated,
                Cond::InIface(value.ok_or("-i without a value")?.to_string()),
            ),
            "-o" => push(
                &mut matches,
                &mut negated,
                Cond::OutIface(value.ok_or("-o without a value")?.to_string()),
            ),
            "-s" => push(&mut matches, &mut negated, Cond::Src(cidr(value.ok_or("-s without a value")?)?)),
            "-d" => push(&mut matches, &mut negated, Cond::Dst(cidr(value.ok_or("-d without a value")?)?)),
            "-m" => {
                module = value.ok_or("-m without a module")?;
                if !["owner", "multiport", "mark", "connmark", "conntrack", "tcp", "udp"].contains(&module) {
                    return Err(format!("match module {module:?} is not modelled"));
                }
                i += 2;
                continue;
            }
            "--dport" => push(&mut matches, &mut negated, Cond::DstPorts(vec![number(value, "--dport")?])),
            "--sport" => push(&mut matches, &mut negated, Cond::SrcPort(number(value, "--sport")?)),
            "--dports" => {
                let list = value.ok_or("--dports without a value")?;
                let ports = list
                    .split(',')
                    .map(|p| p.parse::<u16>().map_err(|_| format!("--dports {list:?}")))
                    .collect::<Result<Vec<_>, _>>()?;
                push(&mut matches, &mut negated, Cond::DstPorts(ports));
            }
            "--uid-owner" => push(&mut matches, &mut negated, Cond::Uid(number(value, "--uid-owner")?)),
            "--gid-owner" => push(&mut matches, &mut negated, Cond::Gid(number(value, "--gid-owner")?)),
            "--mark" => {
                let (value, mask) = mark_and_mask(value, "--mark")?;
                let cond = match module {
                    "mark" => Cond::Mark { value, mask },
                    "connmark" => Cond::ConnMark { value, mask },
                    other => return Err(format!("--mark after -m {other:?}")),
                };
                push(&mut matches, &mut negated, cond);
            }
            "--ctstate" => {
                let states =
                    value.ok_or("--ctstate without a value")?.split(',').map(str::to_owned).collect();
                push(&mut matches, &mut negated, Cond::CtState(states));
            }
            "-j" => {
                let target = parse_target(&words[i + 1..])?;
                if negated {
                    return Err("a dangling \"!\"".to_owned());
                }
                return Ok(Rule { matches, actions: vec![target] });
            }
            other => return Err(format!("option {other:?} is not modelled")),
        }
        i += 2;
    }
    Err("a rule without a target".to_owned())
}

fn parse_target(words: &[&str]) -> Result<Target, String> {
    let name = words.first().ok_or("-j without a target")?;
    let option = |flag: &str| words.iter().position(|w| *w == flag).and_then(|i| words.get(i + 1));
    let known: &[&str] = match *name {
        "RETURN" | "ACCEPT" => &[],
        "REDIRECT" => &["--to-ports", "--to-port"],
        "TPROXY" => &["--tproxy-mark", "--on-port"],
        "MARK" => &["--set-mark"],
        "CT" => &["--zone"],
        "CONNMARK" => &["--save-mark", "--restore-mark"],
        chain if chain.starts_with("ISTIO_") || chain.starts_with("TRELLIS_") => &[],
        other => return Err(format!("target {other:?} is not modelled")),
    };
    let mut rest = words[1..].iter();
    while let Some(w) = rest.next() {
        if !known.contains(w) {
            return Err(format!("target option {w:?} of {name} is not modelled"));
        }
        if !matches!(*w, "--save-mark" | "--restore-mark") {
            rest.next();
        }
    }
    Ok(match *name {
        "RETURN" => Target::Return,
        "ACCEPT" => Target::Accept,
        "REDIRECT" => Target::Redirect(number(option("--to-ports").or(option("--to-port")), "--to-ports")?),
        "TPROXY" => {
            let (value, mask) = mark_and_mask(option("--tproxy-mark"), "--tproxy-mark")?;
            Target::Tproxy { port: number(option("--on-port"), "--on-port")?, value, mask }
        }
        "MARK" => Target::SetMark(mark_and_mask(option("--set-mark"), "--set-mark")?.0),
        "CT" => Target::CtZone(number(option("--zone"), "--zone")?),
        "CONNMARK" if words.contains(&"--save-mark") => Target::SaveMark,
        "CONNMARK" if words.contains(&"--restore-mark") => Target::RestoreMark,
        "CONNMARK" => return Err("CONNMARK without --save-mark or --restore-mark".to_owned()),
        chain => Target::Jump(chain.to_owned()),
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// Locally generated (nat/mangle/raw OUTPUT).
    Output,
    /// Arriving (PREROUTING).
    Prerouting,
}

/// A packet at a hook, with what the kernel knows of it there.
#[derive(Clone, Debug)]
pub struct Packet {
    pub hook: Hook,
    pub proto: &'static str,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub iif: &'static str,
    pub oif: &'static str,
    /// The sending socket's owner (OUTPUT only).
    pub uid: u32,
    pub gid: u32,
    pub mark: u32,
    pub connmark: u32,
    /// A later packet of a known connection: nat is not consulted.
    pub established: bool,
}

/// What the rules did to a packet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// NAT REDIRECT to this local port.
    pub redirect: Option<u16>,
    /// TPROXY to this local port.
    pub tproxy: Option<u16>,
    pub mark: u32,
    pub connmark: u32,
    pub zone: Option<u16>,
}

enum Flow {
    Continue,
    Stop,
}

impl Tables {
    pub fn is_empty(&self) -> bool {
        self.0.values().all(|chains| chains.values().all(Vec::is_empty))
    }

    pub fn uses_table(&self, table: &str) -> bool {
        self.0.get(table).is_some_and(|chains| chains.values().any(|r| !r.is_empty()))
    }

    /// The packet through raw, mangle and nat at its hook.
    pub fn evaluate(&self, packet: &Packet) -> Result<Verdict, String> {
        let mut verdict = Verdict { mark: packet.mark, connmark: packet.connmark, ..Verdict::default() };
        let builtin = match packet.hook {
            Hook::Output => "OUTPUT",
            Hook::Prerouting => "PREROUTING",
        };
        for table in ["raw", "mangle", "nat"] {
            if table == "nat" && packet.established {
                continue;
            }
            self.walk(table, builtin, packet, &mut verdict, 0)?;
        }
        Ok(verdict)
    }

    fn walk(
        &self,
        table: &str,
        chain: &str,
        p: &Packet,
        v: &mut Verdict,
        depth: usize,
    ) -> Result<Flow, String> {
        if depth > 16 {
            return Err(format!("jumps nest too deep at {table}/{chain}"));
        }
        let Some(rules) = self.0.get(table).and_then(|t| t.get(chain)) else {
            if depth == 0 {
                return Ok(Flow::Continue);
            }
            return Err(format!("jump to missing chain {table}/{chain}"));
        };
        for rule in rules {
            if !rule.matches.iter().all(|m| matches(m, p, v)) {
                continue;
            }
            for action in &rule.actions {
                match action {
                    Target::Return => return Ok(Flow::Continue),
                    Target::Accept => return Ok(Flow::Stop),
                    Target::Jump(next) => {
                        if let Flow::Stop = self.walk(table, next, p, v, depth + 1)? {
                            return Ok(Flow::Stop);
                        }
                    }
                    Target::Redirect(port) => {
                        v.redirect = Some(*port);
                        return Ok(Flow::Stop);
                    }
                    Target::Tproxy { port, value, mask } => {
                        v.mark = (v.mark & !mask) ^ value;
                        v.tproxy = Some(*port);
                        return Ok(Flow::Stop);
                    }
                    Target::SetMark(mark) => v.mark = *mark,
                    // The first zone a packet is given stays (the kernel's CT target skips a
                    // packet that already has its conntrack template).
                    Target::CtZone(zone) => {
                        v.zone.get_or_insert(*zone);
                    }
                    Target::SaveMark => v.connmark = v.mark,
                    Target::RestoreMark => v.mark = v.connmark,
                }
            }
        }
        Ok(Flow::Continue)
    }
}

fn matches(m: &Match, p: &Packet, v: &Verdict) -> bool {
    let hit = match &m.cond {
        Cond::Proto(proto) => proto == p.proto,
        Cond::InIface(i) => p.hook == Hook::Prerouting && i == p.iif,
        Cond::OutIface(o) => p.hook == Hook::Output && o == p.oif,
        Cond::Src(net) => net.contains(&p.src),
        Cond::Dst(net) => net.contains(&p.dst),
        Cond::DstPorts(ports) => ports.contains(&p.dport),
        Cond::SrcPort(port) => *port == p.sport,
        // The owner match only sees local sockets; arriving packets never match it either way.
        Cond::Uid(uid) => {
            if p.hook != Hook::Output {
                return false;
            }
            *uid == p.uid
        }
        Cond::Gid(gid) => {
            if p.hook != Hook::Output {
                return false;
            }
            *gid == p.gid
        }
        Cond::Mark { value, mask } => v.mark & mask == *value,
        Cond::ConnMark { value, mask } => v.connmark & mask == *value,
        Cond::CtState(states) => {
            let state = if p.established { "ESTABLISHED" } else { "NEW" };
            states.iter().any(|s| s == state)
        }
    };
    hit != m.negated
}
