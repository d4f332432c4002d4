//! A proxy whose CA is its discovery address over TLS (trellisd's 15012, as the injector sets
//! it up) holds one connection to trellisd, not two: the certificate request and the xDS stream
//! share it. trellisd pays for every connection it holds (a TLS session and an HTTP/2 server
//! each, about 30 KiB), so a second, idle one per proxy would nearly double its memory.
//!
//! Loopback only; the `trellis` binary runs both trellisd and the proxy.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(30);

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `command` and returns it with the words of its first line of output, the line both
/// binaries print once their listeners are bound.
fn spawn(command: &mut Command) -> (KillOnDrop, Vec<String>) {
    let mut child = KillOnDrop(command.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap());
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(DEADLINE).unwrap_or_default();
    (child, line.split_whitespace().map(str::to_owned).collect())
}

/// The address after `name` in a listening line.
fn address_after(words: &[String], name: &str) -> SocketAddr {
    let at = words.iter().position(|w| w == name).unwrap_or_else(|| panic!("no {name} in {words:?}"));
    words[at + 1].parse().unwrap_or_else(|e| panic!("{name} {:?}: {e}", words[at + 1]))
}

fn status_of(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    answer.get(9..12)?.parse().ok()
}

/// Established TCP connections, in this network namespace, whose remote end is `port` on
/// loopback: the clients' ends of connections to the server listening there.
fn connections_to(port: u16) -> usize {
    let port = format!(":{port:04X}");
    let established_to_port = |line: &&str| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(2).is_some_and(|remote| remote.ends_with(&port)) && fields.get(3) == Some(&"01")
    };
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .map(|text| text.lines().skip(1).filter(established_to_port).count())
        .sum()
}

#[test]
fn certificates_and_config_share_one_connection_to_trellisd() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    std::fs::create_dir(path("config")).unwrap();
    std::fs::write(path("tokens.csv"), "web-token,system:serviceaccount:shop:web,u1\n").unwrap();
    std::fs::write(path("web.token"), "web-token\n").unwrap();

    let (_trellisd, words) = spawn(
        Command::new(env!("CARGO_BIN_EXE_trellis"))
            .arg("control-plane")
            .args(["--config-dir", &path("config")])
            .args(["--xds-address", "127.0.0.1:0", "--monitoring-address", "127.0.0.1:0"])
            .args(["--secure-xds-address", "127.0.0.1:0"])
            .args(["--token-auth-file", &path("tokens.csv")])
            .args(["--root-cert-file", &path("root-cert.pem")]),
    );
    let secure = address_after(&words, "secure");
    let deadline = Instant::now() + DEADLINE;
    while !dir.path().join("root-cert.pem").exists() {
        assert!(Instant::now() < deadline, "trellisd never wrote its root");
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut proxy = Command::new(env!("CARGO_BIN_EXE_trellis"));
    proxy.arg("proxy");
    for listener in ["--outbound-port", "--inbound-port", "--admin-port", "--readiness-port", "--stats-port"]
    {
        proxy.args([listener, "0"]);
    }
    proxy
        .args(["--status-port", "0", "--listen-address", "127.0.0.1", "--log-level", "warn"])
        .args(["--discovery-address", &format!("https://{secure}")])
        .args(["--ca-address", &secure.to_string()])
        .args(["--ca-root-cert", &path("root-cert.pem")])
        .args(["--token-file", &path("web.token")])
        .env_remove("PROXY_CONFIG")
        .env_remove("ISTIO_KUBE_APP_PROBERS")
        .env("POD_NAMESPACE", "shop")
        .env("POD_NAME", "web-1")
        .env("SERVICE_ACCOUNT", "web");
    let (_proxy, words) = spawn(&mut proxy);
    let readiness = address_after(&words, "readiness");

    // Ready means certified and configured: both requests have been made by then.
    let deadline = Instant::now() + DEADLINE;
    while status_of(readiness, "/healthz/ready") != Some(200) {
        assert!(Instant::now() < deadline, "the proxy never became ready (certificate and config)");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(connections_to(secure.port()), 1, "connections from the proxy to trellisd's {secure}");
}
