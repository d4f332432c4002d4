//! Istio's egress-gateway pattern on real packets, as root: four hosts (network namespaces on
//! one bridge, 10.77.0.x) — a pod with proxy-init's rules and its sidecar (`trellis proxy`,
//! UID 1337), the egress gateway (`trellis proxy --role gateway`), an HTTPS server outside the
//! mesh, and `trellis control-plane` as the CA. The app (curl, UID 1000) calls
//! http://edition.cnn.com/: its sidecar sends the call over the mesh's mutual TLS to the
//! gateway (a Gateway server with `tls.mode: ISTIO_MUTUAL`, picked by the SNI the sidecar's
//! DestinationRule names), and the gateway originates TLS to the external server. Captures show
//! the pod's side as TLS without the request's text, and that the external server hears only
//! the gateway's address. The configurations are what trellisd sends for Istio's documented
//! egress task (the control plane's
//! `the_egress_gateway_pattern_mesh_tls_in_and_tls_origination_out` checks that translation).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use trellis_proxy_init::apply::{self, Backend, in_namespace};
use trellis_proxy_init::rules::build;
use trellis_proxy_init::settings::Settings;
use trellis_proxy_init::testing::{RunnableByAnyone, http_get_in, in_scratch_namespace, ip, netns_path};

const POD_IP: &str = "10.77.0.1";
const GATEWAY_IP: &str = "10.77.0.2";
const EXTERNAL_IP: &str = "10.77.0.3";
const CA_IP: &str = "10.77.0.4";
const CA_PORT: u16 = 15012;
/// The gateway's listener (its Service's target port for port 80).
const GATEWAY_PORT: u16 = 8080;
/// The ServiceEntry's address the app's DNS would give (Istio's auto-allocation range).
const ENTRY_VIP: &str = "240.240.0.10";
const HOST: &str = "edition.cnn.com";
const GATEWAY_ID: &str = "spiffe://cluster.local/ns/istio-system/sa/istio-egressgateway-service-account";
const DEADLINE: Duration = Duration::from_secs(20);

/// The sidecar: edition.cnn.com:80 to the egress gateway's `cnn` subset, over the mesh's mutual
/// TLS with edition.cnn.com as the server name.
fn sidecar_config() -> String {
    format!(
        r#"
services:
  - name: {HOST}
    addresses: [{ENTRY_VIP}]
    ports: [{{ port: 80, protocol: HTTP }}]
virtualHosts:
  - name: {HOST}:80
    routes: [{{ name: to-gateway, forward: {{ clusters: [{{ cluster: "outbound|80|cnn|istio-egressgateway.istio-system.svc.cluster.local" }}] }} }}]
clusters:
  - name: "outbound|80|cnn|istio-egressgateway.istio-system.svc.cluster.local"
    service: "istio-egressgateway.istio-system.svc.cluster.local:80"
    tls: {{ mode: ISTIO_MUTUAL, sni: {HOST} }}
endpoints:
  - service: "istio-egressgateway.istio-system.svc.cluster.local:80"
    serviceAccounts: ["{GATEWAY_ID}"]
    endpoints: [{{ address: {GATEWAY_IP}, port: {GATEWAY_PORT}, meshTls: true }}]
"#
    )
}

/// The egress gateway: the mesh's mutual TLS in, for edition.cnn.com only from the pod's
/// workload, and TLS originated to the external server's 443.
fn gateway_config(ca_file: &str) -> String {
    format!(
        r#"
gatewayListeners:
  - port: {GATEWAY_PORT}
    protocol: GATEWAY_HTTPS
    servers:
      - name: shop/istio-egressgateway/0
        hosts: [{HOST}]
        tls: {{ mode: GATEWAY_TLS_ISTIO_MUTUAL }}
        routes: [{{ host: {HOST}, virtualHost: "gateway~80~{HOST}" }}]
virtualHosts:
  - name: "gateway~80~{HOST}"
    routes: [{{ name: out, forward: {{ clusters: [{{ cluster: "outbound|443||{HOST}" }}] }} }}]
clusters:
  - name: "outbound|443||{HOST}"
    service: "{HOST}:443"
    upstreamProtocol: HTTP1
    tls: {{ mode: SIMPLE, caCertificates: {ca_file} }}
endpoints:
  - service: "{HOST}:443"
    endpoints: [{{ address: {EXTERNAL_IP}, port: 443 }}]
authorization:
  - namespace: istio-system
    name: only-sleep
    rules: [{{ from: [{{ principals: ["cluster.local/ns/shop/sa/sleep"] }}] }}]
"#
    )
}

/// The server outside the mesh: HTTPS on 443, answering with the address it was called from.
const EXTERNAL: &str = r#"
import http.server, ssl, sys
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = ("external saw %s" % self.client_address[0]).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("0.0.0.0", 443), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[1], sys.argv[2])
server.socket = context.wrap_socket(server.socket, server_side=True)
print("serving", flush=True)
server.serve_forever()
"#;

/// Every frame on `dev` until `stop` exists (bounded), length-prefixed, from a raw packet
/// socket: the test needs no capture tool.
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

/// A captured IPv4 TCP segment: source, destination port and payload.
struct Segment {
    source: Ipv4Addr,
    to_port: u16,
    payload: Vec<u8>,
}

fn segments(capture: &[u8]) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut rest = capture;
    while rest.len() >= 4 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let Some(frame) = rest.get(4..4 + len) else { break };
        rest = &rest[4 + len..];
        // Ethernet II, IPv4, TCP.
        if frame.len() < 34 || frame[12..14] != [0x08, 0x00] || frame[23] != 6 {
            continue;
        }
        let ip = &frame[14..];
        let source = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        let ip_header = usize::from(ip[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
        let Some(tcp) = ip.get(ip_header..total) else { continue };
        if tcp.len() < 20 {
            continue;
        }
        let to_port = u16::from_be_bytes([tcp[2], tcp[3]]);
        let data = usize::from(tcp[12] >> 4) * 4;
        out.push(Segment { source, to_port, payload: tcp.get(data..).unwrap_or_default().to_vec() });
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
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

/// A capture on `dev` in `ns`, into `file`, running until `stop` is created.
fn capture(ns: &str, dev: &str, file: &std::path::Path, stop: &std::path::Path) -> Process {
    let mut command = Command::new("python3");
    command
        .args(["-c", CAPTURE, dev, &file.display().to_string(), &stop.display().to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut process = spawn_in(ns, &mut command);
    let mut said = String::new();
    let _ = BufReader::new(process.0.stdout.take().unwrap()).read_line(&mut said);
    assert_eq!(said.trim(), "capturing");
    process
}

/// A CA of the external server's own and its certificate for edition.cnn.com, as PEM files.
fn external_certificates(dir: &std::path::Path) -> (String, String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "external root");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec![HOST.to_owned()]).unwrap().signed_by(&key, &issuer).unwrap();
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    (
        write("external-ca.pem", ca_cert.pem()),
        write("external.pem", leaf.pem()),
        write("external.key", key.serialize_pem()),
    )
}

#[test]
fn a_pods_call_to_an_external_host_leaves_only_through_the_egress_gateway() {
    in_scratch_namespace(|pod| {
        in_scratch_namespace(|gateway| {
            in_scratch_namespace(|external| {
                in_scratch_namespace(|control| {
                    in_scratch_namespace(|hub| {
                        run(pod, gateway, external, control, hub);
                    });
                });
            });
        });
    });
}

fn run(pod: &str, gateway: &str, external: &str, control: &str, hub: &str) {
    // A network in miniature: the four hosts' veths on one bridge in `hub`.
    let tag = std::process::id() % 100_000;
    ip(&["-n", hub, "link", "add", "egress0", "type", "bridge"]);
    ip(&["-n", hub, "link", "set", "egress0", "up"]);
    let (gateway_dev, external_dev) = (format!("eg{tag}"), format!("ee{tag}"));
    for (ns, dev, addr) in [
        (pod, format!("ep{tag}"), POD_IP),
        (gateway, gateway_dev.clone(), GATEWAY_IP),
        (external, external_dev.clone(), EXTERNAL_IP),
        (control, format!("ec{tag}"), CA_IP),
    ] {
        let port = format!("{dev}h");
        ip(&["link", "add", &dev, "netns", ns, "type", "veth", "peer", "name", &port, "netns", hub]);
        ip(&["-n", hub, "link", "set", &port, "master", "egress0"]);
        ip(&["-n", hub, "link", "set", &port, "up"]);
        ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", &dev]);
        ip(&["-n", ns, "link", "set", &dev, "up"]);
        // The ServiceEntry's address has no host: a default route lets the connect start, the
        // redirect takes it from there.
        ip(&["-n", ns, "route", "add", "default", "dev", &dev]);
    }
    apply::apply(&build(&Settings::default()), Backend::Nft, Some(&netns_path(pod))).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::create_dir(path("config")).unwrap();
    let (external_ca, external_cert, external_key) = external_certificates(dir.path());
    for (file, text) in [
        (
            "tokens.csv",
            "tok-sleep,system:serviceaccount:shop:sleep,u1\n\
             tok-gateway,system:serviceaccount:istio-system:istio-egressgateway-service-account,u2\n"
                .to_owned(),
        ),
        ("sleep.token", "tok-sleep\n".to_owned()),
        ("gateway.token", "tok-gateway\n".to_owned()),
        ("sidecar.yaml", sidecar_config()),
        ("gateway.yaml", gateway_config(&external_ca)),
    ] {
        std::fs::write(path(file), text).unwrap();
    }
    let binary = RunnableByAnyone::copy(env!("CARGO_BIN_EXE_trellis"));

    // The CA, on a host of its own.
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

    // The external server.
    let mut server = Command::new("python3");
    server.args(["-c", EXTERNAL, &external_cert, &external_key]).stdout(Stdio::piped()).stderr(Stdio::null());
    let mut server = spawn_in(external, &mut server);
    let mut said = String::new();
    let _ = BufReader::new(server.0.stdout.take().unwrap()).read_line(&mut said);
    assert_eq!(said.trim(), "serving");

    let proxy = |ns: &str, config: &str, namespace: &str, account: &str, token: &str, role: &[&str]| {
        let mut command = Command::new(&binary.path);
        command
            .arg("proxy")
            .args(role)
            .args(["--config", &path(config).display().to_string()])
            .args(["--ca-address", &format!("{CA_IP}:{CA_PORT}")])
            .args(["--ca-root-cert", &path("root-cert.pem").display().to_string()])
            .args(["--token-file", &path(token).display().to_string()])
            .env("POD_NAMESPACE", namespace)
            .env("SERVICE_ACCOUNT", account)
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
    let _gateway_proxy = proxy(
        gateway,
        "gateway.yaml",
        "istio-system",
        "istio-egressgateway-service-account",
        "gateway.token",
        &["--role", "gateway"],
    );
    wait_for("the gateway listens", || {
        in_namespace(Some(&netns_path(gateway)), || std::net::TcpStream::connect((GATEWAY_IP, GATEWAY_PORT)))
            .unwrap()
            .is_ok()
    });
    let _sidecar = proxy(pod, "sidecar.yaml", "shop", "sleep", "sleep.token", &[]);

    let stop = path("stop");
    let mut at_gateway = capture(gateway, &gateway_dev, &path("gateway.bin"), &stop);
    let mut at_external = capture(external, &external_dev, &path("external.bin"), &stop);

    // The app: plaintext HTTP to edition.cnn.com (its DNS gives the ServiceEntry's address).
    let out = in_namespace(Some(&netns_path(pod)), || {
        Command::new("curl")
            .args(["-s", "-m", "10", "-w", "\n%{http_code}"])
            .args(["--resolve", &format!("{HOST}:80:{ENTRY_VIP}")])
            .arg(format!("http://{HOST}/headlines"))
            .uid(1000)
            .gid(1000)
            .output()
    })
    .unwrap()
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("external saw {GATEWAY_IP}\n200"),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&stop, "").unwrap();
    let _ = at_gateway.0.wait();
    let _ = at_external.0.wait();

    // Only the gateway talks to the external server.
    let seen = segments(&std::fs::read(path("external.bin")).unwrap());
    let to_server: BTreeSet<Ipv4Addr> = seen.iter().filter(|s| s.to_port == 443).map(|s| s.source).collect();
    assert_eq!(to_server, BTreeSet::from([GATEWAY_IP.parse().unwrap()]), "who called the external server");
    let pod_ip: Ipv4Addr = POD_IP.parse().unwrap();
    assert!(!seen.iter().any(|s| s.source == pod_ip), "the pod's address never reaches the external server");
    let to_server: Vec<u8> =
        seen.iter().filter(|s| s.to_port == 443).flat_map(|s| s.payload.clone()).collect();
    assert!(!contains(&to_server, b"/headlines"), "TLS originated to the external server");

    // From the pod to the gateway: the mesh's TLS, naming edition.cnn.com, never the request.
    let seen = segments(&std::fs::read(path("gateway.bin")).unwrap());
    let from_pod: Vec<&Segment> = seen
        .iter()
        .filter(|s| s.source == pod_ip && s.to_port == GATEWAY_PORT && !s.payload.is_empty())
        .collect();
    assert!(!from_pod.is_empty(), "the capture at the gateway saw the pod's connection");
    assert_eq!(&from_pod[0].payload[..2], &[0x16, 0x03], "a TLS handshake opens it");
    assert!(contains(&from_pod[0].payload, HOST.as_bytes()), "the ClientHello names {HOST} (SNI)");
    assert!(contains(&from_pod[0].payload, b"istio-http/1.1"), "and offers Istio's ALPN");
    let all: Vec<u8> = from_pod.iter().flat_map(|s| s.payload.clone()).collect();
    assert!(!contains(&all, b"/headlines"), "no plaintext between the pod and the gateway");

    // The gateway counts the request it sent out with a 200.
    let metrics = http_get_in(gateway, 15090, "/stats/prometheus");
    assert!(
        metrics.lines().any(|l| l.starts_with("istio_requests_total{")
            && l.contains(&format!("destination_service=\"{HOST}\""))
            && l.contains("response_code=\"200\"")),
        "{metrics}"
    );
    drop(trellisd);
}
