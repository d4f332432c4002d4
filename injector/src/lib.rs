//! The Trellis sidecar injector: decides whether a pod joins the mesh and, if so, adds the
//! redirect init container, the proxy and their volumes, the way Istio's injector does, so
//! that Istio's labels and annotations keep working.
//!
//! `inject` is pure (pod in, pod out) and shared by the webhook and `trellis inject`;
//! `admission` turns an AdmissionReview into a response; `server` is the HTTPS shell.

#![forbid(unsafe_code)]

pub mod admission;
pub mod config;
pub mod decision;
pub mod inject;
pub mod manual;
pub mod metrics;
pub mod patch;
pub mod probes;
pub mod prometheus_merge;
pub mod redirect;
pub mod resources;
pub mod selector;
pub mod server;
pub mod template;
pub mod webhook_cert;
