//! Tracing end to end, on loopback: `trellisd` reads a mesh config whose default tracing
//! provider is a Zipkin extension provider (a ServiceEntry's endpoint: a collector written
//! here), a proxy takes its config over delta xDS, and a request through it yields a CLIENT
//! span at the collector with the proxy's identity from its xDS node and the mesh's ids.
//! A default provider that names nothing is reported by trellisd with its field.

mod ca_support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use ca_support::{DEADLINE, Trellisd, eventually, xds_proxy};
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use trellis_proxy::metrics::{Metrics, Workload};
use trellis_xds::types::ProxyNode;

const HOST: &str = "web.shop.svc.cluster.local";
const ZIPKIN: &str = "zipkin.istio-system.svc.cluster.local";

fn registry(app: u16, collector: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: web, namespace: shop }}
spec:
  hosts: [{HOST}]
  addresses: [240.240.0.30]
  ports: [{{ number: 80, name: http, protocol: HTTP }}]
  resolution: STATIC
  location: MESH_INTERNAL
  endpoints: [{{ address: 127.0.0.1, ports: {{ http: {app} }} }}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: zipkin, namespace: istio-system }}
spec:
  hosts: [{ZIPKIN}]
  ports: [{{ number: 9411, name: http, protocol: HTTP }}]
  resolution: STATIC
  location: MESH_INTERNAL
  endpoints: [{{ address: 127.0.0.1, ports: {{ http: {collector} }} }}]
"#
    )
}

const MESH: &str = r#"
trustDomain: cluster.local
extensionProviders:
- name: zipkin
  zipkin: { service: zipkin.istio-system.svc.cluster.local, port: 9411 }
defaultProviders: { tracing: [zipkin] }
defaultConfig:
  tracing:
    sampling: 100
    customTags:
      env: { literal: { value: e2e } }
"#;

async fn app() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Router::new().fallback(|| async { "web" });
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// A Zipkin collector keeping every span it is sent.
async fn collector() -> (SocketAddr, Arc<Mutex<Vec<Value>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let spans: Arc<Mutex<Vec<Value>>> = Arc::default();
    let store = spans.clone();
    let router = Router::new().route(
        "/api/v2/spans",
        post(move |body: Bytes| {
            let store = store.clone();
            async move {
                let list: Vec<Value> = serde_json::from_slice(&body).unwrap_or_default();
                store.lock().unwrap().extend(list);
                StatusCode::ACCEPTED
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, router).await });
    (addr, spans)
}

fn start_proxy(xds: SocketAddr) -> trellis_proxy::Running {
    let labels = [
        ("app".to_owned(), "frontend".to_owned()),
        ("service.istio.io/canonical-revision".to_owned(), "v3".to_owned()),
    ];
    let node = ProxyNode {
        id: "sidecar~10.20.0.7~frontend-7d9.shop~shop.svc.cluster.local".into(),
        namespace: "shop".into(),
        workload: "frontend".into(),
        labels: labels.into(),
        ..Default::default()
    };
    let metrics = Metrics::new(Workload { name: "frontend".into(), namespace: "shop".into() });
    xds_proxy(xds, "127.0.0.1", node, false, metrics)
}

async fn ask(proxy: SocketAddr) -> StatusCode {
    let stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let request = http::Request::get("/items").header("host", HOST).body(Empty::<Bytes>::new()).unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let _ = response.into_body().collect().await;
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_configs_default_tracing_provider_receives_the_proxys_spans() {
    let (app, (collector, spans)) = (app().await, collector().await);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir(&config).unwrap();
    std::fs::write(config.join("registry.yaml"), registry(app.port(), collector.port())).unwrap();
    let mesh = dir.path().join("mesh.yaml");
    std::fs::write(&mesh, MESH).unwrap();
    let trellisd = Trellisd::start_with(
        &["--config-dir".into(), config.clone().into(), "--mesh-config".into(), mesh.into()],
        &[],
    );
    let proxy = start_proxy(trellisd.xds);
    let ready = proxy.proxy.clone();
    eventually("the proxy gets ready", async || ready.ready.load(std::sync::atomic::Ordering::Acquire)).await;
    let outbound = proxy.outbound[0];
    eventually("the service answers", async || ask(outbound).await == StatusCode::OK).await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let span = loop {
        let found = spans.lock().unwrap().iter().find(|s| s["kind"] == "CLIENT").cloned();
        if let Some(span) = found {
            break span;
        }
        assert!(tokio::time::Instant::now() < deadline, "no CLIENT span reached the collector");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(span["name"], format!("{HOST}:80/*"));
    assert_eq!(span["localEndpoint"]["serviceName"], "frontend.shop");
    let tags = &span["tags"];
    assert_eq!(tags["node_id"], "sidecar~10.20.0.7~frontend-7d9.shop~shop.svc.cluster.local");
    assert_eq!(tags["istio.namespace"], "shop");
    assert_eq!(tags["istio.canonical_service"], "frontend");
    assert_eq!(tags["istio.canonical_revision"], "v3");
    assert_eq!(tags["istio.mesh_id"], "cluster.local");
    assert_eq!(tags["upstream_cluster"], format!("outbound|80||{HOST}"));
    assert_eq!(tags["http.url"], format!("http://{HOST}/items"));
    assert_eq!(tags["http.status_code"], "200");
    assert_eq!(tags["env"], "e2e");
    assert_eq!(span["traceId"].as_str().map(str::len), Some(32));
}

#[tokio::test]
async fn trellisd_names_a_default_tracing_provider_that_does_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = dir.path().join("mesh.yaml");
    let text = "extensionProviders: [{ name: zipkin, zipkin: { service: zipkin.istio-system, port: 9411 } }]\n\
                defaultProviders: { tracing: [jaeger] }\ndefaultConfig: { tracing: { sampling: 101 } }\n";
    std::fs::write(&mesh, text).unwrap();
    let trellisd = Trellisd::start(&["--mesh-config".into(), mesh.into_os_string()]);
    eventually("the warnings are logged", async || {
        let logs = trellisd.logs();
        logs.contains("defaultProviders.tracing[0]: \"jaeger\" is not in extensionProviders")
            && logs.contains("defaultConfig.tracing.sampling: 101 is out of range 0-100")
    })
    .await;
}
