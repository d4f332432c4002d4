//! The certificate authority: a signing certificate and key (a generated self-signed root, or a
//! plugged-in root or intermediate in Istio's `cacerts` layout), and the workload certificates
//! it signs. Only the CSR's public key is used; the identity is the caller's, decided elsewhere.

use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose,
    IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

use crate::spiffe::SpiffeId;

/// Istio's limits: 24 h when the request names no lifetime, at most 90 days.
pub const DEFAULT_WORKLOAD_TTL: Duration = Duration::from_secs(24 * 3600);
pub const MAX_WORKLOAD_TTL: Duration = Duration::from_secs(90 * 24 * 3600);
/// A generated root lives ten years.
pub const ROOT_TTL: Duration = Duration::from_secs(3650 * 24 * 3600);
/// Certificates start a little in the past, so that a peer whose clock is behind accepts them.
const BACKDATE: Duration = Duration::from_secs(120);
/// A CSR is a few hundred bytes; anything this large is not one.
pub const MAX_CSR_BYTES: usize = 64 * 1024;

/// The four files of Istio's plug-in CA (the `cacerts` Secret's keys).
pub const CA_CERT_FILE: &str = "ca-cert.pem";
pub const CA_KEY_FILE: &str = "ca-key.pem";
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
pub const CERT_CHAIN_FILE: &str = "cert-chain.pem";

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("csr: {0}")]
    Csr(String),
    #[error("validity_duration: {requested}s is more than the most allowed, {max}s (90 days)")]
    TooLong { requested: i64, max: u64 },
    #[error("{file}: {message}")]
    Material { file: String, message: String },
    #[error("signing: {0}")]
    Signing(String),
}

/// PEM text of a CA: what `cacerts` holds, and what a generated root is kept as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaMaterial {
    /// The signing certificate.
    pub ca_cert: String,
    pub ca_key: String,
    /// The trust anchor workloads verify against.
    pub root_cert: String,
    /// From the signing certificate up to the root; empty for a self-signed root.
    pub cert_chain: String,
}

impl CaMaterial {
    /// A new self-signed root: ECDSA P-256, ten years.
    pub fn generate_root(trust_domain: &str) -> Result<CaMaterial, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(signing)?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::OrganizationName, trust_domain);
        params.distinguished_name.push(DnType::CommonName, "Trellis root CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + ROOT_TTL;
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key).map_err(signing)?;
        Ok(CaMaterial {
            ca_cert: cert.pem(),
            ca_key: key.serialize_pem(),
            root_cert: cert.pem(),
            cert_chain: String::new(),
        })
    }

    /// Reads Istio's `cacerts` layout from a directory. `cert-chain.pem` may be missing or
    /// empty when `ca-cert.pem` is the root itself.
    pub fn read_dir(dir: &Path) -> Result<CaMaterial, CaError> {
        let read = |name: &str, required: bool| -> Result<String, CaError> {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(text) => Ok(text),
                Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
                Err(e) => Err(CaError::Material { file: path.display().to_string(), message: e.to_string() }),
            }
        };
        Ok(CaMaterial {
            ca_cert: read(CA_CERT_FILE, true)?,
            ca_key: read(CA_KEY_FILE, true)?,
            root_cert: read(ROOT_CERT_FILE, true)?,
            cert_chain: read(CERT_CHAIN_FILE, false)?,
        })
    }
}

/// A CA ready to sign.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    /// Nothing it signs may outlive it.
    not_after: OffsetDateTime,
    /// What follows a leaf in a response: the signing certificate, intermediates, the root.
    chain: Vec<String>,
    root: String,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority").field("not_after", &self.not_after).finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Checks the material (each file parses, the key is the signing certificate's, that
    /// certificate is a CA and still valid) and makes a CA of it.
    pub fn new(material: &CaMaterial) -> Result<CertificateAuthority, CaError> {
        let bad = |file: &str, message: String| CaError::Material { file: file.to_owned(), message };
        let key = KeyPair::from_pem(&material.ca_key).map_err(|e| bad(CA_KEY_FILE, e.to_string()))?;
        let ca_der = single_pem(&material.ca_cert).map_err(|m| bad(CA_CERT_FILE, m))?;
        let (_, ca) =
            x509_parser::parse_x509_certificate(&ca_der).map_err(|e| bad(CA_CERT_FILE, e.to_string()))?;
        if !ca.is_ca() {
            return Err(bad(
                CA_CERT_FILE,
                "not a CA certificate (basicConstraints CA:FALSE or missing)".into(),
            ));
        }
        if ca.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&key).as_slice() {
            return Err(bad(CA_KEY_FILE, format!("does not belong to the certificate in {CA_CERT_FILE}")));
        }
        let not_after = ca.validity().not_after.to_datetime();
        if not_after <= OffsetDateTime::now_utc() {
            return Err(bad(CA_CERT_FILE, format!("expired at {not_after}")));
        }
        let roots = pem_blocks(&material.root_cert).map_err(|m| bad(ROOT_CERT_FILE, m))?;
        let Some(root) = roots.first() else {
            return Err(bad(ROOT_CERT_FILE, "no certificate".into()));
        };
        let mut chain = pem_blocks(&material.cert_chain).map_err(|m| bad(CERT_CHAIN_FILE, m))?;
        if chain.is_empty() {
            chain.push(to_pem(&ca_der));
        }
        if chain.last() != Some(root) {
            chain.push(root.clone());
        }
        let issuer =
            Issuer::from_ca_cert_der(&ca_der.into(), key).map_err(|e| bad(CA_CERT_FILE, e.to_string()))?;
        Ok(CertificateAuthority { issuer, not_after, chain, root: roots.concat() })
    }

    /// The trust bundle workloads verify peers against (PEM).
    pub fn root_pem(&self) -> &str {
        &self.root
    }

    /// Signs `csr_pem`'s public key for `id`: the certificate chain, leaf first and root last.
    /// `validity_seconds` ≤ 0 asks for the default; above 90 days is refused.
    pub fn sign_workload(
        &self,
        csr_pem: &str,
        id: &SpiffeId,
        validity_seconds: i64,
    ) -> Result<Vec<String>, CaError> {
        let ttl = requested_ttl(validity_seconds)?;
        if csr_pem.len() > MAX_CSR_BYTES {
            return Err(CaError::Csr(format!("{} bytes, more than {MAX_CSR_BYTES}", csr_pem.len())));
        }
        let csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| CaError::Csr(e.to_string()))?;
        let mut params = self.leaf_params(ttl);
        let uri = rcgen::string::Ia5String::try_from(id.to_string())
            .map_err(|e| CaError::Signing(e.to_string()))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        let cert = params.signed_by(&csr.public_key, &self.issuer).map_err(signing)?;
        Ok(std::iter::once(cert.pem()).chain(self.chain.iter().cloned()).collect())
    }

    /// A server certificate for trellisd itself (its TLS ports), with a fresh key: the chain
    /// (leaf first) and the key, both PEM.
    pub fn issue_server(
        &self,
        dns_names: &[String],
        ips: &[std::net::IpAddr],
        ttl: Duration,
    ) -> Result<(Vec<String>, String), CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(signing)?;
        let mut params = self.leaf_params(ttl);
        for name in dns_names {
            let name = rcgen::string::Ia5String::try_from(name.as_str())
                .map_err(|e| CaError::Signing(format!("{name:?}: {e}")))?;
            params.subject_alt_names.push(SanType::DnsName(name));
        }
        params.subject_alt_names.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        let cert = params.signed_by(&key, &self.issuer).map_err(signing)?;
        let chain = std::iter::once(cert.pem()).chain(self.chain.iter().cloned()).collect();
        Ok((chain, key.serialize_pem()))
    }

    fn leaf_params(&self, ttl: Duration) -> CertificateParams {
        let mut params = CertificateParams::default();
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = (now + ttl).min(self.not_after);
        params.serial_number = Some(random_serial());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        // An empty subject, as Istio's: the identity is the URI SAN, which rcgen then marks
        // critical.
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
    }
}

fn requested_ttl(validity_seconds: i64) -> Result<Duration, CaError> {
    if validity_seconds <= 0 {
        return Ok(DEFAULT_WORKLOAD_TTL);
    }
    let requested = Duration::from_secs(validity_seconds as u64);
    if requested > MAX_WORKLOAD_TTL {
        return Err(CaError::TooLong { requested: validity_seconds, max: MAX_WORKLOAD_TTL.as_secs() });
    }
    Ok(requested)
}

fn random_serial() -> SerialNumber {
    // 128 random bits with the top bit clear: positive, and unguessable (RFC 5280 asks for
    // at most 20 octets).
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

fn signing(e: rcgen::Error) -> CaError {
    CaError::Signing(e.to_string())
}

/// Every `CERTIFICATE` block of a PEM text, re-encoded one per string.
pub fn pem_blocks(text: &str) -> Result<Vec<String>, String> {
    let blocks = pem::parse_many(text).map_err(|e| e.to_string())?;
    blocks
        .iter()
        .map(|b| {
            if b.tag() == "CERTIFICATE" {
                Ok(to_pem(b.contents()))
            } else {
                Err(format!("unexpected PEM block {:?}", b.tag()))
            }
        })
        .collect()
}

fn single_pem(text: &str) -> Result<Vec<u8>, String> {
    let blocks = pem::parse_many(text).map_err(|e| e.to_string())?;
    match blocks.as_slice() {
        [one] if one.tag() == "CERTIFICATE" => Ok(one.contents().to_vec()),
        [] => Err("no certificate".into()),
        _ => Err(format!("expected one certificate, found {} PEM blocks", blocks.len())),
    }
}

/// PEM with Unix line endings, as rcgen, openssl and Istio write it.
pub fn to_pem(der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new("CERTIFICATE", der.to_vec()), config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> CertificateAuthority {
        CertificateAuthority::new(&CaMaterial::generate_root("cluster.local").unwrap()).unwrap()
    }

    fn csr_for(uri: &str) -> String {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    #[test]
    fn the_identity_is_the_callers_not_the_csrs() {
        let ca = ca();
        let id = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/catalog").unwrap();
        let chain =
            ca.sign_workload(&csr_for("spiffe://cluster.local/ns/kube-system/sa/admin"), &id, 3600).unwrap();
        assert_eq!(chain.len(), 2, "leaf and root");
        assert_eq!(chain[1], ca.root_pem());
        let leaf = crate::cert::parse_leaf(&pem::parse(&chain[0]).unwrap().into_contents()).unwrap();
        assert_eq!(leaf.id, id);
        let lifetime = leaf.not_after.duration_since(leaf.not_before).unwrap();
        assert!(
            lifetime >= Duration::from_secs(3600) && lifetime <= Duration::from_secs(3600 + 130),
            "{lifetime:?}"
        );
    }

    #[test]
    fn refuses_long_lifetimes_and_garbage() {
        let ca = ca();
        let id = SpiffeId::parse("spiffe://cluster.local/ns/a/sa/b").unwrap();
        let err = ca.sign_workload(&csr_for("spiffe://x/ns/a/sa/b"), &id, 91 * 24 * 3600).unwrap_err();
        assert!(err.to_string().contains("validity_duration: 7862400s"), "{err}");
        for garbage in
            ["", "hello", "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"]
        {
            let err = ca.sign_workload(garbage, &id, 0).unwrap_err();
            assert!(matches!(err, CaError::Csr(_)), "{garbage:?}: {err}");
        }
        let huge = "A".repeat(MAX_CSR_BYTES + 1);
        assert!(ca.sign_workload(&huge, &id, 0).unwrap_err().to_string().contains("bytes"));
    }

    #[test]
    fn a_csr_whose_signature_does_not_match_its_key_is_refused() {
        let ca = ca();
        let id = SpiffeId::parse("spiffe://cluster.local/ns/a/sa/b").unwrap();
        let pem_text = csr_for("spiffe://cluster.local/ns/a/sa/b");
        let mut der = pem::parse(&pem_text).unwrap().into_contents();
        let last = der.len() - 3;
        der[last] ^= 0xff;
        let tampered = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
        assert!(matches!(ca.sign_workload(&tampered, &id, 0), Err(CaError::Csr(_))));
    }

    #[test]
    fn plugged_in_material_is_checked() {
        let a = CaMaterial::generate_root("cluster.local").unwrap();
        let b = CaMaterial::generate_root("cluster.local").unwrap();
        let mixed = CaMaterial { ca_key: b.ca_key.clone(), ..a.clone() };
        let err = CertificateAuthority::new(&mixed).unwrap_err();
        assert!(err.to_string().starts_with("ca-key.pem: does not belong"), "{err}");
        let no_root = CaMaterial { root_cert: String::new(), ..a.clone() };
        assert!(CertificateAuthority::new(&no_root).unwrap_err().to_string().starts_with("root-cert.pem"));
        let garbage = CaMaterial { ca_cert: "junk".into(), ..a };
        assert!(CertificateAuthority::new(&garbage).unwrap_err().to_string().starts_with("ca-cert.pem"));
    }

    #[test]
    fn an_intermediate_signs_with_its_chain_and_the_root_last() {
        // A root, and an intermediate it signed, laid out as Istio's cacerts.
        let root = CaMaterial::generate_root("cluster.local").unwrap();
        let root_ca = CertificateAuthority::new(&root).unwrap();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        params.distinguished_name.push(DnType::CommonName, "intermediate");
        params.not_after = OffsetDateTime::now_utc() + Duration::from_secs(86400 * 30);
        let inter = params.signed_by(&key, &root_ca.issuer).unwrap();
        let material = CaMaterial {
            ca_cert: inter.pem(),
            ca_key: key.serialize_pem(),
            root_cert: root.root_cert.clone(),
            cert_chain: format!("{}{}", inter.pem(), root.root_cert),
        };
        let ca = CertificateAuthority::new(&material).unwrap();
        let id = SpiffeId::parse("spiffe://cluster.local/ns/a/sa/b").unwrap();
        let chain = ca.sign_workload(&csr_for("spiffe://cluster.local/ns/a/sa/b"), &id, 0).unwrap();
        assert_eq!(chain.len(), 3);
        assert_eq!(chain[1], inter.pem());
        assert_eq!(chain[2], root.root_cert);
        // Clamped to the intermediate's life, not the default 24 h past it? (30 days > 24 h: not clamped.)
        let leaf = crate::cert::parse_leaf(&pem::parse(&chain[0]).unwrap().into_contents()).unwrap();
        assert!(leaf.not_after.duration_since(leaf.not_before).unwrap() <= DEFAULT_WORKLOAD_TTL + BACKDATE);
    }
}
