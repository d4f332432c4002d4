//! What the app learns of a mutual TLS peer: `x-forwarded-client-cert`, as Istio's inbound
//! sidecar writes it (By, Hash, Subject, URI), made once per connection.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use rustls::pki_types::CertificateDer;

pub static X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// The verified peer of a connection.
#[derive(Clone, Debug)]
pub struct Peer {
    /// Its SPIFFE ID (`source_principal`).
    pub principal: Arc<str>,
    /// The same, parsed, for authorization.
    pub id: trellis_identity::SpiffeId,
    xfcc: HeaderValue,
}

impl Peer {
    /// From the certificates the peer presented (leaf first); `own` is this proxy's identity.
    pub fn new(certs: &[CertificateDer<'_>], own: &str) -> Option<Peer> {
        let leaf = certs.first()?;
        let parsed = trellis_identity::cert::peer_id(certs)?;
        let id = parsed.to_string();
        let digest = ring::digest::digest(&ring::digest::SHA256, leaf);
        let hash: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        // Mesh certificates have an empty subject; Envoy writes it quoted.
        let value = format!("By={own};Hash={hash};Subject=\"\";URI={id}");
        let xfcc = HeaderValue::try_from(value).ok()?;
        Some(Peer { principal: id.into(), id: parsed, xfcc })
    }

    /// The principal as AuthorizationPolicy writes it: without `spiffe://`.
    pub fn istio_principal(&self) -> &str {
        self.principal.strip_prefix("spiffe://").unwrap_or(&self.principal)
    }

    /// Appends this connection's element (Istio's APPEND_FORWARD on the inbound side).
    pub fn append_to(&self, headers: &mut HeaderMap) {
        match headers.entry(&X_FORWARDED_CLIENT_CERT) {
            http::header::Entry::Occupied(mut existing) => {
                let mut chain = existing.get().as_bytes().to_vec();
                chain.push(b',');
                chain.extend_from_slice(self.xfcc.as_bytes());
                if let Ok(value) = HeaderValue::from_bytes(&chain) {
                    existing.insert(value);
                }
            }
            http::header::Entry::Vacant(vacant) => {
                vacant.insert(self.xfcc.clone());
            }
        }
    }
}

/// Outbound requests lose any client certificate header the app set (Envoy's SANITIZE): only
/// the receiving proxy speaks for who the caller is.
pub fn sanitize(headers: &mut HeaderMap) {
    headers.remove(&X_FORWARDED_CLIENT_CERT);
}
