//! CSRs as trellisd's CA receives them in Istio's CreateCertificate
//! (`CertificateAuthority::sign_workload(csr_pem, &id, validity_seconds)`), with one CA made
//! once per process.
//!
//! Input: a mode byte, eight bytes of requested lifetime (little-endian i64), then the CSR: DER,
//! wrapped in PEM here, for an even mode (so mutations reach inside the ASN.1), or the PEM text
//! as sent for an odd mode.
//!
//! Properties: nothing panics; a signed chain is leaf then root, and the leaf carries the
//! caller's identity, never one from the CSR.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use trellis_identity::ca::{CaMaterial, CertificateAuthority};
use trellis_identity::cert::{certificates_from_pem, parse_leaf};
use trellis_identity::spiffe::SpiffeId;

fn ca() -> &'static CertificateAuthority {
    static CA: OnceLock<CertificateAuthority> = OnceLock::new();
    CA.get_or_init(|| {
        CertificateAuthority::new(&CaMaterial::generate_root("cluster.local").expect("a root")).expect("a CA")
    })
}

fn caller() -> &'static SpiffeId {
    static ID: OnceLock<SpiffeId> = OnceLock::new();
    ID.get_or_init(|| SpiffeId::new("cluster.local", "shop", "catalog").expect("an id"))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let Some((seconds, csr)) = rest.split_first_chunk::<8>() else { return };
    let seconds = i64::from_le_bytes(*seconds);
    let csr_pem = if mode % 2 == 0 {
        pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", csr.to_vec()))
    } else {
        match std::str::from_utf8(csr) {
            Ok(text) => text.to_owned(),
            Err(_) => return,
        }
    };
    let Ok(chain) = ca().sign_workload(&csr_pem, caller(), seconds) else { return };
    assert_eq!(chain.len(), 2, "leaf and root");
    assert_eq!(chain[1], ca().root_pem());
    let ders = certificates_from_pem(&chain[0]).expect("the leaf is PEM");
    let leaf = parse_leaf(&ders[0]).expect("the leaf reads back");
    assert_eq!(&leaf.id, caller());
});
