//! The mesh's identities, as a cluster would hand them out: trellisd's CA authenticates each
//! proxy's certificate request by a service-account token (Kubernetes' static token file, one
//! random token per pod, bound to the pod's namespace and service account), the kubelet's part —
//! the projected token and the `istio-ca-root-cert` ConfigMap, mounted as files — is played by
//! the demo, and once the proxies are ready each one's certificate is read back from its admin
//! port (`/certs`). Then a plaintext client from outside the mesh knocks on a pod's inbound port,
//! and the proxy's own counter says whether it was refused.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trellis_proxy_init::apply::in_namespace;

use super::metrics;
use super::plan::{PodPlan, Probe};

/// Where a pod's mounted secrets live in the run directory.
pub fn pod_dir(run_dir: &Path, pod: &str) -> PathBuf {
    run_dir.join("pods").join(pod)
}

pub fn token_file(run_dir: &Path, pod: &str) -> PathBuf {
    pod_dir(run_dir, pod).join("istio-token")
}

pub fn root_cert_file(run_dir: &Path, pod: &str) -> PathBuf {
    pod_dir(run_dir, pod).join("root-cert.pem")
}

/// The CA's files: the token file it reads and the root it writes.
pub fn ca_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("ca")
}

/// A token nobody can guess: 32 random bytes, hex.
fn random_token() -> String {
    rand::random::<[u8; 32]>().iter().map(|b| format!("{b:02x}")).collect()
}

/// One line of Kubernetes' static token file for a pod's service account.
fn token_line(token: &str, pod: &PodPlan) -> String {
    format!(
        "{token},system:serviceaccount:{ns}:{sa},trellis-demo-{pod},\"system:serviceaccounts,system:serviceaccounts:{ns}\"\n",
        ns = pod.namespace,
        sa = pod.service_account,
        pod = pod.name,
    )
}

/// Writes the CA's token file (only this user reads it) and each pod's token (only its proxy's
/// user, `owner`, reads it: not the app); returns the token file's path.
pub fn write_tokens(run_dir: &Path, pods: &[PodPlan], owner: Option<u32>) -> Result<PathBuf, String> {
    let dir = ca_dir(run_dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut table = String::new();
    for pod in pods {
        let token = random_token();
        table.push_str(&token_line(&token, pod));
        let path = token_file(run_dir, &pod.name);
        private(&path, &format!("{token}\n"), owner)?;
    }
    let path = dir.join("tokens.csv");
    private(&path, &table, None)?;
    Ok(path)
}

/// A file only `owner` (or this user) can read.
fn private(path: &Path, text: &str, owner: Option<u32>) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("{}: {e}", path.display());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
    }
    let _ = std::fs::remove_file(path);
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(fail)?;
    file.write_all(text.as_bytes()).map_err(fail)?;
    if let Some(id) = owner {
        std::os::unix::fs::chown(path, Some(id), Some(id)).map_err(fail)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o400)).map_err(fail)?;
    }
    Ok(())
}

/// The root trellisd wrote, given to each pod as its `istio-ca-root-cert` ConfigMap would be.
pub fn mount_root(run_dir: &Path, root_file: &Path, pods: &[PodPlan]) -> Result<(), String> {
    let root = std::fs::read_to_string(root_file).map_err(|e| format!("{}: {e}", root_file.display()))?;
    for pod in pods {
        let path = root_cert_file(run_dir, &pod.name);
        std::fs::write(&path, &root).map_err(|e| format!("{}: {e}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// A proxy's certificate, as its admin port's `/certs` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Certificate {
    pub identity: String,
    pub seconds_until_expiration: u64,
}

/// Reads `/certs` from a proxy's admin port, which listens only inside its pod: from within the
/// pod's network namespace when it has one.
pub fn certificate(netns: Option<&Path>, admin: SocketAddr) -> Result<Certificate, String> {
    let body = in_namespace(netns, || blocking_get(admin, "/certs")).map_err(|e| e.to_string())??;
    let value: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("{admin}/certs: {e}"))?;
    let cert = &value["certificates"][0];
    let identity = cert["identity"].as_str().ok_or_else(|| {
        format!("{admin}/certs: no certificate ({})", value["note"].as_str().unwrap_or("no note"))
    })?;
    Ok(Certificate {
        identity: identity.to_owned(),
        seconds_until_expiration: cert["seconds_until_expiration"].as_u64().unwrap_or(0),
    })
}

/// One GET on a plain socket; the body of a 200 answer.
fn blocking_get(addr: SocketAddr, path: &str) -> Result<Vec<u8>, String> {
    let fail = |e: std::io::Error| format!("{addr}{path}: {e}");
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map_err(fail)?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).map_err(fail)?;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .map_err(fail)?;
    let mut answer = Vec::new();
    stream.take(1 << 20).read_to_end(&mut answer).map_err(fail)?;
    let end =
        answer.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| format!("{addr}{path}: no answer"))?;
    let head = String::from_utf8_lossy(&answer[..end]);
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("{addr}{path}: {}", head.lines().next().unwrap_or_default()));
    }
    Ok(answer[end + 4..].to_vec())
}

/// What the plaintext client from outside the mesh saw, and what the pod's proxy counted.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ProbeReport {
    pub pod: String,
    /// `inventory:8080`.
    pub target: String,
    pub address: String,
    /// Closed without an answer, and counted as refused by the pod's proxy.
    pub refused: bool,
    /// What the client saw: `closed without an answer`, `answered 200`, ...
    pub outcome: String,
    /// The proxy's `trellis_inbound_connections_refused_total` after the attempt, by reason.
    pub proxy_refused: BTreeMap<String, u64>,
    /// How many of those this attempt added.
    pub proxy_refused_added: u64,
}

impl ProbeReport {
    /// One line for people.
    pub fn line(&self) -> String {
        let counted: u64 = self.proxy_refused.values().sum();
        let reasons: Vec<String> = self.proxy_refused.iter().map(|(r, n)| format!("{r} {n}")).collect();
        if self.refused {
            format!(
                "plaintext client outside the mesh → {} ({}): refused (STRICT mutual TLS): {}; {}'s proxy counted {} \
                 refused connection{} (trellis_inbound_connections_refused_total: {})",
                self.target,
                self.address,
                self.outcome,
                self.pod,
                counted,
                if counted == 1 { "" } else { "s" },
                reasons.join(", ")
            )
        } else {
            format!(
                "plaintext client outside the mesh → {} ({}): NOT refused: {}; {}'s proxy counted {} refused \
                 connections",
                self.target, self.address, self.outcome, self.pod, counted
            )
        }
    }

    /// A few words for the live table's title.
    pub fn short(&self) -> String {
        if self.refused {
            format!(
                "plaintext client outside the mesh → {}: refused ({}'s proxy counted {})",
                self.target,
                self.pod,
                self.proxy_refused.values().sum::<u64>()
            )
        } else {
            format!("plaintext client outside the mesh → {}: not refused ({})", self.target, self.outcome)
        }
    }
}

/// How long the plaintext client waits for an answer, and the proxy's counter for the refusal.
const PROBE_WAIT: Duration = Duration::from_secs(3);

/// A plaintext HTTP request, straight to the probe's pod (no sidecar on this side), and the
/// pod's proxy's refused-connections counter before and after.
pub async fn probe(probe: &Probe, stats: SocketAddr, pod: &PodPlan) -> ProbeReport {
    let refused_now = async || metrics::scrape(stats).await.map(|s| s.refused_total() as u64);
    let before = refused_now().await.unwrap_or(0);
    let outcome = match tokio::time::timeout(PROBE_WAIT, knock(probe)).await {
        Ok(outcome) => outcome,
        Err(_) => Knock::Other(format!("no answer within {}s", PROBE_WAIT.as_secs())),
    };
    // The proxy counts the refusal before it closes the connection; a moment's grace all the same.
    let deadline = tokio::time::Instant::now() + PROBE_WAIT;
    let mut after = metrics::scrape(stats).await.unwrap_or_default();
    let closed = matches!(outcome, Knock::Closed(_));
    while closed && (after.refused_total() as u64) <= before && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = metrics::scrape(stats).await.unwrap_or_default();
    }
    let added = (after.refused_total() as u64).saturating_sub(before);
    let (closed, outcome) = match outcome {
        Knock::Closed(how) => (true, how),
        Knock::Answered(status) => (false, format!("answered {status}")),
        Knock::Other(what) => (false, what),
    };
    ProbeReport {
        pod: pod.name.clone(),
        target: probe.shown.clone(),
        address: probe.target.to_string(),
        refused: closed && added > 0,
        outcome,
        proxy_refused: after.refused.iter().map(|(r, n)| (r.clone(), *n as u64)).collect(),
        proxy_refused_added: added,
    }
}

enum Knock {
    /// The connection ended without a byte of answer.
    Closed(String),
    Answered(String),
    Other(String),
}

async fn knock(probe: &Probe) -> Knock {
    let mut stream = match tokio::net::TcpStream::connect(probe.target).await {
        Ok(stream) => stream,
        Err(e) => return Knock::Other(format!("cannot connect: {e}")),
    };
    let request = format!("GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", probe.authority);
    if let Err(e) = stream.write_all(request.as_bytes()).await {
        return Knock::Closed(format!("the connection ended before the request was sent ({e})"));
    }
    let mut head = [0u8; 12];
    let mut got = 0;
    loop {
        match stream.read(&mut head[got..]).await {
            Ok(0) if got == 0 => {
                return Knock::Closed("the connection was closed without an answer".to_owned());
            }
            Ok(0) => break,
            Ok(n) => {
                got += n;
                if got == head.len() {
                    break;
                }
            }
            Err(e) if got == 0 && e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Knock::Closed("the connection was reset without an answer".to_owned());
            }
            Err(e) if got == 0 => {
                return Knock::Closed(format!("the connection ended without an answer ({e})"));
            }
            Err(e) => return Knock::Other(format!("reading the answer: {e}")),
        }
    }
    let head = String::from_utf8_lossy(&head[..got]);
    match head.strip_prefix("HTTP/1.1 ").or_else(|| head.strip_prefix("HTTP/1.0 ")) {
        Some(status) => Knock::Answered(status.trim().to_owned()),
        None => Knock::Other(format!("answered {head:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, sa: &str) -> PodPlan {
        PodPlan {
            name: name.into(),
            namespace: "shop".into(),
            labels: BTreeMap::new(),
            service_account: sa.into(),
            spiffe_id: format!("spiffe://cluster.local/ns/shop/sa/{sa}"),
            ip: "127.0.0.1".parse().unwrap(),
            app_port: 8080,
            redirect_args: Vec::new(),
            proxy_env: Vec::new(),
            proxy_args: Vec::new(),
            app_args: Vec::new(),
            app_env: Vec::new(),
        }
    }

    #[test]
    fn one_private_token_per_pod_bound_to_its_service_account() {
        let dir = tempfile::tempdir().unwrap();
        let pods =
            [pod("catalog-v1", "catalog"), pod("catalog-v2", "catalog"), pod("inventory", "inventory")];
        let table = write_tokens(dir.path(), &pods, None).unwrap();
        let text = std::fs::read_to_string(&table).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        let mut tokens = Vec::new();
        for (line, pod) in lines.iter().zip(&pods) {
            let (token, rest) = line.split_once(',').unwrap();
            assert_eq!(token.len(), 64);
            assert_eq!(
                rest,
                format!(
                    "system:serviceaccount:shop:{},trellis-demo-{},\"system:serviceaccounts,system:serviceaccounts:shop\"",
                    pod.service_account, pod.name
                )
            );
            let mounted = std::fs::read_to_string(token_file(dir.path(), &pod.name)).unwrap();
            assert_eq!(mounted.trim(), token);
            tokens.push(token.to_owned());
        }
        tokens.dedup();
        assert_eq!(tokens.len(), 3, "a token per pod");
        for path in [table, token_file(dir.path(), "inventory")] {
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
        }
    }

    #[tokio::test]
    async fn a_probe_that_is_answered_is_not_a_refusal() {
        // A plaintext server that answers, and a metrics page that counts nothing.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                });
            }
        });
        let target =
            Probe { pod: "inventory".into(), target: addr, authority: "x:1".into(), shown: "x:1".into() };
        let report = probe(&target, addr, &pod("inventory", "inventory")).await;
        assert!(!report.refused, "{report:?}");
        assert_eq!(report.outcome, "answered 200");
        assert!(report.line().contains("NOT refused"), "{}", report.line());
    }

    #[tokio::test]
    async fn a_connection_closed_unanswered_and_counted_is_a_refusal() {
        // Closes every connection after reading the request; its metrics page (same port,
        // told apart by the request) counts one more refusal per closed connection.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let refused = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let refused = refused.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if buf[..n].starts_with(b"GET /stats/prometheus") {
                        let n = refused.load(std::sync::atomic::Ordering::SeqCst);
                        let body = format!(
                            "trellis_inbound_connections_refused_total{{reason=\"plaintext\"}} {n}\n"
                        );
                        let _ = s
                            .write_all(
                                format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len())
                                    .as_bytes(),
                            )
                            .await;
                    } else {
                        refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                });
            }
        });
        let target =
            Probe { pod: "inventory".into(), target: addr, authority: "x:1".into(), shown: "x:1".into() };
        let report = probe(&target, addr, &pod("inventory", "inventory")).await;
        assert!(report.refused, "{report:?}");
        assert_eq!(report.proxy_refused_added, 1);
        assert_eq!(report.proxy_refused, BTreeMap::from([("plaintext".to_owned(), 1)]));
        assert!(report.line().contains("refused (STRICT mutual TLS)"), "{}", report.line());
    }
}
