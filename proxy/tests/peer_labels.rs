//! Istio's full metric labels on both reporters, over real sockets with real certificates: a
//! client proxy (workload `frontend`) calls a server proxy (workload `web-v2`) over mutual TLS
//! and the server delivers to its app. Each proxy runs on a loopback address of its own and
//! holds the mesh's workload table, so that each names the other: the client by the endpoint it
//! picked, the server by the identity its caller proved (every connection here comes from
//! 127.0.0.1, an address the table does not have). Callers outside the mesh are `unknown`.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::mesh::{ca, identity, mesh};
use common::{Client, Upstream, wait_until};
use http::{StatusCode, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use trellis_proxy::metrics::{Metrics, Workload};
use trellis_proxy::{Options, Running};

const CLIENT_ID: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
const SERVER_ID: &str = "spiffe://cluster.local/ns/shop/sa/web";
const CLIENT_IP: &str = "127.0.0.51";
const SERVER_IP: &str = "127.0.0.52";
/// A workload of the table without a sidecar.
const LEGACY_IP: &str = "127.0.0.53";
const SERVICE: &str = "web.shop.svc.cluster.local";

/// The table trellisd would send both proxies.
const WORKLOADS: &str = r#"
workloads:
  - { uid: shop/frontend-7d9f-x2x, addresses: [127.0.0.51], workload: frontend, namespace: shop, app: frontend,
      version: v1, canonicalService: frontend, canonicalRevision: v1, cluster: east,
      principal: "spiffe://cluster.local/ns/shop/sa/frontend", sidecar: true }
  - { uid: shop/web-v2-5c8d-abc, addresses: [127.0.0.52], workload: web-v2, namespace: shop, app: web,
      version: v2, canonicalService: web, canonicalRevision: v2, cluster: west,
      principal: "spiffe://cluster.local/ns/shop/sa/web", sidecar: true }
  - { uid: shop/legacy, addresses: [127.0.0.53], workload: legacy, namespace: shop, canonicalService: legacy,
      canonicalRevision: latest, cluster: west, principal: "spiffe://cluster.local/ns/shop/sa/legacy" }
"#;

/// The service, as both proxies know it; the client reaches it at the server proxy's inbound
/// port, over the mesh's mutual TLS.
fn service_config(app_port: u16, inbound: SocketAddr) -> String {
    format!(
        r#"
services:
  - name: {SERVICE}
    aliases: [web]
    ports: [{{ port: {app_port}, protocol: HTTP }}]
virtualHosts:
  - name: {SERVICE}:{app_port}
    routes: [{{ name: all, forward: {{ clusters: [{{ cluster: web }}] }} }}]
clusters:
  - {{ name: web, service: {SERVICE}, tls: {{ mode: AUTO }} }}
endpoints:
  - service: {SERVICE}
    serviceAccounts: ["{SERVER_ID}"]
    endpoints: [{{ address: {ip}, port: {port}, meshTls: true }}]
"#,
        ip = inbound.ip(),
        port = inbound.port()
    )
}

struct Proxy {
    running: Running,
    _dir: tempfile::TempDir,
}

impl Proxy {
    async fn metrics(&self) -> String {
        common::get_text(self.running.stats[0], "/stats/prometheus").await.1
    }

    /// The metrics once `ready` holds of them (a request is counted when its response ends,
    /// which the caller may see a moment before): waited for, within a bound.
    async fn metrics_once(&self, ready: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let metrics = self.metrics().await;
            if ready(&metrics) || tokio::time::Instant::now() > deadline {
                return metrics;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A proxy on `ip` (every listener), as `workload` with its pod's labels and cluster.
fn start(ip: &str, config: &str, id: &str, workload: &str, labels: &[(&str, &str)], cluster: &str) -> Proxy {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("config.yaml");
    std::fs::write(&config_path, config).unwrap();
    let local = SocketAddr::new(ip.parse().unwrap(), 0);
    let options = Options {
        outbound: vec![local],
        inbound: vec![local],
        admin: vec![local],
        readiness: vec![local],
        stats: vec![local],
        config_file: Some(config_path),
        xds: None,
        explicit_inbound: true,
        identity: identity(mesh(&CA.with(|c| c.clone()), "cluster.local", id)),
    };
    let who = Workload { name: workload.into(), namespace: "shop".into() };
    let pod_labels: BTreeMap<String, String> =
        labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
    let own = who.labels(&pod_labels, cluster);
    let running = trellis_proxy::start(options, Metrics::with_labels(who, own), None).unwrap();
    Proxy { running, _dir: dir }
}

thread_local! {
    static CA: std::sync::Arc<trellis_identity::ca::CertificateAuthority> = std::sync::Arc::new(ca());
}

/// The server proxy (PERMISSIVE: mutual TLS and plaintext callers) in front of its app, and a
/// client proxy that calls it.
struct Mesh {
    app: Upstream,
    server: Proxy,
    client: Proxy,
}

async fn mesh_of_two() -> Mesh {
    // Explicit mode on a pod's own loopback address: the app listens there.
    let app = Upstream::start_on("web", &format!("{SERVER_IP}:0")).await;
    // The server learns its inbound port only once it runs: start it, then give it its config.
    let server = start(
        SERVER_IP,
        "inboundTls: { mode: PERMISSIVE }\n",
        SERVER_ID,
        "web-v2",
        &[("app", "web"), ("version", "v2")],
        "west",
    );
    let inbound = server.running.inbound[0];
    let server_config = format!(
        "inboundTls: {{ mode: PERMISSIVE }}\n{}{WORKLOADS}",
        service_config(app.addr.port(), inbound)
    );
    reload(&server, &server_config).await;
    let client = start(
        CLIENT_IP,
        &format!("{}{WORKLOADS}", service_config(app.addr.port(), inbound)),
        CLIENT_ID,
        "frontend",
        &[("app", "frontend"), ("version", "v1")],
        "east",
    );
    Mesh { app, server, client }
}

async fn reload(proxy: &Proxy, config: &str) {
    let before = proxy.running.proxy.config.load().version;
    let path = proxy._dir.path().join("config.yaml");
    std::fs::write(&path, config).unwrap();
    wait_until("the new configuration is in force", || proxy.running.proxy.config.load().version > before)
        .await;
}

/// The samples of `metric` whose labels include `having`, as label maps with their values.
fn samples(text: &str, metric: &str, having: &[(&str, &str)]) -> Vec<(Vec<(String, String)>, String)> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(metric)?.strip_prefix('{')?;
            let (labels, value) = rest.rsplit_once("} ")?;
            let pairs: Vec<(String, String)> = labels
                .split("\",")
                .map(|kv| {
                    let (k, v) = kv.split_once("=\"").unwrap_or((kv, ""));
                    (k.to_owned(), v.trim_end_matches('"').to_owned())
                })
                .collect();
            let has = |k: &str, v: &str| pairs.iter().any(|(pk, pv)| pk == k && pv == v);
            having.iter().all(|(k, v)| has(k, v)).then(|| (pairs, value.to_owned()))
        })
        .collect()
}

/// Istio's labels, in Istio's order, for one request between the two workloads.
fn expected(reporter: &str, tail: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut labels = vec![
        ("reporter", reporter),
        ("source_workload", "frontend"),
        ("source_canonical_service", "frontend"),
        ("source_canonical_revision", "v1"),
        ("source_workload_namespace", "shop"),
        ("source_principal", CLIENT_ID),
        ("source_app", "frontend"),
        ("source_version", "v1"),
        ("source_cluster", "east"),
        ("destination_workload", "web-v2"),
        ("destination_workload_namespace", "shop"),
        ("destination_principal", SERVER_ID),
        ("destination_app", "web"),
        ("destination_version", "v2"),
        ("destination_service", SERVICE),
        ("destination_canonical_service", "web"),
        ("destination_canonical_revision", "v2"),
        ("destination_service_name", "web"),
        ("destination_service_namespace", "shop"),
        ("destination_cluster", "west"),
    ];
    labels.extend_from_slice(tail);
    labels.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

#[tokio::test]
async fn both_reporters_name_both_workloads_over_mutual_tls() {
    let mesh = mesh_of_two().await;
    let mut client = Client::connect(mesh.client.running.outbound[0], Version::HTTP_11).await;
    for _ in 0..3 {
        let answer = client.get(&format!("web:{}", mesh.app.addr.port()), "/").await;
        assert_eq!((answer.status, answer.text()), (StatusCode::OK, "web".to_owned()));
    }
    let http = [
        ("request_protocol", "http"),
        ("response_code", "200"),
        ("grpc_response_status", ""),
        ("response_flags", "-"),
        ("connection_security_policy", "mutual_tls"),
    ];
    for (side, proxy, reporter) in
        [("client", &mesh.client, "source"), ("server", &mesh.server, "destination")]
    {
        let metrics = proxy
            .metrics_once(|m| {
                samples(m, "istio_requests_total", &[("reporter", reporter)]).iter().any(|(_, v)| v == "3")
            })
            .await;
        let found = samples(&metrics, "istio_requests_total", &[("reporter", reporter)]);
        assert_eq!(found, [(expected(reporter, &http), "3".to_owned())], "{side}:\n{metrics}");
        // The histograms carry the same labels.
        for histogram in [
            "istio_request_duration_milliseconds_count",
            "istio_request_bytes_count",
            "istio_response_bytes_count",
        ] {
            let found = samples(&metrics, histogram, &[("reporter", reporter)]);
            assert_eq!(found, [(expected(reporter, &http), "3".to_owned())], "{side} {histogram}");
        }
    }
}

/// Plaintext straight to the server's inbound port from `source` (bound there), as a caller
/// without a sidecar sends it.
async fn plaintext_from(source: &str, inbound: SocketAddr, authority: &str) -> String {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source.parse::<IpAddr>().unwrap(), 0)).unwrap();
    let mut stream = socket.connect(inbound).await.unwrap();
    let request = format!("GET / HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await.unwrap().unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn callers_outside_the_mesh_are_unknown_and_a_sidecar_is_named_by_its_address() {
    let mesh = mesh_of_two().await;
    let inbound = mesh.server.running.inbound[0];
    let authority = format!("web:{}", mesh.app.addr.port());
    // From an address the table does not have, and from a workload there without a sidecar.
    for source in ["127.0.0.1", LEGACY_IP] {
        let answer = plaintext_from(source, inbound, &authority).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    // From frontend's address, plaintext: the table names it (it has a sidecar), but no
    // principal was proven.
    let answer = plaintext_from(CLIENT_IP, inbound, &authority).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let metrics = mesh
        .server
        .metrics_once(|m| {
            let count = |w| samples(m, "istio_requests_total", &[("source_workload", w)]);
            count("unknown").iter().any(|(_, v)| v == "2") && !count("frontend").is_empty()
        })
        .await;
    let unknown_source: Vec<(String, String)> = [
        ("reporter", "destination"),
        ("source_workload", "unknown"),
        ("source_canonical_service", "unknown"),
        ("source_canonical_revision", "latest"),
        ("source_workload_namespace", "unknown"),
        ("source_principal", "unknown"),
        ("source_app", "unknown"),
        ("source_version", "unknown"),
        ("source_cluster", "unknown"),
        ("destination_workload", "web-v2"),
        ("destination_workload_namespace", "shop"),
        ("destination_principal", "unknown"),
        ("destination_app", "web"),
        ("destination_version", "v2"),
        ("destination_service", SERVICE),
        ("destination_canonical_service", "web"),
        ("destination_canonical_revision", "v2"),
        ("destination_service_name", "web"),
        ("destination_service_namespace", "shop"),
        ("destination_cluster", "west"),
        ("request_protocol", "http"),
        ("response_code", "200"),
        ("grpc_response_status", ""),
        ("response_flags", "-"),
        ("connection_security_policy", "none"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let outside = samples(&metrics, "istio_requests_total", &[("source_workload", "unknown")]);
    assert_eq!(outside, [(unknown_source, "2".to_owned())], "{metrics}");

    let named = samples(&metrics, "istio_requests_total", &[("source_workload", "frontend")]);
    assert_eq!(named.len(), 1, "{metrics}");
    let labels: BTreeMap<_, _> = named[0].0.iter().cloned().collect();
    for (k, v) in [
        ("source_app", "frontend"),
        ("source_version", "v1"),
        ("source_cluster", "east"),
        ("source_canonical_revision", "v1"),
        ("source_principal", "unknown"),
        ("connection_security_policy", "none"),
    ] {
        assert_eq!(labels[k], v, "{k}: {metrics}");
    }
}

#[tokio::test]
async fn an_unknown_authority_is_counted_under_the_workloads_canonical_service() {
    let mesh = mesh_of_two().await;
    let inbound = mesh.server.running.inbound[0];
    // The app answers whatever the Host says; the label must not repeat it.
    let answer =
        plaintext_from("127.0.0.1", inbound, &format!("made-up-{}:{}", 42, mesh.app.addr.port())).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let metrics = mesh
        .server
        .metrics_once(|m| !samples(m, "istio_requests_total", &[("reporter", "destination")]).is_empty())
        .await;
    assert!(!metrics.contains("made-up"), "{metrics}");
    let found = samples(
        &metrics,
        "istio_requests_total",
        &[("destination_service", "web"), ("destination_service_name", "web")],
    );
    assert_eq!(found.len(), 1, "{metrics}");
}
