//! The Kubernetes Gateway API end to end, on loopback: trellisd's Kubernetes source and its
//! status writer (kube-rs against the stand-in API server), its xDS server, a gateway proxy
//! (`--role gateway`) labelled `gateway.networking.k8s.io/gateway-name`, two plain HTTP
//! backends behind Services, and a real HTTP client.
//!
//! What is covered, by the Gateway API conformance test it corresponds to (the conformance
//! suite itself is not run: it needs a real cluster):
//! - GatewayClassObservedGenerationBump, GatewayObservedGenerationBump: status conditions carry
//!   the object's generation and follow a spec change.
//! - GatewayWithAttachedRoutes: a listener's `attachedRoutes` counts its routes.
//! - GatewayInvalidTLSConfiguration (missing Secret): the HTTPS listener's ResolvedRefs False /
//!   InvalidCertificateRef, the HTTP listener keeps working; HTTPRouteHTTPSListener: once the
//!   Secret exists, a real TLS client reaches the route through the listener.
//! - HTTPRouteSimpleSameNamespace / HTTPRouteCrossNamespace (allowedRoutes All): a route from
//!   another namespace through the Gateway, Accepted and ResolvedRefs True.
//! - HTTPRouteHostnameIntersection (part): routing by host.
//! - HTTPRouteMatching, HTTPRouteExactPathMatching, HTTPRouteHeaderMatching,
//!   HTTPRouteQueryParamMatching, HTTPRouteMethodMatching (one case each).
//! - HTTPRouteWeight: a 3:1 split between two Services.
//! - HTTPRouteRequestHeaderModifier, HTTPRouteRedirectScheme/HostAndStatus (one case each).
//! - HTTPRouteInvalidNonExistentBackendRef: ResolvedRefs False / BackendNotFound and 500 for its
//!   requests, while the other route keeps working.
//! - HTTPRouteInvalidBackendRefUnknownKind: ResolvedRefs False / InvalidKind.
//! - HTTPRouteInvalidCrossNamespaceBackendRef: RefNotPermitted without a ReferenceGrant,
//!   ResolvedRefs True once one exists (HTTPRouteReferenceGrant).
//! - HTTPRouteInvalidParentRefNotMatchingSectionName / a parentRef to a Gateway that does not
//!   exist: Accepted False / NoMatchingParent.
//! - GRPCRouteExactMethodMatching / GRPCRouteHeaderMatching (in part): a GRPCRoute's method
//!   matches route by the call's path (`/<service>/<method>`) through the same listener as the
//!   HTTPRoutes, its status Accepted; a method match with neither service nor method is
//!   Accepted False / UnsupportedValue naming the field. The client is HTTP/1.1 POSTing to the
//!   gRPC paths, not a gRPC client: what is tested is the routing.

mod ca_support;
mod fake_api;
mod gateway_support;

use std::sync::Arc;

use ca_support::{DEADLINE, eventually};
use fake_api::FakeApi;
use gateway_support::{free_port, mesh_identity, start_control_plane, start_gateway};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trellis_identity::ca::{CaMaterial, CertificateAuthority};
use trellis_proxy::metrics::Workload;
use trellis_xds::types::ProxyNode;

const SERVICES: &str = "/api/v1/services";
const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
const PODS: &str = "/api/v1/pods";
const SECRETS: &str = "/api/v1/secrets";
const DESTINATION_RULES: &str = "/apis/networking.istio.io/v1/destinationrules";
const CLASSES: &str = "/apis/gateway.networking.k8s.io/v1/gatewayclasses";
const GATEWAYS: &str = "/apis/gateway.networking.k8s.io/v1/gateways";
const ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/httproutes";
const GRPC_ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/grpcroutes";
const GRANTS: &str = "/apis/gateway.networking.k8s.io/v1beta1/referencegrants";
const V1: &str = "gateway.networking.k8s.io/v1";

const GATEWAY_IP: &str = "127.0.0.50";
const V1_IP: &str = "127.0.0.51";
const V2_IP: &str = "127.0.0.52";

struct Mesh {
    api: FakeApi,
    http_port: u16,
    https_port: u16,
    _gateway: trellis_proxy::Running,
}

/// A backend answering `<name> <method> <path> added=<x-added header>`.
async fn start_backend(ip: &str, name: &'static str) -> u16 {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| async move {
        let added = request.headers().get("x-added").and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
        format!("{name} {} {} added={added}", request.method(), request.uri().path())
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

impl Mesh {
    async fn start() -> Mesh {
        let mut collections = fake_api::WATCHED.to_vec();
        collections.extend([
            (SECRETS, "v1", "Secret"),
            (CLASSES, V1, "GatewayClass"),
            (GATEWAYS, V1, "Gateway"),
            (ROUTES, V1, "HTTPRoute"),
            (GRPC_ROUTES, V1, "GRPCRoute"),
            (GRANTS, "gateway.networking.k8s.io/v1beta1", "ReferenceGrant"),
        ]);
        let api = FakeApi::start(&collections).await;
        let xds = start_control_plane(&api, true).await;
        let mesh_ca =
            CertificateAuthority::new(&CaMaterial::generate_root("cluster.local").unwrap()).unwrap();

        // Two plain HTTP backends (not in the mesh: TLS disabled towards them), in `shop`, and a
        // third Service in `other` for cross-namespace references.
        for (name, namespace, ip) in
            [("web-v1", "shop", V1_IP), ("web-v2", "shop", V2_IP), ("elsewhere", "other", V1_IP)]
        {
            let port = start_backend(ip, if name == "web-v2" { "v2" } else { "v1" }).await;
            api.apply(SERVICES, json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"clusterIP": "10.96.0.9", "ports": [{"name": "http", "port": 80, "targetPort": port, "appProtocol": "http"}]}}));
            api.apply(SLICES, json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("{name}-1"), "namespace": namespace, "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4", "ports": [{"name": "http", "port": port}],
                "endpoints": [{"addresses": [ip]}]}));
            api.apply(DESTINATION_RULES, json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"host": format!("{name}.{namespace}.svc.cluster.local"), "trafficPolicy": {"tls": {"mode": "DISABLE"}}}}));
        }
        // The gateway proxy's pod, as the status writer sees it (Programmed).
        api.apply(
            PODS,
            json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "public-gw-1", "namespace": "edge",
                "labels": {"gateway.networking.k8s.io/gateway-name": "public"}},
            "spec": {"serviceAccountName": "public", "containers": []},
            "status": {"podIP": GATEWAY_IP, "podIPs": [{"ip": GATEWAY_IP}]}}),
        );

        let node = ProxyNode {
            id: format!("router~{GATEWAY_IP}~public-gw-1.edge~edge.svc.cluster.local"),
            namespace: "edge".into(),
            workload: "public-gw".into(),
            labels: [("gateway.networking.k8s.io/gateway-name".to_owned(), "public".to_owned())].into(),
            ..Default::default()
        };
        let identity = mesh_identity(&mesh_ca, "spiffe://cluster.local/ns/edge/sa/public");
        let workload = Workload { name: "public-gw".into(), namespace: "edge".into() };
        let gateway = start_gateway(xds, GATEWAY_IP, node, identity, workload);
        let http_port = free_port(GATEWAY_IP);
        let https_port = free_port(GATEWAY_IP);

        api.apply(
            CLASSES,
            json!({"apiVersion": V1, "kind": "GatewayClass",
            "metadata": {"name": "trellis", "generation": 1},
            "spec": {"controllerName": "trellis.io/gateway-controller"}}),
        );
        // Another controller's class: Trellis leaves it alone.
        api.apply(
            CLASSES,
            json!({"apiVersion": V1, "kind": "GatewayClass",
            "metadata": {"name": "someone-else", "generation": 1},
            "spec": {"controllerName": "example.com/gateway"}}),
        );
        api.apply(GATEWAYS, json!({"apiVersion": V1, "kind": "Gateway",
            "metadata": {"name": "public", "namespace": "edge", "generation": 1},
            "spec": {"gatewayClassName": "trellis", "listeners": [
                {"name": "http", "port": http_port, "protocol": "HTTP", "allowedRoutes": {"namespaces": {"from": "All"}}},
                {"name": "https", "port": https_port, "protocol": "HTTPS", "hostname": "secure.example.com",
                 "tls": {"mode": "Terminate", "certificateRefs": [{"kind": "Secret", "name": "missing-cert"}]},
                 "allowedRoutes": {"namespaces": {"from": "All"}}}]}}));
        Mesh { api, http_port, https_port, _gateway: gateway }
    }

    fn route(&self, name: &str, spec: Value) {
        self.api.apply(
            ROUTES,
            json!({"apiVersion": V1, "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": "shop", "generation": 1,
                "creationTimestamp": "2025-01-01T00:00:00Z"},
            "spec": spec}),
        );
    }

    fn status(&self, path: &str, namespace: &str, name: &str) -> Value {
        self.api.get(path, namespace, name).map(|o| o["status"].clone()).unwrap_or(Value::Null)
    }

    /// Waits until the status of an object satisfies `check`; the status.
    async fn status_until(
        &self,
        path: &str,
        namespace: &str,
        name: &str,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        eventually(what, async || check(&self.status(path, namespace, name))).await;
        self.status(path, namespace, name)
    }
}

/// The condition of `kind` in a `conditions` list: (status, reason, observedGeneration).
fn condition(conditions: &Value, kind: &str) -> Option<(String, String, i64)> {
    let c = conditions.as_array()?.iter().find(|c| c["type"] == kind)?;
    Some((
        c["status"].as_str()?.to_owned(),
        c["reason"].as_str()?.to_owned(),
        c["observedGeneration"].as_i64()?,
    ))
}

fn is(conditions: &Value, kind: &str, status: &str, reason: &str) -> bool {
    condition(conditions, kind).is_some_and(|(s, r, _)| s == status && r == reason)
}

/// The (only) parent status of a route for the Gateway `name`.
fn parent<'a>(status: &'a Value, name: &str) -> &'a Value {
    static NULL: Value = Value::Null;
    status["parents"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["parentRef"]["name"] == name))
        .map_or(&NULL, |p| &p["conditions"])
}

/// One HTTP/1.1 request through the gateway: status code and body.
async fn request(
    port: u16,
    method: &str,
    host: &str,
    path: &str,
    headers: &str,
) -> Result<(u16, String), String> {
    let mut tcp =
        tokio::net::TcpStream::connect((GATEWAY_IP, port)).await.map_err(|e| format!("connect: {e}"))?;
    let text = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n");
    tcp.write_all(text.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
    let mut response = Vec::new();
    tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut response))
        .await
        .map_err(|_| "no answer".to_owned())?
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let code = text.get(9..12).and_then(|c| c.parse().ok()).ok_or_else(|| format!("not HTTP: {text:?}"))?;
    Ok((code, text))
}

/// Waits until a request answers `code` with a body containing `body`; the response.
async fn until(
    port: u16,
    method: &str,
    host: &str,
    path: &str,
    headers: &str,
    code: u16,
    body: &str,
) -> String {
    let start = tokio::time::Instant::now();
    loop {
        let last = match request(port, method, host, path, headers).await {
            Ok((c, text)) if c == code && text.contains(body) => return text,
            Ok((c, text)) => format!("{c}: {text}"),
            Err(e) => e,
        };
        assert!(start.elapsed() < DEADLINE, "{method} {host}{path}: not {code} with {body:?}; last: {last}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_api_status_and_routing_through_the_gateway_proxy() {
    let mesh = Mesh::start().await;
    mesh.route("shop", json!({
        "parentRefs": [{"name": "public", "namespace": "edge", "sectionName": "http"}],
        "hostnames": ["shop.example.com"],
        "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/split"}}],
             "backendRefs": [{"name": "web-v1", "port": 80, "weight": 3}, {"name": "web-v2", "port": 80, "weight": 1}]},
            {"matches": [{"path": {"type": "Exact", "value": "/exact"}}],
             "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-added", "value": "yes"}]}}],
             "backendRefs": [{"name": "web-v2", "port": 80}]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/match"},
                          "headers": [{"name": "x-version", "value": "2"}], "method": "POST",
                          "queryParams": [{"name": "q", "value": "1"}]}],
             "backendRefs": [{"name": "web-v2", "port": 80}]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/old"}}],
             "filters": [{"type": "RequestRedirect", "requestRedirect": {"hostname": "new.example.com", "statusCode": 301}}]},
            {"backendRefs": [{"name": "web-v1", "port": 80}]}
        ]}));

    // Status: the class, the Gateway and its listeners, the route's parent.
    let class = mesh
        .status_until(CLASSES, "", "trellis", "GatewayClass accepted", |s| {
            is(&s["conditions"], "Accepted", "True", "Accepted")
        })
        .await;
    assert_eq!(condition(&class["conditions"], "Accepted").unwrap().2, 1);
    let gateway = mesh
        .status_until(GATEWAYS, "edge", "public", "Gateway programmed, one attached route", |s| {
            s["listeners"][0]["attachedRoutes"] == 1
                && is(&s["conditions"], "Programmed", "True", "Programmed")
        })
        .await;
    assert!(is(&gateway["conditions"], "Accepted", "False", "ListenersNotValid"), "{gateway:#}");
    let http = &gateway["listeners"][0];
    assert_eq!(http["name"], "http");
    assert!(
        is(&http["conditions"], "Accepted", "True", "Accepted")
            && is(&http["conditions"], "ResolvedRefs", "True", "ResolvedRefs")
    );
    let https = &gateway["listeners"][1];
    assert!(is(&https["conditions"], "ResolvedRefs", "False", "InvalidCertificateRef"), "{https:#}");
    assert_eq!(https["attachedRoutes"], 0);
    let route = mesh
        .status_until(ROUTES, "shop", "shop", "route accepted and resolved", |s| {
            is(parent(s, "public"), "Accepted", "True", "Accepted")
                && is(parent(s, "public"), "ResolvedRefs", "True", "ResolvedRefs")
        })
        .await;
    assert_eq!(route["parents"][0]["controllerName"], "trellis.io/gateway-controller");
    assert!(mesh.status(CLASSES, "", "someone-else").is_null(), "another controller's class is left alone");

    // Routing: by host and path, matches, filters, a redirect.
    let port = mesh.http_port;
    until(port, "GET", "shop.example.com", "/anything", "", 200, "v1 GET /anything").await;
    until(port, "GET", "shop.example.com", "/exact", "", 200, "v2 GET /exact added=yes").await;
    // `/exact/more` is not the exact path: the catch-all rule.
    until(port, "GET", "shop.example.com", "/exact/more", "", 200, "v1 GET /exact/more").await;
    until(
        port,
        "POST",
        "shop.example.com",
        "/match?q=1",
        "x-version: 2\r\ncontent-length: 0\r\n",
        200,
        "v2 POST /match",
    )
    .await;
    until(port, "GET", "shop.example.com", "/match?q=1", "x-version: 2\r\n", 200, "v1 GET /match").await;
    // A path prefix matches whole elements: `/splitting` is not under `/split`.
    until(port, "GET", "shop.example.com", "/splitting", "", 200, "v1 GET /splitting").await;
    let redirect = until(port, "GET", "shop.example.com", "/old/page", "", 301, "").await;
    assert!(
        redirect.to_ascii_lowercase().contains("location: http://new.example.com/old/page"),
        "{redirect}"
    );
    // Another host has no route.
    let (code, _) = request(port, "GET", "other.example.com", "/", "").await.unwrap();
    assert_eq!(code, 404);

    // The 3:1 weight split: both backends answer, v1 more often.
    until(port, "GET", "shop.example.com", "/split/x", "", 200, "GET /split/x").await;
    let (mut v1, mut v2) = (0, 0);
    for _ in 0..200 {
        let (code, text) = request(port, "GET", "shop.example.com", "/split/x", "").await.unwrap();
        assert_eq!(code, 200, "{text}");
        if text.contains("v1 GET") { v1 += 1 } else { v2 += 1 }
    }
    assert!(v2 > 0 && v1 > v2, "3:1 split gave v1={v1} v2={v2}");

    // A spec change bumps the generation; the conditions follow it.
    assert!(mesh.api.update(GATEWAYS, "edge", "public", |g| {
        g["metadata"]["generation"] = json!(2);
        g["spec"]["listeners"][1]["hostname"] = json!("tls.example.com");
    }));
    mesh.status_until(GATEWAYS, "edge", "public", "Gateway conditions at generation 2", |s| {
        condition(&s["conditions"], "Accepted").is_some_and(|c| c.2 == 2)
    })
    .await;
    assert!(mesh.api.update(CLASSES, "", "trellis", |c| {
        c["metadata"]["generation"] = json!(2);
        c["metadata"]["labels"] = json!({"touched": "yes"});
    }));
    mesh.status_until(CLASSES, "", "trellis", "GatewayClass conditions at generation 2", |s| {
        condition(&s["conditions"], "Accepted").is_some_and(|c| c.2 == 2)
    })
    .await;

    // No write loop: passes of the status writer that change nothing for the route (each
    // pass looks at every object, in order) write nothing to it.
    let patch = "PATCH /apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes/shop/status";
    let route_writes = || mesh.api.requests().iter().filter(|r| r.as_str() == patch).count();
    let before = route_writes();
    assert!(before >= 1, "the route's status was written");
    for generation in [3, 4] {
        assert!(mesh.api.update(CLASSES, "", "trellis", |c| c["metadata"]["generation"] = json!(generation)));
        mesh.status_until(CLASSES, "", "trellis", "GatewayClass conditions follow", |s| {
            condition(&s["conditions"], "Accepted").is_some_and(|c| c.2 == generation)
        })
        .await;
    }
    assert_eq!(route_writes(), before, "an unchanged status is not written again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_routes_route_by_method_and_report_status() {
    let mesh = Mesh::start().await;
    let grpc_route = |name: &str, spec: Value| {
        mesh.api.apply(
            GRPC_ROUTES,
            json!({"apiVersion": V1, "kind": "GRPCRoute",
            "metadata": {"name": name, "namespace": "shop", "generation": 1,
                "creationTimestamp": "2025-01-01T00:00:00Z"},
            "spec": spec}),
        );
    };
    grpc_route(
        "greeter",
        json!({
        "parentRefs": [{"name": "public", "namespace": "edge", "sectionName": "http"}],
        "hostnames": ["grpc.example.com"],
        "rules": [
            {"matches": [{"method": {"service": "pkg.Greeter", "method": "SayHello"}}],
             "backendRefs": [{"name": "web-v2", "port": 80}]},
            {"matches": [{"method": {"service": "pkg.Greeter"}, "headers": [{"name": "x-tenant", "value": "b"}]}],
             "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-added", "value": "yes"}]}}],
             "backendRefs": [{"name": "web-v2", "port": 80}]},
            {"backendRefs": [{"name": "web-v1", "port": 80}]}
        ]}),
    );
    grpc_route(
        "broken",
        json!({
        "parentRefs": [{"name": "public", "namespace": "edge"}],
        "hostnames": ["broken.example.com"],
        "rules": [{"matches": [{"method": {"type": "Exact"}}], "backendRefs": [{"name": "web-v1", "port": 80}]}]}),
    );

    let status = mesh
        .status_until(GRPC_ROUTES, "shop", "greeter", "GRPCRoute accepted and resolved", |s| {
            is(parent(s, "public"), "Accepted", "True", "Accepted")
                && is(parent(s, "public"), "ResolvedRefs", "True", "ResolvedRefs")
        })
        .await;
    assert_eq!(status["parents"][0]["controllerName"], "trellis.io/gateway-controller");
    let broken = mesh
        .status_until(GRPC_ROUTES, "shop", "broken", "the broken GRPCRoute refused", |s| {
            is(parent(s, "public"), "Accepted", "False", "UnsupportedValue")
        })
        .await;
    let message = broken["parents"][0]["conditions"][0]["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("spec.rules[0].matches[0].method"), "{broken:#}");
    let gateway = mesh
        .status_until(GATEWAYS, "edge", "public", "the GRPCRoute attached", |s| {
            s["listeners"][0]["attachedRoutes"] == 1
        })
        .await;
    let kinds: Vec<&str> = gateway["listeners"][0]["supportedKinds"]
        .as_array()
        .map(|ks| ks.iter().filter_map(|k| k["kind"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(kinds, ["HTTPRoute", "GRPCRoute"]);

    let port = mesh.http_port;
    let post = "content-type: application/grpc\r\ncontent-length: 0\r\n";
    let host = "grpc.example.com";
    until(port, "POST", host, "/pkg.Greeter/SayHello", post, 200, "v2 POST /pkg.Greeter/SayHello").await;
    let tenant = format!("x-tenant: b\r\n{post}");
    until(port, "POST", host, "/pkg.Greeter/SayBye", &tenant, 200, "v2 POST /pkg.Greeter/SayBye added=yes")
        .await;
    // Without the header, another service, or the service's name as a prefix of another's: the
    // catch-all rule.
    until(port, "POST", host, "/pkg.Greeter/SayBye", post, 200, "v1 POST /pkg.Greeter/SayBye").await;
    until(port, "POST", host, "/pkg.Other/SayHello", post, 200, "v1 POST /pkg.Other/SayHello").await;
    until(port, "POST", host, "/pkg.GreeterX/SayHello", &tenant, 200, "v1 POST").await;
    // The refused route serves nothing.
    let (code, _) = request(port, "POST", "broken.example.com", "/a.B/C", post).await.unwrap();
    assert_eq!(code, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_references_are_reported_in_status_and_do_not_stop_the_other_routes() {
    let mesh = Mesh::start().await;
    let parent_ref = json!([{"name": "public", "namespace": "edge"}]);
    mesh.route(
        "good",
        json!({"parentRefs": parent_ref, "hostnames": ["good.example.com"],
        "rules": [{"backendRefs": [{"name": "web-v1", "port": 80}]}]}),
    );
    mesh.route(
        "missing",
        json!({"parentRefs": parent_ref, "hostnames": ["missing.example.com"],
        "rules": [{"backendRefs": [{"name": "no-such-service", "port": 80}]}]}),
    );
    mesh.route(
        "unknown-kind",
        json!({"parentRefs": parent_ref, "hostnames": ["kind.example.com"],
        "rules": [{"backendRefs": [{"group": "example.com", "kind": "Bucket", "name": "web-v1"}]}]}),
    );
    mesh.route(
        "cross",
        json!({"parentRefs": parent_ref, "hostnames": ["cross.example.com"],
        "rules": [{"backendRefs": [{"name": "elsewhere", "namespace": "other", "port": 80}]}]}),
    );
    mesh.route(
        "orphan",
        json!({"parentRefs": [{"name": "no-such-gateway", "namespace": "edge"}],
        "rules": [{"backendRefs": [{"name": "web-v1", "port": 80}]}]}),
    );
    mesh.route(
        "wrong-section",
        json!({"parentRefs": [{"name": "public", "namespace": "edge", "sectionName": "nope"}],
        "rules": [{"backendRefs": [{"name": "web-v1", "port": 80}]}]}),
    );

    for (name, reason) in
        [("missing", "BackendNotFound"), ("unknown-kind", "InvalidKind"), ("cross", "RefNotPermitted")]
    {
        // Accepted (the route attaches) but not resolved. (Until the Gateway is listed, the
        // route may first show NoMatchingParent: each kind is watched on its own.)
        mesh.status_until(
            ROUTES,
            "shop",
            name,
            &format!("{name}: Accepted, ResolvedRefs False/{reason}"),
            |s| {
                is(parent(s, "public"), "ResolvedRefs", "False", reason)
                    && is(parent(s, "public"), "Accepted", "True", "Accepted")
            },
        )
        .await;
    }
    mesh.status_until(ROUTES, "shop", "orphan", "orphan: NoMatchingParent", |s| {
        is(parent(s, "no-such-gateway"), "Accepted", "False", "NoMatchingParent")
    })
    .await;
    mesh.status_until(ROUTES, "shop", "wrong-section", "wrong section: NoMatchingParent", |s| {
        is(parent(s, "public"), "Accepted", "False", "NoMatchingParent")
    })
    .await;
    let gateway = mesh
        .status_until(GATEWAYS, "edge", "public", "four routes attached", |s| {
            s["listeners"][0]["attachedRoutes"] == 4
        })
        .await;
    assert_eq!(gateway["listeners"][1]["attachedRoutes"], 0, "the invalid HTTPS listener takes none");

    // A route that does not decode is left out (logged); the others keep working.
    mesh.route("malformed", json!({"parentRefs": parent_ref, "rules": "not a list"}));
    mesh.route(
        "late",
        json!({"parentRefs": parent_ref, "hostnames": ["late.example.com"],
        "rules": [{"backendRefs": [{"name": "web-v2", "port": 80}]}]}),
    );

    let port = mesh.http_port;
    until(port, "GET", "late.example.com", "/", "", 200, "v2 GET /").await;
    assert!(mesh.status(ROUTES, "shop", "malformed").is_null(), "no status for what was not read");
    until(port, "GET", "good.example.com", "/", "", 200, "v1 GET /").await;
    until(port, "GET", "missing.example.com", "/", "", 500, "").await;
    until(port, "GET", "kind.example.com", "/", "", 500, "").await;
    until(port, "GET", "cross.example.com", "/", "", 500, "").await;
    until(port, "GET", "good.example.com", "/still", "", 200, "v1 GET /still").await;

    // A ReferenceGrant in the Service's namespace permits the cross-namespace backend.
    mesh.api.apply(
        GRANTS,
        json!({"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
        "metadata": {"name": "from-shop", "namespace": "other"},
        "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "shop"}],
                 "to": [{"group": "", "kind": "Service"}]}}),
    );
    mesh.status_until(ROUTES, "shop", "cross", "cross: ResolvedRefs True", |s| {
        is(parent(s, "public"), "ResolvedRefs", "True", "ResolvedRefs")
    })
    .await;
    until(port, "GET", "cross.example.com", "/", "", 200, "v1 GET /").await;

    // The Service appears: the route resolves and routes.
    mesh.api.apply(
        SERVICES,
        json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "no-such-service", "namespace": "shop"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]}}),
    );
    mesh.status_until(ROUTES, "shop", "missing", "missing: ResolvedRefs True", |s| {
        is(parent(s, "public"), "ResolvedRefs", "True", "ResolvedRefs")
    })
    .await;
}

/// A self-signed certificate for `name`: (chain PEM, key PEM).
fn self_signed(name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap().self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_listener_terminates_tls_with_its_secret_once_the_secret_exists() {
    use base64::Engine;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

    let mesh = Mesh::start().await;
    mesh.route(
        "secure",
        json!({
        "parentRefs": [{"name": "public", "namespace": "edge", "sectionName": "https"}],
        "rules": [{"backendRefs": [{"name": "web-v2", "port": 80}]}]}),
    );
    // The Secret is missing first: the listener is not served and says why.
    mesh.status_until(GATEWAYS, "edge", "public", "https listener: InvalidCertificateRef", |s| {
        is(&s["listeners"][1]["conditions"], "ResolvedRefs", "False", "InvalidCertificateRef")
    })
    .await;

    let (chain, key) = self_signed("secure.example.com");
    let b64 = |t: &str| base64::engine::general_purpose::STANDARD.encode(t);
    mesh.api.apply(
        SECRETS,
        json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "missing-cert", "namespace": "edge"},
        "data": {"tls.crt": b64(&chain), "tls.key": b64(&key)}}),
    );
    mesh.status_until(GATEWAYS, "edge", "public", "https listener resolved, one route", |s| {
        is(&s["listeners"][1]["conditions"], "ResolvedRefs", "True", "ResolvedRefs")
            && s["listeners"][1]["attachedRoutes"] == 1
    })
    .await;

    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(chain.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let attempt = async || -> Result<String, String> {
        let tcp =
            tokio::net::TcpStream::connect((GATEWAY_IP, mesh.https_port)).await.map_err(|e| e.to_string())?;
        let name = ServerName::try_from("secure.example.com").map_err(|e| e.to_string())?;
        let mut tls = tokio::time::timeout(DEADLINE, connector.connect(name, tcp))
            .await
            .map_err(|_| "handshake hangs".to_owned())?
            .map_err(|e| format!("handshake: {e}"))?;
        tls.write_all(b"GET /tls HTTP/1.1\r\nHost: secure.example.com\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        tokio::time::timeout(DEADLINE, tls.read_to_end(&mut response))
            .await
            .map_err(|_| "no answer".to_owned())?
            .map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&response).into_owned())
    };
    let mut last = String::new();
    let start = tokio::time::Instant::now();
    while !last.contains("v2 GET /tls") {
        assert!(start.elapsed() < DEADLINE, "no answer over TLS; last: {last}");
        last = attempt().await.unwrap_or_else(|e| e);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(last.starts_with("HTTP/1.1 200"), "{last}");
}
