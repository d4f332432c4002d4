//! The resource types carried over delta xDS, shared by the proxy and the control plane: their
//! type URLs, the order a push sends them in, how a resource is packed and versioned, and how a
//! proxy introduces itself in the node metadata.

use std::collections::BTreeMap;

use pbjson_types::{Any, Struct, Value, value::Kind};
use prost::Message;

use crate::config as pb;
use crate::envoy::config::core::v3::Node;

/// A kind of resource the proxy holds. The proxy subscribes to `Settings` and `Service` with a
/// wildcard (every proxy needs them, and they are small); the rest on demand, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    /// Mesh-wide settings for this proxy: a `ProxyConfig` with only its top-level fields, named
    /// [`SETTINGS_NAME`].
    Settings,
    /// `ServiceEndpoints`, named by their `service` field.
    Endpoints,
    /// `Cluster`, named by `name`.
    Cluster,
    /// `VirtualHost`, named by `name` (`host:port`).
    VirtualHost,
    /// `Service`: the address table, named by `name`.
    Service,
    /// `MeshWorkload`: who runs at an address, for the metrics' peer labels; named by the
    /// address, or by the SPIFFE ID for the one label set an identity runs under. The control
    /// plane sends those its endpoints refer to; the proxy asks for a caller's. One table for
    /// every proxy (the control plane builds it once per push); each proxy holds its part.
    Workload,
}

pub const SETTINGS_NAME: &str = "settings";

impl ResourceType {
    /// Additions and updates are sent in this order, so a resource never arrives before what
    /// it refers to (a virtual host after its clusters, a cluster after its endpoints);
    /// removals go in the reverse order.
    pub const PUSH_ORDER: [ResourceType; 6] = [
        ResourceType::Settings,
        ResourceType::Workload,
        ResourceType::Endpoints,
        ResourceType::Cluster,
        ResourceType::VirtualHost,
        ResourceType::Service,
    ];

    pub fn type_url(self) -> &'static str {
        match self {
            ResourceType::Settings => "type.googleapis.com/trellis.config.v1.ProxyConfig",
            ResourceType::Endpoints => "type.googleapis.com/trellis.config.v1.ServiceEndpoints",
            ResourceType::Cluster => "type.googleapis.com/trellis.config.v1.Cluster",
            ResourceType::VirtualHost => "type.googleapis.com/trellis.config.v1.VirtualHost",
            ResourceType::Service => "type.googleapis.com/trellis.config.v1.Service",
            ResourceType::Workload => "type.googleapis.com/trellis.config.v1.MeshWorkload",
        }
    }

    pub fn from_type_url(url: &str) -> Option<ResourceType> {
        Self::PUSH_ORDER.into_iter().find(|t| t.type_url() == url)
    }

    /// A short name for metrics and tables.
    pub fn short_name(self) -> &'static str {
        match self {
            ResourceType::Settings => "settings",
            ResourceType::Endpoints => "endpoints",
            ResourceType::Cluster => "cluster",
            ResourceType::VirtualHost => "virtualhost",
            ResourceType::Service => "service",
            ResourceType::Workload => "workload",
        }
    }

    /// Whether the proxy subscribes to every resource of this type (wildcard) rather than by
    /// name.
    pub fn is_wildcard(self) -> bool {
        matches!(self, ResourceType::Settings | ResourceType::Service)
    }
}

/// Packs a message as `Any` with its type URL.
pub fn pack<M: Message>(kind: ResourceType, message: &M) -> Any {
    Any { type_url: kind.type_url().to_owned(), value: message.encode_to_vec().into() }
}

/// A resource's version: a hash of its encoding, so the same content has the same version in
/// every control-plane process (a restarted control plane and a reconnecting proxy agree on
/// what the proxy already holds, and nothing is resent).
pub fn version_of(encoded: &[u8]) -> String {
    format!("{:016x}", xxhash_rust::xxh64::xxh64(encoded, 0))
}

/// The `Settings` resource of a full config: its top-level fields only.
pub fn settings_of(config: &pb::ProxyConfig) -> pb::ProxyConfig {
    pb::ProxyConfig {
        outbound_policy: config.outbound_policy,
        opaque_ports: config.opaque_ports.clone(),
        protocol_detection_timeout: config.protocol_detection_timeout,
        limits: config.limits,
        inbound_tls: config.inbound_tls.clone(),
        authorization: config.authorization.clone(),
        jwt_providers: config.jwt_providers.clone(),
        ext_authz: config.ext_authz.clone(),
        locality: config.locality.clone(),
        workload_labels: config.workload_labels.clone(),
        inbound_local_rate_limit: config.inbound_local_rate_limit.clone(),
        inbound_global_rate_limit: config.inbound_global_rate_limit.clone(),
        outbound_local_rate_limit: config.outbound_local_rate_limit.clone(),
        outbound_global_rate_limit: config.outbound_global_rate_limit.clone(),
        gateway_local_rate_limit: config.gateway_local_rate_limit.clone(),
        gateway_global_rate_limit: config.gateway_global_rate_limit.clone(),
        access_logs: config.access_logs.clone(),
        tracing: config.tracing.clone(),
        metrics_overrides: config.metrics_overrides.clone(),
        gateway_listeners: config.gateway_listeners.clone(),
        ..Default::default()
    }
}

/// Who a proxy is, as it says in its node: Istio's `ISTIO_META_*` names in the metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyNode {
    pub id: String,
    pub namespace: String,
    pub workload: String,
    pub labels: BTreeMap<String, String>,
    /// The proxy answers the pod's DNS (Istio's `ISTIO_META_DNS_CAPTURE`): the control plane
    /// sends it a name table.
    pub dns_capture: bool,
    /// Names without an address (ServiceEntries that list none) get one from the control plane
    /// (Istio's `ISTIO_META_DNS_AUTO_ALLOCATE`).
    pub dns_auto_allocate: bool,
}

const META_NAMESPACE: &str = "NAMESPACE";
const META_WORKLOAD: &str = "WORKLOAD_NAME";
const META_LABELS: &str = "LABELS";
const META_DNS_CAPTURE: &str = "DNS_CAPTURE";
const META_DNS_AUTO_ALLOCATE: &str = "DNS_AUTO_ALLOCATE";
/// Longest node id or metadata string accepted from a client.
const MAX_NODE_STRING: usize = 253;
const MAX_LABELS: usize = 64;

impl ProxyNode {
    pub fn to_node(&self) -> Node {
        let string = |s: &str| Value { kind: Some(Kind::StringValue(s.to_owned())) };
        let labels = Struct { fields: self.labels.iter().map(|(k, v)| (k.clone(), string(v))).collect() };
        let mut fields = std::collections::HashMap::new();
        fields.insert(META_NAMESPACE.to_owned(), string(&self.namespace));
        fields.insert(META_WORKLOAD.to_owned(), string(&self.workload));
        fields.insert(META_LABELS.to_owned(), Value { kind: Some(Kind::StructValue(labels)) });
        // Istio's agent sends its ISTIO_META_* switches as strings.
        for (name, on) in
            [(META_DNS_CAPTURE, self.dns_capture), (META_DNS_AUTO_ALLOCATE, self.dns_auto_allocate)]
        {
            if on {
                fields.insert(name.to_owned(), string("true"));
            }
        }
        Node {
            id: self.id.clone(),
            cluster: self.workload.clone(),
            metadata: Some(Struct { fields: fields.into_iter().collect() }),
            user_agent_name: "trellis-proxy".to_owned(),
        }
    }

    /// Reads a node sent by a client. Errors name the field and value.
    pub fn from_node(node: &Node) -> Result<ProxyNode, String> {
        let bounded = |field: &str, s: &str| {
            if s.len() > MAX_NODE_STRING {
                Err(format!("node.{field}: {} bytes, at most {MAX_NODE_STRING} are accepted", s.len()))
            } else {
                Ok(s.to_owned())
            }
        };
        if node.id.is_empty() {
            return Err("node.id: required".to_owned());
        }
        let id = bounded("id", &node.id)?;
        let empty = Struct::default();
        let metadata = node.metadata.as_ref().unwrap_or(&empty);
        let string_field = |name: &str| -> Result<String, String> {
            match metadata.fields.get(name).and_then(|v| v.kind.as_ref()) {
                None => Ok(String::new()),
                Some(Kind::StringValue(s)) => bounded(&format!("metadata.{name}"), s),
                Some(_) => Err(format!("node.metadata.{name}: must be a string")),
            }
        };
        let namespace = string_field(META_NAMESPACE)?;
        if namespace.is_empty() {
            return Err(format!("node.metadata.{META_NAMESPACE}: required"));
        }
        let workload = string_field(META_WORKLOAD)?;
        let mut labels = BTreeMap::new();
        match metadata.fields.get(META_LABELS).and_then(|v| v.kind.as_ref()) {
            None => {}
            Some(Kind::StructValue(s)) => {
                if s.fields.len() > MAX_LABELS {
                    return Err(format!(
                        "node.metadata.{META_LABELS}: {} labels, at most {MAX_LABELS} are accepted",
                        s.fields.len()
                    ));
                }
                for (k, v) in &s.fields {
                    match &v.kind {
                        Some(Kind::StringValue(value)) => {
                            labels.insert(
                                bounded(&format!("metadata.{META_LABELS} key"), k)?,
                                bounded(&format!("metadata.{META_LABELS}.{k}"), value)?,
                            );
                        }
                        _ => return Err(format!("node.metadata.{META_LABELS}.{k}: must be a string")),
                    }
                }
            }
            Some(_) => return Err(format!("node.metadata.{META_LABELS}: must be a map of strings")),
        }
        let switch = |name: &str| -> Result<bool, String> {
            match metadata.fields.get(name).and_then(|v| v.kind.as_ref()) {
                None => Ok(false),
                Some(Kind::BoolValue(b)) => Ok(*b),
                Some(Kind::StringValue(s)) => {
                    let s = bounded(&format!("metadata.{name}"), s)?;
                    go_parse_bool(&s)
                        .ok_or_else(|| format!("node.metadata.{name}: {s:?} is not true or false"))
                }
                Some(_) => Err(format!("node.metadata.{name}: must be a string")),
            }
        };
        let dns_capture = switch(META_DNS_CAPTURE)?;
        let dns_auto_allocate = switch(META_DNS_AUTO_ALLOCATE)?;
        Ok(ProxyNode { id, namespace, workload, labels, dns_capture, dns_auto_allocate })
    }
}

/// Go's strconv.ParseBool, which Istio's agent reads its switches with.
fn go_parse_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_round_trips_through_its_metadata() {
        let node = ProxyNode {
            id: "sidecar~10.0.0.1~web-1.shop~shop.svc.cluster.local".into(),
            namespace: "shop".into(),
            workload: "web".into(),
            labels: [("app".to_owned(), "web".to_owned())].into(),
            dns_capture: true,
            dns_auto_allocate: true,
        };
        assert_eq!(ProxyNode::from_node(&node.to_node()), Ok(node));
    }

    #[test]
    fn bad_nodes_are_refused_with_the_field() {
        let good = ProxyNode { id: "p".into(), namespace: "ns".into(), ..Default::default() }.to_node();
        type Spoil = Box<dyn Fn(&mut Node)>;
        let cases: [(&str, Spoil); 5] = [
            (
                r#"node.metadata.DNS_CAPTURE: "yes" is not true or false"#,
                Box::new(|n: &mut Node| {
                    if let Some(m) = n.metadata.as_mut() {
                        m.fields.insert(
                            META_DNS_CAPTURE.into(),
                            Value { kind: Some(Kind::StringValue("yes".into())) },
                        );
                    }
                }),
            ),
            ("node.id: required", Box::new(|n: &mut Node| n.id.clear())),
            ("node.metadata.NAMESPACE: required", Box::new(|n: &mut Node| n.metadata = None)),
            ("node.id: 300 bytes", Box::new(|n: &mut Node| n.id = "x".repeat(300))),
            (
                "node.metadata.LABELS: must be a map",
                Box::new(|n: &mut Node| {
                    let md = n.metadata.as_mut().map(|m| &mut m.fields);
                    if let Some(fields) = md {
                        fields.insert(
                            META_LABELS.into(),
                            Value { kind: Some(Kind::StringValue("app=web".into())) },
                        );
                    }
                }),
            ),
        ];
        for (want, spoil) in cases {
            let mut node = good.clone();
            spoil(&mut node);
            let err = ProxyNode::from_node(&node).unwrap_err();
            assert!(err.starts_with(want), "{err} should start with {want}");
        }
    }

    #[test]
    fn versions_follow_content() {
        let a = pb::Cluster { name: "a".into(), ..Default::default() }.encode_to_vec();
        let b = pb::Cluster { name: "b".into(), ..Default::default() }.encode_to_vec();
        assert_eq!(version_of(&a), version_of(&a));
        assert_ne!(version_of(&a), version_of(&b));
    }
}
