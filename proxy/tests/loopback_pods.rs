//! Pods sharing one host without network namespaces (`trellis demo` without root): each pod has
//! a loopback address of its own, its proxy listens only there (`--listen-address`), and in
//! explicit mode an inbound request reaches the app of that pod — on the pod's address, at the
//! port the authority names — even when every pod's app uses the same port.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use common::{Client, KillOnDrop, Upstream};
use http::{StatusCode, Version};

/// The addresses a started proxy printed: outbound, inbound, admin, readiness, stats, status.
fn start_proxy(dir: &std::path::Path, ip: &str) -> (KillOnDrop, Vec<SocketAddr>) {
    let config = dir.join("empty.yaml");
    std::fs::write(&config, "").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_trellis-proxy"))
        .arg("--config")
        .arg(&config)
        .args(["--listen-address", ip, "--explicit-inbound", "--log-level", "warn"])
        .args(["--outbound-port", "0", "--inbound-port", "0", "--admin-port", "0"])
        .args(["--readiness-port", "0", "--stats-port", "0", "--status-port", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    // "trellis-proxy listening: outbound A inbound B admin C readiness D stats E status F"
    let addrs: Vec<SocketAddr> =
        line.split_whitespace().skip(3).step_by(2).filter_map(|a| a.parse().ok()).collect();
    assert_eq!(addrs.len(), 6, "unexpected first line: {line:?}");
    (KillOnDrop(child), addrs)
}

#[tokio::test]
async fn each_pod_proxy_delivers_to_the_app_on_its_own_loopback_address() {
    let dir = tempfile::tempdir().unwrap();
    // Two pods whose apps listen on the same port, each on its own address.
    let first = Upstream::start_on("first", "127.77.1.2:0").await;
    let port = first.addr.port();
    let second = Upstream::start_on("second", &format!("127.77.1.3:{port}")).await;
    let (_p1, first_proxy) = start_proxy(dir.path(), "127.77.1.2");
    let (_p2, second_proxy) = start_proxy(dir.path(), "127.77.1.3");

    for (addrs, ip) in [(&first_proxy, "127.77.1.2"), (&second_proxy, "127.77.1.3")] {
        assert!(
            addrs.iter().all(|a| a.ip().to_string() == ip),
            "every listener, admin included, on {ip}: {addrs:?}"
        );
    }
    for (proxy, app) in [(&first_proxy, &first), (&second_proxy, &second)] {
        let mut client = Client::connect(proxy[1], Version::HTTP_11).await;
        let answer = client.get(&format!("app:{port}"), "/").await;
        assert_eq!((answer.status, answer.text()), (StatusCode::OK, app.name.clone()));
        assert_eq!(app.last().peer.ip().to_string(), "127.0.0.6", "delivered by the proxy");
    }
    assert_eq!((first.count(), second.count()), (1, 1));
}
