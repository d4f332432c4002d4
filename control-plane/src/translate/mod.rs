//! Model → one proxy's configuration. Pure functions: no I/O, no clocks. Equal inputs give equal
//! output (everything is sorted), and the output is always whole: every name it refers to is in
//! it ([`check_consistent`]).
//!
//! One job per module: `services` discovers the registry, `visibility` decides what a proxy
//! sees (exportTo, Sidecar), `routes` turns VirtualServices into virtual hosts, `clusters`
//! turns DestinationRules into clusters, `mesh` and `retries` carry the mesh-wide settings;
//! `peer_authentication`, `policies`, `authorization` and `request_authentication` resolve the
//! workload's security policies (inbound mTLS mode, AuthorizationPolicies with their ext_authz
//! providers, JWT providers); `names`, `hosts`, `values` and `objects` are their shared
//! vocabulary.
//!
//! Naming: a service port `<host>:<port>` has a virtual host and an endpoint set of that name
//! (the endpoints carry the target port and the workload labels), and clusters
//! `outbound|<port>||<host>` and `outbound|<port>|<subset>|<host>` over that set.
//!
//! What the proxy's configuration cannot express is left out and logged at debug level: CORS,
//! `sourceLabels`,
//! `authority` and `scheme` matches, regex rewrites, redirect ports, DestinationRules with a
//! `workloadSelector`, Sidecar egress ports, and ServiceEntries the proxy cannot dial
//! (resolution NONE, DNS without IP endpoints, address ranges): their traffic is left to the
//! outbound policy. Bad values are skipped alone, with a warning naming resource and field.

use std::collections::{BTreeMap, BTreeSet};

use trellis_xds::config as pb;

use crate::model::Model;

mod allocation;
mod authorization;
mod clusters;
mod consistency;
pub mod gateway;
pub mod gateway_api;
mod hosts;
pub mod locality;
mod mesh;
pub mod names;
mod objects;
pub mod peer_authentication;
pub mod policies;
mod ratelimit;
mod request_authentication;
mod retries;
mod routes;
mod services;
pub mod telemetry;
#[cfg(test)]
pub(crate) mod test_support;
pub mod tracing;
mod values;
mod visibility;
pub mod workloads;

pub use consistency::check_consistent;

use names::{BLACK_HOLE_CLUSTER, service_port_name};
use policies::PolicyKey;
use trellis_api::envoy_filter::Context as EnvoyFilterContext;
use trellis_api::resource::Kind;

/// What the control plane knows of a connected proxy (from its xDS node metadata).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ProxyIdentity {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// It asked for addresses for the ServiceEntries that list none (its DNS proxy answers
    /// with them: Istio's `ISTIO_META_DNS_AUTO_ALLOCATE`).
    pub dns_auto_allocate: bool,
}

/// Proxies with equal scopes get identical resources, so the server translates once per scope.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope {
    pub namespace: String,
    /// The Sidecar resource that applies to the proxy, if any, as `namespace/name`: it is the
    /// root namespace's for proxies whose own namespace has none.
    pub sidecar: Option<String>,
    /// The workload's PeerAuthentication, resolved: proxies of one namespace and Sidecar with
    /// different policies get different settings.
    pub inbound_mtls: peer_authentication::InboundMtls,
    /// The AuthorizationPolicies that select the workload, `namespace/name`, sorted.
    pub authorization: Vec<PolicyKey>,
    /// The RequestAuthentications that select the workload, `namespace/name`, sorted.
    pub request_authentication: Vec<PolicyKey>,
    /// The EnvoyFilters that select the workload (for their rate limits), in the order applied.
    pub envoy_filters: Vec<PolicyKey>,
    /// The Telemetries that apply to the workload (mesh, namespace, workload), in that order.
    pub telemetry: Vec<PolicyKey>,
    /// Where the proxy runs, when some cluster's balancing depends on it (see
    /// [`locality::relevant`]); unknown otherwise.
    pub locality: trellis_api::locality::Locality,
    /// The proxy's labels that a `failoverPriority` names.
    pub workload_labels: BTreeMap<String, String>,
    /// See [`ProxyIdentity::dns_auto_allocate`].
    pub dns_auto_allocate: bool,
    /// Gateway proxies only: the Gateways (`namespace/name`) that select it.
    pub gateway: Option<Vec<String>>,
    /// Gateway proxies only: whether its namespace's Secrets may be sent to it (its caller's
    /// namespace is authenticated). Without, servers with a `credentialName` are left out.
    pub gateway_credentials: bool,
}

/// The scope of a proxy: its namespace and the Sidecar that applies to it — in its namespace
/// the first (by name) whose selector matches its labels, else the first without a selector,
/// else the root namespace's first without a selector — and the security policies that select
/// it. Its locality is what its own `istio-locality` label says; a connected proxy's is
/// looked up in the registry ([`scope_of_instance`]).
pub fn scope_of(model: &Model, proxy: &ProxyIdentity) -> Scope {
    scope_of_instance(model, proxy, &locality::Instance::default())
}

/// As [`scope_of`], for a proxy whose pod name and address are known (from its node id): its
/// locality is then its pod's, or its WorkloadEntry's.
pub fn scope_of_instance(model: &Model, proxy: &ProxyIdentity, instance: &locality::Instance) -> Scope {
    let place = || locality::of_proxy(model, &proxy.namespace, &proxy.labels, instance);
    let (locality, workload_labels) = locality::relevant(model, place, &proxy.labels);
    Scope {
        locality,
        workload_labels,
        dns_auto_allocate: proxy.dns_auto_allocate,
        namespace: proxy.namespace.clone(),
        sidecar: visibility::select_sidecar(
            model,
            &proxy.namespace,
            &proxy.labels,
            model.mesh.root_namespace(),
        ),
        inbound_mtls: peer_authentication::resolve(model, &proxy.namespace, &proxy.labels),
        authorization: policies::selecting(model, Kind::AuthorizationPolicy, &proxy.namespace, &proxy.labels),
        request_authentication: policies::selecting(
            model,
            Kind::RequestAuthentication,
            &proxy.namespace,
            &proxy.labels,
        ),
        envoy_filters: ratelimit::selecting(model, &proxy.namespace, &proxy.labels),
        telemetry: telemetry::applicable(model, &proxy.namespace, &proxy.labels),
        gateway: None,
        gateway_credentials: false,
    }
}

/// The scope of a gateway proxy (Istio's `router`): as a sidecar's, plus the Gateways that
/// select it by its labels. `credentials`: its namespace is authenticated, so its Secrets may
/// be sent.
pub fn scope_of_router(
    model: &Model,
    proxy: &ProxyIdentity,
    instance: &locality::Instance,
    credentials: bool,
) -> Scope {
    Scope {
        gateway: Some({
            let mut selected = gateway::selecting(model, &proxy.labels);
            selected.extend(gateway_api::selecting(model, &proxy.namespace, &proxy.labels));
            selected
        }),
        gateway_credentials: credentials,
        ..scope_of_instance(model, proxy, instance)
    }
}

/// The configuration of every proxy in `scope`.
pub fn translate(model: &Model, scope: &Scope) -> pb::ProxyConfig {
    // A gateway proxy bound to a Kubernetes Gateway also sees the Istio config it means; every
    // proxy sees the mesh routes of HTTPRoutes attached to Services (GAMMA).
    let derived;
    let bound = scope.gateway.as_ref().is_some_and(|selected| selected.iter().any(|g| g.contains('~')));
    let model = if bound || gateway_api::has_mesh_routes(model) {
        derived = gateway_api::with_derived(model);
        derived.as_ref().unwrap_or(model)
    } else {
        model
    };
    let view = visibility::View::new(model, scope);
    let virtual_services = routes::VirtualServices::visible(model, &view);
    let mut discovered = services::discover(model);
    if scope.dns_auto_allocate {
        allocation::assign(&mut discovered);
    }
    let services = view.services(discovered, &virtual_services.destination_hosts());
    let mut config = pb::ProxyConfig {
        outbound_policy: mesh::outbound_policy(&model.mesh, view.sidecar.map(|s| s.spec)).into(),
        protocol_detection_timeout: mesh::protocol_detection_timeout(&model.mesh).map(Into::into),
        inbound_tls: Some(scope.inbound_mtls.to_pb()),
        authorization: authorization::policies(model, &scope.authorization),
        jwt_providers: request_authentication::providers(model, &scope.request_authentication),
        locality: locality::to_pb(&scope.locality),
        workload_labels: scope.workload_labels.clone(),
        access_logs: mesh::access_logs(&model.mesh),
        ..Default::default()
    };
    config.ext_authz = authorization::ext_authz(model, &config.authorization);
    config.tracing = tracing::config(model, &scope.namespace);
    telemetry::apply(model, &scope.telemetry, &mut config);
    // As Istio, a gateway has no sidecar contexts, a sidecar no gateway one.
    if scope.gateway.is_some() {
        let [gateway] = ratelimit::limits(model, &scope.envoy_filters, [EnvoyFilterContext::Gateway]);
        (config.gateway_local_rate_limit, config.gateway_global_rate_limit) = gateway;
    } else {
        let [inbound, outbound] = ratelimit::limits(
            model,
            &scope.envoy_filters,
            [EnvoyFilterContext::Inbound, EnvoyFilterContext::Outbound],
        );
        (config.inbound_local_rate_limit, config.inbound_global_rate_limit) = inbound;
        (config.outbound_local_rate_limit, config.outbound_global_rate_limit) = outbound;
    }
    add_clusters(&mut config, model, &view, &services);
    add_services(&mut config, model, scope, &services, &virtual_services);
    if let Some(gateways) = &scope.gateway {
        let cluster_names: BTreeSet<String> = config.clusters.iter().map(|c| c.name.clone()).collect();
        let registry = routes::Registry {
            services: &services,
            clusters: &cluster_names,
            namespace: &scope.namespace,
            default_retry: retries::route_default(&model.mesh),
            gateways: None,
        };
        let secrets = scope.gateway_credentials.then_some(scope.namespace.as_str());
        gateway::add(&mut config, model, secrets, gateways, &registry);
    }
    add_black_hole_if_used(&mut config);
    config.clusters.sort_by(|a, b| a.name.cmp(&b.name));
    config.endpoints.sort_by(|a, b| a.service.cmp(&b.service));
    config.virtual_hosts.sort_by(|a, b| a.name.cmp(&b.name));
    config
}

/// Endpoint sets and clusters, one set per service port.
fn add_clusters(
    config: &mut pb::ProxyConfig,
    model: &Model,
    view: &visibility::View<'_>,
    services: &BTreeMap<String, services::Service>,
) {
    let rules = clusters::DestinationRules::visible(model, view);
    let connect_timeout = mesh::connect_timeout(&model.mesh);
    let retry_budget = mesh::retry_budget(&model.mesh);
    for service in services.values() {
        let rule = rules.for_service(service);
        for port in &service.ports {
            config.endpoints.push(pb::ServiceEndpoints {
                service: service_port_name(&service.hostname, port.number),
                endpoints: port.endpoints.clone(),
                service_accounts: port
                    .accounts
                    .iter()
                    .map(|(ns, sa)| format!("spiffe://{}/ns/{ns}/sa/{sa}", model.mesh.trust_domain()))
                    .collect(),
            });
            config.clusters.extend(clusters::for_port(
                service,
                port,
                rule,
                connect_timeout,
                retry_budget,
                &model.mesh,
            ));
        }
    }
}

/// The address table and a virtual host per service port; routes refer to the clusters
/// already in `config`.
fn add_services(
    config: &mut pb::ProxyConfig,
    model: &Model,
    scope: &Scope,
    services: &BTreeMap<String, services::Service>,
    virtual_services: &routes::VirtualServices<'_>,
) {
    let cluster_names: BTreeSet<String> = config.clusters.iter().map(|c| c.name.clone()).collect();
    let registry = routes::Registry {
        services,
        clusters: &cluster_names,
        namespace: &scope.namespace,
        default_retry: retries::route_default(&model.mesh),
        gateways: None,
    };
    let mut opaque_ports = BTreeSet::new();
    for service in services.values() {
        let vs = virtual_services.for_host(&service.hostname);
        let mut ports = Vec::new();
        for port in &service.ports {
            let name = service_port_name(&service.hostname, port.number);
            let routing = registry.route_port(service, port, vs, name.clone());
            // One TCP cluster is named alone; a split goes whole, with its weights.
            let (tcp_cluster, tcp_clusters) = match routing.tcp_clusters {
                None => (String::new(), Vec::new()),
                Some(mut one) if one.len() == 1 => (one.remove(0).0, Vec::new()),
                Some(split) => (
                    String::new(),
                    split
                        .into_iter()
                        .map(|(cluster, weight)| pb::WeightedCluster { cluster, weight })
                        .collect(),
                ),
            };
            config.virtual_hosts.push(routing.virtual_host);
            ports.push(pb::ServicePort {
                port: port.number.into(),
                protocol: port.protocol.into(),
                virtual_host: name,
                tcp_cluster,
                tcp_clusters,
            });
            if port.opaque {
                opaque_ports.insert(u32::from(port.number));
            }
        }
        config.services.push(pb::Service {
            name: service.hostname.clone(),
            aliases: service.aliases(&scope.namespace),
            addresses: service.addresses.iter().map(ToString::to_string).collect(),
            ports,
        });
    }
    config.opaque_ports = opaque_ports.into_iter().collect();
}

/// The black-hole cluster (and its empty endpoint set) when a route or port names it.
fn add_black_hole_if_used(config: &mut pb::ProxyConfig) {
    let in_routes = config.virtual_hosts.iter().flat_map(|vh| &vh.routes).any(|r| match &r.action {
        Some(pb::route::Action::Forward(f)) => f.clusters.iter().any(|c| c.cluster == BLACK_HOLE_CLUSTER),
        _ => false,
    });
    let in_ports = config.services.iter().flat_map(|s| &s.ports).any(|p| {
        p.tcp_cluster == BLACK_HOLE_CLUSTER || p.tcp_clusters.iter().any(|c| c.cluster == BLACK_HOLE_CLUSTER)
    });
    let in_gateways = config.gateway_listeners.iter().flat_map(|l| &l.servers).any(|s| {
        let sni = s.sni_routes.iter().flat_map(|r| &r.clusters);
        s.tcp_clusters.iter().chain(sni).any(|c| c.cluster == BLACK_HOLE_CLUSTER)
    });
    if in_routes || in_ports || in_gateways {
        config.clusters.push(pb::Cluster {
            name: BLACK_HOLE_CLUSTER.into(),
            service: BLACK_HOLE_CLUSTER.into(),
            ..Default::default()
        });
        config
            .endpoints
            .push(pb::ServiceEndpoints { service: BLACK_HOLE_CLUSTER.into(), ..Default::default() });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::test_support::*;
    use super::*;

    /// A bit of everything, for properties that must hold whatever the input.
    fn everything() -> Model {
        let yaml = format!(
            r#"{REVIEWS_SUBSETS}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: reviews, namespace: shop }}
spec:
  hosts: [reviews]
  http:
    - match: [{{ headers: {{ end-user: {{ exact: jason }} }} }}]
      route: [{{ destination: {{ host: reviews, subset: v2 }} }}]
    - match: [{{ uri: {{ prefix: /gone }} }}]
      route: [{{ destination: {{ host: gone.example.com }} }}]
    - route:
        - {{ destination: {{ host: reviews, subset: v1 }}, weight: 80 }}
        - {{ destination: {{ host: reviews, subset: v4 }}, weight: 20 }}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: db, namespace: shop }}
spec:
  hosts: [db.shop.internal]
  addresses: [240.0.0.1]
  resolution: STATIC
  ports: [{{ number: 3306, name: mysql, protocol: MYSQL }}]
  workloadSelector: {{ labels: {{ app: db }} }}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{ name: db-1, namespace: shop }}
spec: {{ address: 10.6.0.1, labels: {{ app: db }} }}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: db, namespace: shop }}
spec:
  hosts: [db.shop.internal]
  tcp: [{{ route: [{{ destination: {{ host: db.shop.internal, subset: none }} }}] }}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{ name: narrow, namespace: web }}
spec:
  workloadSelector: {{ labels: {{ app: narrow }} }}
  egress: [{{ hosts: ["shop/reviews.shop.svc.cluster.local"] }}]
"#
        );
        with_mesh(
            bookinfo(&yaml),
            "protocolDetectionTimeout: 250ms\noutboundTrafficPolicy: { mode: REGISTRY_ONLY }",
        )
    }

    #[test]
    fn translation_is_deterministic_sorted_and_whole() {
        let m = everything();
        for (ns, labels) in [("shop", vec![]), ("web", vec![("app", "narrow")]), ("web", vec![])] {
            let first = config_for(&m, ns, &labels);
            assert_eq!(first, config_for(&m, ns, &labels), "{ns} {labels:?}");
            let sorted = |names: Vec<&str>| {
                let mut s = names.clone();
                s.sort();
                s == names
            };
            assert!(sorted(service_names(&first)));
            assert!(sorted(cluster_names(&first)));
            assert!(sorted(first.virtual_hosts.iter().map(|v| v.name.as_str()).collect()));
            assert!(sorted(first.endpoints.iter().map(|e| e.service.as_str()).collect()));
        }
        let shop = config(&m, "shop");
        assert_eq!(service(&shop, "db.shop.internal").ports[0].tcp_cluster, BLACK_HOLE_CLUSTER);
        assert_eq!(shop.opaque_ports, [3306]);
    }

    #[test]
    fn mesh_settings_reach_the_top_level() {
        let shop = config(&everything(), "shop");
        assert_eq!(shop.outbound_policy(), pb::OutboundPolicy::RegistryOnly);
        assert_eq!(shop.protocol_detection_timeout, Some(Duration::from_millis(250).into()));
        assert_eq!(shop.limits, None, "the proxy's own limits");
        let plain = config(&bookinfo(""), "shop");
        assert_eq!(plain.outbound_policy(), pb::OutboundPolicy::AllowAny);
        assert_eq!(plain.protocol_detection_timeout, None);
    }

    #[test]
    fn translation_depends_on_the_scope_only() {
        let m = everything();
        let proxy = |labels: &[(&str, &str)]| ProxyIdentity {
            namespace: "web".into(),
            labels: labels_of(labels),
            ..Default::default()
        };
        let a = scope_of(&m, &proxy(&[("app", "one")]));
        let b = scope_of(&m, &proxy(&[("app", "two"), ("version", "v9")]));
        assert_eq!(a, b, "no Sidecar tells them apart");
        let narrow = scope_of(&m, &proxy(&[("app", "narrow")]));
        assert_eq!(narrow.sidecar.as_deref(), Some("web/narrow"));
        assert_ne!(translate(&m, &a), translate(&m, &narrow));

        let gone =
            Scope { namespace: "web".into(), sidecar: Some("web/deleted".into()), ..Default::default() };
        assert_eq!(translate(&m, &gone), translate(&m, &a), "a Sidecar deleted since scoping is no Sidecar");
    }

    #[test]
    fn bad_data_is_skipped_and_the_rest_still_translates() {
        let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: bad, namespace: shop }
spec:
  hosts: [bad.example.com]
  addresses: [not-an-ip, 240.0.0.9]
  resolution: STATIC
  ports: [{ number: 0, name: zero }, { number: 80, name: http, protocol: HTTP }]
  endpoints:
    - { address: nowhere }
    - { address: 10.7.0.1, ports: { http: 70000 } }
    - { address: 10.7.0.2 }
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: bad, namespace: shop }
spec:
  hosts: [bad.example.com]
  http:
    - match: [{ uri: { regex: "(" } }]
      route: [{ destination: { host: bad.example.com } }]
    - match: [{ headers: { "bad header": { exact: x } } }]
      route: [{ destination: { host: bad.example.com } }]
    - directResponse: { status: 42 }
    - name: survivor
      timeout: forever
      retries: { attempts: 2, retryOn: sometimes }
      route: [{ destination: { host: bad.example.com } }]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: bad, namespace: shop }
spec:
  host: bad.example.com
  trafficPolicy:
    connectionPool: { tcp: { maxConnections: -5, connectTimeout: 9000h } }
  subsets: [{ name: "" }, { name: "a|b" }, { name: v1 }, { name: v1, labels: { twice: "yes" } }]
"#;
        let config = config(&unchecked_model(yaml), "shop");
        let svc = service(&config, "bad.example.com");
        assert_eq!(svc.addresses, ["240.0.0.9"]);
        assert_eq!(svc.ports.iter().map(|p| p.port).collect::<Vec<_>>(), [80]);
        let addresses: Vec<_> =
            endpoints(&config, "bad.example.com:80").iter().map(|e| e.address.as_str()).collect();
        assert_eq!(addresses, ["10.7.0.2"]);

        let routes = routes(&config, "bad.example.com:80");
        assert_eq!(routes.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["survivor"]);
        assert_eq!(routes[0].timeout, None);
        assert_eq!(routes[0].retries.as_ref().map(|r| (r.attempts, r.retry_on.len())), Some((2, 0)));

        assert_eq!(
            cluster_names(&config),
            ["outbound|80|v1|bad.example.com", "outbound|80||bad.example.com"]
        );
        assert!(cluster(&config, "outbound|80|v1|bad.example.com").subset.is_empty(), "the first v1 wins");
        let pool = cluster(&config, "outbound|80||bad.example.com").connection_pool.unwrap();
        assert_eq!((pool.max_connections, pool.connect_timeout), (0, Some(Duration::from_secs(10).into())));
    }

    #[test]
    fn the_output_survives_the_proxys_json_mapping() {
        let config = config(&everything(), "shop");
        let json = serde_json::to_string(&config).unwrap();
        assert!(json.contains("\"virtualHost\":\"reviews.shop.svc.cluster.local:9080\""), "{json}");
        let back: pb::ProxyConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, config);
    }
}
