//! What the plugin's tests share: a thin stand-in for the Kubernetes API server (the one fake:
//! a real API server cannot run here; the plugin's real kube-rs client talks to it over HTTP)
//! and a way to run the plugin binary as a runtime does.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

pub const PLUGIN: &str = env!("CARGO_BIN_EXE_trellis-cni");

type Pods = Arc<Mutex<BTreeMap<(String, String), Value>>>;

/// Answers `GET /api/v1/namespaces/{ns}/pods/{name}` from its map, 404 with a Status otherwise.
pub struct FakeApi {
    pub addr: SocketAddr,
    pods: Pods,
    requests: Arc<Mutex<usize>>,
}

impl FakeApi {
    /// Serves on `listener` (already bound, possibly inside a test's network namespace) from a
    /// thread of its own for the rest of the test process.
    pub fn start(listener: TcpListener) -> FakeApi {
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let pods: Pods = Arc::default();
        let requests = Arc::new(Mutex::new(0));
        let state = (pods.clone(), requests.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let app = Router::new()
                    .route("/api/v1/namespaces/{ns}/pods/{name}", get(get_pod))
                    .with_state(state);
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        FakeApi { addr, pods, requests }
    }

    pub fn on_loopback() -> FakeApi {
        FakeApi::start(TcpListener::bind("127.0.0.1:0").unwrap())
    }

    pub fn add_pod(&self, pod: Value) {
        let key = (
            pod["metadata"]["namespace"].as_str().unwrap().to_owned(),
            pod["metadata"]["name"].as_str().unwrap().to_owned(),
        );
        self.pods.lock().unwrap().insert(key, pod);
    }

    pub fn requests(&self) -> usize {
        *self.requests.lock().unwrap()
    }

    /// A kubeconfig for this server, written into `dir`.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        kubeconfig_for(&format!("http://{}", self.addr), dir)
    }
}

pub fn kubeconfig_for(server: &str, dir: &Path) -> PathBuf {
    let path = dir.join("kubeconfig");
    let config = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": server}}],
        "users": [{"name": "cni", "user": {"token": "test-token"}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "cni"}}],
        "current-context": "test",
    });
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

async fn get_pod(
    State((pods, requests)): State<(Pods, Arc<Mutex<usize>>)>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
) -> Response {
    *requests.lock().unwrap() += 1;
    match pods.lock().unwrap().get(&(ns.clone(), name.clone())) {
        Some(pod) => axum::Json(pod.clone()).into_response(),
        None => {
            let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": format!("pods \"{name}\" not found"), "reason": "NotFound", "code": 404,
                "details": {"name": name, "kind": "pods"}});
            (StatusCode::NOT_FOUND, axum::Json(status)).into_response()
        }
    }
}

/// A pod as the API server returns it; meshed pods carry the injector's status annotation.
pub fn pod(namespace: &str, name: &str, annotations: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "app"}]}
    })
}

/// A pod the injector meshed: its status annotation and the proxy container.
pub fn meshed_pod(namespace: &str, name: &str, extra_annotations: Value) -> Value {
    let mut p = pod(namespace, name, meshed_annotations(extra_annotations));
    p["spec"]["initContainers"] =
        json!([{"name": "istio-proxy", "image": "proxy", "restartPolicy": "Always"}]);
    p
}

pub fn meshed_annotations(extra: Value) -> Value {
    let mut a =
        json!({"sidecar.istio.io/status": "{\"initContainers\":[\"trellis-validation\",\"istio-proxy\"]}"});
    a.as_object_mut().unwrap().extend(extra.as_object().cloned().unwrap_or_default());
    a
}

/// How a plugin run ended.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout))
    }
}

/// Runs `program` the way a runtime runs a plugin: the CNI variables in a clean environment,
/// the configuration on stdin.
pub fn run_plugin(program: &Path, env: &[(&str, &str)], stdin: &[u8]) -> Run {
    let mut child = Command::new(program)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    // A plugin may stop reading early (oversized input): a broken pipe is its business.
    let _ = input.write_all(stdin);
    drop(input);
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
