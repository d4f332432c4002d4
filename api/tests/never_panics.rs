//! Property tests: whatever the input, loading and validating return problems instead of
//! panicking, and whatever is accepted survives a round trip.

use proptest::prelude::*;
use serde_json::{Map, Value};
use trellis_api::check::{UnknownFields, check_text};
use trellis_api::load::load_str;

/// Field names from the Istio API, so that generated documents reach deep into the types.
const KEYS: &[&str] = &[
    "hosts",
    "gateways",
    "http",
    "tls",
    "tcp",
    "exportTo",
    "match",
    "route",
    "destination",
    "host",
    "subset",
    "port",
    "number",
    "weight",
    "timeout",
    "retries",
    "attempts",
    "perTryTimeout",
    "retryOn",
    "fault",
    "delay",
    "abort",
    "fixedDelay",
    "percentage",
    "value",
    "httpStatus",
    "uri",
    "prefix",
    "exact",
    "regex",
    "headers",
    "request",
    "set",
    "add",
    "remove",
    "redirect",
    "rewrite",
    "directResponse",
    "status",
    "body",
    "mirror",
    "mirrors",
    "corsPolicy",
    "allowOrigins",
    "maxAge",
    "trafficPolicy",
    "loadBalancer",
    "simple",
    "consistentHash",
    "httpCookie",
    "ttl",
    "connectionPool",
    "outlierDetection",
    "consecutive5xxErrors",
    "interval",
    "baseEjectionTime",
    "maxEjectionPercent",
    "subsets",
    "name",
    "labels",
    "portLevelSettings",
    "localityLbSetting",
    "distribute",
    "failover",
    "from",
    "to",
    "addresses",
    "ports",
    "protocol",
    "resolution",
    "endpoints",
    "address",
    "egress",
    "ingress",
    "defaultEndpoint",
    "servers",
    "selector",
    "matchLabels",
    "mtls",
    "mode",
    "portLevelMtls",
    "rules",
    "source",
    "principals",
    "operation",
    "paths",
    "methods",
    "when",
    "key",
    "values",
    "action",
    "provider",
    "sniHosts",
    "destinationSubnets",
    "workloadSelector",
];

const KINDS: &[(&str, &str)] = &[
    ("networking.istio.io/v1", "VirtualService"),
    ("networking.istio.io/v1beta1", "DestinationRule"),
    ("networking.istio.io/v1alpha3", "ServiceEntry"),
    ("networking.istio.io/v1", "WorkloadEntry"),
    ("networking.istio.io/v1", "Sidecar"),
    ("networking.istio.io/v1", "Gateway"),
    ("security.istio.io/v1", "PeerAuthentication"),
    ("security.istio.io/v1beta1", "AuthorizationPolicy"),
    ("v1", "Namespace"),
];

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-200i64..70_000).prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        prop::sample::select(vec![
            "",
            "*",
            "~",
            ".",
            "mesh",
            "5s",
            "0s",
            "1.5ms",
            "-1s",
            "10.0.0.0/8",
            "::/0",
            "10.0.0.0/99",
            "reviews",
            "*.example.com",
            "a..b",
            "ISTIO_MUTUAL",
            "STRICT",
            "ROUND_ROBIN",
            "5xx,reset",
            "(?=x)",
            "[a-z&&b]",
            "\\Q",
            "unix:///sock",
            "ns/host",
            "request.headers[x]",
            "é",
            "\u{0}",
        ])
        .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ]
}

fn tree() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS.to_vec()), inner.clone()), 0..6).prop_map(
                |kv| { Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect::<Map<_, _>>()) }
            ),
            prop::collection::vec((".{0,8}", inner), 0..3)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn document() -> impl Strategy<Value = Value> {
    (prop::sample::select(KINDS.to_vec()), tree(), tree()).prop_map(|((api_version, kind), spec, meta)| {
        let mut meta = match meta {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        meta.insert("name".into(), "generated".into());
        serde_json::json!({"apiVersion": api_version, "kind": kind, "metadata": meta, "spec": spec})
    })
}

/// Accepted documents must come back unchanged from their own YAML.
fn assert_round_trip(text: &str) {
    for document in check_text(text, UnknownFields::Warn).accepted {
        let again = load_str(&document.to_yaml());
        let back = again[0].outcome.as_ref().expect("an accepted document re-loads");
        assert_eq!(back, &document);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = check_text(&text, UnknownFields::Reject);
    }

    #[test]
    fn yaml_shaped_noise_never_panics(text in "([a-zA-Z:\\-\\[\\]{},'\"&*!|>#%@ \n]|  |---\n){0,400}") {
        let _ = check_text(&text, UnknownFields::Warn);
    }

    #[test]
    fn generated_documents_never_panic_and_round_trip(doc in document()) {
        let yaml = serde_saphyr::to_string(&doc).unwrap();
        let _ = check_text(&yaml, UnknownFields::Reject);
        assert_round_trip(&yaml);
        let json = serde_json::to_string(&doc).unwrap();
        assert_round_trip(&json);
    }

    #[test]
    fn mutated_real_documents_never_panic(
        file in prop::sample::select(vec![
            include_str!("fixtures/istio-docs/virtual-service.yaml"),
            include_str!("fixtures/istio-docs/destination-rule.yaml"),
            include_str!("fixtures/istio-docs/authorization-policy.yaml"),
            include_str!("fixtures/istio-docs/sidecar.yaml"),
        ]),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
    ) {
        let mut bytes = file.as_bytes().to_vec();
        for (at, byte, op) in edits {
            let i = at.index(bytes.len().max(1));
            match op {
                0 if i < bytes.len() => { bytes[i] = byte; }
                1 => bytes.insert(i.min(bytes.len()), byte),
                _ if i < bytes.len() => { bytes.remove(i); }
                _ => {}
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        let _ = check_text(&text, UnknownFields::Warn);
    }
}

#[test]
fn hostile_inputs_are_refused_cleanly() {
    // Deep nesting, alias bombs and oversized input each end in a problem, not a crash or hang.
    let deep =
        format!("apiVersion: v1\nkind: Namespace\nmetadata: {}{}\n", "[".repeat(10_000), "]".repeat(10_000));
    assert_eq!(check_text(&deep, UnknownFields::Warn).errors(), 1);

    let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        bomb.push_str(&format!(
            "{}: &{} [*{}, *{}, *{}, *{}, *{}, *{}, *{}, *{}, *{}, *{}]\n",
            (b'a' + i) as char,
            (b'a' + i) as char,
            (b'a' + i - 1) as char,
            (b'a' + i - 1) as char,
            (b'a' + i - 1) as char,
            (b'a' + i - 1) as char,
            (b'a' + i - 1) as char,
            (b'a' + i - 1) as char,
            (b'a' + i - 1) as char,
            (b'a' + i - 1) as char,
            (b'a' + i - 1) as char,
            (b'a' + i - 1) as char
        ));
    }
    assert_eq!(check_text(&bomb, UnknownFields::Warn).errors(), 1);

    let huge = "#".repeat(trellis_api::load::MAX_INPUT_BYTES + 1);
    let checked = check_text(&huge, UnknownFields::Warn);
    assert_eq!(
        checked.problems[0].message,
        format!("input is {} bytes, at most {} are read", huge.len(), trellis_api::load::MAX_INPUT_BYTES)
    );

    let long_host = format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: a}}\nspec: {{hosts: [{}], http: [{{route: [{{destination: {{host: a}}}}]}}]}}\n",
        "a".repeat(100_000)
    );
    assert_eq!(check_text(&long_host, UnknownFields::Warn).errors(), 1);
}
