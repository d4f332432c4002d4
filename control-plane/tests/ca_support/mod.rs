//! Shared by the CA tests: `trellisd` as a child process (its addresses from its first line,
//! its log kept), and calls to its CA over real TLS with tonic's client.

#![allow(dead_code)]

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trellis_identity::SpiffeId;
use trellis_identity::pb::IstioCertificateRequest;
use trellis_identity::pb::istio_certificate_service_client::IstioCertificateServiceClient;

/// Bounds every wait of these tests; none is a bare sleep.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// `trellisd` as a child process, killed (by pid) when dropped.
pub struct Trellisd {
    child: Child,
    pub xds: SocketAddr,
    pub monitoring: SocketAddr,
    pub secure: SocketAddr,
    logs: Arc<Mutex<String>>,
    _config: Option<tempfile::TempDir>,
}

impl Trellisd {
    /// File mode (an empty config directory) with `args` added.
    pub fn start<S: Into<OsString> + Clone>(args: &[S]) -> Trellisd {
        let config = tempfile::tempdir().unwrap();
        let mut all: Vec<OsString> = vec!["--config-dir".into(), config.path().into()];
        all.extend(args.iter().cloned().map(Into::into));
        let mut trellisd = Trellisd::start_with(&all, &[]);
        trellisd._config = Some(config);
        trellisd
    }

    /// Exactly `args` (plus local addresses and the log level) and `env`.
    pub fn start_with(args: &[OsString], env: &[(&str, &str)]) -> Trellisd {
        let mut child = trellisd(args, env).spawn().unwrap();
        let logs = keep_logs(&mut child);
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(DEADLINE).unwrap_or_default();
        // "trellisd listening: xds A monitoring B secure C"
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.get(6) != Some(&"secure") {
            let _ = child.kill();
            let _ = child.wait();
            panic!("unexpected first line {line:?}; log:\n{}", logs.lock().unwrap());
        }
        Trellisd {
            xds: words[3].parse().unwrap(),
            monitoring: words[5].parse().unwrap(),
            secure: words[7].parse().unwrap(),
            child,
            logs,
            _config: None,
        }
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// The Prometheus text of its monitoring port.
    pub async fn metrics(&self) -> String {
        let mut tcp = tokio::net::TcpStream::connect(self.monitoring).await.unwrap();
        tcp.write_all(b"GET /metrics HTTP/1.0\r\nHost: trellisd\r\n\r\n").await.unwrap();
        let mut text = String::new();
        tokio::time::timeout(DEADLINE, tcp.read_to_string(&mut text)).await.unwrap().unwrap();
        text
    }

    /// One sample's value (0 when absent), by its name with labels as printed.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0.0)
    }
}

impl Drop for Trellisd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn trellisd(args: &[OsString], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_trellisd"));
    command
        .args(["--xds-address", "127.0.0.1:0", "--monitoring-address", "127.0.0.1:0", "--log-level", "info"])
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Copies the child's standard error to the test's (seen when a test fails) and keeps it.
fn keep_logs(child: &mut Child) -> Arc<Mutex<String>> {
    let logs = Arc::new(Mutex::new(String::new()));
    let stderr = child.stderr.take().unwrap();
    let kept = logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            eprintln!("trellisd: {line}");
            let mut logs = kept.lock().unwrap();
            logs.push_str(&line);
            logs.push('\n');
        }
    });
    logs
}

/// Runs `trellisd` (file mode, with `args`) expecting it to stop before serving: its
/// standard error.
pub fn start_fails(args: &[&std::ffi::OsStr]) -> String {
    let config = tempfile::tempdir().unwrap();
    let mut all: Vec<OsString> = vec!["--config-dir".into(), config.path().into()];
    all.extend(args.iter().map(|a| a.to_os_string()));
    let mut child = trellisd(&all, &[]).spawn().unwrap();
    let logs = keep_logs(&mut child);
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(!status.success(), "trellisd {all:?} exited successfully");
            break;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("trellisd {all:?} still running after {DEADLINE:?}:\n{}", logs.lock().unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // The log thread ends with the pipe; give it the last lines.
    let start = Instant::now();
    while Arc::strong_count(&logs) > 1 && start.elapsed() < DEADLINE {
        std::thread::sleep(Duration::from_millis(10));
    }
    logs.lock().unwrap().clone()
}

/// Waits until `check` holds, at most `DEADLINE`.
pub async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < DEADLINE, "not {what} within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `eventually` for a condition that needs no awaiting.
pub async fn eventually_sync(what: &str, check: impl Fn() -> bool) {
    eventually(what, async || check()).await
}

/// A proxy in this process that takes its configuration from trellisd's plaintext xDS at
/// `xds`, every port on `ip` (port 0), as `node`.
pub fn xds_proxy(
    xds: SocketAddr,
    ip: &str,
    node: trellis_xds::types::ProxyNode,
    explicit_inbound: bool,
    metrics: trellis_proxy::metrics::Metrics,
) -> trellis_proxy::Running {
    let local = SocketAddr::new(ip.parse().expect("an IP address"), 0);
    let options = trellis_proxy::Options {
        outbound: vec![local],
        inbound: vec![local],
        admin: vec![local],
        readiness: vec![local],
        stats: vec![local],
        config_file: None,
        xds: Some(trellis_proxy::xds::XdsOptions { address: format!("http://{xds}"), node, secure: None }),
        explicit_inbound,
        identity: None,
    };
    trellis_proxy::start(options, metrics, None).expect("the proxy starts")
}

/// A fresh key's CSR naming `uri` (what the workload claims; the CA must not care).
pub fn csr(uri: &str) -> String {
    trellis_identity::client::new_key_and_csr(&SpiffeId::parse(uri).unwrap()).unwrap().1
}

/// A raw CreateCertificate over TLS to `secure`, trusting `root`, with `authorization` as
/// given.
pub async fn create(
    secure: SocketAddr,
    root: &str,
    authorization: Option<&str>,
    csr: String,
    validity_duration: i64,
) -> Result<Vec<String>, tonic::Status> {
    let channel = trellis_identity::client::tls_channel(&secure.to_string(), root, None).unwrap();
    let mut client = IstioCertificateServiceClient::new(channel).max_encoding_message_size(8 << 20);
    let mut request = tonic::Request::new(IstioCertificateRequest { csr, validity_duration });
    if let Some(value) = authorization {
        request.metadata_mut().insert("authorization", value.parse().unwrap());
    }
    request.set_timeout(Duration::from_secs(10));
    let answer =
        tokio::time::timeout(DEADLINE, client.create_certificate(request)).await.expect("an answer in time");
    answer.map(|r| r.into_inner().cert_chain)
}

/// The identity and lifetime of a chain's leaf.
pub fn leaf(chain: &[String]) -> trellis_identity::cert::LeafInfo {
    let der = pem::parse(&chain[0]).unwrap().into_contents();
    trellis_identity::cert::parse_leaf(&der).unwrap()
}

pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Istio's `cacerts` layout of `material` in `dir`.
pub fn write_cacerts(dir: &Path, material: &trellis_identity::ca::CaMaterial) {
    for (file, text) in [
        ("ca-cert.pem", &material.ca_cert),
        ("ca-key.pem", &material.ca_key),
        ("root-cert.pem", &material.root_cert),
        ("cert-chain.pem", &material.cert_chain),
    ] {
        write_atomically(&dir.join(file), text);
    }
}
