//! The real `trellis-injector` binary over real TLS: a CA and serving certificates made with
//! rcgen, a client that verifies the CA, bad requests, and a certificate swap that new
//! connections see while the listener and existing connections stay up.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
}

fn make_ca() -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, "trellis test CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca { der: cert.der().clone(), issuer: Issuer::new(params, key) }
}

/// A serving certificate for 127.0.0.1 and localhost; `serial` makes each one distinct.
fn make_serving_cert(ca: &Ca, serial: &str) -> (String, String, CertificateDer<'static>) {
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, format!("trellis-injector {serial}"));
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().clone())
}

/// Replaces a file in one step, as Kubernetes' Secret volume does, so the reader never sees
/// half a file.
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

struct Injector {
    child: Child,
    addr: String,
    _stdout: BufReader<std::process::ChildStdout>,
}

impl Drop for Injector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_injector(dir: &Path) -> Injector {
    let mut child = Command::new(env!("CARGO_BIN_EXE_trellis-injector"))
        .args(["--listen", "127.0.0.1:0", "--cert-reload-interval-ms", "50", "--client-timeout-ms", "1500"])
        .arg("--tls-cert")
        .arg(dir.join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.join("tls.key"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start trellis-injector");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    // Bounded: the process prints this line as soon as it serves, or exits and closes stdout.
    stdout.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    Injector { child, addr, _stdout: stdout }
}

fn client_config(ca: &Ca) -> Arc<rustls::ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.der.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Opens a verified TLS connection; returns the request sender and the certificate served.
async fn connect(
    addr: &str,
    tls: Arc<rustls::ClientConfig>,
) -> (SendRequest<Full<Bytes>>, CertificateDer<'static>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let stream =
        TlsConnector::from(tls).connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
    let served = stream.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    (sender, served)
}

async fn call(
    sender: &mut SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (StatusCode, Vec<u8>) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    // HTTP/1.1 carries one exchange at a time: wait until the previous one is finished.
    sender.ready().await.unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    (status, response.into_body().collect().await.unwrap().to_bytes().to_vec())
}

fn review(api_version: &str, kind: &str, object: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": api_version,
        "kind": "AdmissionReview",
        "request": {
            "uid": "0df28fbd-5f5f-11e8-bc74-36e6bb280816",
            "kind": {"group": if kind == "Pod" { "" } else { "apps" }, "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "admin"},
            "object": object
        }
    }))
    .unwrap()
}

fn pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "web-", "namespace": "shop", "labels": {"app": "web"}},
        "spec": {"containers": [
            {"name": "web", "image": "nginx", "ports": [{"containerPort": 80}]},
            {"name": "cache", "image": "redis"},
            {"name": "logs", "image": "fluent-bit"}
        ]}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_admissions_over_verified_tls_and_reloads_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = make_ca();
    let (cert1, key1, der1) = make_serving_cert(&ca, "one");
    write_atomically(&dir.path().join("tls.crt"), &cert1);
    write_atomically(&dir.path().join("tls.key"), &key1);
    let injector = start_injector(dir.path());
    let tls = client_config(&ca);

    let (mut conn, served) = connect(&injector.addr, tls.clone()).await;
    assert_eq!(served, der1);

    // A pod is injected: the answer carries the uid and a JSONPatch.
    let (status, body) =
        call(&mut conn, "POST", "/inject", "application/json", review("admission.k8s.io/v1", "Pod", pod()))
            .await;
    assert_eq!(status, StatusCode::OK);
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["response"]["uid"], "0df28fbd-5f5f-11e8-bc74-36e6bb280816");
    assert_eq!(answer["response"]["allowed"], true);
    assert_eq!(answer["response"]["patchType"], "JSONPatch");

    // v1beta1 is answered in v1beta1.
    let (status, body) = call(
        &mut conn,
        "POST",
        "/inject",
        "application/json",
        review("admission.k8s.io/v1beta1", "Pod", pod()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["apiVersion"], "admission.k8s.io/v1beta1");

    // Not a pod: allowed, nothing changed.
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}});
    let (status, body) = call(
        &mut conn,
        "POST",
        "/inject",
        "application/json",
        review("admission.k8s.io/v1", "Deployment", deployment),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"].get("patch").is_none());

    // An invalid annotation is denied with a message naming it.
    let mut bad = pod();
    bad["metadata"]["annotations"] = json!({"traffic.sidecar.istio.io/excludeOutboundPorts": "53,dns"});
    let (_, body) =
        call(&mut conn, "POST", "/inject", "application/json", review("admission.k8s.io/v1", "Pod", bad))
            .await;
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["response"]["allowed"], false);
    let message = answer["response"]["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("traffic.sidecar.istio.io/excludeOutboundPorts") && message.contains("\"dns\""),
        "{message}"
    );

    // Client mistakes: 415 and 400 with a message, never a 5xx, and the connection survives.
    let (status, _) = call(&mut conn, "POST", "/inject", "text/plain", b"{}".to_vec()).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (status, body) = call(&mut conn, "POST", "/inject", "application/json", b"{not json".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("malformed AdmissionReview"));
    let (status, _) = call(
        &mut conn,
        "POST",
        "/inject",
        "application/json",
        br#"{"apiVersion":"v1","kind":"Pod"}"#.to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = call(
        &mut conn,
        "POST",
        "/inject",
        "application/json",
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (mut big_conn, _) = connect(&injector.addr, tls.clone()).await;
    let (status, body) =
        call(&mut big_conn, "POST", "/inject", "application/json", vec![b' '; 11 * 1024 * 1024]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{}", String::from_utf8_lossy(&body));

    let (status, _) = call(&mut conn, "GET", "/healthz", "text/plain", Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = call(&mut conn, "GET", "/metrics", "text/plain", Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    let metrics = String::from_utf8_lossy(&body);
    for line in [
        "trellis_injector_injections_total 2",
        "trellis_injector_denials_total 1",
        "trellis_injector_bad_requests_total 5",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    assert!(metrics.contains("trellis_injector_request_duration_seconds_count"));

    // Swap the certificate: new connections get the new one, the old connection still works.
    let (cert2, key2, der2) = make_serving_cert(&ca, "two");
    write_atomically(&dir.path().join("tls.key"), &key2);
    write_atomically(&dir.path().join("tls.crt"), &cert2);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, served) = connect(&injector.addr, tls.clone()).await;
        if served == der2 {
            break;
        }
        assert!(Instant::now() < deadline, "new connections still get the old certificate after 10s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _) = call(&mut conn, "GET", "/healthz", "text/plain", Vec::new()).await;
    assert_eq!(status, StatusCode::OK, "a connection opened before the swap keeps working");

    // A client that trickles its headers (slowloris) is disconnected; others are unaffected.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tcp = TcpStream::connect(&injector.addr).await.unwrap();
        let mut slow = TlsConnector::from(tls.clone())
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        slow.write_all(b"POST /inject HTTP/1.1\r\nhost: localhost\r\n").await.unwrap();
        let started = Instant::now();
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "a client that never finishes its headers is still connected after 10s");
        assert!(started.elapsed() >= Duration::from_millis(1400), "closed before the client timeout");
        let (mut fresh, _) = connect(&injector.addr, tls.clone()).await;
        let (status, _) = call(&mut fresh, "GET", "/healthz", "text/plain", Vec::new()).await;
        assert_eq!(status, StatusCode::OK);
    }

    // A broken pair is not loaded: the last good certificate keeps being served.
    write_atomically(&dir.path().join("tls.crt"), "not a certificate");
    let (_, served) = connect(&injector.addr, tls.clone()).await;
    assert_eq!(served, der2);
}

#[test]
fn refuses_to_start_without_a_usable_certificate() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tls.crt"), "garbage").unwrap();
    std::fs::write(dir.path().join("tls.key"), "garbage").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_trellis-injector"))
        .args(["--listen", "127.0.0.1:0"])
        .arg("--tls-cert")
        .arg(dir.path().join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.path().join("tls.key"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("certificate"), "{stderr}");
}
