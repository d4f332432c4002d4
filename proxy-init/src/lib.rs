//! The traffic redirect: a pure rule model (settings → rules) and its renderings for
//! `iptables-restore` and `nft`. Used by the `trellis-proxy-init` binary and, later, by the CNI
//! plugin, and the check (`validate`) that the redirect is in place.

#![forbid(unsafe_code)]

pub mod apply;
pub mod cli;
pub mod iptables;
pub mod nft;
pub mod original_dst;
pub mod resolv;
pub mod routes;
pub mod rules;
pub mod settings;
pub mod testing;
pub mod validate;
