//! Access logs end to end, on loopback: `trellisd` reads a mesh config with `accessLogFile`, a
//! proxy takes its config over delta xDS, and a request through it is a line in the file — in
//! the mesh's JSON format, or, when `accessLogFormat` names an operator the proxy does not fill,
//! in Istio's default TEXT format, with trellisd naming the field.

mod ca_support;

use std::net::SocketAddr;
use std::path::Path;

use axum::Router;
use ca_support::{Trellisd, eventually, xds_proxy};
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use trellis_proxy::metrics::{Metrics, Workload};
use trellis_xds::types::ProxyNode;

const HOST: &str = "web.shop.svc.cluster.local";

fn registry(app: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: web, namespace: shop }}
spec:
  hosts: [{HOST}]
  addresses: [240.240.0.31]
  ports: [{{ number: 80, name: http, protocol: HTTP }}]
  resolution: STATIC
  location: MESH_INTERNAL
  endpoints: [{{ address: 127.0.0.1, ports: {{ http: {app} }} }}]
"#
    )
}

async fn app() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Router::new().fallback(|| async { "web" });
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

fn start_proxy(xds: SocketAddr) -> trellis_proxy::Running {
    let node = ProxyNode {
        id: "sidecar~10.20.0.8~frontend-1.shop~shop.svc.cluster.local".into(),
        namespace: "shop".into(),
        workload: "frontend".into(),
        labels: [("app".to_owned(), "frontend".to_owned())].into(),
        ..Default::default()
    };
    let metrics = Metrics::new(Workload { name: "frontend".into(), namespace: "shop".into() });
    xds_proxy(xds, "127.0.0.1", node, false, metrics)
}

async fn ask(proxy: SocketAddr) -> StatusCode {
    let stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let request = http::Request::get("/items?x=1")
        .header("host", HOST)
        .header("user-agent", "e2e")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let _ = response.into_body().collect().await;
    status
}

/// trellisd with `mesh` and the registry, a proxy on its xDS, and one answered request; the
/// first line of the access log and trellisd.
async fn one_line(mesh: &str, dir: &Path) -> (String, Trellisd) {
    let app = app().await;
    let config = dir.join("config");
    std::fs::create_dir(&config).unwrap();
    std::fs::write(config.join("registry.yaml"), registry(app.port())).unwrap();
    let mesh_path = dir.join("mesh.yaml");
    std::fs::write(&mesh_path, mesh).unwrap();
    let trellisd = Trellisd::start_with(
        &["--config-dir".into(), config.into(), "--mesh-config".into(), mesh_path.into()],
        &[],
    );
    let proxy = start_proxy(trellisd.xds);
    let ready = proxy.proxy.clone();
    eventually("the proxy gets ready", async || ready.ready.load(std::sync::atomic::Ordering::Acquire)).await;
    let outbound = proxy.outbound[0];
    eventually("the service answers", async || ask(outbound).await == StatusCode::OK).await;
    let log = dir.join("access.log");
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    eventually("a line is written", async || read().lines().any(|l| l.contains("/items?x=1"))).await;
    let line = read().lines().find(|l| l.contains("/items?x=1")).unwrap_or_default().to_owned();
    (line, trellisd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_configs_json_access_log_reaches_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let mesh = format!(
        "accessLogFile: {:?}\naccessLogEncoding: JSON\naccessLogFormat: '{{\"code\": \"%RESPONSE_CODE%\", \"path\": \"%REQ(:PATH)%\", \"cluster\": \"%UPSTREAM_CLUSTER%\", \"ua\": \"%REQ(USER-AGENT)%\"}}'\n",
        log.display().to_string()
    );
    let (line, _trellisd) = one_line(&mesh, dir.path()).await;
    let json: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(
        json,
        serde_json::json!({"code": 200, "path": "/items?x=1", "cluster": format!("outbound|80||{HOST}"), "ua": "e2e"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_the_proxy_cannot_fill_is_replaced_by_istios_default_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let mesh = format!(
        "accessLogFile: {:?}\naccessLogFormat: '%DURATION% %FILTER_STATE(x)%'\n",
        log.display().to_string()
    );
    let (line, trellisd) = one_line(&mesh, dir.path()).await;
    // Istio's default: [time] "GET /items?x=1 HTTP/1.1" 200 - via_upstream ...
    assert!(line.starts_with('['), "{line}");
    assert!(line.contains("] \"GET /items?x=1 HTTP/1.1\" 200 - via_upstream - \"-\" 0 3 "), "{line}");
    assert!(line.contains("\"e2e\"") && line.contains(&format!("outbound|80||{HOST}")), "{line}");
    eventually("trellisd names the field", async || {
        trellisd.logs().contains("accessLogFormat") && trellisd.logs().contains("FILTER_STATE")
    })
    .await;
}
