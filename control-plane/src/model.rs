//! The one in-memory model every config source feeds and translation reads. Translation never
//! knows which source an object came from: the file source fills `resources` (and discovers
//! services through ServiceEntry/WorkloadEntry), the Kubernetes source fills `resources` too and
//! adds what runs (services, endpoint slices, pods, nodes, namespaces) in the neutral shapes
//! below.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::watch;
use trellis_api::gateway_api;
use trellis_api::mesh::MeshConfig;
use trellis_api::resource::{Kind, Resource};

/// Names an object of any kind: `(kind, namespace, name)`. Cluster-scoped objects have an
/// empty namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(kind: Kind, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self { kind, namespace: namespace.into(), name: name.into() }
    }
}

/// A Kubernetes Service, reduced to what translation needs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KubeService {
    pub namespace: String,
    pub name: String,
    /// Cluster IPs; empty for headless services.
    pub addresses: Vec<IpAddr>,
    pub ports: Vec<KubeServicePort>,
    pub labels: BTreeMap<String, String>,
    /// The `networking.istio.io/exportTo` annotation, split on commas; empty means the mesh
    /// default.
    pub export_to: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KubeServicePort {
    pub name: String,
    pub port: u16,
    /// `appProtocol`, when set.
    pub app_protocol: Option<String>,
    /// The port number on the pod, when the target port is a number; `None` when it names a
    /// container port (resolved from the endpoint slice's ports).
    pub target_port: Option<u16>,
}

/// One EndpointSlice, reduced: which service it belongs to and its ready endpoints.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KubeEndpointSlice {
    pub namespace: String,
    pub name: String,
    /// The `kubernetes.io/service-name` label.
    pub service: String,
    /// Port name → port number on the endpoints.
    pub ports: BTreeMap<String, u16>,
    pub endpoints: Vec<KubeEndpoint>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct KubeEndpoint {
    pub addresses: Vec<IpAddr>,
    pub ready: bool,
    /// The pod behind the endpoint (`targetRef` of kind Pod), whose labels select subsets.
    pub pod: Option<String>,
    /// The node it runs on (`nodeName`), whose topology labels give its locality when the pod
    /// is not known.
    pub node_name: Option<String>,
}

/// A pod's labels and addresses, for subsets and for the proxy's own identity.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KubePod {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub ips: Vec<IpAddr>,
    pub service_account: String,
    /// The node it is scheduled on (empty until it is), whose topology labels give its
    /// locality.
    pub node_name: String,
    /// Its workload's name as Istio's telemetry says it (the Deployment behind the pod), from
    /// its controller (`trellis_api::workload::workload_name`).
    pub workload_name: String,
}

/// A Kubernetes Secret a Gateway may name (`credentialName`), reduced to the TLS keys Istio
/// reads (`tls.crt`, `tls.key`, `ca.crt`, and the generic `cert`, `key`, `cacert`), as text.
/// Only gateway proxies of the Secret's own namespace are ever sent its contents.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct KubeSecret {
    pub namespace: String,
    pub name: String,
    pub data: BTreeMap<String, String>,
}

impl std::fmt::Debug for KubeSecret {
    // Never the key material, wherever a model is logged.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSecret")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Everything translation reads.
#[derive(Clone, Debug, Default)]
pub struct Model {
    pub mesh: Arc<MeshConfig>,
    /// Istio resources and Namespaces, keyed by kind, namespace and name.
    pub resources: BTreeMap<ObjectKey, Arc<Resource>>,
    /// Kubernetes services by (namespace, name).
    pub services: BTreeMap<(String, String), Arc<KubeService>>,
    /// Endpoint slices by (namespace, slice name).
    pub endpoint_slices: BTreeMap<(String, String), Arc<KubeEndpointSlice>>,
    /// Pods by (namespace, name).
    pub pods: BTreeMap<(String, String), Arc<KubePod>>,
    /// The locality of each node, by name, from its topology labels (`topology.kubernetes.io/
    /// region` and `zone`, `topology.istio.io/subzone`).
    pub nodes: BTreeMap<String, Arc<trellis_api::locality::Locality>>,
    /// The JSON Web Key Sets trellisd fetched, by `jwksUri` (compact JSON, the last good copy).
    pub jwks: BTreeMap<String, Arc<str>>,
    /// TLS Secrets by (namespace, name), for Gateway servers' `credentialName`.
    pub secrets: BTreeMap<(String, String), Arc<KubeSecret>>,
    /// Kubernetes Gateway API objects by (namespace, name); GatewayClasses, cluster-scoped,
    /// have an empty namespace. Translated by [`crate::translate::gateway_api`].
    pub gateway_classes: BTreeMap<(String, String), Arc<gateway_api::GatewayClass>>,
    pub k8s_gateways: BTreeMap<(String, String), Arc<gateway_api::Gateway>>,
    pub http_routes: BTreeMap<(String, String), Arc<gateway_api::HttpRoute>>,
    pub grpc_routes: BTreeMap<(String, String), Arc<gateway_api::GrpcRoute>>,
    pub reference_grants: BTreeMap<(String, String), Arc<gateway_api::ReferenceGrant>>,
}

impl Model {
    /// The resources of one kind, in key order.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = (&ObjectKey, &Arc<Resource>)> {
        let start = ObjectKey::new(kind, "", "");
        self.resources.range(start..).take_while(move |(k, _)| k.kind == kind)
    }
}

/// Shared, versioned access to the model. Sources change it through [`ModelHandle::update`];
/// the push pipeline watches the generation number and takes snapshots.
#[derive(Clone)]
pub struct ModelHandle {
    inner: Arc<std::sync::Mutex<Arc<Model>>>,
    generation: watch::Sender<u64>,
}

impl Default for ModelHandle {
    fn default() -> Self {
        Self::new(Model::default())
    }
}

impl ModelHandle {
    pub fn new(model: Model) -> Self {
        Self { inner: Arc::new(std::sync::Mutex::new(Arc::new(model))), generation: watch::Sender::new(0) }
    }

    /// Applies `change` to a copy of the model and publishes it when `change` says something
    /// changed. Copies are cheap: the maps hold `Arc`s.
    pub fn update(&self, change: impl FnOnce(&mut Model) -> bool) {
        let mut guard = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut next = Model::clone(&guard);
        if change(&mut next) {
            *guard = Arc::new(next);
            drop(guard);
            self.generation.send_modify(|g| *g += 1);
        }
    }

    /// The current model.
    pub fn snapshot(&self) -> Arc<Model> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Changes whenever the model does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }
}
