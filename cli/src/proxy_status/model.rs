//! What `/debug/syncz` says, read with the CLI's own types, and what the CLI concludes from it.
//!
//! The control plane's types (`trellis_control_plane::status::Syncz`) are not used directly: the
//! JSON is the contract between a `trellis` binary and a `trellisd` that may be of another
//! version, so these types only require what the CLI cannot do without (`proxies` and each
//! proxy's `id`) and default the rest; a field added on either side breaks nothing. The
//! contract test in `tests/proxy_status.rs` checks them against the control plane's types.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The answer of `GET /debug/syncz`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Syncz {
    /// Required: an object without it is not a `/debug/syncz` answer.
    pub proxies: Vec<ProxySync>,
    /// Config objects the control plane rejected (`"file: message"`); their last good version is
    /// what proxies get.
    #[serde(default)]
    pub rejected_config: Vec<String>,
}

/// One connected proxy.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ProxySync {
    pub id: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub workload: String,
    /// Seconds since the Unix epoch; 0 when unknown.
    #[serde(default)]
    pub connected_since: u64,
    /// The control plane's own verdict (SYNCED, STALE or NACKED).
    #[serde(default)]
    pub status: String,
    /// By type name: settings, service, virtualhost, cluster, endpoints.
    #[serde(default)]
    pub types: BTreeMap<String, TypeSync>,
}

/// One resource type of one proxy.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TypeSync {
    /// Generation of the last response sent.
    #[serde(default)]
    pub sent: Option<u64>,
    /// Generation of the last response acknowledged.
    #[serde(default)]
    pub acked: Option<u64>,
    /// Why the proxy rejected the last response, while it stands.
    #[serde(default)]
    pub nack: Option<String>,
    /// Resources the proxy holds.
    #[serde(default)]
    pub held: u64,
}

/// The resource types, in the order the table shows them: the control plane's name for each
/// and the table's column header.
pub const TYPES: [(&str, &str); 5] = [
    ("settings", "SETTINGS"),
    ("service", "SERVICES"),
    ("virtualhost", "VHOSTS"),
    ("cluster", "CLUSTERS"),
    ("endpoints", "ENDPOINTS"),
];

/// Where one type of one proxy stands. Ordered by severity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TypeState {
    /// Nothing of this type sent yet (shown as `-`).
    NotSent,
    /// The last response sent was acknowledged.
    Synced,
    /// A response is sent and not yet acknowledged.
    Stale,
    /// The proxy rejected the last response and keeps its previous config of this type.
    Nacked,
}

impl TypeSync {
    pub fn state(&self) -> TypeState {
        if self.nack.is_some() {
            TypeState::Nacked
        } else if self.sent.is_none() {
            TypeState::NotSent
        } else if self.sent != self.acked {
            TypeState::Stale
        } else {
            TypeState::Synced
        }
    }
}

/// A proxy's overall state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyState {
    Synced,
    Stale,
    Nacked,
    /// A status this CLI does not know, from a newer control plane: shown as it is, and never
    /// counted as synced.
    Other(String),
}

impl ProxyState {
    pub fn is_synced(&self) -> bool {
        *self == ProxyState::Synced
    }

    fn rank(&self) -> u8 {
        match self {
            ProxyState::Synced => 0,
            ProxyState::Stale => 1,
            ProxyState::Nacked => 2,
            ProxyState::Other(_) => 3,
        }
    }
}

impl fmt::Display for ProxyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyState::Synced => f.write_str("SYNCED"),
            ProxyState::Stale => f.write_str("STALE"),
            ProxyState::Nacked => f.write_str("NACKED"),
            ProxyState::Other(s) => f.write_str(s),
        }
    }
}

impl ProxySync {
    /// The worse of what the types say and what the control plane says.
    pub fn state(&self) -> ProxyState {
        let from_types = match self.types.values().map(TypeSync::state).max() {
            Some(TypeState::Nacked) => ProxyState::Nacked,
            Some(TypeState::Stale) => ProxyState::Stale,
            _ => ProxyState::Synced,
        };
        let reported = match self.status.as_str() {
            "" | "SYNCED" => ProxyState::Synced,
            "STALE" => ProxyState::Stale,
            "NACKED" => ProxyState::Nacked,
            other => ProxyState::Other(other.to_owned()),
        };
        if reported.rank() > from_types.rank() { reported } else { from_types }
    }

    /// The pod, from an Istio-style node id (`sidecar~<ip>~<pod>.<namespace>~<domain>`), else
    /// the workload, else the id itself.
    pub fn name(&self) -> &str {
        self.pod().or(Some(self.workload.as_str()).filter(|w| !w.is_empty())).unwrap_or(&self.id)
    }

    fn pod(&self) -> Option<&str> {
        let mut parts = self.id.split('~');
        let pod_dot_ns = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(_), Some(_), Some(p), Some(_)) => p,
            _ => return None,
        };
        let pod = match pod_dot_ns.strip_suffix(self.namespace.as_str()).and_then(|p| p.strip_suffix('.')) {
            Some(pod) if !self.namespace.is_empty() => pod,
            _ => pod_dot_ns.rsplit_once('.').map_or(pod_dot_ns, |(pod, _)| pod),
        };
        Some(pod).filter(|p| !p.is_empty())
    }

    /// Whether the user's `PROXY` argument names this proxy: its id, pod or `pod.namespace`,
    /// or the start of one of them.
    pub fn matches(&self, query: &str) -> bool {
        let name = self.name();
        self.id.starts_with(query)
            || name.starts_with(query)
            || format!("{name}.{}", self.namespace).starts_with(query)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sync(sent: Option<u64>, acked: Option<u64>, nack: Option<&str>) -> TypeSync {
        TypeSync { sent, acked, nack: nack.map(str::to_owned), held: 1 }
    }

    #[test]
    fn type_states() {
        assert_eq!(sync(None, None, None).state(), TypeState::NotSent);
        assert_eq!(sync(Some(3), Some(3), None).state(), TypeState::Synced);
        assert_eq!(sync(Some(4), Some(3), None).state(), TypeState::Stale);
        assert_eq!(sync(Some(4), None, None).state(), TypeState::Stale);
        assert_eq!(sync(Some(4), Some(3), Some("bad")).state(), TypeState::Nacked);
    }

    #[test]
    fn proxy_state_is_the_worse_of_the_types_and_the_control_planes_verdict() {
        let mut proxy = ProxySync { id: "x".into(), ..Default::default() };
        assert_eq!(proxy.state(), ProxyState::Synced);
        proxy.types.insert("settings".into(), sync(None, None, None));
        assert_eq!(proxy.state(), ProxyState::Synced);
        proxy.types.insert("cluster".into(), sync(Some(2), Some(1), None));
        assert_eq!(proxy.state(), ProxyState::Stale);
        proxy.status = "NACKED".into();
        assert_eq!(proxy.state(), ProxyState::Nacked);
        proxy.status = "DRAINING".into();
        assert_eq!(proxy.state(), ProxyState::Other("DRAINING".into()));
        assert!(!proxy.state().is_synced());
    }

    #[test]
    fn names_come_from_the_node_id() {
        let proxy = |id: &str, ns: &str, workload: &str| ProxySync {
            id: id.into(),
            namespace: ns.into(),
            workload: workload.into(),
            ..Default::default()
        };
        let p = proxy("sidecar~10.0.0.5~reviews-v1-7f9c.shop~shop.svc.cluster.local", "shop", "reviews-v1");
        assert_eq!(p.name(), "reviews-v1-7f9c");
        assert!(p.matches("reviews-v1"));
        assert!(p.matches("reviews-v1-7f9c.shop"));
        assert!(p.matches("sidecar~10.0.0.5"));
        assert!(!p.matches("ratings"));
        // A pod name with dots, and the namespace taken from the id when the node has none.
        assert_eq!(proxy("sidecar~1.2.3.4~a.b.shop~shop.svc", "shop", "").name(), "a.b");
        assert_eq!(proxy("sidecar~1.2.3.4~web.shop~x", "", "").name(), "web");
        // No pod in the id: the workload, then the id.
        assert_eq!(proxy("sidecar~1.2.3.4~.shop~x", "shop", "web").name(), "web");
        assert_eq!(proxy("my-proxy", "shop", "web").name(), "web");
        assert_eq!(proxy("my-proxy", "", "").name(), "my-proxy");
    }

    #[test]
    fn reads_the_minimum_and_ignores_what_it_does_not_know() {
        let syncz: Syncz = serde_json::from_str(r#"{"proxies":[{"id":"a","future":1}],"new":true}"#).unwrap();
        assert_eq!(syncz.proxies[0].id, "a");
        assert!(syncz.rejected_config.is_empty());
        assert!(
            serde_json::from_str::<Syncz>("{}").unwrap_err().to_string().contains("missing field `proxies`")
        );
        assert!(serde_json::from_str::<Syncz>(r#"{"proxies":[{}]}"#).is_err());
    }
}
