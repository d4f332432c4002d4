//! Mesh-wide settings (MeshConfig, and the Sidecar's override) → the proxy's top-level ones.

use std::time::Duration;

use tracing::warn;
use trellis_api::mesh::{DEFAULT_CONNECT_TIMEOUT, MeshConfig, OutboundTrafficMode};
use trellis_api::networking::{OutboundTrafficPolicyMode, SidecarSpec};
use trellis_api::retry_budget::BudgetSetting;
use trellis_xds::config as pb;

/// The Sidecar's `outboundTrafficPolicy.mode` when it sets one, else the mesh's.
pub fn outbound_policy(mesh: &MeshConfig, sidecar: Option<&SidecarSpec>) -> pb::OutboundPolicy {
    let registry_only = match sidecar.and_then(|s| s.outbound_traffic_policy.as_ref()) {
        Some(policy) => policy.mode == OutboundTrafficPolicyMode::RegistryOnly,
        None => mesh.outbound_mode() == OutboundTrafficMode::RegistryOnly,
    };
    if registry_only { pb::OutboundPolicy::RegistryOnly } else { pb::OutboundPolicy::AllowAny }
}

/// Istio's 0 ("wait as long as it takes") has no equivalent in the proxy, whose unset value
/// is its own short default; only a positive timeout is passed on.
pub fn protocol_detection_timeout(mesh: &MeshConfig) -> Option<Duration> {
    match mesh.protocol_detection_timeout() {
        Ok(d) => (!d.is_zero()).then_some(d),
        Err(message) => {
            warn!(resource = "MeshConfig", field = "protocolDetectionTimeout", %message, "ignored");
            None
        }
    }
}

/// Every cluster's connect timeout unless its DestinationRule sets one.
pub fn connect_timeout(mesh: &MeshConfig) -> Duration {
    mesh.connect_timeout().unwrap_or_else(|message| {
        warn!(resource = "MeshConfig", field = "connectTimeout", %message, "using the default");
        DEFAULT_CONNECT_TIMEOUT
    })
}

/// The mesh config's access log (`accessLogFile`, `accessLogEncoding`, `accessLogFormat`), with
/// Istio's default format written out when none is given. A format the proxy could not read
/// (an unknown operator, JSON that is not an object of strings) is replaced whole by the
/// default, with a warning naming the field: never half-applied.
pub fn access_logs(mesh: &MeshConfig) -> Vec<pb::AccessLog> {
    use trellis_api::access_log as al;
    use trellis_api::mesh::AccessLogEncoding;
    let Some(path) = mesh.access_log_file() else { return Vec::new() };
    let encoding = mesh.access_log_encoding();
    let mut format = mesh.access_log_format.as_deref();
    if let Err(message) = al::check_format(format, encoding) {
        // Once per process (the mesh config is read at start), not once per proxy and push.
        static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            warn!(resource = "MeshConfig", field = "accessLogFormat", %message, "using Istio's default format");
        }
        format = None;
    }
    let mut log = pb::AccessLog { path: path.to_owned(), ..Default::default() };
    match encoding {
        AccessLogEncoding::Text => log.text_format = al::text_format(format),
        AccessLogEncoding::Json => {
            log.encoding = pb::AccessLogEncoding::Json.into();
            // Checked above: the fields parse.
            log.json_fields = al::json_fields(format)
                .unwrap_or_default()
                .into_iter()
                .map(|(key, format)| pb::AccessLogField { key, format })
                .collect();
        }
    }
    vec![log]
}

/// Every cluster's retry budget unless its DestinationRule says otherwise: the default (on,
/// Linkerd's values) with the mesh config's `retryBudget` over it; a value that cannot be used
/// is left out with a warning.
pub fn retry_budget(mesh: &MeshConfig) -> BudgetSetting {
    if let Some(config) = &mesh.retry_budget {
        for (field, message) in config.overrides().1 {
            warn!(resource = "MeshConfig", field = %format!("retryBudget.{field}"), %message, "using the default");
        }
    }
    mesh.retry_budget()
}

#[cfg(test)]
mod tests {
    use trellis_api::networking::OutboundTrafficPolicy;

    use super::*;

    fn mesh(yaml: &str) -> MeshConfig {
        MeshConfig::from_yaml(yaml).unwrap().0
    }

    #[test]
    fn outbound_policy_comes_from_the_mesh_unless_the_sidecar_sets_it() {
        let registry_only = mesh("outboundTrafficPolicy: {mode: REGISTRY_ONLY}");
        let allow = |mode| SidecarSpec {
            outbound_traffic_policy: Some(OutboundTrafficPolicy { mode, egress_proxy: None }),
            ..Default::default()
        };
        for (mesh, sidecar, want) in [
            (MeshConfig::default(), None, pb::OutboundPolicy::AllowAny),
            (registry_only.clone(), None, pb::OutboundPolicy::RegistryOnly),
            (registry_only.clone(), Some(SidecarSpec::default()), pb::OutboundPolicy::RegistryOnly),
            (registry_only, Some(allow(OutboundTrafficPolicyMode::AllowAny)), pb::OutboundPolicy::AllowAny),
            (
                MeshConfig::default(),
                Some(allow(OutboundTrafficPolicyMode::RegistryOnly)),
                pb::OutboundPolicy::RegistryOnly,
            ),
        ] {
            assert_eq!(outbound_policy(&mesh, sidecar.as_ref()), want, "{mesh:?} {sidecar:?}");
        }
    }

    #[test]
    fn timeouts_come_from_the_mesh() {
        assert_eq!(protocol_detection_timeout(&MeshConfig::default()), None);
        assert_eq!(
            protocol_detection_timeout(&mesh("protocolDetectionTimeout: 250ms")),
            Some(Duration::from_millis(250))
        );
        assert_eq!(connect_timeout(&MeshConfig::default()), Duration::from_secs(10));
        assert_eq!(connect_timeout(&mesh("connectTimeout: 2s")), Duration::from_secs(2));
    }

    #[test]
    fn access_logs_come_from_the_mesh_with_istios_defaults() {
        use trellis_api::access_log::{ISTIO_JSON_FORMAT, ISTIO_TEXT_FORMAT};
        assert!(access_logs(&MeshConfig::default()).is_empty());
        assert!(access_logs(&mesh("accessLogFile: ''")).is_empty());
        let text = access_logs(&mesh("accessLogFile: /dev/stdout"));
        assert_eq!(text.len(), 1);
        assert_eq!(text[0].path, "/dev/stdout");
        assert_eq!(text[0].text_format, ISTIO_TEXT_FORMAT);
        let custom =
            access_logs(&mesh("accessLogFile: /tmp/a.log\naccessLogFormat: '%DURATION% %PROTOCOL%'"));
        assert_eq!(custom[0].text_format, "%DURATION% %PROTOCOL%\n");
        let json = access_logs(&mesh("accessLogFile: /dev/stdout\naccessLogEncoding: JSON"));
        assert_eq!(json[0].encoding, i32::from(pb::AccessLogEncoding::Json));
        assert_eq!(json[0].json_fields.len(), ISTIO_JSON_FORMAT.len());
        let fields = access_logs(&mesh(
            "accessLogFile: /dev/stdout\naccessLogEncoding: JSON\naccessLogFormat: '{\"code\": \"%RESPONSE_CODE%\"}'",
        ));
        assert_eq!(
            fields[0].json_fields,
            vec![pb::AccessLogField { key: "code".into(), format: "%RESPONSE_CODE%".into() }]
        );
    }

    #[test]
    fn a_bad_access_log_format_is_replaced_whole_by_the_default() {
        use trellis_api::access_log::{ISTIO_JSON_FORMAT, ISTIO_TEXT_FORMAT};
        let bad = mesh("accessLogFile: /dev/stdout\naccessLogFormat: '%DURATION% %NO_SUCH%'");
        assert!(bad.validate().iter().any(|e| e.starts_with("accessLogFormat:") && e.contains("%NO_SUCH%")));
        assert_eq!(access_logs(&bad)[0].text_format, ISTIO_TEXT_FORMAT);
        let bad_json = mesh(
            "accessLogFile: /dev/stdout\naccessLogEncoding: JSON\naccessLogFormat: '{\"a\": \"%DURATION%\", \"b\": \"%NOPE%\"}'",
        );
        assert!(
            bad_json.validate().iter().any(|e| e.starts_with("accessLogFormat:") && e.contains("%NOPE%"))
        );
        assert_eq!(access_logs(&bad_json)[0].json_fields.len(), ISTIO_JSON_FORMAT.len());
    }
}
