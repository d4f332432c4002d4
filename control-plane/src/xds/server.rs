//! The ADS gRPC service: one task per proxy stream, driving its [`Session`] from the proxy's
//! requests and from new generations, and recording what it sent for `/debug/syncz`.

use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use trellis_xds::discovery::aggregated_discovery_service_server::AggregatedDiscoveryService;
use trellis_xds::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use trellis_xds::types::{ProxyNode, ResourceType};

use super::generation::Generation;
use super::metrics::XdsMetrics;
use super::session::{Outgoing, Session, TypeStatus};
use crate::ca::authenticate::{AuthError, Authenticator};
use crate::translate::locality::Instance;
use crate::translate::{ProxyIdentity, scope_of_instance, scope_of_router};

/// At most this many proxies decide a push at once; the rest wait their turn, so a change to
/// the whole mesh does not become a storm of simultaneous work.
pub const MAX_CONCURRENT_PUSHES: usize = 100;
/// Responses handed to the transport per stream ahead of the proxy reading them. The rest
/// wait as references into the shared resources, so a slow proxy costs little memory.
const STREAM_BUFFER: usize = 2;

/// What `/debug/syncz` shows of one connected proxy.
#[derive(Clone, Debug)]
pub struct ProxySync {
    /// Shared with the proxy's stream.
    pub node: Arc<ProxyNode>,
    pub connected_since: SystemTime,
    /// Per type in use: sent, acknowledged, rejected, and how many resources the proxy holds.
    pub types: Vec<(ResourceType, TypeStatus, usize)>,
}

#[derive(Default)]
pub struct Registry {
    next: AtomicU64,
    proxies: Mutex<BTreeMap<u64, Arc<Mutex<ProxySync>>>>,
}

impl Registry {
    pub fn snapshot(&self) -> Vec<ProxySync> {
        let proxies = self.proxies.lock().unwrap_or_else(|p| p.into_inner());
        proxies.values().map(|p| p.lock().unwrap_or_else(|p| p.into_inner()).clone()).collect()
    }

    fn add(&self, sync: ProxySync) -> (u64, Arc<Mutex<ProxySync>>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(Mutex::new(sync));
        self.proxies.lock().unwrap_or_else(|p| p.into_inner()).insert(id, entry.clone());
        (id, entry)
    }

    fn remove(&self, id: u64) {
        self.proxies.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }
}

#[derive(Clone)]
pub struct XdsServer {
    generations: watch::Receiver<Arc<Generation>>,
    registry: Arc<Registry>,
    permits: Arc<Semaphore>,
    metrics: Arc<XdsMetrics>,
    /// On the TLS port: the caller's token must prove a service account of the namespace its
    /// node claims (as istiod checks), so that no one reads another namespace's config.
    authenticator: Option<Arc<Authenticator>>,
    /// Whether gateway proxies are sent the certificates and keys of their namespace's Secrets
    /// (Gateway `credentialName`): only when a caller's namespace is proven (the TLS port),
    /// since anyone who can reach the plaintext port can claim any namespace.
    gateway_credentials: bool,
}

impl XdsServer {
    pub fn new(
        generations: watch::Receiver<Arc<Generation>>,
        registry: Arc<Registry>,
        metrics: Arc<XdsMetrics>,
    ) -> Self {
        Self {
            generations,
            registry,
            permits: Arc::new(Semaphore::new(MAX_CONCURRENT_PUSHES)),
            metrics,
            authenticator: None,
            gateway_credentials: false,
        }
    }

    /// The same server, sending gateways their Secrets without authenticating callers: for a
    /// control plane that only trusted proxies can reach (tests on loopback).
    pub fn trusting_callers_with_credentials(&self) -> Self {
        Self { gateway_credentials: true, ..self.clone() }
    }

    /// The same server, requiring each stream's token to match its node's namespace.
    pub fn authenticated(&self, authenticator: Arc<Authenticator>) -> Self {
        Self { authenticator: Some(authenticator), gateway_credentials: true, ..self.clone() }
    }

    async fn check_caller(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        node: &ProxyNode,
    ) -> Result<(), Status> {
        let Some(authenticator) = &self.authenticator else { return Ok(()) };
        let caller = authenticator.authenticate(metadata).await.map_err(|e| {
            tracing::info!(node = %node.id, "xDS stream refused: {e}");
            match e {
                AuthError::Unauthenticated(_) => Status::unauthenticated(e.to_string()),
                AuthError::Unavailable(_) => Status::unavailable(e.to_string()),
            }
        })?;
        if caller.namespace != node.namespace {
            tracing::info!(node = %node.id, token_namespace = %caller.namespace, "xDS stream refused: namespace mismatch");
            return Err(Status::permission_denied(format!(
                "node {:?} claims namespace {:?}, but its token is for service account {}/{}",
                node.id, node.namespace, caller.namespace, caller.service_account
            )));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsServer {
    type DeltaAggregatedResourcesStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let metrics = self.metrics.clone();
        let responses = self.delta_stream(request).await?.map(move |outgoing: Box<Outgoing>| {
            let response = outgoing.into_response();
            metrics.sent_bytes.inc_by(prost::Message::encoded_len(&response) as u64);
            Ok(response)
        });
        Ok(Response::new(Box::pin(responses)))
    }
}

impl XdsServer {
    /// Starts a proxy's stream: its responses as decided, still references into the shared
    /// resources, for the transport to build or encode when it takes them.
    pub async fn delta_stream(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<ReceiverStream<Box<Outgoing>>, Status> {
        let metadata = request.metadata().clone();
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("the stream ended before its first request"))?;
        let node = first
            .node
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("node: required on the first request"))
            .and_then(|n| ProxyNode::from_node(n).map_err(Status::invalid_argument))?;
        self.check_caller(&metadata, &node).await?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let stream = Stream { server: self.clone(), node: Arc::new(node), tx };
        // Boxed: the stream's task keeps its arguments for its whole life, and the first request
        // is needed only at its start.
        tokio::spawn(stream.run(Box::new(first), inbound));
        Ok(ReceiverStream::new(rx))
    }

    /// Counts a response's encoded bytes as sent.
    pub fn count_sent(&self, bytes: usize) {
        self.metrics.sent_bytes.inc_by(bytes as u64);
    }
}

/// Waiting for a turn to push; `None` once the server stops.
type Turn = Pin<Box<dyn Future<Output = Option<OwnedSemaphorePermit>> + Send>>;

struct Stream {
    server: XdsServer,
    node: Arc<ProxyNode>,
    tx: mpsc::Sender<Box<Outgoing>>,
}

impl Stream {
    async fn run(self, first: Box<DeltaDiscoveryRequest>, mut inbound: Streaming<DeltaDiscoveryRequest>) {
        let instance = instance_of(&self.node);
        let (id, sync) = self.server.registry.add(ProxySync {
            node: self.node.clone(),
            connected_since: SystemTime::now(),
            types: Vec::new(),
        });
        self.server.metrics.connected.inc();
        tracing::info!(proxy = %self.node.id, "connected");
        let mut generations = self.server.generations.clone();
        let mut session = Session::default();
        // Responses decided but not yet handed to the transport. They go out one at a time
        // while the proxy's ACKs keep being read, so neither side queues a burst.
        let mut pending: VecDeque<Outgoing> = VecDeque::new();
        // The generation whose push latency is still to be observed, once its last response is
        // handed over; each generation is observed once, and the one current at connect never
        // (on-demand pushes later in the same generation are not a change reaching the proxy).
        let mut observed = generations.borrow().number;
        let mut unobserved: Option<Arc<Generation>> = None;
        let mut push = self.handle(&mut session, &first);
        drop(first);
        // Waiting for a turn to push keeps its place in the queue across loop turns, and the
        // proxy's requests keep being read meanwhile: HTTP/2 closes a connection whose peer's
        // small frames pile up unread.
        let mut turn: Option<Turn> = None;
        loop {
            if push && turn.is_none() {
                let permits = self.server.permits.clone();
                turn = Some(Box::pin(async move { permits.acquire_owned().await.ok() }));
            }
            if pending.is_empty()
                && let Some(generation) = unobserved.take()
            {
                self.server.metrics.push_latency.observe(generation.changed_at.elapsed().as_secs_f64());
            }
            tokio::select! {
                permit = async { turn.as_mut()?.await }, if turn.is_some() => {
                    turn = None;
                    let Some(_permit) = permit else { break };
                    push = false;
                    let generation = generations.borrow_and_update().clone();
                    let parts = self.plan(&mut session, &instance, &generation);
                    if !parts.is_empty() && generation.number != observed {
                        observed = generation.number;
                        unobserved = Some(generation);
                    }
                    pending.extend(parts);
                    record(&sync, &session);
                }
                permit = self.tx.reserve(), if !pending.is_empty() => {
                    let (Ok(permit), Some(outgoing)) = (permit, pending.pop_front()) else { break };
                    self.server.metrics.pushed(outgoing.kind);
                    permit.send(Box::new(outgoing));
                    if pending.is_empty() {
                        // The first sync queues a few dozen parts; keeping that room for the
                        // stream's life cost about 2 KiB per proxy (heaptrack).
                        pending = VecDeque::new();
                    }
                }
                message = inbound.message() => match message {
                    Ok(Some(request)) => {
                        push |= self.handle(&mut session, &request);
                        record(&sync, &session);
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(proxy = %self.node.id, %status, "stream ended");
                        break;
                    }
                },
                changed = generations.changed() => {
                    if changed.is_err() { break; }
                    push = true;
                }
            }
        }
        self.server.registry.remove(id);
        self.server.metrics.connected.dec();
        tracing::info!(proxy = %self.node.id, "disconnected");
    }

    /// Applies a request; true when the proxy should be pushed to now.
    fn handle(&self, session: &mut Session, request: &DeltaDiscoveryRequest) -> bool {
        match session.handle(request) {
            Ok(handled) => {
                if let Some((kind, message)) = &handled.nack {
                    self.server.metrics.nack(*kind);
                    tracing::warn!(proxy = %self.node.id, kind = kind.short_name(), %message, "proxy rejected config");
                }
                handled.push
            }
            Err(message) => {
                tracing::warn!(proxy = %self.node.id, %message, "ignored a request");
                false
            }
        }
    }

    /// Decides what brings the proxy up to `generation`. Called with a turn: the first proxy
    /// of a scope translates it for everyone, and a mesh-wide change should not make every
    /// stream do its share at once.
    fn plan(&self, session: &mut Session, instance: &Instance, generation: &Generation) -> Vec<Outgoing> {
        // Made per push rather than kept: a copy of the node's labels for every connected proxy
        // would cost more than making one now and then.
        let identity = &ProxyIdentity {
            namespace: self.node.namespace.clone(),
            labels: self.node.labels.clone(),
            dns_auto_allocate: self.node.dns_auto_allocate,
        };
        // Istio's node types: a gateway says `router~...`, a sidecar `sidecar~...`.
        let scope = if self.node.id.starts_with("router~") {
            scope_of_router(&generation.model, identity, instance, self.server.gateway_credentials)
        } else {
            scope_of_instance(&generation.model, identity, instance)
        };
        let resources = generation.resources(&scope);
        session.push(&resources, generation.number)
    }
}

/// The pod and address a sidecar's node id names (`sidecar~<ip>~<pod>.<namespace>~...`, as
/// Istio's); what does not parse is left unknown.
fn instance_of(node: &ProxyNode) -> Instance {
    let mut parts = node.id.split('~');
    let (_, ip, pod) = (parts.next(), parts.next(), parts.next());
    let suffix = format!(".{}", node.namespace);
    Instance {
        ip: ip.and_then(|ip| ip.parse().ok()),
        pod: pod.and_then(|p| p.strip_suffix(&suffix)).filter(|p| !p.is_empty()).map(str::to_owned),
    }
}

fn record(sync: &Mutex<ProxySync>, session: &Session) {
    let mut sync = sync.lock().unwrap_or_else(|p| p.into_inner());
    sync.types.clear();
    sync.types.extend(session.types_in_use());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sidecars_node_id_names_its_pod_and_address() {
        let node = |id: &str| ProxyNode { id: id.into(), namespace: "shop".into(), ..Default::default() };
        let instance = instance_of(&node("sidecar~10.1.2.3~reviews-v1-abc.shop~shop.svc.cluster.local"));
        assert_eq!(instance.pod.as_deref(), Some("reviews-v1-abc"));
        assert_eq!(instance.ip, Some("10.1.2.3".parse().unwrap()));
        let other = instance_of(&node("sidecar~~web.other~other.svc.cluster.local"));
        assert_eq!(other, Instance::default(), "another namespace's pod, no address");
        assert_eq!(instance_of(&node("router")), Instance::default());
    }
}
