//! JWT validation (Istio's RequestAuthentication) through `JwtAuthn`'s public API: tokens
//! signed here (RS256/PS256 with a fixed RSA key, since ring does not generate RSA keys; ES256
//! with keys generated here), against real JWKS JSON.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::{HeaderValue, Request, StatusCode};
use ring::rand::SystemRandom;
use ring::signature as rs;
use serde_json::{Value, json};
use trellis_proxy::security::jwt::{JwtAuthn, JwtRejection, MAX_TOKEN_BYTES};

mod common;
use common::jwt::{b64, ec_jwk, ec_key, es256_token, now, signing_input};
use trellis_xds::config as pb;

/// A 2048-bit RSA private key (PKCS#1 DER, base64), made for these tests with
/// `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -outform DER`.
const RSA_KEY: &[&str] = &[
    "MIIEogIBAAKCAQEAnYOvMiGV33cJsGN86Zzp2UMWPJhIM3eZq+//7sP3Ud8jn5traxDDP1b1L66ttRYvM7h3CEWFvxKDgTPsEVEO",
    "I68uYgYd7dQPOtf/h3/WqY9Nev7GyRIK2dbo9WgVc4lbg9W8QU/7jbZ2QFJbWiJEU0Nr7c4NUVzZeN1LKzGms20ssl50Lr/0djyN",
    "LNywvdlHE+zq7Ipb56fbaMYSa7ivrYn7ND8CfJ3cnP9biCxBy5Gp8v/YmZTWPJl4sChN2nlwaxSl5+Q2P4fd/ICDdAM/55QVihwq",
    "jLm3iaTSg+RbkIxn/56AgbLUH1OCmz0UqPrNaoRadQElhpVXgubTmpIltwIDAQABAoIBACrUnmR+zm6Lw1Yzz0kE0m+x9s92Rxe7",
    "m00t/wVRQyR/jQO+8rgTwEuuXRBgqrpVdHNXYwKcSPB6W8jbsgLJbBNW9MFR0XyUj6mcB080e03y+goKUkplfg7bCdCFQ2P9wyU3",
    "jq+hzJCtvzzhSBbbv4F2kVgCEgwAN+BOKDzwDNi310rlNZywJYELHQqUSGVu0aI2nrYOUIqAJFOUFwsVCuI1rE57GE5clmcPpUuB",
    "vIKLGUFcXAjqRvv2DlE6s4NywirTPjzjM1c4d5417gSknVpH34OIwgYH+wScIqv7ZnqSi5EEGtWq35B1xpqakCKjo0FR1aYTMJK2",
    "ghh5XQdg18UCgYEA0C9k9yv6f+YJEyEhB3erQDjotJ5Am64ifBR4Kr/oO0NkMmNIx4PlEz5d977WevoReJy+8HpgT8HWTFdkKUcN",
    "7qaX5mJ0ERBhgXC4VjAfTbzpi7rD91qwDKCFqf1WDh6OzOQAxu3X9HHxhAP0OgJr8iQBKExX0jQqdNH304ZWpzUCgYEAwbEEEYIc",
    "QYb2XzkD/A1W9dMl0GbaSalwlohdsrQCMELdSBlv5QfdVB3R48QtaqU7Yo27OvMFCNQWG7qdym4qlnAxJEdhTWxKxevi5LCT5Pde",
    "+L+pJDVG8V87gv9pXpOVf014Ezxb6l4aHawiOM5lklmGHqi0CGZy8oH+t1JUOrsCgYAB3IqgkyoYPqxSGXe8I1vKpTefddLKEZKJ",
    "XX19lF21OfMJaE3cStefhm08q94rF1VUqMIkUFPQIsGRyS5CGDqNqbut+a9j/6t/hsx/KMr+3PORpkfeTFdKpZzMWlGMqsVIG7nO",
    "DY5ixyoLriVe52qjraK9A4G9hW3jwYTfxVG9CQKBgCPF1cKGDUHs80PS+/FpZU4xmSJMXLSOHsUuml+O73iKYOQYDpp2QWJvv3wZ",
    "l2nC6pzhIFta1usygILOjKX+gs8WGX1h0Y7DGWxEjLtAAZCgP2Ihw9N0I44g0JT5JzTYfRvt6udilndKufgQ+qETPZ8x+Ztf/SAw",
    "C7rOV4T0J6pRAoGAHyaP2JOMrX0+BXS16/qFy7eCqUOoFTxUv2douf5098fvPwucC3LR9C5rOMj2rErbmaZzYBn72YJC6q9KwK09",
    "6L00QNgaRQONVljFhLZTvVee+uS1MTzDtqYhsqAZEyWFupXgGRl5woKv6cEm1OkrMgSZbO60fkPXvNM1PNbo/CA=",
];

const ISSUER: &str = "https://accounts.example.com";

fn rsa_key() -> rs::RsaKeyPair {
    rs::RsaKeyPair::from_der(&STANDARD.decode(RSA_KEY.concat()).unwrap()).unwrap()
}

fn rsa_jwk(pair: &rs::RsaKeyPair, kid: &str) -> Value {
    let public = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(pair.public());
    json!({"kty": "RSA", "kid": kid, "use": "sig", "n": b64(&public.n), "e": b64(&public.e)})
}

fn rsa_token(pair: &rs::RsaKeyPair, alg: &str, kid: &str, claims: &Value) -> String {
    let encoding: &'static dyn rs::RsaEncoding = match alg {
        "RS256" => &rs::RSA_PKCS1_SHA256,
        "RS512" => &rs::RSA_PKCS1_SHA512,
        "PS256" => &rs::RSA_PSS_SHA256,
        other => panic!("{other}"),
    };
    let signed = signing_input(&json!({"alg": alg, "typ": "JWT", "kid": kid}), claims);
    let mut sig = vec![0; pair.public().modulus_len()];
    pair.sign(encoding, &SystemRandom::new(), signed.as_bytes(), &mut sig).unwrap();
    format!("{signed}.{}", b64(&sig))
}

fn claims() -> Value {
    json!({
        "iss": ISSUER,
        "sub": "user-42",
        "aud": ["orders", "https://billing.example.com/"],
        "azp": "web-app",
        "exp": now() + 3600,
        "iat": now(),
        "scope": "read:orders write:orders",
        "roles": "admin ops",
        "org": {"team": {"name": "payments"}, "id": 7},
        "email_verified": true,
    })
}

/// Both keys in one JWKS, the RSA key first.
fn jwks(rsa: &rs::RsaKeyPair, ec: &rs::EcdsaKeyPair) -> String {
    json!({"keys": [rsa_jwk(rsa, "rsa-1"), ec_jwk(ec, "ec-1")]}).to_string()
}

fn provider(jwks: String) -> pb::JwtProvider {
    pb::JwtProvider {
        source: "shop/jwt".into(),
        issuer: ISSUER.into(),
        jwks,
        jwks_uri: "https://accounts.example.com/.well-known/jwks.json".into(),
        ..Default::default()
    }
}

struct Fixture {
    rsa: rs::RsaKeyPair,
    ec: rs::EcdsaKeyPair,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture { rsa: rsa_key(), ec: ec_key() }
    }

    fn provider(&self) -> pb::JwtProvider {
        provider(jwks(&self.rsa, &self.ec))
    }

    fn authn(&self, edit: impl FnOnce(&mut pb::JwtProvider)) -> JwtAuthn {
        let mut p = self.provider();
        edit(&mut p);
        JwtAuthn::compile(&[p]).unwrap()
    }

    fn rs256(&self, claims: &Value) -> String {
        rsa_token(&self.rsa, "RS256", "rsa-1", claims)
    }
}

fn bearer(token: &str) -> Request<()> {
    Request::builder()
        .uri("/orders?page=2")
        .header("host", "shop.default.svc:8080")
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .unwrap()
}

fn rejected(authn: &JwtAuthn, mut request: Request<()>) -> JwtRejection {
    authn.authenticate(&mut request).expect_err("the request should be refused")
}

fn assert_401(authn: &JwtAuthn, request: Request<()>, message: &str) {
    let rejection = rejected(authn, request);
    assert_eq!(rejection.status, StatusCode::UNAUTHORIZED, "{rejection}");
    assert_eq!(rejection.message, message);
    assert_eq!(
        rejection.www_authenticate,
        Some(HeaderValue::from_static(
            r#"Bearer realm="http://shop.default.svc:8080/orders", error="invalid_token""#
        ))
    );
}

#[test]
fn valid_rs256_token_gives_the_identity_and_is_removed() {
    let f = Fixture::new();
    let authn = f.authn(|_| {});
    assert!(!authn.is_empty());
    let mut request = bearer(&f.rs256(&claims()));
    let auth = authn.authenticate(&mut request).unwrap().expect("an identity");
    assert_eq!(auth.principal, "https://accounts.example.com/user-42");
    assert_eq!(auth.audiences, ["orders", "https://billing.example.com/"]);
    assert_eq!(auth.presenter.as_deref(), Some("web-app"));
    assert_eq!(auth.claims["scope"], json!(["read:orders", "write:orders"]));
    assert_eq!(auth.claims["roles"], json!("admin ops"), "not space-delimited unless configured");
    assert_eq!(auth.claim_values(&["org".into(), "team".into(), "name".into()]), ["payments"]);
    assert_eq!(auth.claim_values(&["scope".into()]), ["read:orders", "write:orders"]);
    assert!(request.headers().get("authorization").is_none(), "the token is not forwarded by default");
    assert_eq!(request.uri(), "/orders?page=2");
}

#[test]
fn valid_es256_ps256_and_rs512_tokens() {
    let f = Fixture::new();
    let authn = f.authn(|_| {});
    for token in [
        es256_token(&f.ec, "ec-1", &claims()),
        rsa_token(&f.rsa, "PS256", "rsa-1", &claims()),
        rsa_token(&f.rsa, "RS512", "rsa-1", &claims()),
    ] {
        let auth = authn.authenticate(&mut bearer(&token)).unwrap().unwrap();
        assert_eq!(auth.principal, "https://accounts.example.com/user-42");
    }
}

#[test]
fn expired_and_not_yet_valid() {
    let f = Fixture::new();
    let authn = f.authn(|_| {});
    let mut c = claims();
    c["exp"] = json!(now() - 61 - 5);
    assert_401(&authn, bearer(&f.rs256(&c)), "Jwt is expired");
    let mut c = claims();
    c["nbf"] = json!(now() + 3600);
    assert_401(&authn, bearer(&es256_token(&f.ec, "ec-1", &c)), "Jwt not yet valid");
}

#[test]
fn unknown_issuer_is_401() {
    let f = Fixture::new();
    let authn = f.authn(|_| {});
    let mut c = claims();
    c["iss"] = json!("https://evil.example.com");
    assert_401(&authn, bearer(&f.rs256(&c)), "Jwt issuer is not configured");
    let mut c = claims();
    c.as_object_mut().unwrap().remove("iss");
    assert_401(&authn, bearer(&f.rs256(&c)), "Jwt issuer is not configured");
}

#[test]
fn wrong_audience_is_403() {
    let f = Fixture::new();
    let authn = f.authn(|p| p.audiences = vec!["inventory".into()]);
    let rejection = rejected(&authn, bearer(&f.rs256(&claims())));
    assert_eq!(rejection.status, StatusCode::FORBIDDEN);
    assert_eq!(rejection.message, "Audiences in Jwt are not allowed");
    // A listed one passes; `https://billing.example.com/` is `billing.example.com`.
    let authn = f.authn(|p| p.audiences = vec!["inventory".into(), "billing.example.com".into()]);
    assert!(authn.authenticate(&mut bearer(&f.rs256(&claims()))).unwrap().is_some());
}

#[test]
fn bad_signatures() {
    let f = Fixture::new();
    let authn = f.authn(|_| {});
    // Signed by another EC key, under the JWKS key's kid.
    let forged = es256_token(&ec_key(), "ec-1", &claims());
    assert_401(&authn, bearer(&forged), "Jwt verification fails");
    // A genuine RS256 token whose payload was changed.
    let token = f.rs256(&claims());
    let parts: Vec<&str> = token.split('.').collect();
    let mut c = claims();
    c["sub"] = json!("admin");
    let tampered = format!("{}.{}.{}", parts[0], b64(c.to_string().as_bytes()), parts[2]);
    assert_401(&authn, bearer(&tampered), "Jwt verification fails");
    // A signature that is not even the right length.
    let truncated = format!("{}.{}.{}", parts[0], parts[1], &parts[2][..40]);
    assert_401(&authn, bearer(&truncated), "Jwt verification fails");
}

#[test]
fn alg_none_is_refused() {
    let f = Fixture::new();
    let authn = f.authn(|_| {});
    for alg in ["none", "None", "NONE"] {
        let unsigned = format!("{}.", signing_input(&json!({"alg": alg, "typ": "JWT"}), &claims()));
        assert_401(
            &authn,
            bearer(&unsigned),
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
        );
        let with_sig = format!("{unsigned}c2ln");
        assert_401(&authn, bearer(&with_sig), "Jwt header [alg] is not supported");
    }
}

#[test]
fn hs256_with_the_rsa_public_key_as_secret_is_refused() {
    let f = Fixture::new();
    // Algorithm confusion: the public key's bytes (as n, and as the whole JWK) as HMAC secret.
    let public = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(f.rsa.public());
    let jwks_text = json!({"keys": [rsa_jwk(&f.rsa, "rsa-1")]}).to_string();
    let authn = JwtAuthn::compile(&[provider(jwks_text.clone())]).unwrap();
    for secret in [public.n.clone(), jwks_text.into_bytes()] {
        for kid in [Some("rsa-1"), None] {
            let mut header = json!({"alg": "HS256", "typ": "JWT"});
            if let Some(kid) = kid {
                header["kid"] = json!(kid);
            }
            let signed = signing_input(&header, &claims());
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
            let token = format!("{signed}.{}", b64(ring::hmac::sign(&key, signed.as_bytes()).as_ref()));
            let rejection = rejected(&authn, bearer(&token));
            assert_eq!(rejection.status, StatusCode::UNAUTHORIZED);
            assert_eq!(rejection.message, "Jwt verification fails");
        }
    }
    // With the key's alg pinned, the HS256 token finds no key at all.
    let mut jwk = rsa_jwk(&f.rsa, "rsa-1");
    jwk["alg"] = json!("RS256");
    let authn = JwtAuthn::compile(&[provider(json!({"keys": [jwk]}).to_string())]).unwrap();
    let signed = signing_input(&json!({"alg": "HS256"}), &claims());
    let token = format!("{signed}.{}", b64(b"whatever"));
    assert_401(&authn, bearer(&token), "Jwks doesn't have key to match kid or alg from Jwt");
}

#[test]
fn malformed_tokens() {
    let f = Fixture::new();
    let authn = f.authn(|_| {});
    let good = f.rs256(&claims());
    let parts: Vec<&str> = good.split('.').collect();
    let cases = [
        (
            "not-a-jwt".to_owned(),
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
        ),
        (
            format!("{}.{}", parts[0], parts[1]),
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
        ),
        (
            format!("{good}.{}", parts[2]),
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
        ),
        (format!("%%%.{}.{}", parts[1], parts[2]), "Jwt header is an invalid Base64url encoded"),
        (format!("{}.{}.{}", b64(b"{\"alg\":"), parts[1], parts[2]), "Jwt header is an invalid JSON"),
        (format!("{}.{}.{}", parts[0], b64(b"[\"iss\"]"), parts[2]), "Jwt payload is an invalid JSON"),
        (format!("{}.{}.{}", parts[0], "***", parts[2]), "Jwt payload is an invalid Base64url encoded"),
        (format!("{}.{}.{}", parts[0], parts[1], "~~~"), "Jwt signature is an invalid Base64url encoded"),
    ];
    for (token, message) in cases {
        assert_401(&authn, bearer(&token), message);
    }
    // Over 8 KiB: refused without being decoded.
    let mut c = claims();
    c["padding"] = json!("x".repeat(MAX_TOKEN_BYTES));
    let big = f.rs256(&c);
    assert!(big.len() > MAX_TOKEN_BYTES);
    assert_401(&authn, bearer(&big), "Jwt is too large");
    assert_eq!(authn.signature_verifications(), 0);
}

#[test]
fn custom_header_with_prefix() {
    let f = Fixture::new();
    let authn =
        f.authn(|p| p.from_headers = vec![pb::JwtHeader { name: "X-Jwt".into(), prefix: "Token ".into() }]);
    let token = f.rs256(&claims());
    let mut request = Request::builder().uri("/").header("x-jwt", format!("Token {token}")).body(()).unwrap();
    assert!(authn.authenticate(&mut request).unwrap().is_some());
    assert!(request.headers().get("x-jwt").is_none());

    let request =
        Request::builder().uri("/").header("host", "h").header("x-jwt", token.clone()).body(()).unwrap();
    let rejection = rejected(&authn, request);
    assert_eq!(rejection.status, StatusCode::UNAUTHORIZED);
    assert_eq!(rejection.message, "Jwt header does not start with the configured prefix");
    // Only the configured location is read: a bearer token is no token here.
    assert_eq!(authn.authenticate(&mut bearer(&token)), Ok(None));
}

#[test]
fn query_parameter_token_is_removed_unless_forwarded() {
    let f = Fixture::new();
    let token = f.rs256(&claims());
    let authn = f.authn(|p| p.from_params = vec!["token".into()]);
    let mut request = Request::builder().uri(format!("/orders?token={token}&page=2")).body(()).unwrap();
    let auth = authn.authenticate(&mut request).unwrap().unwrap();
    assert_eq!(auth.principal, "https://accounts.example.com/user-42");
    assert_eq!(request.uri(), "/orders?page=2");

    let authn = f.authn(|p| {
        p.from_params = vec!["token".into()];
        p.forward_original_token = true;
    });
    let uri = format!("/orders?token={token}&page=2");
    let mut request = Request::builder().uri(uri.as_str()).body(()).unwrap();
    assert!(authn.authenticate(&mut request).unwrap().is_some());
    assert_eq!(request.uri(), uri.as_str());

    let authn = f.authn(|p| p.forward_original_token = true);
    let mut request = bearer(&token);
    assert!(authn.authenticate(&mut request).unwrap().is_some());
    assert_eq!(request.headers()["authorization"], format!("Bearer {token}").as_str());
}

#[test]
fn default_locations_include_access_token() {
    let f = Fixture::new();
    let authn = f.authn(|_| {});
    let token = f.rs256(&claims());
    let mut request = Request::builder().uri(format!("/a?access_token={token}")).body(()).unwrap();
    assert!(authn.authenticate(&mut request).unwrap().is_some());
    assert_eq!(request.uri(), "/a");
}

#[test]
fn payload_and_claims_to_headers() {
    let f = Fixture::new();
    let authn = f.authn(|p| {
        p.output_payload_to_header = "x-jwt-payload".into();
        p.output_claim_to_headers = vec![
            pb::JwtClaimHeader { header: "x-sub".into(), claim: "sub".into() },
            pb::JwtClaimHeader { header: "x-team".into(), claim: "org.team.name".into() },
            pb::JwtClaimHeader { header: "x-org-id".into(), claim: "org.id".into() },
            pb::JwtClaimHeader { header: "x-verified".into(), claim: "email_verified".into() },
            pb::JwtClaimHeader { header: "x-scope".into(), claim: "scope".into() },
            pb::JwtClaimHeader { header: "x-missing".into(), claim: "nope".into() },
        ];
    });
    let c = claims();
    let mut request = bearer(&f.rs256(&c));
    // Values a client sets itself never reach the app beside the token's.
    request.headers_mut().insert("x-sub", HeaderValue::from_static("spoofed"));
    request.headers_mut().insert("x-missing", HeaderValue::from_static("spoofed"));
    request.headers_mut().insert("x-jwt-payload", HeaderValue::from_static("spoofed"));
    authn.authenticate(&mut request).unwrap().unwrap();
    let headers = request.headers();
    let payload = URL_SAFE_NO_PAD.decode(headers["x-jwt-payload"].as_bytes()).unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&payload).unwrap(), c);
    assert_eq!(headers["x-sub"], "user-42");
    assert_eq!(headers["x-team"], "payments");
    assert_eq!(headers["x-org-id"], "7");
    assert_eq!(headers["x-verified"], "true");
    assert_eq!(headers["x-scope"], "read:orders write:orders", "headers carry the claim as sent");
    assert!(headers.get("x-missing").is_none());
    assert_eq!(headers.get_all("x-sub").iter().count(), 1);
}

#[test]
fn space_delimited_claims_become_arrays() {
    let f = Fixture::new();
    let authn = f.authn(|p| p.space_delimited_claims = vec!["roles".into()]);
    let mut c = claims();
    c["permission"] = json!("a  b");
    c["org"]["scope"] = json!("nested is not split");
    let auth = authn.authenticate(&mut bearer(&f.rs256(&c))).unwrap().unwrap();
    assert_eq!(auth.claims["roles"], json!(["admin", "ops"]));
    assert_eq!(auth.claims["permission"], json!(["a", "b"]));
    assert_eq!(auth.claims["scope"], json!(["read:orders", "write:orders"]));
    assert_eq!(auth.claims["org"]["scope"], json!("nested is not split"));
    assert_eq!(auth.claim_values(&["roles".into()]), ["admin", "ops"]);
}

#[test]
fn missing_token_passes_without_identity() {
    let f = Fixture::new();
    let authn = f.authn(|_| {});
    let mut request = Request::builder().uri("/orders?page=1").body(()).unwrap();
    assert_eq!(authn.authenticate(&mut request), Ok(None));
    let mut request =
        Request::builder().uri("/").header("authorization", "Basic dXNlcjpwdw==").body(()).unwrap();
    assert_eq!(authn.authenticate(&mut request), Ok(None));
    let empty = JwtAuthn::compile(&[]).unwrap();
    assert!(empty.is_empty());
    assert_eq!(empty.authenticate(&mut bearer("garbage")), Ok(None));
}

#[test]
fn cors_preflight_is_not_checked() {
    let f = Fixture::new();
    let authn = f.authn(|_| {});
    let mut request = Request::builder()
        .method("OPTIONS")
        .uri("/orders")
        .header("origin", "https://shop.example.com")
        .header("access-control-request-method", "POST")
        .header("authorization", "Bearer garbage")
        .body(())
        .unwrap();
    assert_eq!(authn.authenticate(&mut request), Ok(None));
    assert_eq!(request.headers()["authorization"], "Bearer garbage");
    // Without the preflight headers an OPTIONS request is checked.
    let mut request =
        Request::builder().method("OPTIONS").uri("/").header("authorization", "Bearer x").body(()).unwrap();
    assert!(authn.authenticate(&mut request).is_err());
}

#[test]
fn a_reused_token_is_verified_once() {
    let f = Fixture::new();
    let authn = f.authn(|p| {
        p.output_claim_to_headers = vec![pb::JwtClaimHeader { header: "x-sub".into(), claim: "sub".into() }]
    });
    let token = f.rs256(&claims());
    let mut first = bearer(&token);
    let mut second = bearer(&token);
    let a = authn.authenticate(&mut first).unwrap();
    let b = authn.authenticate(&mut second).unwrap();
    assert_eq!(a, b);
    assert_eq!(second.headers()["x-sub"], "user-42", "a cache hit edits the request the same way");
    assert!(second.headers().get("authorization").is_none());
    assert_eq!(authn.signature_verifications(), 1);
    assert_eq!(authn.cache_hits(), 1);
    // Another provider list (a new config) starts with an empty cache.
    let again = f.authn(|_| {});
    again.authenticate(&mut bearer(&token)).unwrap();
    assert_eq!(again.signature_verifications(), 1);
}

#[test]
fn compile_errors_name_the_field() {
    let f = Fixture::new();
    let mut no_issuer = f.provider();
    no_issuer.issuer.clear();
    let e = JwtAuthn::compile(&[no_issuer]).unwrap_err();
    assert_eq!(e.field, "jwt_providers[0].issuer");
    assert_eq!(e.to_string(), "jwt_providers[0].issuer: required");
}

#[test]
fn a_key_set_that_cannot_be_used_refuses_that_issuers_tokens_only() {
    // trellisd sends an empty key set until it has fetched the issuer's jwksUri; a set of
    // keys the proxy cannot use is the same. The rest of the configuration still compiles.
    let f = Fixture::new();
    let token = f.rs256(&claims());
    for jwks in [
        String::new(),
        "{\"keys\": [".to_owned(),
        json!({"keys": [{"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"}]}).to_string(),
    ] {
        let authn = f.authn(|p| p.jwks = jwks.clone());
        let refused = authn.authenticate(&mut bearer(&token)).unwrap_err();
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{jwks:?}");
        assert!(authn.authenticate(&mut Request::new(())).unwrap().is_none(), "no token still passes");
    }
}
