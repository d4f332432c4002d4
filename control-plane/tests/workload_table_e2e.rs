//! The workload table end to end, on loopback (no root): `trellisd` reads WorkloadEntries from a
//! config directory; a proxy gets the workloads behind the endpoints it holds, and asks for a
//! caller it does not know. A proxy's call to a ServiceEntry's endpoint is counted with the
//! endpoint's workload, app, version and canonical names; the server side names its caller on
//! the first request; neither proxy holds more of the table than it used; an edit of an entry's
//! labels reaches the table.

mod ca_support;

use std::net::SocketAddr;

use axum::Router;
use ca_support::{Trellisd, eventually_sync, write_atomically, xds_proxy};
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use trellis_proxy::metrics::{Metrics, Workload};
use trellis_xds::types::ProxyNode;

fn config(app_port: u16, version: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: web, namespace: shop }}
spec:
  hosts: [web.shop.internal]
  addresses: [240.240.0.20]
  ports: [{{ number: 80, name: http, protocol: HTTP }}]
  resolution: STATIC
  location: MESH_INTERNAL
  workloadSelector: {{ labels: {{ app: web }} }}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{ name: web-vm-1, namespace: shop }}
spec:
  address: 127.0.0.71
  serviceAccount: web
  ports: {{ http: {app_port} }}
  labels: {{ app: web, version: {version}, service.istio.io/workload-name: web-vms }}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{ name: frontend, namespace: shop }}
spec:
  address: 127.0.0.72
  serviceAccount: frontend
  labels: {{ app: frontend, security.istio.io/tlsMode: istio }}
"#
    )
}

fn start_proxy(xds: SocketAddr, ip: &str, name: &str) -> trellis_proxy::Running {
    let node = ProxyNode {
        id: format!("sidecar~{ip}~{name}.shop~shop.svc.cluster.local"),
        namespace: "shop".into(),
        workload: name.into(),
        labels: [("app".to_owned(), name.to_owned())].into(),
        ..Default::default()
    };
    let metrics = Metrics::new(Workload { name: name.into(), namespace: "shop".into() });
    xds_proxy(xds, ip, node, true, metrics)
}

/// A GET for the web service through `proxy`, from `source`.
async fn get(proxy: SocketAddr, source: &str, host: &str) -> u16 {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source.parse().unwrap(), 0)).unwrap();
    let stream = socket.connect(proxy).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let request = http::Request::get("/").header("host", host).body(Empty::<Bytes>::new()).unwrap();
    sender.send_request(request).await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trellisds_workload_table_names_the_endpoint_a_proxy_calls() {
    let listener = tokio::net::TcpListener::bind("127.0.0.71:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, Router::new().fallback(|| async { "web" })).await });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("web.yaml");
    std::fs::write(&file, config(app.port(), "v1")).unwrap();
    let trellisd = Trellisd::start_with(&["--config-dir".into(), dir.path().into()], &[]);
    let frontend = start_proxy(trellisd.xds, "127.0.0.72", "frontend");
    let table = |proxy: &trellis_proxy::Running| proxy.proxy.config.load().source.workloads.clone();
    eventually_sync("the proxy is ready", || frontend.proxy.ready.load(std::sync::atomic::Ordering::Acquire))
        .await;
    assert!(table(&frontend).is_empty(), "no workload before one is needed: {:?}", table(&frontend));

    assert_eq!(get(frontend.outbound[0], "127.0.0.72", "web.shop.internal").await, 200);
    let workloads = table(&frontend);
    assert_eq!(workloads.len(), 1, "only the endpoint's workload: {workloads:?}");
    let vm = &workloads[0];
    assert_eq!(vm.uid, "shop/web-vm-1");
    assert_eq!((vm.workload.as_str(), vm.app.as_str(), vm.version.as_str()), ("web-vms", "web", "v1"));
    assert_eq!((vm.canonical_service.as_str(), vm.canonical_revision.as_str()), ("web", "v1"));
    assert_eq!((vm.principal.as_str(), vm.sidecar), ("spiffe://cluster.local/ns/shop/sa/web", false));
    assert_eq!(vm.addresses, ["127.0.0.71"]);
    let metrics = frontend.proxy.metrics.render();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("istio_requests_total{reporter=\"source\""))
        .unwrap_or_else(|| panic!("{metrics}"));
    for label in [
        "source_workload=\"frontend\"",
        "destination_workload=\"web-vms\"",
        "destination_workload_namespace=\"shop\"",
        "destination_app=\"web\"",
        "destination_version=\"v1\"",
        "destination_service=\"web.shop.internal\"",
        "destination_canonical_service=\"web\"",
        "destination_canonical_revision=\"v1\"",
        "destination_service_name=\"web.shop.internal\"",
        "destination_service_namespace=\"shop\"",
        "destination_cluster=\"Kubernetes\"",
    ] {
        assert!(line.contains(label), "{label} missing: {line}");
    }

    // The server side: a sidecar for web, called from frontend's address (plaintext; frontend
    // has a sidecar, so its address names it). The first request is already counted with the
    // caller, which the proxy asked for as the connection opened.
    let web = start_proxy(trellisd.xds, "127.0.0.71", "web");
    eventually_sync("web's proxy is ready", || web.proxy.ready.load(std::sync::atomic::Ordering::Acquire))
        .await;
    let host = format!("127.0.0.71:{}", app.port());
    assert_eq!(get(web.inbound[0], "127.0.0.72", &host).await, 200);
    let metrics = web.proxy.metrics.render();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("istio_requests_total{reporter=\"destination\""))
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(
        line.contains("source_workload=\"frontend\"") && line.contains("source_app=\"frontend\""),
        "{line}"
    );
    assert!(line.ends_with(" 1"), "{line}");
    let held: Vec<String> = table(&web).iter().map(|w| w.uid.clone()).collect();
    assert_eq!(held, ["shop/frontend"], "only the caller");

    // An edit reaches the table (the WorkloadEntry's version).
    write_atomically(&file, &config(app.port(), "v2"));
    eventually_sync("the table follows the edit", || {
        table(&frontend).iter().any(|w| w.uid == "shop/web-vm-1" && w.version == "v2")
    })
    .await;
}
