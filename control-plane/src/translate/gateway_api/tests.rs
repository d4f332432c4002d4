use std::sync::Arc;

use serde_json::json;
use trellis_api::gateway_api::decode;
use trellis_xds::config as pb;

use super::super::test_support::*;
use super::super::{ProxyIdentity, check_consistent, scope_of_router, translate};
use super::*;
use crate::model::KubeSecret;

fn with_objects(mut model: Model, objects: &[serde_json::Value]) -> Model {
    for o in objects {
        let key = (
            o["metadata"]["namespace"].as_str().unwrap_or("").to_owned(),
            o["metadata"]["name"].as_str().unwrap_or("").to_owned(),
        );
        match o["kind"].as_str() {
            Some("GatewayClass") => {
                model.gateway_classes.insert(key, Arc::new(decode(o).unwrap()));
            }
            Some("Gateway") => {
                model.k8s_gateways.insert(key, Arc::new(decode(o).unwrap()));
            }
            Some("HTTPRoute") => {
                model.http_routes.insert(key, Arc::new(decode(o).unwrap()));
            }
            Some("GRPCRoute") => {
                model.grpc_routes.insert(key, Arc::new(decode(o).unwrap()));
            }
            _ => panic!("{o}"),
        }
    }
    model
}

fn base(class_controller: &str) -> Model {
    let mut m = model("");
    add_kube_service(&mut m, "shop", "web", "10.0.0.1", &[("http", 80, Some(8080))]);
    let secret = KubeSecret {
        namespace: "edge".into(),
        name: "cert".into(),
        data: [("tls.crt".to_owned(), "CHAIN".to_owned()), ("tls.key".to_owned(), "KEY".to_owned())].into(),
    };
    m.secrets.insert(("edge".into(), "cert".into()), Arc::new(secret));
    with_objects(
        m,
        &[
            json!({"kind": "GatewayClass", "metadata": {"name": "trellis"}, "spec": {"controllerName": class_controller}}),
            json!({"kind": "Gateway", "metadata": {"name": "public", "namespace": "edge"},
                "spec": {"gatewayClassName": "trellis", "listeners": [
                    {"name": "http", "port": 80, "protocol": "HTTP", "allowedRoutes": {"namespaces": {"from": "All"}}},
                    {"name": "https", "port": 443, "protocol": "HTTPS", "hostname": "*.example.com",
                     "tls": {"certificateRefs": [{"name": "cert"}]}, "allowedRoutes": {"namespaces": {"from": "All"}}},
                    {"name": "tcp", "port": 5432, "protocol": "TCP"}]}}),
            json!({"kind": "HTTPRoute", "metadata": {"name": "web", "namespace": "shop"},
                "spec": {"parentRefs": [{"name": "public", "namespace": "edge"}], "hostnames": ["web.example.com"],
                    "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
                               "timeouts": {"request": "2s"},
                               "backendRefs": [{"name": "web", "port": 80}]}]}}),
        ],
    )
}

fn gateway_config(m: &Model, labels: &[(&str, &str)]) -> pb::ProxyConfig {
    let proxy = ProxyIdentity { namespace: "edge".into(), labels: labels_of(labels), ..Default::default() };
    let config = translate(m, &scope_of_router(m, &proxy, &Default::default(), true));
    check_consistent(&config).unwrap_or_else(|e| panic!("{e}"));
    config
}

#[test]
fn a_gateway_of_the_class_becomes_listeners_of_the_proxies_labelled_with_its_name() {
    let m = base("trellis.io/gateway-controller");
    let config = gateway_config(&m, &[(GATEWAY_NAME_LABEL, "public")]);
    let ports: Vec<_> = config.gateway_listeners.iter().map(|l| (l.port, l.protocol())).collect();
    assert_eq!(ports, [(80, pb::GatewayProtocol::GatewayHttp), (443, pb::GatewayProtocol::GatewayHttps)]);
    let https = &config.gateway_listeners[1].servers[0];
    assert_eq!(https.tls.as_ref().map(|t| t.certificate_chain.as_str()), Some("CHAIN"));
    // The route's host on the HTTP listener and, intersected, on the HTTPS one.
    let http_hosts: Vec<_> =
        config.gateway_listeners[0].servers[0].routes.iter().map(|r| r.host.as_str()).collect();
    assert_eq!(http_hosts, ["web.example.com"]);
    let vh = config
        .virtual_hosts
        .iter()
        .find(|v| v.name == crate::translate::gateway::virtual_host_name(80, "web.example.com"))
        .unwrap();
    assert_eq!(vh.routes.len(), 1);
    assert_eq!(forwards(&vh.routes[0]), [("outbound|80||web.shop.svc.cluster.local", 0)]);
    assert_eq!(vh.routes[0].timeout.as_ref().map(|t| t.seconds), Some(2));
    assert_eq!(vh.routes[0].matches.len(), 2, "exact /api and prefix /api/");

    // Another name, another namespace, or the istio class: as expected.
    assert!(gateway_config(&m, &[(GATEWAY_NAME_LABEL, "private")]).gateway_listeners.is_empty());
    let elsewhere = ProxyIdentity {
        namespace: "other".into(),
        labels: labels_of(&[(GATEWAY_NAME_LABEL, "public")]),
        ..Default::default()
    };
    assert!(
        translate(&m, &scope_of_router(&m, &elsewhere, &Default::default(), true))
            .gateway_listeners
            .is_empty()
    );
    let istio = base("istio.io/gateway-controller");
    assert_eq!(gateway_config(&istio, &[(GATEWAY_NAME_LABEL, "public")]).gateway_listeners.len(), 2);
    let foreign = base("example.com/other");
    assert!(gateway_config(&foreign, &[(GATEWAY_NAME_LABEL, "public")]).gateway_listeners.is_empty());
    assert!(analyze(&foreign).gateways.is_empty() && analyze(&foreign).routes.is_empty());
}

#[test]
fn status_of_listeners_and_routes() {
    let m = base("trellis.io/gateway-controller");
    let a = analyze(&m);
    assert!(a.classes["trellis"].1[0].status);
    let g = &a.gateways[&("edge".to_owned(), "public".to_owned())];
    let counts: Vec<_> = g.listeners.iter().map(|l| (l.name.as_str(), l.attached_routes)).collect();
    assert_eq!(counts, [("http", 1), ("https", 1), ("tcp", 0)]);
    let tcp = &g.listeners[2].conditions[0];
    assert_eq!((tcp.kind, tcp.status, tcp.reason), ("Accepted", false, "UnsupportedProtocol"));
    assert_eq!(g.conditions[0].reason, "ListenersNotValid");
    assert_eq!(g.conditions[1].reason, "Pending", "no proxy pod labelled with its name");
    let r = &a.routes[&("shop".to_owned(), "web".to_owned())];
    let conditions: Vec<_> = r.parents[0].conditions.iter().map(|c| (c.kind, c.status)).collect();
    assert_eq!(conditions, [("Accepted", true), ("ResolvedRefs", true)]);

    // Without the Secret the HTTPS listener is not programmed; the HTTP one still is.
    let mut m = m;
    m.secrets.clear();
    let a = analyze(&m);
    let https = &a.gateways[&("edge".to_owned(), "public".to_owned())].listeners[1];
    assert_eq!((https.conditions[1].status, https.conditions[1].reason), (false, "InvalidCertificateRef"));
    assert_eq!(a.istio_gateways.len(), 1);
}

fn key(namespace: &str, name: &str) -> (String, String) {
    (namespace.to_owned(), name.to_owned())
}

fn path_of(route: &pb::Route) -> Vec<Option<pb::string_match::Kind>> {
    route.matches.iter().map(|m| m.path.as_ref().and_then(|p| p.kind.clone())).collect()
}

/// `base` plus a gRPC Service `api` and a GRPCRoute on web.example.com with `rules`.
fn with_grpc_route(rules: serde_json::Value) -> Model {
    let mut m = base("trellis.io/gateway-controller");
    add_kube_service(&mut m, "shop", "api", "10.0.0.2", &[("grpc", 9000, Some(9000))]);
    with_objects(
        m,
        &[json!({"kind": "GRPCRoute", "metadata": {"name": "greeter", "namespace": "shop"},
            "spec": {"parentRefs": [{"name": "public", "namespace": "edge", "sectionName": "http"}],
                "hostnames": ["web.example.com"], "rules": rules}})],
    )
}

#[test]
fn a_grpc_route_becomes_routes_on_the_path_of_its_methods() {
    let m = with_grpc_route(json!([
        {"matches": [{"method": {"service": "pkg.Greeter", "method": "SayHello"},
                      "headers": [{"name": "Tenant", "value": "a"}]}],
         "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-grpc", "value": "1"}]}}],
         "backendRefs": [{"name": "api", "port": 9000, "weight": 3}, {"name": "web", "port": 80, "weight": 1}]},
        {"matches": [{"method": {"service": "pkg.Greeter"}}, {"method": {"type": "RegularExpression", "method": "Get.*"}}],
         "backendRefs": [{"name": "api", "port": 9000}]},
    ]));
    let config = gateway_config(&m, &[(GATEWAY_NAME_LABEL, "public")]);
    let vh = config
        .virtual_hosts
        .iter()
        .find(|v| v.name == crate::translate::gateway::virtual_host_name(80, "web.example.com"))
        .unwrap();
    use pb::string_match::Kind::{Exact, Prefix, Regex};
    // The HTTPRoute's /api and the GRPCRoute's matches on one host, most specific first.
    let paths: Vec<_> = vh.routes.iter().map(path_of).collect();
    assert_eq!(
        paths,
        [
            vec![Some(Exact("/pkg.Greeter/SayHello".into()))],
            vec![Some(Regex("/[^/]+/(?:Get.*)".into()))],
            vec![Some(Exact("/pkg.Greeter".into())), Some(Prefix("/pkg.Greeter/".into()))],
            vec![Some(Exact("/api".into())), Some(Prefix("/api/".into()))],
        ]
    );
    let first = &vh.routes[0];
    assert_eq!(
        forwards(first),
        [("outbound|9000||api.shop.svc.cluster.local", 3), ("outbound|80||web.shop.svc.cluster.local", 1)]
    );
    assert_eq!(first.matches[0].headers[0].name, "tenant");
    assert!(format!("{first:?}").contains("x-grpc"), "the header modifier: {first:?}");

    let a = analyze(&m);
    let r = &a.grpc_routes[&key("shop", "greeter")];
    let conditions: Vec<_> = r.parents[0].conditions.iter().map(|c| (c.kind, c.status)).collect();
    assert_eq!(conditions, [("Accepted", true), ("ResolvedRefs", true)]);
    let http = &a.gateways[&key("edge", "public")].listeners[0];
    assert_eq!(http.attached_routes, 2, "the HTTPRoute and the GRPCRoute");
    assert_eq!(http.supported_kinds, ["HTTPRoute", "GRPCRoute"]);
}

#[test]
fn a_grpc_route_that_cannot_be_read_is_not_accepted_and_names_the_field() {
    let m = with_grpc_route(json!([
        {"matches": [{"method": {"type": "RegularExpression", "service": "(unclosed"}}],
         "backendRefs": [{"name": "missing", "port": 9000}]},
    ]));
    let a = analyze(&m);
    let r = &a.grpc_routes[&key("shop", "greeter")];
    let accepted = &r.parents[0].conditions[0];
    assert_eq!((accepted.status, accepted.reason), (false, "UnsupportedValue"));
    assert!(
        accepted.message.starts_with("spec.rules[0].matches[0].method.service: "),
        "{}",
        accepted.message
    );
    let resolved = &r.parents[0].conditions[1];
    assert_eq!((resolved.status, resolved.reason), (false, "BackendNotFound"));
    assert_eq!(a.gateways[&key("edge", "public")].listeners[0].attached_routes, 1, "only the HTTPRoute");
    let config = gateway_config(&m, &[(GATEWAY_NAME_LABEL, "public")]);
    assert!(!format!("{config:?}").contains("unclosed"));
}

#[test]
fn listeners_take_the_route_kinds_they_allow() {
    let mut m = with_grpc_route(json!([{"backendRefs": [{"name": "api", "port": 9000}]}]));
    let gateway = json!({"kind": "Gateway", "metadata": {"name": "public", "namespace": "edge"},
        "spec": {"gatewayClassName": "trellis", "listeners": [
            {"name": "http", "port": 80, "protocol": "HTTP", "allowedRoutes": {"namespaces": {"from": "All"},
                "kinds": [{"kind": "GRPCRoute"}, {"kind": "TCPRoute"}]}}]}});
    m = with_objects(m, &[gateway]);
    let a = analyze(&m);
    let listener = &a.gateways[&key("edge", "public")].listeners[0];
    assert_eq!(listener.supported_kinds, ["GRPCRoute"]);
    assert_eq!(listener.attached_routes, 1);
    let resolved = &listener.conditions[1];
    assert_eq!((resolved.status, resolved.reason), (false, "InvalidRouteKinds"));
    assert!(a.grpc_routes[&key("shop", "greeter")].parents[0].conditions[0].status);
    let http = &a.routes[&key("shop", "web")].parents[0].conditions[0];
    assert_eq!((http.status, http.reason), (false, "NotAllowedByListeners"));

    // A ReferenceGrant names the route kind it lets refer across namespaces.
    let mut m =
        with_grpc_route(json!([{"backendRefs": [{"name": "web", "namespace": "other", "port": 80}]}]));
    add_kube_service(&mut m, "other", "web", "10.0.0.3", &[("http", 80, Some(8080))]);
    let grant = |kind: &str| {
        decode(&json!({"metadata": {"name": "g", "namespace": "other"},
            "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": kind, "namespace": "shop"}],
                     "to": [{"group": "", "kind": "Service"}]}}))
        .unwrap()
    };
    m.reference_grants.insert(key("other", "g"), Arc::new(grant("HTTPRoute")));
    let resolved = analyze(&m).grpc_routes[&key("shop", "greeter")].parents[0].conditions[1].clone();
    assert_eq!((resolved.status, resolved.reason), (false, "RefNotPermitted"));
    m.reference_grants.insert(key("other", "g"), Arc::new(grant("GRPCRoute")));
    assert!(analyze(&m).grpc_routes[&key("shop", "greeter")].parents[0].conditions[1].status);
}

/// `base` plus a Service `api` in `shop` and the HTTPRoute `route` (in `namespace`) with a
/// Service parent.
fn with_mesh_route(namespace: &str, parent: serde_json::Value, rules: serde_json::Value) -> Model {
    let mut m = base("trellis.io/gateway-controller");
    add_kube_service(&mut m, "shop", "api", "10.0.0.2", &[("http", 9000, Some(9000))]);
    with_objects(
        m,
        &[json!({"kind": "HTTPRoute", "metadata": {"name": "canary", "namespace": namespace},
            "spec": {"parentRefs": [parent], "rules": rules}})],
    )
}

#[test]
fn an_http_route_attached_to_a_service_routes_the_sidecars_calling_it() {
    let m = with_mesh_route(
        "shop",
        json!({"group": "", "kind": "Service", "name": "web", "port": 80}),
        json!([
            {"matches": [{"headers": [{"name": "x-canary", "value": "yes"}]}],
             "backendRefs": [{"name": "api", "port": 9000}]},
            {"backendRefs": [{"name": "web", "port": 80, "weight": 9}, {"name": "api", "port": 9000, "weight": 1}]},
        ]),
    );
    // A producer route (in the Service's namespace): every namespace's sidecars.
    for namespace in ["shop", "other"] {
        let config = config(&m, namespace);
        let web = routes(&config, "web.shop.svc.cluster.local:80");
        assert_eq!(web.len(), 2, "{namespace}: {web:?}");
        assert_eq!(web[0].matches[0].headers[0].name, "x-canary");
        assert_eq!(forwards(&web[0]), [("outbound|9000||api.shop.svc.cluster.local", 0)], "a single backend");
        assert_eq!(
            forwards(&web[1]),
            [
                ("outbound|80||web.shop.svc.cluster.local", 9),
                ("outbound|9000||api.shop.svc.cluster.local", 1)
            ]
        );
    }
    let a = analyze(&m);
    let parent = &a.routes[&key("shop", "canary")].parents[0];
    assert_eq!(parent.parent.kind.as_deref(), Some("Service"));
    let conditions: Vec<_> = parent.conditions.iter().map(|c| (c.kind, c.status)).collect();
    assert_eq!(conditions, [("Accepted", true), ("ResolvedRefs", true)]);
    // The gateway proxies do not take it.
    let gateway = gateway_config(&m, &[(GATEWAY_NAME_LABEL, "public")]);
    assert!(gateway.gateway_listeners.iter().all(|l| l.servers.iter().all(|s| s.routes.len() == 1)));
}

#[test]
fn a_consumer_route_routes_only_its_own_namespace_and_a_missing_service_is_reported() {
    let m = with_mesh_route(
        "client",
        json!({"kind": "Service", "group": "core", "name": "web", "namespace": "shop"}),
        json!([{"filters": [{"type": "RequestRedirect", "requestRedirect": {"hostname": "moved.example.com"}}]}]),
    );
    let redirected = |namespace: &str| {
        let config = config(&m, namespace);
        let web = routes(&config, "web.shop.svc.cluster.local:80");
        web.iter().any(|r| format!("{r:?}").contains("moved.example.com"))
    };
    assert!(redirected("client"));
    assert!(!redirected("other"));
    assert!(!redirected("shop"));

    // Beside a producer route, the consumer route still wins in its own namespace (the proxy's
    // own namespace's VirtualService is preferred for a host), the producer's everywhere else.
    let producer = json!({"kind": "HTTPRoute", "metadata": {"name": "producer", "namespace": "shop"},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
            "rules": [{"backendRefs": [{"name": "api", "port": 9000}]}]}});
    let both = with_objects(m.clone(), &[producer]);
    let first = |namespace: &str| {
        let config = config(&both, namespace);
        format!("{:?}", routes(&config, "web.shop.svc.cluster.local:80")[0])
    };
    assert!(first("client").contains("moved.example.com"));
    assert!(first("other").contains("outbound|9000||api.shop.svc.cluster.local"));

    let m = with_mesh_route("shop", json!({"group": "", "kind": "Service", "name": "nothing"}), json!([]));
    let accepted = &analyze(&m).routes[&key("shop", "canary")].parents[0].conditions[0];
    assert_eq!((accepted.status, accepted.reason), (false, "NoMatchingParent"));
    assert!(!has_mesh_routes(&with_mesh_route("shop", json!({"name": "public"}), json!([]))));
}

#[test]
fn a_grpc_route_attached_to_a_service_routes_the_sidecars_too() {
    let mut m = with_grpc_route(json!([]));
    m.grpc_routes.clear();
    let m = with_objects(
        m,
        &[json!({"kind": "GRPCRoute", "metadata": {"name": "greeter", "namespace": "shop"},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "api"}],
                "rules": [{"matches": [{"method": {"service": "pkg.Greeter", "method": "SayHello"}}],
                           "backendRefs": [{"name": "web", "port": 80}]}]}})],
    );
    let config = config(&m, "other");
    let api = routes(&config, "api.shop.svc.cluster.local:9000");
    assert_eq!(path_of(&api[0]), [Some(pb::string_match::Kind::Exact("/pkg.Greeter/SayHello".into()))]);
    assert_eq!(forwards(&api[0]), [("outbound|80||web.shop.svc.cluster.local", 0)]);
    assert!(analyze(&m).grpc_routes[&key("shop", "greeter")].parents[0].conditions[0].status);
}
