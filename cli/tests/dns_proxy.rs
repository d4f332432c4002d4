//! The DNS proxy on real packets, as root: a pod (a network namespace, 10.83.0.1) with
//! proxy-init's redirect capturing DNS to its nameserver, and `trellis proxy` as UID 1337 told
//! ISTIO_META_DNS_CAPTURE and ISTIO_META_DNS_AUTO_ALLOCATE, as the injector sets them; and the
//! world (10.83.0.2) with trellisd, the pod's resolver (a small DNS server of the test's, which
//! knows `other.example.test` and nothing of the mesh) and an HTTP server that a ServiceEntry
//! without addresses names (`api.external.test`, no DNS record anywhere).
//!
//! Over UDP and over TCP, the pod's query for the ServiceEntry host is answered by the proxy
//! with the address trellisd allocated (the resolver never sees it), and a call to that address
//! reaches the ServiceEntry's endpoint through the proxy; other names are answered by the
//! resolver, through the proxy; with the rules written by either backend.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use trellis_proxy_init::apply::{self, Backend, in_namespace};
use trellis_proxy_init::rules::build;
use trellis_proxy_init::settings::{DnsCapture, Settings};
use trellis_proxy_init::testing::{RunnableByAnyone, http_get_in, in_scratch_namespace, ip, netns_path};

const POD_IP: &str = "10.83.0.1";
const WORLD_IP: &str = "10.83.0.2";
/// What the world's resolver answers for the one name it knows.
const OTHER_IP: Ipv4Addr = Ipv4Addr::new(10, 83, 0, 99);
const DEADLINE: Duration = Duration::from_secs(20);

const SERVICE_ENTRY: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: external-api, namespace: shop }
spec:
  hosts: [api.external.test]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{ number: 80, name: http, protocol: HTTP }]
  endpoints: [{ address: 10.83.0.2, ports: { http: 8080 } }]
"#;

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

/// Runs `f` on a thread inside the namespace (sockets made there stay there).
fn inside<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    in_namespace(Some(&netns_path(ns)), f).unwrap()
}

/// The pod's resolver: A for `other.example.test`, NXDOMAIN for anything else, over UDP and
/// TCP; remembers every name it was asked. Stops when dropped.
struct Resolver {
    asked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Resolver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn resolver_answer(query: &[u8], asked: &Mutex<Vec<String>>) -> Option<Vec<u8>> {
    let query = Message::from_vec(query).ok()?;
    let question = query.queries.first()?.clone();
    let name = question.name().to_ascii().trim_end_matches('.').to_ascii_lowercase();
    asked.lock().ok()?.push(name.clone());
    let mut answer = Message::response(query.metadata.id, OpCode::Query);
    answer.metadata.recursion_available = true;
    answer.add_query(question.clone());
    if name == "other.example.test" && question.query_type() == RecordType::A {
        answer.add_answer(Record::from_rdata(question.name().clone(), 60, RData::A(A(OTHER_IP))));
    } else {
        answer.metadata.response_code = ResponseCode::NXDomain;
    }
    answer.to_vec().ok()
}

fn start_resolver(ns: &str) -> Resolver {
    let asked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let (udp, tcp) =
        inside(ns, || (UdpSocket::bind((WORLD_IP, 53)).unwrap(), TcpListener::bind((WORLD_IP, 53)).unwrap()));
    udp.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    tcp.set_nonblocking(true).unwrap();
    let (asked_udp, stop_udp) = (asked.clone(), stop.clone());
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while !stop_udp.load(Ordering::SeqCst) {
            if let Ok((n, from)) = udp.recv_from(&mut buffer)
                && let Some(answer) = resolver_answer(&buffer[..n], &asked_udp)
            {
                let _ = udp.send_to(&answer, from);
            }
        }
    });
    let (asked_tcp, stop_tcp) = (asked.clone(), stop.clone());
    std::thread::spawn(move || {
        while !stop_tcp.load(Ordering::SeqCst) {
            let Ok((mut stream, _)) = tcp.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            if let Some(query) = read_framed(&mut stream)
                && let Some(answer) = resolver_answer(&query, &asked_tcp)
            {
                let _ = stream.write_all(&framed(&answer));
            }
        }
    });
    Resolver { asked, stop }
}

/// The ServiceEntry's endpoint: answers every request with its name.
fn start_external_api(ns: &str) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let listener = inside(ns, || TcpListener::bind((WORLD_IP, 8080)).unwrap());
    listener.set_nonblocking(true).unwrap();
    let flag = stop.clone();
    std::thread::spawn(move || {
        while !flag.load(Ordering::SeqCst) {
            let Ok((mut stream, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\nconnection: close\r\n\r\nexternal-api");
        }
    });
    stop
}

fn query(name: &str, kind: RecordType) -> Vec<u8> {
    let mut message = Message::new(0x5151, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
    message.to_vec().unwrap()
}

fn framed(message: &[u8]) -> Vec<u8> {
    let mut out = (message.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(message);
    out
}

fn read_framed(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut length = [0u8; 2];
    stream.read_exact(&mut length).ok()?;
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(length))];
    stream.read_exact(&mut message).ok()?;
    Some(message)
}

/// The pod asks its nameserver, as its resolver library would; the answer and who sent it.
fn ask_udp(pod: &str, name: &str) -> (Message, SocketAddr) {
    inside(pod, || {
        let socket = UdpSocket::bind((POD_IP, 0)).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        socket.send_to(&query(name, RecordType::A), (WORLD_IP, 53)).unwrap();
        let mut buffer = [0u8; 4096];
        let (n, from) = socket.recv_from(&mut buffer).unwrap_or_else(|e| panic!("UDP query for {name}: {e}"));
        (Message::from_vec(&buffer[..n]).unwrap(), from)
    })
}

fn ask_tcp(pod: &str, name: &str) -> Message {
    inside(pod, || {
        let mut stream =
            TcpStream::connect_timeout(&SocketAddr::new(WORLD_IP.parse().unwrap(), 53), DEADLINE)
                .unwrap_or_else(|e| panic!("TCP DNS to {WORLD_IP}:53: {e}"));
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        stream.write_all(&framed(&query(name, RecordType::A))).unwrap();
        Message::from_vec(&read_framed(&mut stream).expect("a TCP answer")).unwrap()
    })
}

fn addresses(answer: &Message) -> Vec<Ipv4Addr> {
    answer
        .answers
        .iter()
        .filter_map(|r| match r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

/// GET / from the pod to `ip`:80 for `host`: the status line and body.
fn call(pod: &str, ip: Ipv4Addr, host: &str) -> String {
    inside(pod, || {
        let mut stream = TcpStream::connect_timeout(&SocketAddr::new(IpAddr::V4(ip), 80), DEADLINE)
            .unwrap_or_else(|e| panic!("connect {ip}:80: {e}"));
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(stream, "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        let _ = stream.read_to_string(&mut out);
        let status = out.lines().next().unwrap_or_default().to_owned();
        let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
        format!("{status} {body}")
    })
}

#[test]
fn mesh_names_are_answered_by_the_proxy_and_the_rest_by_the_pods_resolver() {
    in_scratch_namespace(|pod| {
        in_scratch_namespace(|world| {
            let tag = std::process::id() % 100_000;
            let (a, b) = (format!("dp{tag}"), format!("dw{tag}"));
            ip(&["link", "add", &a, "netns", pod, "type", "veth", "peer", "name", &b, "netns", world]);
            for (ns, dev, addr) in [(pod, &a, POD_IP), (world, &b, WORLD_IP)] {
                ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
                ip(&["-n", ns, "link", "set", dev, "up"]);
                ip(&["-n", ns, "link", "set", "lo", "up"]);
            }
            // Allocated addresses have no host: a default route lets the connect start, and the
            // redirect takes it to the proxy.
            ip(&["-n", pod, "route", "add", "default", "via", WORLD_IP]);

            let dir = tempfile::tempdir().unwrap();
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            let config_dir = dir.path().join("config");
            std::fs::create_dir(&config_dir).unwrap();
            std::fs::write(config_dir.join("external.yaml"), SERVICE_ENTRY).unwrap();
            let resolv_conf = dir.path().join("resolv.conf");
            std::fs::write(&resolv_conf, format!("nameserver {WORLD_IP}\noptions ndots:5\n")).unwrap();
            std::fs::set_permissions(&resolv_conf, std::fs::Permissions::from_mode(0o644)).unwrap();

            let resolver = start_resolver(world);
            let external = start_external_api(world);
            let _trellisd = spawn_in(
                world,
                Command::new(env!("CARGO_BIN_EXE_trellis"))
                    .arg("control-plane")
                    .arg("--config-dir")
                    .arg(&config_dir)
                    .args(["--xds-address", &format!("{WORLD_IP}:15010")])
                    .args(["--monitoring-address", "127.0.0.1:0", "--log-level", "warn"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            );

            let binary = RunnableByAnyone::copy(env!("CARGO_BIN_EXE_trellis"));
            let _proxy = spawn_in(
                pod,
                Command::new(&binary.path)
                    .arg("proxy")
                    .args(["--discovery-address", &format!("{WORLD_IP}:15010")])
                    .args(["--ca-root-cert", "/nonexistent/root-cert.pem", "--status-port", "15020"])
                    .arg("--resolv-conf")
                    .arg(&resolv_conf)
                    .args(["--log-level", "warn"])
                    .env_remove("PROXY_CONFIG")
                    .env_remove("ISTIO_KUBE_APP_PROBERS")
                    .env("POD_NAMESPACE", "shop")
                    .env("POD_NAME", "app-1")
                    .env("INSTANCE_IP", POD_IP)
                    .env("ISTIO_META_DNS_CAPTURE", "true")
                    .env("ISTIO_META_DNS_AUTO_ALLOCATE", "true")
                    .uid(1337)
                    .gid(1337)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            );
            let deadline = Instant::now() + DEADLINE;
            while !http_get_in(pod, 15021, "/healthz/ready").starts_with("HTTP/1.1 200") {
                assert!(Instant::now() < deadline, "the proxy did not get its configuration from trellisd");
                std::thread::sleep(Duration::from_millis(50));
            }

            let settings = Settings {
                capture_dns: DnsCapture::Servers(vec![WORLD_IP.parse().unwrap()]),
                ..Settings::default()
            };
            for backend in [Backend::Nft, Backend::Iptables] {
                apply::apply(&build(&settings), backend, Some(&netns_path(pod))).unwrap();
                resolver.asked.lock().unwrap().clear();

                let (answer, from) = ask_udp(pod, "api.external.test.");
                assert_eq!(
                    from,
                    SocketAddr::new(WORLD_IP.parse().unwrap(), 53),
                    "{backend:?}: the reply's source"
                );
                assert_eq!(answer.metadata.response_code, ResponseCode::NoError, "{backend:?}");
                let allocated = addresses(&answer);
                assert_eq!(allocated.len(), 1, "{backend:?}: {answer:?}");
                let [x, y, _, _] = allocated[0].octets();
                assert_eq!((x, y), (240, 240), "{backend:?}: an address from the reserved range");
                assert_eq!(
                    addresses(&ask_tcp(pod, "api.external.test.")),
                    allocated,
                    "{backend:?}: over TCP"
                );

                // The call to the allocated address is the ServiceEntry's: it reaches its endpoint.
                assert_eq!(
                    call(pod, allocated[0], "api.external.test"),
                    "HTTP/1.1 200 OK external-api",
                    "{backend:?}"
                );

                // Names the mesh does not know are the resolver's, over both transports.
                let (other, _) = ask_udp(pod, "other.example.test.");
                assert_eq!(addresses(&other), vec![OTHER_IP], "{backend:?}");
                assert_eq!(addresses(&ask_tcp(pod, "other.example.test.")), vec![OTHER_IP], "{backend:?}");
                let (unknown, _) = ask_udp(pod, "nowhere.example.test.");
                assert_eq!(unknown.metadata.response_code, ResponseCode::NXDomain, "{backend:?}");

                let asked = resolver.asked.lock().unwrap().clone();
                assert!(
                    !asked.iter().any(|n| n == "api.external.test"),
                    "{backend:?}: the mesh name leaked: {asked:?}"
                );
                assert_eq!(
                    asked,
                    ["other.example.test", "other.example.test", "nowhere.example.test"],
                    "{backend:?}: what reached the resolver"
                );
            }
            external.store(true, Ordering::SeqCst);
        });
    });
}
