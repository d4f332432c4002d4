//! `xds-load`: many lightweight delta xDS clients in one process, for `bench/control-plane.sh`.
//!
//! Each client is one ADS stream shaped like the proxy's (`proxy/src/xds.rs`): it opens every
//! type with one request (the first carries the node; settings and the service table are
//! wildcard), ACKs every response, and once the service table has arrived subscribes by name
//! to the virtual hosts of `--services-per-proxy` services: `--watch-host` and others spread
//! over the table, so the clients together use every service. It holds only names (hashed),
//! not resources, so ten thousand of them fit in one process.
//!
//! Protocol on stdin/stdout, for the script:
//!
//! 1. When every client is synced it prints `READY ...` (then exits with `--sync-only`).
//! 2. It waits for a line on stdin: `changed <unix-nanoseconds>`, the time the config change was
//!    written (a line without a number means "now").
//! 3. Each client records when it has received and ACKed the response that carries a new
//!    version of the watched virtual host. Once all have (or `--update-timeout`), it prints the
//!    latencies from the change (`RESULT key value` lines and a summary) and `DONE`.
//! 4. It keeps the streams open until stdin closes or says anything else (at most
//!    `--linger-timeout`), so the control plane's view of the ACKs can be read meanwhile.
//!
//! Clients share `--streams-per-connection` HTTP/2 streams per connection (1: one connection
//! per client, as in a real mesh).
//!
//! With `--ca-root-cert`, the clients are certified proxies on the TLS port, as real proxies in
//! Kubernetes are: `--address` is trellisd's secure address (`host:port`), each connection is
//! TLS verified against that root, and before its ADS stream each client obtains a workload
//! certificate through Istio's `CreateCertificate` (a fresh P-256 key and CSR for
//! `spiffe://<trust domain>/ns/<namespace>/sa/load-<id>`, with the token
//! `<--token-prefix><id>`, which the script puts in trellisd's `--token-auth-file`); its ADS
//! stream carries the same token (the TLS port serves a stream only to a token of the node's
//! namespace). The CSR goes over the connection the stream then uses, or with
//! `--separate-ca-connection` over a TLS connection of its own that stays open beside it: what
//! the proxy does (its CA client and its xDS client each keep a channel to 15012).

use std::collections::HashSet;
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use prost::Message;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::timeout_at;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::{Channel, Endpoint};
use trellis_identity::SpiffeId;
use trellis_identity::client::{CaClient, tls_channel};
use trellis_xds::config as pb;
use trellis_xds::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use trellis_xds::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use trellis_xds::types::{ProxyNode, ResourceType};

#[derive(Parser)]
#[command(name = "xds-load", about = "Many lightweight delta xDS clients against trellisd")]
struct Args {
    /// The control plane's plaintext xDS address.
    #[arg(long, default_value = "http://127.0.0.1:15010")]
    address: String,
    /// Simulated proxies (one ADS stream each).
    #[arg(long, default_value_t = 1000)]
    proxies: usize,
    /// Virtual hosts each client subscribes to, the watched one included.
    #[arg(long, default_value_t = 5)]
    services_per_proxy: usize,
    /// The virtual host (`host:port`) whose change is timed; every client subscribes to it.
    #[arg(long, default_value = "web-7.bench.svc.cluster.local:80")]
    watch_host: String,
    /// ADS streams per HTTP/2 connection; 1 gives every client its own connection.
    #[arg(long, default_value_t = 100)]
    streams_per_connection: usize,
    /// The clients' namespace (node metadata).
    #[arg(long, default_value = "bench")]
    namespace: String,
    /// Clients opening their stream and taking their first config at the same time.
    #[arg(long, default_value_t = 1000)]
    max_syncing: usize,
    /// Seconds for every client to connect and sync.
    #[arg(long, default_value_t = 180)]
    sync_timeout: u64,
    /// Seconds to wait for the `changed` line after `READY`.
    #[arg(long, default_value_t = 120)]
    change_timeout: u64,
    /// Seconds, from the `changed` line, for every client to get and ACK the new version.
    #[arg(long, default_value_t = 60)]
    update_timeout: u64,
    /// Seconds to keep the streams open after `DONE`, waiting for stdin to close.
    #[arg(long, default_value_t = 60)]
    linger_timeout: u64,
    /// Exit once every client is synced.
    #[arg(long)]
    sync_only: bool,
    /// The mesh root certificate (PEM): connect over TLS to the secure address and certify each
    /// client through the CA first.
    #[arg(long)]
    ca_root_cert: Option<std::path::PathBuf>,
    /// Client `id`'s bearer token is this followed by `id`.
    #[arg(long, default_value = "bench-token-")]
    token_prefix: String,
    /// The trust domain of the SPIFFE IDs the clients ask for.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Certify over a TLS connection of the client's own, kept open beside its xDS connection.
    #[arg(long)]
    separate_ca_connection: bool,
}

/// How connections are made: plaintext HTTP/2, or TLS to the secure port with the CA's root.
#[derive(Clone)]
enum Connect {
    /// Boxed: an endpoint is large and made once.
    Plain(Box<Endpoint>),
    Tls {
        address: String,
        root: Arc<str>,
        token_prefix: Arc<str>,
        trust_domain: Arc<str>,
        separate: bool,
    },
}

impl Connect {
    fn describe(&self) -> String {
        match self {
            Connect::Plain(endpoint) => endpoint.uri().to_string(),
            Connect::Tls { address, .. } => format!("{address} (TLS)"),
        }
    }

    /// A connection; over TLS a lazy one, made by the first call on it.
    async fn channel(&self) -> Result<Channel, String> {
        match self {
            Connect::Plain(endpoint) => endpoint.connect().await.map_err(|e| with_sources(&e)),
            Connect::Tls { address, root, .. } => tls_channel(address, root, None).map_err(|e| e.to_string()),
        }
    }

    /// Client `id`'s bearer token (TLS only): the CA and the TLS port's xDS both want it.
    fn token(&self, id: usize) -> Option<String> {
        match self {
            Connect::Plain(_) => None,
            Connect::Tls { token_prefix, .. } => Some(format!("{token_prefix}{id}")),
        }
    }

    /// Client `id`'s certificate from the CA, over `channel` (or a connection of its own,
    /// returned to be kept open); `None` in plaintext mode.
    async fn certify(
        &self,
        id: usize,
        channel: &Channel,
        namespace: &str,
    ) -> Result<Option<Channel>, String> {
        let Connect::Tls { token_prefix, trust_domain, separate, .. } = self else { return Ok(None) };
        let own = if *separate { Some(self.channel().await?) } else { None };
        let ca = CaClient::new(own.clone().unwrap_or_else(|| channel.clone()));
        let requested =
            SpiffeId::new(trust_domain, namespace, &format!("load-{id}")).map_err(|e| e.to_string())?;
        let token = format!("{token_prefix}{id}");
        let cert = ca.certify(&requested, &token, CERT_TTL).await.map_err(|e| format!("certify: {e}"))?;
        if cert.leaf.id != requested {
            return Err(format!("certify: the CA issued {} for {requested}", cert.leaf.id));
        }
        Ok(own)
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The lifetime the certified clients ask for (the proxy's default).
const CERT_TTL: Duration = Duration::from_secs(24 * 3600);
const OPEN_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_CONNECTING: usize = 128;
const MAX_RESPONSE_BYTES: usize = 64 << 20;
/// HTTP/2 receive windows: large enough that a hundred streams sharing a connection do not
/// wait on each other's window updates during the first sync.
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;
/// How often progress is printed while syncing.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

const TYPES: usize = ResourceType::PUSH_ORDER.len();

fn type_index(kind: ResourceType) -> usize {
    ResourceType::PUSH_ORDER.iter().position(|k| *k == kind).unwrap_or(0)
}

enum Event {
    Synced { held: [usize; TYPES], version: String, weights: Option<String> },
    Updated { at: SystemTime, held: [usize; TYPES], weights: Option<String> },
    Failed { id: usize, error: String },
}

struct Shared {
    namespace: String,
    watch_host: String,
    services_per_proxy: usize,
    /// Every virtual host named in the service table, sorted; read from the first table a
    /// client receives.
    virtual_hosts: OnceLock<Result<Vec<String>, String>>,
    events: mpsc::UnboundedSender<Event>,
    syncing: Semaphore,
    /// Connections being opened at once (a burst of thousands overflows the listen backlog).
    connecting: Semaphore,
    /// Responses received after the client was synced, by type.
    later_responses: [AtomicU64; TYPES],
    /// Clients certified by the CA.
    certified: AtomicU64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.proxies == 0 || args.streams_per_connection == 0 || args.services_per_proxy == 0 {
        eprintln!("xds-load: --proxies, --streams-per-connection and --services-per-proxy must be > 0");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("xds-load: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(args));
    // Streams and connections are dropped with the runtime, without waiting for them.
    runtime.shutdown_background();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xds-load: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let connect = match &args.ca_root_cert {
        None => Connect::Plain(Box::new(
            Endpoint::from_shared(args.address.clone())
                .map_err(|e| format!("--address {:?}: {e}", args.address))?
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .initial_stream_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW),
        )),
        Some(path) => {
            let root = std::fs::read_to_string(path)
                .map_err(|e| format!("--ca-root-cert {}: {e}", path.display()))?;
            let address = args.address.rsplit_once("://").map_or(args.address.as_str(), |(_, a)| a);
            Connect::Tls {
                address: address.trim_end_matches('/').to_owned(),
                root: root.into(),
                token_prefix: args.token_prefix.as_str().into(),
                trust_domain: args.trust_domain.as_str().into(),
                separate: args.separate_ca_connection,
            }
        }
    };
    let (events, mut inbox) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        namespace: args.namespace.clone(),
        watch_host: args.watch_host.clone(),
        services_per_proxy: args.services_per_proxy,
        virtual_hosts: OnceLock::new(),
        events,
        syncing: Semaphore::new(args.max_syncing.max(1)),
        connecting: Semaphore::new(MAX_CONNECTING),
        later_responses: Default::default(),
        certified: AtomicU64::new(0),
    });
    let stdin = stdin_lines();

    // Connections are opened by one task per connection, which then starts its clients.
    let start = Instant::now();
    let connections = args.proxies.div_ceil(args.streams_per_connection);
    for c in 0..connections {
        let first = c * args.streams_per_connection;
        let ids = first..(first + args.streams_per_connection).min(args.proxies);
        let (connect, shared) = (connect.clone(), shared.clone());
        tokio::spawn(async move {
            let permit = shared.connecting.acquire().await;
            let channel = match connect.channel().await {
                Ok(channel) => channel,
                Err(e) => {
                    for id in ids {
                        let error = format!("connect {}: {e}", connect.describe());
                        let _ = shared.events.send(Event::Failed { id, error });
                    }
                    return;
                }
            };
            // Certified one after another under the permit: at most MAX_CONNECTING TLS
            // handshakes and certificate requests at once, as connections were bounded before.
            let mut certified = Vec::new();
            for id in ids {
                match connect.certify(id, &channel, &shared.namespace).await {
                    Ok(ca_connection) => {
                        if matches!(connect, Connect::Tls { .. }) {
                            shared.certified.fetch_add(1, Ordering::Relaxed);
                        }
                        certified.push((id, ca_connection));
                    }
                    Err(error) => {
                        let error = format!("{}: {error}", connect.describe());
                        let _ = shared.events.send(Event::Failed { id, error });
                    }
                }
            }
            drop(permit);
            for (id, ca_connection) in certified {
                let (channel, shared, token) = (channel.clone(), shared.clone(), connect.token(id));
                tokio::spawn(async move {
                    // The CA connection (if any) stays open as long as the client's stream.
                    let _ca_connection = ca_connection;
                    if let Err(error) = client(id, channel, &shared, token).await {
                        let _ = shared.events.send(Event::Failed { id, error });
                    }
                });
            }
        });
    }

    // 1. Every client synced.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.sync_timeout);
    let mut synced = Vec::with_capacity(args.proxies);
    let mut versions = HashSet::new();
    let mut weights_before = None;
    let mut updates = Vec::with_capacity(args.proxies);
    let mut weights_after = None;
    let mut next_progress = Instant::now() + PROGRESS_EVERY;
    while synced.len() < args.proxies {
        let event = timeout_at(deadline, inbox.recv()).await.map_err(|_| {
            format!(
                "{} of {} clients synced within --sync-timeout {}s",
                synced.len(),
                args.proxies,
                args.sync_timeout
            )
        })?;
        match event {
            Some(Event::Synced { held, version, weights }) => {
                synced.push(held);
                versions.insert(version);
                weights_before = weights_before.or(weights);
            }
            Some(Event::Updated { at, held, weights }) => {
                // A change before every client was synced (not the benchmark's): kept, and
                // reported as early if the script's change comes later.
                updates.push((at, held));
                weights_after = weights_after.or(weights);
            }
            Some(Event::Failed { id, error }) => return Err(format!("client {id}: {error}")),
            None => return Err("every client stopped".to_owned()),
        }
        if Instant::now() >= next_progress {
            eprintln!(
                "xds-load: {}/{} synced after {:.1}s",
                synced.len(),
                args.proxies,
                start.elapsed().as_secs_f64()
            );
            next_progress += PROGRESS_EVERY;
        }
    }
    let sync_seconds = start.elapsed().as_secs_f64();
    result("proxies", args.proxies);
    result("connections", connections);
    result("certified", shared.certified.load(Ordering::Relaxed));
    result("sync_seconds", format!("{sync_seconds:.2}"));
    for kind in ResourceType::PUSH_ORDER {
        result(&format!("held_{}", kind.short_name()), range(synced.iter().map(|h| h[type_index(kind)])));
    }
    result("watched_versions", versions.len());
    result("weights_before", weights_before.as_deref().unwrap_or("?"));
    println!("READY proxies={} sync_seconds={sync_seconds:.2}", args.proxies);
    flush();
    if args.sync_only {
        return Ok(());
    }

    // 2. The change.
    let change_deadline = tokio::time::Instant::now() + Duration::from_secs(args.change_timeout);
    let mut stdin = stdin;
    let changed_at = loop {
        tokio::select! {
            line = timeout_at(change_deadline, stdin.recv()) => {
                let line = line
                    .map_err(|_| format!("no `changed` line on stdin within --change-timeout {}s", args.change_timeout))?
                    .ok_or("stdin closed before the `changed` line")?;
                break parse_change(&line)?;
            }
            event = inbox.recv() => match event {
                Some(Event::Updated { at, held, weights }) => {
                    updates.push((at, held));
                    weights_after = weights_after.or(weights);
                }
                Some(Event::Failed { id, error }) => return Err(format!("client {id}: {error}")),
                Some(Event::Synced { .. }) => {}
                None => return Err("every client stopped".to_owned()),
            },
        }
    };

    // 3. Every client ACKed the new version.
    let update_deadline = tokio::time::Instant::now() + Duration::from_secs(args.update_timeout);
    let mut failed = Vec::new();
    while updates.len() < args.proxies {
        match timeout_at(update_deadline, inbox.recv()).await {
            Err(_) => break,
            Ok(Some(Event::Updated { at, held, weights })) => {
                updates.push((at, held));
                weights_after = weights_after.or(weights);
            }
            Ok(Some(Event::Failed { id, error })) => failed.push(format!("client {id}: {error}")),
            Ok(Some(Event::Synced { .. })) => {}
            Ok(None) => break,
        }
        if updates.len() + failed.len() >= args.proxies {
            break;
        }
    }
    let mut latencies: Vec<f64> = updates
        .iter()
        .map(|(at, _)| match at.duration_since(changed_at) {
            Ok(d) => d.as_secs_f64() * 1e3,
            Err(e) => -(e.duration().as_secs_f64() * 1e3),
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    result("acked", latencies.len());
    result("failed", failed.len());
    result("early", latencies.iter().filter(|ms| **ms < 0.0).count());
    if !latencies.is_empty() {
        result("min_ms", format!("{:.1}", latencies[0]));
        result("p50_ms", format!("{:.1}", percentile(&latencies, 0.50)));
        result("p99_ms", format!("{:.1}", percentile(&latencies, 0.99)));
        result("max_ms", format!("{:.1}", latencies[latencies.len() - 1]));
    }
    for kind in ResourceType::PUSH_ORDER {
        result(
            &format!("after_sync_responses_{}", kind.short_name()),
            shared.later_responses[type_index(kind)].load(Ordering::Relaxed),
        );
    }
    for kind in ResourceType::PUSH_ORDER {
        result(
            &format!("held_after_{}", kind.short_name()),
            range(updates.iter().map(|(_, h)| h[type_index(kind)])),
        );
    }
    result("weights_after", weights_after.as_deref().unwrap_or("?"));
    for f in failed.iter().take(5) {
        eprintln!("xds-load: {f}");
    }
    println!("DONE acked={}/{}", latencies.len(), args.proxies);
    flush();

    // 4. Streams stay open while the script reads the control plane's view.
    let _ = timeout_at(tokio::time::Instant::now() + Duration::from_secs(args.linger_timeout), stdin.recv())
        .await;
    if latencies.len() < args.proxies {
        return Err(format!("{} of {} clients got the new version", latencies.len(), args.proxies));
    }
    Ok(())
}

/// One simulated proxy, until its stream ends.
async fn client(id: usize, channel: Channel, shared: &Shared, token: Option<String>) -> Result<(), String> {
    let mut permit = Some(shared.syncing.acquire().await.map_err(|e| e.to_string())?);
    let mut ads =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES);
    let node = ProxyNode {
        id: format!(
            "sidecar~10.{}.{}.{}~load-{id}.{ns}~{ns}.svc.cluster.local",
            id >> 16,
            (id >> 8) & 255,
            id & 255,
            ns = shared.namespace
        ),
        namespace: shared.namespace.clone(),
        workload: format!("load-{}", id / 100),
        labels: [("app".to_owned(), "load".to_owned())].into(),
        ..Default::default()
    };
    let (tx, rx) = mpsc::unbounded_channel();
    for (i, kind) in ResourceType::PUSH_ORDER.into_iter().enumerate() {
        let request = DeltaDiscoveryRequest {
            node: (i == 0).then(|| node.to_node()),
            type_url: kind.type_url().to_owned(),
            ..Default::default()
        };
        tx.send(request).map_err(|_| "request stream closed")?;
    }
    let mut open = tonic::Request::new(UnboundedReceiverStream::new(rx));
    if let Some(token) = token {
        // On the TLS port the token must prove a service account of the node's namespace.
        let value = format!("Bearer {token}").parse().map_err(|_| "the token is not a header value")?;
        open.metadata_mut().insert("authorization", value);
    }
    let mut inbound = tokio::time::timeout(OPEN_TIMEOUT, ads.delta_aggregated_resources(open))
        .await
        .map_err(|_| format!("open stream: no answer within {OPEN_TIMEOUT:?}"))?
        .map_err(|s| format!("open stream: {}: {}", s.code(), s.message()))?
        .into_inner();

    let mut held: [HashSet<u64>; TYPES] = Default::default();
    let mut subscribed: Vec<String> = Vec::new();
    let mut watched_version: Option<String> = None;
    let mut synced = false;
    let mut updated = false;
    // Client 0 reports the watched virtual host's split, before and after.
    let mut weights: Option<String> = None;
    loop {
        let response = match inbound.message().await {
            Ok(Some(response)) => response,
            Ok(None) => return Err("the control plane ended the stream".to_owned()),
            Err(status) => return Err(format!("stream: {}: {}", status.code(), status.message())),
        };
        let kind = ResourceType::from_type_url(&response.type_url)
            .ok_or_else(|| format!("response of unknown type_url {:?}", response.type_url))?;
        let k = type_index(kind);
        if synced {
            shared.later_responses[k].fetch_add(1, Ordering::Relaxed);
        }
        let mut new_watched = None;
        for resource in &response.resources {
            held[k].insert(name_hash(&resource.name));
            if kind == ResourceType::VirtualHost
                && resource.name == shared.watch_host
                && watched_version.as_deref() != Some(resource.version.as_str())
            {
                new_watched = Some(resource);
            }
        }
        for name in &response.removed_resources {
            held[k].remove(&name_hash(name));
            if kind == ResourceType::VirtualHost && subscribed.contains(name) {
                return Err(format!("the control plane has no virtual host {name}"));
            }
        }
        if id == 0
            && let Some(resource) = new_watched
        {
            weights = Some(weights_of(resource));
        }
        let new_version = new_watched.map(|r| r.version.clone());
        let ack = DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        };
        tx.send(ack).map_err(|_| "request stream closed")?;
        let acked_at = SystemTime::now();

        if let Some(version) = new_version {
            let first = watched_version.is_none();
            watched_version = Some(version);
            if synced && !first && !updated {
                updated = true;
                let held = counts(&held);
                let _ = shared.events.send(Event::Updated { at: acked_at, held, weights: weights.clone() });
            }
        }
        if kind == ResourceType::Service && subscribed.is_empty() {
            subscribed = pick_virtual_hosts(id, shared, &response)?;
            let request = DeltaDiscoveryRequest {
                type_url: ResourceType::VirtualHost.type_url().to_owned(),
                resource_names_subscribe: subscribed.clone(),
                ..Default::default()
            };
            tx.send(request).map_err(|_| "request stream closed")?;
        }
        if !synced
            && !subscribed.is_empty()
            && !held[type_index(ResourceType::Settings)].is_empty()
            && subscribed.iter().all(|n| held[type_index(ResourceType::VirtualHost)].contains(&name_hash(n)))
            && let Some(version) = &watched_version
        {
            synced = true;
            permit.take();
            let event =
                Event::Synced { held: counts(&held), version: version.clone(), weights: weights.clone() };
            let _ = shared.events.send(event);
        }
    }
}

/// The watched virtual host and `services_per_proxy - 1` others, a different selection per
/// client. The others come from the first part of the service table (the control plane sends
/// a large table in parts); the watched one is asked for by name whether or not it is there.
fn pick_virtual_hosts(
    id: usize,
    shared: &Shared,
    table: &DeltaDiscoveryResponse,
) -> Result<Vec<String>, String> {
    let all = shared.virtual_hosts.get_or_init(|| {
        let mut names = Vec::new();
        for resource in &table.resources {
            let any = resource
                .resource
                .as_ref()
                .ok_or_else(|| format!("service {}: no resource", resource.name))?;
            let service = pb::Service::decode(any.value.as_ref())
                .map_err(|e| format!("service {}: cannot decode: {e}", resource.name))?;
            names.extend(service.ports.into_iter().map(|p| p.virtual_host).filter(|v| !v.is_empty()));
        }
        names.sort();
        names.dedup();
        Ok(names)
    });
    let all = all.as_ref().map_err(Clone::clone)?;
    let others: Vec<&String> = all.iter().filter(|n| **n != shared.watch_host).collect();
    let extra = (shared.services_per_proxy - 1).min(others.len());
    let mut picked = vec![shared.watch_host.clone()];
    for j in 0..extra {
        picked.push(others[(id * extra + j) % others.len()].clone());
    }
    Ok(picked)
}

/// `v1:90 v2:10`: the watched virtual host's split, by subset.
fn weights_of(resource: &trellis_xds::discovery::Resource) -> String {
    let Some(vh) =
        resource.resource.as_ref().and_then(|any| pb::VirtualHost::decode(any.value.as_ref()).ok())
    else {
        return "undecodable".to_owned();
    };
    let mut parts = Vec::new();
    for route in &vh.routes {
        if let Some(pb::route::Action::Forward(forward)) = &route.action {
            for c in &forward.clusters {
                let subset = c.cluster.split('|').nth(2).filter(|s| !s.is_empty()).unwrap_or(&c.cluster);
                parts.push(format!("{subset}:{}", c.weight));
            }
        }
    }
    parts.join(",")
}

fn name_hash(name: &str) -> u64 {
    xxhash_rust::xxh64::xxh64(name.as_bytes(), 0)
}

fn counts(held: &[HashSet<u64>; TYPES]) -> [usize; TYPES] {
    std::array::from_fn(|i| held[i].len())
}

fn range(values: impl Iterator<Item = usize>) -> String {
    let (mut lo, mut hi) = (usize::MAX, 0);
    for v in values {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo == usize::MAX {
        "-".to_owned()
    } else if lo == hi {
        lo.to_string()
    } else {
        format!("{lo}-{hi}")
    }
}

/// Nearest rank.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn parse_change(line: &str) -> Result<SystemTime, String> {
    let mut words = line.split_whitespace();
    if words.next() != Some("changed") {
        return Err(format!("stdin: expected `changed <unix-nanoseconds>`, got {line:?}"));
    }
    match words.next() {
        None => Ok(SystemTime::now()),
        Some(ns) => {
            let ns: u64 =
                ns.parse().map_err(|e| format!("stdin: {ns:?} is not a time in nanoseconds: {e}"))?;
            Ok(UNIX_EPOCH + Duration::from_nanos(ns))
        }
    }
}

/// Lines from stdin, read by a thread (the runtime has no async stdin here).
fn stdin_lines() -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// An error and its causes, `a: b: c` (tonic's transport error alone says only "transport error").
fn with_sources(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    for _ in 0..8 {
        let Some(cause) = source else { break };
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

fn result(key: &str, value: impl std::fmt::Display) {
    println!("RESULT {key} {value}");
}

fn flush() {
    let _ = std::io::stdout().flush();
}
