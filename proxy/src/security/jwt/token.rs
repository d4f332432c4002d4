//! A token taken apart (JWS compact serialization) with the checks and messages of Envoy's
//! jwt_verify_lib: exactly three non-empty base64url sections, a JSON object header with a
//! supported `alg`, a JSON object payload whose registered claims have the right types.

use std::str::FromStr;

use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use super::{MAX_TOKEN_BYTES, b64url_decode};

/// A token that parsed; not yet verified.
pub(super) struct Parsed<'t> {
    /// `header.payload`, what the signature covers.
    pub signed: &'t str,
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub signature: Vec<u8>,
    pub payload: Map<String, Value>,
    pub iss: Option<String>,
    pub sub: Option<String>,
    pub audiences: Vec<String>,
    pub exp: Option<i64>,
    pub nbf: Option<i64>,
}

/// Why a token is malformed (the response body).
pub(super) type Malformed = &'static str;

pub(super) const TOO_LARGE: Malformed = "Jwt is too large";
const BAD_FORMAT: Malformed =
    "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections";

pub(super) fn parse(token: &str) -> Result<Parsed<'_>, Malformed> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TOO_LARGE);
    }
    let mut sections = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (sections.next(), sections.next(), sections.next(), sections.next())
    else {
        return Err(BAD_FORMAT);
    };
    if header.is_empty() || payload.is_empty() || signature.is_empty() {
        return Err(BAD_FORMAT);
    }
    let signed = &token[..header.len() + 1 + payload.len()];

    let header = b64url_decode(header).ok_or("Jwt header is an invalid Base64url encoded")?;
    let Ok(Value::Object(header)) = serde_json::from_slice::<Value>(&header) else {
        return Err("Jwt header is an invalid JSON");
    };
    let Some(Value::String(alg)) = header.get("alg") else {
        return Err("Jwt header [alg] field is required and must be a string");
    };
    // `none` and anything unknown; HS* parse, and find no key (JWKS `oct` keys are refused).
    let alg = Algorithm::from_str(alg).map_err(|_| "Jwt header [alg] is not supported")?;
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err("Jwt header [kid] field is not a string"),
    };
    // RFC 7515 4.1.11: extensions the recipient does not understand must be refused; none are.
    if header.contains_key("crit") {
        return Err("Jwt header [crit] is not supported");
    }

    let payload_json = b64url_decode(payload).ok_or("Jwt payload is an invalid Base64url encoded")?;
    let Ok(Value::Object(claims)) = serde_json::from_slice::<Value>(&payload_json) else {
        return Err("Jwt payload is an invalid JSON");
    };
    let iss = string_claim(&claims, "iss").map_err(|()| "Jwt payload [iss] field is not a string")?;
    let sub = string_claim(&claims, "sub").map_err(|()| "Jwt payload [sub] field is not a string")?;
    let exp = time_claim(&claims, "exp").map_err(|()| "Jwt payload [exp] field is not an integer")?;
    let nbf = time_claim(&claims, "nbf").map_err(|()| "Jwt payload [nbf] field is not an integer")?;
    time_claim(&claims, "iat").map_err(|()| "Jwt payload [iat] field is not an integer")?;
    let audiences = match claims.get("aud") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(aud)) => vec![aud.clone()],
        Some(Value::Array(items)) => {
            let strings: Option<Vec<String>> = items.iter().map(|v| v.as_str().map(str::to_owned)).collect();
            strings.ok_or("Jwt payload [aud] field is not a string or string list")?
        }
        Some(_) => return Err("Jwt payload [aud] field is not a string or string list"),
    };

    let signature = b64url_decode(signature).ok_or("Jwt signature is an invalid Base64url encoded")?;
    Ok(Parsed { signed, alg, kid, signature, payload: claims, iss, sub, audiences, exp, nbf })
}

fn string_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<String>, ()> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(()),
    }
}

/// A NumericDate: an integer, or a number with a fraction (truncated), as protobuf's `Struct`
/// reads it in Envoy.
fn time_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, ()> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                Ok(Some(i))
            } else if let Some(u) = n.as_u64() {
                Ok(Some(i64::try_from(u).unwrap_or(i64::MAX)))
            } else {
                match n.as_f64() {
                    // `as` saturates; NaN cannot come from JSON.
                    Some(f) if f.is_finite() => Ok(Some(f.trunc() as i64)),
                    _ => Err(()),
                }
            }
        }
        Some(_) => Err(()),
    }
}
