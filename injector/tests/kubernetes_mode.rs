//! Kubernetes mode against a thin stand-in for the API server (the only fake: a real API server
//! cannot run here). The injector's real kube-rs client code path is used: it adds its CA to the
//! webhook configuration, a second replica adds its own without removing the first, and a CA
//! bundle overwritten by someone else is repaired.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::broadcast;
use tokio_rustls::TlsConnector;

const COLLECTION: &str = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations";
const NAME: &str = "trellis-sidecar-injector";

/// The stored object and a feed of watch events.
struct FakeApi {
    object: Mutex<Value>,
    events: broadcast::Sender<Value>,
}

impl FakeApi {
    fn store(&self, mut object: Value) -> Value {
        let mut current = self.object.lock().unwrap();
        let rv = current["metadata"]["resourceVersion"].as_str().unwrap().parse::<u64>().unwrap() + 1;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        *current = object.clone();
        let _ = self.events.send(json!({"type": "MODIFIED", "object": object}));
        current.clone()
    }

    fn bundles(&self) -> Vec<Vec<u8>> {
        let config: MutatingWebhookConfiguration =
            serde_json::from_value(self.object.lock().unwrap().clone()).unwrap();
        config
            .webhooks
            .unwrap()
            .iter()
            .map(|w| w.client_config.ca_bundle.clone().map(|b| b.0).unwrap_or_default())
            .collect()
    }
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": reason, "code": code});
    (StatusCode::from_u16(code).unwrap(), axum::Json(body)).into_response()
}

async fn list_or_watch(State(api): State<Arc<FakeApi>>, uri: Uri) -> Response {
    let watch = uri.query().unwrap_or_default().split('&').any(|kv| kv == "watch=true" || kv == "watch=1");
    if !watch {
        let object = api.object.lock().unwrap().clone();
        let rv = object["metadata"]["resourceVersion"].clone();
        return axum::Json(json!({
            "kind": "MutatingWebhookConfigurationList", "apiVersion": "admissionregistration.k8s.io/v1",
            "metadata": {"resourceVersion": rv}, "items": [object]
        }))
        .into_response();
    }
    let mut events = api.events.subscribe();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            let mut line = serde_json::to_vec(&event).unwrap();
            line.push(b'\n');
            if tx.send(Ok(Bytes::from(line))).await.is_err() {
                break;
            }
        }
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(ReceiverStream(rx)))
        .unwrap()
}

/// A channel as a body stream, without pulling in a streams crate.
struct ReceiverStream<T>(tokio::sync::mpsc::Receiver<T>);

impl<T> futures_util::Stream for ReceiverStream<T> {
    type Item = T;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}

async fn get_one(State(api): State<Arc<FakeApi>>, UrlPath(name): UrlPath<String>) -> Response {
    if name != NAME {
        return status(404, "NotFound", &format!("mutatingwebhookconfigurations {name:?} not found"));
    }
    axum::Json(api.object.lock().unwrap().clone()).into_response()
}

async fn replace(
    State(api): State<Arc<FakeApi>>,
    UrlPath(name): UrlPath<String>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    if name != NAME {
        return status(404, "NotFound", "not found");
    }
    let current_rv = api.object.lock().unwrap()["metadata"]["resourceVersion"].clone();
    if body["metadata"]["resourceVersion"] != current_rv {
        return status(
            409,
            "Conflict",
            "the object has been modified; please apply your changes to the latest version and try again",
        );
    }
    axum::Json(api.store(body)).into_response()
}

fn webhook(name: &str, service: &str) -> Value {
    json!({
        "name": name,
        "clientConfig": {"service": {"name": service, "namespace": "trellis-system", "path": "/inject", "port": 443}},
        "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
        "sideEffects": "None", "admissionReviewVersions": ["v1"], "failurePolicy": "Fail"
    })
}

async fn start_fake_api() -> (Arc<FakeApi>, String) {
    let object = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": NAME, "resourceVersion": "1", "uid": "b0e4a7a2-5d1c-4f0e-9c3a-1f2e3d4c5b6a"},
        "webhooks": [
            webhook("namespace.sidecar-injector.trellis.io", "trellis-injector"),
            webhook("object.sidecar-injector.trellis.io", "trellis-injector"),
            webhook("someone-else.example.com", "other-webhook")
        ]
    });
    let api = Arc::new(FakeApi { object: Mutex::new(object), events: broadcast::channel(64).0 });
    let app = Router::new()
        .route(COLLECTION, get(list_or_watch))
        .route(&format!("{COLLECTION}/{{name}}"), get(get_one).put(replace))
        .with_state(api.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (api, format!("http://{addr}"))
}

struct Replica {
    child: Child,
    addr: String,
    _stdout: BufReader<ChildStdout>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_replica(dir: &Path, kubeconfig: &Path) -> Replica {
    let mut child = Command::new(env!("CARGO_BIN_EXE_trellis-injector"))
        .args(["--listen", "127.0.0.1:0", "--kubernetes", "--namespace", "trellis-system"])
        .arg("--tls-cert")
        .arg(dir.join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.join("tls.key"))
        .env("KUBECONFIG", kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("{line:?}")).to_owned();
    Replica { child, addr, _stdout: stdout }
}

/// A TLS connection to the replica from a client that trusts only `bundle` and checks the
/// Service's DNS name, as the API server does.
async fn connect_verified(
    bundle: &[u8],
    replica: &Replica,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(bundle).flatten() {
        let _ = roots.add(cert);
    }
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let tcp = TcpStream::connect(&replica.addr).await?;
    let name = ServerName::try_from("trellis-injector.trellis-system.svc").unwrap();
    TlsConnector::from(Arc::new(config)).connect(name, tcp).await
}

async fn trusted_by(bundle: &[u8], replica: &Replica) -> bool {
    connect_verified(bundle, replica).await.is_ok()
}

async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The status line of `GET /readyz`, over TLS verified with `bundle`.
async fn readyz(bundle: &[u8], replica: &Replica) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut tls) = connect_verified(bundle, replica).await else { return String::new() };
    tls.write_all(b"GET /readyz HTTP/1.1\r\nhost: injector\r\nconnection: close\r\n\r\n").await.unwrap();
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    String::from_utf8_lossy(&response).lines().next().unwrap_or_default().to_owned()
}

/// Whether, in one snapshot of the object, both of our webhooks trust every given replica.
/// (Separate reads could each catch a different writer during a fight over the bundle.)
async fn ours_trust(api: &FakeApi, replicas: &[&Replica]) -> bool {
    let bundles = api.bundles();
    for replica in replicas {
        if !(trusted_by(&bundles[0], replica).await && trusted_by(&bundles[1], replica).await) {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_keep_their_cas_in_the_webhook_bundle() {
    let (api, server) = start_fake_api().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"{server}\"}}\nusers:\n- name: test\n  user: {{}}\ncontexts:\n- name: test\n  context: {{cluster: fake, user: test}}\ncurrent-context: test\n"
        ),
    )
    .unwrap();

    let a = start_replica(&dir.path().join("a"), &kubeconfig);
    let only_a = [&a];
    wait_until("replica A's CA is in both of our webhooks", || ours_trust(&api, &only_a)).await;
    assert!(api.bundles()[2].is_empty(), "another team's webhook is left alone");
    let bundle = api.bundles()[0].clone();
    wait_until("replica A reports ready", || async { readyz(&bundle, &a).await == "HTTP/1.1 200 OK" }).await;

    let b = start_replica(&dir.path().join("b"), &kubeconfig);
    let both = [&a, &b];
    wait_until("replica B's CA is added next to A's", || ours_trust(&api, &both)).await;

    // Someone replaces the bundle with their own CA: both replicas put theirs back.
    let foreign = rcgen::generate_simple_self_signed(vec!["elsewhere".to_owned()]).unwrap().cert.pem();
    let mut object = api.object.lock().unwrap().clone();
    for hook in object["webhooks"].as_array_mut().unwrap() {
        hook["clientConfig"]["caBundle"] = json!(k8s_openapi::ByteString(foreign.clone().into_bytes()));
    }
    api.store(object);
    wait_until("both CAs are back", || ours_trust(&api, &both)).await;
}
