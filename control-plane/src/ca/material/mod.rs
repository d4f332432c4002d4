//! Where the CA comes from, and keeping it current: a generated self-signed root (the
//! default), Istio's `cacerts` files in a directory (`--ca-dir`, reloaded when they change), or,
//! in Kubernetes mode, the `cacerts` Secret or else a generated root kept in the
//! `istio-ca-secret` Secret so that restarts and replicas share one CA.
//!
//! The CA in force is published on a watch channel: the CSR service signs with whatever it
//! holds at the moment, and the root publishers and trellisd's own serving certificate follow
//! its changes. A reload that fails keeps the last good CA.

mod dir;
mod secret;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;
use trellis_identity::ca::{CaError, CaMaterial, CertificateAuthority};

use super::metrics::CaMetrics;

pub use secret::{PLUGGED_SECRET, SELF_SIGNED_SECRET};

/// The CA in force.
pub struct Authority {
    pub ca: CertificateAuthority,
    /// Where it came from, for logs: "generated", a directory, a Secret.
    pub origin: String,
    material: CaMaterial,
}

impl Authority {
    /// Checks the material (see [`CertificateAuthority::new`]); the error names the file.
    pub fn new(material: CaMaterial, origin: String) -> Result<Authority, CaError> {
        let ca = CertificateAuthority::new(&material)?;
        Ok(Authority { ca, origin, material })
    }

    /// The trust bundle workloads verify against (PEM).
    pub fn root_pem(&self) -> &str {
        self.ca.root_pem()
    }

    pub fn material(&self) -> &CaMaterial {
        &self.material
    }
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").field("origin", &self.origin).finish_non_exhaustive()
    }
}

/// The CA in force, as the rest of trellisd sees it.
pub type CurrentCa = watch::Receiver<Arc<Authority>>;

pub enum MaterialSource {
    /// A new self-signed root at every start.
    Generated,
    /// Istio's `cacerts` layout in a directory, watched.
    Dir(PathBuf),
    /// The `cacerts` Secret in `namespace`, or else the shared generated root in
    /// `istio-ca-secret`.
    Kubernetes { client: kube::Client, namespace: String },
}

/// Loads the CA (an error here stops trellisd: it would have nothing to sign with) and keeps
/// it current in the background.
pub async fn start(
    source: MaterialSource,
    trust_domain: &str,
    metrics: CaMetrics,
) -> Result<CurrentCa, String> {
    match source {
        MaterialSource::Generated => {
            let material = CaMaterial::generate_root(trust_domain).map_err(|e| e.to_string())?;
            let authority =
                Authority::new(material, "generated self-signed root".into()).map_err(|e| e.to_string())?;
            // Nothing will change it: the sender goes, and followers see the channel closed.
            Ok(watch::channel(Arc::new(authority)).1)
        }
        MaterialSource::Dir(dir) => dir::start(dir, metrics),
        MaterialSource::Kubernetes { client, namespace } => {
            secret::start(client, &namespace, trust_domain, metrics).await
        }
    }
}

/// Waits for the next change of the CA; `false` once none can come (its source is fixed).
pub async fn changed(current: &mut CurrentCa) -> bool {
    current.changed().await.is_ok()
}
