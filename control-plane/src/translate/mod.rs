//! Model → a proxy's resources. Pure functions: no I/O, no clocks.

use std::collections::BTreeMap;

use trellis_xds::config as pb;

use crate::model::Model;

/// What the control plane knows of a connected proxy (from its xDS node metadata).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ProxyIdentity {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
}

/// Proxies with equal scopes get identical resources, so the server translates once per scope.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope {
    pub namespace: String,
    /// The Sidecar resource that applies to the proxy, if any.
    pub sidecar: Option<String>,
}

pub fn scope_of(_model: &Model, proxy: &ProxyIdentity) -> Scope {
    Scope { namespace: proxy.namespace.clone(), sidecar: None }
}

pub fn translate(_model: &Model, _scope: &Scope) -> pb::ProxyConfig {
    pb::ProxyConfig::default()
}
