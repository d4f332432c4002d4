//! The traffic redirect: a pure rule model (settings → rules) and its renderings for
//! `iptables-restore` and `nft`. Used by the `trellis-proxy-init` binary and, later, by the CNI
//! plugin.
//!
//! Work in progress (issue 4): applying the rules, `--cleanup`, `--netns` and `validate` arrive
//! with the privileged backends and their tests; today the binary prints what it would apply.

#![forbid(unsafe_code)]

pub mod iptables;
pub mod nft;
pub mod rules;
pub mod settings;
