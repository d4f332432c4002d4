//! Dual-stack pods, as root, on real packets: a client and a server pod (network namespaces
//! joined by a veth pair, with documentation IPv4 and ULA IPv6 addresses). The server pod's
//! redirect is the one the CNI plugin writes for a pod whose network result has an IPv6
//! address (the pod's annotations read with IPv6 on, both families redirected), and its proxy
//! runs as in CNI mode: no init container told it `--ipv6`, no dual-stack switch. The proxy
//! must notice the pod's IPv6 address and listen on [::] too, or the client's IPv6 call is
//! refused. And a pod with IPv6 turned off keeps working on IPv4, saying why.

mod common;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::Upstream;
use trellis_proxy_init::apply::{self, Backend, in_namespace};
use trellis_proxy_init::rules::build;
use trellis_proxy_init::settings::Settings;
use trellis_proxy_init::testing::{RunnableByAnyone, http_get_in, in_scratch_namespace, ip, netns_path};

const CLIENT_V4: &str = "192.0.2.1";
const SERVER_V4: &str = "192.0.2.2";
const CLIENT_V6: &str = "fd00:7e11:15::1";
const SERVER_V6: &str = "fd00:7e11:15::2";

/// A proxy process in a pod, stopped (by pid) when dropped; its output goes to `log`.
struct PodProxy {
    child: Child,
    log: std::path::PathBuf,
}

impl PodProxy {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PodProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The proxy as the injector runs it in REDIRECT mode (UID 1337, which the redirect lets
/// through), with the environment given and nothing else saying IPv6.
fn start_proxy(ns: &str, binary: &Path, dir: &Path, env: &[(&str, &str)]) -> PodProxy {
    let config = dir.join("proxy.yaml");
    std::fs::write(&config, "limits: { requestHeadersTimeout: 2s }\n").unwrap();
    let log = dir.join(format!("{ns}.log"));
    let out = std::fs::File::create(&log).unwrap();
    let err = out.try_clone().unwrap();
    // A parallel test's fork may briefly hold the fresh copy open for writing (ETXTBSY).
    let deadline = Instant::now() + Duration::from_secs(5);
    let spawn = || {
        Command::new(binary)
            .arg("--config")
            .arg(&config)
            .env_clear()
            .env("POD_NAMESPACE", "shop")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .uid(1337)
            .gid(1337)
            .stdout(out.try_clone()?)
            .stderr(err.try_clone()?)
            .spawn()
    };
    let child = loop {
        match in_namespace(Some(&netns_path(ns)), spawn).unwrap() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && Instant::now() < deadline => {
                std::thread::yield_now()
            }
            spawned => break spawned.unwrap(),
        }
    };
    let proxy = PodProxy { child, log };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !http_get_in(ns, 15021, "/healthz/ready").starts_with("HTTP/1.1 200") {
        assert!(Instant::now() < deadline, "the proxy in {ns} did not get ready:\n{}", proxy.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    proxy
}

/// Two pods joined by a veth pair, each with its IPv4 address and, when `v6`, its IPv6 one.
fn link(client: &str, server: &str, v6: bool) {
    let tag = std::process::id() % 100_000;
    let (a, b) = (format!("dc{tag}"), format!("ds{tag}"));
    ip(&["link", "add", &a, "netns", client, "type", "veth", "peer", "name", &b, "netns", server]);
    for (ns, dev, v4, v6addr) in [(client, &a, CLIENT_V4, CLIENT_V6), (server, &b, SERVER_V4, SERVER_V6)] {
        ip(&["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", dev]);
        if v6 {
            // No duplicate address detection: the address is usable at once.
            ip(&["-n", ns, "addr", "add", &format!("{v6addr}/64"), "dev", dev, "nodad"]);
        }
        ip(&["-n", ns, "link", "set", dev, "up"]);
    }
}

/// curl from the client pod as an ordinary user: the body and status.
fn curl(ns: &str, url: &str) -> String {
    let out = in_namespace(Some(&netns_path(ns)), || {
        Command::new("curl")
            .args(["-s", "-g", "-m", "10", "-w", "\n%{http_code}", url])
            .uid(1000)
            .gid(1000)
            .output()
    })
    .unwrap()
    .unwrap();
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn requests_counted(ns: &str) -> f64 {
    http_get_in(ns, 15090, "/stats/prometheus")
        .lines()
        .filter(|l| l.starts_with("istio_requests_total") && l.contains("reporter=\"destination\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The app: listens on every address of its pod, both families, as apps do (`[::]`, which
/// on Linux takes IPv4 too).
fn app(ns: &str, runtime: &tokio::runtime::Runtime) -> Upstream {
    let listener = in_namespace(Some(&netns_path(ns)), || TcpListener::bind("[::]:8080")).unwrap().unwrap();
    listener.set_nonblocking(true).unwrap();
    runtime
        .block_on(async { Upstream::serve("web-app", tokio::net::TcpListener::from_std(listener).unwrap()) })
}

#[test]
fn an_ipv6_call_through_a_dual_stack_pod_in_cni_mode_reaches_the_app_over_ipv6() {
    in_scratch_namespace(|client| {
        in_scratch_namespace(|server| {
            link(client, server, true);
            // What the CNI plugin decides for an unannotated pod whose result has IPv6.
            let settings = Settings::from_pod_annotations(&BTreeMap::new(), true).unwrap().unwrap();
            assert!(settings.ipv6);
            let binary = RunnableByAnyone::copy(env!("CARGO_BIN_EXE_trellis-proxy"));
            let dir = tempfile::tempdir().unwrap();
            let proxy = start_proxy(server, &binary.path, dir.path(), &[]);
            let runtime =
                tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            let app = app(server, &runtime);
            apply::apply(&build(&settings), Backend::Nft, Some(&netns_path(server))).unwrap();

            let text = curl(client, &format!("http://[{SERVER_V6}]:8080/hello"));
            assert_eq!(text, "web-app\n200", "the IPv6 call; proxy log:\n{}", proxy.log());
            // Through the proxy (a direct call would come from the client's address), and on to
            // the app over IPv6.
            let seen = app.last();
            assert_eq!(seen.peer.ip().to_string(), "::1", "the proxy delivers IPv6 on ::1");
            assert_eq!(requests_counted(server), 1.0, "the proxy counted the IPv6 call");
            assert!(
                proxy.log().contains(&format!("listening on IPv6 too ([::]): the address {SERVER_V6}")),
                "{}",
                proxy.log()
            );

            // IPv4 still goes the same way.
            let text = curl(client, &format!("http://{SERVER_V4}:8080/hello"));
            assert_eq!(text, "web-app\n200", "the IPv4 call");
            assert_eq!(app.last().peer.ip().to_canonical().to_string(), "127.0.0.6");
            assert_eq!(requests_counted(server), 2.0);
            apply::cleanup(Some(&netns_path(server))).unwrap();
        });
    });
}

#[test]
fn a_pod_with_ipv6_off_still_serves_ipv4_and_says_why() {
    in_scratch_namespace(|client| {
        in_scratch_namespace(|server| {
            let sysctl = |ns: &str| {
                let status = Command::new("ip")
                    .args(["netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"])
                    .status()
                    .unwrap();
                assert!(status.success());
            };
            sysctl(server);
            // `all` reaches the interfaces that exist; lo was brought up before.
            let status = Command::new("ip")
                .args(["netns", "exec", server, "sysctl", "-q", "-w", "net.ipv6.conf.lo.disable_ipv6=1"])
                .status()
                .unwrap();
            assert!(status.success());
            link(client, server, false);
            let binary = RunnableByAnyone::copy(env!("CARGO_BIN_EXE_trellis-proxy"));
            let dir = tempfile::tempdir().unwrap();
            // Asked for dual-stack, on a pod that cannot have it.
            let proxy = start_proxy(server, &binary.path, dir.path(), &[("ISTIO_AGENT_DUAL_STACK", "true")]);
            let log = proxy.log();
            assert!(
                log.contains("IPv6 wanted (ISTIO_AGENT_DUAL_STACK) but this host cannot listen on it"),
                "{log}"
            );
            let runtime =
                tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            let listener = in_namespace(Some(&netns_path(server)), || TcpListener::bind("0.0.0.0:8080"))
                .unwrap()
                .unwrap();
            listener.set_nonblocking(true).unwrap();
            let app = runtime.block_on(async {
                Upstream::serve("web-app", tokio::net::TcpListener::from_std(listener).unwrap())
            });
            let settings = Settings::from_pod_annotations(&BTreeMap::new(), false).unwrap().unwrap();
            apply::apply(&build(&settings), Backend::Nft, Some(&netns_path(server))).unwrap();
            let text = curl(client, &format!("http://{SERVER_V4}:8080/hello"));
            assert_eq!(text, "web-app\n200", "proxy log:\n{}", proxy.log());
            assert_eq!(app.last().peer.ip().to_string(), "127.0.0.6");
            assert_eq!(requests_counted(server), 1.0);
            apply::cleanup(Some(&netns_path(server))).unwrap();
        });
    });
}
