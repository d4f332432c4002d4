//! The table, the detail of one proxy, and the JSON report. Pure: the caller gives the time.
//!
//! Everything printed that came from the network (ids, NACK messages, rejected config lines) goes
//! through [`clean`] first: a proxy or a config file must not be able to move the cursor, clear
//! the screen or reorder text in the user's terminal.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::model::{ProxySync, TYPES, TypeState, TypeSync};

/// A proxy and the control plane it is connected to.
#[derive(Clone, Debug)]
pub struct Connected {
    pub control_plane: String,
    pub proxy: ProxySync,
}

/// `NAME NAMESPACE SETTINGS ... STATUS CONNECTED`, then the NACKs, then the rejected config.
/// `sources` names the control planes asked, for the message when no proxy is connected.
pub fn table(proxies: &[Connected], rejected: &[String], sources: &str, now: u64) -> String {
    let mut rows = vec![header()];
    for c in proxies {
        let p = &c.proxy;
        let mut row = vec![clean(p.name()), clean(&p.namespace)];
        row.extend(TYPES.iter().map(|(kind, _)| cell(p.types.get(*kind))));
        row.push(clean(&p.state().to_string()));
        row.push(age(p.connected_since, now));
        rows.push(row);
    }
    let mut out = String::new();
    if proxies.is_empty() {
        let _ = writeln!(out, "No proxies are connected to {}.", clean(sources));
    } else {
        out.push_str(&columns(&rows));
    }
    let nacks: Vec<String> = proxies
        .iter()
        .flat_map(|c| {
            let p = &c.proxy;
            p.types.iter().filter_map(move |(kind, t)| {
                t.nack.as_ref().map(|m| {
                    format!("  {}.{} {}: {}", clean(p.name()), clean(&p.namespace), clean(kind), clean(m))
                })
            })
        })
        .collect();
    if !nacks.is_empty() {
        out.push_str("\nRejected by proxies (each keeps its last accepted config of that type):\n");
        for line in nacks {
            out.push_str(&line);
            out.push('\n');
        }
    }
    rejected_config(&mut out, rejected);
    out
}

/// Everything about one proxy.
pub fn detail(c: &Connected, show_control_plane: bool, now: u64) -> String {
    let p = &c.proxy;
    let mut out = String::new();
    let mut field = |name: &str, value: &str| {
        let _ = writeln!(out, "{:<15}{value}", format!("{name}:"));
    };
    field("Proxy", &clean(&p.id));
    field("Name", &clean(p.name()));
    field("Namespace", &clean(&p.namespace));
    field("Workload", &clean(&p.workload));
    let connected = match p.connected_since {
        0 => "-".to_owned(),
        since => format!("{} ago ({})", age(since, now), utc(since)),
    };
    field("Connected", &connected);
    field("Status", &clean(&p.state().to_string()));
    if show_control_plane {
        field("Control plane", &clean(&c.control_plane));
    }
    out.push('\n');
    // The known types in the table's order, then any a newer control plane added.
    let known = TYPES.iter().map(|(kind, _)| *kind);
    let extra = p.types.keys().map(String::as_str).filter(|k| !TYPES.iter().any(|(t, _)| t == k));
    let mut rows = vec![["TYPE", "STATE", "SENT", "ACKED", "HELD"].map(str::to_owned).to_vec()];
    for kind in known.chain(extra) {
        let t = p.types.get(kind);
        let number = |n: Option<u64>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
        rows.push(vec![
            clean(kind),
            state_word(t.map_or(TypeState::NotSent, TypeSync::state)).to_owned(),
            number(t.and_then(|t| t.sent)),
            number(t.and_then(|t| t.acked)),
            t.map_or(0, |t| t.held).to_string(),
        ]);
    }
    out.push_str(&columns(&rows));
    let nacks: Vec<_> = p.types.iter().filter_map(|(k, t)| t.nack.as_ref().map(|m| (k, m))).collect();
    if !nacks.is_empty() {
        out.push_str("\nRejected by the proxy (it keeps its last accepted config of that type):\n");
        for (kind, message) in nacks {
            let _ = writeln!(out, "  {}: {}", clean(kind), clean(message));
        }
    }
    out
}

/// The rejected-config section, shared by the table and the detail views.
pub fn rejected_config(out: &mut String, rejected: &[String]) {
    if rejected.is_empty() {
        return;
    }
    out.push_str("\nRejected config (the control plane keeps serving its last good version):\n");
    for line in rejected {
        let _ = writeln!(out, "  {}", clean(line));
    }
}

/// What `-o json` prints: `/debug/syncz`'s shape, with what the CLI concluded added (each proxy's
/// `name` and `controlPlane`, each type's `state`, and `status` as the CLI computes it).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JsonReport<'a> {
    pub proxies: Vec<JsonProxy<'a>>,
    pub rejected_config: &'a [String],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JsonProxy<'a> {
    name: &'a str,
    id: &'a str,
    namespace: &'a str,
    workload: &'a str,
    connected_since: u64,
    status: String,
    control_plane: &'a str,
    types: BTreeMap<&'a str, JsonType<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonType<'a> {
    state: TypeState,
    sent: Option<u64>,
    acked: Option<u64>,
    nack: Option<&'a str>,
    held: u64,
}

impl<'a> JsonProxy<'a> {
    pub fn of(c: &'a Connected) -> JsonProxy<'a> {
        let p = &c.proxy;
        JsonProxy {
            name: p.name(),
            id: &p.id,
            namespace: &p.namespace,
            workload: &p.workload,
            connected_since: p.connected_since,
            status: p.state().to_string(),
            control_plane: &c.control_plane,
            types: p
                .types
                .iter()
                .map(|(k, t)| {
                    let json = JsonType {
                        state: t.state(),
                        sent: t.sent,
                        acked: t.acked,
                        nack: t.nack.as_deref(),
                        held: t.held,
                    };
                    (k.as_str(), json)
                })
                .collect(),
        }
    }
}

fn header() -> Vec<String> {
    let mut row = vec!["NAME".to_owned(), "NAMESPACE".to_owned()];
    row.extend(TYPES.iter().map(|(_, title)| (*title).to_owned()));
    row.extend(["STATUS".to_owned(), "CONNECTED".to_owned()]);
    row
}

/// `SYNCED (12)`, `STALE (3)`, `NACKED (2)`, or `-` when nothing of the type was sent.
fn cell(t: Option<&TypeSync>) -> String {
    match t.map(|t| (t.state(), t.held)) {
        None | Some((TypeState::NotSent, _)) => "-".to_owned(),
        Some((state, held)) => format!("{} ({held})", state_word(state)),
    }
}

fn state_word(state: TypeState) -> &'static str {
    match state {
        TypeState::NotSent => "-",
        TypeState::Synced => "SYNCED",
        TypeState::Stale => "STALE",
        TypeState::Nacked => "NACKED",
    }
}

/// Left-aligned columns two spaces apart, without trailing spaces.
pub fn columns(rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            let w = cell.chars().count();
            match widths.get_mut(i) {
                Some(width) => *width = (*width).max(w),
                None => widths.push(w),
            }
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// How long ago `since` was, the way kubectl shows ages: `42s`, `5m3s`, `3h7m`, `12d4h`.
pub fn age(since: u64, now: u64) -> String {
    if since == 0 {
        return "-".to_owned();
    }
    let s = now.saturating_sub(since);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

/// Unix seconds as `2025-03-01T12:00:00Z`.
pub fn utc(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Text from the network made safe for a terminal: control characters (escape sequences, new
/// lines, carriage returns) and bidirectional overrides are written as `\u{..}` escapes.
pub fn clean(text: &str) -> String {
    let unsafe_char =
        |c: char| c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
    if !text.chars().any(unsafe_char) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::model::Syncz;
    use super::*;

    const NOW: u64 = 1_750_000_000;

    /// Four proxies: synced, stale, nacked, and one that has not been sent everything yet; and a
    /// rejected config file.
    fn fixture() -> Syncz {
        let json = format!(
            r#"{{
  "proxies": [
    {{"id": "sidecar~10.0.0.5~productpage-v1-6b7f6c.bookinfo~bookinfo.svc.cluster.local",
      "namespace": "bookinfo", "workload": "productpage-v1", "connectedSince": {synced_since},
      "status": "SYNCED",
      "types": {{
        "settings": {{"sent": 4, "acked": 4, "nack": null, "held": 1}},
        "service": {{"sent": 4, "acked": 4, "nack": null, "held": 12}},
        "virtualhost": {{"sent": 4, "acked": 4, "nack": null, "held": 3}},
        "cluster": {{"sent": 4, "acked": 4, "nack": null, "held": 3}},
        "endpoints": {{"sent": 4, "acked": 4, "nack": null, "held": 3}}}}}},
    {{"id": "sidecar~10.0.0.6~reviews-v1-54c9.bookinfo~bookinfo.svc.cluster.local",
      "namespace": "bookinfo", "workload": "reviews-v1", "connectedSince": {stale_since},
      "status": "STALE",
      "types": {{
        "settings": {{"sent": 5, "acked": 5, "nack": null, "held": 1}},
        "service": {{"sent": 5, "acked": 4, "nack": null, "held": 12}},
        "virtualhost": {{"sent": 5, "acked": 5, "nack": null, "held": 1}},
        "cluster": {{"sent": 5, "acked": 5, "nack": null, "held": 1}},
        "endpoints": {{"sent": 5, "acked": 5, "nack": null, "held": 1}}}}}},
    {{"id": "sidecar~10.0.0.7~ratings-v1-8d5f.bookinfo~bookinfo.svc.cluster.local",
      "namespace": "bookinfo", "workload": "ratings-v1", "connectedSince": {nacked_since},
      "status": "NACKED",
      "types": {{
        "settings": {{"sent": 5, "acked": 5, "nack": null, "held": 1}},
        "service": {{"sent": 5, "acked": 5, "nack": null, "held": 12}},
        "virtualhost": {{"sent": 5, "acked": 5, "nack": null, "held": 2}},
        "cluster": {{"sent": 5, "acked": 4, "nack": "cluster outbound|9080||reviews: tls.sni: empty", "held": 2}},
        "endpoints": {{"sent": 5, "acked": 5, "nack": null, "held": 2}}}}}},
    {{"id": "sidecar~10.0.0.8~details-v1-77fc.bookinfo~bookinfo.svc.cluster.local",
      "namespace": "bookinfo", "workload": "details-v1", "connectedSince": {new_since},
      "status": "SYNCED",
      "types": {{
        "settings": {{"sent": 5, "acked": 5, "nack": null, "held": 1}},
        "service": {{"sent": 5, "acked": 5, "nack": null, "held": 12}}}}}}
  ],
  "rejectedConfig": ["/etc/istio/config/reviews.yaml: VirtualService bookinfo/reviews: spec.http[0].route: weights add up to 110, not 100"]
}}"#,
            synced_since = NOW - 303,
            stale_since = NOW - 2 * 3600 - 5 * 60,
            nacked_since = NOW - 3 * 86400 - 4 * 3600,
            new_since = NOW - 7,
        );
        serde_json::from_str(&json).unwrap()
    }

    fn connected(syncz: &Syncz) -> Vec<Connected> {
        let control_plane = "http://127.0.0.1:15014".to_owned();
        syncz
            .proxies
            .iter()
            .map(|p| Connected { control_plane: control_plane.clone(), proxy: p.clone() })
            .collect()
    }

    #[test]
    fn table_of_synced_stale_nacked_and_never_sent() {
        let syncz = fixture();
        let text = table(&connected(&syncz), &syncz.rejected_config, "http://127.0.0.1:15014", NOW);
        let want = "\
NAME                   NAMESPACE  SETTINGS    SERVICES     VHOSTS      CLUSTERS    ENDPOINTS   STATUS  CONNECTED
productpage-v1-6b7f6c  bookinfo   SYNCED (1)  SYNCED (12)  SYNCED (3)  SYNCED (3)  SYNCED (3)  SYNCED  5m3s
reviews-v1-54c9        bookinfo   SYNCED (1)  STALE (12)   SYNCED (1)  SYNCED (1)  SYNCED (1)  STALE   2h5m
ratings-v1-8d5f        bookinfo   SYNCED (1)  SYNCED (12)  SYNCED (2)  NACKED (2)  SYNCED (2)  NACKED  3d4h
details-v1-77fc        bookinfo   SYNCED (1)  SYNCED (12)  -           -           -           SYNCED  7s

Rejected by proxies (each keeps its last accepted config of that type):
  ratings-v1-8d5f.bookinfo cluster: cluster outbound|9080||reviews: tls.sni: empty

Rejected config (the control plane keeps serving its last good version):
  /etc/istio/config/reviews.yaml: VirtualService bookinfo/reviews: spec.http[0].route: weights add up to 110, not 100
";
        assert_eq!(text, want, "\n{text}");
    }

    #[test]
    fn an_empty_mesh_says_so() {
        assert_eq!(
            table(&[], &[], "http://h:1/debug/syncz", NOW),
            "No proxies are connected to http://h:1/debug/syncz.\n"
        );
    }

    #[test]
    fn detail_of_one_proxy() {
        let syncz = fixture();
        let proxies = connected(&syncz);
        let text = detail(&proxies[2], false, NOW);
        let since = utc(NOW - 3 * 86400 - 4 * 3600);
        let want = format!(
            "\
Proxy:         sidecar~10.0.0.7~ratings-v1-8d5f.bookinfo~bookinfo.svc.cluster.local
Name:          ratings-v1-8d5f
Namespace:     bookinfo
Workload:      ratings-v1
Connected:     3d4h ago ({since})
Status:        NACKED

TYPE         STATE   SENT  ACKED  HELD
settings     SYNCED  5     5      1
service      SYNCED  5     5      12
virtualhost  SYNCED  5     5      2
cluster      NACKED  5     4      2
endpoints    SYNCED  5     5      2

Rejected by the proxy (it keeps its last accepted config of that type):
  cluster: cluster outbound|9080||reviews: tls.sni: empty
"
        );
        assert_eq!(text, want, "\n{text}");
        let text = detail(&proxies[3], true, NOW);
        assert!(text.contains("Control plane: http://127.0.0.1:15014\n"), "{text}");
        assert!(text.contains("\nendpoints    -       -     -      0\n"), "{text}");
    }

    #[test]
    fn json_report_adds_the_clis_conclusions() {
        let syncz = fixture();
        let proxies = connected(&syncz);
        let report = JsonReport {
            proxies: proxies.iter().map(JsonProxy::of).collect(),
            rejected_config: &syncz.rejected_config,
        };
        let v = serde_json::to_value(&report).unwrap();
        assert_eq!(v["proxies"][2]["name"], "ratings-v1-8d5f");
        assert_eq!(v["proxies"][2]["status"], "NACKED");
        assert_eq!(v["proxies"][2]["types"]["cluster"]["state"], "NACKED");
        assert_eq!(v["proxies"][1]["types"]["service"]["state"], "STALE");
        assert_eq!(v["proxies"][1]["types"]["service"]["acked"], 4);
        assert_eq!(v["proxies"][0]["controlPlane"], "http://127.0.0.1:15014");
        assert_eq!(v["rejectedConfig"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn ages_and_times() {
        assert_eq!(age(NOW, NOW), "0s");
        assert_eq!(age(NOW + 10, NOW), "0s");
        assert_eq!(age(NOW - 59, NOW), "59s");
        assert_eq!(age(NOW - 60, NOW), "1m0s");
        assert_eq!(age(NOW - 3599, NOW), "59m59s");
        assert_eq!(age(NOW - 3600, NOW), "1h0m");
        assert_eq!(age(NOW - 86400 * 400, NOW), "400d0h");
        assert_eq!(age(0, NOW), "-");
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_750_000_000), "2025-06-15T15:06:40Z");
    }

    #[test]
    fn text_from_the_network_cannot_drive_the_terminal() {
        assert_eq!(clean("plain ünïcode"), "plain ünïcode");
        assert_eq!(clean("a\u{1b}[2Jb\nc\rd"), "a\\u{1b}[2Jb\\u{a}c\\u{d}d");
        assert_eq!(clean("x\u{202E}y"), "x\\u{202e}y");
        let mut syncz = fixture();
        syncz.proxies[2].types.get_mut("cluster").unwrap().nack = Some("evil\u{1b}]0;title\u{7}".into());
        syncz.rejected_config = vec!["f.yaml: \u{1b}[31mred".into()];
        let text = table(&connected(&syncz), &syncz.rejected_config, "http://127.0.0.1:15014", NOW);
        assert!(!text.contains('\u{1b}'), "{text}");
        assert!(text.contains("evil\\u{1b}]0;title\\u{7}"), "{text}");
    }
}
