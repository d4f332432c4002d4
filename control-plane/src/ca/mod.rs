//! trellisd's certificate authority: Istio's CSR service on the TLS port (15012), signing
//! workload certificates for the identity the caller's token proves.
//!
//! - [`material`]: where the CA comes from (generated, `--ca-dir`, Kubernetes Secrets) and
//!   keeping it current.
//! - [`authenticate`]: who the caller is, from its bearer token (a token file or TokenReview).
//! - [`server`]: the gRPC service.
//! - [`publish`]: the root, where workloads read it (a file, ConfigMaps).
//! - [`serving_cert`] and [`tls_incoming`]: trellisd's own certificate and the TLS port's
//!   connections.
//! - [`metrics`]: counters, with Istio's names where Istio has them.

pub mod authenticate;
pub mod material;
pub mod metrics;
pub mod publish;
pub mod server;
pub mod serving_cert;
pub mod tls_incoming;
mod watched;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_rustls::rustls::ServerConfig;
use trellis_identity::pb::istio_certificate_service_server::IstioCertificateServiceServer;

use authenticate::{Authenticator, TokenReviewer};
use material::{CurrentCa, MaterialSource};
use metrics::CaMetrics;
use server::{CaService, Lifetimes};
use serving_cert::ServingNames;

pub struct CaOptions {
    pub trust_domain: String,
    pub material: MaterialSource,
    /// Tokens from a static token file; without one, Kubernetes mode asks the API server.
    pub token_auth_file: Option<PathBuf>,
    /// Kubernetes mode: TokenReview (without a token file) and the root ConfigMaps.
    pub kubernetes: Option<kube::Client>,
    pub root_cert_file: Option<PathBuf>,
    pub serving: ServingNames,
    pub lifetimes: Lifetimes,
}

/// A running CA: what the TLS port serves.
pub struct Ca {
    pub current: CurrentCa,
    pub service: IstioCertificateServiceServer<CaService>,
    /// Who a caller is, from its token: for the CA, and for xDS on the same port.
    pub authenticator: Arc<Authenticator>,
    /// The TLS port's config, with trellisd's certificate from this CA.
    pub tls: watch::Receiver<Arc<ServerConfig>>,
}

/// Loads the CA and starts what keeps it, its root and trellisd's certificate current. Errors
/// are start-up errors, naming the flag, file or Secret.
pub async fn start(
    options: CaOptions,
    registry: &mut prometheus_client::registry::Registry,
) -> Result<Ca, String> {
    let metrics = CaMetrics::new(registry);
    let current = material::start(options.material, &options.trust_domain, metrics.clone()).await?;
    let authenticator = match (options.token_auth_file, &options.kubernetes) {
        (Some(path), _) => Authenticator::file(path.clone(), metrics.clone())
            .map_err(|e| format!("--token-auth-file {e}"))?,
        (None, Some(client)) => Authenticator::Kubernetes(Box::new(TokenReviewer::new(
            client.clone(),
            trellis_identity::TOKEN_AUDIENCE,
        ))),
        (None, None) => {
            tracing::info!("CA: no --token-auth-file and not --kubernetes: every CSR will be refused");
            Authenticator::Nothing
        }
    };
    if let Some(path) = options.root_cert_file {
        publish::keep_root_file(path, current.clone(), metrics.clone())?;
    }
    if let Some(client) = options.kubernetes {
        tokio::spawn(publish::keep_config_maps(client, current.clone(), metrics.clone()));
    }
    let tls = serving_cert::keep_serving_config(options.serving, current.clone())?;
    tracing::info!(ca = %current.borrow().origin, trust_domain = %options.trust_domain, "CA ready");
    let authenticator = Arc::new(authenticator);
    let service = CaService {
        authority: current.clone(),
        authenticator: authenticator.clone(),
        trust_domain: options.trust_domain,
        lifetimes: options.lifetimes,
        metrics,
    }
    .into_server();
    Ok(Ca { current, service, authenticator, tls })
}
