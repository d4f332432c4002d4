//! The inbound port's side of mutual TLS: which mode applies to a workload port
//! (PeerAuthentication, resolved by the control plane), what to do with a new connection given
//! its first bytes, and the server handshake.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use trellis_identity::tls::{MeshTls, alpn};
use trellis_xds::config as pb;

use crate::config::ConfigError;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    #[default]
    Permissive,
    Strict,
    Disable,
}

impl Mode {
    fn from_pb(value: i32, field: &str) -> Result<Mode, ConfigError> {
        // An unknown mode is refused rather than read as the default: reading a stricter
        // setting as PERMISSIVE would quietly open the port.
        match pb::MtlsMode::try_from(value) {
            Ok(pb::MtlsMode::Permissive) => Ok(Mode::Permissive),
            Ok(pb::MtlsMode::Strict) => Ok(Mode::Strict),
            Ok(pb::MtlsMode::Disable) => Ok(Mode::Disable),
            Err(_) => {
                Err(ConfigError { field: field.to_owned(), message: format!("unknown mTLS mode {value}") })
            }
        }
    }
}

/// The workload's modes: one for the workload, and per container port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InboundTls {
    workload: Mode,
    ports: HashMap<u16, Mode>,
}

impl InboundTls {
    pub fn compile(config: Option<&pb::InboundTls>) -> Result<InboundTls, ConfigError> {
        let Some(config) = config else { return Ok(InboundTls::default()) };
        let workload = Mode::from_pb(config.mode, "inbound_tls.mode")?;
        let mut ports = HashMap::new();
        for (port, mode) in &config.ports {
            let field = format!("inbound_tls.ports[{port}]");
            let number = u16::try_from(*port).ok().filter(|p| *p != 0).ok_or_else(|| ConfigError {
                field: field.clone(),
                message: format!("{port} is not a port"),
            })?;
            ports.insert(number, Mode::from_pb(*mode, &field)?);
        }
        Ok(InboundTls { workload, ports })
    }

    /// The mode for a connection to `port` of the workload (the workload's own when unknown).
    pub fn mode_for(&self, port: Option<u16>) -> Mode {
        port.and_then(|p| self.ports.get(&p).copied()).unwrap_or(self.workload)
    }
}

/// What to do with a new inbound connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Serve as it is (plaintext, or TLS that is the app's own).
    AsIs,
    /// Terminate mutual TLS, then serve what it carries.
    Terminate,
    /// Close it: the policy does not let it in.
    Refuse(&'static str),
}

/// Decides from the mode and whether the connection opened with a TLS ClientHello (and, for
/// PERMISSIVE, whether that hello offers Istio's ALPN values).
pub async fn decide(stream: &TcpStream, mode: Mode, starts_with_tls: bool) -> Decision {
    if let Some(decision) = decide_without_hello(mode, starts_with_tls) {
        return decision;
    }
    let hello = crate::detect::client_hello(stream, HELLO_DEADLINE).await;
    let offered: Vec<&[u8]> =
        hello.as_ref().map(|h| h.alpn.iter().map(Vec::as_slice).collect()).unwrap_or_default();
    if alpn::is_mesh(&offered) { Decision::Terminate } else { Decision::AsIs }
}

/// What the mode decides without reading the ClientHello; `None` for PERMISSIVE TLS, which
/// depends on the hello's ALPN values ([`decide`]).
pub fn decide_without_hello(mode: Mode, starts_with_tls: bool) -> Option<Decision> {
    match (mode, starts_with_tls) {
        (Mode::Permissive, true) => None,
        (Mode::Strict, true) => Some(Decision::Terminate),
        (Mode::Strict, false) => Some(Decision::Refuse("plaintext")),
        (Mode::Disable, _) | (Mode::Permissive, false) => Some(Decision::AsIs),
    }
}

const HELLO_DEADLINE: Duration = Duration::from_secs(1);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a terminated connection carries, from the ALPN value the handshake settled on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carried {
    Http1,
    Http2,
    Tcp,
}

/// A terminated mesh connection and who is on the other side.
pub struct Terminated {
    pub stream: tokio_rustls::server::TlsStream<TcpStream>,
    pub carried: Carried,
    pub peer: Option<crate::security::xfcc::Peer>,
}

/// The server handshake with the workload certificate; the client must present a certificate
/// of this trust domain. An error says why, for the log and the refusal counter.
pub async fn terminate(stream: TcpStream, mesh: Option<&Arc<MeshTls>>) -> Result<Terminated, &'static str> {
    let mesh = mesh.ok_or("no mesh identity")?;
    let config = mesh.server_config().ok_or("no workload certificate yet")?;
    let accepting = tokio_rustls::TlsAcceptor::from(config).accept(stream);
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, accepting).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "inbound mTLS handshake failed");
            return Err("handshake");
        }
        Err(_) => return Err("handshake timeout"),
    };
    let session = stream.get_ref().1;
    let carried = match session.alpn_protocol() {
        Some(p) if p == alpn::H2 => Carried::Http2,
        Some(p) if p == alpn::HTTP11 => Carried::Http1,
        _ => Carried::Tcp,
    };
    let own = mesh.current().map(|c| c.leaf.id.to_string()).unwrap_or_default();
    let peer = session.peer_certificates().and_then(|certs| crate::security::xfcc::Peer::new(certs, &own));
    Ok(Terminated { stream, carried, peer })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_resolve_by_port_and_bad_values_are_refused_by_field() {
        let config = pb::InboundTls {
            mode: pb::MtlsMode::Strict.into(),
            ports: [(8080, pb::MtlsMode::Disable.into())].into(),
        };
        let tls = InboundTls::compile(Some(&config)).unwrap();
        assert_eq!(tls.mode_for(Some(8080)), Mode::Disable);
        assert_eq!(tls.mode_for(Some(9090)), Mode::Strict);
        assert_eq!(tls.mode_for(None), Mode::Strict);
        assert_eq!(InboundTls::compile(None).unwrap().mode_for(Some(80)), Mode::Permissive);

        let unknown = pb::InboundTls { mode: 7, ..Default::default() };
        let err = InboundTls::compile(Some(&unknown)).unwrap_err();
        assert_eq!((err.field.as_str(), err.message.as_str()), ("inbound_tls.mode", "unknown mTLS mode 7"));
        for port in [0, 70000] {
            let bad = pb::InboundTls { ports: [(port, 1)].into(), ..Default::default() };
            assert_eq!(
                InboundTls::compile(Some(&bad)).unwrap_err().field,
                format!("inbound_tls.ports[{port}]")
            );
        }
    }

    #[test]
    fn only_permissive_tls_needs_the_hello() {
        assert_eq!(decide_without_hello(Mode::Permissive, true), None);
        assert_eq!(decide_without_hello(Mode::Permissive, false), Some(Decision::AsIs));
        assert_eq!(decide_without_hello(Mode::Strict, true), Some(Decision::Terminate));
        assert_eq!(decide_without_hello(Mode::Strict, false), Some(Decision::Refuse("plaintext")));
        assert_eq!(decide_without_hello(Mode::Disable, true), Some(Decision::AsIs));
    }
}
