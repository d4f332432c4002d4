//! RequestAuthentication → the proxy's JWT providers: one per `jwtRules` entry of each
//! RequestAuthentication that selects the workload (see `policies`), in (namespace, name, rule)
//! order. The keys are the rule's inline `jwks`, else what trellisd fetched from its `jwksUri`
//! (`Model::jwks`, see `crate::jwks`); a `jwksUri` not fetched yet gives an empty `jwks`, with
//! which the proxy rejects every token of that issuer (fail closed) until the keys arrive and
//! are pushed. A rule without an issuer is left out: the proxy matches tokens to providers by
//! issuer.

use tracing::{debug, warn};
use trellis_api::primitives::check_header_name;
use trellis_api::resource::{Kind, Resource};
use trellis_api::security::JwtRule;
use trellis_api::validate::{is_claim_path, is_cookie_name};
use trellis_xds::config as pb;

use super::policies::{PolicyKey, lookup};
use crate::model::Model;

/// The providers of each selected RequestAuthentication still in the model.
pub fn providers(model: &Model, keys: &[PolicyKey]) -> Vec<pb::JwtProvider> {
    let mut providers = Vec::new();
    for key in keys {
        let Some((object, Resource::RequestAuthentication(ra))) =
            lookup(model, Kind::RequestAuthentication, key)
        else {
            continue;
        };
        let source = format!("{}/{}", object.namespace, object.name);
        for (i, rule) in ra.spec.jwt_rules.iter().enumerate() {
            if rule.issuer.trim().is_empty() {
                warn!(resource = %format!("RequestAuthentication {source}"), field = %format!("spec.jwtRules[{i}].issuer"), "no issuer: rule left out");
                continue;
            }
            providers.push(provider(model, &source, u32::try_from(i).unwrap_or(u32::MAX), rule));
        }
    }
    providers
}

fn provider(model: &Model, source: &str, index: u32, rule: &JwtRule) -> pb::JwtProvider {
    let jwks = if !rule.jwks.is_empty() {
        rule.jwks.clone()
    } else {
        match model.jwks.get(&rule.jwks_uri) {
            Some(keys) => keys.to_string(),
            None => {
                debug!(
                    source,
                    issuer = rule.issuer,
                    jwks_uri = rule.jwks_uri,
                    "no keys yet: the proxy rejects this issuer's tokens"
                );
                String::new()
            }
        }
    };
    // What the proxy could not use is left out rather than have it refuse the whole config.
    let header_ok = |name: &str| check_header_name(name, false).is_ok();
    let from_headers: Vec<pb::JwtHeader> = rule
        .from_headers
        .iter()
        .filter(|h| header_ok(&h.name))
        .map(|h| pb::JwtHeader { name: h.name.clone(), prefix: h.prefix.clone() })
        .collect();
    let from_params: Vec<String> = rule.from_params.iter().filter(|p| !p.is_empty()).cloned().collect();
    let from_cookies: Vec<String> = rule.from_cookies.iter().filter(|c| is_cookie_name(c)).cloned().collect();
    let output_claim_to_headers: Vec<pb::JwtClaimHeader> = rule
        .output_claim_to_headers
        .iter()
        .filter(|c| header_ok(&c.header) && is_claim_path(&c.claim))
        .map(|c| pb::JwtClaimHeader { header: c.header.clone(), claim: c.claim.clone() })
        .collect();
    let payload_ok = rule.output_payload_to_header.is_empty() || header_ok(&rule.output_payload_to_header);
    let dropped = from_headers.len() < rule.from_headers.len()
        || from_params.len() < rule.from_params.len()
        || from_cookies.len() < rule.from_cookies.len()
        || output_claim_to_headers.len() < rule.output_claim_to_headers.len()
        || !payload_ok;
    if dropped {
        warn!(resource = %format!("RequestAuthentication {source}"), field = %format!("spec.jwtRules[{index}]"), "token locations or output headers the proxy cannot use are left out");
    }
    pb::JwtProvider {
        source: source.to_owned(),
        index,
        issuer: rule.issuer.clone(),
        audiences: rule.audiences.clone(),
        jwks,
        from_headers,
        from_params,
        from_cookies,
        forward_original_token: rule.forward_original_token,
        output_payload_to_header: if payload_ok {
            rule.output_payload_to_header.clone()
        } else {
            String::new()
        },
        output_claim_to_headers,
        space_delimited_claims: rule.space_delimited_claims.clone(),
        jwks_uri: rule.jwks_uri.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::translate::test_support::*;

    const URI: &str = "https://issuer.example.com/jwks";

    fn yaml() -> String {
        format!(
            r#"apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{ name: mesh, namespace: istio-system }}
spec:
  jwtRules: [{{ issuer: mesh-issuer, jwks: '{{"keys": [{{"kty": "EC"}}]}}' }}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{ name: api, namespace: shop }}
spec:
  selector: {{ matchLabels: {{ app: api }} }}
  jwtRules:
    - issuer: https://issuer.example.com
      audiences: [shop]
      jwksUri: {URI}
      fromHeaders: [{{ name: x-jwt, prefix: "Bearer " }}]
      outputClaimToHeaders: [{{ header: x-sub, claim: sub }}]
      forwardOriginalToken: true
    - {{ issuer: second, jwksUri: "https://second.example.com/jwks" }}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{ name: gateway, namespace: shop }}
spec:
  targetRef: {{ kind: Gateway, group: gateway.networking.k8s.io, name: gw }}
  jwtRules: [{{ issuer: gw, jwksUri: "https://gw.example.com/jwks" }}]
"#
        )
    }

    #[test]
    fn each_rule_of_each_selecting_policy_is_a_provider_with_its_keys_inlined() {
        let mut m = model(&yaml());
        m.jwks.insert(URI.into(), Arc::from(r#"{"keys":[{"kty":"RSA"}]}"#));
        let config = config_for(&m, "shop", &[("app", "api")]);
        let got: Vec<(&str, u32, &str, &str)> = config
            .jwt_providers
            .iter()
            .map(|p| (p.source.as_str(), p.index, p.issuer.as_str(), p.jwks.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("istio-system/mesh", 0, "mesh-issuer", r#"{"keys": [{"kty": "EC"}]}"#),
                ("shop/api", 0, "https://issuer.example.com", r#"{"keys":[{"kty":"RSA"}]}"#),
                ("shop/api", 1, "second", ""),
            ],
            "a jwksUri not fetched yet has empty keys: its tokens are rejected"
        );
        let api = &config.jwt_providers[1];
        assert_eq!(api.jwks_uri, URI);
        assert_eq!(api.audiences, ["shop"]);
        assert_eq!(
            (api.from_headers[0].name.as_str(), api.from_headers[0].prefix.as_str()),
            ("x-jwt", "Bearer ")
        );
        assert_eq!(api.output_claim_to_headers[0].claim, "sub");
        assert!(api.forward_original_token);

        let other = config_for(&m, "shop", &[("app", "web")]);
        assert_eq!(
            other.jwt_providers.iter().map(|p| p.source.as_str()).collect::<Vec<_>>(),
            ["istio-system/mesh"]
        );
    }

    #[test]
    fn what_the_proxy_could_not_use_is_left_out_of_a_provider() {
        let yaml = r#"apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: { name: odd, namespace: shop }
spec:
  jwtRules:
    - issuer: a
      jwks: '{"keys": [{"kty": "EC"}]}'
      fromHeaders: [{ name: "x jwt" }, { name: x-jwt }]
      fromParams: ["", token]
      fromCookies: ["a=b", session]
      outputPayloadToHeader: "bad header"
      outputClaimToHeaders: [{ header: x-a, claim: "a..b" }, { header: x-sub, claim: sub }]
    - { issuer: " ", jwks: '{"keys": []}' }
"#;
        let config = config_for(&unchecked_model(yaml), "shop", &[]);
        assert_eq!(config.jwt_providers.len(), 1, "a blank issuer is left out");
        let p = &config.jwt_providers[0];
        assert_eq!(p.from_headers.iter().map(|h| h.name.as_str()).collect::<Vec<_>>(), ["x-jwt"]);
        assert_eq!(
            (p.from_params.as_slice(), p.from_cookies.as_slice()),
            (&["token".to_owned()][..], &["session".to_owned()][..])
        );
        assert_eq!(p.output_payload_to_header, "");
        assert_eq!(p.output_claim_to_headers.iter().map(|c| c.claim.as_str()).collect::<Vec<_>>(), ["sub"]);
    }
}
