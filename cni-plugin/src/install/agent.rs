//! The node agent's loop: install, then reconcile whenever the CNI config directory changes
//! (another agent rewriting its file, a new primary appearing), and clean up on SIGTERM.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use serde_json::{Value, json};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use super::conflist::{self, PLUGIN_TYPE};
use super::kubeconfig::{self, KubeconfigError};
use super::{InstallArgs, KUBECONFIG_NAME};

/// Configuration files bigger than this are not network configurations; skipped.
const MAX_CONFIG_FILE: u64 = 1 << 20;
/// Besides directory events: how often the service account token is re-read (it rotates).
const REFRESH: Duration = Duration::from_secs(60);
/// Events closer together than this are one change.
const DEBOUNCE: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Kubeconfig(#[from] KubeconfigError),
    #[error("cannot watch {path}: {source}")]
    Watch { path: PathBuf, source: nix::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io { path: path.to_owned(), source }
}

/// What the last reconcile found.
#[derive(Debug, PartialEq, Eq)]
pub enum Chain {
    /// Our entry is last in this file, the one the runtime uses.
    InPlace(String),
    /// No primary network configuration yet.
    WaitingForPrimary,
}

pub struct Agent {
    args: InstallArgs,
    server: String,
    /// Set once the binary in place is known to be ours; then a size check is enough.
    installed: std::sync::atomic::AtomicBool,
}

impl Agent {
    pub fn new(args: InstallArgs) -> Result<Agent, InstallError> {
        let server = match &args.api_server {
            Some(s) => s.clone(),
            None => kubeconfig::in_cluster_server(
                std::env::var("KUBERNETES_SERVICE_HOST").ok().as_deref(),
                std::env::var("KUBERNETES_SERVICE_PORT").ok().as_deref(),
            )
            .ok_or(KubeconfigError::NoServer)?,
        };
        Ok(Agent { args, server, installed: std::sync::atomic::AtomicBool::new(false) })
    }

    /// Installs and keeps the chain in place until SIGTERM or SIGINT.
    pub async fn run(&self) -> Result<(), InstallError> {
        let dir = &self.args.cni_conf_dir;
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut changes = watch(dir)?;
        let mut term = signal(SignalKind::terminate()).map_err(io(dir))?;
        let mut int = signal(SignalKind::interrupt()).map_err(io(dir))?;
        loop {
            // Also every round: a binary removed from under us would fail every pod.
            self.install_binary()?;
            self.write_kubeconfig()?;
            match self.reconcile() {
                Ok(chain) => self.report(&chain)?,
                // A broken primary file is someone else's to fix; say so and wait for a change.
                Err(e) => {
                    tracing::error!(error = %e, "cannot join the primary network configuration");
                    self.set_ready(None)?;
                }
            }
            tokio::select! {
                event = changes.recv() => {
                    if event.is_none() {
                        // The watcher is gone: exit, and let the DaemonSet start a fresh agent.
                        return Err(InstallError::Watch { path: dir.clone(), source: nix::Error::EIO });
                    }
                    // Coalesce a burst of events (another agent's write and rename, ours) into
                    // one reconcile.
                    tokio::time::sleep(DEBOUNCE).await;
                    while changes.try_recv().is_ok() {}
                }
                _ = tokio::time::sleep(REFRESH) => {}
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        if self.args.leave_on_exit {
            tracing::info!("stopping; leaving the plugin installed (--leave-on-exit)");
            return self.set_ready(None);
        }
        self.uninstall()
    }

    /// The plugin's entry in the chain.
    pub fn entry(&self) -> Value {
        let mut entry = json!({
            "type": PLUGIN_TYPE,
            "log_level": self.args.plugin_log_level,
            "kubernetes": {
                "kubeconfig": self.args.host_cni_conf_dir.join(KUBECONFIG_NAME),
                "exclude_namespaces": self.args.exclude_namespaces,
            },
        });
        if let Some(file) = &self.args.plugin_log_file {
            entry["log_file"] = json!(file);
        }
        entry
    }

    /// Puts our entry last in the primary configuration, writing only when that changes it.
    pub fn reconcile(&self) -> Result<Chain, InstallError> {
        let files = self.config_files()?;
        let Some((name, content)) = conflist::primary(&files) else { return Ok(Chain::WaitingForPrimary) };
        let merged = conflist::insert(name, content, &self.entry()).map_err(|e| InstallError::Io {
            path: self.args.cni_conf_dir.join(&e.file),
            source: std::io::Error::other(e.reason),
        })?;
        let Some(merged) = merged else { return Ok(Chain::InPlace(name.clone())) };
        let dir = &self.args.cni_conf_dir;
        // Through a symlink to the file it names, so the link stays.
        let path = dir.join(&merged.file_name);
        let path = std::fs::canonicalize(&path).unwrap_or(path);
        write_atomically(&path, merged.content.as_bytes(), 0o644)?;
        if let Some(old) = &merged.replaces {
            std::fs::remove_file(dir.join(old)).map_err(io(&dir.join(old)))?;
        }
        tracing::info!(file = %merged.file_name, "trellis-cni is last in the chain");
        Ok(Chain::InPlace(merged.file_name))
    }

    fn report(&self, chain: &Chain) -> Result<(), InstallError> {
        match chain {
            Chain::InPlace(file) => self.set_ready(Some(file)),
            Chain::WaitingForPrimary => {
                tracing::info!(dir = %self.args.cni_conf_dir.display(), "waiting for the primary network's configuration");
                self.set_ready(None)
            }
        }
    }

    fn set_ready(&self, file: Option<&str>) -> Result<(), InstallError> {
        let path = &self.args.ready_file;
        match file {
            Some(file) => write_atomically(path, format!("{file}\n").as_bytes(), 0o644),
            None => match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(path)(e)),
                _ => Ok(()),
            },
        }
    }

    /// (name, content) of every file a runtime might read as a network configuration.
    fn config_files(&self) -> Result<Vec<(String, String)>, InstallError> {
        let dir = &self.args.cni_conf_dir;
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // Following symlinks: a primary may be a link to its owner's file.
            let small =
                std::fs::metadata(entry.path()).is_ok_and(|m| m.is_file() && m.len() <= MAX_CONFIG_FILE);
            if !conflist::is_config_file(&name) || !small {
                continue;
            }
            // A file removed between listing and reading is simply not there.
            if let Ok(content) = std::fs::read_to_string(entry.path()) {
                files.push((name, content));
            }
        }
        Ok(files)
    }

    fn install_binary(&self) -> Result<(), InstallError> {
        let source = match &self.args.plugin_binary {
            Some(p) => p.clone(),
            None => std::env::current_exe().map_err(io(Path::new("/proc/self/exe")))?,
        };
        let target = self.args.cni_bin_dir.join(PLUGIN_TYPE);
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).ok();
        if self.installed.load(std::sync::atomic::Ordering::Relaxed)
            && size(&target).is_some()
            && size(&target) == size(&source)
        {
            return Ok(());
        }
        let bytes = std::fs::read(&source).map_err(io(&source))?;
        if std::fs::read(&target).is_ok_and(|existing| existing == bytes) {
            self.installed.store(true, std::sync::atomic::Ordering::Relaxed);
            return Ok(());
        }
        std::fs::create_dir_all(&self.args.cni_bin_dir).map_err(io(&self.args.cni_bin_dir))?;
        write_atomically(&target, &bytes, 0o755)?;
        self.installed.store(true, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(path = %target.display(), "installed the plugin binary");
        Ok(())
    }

    fn write_kubeconfig(&self) -> Result<(), InstallError> {
        let text = kubeconfig::render(&self.server, &self.args.service_account_dir)?;
        let path = self.args.cni_conf_dir.join(KUBECONFIG_NAME);
        if std::fs::read_to_string(&path).is_ok_and(|existing| existing == text) {
            return Ok(());
        }
        write_atomically(&path, text.as_bytes(), 0o600)
    }

    /// Our entry out of every configuration, then the kubeconfig, binary and readiness.
    fn uninstall(&self) -> Result<(), InstallError> {
        let dir = &self.args.cni_conf_dir;
        for (name, content) in self.config_files()? {
            if let Some(without) = conflist::remove(&name, &content) {
                write_atomically(&dir.join(&name), without.as_bytes(), 0o644)?;
                tracing::info!(file = %name, "removed trellis-cni from the chain");
            }
        }
        for path in [dir.join(KUBECONFIG_NAME), self.args.cni_bin_dir.join(PLUGIN_TYPE)] {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&path)(e)),
                _ => {}
            }
        }
        self.set_ready(None)
    }
}

/// Writes a sibling temporary file (dot-prefixed, so no runtime reads it), syncs it and renames
/// it over `path`: readers see the old file or the new one, never half of one.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temp = dir.join(format!(".{name}.trellis-tmp"));
    // Created with its final mode: a token must never sit in a world-readable file.
    let _ = std::fs::remove_file(&temp);
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&temp).map_err(io(&temp))?;
    file.write_all(bytes).map_err(io(&temp))?;
    file.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(io(&temp))?;
    file.sync_all().map_err(io(&temp))?;
    std::fs::rename(&temp, path).map_err(io(path))
}

/// A wake-up for every change in `dir`, from inotify on a thread of its own.
fn watch(dir: &Path) -> Result<mpsc::Receiver<()>, InstallError> {
    let fail = |source| InstallError::Watch { path: dir.to_owned(), source };
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC).map_err(fail)?;
    // Not IN_MODIFY: a file is looked at once its writer closed it or renamed it into place.
    let flags = AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM;
    inotify.add_watch(dir, flags).map_err(fail)?;
    let (tx, rx) = mpsc::channel(1);
    std::thread::spawn(move || {
        while let Ok(events) = inotify.read_events() {
            // Our own temporary files are noise.
            let relevant = events
                .iter()
                .any(|e| e.name.as_ref().is_none_or(|n| !n.to_string_lossy().ends_with(".trellis-tmp")));
            // A full channel already holds a wake-up; the reconcile it causes sees this change.
            if relevant && matches!(tx.try_send(()), Err(mpsc::error::TrySendError::Closed(_))) {
                return;
            }
        }
    });
    Ok(rx)
}
