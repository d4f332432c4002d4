//! The CUSTOM action's external authorization client against real providers on 127.0.0.1: a
//! gRPC `envoy.service.auth.v3.Authorization` server and an HTTP check server written here,
//! and providers that never answer or cannot be reached.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::Full;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use trellis_proxy::security::ext_authz::{CheckPeer, ExtAuthz, ExtDecision};
use trellis_xds::config as pb;
use trellis_xds::envoy::config::core::v3 as core;
use trellis_xds::envoy::service::auth::v3 as auth;

const PRINCIPAL: &str = "spiffe://cluster.local/ns/default/sa/client";

fn peer() -> CheckPeer {
    CheckPeer {
        source: "10.1.2.3:45678".parse().unwrap(),
        destination: "10.1.2.4:8080".parse().unwrap(),
        principal: Some(PRINCIPAL.to_owned()),
    }
}

fn request(user: Option<&str>) -> http::request::Parts {
    let mut b = http::Request::builder()
        .method("PUT")
        .uri("/api/items?id=7")
        .header("host", "app.default.svc.cluster.local:8080")
        .header("authorization", "Bearer token")
        .header("x-secret", "not for the provider")
        .header("x-request-id", "req-1");
    if let Some(user) = user {
        b = b.header("x-user", user);
    }
    b.body(()).unwrap().into_parts().0
}

fn provider(
    name: &str,
    addresses: &[SocketAddr],
    kind: pb::ext_authz_provider::Kind,
) -> pb::ExtAuthzProvider {
    pb::ExtAuthzProvider {
        name: name.to_owned(),
        kind: Some(kind),
        addresses: addresses.iter().map(|a| a.to_string()).collect(),
        service: "authz.default.svc.cluster.local".to_owned(),
        ..Default::default()
    }
}

fn grpc_kind() -> pb::ext_authz_provider::Kind {
    pb::ext_authz_provider::Kind::Grpc(pb::ExtAuthzGrpc {})
}

fn short_timeout(p: pb::ExtAuthzProvider) -> pb::ExtAuthzProvider {
    pb::ExtAuthzProvider { timeout: Some(pbjson_types::Duration { seconds: 0, nanos: 300_000_000 }), ..p }
}

fn header_list(headers: &[(http::HeaderName, http::HeaderValue)]) -> Vec<(String, String)> {
    headers.iter().map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned())).collect()
}

// ---------------------------------------------------------------------------------------------
// gRPC

#[derive(Clone, Default)]
struct GrpcAuthz {
    seen: Arc<Mutex<Vec<auth::CheckRequest>>>,
}

fn header_option(key: &str, value: &str) -> core::HeaderValueOption {
    core::HeaderValueOption {
        header: Some(core::HeaderValue { key: key.into(), value: value.into(), raw_value: vec![] }),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl auth::authorization_server::Authorization for GrpcAuthz {
    async fn check(
        &self,
        request: tonic::Request<auth::CheckRequest>,
    ) -> Result<tonic::Response<auth::CheckResponse>, tonic::Status> {
        let check = request.into_inner();
        self.seen.lock().unwrap().push(check.clone());
        let user = check
            .attributes
            .and_then(|a| a.request)
            .and_then(|r| r.http)
            .and_then(|h| h.headers.get("x-user").cloned());
        use auth::check_response::HttpResponse;
        let answer = if user.as_deref() == Some("alice") {
            auth::CheckResponse {
                status: Some(trellis_xds::google::rpc::Status::default()),
                http_response: Some(HttpResponse::OkResponse(auth::OkHttpResponse {
                    headers: vec![header_option("x-auth-user", "alice")],
                })),
            }
        } else {
            auth::CheckResponse {
                status: Some(trellis_xds::google::rpc::Status {
                    code: tonic::Code::PermissionDenied as i32,
                    message: "not alice".into(),
                    details: vec![],
                }),
                http_response: Some(HttpResponse::DeniedResponse(auth::DeniedHttpResponse {
                    status: Some(trellis_xds::envoy::r#type::v3::HttpStatus { code: 403 }),
                    headers: vec![header_option("x-reason", "no")],
                    body: "only alice may pass".into(),
                })),
            }
        };
        Ok(tonic::Response::new(answer))
    }
}

/// A gRPC provider on 127.0.0.1, and how many connections it accepted.
async fn grpc_server() -> (SocketAddr, GrpcAuthz, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let service = GrpcAuthz::default();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(move |s| {
        counted.fetch_add(1, Ordering::SeqCst);
        s
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(auth::authorization_server::AuthorizationServer::new(service.clone()))
            .serve_with_incoming(incoming),
    );
    (address, service, connections)
}

#[tokio::test]
async fn grpc_provider_allows_and_denies_with_envoys_messages() {
    let (address, server, connections) = grpc_server().await;
    let authz = ExtAuthz::compile(&[provider("opa", &[address], grpc_kind())]).unwrap();

    let allowed = authz.check("opa", &request(Some("alice")), &peer()).await;
    let ExtDecision::Allow { headers } = allowed else { panic!("allowed: {allowed:?}") };
    assert_eq!(header_list(&headers), [("x-auth-user".to_owned(), "alice".to_owned())]);

    let denied = authz.check("opa", &request(Some("mallory")), &peer()).await;
    let ExtDecision::Deny { status, headers, body, reason } = denied else { panic!("denied: {denied:?}") };
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(header_list(&headers), [("x-reason".to_owned(), "no".to_owned())]);
    assert_eq!(body, "only alice may pass");
    assert!(reason.contains("not alice"), "{reason}");

    // What the provider was sent.
    let seen = server.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    let attributes = seen[0].attributes.clone().unwrap();
    let source = attributes.source.unwrap();
    assert_eq!(source.principal, PRINCIPAL);
    let Some(core::address::Address::SocketAddress(s)) = source.address.unwrap().address else {
        panic!("source address")
    };
    assert_eq!(s.address, "10.1.2.3");
    assert_eq!(s.port_specifier, Some(core::socket_address::PortSpecifier::PortValue(45678)));
    let Some(core::address::Address::SocketAddress(d)) =
        attributes.destination.unwrap().address.unwrap().address
    else {
        panic!("destination address")
    };
    assert_eq!(
        (d.address.as_str(), d.port_specifier),
        ("10.1.2.4", Some(core::socket_address::PortSpecifier::PortValue(8080)))
    );
    let http = attributes.request.unwrap().http.unwrap();
    assert_eq!(http.method, "PUT");
    assert_eq!(http.path, "/api/items?id=7");
    assert_eq!(http.host, "app.default.svc.cluster.local:8080");
    assert_eq!(http.id, "req-1");
    assert_eq!(http.protocol, "HTTP/1.1");
    assert_eq!(http.scheme, "https");
    assert_eq!(http.headers["x-user"], "alice");
    assert_eq!(http.headers["authorization"], "Bearer token");
    assert_eq!(http.headers[":authority"], "app.default.svc.cluster.local:8080");

    // One channel, kept across checks.
    for _ in 0..5 {
        assert!(authz.check("opa", &request(Some("alice")), &peer()).await.is_allow());
    }
    assert_eq!(connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn grpc_provider_behind_a_dead_address_is_reached_at_the_next() {
    let (live, _server, _) = grpc_server().await;
    let dead = dead_address().await;
    let authz = ExtAuthz::compile(&[provider("opa", &[dead, live], grpc_kind())]).unwrap();
    for _ in 0..4 {
        let decision = authz.check("opa", &request(Some("alice")), &peer()).await;
        assert!(decision.is_allow(), "{decision:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP

#[derive(Clone, Debug)]
struct Seen {
    method: http::Method,
    uri: http::Uri,
    headers: HeaderMap,
    body_len: usize,
}

/// An HTTP provider on 127.0.0.1: 200 with `x-auth-user` for `x-user: alice`, 500 for paths
/// under `/fail`, 401 with `www-authenticate` otherwise.
async fn http_server() -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let record = record.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let record = record.clone();
                    async move {
                        use http_body_util::BodyExt;
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.map(|b| b.to_bytes().len()).unwrap_or(usize::MAX);
                        record.lock().unwrap().push(Seen {
                            method: parts.method.clone(),
                            uri: parts.uri.clone(),
                            headers: parts.headers.clone(),
                            body_len: body,
                        });
                        let response = if parts.uri.path().starts_with("/fail") {
                            http::Response::builder().status(500).body(Full::new(Bytes::from("oops")))
                        } else if parts.headers.get("x-user").is_some_and(|u| u == "alice") {
                            http::Response::builder()
                                .status(200)
                                .header("x-auth-user", "alice")
                                .header("x-not-listed", "1")
                                .body(Full::new(Bytes::new()))
                        } else {
                            http::Response::builder()
                                .status(401)
                                .header("www-authenticate", "Bearer realm=\"test\"")
                                .header("x-deny-reason", "no user")
                                .header("x-internal", "do not copy")
                                .header("host", "provider")
                                .body(Full::new(Bytes::from("who are you?")))
                        };
                        Ok::<_, std::convert::Infallible>(response.unwrap())
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            });
        }
    });
    (address, seen)
}

fn http_kind() -> pb::ext_authz_provider::Kind {
    pb::ext_authz_provider::Kind::Http(pb::ExtAuthzHttp {
        path_prefix: "/check".into(),
        include_request_headers_in_check: vec!["X-User".into()],
        include_additional_headers_in_check: [("x-mesh".to_owned(), "trellis".to_owned())]
            .into_iter()
            .collect(),
        headers_to_upstream_on_allow: vec!["x-auth-user".into()],
        headers_to_downstream_on_deny: vec!["x-deny-reason".into()],
    })
}

#[tokio::test]
async fn http_provider_allows_and_denies() {
    let (address, seen) = http_server().await;
    let authz = ExtAuthz::compile(&[provider("oauth2", &[address], http_kind())]).unwrap();

    let allowed = authz.check("oauth2", &request(Some("alice")), &peer()).await;
    let ExtDecision::Allow { headers } = allowed else { panic!("allowed: {allowed:?}") };
    // `x-not-listed` is not in headers_to_upstream_on_allow.
    assert_eq!(header_list(&headers), [("x-auth-user".to_owned(), "alice".to_owned())]);

    let denied = authz.check("oauth2", &request(None), &peer()).await;
    let ExtDecision::Deny { status, headers, body, reason } = denied else { panic!("denied: {denied:?}") };
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let mut headers = header_list(&headers);
    headers.sort();
    // `x-internal` is not in headers_to_downstream_on_deny; `www-authenticate` always goes.
    assert_eq!(
        headers,
        [
            ("www-authenticate".to_owned(), "Bearer realm=\"test\"".to_owned()),
            ("x-deny-reason".to_owned(), "no user".to_owned()),
        ]
    );
    assert_eq!(body, "who are you?");
    assert!(reason.contains("401"), "{reason}");

    // What the provider was sent.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    let first = &seen[0];
    assert_eq!(first.method, http::Method::PUT);
    assert_eq!(first.uri, "/check/api/items?id=7");
    assert_eq!(first.headers["host"], "app.default.svc.cluster.local:8080");
    assert_eq!(first.headers["authorization"], "Bearer token");
    assert_eq!(first.headers["x-user"], "alice");
    assert_eq!(first.headers["x-mesh"], "trellis");
    assert_eq!(first.headers["content-length"], "0");
    assert_eq!(first.body_len, 0);
    // Not in include_request_headers_in_check.
    assert!(!first.headers.contains_key("x-secret"));
    assert!(!first.headers.contains_key("x-request-id"));
    assert!(!seen[1].headers.contains_key("x-user"));
}

#[tokio::test]
async fn http_denial_without_a_header_list_copies_all_but_host() {
    let (address, _) = http_server().await;
    let kind = pb::ext_authz_provider::Kind::Http(pb::ExtAuthzHttp {
        include_request_headers_in_check: vec!["x-user".into()],
        ..Default::default()
    });
    let authz = ExtAuthz::compile(&[provider("oauth2", &[address], kind)]).unwrap();
    let ExtDecision::Deny { headers, .. } = authz.check("oauth2", &request(None), &peer()).await else {
        panic!("denied")
    };
    let names: Vec<_> = headers.iter().map(|(n, _)| n.as_str()).collect();
    for name in ["www-authenticate", "x-deny-reason", "x-internal"] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    assert!(!names.contains(&"host") && !names.contains(&"content-length"), "{names:?}");
    // And an allow without headers_to_upstream_on_allow leaves the request as it is.
    assert_eq!(
        authz.check("oauth2", &request(Some("alice")), &peer()).await,
        ExtDecision::Allow { headers: vec![] }
    );
}

#[tokio::test]
async fn http_provider_5xx_is_a_failure() {
    let (address, _) = http_server().await;
    let kind = pb::ext_authz_provider::Kind::Http(pb::ExtAuthzHttp {
        path_prefix: "/fail".into(),
        ..Default::default()
    });
    let closed = provider("closed", &[address], kind.clone());
    let open = pb::ExtAuthzProvider { fail_open: true, ..provider("open", &[address], kind) };
    let authz = ExtAuthz::compile(&[closed, open]).unwrap();
    let ExtDecision::Deny { status, body, reason, .. } = authz.check("closed", &request(None), &peer()).await
    else {
        panic!("denied")
    };
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.is_empty());
    assert!(reason.contains("500"), "{reason}");
    assert_eq!(authz.check("open", &request(None), &peer()).await, ExtDecision::Allow { headers: vec![] });
}

// ---------------------------------------------------------------------------------------------
// Failures

/// Accepts connections and never answers.
async fn silent_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    address
}

/// An address nothing listens on.
async fn dead_address() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

fn kinds() -> [pb::ext_authz_provider::Kind; 2] {
    [grpc_kind(), http_kind()]
}

async fn assert_failure_handling(address: SocketAddr, what: &str) {
    for kind in kinds() {
        let closed = short_timeout(provider("closed", &[address], kind.clone()));
        let custom = pb::ExtAuthzProvider {
            status_on_error: 503,
            ..short_timeout(provider("custom", &[address], kind.clone()))
        };
        let open = pb::ExtAuthzProvider {
            fail_open: true,
            ..short_timeout(provider("open", &[address], kind.clone()))
        };
        let authz = ExtAuthz::compile(&[closed, custom, open]).unwrap();

        let started = Instant::now();
        let decision = authz.check("closed", &request(Some("alice")), &peer()).await;
        assert!(started.elapsed() < Duration::from_secs(5), "{what}: took {:?}", started.elapsed());
        let ExtDecision::Deny { status, headers, body, reason } = decision else {
            panic!("{what} {kind:?}: {decision:?}")
        };
        assert_eq!(status, StatusCode::FORBIDDEN, "{what}");
        assert!(headers.is_empty() && body.is_empty());
        assert!(reason.contains("\"closed\" failed"), "{what}: {reason}");
        let expected = if what == "silent" { "no answer within 300ms" } else { "tcp connect error" };
        assert!(reason.contains(expected), "{what}: {reason}");

        let ExtDecision::Deny { status, .. } = authz.check("custom", &request(Some("alice")), &peer()).await
        else {
            panic!("{what}: custom")
        };
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{what}");

        let decision = authz.check("open", &request(Some("alice")), &peer()).await;
        assert_eq!(decision, ExtDecision::Allow { headers: vec![] }, "{what}");
    }
}

#[tokio::test]
async fn a_provider_that_never_answers_times_out() {
    let address = silent_server().await;
    assert_failure_handling(address, "silent").await;
    // The reason names the timeout.
    let authz = ExtAuthz::compile(&[short_timeout(provider("p", &[address], http_kind()))]).unwrap();
    let ExtDecision::Deny { reason, .. } = authz.check("p", &request(None), &peer()).await else { panic!() };
    assert!(reason.contains("no answer within 300ms"), "{reason}");
}

#[tokio::test]
async fn an_unreachable_provider_fails() {
    let address = dead_address().await;
    assert_failure_handling(address, "unreachable").await;
    let authz = ExtAuthz::compile(&[short_timeout(provider("p", &[address], http_kind()))]).unwrap();
    let ExtDecision::Deny { reason, .. } = authz.check("p", &request(None), &peer()).await else { panic!() };
    assert!(reason.contains("refused"), "{reason}");
}

#[tokio::test]
async fn an_unknown_provider_denies() {
    let (address, _, _) = grpc_server().await;
    let authz = ExtAuthz::compile(&[provider("opa", &[address], grpc_kind())]).unwrap();
    let ExtDecision::Deny { status, reason, .. } =
        authz.check("nobody", &request(Some("alice")), &peer()).await
    else {
        panic!("denied")
    };
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(reason.contains("\"nobody\" is not configured"), "{reason}");
}

#[test]
fn compile_errors_name_the_field() {
    let good = provider("a", &["127.0.0.1:1".parse().unwrap()], grpc_kind());
    let field = |p: pb::ExtAuthzProvider| ExtAuthz::compile(&[good.clone(), p]).unwrap_err().field;
    assert_eq!(
        field(pb::ExtAuthzProvider { name: "b".into(), addresses: vec![], ..good.clone() }),
        "ext_authz[1].addresses"
    );
    assert_eq!(
        field(pb::ExtAuthzProvider { name: "b".into(), kind: None, ..good.clone() }),
        "ext_authz[1].kind"
    );
    let bad_headers = |h: pb::ExtAuthzHttp| pb::ExtAuthzProvider {
        name: "b".into(),
        kind: Some(pb::ext_authz_provider::Kind::Http(h)),
        ..good.clone()
    };
    assert_eq!(
        field(bad_headers(pb::ExtAuthzHttp {
            include_request_headers_in_check: vec!["bad name".into()],
            ..Default::default()
        })),
        "ext_authz[1].http.include_request_headers_in_check[0]"
    );
    assert_eq!(
        field(bad_headers(pb::ExtAuthzHttp {
            headers_to_upstream_on_allow: vec!["a\u{e9}".into()],
            ..Default::default()
        })),
        "ext_authz[1].http.headers_to_upstream_on_allow[0]"
    );
    assert_eq!(
        field(bad_headers(pb::ExtAuthzHttp {
            headers_to_downstream_on_deny: vec!["x:y".into()],
            ..Default::default()
        })),
        "ext_authz[1].http.headers_to_downstream_on_deny[0]"
    );
    assert_eq!(
        field(bad_headers(pb::ExtAuthzHttp {
            include_additional_headers_in_check: [("bad name".to_owned(), "v".to_owned())]
                .into_iter()
                .collect(),
            ..Default::default()
        })),
        "ext_authz[1].http.include_additional_headers_in_check.bad name"
    );
}
