//! What the gateway end-to-end tests share: trellisd's pipeline in this process over the
//! stand-in API server, a gateway proxy fed by it, and mesh identities from a test CA.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use trellis_control_plane::model::ModelHandle;
use trellis_control_plane::sources::kube::{SourceStatus, run};
use trellis_control_plane::xds::generation::{Generation, MAX_DELAY, QUIET, debounce};
use trellis_control_plane::xds::grpc::AdsService;
use trellis_control_plane::xds::metrics::XdsMetrics;
use trellis_control_plane::xds::server::{Registry, XdsServer};
use trellis_identity::ca::CertificateAuthority;
use trellis_proxy::metrics::{Metrics, Workload};
use trellis_xds::types::ProxyNode;

use crate::ca_support::DEADLINE;
use crate::fake_api::FakeApi;

pub fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap().port()
}

/// A mesh identity signed by the test mesh CA.
pub fn mesh_identity(ca: &CertificateAuthority, id: &str) -> Option<trellis_proxy::Identity> {
    let spiffe = trellis_identity::SpiffeId::parse(id).unwrap();
    let (key, csr) = trellis_identity::client::new_key_and_csr(&spiffe).unwrap();
    let chain = ca.sign_workload(&csr, &spiffe, 3600).unwrap();
    let tls = trellis_identity::tls::MeshTls::new("cluster.local");
    tls.install(trellis_identity::cert::WorkloadCertificate::from_chain(chain, key).unwrap()).unwrap();
    Some(trellis_proxy::Identity { tls, renewal: None })
}

/// trellisd's Kubernetes source and xDS server in this process (and, with `write_status`, its
/// Gateway API status writer); its URL. Plaintext on loopback, trusted with gateways' Secrets
/// (trellisd sends them only over its authenticated TLS port; tests/secure_xds.rs covers that).
pub async fn start_control_plane(api: &FakeApi, write_status: bool) -> String {
    let client = kube::Client::try_from(kube::Config::new(api.url.parse().unwrap())).unwrap();
    let model = ModelHandle::default();
    let status = SourceStatus::new();
    tokio::spawn(run(client.clone(), model.clone(), status.clone()));
    tokio::time::timeout(DEADLINE, status.wait_synced()).await.expect("the source lists every kind");
    if write_status {
        tokio::spawn(trellis_control_plane::gateway_status::run(client, model.clone()));
    }
    let (publish, generations) = watch::channel(Arc::new(Generation::first(model.snapshot())));
    tokio::spawn(debounce(model, publish, QUIET, MAX_DELAY));
    let mut registry = prometheus_client::registry::Registry::default();
    let server =
        XdsServer::new(generations, Arc::new(Registry::default()), Arc::new(XdsMetrics::new(&mut registry)))
            .trusting_callers_with_credentials();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AdsService::new(server, 16 << 20))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}

/// A gateway proxy at `ip` (no capture; it listens on what its servers declare), configured
/// over xDS from `xds` as `node`.
pub fn start_gateway(
    xds: String,
    ip: &str,
    node: ProxyNode,
    identity: Option<trellis_proxy::Identity>,
    workload: Workload,
) -> trellis_proxy::Running {
    let gateway = trellis_proxy::start(
        trellis_proxy::Options {
            outbound: vec![],
            inbound: vec![],
            admin: vec![SocketAddr::new(ip.parse().unwrap(), 0)],
            readiness: vec![],
            stats: vec![],
            config_file: None,
            xds: Some(trellis_proxy::xds::XdsOptions { address: xds, node, secure: None }),
            explicit_inbound: false,
            identity,
        },
        Metrics::new(workload),
        None,
    )
    .unwrap();
    trellis_proxy::gateway::listener::start(&gateway.proxy, &[ip.parse::<IpAddr>().unwrap()]);
    gateway
}
