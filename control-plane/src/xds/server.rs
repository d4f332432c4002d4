//! The ADS gRPC service: one task per proxy stream, driving its [`Session`] from the proxy's
//! requests and from new generations, and recording what it sent for `/debug/syncz`.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use trellis_xds::discovery::aggregated_discovery_service_server::AggregatedDiscoveryService;
use trellis_xds::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use trellis_xds::types::{ProxyNode, ResourceType};

use super::generation::Generation;
use super::metrics::XdsMetrics;
use super::session::{Outgoing, Session, TypeStatus};
use crate::translate::{ProxyIdentity, scope_of};

/// At most this many proxies compute and queue a push at once; the rest wait their turn, so
/// a change to the whole mesh does not become a storm of simultaneous work.
pub const MAX_CONCURRENT_PUSHES: usize = 100;
/// Responses queued per stream before the push waits for the proxy to read. Small: the
/// push holds its turn until its responses are queued, so a slow proxy waits rather than
/// piling up responses in memory.
const STREAM_BUFFER: usize = 2;

/// What `/debug/syncz` shows of one connected proxy.
#[derive(Clone, Debug)]
pub struct ProxySync {
    pub node: ProxyNode,
    pub connected_since: SystemTime,
    pub types: BTreeMap<ResourceType, TypeStatus>,
    pub held: BTreeMap<ResourceType, usize>,
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
}

impl XdsServer {
    pub fn new(
        generations: watch::Receiver<Arc<Generation>>,
        registry: Arc<Registry>,
        metrics: Arc<XdsMetrics>,
    ) -> Self {
        Self { generations, registry, permits: Arc::new(Semaphore::new(MAX_CONCURRENT_PUSHES)), metrics }
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
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let stream = Stream { server: self.clone(), node, tx };
        tokio::spawn(stream.run(first, inbound));
        // Responses are built from the shared resources only when the transport takes them.
        let metrics = self.metrics.clone();
        let responses = ReceiverStream::new(rx).map(move |outgoing: Box<Outgoing>| {
            let response = outgoing.into_response();
            metrics.sent_bytes.inc_by(prost::Message::encoded_len(&response) as u64);
            Ok(response)
        });
        Ok(Response::new(Box::pin(responses)))
    }
}

struct Stream {
    server: XdsServer,
    node: ProxyNode,
    tx: mpsc::Sender<Box<Outgoing>>,
}

impl Stream {
    async fn run(self, first: DeltaDiscoveryRequest, mut inbound: Streaming<DeltaDiscoveryRequest>) {
        let identity =
            ProxyIdentity { namespace: self.node.namespace.clone(), labels: self.node.labels.clone() };
        let (id, sync) = self.server.registry.add(ProxySync {
            node: self.node.clone(),
            connected_since: SystemTime::now(),
            types: BTreeMap::new(),
            held: BTreeMap::new(),
        });
        self.server.metrics.connected.inc();
        tracing::info!(proxy = %self.node.id, "connected");
        let mut generations = self.server.generations.clone();
        let mut session = Session::default();
        // The first push only counts towards push latency once a change follows the connect.
        let mut pushed_generation = generations.borrow().number;
        let mut push = self.handle(&mut session, &first);
        loop {
            if push {
                let generation = generations.borrow_and_update().clone();
                if !self.push(&mut session, &identity, &generation, &mut pushed_generation).await {
                    break;
                }
                record(&sync, &session);
            }
            tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(request)) => {
                        push = self.handle(&mut session, &request);
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

    /// Sends what changed; false when the proxy is gone.
    async fn push(
        &self,
        session: &mut Session,
        identity: &ProxyIdentity,
        generation: &Generation,
        pushed_generation: &mut u64,
    ) -> bool {
        let Ok(_permit) = self.server.permits.acquire().await else { return false };
        let scope = scope_of(&generation.model, identity);
        let resources = generation.resources(&scope);
        let responses = session.push(&resources, generation.number);
        if responses.is_empty() {
            return true;
        }
        for response in responses {
            let kind = response.kind;
            if self.tx.send(Box::new(response)).await.is_err() {
                return false;
            }
            self.server.metrics.pushed(kind);
        }
        if *pushed_generation != generation.number {
            *pushed_generation = generation.number;
            self.server.metrics.push_latency.observe(generation.changed_at.elapsed().as_secs_f64());
        }
        true
    }
}

fn record(sync: &Mutex<ProxySync>, session: &Session) {
    let mut sync = sync.lock().unwrap_or_else(|p| p.into_inner());
    sync.types = session.status();
    sync.held = session.held();
}
