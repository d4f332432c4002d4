//! What the proxy does with what the control plane sends it: protobuf bytes decoded with prost
//! and compiled into a `trellis_proxy::config::Snapshot` (`proxy/src/xds.rs` does the same per
//! delta response).
//!
//! Input: a mode byte, then protobuf. Even mode: one whole `trellis.config.v1.ProxyConfig`. Odd
//! mode: a `DeltaDiscoveryResponse`, whose resources are decoded by their type and assembled into
//! a config in name order, as the proxy's xDS client assembles what it holds.
//!
//! Properties: nothing panics; a config complete enough for a file also compiles as xDS on
//! demand; compiling it again over its own snapshot (the reuse path of every push) succeeds; the
//! snapshot answers lookups for every service name it was given.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use trellis_proxy::config::Snapshot;
use trellis_xds::config as pb;
use trellis_xds::discovery::DeltaDiscoveryResponse;
use trellis_xds::types::{ResourceType, SETTINGS_NAME};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, bytes)) = data.split_first() else { return };
    let config = if mode % 2 == 0 {
        let Ok(config) = pb::ProxyConfig::decode(bytes) else { return };
        config
    } else {
        let Ok(response) = DeltaDiscoveryResponse::decode(bytes) else { return };
        let Some(config) = assemble(&response) else { return };
        config
    };
    compile(config);
});

fn compile(config: pb::ProxyConfig) {
    let complete = Snapshot::compile(config.clone(), 1, None);
    let on_demand = Snapshot::compile_on_demand(config.clone(), 1, None);
    if let Err(e) = &on_demand {
        assert!(complete.is_err(), "compiles from a file but not on demand: {e}");
        return;
    }
    let first = on_demand.unwrap();
    let again = Snapshot::compile_on_demand(config.clone(), 2, Some(&first))
        .unwrap_or_else(|e| panic!("compiles once, not over its own snapshot: {e}"));
    for service in &config.services {
        for port in &service.ports {
            let port = u16::try_from(port.port).unwrap_or_default();
            let _ = again.by_authority(&service.name, port);
            let _ = again.by_authority(&format!("{}:{port}", service.name), 80);
            let _ = again.has_services_on(port);
        }
    }
}

/// The proxy's `Held::assemble`, for one response.
fn assemble(response: &DeltaDiscoveryResponse) -> Option<pb::ProxyConfig> {
    let kind = ResourceType::from_type_url(&response.type_url)?;
    let mut held: BTreeMap<&str, &[u8]> = BTreeMap::new();
    for resource in &response.resources {
        let any = resource.resource.as_ref()?;
        if any.type_url != response.type_url {
            return None;
        }
        held.insert(&resource.name, &any.value);
    }
    for name in &response.removed_resources {
        held.remove(name.as_str());
    }
    fn all<M: Message + Default>(held: &BTreeMap<&str, &[u8]>) -> Option<Vec<M>> {
        held.values().map(|bytes| M::decode(*bytes).ok()).collect()
    }
    let mut config = pb::ProxyConfig::default();
    match kind {
        ResourceType::Settings => config = pb::ProxyConfig::decode(*held.get(SETTINGS_NAME)?).ok()?,
        ResourceType::Service => config.services = all(&held)?,
        ResourceType::VirtualHost => config.virtual_hosts = all(&held)?,
        ResourceType::Cluster => config.clusters = all(&held)?,
        ResourceType::Endpoints => config.endpoints = all(&held)?,
        ResourceType::Workload => config.workloads = all(&held)?,
    }
    Some(config)
}
