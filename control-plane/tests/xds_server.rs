//! The ADS service's answer to a stream that does not introduce itself properly: an error
//! status naming the field, never a hang or a panic.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use trellis_control_plane::model::Model;
use trellis_control_plane::xds::generation::Generation;
use trellis_control_plane::xds::metrics::XdsMetrics;
use trellis_control_plane::xds::server::{Registry, XdsServer};
use trellis_xds::discovery::DeltaDiscoveryRequest;
use trellis_xds::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use trellis_xds::discovery::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use trellis_xds::envoy::config::core::v3::Node;
use trellis_xds::types::ResourceType;

async fn first_request_fails_with(first: DeltaDiscoveryRequest) -> tonic::Status {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_publish, generations) = watch::channel(Arc::new(Generation::first(Arc::new(Model::default()))));
    let mut registry = prometheus_client::registry::Registry::default();
    let server =
        XdsServer::new(generations, Arc::new(Registry::default()), Arc::new(XdsMetrics::new(&mut registry)));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(server))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}")).await.unwrap();
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
