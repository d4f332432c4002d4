//! The demo's processes: started from this executable (hidden subcommands), each in its pod's
//! network namespace and as its pod's user when there are namespaces, in a process group of
//! its own (Ctrl-C reaches the demo, which stops them in order), with a clean environment
//! carrying a marker that says which run it belongs to, and output in a log file. Stopped by
//! pid only.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use trellis_proxy_init::apply::in_namespace;

/// The environment variable that marks a process as the demo's; its value is the run directory.
pub const MARKER: &str = "TRELLIS_DEMO_RUN";
/// What a tool run by a child (nft, iptables) is looked up in.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How to start one process.
pub struct Launch<'a> {
    /// What it is, for messages: `proxy catalog-v1`.
    pub role: String,
    pub program: &'a Path,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The network namespace to start it in (the current one when `None`).
    pub netns: Option<PathBuf>,
    /// Run as this UID and GID (no supplementary groups).
    pub user: Option<u32>,
    pub log: PathBuf,
}

/// A started process.
pub struct Process {
    pub role: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Why it is no longer running, if it is not.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!("{} exited ({status})", self.role)),
            Ok(None) => None,
            Err(e) => Some(format!("{}: {e}", self.role)),
        }
    }

    /// The end of its log, for an error message.
    pub fn log_tail(&self) -> String {
        tail(&self.log, 2048)
    }
}

fn command(launch: &Launch<'_>, run_dir: &Path) -> Result<Command, String> {
    // Appending: a proxy opens its own standard output again by name (`accessLogFile:
    // /dev/stdout`), and its writes and those through the inherited descriptor must not
    // overwrite each other. Owned by the process's user, who may then open it so.
    let _ = std::fs::remove_file(&launch.log);
    let log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&launch.log)
        .map_err(|e| format!("{}: {e}", launch.log.display()))?;
    if let Some(id) = launch.user {
        std::os::unix::fs::fchown(&log, Some(id), Some(id))
            .map_err(|e| format!("{}: {e}", launch.log.display()))?;
    }
    let err = log.try_clone().map_err(|e| format!("{}: {e}", launch.log.display()))?;
    let mut command = Command::new(launch.program);
    command
        .args(&launch.args)
        .env_clear()
        .env("PATH", PATH)
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .env(MARKER, run_dir)
        .current_dir(run_dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        // Its own group: the terminal's Ctrl-C goes to the demo alone, which stops everything in
        // order.
        .process_group(0);
    if let Some(id) = launch.user {
        command.uid(id).gid(id);
    }
    Ok(command)
}

pub fn spawn(launch: &Launch<'_>, run_dir: &Path) -> Result<Process, String> {
    let mut command = command(launch, run_dir)?;
    let child = in_namespace(launch.netns.as_deref(), move || command.spawn())
        .map_err(|e| format!("{}: {e}", launch.role))?
        .map_err(|e| format!("cannot start {} ({}): {e}", launch.role, launch.program.display()))?;
    Ok(Process { role: launch.role.clone(), child, log: launch.log.clone() })
}

/// Runs a process to its end (within `timeout`); an error carries its output.
pub fn run(launch: &Launch<'_>, run_dir: &Path, timeout: Duration) -> Result<(), String> {
    let mut process = spawn(launch, run_dir)?;
    let deadline = Instant::now() + timeout;
    loop {
        match process.child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => {
                return Err(format!("{} failed ({status}):\n{}", launch.role, process.log_tail()));
            }
            Ok(None) if Instant::now() >= deadline => {
                let _ = process.child.kill();
                let _ = process.child.wait();
                return Err(format!(
                    "{} did not finish within {timeout:?}:\n{}",
                    launch.role,
                    process.log_tail()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("{}: {e}", launch.role)),
        }
    }
}

/// Stops every process: SIGTERM to all, up to `grace` to exit, then SIGKILL; each one reaped.
pub fn stop_all(processes: &mut [Process], grace: Duration) {
    for p in processes.iter_mut() {
        if p.child.try_wait().ok().flatten().is_none() {
            let _ = kill(pid_of(p.pid()), Signal::SIGTERM);
        }
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline
        && processes.iter_mut().any(|p| p.child.try_wait().ok().flatten().is_none())
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in processes.iter_mut() {
        if p.child.try_wait().ok().flatten().is_none() {
            let _ = p.child.kill();
        }
        let _ = p.child.wait();
    }
}

fn pid_of(pid: u32) -> Pid {
    Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX))
}

/// Whether a process with this pid is running. A zombie is not: a leftover whose parent died
/// waits for init to reap it, and some inits (a container's) never do.
pub fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // "pid (comm) state ...": the command may hold anything, so read after its last ')'.
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z" | "X") | None)
}

/// The value of the demo's marker in a process's environment, if it has one.
pub fn marker_of(pid: u32) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ.split(|b| *b == 0).find_map(|var| {
        var.strip_prefix(format!("{MARKER}=").as_bytes()).map(|v| String::from_utf8_lossy(v).into_owned())
    })
}

/// Stops processes that are not our children (leftovers of an earlier run): SIGTERM to all, a
/// bounded wait, SIGKILL to what is left.
pub fn stop_pids(pids: &[u32]) {
    for &pid in pids {
        let _ = kill(pid_of(pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while pids.iter().any(|&pid| alive(pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for &pid in pids.iter().filter(|&&pid| alive(pid)) {
        let _ = kill(pid_of(pid), Signal::SIGKILL);
    }
}

/// A process's resident memory: all of it (`VmRSS`) and its own, anonymous part (`RssAnon`:
/// heap and stacks, without the executable's pages that every demo process shares), in bytes.
pub fn memory(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    Some((field("VmRSS:")?, field("RssAnon:")?))
}

/// The last `bytes` of a file, from a line start.
pub fn tail(path: &Path, bytes: u64) -> String {
    let Ok(mut file) = std::fs::File::open(path) else { return String::new() };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(bytes)));
    let mut text = String::new();
    let mut raw = Vec::new();
    if file.read_to_end(&mut raw).is_ok() {
        text = String::from_utf8_lossy(&raw).into_owned();
    }
    if len > bytes
        && let Some(start) = text.find('\n')
    {
        text.drain(..=start);
    }
    text.lines().map(|l| format!("    {l}\n")).collect()
}
