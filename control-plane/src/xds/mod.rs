//! The delta xDS server: packed per-scope resources, per-proxy sessions, generations and the
//! gRPC service.

pub mod generation;
pub mod grpc;
pub mod metrics;
pub mod resources;
pub mod server;
pub mod session;
pub mod wire;
