//! The root certificate, where workloads read it: a file (`--root-cert-file`, for workloads
//! outside Kubernetes and for the demo), and in Kubernetes mode the ConfigMap
//! `istio-ca-root-cert` in every namespace (what Istio's injected pods mount).

mod config_maps;
mod file;

pub use config_maps::{ROOT_CONFIG_MAP, ROOT_KEY, keep_config_maps};
pub use file::{keep_root_file, write_atomically};
