//! Mutual TLS towards an endpoint: which endpoints get it (a cluster's mode and the endpoint's
//! sidecar), whom the server must be, and the handshake.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use trellis_identity::SpiffeId;
use trellis_identity::tls::{Carries, MeshTls};
use trellis_xds::config as pb;

use crate::upstream::UpstreamError;

/// A cluster's mesh TLS: the identities its servers may present.
#[derive(Debug, PartialEq, Eq)]
pub struct ClusterTls {
    pub allowed: Arc<[SpiffeId]>,
    /// Tells pools apart: connections made for other identities are never shared.
    pub pool_id: u64,
    /// The peer's principal for the metrics, when exactly one identity is allowed (the
    /// handshake then proves it); made once, not per request.
    principal: Option<Arc<str>>,
}

impl ClusterTls {
    /// How its endpoints are reached, for the metrics.
    pub fn security(&self) -> crate::metrics::Security {
        crate::metrics::Security { mutual_tls: true, peer: self.principal.clone() }
    }
}

/// Whether a cluster's endpoints get mutual TLS.
#[derive(Debug, PartialEq, Eq)]
pub enum TlsPolicy {
    Plaintext,
    /// Endpoints marked `mesh_tls` (they have a sidecar).
    Auto(Arc<ClusterTls>),
    Always(Arc<ClusterTls>),
}

impl TlsPolicy {
    /// From a cluster's TLS settings and its endpoints' accounts. `SIMPLE` and `MUTUAL`
    /// (TLS to services outside the mesh) are not originated yet: trellisd warns about them,
    /// and they go as plaintext.
    pub fn compile(tls: Option<&pb::ClientTls>, service_accounts: &[String]) -> Result<TlsPolicy, String> {
        let mode = tls.map_or(pb::client_tls::Mode::Auto, |t| {
            pb::client_tls::Mode::try_from(t.mode).unwrap_or(pb::client_tls::Mode::Auto)
        });
        let names = match tls.map(|t| t.subject_alt_names.as_slice()) {
            Some(sans) if !sans.is_empty() => sans,
            _ => service_accounts,
        };
        let mut allowed = names
            .iter()
            .map(|n| SpiffeId::parse(n).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        allowed.sort();
        allowed.dedup();
        let pool_id = xxhash_rust::xxh64::xxh64(
            allowed.iter().map(ToString::to_string).collect::<Vec<_>>().join(",").as_bytes(),
            1,
        );
        let principal = match &allowed[..] {
            [one] => Some(one.to_string().into()),
            _ => None,
        };
        let cluster = Arc::new(ClusterTls { allowed: allowed.into(), pool_id, principal });
        Ok(match mode {
            pb::client_tls::Mode::Auto => TlsPolicy::Auto(cluster),
            pb::client_tls::Mode::IstioMutual => TlsPolicy::Always(cluster),
            pb::client_tls::Mode::Disable | pb::client_tls::Mode::Simple | pb::client_tls::Mode::Mutual => {
                TlsPolicy::Plaintext
            }
        })
    }

    /// The cluster TLS for one endpoint, if it gets mutual TLS.
    pub fn for_endpoint(&self, has_sidecar: bool) -> Option<&Arc<ClusterTls>> {
        match self {
            TlsPolicy::Always(c) => Some(c),
            TlsPolicy::Auto(c) if has_sidecar => Some(c),
            _ => None,
        }
    }
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The client handshake over `tcp` with the mesh certificate, verifying that the server is one
/// of `tls.allowed`.
pub async fn handshake(
    tcp: TcpStream,
    addr: SocketAddr,
    mesh: Option<&MeshTls>,
    tls: &ClusterTls,
    carries: Carries,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, UpstreamError> {
    let failed = |message: String| UpstreamError::Tls { addr, message };
    let mesh = mesh.ok_or_else(|| failed("this proxy has no mesh identity".into()))?;
    let config = mesh
        .client_config(carries, &tls.allowed)
        .ok_or_else(|| failed("no workload certificate yet".into()))?;
    // Mesh certificates carry no DNS names; the verifier checks the SPIFFE ID instead, and an
    // address as the name means no SNI is sent.
    let name = ServerName::IpAddress(addr.ip().into());
    let connecting = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(failed(e.to_string())),
        Err(_) => Err(failed("handshake timed out".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(mode: pb::client_tls::Mode, sans: &[&str]) -> pb::ClientTls {
        pb::ClientTls { mode: mode.into(), subject_alt_names: sans.iter().map(|s| (*s).to_owned()).collect() }
    }

    #[test]
    fn modes_pick_endpoints_and_names_override_the_accounts() {
        use pb::client_tls::Mode;
        let accounts = ["spiffe://cluster.local/ns/a/sa/web".to_owned()];
        let auto = TlsPolicy::compile(None, &accounts).unwrap();
        assert!(auto.for_endpoint(true).is_some() && auto.for_endpoint(false).is_none());
        let always = TlsPolicy::compile(Some(&tls(Mode::IstioMutual, &[])), &accounts).unwrap();
        assert!(always.for_endpoint(false).is_some());
        for plain in [Mode::Disable, Mode::Simple, Mode::Mutual] {
            assert_eq!(TlsPolicy::compile(Some(&tls(plain, &[])), &accounts).unwrap(), TlsPolicy::Plaintext);
        }
        let named = TlsPolicy::compile(
            Some(&tls(Mode::IstioMutual, &["spiffe://cluster.local/ns/a/sa/other"])),
            &accounts,
        )
        .unwrap();
        let cluster = named.for_endpoint(true).unwrap();
        assert_eq!(cluster.allowed[0].service_account, "other");
        assert_ne!(
            cluster.pool_id,
            auto.for_endpoint(true).unwrap().pool_id,
            "other identities, other pools"
        );
        let err = TlsPolicy::compile(None, &["web.example".to_owned()]).unwrap_err();
        assert!(err.contains("web.example"), "{err}");
    }
}
