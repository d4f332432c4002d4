//! The workload's side of Istio's certificate API: a gRPC channel over TLS to the CA (trellisd's
//! 15012, verified against the mesh root), and `certify`, which sends a fresh key's CSR with the
//! pod's token and returns the certificate.

use std::time::Duration;

use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::pki_types::ServerName;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::cert::WorkloadCertificate;
use crate::pb::{IstioCertificateRequest, istio_certificate_service_client::IstioCertificateServiceClient};
use crate::spiffe::SpiffeId;

#[derive(Debug, thiserror::Error)]
pub enum CaClientError {
    #[error("CA address {0:?}: expected host:port")]
    Address(String),
    #[error("CA root certificate: {0}")]
    Root(String),
    #[error("token file {path}: {message}")]
    Token { path: String, message: String },
    #[error("key or CSR: {0}")]
    Csr(String),
    #[error("CA: {code:?}: {message}")]
    Status { code: tonic::Code, message: String },
    #[error("CA answered with an unusable certificate: {0}")]
    Answer(String),
}

/// A lazily connected gRPC channel over TLS to `address` (`host:port`), verifying the server
/// against `roots` and the name `server_name` (the host of `address` when `None`).
pub fn tls_channel(
    address: &str,
    roots_pem: &str,
    server_name: Option<&str>,
) -> Result<Channel, CaClientError> {
    let (host, _port) = address.rsplit_once(':').ok_or_else(|| CaClientError::Address(address.to_owned()))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(server_name.unwrap_or(host).to_owned())
        .map_err(|e| CaClientError::Address(format!("{address}: {e}")))?;
    let roots = crate::tls::root_store(roots_pem).map_err(CaClientError::Root)?;
    let connector = tokio_rustls::TlsConnector::from(
        crate::tls::control_plane_client_config(roots).map_err(CaClientError::Root)?,
    );
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| CaClientError::Address(format!("{address}: {e}")))?
        .connect_timeout(Duration::from_secs(5));
    let target = address.to_owned();
    let connect = tower::service_fn(move |_uri: Uri| {
        let (connector, name, target) = (connector.clone(), name.clone(), target.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(&target).await?;
            let _ = tcp.set_nodelay(true);
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connect))
}

/// A client of the CA.
#[derive(Clone)]
pub struct CaClient {
    client: IstioCertificateServiceClient<Channel>,
}

impl CaClient {
    pub fn new(channel: Channel) -> CaClient {
        CaClient { client: IstioCertificateServiceClient::new(channel) }
    }

    /// A new ECDSA P-256 key, a CSR for `requested` (the CA decides the identity; this is only
    /// what the workload believes it is), and the CA's answer for it.
    pub async fn certify(
        &self,
        requested: &SpiffeId,
        token: &str,
        ttl: Duration,
    ) -> Result<WorkloadCertificate, CaClientError> {
        let (key_der, csr) = new_key_and_csr(requested)?;
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr,
            validity_duration: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
        });
        let bearer = format!("Bearer {}", token.trim());
        let value = bearer.parse().map_err(|_| CaClientError::Token {
            path: "(token)".into(),
            message: "not a valid header value".into(),
        })?;
        request.metadata_mut().insert("authorization", value);
        request.set_timeout(Duration::from_secs(10));
        let answer = self
            .client
            .clone()
            .create_certificate(request)
            .await
            .map_err(|s| CaClientError::Status { code: s.code(), message: s.message().to_owned() })?
            .into_inner();
        WorkloadCertificate::from_chain(answer.cert_chain, key_der)
            .map_err(|e| CaClientError::Answer(e.to_string()))
    }
}

/// A fresh key (PKCS#8 DER) and a PEM CSR naming `id`.
pub fn new_key_and_csr(id: &SpiffeId) -> Result<(Vec<u8>, String), CaClientError> {
    let csr_error = |e: rcgen::Error| CaClientError::Csr(e.to_string());
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(csr_error)?;
    let mut params = CertificateParams::default();
    let uri = rcgen::string::Ia5String::try_from(id.to_string()).map_err(csr_error)?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key).map_err(csr_error)?.pem().map_err(csr_error)?;
    Ok((key.serialize_der(), csr))
}

/// Reads the token from its file each time: the kubelet rotates projected tokens in place.
pub fn read_token(path: &std::path::Path) -> Result<String, CaClientError> {
    let bad = |message: String| CaClientError::Token { path: path.display().to_string(), message };
    let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    // Projected tokens are about a kilobyte; a large file is not one.
    if meta.len() > 64 * 1024 {
        return Err(bad(format!("{} bytes, more than 64 KiB", meta.len())));
    }
    let token = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let token = token.trim().to_owned();
    if token.is_empty() {
        return Err(bad("empty".into()));
    }
    Ok(token)
}
