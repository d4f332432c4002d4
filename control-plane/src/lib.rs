//! `trellisd`: config sources feed one model; translation turns the model into each proxy's
//! resources; the delta xDS server pushes what changed; the CA signs workload certificates.

pub mod ca;
pub mod cli;
pub mod gateway_status;
pub mod jwks;
pub mod model;
pub mod sources;
pub mod status;
pub mod translate;
pub mod xds;
