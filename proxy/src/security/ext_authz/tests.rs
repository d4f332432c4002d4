use std::time::Duration;

use prost::Message;
use trellis_xds::config as pb;
use trellis_xds::envoy::config::core::v3 as core;
use trellis_xds::envoy::service::auth::v3 as auth;

use super::*;

fn grpc(name: &str) -> pb::ExtAuthzProvider {
    pb::ExtAuthzProvider {
        name: name.to_owned(),
        kind: Some(pb::ext_authz_provider::Kind::Grpc(pb::ExtAuthzGrpc {})),
        addresses: vec!["127.0.0.1:9000".to_owned()],
        ..Default::default()
    }
}

fn http(name: &str, h: pb::ExtAuthzHttp) -> pb::ExtAuthzProvider {
    pb::ExtAuthzProvider { kind: Some(pb::ext_authz_provider::Kind::Http(h)), ..grpc(name) }
}

fn compile_err(p: pb::ExtAuthzProvider) -> ConfigError {
    ExtAuthz::compile(&[grpc("first"), p]).expect_err("refused")
}

#[test]
fn defaults() {
    let authz = ExtAuthz::compile(&[grpc("opa"), http("oauth2", Default::default())]).unwrap();
    assert!(!authz.is_empty());
    assert!(authz.contains("opa") && authz.contains("oauth2") && !authz.contains("other"));
    for p in authz.providers.values() {
        assert_eq!(p.timeout, DEFAULT_TIMEOUT);
        assert_eq!(p.timeout, Duration::from_secs(600));
        assert_eq!(p.status_on_error, StatusCode::FORBIDDEN);
        assert!(!p.fail_open);
    }
    assert!(ExtAuthz::compile(&[]).unwrap().is_empty());
}

#[test]
fn compile_errors_name_the_field() {
    let field = |p| compile_err(p).field;
    assert_eq!(field(grpc("")), "ext_authz[1].name");
    assert_eq!(field(grpc("first")), "ext_authz[1].name");
    assert_eq!(field(pb::ExtAuthzProvider { addresses: vec![], ..grpc("a") }), "ext_authz[1].addresses");
    for bad in ["no-port", "host:0", "host:port", "user@host:80", "http://host:80", ""] {
        let p = pb::ExtAuthzProvider { addresses: vec!["127.0.0.1:1".into(), bad.into()], ..grpc("a") };
        assert_eq!(field(p), "ext_authz[1].addresses[1]", "{bad:?}");
    }
    let e = compile_err(pb::ExtAuthzProvider { kind: None, ..grpc("a") });
    assert_eq!(e.field, "ext_authz[1].kind");
    assert!(e.message.contains("grpc") && e.message.contains("http"), "{}", e.message);
    for code in [1, 99, 600, 70000] {
        assert_eq!(
            field(pb::ExtAuthzProvider { status_on_error: code, ..grpc("a") }),
            "ext_authz[1].status_on_error"
        );
    }
    let negative = pbjson_types::Duration { seconds: -1, nanos: 0 };
    assert_eq!(field(pb::ExtAuthzProvider { timeout: Some(negative), ..grpc("a") }), "ext_authz[1].timeout");
    assert_eq!(field(pb::ExtAuthzProvider { service: "a b".into(), ..grpc("a") }), "ext_authz[1].service");

    let h = |h: pb::ExtAuthzHttp| field(http("a", h));
    for prefix in ["check", "/check?x=1", "/a b"] {
        assert_eq!(
            h(pb::ExtAuthzHttp { path_prefix: prefix.into(), ..Default::default() }),
            "ext_authz[1].http.path_prefix"
        );
    }
    for bad in ["x y", "*", "", "x:y"] {
        let list = vec!["x-ok".to_owned(), bad.to_owned()];
        assert_eq!(
            h(pb::ExtAuthzHttp { include_request_headers_in_check: list.clone(), ..Default::default() }),
            "ext_authz[1].http.include_request_headers_in_check[1]",
            "{bad:?}"
        );
        assert_eq!(
            h(pb::ExtAuthzHttp { headers_to_upstream_on_allow: list.clone(), ..Default::default() }),
            "ext_authz[1].http.headers_to_upstream_on_allow[1]"
        );
        assert_eq!(
            h(pb::ExtAuthzHttp { headers_to_downstream_on_deny: list, ..Default::default() }),
            "ext_authz[1].http.headers_to_downstream_on_deny[1]"
        );
    }
    for (name, value) in [("bad name", "v"), ("x-ok", "bad\nvalue"), ("content-length", "3")] {
        let extra = [(name.to_owned(), value.to_owned())].into_iter().collect();
        assert_eq!(
            h(pb::ExtAuthzHttp { include_additional_headers_in_check: extra, ..Default::default() }),
            format!("ext_authz[1].http.include_additional_headers_in_check.{name}")
        );
    }
}

#[test]
fn accepted_settings() {
    let p = pb::ExtAuthzProvider {
        addresses: vec!["127.0.0.1:1".into(), "[::1]:2".into(), "authz.ns.svc.cluster.local:9191".into()],
        timeout: Some(pbjson_types::Duration { seconds: 0, nanos: 250_000_000 }),
        status_on_error: 503,
        fail_open: true,
        service: "ns/authz.ns.svc.cluster.local".into(),
        ..http(
            "a",
            pb::ExtAuthzHttp {
                path_prefix: "/check".into(),
                include_request_headers_in_check: vec!["X-User".into(), "x-b3-*".into(), "*-token".into()],
                ..Default::default()
            },
        )
    };
    let authz = ExtAuthz::compile(&[p]).unwrap();
    let p = &authz.providers["a"];
    assert_eq!(p.timeout, Duration::from_millis(250));
    assert_eq!(p.status_on_error, StatusCode::SERVICE_UNAVAILABLE);
    assert!(p.fail_open);
    let Kind::Http(h) = &p.kind else { panic!("http") };
    assert_eq!(
        h.include_request_headers,
        [Pattern::Exact("x-user".into()), Pattern::Prefix("x-b3-".into()), Pattern::Suffix("-token".into())]
    );
}

#[test]
fn patterns() {
    let p = |s| Pattern::compile(s).unwrap();
    assert!(p("X-User").matches("x-user"));
    assert!(!p("x-user").matches("x-user-id"));
    assert!(p("x-b3-*").matches("x-b3-traceid") && p("x-b3-*").matches("x-b3-"));
    assert!(!p("x-b3-*").matches("x-b4-traceid"));
    assert!(p("*-token").matches("id-token") && !p("*-token").matches("token-id"));
}

fn parts(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut b = http::Request::builder().method("POST").uri(uri);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn peer() -> CheckPeer {
    CheckPeer {
        source: "10.0.0.1:40000".parse().unwrap(),
        destination: "10.0.0.2:8080".parse().unwrap(),
        principal: Some("spiffe://cluster.local/ns/a/sa/b".into()),
    }
}

#[test]
fn check_request_attributes() {
    let request = parts(
        "/api/x?y=1",
        &[
            ("host", "app.ns:8080"),
            ("x-user", "alice"),
            ("x-multi", "a"),
            ("x-multi", "b"),
            ("cookie", "a=1"),
            ("cookie", "b=2"),
            ("x-request-id", "rid"),
            ("content-length", "12"),
        ],
    );
    let check = grpc::check_request(&request, &peer());
    let attributes = check.attributes.unwrap();
    let source = attributes.source.unwrap();
    assert_eq!(source.principal, "spiffe://cluster.local/ns/a/sa/b");
    let Some(core::address::Address::SocketAddress(s)) = source.address.unwrap().address else { panic!() };
    assert_eq!(
        (s.address.as_str(), s.port_specifier),
        ("10.0.0.1", Some(core::socket_address::PortSpecifier::PortValue(40000)))
    );
    let destination = attributes.destination.unwrap();
    assert_eq!(destination.principal, "");
    let Some(core::address::Address::SocketAddress(d)) = destination.address.unwrap().address else {
        panic!()
    };
    assert_eq!(d.address, "10.0.0.2");
    let request = attributes.request.unwrap();
    assert!(request.time.is_some_and(|t| t.seconds > 0));
    let h = request.http.unwrap();
    assert_eq!(h.method, "POST");
    assert_eq!(h.path, "/api/x?y=1");
    assert_eq!(h.host, "app.ns:8080");
    assert_eq!(h.scheme, "https");
    assert_eq!(h.protocol, "HTTP/1.1");
    assert_eq!(h.id, "rid");
    assert_eq!(h.size, 12);
    assert_eq!(h.headers["x-user"], "alice");
    assert_eq!(h.headers["x-multi"], "a,b");
    assert_eq!(h.headers["cookie"], "a=1; b=2");
    assert_eq!(h.headers[":authority"], "app.ns:8080");
    assert_eq!(h.headers[":path"], "/api/x?y=1");
    assert_eq!(h.headers[":method"], "POST");

    // HTTP/2: the authority is in the URI; plaintext.
    let mut request = parts("http://app.ns/p", &[]);
    request.version = http::Version::HTTP_2;
    let plain = CheckPeer { principal: None, ..peer() };
    let h = grpc::check_request(&request, &plain).attributes.unwrap().request.unwrap().http.unwrap();
    assert_eq!(
        (h.host.as_str(), h.scheme.as_str(), h.protocol.as_str(), h.size),
        ("app.ns", "http", "HTTP/2", 0)
    );
}

/// The bytes of an Envoy `CheckResponse`, written out by field number: status {code: 7},
/// denied_response {status {code: 401}, headers [{header {key: "x", value: "y"}}], body: "no"}.
#[test]
fn decodes_envoy_check_response_bytes() {
    let bytes = [
        0x0a, 0x02, 0x08, 0x07, // status
        0x12, 0x13, // denied_response
        0x0a, 0x03, 0x08, 0x91, 0x03, // .status.code = 401
        0x12, 0x08, 0x0a, 0x06, 0x0a, 0x01, b'x', 0x12, 0x01, b'y', // .headers
        0x1a, 0x02, b'n', b'o', // .body
    ];
    let answer = auth::CheckResponse::decode(&bytes[..]).unwrap();
    let ExtDecision::Deny { status, headers, body, reason } = grpc::decide("opa", answer).unwrap() else {
        panic!("deny")
    };
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers, [(HeaderName::from_static("x"), HeaderValue::from_static("y"))]);
    assert_eq!(body, "no");
    assert!(reason.contains("PermissionDenied"), "{reason}");
}

/// A socket address encodes as Envoy's: Address.socket_address (1) {address (2), port_value (3)}.
#[test]
fn encodes_envoy_address_bytes() {
    let address = core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            protocol: 0,
            address: "10.0.0.1".into(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(8080)),
        })),
    };
    let mut expected = vec![0x0a, 0x0d, 0x12, 0x08];
    expected.extend_from_slice(b"10.0.0.1");
    expected.extend_from_slice(&[0x18, 0x90, 0x3f]);
    assert_eq!(address.encode_to_vec(), expected);
}

fn option(key: &str, value: &str) -> core::HeaderValueOption {
    core::HeaderValueOption {
        header: Some(core::HeaderValue { key: key.into(), value: value.into(), raw_value: vec![] }),
        ..Default::default()
    }
}

#[test]
fn grpc_answers() {
    use auth::check_response::HttpResponse;
    // No status at all is code 0: OK, as Envoy reads it.
    assert_eq!(
        grpc::decide("p", auth::CheckResponse::default()).unwrap(),
        ExtDecision::Allow { headers: vec![] }
    );

    let ok = auth::CheckResponse {
        status: Some(trellis_xds::google::rpc::Status::default()),
        http_response: Some(HttpResponse::OkResponse(auth::OkHttpResponse {
            headers: vec![
                option("X-User", "alice"),
                option(":path", "/elsewhere"),
                option("content-length", "10"),
                option("host", "evil"),
                option("x-empty", ""),
                core::HeaderValueOption { keep_empty_value: true, ..option("x-kept", "") },
                core::HeaderValueOption {
                    header: Some(core::HeaderValue {
                        key: "x-raw".into(),
                        value: String::new(),
                        raw_value: b"r".to_vec(),
                    }),
                    ..Default::default()
                },
            ],
        })),
    };
    let ExtDecision::Allow { headers } = grpc::decide("p", ok).unwrap() else { panic!() };
    let names: Vec<_> = headers.iter().map(|(n, v)| format!("{n}={}", v.to_str().unwrap())).collect();
    assert_eq!(names, ["x-user=alice", "x-kept=", "x-raw=r"]);

    // A bad header in an allow is a malformed answer, not a header silently dropped.
    let bad = auth::CheckResponse {
        http_response: Some(HttpResponse::OkResponse(auth::OkHttpResponse {
            headers: vec![option("x y", "v")],
        })),
        ..Default::default()
    };
    assert!(grpc::decide("p", bad).is_err());
    let bad = auth::CheckResponse {
        http_response: Some(HttpResponse::OkResponse(auth::OkHttpResponse {
            headers: vec![option("x", "a\nb")],
        })),
        ..Default::default()
    };
    assert!(grpc::decide("p", bad).is_err());

    // Denied without a denied_response, or with a status that is no HTTP status: 403.
    let denied = |status: Option<i32>| auth::CheckResponse {
        status: Some(trellis_xds::google::rpc::Status { code: 16, message: "who?".into(), details: vec![] }),
        http_response: status.map(|code| {
            HttpResponse::DeniedResponse(auth::DeniedHttpResponse {
                status: Some(trellis_xds::envoy::r#type::v3::HttpStatus { code }),
                ..Default::default()
            })
        }),
    };
    for (given, expected) in
        [(None, 403), (Some(0), 403), (Some(100), 403), (Some(1000), 403), (Some(302), 302)]
    {
        let ExtDecision::Deny { status, reason, .. } = grpc::decide("p", denied(given)).unwrap() else {
            panic!()
        };
        assert_eq!(status.as_u16(), expected, "{given:?}");
        assert!(reason.contains("Unauthenticated: who?"), "{reason}");
    }
}

#[test]
fn http_check_request() {
    let h = pb::ExtAuthzHttp {
        path_prefix: "/check".into(),
        include_request_headers_in_check: vec!["x-user".into(), "x-b3-*".into()],
        include_additional_headers_in_check: [
            ("x-added".to_owned(), "1".to_owned()),
            ("x-user".to_owned(), "fixed".to_owned()),
        ]
        .into_iter()
        .collect(),
        ..Default::default()
    };
    let authz = ExtAuthz::compile(&[http("a", h)]).unwrap();
    let Kind::Http(h) = &authz.providers["a"].kind else { panic!() };
    let original = parts(
        "/admin?q=1",
        &[
            ("host", "app"),
            ("authorization", "Bearer t"),
            ("x-user", "alice"),
            ("x-b3-traceid", "1"),
            ("x-secret", "s"),
            ("content-length", "5"),
            ("transfer-encoding", "chunked"),
        ],
    );
    let check = h.request("127.0.0.1:1", &original).unwrap();
    assert_eq!(check.method(), "POST");
    assert_eq!(check.uri(), "http://127.0.0.1:1/check/admin?q=1");
    let headers = check.headers();
    assert_eq!(headers["host"], "app");
    assert_eq!(headers["authorization"], "Bearer t");
    assert_eq!(headers["x-user"], "fixed");
    assert_eq!(headers["x-b3-traceid"], "1");
    assert_eq!(headers["x-added"], "1");
    assert_eq!(headers["content-length"], "0");
    assert!(!headers.contains_key("x-secret") && !headers.contains_key("transfer-encoding"));
    assert_eq!(headers.len(), 6);
}

#[tokio::test]
async fn unknown_provider_denies() {
    let authz = ExtAuthz::compile(&[grpc("opa")]).unwrap();
    let decision = authz.check("other", &parts("/", &[]), &peer()).await;
    let ExtDecision::Deny { status, reason, .. } = decision else { panic!("deny") };
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(reason.contains("\"other\"") && reason.contains("not configured"), "{reason}");
}
