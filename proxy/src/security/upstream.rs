//! TLS towards an endpoint: which endpoints get the mesh's mutual TLS (a cluster's mode and the
//! endpoint's sidecar) and whom the server must be, TLS origination for `SIMPLE` and `MUTUAL`,
//! and the handshake.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use trellis_identity::SpiffeId;
use trellis_identity::origination::{Origination, Settings};
use trellis_identity::tls::{Carries, MeshTls};
use trellis_xds::config as pb;

use crate::upstream::UpstreamError;

/// A cluster's TLS towards its endpoints: the mesh's mutual TLS, or TLS origination with a
/// DestinationRule's own files.
#[derive(Debug)]
pub struct ClusterTls {
    /// Tells pools apart: connections made for other identities or settings are never shared.
    /// A digest of everything the handshake depends on, files' contents included.
    pub pool_id: u64,
    /// The peer's principal for the metrics, when exactly one identity is allowed (the
    /// handshake then proves it); made once, not per request.
    principal: Option<Arc<str>>,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// Mesh certificates both ways; the server must be one of these identities. With a
    /// server name (a DestinationRule's ISTIO_MUTUAL `sni`), it is sent, so that a gateway
    /// picks its server by it (Istio's egress gateway); without, none is.
    Mesh(Arc<[SpiffeId]>, Option<ServerName<'static>>),
    Originate(Arc<Origination>),
    /// Origination whose settings could not be loaded: every connection fails with this, and
    /// nothing is sent in plaintext instead.
    Unusable(Arc<str>),
}

impl PartialEq for ClusterTls {
    fn eq(&self, other: &Self) -> bool {
        self.pool_id == other.pool_id
    }
}

impl Eq for ClusterTls {}

impl ClusterTls {
    fn mesh(allowed: Vec<SpiffeId>, sni: Option<ServerName<'static>>) -> ClusterTls {
        let names: Vec<String> = allowed.iter().map(ToString::to_string).collect();
        let principal = match &names[..] {
            [one] => Some(one.as_str().into()),
            _ => None,
        };
        let sni_text = sni.as_ref().map(|n| n.to_str().into_owned()).unwrap_or_default();
        ClusterTls {
            pool_id: digest(&["mesh", &names.join(","), &sni_text]),
            principal,
            kind: Kind::Mesh(allowed.into(), sni),
        }
    }

    /// How its endpoints are reached, for the metrics: only the mesh's TLS is mutual TLS
    /// between workloads.
    pub fn security(&self) -> crate::metrics::Security {
        crate::metrics::Security {
            mutual_tls: matches!(self.kind, Kind::Mesh(..)),
            peer: self.principal.clone(),
        }
    }

    /// Why no connection can be made with these settings, checked before dialing so that a
    /// broken origination never opens a connection.
    pub fn usable(&self) -> Result<(), &str> {
        match &self.kind {
            Kind::Unusable(message) => Err(message),
            _ => Ok(()),
        }
    }

    /// The identities a mesh server may present (none for origination).
    pub fn allowed(&self) -> &[SpiffeId] {
        match &self.kind {
            Kind::Mesh(allowed, _) => allowed,
            _ => &[],
        }
    }
}

fn digest(parts: &[&str]) -> u64 {
    let mut hasher = xxhash_rust::xxh64::Xxh64::new(1);
    for part in parts {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.digest()
}

/// Whether a cluster's endpoints get TLS.
#[derive(Debug, PartialEq, Eq)]
pub enum TlsPolicy {
    Plaintext,
    /// Endpoints marked `mesh_tls` (they have a sidecar).
    Auto(Arc<ClusterTls>),
    Always(Arc<ClusterTls>),
}

impl TlsPolicy {
    /// From a cluster's TLS settings, its endpoints' accounts and its host (the default SNI
    /// name for origination). Origination files are read here, on each configuration, so a
    /// replaced file applies with the next one; a file that cannot be used makes every
    /// connection of the cluster fail, saying why, rather than the whole configuration.
    pub fn compile(
        tls: Option<&pb::ClientTls>,
        service_accounts: &[String],
        host: &str,
    ) -> Result<TlsPolicy, String> {
        use pb::client_tls::Mode;
        let mode = tls.map_or(Mode::Auto, |t| Mode::try_from(t.mode).unwrap_or(Mode::Auto));
        let mesh = |tls: Option<&pb::ClientTls>| -> Result<Arc<ClusterTls>, String> {
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
            // A name that is not a DNS name is not sent (as without one); the identity is
            // still verified.
            let sni = tls
                .filter(|t| !t.sni.is_empty())
                .and_then(|t| ServerName::try_from(t.sni.clone()).ok())
                .filter(|n| matches!(n, ServerName::DnsName(_)));
            Ok(Arc::new(ClusterTls::mesh(allowed, sni)))
        };
        Ok(match (mode, tls) {
            (Mode::Auto, _) => TlsPolicy::Auto(mesh(tls)?),
            (Mode::IstioMutual, _) => TlsPolicy::Always(mesh(tls)?),
            (Mode::Simple | Mode::Mutual, Some(tls)) => {
                TlsPolicy::Always(Arc::new(originate(tls, mode, host)))
            }
            (Mode::Disable | Mode::Simple | Mode::Mutual, _) => TlsPolicy::Plaintext,
        })
    }

    /// The cluster TLS for one endpoint, if it gets TLS.
    pub fn for_endpoint(&self, has_sidecar: bool) -> Option<&Arc<ClusterTls>> {
        match self {
            TlsPolicy::Always(c) => Some(c),
            TlsPolicy::Auto(c) if has_sidecar => Some(c),
            _ => None,
        }
    }
}

/// `SIMPLE` or `MUTUAL`: the files read and the client configs built, or why they could not be.
fn originate(tls: &pb::ClientTls, mode: pb::client_tls::Mode, host: &str) -> ClusterTls {
    let read = |field: &str, path: &str| -> Result<Option<String>, String> {
        if path.is_empty() {
            return Ok(None);
        }
        std::fs::read_to_string(path).map(Some).map_err(|e| format!("{field} {path}: {e}"))
    };
    let loaded = (|| -> Result<(Settings, Vec<String>), String> {
        let ca_certificates = read("caCertificates", &tls.ca_certificates)?;
        let client_certificate = match mode {
            pb::client_tls::Mode::Mutual => {
                let chain = read("clientCertificate", &tls.client_certificate)?
                    .ok_or("clientCertificate: required for MUTUAL")?;
                let key = read("privateKey", &tls.private_key)?.ok_or("privateKey: required for MUTUAL")?;
                Some((chain, key))
            }
            _ => None,
        };
        let sni = if tls.sni.is_empty() { host.to_owned() } else { tls.sni.clone() };
        // What the pool id covers: every setting, and the files' contents.
        let mut parts = vec![format!("{mode:?}"), sni.clone(), tls.insecure_skip_verify.to_string()];
        parts.extend(ca_certificates.iter().cloned());
        if let Some((chain, key)) = &client_certificate {
            parts.extend([chain.clone(), key.clone()]);
        }
        parts.extend(tls.subject_alt_names.iter().cloned());
        let settings = Settings {
            ca_certificates,
            client_certificate,
            sni,
            subject_alt_names: tls.subject_alt_names.clone(),
            insecure_skip_verify: tls.insecure_skip_verify,
        };
        Ok((settings, parts))
    })();
    let built = loaded.and_then(|(settings, parts)| Ok((Origination::new(&settings)?, parts)));
    match built {
        Ok((origination, parts)) => {
            let parts: Vec<&str> =
                std::iter::once("originate").chain(parts.iter().map(String::as_str)).collect();
            ClusterTls {
                pool_id: digest(&parts),
                principal: None,
                kind: Kind::Originate(Arc::new(origination)),
            }
        }
        Err(message) => {
            tracing::warn!(host, %message, "DestinationRule TLS origination cannot be set up; connections to this destination fail until it can");
            let message: Arc<str> = format!("TLS origination to {host}: {message}").into();
            ClusterTls {
                pool_id: digest(&["unusable", &message]),
                principal: None,
                kind: Kind::Unusable(message),
            }
        }
    }
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The client handshake over `tcp`: the mesh certificate, verifying that the server is one of
/// the allowed identities, or origination with the cluster's own settings.
pub async fn handshake(
    tcp: TcpStream,
    addr: SocketAddr,
    mesh: Option<&MeshTls>,
    tls: &ClusterTls,
    carries: Carries,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, UpstreamError> {
    let failed = |message: String| UpstreamError::Tls { addr, message };
    let (config, name) = match &tls.kind {
        Kind::Mesh(allowed, sni) => {
            let mesh = mesh.ok_or_else(|| failed("this proxy has no mesh identity".into()))?;
            let config = mesh
                .client_config(carries, allowed)
                .ok_or_else(|| failed("no workload certificate yet".into()))?;
            // Mesh certificates carry no DNS names; the verifier checks the SPIFFE ID instead
            // of the name, and an address as the name means no SNI is sent.
            (config, sni.clone().unwrap_or_else(|| ServerName::IpAddress(addr.ip().into())))
        }
        Kind::Originate(origination) => origination.client_config(carries),
        Kind::Unusable(message) => return Err(failed(message.to_string())),
    };
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

    const HOST: &str = "api.example.com";

    fn tls(mode: pb::client_tls::Mode, sans: &[&str]) -> pb::ClientTls {
        pb::ClientTls {
            mode: mode.into(),
            subject_alt_names: sans.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn modes_pick_endpoints_and_names_override_the_accounts() {
        use pb::client_tls::Mode;
        let accounts = ["spiffe://cluster.local/ns/a/sa/web".to_owned()];
        let auto = TlsPolicy::compile(None, &accounts, HOST).unwrap();
        assert!(auto.for_endpoint(true).is_some() && auto.for_endpoint(false).is_none());
        let always = TlsPolicy::compile(Some(&tls(Mode::IstioMutual, &[])), &accounts, HOST).unwrap();
        assert!(always.for_endpoint(false).is_some());
        assert_eq!(
            TlsPolicy::compile(Some(&tls(Mode::Disable, &[])), &accounts, HOST).unwrap(),
            TlsPolicy::Plaintext
        );
        let named = TlsPolicy::compile(
            Some(&tls(Mode::IstioMutual, &["spiffe://cluster.local/ns/a/sa/other"])),
            &accounts,
            HOST,
        )
        .unwrap();
        let cluster = named.for_endpoint(true).unwrap();
        assert_eq!(cluster.allowed()[0].service_account, "other");
        assert_ne!(
            cluster.pool_id,
            auto.for_endpoint(true).unwrap().pool_id,
            "other identities, other pools"
        );
        let err = TlsPolicy::compile(None, &["web.example".to_owned()], HOST).unwrap_err();
        assert!(err.contains("web.example"), "{err}");
    }

    #[test]
    fn origination_that_cannot_be_set_up_fails_connections_instead_of_sending_plaintext() {
        use pb::client_tls::Mode;
        for mode in [Mode::Simple, Mode::Mutual] {
            let missing = pb::ClientTls {
                mode: mode.into(),
                ca_certificates: "/nonexistent/ca.pem".into(),
                client_certificate: "/nonexistent/cert.pem".into(),
                private_key: "/nonexistent/key.pem".into(),
                ..Default::default()
            };
            let policy = TlsPolicy::compile(Some(&missing), &[], HOST).unwrap();
            let cluster = policy.for_endpoint(false).expect("every endpoint gets TLS");
            let Kind::Unusable(message) = &cluster.kind else { panic!("{cluster:?}") };
            assert!(message.contains("caCertificates /nonexistent/ca.pem"), "{message}");
            assert!(!cluster.security().mutual_tls);
        }
        let no_key = pb::ClientTls { mode: Mode::Mutual.into(), ..Default::default() };
        let policy = TlsPolicy::compile(Some(&no_key), &[], HOST).unwrap();
        let Kind::Unusable(message) = &policy.for_endpoint(true).unwrap().kind else { panic!() };
        assert!(message.contains("clientCertificate: required for MUTUAL"), "{message}");
    }
}
