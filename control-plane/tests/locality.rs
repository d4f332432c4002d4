//! Locality-aware balancing end to end, on loopback: `trellisd` reads a config directory with
//! a service whose WorkloadEntries run in two regions, two proxies in those regions (each says
//! where it runs with its `istio-locality` label) take their config over delta xDS, and each
//! keeps its traffic at home until outlier detection ejects the local endpoint.

mod ca_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use ca_support::Trellisd;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use trellis_proxy::metrics::{Metrics, Workload};
use trellis_proxy::xds::XdsOptions;
use trellis_xds::types::ProxyNode;

const HOST: &str = "api.shop.svc.cluster.local";

fn config(home: u16, away: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: api, namespace: shop }}
spec:
  hosts: [{HOST}]
  addresses: [240.240.0.20]
  ports: [{{ number: 80, name: http, protocol: HTTP }}]
  resolution: STATIC
  location: MESH_INTERNAL
  workloadSelector: {{ labels: {{ app: api }} }}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{ name: api-us, namespace: shop }}
spec: {{ address: 127.0.0.1, ports: {{ http: {home} }}, labels: {{ app: api }}, locality: us-east/us-east-1a }}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{ name: api-eu, namespace: shop }}
spec: {{ address: 127.0.0.1, ports: {{ http: {away} }}, labels: {{ app: api, istio-locality: eu-west.eu-west-1b }} }}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{ name: api, namespace: shop }}
spec:
  host: {HOST}
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
      localityLbSetting: {{ failover: [{{ from: us-east, to: eu-west }}, {{ from: eu-west, to: us-east }}] }}
    outlierDetection: {{ consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 100 }}
"#
    )
}

/// An app answering its name; 500 while `failing` is set.
async fn app(name: &'static str, failing: Arc<AtomicBool>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Router::new().fallback(move || {
        let failing = failing.clone();
        async move {
            let status = if failing.load(Ordering::SeqCst) {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::OK
            };
            (status, name)
        }
    });
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// A proxy in namespace `front` whose pod labels say where it runs.
fn start_proxy(xds: SocketAddr, name: &str, locality_label: &str) -> trellis_proxy::Running {
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let labels =
        [("app".to_owned(), name.to_owned()), ("istio-locality".to_owned(), locality_label.to_owned())];
    let options = trellis_proxy::Options {
        outbound: vec![local],
        inbound: vec![local],
        admin: vec![local],
        readiness: vec![local],
        stats: vec![local],
        config_file: None,
        xds: Some(XdsOptions {
            address: format!("http://{xds}"),
            node: ProxyNode {
                id: format!("sidecar~10.20.0.1~{name}.front~front.svc.cluster.local"),
                namespace: "front".into(),
                workload: name.into(),
                labels: labels.into(),
                ..Default::default()
            },
            secure: None,
        }),
        explicit_inbound: false,
        identity: None,
    };
    let workload = Workload { name: name.into(), namespace: "front".into() };
    trellis_proxy::start(options, Metrics::new(workload), None).unwrap()
}

/// GETs the service through a proxy's outbound port; the answering app's name, or the status.
async fn ask(proxy: SocketAddr) -> String {
    let stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let request = http::Request::get("/").header("host", HOST).body(Empty::<Bytes>::new()).unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    if status == StatusCode::OK { String::from_utf8_lossy(&body).into_owned() } else { status.to_string() }
}

/// Asks until the answer is `want` (bounded); the answers seen on the way.
async fn ask_until(proxy: SocketAddr, want: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    loop {
        let answer = ask(proxy).await;
        if answer == want {
            return seen;
        }
        seen.push(answer);
        assert!(Instant::now() < deadline, "never answered {want}: {seen:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_proxy_keeps_its_traffic_in_its_region_until_the_local_endpoint_is_ejected() {
    let (us_failing, eu_failing) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let us = app("api-us", us_failing.clone()).await;
    let eu = app("api-eu", eu_failing.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("api.yaml"), config(us.port(), eu.port())).unwrap();
    let trellisd = Trellisd::start_with(&["--config-dir".into(), dir.path().into()], &[]);
    let east = start_proxy(trellisd.xds, "east-client", "us-east.us-east-1a");
    let west = start_proxy(trellisd.xds, "west-client", "eu-west.eu-west-1b");

    // Once configured, each proxy sends everything to its own region (round robin would
    // alternate).
    ask_until(east.outbound[0], "api-us").await;
    ask_until(west.outbound[0], "api-eu").await;
    for _ in 0..10 {
        assert_eq!(ask(east.outbound[0]).await, "api-us");
        assert_eq!(ask(west.outbound[0]).await, "api-eu");
    }
    let place = east.proxy.config.load().place.clone();
    assert_eq!(place.locality.to_string(), "us-east/us-east-1a", "trellisd sent the proxy its locality");

    // The east endpoint fails: two 500s eject it, and the east proxy fails over to eu-west.
    us_failing.store(true, Ordering::SeqCst);
    let seen = ask_until(east.outbound[0], "api-eu").await;
    assert!(seen.iter().all(|a| a == "500 Internal Server Error"), "{seen:?}");
    for _ in 0..10 {
        assert_eq!(ask(east.outbound[0]).await, "api-eu");
    }
    // The west proxy never sent to the east and is not affected.
    assert_eq!(ask(west.outbound[0]).await, "api-eu");
    drop(trellisd);
}
