//! A Prometheus server as the graph's source: instant queries over its HTTP API
//! (`/api/v1/query`), the same rates of Istio's standard metrics Kiali asks for. The latency
//! quantiles are computed from the bucket rates by the same interpolation as
//! `histogram_quantile`, so that the page has one code path for both sources.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::exposition::Sample;
use super::url::HttpUrl;

/// The labels an edge and its health are told apart by.
const EDGE_LABELS: &str = "reporter,source_workload,source_workload_namespace,destination_workload,\
destination_workload_namespace,destination_service_name,destination_service_namespace";

pub fn requests_query() -> String {
    format!(
        "sum by ({EDGE_LABELS},response_code,response_flags,connection_security_policy) \
         (rate(istio_requests_total[1m]))"
    )
}

pub fn buckets_query() -> String {
    format!("sum by ({EDGE_LABELS},le) (rate(istio_request_duration_milliseconds_bucket[1m]))")
}

pub struct Prometheus {
    url: HttpUrl,
    timeout: Duration,
}

impl Prometheus {
    pub fn new(url: &str, timeout: Duration) -> Result<Prometheus, String> {
        Ok(Prometheus { url: HttpUrl::parse("--prometheus", url)?, timeout })
    }

    /// The request and bucket rates.
    pub async fn rates(&self) -> Result<(Vec<Sample>, Vec<Sample>), String> {
        let requests = self.query(&requests_query()).await?;
        let buckets = self.query(&buckets_query()).await?;
        Ok((requests, buckets))
    }

    async fn query(&self, expr: &str) -> Result<Vec<Sample>, String> {
        let target: SocketAddr = self.url.resolve().await?;
        let path = format!("{}/api/v1/query?query={}", self.url.path, percent_encode(expr));
        let where_ = format!("Prometheus at {}", self.url.text);
        let answer = crate::http_client::get_once(target, &path, self.timeout)
            .await
            .map_err(|e| format!("{where_}: {e}"))?;
        // Prometheus answers errors (400 bad_data, 422, 503) with its JSON too: say its words.
        match parse_vector(&answer.body) {
            Ok(samples) if answer.status.is_success() => Ok(samples),
            Ok(_) => Err(format!("{where_}: answered {}", answer.status)),
            Err(e) => Err(format!("{where_}: {e} (HTTP {})", answer.status)),
        }
    }
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Data {
    result_type: String,
    result: Vec<VectorItem>,
}

#[derive(Deserialize)]
struct VectorItem {
    metric: std::collections::BTreeMap<String, String>,
    /// `[unix time, "value"]`.
    value: (f64, String),
}

/// Reads a query answer that must be an instant vector.
pub fn parse_vector(body: &[u8]) -> Result<Vec<Sample>, String> {
    let answer: Answer = serde_json::from_slice(body).map_err(|e| {
        let start = String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned();
        format!("the answer is not Prometheus query JSON: {e} (it starts with {start:?})")
    })?;
    if answer.status != "success" {
        return Err(format!(
            "the query failed: {} ({})",
            answer.error.unwrap_or_else(|| "no reason given".to_owned()),
            answer.error_type.unwrap_or_else(|| answer.status.clone())
        ));
    }
    let data = answer.data.ok_or("the answer has status success but no data")?;
    if data.result_type != "vector" {
        return Err(format!("resultType is {:?}, not \"vector\"", data.result_type));
    }
    let mut out = Vec::with_capacity(data.result.len());
    for item in data.result {
        let value: f64 = item
            .value
            .1
            .parse()
            .map_err(|_| format!("value {:?} of {:?} is not a number", item.value.1, item.metric))?;
        // A rate over no samples is NaN: nothing to show.
        if value.is_finite() {
            out.push(Sample {
                name: item.metric.get("__name__").cloned().unwrap_or_default(),
                labels: item.metric,
                value,
            });
        }
    }
    Ok(out)
}

/// Query-string encoding: everything but unreserved characters as `%XX`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_vector() {
        let body = br#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"source_workload":"web","response_code":"200"},"value":[1700000000.5,"2.5"]},
            {"metric":{"source_workload":"idle"},"value":[1700000000.5,"NaN"]}]}}"#;
        let got = parse_vector(body).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].labels["source_workload"], "web");
        assert_eq!(got[0].value, 2.5);
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let cases: [(&[u8], &str); 6] = [
            (br#"{"status":"error","errorType":"bad_data","error":"parse error at char 4"}"#, "parse error at char 4"),
            (b"<html>502 Bad Gateway</html>", "not Prometheus query JSON"),
            (br#"{"status":"success"}"#, "no data"),
            (br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#, "matrix"),
            (br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"x"]}]}}"#, "\"x\" of"),
            (br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{}}]}}"#, "missing field `value`"),
        ];
        for (body, expected) in cases {
            let e = parse_vector(body).unwrap_err();
            assert!(e.contains(expected), "{e}");
        }
    }

    #[test]
    fn queries_are_encoded() {
        assert_eq!(
            percent_encode("sum by (a) (x{b=\"c\"}[1m])"),
            "sum%20by%20%28a%29%20%28x%7Bb%3D%22c%22%7D%5B1m%5D%29"
        );
    }
}
