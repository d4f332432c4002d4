//! Telemetry (telemetry.istio.io v1alpha1 and v1): Istio's documented examples are read without
//! errors; bad values are errors naming the field; what is read but not enforced is warned.

use trellis_api::check::{Checked, UnknownFields, check_text};
use trellis_api::resource::{Kind, Resource};
use trellis_api::validate::Severity;

/// The mesh default, a namespace override and a workload override from Istio's Telemetry API
/// pages, in both served versions.
const ISTIO_EXAMPLES: &str = r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata:
  name: mesh-default
  namespace: istio-system
spec:
  accessLogging:
  - providers:
    - name: envoy
  tracing:
  - providers:
    - name: zipkin
    randomSamplingPercentage: 10.00
    customTags:
      my_new_foo_tag:
        literal:
          value: "foo"
      cluster:
        environment:
          name: CLUSTER_NAME
          defaultValue: unknown
      user:
        header:
          name: x-user
---
apiVersion: telemetry.istio.io/v1alpha1
kind: Telemetry
metadata:
  name: namespace-override
  namespace: myapp
spec:
  accessLogging:
  - providers:
    - name: envoy
    filter:
      expression: response.code >= 400
  metrics:
  - providers:
    - name: prometheus
    overrides:
    - match:
        metric: REQUEST_COUNT
        mode: CLIENT
      tagOverrides:
        destination_canonical_revision:
          operation: REMOVE
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata:
  name: workload-override
  namespace: myapp
spec:
  selector:
    matchLabels:
      service.istio.io/canonical-name: frontend
  accessLogging:
  - disabled: true
  metrics:
  - overrides:
    - match:
        metric: ALL_METRICS
      tagOverrides:
        source_cluster:
          value: "'east'"
    - match:
        metric: TCP_SENT_BYTES
      disabled: true
"#;

fn check(text: &str) -> Checked {
    check_text(text, UnknownFields::Reject)
}

fn findings(checked: &Checked, severity: Severity) -> Vec<(String, String)> {
    checked
        .problems
        .iter()
        .filter(|p| p.severity == severity)
        .map(|p| (p.field.clone(), p.message.clone()))
        .collect()
}

#[test]
fn istios_examples_are_read_in_both_versions() {
    let checked = check(ISTIO_EXAMPLES);
    assert_eq!(checked.errors(), 0, "{:?}", checked.problems);
    assert!(findings(&checked, Severity::Warning).is_empty(), "{:?}", checked.problems);
    assert_eq!(checked.accepted.len(), 3);
    for doc in &checked.accepted {
        assert_eq!(doc.resource.kind(), Kind::Telemetry);
    }
    let Resource::Telemetry(mesh) = &checked.accepted[0].resource else { panic!() };
    let tracing = &mesh.spec.tracing[0];
    assert_eq!(tracing.random_sampling_percentage, Some(10.0));
    assert_eq!(tracing.custom_tags["my_new_foo_tag"].literal.as_ref().unwrap().value, "foo");
    assert_eq!(tracing.custom_tags["user"].header.as_ref().unwrap().name, "x-user");
    let Resource::Telemetry(workload) = &checked.accepted[2].resource else { panic!() };
    assert_eq!(workload.spec.access_logging[0].disabled, Some(true));
    assert_eq!(workload.spec.metrics[0].overrides[1].disabled, Some(true));
}

/// One wrong value at a time in an otherwise valid Telemetry: exactly one error, on the field.
#[test]
fn bad_values_are_errors_naming_the_field() {
    let base =
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: t, namespace: ns}\nspec:\n";
    for (spec, field, message) in [
        (
            "  tracing: [{randomSamplingPercentage: 120}]",
            "spec.tracing[0].randomSamplingPercentage",
            "120 is not a percentage",
        ),
        (
            "  tracing: [{randomSamplingPercentage: -1}]",
            "spec.tracing[0].randomSamplingPercentage",
            "not a percentage",
        ),
        ("  tracing: [{match: {mode: BOTH}}]", "spec.tracing[0].match.mode", "unknown mode \"BOTH\""),
        (
            "  tracing: [{customTags: {a: {}}}]",
            "spec.tracing[0].customTags.a",
            "one of literal, environment, header and formatter must be set",
        ),
        (
            "  tracing: [{customTags: {a: {literal: {value: x}, header: {name: y}}}}]",
            "spec.tracing[0].customTags.a",
            "only one of",
        ),
        (
            "  tracing: [{customTags: {a: {header: {name: 'bad header'}}}}]",
            "spec.tracing[0].customTags.a.header.name",
            "not a header name",
        ),
        (
            "  tracing: [{customTags: {a: {environment: {}}}}]",
            "spec.tracing[0].customTags.a.environment.name",
            "needs a name",
        ),
        (
            "  metrics: [{overrides: [{match: {metric: REQUEST_TOTAL}}]}]",
            "spec.metrics[0].overrides[0].match.metric",
            "unknown metric \"REQUEST_TOTAL\"; one of ALL_METRICS, REQUEST_COUNT",
        ),
        (
            "  metrics: [{overrides: [{match: {mode: EVERYWHERE}}]}]",
            "spec.metrics[0].overrides[0].match.mode",
            "unknown mode",
        ),
        (
            "  metrics: [{overrides: [{tagOverrides: {source_app: {operation: UPSERT}}}]}]",
            "spec.metrics[0].overrides[0].tagOverrides.source_app.value",
            "UPSERT needs a value",
        ),
        (
            "  metrics: [{overrides: [{tagOverrides: {source_app: {operation: DELETE}}}]}]",
            "spec.metrics[0].overrides[0].tagOverrides.source_app.operation",
            "unknown operation \"DELETE\"",
        ),
        (
            "  accessLogging: [{filter: {expression: 'response.code >='}}]",
            "spec.accessLogging[0].filter.expression",
            "at offset",
        ),
        ("  accessLogging: [{match: {mode: INBOUND}}]", "spec.accessLogging[0].match.mode", "unknown mode"),
        (
            "  accessLogging: [{providers: [{name: ''}]}]",
            "spec.accessLogging[0].providers[0].name",
            "needs a name",
        ),
    ] {
        let checked = check(&format!("{base}{spec}\n"));
        let errors = findings(&checked, Severity::Error);
        assert_eq!(errors.len(), 1, "{spec}: {:?}", checked.problems);
        assert_eq!(errors[0].0, field, "{spec}");
        assert!(errors[0].1.contains(message), "{spec}: {}", errors[0].1);
    }
}

#[test]
fn read_but_not_enforced_is_warned() {
    let base =
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: t, namespace: ns}\nspec:\n";
    for (spec, field) in [
        ("  tracing: [{useRequestIdForTraceSampling: true}]", "spec.tracing[0].useRequestIdForTraceSampling"),
        ("  metrics: [{reportingInterval: 5s}]", "spec.metrics[0].reportingInterval"),
        ("  metrics: [{providers: [{name: stackdriver}]}]", "spec.metrics[0].providers[0].name"),
        (
            "  metrics: [{overrides: [{match: {customMetric: my_metric}}]}]",
            "spec.metrics[0].overrides[0].match.customMetric",
        ),
        (
            "  metrics: [{overrides: [{tagOverrides: {request_host: {value: request.host}}}]}]",
            "spec.metrics[0].overrides[0].tagOverrides.request_host.value",
        ),
        (
            "  metrics: [{overrides: [{tagOverrides: {request_host: {value: \"'x'\"}}}]}]",
            "spec.metrics[0].overrides[0].tagOverrides.request_host",
        ),
        ("  targetRefs: [{kind: Gateway, name: g}]", "spec.targetRefs"),
        ("  accessLogging: [{match: {mode: SERVER}, disabled: true}]", "spec.accessLogging[0].match.mode"),
        ("  tracing: [{match: {mode: CLIENT}}]", "spec.tracing[0].match.mode"),
        (
            "  metrics: [{overrides: [{tagOverrides: {response_flags: {value: \"'x'\"}}}]}]",
            "spec.metrics[0].overrides[0].tagOverrides.response_flags",
        ),
    ] {
        let checked = check(&format!("{base}{spec}\n"));
        assert_eq!(checked.errors(), 0, "{spec}: {:?}", checked.problems);
        let warnings = findings(&checked, Severity::Warning);
        assert!(warnings.iter().any(|(f, _)| f == field), "{spec}: {warnings:?}");
    }
}

#[test]
fn unknown_fields_and_wrong_types_are_reported() {
    let checked = check(
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: t, namespace: ns}\nspec:\n  tracing: [{randomSamplingPercentage: lots}]\n",
    );
    assert_eq!(checked.errors(), 1, "{:?}", checked.problems);
    let checked = check(
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: t, namespace: ns}\nspec:\n  tracin: []\n",
    );
    assert!(checked.problems.iter().any(|p| p.field.contains("tracin")), "{:?}", checked.problems);
    let checked =
        check("apiVersion: telemetry.istio.io/v2\nkind: Telemetry\nmetadata: {name: t}\nspec: {}\n");
    assert!(
        checked.problems.iter().any(|p| p.message.contains("served versions are v1alpha1, v1")),
        "{:?}",
        checked.problems
    );
}
