//! Mutual TLS between workloads: the rustls configs both sides use, with verifiers that check
//! what a mesh cares about — the chain to the trust bundle and the peer's SPIFFE identity —
//! instead of DNS names. Certificates come from a shared slot, so a renewal takes effect on the
//! next handshake without rebuilding anything; the configs are rebuilt only when the trust
//! bundle changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};

use crate::cert::{WorkloadCertificate, parse_leaf};
use crate::spiffe::SpiffeId;

/// ALPN values a mesh client offers, by what it carries (Istio's, so that Istio's sidecars and
/// Trellis's recognise each other's connections).
pub mod alpn {
    pub const ISTIO: &[u8] = b"istio";
    pub const ISTIO_HTTP11: &[u8] = b"istio-http/1.1";
    pub const ISTIO_HTTP10: &[u8] = b"istio-http/1.0";
    pub const ISTIO_H2: &[u8] = b"istio-h2";
    pub const ISTIO_PEER_EXCHANGE: &[u8] = b"istio-peer-exchange";
    pub const H2: &[u8] = b"h2";
    pub const HTTP11: &[u8] = b"http/1.1";

    /// Whether a ClientHello's ALPN list marks it as a mesh connection to terminate.
    pub fn is_mesh(offered: &[&[u8]]) -> bool {
        offered.iter().any(|p| p.starts_with(b"istio"))
    }
}

/// What a mesh client connection will carry, which decides the ALPN it offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Carries {
    Http1,
    Http2,
    Tcp,
}

impl Carries {
    fn alpn(self) -> Vec<Vec<u8>> {
        let list: &[&[u8]] = match self {
            Carries::Http1 => &[alpn::ISTIO_HTTP11, alpn::ISTIO, alpn::HTTP11],
            Carries::Http2 => &[alpn::ISTIO_H2, alpn::ISTIO, alpn::H2],
            Carries::Tcp => &[alpn::ISTIO_PEER_EXCHANGE, alpn::ISTIO],
        };
        list.iter().map(|p| p.to_vec()).collect()
    }
}

/// The handshake-signature half of a certificate verifier, the same for every verifier here:
/// rustls' own checks with the verifier's `algorithms`.
macro_rules! handshake_signatures_by_algorithms {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    };
}
pub(crate) use handshake_signatures_by_algorithms;

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) fn algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

/// The trust bundle as rustls wants it, from PEM text.
pub fn root_store(pem_text: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for der in crate::cert::certificates_from_pem(pem_text)? {
        roots.add(der).map_err(|e| e.to_string())?;
    }
    if roots.is_empty() {
        return Err("no root certificate".into());
    }
    Ok(roots)
}

/// The proxy's mesh TLS: its current certificate, the trust bundle, and the configs built on
/// them.
pub struct MeshTls {
    trust_domain: String,
    slot: Arc<ArcSwapOption<WorkloadCertificate>>,
    trust: ArcSwapOption<Trust>,
    /// Certificate requests that failed (CA away, token refused, unusable answer).
    failed_requests: std::sync::atomic::AtomicU64,
}

/// Everything that depends on the trust bundle.
struct Trust {
    root_pem: String,
    roots: Arc<RootCertStore>,
    server: Arc<ServerConfig>,
    /// Per ALPN set and allowed peer identities; a service's few accounts make few entries.
    clients: Mutex<HashMap<ClientKey, Arc<ClientConfig>>>,
}

/// What a client config is made for: the ALPN set and the identities the server may have.
type ClientKey = (Carries, Arc<[SpiffeId]>);

impl std::fmt::Debug for MeshTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshTls").field("trust_domain", &self.trust_domain).finish_non_exhaustive()
    }
}

impl MeshTls {
    pub fn new(trust_domain: &str) -> Arc<MeshTls> {
        Arc::new(MeshTls {
            trust_domain: trust_domain.to_owned(),
            slot: Arc::new(ArcSwapOption::empty()),
            trust: ArcSwapOption::empty(),
            failed_requests: std::sync::atomic::AtomicU64::new(0),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Makes `cert` the one new handshakes present. Open connections keep theirs.
    pub fn install(&self, cert: WorkloadCertificate) -> Result<(), String> {
        let same_roots = self.trust.load().as_ref().is_some_and(|t| t.root_pem == cert.root_pem);
        if !same_roots {
            let trust = self.build_trust(&cert.root_pem)?;
            self.trust.store(Some(Arc::new(trust)));
        }
        self.slot.store(Some(Arc::new(cert)));
        Ok(())
    }

    /// Counts a certificate request that failed, for the metrics.
    pub fn record_failed_request(&self) {
        self.failed_requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn failed_requests(&self) -> u64 {
        self.failed_requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn current(&self) -> Option<Arc<WorkloadCertificate>> {
        self.slot.load_full()
    }

    /// The server side of mesh TLS (inbound): a client certificate of this trust domain is
    /// required. `None` until a certificate is installed.
    pub fn server_config(&self) -> Option<Arc<ServerConfig>> {
        self.trust.load().as_ref().map(|t| t.server.clone())
    }

    /// The client side (outbound) towards a peer that must be one of `allowed` (any identity of
    /// this trust domain when empty). `None` until a certificate is installed.
    pub fn client_config(&self, carries: Carries, allowed: &Arc<[SpiffeId]>) -> Option<Arc<ClientConfig>> {
        let trust = self.trust.load_full()?;
        let mut clients = trust.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(config) = clients.get(&(carries, allowed.clone())) {
            return Some(config.clone());
        }
        let verifier = Arc::new(SpiffeServerVerifier {
            roots: trust.roots.clone(),
            allowed: allowed.clone(),
            trust_domain: self.trust_domain.clone(),
            algorithms: algorithms(),
        });
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .ok()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(SlotResolver(self.slot.clone())));
        config.alpn_protocols = carries.alpn();
        let config = Arc::new(config);
        clients.insert((carries, allowed.clone()), config.clone());
        Some(config)
    }

    fn build_trust(&self, root_pem: &str) -> Result<Trust, String> {
        let roots = Arc::new(root_store(root_pem)?);
        let inner = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| e.to_string())?;
        let verifier = Arc::new(TrustDomainClientVerifier { inner, trust_domain: self.trust_domain.clone() });
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(SlotResolver(self.slot.clone())));
        // What the server settles on tells what the connection carries: h2 or http/1.1 for
        // HTTP, istio-peer-exchange (or istio) for TCP.
        server.alpn_protocols = [alpn::H2, alpn::HTTP11, alpn::ISTIO_PEER_EXCHANGE, alpn::ISTIO]
            .iter()
            .map(|p| p.to_vec())
            .collect();
        Ok(Trust {
            root_pem: root_pem.to_owned(),
            roots,
            server: Arc::new(server),
            clients: Mutex::default(),
        })
    }
}

/// Presents whatever certificate the slot holds at the moment of the handshake.
#[derive(Debug)]
struct SlotResolver(Arc<ArcSwapOption<WorkloadCertificate>>);

impl ResolvesServerCert for SlotResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.load().as_ref().map(|c| c.certified.clone())
    }
}

impl ResolvesClientCert for SlotResolver {
    fn resolve(&self, _issuers: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.load().as_ref().map(|c| c.certified.clone())
    }

    fn has_certs(&self) -> bool {
        self.0.load().is_some()
    }
}

/// The server's check of a client: webpki's chain validation to the bundle, then the leaf's
/// SPIFFE ID must be of this trust domain.
#[derive(Debug)]
struct TrustDomainClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl ClientCertVerifier for TrustDomainClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        check_trust_domain(end_entity, &self.trust_domain)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn check_trust_domain(
    end_entity: &CertificateDer<'_>,
    trust_domain: &str,
) -> Result<SpiffeId, rustls::Error> {
    let leaf = parse_leaf(end_entity).map_err(|e| rustls::Error::General(e.to_string()))?;
    if leaf.id.trust_domain != trust_domain {
        return Err(rustls::Error::General(format!(
            "peer {} is not of trust domain {trust_domain:?}",
            leaf.id
        )));
    }
    Ok(leaf.id)
}

/// A server certificate's chain to `roots` (rustls' WebPKI check, no name); the parsed leaf.
pub(crate) fn verify_chain<'a>(
    end_entity: &'a CertificateDer<'a>,
    intermediates: &[CertificateDer<'_>],
    roots: &RootCertStore,
    now: UnixTime,
    algorithms: &WebPkiSupportedAlgorithms,
) -> Result<ParsedCertificate<'a>, rustls::Error> {
    let parsed = ParsedCertificate::try_from(end_entity)?;
    verify_server_cert_signed_by_trust_anchor(&parsed, roots, intermediates, now, algorithms.all)?;
    Ok(parsed)
}

/// The client's check of a server: the chain to the bundle, then the leaf's SPIFFE ID must be
/// one the destination runs as. DNS names play no part: mesh certificates carry none.
#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    allowed: Arc<[SpiffeId]>,
    trust_domain: String,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        verify_chain(end_entity, intermediates, &self.roots, now, &self.algorithms)?;
        let id = check_trust_domain(end_entity, &self.trust_domain)?;
        if !self.allowed.is_empty() && !self.allowed.contains(&id) {
            return Err(rustls::Error::General(format!(
                "peer {id} is not one of the destination's identities ({})",
                self.allowed.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    crate::tls::handshake_signatures_by_algorithms!();
}

/// A plain TLS client config that verifies a server by DNS name or IP against `roots` (the CA
/// client's and secure xDS's view of trellisd).
pub fn control_plane_client_config(roots: RootCertStore) -> Result<Arc<ClientConfig>, String> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn::H2.to_vec()];
    Ok(Arc::new(config))
}

/// trellisd's serving config for its TLS ports (gRPC: h2), from PEM chain and key.
pub fn control_plane_server_config(chain_pem: &[String], key_pem: &str) -> Result<Arc<ServerConfig>, String> {
    let chain = crate::cert::certificates_from_pem(&chain_pem.concat())?;
    let key =
        rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| e.to_string())?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![alpn::H2.to_vec()];
    Ok(Arc::new(config))
}
