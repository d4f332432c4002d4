//! `trellis-cni`: a CNI plugin when a container runtime runs it (CNI_COMMAND set), the node
//! agent with `install`, and the agent's readiness check with `ready`.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use trellis_cni::install::InstallArgs;
use trellis_cni::install::agent::Agent;
use trellis_cni::netconf::{self, MAX_CONFIG_BYTES};
use trellis_cni::protocol::{CniError, Invocation, code};
use trellis_cni::{logging, plugin};

#[derive(Parser)]
#[command(name = "trellis-cni", version, about = "Trellis chained CNI plugin and its node agent")]
struct Args {
    #[command(subcommand)]
    command: AgentCommand,
}

#[derive(Subcommand)]
enum AgentCommand {
    /// Install the plugin on this node and keep it in the primary network's chain.
    Install(Box<InstallArgs>),
    /// Exit 0 when the agent has put the plugin in the chain (a readiness probe).
    Ready {
        #[arg(long, env = "READY_FILE", default_value = "/tmp/trellis-cni-ready")]
        ready_file: PathBuf,
    },
}

fn main() -> ExitCode {
    if std::env::var_os("CNI_COMMAND").is_some() {
        return run_plugin();
    }
    match Args::parse().command {
        AgentCommand::Install(args) => run_agent(*args),
        AgentCommand::Ready { ready_file } => match std::fs::read_to_string(&ready_file) {
            Ok(file) => {
                println!("trellis-cni is in the chain ({})", file.trim());
                ExitCode::SUCCESS
            }
            Err(_) => {
                eprintln!("trellis-cni is not in the chain yet ({} is absent)", ready_file.display());
                ExitCode::FAILURE
            }
        },
    }
}

fn run_plugin() -> ExitCode {
    let mut stdin = Vec::new();
    // One byte over the limit is enough to know the input is too big.
    let read = std::io::stdin().take(MAX_CONFIG_BYTES as u64 + 1).read_to_end(&mut stdin);
    logging::init_plugin(&stdin);
    let version = netconf::version_for_reply(&stdin);
    let outcome = read
        .map_err(|e| CniError::new(code::IO_FAILURE, "cannot read the network configuration", e.to_string()))
        .and_then(|_| Invocation::from_env(|name| std::env::var(name).ok()))
        .and_then(|invocation| plugin::run(&invocation, &stdin));
    match outcome {
        Ok(output) => {
            if !output.is_empty() {
                println!("{output}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(code = e.code, "{e}");
            println!("{}", e.to_json(&version));
            ExitCode::FAILURE
        }
    }
}

fn run_agent(args: InstallArgs) -> ExitCode {
    logging::init_agent();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("trellis-cni install: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = Agent::new(args).and_then(|agent| runtime.block_on(agent.run()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("trellis-cni install: {e}");
            ExitCode::FAILURE
        }
    }
}
