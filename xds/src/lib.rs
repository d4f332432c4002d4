//! The proxy's configuration model: protobuf messages (prost) with the proto3 JSON mapping
//! (pbjson), compiled from `proto/` at build time without a system `protoc`.

/// `trellis.config.v1`: services, virtual hosts and routes, clusters, endpoints.
pub mod config {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/trellis.config.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/trellis.config.v1.serde.rs"));
}
