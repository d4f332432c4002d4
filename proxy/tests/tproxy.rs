//! TPROXY interception on real packets, as root: a client and a server pod (network namespaces
//! joined by a veth pair, 10.81.0.x); the server pod has proxy-init's TPROXY redirect (mangle
//! rules and the policy route) and `trellis-proxy` told ISTIO_META_INTERCEPTION_MODE=TPROXY,
//! running as Istio runs it in that mode (root, in the proxy's group, so with NET_ADMIN). A
//! plain client calls the server pod's address: its HTTP request and its opaque TCP connection
//! reach the app through the proxy, and the app sees the client's own address, not 127.0.0.6 —
//! with the rules written by either backend (nft, then iptables).

mod common;

use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Upstream;
use trellis_proxy_init::apply::{self, Backend, in_namespace};
use trellis_proxy_init::rules::build;
use trellis_proxy_init::settings::{Interception, Settings};
use trellis_proxy_init::testing::{
    RunnableByAnyone, http_get_in, in_scratch_namespace, ip, netns_path, privileged,
};

const CLIENT_IP: &str = "10.81.0.1";
const SERVER_IP: &str = "10.81.0.2";

/// A proxy process in a pod, stopped (by pid) when dropped.
struct PodProxy(Child);

impl Drop for PodProxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_proxy(ns: &str, config: &Path) -> PodProxy {
    let child = in_namespace(Some(&netns_path(ns)), || {
        Command::new(env!("CARGO_BIN_EXE_trellis-proxy"))
            .arg("--config")
            .arg(config)
            .env("ISTIO_META_INTERCEPTION_MODE", "TPROXY")
            .env("POD_NAMESPACE", "shop")
            // As Istio's injector runs the proxy in TPROXY mode: root (transparent sockets need
            // NET_ADMIN), in the proxy's group, by which the redirect knows its traffic.
            .uid(0)
            .gid(1337)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
    })
    .unwrap()
    .unwrap();
    let proxy = PodProxy(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !http_get_in(ns, 15021, "/healthz/ready").starts_with("HTTP/1.1 200") {
        assert!(Instant::now() < deadline, "the proxy in {ns} did not get ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    proxy
}

/// Runs a program in the namespace as UID 1000.
fn as_client(ns: &str, program: &str, args: &[&str]) -> std::process::Output {
    in_namespace(Some(&netns_path(ns)), || Command::new(program).args(args).uid(1000).gid(1000).output())
        .unwrap()
        .unwrap()
}

/// A TCP server that reads to end of stream, answers and closes; returns who called.
fn echo_after_eof(ns: &str, addr: &str) -> std::thread::JoinHandle<Option<SocketAddr>> {
    use std::io::{Read, Write};
    let listener = in_namespace(Some(&netns_path(ns)), || TcpListener::bind(addr)).unwrap().unwrap();
    std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        let mut got = Vec::new();
        s.read_to_end(&mut got).ok()?;
        s.write_all(format!("pong:{}", String::from_utf8_lossy(&got)).as_bytes()).ok()?;
        Some(peer)
    })
}

#[test]
fn tproxy_delivers_with_the_clients_own_address() {
    in_scratch_namespace(|client| {
        in_scratch_namespace(|server| {
            let tag = std::process::id() % 100_000;
            let (a, b) = (format!("tc{tag}"), format!("ts{tag}"));
            ip(&["link", "add", &a, "netns", client, "type", "veth", "peer", "name", &b, "netns", server]);
            for (ns, dev, addr) in [(client, &a, CLIENT_IP), (server, &b, SERVER_IP)] {
                ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
                ip(&["-n", ns, "link", "set", dev, "up"]);
            }
            let settings = Settings {
                interception: Interception::Tproxy { mark: 1337, route_table: 133 },
                ..Settings::default()
            };
            let dir = tempfile::tempdir().unwrap();
            let config = dir.path().join("server.yaml");
            std::fs::write(&config, "limits: { requestHeadersTimeout: 2s }\n").unwrap();
            let _proxy = start_proxy(server, &config);

            // The app listens on every address of its pod, as apps do.
            let runtime =
                tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            let listener = in_namespace(Some(&netns_path(server)), || TcpListener::bind("0.0.0.0:8080"))
                .unwrap()
                .unwrap();
            listener.set_nonblocking(true).unwrap();
            let app = runtime.block_on(async {
                Upstream::serve("web-app", tokio::net::TcpListener::from_std(listener).unwrap())
            });

            for (round, backend) in [(1, Backend::Nft), (2, Backend::Iptables)] {
                apply::apply(&build(&settings), backend, Some(&netns_path(server))).unwrap();

                let url = format!("http://{SERVER_IP}:8080/hello");
                let out = as_client(client, "curl", &["-s", "-m", "10", "-w", "\n%{http_code}", &url]);
                let text = String::from_utf8_lossy(&out.stdout);
                assert_eq!(
                    text,
                    "web-app\n200",
                    "{backend:?}: curl: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let seen = app.last();
                assert_eq!(
                    seen.peer.ip().to_string(),
                    CLIENT_IP,
                    "{backend:?}: the app sees the client's address"
                );

                // Opaque TCP, half-close included, the same way.
                let db = echo_after_eof(server, "0.0.0.0:5432");
                let script = format!(
                    "import socket\ns = socket.create_connection(('{SERVER_IP}', 5432), timeout=10)\n\
                     s.sendall(b'ping')\ns.shutdown(socket.SHUT_WR)\nprint(s.recv(100).decode(), end='')\n"
                );
                let out = as_client(client, "/usr/bin/python3", &["-c", &script]);
                assert_eq!(
                    String::from_utf8_lossy(&out.stdout),
                    "pong:ping",
                    "{backend:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let peer = db.join().unwrap().expect("the app got the connection");
                assert_eq!(
                    peer.ip().to_string(),
                    CLIENT_IP,
                    "{backend:?}: opaque TCP keeps the client's address"
                );
                // Both went through the proxy (a direct connection would show the client's
                // address too): it counted one more of each.
                let metrics = http_get_in(server, 15090, "/stats/prometheus");
                for name in ["istio_requests_total", "istio_tcp_connections_opened_total"] {
                    let count: f64 = metrics
                        .lines()
                        .filter(|l| l.starts_with(name) && l.contains("reporter=\"destination\""))
                        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                        .sum();
                    assert_eq!(count, f64::from(round), "{backend:?}: {name}:\n{metrics}");
                }

                // The proxy's own ports are not captured: readiness answers from the proxy.
                let url = format!("http://{SERVER_IP}:15021/healthz/ready");
                let out = as_client(
                    client,
                    "curl",
                    &["-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", &url],
                );
                assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{backend:?}");
                apply::cleanup(Some(&netns_path(server))).unwrap();
            }
        });
    });
}

/// Without the capability, TPROXY mode stops the proxy at start with the reason, instead of
/// dropping every inbound connection.
#[test]
fn tproxy_without_net_admin_is_refused_at_start() {
    if !privileged() {
        return;
    }
    // The build directory may be out of the proxy user's reach.
    let binary = RunnableByAnyone::copy(env!("CARGO_BIN_EXE_trellis-proxy"));
    let out = Command::new(&binary.path)
        .env("ISTIO_META_INTERCEPTION_MODE", "TPROXY")
        .uid(1337)
        .gid(1337)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("TPROXY interception needs the NET_ADMIN capability"), "{stderr}");
}

#[test]
fn a_misspelt_interception_mode_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_trellis-proxy"))
        .env("ISTIO_META_INTERCEPTION_MODE", "tproxy")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ISTIO_META_INTERCEPTION_MODE") && stderr.contains("case-sensitive"), "{stderr}");
}
