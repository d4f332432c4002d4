//! The gateway's ports: bound as the configuration names them, and each connection served by
//! what its listener and server say (see the module above).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpStream;
use trellis_xds::config as pb;
use trellis_xds::types::ResourceType;

use crate::detect::{self, Detected};
use crate::security::inbound::{self, Carried};
use crate::security::stream::MaybeTls;
use crate::serve::{Conn, Speaks, serve};
use crate::{Proxy, Side};

/// How often the set of ports is compared with the configuration in force. Ports change only
/// when Gateways do, and a new port's first connection can wait this long.
const RECHECK: Duration = Duration::from_millis(100);
/// How long a TLS client may take to send its ClientHello, and to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The gateway role, for a proxy [`crate::start`]ed (usually without capture listeners): its
/// Gateways' ports, on each of `default_ips` for listeners without a `bind` (`0.0.0.0`, and
/// `[::]` on a dual-stack pod).
pub fn start(proxy: &Arc<Proxy>, default_ips: &[IpAddr]) {
    tokio::spawn(run(proxy.clone(), default_ips.to_vec()));
}

/// Keeps the gateway's listeners in step with its configuration until the proxy drains.
async fn run(proxy: Arc<Proxy>, default_ips: Vec<IpAddr>) {
    let mut bound: HashMap<SocketAddr, tokio::task::AbortHandle> = HashMap::new();
    let mut seen = None;
    let mut drained = std::pin::pin!(proxy.drain.wait());
    loop {
        let snapshot = proxy.config.load_full();
        if seen != Some(snapshot.version) {
            seen = Some(snapshot.version);
            prefetch(&proxy, &snapshot);
            let wanted = snapshot.gateway.as_ref().map(|g| g.addresses(&default_ips)).unwrap_or_default();
            bound.retain(|addr, task| {
                let keep = wanted.contains(addr);
                if !keep {
                    // Established connections are tasks of their own and finish as they are.
                    task.abort();
                    tracing::info!(%addr, "gateway listener closed");
                }
                keep
            });
            for addr in wanted {
                if bound.contains_key(&addr) {
                    continue;
                }
                match crate::bind(addr) {
                    Ok(listener) => {
                        tracing::info!(%addr, "gateway listener open");
                        if let Ok(mut ports) = proxy.own_ports.write() {
                            ports.push(addr.port());
                        }
                        let task = tokio::spawn(accept_loop(listener, addr.port(), proxy.clone()));
                        bound.insert(addr, task.abort_handle());
                    }
                    // Tried again with the next configuration.
                    Err(e) => tracing::error!(%addr, error = %e, "cannot listen on a gateway port"),
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(RECHECK) => {}
            () = &mut drained => {
                bound.values().for_each(tokio::task::AbortHandle::abort);
                return;
            }
        }
    }
}

/// Asks the control plane for the virtual hosts and clusters the servers name that the proxy
/// does not hold yet, so that the first request to a host does not wait for its routes.
fn prefetch(proxy: &Arc<Proxy>, snapshot: &crate::config::Snapshot) {
    let Some(gateway) = &snapshot.gateway else { return };
    if proxy.on_demand.get().is_none() {
        return;
    }
    for (kind, name) in gateway.missing(&snapshot.clusters) {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let Some(on_demand) = proxy.on_demand.get() else { return };
            let held = || {
                let now = proxy.config.load();
                now.gateway.as_ref().is_some_and(|g| g.holds(kind, &name, &now.clusters))
            };
            on_demand.fetch(kind, &name, held).await;
        });
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, port: u16, proxy: Arc<Proxy>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(handle(stream, peer, port, proxy.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, port, "gateway accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One connection, counted while it lasts (so a drain waits for it).
async fn handle(stream: TcpStream, peer: SocketAddr, port: u16, proxy: Arc<Proxy>) {
    proxy.connections.fetch_add(1, Ordering::AcqRel);
    serve_connection(stream, peer, port, &proxy).await;
    proxy.connections.fetch_sub(1, Ordering::AcqRel);
}

async fn serve_connection(stream: TcpStream, peer: SocketAddr, port: u16, proxy: &Arc<Proxy>) {
    let _ = stream.set_nodelay(true);
    let Ok(local) = stream.local_addr() else { return };
    let snapshot = proxy.config.load_full();
    let Some(listener) = snapshot.gateway.as_ref().and_then(|g| g.listener(port)) else { return };
    let mut conn = Conn::new(Side::Outbound, peer, None, local);
    conn.gateway_port = Some(port);
    match listener.protocol {
        pb::GatewayProtocol::GatewayHttp => {
            let speaks = match detect::detect(&stream, snapshot.limits.header_read_timeout).await {
                Detected::Http2 => Speaks::Http2,
                _ => Speaks::Http1,
            };
            drop(snapshot);
            serve(stream, conn, proxy.clone(), speaks).await;
        }
        pb::GatewayProtocol::GatewayTcp => {
            let Some(server) = listener.servers.first() else { return };
            let clusters = server.tcp_clusters.clone();
            drop(snapshot);
            relay(stream, &clusters, proxy).await;
        }
        protocol @ (pb::GatewayProtocol::GatewayHttps | pb::GatewayProtocol::GatewayTls) => {
            let sni = detect::server_name(&stream, HANDSHAKE_TIMEOUT).await;
            let Some(server) = listener.server_for(sni.as_deref()) else {
                tracing::debug!(%peer, port, ?sni, "no gateway server for this server name; closed");
                return;
            };
            if server.passthrough {
                let Some(clusters) = server.sni_clusters(sni.as_deref()).map(<[_]>::to_vec) else {
                    tracing::debug!(%peer, port, ?sni, "no TLS route for this server name; closed");
                    return;
                };
                drop(snapshot);
                return relay(stream, &clusters, proxy).await;
            }
            if server.mesh {
                let tcp_clusters = server.tcp_clusters.clone();
                conn.gateway_server = Some(Arc::from(server.name.as_str()));
                drop(snapshot);
                return serve_mesh(stream, conn, protocol, &tcp_clusters, proxy).await;
            }
            let Some(config) = server.terminate.clone() else {
                tracing::debug!(%peer, port, server = %server.name, "gateway server without a usable certificate; closed");
                return;
            };
            let tcp_clusters = server.tcp_clusters.clone();
            conn.gateway_server = Some(Arc::from(server.name.as_str()));
            drop(snapshot);
            let accepted = tokio::time::timeout(
                HANDSHAKE_TIMEOUT,
                tokio_rustls::TlsAcceptor::from(config).accept(stream),
            )
            .await;
            let tls = match accepted {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, port, error = %e, "gateway TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            conn.sni = sni.map(Arc::from);
            if protocol == pb::GatewayProtocol::GatewayTls {
                return relay(tls, &tcp_clusters, proxy).await;
            }
            let speaks =
                if tls.get_ref().1.alpn_protocol() == Some(b"h2") { Speaks::Http2 } else { Speaks::Http1 };
            serve(MaybeTls::Server(Box::new(tls)), conn, proxy.clone(), speaks).await;
        }
    }
}

/// An ISTIO_MUTUAL server (an egress gateway, reached by sidecars): the mesh handshake a
/// sidecar's inbound port makes, so the client's verified identity is on the connection for
/// the gateway's policies and `x-forwarded-client-cert`; then HTTP (by the mesh ALPN the client
/// settled on) or, on a TLS port, the bytes to the server's clusters.
async fn serve_mesh(
    stream: TcpStream,
    mut conn: Conn,
    protocol: pb::GatewayProtocol,
    tcp_clusters: &[(String, u32)],
    proxy: &Arc<Proxy>,
) {
    let peer = conn.peer;
    let terminated = match inbound::terminate(stream, proxy.pools.mesh_tls()).await {
        Ok(terminated) => terminated,
        Err(why) => {
            proxy.metrics.inbound_refused(why);
            tracing::debug!(%peer, port = conn.local.port(), why, "gateway mesh mutual TLS refused");
            return;
        }
    };
    conn.tls_peer = terminated.peer;
    conn.sni = terminated.stream.get_ref().1.server_name().map(Arc::from);
    let stream = MaybeTls::Server(Box::new(terminated.stream));
    match (protocol, terminated.carried) {
        (pb::GatewayProtocol::GatewayTls, _) => relay(stream, tcp_clusters, proxy).await,
        (_, Carried::Http2) => serve(stream, conn, proxy.clone(), Speaks::Http2).await,
        // An HTTP port: a client that settled on no HTTP protocol still speaks HTTP/1 to it.
        (_, Carried::Http1 | Carried::Tcp) => serve(stream, conn, proxy.clone(), Speaks::Http1).await,
    }
}

/// TCP to one of the clusters (fetched on first use), through the sidecar's own relay.
async fn relay<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: S,
    clusters: &[(String, u32)],
    proxy: &Proxy,
) {
    if let Some(on_demand) = proxy.on_demand.get() {
        for (name, _) in clusters {
            let held = || proxy.config.load().clusters.contains_key(name);
            on_demand.fetch(ResourceType::Cluster, name, held).await;
        }
    }
    let snapshot = proxy.config.load_full();
    let Some(cluster) = super::pick(clusters, &snapshot.clusters) else { return };
    drop(snapshot);
    let service = cluster.name().to_owned();
    crate::connection::relay_to_cluster(stream, &cluster, service, proxy, None).await;
}
