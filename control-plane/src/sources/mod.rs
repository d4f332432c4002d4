//! Where the model's objects come from.

pub mod files;
pub mod kube;
