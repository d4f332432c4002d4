//! Where `authz check` gets a workload's policies: from the control plane, over delta xDS as
//! the workload's own proxy would ask (its Settings resource), or offline from a directory of
//! Istio YAML through trellisd's translation.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use trellis_api::mesh::MeshConfig;
use trellis_control_plane::model::Model;
use trellis_control_plane::translate::{ProxyIdentity, scope_of, translate};
use trellis_xds::config as pb;
use trellis_xds::discovery::DeltaDiscoveryRequest;
use trellis_xds::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use trellis_xds::types::{ProxyNode, ResourceType};

const TIMEOUT: Duration = Duration::from_secs(10);

/// The policies trellisd would send a proxy in `namespace` with `labels`, from the YAML in `dir`.
pub fn offline(
    dir: &Path,
    mesh_config: Option<&Path>,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Result<Vec<pb::AuthzPolicy>, String> {
    if !dir.is_dir() {
        return Err(format!("--config-dir {}: not a directory", dir.display()));
    }
    let reading = trellis_control_plane::sources::files::read_dir(dir);
    for rejection in &reading.rejections {
        eprintln!("warning: {}: {}", rejection.file.display(), rejection.message);
    }
    let mut model = Model { resources: reading.resources, ..Model::default() };
    if let Some(path) = mesh_config {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("--mesh-config {}: {e}", path.display()))?;
        let (mesh, _) =
            MeshConfig::from_yaml(&text).map_err(|e| format!("--mesh-config {}: {e}", path.display()))?;
        model.mesh = Arc::new(mesh);
    }
    let proxy =
        ProxyIdentity { namespace: namespace.to_owned(), labels: labels.clone(), ..Default::default() };
    Ok(translate(&model, &scope_of(&model, &proxy)).authorization)
}

/// The workload's Settings resource from the control plane at `address` (plaintext xDS).
pub fn from_control_plane(
    address: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Result<Vec<pb::AuthzPolicy>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start: {e}"))?;
    runtime.block_on(async {
        tokio::time::timeout(TIMEOUT, ask(address, namespace, labels))
            .await
            .map_err(|_| format!("--control-plane {address}: no answer within {TIMEOUT:?}"))?
    })
}

async fn ask(
    address: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Result<Vec<pb::AuthzPolicy>, String> {
    let url = if address.contains("://") { address.to_owned() } else { format!("http://{address}") };
    let fail = |e: String| format!("--control-plane {address}: {e}");
    let mut client = AggregatedDiscoveryServiceClient::connect(url).await.map_err(|e| fail(e.to_string()))?;
    let node = ProxyNode {
        id: format!("sidecar~0.0.0.0~trellis-authz-check.{namespace}~{namespace}.svc.cluster.local"),
        namespace: namespace.to_owned(),
        workload: "trellis-authz-check".to_owned(),
        labels: labels.clone(),
        ..Default::default()
    };
    let request = DeltaDiscoveryRequest {
        node: Some(node.to_node()),
        type_url: ResourceType::Settings.type_url().to_owned(),
        ..Default::default()
    };
    let mut answers = client
        // The request stream stays open: a stream that ends is a proxy going away.
        .delta_aggregated_resources(tokio_stream::StreamExt::chain(
            tokio_stream::iter([request]),
            tokio_stream::pending(),
        ))
        .await
        .map_err(|e| fail(e.message().to_owned()))?
        .into_inner();
    while let Some(response) = answers.message().await.map_err(|e| fail(e.message().to_owned()))? {
        if response.type_url != ResourceType::Settings.type_url() {
            continue;
        }
        let Some(any) = response.resources.first().and_then(|r| r.resource.as_ref()) else { continue };
        let settings =
            pb::ProxyConfig::decode(any.value.as_ref()).map_err(|e| fail(format!("settings: {e}")))?;
        return Ok(settings.authorization);
    }
    Err(fail("the stream ended before the workload's settings arrived".into()))
}
