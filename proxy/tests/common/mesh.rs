//! Mesh identities for tests: a CA, workload certificates from it, and a proxy identity
//! holding one.

use std::sync::Arc;

use trellis_identity::SpiffeId;
use trellis_identity::ca::{CaMaterial, CertificateAuthority};
use trellis_identity::cert::WorkloadCertificate;
use trellis_identity::client::new_key_and_csr;
use trellis_identity::tls::MeshTls;

pub fn ca() -> CertificateAuthority {
    CertificateAuthority::new(&CaMaterial::generate_root("cluster.local").unwrap()).unwrap()
}

pub fn certificate(ca: &CertificateAuthority, id: &str, ttl_seconds: i64) -> WorkloadCertificate {
    let id = SpiffeId::parse(id).unwrap();
    let (key, csr) = new_key_and_csr(&id).unwrap();
    WorkloadCertificate::from_chain(ca.sign_workload(&csr, &id, ttl_seconds).unwrap(), key).unwrap()
}

pub fn mesh(ca: &CertificateAuthority, trust_domain: &str, id: &str) -> Arc<MeshTls> {
    let tls = MeshTls::new(trust_domain);
    tls.install(certificate(ca, id, 3600)).unwrap();
    tls
}

pub fn identity(tls: Arc<MeshTls>) -> Option<trellis_proxy::Identity> {
    Some(trellis_proxy::Identity { tls, renewal: None })
}
