//! The proxies' access logs, read back at the end of a run. The mesh config sends them to each
//! proxy's standard output (`accessLogFile: /dev/stdout`, as Istio users do), which the demo
//! keeps per pod in `logs/<pod>-proxy.log`, in Istio's default TEXT format — the lines
//! `kubectl logs -c istio-proxy` shows in a cluster.
//!
//! Each line is put on an edge of the table from what it says: a caller's proxy writes its
//! outbound line with the upstream cluster (`outbound|8080|v1|catalog.shop.svc.cluster.local`),
//! a callee's proxy its inbound line (`inbound|8080||`); the two lines of one call share the
//! `x-request-id` the apps pass on, which tells a callee's line whose call it was. A callee line
//! no caller's proxy wrote came from outside the mesh (the load, at the entry pod).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use serde::Serialize;

use super::plan::Service;

/// Fields of Istio's default TEXT format, in order (`trellis_api::access_log::ISTIO_TEXT_FORMAT`).
const FIELDS: usize = 22;
const RESPONSE_CODE: usize = 2;
const REQUEST_ID: usize = 13;
const AUTHORITY: usize = 14;
const UPSTREAM_CLUSTER: usize = 16;
/// How much of a log is read at most.
const MAX_READ: u64 = 256 << 20;

/// What the summary needs of one line.
#[derive(Debug, PartialEq, Eq)]
struct Entry<'a> {
    status: &'a str,
    request_id: Option<&'a str>,
    authority: &'a str,
    cluster: &'a str,
}

/// Splits a line of Istio's default TEXT format into its fields (quotes removed); `None` for
/// anything else (the proxy's own log lines share the file).
fn parse(line: &str) -> Option<Entry<'_>> {
    let line = line.trim_end();
    if !line.starts_with('[') {
        return None;
    }
    let mut fields = Vec::with_capacity(FIELDS);
    let mut rest = line;
    while !rest.is_empty() && fields.len() <= FIELDS {
        let (field, after) = match rest.strip_prefix('"') {
            Some(quoted) => {
                let end = quoted
                    .find("\" ")
                    .unwrap_or_else(|| quoted.strip_suffix('"').map_or(usize::MAX, str::len));
                if end == usize::MAX {
                    return None;
                }
                (&quoted[..end], &quoted[end + 1..])
            }
            None => {
                let end = rest.find(' ').unwrap_or(rest.len());
                (&rest[..end], &rest[end..])
            }
        };
        fields.push(field);
        rest = after.trim_start_matches(' ');
    }
    if fields.len() != FIELDS || !fields[0].ends_with(']') {
        return None;
    }
    Some(Entry {
        status: fields[RESPONSE_CODE],
        request_id: Some(fields[REQUEST_ID]).filter(|id| !id.is_empty() && *id != "-"),
        authority: fields[AUTHORITY],
        cluster: fields[UPSTREAM_CLUSTER],
    })
}

/// One edge's lines, from both reporters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EdgeLog {
    pub from: String,
    pub to: String,
    /// Lines the caller's proxy wrote (Istio's `source` reporter); none for the load.
    pub caller_lines: u64,
    /// Lines the callee's proxies wrote (the `destination` reporter).
    pub callee_lines: u64,
    /// One line of the edge: the traced request's when there is one, from the caller's proxy
    /// when there is one.
    pub example: Option<String>,
    /// The pod whose proxy wrote the example.
    pub example_from: Option<String>,
    /// How good an example it is: the traced request's (2), a 200 (1), another (0).
    #[serde(skip)]
    example_rank: u8,
}

impl EdgeLog {
    fn offer(&mut self, rank: u8, pod: &str, line: &str) {
        if self.example.is_none() || rank > self.example_rank {
            self.example = Some(line.trim_end().to_owned());
            self.example_from = Some(pod.to_owned());
            self.example_rank = rank;
        }
    }
}

/// The run's access logs.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AccessLogReport {
    /// `accessLogFile`, `accessLogEncoding` and whether the format is Istio's default.
    pub file: String,
    pub encoding: String,
    pub format: String,
    /// Where each pod's lines were (each proxy's standard output), and how many it wrote.
    pub pods: Vec<PodLog>,
    pub edges: Vec<EdgeLog>,
    /// Why some log could not be read.
    pub errors: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PodLog {
    pub pod: String,
    pub path: String,
    pub lines: u64,
}

/// Lines gathered pod by pod, then put on edges.
pub struct Gather<'a> {
    services: &'a [Service],
    entry: &'a str,
    traced_request_id: Option<&'a str>,
    /// (request id, service called) → the caller's pod.
    callers: HashMap<(String, String), String>,
    /// Callee lines waiting for their caller: pod, service, request id, the line and its rank
    /// as an example.
    inbound: Vec<(String, String, Option<String>, String, u8)>,
    edges: BTreeMap<(String, String), EdgeLog>,
    lines: BTreeMap<String, u64>,
}

impl<'a> Gather<'a> {
    pub fn new(services: &'a [Service], entry: &'a str, traced_request_id: Option<&'a str>) -> Gather<'a> {
        Gather {
            services,
            entry,
            traced_request_id,
            callers: HashMap::new(),
            inbound: Vec::new(),
            edges: BTreeMap::new(),
            lines: BTreeMap::new(),
        }
    }

    fn short(&self, host: &str) -> String {
        self.services
            .iter()
            .find(|s| s.host.eq_ignore_ascii_case(host))
            .map_or_else(|| host.split('.').next().unwrap_or_default().to_owned(), |s| s.short.clone())
    }

    /// One line of `pod`'s proxy's output.
    pub fn line(&mut self, pod: &str, line: &str) {
        let Some(entry) = parse(line) else { return };
        *self.lines.entry(pod.to_owned()).or_default() += 1;
        let traced = entry.request_id.is_some() && entry.request_id == self.traced_request_id;
        let rank = match (traced, entry.status) {
            (true, _) => 2,
            (false, "200") => 1,
            _ => 0,
        };
        if let Some(cluster) = entry.cluster.strip_prefix("outbound|") {
            let to = self.short(cluster.split('|').nth(2).unwrap_or_default());
            if let Some(id) = entry.request_id {
                self.callers.insert((id.to_owned(), to.clone()), pod.to_owned());
            }
            let edge = self.edge(pod, &to);
            edge.caller_lines += 1;
            edge.offer(rank, pod, line);
        } else {
            let Some(service) = self.services.iter().find(|s| s.pods.iter().any(|p| p == pod)) else {
                return;
            };
            // A request the proxy answered itself (a denial) names no cluster: it was inbound
            // when it asked for the pod's own service.
            let host = entry.authority.rsplit_once(':').map_or(entry.authority, |(h, _)| h);
            if !entry.cluster.starts_with("inbound|") && !host.eq_ignore_ascii_case(&service.host) {
                return;
            }
            let id = entry.request_id.map(str::to_owned);
            self.inbound.push((pod.to_owned(), service.short.clone(), id, line.trim_end().to_owned(), rank));
        }
    }

    fn edge(&mut self, from: &str, to: &str) -> &mut EdgeLog {
        self.edges.entry((from.to_owned(), to.to_owned())).or_insert_with(|| EdgeLog {
            from: from.to_owned(),
            to: to.to_owned(),
            ..EdgeLog::default()
        })
    }

    /// The edges, the load's first, then by caller in `pods`' order.
    pub fn finish(mut self, pods: &[String]) -> (Vec<EdgeLog>, BTreeMap<String, u64>) {
        for (pod, service, id, line, rank) in std::mem::take(&mut self.inbound) {
            let caller = id.as_ref().and_then(|id| self.callers.get(&(id.clone(), service.clone()))).cloned();
            let from =
                caller.unwrap_or_else(|| if pod == self.entry { "load" } else { "unknown" }.to_owned());
            let edge = self.edge(&from, &service);
            edge.callee_lines += 1;
            // The callee's line is the example only where no caller's proxy wrote one.
            if edge.caller_lines == 0 {
                edge.offer(rank, &pod, &line);
            }
        }
        let rank = |from: &str| match from {
            "load" => 0,
            other => pods.iter().position(|p| p == other).map_or(usize::MAX, |i| i + 1),
        };
        let mut edges: Vec<EdgeLog> = self.edges.into_values().collect();
        edges.sort_by(|a, b| (rank(&a.from), &a.to).cmp(&(rank(&b.from), &b.to)));
        (edges, self.lines)
    }
}

/// Reads each pod's proxy log (`(pod, path)`) into the report.
pub fn read(
    logs: &[(String, std::path::PathBuf)],
    services: &[Service],
    entry: &str,
    traced_request_id: Option<&str>,
    (file, encoding, format): (String, String, String),
) -> AccessLogReport {
    let mut gather = Gather::new(services, entry, traced_request_id);
    let mut errors = Vec::new();
    for (pod, path) in logs {
        if let Err(e) = read_one(pod, path, &mut gather) {
            errors.push(format!("{}: {e}", path.display()));
        }
    }
    let pods: Vec<String> = logs.iter().map(|(p, _)| p.clone()).collect();
    let (edges, lines) = gather.finish(&pods);
    AccessLogReport {
        file,
        encoding,
        format,
        pods: logs
            .iter()
            .map(|(pod, path)| PodLog {
                pod: pod.clone(),
                path: path.display().to_string(),
                lines: lines.get(pod).copied().unwrap_or(0),
            })
            .collect(),
        edges,
        errors,
    }
}

fn read_one(pod: &str, path: &Path, gather: &mut Gather<'_>) -> std::io::Result<()> {
    let file = std::fs::File::open(path)?;
    let mut reader = BufReader::new(file.take(MAX_READ));
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        if reader.read_until(b'\n', &mut buffer)? == 0 {
            return Ok(());
        }
        // A line still being written has no newline yet: left for the next reader.
        if buffer.last() == Some(&b'\n') {
            gather.line(pod, &String::from_utf8_lossy(&buffer));
        }
    }
}

impl AccessLogReport {
    pub fn lines(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "Access logs ({} encoding, {}, to {}: each proxy's standard output, kept per pod while the mesh ran; \
             --keep leaves them to read):",
            self.encoding, self.format, self.file
        )];
        let width =
            self.edges.iter().map(|e| e.from.chars().count() + e.to.chars().count() + 3).max().unwrap_or(0);
        for edge in &self.edges {
            let name = format!("{} → {}", edge.from, edge.to);
            let plural = |n: u64| if n == 1 { "" } else { "s" };
            let caller = if edge.from == "load" || edge.from == "unknown" {
                "no caller's proxy (outside the mesh)".to_owned()
            } else {
                format!("{} line{} by {}'s proxy", edge.caller_lines, plural(edge.caller_lines), edge.from)
            };
            lines.push(format!("  {name:<width$}  {caller}, {} by {}'s", edge.callee_lines, edge.to));
            if let (Some(example), Some(pod)) = (&edge.example, &edge.example_from) {
                lines.push(format!("    {pod}: {example}"));
            }
        }
        let files: Vec<String> =
            self.pods.iter().map(|p| format!("{} ({} lines)", p.path, p.lines)).collect();
        lines.push(format!("  files: {}", files.join(", ")));
        lines.extend(self.errors.iter().map(|e| format!("  not read: {e}")));
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::plan::Subset;

    fn service(short: &str, pods: &[&str]) -> Service {
        Service {
            host: format!("{short}.shop.svc.cluster.local"),
            short: short.to_owned(),
            vip: None,
            port: 8080,
            pods: pods.iter().map(|p| p.to_string()).collect(),
            subsets: Vec::<Subset>::new(),
        }
    }

    fn line(status: u16, id: &str, cluster: &str) -> String {
        format!(
            "[2026-12-07T15:00:00.000Z] \"GET /items HTTP/1.1\" {status} - via_upstream - \"-\" 0 120 3 2 \"-\" \
             \"-\" \"{id}\" \"catalog.shop.svc.cluster.local:8080\" \"10.77.0.11:8080\" {cluster} 10.77.0.10:41234 \
             10.96.0.20:8080 10.77.0.10:39876 - default"
        )
    }

    #[test]
    fn istios_default_text_lines_are_read_and_others_are_not() {
        let text = line(200, "abc", "outbound|8080|v1|catalog.shop.svc.cluster.local");
        let entry = parse(&text).unwrap();
        assert_eq!((entry.status, entry.request_id), ("200", Some("abc")));
        assert_eq!(entry.cluster, "outbound|8080|v1|catalog.shop.svc.cluster.local");
        assert_eq!(parse(&line(200, "-", "inbound|8080||")).unwrap().request_id, None);
        // The proxy's own lines, a line cut short, an unclosed quote, extra fields, hostile bytes.
        for other in [
            "2026-12-07T15:00:00Z  WARN trellis_proxy: something".to_owned(),
            text[..text.len() / 2].to_owned(),
            "[x] \"GET / HTTP/1.1".to_owned(),
            format!("{text} extra"),
            format!("[{}", "\" ".repeat(10_000)),
            String::new(),
        ] {
            assert_eq!(parse(&other), None, "{other:?}");
        }
    }

    /// Both reporters of every edge, matched by request id: frontend's inbound line has no
    /// caller's proxy (the load); catalog's inbound lines are frontend's calls, or inventory's
    /// denied one; the traced request's lines are the examples.
    #[test]
    fn lines_go_on_the_edges_their_request_ids_tell() {
        let services = [
            service("frontend", &["frontend"]),
            service("catalog", &["catalog-v1"]),
            service("inventory", &["inventory"]),
        ];
        let mut gather = Gather::new(&services, "frontend", Some("traced"));
        let catalog = "outbound|8080|v1|catalog.shop.svc.cluster.local";
        let inventory = "outbound|8080||inventory.shop.svc.cluster.local";
        for id in ["r1", "traced"] {
            gather.line("frontend", &line(200, id, "inbound|8080||"));
            gather.line("frontend", &line(200, id, catalog));
            gather.line("catalog-v1", &line(200, id, "inbound|8080||"));
            gather.line("catalog-v1", &line(200, id, inventory));
            gather.line("inventory", &line(200, id, "inbound|8080||"));
        }
        gather.line("inventory", &line(403, "denied", catalog));
        gather.line("catalog-v1", &line(403, "denied", "-"));
        // A line the proxy answered itself on the way out: no edge.
        gather.line("frontend", &line(503, "lost", "-").replace("catalog.shop", "elsewhere.shop"));
        gather.line("inventory", "2026-12-07 INFO something else");
        let pods = ["frontend", "catalog-v1", "inventory"].map(String::from);
        let (edges, lines) = gather.finish(&pods);
        let counts: Vec<_> =
            edges.iter().map(|e| (e.from.as_str(), e.to.as_str(), e.caller_lines, e.callee_lines)).collect();
        assert_eq!(
            counts,
            [
                ("load", "frontend", 0, 2),
                ("frontend", "catalog", 2, 2),
                ("catalog-v1", "inventory", 2, 2),
                ("inventory", "catalog", 1, 1)
            ]
        );
        assert!(edges[1].example.as_ref().unwrap().contains("\"traced\""), "{:?}", edges[1]);
        assert_eq!(edges[1].example_from.as_deref(), Some("frontend"));
        assert!(edges[0].example.as_ref().unwrap().contains("\"traced\" "), "{:?}", edges[0]);
        assert_eq!(edges[0].example_from.as_deref(), Some("frontend"));
        assert_eq!((lines["catalog-v1"], lines["frontend"]), (5, 5));
        let report = AccessLogReport {
            file: "/dev/stdout".into(),
            encoding: "TEXT".into(),
            format: "Istio's default format".into(),
            pods: vec![PodLog {
                pod: "frontend".into(),
                path: "/tmp/x/logs/frontend-proxy.log".into(),
                lines: 4,
            }],
            edges,
            errors: Vec::new(),
        };
        let text = report.lines().join("\n");
        assert!(
            text.contains("  load → frontend         no caller's proxy (outside the mesh), 2 by frontend's"),
            "{text}"
        );
        assert!(
            text.contains("  frontend → catalog      2 lines by frontend's proxy, 2 by catalog's"),
            "{text}"
        );
        assert!(text.contains("files: /tmp/x/logs/frontend-proxy.log (4 lines)"), "{text}");
    }

    #[test]
    fn a_log_file_is_read_whole_lines_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("frontend-proxy.log");
        let full = line(200, "a", "inbound|8080||");
        std::fs::write(&path, format!("trellis-proxy started\n{full}\n{}", &full[..40])).unwrap();
        let services = [service("frontend", &["frontend"])];
        let logs = [("frontend".to_owned(), path), ("gone".to_owned(), dir.path().join("nope.log"))];
        let report = read(&logs, &services, "frontend", None, Default::default());
        assert_eq!(report.pods[0].lines, 1);
        assert_eq!(report.edges.len(), 1);
        assert_eq!(report.errors.len(), 1);
        assert!(report.errors[0].contains("nope.log"), "{:?}", report.errors);
    }
}
