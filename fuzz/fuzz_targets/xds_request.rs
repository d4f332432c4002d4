//! What trellisd reads from a proxy on its ADS stream: `DeltaDiscoveryRequest`s (protobuf) and
//! the node a proxy introduces itself with (`trellis_xds::types::ProxyNode::from_node`).
//!
//! Properties: nothing panics; a node that is read writes back to a node that reads the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use trellis_xds::discovery::DeltaDiscoveryRequest;
use trellis_xds::types::{ProxyNode, ResourceType};

fuzz_target!(|data: &[u8]| {
    let Ok(request) = DeltaDiscoveryRequest::decode(data) else { return };
    let _ = ResourceType::from_type_url(&request.type_url);
    let Some(node) = &request.node else { return };
    if let Ok(proxy) = ProxyNode::from_node(node) {
        assert_eq!(ProxyNode::from_node(&proxy.to_node()), Ok(proxy));
    }
});
