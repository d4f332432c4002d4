//! The delta xDS server: packed per-scope resources, per-proxy sessions, and the gRPC service.

pub mod resources;
pub mod session;
