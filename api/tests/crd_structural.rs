//! Every CRD Trellis generates (`trellis crds`, the chart's `crds/istio-crds.yaml`) must be one a
//! real kube-apiserver accepts: a structural schema
//! (<https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#specifying-a-structural-schema>)
//! that passes apiextensions' validation (`ValidateCustomResourceDefinitionOpenAPISchema` and
//! `ValidateStructural`), with only the formats the API server knows. The stand-in API server
//! the other tests use is more lenient than the real one, so this checker holds the rules
//! itself and is tested on small hand-written schemas that break each one.

use serde_json::{Map, Value, json};

/// String formats apiextensions validates (`supportedVersionedFormats` of
/// `apiextensions-apiserver/pkg/apiserver/validation/formats.go`, the set every version since 1.0
/// knows, compared with `-` removed as the server does). `k8s-short-name`/`k8s-long-name`
/// (1.34) are left out: older API servers ignore them.
const STRING_FORMATS: &[&str] = &[
    "bsonobjectid",
    "uri",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "cidr",
    "mac",
    "uuid",
    "uuid3",
    "uuid4",
    "uuid5",
    "isbn",
    "isbn10",
    "isbn13",
    "creditcard",
    "ssn",
    "hexcolor",
    "rgbcolor",
    "byte",
    "password",
    "date",
    "duration",
    "datetime",
];

/// OpenAPI's integer and number formats, which kube-openapi's validator understands.
const INTEGER_FORMATS: &[&str] = &["int32", "int64"];
const NUMBER_FORMATS: &[&str] = &["float", "double"];

const TYPES: &[&str] = &["object", "array", "string", "integer", "number", "boolean"];

/// The fields of apiextensions/v1 `JSONSchemaProps` the API server accepts in a CRD schema.
const ALLOWED_KEYWORDS: &[&str] = &[
    "description",
    "type",
    "format",
    "title",
    "default",
    "maximum",
    "exclusiveMaximum",
    "minimum",
    "exclusiveMinimum",
    "maxLength",
    "minLength",
    "pattern",
    "maxItems",
    "minItems",
    "uniqueItems",
    "multipleOf",
    "enum",
    "maxProperties",
    "minProperties",
    "required",
    "items",
    "allOf",
    "oneOf",
    "anyOf",
    "not",
    "properties",
    "additionalProperties",
    "nullable",
    "externalDocs",
    "example",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-embedded-resource",
    "x-kubernetes-int-or-string",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-list-type",
    "x-kubernetes-map-type",
    "x-kubernetes-validations",
];

/// Keywords `JSONSchemaProps` has but apiextensions forbids in a CRD (each is "not supported").
const FORBIDDEN_KEYWORDS: &[&str] =
    &["patternProperties", "$ref", "definitions", "dependencies", "additionalItems", "id", "$schema"];

/// Keywords that must not appear inside `anyOf`/`oneOf`/`allOf`/`not` ("must be empty/undefined
/// to be structural").
const FORBIDDEN_IN_JUNCTORS: &[&str] = &[
    "type",
    "additionalProperties",
    "default",
    "title",
    "description",
    "nullable",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-embedded-resource",
    "x-kubernetes-int-or-string",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-list-type",
    "x-kubernetes-map-type",
    "x-kubernetes-validations",
];

#[derive(Clone, Copy, PartialEq)]
enum Level {
    Root,
    Field,
    Item,
}

struct Checker<'a> {
    /// `PeerAuthentication v1`
    name: &'a str,
    problems: Vec<String>,
}

impl Checker<'_> {
    fn problem(&mut self, path: &str, what: impl std::fmt::Display) {
        let path = if path.is_empty() { "." } else { path };
        self.problems.push(format!("{} {path}: {what}", self.name));
    }

    /// A node of the structural part of the schema (not under a junctor).
    fn structural(&mut self, node: &Value, path: &str, level: Level) {
        let Some(obj) = node.as_object() else {
            self.problem(path, format!("a schema must be an object, not {node}"));
            return;
        };
        self.keywords(obj, path);

        let preserve = flag(obj, "x-kubernetes-preserve-unknown-fields", path, self);
        let int_or_string = flag(obj, "x-kubernetes-int-or-string", path, self);
        let embedded = flag(obj, "x-kubernetes-embedded-resource", path, self);
        if obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(false)) {
            self.problem(path, "x-kubernetes-preserve-unknown-fields must be true or left out");
        }
        if int_or_string && preserve {
            self.problem(
                path,
                "x-kubernetes-preserve-unknown-fields must be false with x-kubernetes-int-or-string",
            );
        }
        if int_or_string && embedded {
            self.problem(
                path,
                "x-kubernetes-embedded-resource must be false with x-kubernetes-int-or-string",
            );
        }

        let ty = match obj.get("type") {
            None => None,
            Some(Value::String(t)) if TYPES.contains(&t.as_str()) => Some(t.as_str()),
            Some(Value::String(t)) if t == "null" => {
                self.problem(path, "type null is not allowed (use nullable)");
                None
            }
            Some(other) => {
                self.problem(path, format!("type must be one of {TYPES:?}, not {other}"));
                None
            }
        };
        if int_or_string && ty.is_some() {
            self.problem(path, "type must be left out with x-kubernetes-int-or-string");
        }
        if ty.is_none() && !int_or_string && !preserve && obj.get("type").is_none() {
            let detail = match level {
                Level::Root => "at the root",
                Level::Item => "for array items",
                Level::Field => "for object fields",
            };
            self.problem(path, format!("type is missing (required {detail} without x-kubernetes-int-or-string or x-kubernetes-preserve-unknown-fields)"));
        }
        if embedded && ty != Some("object") {
            self.problem(path, "x-kubernetes-embedded-resource needs type object");
        }

        if level == Level::Root {
            if ty.is_some_and(|t| t != "object") {
                self.problem(path, "type must be object at the root");
            }
            if obj.get("nullable") == Some(&Value::Bool(true)) {
                self.problem(path, "nullable must not be true at the root");
            }
            if obj.contains_key("additionalProperties") {
                self.problem(path, "additionalProperties is not allowed at the root");
            }
            self.root_meta(obj, path);
        }

        self.value_checks(obj, ty, path);

        let properties = obj.get("properties").and_then(Value::as_object);
        if let Some(additional) = obj.get("additionalProperties") {
            if properties.is_some_and(|p| !p.is_empty()) {
                self.problem(path, "additionalProperties and properties must not both be set");
            }
            if ty.is_some_and(|t| t != "object") {
                self.problem(path, "additionalProperties needs type object");
            }
            if embedded {
                self.problem(
                    path,
                    "additionalProperties must not be set with x-kubernetes-embedded-resource",
                );
            }
            match additional {
                Value::Bool(_) => {}
                values => self.structural(values, &format!("{path}.*"), Level::Field),
            }
        }
        if let Some(p) = obj.get("properties") {
            match p.as_object() {
                Some(p) => {
                    if ty.is_some_and(|t| t != "object") {
                        self.problem(path, "properties need type object");
                    }
                    for (name, sub) in p {
                        self.structural(sub, &format!("{path}.{name}"), Level::Field);
                    }
                }
                None => self.problem(path, "properties must be an object"),
            }
        }
        if embedded && !preserve && properties.is_none_or(|p| p.is_empty()) {
            self.problem(
                path,
                "x-kubernetes-embedded-resource needs properties or x-kubernetes-preserve-unknown-fields",
            );
        }
        match obj.get("items") {
            Some(items @ Value::Object(_)) => {
                if ty.is_some_and(|t| t != "array") {
                    self.problem(path, "items need type array");
                }
                self.structural(items, &format!("{path}[*]"), Level::Item);
            }
            Some(_) => self.problem(path, "items must be a schema object and not an array"),
            None if ty == Some("array") => self.problem(path, "items must be specified for type array"),
            None => {}
        }
        self.lists_and_maps(obj, ty, path);
        self.junctors(obj, path, int_or_string);
    }

    /// Keywords every node may (or must not) carry.
    fn keywords(&mut self, obj: &Map<String, Value>, path: &str) {
        for key in obj.keys() {
            if FORBIDDEN_KEYWORDS.contains(&key.as_str()) {
                self.problem(path, format!("{key} is not allowed"));
            } else if !ALLOWED_KEYWORDS.contains(&key.as_str()) {
                self.problem(path, format!("{key} is not allowed (not a field of JSONSchemaProps)"));
            }
        }
        if obj.get("uniqueItems") == Some(&Value::Bool(true)) {
            self.problem(path, "uniqueItems must not be true (use x-kubernetes-list-type: set)");
        }
        if let Some(nullable) = obj.get("nullable")
            && !nullable.is_boolean()
        {
            self.problem(path, format!("nullable must be a boolean, not {nullable}"));
        }
    }

    /// `format`, `enum`, `pattern` and `x-kubernetes-validations`.
    fn value_checks(&mut self, obj: &Map<String, Value>, ty: Option<&str>, path: &str) {
        if let Some(format) = obj.get("format") {
            let known = match (ty, format.as_str()) {
                (_, None) => false,
                (Some("string"), Some(f)) => STRING_FORMATS.contains(&f.replace('-', "").as_str()),
                (Some("integer"), Some(f)) => INTEGER_FORMATS.contains(&f),
                (Some("number"), Some(f)) => NUMBER_FORMATS.contains(&f),
                (_, Some(_)) => false,
            };
            if !known {
                self.problem(path, format!("unknown format {format} for type {}", ty.unwrap_or("(none)")));
            }
        }
        if let Some(values) = obj.get("enum") {
            let nullable = obj.get("nullable") == Some(&Value::Bool(true));
            match values.as_array() {
                Some(values) => {
                    for value in values {
                        let fits = match (value, ty) {
                            (Value::Null, _) => nullable,
                            (_, None) => true,
                            (Value::String(_), Some(t)) => t == "string",
                            (Value::Bool(_), Some(t)) => t == "boolean",
                            (Value::Number(n), Some(t)) => t == "number" || (t == "integer" && !n.is_f64()),
                            (Value::Array(_), Some(t)) => t == "array",
                            (Value::Object(_), Some(t)) => t == "object",
                        };
                        if !fits {
                            self.problem(
                                path,
                                format!("enum value {value} does not fit type {}", ty.unwrap_or("(none)")),
                            );
                        }
                    }
                }
                None => self.problem(path, "enum must be a list"),
            }
        }
        if let Some(pattern) = obj.get("pattern") {
            match pattern.as_str().map(regex::Regex::new) {
                Some(Ok(_)) => {}
                _ => self.problem(path, format!("pattern {pattern} is not a valid regular expression")),
            }
        }
        if let Some(rules) = obj.get("x-kubernetes-validations") {
            let well_formed = rules.as_array().is_some_and(|rules| {
                rules
                    .iter()
                    .all(|r| r.get("rule").and_then(Value::as_str).is_some_and(|r| !r.trim().is_empty()))
            });
            if !well_formed {
                self.problem(path, "x-kubernetes-validations must be a list of objects with a rule");
            }
        }
    }

    /// `metadata`, `apiVersion` and `kind` at the root.
    fn root_meta(&mut self, obj: &Map<String, Value>, path: &str) {
        let Some(properties) = obj.get("properties").and_then(Value::as_object) else {
            return;
        };
        for (field, ty) in [("kind", "string"), ("apiVersion", "string"), ("metadata", "object")] {
            if let Some(sub) = properties.get(field)
                && sub.get("type").and_then(Value::as_str) != Some(ty)
            {
                self.problem(&format!("{path}.{field}"), format!("type must be {ty}"));
            }
        }
        if let Some(metadata) = properties.get("metadata").and_then(Value::as_object) {
            let only_names = metadata.iter().all(|(k, v)| match k.as_str() {
                "type" => true,
                "properties" => {
                    v.as_object().is_some_and(|p| p.keys().all(|k| k == "name" || k == "generateName"))
                }
                _ => false,
            });
            if !only_names {
                self.problem(
                    &format!("{path}.metadata"),
                    "must not specify anything other than name and generateName",
                );
            }
        }
    }

    /// `x-kubernetes-list-type`, `x-kubernetes-list-map-keys` and `x-kubernetes-map-type`.
    fn lists_and_maps(&mut self, obj: &Map<String, Value>, ty: Option<&str>, path: &str) {
        if let Some(list_type) = obj.get("x-kubernetes-list-type") {
            if ty != Some("array") {
                self.problem(path, "x-kubernetes-list-type needs type array");
            }
            match list_type.as_str() {
                Some("atomic" | "set") => {}
                Some("map") => {
                    let keys = obj.get("x-kubernetes-list-map-keys").and_then(Value::as_array);
                    if keys.is_none_or(|k| k.is_empty()) {
                        self.problem(path, "x-kubernetes-list-type map needs x-kubernetes-list-map-keys");
                    }
                    if obj.get("items").and_then(|i| i.get("type")).and_then(Value::as_str) != Some("object")
                    {
                        self.problem(path, "x-kubernetes-list-type map needs items of type object");
                    }
                }
                _ => self
                    .problem(path, format!("x-kubernetes-list-type {list_type} is not atomic, set or map")),
            }
        }
        if obj.contains_key("x-kubernetes-list-map-keys")
            && obj.get("x-kubernetes-list-type").and_then(Value::as_str) != Some("map")
        {
            self.problem(path, "x-kubernetes-list-map-keys needs x-kubernetes-list-type map");
        }
        if let Some(map_type) = obj.get("x-kubernetes-map-type") {
            if ty != Some("object") {
                self.problem(path, "x-kubernetes-map-type needs type object");
            }
            if !matches!(map_type.as_str(), Some("granular" | "atomic")) {
                self.problem(path, format!("x-kubernetes-map-type {map_type} is not granular or atomic"));
            }
        }
    }

    /// `anyOf`, `oneOf`, `allOf` and `not` of a structural node: only value validation, and only
    /// on fields and items the structural part specifies too.
    fn junctors(&mut self, obj: &Map<String, Value>, path: &str, int_or_string: bool) {
        for junctor in ["anyOf", "oneOf", "allOf"] {
            let Some(list) = obj.get(junctor) else { continue };
            let Some(list) = list.as_array() else {
                self.problem(path, format!("{junctor} must be a list"));
                continue;
            };
            for (i, sub) in list.iter().enumerate() {
                // The two shapes int-or-string may take: `anyOf: [{type: integer}, {type: string}]`,
                // also as the first element of `allOf`.
                let int_or_string_any_of =
                    |v: &Value| v.get("anyOf") == Some(&json!([{"type": "integer"}, {"type": "string"}]));
                if int_or_string
                    && ((junctor == "anyOf" && int_or_string_any_of(&Value::Object(obj.clone())))
                        || (junctor == "allOf" && i == 0 && int_or_string_any_of(sub)))
                {
                    continue;
                }
                self.nested(sub, &format!("{path}|{junctor}[{i}]"), Value::Object(obj.clone()));
            }
        }
        if let Some(not) = obj.get("not") {
            self.nested(not, &format!("{path}|not"), Value::Object(obj.clone()));
        }
    }

    /// A node under a junctor; `outer` is the structural node it constrains.
    fn nested(&mut self, node: &Value, path: &str, outer: Value) {
        let Some(obj) = node.as_object() else {
            self.problem(path, format!("a schema must be an object, not {node}"));
            return;
        };
        self.keywords(obj, path);
        for key in FORBIDDEN_IN_JUNCTORS {
            if obj.contains_key(*key) {
                self.problem(path, format!("{key} must not be set inside anyOf/oneOf/allOf/not"));
            }
        }
        let outer_type = outer.get("type").and_then(Value::as_str);
        self.value_checks(obj, outer_type, path);
        if let Some(properties) = obj.get("properties").and_then(Value::as_object) {
            if properties.contains_key("metadata") {
                self.problem(path, "metadata must not be specified inside anyOf/oneOf/allOf/not");
            }
            let outer_properties = outer.get("properties").and_then(Value::as_object);
            let outer_values = outer.get("additionalProperties").filter(|v| v.is_object());
            for (name, sub) in properties {
                let sub_path = format!("{path}.{name}");
                match (outer_properties.and_then(|p| p.get(name)), outer_values) {
                    (Some(o), _) | (None, Some(o)) => self.nested(sub, &sub_path, o.clone()),
                    (None, None) => self.problem(
                        &sub_path,
                        "is constrained inside anyOf/oneOf/allOf/not but not specified outside",
                    ),
                }
            }
        }
        if let Some(items) = obj.get("items") {
            match outer.get("items") {
                Some(o) => self.nested(items, &format!("{path}[*]"), o.clone()),
                None => self.problem(
                    path,
                    "items are constrained inside anyOf/oneOf/allOf/not but not specified outside",
                ),
            }
        }
        for junctor in ["anyOf", "oneOf", "allOf"] {
            for (i, sub) in obj.get(junctor).and_then(Value::as_array).into_iter().flatten().enumerate() {
                self.nested(sub, &format!("{path}|{junctor}[{i}]"), outer.clone());
            }
        }
        if let Some(not) = obj.get("not") {
            self.nested(not, &format!("{path}|not"), outer);
        }
    }
}

/// An `x-kubernetes-*` flag: true, false or absent; anything else is a problem.
fn flag(obj: &Map<String, Value>, key: &str, path: &str, checker: &mut Checker) -> bool {
    match obj.get(key) {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            checker.problem(path, format!("{key} must be a boolean, not {other}"));
            false
        }
    }
}

/// Every problem in one CRD (as JSON), each prefixed by its kind and version.
fn check_crd(crd: &Value) -> Vec<String> {
    let kind = crd.pointer("/spec/names/kind").and_then(Value::as_str).unwrap_or("(no kind)");
    let mut problems = Vec::new();
    let versions = crd.pointer("/spec/versions").and_then(Value::as_array);
    if versions.is_none_or(|v| v.is_empty()) {
        problems.push(format!("{kind}: no versions"));
    }
    for version in versions.into_iter().flatten() {
        let name = format!("{kind} {}", version.get("name").and_then(Value::as_str).unwrap_or("(no name)"));
        let mut checker = Checker { name: &name, problems: Vec::new() };
        match version.pointer("/schema/openAPIV3Schema") {
            Some(schema) => checker.structural(schema, "", Level::Root),
            None => checker.problem("", "no schema (apiextensions.k8s.io/v1 requires one per version)"),
        }
        problems.extend(checker.problems);
    }
    problems
}

/// The problems of a bare schema, as version `v1` of a kind `Test`.
fn check_schema(schema: Value) -> Vec<String> {
    check_crd(&json!({
        "spec": {"names": {"kind": "Test"}, "versions": [{"name": "v1", "schema": {"openAPIV3Schema": schema}}]}
    }))
}

fn assert_no_problems(what: &str, problems: &[String]) {
    assert!(problems.is_empty(), "{what} would not install on a real API server:\n{}", problems.join("\n"));
}

#[test]
fn every_generated_crd_is_structural() {
    let crds = trellis_api::crds::all();
    assert_eq!(crds.len(), 10);
    let mut problems = Vec::new();
    for crd in &crds {
        let value = serde_json::to_value(crd).expect("a CRD serializes");
        assert!(value.pointer("/spec/versions/1").is_some(), "{}: one version only", crd.spec.names.kind);
        problems.extend(check_crd(&value));
    }
    assert_no_problems("trellis crds", &problems);
}

/// The chart's file as it is committed (the unit test in `crds.rs` keeps it equal to
/// `trellis crds`), read back from YAML, so what Helm applies is what is checked.
#[test]
fn the_charts_crds_are_structural() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/trellis/crds/istio-crds.yaml");
    let text = std::fs::read_to_string(&path).expect("the chart's CRDs");
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).expect("the chart's CRDs parse");
    assert_eq!(docs.len(), 10, "{}", path.display());
    let problems: Vec<String> = docs.iter().flat_map(check_crd).collect();
    assert_no_problems(&path.display().to_string(), &problems);
}

/// What this change fixed, named so that a regression reads plainly.
#[test]
fn peer_authentication_port_map_is_additional_properties_with_a_port_rule() {
    let crds = trellis_api::crds::all();
    let pa = crds.iter().find(|c| c.spec.names.kind == "PeerAuthentication").expect("PeerAuthentication");
    let value = serde_json::to_value(pa).expect("a CRD serializes");
    for version in value.pointer("/spec/versions").and_then(Value::as_array).expect("versions") {
        let ports = version
            .pointer("/schema/openAPIV3Schema/properties/spec/properties/portLevelMtls")
            .expect("portLevelMtls");
        assert_eq!(ports.get("type"), Some(&json!("object")));
        assert!(ports.get("patternProperties").is_none());
        assert!(ports.pointer("/additionalProperties/properties/mode/enum").is_some(), "{ports}");
        let rule = ports.pointer("/x-kubernetes-validations/0/rule").and_then(Value::as_str);
        assert_eq!(rule, Some("self.all(key, 0 < int(key) && int(key) <= 65535)"));
    }
}

#[test]
fn unsigned_integers_keep_their_range() {
    let crds = trellis_api::crds::all();
    let dr = crds.iter().find(|c| c.spec.names.kind == "DestinationRule").expect("DestinationRule");
    let value = serde_json::to_value(dr).expect("a CRD serializes");
    let spec =
        value.pointer("/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties").expect("spec");
    // `OutlierDetection.consecutive5xxErrors` is a u32 (Istio's UInt32Value).
    let errors = spec
        .pointer("/trafficPolicy/properties/outlierDetection/properties/consecutive5xxErrors")
        .expect("consecutive5xxErrors");
    assert_eq!(errors.get("type"), Some(&json!("integer")));
    assert_eq!(errors.get("format"), Some(&json!("int64")));
    assert_eq!(errors.get("minimum").and_then(Value::as_f64), Some(0.0));
    assert_eq!(errors.get("maximum").and_then(Value::as_f64), Some(4_294_967_295.0));
}

// The checker itself: each rule is broken once on a small schema, and must be caught with the
// path of the offending node.

fn spec_with(field: Value) -> Value {
    json!({
        "type": "object",
        "properties": {"spec": {"type": "object", "properties": {"field": field}}}
    })
}

fn assert_caught(schema: Value, expected: &str) {
    let problems = check_schema(schema);
    assert!(
        problems.iter().any(|p| p == expected),
        "expected the problem\n  {expected}\ngot:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn checker_accepts_a_structural_schema() {
    let schema = json!({
        "type": "object",
        "description": "root",
        "required": ["spec"],
        "properties": {
            "metadata": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 63}}},
            "spec": {
                "type": "object",
                "properties": {
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "ports": {
                        "type": "object",
                        "additionalProperties": {"type": "integer", "format": "int64", "minimum": 0.0},
                        "x-kubernetes-validations": [{"rule": "self.all(k, int(k) > 0)"}]
                    },
                    "mode": {"type": "string", "enum": ["A", "B", null], "nullable": true},
                    "port": {"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]},
                    "raw": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                    "anything": {"x-kubernetes-preserve-unknown-fields": true},
                    "when": {"type": "string", "format": "date-time"},
                    "ratio": {"type": "number", "format": "double"},
                    "hosts": {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set"},
                    "oneOfTwo": {
                        "type": "object",
                        "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
                        "oneOf": [{"required": ["a"]}, {"required": ["b"]}, {"properties": {"a": {"minLength": 1}}}]
                    }
                }
            }
        }
    });
    assert_no_problems("the hand-written schema", &check_schema(schema));
}

#[test]
fn checker_catches_pattern_properties() {
    assert_caught(
        spec_with(json!({
            "type": "object",
            "patternProperties": {"^\\d+$": {"type": "string"}}
        })),
        "Test v1 .spec.field: patternProperties is not allowed",
    );
}

#[test]
fn checker_catches_unknown_formats() {
    assert_caught(
        spec_with(json!({"type": "integer", "format": "uint32", "minimum": 0.0})),
        "Test v1 .spec.field: unknown format \"uint32\" for type integer",
    );
    assert_caught(
        spec_with(json!({"type": "string", "format": "ip"})),
        "Test v1 .spec.field: unknown format \"ip\" for type string",
    );
    // A known format on the wrong type is ignored by the API server: a mistake all the same.
    assert_caught(
        spec_with(json!({"type": "string", "format": "int64"})),
        "Test v1 .spec.field: unknown format \"int64\" for type string",
    );
}

#[test]
fn checker_catches_a_missing_type() {
    assert_caught(
        spec_with(json!({"description": "no type", "properties": {"a": {"type": "string"}}})),
        "Test v1 .spec.field: type is missing (required for object fields without x-kubernetes-int-or-string or x-kubernetes-preserve-unknown-fields)",
    );
    assert_caught(
        spec_with(json!({"type": "array", "items": {"description": "no type"}})),
        "Test v1 .spec.field[*]: type is missing (required for array items without x-kubernetes-int-or-string or x-kubernetes-preserve-unknown-fields)",
    );
    assert_caught(
        json!({"properties": {"spec": {"type": "object"}}}),
        "Test v1 .: type is missing (required at the root without x-kubernetes-int-or-string or x-kubernetes-preserve-unknown-fields)",
    );
}

#[test]
fn checker_catches_keywords_the_api_server_refuses() {
    for (keyword, value) in [
        ("$ref", json!("#/definitions/Foo")),
        ("definitions", json!({"Foo": {"type": "string"}})),
        ("dependencies", json!({"a": ["b"]})),
        ("additionalItems", json!(false)),
        ("id", json!("foo")),
        ("$schema", json!("http://json-schema.org/draft-07/schema#")),
    ] {
        let mut field = json!({"type": "object"});
        field[keyword] = value;
        assert_caught(spec_with(field), &format!("Test v1 .spec.field: {keyword} is not allowed"));
    }
    assert_caught(
        spec_with(json!({"type": "string", "const": "a"})),
        "Test v1 .spec.field: const is not allowed (not a field of JSONSchemaProps)",
    );
    assert_caught(
        spec_with(json!({"type": "array", "items": {"type": "string"}, "uniqueItems": true})),
        "Test v1 .spec.field: uniqueItems must not be true (use x-kubernetes-list-type: set)",
    );
    assert_caught(
        spec_with(json!({"type": "array", "items": [{"type": "string"}]})),
        "Test v1 .spec.field: items must be a schema object and not an array",
    );
    assert_caught(
        spec_with(json!({"type": "array"})),
        "Test v1 .spec.field: items must be specified for type array",
    );
    assert_caught(
        spec_with(json!({"type": "null"})),
        "Test v1 .spec.field: type null is not allowed (use nullable)",
    );
    assert_caught(
        spec_with(json!({"type": ["string", "null"]})),
        "Test v1 .spec.field: type must be one of [\"object\", \"array\", \"string\", \"integer\", \"number\", \"boolean\"], not [\"string\",\"null\"]",
    );
}

#[test]
fn checker_catches_maps_that_are_also_structs() {
    for additional in [json!(false), json!({"type": "string"})] {
        assert_caught(
            spec_with(json!({
                "type": "object",
                "properties": {"a": {"type": "string"}},
                "additionalProperties": additional
            })),
            "Test v1 .spec.field: additionalProperties and properties must not both be set",
        );
    }
    assert_caught(
        spec_with(json!({"type": "object", "additionalProperties": {"type": "integer", "format": "uint64"}})),
        "Test v1 .spec.field.*: unknown format \"uint64\" for type integer",
    );
}

#[test]
fn checker_catches_root_rules() {
    assert_caught(
        json!({"type": "object", "nullable": true, "properties": {"spec": {"type": "object"}}}),
        "Test v1 .: nullable must not be true at the root",
    );
    assert_caught(
        json!({"type": "object", "additionalProperties": {"type": "string"}}),
        "Test v1 .: additionalProperties is not allowed at the root",
    );
    assert_caught(
        json!({"type": "array", "items": {"type": "string"}}),
        "Test v1 .: type must be object at the root",
    );
    assert_caught(
        json!({"type": "object", "properties": {"metadata": {"type": "object", "properties": {"labels": {"type": "object"}}}}}),
        "Test v1 .metadata: must not specify anything other than name and generateName",
    );
}

#[test]
fn checker_catches_non_structural_junctors() {
    assert_caught(
        spec_with(json!({
            "type": "object",
            "properties": {"a": {"type": "string"}},
            "anyOf": [{"type": "object", "required": ["a"]}]
        })),
        "Test v1 .spec.field|anyOf[0]: type must not be set inside anyOf/oneOf/allOf/not",
    );
    assert_caught(
        spec_with(json!({
            "type": "object",
            "properties": {"a": {"type": "string"}},
            "oneOf": [{"description": "a only", "required": ["a"]}]
        })),
        "Test v1 .spec.field|oneOf[0]: description must not be set inside anyOf/oneOf/allOf/not",
    );
    assert_caught(
        spec_with(json!({
            "type": "object",
            "properties": {"a": {"type": "string"}},
            "oneOf": [{"properties": {"b": {"minLength": 1}}}]
        })),
        "Test v1 .spec.field|oneOf[0].b: is constrained inside anyOf/oneOf/allOf/not but not specified outside",
    );
    assert_caught(
        spec_with(json!({
            "type": "object",
            "properties": {"a": {"type": "string"}},
            "not": {"nullable": true}
        })),
        "Test v1 .spec.field|not: nullable must not be set inside anyOf/oneOf/allOf/not",
    );
    // `anyOf` of int-or-string is the one place a type may appear under a junctor.
    assert_caught(
        spec_with(json!({"anyOf": [{"type": "integer"}, {"type": "string"}]})),
        "Test v1 .spec.field|anyOf[0]: type must not be set inside anyOf/oneOf/allOf/not",
    );
}

#[test]
fn checker_catches_extension_misuse() {
    assert_caught(
        spec_with(json!({"type": "object", "x-kubernetes-preserve-unknown-fields": false})),
        "Test v1 .spec.field: x-kubernetes-preserve-unknown-fields must be true or left out",
    );
    assert_caught(
        spec_with(json!({"type": "string", "x-kubernetes-int-or-string": true})),
        "Test v1 .spec.field: type must be left out with x-kubernetes-int-or-string",
    );
    assert_caught(
        spec_with(json!({"type": "array", "items": {"type": "object"}, "x-kubernetes-list-type": "map"})),
        "Test v1 .spec.field: x-kubernetes-list-type map needs x-kubernetes-list-map-keys",
    );
    assert_caught(
        spec_with(
            json!({"type": "object", "additionalProperties": {"type": "string"}, "x-kubernetes-validations": [{"message": "no rule"}]}),
        ),
        "Test v1 .spec.field: x-kubernetes-validations must be a list of objects with a rule",
    );
    assert_caught(
        spec_with(json!({"type": "string", "enum": ["a", null]})),
        "Test v1 .spec.field: enum value null does not fit type string",
    );
}

#[test]
fn checker_names_the_kind_and_version() {
    let crd = json!({
        "spec": {
            "names": {"kind": "PeerAuthentication"},
            "versions": [
                {"name": "v1beta1", "schema": {"openAPIV3Schema": {"type": "object"}}},
                {"name": "v1", "schema": {"openAPIV3Schema": spec_with(json!({"type": "object", "patternProperties": {}}))}},
                {"name": "v2"}
            ]
        }
    });
    assert_eq!(
        check_crd(&crd),
        [
            "PeerAuthentication v1 .spec.field: patternProperties is not allowed",
            "PeerAuthentication v2 .: no schema (apiextensions.k8s.io/v1 requires one per version)",
        ]
    );
}
