//! RequestAuthentication's token check (`trellis_proxy::security::jwt::JwtAuthn`): the provider
//! compiled from its JWKS, then a request whose token the fuzzer writes, in the places a token
//! is read from (an `Authorization: Bearer` header, a header with a prefix, a query parameter, a
//! cookie).
//!
//! Input: text, split at the first two NUL bytes into a JWKS (empty: the fixed key below), a
//! token, and a selector of where the token goes (its first byte).
//!
//! Properties: nothing panics, for any JWKS or token; with the fixed key, whose private half
//! only signed the seed token, a token is accepted only as that token's identity (so no
//! `alg: none`, key confusion or truncated signature gets through); whatever is accepted
//! carries the provider's issuer.
#![no_main]

use http::Request;
use libfuzzer_sys::fuzz_target;
use trellis_proxy::security::jwt::JwtAuthn;
use trellis_xds::config as pb;

const ISSUER: &str = "https://issuer.example";

/// A P-256 key made for this target; its private half signed `fuzz/seeds/jwt/valid` and was
/// thrown away.
const FIXED_JWKS: &str = r#"{"keys": [{"kty": "EC", "crv": "P-256", "kid": "fuzz", "alg": "ES256", "x": "RgAxXXETkw1Zi_LcWwzJWCtZ2lraXE55RpV6N0kDJxo", "y": "ljeidzlnezbimWUdI16lTehkj5tpa0lzwqDbCy22nRo"}]}"#;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut parts = text.splitn(3, '\0');
    let jwks = parts.next().unwrap_or_default();
    let token = parts.next().unwrap_or_default();
    let place = parts.next().and_then(|p| p.bytes().next()).unwrap_or(0);
    let fixed = jwks.is_empty();
    let provider = pb::JwtProvider {
        issuer: ISSUER.to_owned(),
        audiences: vec!["api".to_owned()],
        jwks: if fixed { FIXED_JWKS.to_owned() } else { jwks.to_owned() },
        from_headers: vec![
            pb::JwtHeader { name: "authorization".to_owned(), prefix: "Bearer ".to_owned() },
            pb::JwtHeader { name: "x-jwt".to_owned(), prefix: "Token ".to_owned() },
        ],
        from_params: vec!["access_token".to_owned()],
        from_cookies: vec!["session".to_owned()],
        output_payload_to_header: "x-payload".to_owned(),
        output_claim_to_headers: vec![pb::JwtClaimHeader { header: "x-sub".to_owned(), claim: "sub".to_owned() }],
        space_delimited_claims: vec!["groups".to_owned()],
        ..Default::default()
    };
    let Ok(authn) = JwtAuthn::compile(&[provider]) else { return };
    let request = match place % 4 {
        0 => Request::builder().uri("/api").header("authorization", format!("Bearer {token}")),
        1 => Request::builder().uri("/api").header("x-jwt", format!("Token {token}")),
        2 => Request::builder().uri(format!("/api?a=1&access_token={token}")),
        _ => Request::builder().uri("/api").header("cookie", format!("a=b; session={token}")),
    };
    let Ok(mut request) = request.body(()) else { return };
    if let Ok(Some(auth)) = authn.authenticate(&mut request) {
        assert!(auth.principal.starts_with(&format!("{ISSUER}/")), "{}", auth.principal);
        if fixed {
            assert_eq!(auth.principal, format!("{ISSUER}/alice"), "accepted with the fixed key: {token}");
        }
    }
});
