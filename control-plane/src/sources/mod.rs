//! Where the model's objects come from.

pub mod kube;
pub mod files;
