//! The Kubernetes Gateway API → the gateway proxies' listeners and routes, and the status
//! every object should show.
//!
//! Trellis controls the GatewayClasses whose `controllerName` is `trellis.io/gateway-controller`
//! or `istio.io/gateway-controller` (so that Istio users' `gatewayClassName: istio` works
//! unchanged; running Istio's own controller beside Trellis would make both write status).
//!
//! A Gateway of such a class is served by the gateway proxies (`trellis-proxy --role gateway`)
//! **of its own namespace labelled `gateway.networking.k8s.io/gateway-name: <its name>`**, the
//! label Istio's deployment controller puts on the gateways it deploys. Trellis does not deploy
//! a proxy per Gateway: label the chart's gateway (or any gateway Deployment) to bind it.
//!
//! As Istio does, each object is read as the Istio config it means, then translated by the code
//! that serves Istio's own `Gateway` ([`super::gateway`]): each listener becomes a Gateway with
//! one server (named `<gateway>~<listener>`, a name no Kubernetes object can have), each host of
//! a listener a VirtualService bound to it with the attached HTTPRoutes' rules in the API's
//! precedence order ([`rules`]). A GRPCRoute is read as the HTTPRoute it means (a gRPC method is
//! a path: [`api::GrpcRouteSpec::to_http_route`]) and attaches and translates as one.
//!
//! An HTTPRoute (or GRPCRoute) whose parent is a Service (GAMMA) is mesh routing: per namespace of such routes
//! and per Service, a VirtualService for the Service's host bound to `mesh`, which the sidecars
//! translate as they do any other. A route in the Service's own namespace (a producer route)
//! is seen by every namespace; one in another namespace (a consumer route) only by its own,
//! as Istio does. That analysis also gives the status conditions ([`Analysis`]),
//! so what status says and what the proxies get cannot disagree.

pub mod rules;

use std::collections::BTreeMap;
use std::sync::Arc;

use trellis_api::gateway_api::{
    self as api, GROUP, HttpBackendRef, HttpRouteRule, HttpRouteSpec, Listener, ParentRef,
};
use trellis_api::networking::{
    Gateway as IstioGateway, GatewaySpec as IstioGatewaySpec, Port, Server, ServerTlsMode, ServerTlsSettings,
    VirtualService, VirtualServiceSpec,
};
use trellis_api::resource::{Kind, Resource};

use super::hosts;
use super::names::kube_hostname;
use crate::model::{Model, ObjectKey};

/// The controller names Trellis answers for.
pub const CONTROLLERS: [&str; 2] = ["trellis.io/gateway-controller", "istio.io/gateway-controller"];

/// The route kinds a listener of Trellis accepts (HTTP and HTTPS listeners take both).
pub const ROUTE_KINDS: [&str; 2] = ["HTTPRoute", "GRPCRoute"];

/// The pod label that binds a gateway proxy to the Gateway of its namespace of that name.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

/// One status condition, as the writer renders it (with `observedGeneration` and the time).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    pub kind: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Condition {
    fn yes(kind: &'static str, reason: &'static str, message: impl Into<String>) -> Condition {
        Condition { kind, status: true, reason, message: message.into() }
    }
    fn no(kind: &'static str, reason: &'static str, message: impl Into<String>) -> Condition {
        Condition { kind, status: false, reason, message: message.into() }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerStatus {
    pub name: String,
    pub attached_routes: u32,
    /// The route kinds it accepts, of [`ROUTE_KINDS`].
    pub supported_kinds: Vec<&'static str>,
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayStatus {
    pub generation: i64,
    pub conditions: Vec<Condition>,
    pub listeners: Vec<ListenerStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentStatus {
    pub parent: ParentRef,
    pub controller: String,
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteStatus {
    pub generation: i64,
    pub parents: Vec<ParentStatus>,
}

/// What the Gateway API objects of a model mean.
#[derive(Debug, Default)]
pub struct Analysis {
    /// GatewayClasses Trellis controls: name → (generation, conditions).
    pub classes: BTreeMap<String, (i64, Vec<Condition>)>,
    /// Gateways of those classes, by (namespace, name).
    pub gateways: BTreeMap<(String, String), GatewayStatus>,
    /// HTTPRoutes with at least one parent Trellis answers for.
    pub routes: BTreeMap<(String, String), RouteStatus>,
    /// GRPCRoutes likewise.
    pub grpc_routes: BTreeMap<(String, String), RouteStatus>,
    /// The Istio config they mean.
    pub istio_gateways: Vec<(String, String, IstioGatewaySpec)>,
    pub virtual_services: Vec<(String, String, VirtualServiceSpec)>,
    /// The VirtualServices bound to `mesh` that HTTPRoutes with Service parents mean.
    pub mesh_virtual_services: Vec<(String, String, VirtualServiceSpec)>,
}

/// Whether any HTTPRoute has a Service parent (GAMMA): sidecars then need the derived model.
pub fn has_mesh_routes(model: &Model) -> bool {
    model.http_routes.values().any(|r| r.spec.parent_refs.iter().any(is_service_parent))
        || model.grpc_routes.values().any(|r| r.spec.parent_refs.iter().any(is_service_parent))
}

fn is_service_parent(parent: &ParentRef) -> bool {
    parent.group.as_deref().is_some_and(|g| g.is_empty() || g == "core")
        && parent.kind.as_deref() == Some("Service")
}

/// The derived Istio Gateways (`namespace/name`) a gateway proxy serves: those of the Gateway of
/// its namespace named by its `gateway.networking.k8s.io/gateway-name` label.
pub fn selecting(model: &Model, namespace: &str, labels: &BTreeMap<String, String>) -> Vec<String> {
    let Some(name) = labels.get(GATEWAY_NAME_LABEL) else { return Vec::new() };
    let Some(gateway) = model.k8s_gateways.get(&(namespace.to_owned(), name.clone())) else {
        return Vec::new();
    };
    if controller_of(model, &gateway.spec.gateway_class_name).is_none() {
        return Vec::new();
    }
    gateway.spec.listeners.iter().map(|l| format!("{namespace}/{}", derived_name(name, &l.name))).collect()
}

fn derived_name(gateway: &str, listener: &str) -> String {
    format!("{gateway}~{listener}")
}

/// The controller name of a class Trellis controls.
fn controller_of<'a>(model: &'a Model, class: &str) -> Option<&'a str> {
    let class = model.gateway_classes.get(&(String::new(), class.to_owned()))?;
    let name = class.spec.controller_name.as_str();
    CONTROLLERS.contains(&name).then_some(name)
}

/// The model with the Istio config the Gateway API objects mean added, for a gateway proxy's
/// translation; `None` when there is nothing to add.
pub fn with_derived(model: &Model) -> Option<Model> {
    if model.k8s_gateways.is_empty() && !has_mesh_routes(model) {
        return None;
    }
    let analysis = analyze(model);
    if analysis.istio_gateways.is_empty() && analysis.mesh_virtual_services.is_empty() {
        return None;
    }
    let mut derived = model.clone();
    for (namespace, name, spec) in analysis.istio_gateways {
        let mut gateway = IstioGateway::new(&name, spec);
        gateway.metadata.namespace = Some(namespace.clone());
        derived.resources.insert(
            ObjectKey::new(Kind::Gateway, namespace, name),
            Arc::new(Resource::Gateway(Box::new(gateway))),
        );
    }
    for (namespace, name, spec) in analysis.virtual_services.into_iter().chain(analysis.mesh_virtual_services)
    {
        let mut vs = VirtualService::new(&name, spec);
        vs.metadata.namespace = Some(namespace.clone());
        derived.resources.insert(
            ObjectKey::new(Kind::VirtualService, namespace, name),
            Arc::new(Resource::VirtualService(Box::new(vs))),
        );
    }
    Some(derived)
}

/// A listener as analyzed: whether it is served and the server it becomes.
struct Served<'a> {
    listener: &'a Listener,
    status: ListenerStatus,
    server: Option<Server>,
}

/// Reads every Gateway API object of the model.
pub fn analyze(model: &Model) -> Analysis {
    let mut out = Analysis::default();
    for ((_, name), class) in &model.gateway_classes {
        if CONTROLLERS.contains(&class.spec.controller_name.as_str()) {
            let accepted = Condition::yes("Accepted", "Accepted", "Handled by Trellis");
            out.classes.insert(name.clone(), (class.metadata.generation, vec![accepted]));
        }
    }
    // Listeners, then routes onto them, then per host the VirtualServices.
    let mut listeners: BTreeMap<(String, String), Vec<Served<'_>>> = BTreeMap::new();
    for ((namespace, name), gateway) in &model.k8s_gateways {
        if controller_of(model, &gateway.spec.gateway_class_name).is_none() {
            continue;
        }
        let served = gateway.spec.listeners.iter().map(|l| listener(model, namespace, l)).collect();
        listeners.insert((namespace.clone(), name.clone()), served);
    }
    // (gateway namespace, derived gateway name, host) → compiled routes.
    let mut by_host: BTreeMap<(String, String, String), Vec<rules::Compiled>> = BTreeMap::new();
    // (route namespace, Service namespace, Service name) → compiled routes of Service parents.
    let mut by_service: BTreeMap<(String, String, String), Vec<rules::Compiled>> = BTreeMap::new();
    for ((namespace, name), route) in &model.http_routes {
        let at = RouteAt { namespace, name, kind: "HTTPRoute", invalid: None };
        let mut parents = route_parents(model, &at, route, &mut listeners, &mut by_host);
        parents.extend(service_parents(model, &at, route, &mut by_service));
        if !parents.is_empty() {
            let status = RouteStatus { generation: route.metadata.generation, parents };
            out.routes.insert((namespace.clone(), name.clone()), status);
        }
    }
    for ((namespace, name), route) in &model.grpc_routes {
        let (spec, invalid) = match route.spec.to_http_route() {
            Ok(spec) => (spec, None),
            // Not attached anywhere; its backends are still checked for ResolvedRefs.
            Err((field, message)) => {
                let rules = route
                    .spec
                    .rules
                    .iter()
                    .map(|r| HttpRouteRule { backend_refs: r.backend_refs.clone(), ..Default::default() })
                    .collect();
                let spec = HttpRouteSpec {
                    parent_refs: route.spec.parent_refs.clone(),
                    hostnames: Vec::new(),
                    rules,
                };
                (spec, Some(format!("{field}: {message}")))
            }
        };
        let as_http =
            api::HttpRoute { metadata: route.metadata.clone(), spec, status: serde_json::Value::Null };
        let at = RouteAt { namespace, name, kind: "GRPCRoute", invalid: invalid.as_deref() };
        let mut parents = route_parents(model, &at, &as_http, &mut listeners, &mut by_host);
        parents.extend(service_parents(model, &at, &as_http, &mut by_service));
        if !parents.is_empty() {
            let status = RouteStatus { generation: route.metadata.generation, parents };
            out.grpc_routes.insert((namespace.clone(), name.clone()), status);
        }
    }
    for ((namespace, name), served) in listeners {
        let Some(gateway) = model.k8s_gateways.get(&(namespace.clone(), name.clone())) else { continue };
        let proxies = model
            .pods
            .values()
            .filter(|p| p.namespace == namespace && p.labels.get(GATEWAY_NAME_LABEL) == Some(&name))
            .count();
        let usable = served.iter().filter(|s| s.server.is_some()).count();
        let programmed = match (proxies, usable) {
            (0, _) => Condition::no(
                "Programmed",
                "Pending",
                format!("no gateway proxy pod in {namespace} is labelled {GATEWAY_NAME_LABEL}={name}"),
            ),
            (_, 0) => Condition::no("Programmed", "Invalid", "no listener is usable"),
            (n, _) => {
                Condition::yes("Programmed", "Programmed", format!("served by {n} gateway proxy pod(s)"))
            }
        };
        let accepted = if usable == served.len() {
            Condition::yes("Accepted", "Accepted", "Accepted by Trellis")
        } else {
            Condition::no(
                "Accepted",
                "ListenersNotValid",
                "some listeners are not valid; see their conditions",
            )
        };
        let mut status = GatewayStatus {
            generation: gateway.metadata.generation,
            conditions: vec![accepted, programmed],
            listeners: Vec::new(),
        };
        for s in served {
            if let Some(server) = s.server {
                let spec = IstioGatewaySpec { servers: vec![server], selector: BTreeMap::new() };
                out.istio_gateways.push((namespace.clone(), derived_name(&name, &s.listener.name), spec));
            }
            status.listeners.push(s.status);
        }
        out.gateways.insert((namespace, name), status);
    }
    for ((namespace, service_ns, service), mut compiled) in by_service {
        compiled.sort_by(|a, b| a.precedence.cmp(&b.precedence));
        let export_to = if namespace == service_ns { vec!["*".to_owned()] } else { vec![".".to_owned()] };
        let spec = VirtualServiceSpec {
            hosts: vec![kube_hostname(&service, &service_ns)],
            http: compiled.into_iter().map(|c| c.route).collect(),
            export_to,
            ..Default::default()
        };
        // `~` keeps the name apart from any the API server allows.
        out.mesh_virtual_services.push((namespace, format!("{service}.{service_ns}~mesh"), spec));
    }
    for ((namespace, derived, host), mut compiled) in by_host {
        compiled.sort_by(|a, b| a.precedence.cmp(&b.precedence));
        let spec = VirtualServiceSpec {
            hosts: vec![host.clone()],
            gateways: vec![format!("{namespace}/{derived}")],
            http: compiled.into_iter().map(|c| c.route).collect(),
            ..Default::default()
        };
        out.virtual_services.push((namespace, format!("{derived}~{host}"), spec));
    }
    out
}

/// A route being attached: where it is, its kind, and why it cannot be used when it cannot.
struct RouteAt<'a> {
    namespace: &'a str,
    name: &'a str,
    kind: &'static str,
    invalid: Option<&'a str>,
}

/// Attaches one route (an HTTPRoute, or the HTTPRoute a GRPCRoute means) to the parents Trellis
/// answers for; their status.
fn route_parents(
    model: &Model,
    at: &RouteAt<'_>,
    route: &api::HttpRoute,
    listeners: &mut BTreeMap<(String, String), Vec<Served<'_>>>,
    by_host: &mut BTreeMap<(String, String, String), Vec<rules::Compiled>>,
) -> Vec<ParentStatus> {
    let namespace = at.namespace;
    let mut parents = Vec::new();
    for parent in &route.spec.parent_refs {
        if parent.group.as_deref().is_some_and(|g| g != GROUP)
            || parent.kind.as_deref().is_some_and(|k| k != "Gateway")
        {
            // A Service parent (GAMMA) or another kind: not a parent Trellis answers for.
            continue;
        }
        let gateway_ns = parent.namespace.clone().unwrap_or_else(|| namespace.to_owned());
        let gateway_key = (gateway_ns.clone(), parent.name.clone());
        let gateway = model.k8s_gateways.get(&gateway_key);
        let controller = match gateway {
            Some(g) => match controller_of(model, &g.spec.gateway_class_name) {
                Some(c) => c,
                None => continue,
            },
            None => CONTROLLERS[0],
        };
        let resolved = resolved_refs(model, namespace, at.kind, &route.spec);
        let accepted = match (listeners.get_mut(&gateway_key), at.invalid) {
            (_, Some(problem)) => Condition::no("Accepted", "UnsupportedValue", problem),
            (None, None) => Condition::no(
                "Accepted",
                "NoMatchingParent",
                format!("no Gateway {gateway_ns}/{}", parent.name),
            ),
            (Some(served), None) => attach(model, at, route, parent, &gateway_ns, served, by_host),
        };
        parents.push(ParentStatus {
            parent: parent.clone(),
            controller: controller.to_owned(),
            conditions: vec![accepted, resolved],
        });
    }
    parents
}

/// The Service parents (GAMMA) of an HTTPRoute: their status, and the route's rules compiled
/// for each Service that exists.
fn service_parents(
    model: &Model,
    at: &RouteAt<'_>,
    route: &api::HttpRoute,
    by_service: &mut BTreeMap<(String, String, String), Vec<rules::Compiled>>,
) -> Vec<ParentStatus> {
    let mut parents = Vec::new();
    for parent in route.spec.parent_refs.iter().filter(|p| is_service_parent(p)) {
        let service_ns = parent.namespace.clone().unwrap_or_else(|| at.namespace.to_owned());
        let service = model.services.get(&(service_ns.clone(), parent.name.clone()));
        let accepted = match service {
            _ if at.invalid.is_some() => {
                Condition::no("Accepted", "UnsupportedValue", at.invalid.unwrap_or_default())
            }
            None => Condition::no(
                "Accepted",
                "NoMatchingParent",
                format!("no Service {service_ns}/{}", parent.name),
            ),
            Some(s) if parent.port.is_some_and(|p| !s.ports.iter().any(|sp| u32::from(sp.port) == p)) => {
                Condition::no(
                    "Accepted",
                    "NoMatchingParent",
                    format!(
                        "Service {service_ns}/{} has no port {}",
                        parent.name,
                        parent.port.unwrap_or_default()
                    ),
                )
            }
            Some(_) => {
                let valid = |b: &HttpBackendRef| backend_problem(model, at.namespace, at.kind, b).is_none();
                let entry = by_service
                    .entry((at.namespace.to_owned(), service_ns.clone(), parent.name.clone()))
                    .or_default();
                for (index, rule) in route.spec.rules.iter().enumerate() {
                    let rule_at = rules::RuleAt {
                        namespace: at.namespace,
                        name: at.name,
                        created: &route.metadata.creation_timestamp,
                        index,
                    };
                    let mut compiled = rules::compile(&rule_at, rule, &valid);
                    // A parent port: the rules apply to calls to that port of the Service only.
                    if let Some(port) = parent.port {
                        for c in &mut compiled {
                            for m in &mut c.route.matches {
                                m.port = port;
                            }
                        }
                    }
                    entry.extend(compiled);
                }
                Condition::yes("Accepted", "Accepted", "")
            }
        };
        parents.push(ParentStatus {
            parent: parent.clone(),
            controller: CONTROLLERS[0].to_owned(),
            conditions: vec![accepted, resolved_refs(model, at.namespace, at.kind, &route.spec)],
        });
    }
    parents
}

/// One listener's conditions and, when usable, its Istio server.
fn listener<'a>(model: &Model, namespace: &str, l: &'a Listener) -> Served<'a> {
    let mut status = ListenerStatus {
        name: l.name.clone(),
        attached_routes: 0,
        supported_kinds: ROUTE_KINDS.to_vec(),
        conditions: Vec::new(),
    };
    let unusable = |mut status: ListenerStatus, accepted: Condition, resolved: Condition| {
        let programmed = Condition::no("Programmed", "Invalid", accepted.message.clone());
        status.conditions = vec![accepted, resolved, programmed];
        Served { listener: l, status, server: None }
    };
    let resolved_ok = || Condition::yes("ResolvedRefs", "ResolvedRefs", "");
    let Ok(port) = u16::try_from(l.port).map_err(|_| ()).and_then(|p| if p == 0 { Err(()) } else { Ok(p) })
    else {
        let accepted = Condition::no("Accepted", "PortUnavailable", format!("{} is not a port", l.port));
        return unusable(status, accepted, resolved_ok());
    };
    let tls = match l.protocol.as_str() {
        "HTTP" => None,
        "HTTPS" => {
            let Some(tls) = &l.tls else {
                let resolved =
                    Condition::no("ResolvedRefs", "InvalidCertificateRef", "HTTPS needs tls.certificateRefs");
                return unusable(status, Condition::no("Accepted", "Invalid", "HTTPS without tls"), resolved);
            };
            if tls.mode.as_deref().is_some_and(|m| m != "Terminate") {
                let accepted =
                    Condition::no("Accepted", "UnsupportedProtocol", "HTTPS listeners terminate TLS");
                return unusable(status, accepted, resolved_ok());
            }
            match certificate(model, namespace, tls) {
                Ok(secret) => Some(ServerTlsSettings {
                    mode: ServerTlsMode::Simple,
                    credential_name: secret,
                    ..Default::default()
                }),
                Err(resolved) => {
                    let accepted = Condition::yes("Accepted", "Accepted", "");
                    let mut served = unusable(status, accepted, resolved);
                    served.status.conditions[2].message = "its certificate cannot be used".into();
                    return served;
                }
            }
        }
        other => {
            let accepted = Condition::no(
                "Accepted",
                "UnsupportedProtocol",
                format!("protocol {other} is not served by Trellis (HTTP and HTTPS are)"),
            );
            return unusable(status, accepted, resolved_ok());
        }
    };
    let mut resolved = resolved_ok();
    let wanted = l.allowed_routes.as_ref().map(|a| a.kinds.as_slice()).unwrap_or_default();
    if !wanted.is_empty() {
        let ours = |k: &api::RouteGroupKind| k.group.as_deref().is_none_or(|g| g == GROUP);
        status.supported_kinds = ROUTE_KINDS
            .into_iter()
            .filter(|kind| wanted.iter().any(|k| ours(k) && k.kind == *kind))
            .collect();
        let not_ours = wanted.iter().filter(|k| !ours(k) || !ROUTE_KINDS.contains(&k.kind.as_str())).count();
        if not_ours > 0 {
            // The kinds Trellis has stay served; the others are reported.
            resolved = Condition::no(
                "ResolvedRefs",
                "InvalidRouteKinds",
                "only HTTPRoute and GRPCRoute are supported",
            );
        }
        if status.supported_kinds.is_empty() {
            return unusable(status, Condition::yes("Accepted", "Accepted", ""), resolved);
        }
    }
    let host = l.hostname.clone().unwrap_or_else(|| "*".into()).to_ascii_lowercase();
    let server = Server {
        port: Some(Port {
            number: port.into(),
            protocol: l.protocol.clone(),
            name: l.name.clone(),
            target_port: 0,
        }),
        hosts: vec![format!("*/{host}")],
        tls,
        name: l.name.clone(),
        ..Default::default()
    };
    status.conditions = vec![
        Condition::yes("Accepted", "Accepted", ""),
        resolved,
        Condition::yes("Programmed", "Programmed", ""),
    ];
    Served { listener: l, status, server: Some(server) }
}

/// The Secret of a listener's certificate (its first `certificateRef`), or the condition saying
/// why it cannot be used. Only Secrets of the Gateway's namespace: its gateway proxies are
/// sent only their own namespace's Secrets.
fn certificate(model: &Model, namespace: &str, tls: &api::ListenerTls) -> Result<String, Condition> {
    let Some(first) = tls.certificate_refs.first() else {
        return Err(Condition::no("ResolvedRefs", "InvalidCertificateRef", "no certificateRefs"));
    };
    if first.group.as_deref().is_some_and(|g| !g.is_empty())
        || first.kind.as_deref().is_some_and(|k| k != "Secret")
    {
        return Err(Condition::no(
            "ResolvedRefs",
            "InvalidCertificateRef",
            "certificateRefs must name Secrets",
        ));
    }
    if first.namespace.as_deref().is_some_and(|n| n != namespace) {
        return Err(Condition::no(
            "ResolvedRefs",
            "RefNotPermitted",
            "certificates are read from the Gateway's own namespace only",
        ));
    }
    let secret = model.secrets.get(&(namespace.to_owned(), first.name.clone())).ok_or_else(|| {
        Condition::no(
            "ResolvedRefs",
            "InvalidCertificateRef",
            format!("no Secret {namespace}/{} with tls.crt and tls.key", first.name),
        )
    })?;
    if !secret.data.contains_key("tls.crt") || !secret.data.contains_key("tls.key") {
        return Err(Condition::no(
            "ResolvedRefs",
            "InvalidCertificateRef",
            format!("Secret {namespace}/{} has no tls.crt and tls.key", first.name),
        ));
    }
    Ok(first.name.clone())
}

/// Attaches a route to the listeners of one parent; the parent's Accepted condition.
fn attach(
    model: &Model,
    at: &RouteAt<'_>,
    route: &api::HttpRoute,
    parent: &ParentRef,
    gateway_ns: &str,
    served: &mut [Served<'_>],
    by_host: &mut BTreeMap<(String, String, String), Vec<rules::Compiled>>,
) -> Condition {
    let (route_ns, route_name) = (at.namespace, at.name);
    let mut reason = ("NoMatchingParent", "no listener matches sectionName and port".to_owned());
    let mut attached = 0;
    for s in served.iter_mut() {
        if parent.section_name.as_ref().is_some_and(|n| *n != s.listener.name)
            || parent.port.is_some_and(|p| p != s.listener.port)
        {
            continue;
        }
        let Some(server) = &s.server else {
            reason = ("NoMatchingParent", format!("listener {} is not valid", s.listener.name));
            continue;
        };
        if !s.status.supported_kinds.contains(&at.kind) {
            reason = (
                "NotAllowedByListeners",
                format!("listener {} does not allow {}s", s.listener.name, at.kind),
            );
            continue;
        }
        if !namespace_allowed(model, route_ns, gateway_ns, s.listener) {
            reason = (
                "NotAllowedByListeners",
                format!("listener {} does not allow routes from {route_ns}", s.listener.name),
            );
            continue;
        }
        let listener_host = server.hosts[0].trim_start_matches("*/").to_owned();
        let hosts: Vec<String> = if route.spec.hostnames.is_empty() {
            vec![listener_host]
        } else {
            route
                .spec
                .hostnames
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .filter_map(|h| {
                    if hosts::matches(&listener_host, &h) {
                        Some(h)
                    } else if hosts::matches(&h, &listener_host) {
                        Some(listener_host.clone())
                    } else {
                        None
                    }
                })
                .collect()
        };
        if hosts.is_empty() {
            reason =
                ("NoMatchingListenerHostname", format!("no hostname matches listener {}", s.listener.name));
            continue;
        }
        attached += 1;
        s.status.attached_routes += 1;
        let derived = derived_name(&parent.name, &s.listener.name);
        let valid = |b: &HttpBackendRef| backend_problem(model, route_ns, at.kind, b).is_none();
        for host in hosts {
            let entry = by_host.entry((gateway_ns.to_owned(), derived.clone(), host)).or_default();
            for (index, rule) in route.spec.rules.iter().enumerate() {
                let at = rules::RuleAt {
                    namespace: route_ns,
                    name: route_name,
                    created: &route.metadata.creation_timestamp,
                    index,
                };
                entry.extend(rules::compile(&at, rule, &valid));
            }
        }
    }
    if attached > 0 {
        Condition::yes("Accepted", "Accepted", "")
    } else {
        Condition::no("Accepted", reason.0, reason.1)
    }
}

fn namespace_allowed(model: &Model, route_ns: &str, gateway_ns: &str, l: &Listener) -> bool {
    let from = l.allowed_routes.as_ref().and_then(|a| a.namespaces.as_ref());
    match from.and_then(|n| n.from.as_deref()).unwrap_or("Same") {
        "All" => true,
        "Selector" => {
            // matchLabels only; matchExpressions select nothing here.
            let selector = from.and_then(|n| n.selector.as_ref());
            let wanted = selector.and_then(|s| s.get("matchLabels")).and_then(|m| m.as_object());
            let has_expressions =
                selector.and_then(|s| s.get("matchExpressions")).is_some_and(|e| !e.is_null());
            let Some(wanted) = wanted.filter(|_| !has_expressions) else { return false };
            let labels = model
                .resources
                .get(&ObjectKey::new(Kind::Namespace, "", route_ns))
                .and_then(|r| r.metadata().labels.clone())
                .unwrap_or_default();
            wanted
                .iter()
                .all(|(k, v)| v.as_str().is_some_and(|v| labels.get(k).map(String::as_str) == Some(v)))
        }
        _ => route_ns == gateway_ns,
    }
}

/// Why a backend of a route of `kind` cannot be used, as `(reason, message)`.
pub fn backend_problem(
    model: &Model,
    route_ns: &str,
    route_kind: &str,
    b: &HttpBackendRef,
) -> Option<(&'static str, String)> {
    let group = b.group.as_deref().unwrap_or("");
    let kind = b.kind.as_deref().unwrap_or("Service");
    if !(group.is_empty() || group == "core") || kind != "Service" {
        return Some((
            "InvalidKind",
            format!("backendRef {group}/{kind} {}: only Services are supported", b.name),
        ));
    }
    let namespace = b.namespace.as_deref().unwrap_or(route_ns);
    if namespace != route_ns && !granted(model, route_kind, route_ns, namespace, &b.name) {
        return Some((
            "RefNotPermitted",
            format!(
                "no ReferenceGrant in {namespace} lets {route_kind}s of {route_ns} refer to Service {}",
                b.name
            ),
        ));
    }
    let Some(service) = model.services.get(&(namespace.to_owned(), b.name.clone())) else {
        return Some(("BackendNotFound", format!("no Service {namespace}/{}", b.name)));
    };
    if let Some(port) = b.port
        && !service.ports.iter().any(|p| u32::from(p.port) == port)
    {
        return Some(("BackendNotFound", format!("Service {namespace}/{} has no port {port}", b.name)));
    }
    None
}

fn granted(model: &Model, route_kind: &str, from_ns: &str, to_ns: &str, name: &str) -> bool {
    model.reference_grants.iter().filter(|((ns, _), _)| ns == to_ns).any(|(_, grant)| {
        grant.spec.from.iter().any(|f| f.group == GROUP && f.kind == route_kind && f.namespace == from_ns)
            && grant.spec.to.iter().any(|t| {
                (t.group.is_empty() || t.group == "core")
                    && t.kind == "Service"
                    && t.name.as_deref().is_none_or(|n| n == name)
            })
    })
}

/// ResolvedRefs of a route: the first backend that cannot be used says why.
fn resolved_refs(model: &Model, route_ns: &str, kind: &str, spec: &HttpRouteSpec) -> Condition {
    spec.rules
        .iter()
        .flat_map(|r| &r.backend_refs)
        .find_map(|b| backend_problem(model, route_ns, kind, b))
        .map_or_else(
            || Condition::yes("ResolvedRefs", "ResolvedRefs", ""),
            |(reason, message)| Condition::no("ResolvedRefs", reason, message),
        )
}

#[cfg(test)]
mod tests;
