//! The redirect on real packets, as root: a "pod" and a "peer" network namespace joined by a
//! veth pair (10.77.x / fd00:77:: addresses, only inside them), the rules applied in the pod,
//! and listeners on 15001 and 15006 that read where each connection was headed.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::in_scratch_namespace;
use nix::sys::socket::{getsockopt, sockopt};
use trellis_proxy_init::apply::in_namespace;

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().unwrap();
    assert!(status.success(), "ip {args:?}");
}

fn netns_path(ns: &str) -> PathBuf {
    PathBuf::from(format!("/var/run/netns/{ns}"))
}

/// Joins `pod` and `peer` with a veth pair and addresses on both ends.
fn wire(pod: &str, peer: &str, tag: &str) {
    let (a, b) = (format!("tp{tag}"), format!("tq{tag}"));
    ip(&["link", "add", &a, "netns", pod, "type", "veth", "peer", "name", &b, "netns", peer]);
    for (ns, dev, v4, v6) in
        [(pod, &a, "10.77.0.2/24", "fd00:77::2/64"), (peer, &b, "10.77.0.1/24", "fd00:77::1/64")]
    {
        ip(&["-n", ns, "addr", "add", v4, "dev", dev]);
        ip(&["-n", ns, "addr", "add", v6, "dev", dev, "nodad"]);
        ip(&["-n", ns, "link", "set", dev, "up"]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
    }
}

fn listen(ns: &str, addr: &str) -> TcpListener {
    let addr: SocketAddr = addr.parse().unwrap();
    let listener = in_namespace(Some(&netns_path(ns)), || TcpListener::bind(addr)).unwrap().unwrap();
    listener.set_nonblocking(true).unwrap();
    listener
}

/// Connects from inside `ns` as `uid`, in a child process that drops to that user.
fn connect_as(ns: &str, uid: u32, target: &str) {
    let (host, port) = target.rsplit_once(':').unwrap();
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let script = format!("exec 3<>/dev/tcp/{host}/{port} && echo hello >&3");
    let status = in_namespace(Some(&netns_path(ns)), || {
        Command::new("bash").args(["-c", &script]).uid(uid).gid(uid).status()
    })
    .unwrap()
    .unwrap();
    assert!(status.success(), "uid {uid} could not connect to {target}");
}

/// Waits (bounded) for a connection on one of `listeners`; returns its index and where it was
/// headed before the redirect.
fn accepted(listeners: &[&TcpListener]) -> (usize, SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        for (i, l) in listeners.iter().enumerate() {
            if let Ok((stream, _)) = l.accept() {
                return (i, original_destination(&stream));
            }
        }
        assert!(Instant::now() < deadline, "no listener got the connection");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn original_destination(stream: &TcpStream) -> SocketAddr {
    let local = stream.local_addr().unwrap();
    if local.is_ipv4() {
        match getsockopt(stream, sockopt::OriginalDst) {
            Ok(sa) => SocketAddr::from((
                std::net::Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
                u16::from_be(sa.sin_port),
            )),
            Err(_) => local,
        }
    } else {
        match getsockopt(stream, sockopt::Ip6tOriginalDst) {
            Ok(sa) => {
                SocketAddr::from((std::net::Ipv6Addr::from(sa.sin6_addr.s6_addr), u16::from_be(sa.sin6_port)))
            }
            Err(_) => local,
        }
    }
}

fn check_family(pod: &str, peer: &str, backend: &str, v6: bool) {
    let (pod_ip, peer_ip, any, lo) = if v6 {
        ("[fd00:77::2]", "[fd00:77::1]", "[::]", "[::1]")
    } else {
        ("10.77.0.2", "10.77.0.1", "0.0.0.0", "127.0.0.1")
    };
    let outbound = listen(pod, &format!("{any}:15001"));
    let inbound = listen(pod, &format!("{any}:15006"));
    let readiness = listen(pod, &format!("{any}:15021"));
    let pod_app = listen(pod, &format!("{any}:8080"));
    let server = listen(peer, &format!("{any}:8080"));
    let excluded = listen(peer, &format!("{any}:5432"));
    let what = format!("{backend} {}", if v6 { "IPv6" } else { "IPv4" });
    let all = [&outbound, &inbound, &readiness, &pod_app, &server, &excluded];
    let names = [
        "outbound 15001",
        "inbound 15006",
        "readiness 15021",
        "pod app 8080",
        "peer server 8080",
        "peer 5432",
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
    connect_as(pod, 1000, &format!("{lo}:8080"));
    expect("loopback is not captured", 3, &format!("{lo}:8080"));
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
            for backend in ["nft", "iptables"] {
                let out = Command::new(env!("CARGO_BIN_EXE_trellis-proxy-init"))
                    .args(["--backend", backend, "--ipv6", "-o", "5432", "--netns"])
                    .arg(netns_path(pod))
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{backend}: {}", String::from_utf8_lossy(&out.stderr));
                check_family(pod, peer, backend, false);
                check_family(pod, peer, backend, true);
                let cleanup = Command::new(env!("CARGO_BIN_EXE_trellis-proxy-init"))
                    .args(["--cleanup", "--netns"])
                    .arg(netns_path(pod))
                    .output()
                    .unwrap();
                assert!(cleanup.status.success());
            }
        });
    });
}
