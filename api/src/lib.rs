//! Trellis's model of the Istio API: the resources users write, the mesh config, the pod
//! annotations and labels, how to load them from YAML or JSON, and how to validate them with
//! messages that name the resource, the field and the value.
//!
//! Nothing in this crate does I/O beyond reading the text it is handed.

#![forbid(unsafe_code)]

pub mod access_log;
pub mod annotations;
pub mod check;
pub mod crds;
pub mod envoy_filter;
pub mod gateway_api;
pub mod load;
pub mod locality;
pub mod mesh;
pub mod networking;
pub mod primitives;
mod proto;
pub mod resource;
pub mod retry_budget;
pub mod security;
pub mod telemetry;
pub mod validate;
pub mod workload;
