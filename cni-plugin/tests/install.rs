//! `trellis-cni install`, the node agent, on real directories (no root needed): it installs the
//! binary and kubeconfig, waits for the primary network, joins it (turning a `.conf` into a
//! `.conflist`), rejoins when another agent overwrites the file or a file with priority
//! appears, says so in its readiness file, and on SIGTERM takes everything out again (or, when
//! told to, leaves it).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::PLUGIN;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Node {
        let node = Node { dir: tempfile::tempdir().unwrap() };
        for sub in ["net.d", "bin", "sa"] {
            std::fs::create_dir(node.path(sub)).unwrap();
        }
        std::fs::write(node.path("sa/token"), "token-1").unwrap();
        std::fs::write(
            node.path("sa/ca.crt"),
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        node
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn agent(&self, extra: &[&str]) -> Agent {
        let child = Command::new(PLUGIN)
            .env_clear()
            .arg("install")
            .arg("--cni-conf-dir")
            .arg(self.path("net.d"))
            .arg("--cni-bin-dir")
            .arg(self.path("bin"))
            .arg("--service-account-dir")
            .arg(self.path("sa"))
            .arg("--ready-file")
            .arg(self.path("ready"))
            .args(["--api-server", "https://10.96.0.1:443", "--plugin-binary", PLUGIN])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Agent(child)
    }

    fn write(&self, name: &str, content: &str) {
        // As other agents do: write elsewhere, rename into place.
        let temp = self.path(&format!("{name}.partial"));
        std::fs::write(&temp, content).unwrap();
        std::fs::rename(temp, self.path(&format!("net.d/{name}"))).unwrap();
    }

    fn read(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.path(&format!("net.d/{name}"))).ok()
    }

    /// The plugin types in a configuration file, in order.
    fn types(&self, name: &str) -> Vec<String> {
        let Some(text) = self.read(name) else { return Vec::new() };
        let Ok(v) = serde_json::from_str::<Value>(&text) else { return Vec::new() };
        v["plugins"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["type"].as_str().map(str::to_owned))
            .collect()
    }

    fn ready(&self) -> Option<String> {
        std::fs::read_to_string(self.path("ready")).ok().map(|s| s.trim().to_owned())
    }
}

/// The agent process, stopped (by pid) if the test ends early.
struct Agent(Child);

impl Agent {
    fn terminate(mut self) -> Option<i32> {
        kill(Pid::from_raw(self.0.id() as i32), Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "the agent did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (bounded) until `condition` holds.
fn wait_for(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

const BRIDGE: &str = r#"{"cniVersion": "0.4.0", "name": "bridge-net", "type": "bridge", "bridge": "cni0",
  "ipam": {"type": "host-local", "subnet": "10.22.0.0/16"}}"#;
const CALICO: &str = r#"{"name": "k8s-pod-network", "cniVersion": "1.0.0", "plugins": [
  {"type": "calico", "ipam": {"type": "calico-ipam"}}, {"type": "portmap", "capabilities": {"portMappings": true}}]}"#;

#[test]
fn the_agent_joins_the_chain_keeps_it_and_leaves_it_on_sigterm() {
    let node = Node::new();
    let agent = node.agent(&[]);
    wait_for("the binary and kubeconfig are installed", || {
        node.path("bin/trellis-cni").exists() && node.read("ZZZ-trellis-cni-kubeconfig").is_some()
    });
    assert_eq!(std::fs::read(node.path("bin/trellis-cni")).unwrap(), std::fs::read(PLUGIN).unwrap());
    assert_eq!(node.ready(), None, "not ready before the primary network exists");

    node.write("10-bridge.conf", BRIDGE);
    wait_for("the .conf became a .conflist with us last", || {
        node.types("10-bridge.conflist") == ["bridge", "trellis-cni"]
    });
    wait_for("readiness names the file", || node.ready().as_deref() == Some("10-bridge.conflist"));
    assert_eq!(node.read("10-bridge.conf"), None);
    let conflist: Value = serde_json::from_str(&node.read("10-bridge.conflist").unwrap()).unwrap();
    assert_eq!(conflist["cniVersion"], "0.4.0", "the primary's version is kept");
    assert_eq!(
        conflist["plugins"][1]["kubernetes"]["kubeconfig"], "/etc/cni/net.d/ZZZ-trellis-cni-kubeconfig",
        "the plugin reads the kubeconfig where the node sees it"
    );

    // Another agent overwrites the file without us.
    let without_us =
        r#"{"cniVersion": "0.4.0", "name": "bridge-net", "plugins": [{"type": "bridge", "bridge": "cni1"}]}"#;
    node.write("10-bridge.conflist", without_us);
    wait_for("we are back in the overwritten file", || {
        node.types("10-bridge.conflist") == ["bridge", "trellis-cni"]
    });
    assert!(node.read("10-bridge.conflist").unwrap().contains("cni1"), "their change is kept");

    // A file that sorts first becomes the primary.
    node.write("05-calico.conflist", CALICO);
    wait_for("we joined the new primary", || {
        node.types("05-calico.conflist") == ["calico", "portmap", "trellis-cni"]
    });
    wait_for("readiness follows", || node.ready().as_deref() == Some("05-calico.conflist"));

    assert_eq!(agent.terminate(), Some(0));
    assert_eq!(node.types("05-calico.conflist"), ["calico", "portmap"]);
    assert_eq!(node.types("10-bridge.conflist"), ["bridge"]);
    assert!(!node.path("bin/trellis-cni").exists(), "the binary is removed");
    assert_eq!(node.read("ZZZ-trellis-cni-kubeconfig"), None, "the kubeconfig is removed");
    assert_eq!(node.ready(), None);
    let leftovers: Vec<_> =
        std::fs::read_dir(node.path("net.d")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 2, "nothing else is left: {leftovers:?}");
}

#[test]
fn told_to_leave_it_keeps_the_chain_on_sigterm() {
    let node = Node::new();
    node.write("10-calico.conflist", CALICO);
    let agent = node.agent(&["--leave-on-exit"]);
    wait_for("we joined", || node.types("10-calico.conflist") == ["calico", "portmap", "trellis-cni"]);
    wait_for("ready", || node.ready().is_some());
    assert_eq!(agent.terminate(), Some(0));
    assert_eq!(node.types("10-calico.conflist"), ["calico", "portmap", "trellis-cni"]);
    assert!(node.path("bin/trellis-cni").exists());
    assert_eq!(node.ready(), None, "not ready once stopped");
}

#[test]
fn a_broken_first_file_makes_the_agent_wait_not_join_the_next() {
    let node = Node::new();
    let agent = node.agent(&[]);
    wait_for("installed", || node.path("bin/trellis-cni").exists());
    // containerd stops at the first file in name order when it cannot read it: so do we.
    node.write("01-broken.conflist", "{\"plugins\": ");
    node.write("10-calico.conflist", CALICO);
    // Bounded look: the agent reconciles on every event; it must leave the next file alone.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(node.types("10-calico.conflist"), ["calico", "portmap"], "the next file was edited");
    assert_eq!(node.ready(), None);
    // Once the owner finishes its file, the agent joins it.
    node.write("01-broken.conflist", CALICO);
    wait_for("we joined the repaired first file", || {
        node.types("01-broken.conflist").last().map(String::as_str) == Some("trellis-cni")
    });
    assert_eq!(node.types("10-calico.conflist"), ["calico", "portmap"]);
    assert_eq!(agent.terminate(), Some(0));
}

#[test]
fn a_removed_binary_is_put_back() {
    let node = Node::new();
    node.write("10-calico.conflist", CALICO);
    let agent = node.agent(&[]);
    wait_for("ready", || node.ready().is_some());
    std::fs::remove_file(node.path("bin/trellis-cni")).unwrap();
    // Any change in the directory makes the agent look again.
    node.write("99-other.conflist", CALICO);
    wait_for("the binary is back", || node.path("bin/trellis-cni").exists());
    assert_eq!(agent.terminate(), Some(0));
}

#[test]
fn ready_reports_the_readiness_file() {
    let node = Node::new();
    let ready = |path: &Path| {
        Command::new(PLUGIN).env_clear().args(["ready", "--ready-file"]).arg(path).output().unwrap()
    };
    assert_eq!(ready(&node.path("ready")).status.code(), Some(1));
    std::fs::write(node.path("ready"), "10-calico.conflist\n").unwrap();
    let out = ready(&node.path("ready"));
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("10-calico.conflist"));
}
