//! The network configuration a container runtime writes to the CNI plugin's stdin
//! (`trellis_cni::netconf::NetConf::parse`, `version_for_reply`), and `CNI_ARGS`.
//!
//! Properties: nothing panics; a configuration that parses passes its `prevResult` through as
//! JSON with the configuration's version; the VERSION reply is always a supported version.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis_cni::netconf::{NetConf, version_for_reply};
use trellis_cni::protocol::{SUPPORTED_VERSIONS, parse_cni_args};

fuzz_target!(|data: &[u8]| {
    let version = version_for_reply(data);
    assert!(SUPPORTED_VERSIONS.contains(&version.as_str()), "{version:?}");
    match NetConf::parse(data) {
        Ok(conf) => {
            let _ = conf.has_ipv6();
            if let Ok(result) = conf.pass_through() {
                let result: serde_json::Value = serde_json::from_str(&result).expect("the result is JSON");
                assert_eq!(result["cniVersion"], conf.cni_version.as_str());
            }
        }
        Err(e) => {
            let _ = e.to_json(&version);
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(args) = parse_cni_args(text) {
            let printed: Vec<String> = args.iter().map(|(k, v)| format!("{k}={v}")).collect();
            assert_eq!(parse_cni_args(&printed.join(";")).ok(), Some(args));
        }
    }
});
