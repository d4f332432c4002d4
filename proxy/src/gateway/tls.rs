//! A Gateway server's TLS, as rustls sees it: its certificate and key (from a Secret's PEM
//! sent inline, or from files on the gateway), the client roots a MUTUAL server verifies
//! against, and the protocol versions and cipher suites it allows. Everything here comes from
//! outside (the control plane, a Secret a user wrote): every failure names the server and the
//! field, and never panics.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use trellis_xds::config as pb;

/// Certificates and keys larger than this are not what a Secret or a file should hold.
const MAX_PEM_BYTES: u64 = 1 << 20;

/// The ALPN protocols a gateway offers HTTP clients, preferring HTTP/2.
const HTTP_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Builds the server's rustls configuration. `http`: offer HTTP's ALPN protocols.
pub fn server_config(tls: &pb::GatewayTls, http: bool) -> Result<Arc<ServerConfig>, String> {
    let (chain_pem, key_pem) = match (tls.certificate_chain.is_empty(), tls.certificate_file.is_empty()) {
        (false, _) => (tls.certificate_chain.clone(), tls.private_key.clone()),
        (true, false) => (
            read_pem_file(&tls.certificate_file, "serverCertificate")?,
            read_pem_file(&tls.private_key_file, "privateKey")?,
        ),
        (true, true) => return Err("no certificate (credentialName or serverCertificate)".into()),
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate chain: {e}"))?;
    if chain.is_empty() {
        return Err("certificate chain: no CERTIFICATE block".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| format!("private key: {e}"))?;
    let (provider, unknown) = provider(&tls.cipher_suites);
    for name in unknown {
        tracing::warn!(cipher_suite = %name, "cipherSuites: rustls has no such suite (it offers only modern AEAD suites); ignored");
    }
    let provider = Arc::new(provider);
    let versions = versions(&tls.min_protocol_version, &tls.max_protocol_version)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| format!("minProtocolVersion/maxProtocolVersion/cipherSuites: {e}"))?;
    let mutual = tls.mode() == pb::GatewayTlsMode::GatewayTlsMutual;
    let builder = if mutual {
        let ca_pem = match (tls.ca_certificates.is_empty(), tls.ca_certificates_file.is_empty()) {
            (false, _) => tls.ca_certificates.clone(),
            (true, false) => read_pem_file(&tls.ca_certificates_file, "caCertificates")?,
            (true, true) => return Err("MUTUAL: no client CA (ca.crt, cacert or caCertificates)".into()),
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            let cert = cert.map_err(|e| format!("client CA: {e}"))?;
            roots.add(cert).map_err(|e| format!("client CA: {e}"))?;
        }
        if roots.is_empty() {
            return Err("client CA: no CERTIFICATE block".into());
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| format!("client CA: {e}"))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| format!("certificate and key: {e}"))?;
    if http {
        config.alpn_protocols = HTTP_ALPN.iter().map(|p| p.to_vec()).collect();
    }
    Ok(Arc::new(config))
}

fn read_pem_file(path: &str, field: &str) -> Result<String, String> {
    if path.is_empty() {
        return Err(format!("{field}: no file named"));
    }
    let size = std::fs::metadata(path).map_err(|e| format!("{field} {path}: {e}"))?.len();
    if size > MAX_PEM_BYTES {
        return Err(format!("{field} {path}: {size} bytes, more than {MAX_PEM_BYTES}"));
    }
    std::fs::read_to_string(path).map_err(|e| format!("{field} {path}: {e}"))
}

/// `TLSV1_2`/`TLSV1_3` (empty: no bound) as rustls's versions.
fn versions(min: &str, max: &str) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, String> {
    let rank = |v: &str, field: &str, default: u8| match v {
        "" | "TLS_AUTO" => Ok(default),
        "TLSV1_0" | "TLSV1_1" | "TLSV1_2" => Ok(2),
        "TLSV1_3" => Ok(3),
        other => Err(format!("{field}: {other:?} is not a TLS version")),
    };
    let (low, high) = (rank(min, "minProtocolVersion", 2)?, rank(max, "maxProtocolVersion", 3)?);
    let mut out = Vec::new();
    if low <= 2 && high >= 2 {
        out.push(&rustls::version::TLS12);
    }
    if high >= 3 {
        out.push(&rustls::version::TLS13);
    }
    if out.is_empty() {
        return Err(format!("minProtocolVersion {min} is above maxProtocolVersion {max}"));
    }
    Ok(out)
}

/// ring's provider with only the named suites (Istio's OpenSSL names or IANA's), in the order
/// given; the names rustls has no suite for are returned. None named: rustls's defaults.
/// TLS 1.3's suites are not configurable in Istio either, and are always kept.
fn provider(names: &[String]) -> (CryptoProvider, Vec<String>) {
    let mut provider = rustls::crypto::ring::default_provider();
    if names.is_empty() {
        return (provider, Vec::new());
    }
    let all = provider.cipher_suites.clone();
    let mut chosen: Vec<rustls::SupportedCipherSuite> =
        all.iter().filter(|s| s.version() == &rustls::version::TLS13).copied().collect();
    let mut unknown = Vec::new();
    for name in names {
        let iana = openssl_to_iana(name).unwrap_or(name.as_str());
        match all.iter().find(|s| s.suite().as_str() == Some(iana)) {
            Some(suite) if !chosen.contains(suite) => chosen.push(*suite),
            Some(_) => {}
            None => unknown.push(name.clone()),
        }
    }
    provider.cipher_suites = chosen;
    (provider, unknown)
}

/// The OpenSSL names Istio's `cipherSuites` uses, for the TLS 1.2 suites rustls has.
fn openssl_to_iana(name: &str) -> Option<&'static str> {
    Some(match name {
        "ECDHE-ECDSA-AES128-GCM-SHA256" => "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256" => "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384" => "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384" => "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305" => "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        "ECDHE-RSA-CHACHA20-POLY1305" => "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_map_to_rustls_and_bad_ones_are_named() {
        assert_eq!(versions("", "").unwrap().len(), 2);
        assert_eq!(versions("TLSV1_3", "").unwrap(), [&rustls::version::TLS13]);
        assert_eq!(versions("", "TLSV1_2").unwrap(), [&rustls::version::TLS12]);
        assert!(versions("TLSV1_3", "TLSV1_2").unwrap_err().contains("above"));
        assert!(versions("SSLV3", "").unwrap_err().contains("minProtocolVersion: \"SSLV3\""));
    }

    #[test]
    fn cipher_suites_by_openssl_or_iana_name_and_unknown_ones_reported() {
        let names =
            ["ECDHE-RSA-AES256-GCM-SHA384", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "DES-CBC3-SHA"];
        let (provider, unknown) = provider(&names.map(String::from));
        assert_eq!(unknown, ["DES-CBC3-SHA"]);
        let tls12: Vec<_> = provider
            .cipher_suites
            .iter()
            .filter(|s| s.version() == &rustls::version::TLS12)
            .filter_map(|s| s.suite().as_str())
            .collect();
        assert_eq!(
            tls12,
            ["TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"]
        );
    }

    #[test]
    fn hostile_pem_is_an_error_not_a_panic() {
        for (chain, key) in [
            ("", ""),
            ("garbage", "garbage"),
            ("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n", ""),
        ] {
            let tls = pb::GatewayTls {
                certificate_chain: chain.into(),
                private_key: key.into(),
                ..Default::default()
            };
            assert!(server_config(&tls, true).is_err(), "{chain:?}");
        }
        let missing =
            pb::GatewayTls { certificate_file: "/nonexistent/cert.pem".into(), ..Default::default() };
        assert!(server_config(&missing, true).unwrap_err().contains("/nonexistent/cert.pem"));
    }
}
