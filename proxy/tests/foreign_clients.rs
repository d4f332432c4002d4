//! The server side of mesh TLS as clients we did not write see it: OpenSSL (`openssl s_client`)
//! and Python's `ssl` (also OpenSSL, through another API) call a STRICT proxy's inbound port with
//! a mesh certificate and get through, verify the server's SPIFFE certificate against the mesh
//! root, and are refused without a certificate, with another CA's, and in plaintext.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{TestProxy, Upstream};
use trellis_identity::SpiffeId;
use trellis_identity::ca::{CaMaterial, CertificateAuthority};
use trellis_identity::cert::WorkloadCertificate;
use trellis_identity::client::new_key_and_csr;
use trellis_identity::tls::MeshTls;

const CLIENT_ID: &str = "spiffe://cluster.local/ns/test/sa/frontend";
const SERVER_ID: &str = "spiffe://cluster.local/ns/test/sa/web";

/// A workload certificate from `ca`, as PEM files in `dir`: `<name>.pem` (chain without the
/// root) and `<name>.key`. Also the certificate itself.
fn issue(ca: &CertificateAuthority, id: &str, dir: &Path, name: &str) -> WorkloadCertificate {
    let id = SpiffeId::parse(id).unwrap();
    let (key, csr) = new_key_and_csr(&id).unwrap();
    let chain = ca.sign_workload(&csr, &id, 3600).unwrap();
    let without_root = &chain[..chain.len() - 1];
    std::fs::write(dir.join(format!("{name}.pem")), without_root.concat()).unwrap();
    let key_pem = rcgen::KeyPair::try_from(key.as_slice()).unwrap().serialize_pem();
    std::fs::write(dir.join(format!("{name}.key")), key_pem).unwrap();
    WorkloadCertificate::from_chain(chain, key).unwrap()
}

struct Server {
    app: Upstream,
    proxy: TestProxy,
    dir: tempfile::TempDir,
}

/// A STRICT proxy in front of the app, its mesh root in `root.pem`, a mesh client certificate
/// in `client.pem`/`client.key` and one from another CA in `stranger.pem`/`stranger.key`.
async fn strict_server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::new(&CaMaterial::generate_root("cluster.local").unwrap()).unwrap();
    let other = CertificateAuthority::new(&CaMaterial::generate_root("cluster.local").unwrap()).unwrap();
    std::fs::write(dir.path().join("root.pem"), ca.root_pem()).unwrap();
    let tls = MeshTls::new("cluster.local");
    tls.install(issue(&ca, SERVER_ID, dir.path(), "server")).unwrap();
    issue(&ca, CLIENT_ID, dir.path(), "client");
    issue(&other, CLIENT_ID, dir.path(), "stranger");
    let app = Upstream::start("web").await;
    let proxy = TestProxy::start_with_identity(
        "inboundTls: { mode: STRICT }\n",
        true,
        Some(trellis_proxy::Identity { tls, renewal: None }),
    )
    .await;
    Server { app, proxy, dir }
}

/// `openssl s_client` to the server's inbound port with `cert` (a name in the directory) or
/// none, sending one HTTP/1.1 request for the app: what it printed, both streams.
fn openssl(server: &Server, cert: Option<&str>) -> String {
    let dir = server.dir.path();
    let mut command = Command::new("openssl");
    command
        .args([
            "s_client",
            "-connect",
            &server.proxy.inbound().to_string(),
            "-alpn",
            "istio-http/1.1,istio,http/1.1",
        ])
        .args(["-CAfile", &dir.join("root.pem").display().to_string(), "-verify_return_error", "-ign_eof"]);
    if let Some(name) = cert {
        command
            .args(["-cert", &dir.join(format!("{name}.pem")).display().to_string()])
            .args(["-key", &dir.join(format!("{name}.key")).display().to_string()]);
    }
    let mut child =
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let request =
        format!("GET / HTTP/1.1\r\nhost: web:{}\r\nconnection: close\r\n\r\n", server.app.addr.port());
    use std::io::Write;
    let _ = child.stdin.take().unwrap().write_all(request.as_bytes());
    // s_client ends when the server closes; a server that hung would hang the test, so bound it.
    let output = wait_bounded(child);
    format!("{}\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn wait_bounded(mut child: std::process::Child) -> std::process::Output {
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > std::time::Duration::from_secs(20) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn have(program: &str) -> bool {
    Command::new(program).arg("--version").output().is_ok_and(|o| o.status.success())
        || Command::new(program).arg("version").output().is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_client_gets_through_with_a_mesh_certificate_only() {
    if !have("openssl") {
        eprintln!("skipped: openssl is not installed");
        return;
    }
    let server = strict_server().await;
    let output = tokio::task::block_in_place(|| openssl(&server, Some("client")));
    assert!(output.contains("HTTP/1.1 200"), "{output}");
    assert!(output.contains("Verify return code: 0 (ok)"), "OpenSSL verified the server's chain: {output}");
    assert!(
        output.contains("ALPN protocol: istio-http/1.1") || output.contains("ALPN protocol: http/1.1"),
        "{output}"
    );
    let xfcc = server.app.last().headers.get("x-forwarded-client-cert").cloned().unwrap_or_default();
    assert!(xfcc.ends_with(&format!("URI={CLIENT_ID}")), "{xfcc}");

    for cert in [None, Some("stranger")] {
        let output = tokio::task::block_in_place(|| openssl(&server, cert));
        assert!(!output.contains("HTTP/1.1 200"), "{cert:?} got through: {output}");
    }
    assert_eq!(server.app.count(), 1, "only the mesh client reached the app");
}

/// Python's `ssl`: mutual TLS with the mesh certificate, the server's URI SAN as Python reads
/// it, and refusals. Prints one line per case.
const PYTHON: &str = r#"
import socket, ssl, sys
host, port, dir, authority = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
request = f"GET / HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\n\r\n".encode()

def call(cert):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # mesh certificates carry a SPIFFE ID, not a host name
    context.load_verify_locations(f"{dir}/root.pem")
    context.set_alpn_protocols(["istio-http/1.1", "istio", "http/1.1"])
    if cert:
        context.load_cert_chain(f"{dir}/{cert}.pem", f"{dir}/{cert}.key")
    try:
        with socket.create_connection((host, port), timeout=10) as raw:
            with context.wrap_socket(raw) as tls:
                san = [v for k, v in tls.getpeercert().get("subjectAltName", ()) if k == "URI"]
                tls.sendall(request)
                answer = b""
                while chunk := tls.recv(65536):
                    answer += chunk
                status = answer.split(b"\r\n", 1)[0].decode() or "refused closed"
                return f"{status} server={','.join(san)}"
    except (ssl.SSLError, ConnectionError, OSError) as e:
        return f"refused {type(e).__name__}"

def plaintext():
    with socket.create_connection((host, port), timeout=10) as raw:
        raw.sendall(request)
        try:
            answer = raw.recv(65536)
        except ConnectionError as e:
            return f"refused {type(e).__name__}"
        return "refused closed" if not answer else answer.split(b"\r\n", 1)[0].decode()

print("mesh:", call("client"))
print("none:", call(None))
print("stranger:", call("stranger"))
print("plaintext:", plaintext())
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_ssl_gets_through_with_a_mesh_certificate_only() {
    if !have("python3") {
        eprintln!("skipped: python3 is not installed");
        return;
    }
    let server = strict_server().await;
    let inbound = server.proxy.inbound();
    let authority = format!("web:{}", server.app.addr.port());
    let output = tokio::task::block_in_place(|| {
        let child = Command::new("python3")
            .args(["-c", PYTHON, &inbound.ip().to_string(), &inbound.port().to_string()])
            .arg(server.dir.path())
            .arg(&authority)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_bounded(child)
    });
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let line = |case: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{case}: ")))
            .unwrap_or_else(|| panic!("no {case} line: {text}\n{}", String::from_utf8_lossy(&output.stderr)))
            .to_owned()
    };
    assert_eq!(line("mesh"), format!("HTTP/1.1 200 OK server={SERVER_ID}"));
    for case in ["none", "stranger", "plaintext"] {
        assert!(line(case).starts_with("refused"), "{case}: {text}");
    }
    assert_eq!(server.app.count(), 1, "only the mesh client reached the app");
}
