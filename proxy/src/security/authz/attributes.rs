//! What an authorization decision looks at: the connection (peer identity, addresses, port,
//! SNI) and, for HTTP, the request and the identity its JWT proved.

use std::net::IpAddr;

use http::HeaderMap;
use trellis_identity::SpiffeId;

/// A request's or a connection's attributes.
pub struct Attributes<'a> {
    /// The mutual TLS peer, verified.
    pub peer: Option<&'a SpiffeId>,
    /// Its principal as Istio writes it: the SPIFFE ID without `spiffe://`.
    pub peer_principal: Option<&'a str>,
    /// The connection's source address.
    pub source_ip: IpAddr,
    /// The address the client dialed and the workload's port.
    pub destination_ip: IpAddr,
    pub destination_port: u16,
    pub sni: Option<&'a str>,
    /// `None` on an opaque TCP connection.
    pub http: Option<HttpAttributes<'a>>,
}

pub struct HttpAttributes<'a> {
    pub method: &'a str,
    /// `:authority` (or `Host`).
    pub host: &'a str,
    /// Normalized, without the query.
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    /// What RequestAuthentication proved of the request's JWT.
    pub auth: Option<&'a RequestAuth>,
}

/// A verified JWT's identity, as AuthorizationPolicy reads it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestAuth {
    /// `<iss>/<sub>`.
    pub principal: String,
    pub audiences: Vec<String>,
    /// `azp`.
    pub presenter: Option<String>,
    /// The payload. Claims that are split on spaces for authorization (`scope`, `permission`,
    /// and the provider's `spaceDelimitedClaims`) are already arrays of their words.
    pub claims: serde_json::Map<String, serde_json::Value>,
}

impl RequestAuth {
    /// The string values of the claim at `path` (nested objects by name): a string is one
    /// value, an array of strings several; anything else none.
    pub fn claim_values(&self, path: &[String]) -> Vec<&str> {
        let Some((first, rest)) = path.split_first() else { return Vec::new() };
        let mut value = self.claims.get(first);
        for name in rest {
            value = value.and_then(|v| v.get(name));
        }
        match value {
            Some(serde_json::Value::String(s)) => vec![s.as_str()],
            Some(serde_json::Value::Array(items)) => items.iter().filter_map(|v| v.as_str()).collect(),
            Some(serde_json::Value::Bool(b)) => vec![if *b { "true" } else { "false" }],
            _ => Vec::new(),
        }
    }
}
