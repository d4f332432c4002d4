//! Scratch network namespaces for the privileged tests: made by the test, removed afterwards,
//! and a visible skip (or, with TRELLIS_PRIVILEGED_TESTS=require, a failure) when not root.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};

/// Runs `f` inside a fresh network namespace, removed afterwards, or says why it cannot.
pub fn in_scratch_namespace(f: impl FnOnce(&str)) -> bool {
    let root = Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false);
    let tools =
        ["/usr/sbin/nft", "/usr/sbin/iptables-restore", "/usr/sbin/ip"].iter().all(|t| Path::new(t).exists());
    if !root || !tools {
        let why = if root { "needs nft, iptables and iproute2" } else { "needs root" };
        assert!(
            std::env::var("TRELLIS_PRIVILEGED_TESTS").as_deref() != Ok("require"),
            "TRELLIS_PRIVILEGED_TESTS=require but this test {why}"
        );
        eprintln!("SKIPPED ({why}): checking the golden rule text with nft and iptables-restore");
        return false;
    }
    // Tests run in parallel in one process: the pid alone is not unique.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("trellis-test-{}-{n}", std::process::id());
    assert!(Command::new("ip").args(["netns", "add", &name]).status().unwrap().success());
    struct Remove(String);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let _remove = Remove(name.clone());
    f(&name);
    true
}

pub fn run_in(ns: &str, program: &[&str], input: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(program)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    child.stdin.take().unwrap().write_all(input.as_bytes()).map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
}

/// A command's standard output inside the namespace.
pub fn output_in(ns: &str, program: &[&str]) -> String {
    let out = Command::new("ip").args(["netns", "exec", ns]).args(program).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}
