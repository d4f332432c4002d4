//! The proxy's admin answers as this command reads them: `/config_dump` (the configuration in
//! force, proto3 JSON), `/clusters?format=json` (each cluster's endpoints and their outlier
//! state) and `/certs` (the workload certificate). Each reader names the page and quotes the
//! start of an answer it cannot read.

use serde::Deserialize;
use trellis_xds::config as pb;

/// `/config_dump`.
#[derive(Debug, Deserialize)]
pub struct ConfigDump {
    pub version: u64,
    pub config: pb::ProxyConfig,
}

/// `/clusters?format=json`.
#[derive(Debug, Deserialize)]
pub struct ClusterStatuses {
    pub cluster_statuses: Vec<ClusterStatus>,
}

#[derive(Debug, Deserialize)]
pub struct ClusterStatus {
    pub name: String,
    /// Null when the cluster has no outlier detection (its totals are not shown here).
    #[serde(default)]
    pub outlier_detection: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub host_statuses: Vec<HostStatus>,
}

#[derive(Debug, Deserialize)]
pub struct HostStatus {
    pub address: String,
    #[serde(default)]
    pub weight: u32,
    #[serde(default)]
    pub mesh_tls: bool,
    #[serde(default)]
    pub rq_active: u64,
    pub health_status: HealthStatus,
    /// Present when the cluster has outlier detection.
    #[serde(default)]
    pub outlier_ejections: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub struct HealthStatus {
    pub failed_outlier_check: bool,
}

/// `/certs`.
#[derive(Debug, Deserialize)]
pub struct Certs {
    pub certificates: Vec<CertInfo>,
    /// Why there is no certificate, when there is none.
    #[serde(default)]
    pub note: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct CertInfo {
    pub identity: String,
    pub serial_number: String,
    /// Seconds since the Unix epoch.
    pub valid_from: u64,
    pub expiration_time: u64,
    pub trust_domain: String,
    /// PEM, leaf first, root last.
    #[serde(default)]
    pub cert_chain: Vec<String>,
}

/// Reads one admin page's JSON as `T`; errors name the page.
pub fn read<'a, T: Deserialize<'a>>(page: &str, body: &'a [u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| {
        format!(
            "the proxy's {page} answer is not what this trellis reads: {e} (it starts with {}); \
             is this a Trellis proxy's admin port (15000), of the same version?",
            quote_start(body)
        )
    })
}

/// The first characters of a body, quoted and escaped, for a message.
pub fn quote_start(body: &[u8]) -> String {
    const SHOWN: usize = 80;
    let text = String::from_utf8_lossy(&body[..body.len().min(SHOWN * 4)]);
    let mut start: String = text.chars().take(SHOWN).collect();
    if text.chars().nth(SHOWN).is_some() || body.len() > SHOWN * 4 {
        start.push_str("...");
    }
    format!("{start:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_dumps_are_read_as_proxy_config() {
        let dump: ConfigDump = read(
            "/config_dump",
            br#"{"version": 3, "config": {"services": [{"name": "a", "ports": [{"port": 80, "protocol": "HTTP"}]}]}}"#,
        )
        .unwrap();
        assert_eq!(dump.version, 3);
        assert_eq!(dump.config.services[0].ports[0].protocol(), pb::Protocol::Http);
    }

    #[test]
    fn answers_that_are_not_admin_json_are_refused_with_the_page_named() {
        let err = read::<ConfigDump>("/config_dump", b"<html>nginx</html>").unwrap_err();
        assert!(err.starts_with("the proxy's /config_dump answer is not what this trellis reads"), "{err}");
        assert!(err.contains(r#"(it starts with "<html>nginx</html>")"#), "{err}");
        // A field of the wrong type, an unknown enum value, a missing field.
        let err = read::<ConfigDump>("/config_dump", br#"{"version": "x", "config": {}}"#).unwrap_err();
        assert!(err.contains("invalid type"), "{err}");
        let err = read::<ConfigDump>(
            "/config_dump",
            br#"{"version": 1, "config": {"services": [{"ports": [{"protocol": "SMTP"}]}]}}"#,
        )
        .unwrap_err();
        assert!(err.contains("SMTP"), "{err}");
        let err = read::<ClusterStatuses>("/clusters?format=json", b"api::rq_total::4\n").unwrap_err();
        assert!(err.contains("/clusters?format=json") && err.contains("api::rq_total::4"), "{err}");
        let err = read::<Certs>("/certs", br#"{"certificates": [{"identity": 1}]}"#).unwrap_err();
        assert!(err.contains("invalid type"), "{err}");
        // Deep nesting and binary: an error, not a stack overflow; quoted and cut.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(read::<Certs>("/certs", deep.as_bytes()).is_err());
        let err = read::<Certs>("/certs", &[0xff; 1000]).unwrap_err();
        assert!(err.contains("...\")"), "{err}");
        assert!(err.len() < 500, "{err}");
    }
}
