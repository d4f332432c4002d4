//! A workload's certificate as the proxy holds it: the chain, its key, and what the leaf says
//! (identity, lifetime, serial), read once when it arrives.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::extensions::GeneralName;

use crate::spiffe::SpiffeId;

/// What a leaf certificate says about its holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeafInfo {
    pub id: SpiffeId,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Hex, as `openssl x509 -serial` prints it.
    pub serial: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CertError {
    #[error("certificate: {0}")]
    Parse(String),
    #[error("certificate: {0} URI SANs; a workload certificate has exactly one spiffe:// URI")]
    UriCount(usize),
    #[error("certificate: {0}")]
    Spiffe(#[from] crate::spiffe::SpiffeError),
    #[error("private key: {0}")]
    Key(String),
}

/// Reads the identity and lifetime of a DER leaf certificate.
pub fn parse_leaf(der: &[u8]) -> Result<LeafInfo, CertError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| CertError::Parse(e.to_string()))?;
    let uris: Vec<&str> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(uri) => Some(*uri),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(CertError::Parse(e.to_string())),
    };
    let [uri] = uris[..] else { return Err(CertError::UriCount(uris.len())) };
    let id = SpiffeId::parse(uri)?;
    let time = |t: x509_parser::time::ASN1Time| {
        let seconds = t.timestamp();
        if seconds >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_secs(seconds as u64)
        } else {
            SystemTime::UNIX_EPOCH
        }
    };
    Ok(LeafInfo {
        id,
        not_before: time(cert.validity().not_before),
        not_after: time(cert.validity().not_after),
        serial: cert.raw_serial_as_string().replace(':', ""),
    })
}

/// The certificates of a PEM text, in order (rustls' own PEM reader; other sections are
/// skipped).
pub fn certificates_from_pem(text: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_slice_iter(text.as_bytes()).collect::<Result<_, _>>().map_err(|e| e.to_string())
}

/// The peer's SPIFFE identity from the certificates it presented (leaf first).
pub fn peer_id(certs: &[CertificateDer<'_>]) -> Option<SpiffeId> {
    parse_leaf(certs.first()?).ok().map(|leaf| leaf.id)
}

/// A certificate the proxy can present: its chain (root excluded), key and leaf facts.
#[derive(Clone, Debug)]
pub struct WorkloadCertificate {
    pub leaf: LeafInfo,
    /// The chain as received, PEM, root last (for the admin page).
    pub chain_pem: Vec<String>,
    /// The trust bundle that came with it (the chain's last certificate).
    pub root_pem: String,
    /// For rustls: the chain to present (the root left out) and the signing key.
    pub certified: Arc<CertifiedKey>,
}

impl WorkloadCertificate {
    /// Builds one from a CA's answer (PEM chain, leaf first, root last) and the key whose CSR
    /// it answered (PKCS#8 DER).
    pub fn from_chain(chain_pem: Vec<String>, key_pkcs8: Vec<u8>) -> Result<WorkloadCertificate, CertError> {
        let ders = certificates_from_pem(&chain_pem.concat()).map_err(CertError::Parse)?;
        let leaf = parse_leaf(ders.first().ok_or_else(|| CertError::Parse("empty chain".into()))?)?;
        let root_pem = chain_pem.last().cloned().unwrap_or_default();
        // The root is the peer's trust anchor: sending it only costs bytes in every handshake.
        let presented: Vec<_> = if ders.len() > 1 { ders[..ders.len() - 1].to_vec() } else { ders };
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8));
        let signing = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| CertError::Key(e.to_string()))?;
        let certified = Arc::new(CertifiedKey::new(presented, signing));
        Ok(WorkloadCertificate { leaf, chain_pem, root_pem, certified })
    }

    /// How long until it expires (zero once expired).
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.leaf.not_after.duration_since(now).unwrap_or_default()
    }

    pub fn lifetime(&self) -> Duration {
        self.leaf.not_after.duration_since(self.leaf.not_before).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_chains_and_leaves_are_refused_with_the_reason() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let pkcs8 = key.serialize_der();
        let empty = WorkloadCertificate::from_chain(Vec::new(), pkcs8.clone()).unwrap_err();
        assert_eq!(empty, CertError::Parse("empty chain".into()));
        let truncated = "-----BEGIN CERTIFICATE-----\nMIIB\n";
        assert!(WorkloadCertificate::from_chain(vec![truncated.into()], pkcs8.clone()).is_err());
        // A certificate with a DNS name and no SPIFFE URI is not a workload certificate.
        let dns_only =
            rcgen::CertificateParams::new(vec!["web.example".to_owned()]).unwrap().self_signed(&key).unwrap();
        assert_eq!(parse_leaf(dns_only.der()).unwrap_err(), CertError::UriCount(0));
        assert!(matches!(parse_leaf(b"\x30\x03garbage"), Err(CertError::Parse(_))));
        let garbage_key = WorkloadCertificate::from_chain(vec![dns_only.pem()], b"not a key".to_vec());
        assert!(garbage_key.is_err());
        assert!(crate::tls::root_store("").unwrap_err().contains("no root certificate"));
        assert!(
            crate::tls::root_store("-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n").is_err()
        );
    }
}
