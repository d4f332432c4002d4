//! Applying the rule set: each backend as a list of steps (a program and its standard input),
//! planned from the desired rules and what the namespace holds now, then run in order.
//!
//! - nft: one transaction that replaces the `inet trellis` table whole.
//! - iptables: per family one `iptables-restore --noflush` payload that, in each table we use
//!   (raw, mangle, nat), removes our old jump rules from the built-in chains, empties our
//!   chains and writes everything again. If a later family fails, the earlier ones are put back
//!   as they were from their saved state.
//! - TPROXY's policy route (rule and local route) over netlink, after the rules.
//!
//! Applying twice gives the same state; cleanup leaves nothing of ours.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::routes;
use crate::rules::{Family, FamilyRules, RuleSet, Table};
use crate::{iptables, nft};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Iptables,
    Nft,
}

/// nft when the binary exists and the kernel answers it, iptables otherwise.
pub fn detect_backend(netns: Option<&Path>) -> Backend {
    let works = in_namespace(netns, || {
        Command::new("nft").args(["list", "tables"]).stdout(Stdio::null()).stderr(Stdio::null()).status()
    });
    match works {
        Ok(Ok(status)) if status.success() => Backend::Nft,
        _ => Backend::Iptables,
    }
}

/// One program run with its input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub program: &'static str,
    pub args: Vec<&'static str>,
    pub input: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{program} failed: {message}")]
    Tool { program: &'static str, message: String },
    #[error("cannot set up the TPROXY route: {0}")]
    Route(String),
    #[error("cannot enter network namespace {path}: {message}")]
    Namespace { path: PathBuf, message: String },
}

fn save_program(family: Family) -> &'static str {
    match family {
        Family::V4 => "iptables-save",
        Family::V6 => "ip6tables-save",
    }
}

fn restore_program(family: Family) -> &'static str {
    match family {
        Family::V4 => "iptables-restore",
        Family::V6 => "ip6tables-restore",
    }
}

/// The section of one table in `iptables-save` output (its lines between `*table` and
/// `COMMIT`); empty when the table is not there.
fn table_section(saved: &str, table: Table) -> Vec<&str> {
    let header = format!("*{}", table.name());
    saved.lines().skip_while(|l| l.trim() != header).skip(1).take_while(|l| l.trim() != "COMMIT").collect()
}

/// Lines of a saved table that jump from a built-in chain into one of ours, turned into
/// deletions.
fn our_jumps(section: &[&str]) -> Vec<String> {
    section
        .iter()
        .filter(|l| {
            (l.starts_with("-A PREROUTING ") || l.starts_with("-A OUTPUT ")) && l.contains(" -j TRELLIS_")
        })
        .map(|l| format!("-D{}", &l[2..]))
        .collect()
}

/// Our chains that exist in a saved table.
fn our_chains(section: &[&str]) -> Vec<String> {
    section
        .iter()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| c.starts_with("TRELLIS_"))
        .map(str::to_owned)
        .collect()
}

/// The iptables payload that turns `saved` (`iptables-save` of every table) into the desired
/// rules: in each table, our old jumps removed, our chains rewritten, chains we no longer use
/// removed.
pub fn iptables_apply_payload(rules: &FamilyRules, saved: &str) -> String {
    let mut out = String::new();
    for table in Table::ALL {
        let section = table_section(saved, table);
        let wanted: Vec<&str> =
            rules.chains().iter().filter(|c| c.table() == table).map(|c| c.name()).collect();
        let stale: Vec<String> =
            our_chains(&section).into_iter().filter(|c| !wanted.contains(&c.as_str())).collect();
        let jumps = jump_deletions(&section);
        let ours = iptables::declarations_and_rules(rules, table);
        if jumps.is_empty() && stale.is_empty() && ours.is_empty() {
            continue;
        }
        out.push_str(&format!("*{}\n{jumps}{ours}{}COMMIT\n", table.name(), chain_removals(&stale)));
    }
    out
}

/// The iptables payload that removes every trace of ours from `saved`; `None` when there is
/// none.
pub fn iptables_cleanup_payload(saved: &str) -> Option<String> {
    let mut out = String::new();
    for table in Table::ALL {
        let section = table_section(saved, table);
        let (jumps, chains) = (jump_deletions(&section), our_chains(&section));
        if jumps.is_empty() && chains.is_empty() {
            continue;
        }
        out.push_str(&format!("*{}\n{jumps}{}COMMIT\n", table.name(), chain_removals(&chains)));
    }
    (!out.is_empty()).then_some(out)
}

fn jump_deletions(section: &[&str]) -> String {
    our_jumps(section).into_iter().map(|line| line + "\n").collect()
}

/// Empties the chains, then deletes them (a chain still referenced cannot be deleted).
fn chain_removals(chains: &[String]) -> String {
    let flush = chains.iter().map(|c| format!("-F {c}\n"));
    let delete = chains.iter().map(|c| format!("-X {c}\n"));
    flush.chain(delete).collect()
}

/// Applies `set` in the namespace (the current one when `netns` is `None`).
pub fn apply(set: &RuleSet, backend: Backend, netns: Option<&Path>) -> Result<(), ApplyError> {
    in_namespace(netns, || {
        match backend {
            Backend::Nft => run(&Step { program: "nft", args: vec!["-f", "-"], input: nft::script(set) })?,
            Backend::Iptables => apply_iptables(set)?,
        }
        // The route after the rules: until TPROXY marks packets, it routes nothing.
        if let Some(route) = set.tproxy_route {
            let families: Vec<Family> = set.families.iter().map(|f| f.family).collect();
            routes::add(route, &families).map_err(|e| ApplyError::Route(e.to_string()))?;
        }
        Ok(())
    })?
}

/// Removes everything of ours, in every family, whichever backend wrote it.
pub fn cleanup(netns: Option<&Path>) -> Result<(), ApplyError> {
    in_namespace(netns, || {
        if which("nft") {
            // Deleting a table that is not there is an error; create it first so it never is.
            run(&Step { program: "nft", args: vec!["-f", "-"], input: nft::cleanup_script() })?;
        }
        routes::remove_all().map_err(|e| ApplyError::Route(e.to_string()))?;
        for family in [Family::V4, Family::V6] {
            let Ok(saved) = save_tables(family) else { continue };
            if let Some(payload) = iptables_cleanup_payload(&saved) {
                run(&Step {
                    program: restore_program(family),
                    args: vec!["--noflush", "-w", "5"],
                    input: payload,
                })?;
            }
        }
        Ok(())
    })?
}

fn which(program: &str) -> bool {
    Command::new(program).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

fn apply_iptables(set: &RuleSet) -> Result<(), ApplyError> {
    let mut applied: Vec<(Family, String)> = Vec::new();
    for family in &set.families {
        let saved = save_tables(family.family)?;
        let payload = iptables_apply_payload(family, &saved);
        // -w: wait for the xtables lock (kube-proxy holds it too) rather than fail.
        let step = Step {
            program: restore_program(family.family),
            args: vec!["--noflush", "-w", "5"],
            input: payload,
        };
        if let Err(e) = run(&step) {
            // Put back what this family (iptables-restore commits table by table, so a later
            // table's failure can leave an earlier one written) and the earlier ones changed, so
            // a failure leaves nothing half done.
            applied.push((family.family, saved));
            for (done, before) in applied.iter().rev() {
                // Without --noflush: every table in the saved state is put back as it was.
                let restore =
                    Step { program: restore_program(*done), args: vec!["-w", "5"], input: before.clone() };
                let _ = run(&restore);
            }
            return Err(e);
        }
        applied.push((family.family, saved));
    }
    Ok(())
}

/// Every table of the family, as `iptables-save` writes them.
fn save_tables(family: Family) -> Result<String, ApplyError> {
    let program = save_program(family);
    let out = bounded(&mut Command::new(program), None)
        .map_err(|e| ApplyError::Tool { program, message: e.to_string() })?;
    if !out.status.success() {
        return Err(ApplyError::Tool {
            program,
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run(step: &Step) -> Result<(), ApplyError> {
    let fail = |message: String| ApplyError::Tool { program: step.program, message };
    let out = bounded(Command::new(step.program).args(&step.args), Some(&step.input))
        .map_err(|e| fail(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(fail(String::from_utf8_lossy(&out.stderr).trim().to_owned()))
    }
}

/// How long nft or iptables may take: a stuck tool must not hold a pod's start (or a CNI ADD)
/// forever.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs a command with `input` on its stdin, reading its output as it comes, and kills it
/// after [`TOOL_TIMEOUT`].
fn bounded(command: &mut Command, input: Option<&str>) -> std::io::Result<std::process::Output> {
    use std::io::Read;
    let mut child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let read_all = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = read_all(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = read_all(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    if let Some(mut stdin) = child.stdin.take() {
        // A tool that exits early closes its stdin; its exit status says why.
        let _ = stdin.write_all(input.unwrap_or_default().as_bytes());
    }
    let deadline = Instant::now() + TOOL_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer after {TOOL_TIMEOUT:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    Ok(std::process::Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Runs `f` on a thread that has entered the network namespace at `path`, so the programs it
/// starts work there and the rest of the process stays where it was.
pub fn in_namespace<T: Send>(path: Option<&Path>, f: impl FnOnce() -> T + Send) -> Result<T, ApplyError> {
    let Some(path) = path else { return Ok(f()) };
    let fail = |message: String| ApplyError::Namespace { path: path.to_owned(), message };
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| fail(e.to_string()))?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| Err(fail("the namespace thread panicked".to_owned())))
    })
}
