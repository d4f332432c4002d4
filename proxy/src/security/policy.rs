//! What the inbound side checks before a request or connection reaches the app, in Istio's
//! order: the request's JWT (RequestAuthentication, `jwt`), then AuthorizationPolicy's CUSTOM,
//! DENY and ALLOW (`authz`), with AUDIT and dry-run recorded. Compiled with the configuration;
//! a workload without policies skips all of it.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use trellis_xds::config as pb;

use crate::Proxy;
use crate::config::ConfigError;
use crate::forward::full;
use crate::metrics::AuthzLabels;
use crate::serve::Conn;
use crate::upstream::Body;

use super::authz::{Attributes, Authorization, CustomMatch, DecidedBy, Decision, HttpAttributes};
use super::ext_authz::{CheckPeer, ExtAuthz, ExtDecision};
use super::jwt::JwtAuthn;

/// The body Istio's sidecars answer a denied request with.
pub const DENIED_BODY: &str = "RBAC: access denied";

/// The inbound policies of this workload.
#[derive(Debug)]
pub struct InboundPolicy {
    pub authorization: Authorization,
    pub jwt: JwtAuthn,
    /// CUSTOM's providers, with their connections: kept from the previous configuration while
    /// their settings do not change.
    ext_authz: Arc<(Vec<pb::ExtAuthzProvider>, ExtAuthz)>,
}

impl InboundPolicy {
    pub fn compile(
        config: &pb::ProxyConfig,
        previous: Option<&InboundPolicy>,
    ) -> Result<InboundPolicy, ConfigError> {
        let ext_authz = match previous.filter(|p| p.ext_authz.0 == config.ext_authz) {
            Some(p) => p.ext_authz.clone(),
            None => Arc::new((config.ext_authz.clone(), ExtAuthz::compile(&config.ext_authz)?)),
        };
        Ok(InboundPolicy {
            authorization: Authorization::compile(&config.authorization)?,
            jwt: JwtAuthn::compile(&config.jwt_providers)?,
            ext_authz,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.authorization.is_empty() && self.jwt.is_empty()
    }
}

/// A request that may not reach the app: the answer, and the response flag for the metrics.
pub struct Refusal {
    pub response: Response<Body>,
    pub flags: &'static str,
    /// The access log's `%RESPONSE_CODE_DETAILS%`: which policy and rule denied, or why.
    pub details: Option<Box<str>>,
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

/// What the synchronous part of the check left to do.
pub enum Checked {
    /// Decided: go on, or send this answer instead.
    Done(Result<(), Box<Refusal>>),
    /// A CUSTOM rule matched: its provider must be asked (`ask_custom`) before the DENY/ALLOW
    /// decision stands.
    AskCustom(PendingCustom),
}

pub struct PendingCustom {
    custom: CustomMatch,
    decision: Decision,
    grpc: bool,
}

/// Checks an HTTP request for the app at `target`: its JWT (which a valid one leaves removed,
/// unless forwarded, and its claims copied as configured), then the DENY and ALLOW policies.
/// Synchronous, so that the common request builds no future for it; only when a CUSTOM rule
/// matches is there something to wait for. `grpc`: the request is gRPC (a denial answers as
/// gRPC).
pub fn check_request<B>(
    request: &mut Request<B>,
    conn: &Conn,
    target: SocketAddr,
    proxy: &Proxy,
    policy: &InboundPolicy,
    grpc: impl Fn(&Request<B>) -> bool,
) -> Checked {
    let auth = match policy.jwt.is_empty() {
        true => None,
        false => match policy.jwt.authenticate(request) {
            Ok(auth) => auth,
            Err(rejection) => {
                tracing::debug!(status = %rejection.status, "request refused by RequestAuthentication: {}", rejection.message);
                let details = jwt_details(&rejection.message);
                return Checked::Done(Err(Box::new(Refusal {
                    response: rejected(rejection),
                    flags: "-",
                    details,
                })));
            }
        },
    };
    let authz = &policy.authorization;
    let (custom, decision) = {
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
            auth: auth.as_deref(),
        });
        let decision = authz.decide(&attributes);
        observe(proxy, authz, &attributes, &decision, "http");
        (authz.custom(&attributes), decision)
    };
    // CUSTOM comes first in Istio's order; its answer is awaited only when a CUSTOM rule matched.
    match custom {
        Some(custom) => Checked::AskCustom(PendingCustom { custom, decision, grpc: grpc(request) }),
        None if decision.allowed => Checked::Done(Ok(())),
        None => Checked::Done(Err(Box::new(Refusal {
            response: denied(grpc(request)),
            flags: "-",
            details: Some(crate::access_log::denial_details(&decision.by)),
        }))),
    }
}

/// The rest of `check_request` when a CUSTOM rule matched: the provider's answer, then the
/// DENY/ALLOW decision already made.
pub async fn ask_custom<B>(
    pending: PendingCustom,
    request: &mut Request<B>,
    conn: &Conn,
    target: SocketAddr,
    proxy: &Proxy,
    policy: &InboundPolicy,
) -> Result<(), Box<Refusal>> {
    let PendingCustom { custom, decision, grpc } = pending;
    let by = DecidedBy::Rule { policy: custom.policy.clone(), rule: custom.rule };
    let peer = CheckPeer {
        source: conn.peer,
        destination: target,
        principal: conn.tls_peer.as_ref().map(|p| p.principal.to_string()),
    };
    match policy.ext_authz.1.check(&custom.provider, &parts_of(request), &peer).await {
        ExtDecision::Allow { headers } => {
            for (name, value) in headers {
                request.headers_mut().insert(name, value);
            }
        }
        ExtDecision::Deny { status, headers, body, reason } => {
            record(proxy, "custom_deny", &by, "http");
            tracing::debug!(policy = %custom.policy, rule = custom.rule, provider = %custom.provider, %reason, "request denied by the CUSTOM provider");
            let mut response = Response::new(full(body));
            *response.status_mut() = status;
            for (name, value) in headers {
                response.headers_mut().append(name, value);
            }
            return Err(Box::new(Refusal { response, flags: "UAEX", details: None }));
        }
    }
    if decision.allowed {
        Ok(())
    } else {
        let details = Some(crate::access_log::denial_details(&decision.by));
        Err(Box::new(Refusal { response: denied(grpc), flags: "-", details }))
    }
}

/// A copy of the request's head, for the CUSTOM provider (which sees no body).
fn parts_of<B>(request: &Request<B>) -> http::request::Parts {
    let mut copy = Request::new(());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    copy.into_parts().0
}

/// Checks an opaque TCP connection for the app at `target`: whether it may go on.
pub fn check_connection(conn: &Conn, target: SocketAddr, proxy: &Proxy, policy: &InboundPolicy) -> bool {
    check_connection_explained(conn, target, proxy, policy).is_ok()
}

/// `check_connection`, with the access log's `%CONNECTION_TERMINATION_DETAILS%` of a denial.
pub fn check_connection_explained(
    conn: &Conn,
    target: SocketAddr,
    proxy: &Proxy,
    policy: &InboundPolicy,
) -> Result<(), Box<str>> {
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
        return Err(crate::access_log::denial_details(&DecidedBy::Rule {
            policy: custom.policy.clone(),
            rule: custom.rule,
        }));
    }
    let decision = authz.decide(&attributes);
    observe(proxy, authz, &attributes, &decision, "tcp");
    if decision.allowed { Ok(()) } else { Err(crate::access_log::denial_details(&decision.by)) }
}

/// Envoy's details of a JWT refusal: `jwt_authn_access_denied{Jwt_is_expired}`.
fn jwt_details(message: &str) -> Option<Box<str>> {
    let words: String =
        message.trim().chars().take(128).map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    Some(format!("jwt_authn_access_denied{{{words}}}").into())
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
        // One line per denial, naming what decided it: the question Istio's users ask most.
        let (method, path) = a.http.as_ref().map_or(("-", "-"), |h| (h.method, h.path));
        tracing::info!(
            target: "trellis::authz",
            peer = a.peer_principal.unwrap_or("-"),
            source = %a.source_ip,
            port = a.destination_port,
            protocol,
            method,
            path,
            "{decision}"
        );
    }
    if let Some(audited) = authz.audit(a) {
        record(proxy, "audit", &audited, protocol);
    }
    if let Some(would) = authz.dry_run(a) {
        let outcome = if would.allowed { "dry_run_allow" } else { "dry_run_deny" };
        record(proxy, outcome, &would.by, protocol);
        tracing::info!(
            target: "trellis::authz",
            peer = a.peer_principal.unwrap_or("-"),
            port = a.destination_port,
            protocol,
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

/// A JWT's refusal: 401 (or 403 for the audience) with `WWW-Authenticate` and the reason.
fn rejected(rejection: super::jwt::JwtRejection) -> Response<Body> {
    let mut response = Response::new(full(Bytes::from(rejection.message)));
    *response.status_mut() = rejection.status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    if let Some(challenge) = rejection.www_authenticate {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
    }
    response
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
