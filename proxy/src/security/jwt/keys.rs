//! The JSON Web Key Set a provider verifies with, and the ring-backed `jsonwebtoken`
//! `CryptoProvider` that verifies: jsonwebtoken 10 and later ship backends for aws-lc-rs and
//! RustCrypto only, and the proxy's one crypto library is ring (rustls's provider).

use std::fmt;

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::signature::{self, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::signature as rs;

use super::b64url_decode;

/// Verification only: the proxy signs no tokens, and `KeyUtils` (thumbprints, JWKs from
/// private keys) is not used.
pub(super) static RING_PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: no_signer,
    verifier_factory: ring_verifier,
    key_utils: KeyUtils::new_unimplemented(),
};

fn no_signer(_: &Algorithm, _: &EncodingKey) -> jsonwebtoken::errors::Result<Box<dyn JwtSigner>> {
    Err(ErrorKind::Provider("the proxy's JWT provider only verifies".to_owned()).into())
}

fn ring_verifier(
    algorithm: &Algorithm,
    key: &DecodingKey,
) -> jsonwebtoken::errors::Result<Box<dyn JwtVerifier>> {
    if key.family() != algorithm.family() {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    let (rsa, unparsed): (Option<&'static rs::RsaParameters>, &'static dyn rs::VerificationAlgorithm) =
        match algorithm {
            Algorithm::RS256 => (Some(&rs::RSA_PKCS1_2048_8192_SHA256), &rs::RSA_PKCS1_2048_8192_SHA256),
            Algorithm::RS384 => (Some(&rs::RSA_PKCS1_2048_8192_SHA384), &rs::RSA_PKCS1_2048_8192_SHA384),
            Algorithm::RS512 => (Some(&rs::RSA_PKCS1_2048_8192_SHA512), &rs::RSA_PKCS1_2048_8192_SHA512),
            Algorithm::PS256 => (Some(&rs::RSA_PSS_2048_8192_SHA256), &rs::RSA_PSS_2048_8192_SHA256),
            Algorithm::PS384 => (Some(&rs::RSA_PSS_2048_8192_SHA384), &rs::RSA_PSS_2048_8192_SHA384),
            Algorithm::PS512 => (Some(&rs::RSA_PSS_2048_8192_SHA512), &rs::RSA_PSS_2048_8192_SHA512),
            Algorithm::ES256 => (None, &rs::ECDSA_P256_SHA256_FIXED),
            Algorithm::ES384 => (None, &rs::ECDSA_P384_SHA384_FIXED),
            Algorithm::EdDSA => (None, &rs::ED25519),
            // HMAC: JWKS `oct` keys are not accepted (see `Key::from_jwk`).
            _ => return Err(ErrorKind::UnsupportedAlgorithm.into()),
        };
    let key = match (key.kind(), rsa) {
        (DecodingKeyKind::RsaModulusExponent { n, e }, Some(params)) => {
            // ring takes the big-endian integers without leading zeros; JWKs often have one.
            let (n, e) = (strip_leading_zeros(n), strip_leading_zeros(e));
            RingKey::RsaComponents { params, n: n.to_vec(), e: e.to_vec() }
        }
        (DecodingKeyKind::SecretOrDer(bytes), _) => RingKey::Unparsed { alg: unparsed, bytes: bytes.clone() },
        _ => return Err(ErrorKind::InvalidKeyFormat.into()),
    };
    Ok(Box::new(RingVerifier { algorithm: *algorithm, key }))
}

enum RingKey {
    RsaComponents {
        params: &'static rs::RsaParameters,
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// An EC point (`04 || x || y`), an Ed25519 key, or an RSA public key's DER.
    Unparsed {
        alg: &'static dyn rs::VerificationAlgorithm,
        bytes: Vec<u8>,
    },
}

struct RingVerifier {
    algorithm: Algorithm,
    key: RingKey,
}

impl Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, message: &[u8], sig: &Vec<u8>) -> Result<(), signature::Error> {
        let verified = match &self.key {
            RingKey::RsaComponents { params, n, e } => {
                rs::RsaPublicKeyComponents { n: n.as_slice(), e: e.as_slice() }.verify(params, message, sig)
            }
            RingKey::Unparsed { alg, bytes } => rs::UnparsedPublicKey::new(*alg, bytes).verify(message, sig),
        };
        verified.map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

/// One usable key of a JWKS.
pub(super) struct Key {
    pub kid: Option<String>,
    /// The key's `alg`, when it names one: the token's must be the same.
    pub alg: Option<Algorithm>,
    /// For EC keys: the only algorithm its curve signs with.
    pub curve_alg: Option<Algorithm>,
    pub key: DecodingKey,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("family", &self.key.family())
            .finish()
    }
}

impl Key {
    /// Whether a token signed with `alg` may be checked with this key, as Envoy picks keys:
    /// the kids must agree when both have one, and so must the algorithms.
    pub fn matches(&self, alg: Algorithm, kid: Option<&str>) -> bool {
        let kid_ok = match (kid, self.kid.as_deref()) {
            (Some(token), Some(key)) => token == key,
            _ => true,
        };
        kid_ok && self.alg.is_none_or(|a| a == alg)
    }

    /// Whether the key can verify `alg` at all (family, and curve for EC).
    pub fn can_verify(&self, alg: Algorithm) -> bool {
        self.key.family() == alg.family() && self.curve_alg.is_none_or(|a| a == alg)
    }

    pub fn verify(&self, alg: Algorithm, message: &[u8], sig: &Vec<u8>) -> bool {
        match (RING_PROVIDER.verifier_factory)(&alg, &self.key) {
            Ok(verifier) => verifier.verify(message, sig).is_ok(),
            Err(_) => false,
        }
    }

    fn from_jwk(value: &serde_json::Value) -> Result<Key, String> {
        let jwk: Jwk = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            return Err("an encryption key (\"use\": \"enc\")".to_owned());
        }
        let alg = match jwk.common.key_algorithm {
            None => None,
            Some(a) => Some(Algorithm::try_from(a).map_err(|_| format!("\"alg\" {a:?} is not supported"))?),
        };
        let (family, curve_alg) = match &jwk.algorithm {
            AlgorithmParameters::RSA(p) => {
                let n = b64url_decode(&p.n).ok_or("\"n\" is not base64url")?;
                let e = b64url_decode(&p.e).ok_or("\"e\" is not base64url")?;
                let bits = significant_bits(&n);
                if !(2048..=8192).contains(&bits) {
                    return Err(format!("a {bits}-bit RSA key (2048 to 8192 bits are supported)"));
                }
                if e.is_empty() || e.len() > 4 {
                    return Err("\"e\" is not a valid RSA exponent".to_owned());
                }
                (AlgorithmFamily::Rsa, None)
            }
            AlgorithmParameters::EllipticCurve(p) => {
                let (curve_alg, len) = match p.curve {
                    EllipticCurve::P256 => (Algorithm::ES256, 32),
                    EllipticCurve::P384 => (Algorithm::ES384, 48),
                    ref other => return Err(format!("curve {other:?} is not supported (P-256, P-384 are)")),
                };
                let x = b64url_decode(&p.x).ok_or("\"x\" is not base64url")?;
                let y = b64url_decode(&p.y).ok_or("\"y\" is not base64url")?;
                if x.len() != len || y.len() != len {
                    return Err(format!("\"x\" and \"y\" must be {len} bytes for this curve"));
                }
                (AlgorithmFamily::Ec, Some(curve_alg))
            }
            AlgorithmParameters::OctetKeyPair(p) => {
                if p.curve != EllipticCurve::Ed25519 {
                    return Err(format!("OKP curve {:?} is not supported (Ed25519 is)", p.curve));
                }
                let x = b64url_decode(&p.x).ok_or("\"x\" is not base64url")?;
                if x.len() != 32 {
                    return Err("an Ed25519 \"x\" must be 32 bytes".to_owned());
                }
                (AlgorithmFamily::Ed, None)
            }
            AlgorithmParameters::OctetKey(_) => {
                return Err("symmetric (\"kty\": \"oct\") keys are not supported".to_owned());
            }
            _ => return Err("\"kty\" is not supported (RSA, EC, OKP are)".to_owned()),
        };
        if let Some(a) = alg
            && (a.family() != family || curve_alg.is_some_and(|c| c != a))
        {
            return Err(format!("\"alg\" {a:?} does not fit the key"));
        }
        let key = DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())?;
        Ok(Key { kid: jwk.common.key_id, alg, curve_alg, key })
    }
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

fn significant_bits(bytes: &[u8]) -> usize {
    match bytes.iter().position(|b| *b != 0) {
        Some(i) => (bytes.len() - i) * 8 - bytes[i].leading_zeros() as usize,
        None => 0,
    }
}

/// Parses a JWKS (`{"keys": [...]}`), keeping the keys that can verify; as Envoy, a key that
/// cannot is skipped, and a set with none is an error (saying why each was skipped).
pub(super) fn parse_jwks(text: &str) -> Result<Vec<Key>, String> {
    if text.trim().is_empty() {
        return Err("required: the JSON Web Key Set (trellisd inlines what jwksUri served)".to_owned());
    }
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not a JSON Web Key Set: {e}"))?;
    let Some(keys) = value.get("keys") else {
        return Err("not a JSON Web Key Set: no \"keys\"".to_owned());
    };
    let Some(keys) = keys.as_array() else {
        return Err("not a JSON Web Key Set: \"keys\" is not an array".to_owned());
    };
    let mut usable = Vec::new();
    let mut skipped = Vec::new();
    for (i, value) in keys.iter().enumerate() {
        match Key::from_jwk(value) {
            Ok(key) => usable.push(key),
            Err(why) => skipped.push(format!("keys[{i}]: {why}")),
        }
    }
    if usable.is_empty() {
        if skipped.is_empty() {
            return Err("the key set has no keys".to_owned());
        }
        skipped.truncate(4);
        return Err(format!("no usable key ({})", skipped.join("; ")));
    }
    Ok(usable)
}
