//! CustomResourceDefinitions for the Istio kinds, generated from the Rust types, serving every
//! version Istio serves (with `v1` as the storage version) so that existing manifests apply.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool, ValidationRule,
};
use kube::CustomResourceExt;

use crate::networking::{DestinationRule, Gateway, ServiceEntry, Sidecar, VirtualService, WorkloadEntry};
use crate::resource::Kind;
use crate::security::{AuthorizationPolicy, PeerAuthentication, RequestAuthentication};
use crate::telemetry::Telemetry;

/// Every CRD Trellis installs, one per Istio kind.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![
        served_in_all_versions(VirtualService::crd(), Kind::VirtualService),
        served_in_all_versions(DestinationRule::crd(), Kind::DestinationRule),
        served_in_all_versions(ServiceEntry::crd(), Kind::ServiceEntry),
        served_in_all_versions(WorkloadEntry::crd(), Kind::WorkloadEntry),
        served_in_all_versions(Sidecar::crd(), Kind::Sidecar),
        served_in_all_versions(Gateway::crd(), Kind::Gateway),
        served_in_all_versions(PeerAuthentication::crd(), Kind::PeerAuthentication),
        served_in_all_versions(AuthorizationPolicy::crd(), Kind::AuthorizationPolicy),
        served_in_all_versions(RequestAuthentication::crd(), Kind::RequestAuthentication),
        served_in_all_versions(Telemetry::crd(), Kind::Telemetry),
    ]
}

/// The derive produces the `v1` version; Istio serves older versions with the same schema.
fn served_in_all_versions(mut crd: CustomResourceDefinition, kind: Kind) -> CustomResourceDefinition {
    let Some(mut template) = crd.spec.versions.first().cloned() else {
        return crd;
    };
    if let Some(schema) = template.schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut()) {
        structural(schema, true);
    }
    crd.spec.versions = kind
        .versions()
        .iter()
        .map(|version| {
            let mut v = template.clone();
            v.name = (*version).to_owned();
            v.storage = *version == "v1";
            v.served = true;
            v
        })
        .collect();
    crd
}

/// Rewrites what schemars produces into a structural schema a real API server accepts
/// (<https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#specifying-a-structural-schema>).
/// kube's derive already inlines subschemas, hoists enum variants and drops `uniqueItems`; this
/// handles the rest of what schemars writes for our types:
///
/// - a map with integer keys (`BTreeMap<u32, _>`) comes as `patternProperties` (which the API
///   server refuses) beside `additionalProperties: false`: it becomes `additionalProperties` with
///   the value schema, and unsigned-integer keys keep their check as a CEL rule (unless the field
///   brings its own, as `portLevelMtls` does for port numbers);
/// - formats the API server does not know (`uint32`, `uint64`, ...; it warns about them and
///   ignores them) become `int32`/`int64` with the type's range as `minimum`/`maximum`;
/// - a node without a type gets the one its keywords imply (`object` for properties, `array` for
///   items) or, a free-form value, keeps unknown fields instead of losing them.
///
/// `in_structure` is false inside `anyOf`/`oneOf`/`allOf`/`not`, where a node must not carry a
/// type or extensions of its own.
fn structural(schema: &mut JSONSchemaProps, in_structure: bool) {
    if let Some(patterns) = schema.pattern_properties.take() {
        map_from_pattern_properties(schema, patterns);
    }
    integer_format(schema);
    if schema.unique_items == Some(true) {
        schema.unique_items = None;
    }
    if in_structure
        && schema.type_.is_none()
        && schema.x_kubernetes_int_or_string != Some(true)
        && schema.x_kubernetes_preserve_unknown_fields != Some(true)
        && schema.any_of.is_none()
        && schema.one_of.is_none()
        && schema.all_of.is_none()
    {
        if schema.properties.is_some() || schema.additional_properties.is_some() {
            schema.type_ = Some("object".to_owned());
        } else if schema.items.is_some() {
            schema.type_ = Some("array".to_owned());
        } else {
            schema.x_kubernetes_preserve_unknown_fields = Some(true);
        }
    }

    for property in schema.properties.iter_mut().flat_map(|p| p.values_mut()) {
        structural(property, in_structure);
    }
    match &mut schema.items {
        Some(JSONSchemaPropsOrArray::Schema(items)) => structural(items, in_structure),
        Some(JSONSchemaPropsOrArray::Schemas(items)) => {
            items.iter_mut().for_each(|i| structural(i, in_structure))
        }
        None => {}
    }
    if let Some(JSONSchemaPropsOrBool::Schema(values)) = &mut schema.additional_properties {
        structural(values, in_structure);
    }
    for junctor in [&mut schema.all_of, &mut schema.any_of, &mut schema.one_of] {
        for sub in junctor.iter_mut().flatten() {
            structural(sub, false);
        }
    }
    if let Some(not) = &mut schema.not {
        structural(not, false);
    }
}

/// The key pattern schemars writes for maps keyed by an unsigned integer.
const UNSIGNED_KEY_PATTERN: &str = r"^\d+$";

fn map_from_pattern_properties(
    schema: &mut JSONSchemaProps,
    patterns: std::collections::BTreeMap<String, JSONSchemaProps>,
) {
    let mut values = patterns.values();
    let Some(first) = values.next() else {
        return;
    };
    // One value schema for every key pattern (schemars writes the same one for each): that is
    // the map's value schema. Different ones cannot be told apart without patterns: keep the
    // values, unchecked, rather than refuse them.
    let value = if values.all(|v| v == first) {
        first.clone()
    } else {
        JSONSchemaProps { x_kubernetes_preserve_unknown_fields: Some(true), ..Default::default() }
    };
    if schema.properties.as_ref().is_none_or(|p| p.is_empty()) {
        schema.additional_properties = Some(JSONSchemaPropsOrBool::Schema(Box::new(value)));
    }
    schema.type_ = Some("object".to_owned());
    if patterns.len() == 1
        && patterns.contains_key(UNSIGNED_KEY_PATTERN)
        && schema.x_kubernetes_validations.as_ref().is_none_or(|v| v.is_empty())
    {
        // `int()` rather than `matches()`: a regular expression over every key of an unbounded
        // map can exceed the API server's estimated-cost budget; Istio's CRDs check keys this way.
        schema.x_kubernetes_validations = Some(vec![ValidationRule {
            rule: "self.all(key, int(key) >= 0)".to_owned(),
            message: Some("keys must be non-negative integers".to_owned()),
            ..Default::default()
        }]);
    }
}

/// Integer and number formats the API server knows are `int32`, `int64`, `float` and `double`;
/// schemars also writes `uint8`...`uint64`, `int8`, `int16`, `uint` and `int`.
fn integer_format(schema: &mut JSONSchemaProps) {
    let Some(format) = schema.format.as_deref() else {
        return;
    };
    let (known, min, max): (&str, f64, f64) = match format {
        "int8" => ("int32", i8::MIN.into(), i8::MAX.into()),
        "int16" => ("int32", i16::MIN.into(), i16::MAX.into()),
        "uint8" => ("int32", 0.0, u8::MAX.into()),
        "uint16" => ("int32", 0.0, u16::MAX.into()),
        "uint32" => ("int64", 0.0, u32::MAX.into()),
        // The API server holds integers as int64: larger values cannot be stored anyway.
        "uint64" | "uint" => ("int64", 0.0, f64::INFINITY),
        "int" => ("int64", f64::NEG_INFINITY, f64::INFINITY),
        _ => return,
    };
    schema.format = Some(known.to_owned());
    if min.is_finite() {
        schema.minimum = Some(schema.minimum.map_or(min, |m| m.max(min)));
    }
    if max.is_finite() {
        schema.maximum = Some(schema.maximum.map_or(max, |m| m.min(max)));
    }
}

/// All CRDs as one multi-document YAML stream, for the Helm chart.
pub fn to_yaml() -> String {
    all().iter().filter_map(|crd| serde_saphyr::to_string(crd).ok()).collect::<Vec<_>>().join("---\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_serves_istios_versions_with_v1_stored() {
        let crds = all();
        assert_eq!(crds.len(), 10);
        for crd in &crds {
            let versions: Vec<(&str, bool)> =
                crd.spec.versions.iter().map(|v| (v.name.as_str(), v.storage)).collect();
            let stored: Vec<&str> = versions.iter().filter(|(_, s)| *s).map(|(n, _)| *n).collect();
            assert_eq!(stored, vec!["v1"], "{}", crd.spec.names.kind);
            assert!(versions.len() >= 2, "{}", crd.spec.names.kind);
        }
        let vs = crds.iter().find(|c| c.spec.names.kind == "VirtualService").unwrap();
        assert_eq!(vs.metadata.name.as_deref(), Some("virtualservices.networking.istio.io"));
        let names: Vec<&str> = vs.spec.versions.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["v1alpha3", "v1beta1", "v1"]);
    }

    #[test]
    fn the_charts_crds_are_current() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/trellis/crds/istio-crds.yaml");
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == to_yaml(),
            "{} is stale: run `cargo run --bin trellis -- crds > charts/trellis/crds/istio-crds.yaml`",
            path.display()
        );
    }

    fn schema(value: serde_json::Value) -> JSONSchemaProps {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn integer_keyed_maps_become_additional_properties() {
        let mut s = schema(serde_json::json!({
            "type": "object",
            "additionalProperties": false,
            "patternProperties": {"^\\d+$": {"type": "integer", "format": "uint16", "minimum": 0.0}},
        }));
        structural(&mut s, true);
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            serde_json::json!({
                "type": "object",
                "additionalProperties": {"type": "integer", "format": "int32", "minimum": 0.0, "maximum": 65535.0},
                "x-kubernetes-validations": [
                    {"rule": "self.all(key, int(key) >= 0)", "message": "keys must be non-negative integers"}
                ],
            })
        );

        // Signed keys: no key rule; a field's own rule is kept, not doubled.
        let mut s = schema(serde_json::json!({
            "type": "object",
            "additionalProperties": false,
            "patternProperties": {"^-?\\d+$": {"type": "string"}},
        }));
        structural(&mut s, true);
        assert!(s.pattern_properties.is_none());
        assert!(s.x_kubernetes_validations.is_none());
        assert!(
            matches!(&s.additional_properties, Some(JSONSchemaPropsOrBool::Schema(v)) if v.type_.as_deref() == Some("string"))
        );
    }

    #[test]
    fn differing_pattern_schemas_keep_their_values_unchecked() {
        let mut s = schema(serde_json::json!({
            "type": "object",
            "patternProperties": {"^a": {"type": "string"}, "^b": {"type": "integer"}},
        }));
        structural(&mut s, true);
        let Some(JSONSchemaPropsOrBool::Schema(values)) = &s.additional_properties else {
            panic!("no value schema: {s:?}");
        };
        assert_eq!(values.x_kubernetes_preserve_unknown_fields, Some(true));
        assert!(s.x_kubernetes_validations.is_none());
    }

    #[test]
    fn unsigned_formats_become_ranges() {
        for (format, known, max) in [
            ("uint8", "int32", Some(255.0)),
            ("uint32", "int64", Some(4_294_967_295.0)),
            ("uint64", "int64", None),
        ] {
            let mut s = schema(serde_json::json!({"type": "integer", "format": format, "minimum": 0.0}));
            structural(&mut s, true);
            assert_eq!(s.format.as_deref(), Some(known), "{format}");
            assert_eq!(s.minimum, Some(0.0), "{format}");
            assert_eq!(s.maximum, max, "{format}");
        }
        // A tighter bound the type already carries stays.
        let mut s = schema(
            serde_json::json!({"type": "integer", "format": "uint32", "minimum": 1.0, "maximum": 100.0}),
        );
        structural(&mut s, true);
        assert_eq!((s.minimum, s.maximum), (Some(1.0), Some(100.0)));
        // Formats the API server knows, and ones this cannot map, are left for the checker.
        for format in ["int32", "double", "ip"] {
            let mut s = schema(serde_json::json!({"type": "string", "format": format}));
            structural(&mut s, true);
            assert_eq!(s.format.as_deref(), Some(format));
        }
    }

    #[test]
    fn untyped_fields_keep_unknown_fields_but_not_under_junctors() {
        let mut s = schema(serde_json::json!({
            "type": "object",
            "properties": {
                "free": {"description": "anything"},
                "a": {"type": "string"},
                "fields": {"properties": {"b": {"type": "string"}}},
                "list": {"items": {"type": "string"}},
            },
            "oneOf": [{"required": ["a"]}],
        }));
        structural(&mut s, true);
        let props = s.properties.as_ref().unwrap();
        assert_eq!(props["free"].x_kubernetes_preserve_unknown_fields, Some(true));
        assert_eq!(props["fields"].type_.as_deref(), Some("object"));
        assert_eq!(props["list"].type_.as_deref(), Some("array"));
        assert_eq!(props["list"].x_kubernetes_preserve_unknown_fields, None);
        assert_eq!(s.one_of.as_ref().unwrap()[0].x_kubernetes_preserve_unknown_fields, None);
    }

    #[test]
    fn schemas_describe_the_spec_fields() {
        let yaml = to_yaml();
        for field in [
            "http",
            "trafficPolicy",
            "consecutive5xxErrors",
            "portLevelMtls",
            "notPrincipals",
            "match",
            "jwtRules",
            "trustDomains",
        ] {
            assert!(yaml.contains(field), "CRD YAML lacks {field}");
        }
    }
}
