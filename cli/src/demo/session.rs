//! One run, made real and then removed: the run directory (config copy, labels files, the CA's
//! token file and each pod's token and root certificate, logs, the executable the pods' users
//! can run), the control plane with its CA, and per pod its namespace, redirect, proxy and app —
//! each recorded in the state file before or as it is made, so nothing is lost if the demo dies.
//! Everything after the hub namespace is created runs on a thread inside it, so the control
//! plane, the load and the metrics reads all live on the demo's own network.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use trellis_proxy_init::apply::in_namespace;

use super::collector::Collector;
use super::console::Console;
use super::identity::{self, Certificate};
use super::plan::{Mode, Plan};
use super::processes::{self, Launch, Process};
use super::signals::Stop;
use super::state::{self, State};
use super::summary::Summary;
use super::{Args, kubelet, network};
use crate::http_client::get_once;

/// The proxy's user: its own traffic is never captured.
const PROXY_UID: u32 = 1337;
/// The apps' user: any other than the proxy's, so their traffic is captured.
pub const APP_UID: u32 = 1000;
const CONTROL_PLANE_START: Duration = Duration::from_secs(20);
/// A proxy is ready once it holds a certificate from the CA and a complete first config.
const PROXIES_READY: Duration = Duration::from_secs(30);
const APPS_LISTENING: Duration = Duration::from_secs(15);
/// How long processes get to exit on SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(3);

pub struct Session {
    pub plan: Plan,
    pub args: Args,
    pub stop: Stop,
    pub started: Instant,
    pub run_dir: PathBuf,
    exe: PathBuf,
    state: State,
    pub processes: Vec<Process>,
    /// Index in `processes` of each pod's proxy, in the plan's order.
    pub proxies: Vec<usize>,
    /// Each pod's network namespace (with namespaces), in the plan's order.
    pub netns: Vec<Option<PathBuf>>,
    /// Each proxy's certificate as its `/certs` showed it once ready (or why it could not be
    /// read), in the plan's order.
    pub certificates: Vec<Result<Certificate, String>>,
    /// The demo's Zipkin collector, or why it is not running.
    pub collector: Result<Option<Collector>, String>,
    /// The CA's token file.
    tokens: PathBuf,
    torn_down: bool,
}

impl Drop for Session {
    /// Should anything panic, what was made is still removed.
    fn drop(&mut self) {
        if !self.torn_down {
            self.teardown();
        }
    }
}

impl Session {
    /// Creates the run directory with what the processes read.
    pub fn new(
        plan: Plan,
        run_dir: PathBuf,
        args: Args,
        stop: Stop,
        started: Instant,
    ) -> Result<Session, String> {
        let shared = plan.mode == Mode::Namespaces;
        state::create(&run_dir, shared)?;
        let state = State { demo_pid: std::process::id(), ..State::default() };
        state.save(&run_dir)?;
        for (file, text) in &plan.config {
            write(&run_dir.join("config").join(file), text)?;
        }
        write(&run_dir.join("mesh.yaml"), &plan.mesh)?;
        for pod in &plan.pods {
            write(&run_dir.join("pods").join(&pod.name).join("labels"), &kubelet::labels_file(&pod.labels))?;
        }
        // The projected service-account tokens: each readable by its pod's proxy only.
        let tokens = identity::write_tokens(&run_dir, &plan.pods, shared.then_some(PROXY_UID))?;
        std::fs::create_dir_all(run_dir.join("logs")).map_err(|e| format!("{}: {e}", run_dir.display()))?;
        let exe = executable(&run_dir, shared)?;
        Ok(Session {
            plan,
            args,
            stop,
            started,
            run_dir,
            exe,
            state,
            processes: Vec::new(),
            proxies: Vec::new(),
            netns: Vec::new(),
            certificates: Vec::new(),
            collector: Ok(None),
            tokens,
            torn_down: false,
        })
    }

    /// Everything, up to the summary; `teardown` removes what this made, whatever happened.
    pub fn run(&mut self, console: &mut Console) -> Result<Summary, String> {
        let hub = match self.plan.mode {
            Mode::Namespaces => {
                let hub = network::hub_namespace();
                self.record_namespace(&hub)?;
                network::create_hub(self.plan.hub).map_err(|e| {
                    format!("{e}\n(without network namespaces, `trellis demo --explicit` still runs)")
                })?;
                Some(network::namespace_path(&hub))
            }
            Mode::Explicit => None,
        };
        // With --keep, `trellis dashboard` runs in this process: its socket is made here, on
        // the host's loopback, while it reads the mesh from the hub like the table does.
        let mut dashboard = self.args.keep.then(bind_dashboard);
        in_namespace(hub.as_deref(), || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the runtime: {e}"))?;
            runtime.block_on(async {
                self.start_collector(console).await;
                self.start_control_plane().await?;
                self.start_pods().await?;
                let startup = self.started.elapsed();
                console.note(&self.started_note(startup));
                if let Some(listener) = dashboard.take() {
                    console.note(&self.start_dashboard(listener));
                }
                super::dashboard::run(self, console, startup).await
            })
        })
        .map_err(|e| e.to_string())?
    }

    /// Starts the dashboard on the demo's runtime; says where it is, or why it is not.
    fn start_dashboard(&self, listener: Result<std::net::TcpListener, String>) -> String {
        let proxies = self.plan.pods.iter().map(|p| p.stats()).collect();
        let started = listener.and_then(|listener| {
            listener.set_nonblocking(true).map_err(|e| e.to_string())?;
            let listener = tokio::net::TcpListener::from_std(listener).map_err(|e| e.to_string())?;
            let settings = crate::dashboard::Settings::for_demo(
                self.plan.monitoring,
                proxies,
                self.run_dir.join("config"),
            )?;
            crate::dashboard::start(listener, settings)
        });
        match started {
            Ok(started) => {
                format!("trellis demo: the dashboard (graph, services, proxy sync) is on {}", started.url)
            }
            Err(e) => format!("trellis demo: no dashboard: {e}"),
        }
    }

    fn started_note(&self, startup: Duration) -> String {
        let how = match self.plan.mode {
            Mode::Namespaces => {
                "injected, each in its own network namespace with proxy-init's rules, the proxy as UID 1337 and the \
                 app as UID 1000"
            }
            Mode::Explicit => "injected, each proxy and app on the pod's own 127.77.0.x address",
        };
        let mut lines = vec![format!(
            "trellis demo: mesh up in {:.2}s: {} pods {how}; control plane on {}, its CA on {}; logs in {}",
            startup.as_secs_f64(),
            self.plan.pods.len(),
            self.plan.xds,
            self.plan.ca,
            self.run_dir.join("logs").display()
        )];
        lines.push(
            "trellis demo: each proxy's certificate, from trellisd's CA for its pod's service-account token, as \
             its /certs shows it:"
                .to_owned(),
        );
        let width = self.plan.pods.iter().map(|p| p.name.len()).max().unwrap_or(0);
        for (pod, cert) in self.plan.pods.iter().zip(&self.certificates) {
            lines.push(match cert {
                Ok(cert) => format!(
                    "  {:<width$}  {}  (expires in {:.0}h{})",
                    pod.name,
                    cert.identity,
                    cert.seconds_until_expiration as f64 / 3600.0,
                    if cert.identity == pod.spiffe_id {
                        String::new()
                    } else {
                        format!("; NOT the pod's {}", pod.spiffe_id)
                    }
                ),
                Err(e) => format!("  {:<width$}  unknown: {e}", pod.name),
            });
        }
        lines.join("\n")
    }

    fn record_namespace(&mut self, name: &str) -> Result<(), String> {
        self.state.namespaces.push(name.to_owned());
        self.state.save(&self.run_dir)
    }

    fn add(&mut self, process: Process) -> Result<usize, String> {
        self.state.pids.push(process.pid());
        self.processes.push(process);
        self.state.save(&self.run_dir)?;
        Ok(self.processes.len() - 1)
    }

    pub fn log(&self, name: &str) -> PathBuf {
        self.run_dir.join("logs").join(format!("{name}.log"))
    }

    fn checkpoint(&self) -> Result<(), String> {
        if self.stop.requested() { Err("stopped".to_owned()) } else { Ok(()) }
    }

    /// Waits (bounded) until `ready` says so, failing early when a watched process dies.
    async fn wait_for(
        &mut self,
        what: &str,
        deadline: Duration,
        watched: &[usize],
        mut ready: impl AsyncFnMut() -> bool,
    ) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if ready().await {
                return Ok(());
            }
            self.checkpoint()?;
            for &i in watched {
                if let Some(why) = self.processes[i].exited() {
                    return Err(format!("{why} before {what}:\n{}", self.processes[i].log_tail()));
                }
            }
            if start.elapsed() > deadline {
                let logs: String = watched
                    .iter()
                    .map(|&i| format!("  {}:\n{}", self.processes[i].role, self.processes[i].log_tail()))
                    .collect();
                return Err(format!("not {what} within {deadline:?}\n{logs}"));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The collector the mesh config's tracing provider points at, before any proxy exists to
    /// export to it. One that cannot listen costs the run its trace, nothing else: the proxies
    /// drop their spans and count them.
    async fn start_collector(&mut self, console: &mut Console) {
        let Some(plan) = self.plan.collector.clone() else { return };
        self.collector = match Collector::start(plan.listen).await {
            Ok(collector) => Ok(Some(collector)),
            Err(e) => {
                let why = format!("the demo's Zipkin collector cannot listen on {e}");
                console.note(&format!(
                    "trellis demo: {why}; the proxies' spans will be dropped (and counted in trellis_trace_spans_total), \
                     the run goes on without its trace"
                ));
                Err(why)
            }
        };
    }

    async fn start_control_plane(&mut self) -> Result<(), String> {
        let dir = self.run_dir.join("config");
        let mesh = self.run_dir.join("mesh.yaml");
        let root = identity::ca_dir(&self.run_dir).join("root-cert.pem");
        let args = vec![
            "control-plane".to_owned(),
            "--config-dir".to_owned(),
            dir.display().to_string(),
            "--mesh-config".to_owned(),
            mesh.display().to_string(),
            "--xds-address".to_owned(),
            self.plan.xds.to_string(),
            "--monitoring-address".to_owned(),
            self.plan.monitoring.to_string(),
            // The CA: file-mode tokens, the root written for the pods.
            "--secure-xds-address".to_owned(),
            self.plan.ca.to_string(),
            "--token-auth-file".to_owned(),
            self.tokens.display().to_string(),
            "--root-cert-file".to_owned(),
            root.display().to_string(),
            "--log-level".to_owned(),
            "warn".to_owned(),
        ];
        let launch = Launch {
            role: "control plane (trellisd)".to_owned(),
            program: &self.exe,
            args,
            env: Vec::new(),
            netns: None,
            user: None,
            log: self.log("trellisd"),
        };
        let process = processes::spawn(&launch, &self.run_dir)?;
        let index = self.add(process)?;
        let monitoring = self.plan.monitoring;
        let root_written = root.clone();
        // It writes its root before it listens; both, to be sure.
        self.wait_for("answering with its root written", CONTROL_PLANE_START, &[index], async || {
            root_written.exists()
                && get_once(monitoring, "/debug/syncz", Duration::from_secs(1))
                    .await
                    .is_ok_and(|a| a.status.is_success())
        })
        .await?;
        // As the istio-ca-root-cert ConfigMap, mounted in every pod.
        identity::mount_root(&self.run_dir, &root, &self.plan.pods)
    }

    async fn start_pods(&mut self) -> Result<(), String> {
        let namespaces = self.plan.mode == Mode::Namespaces;
        let user = |uid| namespaces.then_some(uid);
        let mut netns = Vec::new();
        for (index, pod) in self.plan.pods.clone().iter().enumerate() {
            self.checkpoint()?;
            let path = if namespaces {
                let name = network::pod_namespace(&pod.name);
                self.record_namespace(&name)?;
                network::create_pod(index, &pod.name, pod.ip, self.plan.hub)?;
                let path = network::namespace_path(&name);
                // The redirect, exactly as the injected init container asks for it.
                let mut args =
                    vec!["proxy-init".to_owned(), "--netns".to_owned(), path.display().to_string()];
                args.extend(pod.redirect_args.iter().cloned());
                let launch = Launch {
                    role: format!("redirect of {}", pod.name),
                    program: &self.exe,
                    args,
                    env: Vec::new(),
                    netns: None,
                    user: None,
                    log: self.log(&format!("{}-proxy-init", pod.name)),
                };
                processes::run(&launch, &self.run_dir, Duration::from_secs(30))?;
                Some(path)
            } else {
                None
            };
            let labels = self.run_dir.join("pods").join(&pod.name).join("labels");
            let mut args =
                vec!["proxy".to_owned(), "--pod-labels-file".to_owned(), labels.display().to_string()];
            args.extend(pod.proxy_args.iter().cloned());
            // Its identity: the CA, the mesh root to trust it by, and the pod's token.
            args.extend([
                "--ca-address".to_owned(),
                self.plan.ca.to_string(),
                "--ca-root-cert".to_owned(),
                identity::root_cert_file(&self.run_dir, &pod.name).display().to_string(),
                "--token-file".to_owned(),
                identity::token_file(&self.run_dir, &pod.name).display().to_string(),
            ]);
            let launch = Launch {
                role: format!("proxy of {}", pod.name),
                program: &self.exe,
                args,
                env: pod.proxy_env.clone(),
                netns: path.clone(),
                user: user(PROXY_UID),
                log: self.log(&format!("{}-proxy", pod.name)),
            };
            let process = processes::spawn(&launch, &self.run_dir)?;
            let proxy = self.add(process)?;
            self.proxies.push(proxy);
            netns.push(path);
        }
        // As the kubelet does for a native sidecar with a startup probe: the app starts once
        // its proxy is ready (it holds a certificate and a complete first config).
        let readiness: Vec<SocketAddr> = self.plan.pods.iter().map(|p| p.readiness()).collect();
        let proxies = self.proxies.clone();
        let what =
            "ready (a proxy is ready once it holds a certificate from trellisd's CA and its first config)";
        self.wait_for(what, PROXIES_READY, &proxies, async || {
            for addr in &readiness {
                let ready = get_once(*addr, "/healthz/ready", Duration::from_secs(1)).await;
                if !ready.is_ok_and(|a| a.status.is_success()) {
                    return false;
                }
            }
            true
        })
        .await?;
        self.certificates = self
            .plan
            .pods
            .iter()
            .zip(&netns)
            .map(|(pod, path)| identity::certificate(path.as_deref(), pod.admin(self.plan.mode)))
            .collect();
        self.netns = netns.clone();
        let mut apps = Vec::new();
        for (pod, path) in self.plan.pods.clone().iter().zip(netns) {
            self.checkpoint()?;
            let mut args = vec!["demo-app".to_owned()];
            args.extend(pod.app_args.iter().cloned());
            let launch = Launch {
                role: format!("app of {}", pod.name),
                program: &self.exe,
                args,
                env: pod.app_env.clone(),
                netns: path.clone(),
                user: user(APP_UID),
                log: self.log(&format!("{}-app", pod.name)),
            };
            let process = processes::spawn(&launch, &self.run_dir)?;
            apps.push((self.add(process)?, path, pod.app(self.plan.mode)));
        }
        let watched: Vec<usize> = apps.iter().map(|(i, _, _)| *i).collect();
        self.wait_for("listening", APPS_LISTENING, &watched, async || {
            apps.iter().all(|(_, path, addr)| listening(path.as_deref(), *addr))
        })
        .await
    }

    /// Runs this executable with `args` once in a pod as its app runs (in the pod's network
    /// namespace, as the app's user), to its end within `timeout`; what it printed. Recorded
    /// like every other process, so a crash leaves nothing.
    pub async fn run_in_pod(
        &mut self,
        pod: &str,
        role: &str,
        args: Vec<String>,
        timeout: Duration,
    ) -> Result<String, String> {
        let index = self.plan.pods.iter().position(|p| p.name == pod).ok_or(format!("no pod {pod}"))?;
        let launch = Launch {
            role: format!("{role} in {pod}"),
            program: &self.exe,
            args,
            env: Vec::new(),
            netns: self.netns.get(index).cloned().flatten(),
            user: (self.plan.mode == Mode::Namespaces).then_some(APP_UID),
            log: self.log(&format!("{pod}-{role}")),
        };
        let process = processes::spawn(&launch, &self.run_dir)?;
        let index = self.add(process)?;
        let process = &mut self.processes[index];
        let deadline = Instant::now() + timeout;
        loop {
            match process.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = process.child.kill();
                    let _ = process.child.wait();
                    return Err(format!("{} did not finish within {timeout:?}", process.role));
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(10)).await,
                Err(e) => return Err(format!("{}: {e}", process.role)),
            }
        }
        std::fs::read_to_string(&process.log).map_err(|e| format!("{}: {e}", process.log.display()))
    }

    /// Stops every process, removes every namespace and the run directory; whether all of it is
    /// gone.
    pub fn teardown(&mut self) -> bool {
        self.torn_down = true;
        processes::stop_all(&mut self.processes, GRACE);
        let mut clean = self.processes.iter().all(|p| !processes::alive(p.pid()));
        for name in self.state.namespaces.iter().rev() {
            if let Err(e) = network::delete(name) {
                eprintln!("trellis demo: {e}");
                clean = false;
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.run_dir) {
            eprintln!("trellis demo: {}: {e}", self.run_dir.display());
            clean = false;
        }
        clean
    }

    pub fn pids(&self) -> Vec<u32> {
        self.processes.iter().map(Process::pid).collect()
    }

    pub fn namespaces(&self) -> Vec<String> {
        self.state.namespaces.clone()
    }
}

/// Whether something accepts connections at `addr`, seen from inside the pod (from outside the
/// pod its app port is captured by the redirect).
fn listening(netns: Option<&Path>, addr: SocketAddr) -> bool {
    in_namespace(netns, || std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok())
        .unwrap_or(false)
}

/// Writes a file others can read (the pods' users read their labels).
fn write(path: &Path, text: &str) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
    }
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// This executable, where the pods' users can run it. With namespaces the proxy and the apps
/// switch users, and the build directory may be where they cannot go (under /root, 0700): a
/// link (or copy) in the run directory, 0755 on the way there. Without, this executable itself.
fn executable(run_dir: &Path, shared: bool) -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    if !shared {
        return Ok(me);
    }
    let target = run_dir.join("trellis");
    let linked = std::fs::hard_link(&me, &target).is_ok()
        && std::fs::metadata(&target).is_ok_and(|m| m.permissions().mode() & 0o005 == 0o005);
    if !linked {
        let _ = std::fs::remove_file(&target);
        std::fs::copy(&me, &target)
            .map_err(|e| format!("copying {} to {}: {e}", me.display(), target.display()))?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("{}: {e}", target.display()))?;
    }
    Ok(target)
}

/// `trellis dashboard`'s port, else any free one.
fn bind_dashboard() -> Result<std::net::TcpListener, String> {
    std::net::TcpListener::bind(("127.0.0.1", 20001))
        .or_else(|_| std::net::TcpListener::bind(("127.0.0.1", 0)))
        .map_err(|e| format!("cannot listen on 127.0.0.1: {e}"))
}
