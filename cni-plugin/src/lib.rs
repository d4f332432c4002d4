//! `trellis-cni`: the chained CNI plugin that programs a meshed pod's redirect when its network
//! is created (so pods need no NET_ADMIN init container), and the node agent that installs it
//! (`trellis-cni install`).

#![forbid(unsafe_code)]

pub mod decide;
pub mod install;
pub mod logging;
pub mod netconf;
pub mod plugin;
pub mod pod_lookup;
pub mod protocol;
