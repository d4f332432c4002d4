//! Certificates the CA signs per second on one thread: each a CSR parsed and its signature
//! checked, then a leaf signed for an identity (what trellisd does per request, without the
//! gRPC and token review around it). Prints one table row. `bench/ca.sh` runs it.

use std::time::{Duration, Instant};

use trellis_identity::SpiffeId;
use trellis_identity::ca::{CaMaterial, CertificateAuthority};
use trellis_identity::client::new_key_and_csr;

fn main() {
    let seconds: f64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let ca =
        CertificateAuthority::new(&CaMaterial::generate_root("cluster.local").expect("root")).expect("ca");
    // CSRs are made beforehand: their keys are the workloads' cost, not the CA's.
    let csrs: Vec<(SpiffeId, String)> = (0..256)
        .map(|i| {
            let id = SpiffeId::new("cluster.local", "bench", &format!("sa-{i}")).expect("id");
            let (_, csr) = new_key_and_csr(&id).expect("csr");
            (id, csr)
        })
        .collect();
    let deadline = Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut signed = 0u64;
    while started.elapsed() < deadline {
        let (id, csr) = &csrs[signed as usize % csrs.len()];
        ca.sign_workload(csr, id, 0).expect("sign");
        signed += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{:<28} {:>10} {:>12.0} {:>10.1}",
        "sign_workload (1 thread)",
        signed,
        signed as f64 / elapsed,
        elapsed * 1e6 / signed as f64
    );
}
