//! The mesh path on real packets, as root: a client pod and a server pod (network namespaces
//! joined by a veth pair, 10.79.0.x), each with proxy-init's rules and `trellis-proxy` running
//! as UID 1337. An unmodified client (curl, as UID 1000) calls a virtual IP: its connection is
//! captured outbound, routed to the server pod, captured inbound there and delivered to the app
//! from 127.0.0.6; both proxies count it. Opaque TCP takes the same path, half-close included.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Upstream;
use trellis_proxy_init::apply::{self, Backend, in_namespace};
use trellis_proxy_init::rules::build;
use trellis_proxy_init::settings::Settings;
use trellis_proxy_init::testing::{RunnableByAnyone, http_get_in, in_scratch_namespace, ip, netns_path};

const CLIENT_IP: &str = "10.79.0.1";
const SERVER_IP: &str = "10.79.0.2";

const CLIENT_CONFIG: &str = r#"
limits: { requestHeadersTimeout: 1s }
services:
  - name: web.shop.svc.cluster.local
    addresses: [10.96.0.50]
    ports: [{ port: 80, protocol: HTTP }]
  - name: db.shop.svc.cluster.local
    addresses: [10.96.0.60]
    ports: [{ port: 5432, protocol: TCP, tcpCluster: db }]
virtualHosts:
  - name: web.shop.svc.cluster.local:80
    routes: [{ name: all, forward: { clusters: [{ cluster: web }] } }]
clusters:
  - { name: web, service: web.shop.svc.cluster.local }
  - { name: db, service: db.shop.svc.cluster.local }
endpoints:
  - service: web.shop.svc.cluster.local
    endpoints: [{ address: 10.79.0.2, port: 8080 }]
  - service: db.shop.svc.cluster.local
    endpoints: [{ address: 10.79.0.2, port: 5432 }]
"#;

/// The server's access log: enough to tell its HTTP, TCP and denied TCP lines apart.
const SERVER_LOG_FORMAT: &str = "%PROTOCOL% %UPSTREAM_CLUSTER% %CONNECTION_TERMINATION_DETAILS% %RESPONSE_CODE% %DOWNSTREAM_LOCAL_ADDRESS% %REQ(:PATH)%";

/// The server closes TCP to port 5433.
const SERVER_POLICY: &str = r#"
authorization:
  - { namespace: shop, name: no-5433, action: DENY, rules: [{ index: 0, to: [{ ports: ["5433"] }] }] }
"#;

/// The workload table both proxies hold (as trellisd would send it): both pods, by address.
const WORKLOADS: &str = r#"
workloads:
  - { uid: shop/frontend, addresses: [10.79.0.1], workload: frontend, namespace: shop, app: frontend, version: v1,
      canonicalService: frontend, canonicalRevision: v1, cluster: Kubernetes, sidecar: true,
      principal: "spiffe://cluster.local/ns/shop/sa/frontend" }
  - { uid: shop/web, addresses: [10.79.0.2], workload: web, namespace: shop, app: web, version: v1,
      canonicalService: web, canonicalRevision: v1, cluster: Kubernetes, sidecar: true,
      principal: "spiffe://cluster.local/ns/shop/sa/web" }
"#;

/// Istio's labels of a plaintext TCP connection from frontend to web, as `reporter` counts it:
/// the client names the database's service, the server (bytes carry no authority) its own
/// canonical service, as Istio falls back to.
fn tcp_labels(reporter: &str, service: &str) -> String {
    format!(
        "reporter=\"{reporter}\",source_workload=\"frontend\",source_canonical_service=\"frontend\",\
         source_canonical_revision=\"v1\",source_workload_namespace=\"shop\",source_principal=\"unknown\",\
         source_app=\"frontend\",source_version=\"v1\",source_cluster=\"Kubernetes\",\
         destination_workload=\"web\",destination_workload_namespace=\"shop\",\
         destination_principal=\"unknown\",destination_app=\"web\",destination_version=\"v1\",\
         destination_service=\"{service}\",destination_canonical_service=\"web\",\
         destination_canonical_revision=\"v1\",destination_service_name=\"{name}\",\
         destination_service_namespace=\"shop\",destination_cluster=\"Kubernetes\",request_protocol=\"tcp\",\
         response_flags=\"-\",connection_security_policy=\"none\"",
        name = service.split('.').next().unwrap_or_default()
    )
}

/// A proxy process in a pod, stopped (by pid) when dropped.
struct PodProxy(Child);

impl Drop for PodProxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_proxy(ns: &str, binary: &Path, config: &Path, workload: &str) -> PodProxy {
    let child = in_namespace(Some(&netns_path(ns)), || {
        Command::new(binary)
            .arg("--config")
            .arg(config)
            .env("ISTIO_META_WORKLOAD_NAME", workload)
            .env("POD_NAMESPACE", "shop")
            .env("ISTIO_METAJSON_LABELS", format!(r#"{{"app":"{workload}","version":"v1"}}"#))
            .uid(1337)
            .gid(1337)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
    })
    .unwrap()
    .unwrap();
    let proxy = PodProxy(child);
    wait_ready(ns);
    proxy
}

fn wait_ready(ns: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !http_get_in(ns, 15021, "/healthz/ready").starts_with("HTTP/1.1 200") {
        assert!(Instant::now() < deadline, "the proxy in {ns} did not get ready");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a program in the namespace as UID 1000: the app, whose traffic is captured.
fn as_app(ns: &str, program: &str, args: &[&str]) -> std::process::Output {
    in_namespace(Some(&netns_path(ns)), || Command::new(program).args(args).uid(1000).gid(1000).output())
        .unwrap()
        .unwrap()
}

/// A TCP server in the namespace that reads to end of stream, answers, and closes: it only
/// answers if the client's half-close came through.
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
fn a_call_is_captured_routed_delivered_and_counted_on_both_sides() {
    in_scratch_namespace(|client| {
        in_scratch_namespace(|server| {
            let tag = std::process::id() % 100_000;
            let (a, b) = (format!("mc{tag}"), format!("ms{tag}"));
            ip(&["link", "add", &a, "netns", client, "type", "veth", "peer", "name", &b, "netns", server]);
            for (ns, dev, addr) in [(client, &a, CLIENT_IP), (server, &b, SERVER_IP)] {
                ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
                ip(&["-n", ns, "link", "set", dev, "up"]);
                // Virtual IPs have no host: a default route lets the connect start, the redirect
                // takes it from there.
                ip(&["-n", ns, "route", "add", "default", "dev", dev]);
            }
            for ns in [client, server] {
                apply::apply(&build(&Settings::default()), Backend::Nft, Some(&netns_path(ns))).unwrap();
            }

            let dir = tempfile::tempdir().unwrap();
            std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
            let client_config = dir.path().join("client.yaml");
            let server_config = dir.path().join("server.yaml");
            std::fs::write(&client_config, format!("{CLIENT_CONFIG}{WORKLOADS}")).unwrap();
            // The server knows the services too (trellisd sends every proxy the address table),
            // writes an access log (a file the proxy's user may write) and closes TCP to 5433.
            let access_log = dir.path().join("server-access.log");
            std::fs::write(&access_log, "").unwrap();
            std::fs::set_permissions(&access_log, std::os::unix::fs::PermissionsExt::from_mode(0o666))
                .unwrap();
            let server_extras = format!(
                "accessLogs: [{{ path: {:?}, textFormat: '{SERVER_LOG_FORMAT}' }}]\n{SERVER_POLICY}",
                access_log.display().to_string()
            );
            std::fs::write(&server_config, format!("{CLIENT_CONFIG}{WORKLOADS}{server_extras}")).unwrap();
            let binary = RunnableByAnyone::copy(env!("CARGO_BIN_EXE_trellis-proxy"));
            let _client_proxy = start_proxy(client, &binary.path, &client_config, "frontend");
            let _server_proxy = start_proxy(server, &binary.path, &server_config, "web");

            // The app in the server pod, on its own port.
            let runtime =
                tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            let listener = in_namespace(Some(&netns_path(server)), || TcpListener::bind("0.0.0.0:8080"))
                .unwrap()
                .unwrap();
            listener.set_nonblocking(true).unwrap();
            let app = runtime.block_on(async {
                Upstream::serve("web-app", tokio::net::TcpListener::from_std(listener).unwrap())
            });

            let out = as_app(
                client,
                "curl",
                &["-s", "-m", "10", "-w", "\n%{http_code}", "http://10.96.0.50/hello"],
            );
            let text = String::from_utf8_lossy(&out.stdout);
            assert_eq!(text, "web-app\n200", "curl: {}", String::from_utf8_lossy(&out.stderr));
            let seen = app.last();
            assert_eq!(seen.peer.ip().to_string(), "127.0.0.6", "delivered by the server pod's proxy");
            assert_eq!(seen.path, "/hello");
            assert_eq!(seen.headers.get("x-forwarded-for").map(String::as_str), Some(CLIENT_IP));
            assert!(seen.headers.contains_key("x-request-id"));

            // A client of the declared-HTTP service that never says anything is closed within
            // the header timeouts (1 s to tell the version, 1 s for the headers), not held.
            let script = "import socket\ns = socket.create_connection(('10.96.0.50', 80), timeout=10)\nprint(repr(s.recv(100)), end='')\n";
            let out = as_app(client, "/usr/bin/python3", &["-c", script]);
            let said = String::from_utf8_lossy(&out.stdout);
            assert!(
                said == "b''" || said.starts_with("b'HTTP/1.1 408"),
                "a silent client: {said:?} {}",
                String::from_utf8_lossy(&out.stderr)
            );

            let client_metrics = http_get_in(client, 15090, "/stats/prometheus");
            let server_metrics = http_get_in(server, 15090, "/stats/prometheus");
            let counted = |metrics: &str, reporter: &str| {
                metrics.lines().any(|l| {
                    l.starts_with("istio_requests_total")
                        && l.contains(&format!("reporter=\"{reporter}\""))
                        && l.contains("response_code=\"200\"")
                        && l.ends_with(" 1")
                })
            };
            assert!(counted(&client_metrics, "source"), "{client_metrics}");
            assert!(counted(&server_metrics, "destination"), "{server_metrics}");
            assert!(client_metrics.contains("destination_service=\"web.shop.svc.cluster.local\""));

            // Another pod cannot reach the proxy's own ports (admin, outbound) through it.
            for port in [15000, 15001] {
                let url = format!("http://{SERVER_IP}:{port}/quitquitquit");
                let out = as_app(
                    client,
                    "curl",
                    &["-s", "-m", "5", "-X", "POST", "-o", "/dev/null", "-w", "%{http_code}", &url],
                );
                assert_eq!(String::from_utf8_lossy(&out.stdout), "403", "port {port}");
            }
            wait_ready(server);

            // Opaque TCP to the database's virtual IP, with a half-close.
            let db = echo_after_eof(server, "0.0.0.0:5432");
            let script = "import socket\ns = socket.create_connection(('10.96.0.60', 5432), timeout=10)\ns.sendall(b'ping')\ns.shutdown(socket.SHUT_WR)\nprint(s.recv(100).decode(), end='')\n";
            let out = as_app(client, "/usr/bin/python3", &["-c", script]);
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                "pong:ping",
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let peer = db.join().unwrap().expect("the database got the connection");
            assert_eq!(peer.ip().to_string(), "127.0.0.6", "TCP is delivered by the server pod's proxy too");
            let tcp_metrics = http_get_in(client, 15090, "/stats/prometheus");
            assert!(
                tcp_metrics.lines().any(|l| l.starts_with("istio_tcp_connections_opened_total")
                    && l.contains("db.shop.svc.cluster.local")),
                "{tcp_metrics}"
            );
            assert!(
                tcp_metrics.lines().any(|l| l.starts_with("istio_tcp_sent_bytes_total") && l.ends_with(" 4")),
                "{tcp_metrics}"
            );
            // Both sides name both workloads from the table, with Istio's TCP labels, on every
            // TCP metric.
            for (ns, reporter, service) in
                [(client, "source", "db.shop.svc.cluster.local"), (server, "destination", "web")]
            {
                let labels = tcp_labels(reporter, service);
                let wanted: Vec<String> = [
                    "istio_tcp_connections_opened_total",
                    "istio_tcp_connections_closed_total",
                    "istio_tcp_sent_bytes_total",
                    "istio_tcp_received_bytes_total",
                ]
                .iter()
                .map(|metric| format!("{metric}{{{labels}}} "))
                .collect();
                // The server counts the close once its side of the relay ends: waited for.
                let deadline = Instant::now() + Duration::from_secs(10);
                let metrics = loop {
                    let metrics = http_get_in(ns, 15090, "/stats/prometheus");
                    let all = wanted.iter().all(|w| metrics.lines().any(|l| l.starts_with(w.as_str())));
                    if all || Instant::now() > deadline {
                        break metrics;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                };
                for want in &wanted {
                    assert!(
                        metrics.lines().any(|l| l.starts_with(want.as_str())),
                        "{want}\n{reporter}: {metrics}"
                    );
                }
            }

            // TCP that AuthorizationPolicy denies is closed, and its access log line says which
            // policy and rule did it, as the HTTP and TCP lines before it say how they went.
            let script = "import socket\ns = socket.create_connection(('10.79.0.2', 5433), timeout=10)\ns.sendall(b'ping')\nprint(repr(s.recv(100)), end='')\n";
            let out = as_app(client, "/usr/bin/python3", &["-c", script]);
            let said = String::from_utf8_lossy(&out.stdout);
            assert!(said == "b''" || said.is_empty(), "{said:?} {}", String::from_utf8_lossy(&out.stderr));
            let wanted = [
                "HTTP/1.1 inbound|8080|| - 200 10.79.0.2:8080 /hello".to_owned(),
                "- inbound|5432|| - 0 10.79.0.2:5432 -".to_owned(),
                "- inbound|5433|| rbac_access_denied_matched_policy[ns[shop]-policy[no-5433]-rule[0]] 0 10.79.0.2:5433 -"
                    .to_owned(),
            ];
            let deadline = Instant::now() + Duration::from_secs(10);
            let log = loop {
                let log = std::fs::read_to_string(&access_log).unwrap_or_default();
                if wanted.iter().all(|w| log.lines().any(|l| l == w)) || Instant::now() > deadline {
                    break log;
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            for want in &wanted {
                assert!(log.lines().any(|l| l == want), "{want}\n{log}");
            }
            drop(runtime);
        });
    });
}
