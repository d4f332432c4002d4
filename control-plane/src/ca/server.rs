//! Istio's certificate service (`istio.v1.auth.IstioCertificateService/CreateCertificate`):
//! authenticate the caller, then sign the CSR's public key for the caller's identity,
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`. What the CSR itself names is
//! ignored.
//!
//! Status codes, as istiod's: a caller who cannot be authenticated gets UNAUTHENTICATED; a CSR
//! that does not parse or a lifetime over the maximum, INVALID_ARGUMENT naming the field;
//! anything on the CA's side, INTERNAL. A token that could not be checked (the API server
//! away) gets UNAVAILABLE, which workloads retry.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use trellis_identity::SpiffeId;
use trellis_identity::ca::CaError;
use trellis_identity::pb::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use trellis_identity::pb::{IstioCertificateRequest, IstioCertificateResponse};

use super::authenticate::{AuthError, Authenticator};
use super::material::CurrentCa;
use super::metrics::CaMetrics;

/// The largest request decoded. A CSR is a few hundred bytes (identity bounds it at 64 KiB, and
/// says so with INVALID_ARGUMENT); above this, tonic refuses the message before it is read.
pub const MAX_REQUEST_BYTES: usize = 128 * 1024;

/// Workload certificate lifetimes.
#[derive(Clone, Copy, Debug)]
pub struct Lifetimes {
    /// When the request asks for none (0 or less).
    pub default: Duration,
    /// A longer request is refused, not shortened: the workload asked for something else.
    pub max: Duration,
}

impl Lifetimes {
    fn seconds(&self, requested: i64) -> Result<i64, Status> {
        if requested <= 0 {
            return Ok(i64::try_from(self.default.as_secs()).unwrap_or(i64::MAX));
        }
        if requested as u64 > self.max.as_secs() {
            return Err(Status::invalid_argument(format!(
                "validity_duration: {requested}s is more than the most this CA issues, {}s",
                self.max.as_secs()
            )));
        }
        Ok(requested)
    }
}

pub struct CaService {
    pub authority: CurrentCa,
    pub authenticator: Arc<Authenticator>,
    pub trust_domain: String,
    pub lifetimes: Lifetimes,
    pub metrics: CaMetrics,
}

impl CaService {
    /// As a tonic service, with the request size bounded.
    pub fn into_server(self) -> IstioCertificateServiceServer<CaService> {
        IstioCertificateServiceServer::new(self).max_decoding_message_size(MAX_REQUEST_BYTES)
    }

    async fn sign(&self, request: Request<IstioCertificateRequest>) -> Result<Vec<String>, Status> {
        let caller = match self.authenticator.authenticate(request.metadata()).await {
            Ok(caller) => caller,
            Err(e) => {
                self.metrics.authentication_failures.inc();
                let peer = request.remote_addr().map(|a| a.to_string()).unwrap_or_default();
                tracing::info!(%peer, "CSR refused: {e}");
                return Err(match e {
                    AuthError::Unauthenticated(_) => Status::unauthenticated(e.to_string()),
                    AuthError::Unavailable(_) => Status::unavailable(e.to_string()),
                });
            }
        };
        let id = SpiffeId::new(&self.trust_domain, &caller.namespace, &caller.service_account)
            .map_err(|e| Status::unauthenticated(format!("the caller's identity is not usable: {e}")))?;
        let request = request.into_inner();
        let seconds = self.lifetimes.seconds(request.validity_duration).inspect_err(|_| {
            self.metrics.csr_errors.inc();
        })?;
        if request.csr.trim().is_empty() {
            self.metrics.csr_errors.inc();
            return Err(Status::invalid_argument("csr: empty; send a PEM CERTIFICATE REQUEST"));
        }
        let authority = self.authority.borrow().clone();
        // Off the runtime's workers: signing is about half a millisecond of CPU, during which
        // every xDS stream on that worker would wait.
        let (signer, signed_id) = (authority.clone(), id.clone());
        let signed =
            tokio::task::spawn_blocking(move || signer.ca.sign_workload(&request.csr, &signed_id, seconds))
                .await
                .map_err(|e| Status::internal(format!("signing stopped: {e}")))?;
        match signed {
            Ok(chain) => {
                self.metrics.issued.inc();
                tracing::debug!(%id, seconds, "certificate issued");
                Ok(chain)
            }
            Err(e @ (CaError::Csr(_) | CaError::TooLong { .. })) => {
                self.metrics.csr_errors.inc();
                tracing::debug!(%id, "CSR refused: {e}");
                Err(Status::invalid_argument(e.to_string()))
            }
            Err(e) => {
                self.metrics.sign_errors.inc();
                tracing::error!(%id, ca = %authority.origin, "signing failed: {e}");
                Err(Status::internal(e.to_string()))
            }
        }
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        self.metrics.csrs.inc();
        let cert_chain = self.sign(request).await?;
        Ok(Response::new(IstioCertificateResponse { cert_chain }))
    }
}
