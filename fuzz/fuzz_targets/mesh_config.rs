//! Mesh config YAML (the injector's and trellisd's `--mesh-config`, Istio's `mesh` ConfigMap key)
//! and ProxyConfig YAML (the mesh's `defaultConfig`).
//!
//! Properties: nothing panics; a parsed config, written back out and read again, is the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis_api::mesh::{MeshConfig, ProxyConfig};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok((mesh, _unknown)) = MeshConfig::from_yaml(text) {
        let _ = mesh.validate();
        let _ = (mesh.connect_timeout(), mesh.protocol_detection_timeout(), mesh.trust_domain());
        let proxy = mesh.proxy_config();
        let _ = (proxy.drain_duration(), proxy.termination_drain_duration(), proxy.status_port());
        let _ = (proxy.proxy_admin_port(), proxy.tracing_sampling(), proxy.validate());
        let yaml = mesh.to_yaml().expect("a mesh config serializes");
        let (again, _) =
            MeshConfig::from_yaml(&yaml).unwrap_or_else(|e| panic!("{yaml}\ndoes not read back: {e}"));
        // Compared as text: a NaN sampling rate is not equal to itself.
        assert_eq!(again.to_yaml().as_deref(), Ok(yaml.as_str()));
    }
    if let Ok((proxy, _unknown)) = ProxyConfig::from_yaml(text) {
        let _ = proxy.validate();
        let mut merged = ProxyConfig::default();
        merged.merge_from(&proxy);
        let _ = (merged.drain_duration(), merged.status_port(), merged.interception_mode());
    }
});
