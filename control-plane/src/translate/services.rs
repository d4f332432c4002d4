//! Service discovery: every service of the mesh, with its ports and each port's endpoints, from
//! Kubernetes (Services, EndpointSlices, Pods) and from ServiceEntries (inline endpoints, or the
//! WorkloadEntries and Pods their `workloadSelector` picks).

use std::collections::BTreeMap;
use std::net::IpAddr;

use tracing::{debug, warn};
use trellis_api::locality::Locality;
use trellis_api::networking::{Port, ServiceEntryResolution, ServiceEntrySpec, WorkloadEntrySpec};
use trellis_api::primitives::{check_port, parse_ip_or_cidr};
use trellis_xds::config as pb;

use super::names::kube_hostname;
use super::objects::{self, Object, selects};
use crate::model::{KubeEndpointSlice, KubeService, KubeServicePort, Model};

/// One host of the registry.
#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    /// Fully qualified, lower case.
    pub hostname: String,
    pub namespace: String,
    pub origin: Origin,
    /// Virtual IPs, sorted.
    pub addresses: Vec<IpAddr>,
    /// Sorted by number, one entry per number.
    pub ports: Vec<ServicePort>,
    pub export_to: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Kubernetes { name: String },
    ServiceEntry { name: String },
}

#[derive(Clone, Debug, PartialEq)]
pub struct ServicePort {
    pub number: u16,
    pub name: String,
    pub protocol: pb::Protocol,
    /// Declared as a database protocol (MySQL, MongoDB, Redis): plain TCP that must never wait
    /// for protocol detection, since some of these servers speak first.
    pub opaque: bool,
    /// Sorted by address and port; each carries the target port and the workload's labels.
    pub endpoints: Vec<pb::Endpoint>,
    /// The service accounts the endpoints run as, `(namespace, name)`, sorted: a mesh TLS
    /// server of this port must present one of them.
    pub accounts: Vec<(String, String)>,
}

impl Service {
    pub fn port(&self, number: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.number == number)
    }

    /// The other names a workload in `namespace` reaches this service by: Kubernetes DNS search
    /// paths (the bare name only from the service's own namespace).
    pub fn aliases(&self, namespace: &str) -> Vec<String> {
        match &self.origin {
            Origin::Kubernetes { name } => {
                let ns = &self.namespace;
                let bare = (ns == namespace).then(|| name.clone());
                bare.into_iter().chain([format!("{name}.{ns}"), format!("{name}.{ns}.svc")]).collect()
            }
            Origin::ServiceEntry { .. } => Vec::new(),
        }
    }
}

/// Every service of the model: Kubernetes ones first, then ServiceEntry hosts, each group in
/// (namespace, name) order.
pub fn discover(model: &Model) -> Vec<Service> {
    let kube = model.services.values().map(|svc| kube_service(model, svc));
    let entries = objects::service_entries(model).flat_map(|se| service_entry(model, se));
    kube.chain(entries).collect()
}

// ---------------------------------------------------------------------------------------------
// Kubernetes

fn kube_service(model: &Model, svc: &KubeService) -> Service {
    let slices: Vec<&KubeEndpointSlice> = model
        .endpoint_slices
        .range((svc.namespace.clone(), String::new())..)
        .take_while(|((ns, _), _)| *ns == svc.namespace)
        .map(|(_, slice)| &**slice)
        .filter(|slice| slice.service == svc.name)
        .collect();
    let mut ports = Vec::new();
    for p in &svc.ports {
        if p.port == 0 {
            warn!(resource = %format!("Service {}/{}", svc.namespace, svc.name), field = "spec.ports.port", "port 0, skipped");
            continue;
        }
        let (protocol, opaque) = kube_protocol(p);
        let (endpoints, accounts) = kube_endpoints(model, svc, p, &slices);
        ports.push(ServicePort {
            number: p.port,
            name: p.name.clone(),
            protocol,
            opaque,
            endpoints,
            accounts,
        });
    }
    Service {
        hostname: kube_hostname(&svc.name, &svc.namespace),
        namespace: svc.namespace.clone(),
        origin: Origin::Kubernetes { name: svc.name.clone() },
        addresses: sorted(svc.addresses.clone()),
        ports: unique_ports(ports),
        export_to: svc.export_to.clone(),
    }
}

/// The ready endpoints behind one service port. Slices name their ports as the service does;
/// a numeric `targetPort` covers slices that do not list the port.
fn kube_endpoints(
    model: &Model,
    svc: &KubeService,
    port: &KubeServicePort,
    slices: &[&KubeEndpointSlice],
) -> (Vec<pb::Endpoint>, Vec<(String, String)>) {
    let mut endpoints = Vec::new();
    for slice in slices {
        let Some(target) = slice.ports.get(&port.name).copied().or(port.target_port).filter(|p| *p != 0)
        else {
            debug!(slice = %format!("{}/{}", slice.namespace, slice.name), port = %port.name, "no such port in the slice");
            continue;
        };
        for endpoint in slice.endpoints.iter().filter(|e| e.ready) {
            // Kubernetes: the addresses of one endpoint are fungible; the first is enough.
            let Some(address) = endpoint.addresses.first() else { continue };
            let pod =
                endpoint.pod.as_ref().and_then(|pod| model.pods.get(&(svc.namespace.clone(), pod.clone())));
            let labels = pod.map(|pod| pod.labels.clone()).unwrap_or_default();
            let account = pod.map(|pod| (pod.namespace.clone(), account_or_default(&pod.service_account)));
            // Istio's auto mTLS leaves out a destination whose PeerAuthentication disables it;
            // resolved per pod and port, where Istio only infers it for the whole service.
            let mtls_disabled = pod.is_some_and(|pod| {
                super::peer_authentication::resolve(model, &pod.namespace, &pod.labels).mode_for(target)
                    == super::peer_authentication::Mode::Disable
            });
            endpoints.push(Found {
                address: *address,
                port: target,
                weight: 0,
                labels,
                account,
                mtls_disabled,
                locality: super::locality::of_pod(model, pod.map(|p| &**p), endpoint.node_name.as_deref()),
            });
        }
    }
    sorted_endpoints(endpoints)
}

/// Istio's reading of a Kubernetes port: `appProtocol`, else the port name's prefix (`http`,
/// `http-web`, `grpc-api`, ...), else detection.
pub fn kube_protocol(port: &KubeServicePort) -> (pb::Protocol, bool) {
    let from_app = port.app_protocol.as_deref().and_then(|app| match app {
        "kubernetes.io/h2c" => Some((pb::Protocol::Http2, false)),
        "kubernetes.io/ws" => Some((pb::Protocol::Http, false)),
        "kubernetes.io/wss" => Some((pb::Protocol::Tls, false)),
        other => parse_protocol(other),
    });
    let prefix = port.name.split('-').next().unwrap_or_default();
    from_app.or_else(|| parse_protocol(prefix)).unwrap_or((pb::Protocol::Auto, false))
}

// ---------------------------------------------------------------------------------------------
// ServiceEntry

/// A workload behind a ServiceEntry: an inline endpoint, a selected WorkloadEntry or Pod.
struct Workload<'a> {
    address: IpAddr,
    /// Port name → port on the workload.
    ports: Option<&'a BTreeMap<String, u32>>,
    labels: &'a BTreeMap<String, String>,
    weight: u32,
    /// `(namespace, service account)`.
    account: Option<(String, String)>,
    locality: Locality,
}

/// Kubernetes gives a pod without one the namespace's `default` account; a WorkloadEntry
/// without one runs as `default` too (Istio's reading).
fn account_or_default(name: &str) -> String {
    if name.is_empty() { "default".to_owned() } else { name.to_owned() }
}

fn service_entry(model: &Model, se: Object<'_, ServiceEntrySpec>) -> Vec<Service> {
    let spec = se.spec;
    if spec.resolution == ServiceEntryResolution::None {
        // Istio forwards these to the address the client dialled, which a cluster here cannot
        // express: leaving the hosts out lets the outbound policy pass the traffic through.
        debug!(resource = %se, "resolution NONE: left to the outbound policy");
        return Vec::new();
    }
    let workloads = workloads(model, se);
    let dns = spec.resolution != ServiceEntryResolution::Static;
    if dns && workloads.is_empty() {
        // Translation runs per scope and push: the warning is the loader's, once per object
        // (the same check as `trellis validate`); here it would repeat for every proxy scope.
        debug!(resource = %se, field = "spec.resolution", "Trellis does not resolve host names for DNS resolution: without IP endpoints the entry is left out and its traffic goes by the outbound policy");
        return Vec::new();
    }
    let addresses = sorted(spec.addresses.iter().enumerate().filter_map(|(i, a)| vip(se, i, a)).collect());
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().enumerate() {
        let Ok(number) = check_port(p.number) else {
            warn!(resource = %se, field = %format!("spec.ports[{i}].number"), value = p.number, "not a port, skipped");
            continue;
        };
        let (protocol, opaque) = parse_protocol(&p.protocol).unwrap_or((pb::Protocol::Auto, false));
        let endpoints = workloads.iter().filter_map(|w| workload_endpoint(se, w, p, number)).collect();
        let (endpoints, accounts) = sorted_endpoints(endpoints);
        ports.push(ServicePort { number, name: p.name.clone(), protocol, opaque, endpoints, accounts });
    }
    let ports = unique_ports(ports);
    let mut hosts: Vec<String> = spec.hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
    hosts.sort();
    hosts.dedup();
    hosts
        .into_iter()
        .map(|hostname| Service {
            hostname,
            namespace: se.namespace.to_owned(),
            origin: Origin::ServiceEntry { name: se.name.to_owned() },
            addresses: addresses.clone(),
            ports: ports.clone(),
            export_to: spec.export_to.clone(),
        })
        .collect()
}

/// Inline endpoints, or what the `workloadSelector` picks in the entry's namespace.
fn workloads<'a>(model: &'a Model, se: Object<'a, ServiceEntrySpec>) -> Vec<Workload<'a>> {
    let dns = se.spec.resolution != ServiceEntryResolution::Static;
    let Some(selector) = &se.spec.workload_selector else {
        return se
            .spec
            .endpoints
            .iter()
            .enumerate()
            .filter_map(|(i, e)| entry_workload(e, dns, &se, &format!("spec.endpoints[{i}].address")))
            .collect();
    };
    let entries = objects::workload_entries(model)
        .filter(|we| we.namespace == se.namespace && selects(&selector.labels, &we.spec.labels))
        .filter_map(|we| {
            let mut workload = entry_workload(we.spec, dns, &we, "spec.address")?;
            workload.account = Some((we.namespace.to_owned(), account_or_default(&we.spec.service_account)));
            Some(workload)
        });
    let pods = model
        .pods
        .values()
        .filter(|pod| pod.namespace == se.namespace && selects(&selector.labels, &pod.labels))
        .filter_map(|pod| {
            Some(Workload {
                address: *pod.ips.first()?,
                ports: None,
                labels: &pod.labels,
                weight: 0,
                account: Some((pod.namespace.clone(), account_or_default(&pod.service_account))),
                locality: super::locality::of_pod(model, Some(pod), None),
            })
        });
    entries.chain(pods).collect()
}

fn entry_workload<'a>(
    e: &'a WorkloadEntrySpec,
    dns: bool,
    source: &dyn std::fmt::Display,
    field: &str,
) -> Option<Workload<'a>> {
    match e.address.parse::<IpAddr>() {
        Ok(address) => Some(Workload {
            address,
            ports: Some(&e.ports),
            labels: &e.labels,
            weight: e.weight,
            account: None,
            locality: super::locality::of_workload_entry(&e.locality, &e.labels),
        }),
        Err(_) if e.address.starts_with("unix://") => {
            warn!(resource = %source, field, address = %e.address, "unix socket endpoints are not supported by Trellis's proxy; endpoint skipped");
            None
        }
        // A name is fine for DNS resolution, but the proxy only dials IP addresses.
        Err(_) if dns => {
            debug!(resource = %source, field, address = %e.address, "DNS name endpoint left out");
            None
        }
        Err(_) => {
            warn!(resource = %source, field, address = %e.address, "not an IP address, endpoint skipped");
            None
        }
    }
}

/// The endpoint a workload gives a service port: its own port of that name, else the entry's
/// `targetPort`, else the service port itself.
fn workload_endpoint(
    se: Object<'_, ServiceEntrySpec>,
    w: &Workload<'_>,
    port: &Port,
    number: u16,
) -> Option<Found> {
    let named = w.ports.and_then(|ports| ports.get(&port.name)).copied();
    let target = named.or((port.target_port != 0).then_some(port.target_port)).unwrap_or(u32::from(number));
    match check_port(target) {
        Ok(port) => Some(Found {
            address: w.address,
            port,
            weight: w.weight,
            labels: w.labels.clone(),
            account: w.account.clone(),
            mtls_disabled: false,
            locality: w.locality.clone(),
        }),
        Err(message) => {
            warn!(resource = %se, address = %w.address, port = %port.name, %message, "endpoint skipped");
            None
        }
    }
}

/// A virtual IP: an address, or a CIDR of exactly one address. Wider ranges only make sense
/// for pass-through, which the proxy's exact address table cannot hold.
fn vip(se: Object<'_, ServiceEntrySpec>, i: usize, text: &str) -> Option<IpAddr> {
    let field = format!("spec.addresses[{i}]");
    match parse_ip_or_cidr(text) {
        Ok(net) if net.prefix_len() == net.max_prefix_len() => Some(net.addr()),
        Ok(_) => {
            debug!(resource = %se, field, address = text, "address range left out");
            None
        }
        Err(message) => {
            warn!(resource = %se, field, %message, "address skipped");
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared

/// Istio's protocol names (case-insensitive) → the proxy's protocol, and whether the port is
/// opaque. Unknown names are detected at run time.
fn parse_protocol(name: &str) -> Option<(pb::Protocol, bool)> {
    let protocol = match name.to_ascii_lowercase().as_str() {
        "http" | "http_proxy" | "grpc-web" => pb::Protocol::Http,
        "http2" => pb::Protocol::Http2,
        "grpc" => pb::Protocol::Grpc,
        "tcp" => pb::Protocol::Tcp,
        "tls" | "https" => pb::Protocol::Tls,
        "mongo" | "mysql" | "redis" => return Some((pb::Protocol::Tcp, true)),
        _ => return None,
    };
    Some((protocol, false))
}

fn sorted(mut addresses: Vec<IpAddr>) -> Vec<IpAddr> {
    addresses.sort();
    addresses.dedup();
    addresses
}

/// An endpoint as discovered, before it is sorted and written out.
struct Found {
    address: IpAddr,
    port: u16,
    weight: u32,
    labels: BTreeMap<String, String>,
    account: Option<(String, String)>,
    /// Its PeerAuthentication takes plaintext only on this port.
    mtls_disabled: bool,
    locality: Locality,
}

/// The label an injected pod carries: its sidecar terminates mutual TLS.
const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";

/// Endpoints in (address, port) order, one per pair: a workload listed twice (two slices
/// during a rollout) is still one endpoint. Also the accounts they run as, sorted.
fn sorted_endpoints(mut endpoints: Vec<Found>) -> (Vec<pb::Endpoint>, Vec<(String, String)>) {
    endpoints.sort_by_key(|e| (e.address, e.port));
    endpoints.dedup_by_key(|e| (e.address, e.port));
    let mut accounts: Vec<(String, String)> = endpoints.iter().filter_map(|e| e.account.clone()).collect();
    accounts.sort();
    accounts.dedup();
    let endpoints = endpoints
        .into_iter()
        .map(|e| pb::Endpoint {
            address: e.address.to_string(),
            port: u32::from(e.port),
            weight: e.weight,
            mesh_tls: !e.mtls_disabled && e.labels.get(TLS_MODE_LABEL).is_some_and(|mode| mode == "istio"),
            locality: super::locality::to_pb(&e.locality),
            labels: e.labels,
        })
        .collect();
    (endpoints, accounts)
}

/// Sorted by number; the first declaration of a number wins.
fn unique_ports(mut ports: Vec<ServicePort>) -> Vec<ServicePort> {
    ports.sort_by_key(|p| p.number);
    ports.dedup_by_key(|p| p.number);
    ports
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    const ENTRIES: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: reviews, namespace: shop }
spec:
  hosts: [reviews.example.internal]
  addresses: [240.0.0.10]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
    - { number: 9080, name: http, protocol: HTTP }
    - { number: 9090, name: grpc-api, protocol: GRPC, targetPort: 19090 }
  workloadSelector: { labels: { app: reviews } }
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: reviews-v1, namespace: shop }
spec:
  address: 10.0.0.1
  labels: { app: reviews, version: v1 }
  ports: { http: 8080 }
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: reviews-v2, namespace: shop }
spec:
  address: 10.0.0.2
  labels: { app: reviews, version: v2 }
  weight: 3
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: reviews-elsewhere, namespace: other }
spec:
  address: 10.0.0.3
  labels: { app: reviews }
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: ratings, namespace: shop }
spec:
  address: 10.0.0.4
  labels: { app: ratings }
"#;

    fn endpoint(address: &str, port: u32, weight: u32, labels: &[(&str, &str)]) -> pb::Endpoint {
        pb::Endpoint {
            address: address.into(),
            port,
            weight,
            labels: labels_of(labels),
            ..Default::default()
        }
    }

    #[test]
    fn service_entries_select_workload_entries_of_their_namespace() {
        let config = config(&model(ENTRIES), "shop");
        let host = "reviews.example.internal";
        let svc = service(&config, host);
        assert_eq!(svc.addresses, ["240.0.0.10"]);
        assert!(svc.aliases.is_empty());
        let ports: Vec<_> =
            svc.ports.iter().map(|p| (p.port, p.protocol(), p.virtual_host.as_str())).collect();
        assert_eq!(
            ports,
            [
                (9080, pb::Protocol::Http, "reviews.example.internal:9080"),
                (9090, pb::Protocol::Grpc, "reviews.example.internal:9090")
            ]
        );
        let v1 = [("app", "reviews"), ("version", "v1")];
        let v2 = [("app", "reviews"), ("version", "v2")];
        // The entry's own port name wins, then the ServiceEntry's targetPort, then the port.
        assert_eq!(
            endpoints(&config, "reviews.example.internal:9080"),
            [endpoint("10.0.0.1", 8080, 0, &v1), endpoint("10.0.0.2", 9080, 3, &v2)]
        );
        assert_eq!(
            endpoints(&config, "reviews.example.internal:9090"),
            [endpoint("10.0.0.1", 19090, 0, &v1), endpoint("10.0.0.2", 19090, 3, &v2)]
        );
        let default = cluster(&config, "outbound|9080||reviews.example.internal");
        assert_eq!((default.service.as_str(), default.port), ("reviews.example.internal:9080", 0));
        assert!(default.subset.is_empty());
    }

    #[test]
    fn inline_endpoints_dns_names_and_unresolvable_entries() {
        let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: db, namespace: data }
spec:
  hosts: [db.example.com, db-replica.example.com]
  resolution: DNS
  ports: [{ number: 3306, name: mysql, protocol: MYSQL }]
  endpoints:
    - { address: 10.9.0.5, labels: { role: primary } }
    - { address: db.internal.example.com }
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: passthrough, namespace: data }
spec:
  hosts: [api.example.com]
  resolution: NONE
  ports: [{ number: 443, name: https, protocol: HTTPS }]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: by-dns, namespace: data }
spec:
  hosts: [www.example.org]
  resolution: DNS
  ports: [{ number: 443, name: tls, protocol: TLS }]
"#;
        let config = config(&model(yaml), "data");
        assert_eq!(service_names(&config), ["db-replica.example.com", "db.example.com"]);
        for host in ["db.example.com", "db-replica.example.com"] {
            let port = &service(&config, host).ports[0];
            assert_eq!(port.protocol(), pb::Protocol::Tcp);
            assert_eq!(port.tcp_cluster, format!("outbound|3306||{host}"));
            assert_eq!(
                endpoints(&config, &format!("{host}:3306")),
                [endpoint("10.9.0.5", 3306, 0, &[("role", "primary")])]
            );
        }
        assert_eq!(config.opaque_ports, [3306], "MySQL speaks first");
    }

    #[test]
    fn kubernetes_services_take_ready_endpoints_and_pod_labels() {
        let mut m = Model::default();
        add_kube_service(
            &mut m,
            "shop",
            "reviews",
            "10.96.0.20",
            &[("http", 9080, None), ("tcp-db", 5432, Some(5432))],
        );
        add_kube_service(&mut m, "shop", "ratings", "10.96.0.21", &[("http", 9080, None)]);
        add_slice(
            &mut m,
            "shop",
            "reviews",
            "reviews-a",
            &[("http", 8080)],
            &[
                ("10.1.0.3", true, Some("reviews-v2")),
                ("10.1.0.1", true, Some("reviews-v1")),
                ("10.1.0.2", false, None),
            ],
        );
        add_slice(&mut m, "shop", "reviews", "reviews-b", &[], &[("10.1.0.4", true, None)]);
        add_slice(&mut m, "shop", "ratings", "ratings-a", &[("http", 7070)], &[("10.1.1.1", true, None)]);
        add_pod(&mut m, "shop", "reviews-v1", "10.1.0.1", &[("app", "reviews"), ("version", "v1")]);
        add_pod(&mut m, "shop", "reviews-v2", "10.1.0.3", &[("app", "reviews"), ("version", "v2")]);

        let config = config(&m, "shop");
        let host = "reviews.shop.svc.cluster.local";
        let svc = service(&config, host);
        assert_eq!(svc.aliases, ["reviews", "reviews.shop", "reviews.shop.svc"]);
        assert_eq!(svc.addresses, ["10.96.0.20"]);
        let protocols: Vec<_> = svc.ports.iter().map(|p| (p.port, p.protocol())).collect();
        assert_eq!(protocols, [(5432, pb::Protocol::Tcp), (9080, pb::Protocol::Http)]);
        let v1 = [("app", "reviews"), ("version", "v1")];
        let v2 = [("app", "reviews"), ("version", "v2")];
        assert_eq!(
            endpoints(&config, &format!("{host}:9080")),
            [endpoint("10.1.0.1", 8080, 0, &v1), endpoint("10.1.0.3", 8080, 0, &v2)],
            "ready endpoints only, on the slice's port of the same name"
        );
        assert_eq!(
            endpoints(&config, &format!("{host}:5432")),
            [
                endpoint("10.1.0.1", 5432, 0, &v1),
                endpoint("10.1.0.3", 5432, 0, &v2),
                endpoint("10.1.0.4", 5432, 0, &[])
            ],
            "a numeric targetPort covers slices without the port"
        );
        assert_eq!(
            endpoints(&config, "ratings.shop.svc.cluster.local:9080"),
            [endpoint("10.1.1.1", 7070, 0, &[])]
        );

        let from_elsewhere = super::super::test_support::config(&m, "web");
        assert_eq!(service(&from_elsewhere, host).aliases, ["reviews.shop", "reviews.shop.svc"]);
    }

    #[test]
    fn auto_mtls_marks_sidecar_pods_unless_their_peer_authentication_disables_it() {
        let mut m = model(
            r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: legacy, namespace: shop }
spec:
  selector: { matchLabels: { version: v2 } }
  mtls: { mode: STRICT }
  portLevelMtls: { "8080": { mode: DISABLE } }
"#,
        );
        add_kube_service(
            &mut m,
            "shop",
            "reviews",
            "10.96.0.20",
            &[("http", 9080, None), ("tcp-db", 5432, Some(5432))],
        );
        add_slice(
            &mut m,
            "shop",
            "reviews",
            "reviews-a",
            &[("http", 8080)],
            &[
                ("10.1.0.1", true, Some("reviews-v1")),
                ("10.1.0.2", true, Some("reviews-v2")),
                ("10.1.0.3", true, Some("bare")),
            ],
        );
        let sidecar = ("security.istio.io/tlsMode", "istio");
        add_pod(&mut m, "shop", "reviews-v1", "10.1.0.1", &[("version", "v1"), sidecar]);
        add_pod(&mut m, "shop", "reviews-v2", "10.1.0.2", &[("version", "v2"), sidecar]);
        add_pod(&mut m, "shop", "bare", "10.1.0.3", &[("version", "v2")]);
        let config = config(&m, "shop");
        let host = "reviews.shop.svc.cluster.local";
        let mesh_tls = |port: u16| -> Vec<(String, bool)> {
            endpoints(&config, &format!("{host}:{port}"))
                .iter()
                .map(|e| (e.address.clone(), e.mesh_tls))
                .collect()
        };
        let want = |v2: bool| {
            vec![("10.1.0.1".to_owned(), true), ("10.1.0.2".to_owned(), v2), ("10.1.0.3".to_owned(), false)]
        };
        assert_eq!(mesh_tls(9080), want(false), "v2's port 8080 takes plaintext only");
        assert_eq!(mesh_tls(5432), want(true), "its other ports stay STRICT");
    }

    #[test]
    fn kubernetes_ports_declare_their_protocol_like_istio() {
        for (name, app_protocol, want) in [
            ("http", None, pb::Protocol::Http),
            ("http-web", None, pb::Protocol::Http),
            ("http2-api", None, pb::Protocol::Http2),
            ("grpc-api", None, pb::Protocol::Grpc),
            ("grpc-web", None, pb::Protocol::Grpc),
            ("tcp-db", None, pb::Protocol::Tcp),
            ("tls-x", None, pb::Protocol::Tls),
            ("https-x", None, pb::Protocol::Tls),
            ("mysql", None, pb::Protocol::Tcp),
            ("HTTP", None, pb::Protocol::Http),
            ("web", None, pb::Protocol::Auto),
            ("httpx", None, pb::Protocol::Auto),
            ("", None, pb::Protocol::Auto),
            ("web", Some("grpc"), pb::Protocol::Grpc),
            ("http", Some("kubernetes.io/h2c"), pb::Protocol::Http2),
            ("web", Some("kubernetes.io/wss"), pb::Protocol::Tls),
            ("tcp-x", Some("something"), pb::Protocol::Tcp),
        ] {
            let port = KubeServicePort {
                name: name.into(),
                port: 80,
                app_protocol: app_protocol.map(Into::into),
                target_port: None,
            };
            assert_eq!(kube_protocol(&port).0, want, "{name} {app_protocol:?}");
        }
    }
}
