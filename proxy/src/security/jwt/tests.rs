//! Unit tests: token parsing, key choice, the provider combination, the cache, the request
//! edits. Keys are generated here with ring (EC, Ed25519); the RSA cases, which need a fixed
//! key (ring does not generate RSA keys), are in `tests/jwt.rs`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderValue, Request, StatusCode};
use ring::rand::SystemRandom;
use ring::signature::{self as rs, KeyPair};
use serde_json::{Value, json};
use trellis_xds::config as pb;

use super::*;

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

enum TestKey {
    Ec { pair: rs::EcdsaKeyPair, crv: &'static str, alg: &'static str },
    Ed(rs::Ed25519KeyPair),
}

impl TestKey {
    fn ec(alg: &'static rs::EcdsaSigningAlgorithm, crv: &'static str, name: &'static str) -> TestKey {
        let rng = SystemRandom::new();
        let pkcs8 = rs::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        TestKey::Ec { pair: rs::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap(), crv, alg: name }
    }

    fn es256() -> TestKey {
        TestKey::ec(&rs::ECDSA_P256_SHA256_FIXED_SIGNING, "P-256", "ES256")
    }

    fn es384() -> TestKey {
        TestKey::ec(&rs::ECDSA_P384_SHA384_FIXED_SIGNING, "P-384", "ES384")
    }

    fn ed25519() -> TestKey {
        let pkcs8 = rs::Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        TestKey::Ed(rs::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap())
    }

    fn alg(&self) -> &'static str {
        match self {
            TestKey::Ec { alg, .. } => alg,
            TestKey::Ed(_) => "EdDSA",
        }
    }

    fn jwk(&self, kid: Option<&str>) -> Value {
        let mut jwk = match self {
            TestKey::Ec { pair, crv, .. } => {
                let point = pair.public_key().as_ref();
                let half = (point.len() - 1) / 2;
                json!({"kty": "EC", "crv": crv, "x": b64(&point[1..1 + half]), "y": b64(&point[1 + half..])})
            }
            TestKey::Ed(pair) => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64(pair.public_key().as_ref())})
            }
        };
        if let Some(kid) = kid {
            jwk["kid"] = json!(kid);
        }
        jwk
    }

    fn sign_raw(&self, message: &[u8]) -> Vec<u8> {
        match self {
            TestKey::Ec { pair, .. } => pair.sign(&SystemRandom::new(), message).unwrap().as_ref().to_vec(),
            TestKey::Ed(pair) => pair.sign(message).as_ref().to_vec(),
        }
    }

    fn token_with_header(&self, header: Value, claims: Value) -> String {
        let signed = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
        let sig = self.sign_raw(signed.as_bytes());
        format!("{signed}.{}", b64(&sig))
    }

    fn token(&self, claims: Value) -> String {
        self.token_with_header(json!({"alg": self.alg(), "typ": "JWT"}), claims)
    }
}

fn jwks(keys: &[Value]) -> String {
    json!({ "keys": keys }).to_string()
}

fn provider(issuer: &str, keys: &[Value]) -> pb::JwtProvider {
    pb::JwtProvider { issuer: issuer.to_owned(), jwks: jwks(keys), ..Default::default() }
}

fn now() -> i64 {
    unix_now()
}

fn claims(iss: &str) -> Value {
    json!({"iss": iss, "sub": "alice", "exp": now() + 600})
}

fn bearer(token: &str) -> Request<()> {
    Request::builder().uri("/api").header("authorization", format!("Bearer {token}")).body(()).unwrap()
}

fn reject_message(authn: &JwtAuthn, mut request: Request<()>) -> (StatusCode, String) {
    let rejection = authn.authenticate(&mut request).unwrap_err();
    (rejection.status, rejection.message)
}

// ---- parsing ----------------------------------------------------------------------------

#[test]
fn malformed_tokens_say_what_is_wrong() {
    let header = b64(br#"{"alg":"ES256"}"#);
    let payload = b64(br#"{"iss":"a"}"#);
    let cases: Vec<(String, &str)> = vec![
        ("abc".to_owned(), "two dots"),
        ("a.b".to_owned(), "two dots"),
        ("a.b.c.d".to_owned(), "two dots"),
        (format!("{header}..c2ln"), "two dots"),
        (format!("{header}.{payload}."), "two dots"),
        (format!("!!.{payload}.c2ln"), "header is an invalid Base64url"),
        (format!("{}.{payload}.c2ln", b64(b"not json")), "header is an invalid JSON"),
        (format!("{}.{payload}.c2ln", b64(b"[1]")), "header is an invalid JSON"),
        (format!("{}.{payload}.c2ln", b64(br#"{"typ":"JWT"}"#)), "[alg] field is required"),
        (format!("{}.{payload}.c2ln", b64(br#"{"alg":7}"#)), "[alg] field is required"),
        (format!("{}.{payload}.c2ln", b64(br#"{"alg":"none"}"#)), "[alg] is not supported"),
        (format!("{}.{payload}.c2ln", b64(br#"{"alg":"ES512"}"#)), "[alg] is not supported"),
        (format!("{}.{payload}.c2ln", b64(br#"{"alg":"ES256","kid":1}"#)), "[kid] field is not a string"),
        (format!("{}.{payload}.c2ln", b64(br#"{"alg":"ES256","crit":["exp"]}"#)), "[crit]"),
        (format!("{header}.@@.c2ln"), "payload is an invalid Base64url"),
        (format!("{header}.{}.c2ln", b64(b"{")), "payload is an invalid JSON"),
        (format!("{header}.{}.c2ln", b64(b"\"str\"")), "payload is an invalid JSON"),
        (format!("{header}.{}.c2ln", b64(br#"{"iss":1}"#)), "[iss] field is not a string"),
        (format!("{header}.{}.c2ln", b64(br#"{"sub":{}}"#)), "[sub] field is not a string"),
        (format!("{header}.{}.c2ln", b64(br#"{"exp":"soon"}"#)), "[exp] field is not an integer"),
        (format!("{header}.{}.c2ln", b64(br#"{"nbf":true}"#)), "[nbf] field is not an integer"),
        (format!("{header}.{}.c2ln", b64(br#"{"aud":[1]}"#)), "[aud] field is not a string or string list"),
        (format!("{header}.{}.c2ln", b64(br#"{"aud":5}"#)), "[aud] field is not a string or string list"),
        (format!("{header}.{payload}.+/+/"), "signature is an invalid Base64url"),
        ("a".repeat(MAX_TOKEN_BYTES + 1), "too large"),
    ];
    for (token, expected) in cases {
        match token::parse(&token) {
            Ok(_) => panic!("{token:?} parsed"),
            Err(message) => {
                assert!(message.contains(expected), "{token:?}: {message:?}, wanted {expected:?}")
            }
        }
    }
}

#[test]
fn parse_reads_registered_claims() {
    let header = b64(br#"{"alg":"RS256","kid":"k1"}"#);
    let payload = b64(br#"{"iss":"i","sub":"s","aud":["a","b"],"exp":10.7,"nbf":5,"iat":1}"#);
    let token = format!("{header}.{payload}.c2ln");
    let jwt = token::parse(&token).unwrap();
    assert_eq!(jwt.alg, jsonwebtoken::Algorithm::RS256);
    assert_eq!(jwt.kid.as_deref(), Some("k1"));
    assert_eq!((jwt.iss.as_deref(), jwt.sub.as_deref()), (Some("i"), Some("s")));
    assert_eq!(jwt.audiences, ["a", "b"]);
    assert_eq!((jwt.exp, jwt.nbf), (Some(10), Some(5)));
    assert_eq!(jwt.signature, b"sig");
    assert_eq!(jwt.signed, format!("{header}.{payload}"));
    // Padded base64url is accepted too, as Envoy does.
    let padded = format!("{}.{payload}.c2lnbg==", b64(br#"{"alg":"ES256"}"#));
    assert_eq!(token::parse(&padded).unwrap().signature, b"sign");
}

#[test]
fn audiences_are_sanitized_as_jwt_verify_lib() {
    assert_eq!(sanitize_audience("https://api.example.com/"), "api.example.com");
    assert_eq!(sanitize_audience("http://api"), "api");
    assert_eq!(sanitize_audience("api/"), "api/");
    assert_eq!(sanitize_audience(""), "");
}

#[test]
fn percent_decoding() {
    assert_eq!(percent_decode("a%2Eb").as_deref(), Some("a.b"));
    assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
    assert_eq!(percent_decode("bad%2"), None);
    assert_eq!(percent_decode("bad%zz"), None);
    assert_eq!(percent_decode("%ff"), None);
}

// ---- JWKS ---------------------------------------------------------------------------------

#[test]
fn jwks_keeps_usable_keys_and_says_why_others_were_skipped() {
    let ec = TestKey::es256().jwk(Some("good"));
    let set = jwks(&[
        json!({"kty": "oct", "k": "c2VjcmV0"}),
        json!({"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"}),
        json!({"kty": "RSA", "n": b64(&[0xc5; 128]), "e": "AQAB"}),
        json!({"kty": "RSA", "use": "enc", "n": b64(&[0xc5; 256]), "e": "AQAB"}),
        json!({"kty": "EC", "crv": "P-256", "alg": "ES384", "x": ec["x"], "y": ec["y"]}),
        json!({"kty": "XYZ"}),
        ec.clone(),
    ]);
    let keys = keys::parse_jwks(&set).unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].kid.as_deref(), Some("good"));

    let without_good =
        jwks(&[json!({"kty": "oct", "k": "c2VjcmV0"}), json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"})]);
    let err = keys::parse_jwks(&without_good).unwrap_err();
    assert!(err.contains("no usable key"), "{err}");
    assert!(err.contains("keys[0]: symmetric"), "{err}");
    assert!(err.contains("keys[1]: a 17-bit RSA key"), "{err}");
    assert!(keys::parse_jwks(r#"{"keys": []}"#).unwrap_err().contains("no keys"));
    assert!(keys::parse_jwks(r#"{"keys": {}}"#).unwrap_err().contains("not an array"));
    assert!(keys::parse_jwks(r#"{"kty": "RSA"}"#).unwrap_err().contains("no \"keys\""));
    assert!(keys::parse_jwks("{").unwrap_err().contains("not a JSON Web Key Set"));
    assert!(keys::parse_jwks("").unwrap_err().contains("required"));
}

#[test]
fn compile_errors_name_the_field() {
    let key = TestKey::es256().jwk(None);
    let good = provider("issuer", std::slice::from_ref(&key));
    let case = |edit: &dyn Fn(&mut pb::JwtProvider)| {
        let mut p = good.clone();
        edit(&mut p);
        JwtAuthn::compile(&[good.clone(), p]).unwrap_err()
    };
    assert_eq!(case(&|p| p.issuer = " ".into()).field, "jwt_providers[1].issuer");
    // An unusable key set is no compile error: that issuer's tokens are refused instead.
    for bad in ["{not json".to_owned(), jwks(&[json!({"kty": "oct", "k": "c2VjcmV0"})]), String::new()] {
        let mut p = good.clone();
        p.jwks = bad;
        assert!(JwtAuthn::compile(&[good.clone(), p]).is_ok());
    }
    let e =
        case(&|p| p.from_headers = vec![pb::JwtHeader { name: "bad header".into(), prefix: String::new() }]);
    assert_eq!(e.field, "jwt_providers[1].from_headers[0].name");
    assert_eq!(case(&|p| p.from_params = vec![String::new()]).field, "jwt_providers[1].from_params[0]");
    assert_eq!(case(&|p| p.from_cookies = vec!["a=b".into()]).field, "jwt_providers[1].from_cookies[0]");
    assert_eq!(
        case(&|p| p.output_payload_to_header = "x y".into()).field,
        "jwt_providers[1].output_payload_to_header"
    );
    let e = case(&|p| {
        p.output_claim_to_headers = vec![pb::JwtClaimHeader { header: "x-a".into(), claim: "a..b".into() }]
    });
    assert_eq!(e.field, "jwt_providers[1].output_claim_to_headers[0].claim");
    assert!(JwtAuthn::compile(&[]).unwrap().is_empty());
}

// ---- verification -------------------------------------------------------------------------

#[test]
fn es384_and_eddsa_tokens_verify() {
    for key in [TestKey::es384(), TestKey::ed25519(), TestKey::es256()] {
        let authn = JwtAuthn::compile(&[provider("https://issuer", &[key.jwk(None)])]).unwrap();
        let token = key.token(claims("https://issuer"));
        let auth = authn.authenticate(&mut bearer(&token)).unwrap().unwrap();
        assert_eq!(auth.principal, "https://issuer/alice", "{}", key.alg());
    }
}

#[test]
fn keys_are_chosen_by_kid_and_alg() {
    let (a, b) = (TestKey::es256(), TestKey::es256());
    let authn = JwtAuthn::compile(&[provider("iss", &[a.jwk(Some("a")), b.jwk(Some("b"))])]).unwrap();
    let signed_by_b = b.token_with_header(json!({"alg": "ES256", "kid": "b"}), claims("iss"));
    assert!(authn.authenticate(&mut bearer(&signed_by_b)).unwrap().is_some());
    // No kid: every key is tried.
    let no_kid = b.token(claims("iss"));
    assert!(authn.authenticate(&mut bearer(&no_kid)).unwrap().is_some());
    // The kid names the other key: that one alone is tried.
    let wrong_kid = b.token_with_header(json!({"alg": "ES256", "kid": "a"}), claims("iss"));
    assert_eq!(reject_message(&authn, bearer(&wrong_kid)).1, "Jwt verification fails");
    let unknown_kid = b.token_with_header(json!({"alg": "ES256", "kid": "c"}), claims("iss"));
    assert_eq!(
        reject_message(&authn, bearer(&unknown_kid)).1,
        "Jwks doesn't have key to match kid or alg from Jwt"
    );

    // A key that names its alg is not used for another.
    let p384 = TestKey::es384();
    let mut jwk = a.jwk(None);
    jwk["alg"] = json!("ES256");
    let authn = JwtAuthn::compile(&[provider("iss", &[jwk])]).unwrap();
    let (status, message) = reject_message(&authn, bearer(&p384.token(claims("iss"))));
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(message, "Jwks doesn't have key to match kid or alg from Jwt");
    // A P-256 key does not verify an ES384 token (no alg on the key: tried, and fails).
    let authn = JwtAuthn::compile(&[provider("iss", &[a.jwk(None)])]).unwrap();
    assert_eq!(reject_message(&authn, bearer(&p384.token(claims("iss")))).1, "Jwt verification fails");
}

#[test]
fn time_checks_allow_sixty_seconds_of_skew() {
    let key = TestKey::es256();
    let authn = JwtAuthn::compile(&[provider("iss", &[key.jwk(None)])]).unwrap();
    let t = now();
    let ok = |c: Value| authn.authenticate(&mut bearer(&key.token(c))).map(|a| a.is_some());
    assert_eq!(ok(json!({"iss": "iss", "exp": t - 30})), Ok(true));
    assert_eq!(ok(json!({"iss": "iss", "nbf": t + 30})), Ok(true));
    assert_eq!(ok(json!({"iss": "iss"})), Ok(true), "exp is optional");
    assert_eq!(
        reject_message(&authn, bearer(&key.token(json!({"iss": "iss", "exp": t - 90})))).1,
        "Jwt is expired"
    );
    assert_eq!(
        reject_message(&authn, bearer(&key.token(json!({"iss": "iss", "nbf": t + 90})))).1,
        "Jwt not yet valid"
    );
}

#[test]
fn audiences_any_of_sanitized() {
    let key = TestKey::es256();
    let mut p = provider("iss", &[key.jwk(None)]);
    p.audiences = vec!["https://api.example.com/".into(), "other".into()];
    let authn = JwtAuthn::compile(&[p]).unwrap();
    let with_aud = |aud: Value| key.token(json!({"iss": "iss", "aud": aud}));
    let auth = authn.authenticate(&mut bearer(&with_aud(json!(["x", "api.example.com"])))).unwrap().unwrap();
    assert_eq!(auth.audiences, ["x", "api.example.com"]);
    assert!(authn.authenticate(&mut bearer(&with_aud(json!("http://other")))).unwrap().is_some());
    let rejection = authn.authenticate(&mut bearer(&with_aud(json!("nope")))).unwrap_err();
    assert_eq!(rejection.status, StatusCode::FORBIDDEN);
    assert_eq!(rejection.message, "Audiences in Jwt are not allowed");
    assert!(rejection.www_authenticate.is_some());
    let no_aud = key.token(json!({"iss": "iss"}));
    assert_eq!(reject_message(&authn, bearer(&no_aud)).0, StatusCode::FORBIDDEN);
}

// ---- several providers --------------------------------------------------------------------

fn two_providers() -> (TestKey, TestKey, JwtAuthn) {
    let (a, b) = (TestKey::es256(), TestKey::ed25519());
    let pa = provider("issuer-a", &[a.jwk(None)]);
    let mut pb_ = provider("issuer-b", &[b.jwk(None)]);
    pb_.from_headers = vec![pb::JwtHeader { name: "x-jwt".into(), prefix: String::new() }];
    let authn = JwtAuthn::compile(&[pa, pb_]).unwrap();
    (a, b, authn)
}

#[test]
fn one_valid_provider_is_enough() {
    let (a, b, authn) = two_providers();
    let mut request = Request::builder()
        .uri("/")
        .header("authorization", format!("Bearer {}", a.token(claims("issuer-a"))))
        .header("x-jwt", "garbage")
        .body(())
        .unwrap();
    let auth = authn.authenticate(&mut request).unwrap().unwrap();
    assert_eq!(auth.principal, "issuer-a/alice");
    assert!(request.headers().get("authorization").is_none());
    assert_eq!(request.headers()["x-jwt"], "garbage", "the other provider's location is left alone");

    let mut request =
        Request::builder().uri("/").header("x-jwt", b.token(claims("issuer-b"))).body(()).unwrap();
    assert_eq!(authn.authenticate(&mut request).unwrap().unwrap().principal, "issuer-b/alice");
}

#[test]
fn a_provider_needs_all_its_tokens_valid() {
    let (a, _, authn) = two_providers();
    let good = a.token(claims("issuer-a"));
    let request = Request::builder()
        .uri("/?access_token=bad.token.here")
        .header("authorization", format!("Bearer {good}"))
        .body(())
        .unwrap();
    let (status, message) = reject_message(&authn, request);
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(message.starts_with("Jwt header"), "{message}");
}

#[test]
fn a_tokens_own_fault_is_reported_before_an_unknown_issuer() {
    let (a, b, authn) = two_providers();
    // B's token where only A reads: A does not know its issuer.
    assert_eq!(
        reject_message(&authn, bearer(&b.token(claims("issuer-b")))).1,
        "Jwt issuer is not configured"
    );
    // An issuer nobody has.
    assert_eq!(
        reject_message(&authn, bearer(&a.token(claims("issuer-z")))).1,
        "Jwt issuer is not configured"
    );
    // A's token at A's place, expired; plus an unknown issuer at B's.
    let expired = a.token(json!({"iss": "issuer-a", "exp": now() - 3600}));
    let request = Request::builder()
        .uri("/")
        .header("x-jwt", a.token(claims("issuer-a")))
        .header("authorization", format!("Bearer {expired}"))
        .body(())
        .unwrap();
    assert_eq!(reject_message(&authn, request).1, "Jwt is expired");
}

#[test]
fn shared_location_is_tried_by_each_provider() {
    let (a, b) = (TestKey::es256(), TestKey::es256());
    let authn =
        JwtAuthn::compile(&[provider("issuer-a", &[a.jwk(None)]), provider("issuer-b", &[b.jwk(None)])])
            .unwrap();
    assert_eq!(authn.locations.len(), 2, "default locations are shared");
    let auth = authn.authenticate(&mut bearer(&b.token(claims("issuer-b")))).unwrap().unwrap();
    assert_eq!(auth.principal, "issuer-b/alice");
}

// ---- locations and request edits ----------------------------------------------------------

#[test]
fn default_bearer_ignores_other_schemes() {
    let key = TestKey::es256();
    let authn = JwtAuthn::compile(&[provider("iss", &[key.jwk(None)])]).unwrap();
    let mut basic = Request::builder().uri("/").header("authorization", "Basic YTpi").body(()).unwrap();
    assert_eq!(authn.authenticate(&mut basic), Ok(None));
    assert_eq!(basic.headers()["authorization"], "Basic YTpi");
    let token = key.token(claims("iss"));
    let mut lower =
        Request::builder().uri("/").header("authorization", format!("bearer {token}")).body(()).unwrap();
    assert!(authn.authenticate(&mut lower).unwrap().is_some());
    let mut empty = Request::builder().uri("/").header("authorization", "Bearer ").body(()).unwrap();
    assert_eq!(authn.authenticate(&mut empty).unwrap_err().status, StatusCode::UNAUTHORIZED);
}

#[test]
fn cookie_tokens_are_read_and_removed() {
    let key = TestKey::es256();
    let mut p = provider("iss", &[key.jwk(None)]);
    p.from_cookies = vec!["session".into()];
    let authn = JwtAuthn::compile(&[p]).unwrap();
    let token = key.token(claims("iss"));
    let mut request = Request::builder()
        .uri("/")
        .header("cookie", format!("theme=dark; session=\"{token}\"; lang=en"))
        .body(())
        .unwrap();
    assert!(authn.authenticate(&mut request).unwrap().is_some());
    assert_eq!(request.headers()["cookie"], "theme=dark; lang=en");

    let mut only = Request::builder().uri("/").header("cookie", format!("session={token}")).body(()).unwrap();
    assert!(authn.authenticate(&mut only).unwrap().is_some());
    assert!(only.headers().get("cookie").is_none());
    // The default locations are not read when cookies are configured.
    assert_eq!(authn.authenticate(&mut bearer(&token)), Ok(None));
}

#[test]
fn query_token_removal_keeps_the_rest_of_the_uri() {
    let key = TestKey::es256();
    let authn = JwtAuthn::compile(&[provider("iss", &[key.jwk(None)])]).unwrap();
    let token = key.token(claims("iss"));
    let mut request =
        Request::builder().uri(format!("http://h:8080/p/a?x=1&access_token={token}&y=2")).body(()).unwrap();
    assert!(authn.authenticate(&mut request).unwrap().is_some());
    assert_eq!(request.uri().to_string(), "http://h:8080/p/a?x=1&y=2");
    let mut alone = Request::builder().uri(format!("/p?access_token={token}")).body(()).unwrap();
    assert!(authn.authenticate(&mut alone).unwrap().is_some());
    assert_eq!(alone.uri().to_string(), "/p");
}

#[test]
fn realm_is_the_request_url_without_query() {
    let key = TestKey::es256();
    let authn = JwtAuthn::compile(&[provider("iss", &[key.jwk(None)])]).unwrap();
    let mut request = Request::builder()
        .uri("/orders/1?access_token=x.y.z")
        .header("host", "shop.example:8080")
        .body(())
        .unwrap();
    let rejection = authn.authenticate(&mut request).unwrap_err();
    assert_eq!(
        rejection.www_authenticate,
        Some(HeaderValue::from_static(
            r#"Bearer realm="http://shop.example:8080/orders/1", error="invalid_token""#
        ))
    );
    let long = format!("https://h/{}", "a".repeat(400));
    let mut request = Request::builder().uri(long).header("authorization", "Bearer x").body(()).unwrap();
    let value = authn.authenticate(&mut request).unwrap_err().www_authenticate.unwrap();
    let value = value.to_str().unwrap();
    assert!(value.starts_with("Bearer realm=\"https://h/aaa"), "{value}");
    assert_eq!(value.len(), r#"Bearer realm="https://h", error="invalid_token""#.len() + MAX_REALM_PATH);
}

#[test]
fn claim_headers_convert_scalars_and_follow_paths() {
    let payload =
        json!({"s": "x", "n": 42, "f": 1.5, "b": true, "o": {"inner": "deep"}, "a": ["l"], "e": ""});
    let payload = payload.as_object().unwrap();
    let get = |path: &str| {
        let path: Vec<String> = path.split('.').map(str::to_owned).collect();
        claim_header(payload, &path).map(|v| v.to_str().unwrap().to_owned())
    };
    assert_eq!(get("s").as_deref(), Some("x"));
    assert_eq!(get("n").as_deref(), Some("42"));
    assert_eq!(get("f").as_deref(), Some("1.5"));
    assert_eq!(get("b").as_deref(), Some("true"));
    assert_eq!(get("o.inner").as_deref(), Some("deep"));
    assert_eq!(get("o"), None);
    assert_eq!(get("a"), None);
    assert_eq!(get("e"), None);
    assert_eq!(get("missing.x"), None);
}

#[test]
fn principal_needs_sub() {
    let key = TestKey::es256();
    let authn = JwtAuthn::compile(&[provider("iss", &[key.jwk(None)])]).unwrap();
    let auth =
        authn.authenticate(&mut bearer(&key.token(json!({"iss": "iss", "azp": "web"})))).unwrap().unwrap();
    assert_eq!(auth.principal, "");
    assert_eq!(auth.presenter.as_deref(), Some("web"));
}

// ---- cache --------------------------------------------------------------------------------

fn verified(exp: Option<i64>) -> Arc<Verified> {
    Arc::new(Verified { auth: Arc::default(), exp, claim_headers: Vec::new() })
}

#[test]
fn cache_serves_live_entries_only_and_stays_bounded() {
    let cache = TokenCache::default();
    let t = now();
    cache.insert(cache.key(0, "a"), verified(Some(t + 10)), t, CLOCK_SKEW_SECS);
    cache.insert(cache.key(0, "b"), verified(Some(t - 100)), t, CLOCK_SKEW_SECS);
    assert!(cache.get(&cache.key(0, "a"), t, CLOCK_SKEW_SECS).is_some());
    assert!(cache.get(&cache.key(1, "a"), t, CLOCK_SKEW_SECS).is_none(), "keyed by provider too");
    assert!(cache.get(&cache.key(0, "b"), t, CLOCK_SKEW_SECS).is_none());
    assert_eq!(cache.len(), 1, "the expired entry was dropped when looked up");
    // Still valid within the skew, not past it.
    assert!(cache.get(&cache.key(0, "a"), t + 60, CLOCK_SKEW_SECS).is_some());
    assert!(cache.get(&cache.key(0, "a"), t + 71, CLOCK_SKEW_SECS).is_none());

    for i in 0..cache::CAPACITY {
        cache.insert(cache.key(0, &i.to_string()), verified(None), t, CLOCK_SKEW_SECS);
    }
    assert_eq!(cache.len(), cache::CAPACITY);
    cache.insert(cache.key(0, "one more"), verified(None), t, CLOCK_SKEW_SECS);
    assert_eq!(cache.len(), 1, "full of live entries: cleared");
    assert!(cache.get(&cache.key(0, "one more"), t, CLOCK_SKEW_SECS).is_some());
}

#[test]
fn a_reused_token_is_verified_once() {
    let key = TestKey::es256();
    let authn = JwtAuthn::compile(&[provider("iss", &[key.jwk(None)])]).unwrap();
    let token = key.token(claims("iss"));
    let first = authn.authenticate(&mut bearer(&token)).unwrap();
    let second = authn.authenticate(&mut bearer(&token)).unwrap();
    assert_eq!(first, second);
    assert_eq!((authn.signature_verifications(), authn.cache_hits()), (1, 1));
    // A token that fails is not cached.
    let other = TestKey::es256().token(claims("iss"));
    for _ in 0..2 {
        assert_eq!(reject_message(&authn, bearer(&other)).1, "Jwt verification fails");
    }
    assert_eq!(authn.signature_verifications(), 3);
}

#[test]
fn every_one_character_change_is_refused() {
    let key = TestKey::es256();
    let authn = JwtAuthn::compile(&[provider("iss", &[key.jwk(None)])]).unwrap();
    let token = key.token(claims("iss"));
    assert!(authn.authenticate(&mut bearer(&token)).unwrap().is_some());
    for i in 0..token.len() {
        for c in ['A', '_', '.', '='] {
            let mut changed = token.clone().into_bytes();
            if changed[i] == c as u8 {
                continue;
            }
            changed[i] = c as u8;
            let changed = String::from_utf8(changed).unwrap();
            assert!(authn.authenticate(&mut bearer(&changed)).is_err(), "{changed}");
        }
    }
}
