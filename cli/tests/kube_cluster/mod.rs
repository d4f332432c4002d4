//! What the install and check tests share: a stand-in cluster (the fake API server of
//! control-plane/tests/fake_api, a node, a kubeconfig pointing at it), the real `trellis` binary
//! run against it with a bounded wait, and small stand-ins for what would run in a real cluster
//! (the Deployment and DaemonSet controllers and the kubelet setting status and making pods, the
//! garbage collector, the injector writing its caBundle and its EndpointSlice, trellisd
//! publishing its root certificate), with knobs to break each of them.

// Each test file that includes this module uses a part of it.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::fake_api::{self, FakeApi};

pub const NAMESPACES: &str = "/api/v1/namespaces";
pub const NODES: &str = "/api/v1/nodes";
pub const PODS: &str = "/api/v1/pods";
pub const SERVICES: &str = "/api/v1/services";
pub const CONFIG_MAPS: &str = "/api/v1/configmaps";
pub const DEPLOYMENTS: &str = "/apis/apps/v1/deployments";
pub const DAEMON_SETS: &str = "/apis/apps/v1/daemonsets";
pub const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
pub const WEBHOOKS: &str = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations";
pub const CRDS: &str = fake_api::CRDS;
pub const NS: &str = "trellis-system";
pub const RELEASE_LABEL: &str = "install.trellis.io/release";

/// How long one run of `trellis` may take before the test calls it a hang.
const RUN_LIMIT: Duration = Duration::from_secs(90);

pub struct Cluster {
    pub api: Arc<FakeApi>,
    pub kubeconfig: PathBuf,
    pub knobs: Arc<Mutex<Knobs>>,
    /// The CA of the webhook's caBundle and of the root ConfigMap, valid for years.
    pub ca_pem: String,
    _dir: tempfile::TempDir,
}

/// What the stand-in controllers do; each can be turned off to break one thing.
#[derive(Clone, Debug)]
pub struct Knobs {
    /// Deployments (by name) whose pods crash and never become ready.
    pub crashing: BTreeSet<String>,
    /// The injector writes the caBundle into the webhook configuration.
    pub ca_bundle: bool,
    /// The injector's Service gets an EndpointSlice with its ready pods.
    pub endpoints: bool,
    /// trellisd publishes istio-ca-root-cert in its namespace (this PEM).
    pub root_pem: Option<String>,
}

impl Cluster {
    /// A fake API server with the built-in kinds, one Linux node, and the controllers running.
    pub async fn start() -> Cluster {
        let api = Arc::new(FakeApi::start(fake_api::CLUSTER).await);
        api.apply(
            NODES,
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1",
                "labels": {"kubernetes.io/os": "linux"}}}),
        );
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = write_kubeconfig(&dir, &api.url);
        let ca_pem = certificate(20);
        let knobs = Arc::new(Mutex::new(Knobs {
            crashing: BTreeSet::new(),
            ca_bundle: true,
            endpoints: true,
            root_pem: Some(ca_pem.clone()),
        }));
        let cluster = Cluster { api, kubeconfig, knobs, ca_pem, _dir: dir };
        cluster.run_controllers();
        cluster
    }

    fn run_controllers(&self) {
        let api = self.api.clone();
        let knobs = self.knobs.clone();
        let bundle = base64(self.ca_pem.as_bytes());
        tokio::spawn(async move {
            loop {
                let now = knobs.lock().unwrap().clone();
                reconcile(&api, &now, &bundle);
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        });
    }

    pub fn knobs(&self, change: impl FnOnce(&mut Knobs)) {
        change(&mut self.knobs.lock().unwrap());
    }

    /// Runs `trellis` with this cluster's kubeconfig.
    pub async fn trellis(&self, args: &[&str]) -> Run {
        run_trellis(args, Some(&self.kubeconfig)).await
    }

    /// Waits until `condition` holds (bounded), e.g. for the controllers to catch up.
    pub async fn until(&self, what: &str, condition: impl Fn(&FakeApi) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !condition(&self.api) {
            assert!(Instant::now() < deadline, "not within 10s: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every object of every collection, as `(path, object)`.
    pub fn everything(&self) -> Vec<(String, Value)> {
        self.api
            .collections()
            .into_iter()
            .flat_map(|path| self.api.list(&path).into_iter().map(move |o| (path.clone(), o)))
            .collect()
    }

    /// Every object that install labelled, as `Kind namespace/name`.
    pub fn labelled(&self) -> BTreeSet<String> {
        self.everything()
            .into_iter()
            .filter(|(_, o)| o["metadata"]["labels"][RELEASE_LABEL] == "trellis")
            .map(|(_, o)| describe(&o))
            .collect()
    }
}

/// `Kind name` or `Kind namespace/name`.
pub fn describe(object: &Value) -> String {
    let kind = object["kind"].as_str().unwrap_or("?");
    let name = object["metadata"]["name"].as_str().unwrap_or("?");
    match object["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// What a run of `trellis` did.
#[derive(Debug)]
pub struct Run {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl Run {
    pub fn assert_ok(&self) -> &Run {
        assert!(self.success, "trellis failed ({:?}):\n{}\n{}", self.code, self.stdout, self.stderr);
        self
    }
}

/// Runs the real binary (off the runtime's threads, so the fake keeps answering), killing it
/// when it takes longer than `RUN_LIMIT`.
pub async fn run_trellis(args: &[&str], kubeconfig: Option<&PathBuf>) -> Run {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let kubeconfig = kubeconfig.cloned();
    tokio::task::spawn_blocking(move || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_trellis"));
        command
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_remove("KUBERNETES_SERVICE_HOST");
        match &kubeconfig {
            Some(path) => command.env("KUBECONFIG", path),
            None => command.env("KUBECONFIG", "/nonexistent/kubeconfig"),
        };
        let started = Instant::now();
        let mut child = command.spawn().expect("run trellis");
        let mut stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let out = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        });
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > RUN_LIMIT {
                let _ = child.kill();
                let _ = child.wait();
                panic!("trellis {args:?} did not finish within {RUN_LIMIT:?}: a hang");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Run {
            success: status.success(),
            code: status.code(),
            stdout: out.join().unwrap(),
            stderr: err.join().unwrap(),
            took: started.elapsed(),
        }
    })
    .await
    .unwrap()
}

pub fn write_kubeconfig(dir: &tempfile::TempDir, server: &str) -> PathBuf {
    let path = dir.path().join("kubeconfig");
    let text = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: stand-in
  cluster:
    server: {server}
contexts:
- name: stand-in
  context:
    cluster: stand-in
    user: tester
current-context: stand-in
users:
- name: tester
  user:
    token: test-token
"
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A self-signed CA certificate valid from a year ago for `years` years, as PEM.
pub fn certificate(years: i32) -> String {
    certificate_until(2024 + years)
}

/// A self-signed CA certificate valid from 2024 until 1 January `year` (UTC), as PEM.
pub fn certificate_until(year: i32) -> String {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, "Trellis test root");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(year, 1, 1);
    params.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap().pem()
}

/// A self-signed certificate that expires `days` from now.
pub fn certificate_expiring_in(days: i64) -> String {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, "Trellis test root");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let now = time_now();
    params.not_before = now - time::Duration::days(30);
    params.not_after = now + time::Duration::days(days);
    params.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap().pem()
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// Base64 (standard, padded), as the API server writes byte fields.
pub fn base64(bytes: &[u8]) -> String {
    serde_json::to_value(k8s_openapi::ByteString(bytes.to_vec())).unwrap().as_str().unwrap().to_owned()
}

/// One round of the stand-in controllers: each write only when something changes, so that a
/// settled cluster stays at the same resourceVersions.
fn reconcile(api: &FakeApi, knobs: &Knobs, ca_bundle: &str) {
    let mut ready_injector = Vec::new();
    for deployment in api.list(DEPLOYMENTS) {
        let ns = deployment["metadata"]["namespace"].as_str().unwrap_or_default().to_owned();
        let name = deployment["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        let replicas = deployment["spec"]["replicas"].as_i64().unwrap_or(1);
        let crashing = knobs.crashing.contains(&name);
        let available = if crashing { 0 } else { replicas };
        let generation = deployment["metadata"]["generation"].clone();
        api.update(DEPLOYMENTS, &ns, &name, |d| {
            d["status"] = json!({"observedGeneration": generation, "replicas": replicas, "updatedReplicas": replicas,
                "readyReplicas": available, "availableReplicas": available});
        });
        let template = &deployment["spec"]["template"];
        let container = template["spec"]["containers"][0]["name"].as_str().unwrap_or("app").to_owned();
        for i in 0..replicas {
            let pod_name = format!("{name}-{i}");
            let status = if crashing {
                json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}],
                    "containerStatuses": [{"name": container, "ready": false, "state": {"waiting": {
                        "reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}}}]})
            } else {
                json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
                    "containerStatuses": [{"name": container, "ready": true, "state": {"running": {}}}]})
            };
            if api.get(PODS, &ns, &pod_name).is_none() {
                api.apply(
                    PODS,
                    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod_name, "namespace": ns,
                        "labels": template["metadata"]["labels"],
                        "ownerReferences": [{"kind": "Deployment", "name": name}]},
                        "spec": template["spec"], "status": status}),
                );
            } else {
                api.update(PODS, &ns, &pod_name, |p| p["status"] = status);
            }
        }
        if name == "trellis-injector" && !crashing {
            ready_injector.push((ns.clone(), replicas));
        }
        if name == "trellisd"
            && let Some(root) = &knobs.root_pem
            && api.get(CONFIG_MAPS, &ns, "istio-ca-root-cert").is_none()
        {
            api.apply(
                CONFIG_MAPS,
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "istio-ca-root-cert",
                    "namespace": ns}, "data": {"root-cert.pem": root}}),
            );
        }
    }
    // The garbage collector: pods whose Deployment is gone, slices whose Service is.
    for (path, owner_kind, owner_path) in [(PODS, "Deployment", DEPLOYMENTS), (SLICES, "Service", SERVICES)] {
        for object in api.list(path) {
            let owner = &object["metadata"]["ownerReferences"][0];
            let ns = object["metadata"]["namespace"].as_str().unwrap_or_default();
            if owner["kind"] == owner_kind
                && api.get(owner_path, ns, owner["name"].as_str().unwrap_or_default()).is_none()
            {
                api.delete(path, ns, object["metadata"]["name"].as_str().unwrap_or_default());
            }
        }
    }
    let nodes = api.list(NODES).len() as i64;
    for ds in api.list(DAEMON_SETS) {
        let ns = ds["metadata"]["namespace"].as_str().unwrap_or_default().to_owned();
        let name = ds["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        let ready = if knobs.crashing.contains(&name) { 0 } else { nodes };
        let generation = ds["metadata"]["generation"].clone();
        api.update(DAEMON_SETS, &ns, &name, |d| {
            d["status"] = json!({"observedGeneration": generation, "desiredNumberScheduled": nodes,
                "currentNumberScheduled": nodes, "updatedNumberScheduled": nodes, "numberReady": ready,
                "numberAvailable": ready});
        });
    }
    if knobs.ca_bundle {
        for config in api.list(WEBHOOKS) {
            let name = config["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            api.update(WEBHOOKS, "", &name, |c| {
                for webhook in c["webhooks"].as_array_mut().into_iter().flatten() {
                    if webhook["clientConfig"]["caBundle"].is_null() {
                        webhook["clientConfig"]["caBundle"] = json!(ca_bundle);
                    }
                }
            });
        }
    }
    for (ns, replicas) in ready_injector {
        let name = "trellis-injector-x7k2p";
        if knobs.endpoints && api.get(SLICES, &ns, name).is_none() {
            let endpoints: Vec<Value> = (0..replicas)
                .map(|i| json!({"addresses": [format!("10.0.0.{}", i + 10)], "conditions": {"ready": true}}))
                .collect();
            api.apply(
                SLICES,
                json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": name,
                    "namespace": ns, "labels": {"kubernetes.io/service-name": "trellis-injector"},
                    "ownerReferences": [{"kind": "Service", "name": "trellis-injector"}]},
                    "addressType": "IPv4", "endpoints": endpoints}),
            );
        }
    }
}
