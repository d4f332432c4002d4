//! Helpers for the translation tests: models from Istio YAML, Kubernetes objects, and lookups
//! in the output.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use trellis_api::check::{UnknownFields, check_text};
use trellis_api::mesh::MeshConfig;
use trellis_xds::config as pb;

use super::{ProxyIdentity, check_consistent, scope_of, translate};
use crate::model::{
    KubeEndpoint, KubeEndpointSlice, KubePod, KubeService, KubeServicePort, Model, ObjectKey,
};

/// A model holding the resources of `yaml`, which must validate.
pub fn model(yaml: &str) -> Model {
    let checked = check_text(yaml, UnknownFields::Reject);
    assert_eq!(checked.errors(), 0, "{:#?}", checked.problems);
    let mut model = Model::default();
    for doc in checked.accepted {
        let meta = doc.resource.metadata();
        let key = ObjectKey::new(
            doc.resource.kind(),
            meta.namespace.clone().unwrap_or_else(|| "default".into()),
            meta.name.clone().unwrap_or_default(),
        );
        model.resources.insert(key, Arc::new(doc.resource));
    }
    model
}

/// A model holding the resources of `yaml` as they decode, without validation: what a
/// translation must survive.
pub fn unchecked_model(yaml: &str) -> Model {
    let mut model = Model::default();
    for loaded in trellis_api::load::load_str(yaml) {
        let resource = loaded.outcome.expect("the test document decodes").resource;
        let meta = resource.metadata();
        let key = ObjectKey::new(
            resource.kind(),
            meta.namespace.clone().unwrap_or_else(|| "default".into()),
            meta.name.clone().unwrap_or_default(),
        );
        model.resources.insert(key, Arc::new(resource));
    }
    model
}

pub fn with_mesh(mut model: Model, yaml: &str) -> Model {
    let (mesh, unknown) = MeshConfig::from_yaml(yaml).expect("mesh config parses");
    assert!(unknown.is_empty(), "{unknown:?}");
    model.mesh = Arc::new(mesh);
    model
}

/// The configuration of a proxy in `namespace` with `labels`, checked to be whole.
pub fn config_for(model: &Model, namespace: &str, labels: &[(&str, &str)]) -> pb::ProxyConfig {
    let proxy =
        ProxyIdentity { namespace: namespace.into(), labels: labels_of(labels), ..Default::default() };
    let config = translate(model, &scope_of(model, &proxy));
    if let Err(e) = check_consistent(&config) {
        panic!("inconsistent output: {e}\n{config:#?}");
    }
    config
}

pub fn config(model: &Model, namespace: &str) -> pb::ProxyConfig {
    config_for(model, namespace, &[])
}

pub fn labels_of(labels: &[(&str, &str)]) -> BTreeMap<String, String> {
    labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test addresses are IPs")
}

/// A Kubernetes service; ports as `(name, port, numeric target port)`.
pub fn add_kube_service(
    model: &mut Model,
    ns: &str,
    name: &str,
    vip: &str,
    ports: &[(&str, u16, Option<u16>)],
) {
    let service = KubeService {
        namespace: ns.into(),
        name: name.into(),
        addresses: vec![ip(vip)],
        ports: ports
            .iter()
            .map(|(n, p, t)| KubeServicePort {
                name: (*n).into(),
                port: *p,
                app_protocol: None,
                target_port: *t,
            })
            .collect(),
        ..Default::default()
    };
    model.services.insert((ns.into(), name.into()), Arc::new(service));
}

/// An endpoint slice of `service`; endpoints as `(address, ready, pod)`.
pub fn add_slice(
    model: &mut Model,
    ns: &str,
    service: &str,
    slice: &str,
    ports: &[(&str, u16)],
    endpoints: &[(&str, bool, Option<&str>)],
) {
    let slice = KubeEndpointSlice {
        namespace: ns.into(),
        name: slice.into(),
        service: service.into(),
        ports: ports.iter().map(|(n, p)| ((*n).into(), *p)).collect(),
        endpoints: endpoints
            .iter()
            .map(|(a, ready, pod)| KubeEndpoint {
                addresses: vec![ip(a)],
                ready: *ready,
                pod: pod.map(Into::into),
                node_name: None,
            })
            .collect(),
    };
    model.endpoint_slices.insert((ns.into(), slice.name.clone()), Arc::new(slice));
}

pub fn add_pod(model: &mut Model, ns: &str, name: &str, address: &str, labels: &[(&str, &str)]) {
    let pod = KubePod {
        namespace: ns.into(),
        name: name.into(),
        labels: labels_of(labels),
        ips: vec![ip(address)],
        service_account: "default".into(),
        node_name: String::new(),
        workload_name: name.into(),
    };
    model.pods.insert((ns.into(), name.into()), Arc::new(pod));
}

pub fn service<'a>(config: &'a pb::ProxyConfig, name: &str) -> &'a pb::Service {
    config.services.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no service {name}"))
}

pub fn service_names(config: &pb::ProxyConfig) -> Vec<&str> {
    config.services.iter().map(|s| s.name.as_str()).collect()
}

pub fn routes<'a>(config: &'a pb::ProxyConfig, virtual_host: &str) -> &'a [pb::Route] {
    let vh = config.virtual_hosts.iter().find(|v| v.name == virtual_host);
    &vh.unwrap_or_else(|| panic!("no virtual host {virtual_host}")).routes
}

pub fn cluster<'a>(config: &'a pb::ProxyConfig, name: &str) -> &'a pb::Cluster {
    config.clusters.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no cluster {name}"))
}

pub fn cluster_names(config: &pb::ProxyConfig) -> Vec<&str> {
    config.clusters.iter().map(|c| c.name.as_str()).collect()
}

pub fn endpoints<'a>(config: &'a pb::ProxyConfig, name: &str) -> &'a [pb::Endpoint] {
    let set = config.endpoints.iter().find(|e| e.service == name);
    &set.unwrap_or_else(|| panic!("no endpoints {name}")).endpoints
}

/// A route's forward targets as `(cluster, weight)`.
pub fn forwards(route: &pb::Route) -> Vec<(&str, u32)> {
    match &route.action {
        Some(pb::route::Action::Forward(f)) => {
            f.clusters.iter().map(|c| (c.cluster.as_str(), c.weight)).collect()
        }
        other => panic!("route {:?} does not forward: {other:?}", route.name),
    }
}

/// `yaml` plus bookinfo's Kubernetes services in `shop`, all on `http` 9080: productpage,
/// details, ratings, and reviews with one pod per version (`version: v1|v2|v3`).
pub fn bookinfo(yaml: &str) -> Model {
    let mut m = model(yaml);
    for (i, name) in ["productpage", "details", "ratings", "reviews"].into_iter().enumerate() {
        add_kube_service(&mut m, "shop", name, &format!("10.96.0.{}", 10 + i), &[("http", 9080, None)]);
    }
    for (i, name) in ["productpage", "details", "ratings"].into_iter().enumerate() {
        let address = format!("10.1.{i}.1");
        add_slice(&mut m, "shop", name, name, &[("http", 9080)], &[(&address, true, Some(name))]);
        add_pod(&mut m, "shop", name, &address, &[("app", name)]);
    }
    let mut reviews = Vec::new();
    for v in 1..=3 {
        let (pod, address) = (format!("reviews-v{v}"), format!("10.1.3.{v}"));
        add_pod(&mut m, "shop", &pod, &address, &[("app", "reviews"), ("version", &format!("v{v}"))]);
        reviews.push((address, pod));
    }
    let endpoints: Vec<_> = reviews.iter().map(|(a, p)| (a.as_str(), true, Some(p.as_str()))).collect();
    add_slice(&mut m, "shop", "reviews", "reviews", &[("http", 9080)], &endpoints);
    m
}

pub const REVIEWS: &str = "reviews.shop.svc.cluster.local";
pub const REVIEWS_VH: &str = "reviews.shop.svc.cluster.local:9080";

/// Subsets v1, v2, v3 of reviews.
pub const REVIEWS_SUBSETS: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: reviews, namespace: shop }
spec:
  host: reviews
  subsets:
    - { name: v1, labels: { version: v1 } }
    - { name: v2, labels: { version: v2 } }
    - { name: v3, labels: { version: v3 } }
"#;
