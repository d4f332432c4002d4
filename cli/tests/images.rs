//! The container images, run by a real OCI runtime, as root.
//!
//! `scripts/build-images.sh` assembles the five OCI image layouts from this build's binaries (the
//! test profile's, next to this test's executable), umoci unpacks each into a runtime bundle, and
//! crun (else runc; `TRELLIS_OCI_RUNTIME` picks one) runs it. A small kubelet in this file turns
//! a container as Kubernetes describes it — the chart's, or the one the injector's patch adds —
//! into the bundle's runtime config: command and args over the image's ENTRYPOINT and CMD, env
//! with the downward API filled in, user, capabilities, read-only root, volumes. One network
//! namespace made by the test holds trellisd, the injector and the app pod's containers, as if
//! they were one pod; only loopback is used.
//!
//! - cni: a CNI VERSION call to `trellis-cni`, found on the image's PATH as the chart names it.
//! - trellisd (file mode, the chart's user and security context): ready on 15014, writes the
//!   mesh root.
//! - injector: `/inject` over TLS, verified against its CA under its Service's name; the patch
//!   names the images by the chart's hub and tag, and the two containers it adds are run from
//!   those images as the kubelet would:
//! - proxy-init (trellis-init): the redirect, programmed with the image's own nft; then again in a
//!   namespace of its own with `--backend iptables`, the image's iptables tools;
//! - proxy (istio-proxy): certified by trellisd's CA and configured over xDS on 15012, ready on
//!   15021, its `trellis-proxy wait` hook passes, trellisd reports it synced.
//!
//! Before running anything, each image's config (user, entrypoint, cmd, ports, PATH, labels) is
//! compared with what the chart expects and with images/Dockerfile, and its files are checked:
//! no shell, no package manager, no executable but its own (and proxy-init's nft and iptables).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use trellis_injector::webhook_cert::{Authority, WebhookIdentity};
use trellis_proxy_init::apply::in_namespace;
use trellis_proxy_init::testing::{http_get_in, in_scratch_namespace, netns_path, output_in};

const HUB: &str = "ghcr.io/trellis-mesh";
const TAG: &str = "test";
const DEADLINE: Duration = Duration::from_secs(30);
const SYSTEM_NAMESPACE: &str = "trellis-system";
const APP_NAMESPACE: &str = "shop";
const APP_POD: &str = "web-7d9f8";
const APP_ACCOUNT: &str = "web";
const APP_TOKEN: &str = "tok-web";

/// One image: its binary (and the package that builds it), and what the chart or the injection
/// template expects of it.
struct Image {
    name: &'static str,
    binary: &'static str,
    package: &'static str,
    /// The user the chart's or the template's securityContext runs it as.
    user: &'static str,
    cmd: &'static [&'static str],
    ports: &'static [u16],
}

const IMAGES: [Image; 5] = [
    Image {
        name: "trellisd",
        binary: "trellisd",
        package: "trellis-control-plane",
        user: "65532:65532",
        cmd: &[],
        ports: &[15010, 15012, 15014],
    },
    Image {
        name: "proxy",
        binary: "trellis-proxy",
        package: "trellis-proxy",
        user: "1337:1337",
        cmd: &[],
        ports: &[15001, 15006, 15020, 15021, 15090],
    },
    Image {
        name: "proxy-init",
        binary: "trellis-proxy-init",
        package: "trellis-proxy-init",
        user: "0:0",
        cmd: &[],
        ports: &[],
    },
    Image {
        name: "injector",
        binary: "trellis-injector",
        package: "trellis-injector",
        user: "65532:65532",
        cmd: &[],
        ports: &[15017],
    },
    Image {
        name: "cni",
        binary: "trellis-cni",
        package: "trellis-cni",
        user: "0:0",
        cmd: &["install"],
        ports: &[],
    },
];

const PATH_IN_IMAGES: &str = "PATH=/usr/local/bin:/usr/sbin:/usr/bin";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace").to_owned()
}

/// A visible skip, or a failure when CI requires every privileged test to run.
fn skip(why: &str) {
    assert!(
        std::env::var("TRELLIS_PRIVILEGED_TESTS").as_deref() != Ok("require"),
        "TRELLIS_PRIVILEGED_TESTS=require but this test {why}"
    );
    eprintln!("SKIPPED ({why}): {}", std::thread::current().name().unwrap_or("the image test"));
}

fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
                .map(PathBuf::from),
        )
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

struct Tools {
    /// Where cargo put this run's binaries.
    binaries: PathBuf,
    umoci: PathBuf,
    /// The runtimes to try, in order.
    runtimes: Vec<PathBuf>,
    curl: PathBuf,
}

impl Tools {
    fn find() -> Option<Tools> {
        let missing = |what: &str| {
            skip(&format!("needs {what} (scripts/test.sh installs it)"));
            None
        };
        let Some(umoci) = which("umoci") else { return missing("umoci") };
        let Some(curl) = which("curl") else { return missing("curl") };
        let runtimes: Vec<PathBuf> = match std::env::var("TRELLIS_OCI_RUNTIME") {
            Ok(runtime) => match which(&runtime) {
                Some(path) => vec![path],
                None => {
                    skip(&format!("needs TRELLIS_OCI_RUNTIME={runtime}, which is not there"));
                    return None;
                }
            },
            Err(_) => ["crun", "runc"].into_iter().filter_map(which).collect(),
        };
        if runtimes.is_empty() {
            return missing("an OCI runtime, crun or runc");
        }
        match test_binaries() {
            Ok(binaries) => Some(Tools { binaries, umoci, runtimes, curl }),
            Err(why) => {
                skip(&why);
                None
            }
        }
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The directory cargo put this run's binaries in (this test's executable is in its `deps/`),
/// once every binary the images hold is there and newer than every source it was built from
/// (cargo's dep-info file beside it lists them): `cargo test -p trellis-cli` rebuilds the
/// libraries it depends on, but only its own binaries.
fn test_binaries() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find its own executable: {e}"))?;
    let dir = exe.parent().and_then(Path::parent).ok_or("no target directory above the test executable")?;
    for image in &IMAGES {
        let path = dir.join(image.binary);
        let hint = format!(
            "`cargo test --workspace` (scripts/test.sh) builds it, so does `cargo build -p {}`",
            image.package
        );
        let built = modified(&path).ok_or_else(|| format!("needs {} ({hint})", path.display()))?;
        let sources = fs::read_to_string(path.with_extension("d")).unwrap_or_default();
        let sources = sources.split_once(": ").map_or("", |(_, sources)| sources);
        if let Some(newer) =
            sources.split_whitespace().find(|s| modified(Path::new(s)).is_some_and(|m| m > built))
        {
            return Err(format!("needs {} rebuilt: {newer} changed since ({hint})", path.display()));
        }
    }
    Ok(dir.to_owned())
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

fn read_json(path: &Path) -> Value {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The image config (`config` of the OCI config blob) of the layout's image tagged TAG.
fn image_config(layout: &Path) -> Value {
    let blob = |digest: &Value| {
        let digest = digest.as_str().and_then(|d| d.strip_prefix("sha256:")).expect("a sha256 digest");
        read_json(&layout.join("blobs/sha256").join(digest))
    };
    let index = read_json(&layout.join("index.json"));
    let manifest = index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == TAG)
        .unwrap_or_else(|| panic!("{} has no image tagged {TAG}: {index}", layout.display()));
    let manifest = blob(&manifest["digest"]);
    blob(&manifest["config"]["digest"])["config"].clone()
}

/// What a `FROM scratch AS <name>` stage of images/Dockerfile sets.
#[derive(Debug, Default)]
struct Stage {
    user: String,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    expose: Vec<String>,
    env: Vec<String>,
}

fn dockerfile_stage(text: &str, name: &str) -> Stage {
    let mut stage: Option<Stage> = None;
    for line in text.lines().map(str::trim) {
        let (instruction, rest) = line.split_once(' ').unwrap_or((line, ""));
        let rest = rest.trim();
        let json = |what: &str| -> Vec<String> {
            serde_json::from_str(rest).unwrap_or_else(|e| panic!("images/Dockerfile: {what} {rest}: {e}"))
        };
        match instruction.to_ascii_uppercase().as_str() {
            "FROM" if stage.is_some() => break,
            "FROM" => {
                let words: Vec<String> = rest.split_whitespace().map(str::to_ascii_lowercase).collect();
                if words.len() == 3 && words[1] == "as" && words[2] == name {
                    stage = Some(Stage::default());
                }
            }
            _ if stage.is_none() => {}
            "USER" => stage.as_mut().unwrap().user = rest.to_owned(),
            "ENTRYPOINT" => stage.as_mut().unwrap().entrypoint = json("ENTRYPOINT"),
            "CMD" => stage.as_mut().unwrap().cmd = json("CMD"),
            "ENV" => stage.as_mut().unwrap().env.push(rest.to_owned()),
            "EXPOSE" => stage.as_mut().unwrap().expose.extend(
                rest.split_whitespace()
                    .map(|p| if p.contains('/') { p.to_owned() } else { format!("{p}/tcp") }),
            ),
            _ => {}
        }
    }
    stage.unwrap_or_else(|| panic!("images/Dockerfile has no stage `FROM scratch AS {name}`"))
}

/// The image's config is what the chart and the template expect, and what the Dockerfile says.
fn check_config(image: &Image, config: &Value, dockerfile: &str) {
    let name = image.name;
    let entrypoint = vec![format!("/usr/local/bin/{}", image.binary)];
    let cmd: Vec<String> = image.cmd.iter().map(|s| s.to_string()).collect();
    let ports: Vec<String> = image.ports.iter().map(|p| format!("{p}/tcp")).collect();
    let mut exposed: Vec<String> =
        config["ExposedPorts"].as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
    exposed.sort();
    assert_eq!(config["User"], image.user, "{name}: the image's user");
    assert_eq!(strings(&config["Entrypoint"]), entrypoint, "{name}: entrypoint");
    assert_eq!(strings(&config["Cmd"]), cmd, "{name}: cmd");
    assert_eq!(exposed, ports, "{name}: exposed ports");
    assert_eq!(strings(&config["Env"]), [PATH_IN_IMAGES], "{name}: env");
    let labels = &config["Labels"];
    assert_eq!(labels["org.opencontainers.image.version"], env!("CARGO_PKG_VERSION"), "{name}: {labels}");
    assert_eq!(labels["org.opencontainers.image.title"], format!("trellis-{name}"), "{name}: {labels}");
    assert_eq!(labels["dev.trellis.reference"], format!("{HUB}/{name}:{TAG}"), "{name}: {labels}");

    let stage = dockerfile_stage(dockerfile, name);
    assert_eq!(stage.user, image.user, "images/Dockerfile, stage {name}: USER");
    assert_eq!(stage.entrypoint, entrypoint, "images/Dockerfile, stage {name}: ENTRYPOINT");
    assert_eq!(stage.cmd, cmd, "images/Dockerfile, stage {name}: CMD");
    assert_eq!(stage.expose, ports, "images/Dockerfile, stage {name}: EXPOSE");
    assert_eq!(stage.env, [PATH_IN_IMAGES], "images/Dockerfile, stage {name}: ENV");
}

/// Programs that have no place in a minimal image.
const NOT_IN_AN_IMAGE: &[&str] = &[
    "sh", "bash", "dash", "ash", "busybox", "apt", "apt-get", "dpkg", "apk", "yum", "dnf", "rpm", "pip",
    "python3", "perl", "curl", "wget",
];

/// No shell or package manager; every executable is the image's own, a shared object, or (in
/// proxy-init) the packet-filter tools it runs.
fn check_minimal(image: &Image, rootfs: &Path) {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, fs::Metadata)>) {
        for entry in fs::read_dir(dir).unwrap().flatten() {
            let meta = entry.path().symlink_metadata().unwrap();
            if meta.is_dir() {
                walk(&entry.path(), out);
            }
            out.push((entry.path(), meta));
        }
    }
    let mut files = Vec::new();
    walk(rootfs, &mut files);
    for (path, meta) in files {
        let relative = path.strip_prefix(rootfs).unwrap();
        let file = relative.file_name().unwrap().to_string_lossy();
        assert!(!NOT_IN_AN_IMAGE.contains(&&*file), "{}: /{} in the image", image.name, relative.display());
        if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
            let allowed = relative == Path::new("usr/local/bin").join(image.binary)
                || file.contains(".so")
                || (image.name == "proxy-init" && relative.starts_with("usr/sbin"));
            assert!(
                allowed,
                "{}: an executable that is not the image's: /{}",
                image.name,
                relative.display()
            );
        }
    }
    assert!(rootfs.join("usr/local/bin").join(image.binary).is_file(), "{}: no binary", image.name);
}

fn unpack(umoci: &Path, layout: &Path, bundle: &Path) {
    let out = Command::new(umoci)
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:{TAG}", layout.display()))
        .arg(bundle)
        .output()
        .expect("umoci runs");
    assert!(
        out.status.success(),
        "umoci unpack {}: {}",
        layout.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A pod as far as its containers see it: names for the downward API, its network namespace,
/// and its volumes (a host directory each; a volume not listed is an empty directory).
struct Pod {
    name: String,
    namespace: String,
    service_account: String,
    netns: Option<PathBuf>,
    volumes: BTreeMap<String, PathBuf>,
    scratch: PathBuf,
}

/// The capabilities a container gets from containerd before its securityContext adds or drops.
const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

impl Pod {
    fn env_value(&self, var: &Value) -> String {
        if let Some(value) = var["value"].as_str() {
            return value.to_owned();
        }
        if let Some(field) = var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            return match field {
                "metadata.name" => self.name.clone(),
                "metadata.namespace" => self.namespace.clone(),
                "spec.serviceAccountName" => self.service_account.clone(),
                "status.podIP" | "status.hostIP" => "127.0.0.1".to_owned(),
                other => panic!("this test's kubelet does not know fieldPath {other}"),
            };
        }
        if var["valueFrom"]["resourceFieldRef"].is_object() {
            return "1".to_owned(); // limits.cpu: one core
        }
        String::new()
    }

    /// Rewrites the bundle's runtime config (umoci's, from the image config) for `container`.
    fn configure(&self, bundle: &Path, image: &Value, container: &Value) {
        let path = bundle.join("config.json");
        let mut spec = read_json(&path);
        let name = container["name"].as_str().expect("a container name");

        // Kubernetes' command and args over the image's ENTRYPOINT and CMD.
        let (command, args) = (container.get("command").map(strings), container.get("args").map(strings));
        let argv: Vec<String> = match (command, args) {
            (Some(command), Some(args)) => [command, args].concat(),
            (Some(command), None) => command,
            (None, Some(args)) => [strings(&image["Entrypoint"]), args].concat(),
            (None, None) => [strings(&image["Entrypoint"]), strings(&image["Cmd"])].concat(),
        };
        let process = &mut spec["process"];
        process["args"] = json!(argv);
        process["terminal"] = json!(false);
        let mut env: Vec<String> = strings(&process["env"]);
        for var in container["env"].as_array().into_iter().flatten() {
            let key = var["name"].as_str().expect("an env name");
            env.retain(|e| e.split_once('=').is_none_or(|(k, _)| k != key));
            env.push(format!("{key}={}", self.env_value(var)));
        }
        process["env"] = json!(env);

        let security = &container["securityContext"];
        if let Some(uid) = security["runAsUser"].as_u64() {
            process["user"]["uid"] = json!(uid);
        }
        if let Some(gid) = security["runAsGroup"].as_u64() {
            process["user"]["gid"] = json!(gid);
        }
        process["noNewPrivileges"] = json!(security["allowPrivilegeEscalation"] == false);
        let drop = strings(&security["capabilities"]["drop"]);
        let mut capabilities: Vec<String> = if drop.iter().any(|c| c == "ALL") {
            Vec::new()
        } else {
            DEFAULT_CAPABILITIES
                .iter()
                .filter(|c| !drop.iter().any(|d| c.strip_prefix("CAP_") == Some(d.as_str())))
                .map(|c| c.to_string())
                .collect()
        };
        capabilities.extend(strings(&security["capabilities"]["add"]).iter().map(|c| format!("CAP_{c}")));
        process["capabilities"] = json!({
            "bounding": capabilities, "effective": capabilities, "permitted": capabilities,
            "inheritable": [], "ambient": [],
        });
        spec["root"]["readonly"] = json!(security["readOnlyRootFilesystem"] == true);

        for mount in container["volumeMounts"].as_array().into_iter().flatten() {
            let volume = mount["name"].as_str().expect("a volume name");
            let source = self.volumes.get(volume).cloned().unwrap_or_else(|| {
                // An emptyDir, writable by anyone as Kubernetes makes it.
                let dir = self.scratch.join(format!("{name}-{volume}"));
                fs::create_dir_all(&dir).unwrap();
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
                dir
            });
            let access = if mount["readOnly"] == true { "ro" } else { "rw" };
            spec["mounts"].as_array_mut().unwrap().push(json!({
                "destination": mount["mountPath"], "type": "bind", "source": source,
                "options": ["rbind", access, "nosuid", "nodev"],
            }));
        }
        if let Some(netns) = &self.netns {
            for namespace in spec["linux"]["namespaces"].as_array_mut().unwrap() {
                if namespace["type"] == "network" {
                    namespace["path"] = json!(netns);
                }
            }
        }
        spec["hostname"] = json!(self.name);
        fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    }
}

/// An OCI runtime with a state directory of this test's own.
struct Runtime {
    program: PathBuf,
    state: PathBuf,
}

impl Runtime {
    fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command.arg("--root").arg(&self.state);
        command
    }
}

/// A container started with `<runtime> run` (which stays in the foreground); killed and deleted
/// by its id when dropped.
struct Container<'r> {
    runtime: &'r Runtime,
    id: String,
    child: Child,
    log: PathBuf,
}

impl<'r> Container<'r> {
    fn start(runtime: &'r Runtime, bundle: &Path, id: &str) -> Container<'r> {
        let log = bundle.with_extension("log");
        let out = File::create(&log).unwrap();
        let child = runtime
            .command()
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", runtime.program.display()));
        Container { runtime, id: id.to_owned(), child, log }
    }

    /// What the container (and the runtime) wrote.
    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits (bounded) for the container's process to end.
    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {DEADLINE:?}:\n{}",
                self.id,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (bounded) for `ready`, failing at once when the container exits first.
    fn wait_until(&mut self, what: &str, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !ready() {
            if let Some(status) = self.exited() {
                panic!("not {what}: {} exited ({status}); its output:\n{}", self.id, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "not {what} within {DEADLINE:?}; {}'s output:\n{}",
                self.id,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A process run in the container (as its user, with its environment), like an exec hook.
    fn exec(&self, args: &[&str]) -> Output {
        self.runtime.command().arg("exec").arg(&self.id).args(args).stdin(Stdio::null()).output().unwrap()
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self.runtime.command().args(["kill", &self.id, "KILL"]).stderr(Stdio::null()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.exited().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = self.runtime.command().args(["delete", "--force", &self.id]).stderr(Stdio::null()).status();
    }
}

/// The first container of the test, the CNI plugin's VERSION call, picks the runtime: crun when
/// it can run containers on this machine (it refuses cgroup v1 hierarchies with controllers left
/// on the v2 one), else runc. When none can, the failure shows what each said.
fn cni_version_picks_the_runtime(tools: &Tools, layouts: &Path, work: &Path, id: &str) -> Runtime {
    let cni = json!({
        "name": "install-cni",
        // The chart's command; the node's runtime calls the plugin with CNI_COMMAND set.
        "command": ["trellis-cni"],
        "env": [{"name": "CNI_COMMAND", "value": "VERSION"}],
        "securityContext": {
            "runAsNonRoot": false, "runAsUser": 0, "runAsGroup": 0, "allowPrivilegeEscalation": false,
            "privileged": false, "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"], "add": ["DAC_OVERRIDE"]},
        },
    });
    let pod = Pod {
        name: "trellis-cni-node".to_owned(),
        namespace: SYSTEM_NAMESPACE.to_owned(),
        service_account: "trellis-cni".to_owned(),
        netns: None, // a namespace of the runtime's own
        volumes: BTreeMap::new(),
        scratch: work.join("volumes"),
    };
    let layout = layouts.join("cni");
    let config = image_config(&layout);
    let mut failures = Vec::new();
    for (i, program) in tools.runtimes.iter().enumerate() {
        let runtime = Runtime { program: program.clone(), state: work.join(format!("runtime-state-{i}")) };
        let bundle = work.join(format!("cni-{i}"));
        unpack(&tools.umoci, &layout, &bundle);
        pod.configure(&bundle, &config, &cni);
        let mut container = Container::start(&runtime, &bundle, &format!("{id}-cni-{i}"));
        let status = container.wait();
        let output = container.log();
        drop(container);
        if status.success() && output.contains("supportedVersions") {
            for failure in &failures {
                eprintln!("{failure}; using {}", program.display());
            }
            return runtime;
        }
        failures.push(format!(
            "{} cannot run the cni image ({status}): {}",
            program.display(),
            output.trim()
        ));
    }
    panic!("no OCI runtime ran the cni image's CNI VERSION call:\n{}", failures.join("\n"));
}

fn write(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).unwrap();
}

/// A directory anyone may read (the containers run as 1337 and 65532).
fn directory(path: &Path) -> PathBuf {
    fs::create_dir_all(path).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
    path.to_owned()
}

/// `curl` to the injector's Service name (resolved to 127.0.0.1) over TLS verified against `ca`,
/// from inside the namespace: the status code (0 when nothing answered) and the body.
fn injector_call(curl: &Path, ns: &str, ca: &Path, path: &str, body: Option<&Path>) -> (u16, String) {
    let host = format!("trellis-injector.{SYSTEM_NAMESPACE}.svc");
    let out = in_namespace(Some(&netns_path(ns)), || {
        let mut command = Command::new(curl);
        command
            .args(["-sS", "--max-time", "5", "--cacert"])
            .arg(ca)
            .arg("--resolve")
            .arg(format!("{host}:15017:127.0.0.1"))
            .args(["-w", "\n%{http_code}"]);
        if let Some(body) = body {
            command
                .args(["-H", "content-type: application/json", "--data-binary"])
                .arg(format!("@{}", body.display()));
        }
        command.arg(format!("https://{host}:15017{path}")).output()
    })
    .unwrap()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// The container named `name` anywhere in a JSONPatch's values.
fn find_container<'v>(value: &'v Value, name: &str) -> Option<&'v Value> {
    match value {
        Value::Object(map)
            if map.get("name").and_then(Value::as_str) == Some(name) && map.contains_key("image") =>
        {
            Some(value)
        }
        Value::Object(map) => map.values().find_map(|v| find_container(v, name)),
        Value::Array(items) => items.iter().find_map(|v| find_container(v, name)),
        _ => None,
    }
}

fn ok(response: &str) -> bool {
    response.starts_with("HTTP/1.1 200")
}

/// The chart's securityContext of trellisd and the injector.
fn nonroot_security_context() -> Value {
    json!({
        "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "allowPrivilegeEscalation": false,
        "privileged": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]},
    })
}

#[test]
fn the_images_run_as_the_chart_and_the_injected_pod_spec_run_them() {
    in_scratch_namespace(|pod_ns| {
        in_scratch_namespace(|other_ns| {
            let Some(tools) = Tools::find() else { return };
            let started = Instant::now();
            let work = tempfile::tempdir().unwrap();
            let work = work.path();
            let layouts = work.join("images");
            let id = format!("trellis-images-{}", std::process::id());

            // The layouts, from this build's binaries.
            let out = Command::new("bash")
                .arg(workspace().join("scripts/build-images.sh"))
                .arg("--bin-dir")
                .arg(&tools.binaries)
                .arg("--output")
                .arg(&layouts)
                .args(["--hub", HUB, "--tag", TAG])
                .current_dir(workspace())
                .output()
                .expect("bash runs");
            assert!(
                out.status.success(),
                "scripts/build-images.sh failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            eprintln!("images built in {:.1?}", started.elapsed());

            let dockerfile = fs::read_to_string(workspace().join("images/Dockerfile")).unwrap();
            let mut configs = BTreeMap::new();
            for image in &IMAGES {
                let layout = layouts.join(image.name);
                let config = image_config(&layout);
                check_config(image, &config, &dockerfile);
                let bundle = work.join(format!("inspect-{}", image.name));
                unpack(&tools.umoci, &layout, &bundle);
                check_minimal(image, &bundle.join("rootfs"));
                configs.insert(image.name, config);
            }
            // The image a pod spec names, as a registry would serve it: hub, name and tag.
            let image_named = |reference: &Value| -> &'static str {
                IMAGES
                    .iter()
                    .map(|i| i.name)
                    .find(|name| *reference == format!("{HUB}/{name}:{TAG}"))
                    .unwrap_or_else(|| panic!("no image built is {reference}"))
            };
            // A fresh bundle of the image for each container.
            let bundle = |image: &str, container: &str| -> PathBuf {
                let bundle = work.join(format!("bundle-{container}"));
                unpack(&tools.umoci, &layouts.join(image), &bundle);
                bundle
            };

            let runtime = cni_version_picks_the_runtime(&tools, &layouts, work, &id);

            // The control plane's files: mesh config (as the chart's ConfigMap), the CSR tokens,
            // and the directory trellisd writes the mesh root to.
            let mesh = directory(&work.join("mesh"));
            write(
                &mesh.join("mesh"),
                &format!(
                    "trustDomain: cluster.local\nrootNamespace: {SYSTEM_NAMESPACE}\n\
                     defaultConfig:\n  discoveryAddress: 127.0.0.1:15012\n"
                ),
            );
            let istio_config = directory(&work.join("istio-config"));
            let tokens = directory(&work.join("tokens"));
            write(
                &tokens.join("tokens.csv"),
                &format!("{APP_TOKEN},system:serviceaccount:{APP_NAMESPACE}:{APP_ACCOUNT},u1\n"),
            );
            let root = work.join("root-cert");
            fs::create_dir(&root).unwrap();
            fs::set_permissions(&root, fs::Permissions::from_mode(0o777)).unwrap();
            let system_pod = |name: &str, volumes: BTreeMap<String, PathBuf>| Pod {
                name: name.to_owned(),
                namespace: SYSTEM_NAMESPACE.to_owned(),
                service_account: name.to_owned(),
                netns: Some(netns_path(pod_ns)),
                volumes,
                scratch: work.join("volumes"),
            };

            // trellisd, as the chart runs it but with files instead of the Kubernetes API.
            let trellisd_spec = json!({
                "name": "trellisd",
                "args": [
                    "--config-dir=/etc/trellis/config", "--mesh-config=/etc/trellis/mesh/mesh",
                    "--xds-address=0.0.0.0:15010", "--secure-xds-address=0.0.0.0:15012",
                    "--monitoring-address=0.0.0.0:15014", "--trust-domain=cluster.local",
                    "--token-auth-file=/etc/trellis/tokens/tokens.csv",
                    "--root-cert-file=/var/run/trellis/root-cert.pem",
                ],
                "env": [{"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}],
                "securityContext": nonroot_security_context(),
                "volumeMounts": [
                    {"name": "mesh-config", "mountPath": "/etc/trellis/mesh", "readOnly": true},
                    {"name": "config", "mountPath": "/etc/trellis/config", "readOnly": true},
                    {"name": "tokens", "mountPath": "/etc/trellis/tokens", "readOnly": true},
                    {"name": "root-cert", "mountPath": "/var/run/trellis"},
                ],
            });
            let trellisd_pod = system_pod(
                "trellisd",
                BTreeMap::from([
                    ("mesh-config".to_owned(), mesh.clone()),
                    ("config".to_owned(), istio_config),
                    ("tokens".to_owned(), tokens),
                    ("root-cert".to_owned(), root.clone()),
                ]),
            );
            let trellisd_bundle = bundle("trellisd", "trellisd");
            trellisd_pod.configure(&trellisd_bundle, &configs["trellisd"], &trellisd_spec);
            let mut trellisd = Container::start(&runtime, &trellisd_bundle, &format!("{id}-trellisd"));
            trellisd.wait_until("trellisd ready on 15014", || ok(&http_get_in(pod_ns, 15014, "/ready")));
            trellisd.wait_until("the mesh root written", || root.join("root-cert.pem").exists());
            let metrics = http_get_in(pod_ns, 15014, "/metrics");
            assert!(ok(&metrics) && metrics.contains("# TYPE"), "trellisd's /metrics: {metrics}");

            // The injector, with a serving certificate for its Service (as in the chart's
            // "secret" mode) and the chart's arguments, hub and tag.
            let identity = WebhookIdentity {
                webhook_config: "trellis-sidecar-injector".to_owned(),
                service: "trellis-injector".to_owned(),
                namespace: SYSTEM_NAMESPACE.to_owned(),
            };
            let ca = Authority::generate(&identity).unwrap();
            let serving = ca.issue(&identity).unwrap();
            let certs = directory(&work.join("injector-certs"));
            write(&certs.join("tls.crt"), &serving.cert_pem);
            write(&certs.join("tls.key"), &serving.key_pem);
            let ca_file = work.join("webhook-ca.pem");
            write(&ca_file, &ca.ca_pem);
            let injector_spec = json!({
                "name": "injector",
                "args": [
                    "--listen=0.0.0.0:15017",
                    "--tls-cert=/etc/trellis/injector-certs/tls.crt",
                    "--tls-key=/etc/trellis/injector-certs/tls.key",
                    "--mesh-config=/etc/trellis/mesh/mesh",
                    "--native-sidecars=true",
                    format!("--proxy-image={HUB}/proxy:{TAG}"),
                    format!("--proxy-init-image={HUB}/proxy-init:{TAG}"),
                ],
                "env": [{"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}],
                "securityContext": nonroot_security_context(),
                "volumeMounts": [
                    {"name": "injector-certs", "mountPath": "/etc/trellis/injector-certs", "readOnly": true},
                    {"name": "mesh-config", "mountPath": "/etc/trellis/mesh", "readOnly": true},
                ],
            });
            let injector_pod = system_pod(
                "trellis-injector",
                BTreeMap::from([("injector-certs".to_owned(), certs), ("mesh-config".to_owned(), mesh)]),
            );
            let injector_bundle = bundle("injector", "injector");
            injector_pod.configure(&injector_bundle, &configs["injector"], &injector_spec);
            let mut injector = Container::start(&runtime, &injector_bundle, &format!("{id}-injector"));
            injector.wait_until("the injector ready on 15017 (TLS)", || {
                injector_call(&tools.curl, pod_ns, &ca_file, "/readyz", None).0 == 200
            });

            // The app's pod, injected.
            let review = work.join("review.json");
            let pod = json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": APP_POD, "namespace": APP_NAMESPACE, "labels": {"app": "web"}},
                "spec": {
                    "serviceAccountName": APP_ACCOUNT,
                    "containers": [{"name": "web", "image": "nginx", "ports": [{"containerPort": 8080}]}],
                },
            });
            let request = json!({
                "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "request": {
                    "uid": "b0b7a1c2-0000-4000-8000-000000000001",
                    "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "resource": {"group": "", "version": "v1", "resource": "pods"},
                    "namespace": APP_NAMESPACE, "operation": "CREATE",
                    "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                    "object": pod,
                },
            });
            write(&review, &request.to_string());
            let (status, body) = injector_call(&tools.curl, pod_ns, &ca_file, "/inject", Some(&review));
            assert_eq!(status, 200, "/inject: {body}\n{}", injector.log());
            let answer: Value =
                serde_json::from_str(&body).unwrap_or_else(|e| panic!("/inject: {e}: {body}"));
            assert_eq!(answer["response"]["allowed"], true, "{answer}");
            let patch: k8s_openapi::ByteString =
                serde_json::from_value(answer["response"]["patch"].clone()).expect("a base64 patch");
            let patch: Value = serde_json::from_slice(&patch.0).unwrap();
            let init =
                find_container(&patch, "trellis-init").unwrap_or_else(|| panic!("no trellis-init: {patch}"));
            let sidecar =
                find_container(&patch, "istio-proxy").unwrap_or_else(|| panic!("no istio-proxy: {patch}"));
            let (init_image, sidecar_image) = (image_named(&init["image"]), image_named(&sidecar["image"]));
            assert_eq!((init_image, sidecar_image), ("proxy-init", "proxy"));

            // The app pod's volumes the sidecar needs filled: the mesh root (the ConfigMap
            // istio-ca-root-cert), the projected token, the downward API's labels.
            let token = directory(&work.join("istio-token"));
            write(&token.join("istio-token"), &format!("{APP_TOKEN}\n"));
            let podinfo = directory(&work.join("podinfo"));
            write(&podinfo.join("labels"), "app=\"web\"\n");
            write(&podinfo.join("annotations"), "");
            let app_pod = |netns: &str| Pod {
                name: APP_POD.to_owned(),
                namespace: APP_NAMESPACE.to_owned(),
                service_account: APP_ACCOUNT.to_owned(),
                netns: Some(netns_path(netns)),
                volumes: BTreeMap::from([
                    ("istiod-ca-cert".to_owned(), root.clone()),
                    ("istio-token".to_owned(), token.clone()),
                    ("istio-podinfo".to_owned(), podinfo.clone()),
                ]),
                scratch: work.join("volumes"),
            };

            // trellis-init, as injected: the redirect, with the image's nft.
            let init_bundle = bundle(init_image, "trellis-init");
            app_pod(pod_ns).configure(&init_bundle, &configs[init_image], init);
            let mut redirect = Container::start(&runtime, &init_bundle, &format!("{id}-trellis-init"));
            let status = redirect.wait();
            assert!(status.success(), "trellis-init: {status}\n{}", redirect.log());
            drop(redirect);
            let rules = output_in(pod_ns, &["nft", "list", "ruleset"]);
            assert!(rules.contains("trellis"), "no redirect in the pod after trellis-init:\n{rules}");

            // The same with the image's iptables tools, in a namespace of its own.
            let mut with_iptables = init.clone();
            with_iptables["args"]
                .as_array_mut()
                .expect("trellis-init's args")
                .push(json!("--backend=iptables"));
            let iptables_bundle = bundle(init_image, "trellis-init-iptables");
            app_pod(other_ns).configure(&iptables_bundle, &configs[init_image], &with_iptables);
            let mut redirect =
                Container::start(&runtime, &iptables_bundle, &format!("{id}-trellis-init-iptables"));
            let status = redirect.wait();
            assert!(status.success(), "trellis-init --backend=iptables: {status}\n{}", redirect.log());
            drop(redirect);
            let rules = output_in(other_ns, &["iptables-legacy-save", "-t", "nat"]);
            assert!(rules.contains("TRELLIS_"), "no iptables redirect after trellis-init:\n{rules}");

            // istio-proxy, as injected: certified and configured by trellisd over 15012.
            let sidecar_bundle = bundle(sidecar_image, "istio-proxy");
            app_pod(pod_ns).configure(&sidecar_bundle, &configs[sidecar_image], sidecar);
            let mut proxy = Container::start(&runtime, &sidecar_bundle, &format!("{id}-istio-proxy"));
            proxy
                .wait_until("the proxy ready on 15021", || ok(&http_get_in(pod_ns, 15021, "/healthz/ready")));
            let hook = proxy.exec(&["trellis-proxy", "wait", "--timeout", "10s"]);
            assert!(
                hook.status.success(),
                "`trellis-proxy wait` in the proxy's container: {}{}",
                String::from_utf8_lossy(&hook.stdout),
                String::from_utf8_lossy(&hook.stderr)
            );
            let stats = http_get_in(pod_ns, 15090, "/stats/prometheus");
            assert!(ok(&stats), "the proxy's 15090: {stats}");
            assert!(ok(&http_get_in(pod_ns, 15020, "/healthz/ready")), "the proxy's status port");
            let node = format!("{APP_POD}.{APP_NAMESPACE}");
            proxy.wait_until("trellisd reports the proxy synced", || {
                let syncz = http_get_in(pod_ns, 15014, "/debug/syncz");
                syncz.contains(&node) && syncz.contains("SYNCED")
            });
            eprintln!("images built and run with {} in {:.1?}", runtime.program.display(), started.elapsed());
            drop((proxy, injector, trellisd));
        });
    });
}
