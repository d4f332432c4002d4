//! The ADS service as trellisd serves it (`AdsService`, real HTTP/2 and tonic's client): a
//! proxy gets its responses, decoded as sent, and the stream ends with an OK status when the
//! proxy closes it; a stream that does not introduce itself properly gets an error status
//! naming the field, never a hang or a panic.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::wrappers::TcpListenerStream;
use trellis_control_plane::model::Model;
use trellis_control_plane::xds::generation::Generation;
use trellis_control_plane::xds::grpc::AdsService;
use trellis_control_plane::xds::metrics::XdsMetrics;
use trellis_control_plane::xds::server::{Registry, XdsServer};
use trellis_xds::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use trellis_xds::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use trellis_xds::envoy::config::core::v3::Node;
use trellis_xds::types::{ProxyNode, ResourceType};

type Client = AggregatedDiscoveryServiceClient<tonic::transport::Channel>;

/// Below tonic's own default (4 MiB), so that the limit given is the one that holds.
const MAX_MESSAGE: usize = 1 << 20;

/// A client of a fresh server, and the server's generations (streams end when it is dropped).
async fn serve() -> (Client, watch::Sender<Arc<Generation>>) {
    let (client, generations, _metrics) = serve_with_metrics().await;
    (client, generations)
}

/// Also the server's metrics registry.
async fn serve_with_metrics()
-> (Client, watch::Sender<Arc<Generation>>, prometheus_client::registry::Registry) {
    let (url, generations, registry) = start().await;
    (AggregatedDiscoveryServiceClient::connect(url).await.unwrap(), generations, registry)
}

/// A fresh server: its URL, generations and metrics registry.
async fn start() -> (String, watch::Sender<Arc<Generation>>, prometheus_client::registry::Registry) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (publish, generations) = watch::channel(Arc::new(Generation::first(Arc::new(Model::default()))));
    let mut registry = prometheus_client::registry::Registry::default();
    let server =
        XdsServer::new(generations, Arc::new(Registry::default()), Arc::new(XdsMetrics::new(&mut registry)));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AdsService::new(server, MAX_MESSAGE))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (format!("http://{addr}"), publish, registry)
}

fn push_latency_samples(registry: &prometheus_client::registry::Registry) -> u64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("trellisd_xds_push_latency_seconds_count "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no push latency count in:\n{text}"))
}

fn proxy_node() -> Node {
    ProxyNode {
        id: "sidecar~10.0.0.1~a.shop~shop.svc.cluster.local".into(),
        namespace: "shop".into(),
        ..Default::default()
    }
    .to_node()
}

async fn next(responses: &mut tonic::Streaming<DeltaDiscoveryResponse>) -> Option<DeltaDiscoveryResponse> {
    tokio::time::timeout(Duration::from_secs(10), responses.message())
        .await
        .expect("a response in time")
        .expect("no error status")
}

#[tokio::test]
async fn a_proxy_gets_its_responses_and_its_stream_ends_cleanly() {
    let (mut client, _generations) = serve().await;
    let (requests, rx) = mpsc::channel(4);
    requests
        .send(DeltaDiscoveryRequest {
            node: Some(proxy_node()),
            type_url: ResourceType::Settings.type_url().into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut responses =
        client.delta_aggregated_resources(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let settings = next(&mut responses).await.expect("the settings");
    assert_eq!(settings.type_url, ResourceType::Settings.type_url());
    assert!(!settings.nonce.is_empty());

    // An ACK, and the service table opened: its (empty, complete) set comes next.
    for request in [
        DeltaDiscoveryRequest {
            type_url: ResourceType::Settings.type_url().into(),
            response_nonce: settings.nonce.clone(),
            ..Default::default()
        },
        DeltaDiscoveryRequest { type_url: ResourceType::Service.type_url().into(), ..Default::default() },
    ] {
        requests.send(request).await.unwrap();
    }
    let services = next(&mut responses).await.expect("the service table");
    assert_eq!(services.type_url, ResourceType::Service.type_url());
    assert!(services.resources.is_empty());
    assert_ne!(services.nonce, settings.nonce);

    // The proxy closes its side: the server ends the stream with an OK status.
    drop(requests);
    assert_eq!(next(&mut responses).await, None);
}

async fn first_request_fails_with(first: DeltaDiscoveryRequest) -> tonic::Status {
    let (mut client, _generations) = serve().await;
    let call = client.delta_aggregated_resources(tokio_stream::iter(vec![first]));
    match tokio::time::timeout(Duration::from_secs(10), call).await.expect("an answer in time") {
        Ok(_) => panic!("the stream was accepted"),
        Err(status) => status,
    }
}

#[tokio::test]
async fn a_stream_without_a_usable_node_is_refused_naming_the_field() {
    let no_node =
        DeltaDiscoveryRequest { type_url: ResourceType::Service.type_url().into(), ..Default::default() };
    let status = first_request_fails_with(no_node).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(status.message(), "node: required on the first request");

    let no_namespace = DeltaDiscoveryRequest {
        node: Some(Node { id: "sidecar~1.2.3.4~a.b~b.svc.cluster.local".into(), ..Default::default() }),
        ..Default::default()
    };
    let status = first_request_fails_with(no_namespace).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(status.message(), "node.metadata.NAMESPACE: required");
}

/// Push latency is the time from a change to its last response: one sample per change, not one
/// per later push of the same generation (a proxy opening another type).
#[tokio::test]
async fn a_change_is_timed_once_whatever_the_proxy_asks_for_later() {
    let (mut client, generations, registry) = serve_with_metrics().await;
    let (requests, rx) = mpsc::channel(4);
    let first = DeltaDiscoveryRequest {
        node: Some(proxy_node()),
        type_url: ResourceType::Settings.type_url().into(),
        ..Default::default()
    };
    requests.send(first).await.unwrap();
    let mut responses =
        client.delta_aggregated_resources(ReceiverStream::new(rx)).await.unwrap().into_inner();
    next(&mut responses).await.expect("the settings");
    let current = generations.borrow().clone();
    generations.send_replace(Arc::new(current.next(current.model.clone(), tokio::time::Instant::now())));
    // Each of these gets a response in the new generation (the names do not exist: the answer
    // says so). A sample is taken once a push is handed over, before the next request is read:
    // after the last response, the first two pushes have been counted.
    for (kind, name) in [
        (ResourceType::Service, None),
        (ResourceType::Cluster, Some("a")),
        (ResourceType::VirtualHost, Some("b:80")),
    ] {
        let open = DeltaDiscoveryRequest {
            type_url: kind.type_url().into(),
            resource_names_subscribe: name.map(str::to_owned).into_iter().collect(),
            ..Default::default()
        };
        requests.send(open).await.unwrap();
        let response = next(&mut responses).await.expect("the opened type");
        assert_eq!(response.type_url, kind.type_url());
    }
    assert_eq!(push_latency_samples(&registry), 1);
}

/// Calls that are not a delta stream get UNIMPLEMENTED (the state-of-the-world stream too),
/// and a first message above the limit OUT_OF_RANGE: an answer, never a hang.
#[tokio::test]
async fn other_methods_and_oversized_messages_are_refused() {
    let (url, _generations, _registry) = start().await;
    let channel = tonic::transport::Endpoint::from_shared(url).unwrap().connect().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let codec = trellis_xds::codec::XdsCodec::<DeltaDiscoveryRequest, DeltaDiscoveryResponse>::default();
    let path = http::uri::PathAndQuery::from_static(
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
    );
    let call = grpc.streaming(tonic::Request::new(tokio_stream::iter(Vec::new())), path, codec);
    let status =
        tokio::time::timeout(Duration::from_secs(10), call).await.expect("an answer in time").unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);

    let huge = DeltaDiscoveryRequest {
        node: Some(proxy_node()),
        type_url: ResourceType::Service.type_url().into(),
        resource_names_subscribe: vec!["x".repeat(2 * MAX_MESSAGE)],
        ..Default::default()
    };
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let call = client.delta_aggregated_resources(tokio_stream::iter(vec![huge]));
    let status = match tokio::time::timeout(Duration::from_secs(10), call).await.expect("an answer in time") {
        Ok(response) => {
            let mut responses = response.into_inner();
            tokio::time::timeout(Duration::from_secs(10), responses.message())
                .await
                .expect("an answer in time")
                .expect_err("the oversized message was accepted")
        }
        Err(status) => status,
    };
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
}
