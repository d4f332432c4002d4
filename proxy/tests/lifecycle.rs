//! The binary's lifecycle: on SIGTERM it stops accepting, lets in-flight requests finish, and
//! exits; the readiness endpoint says not ready meanwhile.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Client, KillOnDrop, Upstream, get};
use http::{StatusCode, Version};

/// The proxy binary with every listener on a free port (it prints where they ended up).
fn proxy_on_free_ports() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_trellis-proxy"));
    for listener in [
        "--outbound-port",
        "--inbound-port",
        "--admin-port",
        "--readiness-port",
        "--stats-port",
        "--status-port",
    ] {
        command.args([listener, "0"]);
    }
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits() {
    let upstream = Upstream::start("api").await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "services: [{{ name: api, ports: [{{ port: 80, protocol: HTTP }}] }}]\n\
             virtualHosts: [{{ name: 'api:80', routes: [{{ name: all, forward: {{ clusters: [{{ cluster: api }}] }} }}] }}]\n\
             clusters: [{{ name: api, service: api }}]\n\
             endpoints: [{{ service: api, endpoints: [{{ address: 127.0.0.1, port: {} }}] }}]\n",
            upstream.addr.port()
        ),
    )
    .unwrap();
    let mut child = proxy_on_free_ports()
        .arg("--config")
        .arg(&config)
        .args(["--drain-timeout", "5s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let mut child = KillOnDrop(child);
    let port_of = |name: &str| -> SocketAddr {
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = words.iter().position(|w| *w == name).unwrap_or_else(|| panic!("{name} in {line:?}"));
        let addr: SocketAddr = words[at + 1].parse().unwrap();
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    };
    let (outbound, readiness) = (port_of("outbound"), port_of("readiness"));
    assert_eq!(common::get_text(readiness, "/healthz/ready").await.0, StatusCode::OK);

    // A slow request in flight...
    let slow = tokio::spawn(async move {
        let mut client = Client::connect(outbound, Version::HTTP_11).await;
        client.send(get("api", "/", &[("x-delay-ms", "1000")])).await.map(|a| a.status)
    });
    common::wait_until("the slow request reached the upstream", || upstream.count() == 1).await;
    // ...then SIGTERM.
    let pid = nix::unistd::Pid::from_raw(child.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let started = Instant::now();
    common::wait_until("new connections are refused", || std::net::TcpStream::connect(outbound).is_err())
        .await;
    assert_eq!(slow.await.unwrap().unwrap(), StatusCode::OK, "the in-flight request finished");
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the proxy did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success());
}

/// The injector hands the proxy its ProxyConfig in `PROXY_CONFIG`: concurrency and drain time
/// come from there unless flags say otherwise; a bad value stops the proxy with its field.
#[test]
fn proxy_config_from_the_environment() {
    let run = |config: &str| {
        proxy_on_free_ports()
            .env("PROXY_CONFIG", config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    for (config, field) in [
        (r#"{"concurrency": -1}"#, "concurrency: -1 is negative"),
        (r#"{"concurrency": 5000}"#, "concurrency: 5000 is more than 256 worker threads"),
        (r#"{"terminationDrainDuration": "soon"}"#, "terminationDrainDuration"),
        (r#"{"concurrency": "#, "PROXY_CONFIG"),
    ] {
        // A proxy that took the value would keep running: bounded, and killed by pid if so.
        let mut child = KillOnDrop(run(config));
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.0.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "{config}: the proxy started instead of refusing it");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut stderr).unwrap();
        assert_eq!(status.code(), Some(2), "{config}");
        assert!(stderr.contains(field), "{config}: {stderr}");
    }
    // Three workers, and Istio's other fields (statusPort, proxyMetadata) are fine.
    let mut child = run(r#"{"concurrency": 3, "statusPort": 15020, "proxyMetadata": {"A": "b"}}"#);
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let threads: usize = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(threads >= 4, "the main thread and three workers: {threads}");
}
