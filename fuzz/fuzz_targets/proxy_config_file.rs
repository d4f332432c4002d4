//! The proxy's configuration file (`trellis-proxy --config`, YAML or JSON in the proto3 JSON
//! mapping): `trellis_proxy::config::parse`, then compiled as the file watcher compiles it.
//!
//! Properties: nothing panics; a file that compiles, encoded as protobuf and decoded again (what
//! the control plane would send), compiles too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use trellis_proxy::config::{Snapshot, parse};
use trellis_xds::config as pb;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(config) = parse(text) else { return };
    if let Err(e) = Snapshot::compile(config.clone(), 1, None) {
        let _ = e.to_string();
        return;
    }
    let wire = pb::ProxyConfig::decode(config.encode_to_vec().as_slice()).expect("prost reads what it wrote");
    Snapshot::compile_on_demand(wire, 2, None)
        .unwrap_or_else(|e| panic!("compiles from the file, not from xDS: {e}"));
});
