//! The Telemetry API end to end, on loopback in explicit mode (no root): `trellisd` reads a mesh
//! config with an access log and a Telemetry for one workload from a config directory; that
//! workload's proxy takes them over delta xDS and writes no access log, counts no requests and
//! has a label removed from its durations, while a proxy the Telemetry does not select logs and
//! counts as the mesh config says.

mod ca_support;

use std::net::SocketAddr;

use axum::Router;
use ca_support::{Trellisd, eventually_sync, xds_proxy};
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use trellis_proxy::metrics::{Metrics, Workload};
use trellis_xds::types::ProxyNode;

/// Istio's documented shapes: access logging off for one workload, a metric off and a label
/// removed for it (server side: its proxy's inbound).
const TELEMETRY: &str = r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata:
  name: web-quiet
  namespace: shop
spec:
  selector:
    matchLabels:
      app: web
  accessLogging:
  - disabled: true
  tracing:
  - providers:
    - name: zipkin
    randomSamplingPercentage: 0
    customTags:
      team:
        literal:
          value: web-team
  metrics:
  - providers:
    - name: prometheus
    overrides:
    - match:
        metric: REQUEST_COUNT
        mode: SERVER
      disabled: true
    - match:
        metric: REQUEST_DURATION
      tagOverrides:
        destination_app:
          operation: REMOVE
"#;

fn start_proxy(xds: SocketAddr, name: &str) -> trellis_proxy::Running {
    let labels = [("app".to_owned(), name.to_owned())].into();
    let workload = Workload { name: name.into(), namespace: "shop".into() };
    let local_labels = workload.labels(&labels, "Kubernetes");
    let node = ProxyNode {
        id: format!("sidecar~127.0.0.1~{name}.shop~shop.svc.cluster.local"),
        namespace: "shop".into(),
        workload: name.into(),
        labels,
        ..Default::default()
    };
    // Inbound without a redirect: the authority's port names the app.
    xds_proxy(xds, "127.0.0.1", node, true, Metrics::with_labels(workload, local_labels))
}

/// `n` GETs to the proxy's inbound port for the app, as `host`; their statuses.
async fn get(proxy: SocketAddr, app: SocketAddr, host: &str, n: usize) -> Vec<u16> {
    let stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut out = Vec::new();
    for _ in 0..n {
        let request = http::Request::get("/")
            .header("host", format!("{host}:{}", app.port()))
            .body(Empty::<Bytes>::new())
            .unwrap();
        sender.ready().await.unwrap();
        out.push(sender.send_request(request).await.unwrap().status().as_u16());
    }
    out
}

/// The series of `family` on the page, as their lines.
fn series<'a>(page: &'a str, family: &str) -> Vec<&'a str> {
    page.lines().filter(|l| l.starts_with(family) && l.contains("reporter=\"destination\"")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_telemetry_turns_off_one_workloads_access_log_and_request_count() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, Router::new().fallback(|| async { "app" })).await });
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir(&config).unwrap();
    std::fs::write(config.join("telemetry.yaml"), TELEMETRY).unwrap();
    let log = dir.path().join("access.log");
    let mesh = dir.path().join("mesh.yaml");
    // The authority tells the two proxies' lines apart in the one file. The tracing provider is
    // the mesh's but not its default: only the Telemetry picks it.
    let mesh_text = format!(
        "accessLogFile: {}\naccessLogFormat: \"%REQ(:AUTHORITY)%\\n\"\nextensionProviders:\n\
         - name: zipkin\n  zipkin: {{service: zipkin.istio-system.svc.cluster.local, port: 9411}}\n",
        log.display()
    );
    std::fs::write(&mesh, mesh_text).unwrap();
    let trellisd = Trellisd::start_with(
        &["--config-dir".into(), config.into(), "--mesh-config".into(), mesh.into()],
        &[],
    );
    let web = start_proxy(trellisd.xds, "web");
    let reviews = start_proxy(trellisd.xds, "reviews");
    eventually_sync("web has its Telemetry", || web.proxy.config.load().source.metrics_overrides.is_some())
        .await;
    eventually_sync("reviews has the mesh's access log", || {
        !reviews.proxy.config.load().source.access_logs.is_empty()
    })
    .await;
    assert!(web.proxy.config.load().source.access_logs.is_empty(), "access logging disabled for web");
    assert!(reviews.proxy.config.load().source.metrics_overrides.is_none(), "reviews is not selected");
    // Tracing: on for web with the Telemetry's provider, sampling (0 %: nothing is exported
    // here) and tags; off for reviews, whose mesh names no default provider.
    let web_tracing = web.proxy.config.load().source.tracing.clone().expect("web traces");
    assert_eq!(web_tracing.provider.as_ref().map(|p| p.name.as_str()), Some("zipkin"));
    assert_eq!(web_tracing.sampling_percent, 0.0);
    assert_eq!(web_tracing.custom_tags[0].tag, "team");
    assert!(reviews.proxy.config.load().source.tracing.is_none());

    assert_eq!(get(web.inbound[0], app, "web.shop", 3).await, [200; 3]);
    assert_eq!(get(reviews.inbound[0], app, "reviews.shop", 3).await, [200; 3]);

    // Access logs: reviews' three lines arrive (written off the request path); web has none.
    let lines = || std::fs::read_to_string(&log).unwrap_or_default();
    eventually_sync("reviews' access log lines", || lines().matches("reviews.shop").count() == 3).await;
    assert!(!lines().contains("web.shop"), "web writes no access log: {}", lines());

    // Metrics: web counts no requests (REQUEST_COUNT off on its server side) and its durations
    // carry no destination_app; reviews has both as Istio's.
    let web_page = web.proxy.metrics.render();
    assert!(series(&web_page, "istio_requests_total").is_empty(), "{web_page}");
    let durations = series(&web_page, "istio_request_duration_milliseconds_count");
    assert_eq!(durations.len(), 1, "{web_page}");
    assert!(durations[0].contains("destination_app=\"\""), "removed: {}", durations[0]);
    assert!(durations[0].ends_with(" 3"), "{}", durations[0]);
    let reviews_page = reviews.proxy.metrics.render();
    let counts = series(&reviews_page, "istio_requests_total");
    assert_eq!(counts.len(), 1, "{reviews_page}");
    assert!(counts[0].ends_with(" 3"), "{}", counts[0]);
    let durations = series(&reviews_page, "istio_request_duration_milliseconds_count");
    assert!(durations[0].contains("destination_app=\"reviews\""), "{}", durations[0]);
}
