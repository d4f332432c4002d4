//! DestinationRules that originate TLS (SIMPLE or MUTUAL) without `caCertificates` (IST0128 for
//! the whole rule, IST0129 for a port), as Istio's analyzer reports them. Trellis, like Istio
//! today, then verifies the server against the operating system's public roots, which a
//! server with a private CA's certificate fails. A `credentialName` on a rule with a
//! `workloadSelector` brings its own CA, and `insecureSkipVerify: true` is a stated choice:
//! neither is reported.

use trellis_api::networking::{ClientTlsMode, ClientTlsSettings, DestinationRuleSpec};

use super::finding::{
    Code, Finding, NO_SERVER_CERT_VERIFICATION_DESTINATION, NO_SERVER_CERT_VERIFICATION_PORT,
};
use super::model::{Mesh, Obj};

pub fn check(mesh: &Mesh, out: &mut Vec<Finding>) {
    for dr in &mesh.destination_rules {
        let Some(policy) = &dr.spec.traffic_policy else { continue };
        if let Some(tls) = &policy.tls {
            report(dr, tls, "spec.trafficPolicy.tls", NO_SERVER_CERT_VERIFICATION_DESTINATION, out);
        }
        for (i, port) in policy.port_level_settings.iter().enumerate() {
            if let Some(tls) = &port.tls {
                let field = format!("spec.trafficPolicy.portLevelSettings[{i}].tls");
                report(dr, tls, &field, NO_SERVER_CERT_VERIFICATION_PORT, out);
            }
        }
    }
}

fn report(
    dr: &Obj<DestinationRuleSpec>,
    tls: &ClientTlsSettings,
    field: &str,
    code: Code,
    out: &mut Vec<Finding>,
) {
    let originates = matches!(tls.mode, ClientTlsMode::Simple | ClientTlsMode::Mutual);
    let own_ca = !tls.credential_name.is_empty() && dr.spec.workload_selector.is_some();
    if !originates || !tls.ca_certificates.is_empty() || own_ca || tls.insecure_skip_verify == Some(true) {
        return;
    }
    out.push(Finding::new(
        code,
        &dr.subject,
        format!(
            "{field}: mode {} without caCertificates: the server certificate of {} is checked against the \
             system's public roots only, which a certificate of a private CA fails",
            serde_json::to_value(tls.mode)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            dr.spec.host
        ),
        "set caCertificates to the CA that signs the server's certificate",
    ));
}
