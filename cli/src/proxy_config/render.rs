//! The views as tables (istioctl's columns, mapped onto Trellis's config), JSON or YAML. Text
//! that came from the proxy is cleaned of control characters before it reaches a terminal.

use serde::Serialize;

use super::views::{ClusterRow, EndpointRow, ListenerRow, RouteRow, Secrets};
use crate::proxy_status::render::{clean, columns, utc};

fn table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let mut all = vec![header.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>()];
    all.extend(rows.map(|row| row.iter().map(|cell| clean(cell)).collect()));
    columns(&all)
}

pub fn listeners(rows: &[ListenerRow]) -> String {
    table(
        &["ADDRESS", "PORT", "MATCH", "DESTINATION"],
        rows.iter()
            .map(|r| vec![r.address.clone(), r.port.clone(), r.matches.clone(), r.destination.clone()]),
    )
}

pub fn routes(rows: &[RouteRow]) -> String {
    table(
        &["NAME", "VHOST NAME", "DOMAINS", "MATCH", "VIRTUAL SERVICE", "ROUTE", "DESTINATION"],
        rows.iter().map(|r| {
            vec![
                r.name.clone(),
                r.virtual_host.clone(),
                if r.domains.is_empty() { "-".to_owned() } else { r.domains.join(",") },
                r.matches.clone(),
                r.virtual_service.clone(),
                r.route.clone(),
                r.destination.clone(),
            ]
        }),
    )
}

pub fn clusters(rows: &[ClusterRow]) -> String {
    table(
        &["SERVICE FQDN", "PORT", "SUBSET", "DIRECTION", "LB", "TLS", "OUTLIER", "ENDPOINTS", "CLUSTER"],
        rows.iter().map(|r| {
            vec![
                r.service.clone(),
                r.port.clone(),
                r.subset.clone(),
                r.direction.clone(),
                r.load_balancer.clone(),
                r.tls.clone(),
                if r.outlier_detection { "on" } else { "-" }.to_owned(),
                r.endpoints.to_string(),
                r.name.clone(),
            ]
        }),
    )
}

pub fn endpoints(rows: &[EndpointRow]) -> String {
    table(
        &["ENDPOINT", "STATUS", "OUTLIER CHECK", "EJECTIONS", "WEIGHT", "MTLS", "CLUSTER"],
        rows.iter().map(|r| {
            vec![
                r.endpoint.clone(),
                r.status.clone(),
                r.outlier_check.clone(),
                r.ejections.map_or_else(|| "-".to_owned(), |n| n.to_string()),
                r.weight.to_string(),
                if r.mesh_tls { "yes" } else { "no" }.to_owned(),
                r.cluster.clone(),
            ]
        }),
    )
}

/// How long until `secs` from `now`: `23h59m`, `364d23h`, or `expired`.
fn remaining(seconds: u64) -> String {
    match seconds {
        0 => "expired".to_owned(),
        1..60 => format!("{seconds}s"),
        60..3600 => format!("{}m{}s", seconds / 60, seconds % 60),
        3600..86400 => format!("{}h{}m", seconds / 3600, seconds % 3600 / 60),
        _ => format!("{}d{}h", seconds / 86400, seconds % 86400 / 3600),
    }
}

pub fn secrets(secrets: &Secrets) -> String {
    let mut out = table(
        &[
            "RESOURCE NAME",
            "TYPE",
            "STATUS",
            "VALID CERT",
            "SERIAL NUMBER",
            "NOT AFTER",
            "NOT BEFORE",
            "REMAINING",
            "IDENTITY",
            "TRUST DOMAIN",
        ],
        secrets.secrets.iter().map(|r| {
            let time = |t: u64| if t == 0 { "-".to_owned() } else { utc(t) };
            vec![
                r.resource_name.clone(),
                r.kind.clone(),
                r.status.clone(),
                r.valid.to_string(),
                r.serial_number.clone(),
                time(r.not_after),
                time(r.not_before),
                if r.valid || r.status == "EXPIRED" {
                    remaining(r.seconds_remaining)
                } else {
                    "-".to_owned()
                },
                r.identity.clone(),
                r.trust_domain.clone(),
            ]
        }),
    );
    if let Some(note) = &secrets.note {
        out.push_str(&format!("({})\n", clean(note)));
    }
    out
}

/// The line above `all`'s tables: which proxy they describe.
pub fn heading(source: &str) -> String {
    format!("Proxy: {}", clean(source))
}

pub fn json(value: &impl Serialize) -> Result<String, String> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| format!("cannot write JSON: {e}"))?;
    text.push('\n');
    Ok(text)
}

pub fn yaml(value: &impl Serialize) -> Result<String, String> {
    serde_saphyr::to_string(value).map_err(|e| format!("cannot write YAML: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_time_reads_like_kubectl_ages() {
        assert_eq!(remaining(0), "expired");
        assert_eq!(remaining(59), "59s");
        assert_eq!(remaining(3599), "59m59s");
        assert_eq!(remaining(86399), "23h59m");
        assert_eq!(remaining(86400 * 365 + 3600), "365d1h");
    }

    #[test]
    fn hostile_text_from_the_proxy_is_escaped() {
        let rows = [EndpointRow {
            endpoint: "10.0.0.1:80\u{1b}[2J".into(),
            status: "HEALTHY".into(),
            outlier_check: "-".into(),
            cluster: "a\nb".into(),
            weight: 1,
            mesh_tls: false,
            ejections: None,
            active_requests: 0,
        }];
        let text = endpoints(&rows);
        assert!(text.contains("10.0.0.1:80\\u{1b}[2J") && text.contains("a\\u{a}b"), "{text}");
        assert_eq!(text.lines().count(), 2, "{text}");
    }
}
