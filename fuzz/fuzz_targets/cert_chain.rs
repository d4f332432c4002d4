//! Certificates from outside: the chain a CA answers the proxy with
//! (`WorkloadCertificate::from_chain`), a peer's leaf (`parse_leaf`, `peer_id`), a trust bundle
//! (`tls::root_store`), and a plugged-in CA's `cacerts` files (`CertificateAuthority::new`).
//!
//! Input: a mode byte. Even: the rest is one DER certificate. Odd: PEM text, also cut on lines of
//! `%%` into the four `cacerts` files (ca-cert, ca-key, root-cert, cert-chain).
//!
//! Properties: nothing panics; `peer_id` is the leaf's id whenever the leaf reads.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rustls_pki_types::CertificateDer;
use trellis_identity::ca::{CaMaterial, CertificateAuthority, pem_blocks};
use trellis_identity::cert::{WorkloadCertificate, certificates_from_pem, parse_leaf, peer_id};
use trellis_identity::tls::root_store;

/// A real key: the chain under test is what varies.
fn key() -> &'static [u8] {
    static KEY: OnceLock<Vec<u8>> = OnceLock::new();
    KEY.get_or_init(|| rcgen::KeyPair::generate().expect("a key").serialize_der())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode % 2 == 0 {
        check_der(rest);
        return;
    }
    let Ok(text) = std::str::from_utf8(rest) else { return };
    if let Ok(ders) = certificates_from_pem(text) {
        for der in &ders {
            check_der(der);
        }
    }
    let _ = pem_blocks(text);
    let _ = root_store(text);
    let chain: Vec<String> = text.split_inclusive("-----END CERTIFICATE-----\n").map(str::to_owned).collect();
    let _ =
        WorkloadCertificate::from_chain(chain, key().to_vec()).map(|c| (c.lifetime(), c.leaf.serial.len()));
    let mut files = text.split("\n%%\n");
    let material = CaMaterial {
        ca_cert: files.next().unwrap_or_default().to_owned(),
        ca_key: files.next().unwrap_or_default().to_owned(),
        root_cert: files.next().unwrap_or_default().to_owned(),
        cert_chain: files.next().unwrap_or_default().to_owned(),
    };
    if let Ok(ca) = CertificateAuthority::new(&material) {
        let _ = ca.root_pem();
    }
});

fn check_der(der: &[u8]) {
    let leaf = parse_leaf(der);
    let der = CertificateDer::from(der.to_vec());
    assert_eq!(peer_id(std::slice::from_ref(&der)), leaf.ok().map(|l| l.id));
}
