//! The kubeconfig the plugin reads pods with: the node agent's service account (token and CA)
//! and the API server's in-cluster address, written into the CNI config directory.

use std::path::Path;

use base64::Engine;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error(
        "the API server's address is unknown: set --api-server, or KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT"
    )]
    NoServer,
}

/// `https://host:port`, bracketing IPv6 hosts, from the variables Kubernetes sets in every pod.
pub fn in_cluster_server(host: Option<&str>, port: Option<&str>) -> Option<String> {
    let (host, port) = (host.filter(|h| !h.is_empty())?, port.filter(|p| !p.is_empty())?);
    let host = if host.contains(':') { format!("[{host}]") } else { host.to_owned() };
    Some(format!("https://{host}:{port}"))
}

/// The kubeconfig text (JSON, which every kubeconfig reader accepts) for the service account in
/// `sa_dir` (`token` and `ca.crt`, as Kubernetes mounts them).
pub fn render(server: &str, sa_dir: &Path) -> Result<String, KubeconfigError> {
    let read = |name: &str| {
        let path = sa_dir.join(name);
        std::fs::read(&path)
            .map_err(|source| KubeconfigError::Read { path: path.display().to_string(), source })
    };
    let token = String::from_utf8_lossy(&read("token")?).trim().to_owned();
    let ca = base64::engine::general_purpose::STANDARD.encode(read("ca.crt")?);
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": server, "certificate-authority-data": ca}}],
        "users": [{"name": "trellis-cni", "user": {"token": token}}],
        "contexts": [{"name": "trellis-cni", "context": {"cluster": "local", "user": "trellis-cni"}}],
        "current-context": "trellis-cni",
    });
    Ok(serde_json::to_string_pretty(&config).unwrap_or_default() + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_address_comes_from_the_service_variables() {
        assert_eq!(
            in_cluster_server(Some("10.96.0.1"), Some("443")).as_deref(),
            Some("https://10.96.0.1:443")
        );
        assert_eq!(in_cluster_server(Some("fd00::1"), Some("443")).as_deref(), Some("https://[fd00::1]:443"));
        assert_eq!(in_cluster_server(None, Some("443")), None);
        assert_eq!(in_cluster_server(Some(""), Some("443")), None);
    }

    #[tokio::test]
    async fn kube_reads_what_we_write() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "abc.def\n").unwrap();
        // Any PEM will do for reading; kube checks it when it connects.
        std::fs::write(
            dir.path().join("ca.crt"),
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let text = render("https://10.96.0.1:443", dir.path()).unwrap();
        let path = dir.path().join("kubeconfig");
        std::fs::write(&path, text).unwrap();
        let parsed = kube::config::Kubeconfig::read_from(&path).unwrap();
        assert_eq!(parsed.current_context.as_deref(), Some("trellis-cni"));
        let cluster = parsed.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://10.96.0.1:443"));
        assert!(cluster.certificate_authority_data.is_some());
        assert!(parsed.auth_infos[0].auth_info.as_ref().unwrap().token.is_some());
    }

    #[test]
    fn a_missing_service_account_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = render("https://x:443", dir.path()).unwrap_err();
        assert!(err.to_string().contains("token"), "{err}");
    }
}
