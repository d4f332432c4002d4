//! What a run has made, written down as it goes (`state.json` in the run directory), so that a
//! run after a crash removes an earlier run's leftovers first: its processes (by pid, only
//! those whose environment carries the demo's marker) and its network namespaces (by the
//! demo's name prefix, after stopping the demo processes inside).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{network, processes};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The `trellis demo` process itself.
    pub demo_pid: u32,
    pub namespaces: Vec<String>,
    pub pids: Vec<u32>,
}

impl State {
    pub fn path(run_dir: &Path) -> PathBuf {
        run_dir.join("state.json")
    }

    /// Written whole, by rename: a crash never leaves half a file.
    pub fn save(&self, run_dir: &Path) -> Result<(), String> {
        let path = State::path(run_dir);
        let tmp = run_dir.join("state.json.tmp");
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        std::fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn load(run_dir: &Path) -> Option<State> {
        serde_json::from_str(&std::fs::read_to_string(State::path(run_dir)).ok()?).ok()
    }
}

/// Where this user's runs keep their files: the same place every time, so the next run finds
/// what a crashed one left.
pub fn run_dir() -> PathBuf {
    std::env::temp_dir().join(format!("trellis-demo-{}", nix::unistd::geteuid()))
}

/// Refuses a run directory someone else could have planted (a symlink, another owner).
fn check_ours(run_dir: &Path) -> Result<bool, String> {
    let meta = match std::fs::symlink_metadata(run_dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(format!("{}: {e}", run_dir.display())),
    };
    if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(format!(
            "{} exists and is not a directory of this user's; remove it, or set TMPDIR elsewhere",
            run_dir.display()
        ));
    }
    Ok(true)
}

/// What an earlier run left and this one removed.
#[derive(Debug, Default)]
pub struct Leftovers {
    pub processes: usize,
    pub namespaces: usize,
}

/// Removes an earlier run's processes, namespaces and files. A run that is still going is left
/// alone (an error) unless `even_running`.
pub fn clean(run_dir: &Path, namespaces: bool, even_running: bool) -> Result<Leftovers, String> {
    let mut left = Leftovers::default();
    let existed = check_ours(run_dir)?;
    if let Some(state) = existed.then(|| State::load(run_dir)).flatten() {
        let running = state.demo_pid != std::process::id()
            && processes::alive(state.demo_pid)
            && is_demo(state.demo_pid);
        if running && !even_running {
            return Err(format!(
                "another trellis demo (pid {}) is running; stop it first (Ctrl-C there), or run `trellis demo --cleanup`",
                state.demo_pid
            ));
        }
        if running {
            processes::stop_pids(&[state.demo_pid]);
        }
        let ours = run_dir.to_string_lossy();
        let pids: Vec<u32> = state
            .pids
            .into_iter()
            .filter(|&pid| processes::marker_of(pid).as_deref() == Some(&*ours))
            .collect();
        processes::stop_pids(&pids);
        left.processes += pids.len();
    }
    if namespaces {
        let names = network::existing();
        // Whatever run put them there: demo processes inside demo namespaces are leftovers.
        let pids: Vec<u32> = names
            .iter()
            .flat_map(|name| network::pids_in(name))
            .filter(|&pid| processes::marker_of(pid).is_some())
            .collect();
        processes::stop_pids(&pids);
        left.processes += pids.len();
        for name in &names {
            network::delete(name)?;
            left.namespaces += 1;
        }
    }
    if existed {
        std::fs::remove_dir_all(run_dir).map_err(|e| format!("{}: {e}", run_dir.display()))?;
    }
    Ok(left)
}

/// Whether a pid is a `trellis ... demo` process (its command line says so).
fn is_demo(pid: u32) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    cmdline.split(|b| *b == 0).any(|arg| arg == b"demo")
}

/// A fresh run directory: readable by the pods' users when they switch users (root), private
/// otherwise.
pub fn create(run_dir: &Path, shared: bool) -> Result<(), String> {
    std::fs::create_dir_all(run_dir).map_err(|e| format!("{}: {e}", run_dir.display()))?;
    let mode = if shared { 0o755 } else { 0o700 };
    // Set after creating, so the umask cannot narrow it.
    std::fs::set_permissions(run_dir, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("{}: {e}", run_dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_leftover_files_go() {
        let parent = tempfile::tempdir().unwrap();
        let run_dir = parent.path().join("run");
        create(&run_dir, false).unwrap();
        let state = State {
            demo_pid: u32::MAX - 1,
            namespaces: vec!["trellis-demo".into()],
            pids: vec![u32::MAX - 2],
        };
        state.save(&run_dir).unwrap();
        assert_eq!(State::load(&run_dir), Some(state));
        // The earlier run is gone (its pid does not exist): its files are removed, and the pid
        // in the file is not ours to stop (no marker).
        let left = clean(&run_dir, false, false).unwrap();
        assert_eq!((left.processes, left.namespaces), (0, 0));
        assert!(!run_dir.exists());
        // Nothing to clean is fine.
        clean(&run_dir, false, false).unwrap();
    }

    #[test]
    fn a_running_demo_is_left_alone() {
        let parent = tempfile::tempdir().unwrap();
        let run_dir = parent.path().join("run");
        create(&run_dir, false).unwrap();
        // A live process whose command line has a `demo` argument.
        let mut sleeper =
            std::process::Command::new("sh").args(["-c", "sleep 30; true", "demo"]).spawn().unwrap();
        State { demo_pid: sleeper.id(), ..State::default() }.save(&run_dir).unwrap();
        // Right after spawning, the child may still be in exec, its command line not yet there.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !is_demo(sleeper.id()) {
            assert!(std::time::Instant::now() < deadline, "the child's command line never showed");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let err = clean(&run_dir, false, false).unwrap_err();
        assert!(err.contains(&format!("another trellis demo (pid {}) is running", sleeper.id())), "{err}");
        assert!(run_dir.exists());
        let _ = sleeper.kill();
        let _ = sleeper.wait();
    }

    #[test]
    fn a_planted_run_directory_is_refused() {
        let parent = tempfile::tempdir().unwrap();
        let run_dir = parent.path().join("run");
        std::os::unix::fs::symlink(parent.path(), &run_dir).unwrap();
        let err = clean(&run_dir, false, false).unwrap_err();
        assert!(err.contains("is not a directory of this user's"), "{err}");
    }
}
