//! The network configuration a runtime hands us on stdin: the standard fields, the previous
//! plugin's result (passed through unchanged), and our own section.

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::protocol::{CniError, LATEST_VERSION, SUPPORTED_VERSIONS, code};

/// Runtimes send a few kilobytes; anything near this is not a network configuration.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

#[derive(Clone, Debug, Deserialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<Map<String, Value>>,
    #[serde(default)]
    pub kubernetes: KubernetesConf,
    #[serde(default)]
    pub log_level: Option<String>,
    /// Where the plugin logs; stderr when absent (the runtime's log).
    #[serde(default)]
    pub log_file: Option<PathBuf>,
    /// `nft` or `iptables`; detected per pod when absent.
    #[serde(default)]
    pub backend: Option<Backend>,
}

/// Named as in Istio's plugin configuration, so operators recognise it.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct KubernetesConf {
    pub kubeconfig: Option<PathBuf>,
    #[serde(default)]
    pub exclude_namespaces: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Nft,
    Iptables,
}

impl NetConf {
    pub fn parse(input: &[u8]) -> Result<NetConf, CniError> {
        let value = decode(input)?;
        let version = match value.get("cniVersion") {
            Some(Value::String(v)) => v.clone(),
            Some(other) => {
                return Err(invalid(format!("cniVersion: expected a string, found {other}")));
            }
            None => return Err(invalid("cniVersion: missing")),
        };
        if !SUPPORTED_VERSIONS.contains(&version.as_str()) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                "incompatible CNI version",
                format!(
                    "cniVersion {version:?} is not supported; supported: {}",
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        serde_path_to_error::deserialize(value).map_err(|e| invalid(format!("{}: {}", e.path(), e.inner())))
    }

    /// The previous plugin's result, as ours: unchanged but for `cniVersion`, which is the
    /// configuration's (runtimes may hand results over in another version).
    pub fn pass_through(&self) -> Result<String, CniError> {
        let mut result = self.prev_result.clone().ok_or_else(missing_prev_result)?;
        result.insert("cniVersion".to_owned(), Value::String(self.cni_version.clone()));
        serde_json::to_string(&result)
            .map_err(|e| CniError::new(code::IO_FAILURE, "cannot encode the result", e.to_string()))
    }

    /// Whether the pod got an IPv6 address from the plugins before us.
    pub fn has_ipv6(&self) -> bool {
        let ips = self.prev_result.as_ref().and_then(|r| r.get("ips")).and_then(Value::as_array);
        ips.into_iter().flatten().filter_map(|ip| ip.get("address")?.as_str()).any(|address| {
            address.parse::<ipnet::IpNet>().is_ok_and(|net| matches!(net, ipnet::IpNet::V6(_)))
        })
    }
}

pub fn missing_prev_result() -> CniError {
    invalid(
        "prevResult: missing; trellis-cni must come after the plugin that creates the pod's interface in a .conflist",
    )
}

/// The version to answer VERSION in: the configuration's when we speak it, else our latest.
pub fn version_for_reply(input: &[u8]) -> String {
    decode(input)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_owned))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| LATEST_VERSION.to_owned())
}

fn decode(input: &[u8]) -> Result<Value, CniError> {
    if input.len() > MAX_CONFIG_BYTES {
        return Err(CniError::new(
            code::DECODING_FAILURE,
            "cannot decode the network configuration",
            format!("{} bytes on stdin; the limit is {MAX_CONFIG_BYTES}", input.len()),
        ));
    }
    let value: Value = serde_json::from_slice(input).map_err(|e| {
        CniError::new(code::DECODING_FAILURE, "cannot decode the network configuration", e.to_string())
    })?;
    if !value.is_object() {
        return Err(CniError::new(
            code::DECODING_FAILURE,
            "cannot decode the network configuration",
            "expected a JSON object",
        ));
    }
    Ok(value)
}

fn invalid(details: impl Into<String>) -> CniError {
    CniError::new(code::INVALID_CONFIG, "invalid network configuration", details)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A bridge plugin's result in the given version's shape.
    fn prev_result(version: &str) -> Value {
        let mut ip = json!({"address": "10.78.0.5/24", "gateway": "10.78.0.1", "interface": 2});
        if version.starts_with("0.") {
            ip["version"] = json!("4");
        }
        json!({
            "cniVersion": version,
            "interfaces": [{"name": "cni0", "mac": "aa:bb:cc:dd:ee:01"}, {"name": "veth1", "mac": "aa:bb:cc:dd:ee:02"}, {"name": "eth0", "mac": "aa:bb:cc:dd:ee:03", "sandbox": "/var/run/netns/x"}],
            "ips": [ip],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {}
        })
    }

    fn conf(version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": "k8s-pod-network",
            "type": "trellis-cni",
            "log_level": "debug",
            "kubernetes": {"kubeconfig": "/etc/cni/net.d/ZZZ-trellis-cni-kubeconfig", "exclude_namespaces": ["kube-system"]},
            "runtimeConfig": {"portMappings": []},
            "prevResult": prev_result(version)
        })
    }

    #[test]
    fn every_supported_version_parses_and_passes_its_result_through() {
        for version in SUPPORTED_VERSIONS {
            let input = conf(version);
            let parsed = NetConf::parse(input.to_string().as_bytes()).unwrap();
            assert_eq!(parsed.cni_version, version);
            assert_eq!(parsed.kubernetes.exclude_namespaces, ["kube-system"]);
            assert_eq!(
                parsed.kubernetes.kubeconfig.as_deref(),
                Some("/etc/cni/net.d/ZZZ-trellis-cni-kubeconfig".as_ref())
            );
            let out: Value = serde_json::from_str(&parsed.pass_through().unwrap()).unwrap();
            assert_eq!(out, input["prevResult"], "{version}: the result must be passed through unchanged");
            assert!(!parsed.has_ipv6());
        }
    }

    #[test]
    fn the_result_takes_the_configuration_version() {
        let mut input = conf("1.0.0");
        input["prevResult"]["cniVersion"] = json!("0.4.0");
        let parsed = NetConf::parse(input.to_string().as_bytes()).unwrap();
        let out: Value = serde_json::from_str(&parsed.pass_through().unwrap()).unwrap();
        assert_eq!(out["cniVersion"], "1.0.0");
        assert_eq!(out["ips"], input["prevResult"]["ips"]);
    }

    #[test]
    fn ipv6_is_seen_in_the_previous_result() {
        let mut input = conf("1.0.0");
        input["prevResult"]["ips"]
            .as_array_mut()
            .unwrap()
            .push(json!({"address": "fd00:78::5/64", "interface": 2}));
        assert!(NetConf::parse(input.to_string().as_bytes()).unwrap().has_ipv6());
    }

    #[test]
    fn bad_configurations_get_the_right_code() {
        let mut wrong_type = conf("1.0.0");
        wrong_type["kubernetes"]["exclude_namespaces"] = json!("kube-system");
        let mut bad_backend = conf("1.0.0");
        bad_backend["backend"] = json!("ebpf");
        let cases: Vec<(Vec<u8>, u32, &str)> = vec![
            (b"{\"cniVersion\": \"1.0.0\",".to_vec(), code::DECODING_FAILURE, "EOF while parsing"),
            (b"[]".to_vec(), code::DECODING_FAILURE, "expected a JSON object"),
            (vec![b' '; MAX_CONFIG_BYTES + 1], code::DECODING_FAILURE, "the limit is"),
            (json!({"name": "x"}).to_string().into_bytes(), code::INVALID_CONFIG, "cniVersion: missing"),
            (json!({"cniVersion": 1}).to_string().into_bytes(), code::INVALID_CONFIG, "expected a string"),
            (
                json!({"cniVersion": "9.9.9"}).to_string().into_bytes(),
                code::INCOMPATIBLE_VERSION,
                "\"9.9.9\" is not supported",
            ),
            (
                wrong_type.to_string().into_bytes(),
                code::INVALID_CONFIG,
                "kubernetes.exclude_namespaces: invalid type",
            ),
            (bad_backend.to_string().into_bytes(), code::INVALID_CONFIG, "backend: unknown variant `ebpf`"),
        ];
        for (input, expected, details) in cases {
            let err = NetConf::parse(&input).unwrap_err();
            assert_eq!(err.code, expected, "{err}");
            assert!(err.details.contains(details), "{err}");
        }
    }

    #[test]
    fn a_missing_previous_result_is_an_invalid_configuration() {
        let mut input = conf("1.0.0");
        input.as_object_mut().unwrap().remove("prevResult");
        let err = NetConf::parse(input.to_string().as_bytes()).unwrap().pass_through().unwrap_err();
        assert_eq!(err.code, code::INVALID_CONFIG);
        assert!(err.details.contains("prevResult: missing"));
    }

    #[test]
    fn version_replies_in_the_asked_version_when_spoken() {
        assert_eq!(version_for_reply(br#"{"cniVersion":"0.4.0"}"#), "0.4.0");
        assert_eq!(version_for_reply(br#"{"cniVersion":"9.0.0"}"#), LATEST_VERSION);
        assert_eq!(version_for_reply(b"not json"), LATEST_VERSION);
    }
}
