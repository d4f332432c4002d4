//! What the inbound side checks before a request or connection reaches the app, in Istio's
//! order: AuthorizationPolicy's CUSTOM, DENY and ALLOW (`authz`), with AUDIT and dry-run
//! recorded. Compiled with the configuration; a workload without policies skips all of it.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use trellis_xds::config as pb;

use crate::Proxy;
use crate::config::ConfigError;
use crate::forward::full;
use crate::metrics::AuthzLabels;
use crate::serve::Conn;
use crate::upstream::Body;

use super::authz::{Attributes, Authorization, DecidedBy, Decision, HttpAttributes};

/// The body Istio's sidecars answer a denied request with.
pub const DENIED_BODY: &str = "RBAC: access denied";

/// The inbound policies of this workload.
#[derive(Debug, Default)]
pub struct InboundPolicy {
    pub authorization: Authorization,
}

impl InboundPolicy {
    pub fn compile(config: &pb::ProxyConfig) -> Result<InboundPolicy, ConfigError> {
        Ok(InboundPolicy { authorization: Authorization::compile(&config.authorization)? })
    }

    pub fn is_empty(&self) -> bool {
        self.authorization.is_empty()
    }
}

/// A request that may not reach the app: the answer, and the response flag for the metrics.
pub struct Refusal {
    pub response: Response<Body>,
    pub flags: &'static str,
}

/// The connection's side of the attributes: who the peer is and where it connected.
fn connection_attributes<'a>(conn: &'a Conn, target: SocketAddr) -> Attributes<'a> {
    let peer = conn.tls_peer.as_ref();
    Attributes {
        peer: peer.map(|p| &p.id),
        peer_principal: peer.map(|p| p.istio_principal()),
        source_ip: conn.peer.ip(),
        destination_ip: target.ip(),
        destination_port: target.port(),
        sni: None,
        http: None,
    }
}

/// Checks an HTTP request for the app at `target`. `Err` carries the answer to send instead.
pub fn check_request<B>(
    request: &Request<B>,
    conn: &Conn,
    target: SocketAddr,
    proxy: &Proxy,
    policy: &InboundPolicy,
    grpc: bool,
) -> Result<(), Box<Refusal>> {
    let authz = &policy.authorization;
    let host = request
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| request.headers().get(header::HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("");
    let mut attributes = connection_attributes(conn, target);
    attributes.http = Some(HttpAttributes {
        method: request.method().as_str(),
        host,
        path: request.uri().path(),
        headers: request.headers(),
        auth: None,
    });
    if let Some(custom) = authz.custom(&attributes) {
        // The CUSTOM provider is not reachable from this proxy yet: fail closed, as Istio does
        // for a provider it cannot use.
        record(
            proxy,
            "custom_deny",
            &DecidedBy::Rule { policy: custom.policy.clone(), rule: custom.rule },
            "http",
        );
        tracing::debug!(policy = %custom.policy, rule = custom.rule, provider = %custom.provider, "request denied: CUSTOM provider unavailable");
        return Err(Box::new(Refusal { response: denied(grpc), flags: "UAEX" }));
    }
    let decision = authz.decide(&attributes);
    observe(proxy, authz, &attributes, &decision, "http");
    if decision.allowed { Ok(()) } else { Err(Box::new(Refusal { response: denied(grpc), flags: "-" })) }
}

/// Checks an opaque TCP connection for the app at `target`: whether it may go on.
pub fn check_connection(conn: &Conn, target: SocketAddr, proxy: &Proxy, policy: &InboundPolicy) -> bool {
    let authz = &policy.authorization;
    let attributes = connection_attributes(conn, target);
    if let Some(custom) = authz.custom(&attributes) {
        // Istio's HTTP providers cannot judge bytes; a CUSTOM rule on TCP denies.
        record(
            proxy,
            "custom_deny",
            &DecidedBy::Rule { policy: custom.policy.clone(), rule: custom.rule },
            "tcp",
        );
        return false;
    }
    let decision = authz.decide(&attributes);
    observe(proxy, authz, &attributes, &decision, "tcp");
    decision.allowed
}

/// Records a decision that denies, what AUDIT rules matched and what dry-run policies would do.
fn observe(
    proxy: &Proxy,
    authz: &Authorization,
    a: &Attributes<'_>,
    decision: &Decision,
    protocol: &'static str,
) {
    if !decision.allowed {
        record(proxy, "deny", &decision.by, protocol);
        tracing::debug!(peer = a.peer_principal.unwrap_or("-"), port = a.destination_port, "{decision}");
    }
    if let Some(audited) = authz.audit(a) {
        record(proxy, "audit", &audited, protocol);
    }
    if let Some(would) = authz.dry_run(a) {
        let outcome = if would.allowed { "dry_run_allow" } else { "dry_run_deny" };
        record(proxy, outcome, &would.by, protocol);
        tracing::debug!(
            peer = a.peer_principal.unwrap_or("-"),
            port = a.destination_port,
            "dry run: would be {would}"
        );
    }
}

fn record(proxy: &Proxy, decision: &'static str, by: &DecidedBy, protocol: &'static str) {
    let (policy, rule) = match by {
        DecidedBy::Rule { policy, rule } => (policy.clone(), rule.to_string()),
        _ => ("none".into(), String::new()),
    };
    proxy.metrics.authz(&AuthzLabels { decision, policy, rule, protocol });
}

/// 403 `RBAC: access denied`; for gRPC, a trailers-only answer with PERMISSION_DENIED, which
/// is what a gRPC client makes of Envoy's 403 too.
pub fn denied(grpc: bool) -> Response<Body> {
    if grpc {
        let mut response = Response::new(full(Bytes::new()));
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert(&crate::headers::GRPC_STATUS, HeaderValue::from_static("7"));
        headers.insert("grpc-message", HeaderValue::from_static("RBAC: access denied"));
        return response;
    }
    let mut response = Response::new(full(Bytes::from_static(DENIED_BODY.as_bytes())));
    *response.status_mut() = StatusCode::FORBIDDEN;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}
