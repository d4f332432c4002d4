//! AuthorizationPolicy over real mutual TLS: a STRICT server proxy in front of the app, client
//! proxies with their own identities from one CA. Who may call what is decided from the
//! verified peer; denials get `403 RBAC: access denied` (gRPC: PERMISSION_DENIED) and are
//! counted with the policy and rule that made it. (TCP is in the privileged mesh test: it needs
//! the redirect.)

mod common;

use std::net::SocketAddr;

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
