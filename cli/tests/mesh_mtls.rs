//! Mutual TLS on real packets, as root: two pods (network namespaces joined by a veth pair,
//! 10.78.0.x) with proxy-init's rules, `trellis proxy` as UID 1337 in each, and `trellis
//! control-plane` as their CA (file-mode tokens, one service account per pod). An unmodified
//! client (curl, UID 1000) calls a virtual IP: the call is captured, sent as mutual TLS between
//! the pods — a capture on the server's veth sees a TLS ClientHello offering Istio's ALPN and
//! encrypted records, never the request's text — delivered to the app, and counted on both sides
//! with both principals. A client without a sidecar is refused by the server's STRICT policy,
//! and opaque TCP is closed by an AuthorizationPolicy whose rule only HTTP can satisfy.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use trellis_proxy_init::apply::{self, Backend, in_namespace};
use trellis_proxy_init::rules::build;
use trellis_proxy_init::settings::Settings;
use trellis_proxy_init::testing::{RunnableByAnyone, http_get_in, in_scratch_namespace, ip, netns_path};

const CLIENT_IP: &str = "10.78.0.1";
const SERVER_IP: &str = "10.78.0.2";
/// trellisd, on a host of its own.
const CA_IP: &str = "10.78.0.3";
const CA_PORT: u16 = 15012;
const MARKER: &str = "x-secret-marker-7f3a91";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
const SERVER_ID: &str = "spiffe://cluster.local/ns/shop/sa/web";
const DEADLINE: Duration = Duration::from_secs(20);

/// STRICT, and an ALLOW policy for frontend's GETs: as in Istio, its HTTP-only rule cannot
/// apply to opaque TCP, so TCP to the pod is denied.
const SERVER_CONFIG: &str = r#"
inboundTls: { mode: STRICT }
authorization:
  - namespace: shop
    name: frontend-gets
    rules: [{ from: [{ principals: ["cluster.local/ns/shop/sa/frontend"] }], to: [{ methods: [GET] }] }]
"#;

/// The workload table trellisd would send: both pods, by address.
const WORKLOADS: &str = r#"
workloads:
  - { uid: shop/frontend, addresses: [10.78.0.1], workload: frontend, namespace: shop, app: frontend, version: v1,
      canonicalService: frontend, canonicalRevision: v1, cluster: Kubernetes,
      principal: "spiffe://cluster.local/ns/shop/sa/frontend", sidecar: true }
  - { uid: shop/web, addresses: [10.78.0.2], workload: web, namespace: shop, app: web, version: v2,
      canonicalService: web, canonicalRevision: v2, cluster: Kubernetes,
      principal: "spiffe://cluster.local/ns/shop/sa/web", sidecar: true }
"#;

/// Istio's labels of the call, in Istio's order, as `reporter` counts it.
fn call_labels(reporter: &str) -> String {
    format!(
        "reporter=\"{reporter}\",source_workload=\"frontend\",source_canonical_service=\"frontend\",\
         source_canonical_revision=\"v1\",source_workload_namespace=\"shop\",source_principal=\"{CLIENT_ID}\",\
         source_app=\"frontend\",source_version=\"v1\",source_cluster=\"Kubernetes\",\
         destination_workload=\"web\",destination_workload_namespace=\"shop\",\
         destination_principal=\"{SERVER_ID}\",destination_app=\"web\",destination_version=\"v2\",\
         destination_service=\"web.shop.svc.cluster.local\",destination_canonical_service=\"web\",\
         destination_canonical_revision=\"v2\",destination_service_name=\"web\",\
         destination_service_namespace=\"shop\",destination_cluster=\"Kubernetes\",request_protocol=\"http\",\
         response_code=\"200\",grpc_response_status=\"\",response_flags=\"-\",\
         connection_security_policy=\"mutual_tls\""
    )
}

fn client_config() -> String {
    format!(
        r#"
services:
  - name: web.shop.svc.cluster.local
    addresses: [10.96.0.50]
    ports: [{{ port: 80, protocol: HTTP }}]
  - name: db.shop.svc.cluster.local
    addresses: [10.96.0.60]
    ports: [{{ port: 5432, protocol: TCP, tcpCluster: db }}]
virtualHosts:
  - name: web.shop.svc.cluster.local:80
    routes: [{{ name: all, forward: {{ clusters: [{{ cluster: web }}] }} }}]
clusters:
  - {{ name: web, service: web.shop.svc.cluster.local }}
  - {{ name: db, service: db.shop.svc.cluster.local }}
endpoints:
  - service: web.shop.svc.cluster.local
    serviceAccounts: ["{SERVER_ID}"]
    endpoints: [{{ address: {SERVER_IP}, port: 8080, meshTls: true }}]
  - service: db.shop.svc.cluster.local
    serviceAccounts: ["{SERVER_ID}"]
    endpoints: [{{ address: {SERVER_IP}, port: 5432, meshTls: true }}]
"#
    )
}

/// A child process, stopped (by pid) when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_in(ns: &str, command: &mut Command) -> Process {
    Process(in_namespace(Some(&netns_path(ns)), || command.spawn()).unwrap().unwrap())
}

fn wait_for(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "not {what} within {DEADLINE:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a program in the namespace as `uid`: 1000 is the app (captured), 1337 is outside the
/// capture like a client without a sidecar.
fn run_as(ns: &str, uid: u32, program: &str, args: &[&str]) -> std::process::Output {
    in_namespace(Some(&netns_path(ns)), || Command::new(program).args(args).uid(uid).gid(uid).output())
        .unwrap()
        .unwrap()
}

/// Every frame on `dev` inside `ns` until `stop` exists (bounded), in a file of length-prefixed
/// frames: a raw packet socket from Python, so the test needs no capture tool.
const CAPTURE: &str = r#"
import os, socket, sys, time
dev, out, stop = sys.argv[1], sys.argv[2], sys.argv[3]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((dev, 0))
s.settimeout(0.1)
end = time.time() + 60
with open(out, "wb") as f:
    print("capturing", flush=True)
    while time.time() < end and not os.path.exists(stop):
        try:
            frame = s.recv(65535)
        except socket.timeout:
            continue
        f.write(len(frame).to_bytes(4, "big") + frame)
"#;

/// The TCP payloads, in capture order, of frames from `from` to `to_port` (Ethernet, IPv4).
fn payloads(capture: &[u8], from: [u8; 4], to_port: u16) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = capture;
    while rest.len() >= 4 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let Some(frame) = rest.get(4..4 + len) else { break };
        rest = &rest[4 + len..];
        // Ethernet II, IPv4, TCP.
        if frame.len() < 34 || frame[12..14] != [0x08, 0x00] || frame[23] != 6 || frame[26..30] != from {
            continue;
        }
        let ip = &frame[14..];
        let ip_header = usize::from(ip[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
        let Some(tcp) = ip.get(ip_header..total) else { continue };
        if tcp.len() < 20 || u16::from_be_bytes([tcp[2], tcp[3]]) != to_port {
            continue;
        }
        let data = usize::from(tcp[12] >> 4) * 4;
        if let Some(payload) = tcp.get(data..).filter(|p| !p.is_empty()) {
            out.push(payload.to_vec());
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_call_between_pods_is_mutual_tls_on_the_wire_and_counted_with_both_principals() {
    in_scratch_namespace(|client| {
        in_scratch_namespace(|server| {
            in_scratch_namespace(|control| {
                in_scratch_namespace(|hub| {
                    // A node's network in miniature: the three hosts' veths on one bridge in `hub`.
                    let tag = std::process::id() % 100_000;
                    ip(&["-n", hub, "link", "add", "mesh0", "type", "bridge"]);
                    ip(&["-n", hub, "link", "set", "mesh0", "up"]);
                    let b = format!("ts{tag}");
                    for (ns, dev, addr) in [
                        (client, format!("tc{tag}"), CLIENT_IP),
                        (server, b.clone(), SERVER_IP),
                        (control, format!("tp{tag}"), CA_IP),
                    ] {
                        let port = format!("{dev}h");
                        ip(&[
                            "link", "add", &dev, "netns", ns, "type", "veth", "peer", "name", &port, "netns",
                            hub,
                        ]);
                        ip(&["-n", hub, "link", "set", &port, "master", "mesh0"]);
                        ip(&["-n", hub, "link", "set", &port, "up"]);
                        ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", &dev]);
                        ip(&["-n", ns, "link", "set", &dev, "up"]);
                        // Virtual IPs have no host: a default route lets the connect start, the
                        // redirect takes it from there.
                        ip(&["-n", ns, "route", "add", "default", "dev", &dev]);
                    }
                    for ns in [client, server] {
                        apply::apply(&build(&Settings::default()), Backend::Nft, Some(&netns_path(ns)))
                            .unwrap();
                    }

                    let dir = tempfile::tempdir().unwrap();
                    let path = |name: &str| dir.path().join(name);
                    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))
                        .unwrap();
                    std::fs::create_dir(path("config")).unwrap();
                    std::fs::write(
                path("tokens.csv"),
                "tok-frontend,system:serviceaccount:shop:frontend,u1\ntok-web,system:serviceaccount:shop:web,u2\n",
            )
            .unwrap();
                    for (file, text) in [
                        ("frontend.token", "tok-frontend\n".to_owned()),
                        ("web.token", "tok-web\n".to_owned()),
                        ("client.yaml", format!("{}{WORKLOADS}", client_config())),
                        // The server knows the services too (trellisd sends every proxy the
                        // address table), which names its inbound calls' destination service.
                        ("server.yaml", format!("{SERVER_CONFIG}{}{WORKLOADS}", client_config())),
                    ] {
                        std::fs::write(path(file), text).unwrap();
                    }
                    let binary = RunnableByAnyone::copy(env!("CARGO_BIN_EXE_trellis"));

                    // The CA, on a host of its own (as istiod runs in a pod of its own).
                    let mut trellisd = Command::new(&binary.path);
                    trellisd
                        .arg("control-plane")
                        .args(["--config-dir", &path("config").display().to_string()])
                        .args(["--xds-address", "127.0.0.1:0", "--monitoring-address", "127.0.0.1:0"])
                        .args(["--secure-xds-address", &format!("{CA_IP}:{CA_PORT}")])
                        .args(["--token-auth-file", &path("tokens.csv").display().to_string()])
                        .args(["--root-cert-file", &path("root-cert.pem").display().to_string()])
                        .stdout(Stdio::piped())
                        .stderr(Stdio::null());
                    let mut trellisd = spawn_in(control, &mut trellisd);
                    let mut first = String::new();
                    let _ = BufReader::new(trellisd.0.stdout.take().unwrap()).read_line(&mut first);
                    assert!(first.starts_with("trellisd listening"), "{first:?}");
                    wait_for("trellisd writes its root", || path("root-cert.pem").exists());

                    let proxy = |ns: &str, config: &str, account: &str| {
                        let mut command = Command::new(&binary.path);
                        command
                            .arg("proxy")
                            .args(["--config", &path(config).display().to_string()])
                            .args(["--ca-address", &format!("{CA_IP}:{CA_PORT}")])
                            .args(["--ca-root-cert", &path("root-cert.pem").display().to_string()])
                            .args(["--token-file", &path(&format!("{account}.token")).display().to_string()])
                            .env("POD_NAMESPACE", "shop")
                            .env("SERVICE_ACCOUNT", account)
                            .env("ISTIO_META_WORKLOAD_NAME", account)
                            // The pod's labels, as the injector's downward API would give them.
                            .env(
                                "ISTIO_METAJSON_LABELS",
                                if account == "web" {
                                    r#"{"app":"web","version":"v2"}"#
                                } else {
                                    r#"{"app":"frontend","version":"v1"}"#
                                },
                            )
                            .uid(1337)
                            .gid(1337)
                            .stdout(Stdio::null())
                            .stderr(Stdio::null());
                        let process = spawn_in(ns, &mut command);
                        wait_for(&format!("the {account} proxy is ready (certified)"), || {
                            http_get_in(ns, 15021, "/healthz/ready").starts_with("HTTP/1.1 200")
                        });
                        process
                    };
                    let _client_proxy = proxy(client, "client.yaml", "frontend");
                    let _server_proxy = proxy(server, "server.yaml", "web");

                    // The app in the server pod answers with the caller the proxy told it about.
                    let app = in_namespace(Some(&netns_path(server)), || TcpListener::bind("0.0.0.0:8080"))
                        .unwrap()
                        .unwrap();
                    let app_thread = std::thread::spawn(move || {
                        use std::io::{Read, Write};
                        app.set_nonblocking(true).ok()?;
                        let deadline = Instant::now() + DEADLINE;
                        let mut s = loop {
                            match app.accept() {
                                Ok((s, _)) => break s,
                                Err(_) if Instant::now() < deadline => {
                                    std::thread::sleep(Duration::from_millis(20))
                                }
                                Err(_) => return None,
                            }
                        };
                        s.set_nonblocking(false).ok()?;
                        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
                        let mut request = Vec::new();
                        let mut buf = [0u8; 4096];
                        while !contains(&request, b"\r\n\r\n") {
                            let n = s.read(&mut buf).ok().filter(|n| *n > 0)?;
                            request.extend_from_slice(&buf[..n]);
                        }
                        let text = String::from_utf8_lossy(&request).into_owned();
                        let body = "hello from web";
                        write!(
                            s,
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .ok()?;
                        Some(text)
                    });

                    // Capture on the server pod's veth while the app calls.
                    let stop = path("stop-capture");
                    let mut capture = Command::new("python3");
                    capture
                        .args([
                            "-c",
                            CAPTURE,
                            &b,
                            &path("capture.bin").display().to_string(),
                            &stop.display().to_string(),
                        ])
                        .stdout(Stdio::piped())
                        .stderr(Stdio::null());
                    let mut capture = spawn_in(server, &mut capture);
                    let mut said = String::new();
                    let _ = BufReader::new(capture.0.stdout.take().unwrap()).read_line(&mut said);
                    assert_eq!(said.trim(), "capturing");

                    let out = run_as(
                        client,
                        1000,
                        "curl",
                        &[
                            "-s",
                            "-m",
                            "10",
                            "-H",
                            &format!("{MARKER}: yes"),
                            "-w",
                            "\n%{http_code}",
                            "http://10.96.0.50/hello",
                        ],
                    );
                    assert_eq!(
                        String::from_utf8_lossy(&out.stdout),
                        "hello from web\n200",
                        "curl: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    std::fs::write(&stop, "").unwrap();
                    let _ = capture.0.wait();
                    let seen = app_thread.join().unwrap().expect("the app got the request");
                    assert!(seen.contains(MARKER), "delivered as sent: {seen}");
                    let xfcc = seen
                        .lines()
                        .find(|l| l.to_lowercase().starts_with("x-forwarded-client-cert:"))
                        .unwrap_or("");
                    assert!(xfcc.contains(&format!("URI={CLIENT_ID}")), "the app learns the caller: {seen}");

                    // On the wire: TLS from the client pod to the app's port, never the request's text.
                    let frames = std::fs::read(path("capture.bin")).unwrap();
                    let client_ip: std::net::Ipv4Addr = CLIENT_IP.parse().unwrap();
                    let sent = payloads(&frames, client_ip.octets(), 8080);
                    assert!(!sent.is_empty(), "the capture saw the call ({} bytes captured)", frames.len());
                    assert_eq!(&sent[0][..2], &[0x16, 0x03], "a TLS handshake record opens the connection");
                    assert!(contains(&sent[0], b"istio-http/1.1"), "the ClientHello offers Istio's ALPN");
                    assert!(
                        sent.iter().any(|p| p.starts_with(&[0x17, 0x03, 0x03])),
                        "encrypted application data follows"
                    );
                    let all: Vec<u8> = sent.concat();
                    assert!(
                        !contains(&all, MARKER.as_bytes()) && !contains(&all, b"/hello"),
                        "no plaintext on the wire"
                    );

                    // Both sides count it as mutual TLS with both principals, and name both
                    // workloads with every one of Istio's labels (the server trusts the caller's
                    // address because the caller proved the identity the table gives it).
                    for (ns, reporter) in [(client, "source"), (server, "destination")] {
                        let metrics = http_get_in(ns, 15090, "/stats/prometheus");
                        let want = format!("istio_requests_total{{{}}} ", call_labels(reporter));
                        assert!(
                            metrics.lines().any(|l| l.starts_with(&want)),
                            "{want}\n{reporter}: {metrics}"
                        );
                    }

                    // A client without a sidecar (UID 1337 is outside the client pod's capture) sends
                    // plaintext straight to the server pod: STRICT closes it and counts it.
                    let out = run_as(
                        client,
                        1337,
                        "curl",
                        &[
                            "-s",
                            "-m",
                            "5",
                            "-o",
                            "/dev/null",
                            "-w",
                            "%{http_code}",
                            &format!("http://{SERVER_IP}:8080/"),
                        ],
                    );
                    assert_eq!(String::from_utf8_lossy(&out.stdout), "000", "no answer for plaintext");
                    let metrics = http_get_in(server, 15090, "/stats/prometheus");
                    assert!(
                        metrics.lines().any(|l| l.starts_with("trellis_inbound_connections_refused_total")
                            && !l.ends_with(" 0")),
                        "{metrics}"
                    );

                    // Opaque TCP from frontend to the pod: mutual TLS, then closed by the ALLOW
                    // policy whose only rule is HTTP's, and counted as denied on TCP.
                    let db = in_namespace(Some(&netns_path(server)), || TcpListener::bind("0.0.0.0:5432"))
                        .unwrap()
                        .unwrap();
                    db.set_nonblocking(true).unwrap();
                    let script = "import socket\ns = socket.create_connection(('10.96.0.60', 5432), timeout=10)\ns.sendall(b'ping')\ns.shutdown(socket.SHUT_WR)\nprint(repr(s.recv(100)), end='')\n";
                    let out = run_as(client, 1000, "/usr/bin/python3", &["-c", script]);
                    assert_eq!(
                        String::from_utf8_lossy(&out.stdout),
                        "b''",
                        "{}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    assert!(db.accept().is_err(), "the database never got the connection");
                    let metrics = http_get_in(server, 15090, "/stats/prometheus");
                    assert!(
                        metrics.lines().any(|l| l.starts_with("trellis_authz_decisions_total")
                            && l.contains("decision=\"deny\",policy=\"none\"")
                            && l.contains("protocol=\"tcp\"")),
                        "{metrics}"
                    );
                    drop(trellisd);
                });
            });
        });
    });
}
