//! `trellis validate` on AuthorizationPolicy and RequestAuthentication: the warnings that name
//! Istio's TCP pitfalls and what Trellis cannot enforce, each on its field; documents Istio
//! accepts stay accepted.

use trellis_api::check::{UnknownFields, check_text};
use trellis_api::resource::Resource;
use trellis_api::validate::Severity;

fn doc(kind: &str, annotations: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: {kind}\nmetadata: {{name: orders, namespace: production{annotations}}}\nspec: {spec}\n"
    )
}

/// Every finding of one document as `severity field: message`; panics on errors when
/// `accepted` is expected.
fn findings(text: &str) -> Vec<String> {
    let checked = check_text(text, UnknownFields::Reject);
    checked
        .problems
        .iter()
        .map(|p| {
            let severity = if p.severity == Severity::Error { "error" } else { "warning" };
            format!("{severity} {}: {}", p.field, p.message)
        })
        .collect()
}

fn warnings(kind: &str, spec: &str) -> Vec<String> {
    let text = doc(kind, "", spec);
    let all = findings(&text);
    assert!(all.iter().all(|f| f.starts_with("warning")), "{text}{all:#?}");
    all.into_iter().map(|f| f.trim_start_matches("warning ").to_owned()).collect()
}

#[test]
fn authorization_policies_are_enforced_now_so_a_plain_one_has_no_finding() {
    let spec = "{selector: {matchLabels: {app: orders}}, rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/web]}}], to: [{operation: {methods: [GET], paths: ['/api/*']}}]}]}";
    assert_eq!(warnings("AuthorizationPolicy", spec), Vec::<String>::new());
    let dry_run = doc(
        "AuthorizationPolicy",
        ", annotations: {istio.io/dry-run: 'true'}",
        "{action: DENY, rules: [{}]}",
    );
    assert_eq!(findings(&dry_run), Vec::<String>::new());
}

#[test]
fn an_allow_rule_mixing_http_fields_with_ports_is_named_field_by_field() {
    let got = warnings(
        "AuthorizationPolicy",
        "{rules: [{to: [{operation: {ports: ['3306']}}, {operation: {methods: [GET]}}], when: [{key: 'request.headers[x-v]', values: ['1']}]}, {to: [{operation: {ports: ['8080'], paths: [/a]}}]}]}",
    );
    let msg = |ports: &str| {
        format!(
            "HTTP-only: on a TCP port this whole rule is dropped, so the ports in {ports} do not allow TCP connections (istio/istio#37920); put TCP ports in a rule of their own"
        )
    };
    assert_eq!(
        got,
        [
            format!("spec.rules[0].to[1].operation.methods: {}", msg("spec.rules[0].to[0].operation.ports")),
            format!("spec.rules[0].when[0]: {}", msg("spec.rules[0].to[0].operation.ports")),
            format!("spec.rules[1].to[0].operation.paths: {}", msg("spec.rules[1].to[0].operation.ports")),
        ]
    );
    // HTTP fields without ports: nothing to warn about (the rule is for HTTP).
    assert!(warnings("AuthorizationPolicy", "{rules: [{to: [{operation: {methods: [GET]}}]}]}").is_empty());
}

#[test]
fn a_deny_rule_with_http_fields_says_it_denies_more_on_tcp() {
    let got = warnings(
        "AuthorizationPolicy",
        "{action: DENY, rules: [{from: [{source: {notRequestPrincipals: ['*']}}], to: [{operation: {hosts: [a.example.com]}}]}]}",
    );
    let msg = "HTTP-only: on a TCP port this field is ignored and the DENY rule matches without it, denying every TCP connection the rest of the rule matches (istio/istio#25832); add ports to keep the rule to HTTP ports";
    assert_eq!(
        got,
        [
            format!("spec.rules[0].from[0].source.notRequestPrincipals: {msg}"),
            format!("spec.rules[0].to[0].operation.hosts: {msg}"),
        ]
    );
}

#[test]
fn what_istio_accepts_but_trellis_cannot_enforce_is_a_warning_saying_what_happens() {
    let effect = "trellisd leaves this rule out of an ALLOW policy and makes a DENY, AUDIT or CUSTOM policy match every request instead (fail closed)";
    assert_eq!(
        warnings(
            "AuthorizationPolicy",
            "{rules: [{when: [{key: 'experimental.envoy.filters.a.b[c]', values: [x]}]}]}"
        ),
        [format!(
            "spec.rules[0].when[0].key: \"experimental.envoy.filters.a.b[c]\": Trellis's proxy has no Envoy filter metadata; {effect}"
        )]
    );
    assert_eq!(
        warnings("AuthorizationPolicy", "{rules: [{to: [{operation: {paths: ['/{**}/suffix']}}]}]}"),
        [format!(
            "spec.rules[0].to[0].operation.paths[0]: \"/{{**}}/suffix\": Trellis matches path templates that start with '/' and end with {{**}} when they use it; {effect}"
        )]
    );
    assert_eq!(
        warnings(
            "AuthorizationPolicy",
            "{targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: gw}], rules: [{}]}"
        ),
        [
            "spec.targetRefs: a policy attached with targetRef applies to gateways and waypoints: sidecars, and so Trellis, ignore it"
        ]
    );
}

#[test]
fn trust_domains_are_read() {
    let text = doc(
        "AuthorizationPolicy",
        "",
        "{rules: [{from: [{source: {trustDomains: [cluster.local, 'old-*'], notTrustDomains: [evil.example]}}]}]}",
    );
    let checked = check_text(&text, UnknownFields::Reject);
    assert!(checked.problems.is_empty(), "{:#?}", checked.problems);
    let Resource::AuthorizationPolicy(ap) = &checked.accepted[0].resource else { panic!() };
    let source = ap.spec.rules[0].from[0].source.as_ref().unwrap();
    assert_eq!(source.trust_domains, ["cluster.local", "old-*"]);
    assert_eq!(source.not_trust_domains, ["evil.example"]);
}

#[test]
fn a_security_policy_without_spec_reads_as_an_empty_one() {
    let text = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-all, namespace: shop}\n";
    let checked = check_text(text, UnknownFields::Reject);
    assert!(checked.problems.is_empty(), "{:#?}", checked.problems);
    let Resource::AuthorizationPolicy(ap) = &checked.accepted[0].resource else { panic!() };
    assert!(ap.spec.rules.is_empty(), "an ALLOW policy without rules: it denies what it selects");
}

#[test]
fn request_authentication_is_read_with_every_field() {
    let text = doc(
        "RequestAuthentication",
        "",
        r#"{selector: {matchLabels: {app: orders}}, jwtRules: [{issuer: "https://issuer.example.com", audiences: [orders], jwksUri: "https://issuer.example.com/.well-known/jwks.json", fromHeaders: [{name: x-jwt, prefix: "Bearer "}], fromParams: [token], fromCookies: [session], forwardOriginalToken: true, outputPayloadToHeader: x-jwt-payload, outputClaimToHeaders: [{header: x-sub, claim: sub}], spaceDelimitedClaims: [roles], timeout: 3s}]}"#,
    );
    let checked = check_text(&text, UnknownFields::Reject);
    assert!(checked.problems.is_empty(), "{:#?}", checked.problems);
    let Resource::RequestAuthentication(ra) = &checked.accepted[0].resource else { panic!() };
    let rule = &ra.spec.jwt_rules[0];
    assert_eq!(rule.issuer, "https://issuer.example.com");
    assert_eq!(rule.from_headers[0].prefix, "Bearer ");
    assert_eq!(rule.output_claim_to_headers[0].claim, "sub");
    assert_eq!(rule.timeout.as_ref().map(|t| t.0.as_str()), Some("3s"));
    assert!(rule.forward_original_token);
    // v1beta1 too, and it round-trips.
    let beta = text.replace("security.istio.io/v1", "security.istio.io/v1beta1");
    let checked = check_text(&beta, UnknownFields::Reject);
    assert!(checked.problems.is_empty());
    let again = check_text(&checked.accepted[0].to_yaml(), UnknownFields::Reject);
    assert_eq!(again.accepted[0], checked.accepted[0]);
}

#[test]
fn request_authentication_warnings_name_the_rule_and_field() {
    let uri = "https://k.example.com/jwks";
    assert_eq!(
        warnings("RequestAuthentication", &format!("{{jwtRules: [{{jwksUri: '{uri}'}}]}}")),
        [
            "spec.jwtRules[0].issuer: Trellis matches a token to its rule by the issuer: trellisd leaves a rule without one out, so the tokens it would verify are not accepted"
        ]
    );
    assert_eq!(
        warnings(
            "RequestAuthentication",
            &format!(
                "{{jwtRules: [{{issuer: a, jwksUri: '{uri}', jwks: '{{\"keys\": [{{\"kty\": \"EC\"}}]}}'}}]}}"
            )
        ),
        ["spec.jwtRules[0].jwksUri: ignored: jwks is set, and the inline keys are used"]
    );
    assert_eq!(
        warnings("RequestAuthentication", "{jwtRules: [{issuer: a}]}"),
        [
            "spec.jwtRules[0]: neither jwks nor jwksUri: Trellis does not look the keys up in the issuer's OpenID configuration, so tokens of this issuer are rejected; set jwksUri"
        ]
    );
    assert_eq!(
        warnings(
            "RequestAuthentication",
            &format!("{{jwtRules: [{{issuer: a, jwksUri: '{uri}', presence: REQUIRED}}]}}")
        ),
        [
            "spec.jwtRules[0].presence: REQUIRED: not supported by Trellis, a request without a token passes without identity; require one with an AuthorizationPolicy (requestPrincipals: [\"*\"])"
        ]
    );
    for good in ["http://10.0.0.1:8080/keys", "https://[fd00::1]/keys", "https://Keys.Example.com?x=1"] {
        assert!(
            warnings("RequestAuthentication", &format!("{{jwtRules: [{{issuer: a, jwksUri: '{good}'}}]}}"))
                .is_empty(),
            "{good}"
        );
    }
}

#[test]
fn an_empty_port_level_mtls_is_told_from_an_absent_one() {
    let selector = "selector: {matchLabels: {app: orders}}";
    let absent = check_text(
        &doc("PeerAuthentication", "", &format!("{{{selector}, mtls: {{mode: STRICT}}}}")),
        UnknownFields::Reject,
    );
    assert!(absent.problems.is_empty(), "{:#?}", absent.problems);
    let Resource::PeerAuthentication(pa) = &absent.accepted[0].resource else { panic!() };
    assert!(!pa.spec.port_level_mtls.written && pa.spec.port_level_mtls.is_empty());

    let ports = check_text(
        &doc(
            "PeerAuthentication",
            "",
            &format!("{{{selector}, portLevelMtls: {{8080: {{mode: DISABLE}}}}}}"),
        ),
        UnknownFields::Reject,
    );
    assert!(ports.problems.is_empty(), "{:#?}", ports.problems);
    let Resource::PeerAuthentication(pa) = &ports.accepted[0].resource else { panic!() };
    assert!(pa.spec.port_level_mtls.written);
    assert_eq!(pa.spec.port_level_mtls.keys().copied().collect::<Vec<_>>(), [8080]);

    assert_eq!(
        findings(&doc("PeerAuthentication", "", &format!("{{{selector}, portLevelMtls: {{}}}}"))),
        ["error spec.portLevelMtls: empty; list at least one port, or leave the field out"]
    );
}
