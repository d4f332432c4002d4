//! Istio's own istio-iptables goldens (`shared/istio-conformance/iptables/cases`): for every
//! case, `trellis-proxy-init --dry-run` with the case's flags must treat every packet the way
//! Istio's rules do. Both rule sets are read into a small netfilter model and a few thousand
//! probe packets go through each (the app's, the proxy's by user and by group, loopback, the
//! pod's address, the nameservers, included and excluded ranges and ports, the proxy's own
//! ports, interfaces, marks, new and established connections); the verdicts (redirected to
//! which port, TPROXY'd to which port, the mark, the conntrack zone) must agree, except where
//! `istio_iptables_differences.txt` names a deliberate difference and its reason.

mod netfilter_model;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use netfilter_model::{
    Dump, Family, Hook, Packet, Tables, Verdict, parse_istio_golden, parse_trellis_dry_run, parse_trellis_nft,
};

const BIN: &str = env!("CARGO_BIN_EXE_trellis-proxy-init");

fn cases_dir() -> PathBuf {
    let dir = std::env::var_os("TRELLIS_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"))
        .join("istio-conformance/iptables/cases");
    assert!(dir.is_dir(), "conformance corpus not found at {} (set TRELLIS_SHARED_DIR)", dir.display());
    dir
}

struct Case {
    name: String,
    golden: String,
    args: Vec<String>,
    /// The case's nameservers (Istio reads them from resolv.conf; so do we).
    dns_servers: Vec<String>,
    uids: Vec<u32>,
    gids: Vec<u32>,
}

fn ids(value: &serde_json::Value) -> Vec<u32> {
    let text = match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(a) => a.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join(","),
        _ => String::new(),
    };
    text.split(',').filter_map(|s| s.trim().parse().ok()).collect()
}

fn read_case(path: &Path) -> Case {
    let text = std::fs::read_to_string(path).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let istio = &json["istio"];
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    let restricted = json.get("restrict_ids");
    Case {
        name: json["name"].as_str().unwrap().to_owned(),
        golden: json["golden"].as_str().unwrap().to_owned(),
        args: strings(&json["trellis_args"]),
        dns_servers: [strings(&istio["DNSServersV4"]), strings(&istio["DNSServersV6"])].concat(),
        uids: restricted.map_or_else(|| ids(&istio["ProxyUID"]), |r| ids(&r["uids"])),
        gids: restricted.map_or_else(|| ids(&istio["ProxyGID"]), |r| ids(&r["gids"])),
    }
}

/// Our rule set for the case, with one backend: the binary's dry run, with the case's
/// nameservers in a resolv.conf of its own.
fn trellis_rules(case: &Case, scratch: &Path, backend: &str) -> Dump {
    let resolv = scratch.join(format!("{}.resolv.conf", case.name));
    let text: String = case.dns_servers.iter().map(|s| format!("nameserver {s}\n")).collect();
    std::fs::write(&resolv, text).unwrap();
    let out = Command::new(BIN)
        .args(["--dry-run", "--backend", backend, "--resolv-conf"])
        .arg(&resolv)
        .args(&case.args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: trellis-proxy-init {:?} failed: {}",
        case.name,
        case.args,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let parsed = if backend == "nft" { parse_trellis_nft(&text) } else { parse_trellis_dry_run(&text) };
    parsed.unwrap_or_else(|e| panic!("{}: ours ({backend}): {e}", case.name))
}

struct Addresses {
    pod: IpAddr,
    loopback: Vec<IpAddr>,
    remote: Vec<IpAddr>,
    passthrough: IpAddr,
}

fn addresses(family: Family, case: &Case) -> Addresses {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let mut a = match family {
        Family::V4 => Addresses {
            pod: ip("10.244.0.5"),
            loopback: ["127.0.0.1", "127.0.0.2", "127.0.0.53", "127.1.2.3"].map(ip).to_vec(),
            remote: ["10.1.2.3", "9.9.1.1", "1.1.1.1", "8.8.8.8", "169.254.169.254"].map(ip).to_vec(),
            passthrough: ip("127.0.0.6"),
        },
        Family::V6 => Addresses {
            pod: ip("fd00::5"),
            loopback: ["::1"].map(ip).to_vec(),
            remote: ["2001:db8::1", "2001:db9::1", "fd00:1::9"].map(ip).to_vec(),
            passthrough: ip("::6"),
        },
    };
    // The case's nameservers, wherever they are.
    for server in case.dns_servers.iter().map(|s| ip(s)) {
        let same = server.is_ipv4() == (family == Family::V4);
        if same && !a.loopback.contains(&server) && !a.remote.contains(&server) {
            if server.is_loopback() { a.loopback.push(server) } else { a.remote.push(server) }
        }
    }
    a
}

const PORTS: [u16; 16] =
    [53, 80, 22, 4000, 5000, 6000, 7000, 8080, 15001, 15006, 15008, 15020, 15021, 15090, 31000, 32000];
const APP: u32 = 1000;

/// Every probe packet for one family of a case.
fn probes(family: Family, case: &Case, with_marks: bool) -> Vec<Packet> {
    let a = addresses(family, case);
    let mut owners = vec![(APP, APP), (0, APP)];
    owners.extend(case.uids.iter().map(|u| (*u, APP)));
    owners.extend(case.gids.iter().map(|g| (0, *g)));
    owners.extend(case.uids.iter().flat_map(|u| case.gids.iter().map(move |g| (*u, *g))));
    let marks: &[(u32, u32)] =
        if with_marks { &[(0, 0), (1337, 0), (0, 1337), (1338, 0)] } else { &[(0, 0)] };
    let states: &[bool] = if with_marks { &[false, true] } else { &[false] };
    let mut out = Vec::new();
    let base = |hook, proto, src, dst, sport, dport, iif, oif| Packet {
        hook,
        proto,
        src,
        dst,
        sport,
        dport,
        iif,
        oif,
        uid: APP,
        gid: APP,
        mark: 0,
        connmark: 0,
        established: false,
    };
    // Locally generated.
    let local_dsts: Vec<IpAddr> = a.loopback.iter().copied().chain([a.pod, a.passthrough]).collect();
    let mut routes: Vec<(IpAddr, IpAddr, &'static str)> = Vec::new();
    for dst in &local_dsts {
        routes.push((a.pod, *dst, "lo"));
        routes.push((a.passthrough, *dst, "lo"));
        if dst.is_loopback() {
            routes.push((*dst, *dst, "lo"));
        }
    }
    for dst in &a.remote {
        for oif in ["eth0", "eth1", "not-istio-nic"] {
            routes.push((a.pod, *dst, oif));
        }
    }
    for (src, dst, oif) in routes {
        for proto in ["tcp", "udp"] {
            for dport in PORTS {
                // The proxy's DNS answers (from 15053) matter to UDP's conntrack zones only.
                let sports: &[u16] = if proto == "udp" { &[40000, 15053] } else { &[40000] };
                for &sport in sports {
                    for &(uid, gid) in &owners {
                        for &(mark, connmark) in marks {
                            for &established in states {
                                let mut p = base(Hook::Output, proto, src, dst, sport, dport, "", oif);
                                (p.uid, p.gid, p.mark, p.connmark, p.established) =
                                    (uid, gid, mark, connmark, established);
                                out.push(p);
                            }
                        }
                    }
                }
            }
        }
    }
    // Arriving.
    let mut arrivals: Vec<(IpAddr, IpAddr, &'static str)> = Vec::new();
    for iif in ["eth0", "eth1", "eth2", "not-istio-nic"] {
        for src in &a.remote {
            for dst in [a.pod].iter().chain(&a.remote) {
                arrivals.push((*src, *dst, iif));
            }
        }
    }
    for src in a.loopback.iter().chain([&a.pod, &a.passthrough]) {
        for dst in [a.pod].iter().chain(&a.loopback) {
            arrivals.push((*src, *dst, "lo"));
        }
    }
    for (src, dst, iif) in arrivals {
        for proto in ["tcp", "udp"] {
            for dport in PORTS {
                // Answers from a resolver (from 53) matter to UDP's conntrack zones only.
                let sports: &[u16] = if proto == "udp" { &[40000, 53] } else { &[40000] };
                for &sport in sports {
                    for &(mark, connmark) in marks {
                        for &established in states {
                            let mut p = base(Hook::Prerouting, proto, src, dst, sport, dport, iif, "");
                            (p.mark, p.connmark, p.established) = (mark, connmark, established);
                            out.push(p);
                        }
                    }
                }
            }
        }
    }
    out
}

fn describe(family: Family, p: &Packet) -> String {
    let (hook, dev) = match p.hook {
        Hook::Output => ("OUTPUT", format!("oif={}", p.oif)),
        Hook::Prerouting => ("PREROUTING", format!("iif={}", p.iif)),
    };
    format!(
        "{hook} {family:?} {} {dev} {}:{} -> {}:{} uid={} gid={} mark={} connmark={}{}",
        p.proto,
        p.src,
        p.sport,
        p.dst,
        p.dport,
        p.uid,
        p.gid,
        p.mark,
        p.connmark,
        if p.established { " established" } else { "" }
    )
}

/// One line of the differences file: which cases, which probes, and why.
struct Difference {
    cases: String,
    hook: Option<Hook>,
    proto: Option<String>,
    dports: Option<Vec<u16>>,
    reason: String,
    line: usize,
}

impl Difference {
    fn covers(&self, case: &str, p: &Packet) -> bool {
        let case_ok = match self.cases.strip_suffix('*') {
            Some(prefix) => case.starts_with(prefix),
            None => self.cases == case,
        };
        case_ok
            && self.hook.is_none_or(|h| h == p.hook)
            && self.proto.as_deref().is_none_or(|proto| proto == p.proto)
            && self.dports.as_ref().is_none_or(|ports| ports.contains(&p.dport))
    }
}

fn differences() -> Vec<Difference> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/istio_iptables_differences.txt");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.splitn(3, '|').map(str::trim).collect();
        let [cases, probes, reason] = fields[..] else {
            panic!("{}:{}: expected `cases | probes | reason`", path.display(), n + 1)
        };
        assert!(!reason.is_empty(), "{}:{}: a difference needs its reason", path.display(), n + 1);
        let mut d = Difference {
            cases: cases.to_owned(),
            hook: None,
            proto: None,
            dports: None,
            reason: reason.to_owned(),
            line: n + 1,
        };
        for word in probes.split_whitespace() {
            match word {
                "OUTPUT" => d.hook = Some(Hook::Output),
                "PREROUTING" => d.hook = Some(Hook::Prerouting),
                "tcp" | "udp" => d.proto = Some(word.to_owned()),
                _ => match word.strip_prefix("dport=") {
                    Some(list) => d.dports = Some(list.split(',').map(|p| p.parse().unwrap()).collect()),
                    None => panic!("{}:{}: unknown probe filter {word:?}", path.display(), n + 1),
                },
            }
        }
        out.push(d);
    }
    out
}

fn family_tables(dump: &Dump, family: Family) -> Tables {
    dump.get(&family).cloned().unwrap_or_default()
}

#[test]
fn trellis_redirects_every_packet_as_istio_iptables_does() {
    let dir = cases_dir();
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    names.sort();
    assert!(names.len() >= 17, "only {} cases in {}", names.len(), dir.display());
    let scratch = std::env::temp_dir().join(format!("trellis-iptables-conformance-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let allowed = differences();
    let mut used: BTreeSet<usize> = BTreeSet::new();
    let mut failures: Vec<String> = Vec::new();
    let mut probed = 0usize;
    for path in names {
        let case = read_case(&path);
        let golden_text = std::fs::read_to_string(dir.join(&case.golden)).unwrap();
        let istio =
            parse_istio_golden(&golden_text).unwrap_or_else(|e| panic!("{}: golden: {e}", case.golden));
        let mut case_failures = Vec::new();
        // Both backends: nft is what runs where the kernel has it, iptables elsewhere.
        for backend in ["iptables", "nft"] {
            let ours = trellis_rules(&case, &scratch, backend);
            for family in [Family::V4, Family::V6] {
                let (theirs, mine) = (family_tables(&istio, family), family_tables(&ours, family));
                if theirs.is_empty() && mine.is_empty() {
                    continue;
                }
                let with_marks = theirs.uses_table("mangle") || mine.uses_table("mangle");
                for probe in probes(family, &case, with_marks) {
                    probed += 1;
                    let want: Verdict =
                        theirs.evaluate(&probe).unwrap_or_else(|e| panic!("{}: Istio's: {e}", case.name));
                    let got: Verdict = mine
                        .evaluate(&probe)
                        .unwrap_or_else(|e| panic!("{} ({backend}): ours: {e}", case.name));
                    if want == got {
                        continue;
                    }
                    match allowed.iter().find(|d| d.covers(&case.name, &probe)) {
                        Some(d) => {
                            used.insert(d.line);
                        }
                        None => case_failures.push(format!(
                            "{} ({backend}): {}: Istio {:?}, Trellis {:?}",
                            case.name,
                            describe(family, &probe),
                            want,
                            got
                        )),
                    }
                }
            }
        }
        if !case_failures.is_empty() {
            let total = case_failures.len();
            failures.extend(case_failures.into_iter().take(8));
            failures.push(format!("{}: {total} probes disagree in all", case.name));
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    eprintln!("{probed} probe packets through both rule sets");
    assert!(probed > 10_000, "only {probed} probes");
    for d in &allowed {
        if !used.contains(&d.line) {
            failures.push(format!(
                "istio_iptables_differences.txt:{}: no longer needed (no probe of {} differs): {}",
                d.line, d.cases, d.reason
            ));
        }
    }
    assert!(failures.is_empty(), "{} disagreements:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn the_model_refuses_rule_features_it_does_not_know() {
    let unknown_match = "iptables-save\n* nat\n-A OUTPUT -m statistic --probability 0.5 -j RETURN\nCOMMIT\n";
    assert!(parse_istio_golden(unknown_match).unwrap_err().contains("statistic"));
    let unknown_target = "* nat\n-A OUTPUT -j DNAT --to-destination 1.2.3.4\nCOMMIT\n";
    assert!(parse_istio_golden(unknown_target).unwrap_err().contains("DNAT"));
    let nft = "table inet trellis {\n\tchain OUTPUT {\n\t\ttype nat hook output priority -100; policy accept;\n\t\t\
               meta nfproto ipv4 meta l4proto tcp dnat to 1.2.3.4\n\t}\n}\n";
    assert!(parse_trellis_nft(nft).unwrap_err().contains("dnat"));
    let ours = "# V4\n*nat\n-A OUTPUT -p tcp -j TRELLIS_NOWHERE\nCOMMIT\n";
    let dump = parse_trellis_dry_run(ours).unwrap();
    let tables = dump.get(&Family::V4).unwrap();
    let probe = Packet {
        hook: Hook::Output,
        proto: "tcp",
        src: "10.0.0.1".parse().unwrap(),
        dst: "10.0.0.2".parse().unwrap(),
        sport: 1,
        dport: 2,
        iif: "",
        oif: "eth0",
        uid: 0,
        gid: 0,
        mark: 0,
        connmark: 0,
        established: false,
    };
    assert!(tables.evaluate(&probe).unwrap_err().contains("missing chain"));
}
