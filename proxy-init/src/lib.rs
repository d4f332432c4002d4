//! The traffic redirect: a pure rule model (settings → rules) and its renderings for
//! `iptables-restore` and `nft`. Used by the `trellis-proxy-init` binary and, later, by the CNI
//! plugin.
//!
//! Work in progress (issue 4): `validate` and the end-to-end tests on real packets are still to
//! come.

#![forbid(unsafe_code)]

pub mod apply;
pub mod iptables;
pub mod nft;
pub mod rules;
pub mod settings;
