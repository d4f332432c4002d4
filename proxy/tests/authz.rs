//! AuthorizationPolicy over real mutual TLS: a STRICT server proxy in front of the app, client
//! proxies with their own identities from one CA. Who may call what is decided from the
//! verified peer; denials get `403 RBAC: access denied` (gRPC: PERMISSION_DENIED) and are
//! counted with the policy and rule that made it. (TCP is in the privileged mesh test: it needs
//! the redirect.)

mod common;

use std::net::SocketAddr;

use common::jwt::{ec_jwk, ec_key, es256_token, now};
use common::mesh::{ca, identity, mesh};
use common::{Client, TestProxy, Upstream};
use http::{Request, StatusCode, Version};
use http_body_util::Full;
use trellis_identity::ca::CertificateAuthority;

const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
const ORDERS: &str = "spiffe://cluster.local/ns/shop/sa/orders";
const CATALOG: &str = "spiffe://cluster.local/ns/shop/sa/catalog";

/// The catalog's proxy: STRICT, with `policies` (YAML list items of `authorization`).
async fn server(ca: &CertificateAuthority, policies: &str) -> TestProxy {
    TestProxy::start_with_identity(
        &format!("inboundTls: {{ mode: STRICT }}\nauthorization:\n{policies}"),
        true,
        identity(mesh(ca, "cluster.local", CATALOG)),
    )
    .await
}

/// A client proxy running as `id`, whose `catalog` service (HTTP on `app_port`, or TCP) is the
/// server proxy's inbound port.
async fn client(
    ca: &CertificateAuthority,
    id: &str,
    app_port: u16,
    inbound: SocketAddr,
    tcp: bool,
) -> TestProxy {
    let (protocol, tcp_cluster) = if tcp { ("TCP", ", tcpCluster: catalog") } else { ("HTTP", "") };
    let config = format!(
        r#"
services:
  - name: catalog.shop.svc.cluster.local
    aliases: [catalog]
    addresses: [127.0.0.1]
    ports: [{{ port: {app_port}, protocol: {protocol}{tcp_cluster} }}]
virtualHosts:
  - name: catalog.shop.svc.cluster.local:{app_port}
    routes: [{{ name: all, forward: {{ clusters: [{{ cluster: catalog }}] }} }}]
clusters:
  - {{ name: catalog, service: catalog.shop.svc.cluster.local }}
endpoints:
  - service: catalog.shop.svc.cluster.local
    serviceAccounts: ["{CATALOG}"]
    endpoints: [{{ address: 127.0.0.1, port: {}, meshTls: true }}]
"#,
        inbound.port()
    );
    TestProxy::start_with_identity(&config, true, identity(mesh(ca, "cluster.local", id))).await
}

struct Mesh {
    app: Upstream,
    server: TestProxy,
    frontend: TestProxy,
    orders: TestProxy,
}

async fn shop(policies: &str) -> Mesh {
    let ca = ca();
    let app = Upstream::start("catalog").await;
    let server = server(&ca, policies).await;
    let frontend = client(&ca, FRONTEND, app.addr.port(), server.inbound(), false).await;
    let orders = client(&ca, ORDERS, app.addr.port(), server.inbound(), false).await;
    Mesh { app, server, frontend, orders }
}

impl Mesh {
    async fn call(&self, from: &TestProxy, method: &str, path: &str) -> (StatusCode, String) {
        let mut client = Client::connect(from.outbound(), Version::HTTP_11).await;
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", format!("catalog:{}", self.app.addr.port()))
            .body(Full::default())
            .unwrap();
        let answer = client.send(request).await.unwrap();
        (answer.status, answer.text())
    }
}

fn counted(metrics: &str, decision: &str, policy: &str, rule: &str) -> bool {
    let want = format!("decision=\"{decision}\",policy=\"{policy}\",rule=\"{rule}\"");
    metrics
        .lines()
        .any(|l| l.starts_with("trellis_authz_decisions_total") && l.contains(&want) && !l.ends_with(" 0"))
}

#[tokio::test]
async fn only_frontend_may_call_and_others_are_denied_by_default() {
    let mesh = shop(
        r#"  - namespace: shop
    name: frontend-only
    rules: [{ from: [{ principals: ["cluster.local/ns/shop/sa/frontend"] }] }]
"#,
    )
    .await;
    assert_eq!(mesh.call(&mesh.frontend, "GET", "/items").await, (StatusCode::OK, "catalog".into()));
    assert_eq!(
        mesh.call(&mesh.orders, "GET", "/items").await,
        (StatusCode::FORBIDDEN, "RBAC: access denied".into())
    );
    assert_eq!(mesh.app.count(), 1, "the denied call never reached the app");
    let metrics = mesh.server.metrics().await;
    assert!(counted(&metrics, "deny", "none", ""), "no ALLOW policy matched: {metrics}");
    // The request is counted as denied with both principals, like any other.
    assert!(
        metrics.lines().any(|l| l.starts_with("istio_requests_total")
            && l.contains("response_code=\"403\"")
            && l.contains(&format!("source_principal=\"{ORDERS}\""))),
        "{metrics}"
    );
}

#[tokio::test]
async fn deny_names_its_rule_and_normalized_paths_cannot_slip_past_it() {
    let mesh = shop(
        r#"  - namespace: shop
    name: no-admin
    action: DENY
    rules:
      - { index: 0, to: [{ methods: [DELETE] }] }
      - { index: 1, to: [{ paths: ["/admin*"] }] }
"#,
    )
    .await;
    for path in [
        "/admin",
        "/public/../admin",
        "/public/%2E%2E/admin",
        "/public/%2e%2e/admin/x",
        "//admin",
        "/./admin",
    ] {
        let (status, body) = mesh.call(&mesh.frontend, "GET", path).await;
        assert_eq!((status, body.as_str()), (StatusCode::FORBIDDEN, "RBAC: access denied"), "{path}");
    }
    assert_eq!(mesh.call(&mesh.frontend, "DELETE", "/items").await.0, StatusCode::FORBIDDEN);
    assert_eq!(
        mesh.call(&mesh.frontend, "GET", "/public/x?next=/admin").await.0,
        StatusCode::OK,
        "the query is no path"
    );
    assert_eq!(mesh.app.last().path, "/public/x?next=/admin");
    assert_eq!(mesh.call(&mesh.frontend, "GET", "/public/..//items").await.0, StatusCode::OK);
    assert_eq!(mesh.app.last().path, "/items", "the app sees the path the policy saw");
    let metrics = mesh.server.metrics().await;
    assert!(counted(&metrics, "deny", "shop/no-admin", "1"), "{metrics}");
    assert!(counted(&metrics, "deny", "shop/no-admin", "0"), "{metrics}");
}

#[tokio::test]
async fn dry_run_and_audit_decide_nothing_but_are_counted() {
    let mesh = shop(
        r#"  - { namespace: shop, name: would-deny, action: DENY, dryRun: true, rules: [{}] }
  - { namespace: shop, name: watched, action: AUDIT, rules: [{ to: [{ paths: ["/items"] }] }] }
"#,
    )
    .await;
    assert_eq!(mesh.call(&mesh.orders, "GET", "/items").await.0, StatusCode::OK);
    let metrics = mesh.server.metrics().await;
    assert!(counted(&metrics, "dry_run_deny", "shop/would-deny", "0"), "{metrics}");
    assert!(counted(&metrics, "audit", "shop/watched", "0"), "{metrics}");
}

#[tokio::test]
async fn grpc_gets_permission_denied() {
    let mesh = shop("  - { namespace: shop, name: nobody, rules: [] }\n").await;
    let mut client = Client::connect(mesh.frontend.outbound(), Version::HTTP_11).await;
    let request = Request::post("/shop.Catalog/List")
        .header("host", format!("catalog:{}", mesh.app.addr.port()))
        .header("content-type", "application/grpc")
        .body(Full::default())
        .unwrap();
    let answer = client.send(request).await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("grpc-status"), Some("7"), "PERMISSION_DENIED");
    assert_eq!(answer.header("grpc-message"), Some("RBAC: access denied"));
}

#[tokio::test]
async fn jwt_identity_decides_with_request_principals_and_claims() {
    let key = ec_key();
    let jwks = serde_json::json!({ "keys": [ec_jwk(&key, "k1")] }).to_string();
    let issuer = "https://issuer.example";
    let token = |sub: &str, groups: &[&str]| {
        es256_token(
            &key,
            "k1",
            &serde_json::json!({ "iss": issuer, "sub": sub, "exp": now() + 600, "groups": groups }),
        )
    };
    let mesh = shop(&format!(
        r#"  - namespace: shop
    name: admins-of-the-issuer
    rules:
      - from: [{{ requestPrincipals: ["{issuer}/*"] }}]
        when: [{{ key: "request.auth.claims[groups]", values: [admins] }}]
jwtProviders:
  - {{ source: shop/jwt, issuer: "{issuer}", jwks: '{jwks}' }}
"#
    ))
    .await;
    let call = |token: Option<String>| {
        let mesh = &mesh;
        async move {
            let mut client = Client::connect(mesh.frontend.outbound(), Version::HTTP_11).await;
            let mut request =
                Request::get("/items").header("host", format!("catalog:{}", mesh.app.addr.port()));
            if let Some(t) = token {
                request = request.header("authorization", format!("Bearer {t}"));
            }
            let answer = client.send(request.body(Full::default()).unwrap()).await.unwrap();
            (answer.status, answer.text(), answer.header("www-authenticate").map(str::to_owned))
        }
    };
    assert_eq!(call(Some(token("alice", &["admins"]))).await.0, StatusCode::OK);
    assert!(!mesh.app.last().headers.contains_key("authorization"), "the token is not forwarded");
    assert_eq!(
        call(Some(token("bob", &["dev"]))).await.1,
        "RBAC: access denied",
        "a valid token without the claim"
    );
    assert_eq!(call(None).await.1, "RBAC: access denied", "no token: no request principal");
    let (status, body, challenge) = call(Some(token("alice", &["admins"]) + "x")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(challenge.is_some_and(|c| c.contains("invalid_token")));
    assert_eq!(mesh.app.count(), 1);
}

/// An HTTP check server (the ext_authz HTTP protocol): allows `x-user: alice` and tells the
/// app who the user is, answers anyone else 401 with a challenge.
async fn check_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(|request: http::Request<hyper::body::Incoming>| async move {
                        let alice = request.headers().get("x-user").is_some_and(|v| v == "alice");
                        let response = if alice {
                            http::Response::builder().status(200).header("x-auth-user", "alice")
                        } else {
                            http::Response::builder()
                                .status(401)
                                .header("www-authenticate", "Basic realm=shop")
                        };
                        Ok::<_, std::convert::Infallible>(
                            response.body(Full::new(bytes::Bytes::from_static(b"who are you?"))).unwrap(),
                        )
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn custom_asks_the_provider_first() {
    let checker = check_server().await;
    let mesh = shop(&format!(
        r#"  - {{ namespace: shop, name: ext-check, action: CUSTOM, provider: checker, rules: [{{ to: [{{ paths: ["/private*"] }}] }}] }}
extAuthz:
  - name: checker
    addresses: ["{checker}"]
    http: {{ includeRequestHeadersInCheck: [x-user], headersToUpstreamOnAllow: [x-auth-user], headersToDownstreamOnDeny: [www-authenticate] }}
"#
    ))
    .await;
    let call = |user: &'static str, path: &'static str| {
        let mesh = &mesh;
        async move {
            let mut client = Client::connect(mesh.frontend.outbound(), Version::HTTP_11).await;
            let request = Request::get(path)
                .header("host", format!("catalog:{}", mesh.app.addr.port()))
                .header("x-user", user)
                .body(Full::default())
                .unwrap();
            client.send(request).await.unwrap()
        }
    };
    let allowed = call("alice", "/private/data").await;
    assert_eq!(allowed.status, StatusCode::OK);
    assert_eq!(mesh.app.last().headers.get("x-auth-user").map(String::as_str), Some("alice"));
    let denied = call("mallory", "/private/data").await;
    assert_eq!((denied.status, denied.text().as_str()), (StatusCode::UNAUTHORIZED, "who are you?"));
    assert_eq!(denied.header("www-authenticate"), Some("Basic realm=shop"));
    assert_eq!(call("mallory", "/public").await.status, StatusCode::OK, "CUSTOM only where its rules match");
    assert!(counted(&mesh.server.metrics().await, "custom_deny", "shop/ext-check", "0"));
}
