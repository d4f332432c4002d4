//! The app's metrics, checked before they join the proxy's on one page. Prometheus rejects a
//! whole scrape for one bad line, so a single malformed line from the app would otherwise cost
//! the proxy's own series too. The app's page is taken whole or not at all: every line must be
//! Prometheus text (or OpenMetrics, converted to it), and no family may repeat one of the
//! proxy's (two `# TYPE` lines for one name break the strict parsers) or take a name under the
//! prefixes the proxy's families use (`istio_`, `trellis_`), which may appear later than this
//! scrape, with the proxy's first request.

use std::collections::HashSet;

/// The formats an app may answer in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4` (or no content type: what most apps send).
    Text,
    /// `application/openmetrics-text`.
    OpenMetrics,
}

impl Format {
    /// The format of a `Content-Type`, or `None` for one this page cannot carry (protobuf,
    /// JSON, HTML…).
    pub fn of(content_type: Option<&str>) -> Option<Format> {
        let Some(value) = content_type else { return Some(Format::Text) };
        let media = value.split(';').next().unwrap_or_default().trim();
        if media.eq_ignore_ascii_case("text/plain") || media.is_empty() {
            Some(Format::Text)
        } else if media.eq_ignore_ascii_case("application/openmetrics-text") {
            Some(Format::OpenMetrics)
        } else {
            None
        }
    }
}

/// Why the app's page was left out.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("line {line}: {reason}")]
    Malformed { line: usize, reason: &'static str },
    #[error("line {line}: metric family {name:?} is the proxy's own")]
    Conflict { line: usize, name: String },
}

/// Family names the app's page may not use: the proxy's.
#[derive(Default)]
pub struct Reserved {
    /// Those the proxy's page declares now.
    pub families: HashSet<String>,
}

/// The prefixes of every family the proxy serves, present or future.
const RESERVED_PREFIXES: [&str; 2] = ["istio_", "trellis_"];

impl Reserved {
    /// The families of the proxy's `page` (its `# TYPE` and `# HELP` lines).
    pub fn of(page: &str) -> Reserved {
        let families = page
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE ").or_else(|| l.strip_prefix("# HELP ")))
            .filter_map(|rest| rest.split(' ').next())
            .map(str::to_owned)
            .collect();
        Reserved { families }
    }

    fn contains(&self, name: &str) -> bool {
        RESERVED_PREFIXES.iter().any(|p| name.starts_with(p)) || self.families.contains(name)
    }
}

/// The app's `page` as Prometheus text, or why it cannot be served.
pub fn to_text(page: &str, format: Format, taken: &Reserved) -> Result<String, Rejected> {
    let mut out = String::with_capacity(page.len() + 1);
    for (index, raw) in page.split('\n').enumerate() {
        let line = index + 1;
        let text = raw.strip_suffix('\r').unwrap_or(raw);
        let malformed = |reason| Rejected::Malformed { line, reason };
        if text.trim().is_empty() {
            continue;
        }
        if let Some(comment) = text.strip_prefix('#') {
            match descriptor(comment, format).map_err(malformed)? {
                Descriptor::Family(name) => {
                    if taken.contains(name) {
                        return Err(Rejected::Conflict { line, name: name.to_owned() });
                    }
                    out.push_str(text);
                }
                Descriptor::Type { name, kind } => {
                    if taken.contains(name) {
                        return Err(Rejected::Conflict { line, name: name.to_owned() });
                    }
                    out.push_str("# TYPE ");
                    out.push_str(name);
                    out.push(' ');
                    out.push_str(kind);
                }
                Descriptor::Comment => out.push_str(text),
                Descriptor::Drop => continue,
            }
        } else {
            let sample = sample(text, format).map_err(malformed)?;
            if taken.contains(family_of(sample.name)) || taken.contains(sample.name) {
                return Err(Rejected::Conflict { line, name: sample.name.to_owned() });
            }
            out.push_str(sample.series);
            out.push(' ');
            out.push_str(sample.value);
            if let Some(ms) = sample.timestamp_ms {
                out.push(' ');
                out.push_str(&ms.to_string());
            }
        }
        out.push('\n');
    }
    Ok(out)
}

enum Descriptor<'a> {
    /// `# HELP name …`: kept as written.
    Family(&'a str),
    /// `# TYPE name kind`, with the kind as the text format names it.
    Type { name: &'a str, kind: &'static str },
    /// Any other comment.
    Comment,
    /// OpenMetrics lines that have no place in the text format (`# EOF`, `# UNIT`).
    Drop,
}

fn descriptor(comment: &str, format: Format) -> Result<Descriptor<'_>, &'static str> {
    let Some(rest) = comment.strip_prefix(' ') else { return Ok(Descriptor::Comment) };
    let mut words = rest.splitn(3, ' ');
    let keyword = words.next().unwrap_or_default();
    match keyword {
        "HELP" => {
            let name = words.next().ok_or("# HELP without a metric name")?;
            check_metric_name(name)?;
            Ok(Descriptor::Family(name))
        }
        "TYPE" => {
            let name = words.next().ok_or("# TYPE without a metric name")?;
            check_metric_name(name)?;
            let kind = words.next().ok_or("# TYPE without a type")?.trim();
            let kind = match (kind, format) {
                ("counter" | "gauge" | "histogram" | "summary" | "untyped", _) => static_kind(kind),
                // Kinds only OpenMetrics has: their samples read as untyped in the text format.
                ("unknown" | "info" | "stateset" | "gaugehistogram", Format::OpenMetrics) => "untyped",
                _ => return Err("unknown metric type in # TYPE"),
            };
            Ok(Descriptor::Type { name, kind })
        }
        "EOF" | "UNIT" if format == Format::OpenMetrics => Ok(Descriptor::Drop),
        _ => Ok(Descriptor::Comment),
    }
}

fn static_kind(kind: &str) -> &'static str {
    match kind {
        "counter" => "counter",
        "gauge" => "gauge",
        "histogram" => "histogram",
        "summary" => "summary",
        _ => "untyped",
    }
}

/// One sample line, split into what the text format keeps.
struct Sample<'a> {
    name: &'a str,
    /// The name and its label set, as written.
    series: &'a str,
    value: &'a str,
    timestamp_ms: Option<i64>,
}

fn sample(line: &str, format: Format) -> Result<Sample<'_>, &'static str> {
    let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
    let name = &line[..name_end];
    check_metric_name(name)?;
    let mut rest = &line[name_end..];
    if rest.starts_with('{') {
        let len = label_set_len(rest)?;
        rest = &rest[len..];
    }
    let series = &line[..line.len() - rest.len()];
    // OpenMetrics exemplars (` # {trace_id="…"} 1.0`) have no place in the text format.
    if format == Format::OpenMetrics
        && let Some(cut) = rest.find(" # ")
    {
        rest = &rest[..cut];
    }
    let mut fields = rest.split_ascii_whitespace();
    let value = fields.next().ok_or("a sample without a value")?;
    check_value(value)?;
    let timestamp_ms = match fields.next() {
        None => None,
        Some(t) => Some(timestamp_ms(t, format)?),
    };
    if fields.next().is_some() {
        return Err("text after the sample's timestamp");
    }
    Ok(Sample { name, series, value, timestamp_ms })
}

/// The length of the `{…}` label set at the start of `text`, after checking it.
fn label_set_len(text: &str) -> Result<usize, &'static str> {
    let bytes = text.as_bytes();
    let mut i = 1;
    loop {
        while bytes.get(i).is_some_and(|b| *b == b' ' || *b == b',') {
            i += 1;
        }
        match bytes.get(i) {
            Some(b'}') => return Ok(i + 1),
            None => return Err("a label set without its closing brace"),
            _ => {}
        }
        let start = i;
        while bytes.get(i).is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_') {
            i += 1;
        }
        let name = &text[start..i];
        if name.is_empty() || name.as_bytes()[0].is_ascii_digit() {
            return Err("an invalid label name");
        }
        while bytes.get(i) == Some(&b' ') {
            i += 1;
        }
        if bytes.get(i) != Some(&b'=') {
            return Err("a label without '='");
        }
        i += 1;
        while bytes.get(i) == Some(&b' ') {
            i += 1;
        }
        if bytes.get(i) != Some(&b'"') {
            return Err("a label value that is not quoted");
        }
        i += 1;
        loop {
            match bytes.get(i) {
                None => return Err("a label value without its closing quote"),
                Some(b'"') => break,
                Some(b'\\') => match bytes.get(i + 1) {
                    Some(b'\\' | b'"' | b'n') => i += 2,
                    _ => return Err("an invalid escape in a label value"),
                },
                Some(_) => i += 1,
            }
        }
        i += 1;
        match bytes.get(i) {
            Some(b',' | b'}' | b' ') => {}
            None => return Err("a label set without its closing brace"),
            _ => return Err("labels must be separated by commas"),
        }
    }
}

fn check_metric_name(name: &str) -> Result<(), &'static str> {
    let mut bytes = name.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b':');
    if first_ok && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':') {
        Ok(())
    } else {
        Err("an invalid metric name")
    }
}

fn check_value(value: &str) -> Result<(), &'static str> {
    // Rust reads what Go's ParseFloat (Prometheus's) does, NaN and ±Inf included.
    if value.parse::<f64>().is_ok() { Ok(()) } else { Err("a sample value that is not a number") }
}

/// The text format's timestamps are integer milliseconds; OpenMetrics' are seconds, possibly
/// with a fraction.
fn timestamp_ms(text: &str, format: Format) -> Result<i64, &'static str> {
    match format {
        Format::Text => text.parse::<i64>().map_err(|_| "a timestamp that is not integer milliseconds"),
        Format::OpenMetrics => {
            let seconds: f64 = text.parse().map_err(|_| "a timestamp that is not a number of seconds")?;
            let ms = seconds * 1000.0;
            if ms.is_finite() && ms.abs() < 9.0e15 {
                Ok(ms.round() as i64)
            } else {
                Err("a timestamp out of range")
            }
        }
    }
}

/// The family a sample belongs to: its name without the suffix its type adds.
fn family_of(name: &str) -> &str {
    ["_total", "_bucket", "_count", "_sum", "_created", "_info"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> Reserved {
        Reserved::default()
    }

    #[test]
    fn prometheus_text_passes_through() {
        let page = "# HELP http_requests_total Requests.\n# TYPE http_requests_total counter\n\
                    http_requests_total{method=\"get\",code=\"200\"} 1027 1395066363000\n\
                    http_requests_total{method=\"post\",code=\"400\",} 3\n\
                    # a comment\n\
                    latency_seconds_bucket{le=\"+Inf\"} 9\nup NaN\ntemp -Inf\nescaped{p=\"a\\\"b\\\\c\\n\"} 1e3\n";
        assert_eq!(to_text(page, Format::Text, &none()).unwrap(), page);
    }

    #[test]
    fn openmetrics_loses_eof_units_exemplars_and_gets_millisecond_timestamps() {
        let page = "# TYPE jobs counter\n# UNIT jobs_seconds seconds\n# HELP jobs Jobs.\n\
                    jobs_total{kind=\"a\"} 3 # {trace_id=\"abc\"} 1.0 1520879607.789\n\
                    jobs_created 1520430000.123 1520879607.5\n# TYPE build info\nbuild_info{v=\"1\"} 1\n# EOF\n";
        let text = to_text(page, Format::OpenMetrics, &none()).unwrap();
        assert_eq!(
            text,
            "# TYPE jobs counter\n# HELP jobs Jobs.\njobs_total{kind=\"a\"} 3\n\
             jobs_created 1520430000.123 1520879607500\n# TYPE build untyped\nbuild_info{v=\"1\"} 1\n"
        );
        assert!(!text.contains("EOF"));
    }

    #[test]
    fn malformed_lines_reject_the_page_naming_the_line() {
        for (page, reason) in [
            ("ok 1\n9bad 1\n", "an invalid metric name"),
            ("m{a=\"1\" 2\n", "an invalid label name"),
            ("m{a=\"1\"b=\"2\"} 2\n", "labels must be separated by commas"),
            ("m{a=1} 2\n", "a label value that is not quoted"),
            ("m{a=\"1} 2\n", "a label value without its closing quote"),
            ("m{a=\"\\x\"} 2\n", "an invalid escape in a label value"),
            ("m{\"a\"=\"1\"} 2\n", "an invalid label name"),
            ("m\n", "a sample without a value"),
            ("m one\n", "a sample value that is not a number"),
            ("m 1 2 3\n", "text after the sample's timestamp"),
            ("m 1 1.5\n", "a timestamp that is not integer milliseconds"),
            ("# TYPE m flavour\n", "unknown metric type in # TYPE"),
            ("# TYPE\n", "# TYPE without a metric name"),
            ("<html><body>oops</body></html>\n", "an invalid metric name"),
            ("m{a=\"1\"\n", "a label set without its closing brace"),
        ] {
            match to_text(page, Format::Text, &none()) {
                Err(Rejected::Malformed { reason: r, .. }) => assert_eq!(r, reason, "{page:?}"),
                other => panic!("{page:?}: {other:?}"),
            }
        }
        assert_eq!(
            to_text("ok 1\n\nbad-name 1\n", Format::Text, &none()),
            Err(Rejected::Malformed { line: 3, reason: "an invalid metric name" })
        );
    }

    #[test]
    fn the_proxys_families_cannot_be_repeated() {
        let proxy = "# HELP envoy_up Up.\n# TYPE envoy_up gauge\nenvoy_up 1\n# EOF\n";
        let taken = Reserved::of(proxy);
        assert!(taken.contains("envoy_up"));
        for page in [
            "# TYPE envoy_up gauge\n",
            "envoy_up{a=\"b\"} 7\n",
            "# HELP istio_requests Requests.\n",
            "istio_requests_total 1\n",
            "trellis_anything 1\n",
        ] {
            assert!(
                matches!(to_text(page, Format::Text, &taken), Err(Rejected::Conflict { .. })),
                "{page:?}"
            );
        }
        assert!(to_text("envoy_up_by_app 1\napp_istio_requests_total 1\n", Format::Text, &taken).is_ok());
    }

    #[test]
    fn content_types() {
        assert_eq!(Format::of(None), Some(Format::Text));
        assert_eq!(Format::of(Some("text/plain; version=0.0.4; charset=utf-8")), Some(Format::Text));
        assert_eq!(
            Format::of(Some("application/openmetrics-text; version=1.0.0; charset=utf-8")),
            Some(Format::OpenMetrics)
        );
        assert_eq!(
            Format::of(Some("application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily")),
            None
        );
        assert_eq!(Format::of(Some("text/html")), None);
    }

    /// Pages spliced from pieces of valid and broken lines, cut at every kind of place: the
    /// checker answers (accepts or names a line), never panics, and what it accepts is text
    /// it would accept again unchanged.
    #[test]
    fn spliced_pages_never_panic_and_accepted_output_is_stable() {
        const PIECES: [&str; 16] = [
            "m",
            "{",
            "}",
            "a=",
            "\"v\"",
            ",",
            " ",
            "1",
            "NaN",
            "# TYPE m counter",
            "# HELP m h",
            "\n",
            "# EOF",
            " # {t=\"x\"} 1",
            "\\",
            "é",
        ];
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..5000 {
            let len = next() % 24;
            let page: String = (0..len).map(|_| PIECES[(next() % PIECES.len() as u64) as usize]).collect();
            for format in [Format::Text, Format::OpenMetrics] {
                if let Ok(text) = to_text(&page, format, &none()) {
                    assert_eq!(to_text(&text, Format::Text, &none()).as_ref(), Ok(&text), "{page:?}");
                }
            }
        }
    }

    #[test]
    fn hostile_pages_never_panic() {
        for page in [
            "{",
            "m{",
            "m{a",
            "m{a=",
            "m{a=\"",
            "m{a=\"\\",
            "#",
            "# ",
            "# HELP",
            "\u{0}",
            "m{a=\"é\"} 1",
            "m 1e999999",
        ] {
            let _ = to_text(page, Format::Text, &none());
            let _ = to_text(page, Format::OpenMetrics, &none());
        }
    }
}
