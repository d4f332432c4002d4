//! One enum over every kind Trellis reads, and the `apiVersion`/`kind` table that decides which
//! one a document is.

use std::fmt;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;

use crate::envoy_filter::EnvoyFilter;
use crate::networking::{DestinationRule, Gateway, ServiceEntry, Sidecar, VirtualService, WorkloadEntry};
use crate::security::{AuthorizationPolicy, PeerAuthentication, RequestAuthentication};
use crate::telemetry::{TELEMETRY_GROUP, Telemetry};

pub const NETWORKING_GROUP: &str = "networking.istio.io";
pub const SECURITY_GROUP: &str = "security.istio.io";

/// The kinds Trellis understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    VirtualService,
    DestinationRule,
    ServiceEntry,
    WorkloadEntry,
    Sidecar,
    Gateway,
    PeerAuthentication,
    AuthorizationPolicy,
    RequestAuthentication,
    /// Read only for its rate-limit patches (see [`crate::envoy_filter`]).
    EnvoyFilter,
    /// `telemetry.istio.io` (see [`crate::telemetry`]).
    Telemetry,
    /// Core `v1` Namespace: carries the `istio-injection` label.
    Namespace,
}

impl Kind {
    pub const ALL: [Kind; 12] = [
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::ServiceEntry,
        Kind::WorkloadEntry,
        Kind::Sidecar,
        Kind::Gateway,
        Kind::PeerAuthentication,
        Kind::AuthorizationPolicy,
        Kind::RequestAuthentication,
        Kind::EnvoyFilter,
        Kind::Telemetry,
        Kind::Namespace,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::Sidecar => "Sidecar",
            Kind::Gateway => "Gateway",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::RequestAuthentication => "RequestAuthentication",
            Kind::EnvoyFilter => "EnvoyFilter",
            Kind::Telemetry => "Telemetry",
            Kind::Namespace => "Namespace",
        }
    }

    /// The API group; empty for the core group.
    pub fn group(self) -> &'static str {
        match self {
            Kind::PeerAuthentication | Kind::AuthorizationPolicy | Kind::RequestAuthentication => {
                SECURITY_GROUP
            }
            Kind::Telemetry => TELEMETRY_GROUP,
            Kind::Namespace => "",
            _ => NETWORKING_GROUP,
        }
    }

    /// The versions Istio serves for this kind, oldest first. All share one schema.
    pub fn versions(self) -> &'static [&'static str] {
        if self == Kind::EnvoyFilter {
            return &["v1alpha3"];
        }
        match self.group() {
            NETWORKING_GROUP => &["v1alpha3", "v1beta1", "v1"],
            SECURITY_GROUP => &["v1beta1", "v1"],
            TELEMETRY_GROUP => &["v1alpha1", "v1"],
            _ => &["v1"],
        }
    }

    /// Whether a document may leave out `spec`: Istio reads a security policy without one as an
    /// empty spec (an AuthorizationPolicy without `spec` denies everything it selects).
    pub fn spec_optional(self) -> bool {
        self.group() == SECURITY_GROUP
    }

    /// The kind with this `kind:` name.
    pub fn from_name(kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == kind)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why an `apiVersion`/`kind` pair was not recognised.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KindError {
    #[error("missing apiVersion")]
    MissingApiVersion,
    #[error("missing kind")]
    MissingKind,
    #[error("unknown kind {kind:?} in apiVersion {api_version:?}; Trellis reads {known}")]
    UnknownKind { api_version: String, kind: String, known: String },
    #[error("{kind} does not exist in version {version:?} of {group}; served versions are {served}")]
    UnknownVersion { kind: Kind, group: String, version: String, served: String },
}

/// Resolves a document's `apiVersion` and `kind`.
pub fn resolve_kind(api_version: &str, kind: &str) -> Result<Kind, KindError> {
    if api_version.is_empty() {
        return Err(KindError::MissingApiVersion);
    }
    if kind.is_empty() {
        return Err(KindError::MissingKind);
    }
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let unknown = || KindError::UnknownKind {
        api_version: api_version.to_owned(),
        kind: kind.to_owned(),
        known: known_kinds(),
    };
    let resolved = Kind::from_name(kind).filter(|k| k.group() == group).ok_or_else(unknown)?;
    if resolved.versions().contains(&version) {
        Ok(resolved)
    } else {
        Err(KindError::UnknownVersion {
            kind: resolved,
            group: if group.is_empty() { "the core API".into() } else { group.to_owned() },
            version: version.to_owned(),
            served: resolved.versions().join(", "),
        })
    }
}

/// A document of a kind Trellis does not read, and what `trellis validate` and trellisd make of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnreadKind {
    /// Not Istio's (a Deployment, a Service, a CRD of another project): passed over, as
    /// `istioctl validate` passes over what it does not check.
    NotIstio,
    /// An Istio kind Trellis does not apply (WasmPlugin, ProxyConfig, WorkloadGroup): accepted by
    /// Istio, so not an error, but said in a warning so no one thinks it takes effect.
    IstioIgnored,
}

/// Istio's kinds that Trellis knows of but does not read: group, kind, the versions Istio serves.
const ISTIO_KINDS_IGNORED: &[(&str, &str, &[&str])] = &[
    ("extensions.istio.io", "WasmPlugin", &["v1alpha1"]),
    (NETWORKING_GROUP, "ProxyConfig", &["v1beta1"]),
    (NETWORKING_GROUP, "WorkloadGroup", &["v1alpha3", "v1beta1", "v1"]),
];

/// Whether a document Trellis cannot resolve is one to pass over or warn about rather than refuse.
/// `None` for a kind Trellis reads and for mistakes: a missing `apiVersion` or `kind`, a kind of
/// Trellis's in the wrong group or version, or an unknown kind in an Istio group (likely a typo).
pub fn unread_kind(api_version: &str, kind: &str) -> Option<UnreadKind> {
    // The Kubernetes Gateway API has a `Gateway` too; its documents are read by
    // `gateway_api::check_document` (validate) and the Kubernetes source, not by the loader.
    if api_version.starts_with(crate::gateway_api::GROUP)
        && api_version[crate::gateway_api::GROUP.len()..].starts_with('/')
    {
        return Some(UnreadKind::NotIstio);
    }
    if api_version.is_empty() || kind.is_empty() || Kind::from_name(kind).is_some() {
        return None;
    }
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let served =
        |(g, k, versions): &&(&str, &str, &[&str])| *g == group && *k == kind && versions.contains(&version);
    if ISTIO_KINDS_IGNORED.iter().any(|entry| served(&entry)) {
        Some(UnreadKind::IstioIgnored)
    } else if group == "istio.io" || group.ends_with(".istio.io") {
        None
    } else {
        Some(UnreadKind::NotIstio)
    }
}

fn known_kinds() -> String {
    let mut by_group: Vec<String> = Vec::new();
    for group in [NETWORKING_GROUP, SECURITY_GROUP, TELEMETRY_GROUP, ""] {
        let kinds: Vec<&str> = Kind::ALL.iter().filter(|k| k.group() == group).map(|k| k.name()).collect();
        let label = if group.is_empty() { "v1" } else { group };
        by_group.push(format!("{label} {}", kinds.join("/")));
    }
    by_group.join("; ")
}

/// A decoded resource of any kind Trellis reads. Boxed: the kinds differ a lot in size, and a
/// config source holds many of them.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Resource {
    VirtualService(Box<VirtualService>),
    DestinationRule(Box<DestinationRule>),
    ServiceEntry(Box<ServiceEntry>),
    WorkloadEntry(Box<WorkloadEntry>),
    Sidecar(Box<Sidecar>),
    Gateway(Box<Gateway>),
    PeerAuthentication(Box<PeerAuthentication>),
    AuthorizationPolicy(Box<AuthorizationPolicy>),
    RequestAuthentication(Box<RequestAuthentication>),
    EnvoyFilter(Box<EnvoyFilter>),
    Telemetry(Box<Telemetry>),
    Namespace(Box<Namespace>),
}

impl Resource {
    pub fn kind(&self) -> Kind {
        match self {
            Resource::VirtualService(_) => Kind::VirtualService,
            Resource::DestinationRule(_) => Kind::DestinationRule,
            Resource::ServiceEntry(_) => Kind::ServiceEntry,
            Resource::WorkloadEntry(_) => Kind::WorkloadEntry,
            Resource::Sidecar(_) => Kind::Sidecar,
            Resource::Gateway(_) => Kind::Gateway,
            Resource::PeerAuthentication(_) => Kind::PeerAuthentication,
            Resource::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Resource::RequestAuthentication(_) => Kind::RequestAuthentication,
            Resource::EnvoyFilter(_) => Kind::EnvoyFilter,
            Resource::Telemetry(_) => Kind::Telemetry,
            Resource::Namespace(_) => Kind::Namespace,
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Resource::VirtualService(r) => &r.metadata,
            Resource::DestinationRule(r) => &r.metadata,
            Resource::ServiceEntry(r) => &r.metadata,
            Resource::WorkloadEntry(r) => &r.metadata,
            Resource::Sidecar(r) => &r.metadata,
            Resource::Gateway(r) => &r.metadata,
            Resource::PeerAuthentication(r) => &r.metadata,
            Resource::AuthorizationPolicy(r) => &r.metadata,
            Resource::RequestAuthentication(r) => &r.metadata,
            Resource::EnvoyFilter(r) => &r.metadata,
            Resource::Telemetry(r) => &r.metadata,
            Resource::Namespace(r) => &r.metadata,
        }
    }

    pub fn id(&self) -> ResourceId {
        let meta = self.metadata();
        ResourceId {
            kind: self.kind().name().to_owned(),
            namespace: meta.namespace.clone(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

/// What a message says a resource is: `VirtualService production/orders`, or without a
/// namespace when the document has none (it then lands in whatever namespace it is applied to).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ResourceId {
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = if self.name.is_empty() { "<unnamed>" } else { &self.name };
        match &self.namespace {
            Some(ns) if !ns.is_empty() => write!(f, "{} {ns}/{name}", self.kind),
            _ => write!(f, "{} {name}", self.kind),
        }
    }
}

/// A resource together with the `apiVersion` it was written in, so that it is written back the
/// same way.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    pub api_version: String,
    pub resource: Resource,
}

impl Document {
    /// The document as JSON, in its original `apiVersion`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(&self.resource).unwrap_or(serde_json::Value::Null);
        if let Some(obj) = value.as_object_mut() {
            obj.insert("apiVersion".into(), self.api_version.clone().into());
            obj.insert("kind".into(), self.resource.kind().name().into());
        }
        value
    }

    /// The document as YAML, in its original `apiVersion`.
    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(&self.to_json()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_resolve_in_every_served_version() {
        for kind in Kind::ALL {
            for version in kind.versions() {
                let api_version = if kind.group().is_empty() {
                    version.to_string()
                } else {
                    format!("{}/{version}", kind.group())
                };
                assert_eq!(resolve_kind(&api_version, kind.name()), Ok(kind));
            }
        }
    }

    #[test]
    fn unknown_kinds_and_versions_are_explained() {
        assert_eq!(
            resolve_kind("networking.istio.io/v2", "VirtualService").unwrap_err().to_string(),
            "VirtualService does not exist in version \"v2\" of networking.istio.io; served versions are v1alpha3, v1beta1, v1"
        );
        assert_eq!(
            resolve_kind("security.istio.io/v1alpha3", "PeerAuthentication").unwrap_err().to_string(),
            "PeerAuthentication does not exist in version \"v1alpha3\" of security.istio.io; served versions are v1beta1, v1"
        );
        let err = resolve_kind("networking.istio.io/v1", "ProxyConfig").unwrap_err().to_string();
        assert!(err.starts_with("unknown kind \"ProxyConfig\" in apiVersion \"networking.istio.io/v1\"; Trellis reads networking.istio.io VirtualService/"), "{err}");
        assert_eq!(
            resolve_kind("networking.istio.io/v1", "EnvoyFilter").unwrap_err().to_string(),
            "EnvoyFilter does not exist in version \"v1\" of networking.istio.io; served versions are v1alpha3"
        );
        assert!(matches!(resolve_kind("apps/v1", "Deployment"), Err(KindError::UnknownKind { .. })));
        assert_eq!(unread_kind("apps/v1", "Deployment"), Some(UnreadKind::NotIstio));
        assert_eq!(unread_kind("v1", "Service"), Some(UnreadKind::NotIstio));
        assert_eq!(unread_kind("gateway.networking.k8s.io/v1", "Gateway"), Some(UnreadKind::NotIstio));
        assert_eq!(unread_kind("extensions.istio.io/v1alpha1", "WasmPlugin"), Some(UnreadKind::IstioIgnored));
        assert_eq!(unread_kind("networking.istio.io/v1beta1", "ProxyConfig"), Some(UnreadKind::IstioIgnored));
        // Mistakes stay errors: a typo in an Istio group, Trellis's kinds in the wrong group.
        assert_eq!(unread_kind("networking.istio.io/v1", "VirtualServce"), None);
        assert_eq!(unread_kind("v1", "VirtualService"), None);
        assert_eq!(
            unread_kind("networking.istio.io/v1", "ProxyConfig"),
            None,
            "Istio serves it as v1beta1 only"
        );
        assert_eq!(unread_kind("", "Service"), None);
        assert_eq!(resolve_kind("", "X"), Err(KindError::MissingApiVersion));
        assert_eq!(resolve_kind("v1", ""), Err(KindError::MissingKind));
    }
}
