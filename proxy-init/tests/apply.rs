//! Applying for real, as root, in a namespace the test makes: twice gives the same state,
//! cleanup leaves nothing of ours, and bad settings change nothing.

use std::process::Command;

use trellis_proxy_init::testing::{in_scratch_namespace, output_in};

fn proxy_init(ns: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_trellis-proxy-init"))
        .arg("--netns")
        .arg(format!("/var/run/netns/{ns}"))
        .args(args)
        .output()
        .unwrap()
}

/// Everything the namespace's packet filter and policy routing hold, without comments.
fn state(ns: &str) -> String {
    output_in(ns, &["nft", "list", "ruleset"]) + &iptables_state(ns) + &tproxy_route(ns)
}

/// TPROXY's rules and routes (table 133), as `ip` lists them.
fn tproxy_route(ns: &str) -> String {
    [
        output_in(ns, &["ip", "-4", "rule", "show", "lookup", "133"]),
        output_in(ns, &["ip", "-6", "rule", "show", "lookup", "133"]),
        output_in(ns, &["ip", "-4", "route", "show", "table", "133"]),
        output_in(ns, &["ip", "-6", "route", "show", "table", "133"]),
    ]
    .concat()
}

/// Every table as iptables sees them. (A restored table is listed in another order by `nft`,
/// with the same content.)
fn iptables_state(ns: &str) -> String {
    let text = ["iptables-save", "ip6tables-save"].map(|save| output_in(ns, &[save])).concat();
    text.lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>().join("\n")
}

#[test]
fn apply_is_idempotent_and_cleanup_leaves_nothing() {
    in_scratch_namespace(|ns| {
        let before = state(ns);
        for (backend, mode) in
            [("nft", "REDIRECT"), ("iptables", "REDIRECT"), ("nft", "TPROXY"), ("iptables", "TPROXY")]
        {
            let args = [
                "--backend",
                backend,
                "-m",
                mode,
                "--ipv6",
                "--capture-dns",
                "--capture-all-dns",
                "-x",
                "10.96.0.0/12,fd00::/8",
                "-d",
                "9901",
            ];
            let first = proxy_init(ns, &args);
            assert!(first.status.success(), "{backend}: {}", String::from_utf8_lossy(&first.stderr));
            let once = state(ns);
            assert!(once.to_lowercase().contains("trellis"), "{backend}: nothing was applied:\n{once}");
            let route = tproxy_route(ns);
            let expected = if mode == "TPROXY" { 4 } else { 0 };
            assert_eq!(route.lines().count(), expected, "{backend} {mode}: the policy route:\n{route}");
            let second = proxy_init(ns, &args);
            assert!(second.status.success(), "{backend}: {}", String::from_utf8_lossy(&second.stderr));
            assert_eq!(state(ns), once, "{backend}: applying twice changed the state");

            let cleanup = proxy_init(ns, &["--cleanup"]);
            assert!(cleanup.status.success(), "{}", String::from_utf8_lossy(&cleanup.stderr));
            let after = state(ns);
            assert!(!after.to_lowercase().contains("trellis"), "{backend}: cleanup left:\n{after}");
            assert_eq!(tproxy_route(ns), "", "{backend} {mode}: cleanup left the policy route");
        }
        let again = proxy_init(ns, &["--cleanup"]);
        assert!(again.status.success(), "cleaning an empty namespace is not an error");
        // iptables-nft may leave its own empty nat tables behind; nothing of ours is there.
        assert!(!state(ns).to_lowercase().contains("trellis"));
        let _ = before;
    });
}

#[test]
fn bad_settings_fail_before_anything_is_applied() {
    in_scratch_namespace(|ns| {
        for (args, message) in [
            (vec!["-b", "8080", "-d", "8080"], "-b/--include-inbound-ports: port 8080 is also excluded"),
            (vec!["-x", "*"], "-x: invalid value \"*\""),
            (vec!["-d", "80,http"], "-d: invalid value \"80,http\": \"http\" is not a port number"),
            (vec!["-m", "NONE"], "-m: NONE means no redirect at all"),
            (vec!["-u", "1337,proxy"], "-u: invalid value \"proxy\": expected a numeric id"),
            (
                vec!["-m", "TPROXY", "-t", "1338"],
                "-t/--inbound-tproxy-mark: 1338 is the mark of the proxy's own calls",
            ),
            (
                vec!["--capture-dns", "--resolv-conf", "/nonexistent"],
                "--resolv-conf: cannot read /nonexistent",
            ),
        ] {
            let out = proxy_init(ns, &args);
            assert_eq!(out.status.code(), Some(2), "{args:?}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains(message), "{args:?}: {stderr}");
            assert!(!state(ns).to_lowercase().contains("trellis"), "{args:?} applied something");
        }
    });
}

/// A backend failure part-way (the IPv6 payload, after IPv4 went in) puts IPv4 back as it was
/// and reports the tool's message.
#[test]
fn a_failed_apply_leaves_the_namespace_as_it_was() {
    in_scratch_namespace(|ns| {
        let first =
            proxy_init(ns, &["--backend", "iptables", "--ipv6", "--capture-dns", "--capture-all-dns"]);
        assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
        // Someone else's IPv6 chain now jumps into our DNS chain, so it cannot be removed.
        for rule in [&["-N", "OTHER"][..], &["-A", "OTHER", "-j", "TRELLIS_DNS"][..]] {
            let out = output_in(ns, &[&["ip6tables", "-t", "nat"][..], rule].concat());
            assert!(out.is_empty(), "{out}");
        }
        let before = iptables_state(ns);
        assert!(before.contains("-A OTHER -j TRELLIS_DNS"), "{before}");

        // Without DNS capture, TRELLIS_DNS has to go: IPv4 succeeds, IPv6 cannot.
        let out = proxy_init(ns, &["--backend", "iptables", "--ipv6", "-o", "5432"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("ip6tables-restore failed"), "{stderr}");
        assert_eq!(iptables_state(ns), before, "a failed apply changed the namespace");
    });
}
