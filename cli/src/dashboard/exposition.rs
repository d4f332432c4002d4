//! Reads the series the dashboard needs from a proxy's Prometheus page (the text exposition
//! format of `/stats/prometheus`): every other line is skipped, and a line that does not parse
//! is skipped too, so one odd line does not hide a proxy's traffic.

use std::collections::BTreeMap;

/// The metric names the graph is made of.
pub const REQUESTS: &str = "istio_requests_total";
pub const DURATION_BUCKETS: &str = "istio_request_duration_milliseconds_bucket";
pub const EJECTIONS: &str = "trellis_outlier_ejections_total";

/// Label values longer than this are not believed (Istio's are names and SPIFFE IDs).
const MAX_LABEL_VALUE: usize = 1024;

/// One sample: a metric name, its labels and its value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The samples of the metrics in `wanted` (by name), in page order.
pub fn samples(text: &str, wanted: &[&str]) -> Vec<Sample> {
    text.lines()
        .filter(|line| wanted.iter().any(|name| line.starts_with(name)))
        .filter_map(sample)
        .filter(|s| wanted.contains(&s.name.as_str()))
        .collect()
}

/// `name{k="v",...} value [timestamp]`, with label values unescaped; `None` for anything else.
pub(crate) fn sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(inside) = rest.strip_prefix('{') {
        let mut chars = inside.char_indices();
        let mut key = String::new();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => break i,
                ',' | ' ' => {}
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            other => value.push(other),
                        }
                        if value.len() > MAX_LABEL_VALUE {
                            return None;
                        }
                    }
                    if key.is_empty() {
                        return None;
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                c => key.push(c),
            }
        };
        rest = &inside[end + 1..];
    }
    let value: f64 = rest.split_whitespace().next()?.parse().ok()?;
    if value.is_nan() {
        return None;
    }
    Some(Sample { name: name.to_owned(), labels, value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_istio_series_and_skips_the_rest() {
        let page = "# TYPE istio_requests_total counter\n\
            istio_requests_total{reporter=\"source\",source_workload=\"web\",response_code=\"200\"} 7\n\
            istio_requests_total_other 3\n\
            istio_request_duration_milliseconds_bucket{le=\"+Inf\",reporter=\"source\"} 7 1700000000\n\
            process_cpu_seconds_total 1\n";
        let got = samples(page, &[REQUESTS, DURATION_BUCKETS]);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].labels["source_workload"], "web");
        assert_eq!(got[0].value, 7.0);
        assert_eq!(got[1].labels["le"], "+Inf");
    }

    #[test]
    fn escaped_label_values_are_unescaped() {
        let got = samples("istio_requests_total{a=\"x\\\"y\\\\z\\n\"} 1\n", &[REQUESTS]);
        assert_eq!(got[0].labels["a"], "x\"y\\z\n");
    }

    #[test]
    fn hostile_lines_are_skipped_without_panic() {
        let long = format!("istio_requests_total{{a=\"{}\"}} 1", "x".repeat(5000));
        for line in [
            "istio_requests_total{",
            "istio_requests_total{a=\"unterminated} 1",
            "istio_requests_total{a=b} 1",
            "istio_requests_total{=\"v\"} 1",
            "istio_requests_total{a=\"v\"}",
            "istio_requests_total{a=\"v\"} notanumber",
            "istio_requests_total NaN",
            "istio_requests_total{a=\"\\",
            "istio_requests_total{é=\"ü\"} 1 2 3",
            long.as_str(),
        ] {
            let got = samples(line, &[REQUESTS]);
            assert!(got.len() <= 1, "{line:?}");
            if line.contains('é') {
                assert_eq!(got.len(), 1);
            } else {
                assert!(got.is_empty(), "{line:?} gave {got:?}");
            }
        }
    }
}
