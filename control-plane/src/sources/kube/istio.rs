//! Istio resources from the API server → checked `Resource`s.
//!
//! They are watched as `DynamicObject`s and decoded here one at a time: a typed kube-rs watcher
//! fails the whole list when one item does not deserialize, which would let one bad object stop
//! every update of its kind. Decoded, each goes through the same validation as `trellis
//! validate` and the file source, so the cluster and files accept exactly the same config.

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ApiResource, DynamicObject};
use serde::de::DeserializeOwned;
use serde_json::Value;
use trellis_api::envoy_filter::EnvoyFilter;
use trellis_api::networking::{
    DestinationRule, Gateway, ServiceEntry, Sidecar, VirtualService, WorkloadEntry,
};
use trellis_api::resource::{Kind, Resource};
use trellis_api::security::{AuthorizationPolicy, PeerAuthentication, RequestAuthentication};
use trellis_api::validate::{Finding, Severity, validate};

/// Where the API server serves `kind` (its `v1`, the storage version of Istio's CRDs).
pub fn api_resource(kind: Kind) -> ApiResource {
    match kind {
        Kind::VirtualService => ApiResource::erase::<VirtualService>(&()),
        Kind::DestinationRule => ApiResource::erase::<DestinationRule>(&()),
        Kind::ServiceEntry => ApiResource::erase::<ServiceEntry>(&()),
        Kind::WorkloadEntry => ApiResource::erase::<WorkloadEntry>(&()),
        Kind::Sidecar => ApiResource::erase::<Sidecar>(&()),
        Kind::Gateway => ApiResource::erase::<Gateway>(&()),
        Kind::PeerAuthentication => ApiResource::erase::<PeerAuthentication>(&()),
        Kind::AuthorizationPolicy => ApiResource::erase::<AuthorizationPolicy>(&()),
        Kind::RequestAuthentication => ApiResource::erase::<RequestAuthentication>(&()),
        Kind::EnvoyFilter => ApiResource::erase::<EnvoyFilter>(&()),
        Kind::Telemetry => ApiResource::erase::<trellis_api::telemetry::Telemetry>(&()),
        Kind::Namespace => ApiResource::erase::<Namespace>(&()),
    }
}

/// A resource that passed: the resource and its warnings (findings that do not reject).
#[derive(Debug)]
pub struct Accepted {
    pub resource: Resource,
    pub warnings: Vec<Finding>,
}

/// Decodes and validates one object. `Err` holds every finding, at least one of them an error.
pub fn check(kind: Kind, object: DynamicObject) -> Result<Accepted, Vec<Finding>> {
    let resource = decode(kind, object).map_err(|finding| vec![finding])?;
    let findings = validate(&resource);
    if findings.iter().any(|f| f.severity == Severity::Error) {
        return Err(findings);
    }
    Ok(Accepted { resource, warnings: findings })
}

/// The typed resource, or the field that does not fit the schema.
fn decode(kind: Kind, object: DynamicObject) -> Result<Resource, Finding> {
    let mut value = into_value(object)?;
    // Istio reads a security policy without `spec` as one with an empty spec.
    if kind.spec_optional() && value.get("spec").is_none_or(Value::is_null) {
        value = trellis_api::load::with_empty_spec(&value);
    }
    Ok(match kind {
        Kind::VirtualService => Resource::VirtualService(typed(value)?),
        Kind::DestinationRule => Resource::DestinationRule(typed(value)?),
        Kind::ServiceEntry => Resource::ServiceEntry(typed(value)?),
        Kind::WorkloadEntry => Resource::WorkloadEntry(typed(value)?),
        Kind::Sidecar => Resource::Sidecar(typed(value)?),
        Kind::Gateway => Resource::Gateway(typed(value)?),
        Kind::PeerAuthentication => Resource::PeerAuthentication(typed(value)?),
        Kind::AuthorizationPolicy => Resource::AuthorizationPolicy(typed(value)?),
        Kind::RequestAuthentication => Resource::RequestAuthentication(typed(value)?),
        Kind::EnvoyFilter => Resource::EnvoyFilter(typed(value)?),
        Kind::Telemetry => Resource::Telemetry(typed(value)?),
        Kind::Namespace => Resource::Namespace(typed(value)?),
    })
}

/// The object as the JSON the typed structs read, moving its body rather than copying it.
fn into_value(object: DynamicObject) -> Result<Value, Finding> {
    let metadata = serde_json::to_value(object.metadata).map_err(|e| error("metadata", e.to_string()))?;
    let mut body = match object.data {
        Value::Object(map) => map,
        Value::Null => serde_json::Map::new(),
        other => return Err(error("", format!("expected an object, found {other}"))),
    };
    body.insert("metadata".into(), metadata);
    Ok(Value::Object(body))
}

/// Unknown fields are not reported: the API server prunes them against the CRD schema, and
/// `apiVersion`, `kind` and `status` are not the typed structs' business.
fn typed<T: DeserializeOwned>(value: Value) -> Result<Box<T>, Finding> {
    serde_path_to_error::deserialize(value).map(Box::new).map_err(|e| {
        let path = e.path().to_string();
        // serde_path_to_error names the root ".": that is the object as a whole, not a field.
        let field = if path == "." { String::new() } else { path };
        error(&field, e.into_inner().to_string())
    })
}

fn error(field: &str, message: String) -> Finding {
    Finding { severity: Severity::Error, field: field.to_owned(), message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> DynamicObject {
        serde_json::from_value(value).unwrap()
    }

    fn virtual_service(spec: Value) -> DynamicObject {
        object(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"namespace": "shop", "name": "reviews", "resourceVersion": "7"},
            "spec": spec, "status": {"conditions": []}
        }))
    }

    #[test]
    fn plurals_follow_the_crds() {
        assert_eq!(api_resource(Kind::ServiceEntry).plural, "serviceentries");
        assert_eq!(api_resource(Kind::AuthorizationPolicy).plural, "authorizationpolicies");
        assert_eq!(api_resource(Kind::PeerAuthentication).group, "security.istio.io");
        assert_eq!(api_resource(Kind::VirtualService).version, "v1");
        assert_eq!(api_resource(Kind::Namespace).api_version, "v1");
    }

    #[test]
    fn valid_resources_decode_with_their_metadata() {
        let spec = json!({"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]});
        let accepted = check(Kind::VirtualService, virtual_service(spec)).unwrap();
        let Resource::VirtualService(vs) = &accepted.resource else { panic!("{accepted:?}") };
        assert_eq!(vs.spec.hosts, vec!["reviews"]);
        assert_eq!(vs.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(vs.metadata.resource_version.as_deref(), Some("7"));
    }

    #[test]
    fn type_errors_name_the_field() {
        let spec = json!({"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "r"}, "weight": "ten"}]}]});
        let findings = check(Kind::VirtualService, virtual_service(spec)).unwrap_err();
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].field, "spec.http[0].route[0].weight");
    }

    #[test]
    fn semantic_errors_are_all_reported() {
        let spec = json!({"hosts": ["*"], "http": [{"route": [
            {"destination": {"host": "a"}, "weight": 0}, {"destination": {"host": "b"}, "weight": 0}
        ]}]});
        let findings = check(Kind::VirtualService, virtual_service(spec)).unwrap_err();
        let errors: Vec<&str> =
            findings.iter().filter(|f| f.severity == Severity::Error).map(|f| f.field.as_str()).collect();
        assert_eq!(errors, ["spec.hosts[0]", "spec.http[0].route"], "{findings:?}");
    }

    #[test]
    fn warnings_do_not_reject() {
        let spec =
            json!({"hosts": ["r"], "http": [{"route": [{"destination": {"host": "r"}, "weight": 150}]}]});
        let accepted = check(Kind::VirtualService, virtual_service(spec)).unwrap();
        assert_eq!(accepted.warnings.len(), 1, "{accepted:?}");
        assert_eq!(accepted.warnings[0].field, "spec.http[0].route[0].weight");
    }

    #[test]
    fn a_body_that_is_not_an_object_is_an_error() {
        let mut object = virtual_service(json!({}));
        object.data = json!([1]);
        let findings = check(Kind::VirtualService, object).unwrap_err();
        assert_eq!(findings[0].field, "");
    }
}
