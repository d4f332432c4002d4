//! The proxy's xDS client against a scripted control plane (a real tonic ADS server on
//! loopback whose responses the test writes): readiness after the first complete config, a
//! virtual host fetched on the first request that needs it, a bad update rejected with the
//! resource and field while traffic keeps the last good route, and a reconnect that says what
//! the proxy already holds.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Client, Upstream, wait_until};
use http::Version;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};
use trellis_proxy::metrics::{Metrics, Workload};
use trellis_proxy::xds::XdsOptions;
use trellis_xds::config as pb;
use trellis_xds::discovery::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use trellis_xds::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource};
use trellis_xds::types::{ProxyNode, ResourceType, SETTINGS_NAME};

/// One stream as the test sees it: the proxy's requests in, responses out.
struct Script {
    requests: mpsc::UnboundedReceiver<DeltaDiscoveryRequest>,
    responses: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
}

struct ScriptedAds {
    streams: mpsc::UnboundedSender<Script>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for ScriptedAds {
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let mut inbound = request.into_inner();
        let (req_tx, requests) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(r)) = inbound.message().await {
                if req_tx.send(r).is_err() {
                    return;
                }
            }
        });
        let (responses, rx) = mpsc::channel(16);
        let _ = self.streams.send(Script { requests, responses });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

async fn scripted_control_plane() -> (SocketAddr, mpsc::UnboundedReceiver<Script>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (streams, rx) = mpsc::unbounded_channel();
    let service = AggregatedDiscoveryServiceServer::new(ScriptedAds { streams });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (addr, rx)
}

impl Script {
    async fn next(&mut self) -> DeltaDiscoveryRequest {
        tokio::time::timeout(Duration::from_secs(10), self.requests.recv())
            .await
            .expect("a request from the proxy in time")
            .expect("the stream is open")
    }

    async fn send(&self, kind: ResourceType, nonce: &str, resources: Vec<(String, String, Vec<u8>)>) {
        let resources = resources
            .into_iter()
            .map(|(name, version, bytes)| Resource {
                name,
                version,
                resource: Some(pbjson_types::Any { type_url: kind.type_url().into(), value: bytes.into() }),
                ..Default::default()
            })
            .collect();
        let response = DeltaDiscoveryResponse {
            type_url: kind.type_url().into(),
            nonce: nonce.into(),
            resources,
            ..Default::default()
        };
        self.responses.send(Ok(response)).await.unwrap();
    }

    /// The proxy's answer to `nonce`: `None` for an ACK, the NACK's message otherwise.
    async fn answer(&mut self, nonce: &str) -> Option<String> {
        loop {
            let r = self.next().await;
            if r.response_nonce == nonce {
                return r.error_detail.map(|e| e.message);
            }
        }
    }
}

fn entry<M: Message>(name: &str, version: &str, message: &M) -> (String, String, Vec<u8>) {
    (name.into(), version.into(), message.encode_to_vec())
}

fn route_to(cluster: &str, weight: u32) -> pb::VirtualHost {
    pb::VirtualHost {
        name: "web:80".into(),
        routes: vec![pb::Route {
            name: "all".into(),
            action: Some(pb::route::Action::Forward(pb::Forward {
                clusters: vec![pb::WeightedCluster { cluster: cluster.into(), weight }],
            })),
            ..Default::default()
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetches_on_demand_rejects_bad_updates_and_resumes_after_a_reconnect() {
    let upstream = Upstream::start("web-v1").await;
    let (address, mut streams) = scripted_control_plane().await;
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let node = ProxyNode {
        id: "sidecar~127.0.0.1~web-client.shop~shop.svc.cluster.local".into(),
        namespace: "shop".into(),
        workload: "web-client".into(),
        labels: Default::default(),
        ..Default::default()
    };
    let options = trellis_proxy::Options {
        outbound: vec![local],
        inbound: vec![local],
        admin: vec![local],
        readiness: vec![local],
        stats: vec![local],
        config_file: None,
        xds: Some(XdsOptions { address: format!("http://{address}"), node, secure: None }),
        explicit_inbound: false,
        identity: None,
    };
    let running = trellis_proxy::start(
        options,
        Metrics::new(Workload { name: "web-client".into(), namespace: "shop".into() }),
        None,
    )
    .unwrap();
    let proxy = running.proxy.clone();

    // The first stream: one request per type, the node on the first.
    let mut stream = streams.recv().await.unwrap();
    let first = stream.next().await;
    assert_eq!(
        first.node.as_ref().map(|n| n.id.as_str()),
        Some("sidecar~127.0.0.1~web-client.shop~shop.svc.cluster.local")
    );
    for _ in 1..ResourceType::PUSH_ORDER.len() {
        assert!(stream.next().await.node.is_none(), "the node is sent once");
    }
    assert!(!proxy.ready.load(Ordering::Acquire), "not ready before any config");

    stream
        .send(ResourceType::Settings, "1", vec![entry(SETTINGS_NAME, "s1", &pb::ProxyConfig::default())])
        .await;
    assert_eq!(stream.answer("1").await, None);
    assert!(!proxy.ready.load(Ordering::Acquire), "settings alone are not a complete config");
    let service = pb::Service {
        name: "web".into(),
        addresses: vec!["240.0.0.1".into()],
        ports: vec![pb::ServicePort {
            port: 80,
            protocol: pb::Protocol::Http as i32,
            virtual_host: "web:80".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    stream.send(ResourceType::Service, "2", vec![entry("web", "w1", &service)]).await;
    assert_eq!(stream.answer("2").await, None);
    wait_until("the proxy is ready", || proxy.ready.load(Ordering::Acquire)).await;

    // The first request for `web` asks for its virtual host and waits for it.
    let mut client = Client::connect(running.outbound[0], Version::HTTP_11).await;
    let request = tokio::spawn(async move {
        let answer = client.get("web", "/hello").await;
        (client, answer)
    });
    let subscribe = stream.next().await;
    assert_eq!(subscribe.type_url, ResourceType::VirtualHost.type_url());
    assert_eq!(subscribe.resource_names_subscribe, ["web:80"]);
    let cluster = pb::Cluster { name: "web-v1".into(), service: "web:80".into(), ..Default::default() };
    let endpoints = pb::ServiceEndpoints {
        service: "web:80".into(),
        endpoints: vec![pb::Endpoint {
            address: "127.0.0.1".into(),
            port: upstream.addr.port().into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    stream.send(ResourceType::Endpoints, "3", vec![entry("web:80", "e1", &endpoints)]).await;
    stream.send(ResourceType::Cluster, "4", vec![entry("web-v1", "c1", &cluster)]).await;
    stream.send(ResourceType::VirtualHost, "5", vec![entry("web:80", "v1", &route_to("web-v1", 100))]).await;
    let (mut client, answer) = request.await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), "web-v1");

    // A route to a cluster the proxy does not have: rejected, naming the resource; the last
    // good route keeps serving.
    stream.send(ResourceType::VirtualHost, "6", vec![entry("web:80", "v2", &route_to("nowhere", 100))]).await;
    let nack = stream.answer("6").await.expect("a NACK");
    assert!(nack.starts_with("virtualhost web:80: routes[0]"), "{nack}");
    assert!(nack.contains("nowhere"), "{nack}");
    assert_eq!(client.get("web", "/again").await.text(), "web-v1");
    // Undecodable bytes are rejected too.
    stream
        .send(ResourceType::Cluster, "7", vec![("web-v1".into(), "c2".into(), vec![0xff, 0xff, 0xff])])
        .await;
    let nack = stream.answer("7").await.expect("a NACK");
    assert!(nack.starts_with("cluster web-v1: cannot decode"), "{nack}");

    // The control plane goes away; the proxy keeps serving and comes back saying what it holds.
    drop(stream);
    assert_eq!(client.get("web", "/meanwhile").await.text(), "web-v1");
    let mut stream = tokio::time::timeout(Duration::from_secs(20), streams.recv()).await.unwrap().unwrap();
    let mut reopened = std::collections::BTreeMap::new();
    for _ in 0..ResourceType::PUSH_ORDER.len() {
        let r = stream.next().await;
        reopened.insert(ResourceType::from_type_url(&r.type_url).unwrap(), r);
    }
    let vh = &reopened[&ResourceType::VirtualHost];
    assert_eq!(vh.resource_names_subscribe, ["web:80"], "on-demand subscriptions are renewed");
    assert_eq!(
        vh.initial_resource_versions.get("web:80").map(String::as_str),
        Some("v1"),
        "the last good version"
    );
    assert_eq!(
        reopened[&ResourceType::Service].initial_resource_versions.get("web").map(String::as_str),
        Some("w1")
    );
    assert_eq!(
        reopened[&ResourceType::Cluster].initial_resource_versions.get("web-v1").map(String::as_str),
        Some("c1")
    );
    assert!(proxy.ready.load(Ordering::Acquire), "a reconnect does not make the proxy unready");
}
