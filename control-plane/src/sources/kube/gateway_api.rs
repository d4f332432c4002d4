//! Kubernetes Gateway API objects from the API server → the model's `gateway_classes`,
//! `k8s_gateways`, `http_routes`, `grpc_routes` and `reference_grants`.
//!
//! Watched as `DynamicObject`s and decoded one at a time (as the Istio kinds are): one object
//! that does not decode is logged and its last good version stays, and the rest of its kind
//! keeps updating. Their status is kept as the API server shows it, so that the status writer
//! ([`crate::gateway_status`]) can tell when what it would write is already there.

use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;
use std::sync::Arc;

use kube::api::{ApiResource, DynamicObject};
use serde::de::DeserializeOwned;
use trellis_api::gateway_api::{self, GROUP, Object};

use super::mirror::{Admission, Target};
use crate::model::Model;

/// One watched Gateway API kind: where it is served and which map of the model it fills.
pub trait Kind: Send + 'static {
    type Spec: DeserializeOwned + Default + PartialEq + Send + Sync + 'static;
    /// As logs and readiness name it (distinct from Istio's `Gateway`).
    const NAME: &'static str;
    const KIND: &'static str;
    const PLURAL: &'static str;
    const VERSION: &'static str;
    fn slot(model: &mut Model) -> &mut BTreeMap<(String, String), Arc<Object<Self::Spec>>>;
    /// Fields read but not enforced, logged once per version.
    fn not_enforced(_spec: &Self::Spec) -> Vec<(String, &'static str)> {
        Vec::new()
    }
}

pub struct GatewayClasses;
pub struct Gateways;
pub struct HttpRoutes;
pub struct GrpcRoutes;
pub struct ReferenceGrants;

impl Kind for GatewayClasses {
    type Spec = gateway_api::GatewayClassSpec;
    const NAME: &'static str = "gateway.networking.k8s.io/GatewayClass";
    const KIND: &'static str = "GatewayClass";
    const PLURAL: &'static str = "gatewayclasses";
    const VERSION: &'static str = "v1";
    fn slot(model: &mut Model) -> &mut BTreeMap<(String, String), Arc<Object<Self::Spec>>> {
        &mut model.gateway_classes
    }
}

impl Kind for Gateways {
    type Spec = gateway_api::GatewaySpec;
    const NAME: &'static str = "gateway.networking.k8s.io/Gateway";
    const KIND: &'static str = "Gateway";
    const PLURAL: &'static str = "gateways";
    const VERSION: &'static str = "v1";
    fn slot(model: &mut Model) -> &mut BTreeMap<(String, String), Arc<Object<Self::Spec>>> {
        &mut model.k8s_gateways
    }
}

impl Kind for HttpRoutes {
    type Spec = gateway_api::HttpRouteSpec;
    const NAME: &'static str = "gateway.networking.k8s.io/HTTPRoute";
    const KIND: &'static str = "HTTPRoute";
    const PLURAL: &'static str = "httproutes";
    const VERSION: &'static str = "v1";
    fn slot(model: &mut Model) -> &mut BTreeMap<(String, String), Arc<Object<Self::Spec>>> {
        &mut model.http_routes
    }
    fn not_enforced(spec: &Self::Spec) -> Vec<(String, &'static str)> {
        gateway_api::not_enforced(spec)
    }
}

impl Kind for GrpcRoutes {
    type Spec = gateway_api::GrpcRouteSpec;
    const NAME: &'static str = "gateway.networking.k8s.io/GRPCRoute";
    const KIND: &'static str = "GRPCRoute";
    const PLURAL: &'static str = "grpcroutes";
    const VERSION: &'static str = "v1";
    fn slot(model: &mut Model) -> &mut BTreeMap<(String, String), Arc<Object<Self::Spec>>> {
        &mut model.grpc_routes
    }
    fn not_enforced(spec: &Self::Spec) -> Vec<(String, &'static str)> {
        gateway_api::grpc_not_enforced(spec)
    }
}

impl Kind for ReferenceGrants {
    type Spec = gateway_api::ReferenceGrantSpec;
    const NAME: &'static str = "gateway.networking.k8s.io/ReferenceGrant";
    const KIND: &'static str = "ReferenceGrant";
    const PLURAL: &'static str = "referencegrants";
    // ReferenceGrant is served at v1beta1 (its v1 is recent and not everywhere).
    const VERSION: &'static str = "v1beta1";
    fn slot(model: &mut Model) -> &mut BTreeMap<(String, String), Arc<Object<Self::Spec>>> {
        &mut model.reference_grants
    }
}

/// The names readiness waits for.
pub const NAMES: [&str; 5] =
    [GatewayClasses::NAME, Gateways::NAME, HttpRoutes::NAME, ReferenceGrants::NAME, GrpcRoutes::NAME];

pub fn api_resource<K: Kind>() -> ApiResource {
    ApiResource {
        group: GROUP.into(),
        version: K::VERSION.into(),
        api_version: format!("{GROUP}/{}", K::VERSION),
        kind: K::KIND.into(),
        plural: K::PLURAL.into(),
    }
}

/// The watcher target of one kind.
pub struct Watched<K> {
    /// The resourceVersion whose decoding error was last logged, per object.
    reported: HashMap<(String, String), String>,
    kind: PhantomData<K>,
}

impl<K> Default for Watched<K> {
    fn default() -> Self {
        Watched { reported: HashMap::new(), kind: PhantomData }
    }
}

impl<K: Kind> Target for Watched<K> {
    type Object = DynamicObject;
    type Key = (String, String);
    type Value = Object<K::Spec>;

    fn slot(model: &mut Model) -> &mut BTreeMap<Self::Key, Arc<Self::Value>> {
        K::slot(model)
    }

    fn key(&self, object: &DynamicObject) -> Self::Key {
        super::namespaced(&object.metadata)
    }

    fn admit(&mut self, key: &Self::Key, object: DynamicObject) -> Admission<Self::Value> {
        let version = object.metadata.resource_version.clone().unwrap_or_default();
        let value = match serde_json::to_value(&object) {
            Ok(value) => value,
            Err(e) => {
                tracing::warn!(kind = K::KIND, namespace = %key.0, name = %key.1, error = %e, "not JSON; ignored");
                return Admission::KeepPrevious;
            }
        };
        match gateway_api::decode::<K::Spec>(&value) {
            Ok(decoded) => {
                let warnings = K::not_enforced(&decoded.spec);
                if warnings.is_empty() {
                    self.reported.remove(key);
                } else if self.reported.insert(key.clone(), version.clone()).as_ref() != Some(&version) {
                    for (field, why) in warnings {
                        tracing::warn!(kind = K::KIND, namespace = %key.0, name = %key.1, field,
                            "{} {}/{}: warning: {field}: {why}", K::KIND, key.0, key.1);
                    }
                }
                Admission::Store(decoded)
            }
            Err(problem) => {
                if self.reported.insert(key.clone(), version.clone()).as_ref() != Some(&version) {
                    tracing::warn!(kind = K::KIND, namespace = %key.0, name = %key.1,
                        "rejected {} {}/{}: {problem}; its last good version stays", K::KIND, key.0, key.1);
                }
                Admission::KeepPrevious
            }
        }
    }

    fn forget(&mut self, key: &Self::Key) {
        self.reported.remove(key);
    }
}
