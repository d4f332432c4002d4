//! Model → one proxy's configuration. Pure functions: no I/O, no clocks. Equal inputs give equal
//! output (everything is sorted), and the output is always whole: every name it refers to is in
//! it ([`check_consistent`]).
//!
//! One job per module: `services` discovers the registry, `visibility` decides what a proxy
//! sees (exportTo, Sidecar), `routes` turns VirtualServices into virtual hosts, `clusters`
//! turns DestinationRules into clusters, `mesh` and `retries` carry the mesh-wide settings;
//! `names`, `hosts`, `values` and `objects` are their shared vocabulary.
//!
//! Naming: a service port `<host>:<port>` has a virtual host and an endpoint set of that name
//! (the endpoints carry the target port and the workload labels), and clusters
//! `outbound|<port>||<host>` and `outbound|<port>|<subset>|<host>` over that set.

use std::collections::{BTreeMap, BTreeSet};

use trellis_xds::config as pb;

use crate::model::Model;

mod clusters;
mod consistency;
mod hosts;
mod mesh;
pub mod names;
mod objects;
mod retries;
mod routes;
mod services;
#[cfg(test)]
mod test_support;
mod values;
mod visibility;

pub use consistency::check_consistent;

use names::{BLACK_HOLE_CLUSTER, service_port_name};

/// What the control plane knows of a connected proxy (from its xDS node metadata).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ProxyIdentity {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
}

/// Proxies with equal scopes get identical resources, so the server translates once per scope.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope {
    pub namespace: String,
    /// The Sidecar resource that applies to the proxy, if any, as `namespace/name`: it is the
    /// root namespace's for proxies whose own namespace has none.
    pub sidecar: Option<String>,
}

/// The scope of a proxy: its namespace and the Sidecar that applies to it — in its namespace
/// the first (by name) whose selector matches its labels, else the first without a selector,
/// else the root namespace's first without a selector.
pub fn scope_of(model: &Model, proxy: &ProxyIdentity) -> Scope {
    Scope {
        namespace: proxy.namespace.clone(),
        sidecar: visibility::select_sidecar(
            model,
            &proxy.namespace,
            &proxy.labels,
            model.mesh.root_namespace(),
        ),
    }
}

/// The configuration of every proxy in `scope`.
pub fn translate(model: &Model, scope: &Scope) -> pb::ProxyConfig {
    let view = visibility::View::new(model, scope);
    let virtual_services = routes::VirtualServices::visible(model, &view);
    let services = view.services(services::discover(model), &virtual_services.destination_hosts());
    let rules = clusters::DestinationRules::visible(model, &view);
    let connect_timeout = mesh::connect_timeout(&model.mesh);

    let mut endpoints = Vec::new();
    let mut clusters = Vec::new();
    for service in services.values() {
        let rule = rules.for_service(service);
        for port in &service.ports {
            endpoints.push(pb::ServiceEndpoints {
                service: service_port_name(&service.hostname, port.number),
                endpoints: port.endpoints.clone(),
            });
            clusters.extend(clusters::for_port(service, port, rule, connect_timeout));
        }
    }

    let cluster_names: BTreeSet<String> = clusters.iter().map(|c| c.name.clone()).collect();
    let registry = routes::Registry {
        services: &services,
        clusters: &cluster_names,
        namespace: &scope.namespace,
        default_retry: retries::route_default(&model.mesh),
    };
    let mut virtual_hosts = Vec::new();
    let mut proxy_services = Vec::new();
    let mut opaque_ports = BTreeSet::new();
    for service in services.values() {
        let vs = virtual_services.for_host(&service.hostname);
        let mut ports = Vec::new();
        for port in &service.ports {
            let name = service_port_name(&service.hostname, port.number);
            let routing = registry.route_port(service, port, vs, name.clone());
            virtual_hosts.push(routing.virtual_host);
            ports.push(pb::ServicePort {
                port: port.number.into(),
                protocol: port.protocol.into(),
                virtual_host: name,
                tcp_cluster: routing.tcp_cluster.unwrap_or_default(),
            });
            if port.opaque {
                opaque_ports.insert(u32::from(port.number));
            }
        }
        proxy_services.push(pb::Service {
            name: service.hostname.clone(),
            aliases: service.aliases(&scope.namespace),
            addresses: service.addresses.iter().map(ToString::to_string).collect(),
            ports,
        });
    }

    if refers_to_black_hole(&virtual_hosts, &proxy_services) {
        clusters.push(pb::Cluster {
            name: BLACK_HOLE_CLUSTER.into(),
            service: BLACK_HOLE_CLUSTER.into(),
            ..Default::default()
        });
        endpoints.push(pb::ServiceEndpoints { service: BLACK_HOLE_CLUSTER.into(), endpoints: Vec::new() });
    }
    clusters.sort_by(|a, b| a.name.cmp(&b.name));
    endpoints.sort_by(|a, b| a.service.cmp(&b.service));
    virtual_hosts.sort_by(|a, b| a.name.cmp(&b.name));

    pb::ProxyConfig {
        outbound_policy: mesh::outbound_policy(&model.mesh, view.sidecar.map(|s| s.spec)).into(),
        opaque_ports: opaque_ports.into_iter().collect(),
        services: proxy_services,
        virtual_hosts,
        clusters,
        endpoints,
        protocol_detection_timeout: mesh::protocol_detection_timeout(&model.mesh).map(Into::into),
        limits: None,
    }
}

fn refers_to_black_hole(virtual_hosts: &[pb::VirtualHost], services: &[pb::Service]) -> bool {
    let in_routes = virtual_hosts.iter().flat_map(|vh| &vh.routes).any(|r| match &r.action {
        Some(pb::route::Action::Forward(f)) => f.clusters.iter().any(|c| c.cluster == BLACK_HOLE_CLUSTER),
        _ => false,
    });
    in_routes || services.iter().flat_map(|s| &s.ports).any(|p| p.tcp_cluster == BLACK_HOLE_CLUSTER)
}
