//! A new downstream connection: where it was headed, what it speaks, and who handles it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use trellis_identity::tls::Carries;
use trellis_proxy_init::original_dst::original_destination_of;
use trellis_xds::config as pb;
use trellis_xds::types::ResourceType;

use crate::cluster::Cluster;
use crate::detect::{self, Detected, detect};
use crate::metrics::Reporter;
use crate::security::inbound::{self, Carried, Decision, Mode};
use crate::security::stream::MaybeTls;
use crate::security::upstream::ClusterTls;
use crate::serve::{Conn, Speaks, serve};
use crate::upstream::{ConnectionPolicy, Key, Protocol};
use crate::{Proxy, Side, box_out_of_line, tcp};

const INBOUND_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a TLS client may take to finish its ClientHello.
const DETECTION_TLS_DEADLINE: Duration = Duration::from_secs(1);

/// The address the client dialled before the redirect; `None` when it dialled the proxy itself
/// (explicit mode: no redirect in place, as on a laptop).
pub fn original_destination(stream: &TcpStream, local: SocketAddr) -> Option<SocketAddr> {
    let original = original_destination_of(stream, local).ok()?;
    (original != local).then_some(original)
}

pub async fn handle(stream: TcpStream, peer: SocketAddr, side: Side, proxy: Arc<Proxy>) {
    proxy.connections.fetch_add(1, Ordering::AcqRel);
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0));
    let original =
        original_destination(&stream, local).or_else(|| crate::tproxy::kept_destination(side, local));
    let snapshot = proxy.config.load_full();
    // Explicit mode is for the local app dialling its own proxy; anyone else reaching the
    // outbound port directly would have an open proxy.
    if side == Side::Outbound && original.is_none() && !(peer.ip().is_loopback() || peer.ip() == local.ip()) {
        proxy.connections.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    let mut conn = Conn::new(side, peer, original, local);
    if side == Side::Inbound {
        conn.ask_for_peer(&proxy);
    }
    let port = original.map(|o| o.port());
    let mut service_port = original.and_then(|o| snapshot.by_address(o)).cloned();
    if let Some(sp) = &service_port
        && !sp.missing_tcp_clusters.is_empty()
        && let (Some(on_demand), Some(original)) = (proxy.on_demand.get(), original)
    {
        // A TCP service's clusters, fetched on first use.
        let lookup = || proxy.config.load().by_address(original).cloned();
        for name in &sp.missing_tcp_clusters {
            let arrived = || lookup().is_some_and(|sp| !sp.missing_tcp_clusters.contains(name));
            box_out_of_line(|| on_demand.fetch(ResourceType::Cluster, name, arrived)).await;
        }
        if let Some(fetched) = lookup() {
            service_port = Some(fetched);
        }
    }
    let declared = service_port.as_ref().map(|sp| sp.protocol);
    let opaque = port.is_some_and(|p| snapshot.opaque_ports.contains(&p))
        || matches!(declared, Some(pb::Protocol::Tcp | pb::Protocol::Tls));
    // Outbound traffic to a port no service uses cannot be routed: pass it through as bytes.
    let worth_inspecting = match side {
        Side::Outbound => {
            original.is_none() || service_port.is_some() || port.is_some_and(|p| snapshot.has_services_on(p))
        }
        Side::Inbound => true,
    };
    let declared_http =
        matches!(declared, Some(pb::Protocol::Http | pb::Protocol::Grpc | pb::Protocol::Http2));
    let inbound_mode = match side {
        Side::Inbound => snapshot.inbound_tls.mode_for(port),
        Side::Outbound => Mode::Disable,
    };
    let detected = if (opaque || !worth_inspecting) && inbound_mode == Mode::Disable {
        Detected::Opaque
    } else if opaque {
        // An opaque inbound port under a TLS policy: only whether it opens with TLS matters.
        match detect(&stream, snapshot.detection_timeout).await {
            Detected::Tls => Detected::Tls,
            _ => Detected::Opaque,
        }
    } else if declared_http {
        // Declared HTTP: only which version, and within the header timeout, so that a client
        // that says nothing is not waited for without end. What is not HTTP/2 goes to the
        // HTTP/1 server, which answers what is not HTTP and times out a silent client.
        match detect(&stream, snapshot.limits.header_read_timeout).await {
            Detected::Http2 => Detected::Http2,
            _ => Detected::Http1,
        }
    } else {
        // Without a redirect there is no original destination to fall back to as TCP, so an
        // explicit client (a pooled connection, idle before its first request) gets as long as
        // any client has to send its headers.
        let timeout =
            if original.is_none() { snapshot.limits.header_read_timeout } else { snapshot.detection_timeout };
        detect(&stream, timeout).await
    };
    drop(snapshot);
    if inbound_mode != Mode::Disable {
        // Only PERMISSIVE TLS needs its ClientHello read: that branch is boxed, so that a
        // plaintext connection's future does not carry its state.
        let decision = match inbound::decide_without_hello(inbound_mode, detected == Detected::Tls) {
            Some(decision) => decision,
            None => box_out_of_line(|| inbound::decide(&stream, inbound_mode, true)).await,
        };
        match decision {
            Decision::AsIs => {}
            Decision::Terminate => {
                box_out_of_line(|| serve_mesh(stream, conn, proxy.clone())).await;
                proxy.connections.fetch_sub(1, Ordering::AcqRel);
                return;
            }
            Decision::Refuse(why) => {
                proxy.metrics.inbound_refused(why);
                tracing::debug!(%peer, why, "inbound connection refused by PeerAuthentication");
                proxy.connections.fetch_sub(1, Ordering::AcqRel);
                return;
            }
        }
    }
    match detected {
        Detected::Http1 | Detected::Http2 => {
            let speaks = if detected == Detected::Http2 { Speaks::Http2 } else { Speaks::Http1 };
            // One call: each call site would have its own room for the connection's future.
            serve(stream, conn, proxy.clone(), speaks).await
        }
        Detected::Tls if side == Side::Outbound => {
            // TLS that is not ours passes through; its server name picks the service when the
            // address dialled does not.
            let name = box_out_of_line(|| detect::server_name(&stream, DETECTION_TLS_DEADLINE)).await;
            let by_name = match (&service_port, &name) {
                (None, Some(name)) => {
                    let snapshot = proxy.config.load();
                    snapshot.by_authority(name, port.unwrap_or(443)).cloned()
                }
                _ => None,
            };
            conn.sni = name.map(Arc::from);
            box_out_of_line(|| relay(stream, &conn, service_port.as_deref().or(by_name.as_deref()), &proxy))
                .await
        }
        // Boxed like the HTTP connections in `serve`: a task is as large as its largest branch.
        Detected::Tls | Detected::Opaque => {
            box_out_of_line(|| relay(stream, &conn, service_port.as_deref(), &proxy)).await
        }
    }
    proxy.connections.fetch_sub(1, Ordering::AcqRel);
}

/// A mutual TLS connection from another proxy: the handshake, then what it carries, with the
/// peer's identity on the connection.
async fn serve_mesh(stream: TcpStream, mut conn: Conn, proxy: Arc<Proxy>) {
    match inbound::terminate(stream, proxy.pools.mesh_tls()).await {
        Err(why) => {
            proxy.metrics.inbound_refused(why);
            tracing::debug!(peer = %conn.peer, why, "inbound mutual TLS refused");
        }
        Ok(terminated) => {
            conn.tls_peer = terminated.peer;
            conn.ask_for_peer(&proxy);
            conn.sni = terminated.stream.get_ref().1.server_name().map(Arc::from);
            let stream = MaybeTls::Server(Box::new(terminated.stream));
            match terminated.carried {
                Carried::Http1 => serve(stream, conn, proxy, Speaks::Http1).await,
                Carried::Http2 => serve(stream, conn, proxy, Speaks::Http2).await,
                Carried::Tcp => relay(stream, &conn, None, &proxy).await,
            }
        }
    }
}

/// Opaque TCP: outbound to the service's TCP cluster or the original destination; inbound to
/// the app on localhost from 127.0.0.6.
async fn relay<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    conn: &Conn,
    service_port: Option<&crate::config::ServicePort>,
    proxy: &Proxy,
) {
    let snapshot = proxy.config.load_full();
    // The connection's access log line, when access logs are on.
    let mut log = crate::access_log::TcpEntry::start(proxy, conn);
    let (target, service) = match (conn.side, conn.original) {
        // Explicit mode: only a service found by TLS server name gives bytes a destination.
        (Side::Outbound, None) => match service_port.and_then(|sp| sp.tcp_target()) {
            Some(cluster) => {
                let service = service_port.map(|sp| sp.service.to_string()).unwrap_or_default();
                return relay_to_cluster(stream, &cluster, service, proxy, log).await;
            }
            None => return,
        },
        (Side::Inbound, None) => return,
        (Side::Inbound, Some(original)) => {
            if proxy.is_own(original, conn.local.ip()) {
                return;
            }
            let policy = &snapshot.inbound_policy;
            if !policy.is_empty()
                && let Err(details) =
                    crate::security::policy::check_connection_explained(conn, original, proxy, policy)
            {
                // Denied TCP is closed, as Istio's sidecars do.
                if let Some(log) = log {
                    log.denied(original.port(), &details);
                }
                return;
            }
            if let Some(log) = log.as_mut() {
                log.cluster = Some(format!("inbound|{}||", original.port()).into());
            }
            let (addr, source) = crate::forward::inbound_delivery(original, conn);
            (
                Key { addr, protocol: Protocol::Http1, source, tls: None, pool: 0 },
                // Istio's fallback for a destination service it cannot tell: the workload's
                // canonical service (bytes carry no authority to name one).
                proxy.metrics.local().canonical_service.to_string(),
            )
        }
        (Side::Outbound, Some(original)) => match service_port.and_then(|sp| sp.tcp_target()) {
            Some(cluster) => {
                let service = service_port.map(|sp| sp.service.to_string()).unwrap_or_default();
                return relay_to_cluster(stream, &cluster, service, proxy, log).await;
            }
            None if snapshot.outbound_policy == pb::OutboundPolicy::RegistryOnly => return,
            None => {
                if proxy.is_own(original, conn.local.ip()) {
                    return;
                }
                if let Some(log) = log.as_mut() {
                    log.cluster = Some("PassthroughCluster".into());
                }
                (
                    Key { addr: original, protocol: Protocol::Http1, source: None, tls: None, pool: 0 },
                    "PassthroughCluster".to_owned(),
                )
            }
        },
    };
    let reporter = if conn.side == Side::Outbound { Reporter::Source } else { Reporter::Destination };
    let security = conn.security();
    let target = Target {
        key: target,
        tls: None,
        connections: ConnectionPolicy { connect_timeout: INBOUND_CONNECT_TIMEOUT, ..Default::default() },
        idle: tcp::DEFAULT_IDLE_TIMEOUT,
        security,
        outlier: None,
        log,
    };
    let peer = match conn.side {
        Side::Inbound => conn.peer_workload(proxy).await,
        Side::Outbound => crate::peers::PeerKey::unknown(),
    };
    pipe(stream, target, reporter, &service, peer, proxy).await;
}

/// Outbound TCP to a service's cluster: an endpoint and a place in the pool limits, held for
/// the connection's life (a full pool refuses the connection).
pub(crate) async fn relay_to_cluster<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    cluster: &Cluster,
    service: String,
    proxy: &Proxy,
    mut log: Option<crate::access_log::TcpEntry>,
) {
    if let Some(log) = log.as_mut() {
        log.cluster = Some(cluster.name.clone());
    }
    // The connection holds a place under the cluster's cap for as long as it lasts; a full
    // cluster closes it at once (Envoy's UO).
    let Some(_opened) = cluster.open_connection() else {
        if let Some(log) = log {
            log.finish(crate::access_log::TcpOutcome { flags: "UO", ..Default::default() });
        }
        let unknown = crate::peers::PeerKey::unknown();
        let labels =
            proxy.metrics.tcp_labels(Reporter::Source, &service.into(), "UO", &Default::default(), &unknown);
        proxy.metrics.tcp_opened(&labels);
        proxy.metrics.tcp_closed(&labels, 0, 0);
        return;
    };
    let Some(picked) = cluster.pick(None, None) else { return };
    let Some(addr) = cluster.balancer.targets().get(picked.index()).map(|t| t.addr) else { return };
    let tls = cluster.tls_for(picked.index()).map(Arc::as_ref);
    let key = Key { addr, protocol: Protocol::Http1, source: None, tls: tls.map(|t| t.pool_id), pool: 0 };
    let idle = cluster.idle_timeout.unwrap_or(tcp::DEFAULT_IDLE_TIMEOUT);
    let security = tls.map(ClusterTls::security).unwrap_or_default();
    let target = Target {
        key,
        tls,
        connections: cluster.connections,
        idle,
        security,
        outlier: cluster.outlier.is_some().then_some((cluster, picked.index())),
        log,
    };
    let peer = proxy.config.load().peers.outbound(addr.ip());
    pipe(stream, target, Reporter::Source, &service, peer, proxy).await;
}

/// Where a relayed connection goes.
struct Target<'a> {
    key: Key,
    tls: Option<&'a ClusterTls>,
    /// How to connect, and how long the connection may last.
    connections: ConnectionPolicy,
    idle: Duration,
    /// For the metrics: the upstream's (outbound) or the downstream's (inbound).
    security: crate::metrics::Security,
    /// The cluster and endpoint whose outlier detection hears how the connection went.
    outlier: Option<(&'a Cluster, usize)>,
    /// The connection's access log line, when access logs are on.
    log: Option<crate::access_log::TcpEntry>,
}

/// Connects and relays, counting the connection and its bytes.
async fn pipe<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    target: Target<'_>,
    reporter: Reporter,
    service: &str,
    peer: crate::peers::PeerKey,
    proxy: &Proxy,
) {
    let security = target.security.clone();
    let service: Arc<str> = service.into();
    let dialed = proxy.pools.dial(target.key, &target.connections, target.tls, Carries::Tcp).await;
    if let Some((cluster, index)) = target.outlier {
        let observed = if dialed.is_ok() {
            crate::outlier::Observed::Connected
        } else {
            crate::outlier::Observed::ConnectFailed
        };
        if let Some(verdict) = cluster.observe(index, observed) {
            proxy.metrics.outlier(cluster.name(), verdict);
        }
    }
    let failure = match (&dialed, &target.log) {
        (Err(e), Some(_)) => Some(e.to_string()),
        _ => None,
    };
    let Ok(mut upstream_stream) = dialed else {
        if let Some(log) = target.log {
            let addr = Some(target.key.addr);
            let failure = failure.as_deref();
            let outcome = crate::access_log::TcpOutcome {
                flags: "UF",
                upstream_host: addr,
                failure,
                ..Default::default()
            };
            log.finish(outcome);
        }
        let labels = proxy.metrics.tcp_labels(reporter, &service, "UF", &security, &peer);
        proxy.metrics.tcp_opened(&labels);
        proxy.metrics.tcp_closed(&labels, 0, 0);
        return;
    };
    let labels = proxy.metrics.tcp_labels(reporter, &service, "-", &security, &peer);
    proxy.metrics.tcp_opened(&labels);
    let (sent, received, _ended) =
        tcp::relay_for(&mut stream, &mut upstream_stream, target.idle, target.connections.max_duration).await;
    proxy.metrics.tcp_closed(&labels, sent, received);
    if let Some(log) = target.log {
        log.finish(crate::access_log::TcpOutcome {
            upstream_host: Some(target.key.addr),
            upstream_local: crate::access_log::local_of(&upstream_stream),
            flags: "-",
            received: sent,
            sent: received,
            ..Default::default()
        });
    }
}
