//! The gRPC provider: `envoy.service.auth.v3.Authorization/Check` over plaintext HTTP/2, one
//! channel per address, made on the first check and kept for the next ones.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use tonic::transport::{Channel, Endpoint};
use trellis_xds::config as pb;
use trellis_xds::envoy::config::core::v3 as core;
use trellis_xds::envoy::service::auth::v3 as auth;

use super::{CheckPeer, ExtDecision, Failure, MAX_ANSWER_HEADERS, MAX_GRPC_ANSWER_BYTES, err};
use crate::config::ConfigError;

/// The longest a connection attempt waits before the next address is tried.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub(super) struct GrpcCheck {
    /// By address: how to reach it, and the channel once made (channels need a runtime, which
    /// compiling a configuration may not have).
    channels: Vec<(Endpoint, OnceLock<Channel>)>,
}

impl GrpcCheck {
    pub(super) fn compile(
        p: &pb::ExtAuthzProvider,
        timeout: Duration,
        field: &str,
    ) -> Result<GrpcCheck, ConfigError> {
        let origin = match p.service.rsplit('/').next().filter(|s| !s.is_empty()) {
            Some(host) => Some(
                format!("http://{host}")
                    .parse::<http::Uri>()
                    .ok()
                    .filter(|u| u.authority().is_some_and(|a| a.as_str() == host))
                    .ok_or_else(|| {
                        err(format!("{field}.service"), format!("{:?} is not a host name", p.service))
                    })?,
            ),
            None => None,
        };
        let mut channels = Vec::with_capacity(p.addresses.len());
        for (j, address) in p.addresses.iter().enumerate() {
            let mut endpoint = Endpoint::from_shared(format!("http://{address}"))
                .map_err(|e| err(format!("{field}.addresses[{j}]"), format!("{address:?}: {e}")))?
                .connect_timeout(timeout.min(MAX_CONNECT_TIMEOUT))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(10));
            if let Some(origin) = &origin {
                endpoint = endpoint.origin(origin.clone());
            }
            channels.push((endpoint, OnceLock::new()));
        }
        Ok(GrpcCheck { channels })
    }

    /// One Check at address `i`.
    pub(super) async fn ask(
        &self,
        i: usize,
        provider: &str,
        timeout: Duration,
        request: &http::request::Parts,
        peer: &CheckPeer,
    ) -> Result<ExtDecision, Failure> {
        let Some((endpoint, channel)) = self.channels.get(i) else {
            return Err(Failure::Other(format!("no address {i}")));
        };
        let channel = channel.get_or_init(|| endpoint.connect_lazy()).clone();
        let mut client = auth::authorization_client::AuthorizationClient::new(channel)
            .max_decoding_message_size(MAX_GRPC_ANSWER_BYTES);
        let mut check = tonic::Request::new(check_request(request, peer));
        // Tells the provider its deadline (`grpc-timeout`).
        check.set_timeout(timeout);
        match client.check(check).await {
            Ok(answer) => decide(provider, answer.into_inner()),
            // Not connected, or the connection broke: another address may answer, and a check
            // is safe to repeat.
            Err(status) if status.code() == tonic::Code::Unavailable => {
                Err(Failure::Connect(format!("unavailable: {}", status.message())))
            }
            // The deadline passed (tonic enforces `grpc-timeout` too, racing the caller's own
            // timer).
            Err(status)
                if matches!(status.code(), tonic::Code::Cancelled | tonic::Code::DeadlineExceeded) =>
            {
                Err(Failure::Other(format!(
                    "no answer within {timeout:?} (gRPC status {:?}: {})",
                    status.code(),
                    status.message()
                )))
            }
            Err(status) => Err(Failure::Other(format!(
                "Check failed with gRPC status {:?}: {}",
                status.code(),
                status.message()
            ))),
        }
    }
}

/// The request's attributes, as Envoy fills them: the peers' addresses and the client's
/// principal, and the HTTP request without its body. The headers map has lower-case keys,
/// repeated headers joined with commas (`cookie` with `; `), and the pseudo-headers
/// `:authority`, `:method`, `:path` and `:scheme` as Envoy's header map holds them.
pub(super) fn check_request(request: &http::request::Parts, peer: &CheckPeer) -> auth::CheckRequest {
    let mut headers = HashMap::with_capacity(request.headers.keys_len() + 4);
    for name in request.headers.keys() {
        let separator = if name == http::header::COOKIE { "; " } else { "," };
        let mut joined = String::new();
        for (k, value) in request.headers.get_all(name).iter().enumerate() {
            if k > 0 {
                joined.push_str(separator);
            }
            joined.push_str(&String::from_utf8_lossy(value.as_bytes()));
        }
        headers.insert(name.as_str().to_owned(), joined);
    }
    let host = super::request_host(request).unwrap_or_default().to_owned();
    let path = super::request_path(request).to_owned();
    // A request over mutual TLS was HTTPS to the client (Envoy's `:scheme` on the inbound side).
    let scheme = request
        .uri
        .scheme_str()
        .unwrap_or(if peer.principal.is_some() { "https" } else { "http" })
        .to_owned();
    let method = request.method.as_str().to_owned();
    headers.insert(":authority".to_owned(), host.clone());
    headers.insert(":method".to_owned(), method.clone());
    headers.insert(":path".to_owned(), path.clone());
    headers.insert(":scheme".to_owned(), scheme.clone());
    let id = headers.get("x-request-id").cloned().unwrap_or_default();
    let size = match request.headers.get(http::header::CONTENT_LENGTH) {
        Some(length) => length.to_str().ok().and_then(|l| l.trim().parse::<i64>().ok()).unwrap_or(-1),
        None if request.headers.contains_key(http::header::TRANSFER_ENCODING) => -1,
        None => 0,
    };
    let protocol = match request.version {
        http::Version::HTTP_10 | http::Version::HTTP_09 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "",
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let time = pbjson_types::Timestamp {
        seconds: i64::try_from(now.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(now.subsec_nanos()).unwrap_or(0),
    };
    auth::CheckRequest {
        attributes: Some(auth::AttributeContext {
            source: Some(peer_of(peer.source, peer.principal.clone().unwrap_or_default())),
            destination: Some(peer_of(peer.destination, String::new())),
            request: Some(auth::attribute_context::Request {
                time: Some(time),
                http: Some(auth::attribute_context::HttpRequest {
                    id,
                    method,
                    headers,
                    path,
                    host,
                    scheme,
                    size,
                    protocol: protocol.to_owned(),
                }),
            }),
        }),
    }
}

fn peer_of(address: std::net::SocketAddr, principal: String) -> auth::attribute_context::Peer {
    auth::attribute_context::Peer {
        address: Some(core::Address {
            address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                protocol: core::socket_address::Protocol::Tcp as i32,
                address: address.ip().to_string(),
                port_specifier: Some(core::socket_address::PortSpecifier::PortValue(u32::from(
                    address.port(),
                ))),
            })),
        }),
        service: String::new(),
        principal,
    }
}

/// The decision a `CheckResponse` carries, as Envoy reads it: status `OK` (or none) allows,
/// anything else denies with the `DeniedHttpResponse`'s status (403 when it has none).
pub(super) fn decide(provider: &str, answer: auth::CheckResponse) -> Result<ExtDecision, Failure> {
    use auth::check_response::HttpResponse;
    let code = answer.status.as_ref().map_or(0, |s| s.code);
    if code == tonic::Code::Ok as i32 {
        let headers = match &answer.http_response {
            Some(HttpResponse::OkResponse(ok)) => headers_of(&ok.headers)?,
            _ => Vec::new(),
        };
        return Ok(ExtDecision::Allow { headers });
    }
    let mut status = StatusCode::FORBIDDEN;
    let mut headers = Vec::new();
    let mut body = Bytes::new();
    if let Some(HttpResponse::DeniedResponse(denied)) = answer.http_response {
        if let Some(code) = denied.status.map(|s| s.code).filter(|c| *c > 0) {
            // A status that is not a final HTTP status cannot be sent: the default stands.
            status = u16::try_from(code)
                .ok()
                .filter(|c| (200..=599).contains(c))
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::FORBIDDEN);
        }
        headers = headers_of(&denied.headers)?;
        body = Bytes::from(denied.body);
    }
    let message = answer.status.map(|s| s.message).unwrap_or_default();
    let tonic_code = tonic::Code::from_i32(code);
    let reason = if message.is_empty() {
        format!("denied by ext_authz provider {provider:?} (gRPC status {tonic_code:?})")
    } else {
        format!("denied by ext_authz provider {provider:?} (gRPC status {tonic_code:?}: {message})")
    };
    Ok(ExtDecision::Deny { status, headers, body, reason })
}

/// The headers of an answer. Pseudo-headers, `host` and the headers that frame a message are
/// not the provider's to set and are skipped; an empty value is dropped unless
/// `keep_empty_value`; a name or value that is not valid HTTP makes the answer malformed (a
/// header the app relies on must not silently go missing).
fn headers_of(list: &[core::HeaderValueOption]) -> Result<Vec<(HeaderName, HeaderValue)>, Failure> {
    if list.len() > MAX_ANSWER_HEADERS {
        return Err(Failure::Other(format!("answer has {} headers, over {MAX_ANSWER_HEADERS}", list.len())));
    }
    let mut headers = Vec::with_capacity(list.len());
    for option in list {
        let Some(header) = &option.header else { continue };
        if header.key.starts_with(':') {
            continue;
        }
        let name = HeaderName::from_bytes(header.key.as_bytes())
            .map_err(|_| Failure::Other(format!("answer has a bad header name {:?}", header.key)))?;
        if super::is_framing(&name) || name == http::header::HOST {
            continue;
        }
        let value =
            if header.value.is_empty() { header.raw_value.as_slice() } else { header.value.as_bytes() };
        if value.is_empty() && !option.keep_empty_value {
            continue;
        }
        let value = HeaderValue::from_bytes(value)
            .map_err(|_| Failure::Other(format!("answer has a bad value for header {name}")))?;
        headers.push((name, value));
    }
    Ok(headers)
}
