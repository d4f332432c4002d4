//! The xDS client: one delta ADS stream to the control plane. It subscribes to the settings
//! and the service address table up front and to a service's virtual host or TCP cluster the
//! first time traffic needs it (the control plane adds the clusters, endpoints and endpoints'
//! workloads those refer to), and to a caller's workload when one it does not know connects,
//! so the proxy holds only what its workload uses. Every response is compiled into a new
//! snapshot before it is acknowledged; one that does not compile is rejected (NACK, with the
//! resource and field) and the last good config stays. The stream reconnects with capped,
//! jittered exponential backoff and tells the new stream what it already holds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;
use trellis_xds::config as pb;
use trellis_xds::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use trellis_xds::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use trellis_xds::google::rpc::Status;
use trellis_xds::types::{ProxyNode, ResourceType, SETTINGS_NAME};

use crate::Proxy;
use crate::config::{ConfigError, Snapshot};

/// How long a request waits for a resource it needs and the proxy does not hold yet.
pub const FETCH_WAIT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(15);
/// Largest response accepted (the address table of a large mesh fits many times over).
const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// How long a request waits for the workload of a caller the proxy has not met, for its
/// metrics' labels (the control plane answers in a round trip; while it is away, nothing
/// waits).
pub const PEER_WAIT: Duration = Duration::from_millis(500);
/// Most names the proxy asks for on demand: callers' addresses come from outside, and a
/// port scan must not grow the subscription without end.
const MAX_ASKED: usize = 1 << 16;

/// The data path's way to ask for a resource it needs.
pub struct OnDemand {
    requests: mpsc::UnboundedSender<(ResourceType, String)>,
    /// Bumped after every response the client has dealt with.
    answered: watch::Receiver<u64>,
    /// Names the control plane said it does not have.
    unknown: std::sync::RwLock<BTreeSet<(ResourceType, String)>>,
    /// Names already handed to the client, which keeps them subscribed on every stream: each
    /// goes on the channel once, however many requests wait for it and however long the
    /// control plane is away.
    asked: std::sync::Mutex<BTreeSet<(ResourceType, String)>>,
    /// A stream is open and has answered: waiting for a resource is worth it.
    streaming: std::sync::atomic::AtomicBool,
}

impl OnDemand {
    fn new(
        requests: mpsc::UnboundedSender<(ResourceType, String)>,
        answered: watch::Receiver<u64>,
    ) -> OnDemand {
        OnDemand {
            requests,
            answered,
            unknown: Default::default(),
            asked: Default::default(),
            streaming: Default::default(),
        }
    }

    /// Asks for `name` if nobody has yet, without waiting. False when the control plane said
    /// it has no such resource, or the proxy has asked for too many names already.
    pub fn ask(&self, kind: ResourceType, name: &str) -> bool {
        let key = (kind, name.to_owned());
        if self.is_unknown(&key) {
            return false;
        }
        let Ok(mut asked) = self.asked.lock() else { return false };
        if asked.contains(&key) {
            return true;
        }
        if asked.len() >= MAX_ASKED {
            return false;
        }
        asked.insert(key.clone());
        self.requests.send(key).is_ok()
    }

    fn is_unknown(&self, key: &(ResourceType, String)) -> bool {
        self.unknown.read().is_ok_and(|u| u.contains(key))
    }

    /// Whether the control plane answered that it has no resource `name` of `kind`.
    pub fn said_unknown(&self, kind: ResourceType, name: &str) -> bool {
        self.is_unknown(&(kind, name.to_owned()))
    }

    /// Asks for `name` and waits (at most [`FETCH_WAIT`]) until `arrived` says the proxy holds
    /// it, or the control plane says it has no such resource. Returns `arrived()`.
    pub async fn fetch(&self, kind: ResourceType, name: &str, arrived: impl Fn() -> bool) -> bool {
        self.fetch_within(kind, name, arrived, FETCH_WAIT).await
    }

    /// [`OnDemand::fetch`] for a caller's workload: waits at most [`PEER_WAIT`], and not at
    /// all while no stream is answering.
    pub async fn fetch_peer(&self, name: &str, arrived: impl Fn() -> bool) -> bool {
        let wait = if self.streaming.load(Ordering::Acquire) { PEER_WAIT } else { Duration::ZERO };
        self.fetch_within(ResourceType::Workload, name, arrived, wait).await
    }

    async fn fetch_within(
        &self,
        kind: ResourceType,
        name: &str,
        arrived: impl Fn() -> bool,
        wait: Duration,
    ) -> bool {
        if arrived() {
            return true;
        }
        let mut answered = self.answered.clone();
        if !self.ask(kind, name) || wait.is_zero() {
            return arrived();
        }
        let key = (kind, name.to_owned());
        let waiting = async {
            loop {
                if arrived() || self.is_unknown(&key) {
                    return;
                }
                if answered.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(wait, waiting).await;
        arrived()
    }
}

/// Where the control plane is and who this proxy is.
#[derive(Clone, Debug)]
pub struct XdsOptions {
    /// `http://host:port`.
    pub address: String,
    pub node: ProxyNode,
    /// TLS to the control plane (Istio's 15012), with the pod's token on each stream.
    pub secure: Option<SecureXds>,
}

/// xDS over TLS, as a pod in the mesh reaches the control plane.
#[derive(Clone, Debug)]
pub struct SecureXds {
    /// `host:port`.
    pub authority: String,
    /// The mesh root, which trellisd's certificate chains to.
    pub root_pem: String,
    /// The name trellisd's certificate must carry; the host of `authority` when `None`.
    pub server_name: Option<String>,
    /// Read for every stream: the kubelet rotates projected tokens.
    pub token_file: std::path::PathBuf,
    /// The CA client's channel when the CA is this same address: streams then share its
    /// connection (which reconnects by itself) instead of opening one of their own.
    pub channel: Option<tonic::transport::Channel>,
}

/// What the proxy holds: per type, each resource's version and encoding.
#[derive(Clone, Debug, Default)]
struct Held {
    types: BTreeMap<ResourceType, BTreeMap<String, (String, Bytes)>>,
}

impl Held {
    fn versions(&self, kind: ResourceType) -> std::collections::HashMap<String, String> {
        self.types
            .get(&kind)
            .map(|m| m.iter().map(|(n, (v, _))| (n.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    /// The whole config, assembled in name order (so a compile error's index names the
    /// resource).
    fn assemble(&self) -> Result<pb::ProxyConfig, String> {
        let mut config = match self.types.get(&ResourceType::Settings).and_then(|m| m.get(SETTINGS_NAME)) {
            Some((_, bytes)) => decode::<pb::ProxyConfig>(ResourceType::Settings, SETTINGS_NAME, bytes)?,
            None => pb::ProxyConfig::default(),
        };
        config.services = self.decode_all(ResourceType::Service)?;
        config.virtual_hosts = self.decode_all(ResourceType::VirtualHost)?;
        config.clusters = self.decode_all(ResourceType::Cluster)?;
        config.endpoints = self.decode_all(ResourceType::Endpoints)?;
        config.workloads = self.decode_all(ResourceType::Workload)?;
        Ok(config)
    }

    fn decode_all<M: Message + Default>(&self, kind: ResourceType) -> Result<Vec<M>, String> {
        let Some(map) = self.types.get(&kind) else { return Ok(Vec::new()) };
        map.iter().map(|(name, (_, bytes))| decode(kind, name, bytes)).collect()
    }

    fn name_at(&self, kind: ResourceType, index: usize) -> Option<&str> {
        self.types.get(&kind)?.keys().nth(index).map(String::as_str)
    }
}

fn decode<M: Message + Default>(kind: ResourceType, name: &str, bytes: &[u8]) -> Result<M, String> {
    M::decode(bytes).map_err(|e| format!("{} {name}: cannot decode: {e}", kind.short_name()))
}

/// Turns "virtual_hosts[2].routes[0]: message" into "virtualhost web:80: routes[0]: message".
fn describe(error: &ConfigError, held: &Held) -> String {
    let lists = [
        ("services[", ResourceType::Service),
        ("virtual_hosts[", ResourceType::VirtualHost),
        ("clusters[", ResourceType::Cluster),
        ("endpoints[", ResourceType::Endpoints),
        ("workloads[", ResourceType::Workload),
    ];
    for (prefix, kind) in lists {
        if let Some(rest) = error.field.strip_prefix(prefix)
            && let Some((index, field)) = rest.split_once(']')
            && let Some(name) = index.parse().ok().and_then(|i| held.name_at(kind, i))
        {
            let field = field.trim_start_matches('.');
            let sep = if field.is_empty() { "" } else { ": " };
            return format!("{} {name}{sep}{field}: {}", kind.short_name(), error.message);
        }
    }
    format!("{}: {}", error.field, error.message)
}

/// Starts the client. The proxy is ready once it holds the settings and the address table.
pub fn start(proxy: Arc<Proxy>, options: XdsOptions) {
    let (requests, requests_rx) = mpsc::unbounded_channel();
    let (answered_tx, answered) = watch::channel(0);
    if proxy.on_demand.set(OnDemand::new(requests, answered)).is_err() {
        tracing::error!("the xDS client was started twice");
        return;
    }
    tokio::spawn(run(proxy, options, requests_rx, answered_tx));
}

struct Client {
    proxy: Arc<Proxy>,
    options: XdsOptions,
    held: Held,
    /// Names subscribed on demand, per type; re-sent on every new stream.
    subscribed: BTreeMap<ResourceType, BTreeSet<String>>,
    /// Types whose first response has been applied (readiness needs settings and services).
    received: BTreeSet<ResourceType>,
    answered: watch::Sender<u64>,
}

async fn run(
    proxy: Arc<Proxy>,
    options: XdsOptions,
    mut requests: mpsc::UnboundedReceiver<(ResourceType, String)>,
    answered: watch::Sender<u64>,
) {
    let mut client = Client {
        proxy,
        options,
        held: Held::default(),
        subscribed: BTreeMap::new(),
        received: BTreeSet::new(),
        answered,
    };
    let mut failures = 0u32;
    let proxy = client.proxy.clone();
    let mut drained = std::pin::pin!(proxy.drain.wait());
    loop {
        let outcome = tokio::select! {
            outcome = client.stream(&mut requests) => outcome,
            () = &mut drained => return,
        };
        match outcome {
            Ok(()) => {
                failures = 0;
                tracing::info!("xDS stream closed by the control plane; reconnecting");
            }
            Err((error, made_progress)) => {
                failures = if made_progress { 1 } else { failures.saturating_add(1) };
                tracing::warn!(address = %client.options.address, "xDS stream: {error}");
            }
        }
        // Full jitter: proxies that lost the same control plane come back spread out, not
        // in one wave.
        let ceiling = BACKOFF_BASE.saturating_mul(2u32.saturating_pow(failures.min(16))).min(BACKOFF_CAP);
        let wait = ceiling.mul_f64(rand::random::<f64>()).max(BACKOFF_BASE / 2);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = &mut drained => return,
        }
    }
}

impl Client {
    /// One stream, until it ends. The error says whether any response arrived first.
    async fn stream(
        &mut self,
        requests: &mut mpsc::UnboundedReceiver<(ResourceType, String)>,
    ) -> Result<(), (String, bool)> {
        let fail = |e: String| (e, false);
        let (channel, token) = match &self.options.secure {
            Some(secure) => {
                let channel = match &secure.channel {
                    Some(shared) => shared.clone(),
                    None => trellis_identity::client::tls_channel(
                        &secure.authority,
                        &secure.root_pem,
                        secure.server_name.as_deref(),
                    )
                    .map_err(|e| fail(format!("discovery address {}: {e}", secure.authority)))?,
                };
                let token = trellis_identity::client::read_token(&secure.token_file)
                    .map_err(|e| fail(e.to_string()))?;
                (channel, Some(token))
            }
            None => {
                let endpoint = tonic::transport::Endpoint::from_shared(self.options.address.clone())
                    .map_err(|e| fail(format!("discovery address {:?}: {e}", self.options.address)))?
                    .connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(30));
                (endpoint.connect().await.map_err(|e| fail(format!("connect: {e}")))?, None)
            }
        };
        let mut ads =
            AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES);

        let (tx, rx) = mpsc::unbounded_channel();
        for (i, kind) in ResourceType::PUSH_ORDER.into_iter().enumerate() {
            let request = DeltaDiscoveryRequest {
                node: (i == 0).then(|| self.options.node.to_node()),
                type_url: kind.type_url().to_owned(),
                resource_names_subscribe: self.subscribed.get(&kind).into_iter().flatten().cloned().collect(),
                initial_resource_versions: self.held.versions(kind),
                ..Default::default()
            };
            let _ = tx.send(request);
        }
        let mut inbound = ads
            .delta_aggregated_resources(
                with_token(UnboundedReceiverStream::new(rx), token.as_deref()).map_err(fail)?,
            )
            .await
            .map_err(|e| fail(format!("open stream: {}", e.message())))?
            .into_inner();
        let mut progress = false;
        let _not_streaming = NotStreamingOnExit(self.proxy.clone());
        loop {
            tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(response)) => {
                        if !progress {
                            self.set_streaming(true);
                        }
                        progress = true;
                        let reply = self.apply(response);
                        let _ = tx.send(reply);
                        self.answered.send_modify(|n| *n += 1);
                    }
                    Ok(None) => return Ok(()),
                    Err(status) => return Err((format!("{}: {}", status.code(), status.message()), progress)),
                },
                Some((kind, name)) = requests.recv() => {
                    if self.subscribed.entry(kind).or_default().insert(name.clone()) {
                        let _ = tx.send(DeltaDiscoveryRequest {
                            type_url: kind.type_url().to_owned(),
                            resource_names_subscribe: vec![name],
                            ..Default::default()
                        });
                    }
                }
            }
        }
    }

    fn set_streaming(&self, streaming: bool) {
        if let Some(on_demand) = self.proxy.on_demand.get() {
            on_demand.streaming.store(streaming, Ordering::Release);
        }
    }

    /// Compiles the config with `response` applied; the ACK or NACK to send back.
    fn apply(&mut self, response: DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
        let mut reply = DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        };
        match self.try_apply(&response) {
            Ok(()) => {}
            Err(message) => {
                tracing::warn!(version = %response.system_version_info, "rejected config: {message}");
                reply.error_detail =
                    Some(Status { code: tonic::Code::InvalidArgument as i32, message, details: vec![] });
            }
        }
        reply
    }

    fn try_apply(&mut self, response: &DeltaDiscoveryResponse) -> Result<(), String> {
        let kind = ResourceType::from_type_url(&response.type_url)
            .ok_or_else(|| format!("type_url: {:?} is not a type this proxy knows", response.type_url))?;
        let mut candidate = self.held.clone();
        let map = candidate.types.entry(kind).or_default();
        for resource in &response.resources {
            let any = resource.resource.as_ref().ok_or_else(|| {
                format!("{} {}: no resource in the response", kind.short_name(), resource.name)
            })?;
            if any.type_url != response.type_url {
                return Err(format!(
                    "{} {}: type_url {:?} inside a {:?} response",
                    kind.short_name(),
                    resource.name,
                    any.type_url,
                    response.type_url
                ));
            }
            map.insert(resource.name.clone(), (resource.version.clone(), any.value.clone()));
        }
        let mut unknown = Vec::new();
        for name in &response.removed_resources {
            if map.remove(name).is_none() || self.subscribed.get(&kind).is_some_and(|s| s.contains(name)) {
                unknown.push((kind, name.clone()));
            }
        }
        let mut config = candidate.assemble()?;
        crate::trace::fill_node(&mut config, &self.options.node);
        let current = self.proxy.config.load_full();
        let snapshot = Snapshot::compile_on_demand(config, current.version + 1, Some(&current))
            .map_err(|e| describe(&e, &candidate))?;
        self.held = candidate;
        self.proxy.access_log.follow(&snapshot, &self.proxy.metrics);
        self.proxy.metrics.follow_overrides(&snapshot.source);
        self.proxy.config.store(Arc::new(snapshot));
        if let Some(on_demand) = self.proxy.on_demand.get()
            && let Ok(mut names) = on_demand.unknown.write()
        {
            for (kind, name) in response.resources.iter().map(|r| (kind, r.name.clone())) {
                names.remove(&(kind, name));
            }
            names.extend(unknown);
        }
        self.received.insert(kind);
        if self.received.contains(&ResourceType::Settings) && self.received.contains(&ResourceType::Service) {
            self.proxy.ready.store(true, Ordering::Release);
        }
        Ok(())
    }
}

/// Clears [`OnDemand`]'s `streaming` however a stream ends.
struct NotStreamingOnExit(Arc<Proxy>);

impl Drop for NotStreamingOnExit {
    fn drop(&mut self) {
        if let Some(on_demand) = self.0.on_demand.get() {
            on_demand.streaming.store(false, Ordering::Release);
        }
    }
}

/// The stream's request, carrying `authorization: Bearer <token>` when there is a token.
fn with_token<T>(message: T, token: Option<&str>) -> Result<tonic::Request<T>, String> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| "the token file holds characters a header cannot carry".to_owned())?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// However many requests wait for a resource, and however long nothing reads the channel
    /// (the control plane is away), its name goes on the channel once.
    #[tokio::test]
    async fn a_name_is_asked_for_once_however_many_requests_wait() {
        let (requests, mut queued) = mpsc::unbounded_channel();
        // No answers will come: each fetch gives up at once instead of waiting.
        let (_, answered) = watch::channel(0);
        let on_demand = OnDemand::new(requests, answered);
        for _ in 0..1000 {
            assert!(!on_demand.fetch(ResourceType::VirtualHost, "reviews:9080", || false).await);
        }
        assert!(!on_demand.fetch(ResourceType::Cluster, "reviews:9080", || false).await);
        let mut asked = Vec::new();
        while let Ok(item) = queued.try_recv() {
            asked.push(item);
        }
        let name = "reviews:9080".to_owned();
        assert_eq!(asked, [(ResourceType::VirtualHost, name.clone()), (ResourceType::Cluster, name)]);
    }

    /// Callers' addresses come from outside: however many distinct ones connect, the proxy asks
    /// for at most MAX_ASKED names, and the rest are named by what it holds.
    #[test]
    fn a_flood_of_unknown_callers_asks_for_a_bounded_number_of_names() {
        let (requests, mut queued) = mpsc::unbounded_channel();
        let (_, answered) = watch::channel(0);
        let on_demand = OnDemand::new(requests, answered);
        for i in 0..MAX_ASKED + 100 {
            let address = std::net::Ipv6Addr::from(i as u128).to_string();
            assert_eq!(on_demand.ask(ResourceType::Workload, &address), i < MAX_ASKED, "{i}");
        }
        assert!(on_demand.ask(ResourceType::Workload, "::"), "one asked before is still pending");
        let mut sent = 0;
        while queued.try_recv().is_ok() {
            sent += 1;
        }
        assert_eq!(sent, MAX_ASKED);
    }

    /// A caller's workload is waited for only while a stream answers, and then at most
    /// PEER_WAIT (the clock is tokio's paused one: waiting moves it, nothing else does).
    #[tokio::test(start_paused = true)]
    async fn a_callers_workload_is_waited_for_only_while_the_control_plane_answers() {
        let (requests, _queued) = mpsc::unbounded_channel();
        let (_answers, answered) = watch::channel(0);
        let on_demand = OnDemand::new(requests, answered);
        let started = tokio::time::Instant::now();
        assert!(!on_demand.fetch_peer("10.0.0.1", || false).await);
        assert_eq!(started.elapsed(), Duration::ZERO, "no stream: no wait");

        on_demand.streaming.store(true, Ordering::Release);
        assert!(!on_demand.fetch_peer("10.0.0.2", || false).await);
        assert_eq!(started.elapsed(), PEER_WAIT, "a stream that does not answer: the bound");

        let name = (ResourceType::Workload, "10.0.0.3".to_owned());
        on_demand.unknown.write().unwrap().insert(name);
        let before = tokio::time::Instant::now();
        assert!(!on_demand.fetch_peer("10.0.0.3", || false).await);
        assert_eq!(before.elapsed(), Duration::ZERO, "the control plane said it has none");
        assert!(on_demand.said_unknown(ResourceType::Workload, "10.0.0.3"));
    }
}
