//! One plugin invocation, from the runtime's environment and stdin to what goes on stdout.
//! ADD passes the previous result through and, for meshed pods, programs the redirect in the
//! pod's namespace first; every other command leaves the pod alone.

use std::path::Path;

use trellis_proxy_init::apply::{self, Backend};
use trellis_proxy_init::rules::build;

use crate::decide::{Decision, decide};
use crate::netconf::{self, NetConf};
use crate::pod_lookup::get_pod;
use crate::protocol::{CniError, Command, Invocation, SUPPORTED_VERSIONS, code};

/// Runs the command; on success returns what to print (possibly nothing).
pub fn run(invocation: &Invocation, stdin: &[u8]) -> Result<String, CniError> {
    match invocation.command {
        Command::Version => Ok(serde_json::json!({
            "cniVersion": netconf::version_for_reply(stdin),
            "supportedVersions": SUPPORTED_VERSIONS,
        })
        .to_string()),
        // The redirect lives in the pod's namespace and goes with it; there is nothing to undo
        // or collect, and a DEL must not fail a pod's teardown.
        Command::Del | Command::Gc => {
            if let Err(e) = NetConf::parse(stdin) {
                tracing::warn!(error = %e, "ignoring an unreadable configuration on {:?}", invocation.command);
            }
            Ok(String::new())
        }
        // Ready whenever the runtime can run us: we need nothing on the node but ourselves.
        Command::Status => NetConf::parse(stdin).map(|_| String::new()),
        Command::Check => {
            let conf = NetConf::parse(stdin)?;
            if conf.cni_version.starts_with("0.3.") {
                return Err(CniError::new(
                    code::INCOMPATIBLE_VERSION,
                    "incompatible CNI version",
                    format!(
                        "CHECK needs cniVersion 0.4.0 or later, the configuration says {}",
                        conf.cni_version
                    ),
                ));
            }
            conf.prev_result.as_ref().ok_or_else(netconf::missing_prev_result)?;
            Ok(String::new())
        }
        Command::Add => add(invocation, &NetConf::parse(stdin)?),
    }
}

fn add(invocation: &Invocation, conf: &NetConf) -> Result<String, CniError> {
    let result = conf.pass_through()?;
    let Some((namespace, name)) = invocation.pod() else {
        tracing::info!("not a Kubernetes pod (no K8S_POD_NAMESPACE/K8S_POD_NAME in CNI_ARGS); nothing to do");
        return Ok(result);
    };
    // Checked before the API call, so that system pods start even when the API server is
    // unreachable (or the plugin's token has expired).
    if conf.kubernetes.exclude_namespaces.iter().any(|n| n == namespace) {
        tracing::info!(pod = %format!("{namespace}/{name}"), "no redirect: namespace {namespace} is excluded");
        return Ok(result);
    }
    let kubeconfig = conf.kubernetes.kubeconfig.as_deref().ok_or_else(|| {
        CniError::new(code::INVALID_CONFIG, "invalid network configuration", "kubernetes.kubeconfig: missing")
    })?;
    let pod = block_on(get_pod(kubeconfig, namespace, name))??;
    match decide(&pod, &conf.kubernetes.exclude_namespaces, conf.has_ipv6())? {
        Decision::Skip(why) => tracing::info!(pod = %format!("{namespace}/{name}"), "no redirect: {why}"),
        Decision::Redirect(settings) => {
            let netns = invocation.netns.as_deref().ok_or_else(|| {
                CniError::new(code::INVALID_ENVIRONMENT, "CNI_NETNS is not set", "ADD needs CNI_NETNS")
            })?;
            program(netns, &build(&settings), conf.backend)?;
            tracing::info!(pod = %format!("{namespace}/{name}"), netns = %netns.display(), "redirect in place");
        }
    }
    Ok(result)
}

fn program(
    netns: &Path,
    rules: &trellis_proxy_init::rules::RuleSet,
    backend: Option<netconf::Backend>,
) -> Result<(), CniError> {
    if !netns.exists() {
        return Err(CniError::new(
            code::UNKNOWN_CONTAINER,
            "the pod's network namespace does not exist",
            format!("CNI_NETNS={}", netns.display()),
        ));
    }
    let backend = match backend {
        Some(netconf::Backend::Nft) => Backend::Nft,
        Some(netconf::Backend::Iptables) => Backend::Iptables,
        None => apply::detect_backend(Some(netns)),
    };
    // A failed apply leaves the namespace as it was, and the error stops the pod from starting.
    apply::apply(rules, backend, Some(netns))
        .map_err(|e| CniError::new(code::REDIRECT_FAILED, "cannot program the pod's redirect", e.to_string()))
}

/// The plugin is a short-lived process: one small runtime for the API call.
fn block_on<F: std::future::Future>(future: F) -> Result<F::Output, CniError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::new(code::IO_FAILURE, "cannot start the async runtime", e.to_string()))?;
    Ok(runtime.block_on(future))
}
