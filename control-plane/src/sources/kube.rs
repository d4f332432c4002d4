//! The Kubernetes config source (`trellisd --kubernetes`): watches Services, EndpointSlices,
//! Pods, Nodes (their metadata: the topology labels that give endpoints and proxies their
//! locality), Namespaces and the Istio resources, and keeps the model in step with them.
//!
//! One kube-rs watcher per kind, each mirroring its kind into one map of the model
//! ([`mirror`]): Services, EndpointSlices and Pods reduced to the model's neutral shapes
//! ([`convert`]), Namespaces and Istio resources as `Resource`s, the Istio ones decoded and
//! validated one by one ([`istio`]) so that an invalid resource is rejected alone and its last
//! good version stays in force. Watch failures (API server down, watch expired) are retried with
//! kube-rs's default backoff; nothing here panics on what the cluster sends.

mod convert;
mod gateway_api;
mod istio;
mod mirror;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource as _};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinSet;
use trellis_api::resource::{Kind, Resource};
use trellis_api::validate::{Finding, Severity};

use crate::model::{KubeEndpointSlice, KubePod, KubeSecret, KubeService, Model, ModelHandle, ObjectKey};
use mirror::{Admission, Mirror, Target};

/// The Istio kinds watched, at `v1`: every kind the API model knows but Namespace. Gateway
/// too: the chart installs its CRD and the file source reads it, and translation must not
/// depend on where config came from.
pub fn istio_kinds() -> impl Iterator<Item = Kind> {
    Kind::ALL.into_iter().filter(|k| *k != Kind::Namespace)
}

/// The Kubernetes kinds watched besides the Istio ones.
const CORE_KINDS: [&str; 6] = ["Service", "EndpointSlice", "Pod", "Node", "Namespace", "Secret"];

/// Most events applied to the model in one update. Events that are already waiting are
/// applied together: the model is copied on every update, so one copy per event would make a
/// burst (a rollout, a relist of thousands of pods) quadratic.
const MAX_BATCH: usize = 1024;

/// What the source reports while it runs, shared between [`run`] and whoever serves metrics
/// and readiness. Cheap to clone; all clones see the same numbers.
#[derive(Clone)]
pub struct SourceStatus {
    /// Rejected Istio resources per kind: one count per rejected version of an object (a
    /// relist that sees the same rejected version again does not count it twice).
    config_errors: Arc<BTreeMap<Kind, AtomicU64>>,
    /// Per watched kind: whether it has been listed completely at least once.
    synced: watch::Sender<BTreeMap<&'static str, bool>>,
}

impl Default for SourceStatus {
    fn default() -> Self {
        let config_errors = Kind::ALL.into_iter().map(|k| (k, AtomicU64::new(0))).collect();
        let names = CORE_KINDS.into_iter().chain(istio_kinds().map(Kind::name)).chain(gateway_api::NAMES);
        SourceStatus {
            config_errors: Arc::new(config_errors),
            synced: watch::Sender::new(names.map(|n| (n, false)).collect()),
        }
    }
}

impl SourceStatus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Istio resources of `kind` rejected so far: `trellisd_config_errors_total{source=
    /// "kubernetes",kind}`, read at scrape time.
    pub fn config_errors(&self, kind: Kind) -> u64 {
        self.config_errors.get(&kind).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// All rejections, every kind together.
    pub fn config_errors_total(&self) -> u64 {
        self.config_errors.values().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Whether every watched kind has been listed completely at least once. Until then the
    /// model is partial (say, services without their endpoints), and proxies served from it
    /// would drop traffic: readiness and the first push should wait for this.
    pub fn is_synced(&self) -> bool {
        self.synced.borrow().values().all(|done| *done)
    }

    /// Waits until [`SourceStatus::is_synced`].
    pub async fn wait_synced(&self) {
        let mut rx = self.synced.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|kinds| kinds.values().all(|done| *done)).await;
    }

    /// The kinds not listed yet, for a readiness message.
    pub fn unsynced(&self) -> Vec<&'static str> {
        self.synced.borrow().iter().filter(|(_, done)| !**done).map(|(name, _)| *name).collect()
    }

    fn count_rejection(&self, kind: Kind) {
        if let Some(counter) = self.config_errors.get(&kind) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn mark_synced(&self, name: &'static str) {
        self.synced.send_if_modified(|kinds| kinds.insert(name, true) != Some(true));
    }
}

/// Watches the cluster through `client` and keeps `model` in step, until the returned future is
/// dropped (it never completes on its own). `status` counts rejected resources and says when
/// every kind has been listed.
pub async fn run(client: Client, model: ModelHandle, status: SourceStatus) {
    let mut tasks = JoinSet::new();
    let context = |name| Context { name, model: model.clone(), status: status.clone() };
    tasks.spawn(watch(Api::<Service>::all(client.clone()), Services, context("Service")));
    tasks.spawn(watch(Api::<EndpointSlice>::all(client.clone()), EndpointSlices, context("EndpointSlice")));
    tasks.spawn(watch(Api::<Pod>::all(client.clone()), Pods, context("Pod")));
    // Only the nodes' metadata (their labels are all the model keeps): their frequent status
    // updates then weigh little.
    tasks.spawn(watch(Api::<PartialObjectMeta<Node>>::all(client.clone()), Nodes, context("Node")));
    tasks.spawn(watch(Api::<Namespace>::all(client.clone()), Namespaces, context("Namespace")));
    // TLS Secrets, for Gateway servers' credentialName (the others are dropped on arrival).
    tasks.spawn(watch(Api::<Secret>::all(client.clone()), Secrets, context("Secret")));
    for kind in istio_kinds() {
        let api = Api::<DynamicObject>::all_with(client.clone(), &istio::api_resource(kind));
        let target = IstioKind { kind, status: status.clone(), reported: HashMap::new() };
        tasks.spawn(watch(api, target, context(kind.name())));
    }
    // The Kubernetes Gateway API (its CRDs may not be installed: a 404 counts as listed).
    {
        use gateway_api::{
            GatewayClasses, Gateways, GrpcRoutes, HttpRoutes, ReferenceGrants, Watched, api_resource,
        };
        let api = |r: ApiResource| Api::<DynamicObject>::all_with(client.clone(), &r);
        let classes = api(api_resource::<GatewayClasses>());
        tasks.spawn(watch(classes, Watched::<GatewayClasses>::default(), context(gateway_api::NAMES[0])));
        let gateways = api(api_resource::<Gateways>());
        tasks.spawn(watch(gateways, Watched::<Gateways>::default(), context(gateway_api::NAMES[1])));
        let routes = api(api_resource::<HttpRoutes>());
        tasks.spawn(watch(routes, Watched::<HttpRoutes>::default(), context(gateway_api::NAMES[2])));
        let grants = api(api_resource::<ReferenceGrants>());
        tasks.spawn(watch(grants, Watched::<ReferenceGrants>::default(), context(gateway_api::NAMES[3])));
        let grpc_routes = api(api_resource::<GrpcRoutes>());
        tasks.spawn(watch(grpc_routes, Watched::<GrpcRoutes>::default(), context(gateway_api::NAMES[4])));
    }
    // Watchers never end: a task that does has panicked, and its kind no longer updates.
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done {
            tracing::error!(error = %e, "a Kubernetes watcher stopped; its kind no longer updates");
        }
    }
}

/// What a watcher loop needs besides its API and target.
struct Context {
    /// The kind, as logs and [`SourceStatus`] name it.
    name: &'static str,
    model: ModelHandle,
    status: SourceStatus,
}

/// One watcher: events in, model updates out, forever.
async fn watch<T>(api: Api<T::Object>, target: T, cx: Context)
where
    T: Target + Send + 'static,
    T::Object: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    T::Key: Send,
    T::Value: Send + Sync,
{
    let mut mirror = Mirror::new(target);
    let mut events =
        watcher(api, watcher::Config::default()).default_backoff().ready_chunks(MAX_BATCH).boxed();
    let mut missing_reported = false;
    while let Some(batch) = events.next().await {
        let mut edits = Vec::new();
        let mut listed = false;
        for event in batch {
            match event {
                Ok(event) => listed |= mirror.handle(event, &mut edits),
                Err(e) => on_watch_error(&cx, &e, &mut missing_reported),
            }
        }
        if !edits.is_empty() {
            cx.model.update(|model| mirror::apply::<T>(model, edits));
        }
        if listed {
            missing_reported = false;
            cx.status.mark_synced(cx.name);
        }
    }
}

/// Logs a watch failure; the backoff in the stream does the retrying.
fn on_watch_error(cx: &Context, e: &watcher::Error, missing_reported: &mut bool) {
    match e {
        // The server forgot our resourceVersion: routine, the watcher relists.
        watcher::Error::WatchError(status) if status.code == 410 => {
            tracing::debug!(kind = cx.name, "watch expired; relisting");
        }
        // The CRD is not installed. No CRD means no objects: the kind counts as listed so that
        // readiness does not wait for it, and the watcher keeps trying in case it appears.
        watcher::Error::InitialListFailed(kube::Error::Api(status)) if status.code == 404 => {
            if !std::mem::replace(missing_reported, true) {
                tracing::warn!(
                    kind = cx.name,
                    "the API server does not serve {}; is its CRD installed?",
                    cx.name
                );
            }
            cx.status.mark_synced(cx.name);
        }
        // Nodes only give localities: without the right to read them (a chart from before
        // locality-aware balancing), the rest works and endpoints' localities come from their
        // istio-locality labels only.
        watcher::Error::InitialListFailed(kube::Error::Api(status))
            if status.code == 403 && cx.name == "Node" =>
        {
            if !std::mem::replace(missing_reported, true) {
                tracing::warn!(
                    kind = cx.name,
                    "not allowed to list Nodes (grant get, list and watch on nodes): localities come from istio-locality labels only"
                );
            }
            cx.status.mark_synced(cx.name);
        }
        // Secrets only give gateways their certificates: without the right to read them, the
        // rest of the mesh works and gateway servers that name one are left out.
        watcher::Error::InitialListFailed(kube::Error::Api(status))
            if status.code == 403 && cx.name == "Secret" =>
        {
            if !std::mem::replace(missing_reported, true) {
                tracing::warn!(
                    kind = cx.name,
                    "not allowed to list Secrets (grant get, list and watch on secrets): Gateway servers with a credentialName are left out"
                );
            }
            cx.status.mark_synced(cx.name);
        }
        // EnvoyFilters only give rate limits: without the right to read them (a chart from
        // before rate limits), the rest works without them.
        watcher::Error::InitialListFailed(kube::Error::Api(status))
            if status.code == 403 && cx.name == "EnvoyFilter" =>
        {
            if !std::mem::replace(missing_reported, true) {
                tracing::warn!(
                    kind = cx.name,
                    "not allowed to list EnvoyFilters (grant get, list and watch on envoyfilters.networking.istio.io): no rate limits"
                );
            }
            cx.status.mark_synced(cx.name);
        }
        // Telemetry only tunes access logs, tracing and metrics: without the right to read it
        // (a chart from before the Telemetry API), the mesh config's settings apply alone.
        watcher::Error::InitialListFailed(kube::Error::Api(status))
            if status.code == 403 && cx.name == "Telemetry" =>
        {
            if !std::mem::replace(missing_reported, true) {
                tracing::warn!(
                    kind = cx.name,
                    "not allowed to list Telemetries (grant get, list and watch on telemetries.telemetry.istio.io): the mesh config's telemetry settings apply alone"
                );
            }
            cx.status.mark_synced(cx.name);
        }
        // The Gateway API is optional: without the right to read it (a chart from before it),
        // the rest works and Kubernetes Gateways are not served.
        watcher::Error::InitialListFailed(kube::Error::Api(status))
            if status.code == 403 && cx.name.starts_with(trellis_api::gateway_api::GROUP) =>
        {
            if !std::mem::replace(missing_reported, true) {
                tracing::warn!(
                    kind = cx.name,
                    "not allowed to list {} (grant get, list and watch on gateway.networking.k8s.io): Kubernetes Gateways are not served",
                    cx.name
                );
            }
            cx.status.mark_synced(cx.name);
        }
        e => tracing::warn!(kind = cx.name, error = %e, "watching {} failed; retrying", cx.name),
    }
}

/// Drops what only the API server needs: managed fields and kubectl's copy of the last applied
/// object are often larger than the object itself, and the model holds every object.
fn trim(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    if let Some(annotations) = &mut meta.annotations {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

fn namespaced(meta: &ObjectMeta) -> (String, String) {
    (meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default())
}

struct Services;

impl Target for Services {
    type Object = Service;
    type Key = (String, String);
    type Value = KubeService;

    fn slot(model: &mut Model) -> &mut BTreeMap<Self::Key, Arc<Self::Value>> {
        &mut model.services
    }

    fn key(&self, svc: &Service) -> Self::Key {
        namespaced(svc.meta())
    }

    fn admit(&mut self, _: &Self::Key, svc: Service) -> Admission<KubeService> {
        Admission::Store(convert::service(&svc))
    }
}

struct EndpointSlices;

impl Target for EndpointSlices {
    type Object = EndpointSlice;
    type Key = (String, String);
    type Value = KubeEndpointSlice;

    fn slot(model: &mut Model) -> &mut BTreeMap<Self::Key, Arc<Self::Value>> {
        &mut model.endpoint_slices
    }

    fn key(&self, slice: &EndpointSlice) -> Self::Key {
        namespaced(slice.meta())
    }

    fn admit(&mut self, _: &Self::Key, slice: EndpointSlice) -> Admission<KubeEndpointSlice> {
        convert::endpoint_slice(&slice).map_or(Admission::Ignore, Admission::Store)
    }
}

struct Pods;

impl Target for Pods {
    type Object = Pod;
    type Key = (String, String);
    type Value = KubePod;

    fn slot(model: &mut Model) -> &mut BTreeMap<Self::Key, Arc<Self::Value>> {
        &mut model.pods
    }

    fn key(&self, pod: &Pod) -> Self::Key {
        namespaced(pod.meta())
    }

    fn admit(&mut self, _: &Self::Key, pod: Pod) -> Admission<KubePod> {
        convert::pod(&pod).map_or(Admission::Ignore, Admission::Store)
    }
}

/// Secrets with TLS keys, reduced to those keys.
struct Secrets;

impl Target for Secrets {
    type Object = Secret;
    type Key = (String, String);
    type Value = KubeSecret;

    fn slot(model: &mut Model) -> &mut BTreeMap<Self::Key, Arc<Self::Value>> {
        &mut model.secrets
    }

    fn key(&self, secret: &Secret) -> Self::Key {
        namespaced(secret.meta())
    }

    fn admit(&mut self, _: &Self::Key, secret: Secret) -> Admission<KubeSecret> {
        convert::tls_secret(&secret).map_or(Admission::Ignore, Admission::Store)
    }
}

/// Nodes, reduced to their locality.
struct Nodes;

impl Target for Nodes {
    type Object = PartialObjectMeta<Node>;
    type Key = String;
    type Value = trellis_api::locality::Locality;

    fn slot(model: &mut Model) -> &mut BTreeMap<Self::Key, Arc<Self::Value>> {
        &mut model.nodes
    }

    fn key(&self, node: &Self::Object) -> String {
        node.metadata.name.clone().unwrap_or_default()
    }

    fn admit(&mut self, _: &String, node: Self::Object) -> Admission<Self::Value> {
        Admission::Store(convert::node_locality(&node.metadata))
    }
}

/// Namespaces are stored whole (their labels decide injection and discovery). They are not run
/// through Trellis's validation: the API server has validated them, and what our checks add
/// about injection labels are warnings the injector reports.
struct Namespaces;

impl Target for Namespaces {
    type Object = Namespace;
    type Key = ObjectKey;
    type Value = Resource;

    fn slot(model: &mut Model) -> &mut BTreeMap<Self::Key, Arc<Self::Value>> {
        &mut model.resources
    }

    fn key(&self, ns: &Namespace) -> ObjectKey {
        ObjectKey::new(Kind::Namespace, "", ns.meta().name.clone().unwrap_or_default())
    }

    fn admit(&mut self, _: &ObjectKey, mut ns: Namespace) -> Admission<Resource> {
        trim(&mut ns.metadata);
        Admission::Store(Resource::Namespace(Box::new(ns)))
    }
}

/// One Istio kind, decoded and validated object by object.
struct IstioKind {
    kind: Kind,
    status: SourceStatus,
    /// The resourceVersion whose findings were last logged, per object: a relist (or an
    /// unchanged re-delivery) of the same version is not logged or counted again.
    reported: HashMap<ObjectKey, String>,
}

impl IstioKind {
    /// True the first time findings about this version of `key` come up.
    fn first_report(&mut self, key: &ObjectKey, version: Option<String>) -> bool {
        match version.filter(|v| !v.is_empty()) {
            Some(version) => self.reported.insert(key.clone(), version.clone()).as_ref() != Some(&version),
            None => true,
        }
    }
}

impl Target for IstioKind {
    type Object = DynamicObject;
    type Key = ObjectKey;
    type Value = Resource;

    fn slot(model: &mut Model) -> &mut BTreeMap<Self::Key, Arc<Self::Value>> {
        &mut model.resources
    }

    fn key(&self, object: &DynamicObject) -> ObjectKey {
        let (namespace, name) = namespaced(&object.metadata);
        ObjectKey::new(self.kind, namespace, name)
    }

    fn admit(&mut self, key: &ObjectKey, mut object: DynamicObject) -> Admission<Resource> {
        trim(&mut object.metadata);
        let version = object.metadata.resource_version.clone();
        match istio::check(self.kind, object) {
            Ok(accepted) => {
                if accepted.warnings.is_empty() {
                    self.reported.remove(key);
                } else if self.first_report(key, version) {
                    log_findings(key, &accepted.warnings);
                }
                Admission::Store(accepted.resource)
            }
            Err(findings) => {
                if self.first_report(key, version) {
                    self.status.count_rejection(self.kind);
                    log_findings(key, &findings);
                }
                Admission::KeepPrevious
            }
        }
    }

    fn forget(&mut self, key: &ObjectKey) {
        self.reported.remove(key);
    }
}

/// One line per finding: `rejected VirtualService shop/reviews: spec.hosts: required`.
/// Warnings (which do not reject) read `VirtualService shop/reviews: warning: ...`.
fn log_findings(key: &ObjectKey, findings: &[Finding]) {
    let (kind, ns, name) = (key.kind.name(), key.namespace.as_str(), key.name.as_str());
    for finding in findings {
        let field = finding.field.as_str();
        let problem =
            if field.is_empty() { finding.message.clone() } else { format!("{field}: {}", finding.message) };
        if finding.severity == Severity::Error {
            tracing::warn!(kind, namespace = ns, name, field, "rejected {kind} {ns}/{name}: {problem}");
        } else {
            tracing::warn!(kind, namespace = ns, name, field, "{kind} {ns}/{name}: warning: {problem}");
        }
    }
}
