//! The redirect on real packets, as root: a "pod" and a "peer" network namespace joined by a
//! veth pair (10.77.x / fd00:77:: addresses, only inside them), the rules applied in the pod,
//! and listeners on 15001, 15006 and 15053 that read where each connection was headed.

use std::os::unix::process::CommandExt;
use std::process::Command;

use trellis_proxy_init::apply::in_namespace;
use trellis_proxy_init::testing::{
    RunnableByAnyone, accepted, connect_as, in_scratch_namespace, ip, listen, netns_path, received, send_as,
    udp_socket,
};
use trellis_proxy_init::validate::EXIT_NOT_REDIRECTED;

const BIN: &str = env!("CARGO_BIN_EXE_trellis-proxy-init");

/// Joins `pod` and `peer` with a veth pair and addresses on both ends.
fn wire(pod: &str, peer: &str, tag: &str) {
    let (a, b) = (format!("tp{tag}"), format!("tq{tag}"));
    ip(&["link", "add", &a, "netns", pod, "type", "veth", "peer", "name", &b, "netns", peer]);
    // The peer's second addresses (.3, ::3) stand for an excluded range.
    for (ns, dev, addrs) in [
        (pod, &a, &["10.77.0.2/24", "fd00:77::2/64"][..]),
        (peer, &b, &["10.77.0.1/24", "fd00:77::1/64", "10.77.0.3/24", "fd00:77::3/64"][..]),
    ] {
        for addr in addrs {
            let v6_options: &[&str] = if addr.contains(':') { &["nodad"] } else { &[] };
            ip(&[&["-n", ns, "addr", "add", addr, "dev", dev], v6_options].concat());
        }
        ip(&["-n", ns, "link", "set", dev, "up"]);
    }
}

/// `trellis-proxy-init validate` inside the pod as the proxy's user: its exit code and stderr.
fn validate_in(ns: &str, extra: &[&str]) -> (Option<i32>, String) {
    let binary = RunnableByAnyone::copy(BIN);
    let out = in_namespace(Some(&netns_path(ns)), || {
        Command::new(&binary.path)
            .arg("validate")
            .args(extra)
            .args(["--timeout", "1s"])
            .uid(1337)
            .gid(1337)
            .output()
    })
    .unwrap()
    .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn check_family(pod: &str, peer: &str, backend: &str, v6: bool) {
    let (pod_ip, peer_ip, excluded_ip, any, lo) = if v6 {
        ("[fd00:77::2]", "[fd00:77::1]", "[fd00:77::3]", "[::]", "[::1]")
    } else {
        ("10.77.0.2", "10.77.0.1", "10.77.0.3", "0.0.0.0", "127.0.0.1")
    };
    let outbound = listen(pod, &format!("{any}:15001"));
    let inbound = listen(pod, &format!("{any}:15006"));
    let readiness = listen(pod, &format!("{any}:15021"));
    let pod_app = listen(pod, &format!("{any}:8080"));
    let server = listen(peer, &format!("{any}:8080"));
    let excluded = listen(peer, &format!("{any}:5432"));
    let dns = listen(pod, &format!("{any}:15053"));
    let peer_dns = listen(peer, &format!("{any}:53"));
    let what = format!("{backend} {}", if v6 { "IPv6" } else { "IPv4" });
    let all = [&outbound, &inbound, &readiness, &pod_app, &server, &excluded, &dns, &peer_dns];
    let names = [
        "outbound 15001",
        "inbound 15006",
        "readiness 15021",
        "pod app 8080",
        "peer server 8080",
        "peer 5432",
        "pod dns 15053",
        "peer dns 53",
    ];
    let expect = |label: &str, listener: usize, dst: &str| {
        let (got, original) = accepted(&all);
        assert_eq!(names[got], names[listener], "{what}: {label}");
        assert_eq!(original.to_string(), dst, "{what}: {label}: original destination");
    };

    connect_as(pod, 1000, &format!("{peer_ip}:8080"));
    expect("the app's outbound call is captured", 0, &format!("{peer_ip}:8080"));
    connect_as(pod, 1337, &format!("{peer_ip}:8080"));
    expect("the proxy's own call goes out", 4, &format!("{peer_ip}:8080"));
    connect_as(pod, 1000, &format!("{peer_ip}:5432"));
    expect("an excluded outbound port is not captured", 5, &format!("{peer_ip}:5432"));
    connect_as(pod, 1000, &format!("{excluded_ip}:8080"));
    expect("an excluded outbound range is not captured", 4, &format!("{excluded_ip}:8080"));
    connect_as(pod, 1000, &format!("{lo}:8080"));
    expect("loopback is not captured", 3, &format!("{lo}:8080"));
    connect_as(pod, 1000, &format!("{peer_ip}:53"));
    expect("the app's DNS over TCP goes to the proxy", 6, &format!("{peer_ip}:53"));
    connect_as(pod, 1337, &format!("{peer_ip}:53"));
    expect("the proxy's own DNS over TCP goes out", 7, &format!("{peer_ip}:53"));

    let udp_dns = udp_socket(pod, &format!("{any}:15053"));
    let udp_peer_dns = udp_socket(peer, &format!("{any}:53"));
    send_as(pod, 1000, "udp", &format!("{peer_ip}:53"));
    assert!(received(&udp_dns), "{what}: the app's DNS over UDP goes to the proxy");
    send_as(pod, 1337, "udp", &format!("{peer_ip}:53"));
    assert!(received(&udp_peer_dns), "{what}: the proxy's own DNS over UDP goes out");
    send_as(pod, 1000, "udp", &format!("{excluded_ip}:53"));
    assert!(received(&udp_peer_dns), "{what}: the app's DNS to a server not in resolv.conf goes out");
    connect_as(peer, 1000, &format!("{pod_ip}:8080"));
    expect("an inbound call is captured", 1, &format!("{pod_ip}:8080"));
    connect_as(peer, 1000, &format!("{pod_ip}:15021"));
    expect("the readiness port is not captured inbound", 2, &format!("{pod_ip}:15021"));
}

#[test]
fn captures_outbound_and_inbound_and_leaves_the_rest() {
    in_scratch_namespace(|pod| {
        in_scratch_namespace(|peer| {
            wire(pod, peer, &format!("{}", std::process::id() % 100_000));
            // The pod's resolvers are the peer's addresses; DNS to anyone else is not captured.
            let resolv = std::env::temp_dir().join(format!("trellis-packets-resolv-{}", std::process::id()));
            std::fs::write(&resolv, "nameserver 10.77.0.1\nnameserver fd00:77::1\n").unwrap();
            let resolv_flag = resolv.to_string_lossy().into_owned();
            let flags = [
                "--ipv6",
                "-o",
                "5432",
                "-x",
                "10.77.0.3/32,fd00:77::3/128",
                "--capture-dns",
                "--resolv-conf",
                &resolv_flag,
            ];
            for backend in ["nft", "iptables"] {
                let out = Command::new(BIN)
                    .args(["--backend", backend])
                    .args(flags)
                    .arg("--netns")
                    .arg(netns_path(pod))
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{backend}: {}", String::from_utf8_lossy(&out.stderr));
                check_family(pod, peer, backend, false);
                check_family(pod, peer, backend, true);

                let (code, stderr) = validate_in(pod, &flags);
                assert_eq!(code, Some(0), "{backend}: validate with the redirect in place: {stderr}");

                let cleanup =
                    Command::new(BIN).args(["--cleanup", "--netns"]).arg(netns_path(pod)).output().unwrap();
                assert!(cleanup.status.success());
                let (code, stderr) = validate_in(pod, &flags);
                assert_eq!(
                    code,
                    Some(i32::from(EXIT_NOT_REDIRECTED)),
                    "{backend}: validate without it: {stderr}"
                );
                assert!(stderr.contains("CNI plugin did not run"), "{stderr}");
            }
        });
    });
}
