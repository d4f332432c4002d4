//! TLS origination to services outside the mesh (DestinationRule `SIMPLE` and `MUTUAL`): plain
//! one-way or mutual TLS with the rule's own files, verified the way a platform engineer expects
//! of a client — the chain to `caCertificates` (the system bundle when it is not given), then the
//! server's name: one of `subjectAltNames` when listed, else the SNI name.

use std::sync::Arc;

use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_name;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, RootCertStore};
use x509_parser::extensions::GeneralName;

use crate::tls::{Carries, algorithms, provider, root_store};

/// Where Debian (and the distroless images built on it) keep the system's trusted roots.
pub const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A DestinationRule's client TLS settings, with the files already read.
#[derive(Debug, Default, Clone)]
pub struct Settings {
    /// PEM roots the server's chain must lead to; `None` means the system bundle.
    pub ca_certificates: Option<String>,
    /// PEM chain and key presented to the server (`MUTUAL`).
    pub client_certificate: Option<(String, String)>,
    /// The name sent as SNI and, without `subject_alt_names`, checked against the certificate.
    pub sni: String,
    /// Names (DNS, IP or URI) of which the server's certificate must carry one.
    pub subject_alt_names: Vec<String>,
    /// Accept any server certificate (DestinationRule `insecureSkipVerify`).
    pub insecure_skip_verify: bool,
}

/// Client configs for one destination, one per ALPN set.
#[derive(Debug)]
pub struct Origination {
    server_name: ServerName<'static>,
    http1: Arc<ClientConfig>,
    http2: Arc<ClientConfig>,
    tcp: Arc<ClientConfig>,
}

impl Origination {
    pub fn new(settings: &Settings) -> Result<Origination, String> {
        let server_name = ServerName::try_from(settings.sni.clone())
            .map_err(|_| format!("sni {:?}: not a DNS name or IP address", settings.sni))?;
        let verifier: Arc<dyn ServerCertVerifier> = if settings.insecure_skip_verify {
            Arc::new(AcceptAny { algorithms: algorithms() })
        } else {
            let roots = match &settings.ca_certificates {
                Some(pem) => root_store(pem).map_err(|e| format!("caCertificates: {e}"))?,
                None => system_roots()?,
            };
            let names = settings
                .subject_alt_names
                .iter()
                .map(|n| Expected::parse(n))
                .collect::<Result<Vec<_>, _>>()?;
            Arc::new(NameVerifier { roots: Arc::new(roots), names, algorithms: algorithms() })
        };
        let client_auth = match &settings.client_certificate {
            Some((chain, key)) => {
                let chain = crate::cert::certificates_from_pem(chain)
                    .map_err(|e| format!("clientCertificate: {e}"))?;
                if chain.is_empty() {
                    return Err("clientCertificate: no certificate in the file".into());
                }
                let key =
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| format!("privateKey: {e}"))?;
                Some((chain, key))
            }
            None => None,
        };
        let build = |alpn: &[&[u8]]| -> Result<Arc<ClientConfig>, String> {
            let builder = ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .map_err(|e| e.to_string())?
                .dangerous()
                .with_custom_certificate_verifier(verifier.clone());
            let mut config = match &client_auth {
                Some((chain, key)) => builder
                    .with_client_auth_cert(chain.clone(), key.clone_key())
                    .map_err(|e| format!("clientCertificate/privateKey: {e}"))?,
                None => builder.with_no_client_auth(),
            };
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Ok(Arc::new(config))
        };
        use crate::tls::alpn::{H2, HTTP11};
        Ok(Origination { server_name, http1: build(&[HTTP11])?, http2: build(&[H2])?, tcp: build(&[])? })
    }

    /// The config for a connection carrying `carries`, and the name to send as SNI.
    pub fn client_config(&self, carries: Carries) -> (Arc<ClientConfig>, ServerName<'static>) {
        let config = match carries {
            Carries::Http1 => &self.http1,
            Carries::Http2 => &self.http2,
            Carries::Tcp => &self.tcp,
        };
        (config.clone(), self.server_name.clone())
    }
}

fn system_roots() -> Result<RootCertStore, String> {
    let pem = std::fs::read_to_string(SYSTEM_BUNDLE).map_err(|e| {
        format!("no caCertificates given and the system bundle {SYSTEM_BUNDLE} is unreadable: {e}")
    })?;
    root_store(&pem).map_err(|e| format!("system bundle {SYSTEM_BUNDLE}: {e}"))
}

/// One name from `subjectAltNames`.
#[derive(Debug)]
enum Expected {
    Name(ServerName<'static>),
    Uri(String),
}

impl Expected {
    fn parse(name: &str) -> Result<Expected, String> {
        if name.contains("://") {
            return Ok(Expected::Uri(name.to_owned()));
        }
        ServerName::try_from(name.to_owned())
            .map(Expected::Name)
            .map_err(|_| format!("subjectAltNames: {name:?} is not a DNS name, IP address or URI"))
    }
}

/// Chain to the roots, then the name: one of `names`, or the SNI name when none is listed.
#[derive(Debug)]
struct NameVerifier {
    roots: Arc<RootCertStore>,
    names: Vec<Expected>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = crate::tls::verify_chain(end_entity, intermediates, &self.roots, now, &self.algorithms)?;
        if self.names.is_empty() {
            verify_server_name(&parsed, server_name)?;
            return Ok(ServerCertVerified::assertion());
        }
        let matches = |expected: &Expected| match expected {
            Expected::Name(name) => verify_server_name(&parsed, name).is_ok(),
            Expected::Uri(uri) => uri_sans(end_entity).iter().any(|u| u == uri),
        };
        if self.names.iter().any(matches) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the server's certificate carries none of the subjectAltNames {:?}",
                self.names
                    .iter()
                    .map(|n| match n {
                        Expected::Name(name) => name.to_str().into_owned(),
                        Expected::Uri(uri) => uri.clone(),
                    })
                    .collect::<Vec<_>>()
            )))
        }
    }

    crate::tls::handshake_signatures_by_algorithms!();
}

fn uri_sans(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else { return Vec::new() };
    let Ok(Some(san)) = cert.subject_alternative_name() else { return Vec::new() };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        })
        .collect()
}

/// `insecureSkipVerify`: any certificate is taken; the handshake's signatures are still checked,
/// so the connection is at least bound to the key of the certificate it saw.
#[derive(Debug)]
struct AcceptAny {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    crate::tls::handshake_signatures_by_algorithms!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_name_the_field() {
        let bad_sni =
            Origination::new(&Settings { sni: "not a name!".into(), ..Default::default() }).unwrap_err();
        assert!(bad_sni.contains("sni"), "{bad_sni}");
        let bad_ca = Origination::new(&Settings {
            sni: "api.example.com".into(),
            ca_certificates: Some("garbage".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(bad_ca.contains("caCertificates"), "{bad_ca}");
        let bad_san = Origination::new(&Settings {
            sni: "api.example.com".into(),
            ca_certificates: Some(rcgen_root()),
            subject_alt_names: vec!["bad name!".into()],
            ..Default::default()
        })
        .unwrap_err();
        assert!(bad_san.contains("subjectAltNames") && bad_san.contains("bad name!"), "{bad_san}");
        let bad_key = Origination::new(&Settings {
            sni: "api.example.com".into(),
            ca_certificates: Some(rcgen_root()),
            client_certificate: Some((rcgen_root(), "not a key".into())),
            ..Default::default()
        })
        .unwrap_err();
        assert!(bad_key.contains("privateKey"), "{bad_key}");
    }

    fn rcgen_root() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }
}
