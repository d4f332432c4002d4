//! What the checks look at: the Istio resources, Services, workloads and namespaces of the
//! input (files or a cluster), each with the namespace it lands in and where it was read, and
//! the lookups several checks share (which service a host is, which workloads a selector picks).

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use serde_json::Value;
use trellis_api::networking::{
    DestinationRuleSpec, GatewaySpec, ServiceEntrySpec, SidecarSpec, VirtualServiceSpec,
};
use trellis_api::resource::Resource;
use trellis_api::security::{AuthorizationPolicySpec, PeerAuthenticationSpec};

use super::hosts;

pub type Labels = BTreeMap<String, String>;

/// Where a resource was read.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Origin {
    pub file: String,
    /// 1-based document of the file.
    pub doc: usize,
    /// Position inside a `kind: List` document.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<usize>,
}

/// A resource as a finding names it: `VirtualService shop/reviews`, and where it is written
/// (nothing for an object read from the cluster).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Subject {
    pub kind: String,
    /// As written; a resource without one lands in `default` (see [`Obj::namespace`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.kind.is_empty() { "document" } else { &self.kind };
        let name = if self.name.is_empty() { "<unnamed>" } else { &self.name };
        match &self.namespace {
            Some(ns) => write!(f, "{kind} {ns}/{name}")?,
            None => write!(f, "{kind} {name}")?,
        }
        if let Some(origin) = &self.origin {
            write!(f, " {} doc {}", origin.file, origin.doc)?;
            if let Some(item) = origin.item {
                write!(f, " item {item}")?;
            }
        }
        Ok(())
    }
}

/// One resource of the input.
#[derive(Clone, Debug)]
pub struct Obj<T> {
    pub subject: Subject,
    /// The namespace it applies in: its own, else `default` as `kubectl apply` would put it.
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub annotations: Labels,
    pub spec: T,
}

impl Obj<()> {
    /// The same resource, holding `spec`.
    fn with_spec<T>(&self, spec: T) -> Obj<T> {
        Obj {
            subject: self.subject.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            labels: self.labels.clone(),
            annotations: self.annotations.clone(),
            spec,
        }
    }
}

/// The namespace a resource without one lands in.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A Kubernetes Service, as far as the checks need it.
#[derive(Clone, Debug, Default)]
pub struct ServiceSpec {
    /// `None` for a Service without selector (its endpoints are managed by hand).
    pub selector: Option<Labels>,
    pub ports: Vec<ServicePort>,
    /// The `networking.istio.io/exportTo` annotation, split.
    pub export_to: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServicePort {
    pub port: u32,
    pub name: String,
    pub protocol: String,
    pub app_protocol: String,
    /// A number, a container port's name, or empty for the same number as `port`.
    pub target_port: String,
}

/// What kind of thing runs (or will run) a workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadKind {
    Pod,
    /// A Deployment, StatefulSet, DaemonSet, ReplicaSet, Job or CronJob: its pod template.
    Template,
    WorkloadEntry,
}

#[derive(Clone, Debug)]
pub struct Workload {
    pub kind: WorkloadKind,
    pub containers: Vec<String>,
    pub init_containers: Vec<String>,
    /// `(number, name)` of the container ports (of a WorkloadEntry: its `ports`).
    pub ports: Vec<(u32, String)>,
    pub host_network: bool,
}

/// Everything read, by kind.
#[derive(Default)]
pub struct Mesh {
    pub virtual_services: Vec<Obj<VirtualServiceSpec>>,
    pub destination_rules: Vec<Obj<DestinationRuleSpec>>,
    pub service_entries: Vec<Obj<ServiceEntrySpec>>,
    pub sidecars: Vec<Obj<SidecarSpec>>,
    pub gateways: Vec<Obj<GatewaySpec>>,
    pub peer_authentications: Vec<Obj<PeerAuthenticationSpec>>,
    pub authorization_policies: Vec<Obj<AuthorizationPolicySpec>>,
    pub services: Vec<Obj<ServiceSpec>>,
    /// Pods, pod templates and WorkloadEntries (with their labels as the object's labels).
    pub workloads: Vec<Obj<Workload>>,
    pub namespaces: Vec<Obj<()>>,
    /// Istio's root namespace: policies there apply to the whole mesh.
    pub root_namespace: String,
    /// Read from a cluster: what is not here does not exist.
    pub live: bool,
    /// How many resources of any kind were read.
    pub resources: usize,
    /// Lookups, built by [`Mesh::index`] once everything is read, so that a large input is not
    /// searched through for every destination or selector.
    index: Index,
}

/// Positions in the lists of [`Mesh`], by key.
#[derive(Default)]
struct Index {
    services_by_host: BTreeMap<String, Vec<usize>>,
    services_by_namespace: BTreeMap<String, Vec<usize>>,
    workloads_by_namespace: BTreeMap<String, Vec<usize>>,
    /// DestinationRules by their host's full name, but those with a wildcard host.
    rules_by_host: BTreeMap<String, Vec<usize>>,
    wildcard_rules: Vec<usize>,
}

/// The objects of `list` at the positions `key` has in `index`.
fn indexed<'a, T>(
    list: &'a [Obj<T>],
    index: &BTreeMap<String, Vec<usize>>,
    key: &str,
) -> impl Iterator<Item = &'a Obj<T>> {
    index.get(key).into_iter().flatten().filter_map(|i| list.get(*i))
}

/// A host's entry in the service registry.
#[derive(Clone, Copy)]
pub enum ServiceRef<'a> {
    Kube(&'a Obj<ServiceSpec>),
    Entry(&'a Obj<ServiceEntrySpec>),
}

impl ServiceRef<'_> {
    pub fn subject(&self) -> &Subject {
        match self {
            ServiceRef::Kube(s) => &s.subject,
            ServiceRef::Entry(s) => &s.subject,
        }
    }

    pub fn namespace(&self) -> &str {
        match self {
            ServiceRef::Kube(s) => &s.namespace,
            ServiceRef::Entry(s) => &s.namespace,
        }
    }

    /// The port numbers it serves.
    pub fn port_numbers(&self) -> Vec<u32> {
        match self {
            ServiceRef::Kube(s) => s.spec.ports.iter().map(|p| p.port).collect(),
            ServiceRef::Entry(s) => s.spec.ports.iter().map(|p| p.number).collect(),
        }
    }
}

/// Whether every label of `selector` is on `labels` (an empty selector selects everything).
pub fn selects(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// `k=v,k2=v2`, for messages.
pub fn show_labels(labels: &Labels) -> String {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

impl Mesh {
    pub fn new(root_namespace: &str) -> Mesh {
        Mesh { root_namespace: root_namespace.to_owned(), ..Mesh::default() }
    }

    /// Whether the input says which services exist (else a host cannot be called missing).
    pub fn knows_services(&self) -> bool {
        self.live || !self.services.is_empty() || !self.service_entries.is_empty()
    }

    /// Whether the input says which workloads exist (else a selector cannot be called empty).
    pub fn knows_workloads(&self) -> bool {
        self.live || !self.workloads.is_empty()
    }

    /// Adds a resource of a kind Trellis reads.
    pub fn add_resource(&mut self, resource: Resource, origin: Option<Origin>) {
        self.resources += 1;
        let meta = resource.metadata().clone();
        let written_ns = meta.namespace.clone().filter(|ns| !ns.is_empty());
        let name = meta.name.clone().unwrap_or_default();
        let envelope = Obj {
            subject: Subject {
                kind: resource.kind().name().to_owned(),
                namespace: written_ns.clone(),
                name: name.clone(),
                origin,
            },
            namespace: written_ns.unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
            name: name.clone(),
            labels: meta.labels.unwrap_or_default(),
            annotations: meta.annotations.unwrap_or_default(),
            spec: (),
        };
        match resource {
            Resource::VirtualService(r) => self.virtual_services.push(envelope.with_spec(r.spec)),
            Resource::DestinationRule(r) => self.destination_rules.push(envelope.with_spec(r.spec)),
            Resource::ServiceEntry(r) => self.service_entries.push(envelope.with_spec(r.spec)),
            Resource::Sidecar(r) => self.sidecars.push(envelope.with_spec(r.spec)),
            Resource::Gateway(r) => self.gateways.push(envelope.with_spec(r.spec)),
            Resource::PeerAuthentication(r) => self.peer_authentications.push(envelope.with_spec(r.spec)),
            Resource::AuthorizationPolicy(r) => self.authorization_policies.push(envelope.with_spec(r.spec)),
            Resource::WorkloadEntry(r) => {
                let spec = r.spec;
                let mut obj = envelope.with_spec(Workload {
                    kind: WorkloadKind::WorkloadEntry,
                    containers: Vec::new(),
                    init_containers: Vec::new(),
                    ports: spec.ports.iter().map(|(name, port)| (*port, name.clone())).collect(),
                    host_network: false,
                });
                // A WorkloadEntry's own labels are what selectors see.
                obj.labels = spec.labels;
                self.workloads.push(obj);
            }
            Resource::Namespace(_) => {
                let mut obj = envelope.with_spec(());
                // A Namespace is cluster-scoped: it is its own namespace.
                obj.namespace = name.clone();
                self.namespaces.push(obj);
            }
            Resource::RequestAuthentication(_) | Resource::EnvoyFilter(_) | Resource::Telemetry(_) => {}
        }
    }

    /// Adds a Kubernetes object Trellis does not otherwise read, if the checks use its kind
    /// (Service, Pod, the pod controllers); read loosely, so that nothing in it can fail.
    pub fn add_kube_object(&mut self, value: &Value, origin: Option<Origin>) {
        let kind = value["kind"].as_str().unwrap_or_default();
        let api_version = value["apiVersion"].as_str().unwrap_or_default();
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        let template = match (group, kind) {
            ("", "Service") => {
                let obj = self.kube_meta(value, origin, service_spec(value));
                self.services.push(obj);
                return;
            }
            ("", "Pod") => value,
            ("apps", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet") | ("batch", "Job") => {
                &value["spec"]["template"]
            }
            ("batch", "CronJob") => &value["spec"]["jobTemplate"]["spec"]["template"],
            _ => return,
        };
        let pod_spec = &template["spec"];
        let names = |list: &Value| -> Vec<String> {
            list.as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["name"].as_str().map(str::to_owned))
                .collect()
        };
        let ports = pod_spec["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["ports"].as_array().into_iter().flatten())
            .filter_map(|p| {
                let number = p["containerPort"].as_u64().and_then(|n| u32::try_from(n).ok())?;
                Some((number, p["name"].as_str().unwrap_or_default().to_owned()))
            })
            .collect();
        let workload = Workload {
            kind: if kind == "Pod" { WorkloadKind::Pod } else { WorkloadKind::Template },
            containers: names(&pod_spec["containers"]),
            init_containers: names(&pod_spec["initContainers"]),
            ports,
            host_network: pod_spec["hostNetwork"].as_bool().unwrap_or(false),
        };
        let mut obj = self.kube_meta(value, origin, workload);
        if kind != "Pod" {
            // Selectors see the pods' labels, which are the template's.
            obj.labels = string_map(&template["metadata"]["labels"]);
            obj.annotations = string_map(&template["metadata"]["annotations"]);
        }
        self.workloads.push(obj);
    }

    fn kube_meta<T>(&mut self, value: &Value, origin: Option<Origin>, spec: T) -> Obj<T> {
        self.resources += 1;
        let meta = &value["metadata"];
        let written_ns = meta["namespace"].as_str().filter(|ns| !ns.is_empty()).map(str::to_owned);
        let name = meta["name"].as_str().unwrap_or_default().to_owned();
        Obj {
            subject: Subject {
                kind: value["kind"].as_str().unwrap_or_default().to_owned(),
                namespace: written_ns.clone(),
                name: name.clone(),
                origin,
            },
            namespace: written_ns.unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
            name,
            labels: string_map(&meta["labels"]),
            annotations: string_map(&meta["annotations"]),
            spec,
        }
    }

    /// Builds the lookups; call once everything is read.
    pub fn index(&mut self) {
        let mut index = Index::default();
        for (i, service) in self.services.iter().enumerate() {
            index.services_by_host.entry(hosts::fqdn(&service.name, &service.namespace)).or_default().push(i);
            index.services_by_namespace.entry(service.namespace.clone()).or_default().push(i);
        }
        for (i, workload) in self.workloads.iter().enumerate() {
            index.workloads_by_namespace.entry(workload.namespace.clone()).or_default().push(i);
        }
        for (i, rule) in self.destination_rules.iter().enumerate() {
            let host = hosts::fqdn(&rule.spec.host, &rule.namespace);
            if host.starts_with('*') {
                index.wildcard_rules.push(i);
            } else {
                index.rules_by_host.entry(host).or_default().push(i);
            }
        }
        self.index = index;
    }

    /// The DestinationRules for `host` (a full name) seen from `namespace`.
    pub fn destination_rules_for<'a>(
        &'a self,
        host: &str,
        namespace: &str,
    ) -> Vec<&'a Obj<DestinationRuleSpec>> {
        let wildcard = self
            .index
            .wildcard_rules
            .iter()
            .filter_map(|i| self.destination_rules.get(*i))
            .filter(|dr| hosts::covers(&hosts::fqdn(&dr.spec.host, &dr.namespace), host));
        indexed(&self.destination_rules, &self.index.rules_by_host, host)
            .chain(wildcard)
            .filter(|dr| hosts::visible(&dr.spec.export_to, &dr.namespace, namespace))
            .collect()
    }

    fn workloads_in<'a>(&'a self, namespace: &str) -> impl Iterator<Item = &'a Obj<Workload>> {
        indexed(&self.workloads, &self.index.workloads_by_namespace, namespace)
    }

    /// The service or ServiceEntry that `host` (a full name) is, as seen from `namespace`.
    pub fn service(&self, host: &str, namespace: &str) -> Option<ServiceRef<'_>> {
        let kube = indexed(&self.services, &self.index.services_by_host, host)
            .find(|s| hosts::visible(&s.spec.export_to, &s.namespace, namespace));
        if let Some(service) = kube {
            return Some(ServiceRef::Kube(service));
        }
        self.service_entries
            .iter()
            .filter(|se| hosts::visible(&se.spec.export_to, &se.namespace, namespace))
            .find(|se| se.spec.hosts.iter().any(|h| hosts::covers(&hosts::fqdn(h, &se.namespace), host)))
            .map(ServiceRef::Entry)
    }

    /// The label sets of the endpoints behind a service: the pods (or templates) its selector
    /// picks in its namespace; for a ServiceEntry also its inline endpoints and WorkloadEntries.
    pub fn endpoint_labels<'a>(&'a self, service: ServiceRef<'a>) -> Vec<&'a Labels> {
        match service {
            ServiceRef::Kube(s) => match &s.spec.selector {
                Some(selector) if !selector.is_empty() => self
                    .workloads_in(&s.namespace)
                    .filter(|w| w.spec.kind != WorkloadKind::WorkloadEntry)
                    .filter(|w| selects(selector, &w.labels))
                    .map(|w| &w.labels)
                    .collect(),
                _ => Vec::new(),
            },
            ServiceRef::Entry(se) => {
                let mut labels: Vec<&Labels> = se.spec.endpoints.iter().map(|e| &e.labels).collect();
                if let Some(selector) = &se.spec.workload_selector {
                    labels.extend(
                        self.workloads_in(&se.namespace)
                            .filter(|w| selects(&selector.labels, &w.labels))
                            .map(|w| &w.labels),
                    );
                }
                labels
            }
        }
    }

    /// The workloads a policy's selector picks: in its namespace, or everywhere from the root
    /// namespace.
    pub fn selected_workloads<'a>(&'a self, namespace: &str, selector: &Labels) -> Vec<&'a Obj<Workload>> {
        if namespace == self.root_namespace {
            return self.workloads.iter().filter(|w| selects(selector, &w.labels)).collect();
        }
        self.workloads_in(namespace).filter(|w| selects(selector, &w.labels)).collect()
    }

    /// The Services whose selector picks a workload with these labels, in its namespace.
    pub fn services_of<'a>(&'a self, namespace: &str, labels: &Labels) -> Vec<&'a Obj<ServiceSpec>> {
        indexed(&self.services, &self.index.services_by_namespace, namespace)
            .filter(|s| s.spec.selector.as_ref().is_some_and(|sel| !sel.is_empty() && selects(sel, labels)))
            .collect()
    }
}

fn service_spec(value: &Value) -> ServiceSpec {
    let spec = &value["spec"];
    let selector = spec["selector"].as_object().map(|_| string_map(&spec["selector"]));
    let ports = spec["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let port = p["port"].as_u64().and_then(|n| u32::try_from(n).ok())?;
            let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            let target_port = match &p["targetPort"] {
                Value::Number(n) => n.to_string(),
                other => text(other),
            };
            Some(ServicePort {
                port,
                name: text(&p["name"]),
                protocol: text(&p["protocol"]),
                app_protocol: text(&p["appProtocol"]),
                target_port,
            })
        })
        .collect();
    let export_to = value["metadata"]["annotations"]["networking.istio.io/exportTo"]
        .as_str()
        .map(|list| list.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect())
        .unwrap_or_default();
    ServiceSpec { selector, ports, export_to }
}

/// A map of strings (labels, annotations); other values are passed over.
fn string_map(value: &Value) -> Labels {
    value
        .as_object()
        .map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned()))).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kube_objects_are_read_loosely() {
        let mut mesh = Mesh::new("istio-system");
        mesh.add_kube_object(
            &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db", "namespace": "shop"},
                "spec": {"selector": {"app": "db"}, "ports": [{"port": 5432, "name": "tcp-pg", "targetPort": "pg"},
                    {"port": "bad"}]}}),
            None,
        );
        mesh.add_kube_object(
            &json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "db", "namespace": "shop"},
                "spec": {"template": {"metadata": {"labels": {"app": "db", "version": 7}},
                    "spec": {"containers": [{"name": "pg", "ports": [{"containerPort": 5432, "name": "pg"}]}]}}}}),
            None,
        );
        mesh.add_kube_object(
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}),
            None,
        );
        mesh.add_kube_object(&json!("not an object"), None);
        mesh.index();
        assert_eq!(mesh.services.len(), 1);
        assert_eq!(mesh.services[0].spec.ports.len(), 1, "the port without a number is passed over");
        assert_eq!(mesh.services[0].spec.ports[0].target_port, "pg");
        assert_eq!(mesh.workloads.len(), 1);
        let db = &mesh.workloads[0];
        assert_eq!(db.spec.kind, WorkloadKind::Template);
        assert_eq!(show_labels(&db.labels), "app=db", "a label that is not a string is passed over");
        assert_eq!(db.spec.ports, vec![(5432, "pg".to_owned())]);
        let service = mesh.service("db.shop.svc.cluster.local", "other").map(|s| s.subject().to_string());
        assert_eq!(service.as_deref(), Some("Service shop/db"));
        assert_eq!(mesh.endpoint_labels(ServiceRef::Kube(&mesh.services[0])).len(), 1);
    }
}
