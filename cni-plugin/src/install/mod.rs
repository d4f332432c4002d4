//! `trellis-cni install`: the node agent (a DaemonSet) that puts the plugin on the node and in
//! the primary network's chain, keeps it there, and takes it out on SIGTERM.

pub mod agent;
pub mod conflist;
pub mod kubeconfig;

use std::path::PathBuf;

/// Flags, each also readable from the environment (the DaemonSet sets them there).
#[derive(Clone, Debug, clap::Args)]
pub struct InstallArgs {
    /// Where the runtime looks for plugin binaries (as mounted in this container).
    #[arg(long, env = "CNI_BIN_DIR", default_value = "/host/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
    /// Where the runtime reads network configurations (as mounted in this container).
    #[arg(long, env = "CNI_CONF_DIR", default_value = "/host/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// The same directory as the node sees it: the plugin, run by the node's runtime, reads its
    /// kubeconfig there.
    #[arg(long, env = "HOST_CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    pub host_cni_conf_dir: PathBuf,
    /// The plugin binary to install (default: this program).
    #[arg(long, env = "CNI_PLUGIN_BINARY")]
    pub plugin_binary: Option<PathBuf>,
    /// The service account whose token and CA go into the plugin's kubeconfig.
    #[arg(
        long,
        env = "SERVICE_ACCOUNT_DIR",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount"
    )]
    pub service_account_dir: PathBuf,
    /// The API server (default: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT).
    #[arg(long, env = "API_SERVER")]
    pub api_server: Option<String>,
    /// Namespaces whose pods the plugin never programs (comma-separated).
    #[arg(long, env = "EXCLUDE_NAMESPACES", default_value = "kube-system", value_delimiter = ',')]
    pub exclude_namespaces: Vec<String>,
    /// The plugin's log level.
    #[arg(long, env = "PLUGIN_LOG_LEVEL", default_value = "info")]
    pub plugin_log_level: String,
    /// The plugin's log file on the node (default: the runtime's log, via stderr).
    #[arg(long, env = "PLUGIN_LOG_FILE")]
    pub plugin_log_file: Option<PathBuf>,
    /// Exists while our entry is in the primary configuration (the readiness probe reads it).
    #[arg(long, env = "READY_FILE", default_value = "/tmp/trellis-cni-ready")]
    pub ready_file: PathBuf,
    /// On SIGTERM, leave the entry, binary and kubeconfig in place (e.g. during an upgrade).
    #[arg(long, env = "LEAVE_ON_EXIT")]
    pub leave_on_exit: bool,
}

/// The kubeconfig's file name in the CNI config directory: last in name order, and not a
/// network configuration, so no runtime mistakes it for one.
pub const KUBECONFIG_NAME: &str = "ZZZ-trellis-cni-kubeconfig";
