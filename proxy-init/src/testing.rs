//! Helpers for the privileged tests of this crate and of the CNI plugin: scratch network
//! namespaces (made by the test, removed afterwards), listeners and clients inside them.
//! Not used by the binaries. Panics are the point here: these run only inside tests.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::apply::in_namespace;
use crate::original_dst::original_destination;

/// Whether privileged tests can run here; when they cannot, says so on stderr (and fails under
/// `TRELLIS_PRIVILEGED_TESTS=require`).
pub fn privileged() -> bool {
    let root = nix::unistd::geteuid().is_root();
    let tools =
        ["/usr/sbin/nft", "/usr/sbin/iptables-restore", "/usr/sbin/ip"].iter().all(|t| Path::new(t).exists());
    if root && tools {
        return true;
    }
    let why = if root { "needs nft, iptables and iproute2" } else { "needs root" };
    assert!(
        std::env::var("TRELLIS_PRIVILEGED_TESTS").as_deref() != Ok("require"),
        "TRELLIS_PRIVILEGED_TESTS=require but this test {why}"
    );
    eprintln!("SKIPPED ({why}): {}", std::thread::current().name().unwrap_or("a privileged test"));
    false
}

/// Runs `f` with the name of a fresh network namespace, removed afterwards. Returns false
/// (having run nothing) when privileged tests cannot run here.
pub fn in_scratch_namespace(f: impl FnOnce(&str)) -> bool {
    if !privileged() {
        return false;
    }
    let name = unique_name("trellis-test");
    ip(&["netns", "add", &name]);
    struct Remove(String);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).stderr(Stdio::null()).status();
        }
    }
    let _remove = Remove(name.clone());
    ip(&["-n", &name, "link", "set", "lo", "up"]);
    f(&name);
    true
}

/// A name no other test in this run (tests run in parallel, in one process) uses.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

pub fn netns_path(ns: &str) -> PathBuf {
    PathBuf::from(format!("/var/run/netns/{ns}"))
}

pub fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("ip runs");
    assert!(status.success(), "ip {args:?}");
}

/// Runs `program` in the namespace with `input` on its standard input.
pub fn run_in(ns: &str, program: &[&str], input: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(program)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    child.stdin.take().expect("piped").write_all(input.as_bytes()).map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
}

/// A command's standard output inside the namespace.
pub fn output_in(ns: &str, program: &[&str]) -> String {
    let out = Command::new("ip").args(["netns", "exec", ns]).args(program).output().expect("ip runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Everything of ours the namespace's packet filter holds, in both tools' words; empty when
/// there is nothing.
pub fn our_rules(ns: &str) -> String {
    let mut text = output_in(ns, &["nft", "list", "ruleset"]);
    for save in ["iptables-save", "ip6tables-save"] {
        text.push_str(&output_in(ns, &[save]));
    }
    text.lines().filter(|l| l.to_lowercase().contains("trellis")).collect::<Vec<_>>().join("\n")
}

/// A non-blocking TCP listener bound inside `ns`.
pub fn listen(ns: &str, addr: &str) -> TcpListener {
    let addr: SocketAddr = addr.parse().expect("a socket address");
    let listener = in_namespace(Some(&netns_path(ns)), || TcpListener::bind(addr)).unwrap().unwrap();
    listener.set_nonblocking(true).unwrap();
    listener
}

/// A UDP socket bound inside `ns`, with a bounded read timeout.
pub fn udp_socket(ns: &str, addr: &str) -> UdpSocket {
    let addr: SocketAddr = addr.parse().expect("a socket address");
    let socket = in_namespace(Some(&netns_path(ns)), || UdpSocket::bind(addr)).unwrap().unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    socket
}

/// Connects (tcp) or sends a datagram (udp) from inside `ns` as `uid`, in a child process that
/// drops to that user, and says "hello".
pub fn send_as(ns: &str, uid: u32, proto: &str, target: &str) {
    let (host, port) = target.rsplit_once(':').expect("host:port");
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let script = format!("exec 3<>/dev/{proto}/{host}/{port} && echo hello >&3");
    let status = in_namespace(Some(&netns_path(ns)), || {
        Command::new("bash").args(["-c", &script]).uid(uid).gid(uid).status()
    })
    .unwrap()
    .unwrap();
    assert!(status.success(), "uid {uid} could not reach {target} over {proto}");
}

pub fn connect_as(ns: &str, uid: u32, target: &str) {
    send_as(ns, uid, "tcp", target);
}

/// Whether the "hello" datagram arrives on `socket` (bounded wait).
pub fn received(socket: &UdpSocket) -> bool {
    let mut buf = [0u8; 16];
    matches!(socket.recv_from(&mut buf), Ok((n, _)) if &buf[..n] == b"hello\n")
}

/// Waits (bounded) for a connection on one of `listeners`; returns its index and where it was
/// headed before any redirect.
pub fn accepted(listeners: &[&TcpListener]) -> (usize, SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        for (i, l) in listeners.iter().enumerate() {
            if let Ok((stream, _)) = l.accept() {
                let local = stream.local_addr().unwrap();
                // A connection that was not redirected has no NAT entry.
                return (i, original_destination(&stream).unwrap_or(local));
            }
        }
        assert!(Instant::now() < deadline, "no listener got the connection");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A copy of a binary that any user can run, in a fresh directory removed on drop. Tests that
/// drop to the proxy's UID need it: the build directory may sit where that user cannot reach
/// (CI keeps it under /root, which is 0700).
pub struct RunnableByAnyone {
    dir: PathBuf,
    pub path: PathBuf,
}

impl RunnableByAnyone {
    pub fn copy(binary: &str) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(unique_name("trellis-bin"));
        std::fs::create_dir(&dir).unwrap();
        // Set after creating, so the umask cannot narrow it.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let name = Path::new(binary).file_name().expect("a binary path");
        let path = dir.join(name);
        std::fs::copy(binary, &path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self { dir, path }
    }
}

impl Drop for RunnableByAnyone {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An HTTP GET to 127.0.0.1:`port` from inside the namespace (by the test itself, as root, to
/// loopback: not captured): the whole answer, or empty.
pub fn http_get_in(ns: &str, port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    in_namespace(Some(&netns_path(ns)), || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok::<_, std::io::Error>(out)
    })
    .ok()
    .and_then(Result::ok)
    .unwrap_or_default()
}
