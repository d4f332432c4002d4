//! `trellis-identity`: what trellisd and the proxy must agree on about workload identity.
//!
//! - [`spiffe`]: `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`, parsed and printed.
//! - [`ca`]: the CA's material (generated or Istio's `cacerts`) and its signing of CSRs.
//! - [`cert`]: a workload certificate as held in memory, and what a leaf says.
//! - [`tls`]: rustls configs for mutual TLS with SPIFFE-aware verifiers, and trellisd's own.
//! - [`origination`]: TLS to services outside the mesh (DestinationRule `SIMPLE`/`MUTUAL`).
//! - [`client`] and [`manager`]: the workload's CSR client (Istio's gRPC API over TLS) and the
//!   loop that keeps its certificate renewed.
#![forbid(unsafe_code)]

pub mod ca;
pub mod cert;
pub mod client;
pub mod manager;
pub mod origination;
pub mod spiffe;
pub mod tls;

/// `istio.v1.auth`: Istio's certificate service (messages, client and server).
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("istio.v1.auth");
}

pub use spiffe::SpiffeId;

/// The audience a projected service-account token must carry for the CA (Istio's).
pub const TOKEN_AUDIENCE: &str = "istio-ca";
