//! Merged metrics on the status port, as Istio's agent serves them: `/stats/prometheus` is the
//! proxy's own series, the scrape counters below, then the app's metrics, scraped from the app
//! (at the port and path of its original `prometheus.io/*` annotations, which the injector hands
//! over in `ISTIO_PROMETHEUS_ANNOTATIONS`) at the time of the request.
//!
//! The app cannot take the proxy's series down with it: its answer is bounded in time (the
//! scraper's own `X-Prometheus-Scrape-Timeout-Seconds`, shortened, or 5 s) and size (8 MiB),
//! checked line by line (`exposition`), and on any failure left out whole and counted in
//! `istio_agent_scrape_failures_total{type="application",reason}`; the page is served either way.

use std::pin::pin;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use super::exposition::{self, Format};

/// Istio's variable: the app's `prometheus.io/*` annotations as JSON.
pub const SCRAPE_CONFIG_ENV: &str = "ISTIO_PROMETHEUS_ANNOTATIONS";
/// A real value is three short strings; anything much larger is not the injector's.
const MAX_SCRAPE_CONFIG_LEN: usize = 4096;
/// Largest app page merged. Big apps expose a few MiB; the bound keeps one that runs away (or
/// a hostile one) from making the sidecar buffer without limit.
pub const MAX_APP_METRICS_BYTES: usize = 8 * 1024 * 1024;
/// Scrapes of the app at once. Prometheus sends one per interval (two with an HA pair); the
/// bound is for anyone else who can reach the port, so that they cannot make the proxy hold
/// many pages in memory at once.
const MAX_SCRAPES_IN_FLIGHT: usize = 2;
/// Without the scraper's timeout header.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const MIN_TIMEOUT: Duration = Duration::from_millis(100);
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the app serves its metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppMetricsTarget {
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ScrapeConfigError {
    #[error("{SCRAPE_CONFIG_ENV}: {len} bytes, at most {MAX_SCRAPE_CONFIG_LEN} are allowed")]
    TooLarge { len: usize },
    #[error("{SCRAPE_CONFIG_ENV}: not a JSON object of strings scrape, path, port: {0}")]
    NotJson(serde_json::Error),
    #[error("{SCRAPE_CONFIG_ENV}: {field}: {value:?}: {reason}")]
    Field { field: &'static str, value: String, reason: &'static str },
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ScrapeConfig {
    scrape: String,
    path: String,
    port: String,
}

impl AppMetricsTarget {
    /// The app's metrics endpoint from the environment, if the pod has one to merge.
    pub fn from_env(status_port: u16) -> Result<Option<AppMetricsTarget>, ScrapeConfigError> {
        match std::env::var(SCRAPE_CONFIG_ENV) {
            Ok(text) => AppMetricsTarget::parse(&text, status_port),
            Err(_) => Ok(None),
        }
    }

    /// Istio's reading: `scrape: "false"` merges nothing; an empty path is `/metrics` and an
    /// empty port 80. The status port itself would have the proxy scrape itself without end.
    pub fn parse(text: &str, status_port: u16) -> Result<Option<AppMetricsTarget>, ScrapeConfigError> {
        if text.len() > MAX_SCRAPE_CONFIG_LEN {
            return Err(ScrapeConfigError::TooLarge { len: text.len() });
        }
        let config: ScrapeConfig = serde_json::from_str(text).map_err(ScrapeConfigError::NotJson)?;
        if config.scrape == "false" {
            return Ok(None);
        }
        let field = |field, value: &str, reason| ScrapeConfigError::Field {
            field,
            value: value.chars().take(64).collect(),
            reason,
        };
        let port = match config.port.trim() {
            "" => 80,
            p => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| field("port", &config.port, "not a port number 1-65535"))?,
        };
        if port == status_port {
            return Err(field(
                "port",
                &config.port,
                "the status port itself: the proxy would scrape itself (was the pod injected twice?)",
            ));
        }
        let path = match config.path.as_str() {
            "" => "/metrics".to_owned(),
            // Prometheus adds the slash to a relative metrics path.
            p if !p.starts_with('/') => format!("/{p}"),
            p => p.to_owned(),
        };
        if path.parse::<http::uri::PathAndQuery>().is_err() {
            return Err(field("path", &config.path, "not a URL path"));
        }
        Ok(Some(AppMetricsTarget { port, path }))
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    r#type: &'static str,
    reason: &'static str,
}

/// Why the app's metrics were left out, as the failure counter labels it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// No connection (the app is down, or not listening on that port).
    Connect,
    Timeout,
    /// An answer other than 200.
    Status,
    TooLarge,
    /// A content type this page cannot carry, or a compressed body.
    Format,
    Malformed,
    /// A family the proxy serves itself (or a name under its prefixes).
    Conflict,
    /// Too many scrapes at once.
    Busy,
    /// The connection broke mid-answer.
    Http,
}

impl Failure {
    fn label(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Timeout => "timeout",
            Failure::Status => "status",
            Failure::TooLarge => "too_large",
            Failure::Format => "format",
            Failure::Malformed => "malformed",
            Failure::Conflict => "conflict",
            Failure::Busy => "busy",
            Failure::Http => "http",
        }
    }
}

/// The app scraper of one status port, with its counters (Istio's agent names: they are served
/// on this page only, as the agent's are).
pub struct AppMetrics {
    target: Option<AppMetricsTarget>,
    app_host: String,
    in_flight: Semaphore,
    registry: Registry,
    scrapes: Counter,
    failures: Family<FailureLabels, Counter>,
}

impl AppMetrics {
    pub fn new(target: Option<AppMetricsTarget>, app_host: &str) -> AppMetrics {
        let mut registry = Registry::default();
        let scrapes = Counter::default();
        let failures = Family::<FailureLabels, Counter>::default();
        registry.register("istio_agent_scrapes", "Scrapes of the merged metrics page.", scrapes.clone());
        registry.register(
            "istio_agent_scrape_failures",
            "Scrapes whose application part was left out, by reason.",
            failures.clone(),
        );
        AppMetrics {
            target,
            app_host: app_host.to_owned(),
            in_flight: Semaphore::new(MAX_SCRAPES_IN_FLIGHT),
            registry,
            scrapes,
            failures,
        }
    }

    /// The merged page for a scrape that sent `headers`. `own` is the proxy's page.
    pub async fn page(&self, own: String, headers: &HeaderMap) -> String {
        self.scrapes.inc();
        let own = match own.strip_suffix("# EOF\n") {
            Some(without) => without.to_owned(),
            None => own,
        };
        let app = match &self.target {
            Some(target) => match self.scrape(target, headers, &exposition::Reserved::of(&own)).await {
                Ok(text) => Some(text),
                Err(failure) => {
                    self.failures
                        .get_or_create(&FailureLabels { r#type: "application", reason: failure.label() })
                        .inc();
                    None
                }
            },
            None => None,
        };
        let mut page = own;
        let _ = prometheus_client::encoding::text::encode_registry(&mut page, &self.registry);
        // The app's part goes last, as in Istio.
        if let Some(app) = app {
            page.push_str(&app);
        }
        page
    }

    async fn scrape(
        &self,
        target: &AppMetricsTarget,
        headers: &HeaderMap,
        taken: &exposition::Reserved,
    ) -> Result<String, Failure> {
        let _place = self.in_flight.try_acquire().map_err(|_| Failure::Busy)?;
        let timeout = scrape_timeout(headers);
        let (format, body) = tokio::time::timeout(timeout, fetch(&self.app_host, target, headers))
            .await
            .map_err(|_| Failure::Timeout)??;
        let text = std::str::from_utf8(&body).map_err(|_| Failure::Malformed)?;
        exposition::to_text(text, format, taken).map_err(|rejected| {
            tracing::debug!(%rejected, "app metrics left out");
            match rejected {
                exposition::Rejected::Malformed { .. } => Failure::Malformed,
                exposition::Rejected::Conflict { .. } => Failure::Conflict,
            }
        })
    }
}

/// A little less than the scraper will wait, so that the proxy's own series still reach it
/// when the app is slow; bounded either way.
fn scrape_timeout(headers: &HeaderMap) -> Duration {
    headers
        .get("x-prometheus-scrape-timeout-seconds")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(|s| Duration::from_secs_f64((s * 0.9).min(MAX_TIMEOUT.as_secs_f64())).max(MIN_TIMEOUT))
        .unwrap_or(DEFAULT_TIMEOUT)
}

/// GETs the app's page over a fresh HTTP/1.1 connection (the proxy's own, so the pod's redirect
/// lets it through), asking for the text format and reading at most the size limit.
async fn fetch(host: &str, target: &AppMetricsTarget, from: &HeaderMap) -> Result<(Format, Bytes), Failure> {
    let stream = TcpStream::connect((host, target.port)).await.map_err(|_| Failure::Connect)?;
    let authority = if host.contains(':') {
        format!("[{host}]:{}", target.port)
    } else {
        format!("{host}:{}", target.port)
    };
    let mut request =
        Request::get(target.path.as_str()).body(Empty::<Bytes>::new()).map_err(|_| Failure::Http)?;
    let headers = request.headers_mut();
    headers.insert(header::HOST, HeaderValue::try_from(authority).map_err(|_| Failure::Http)?);
    // The text format, which the proxy's own page is in; OpenMetrics is converted if an app
    // sends it anyway. Protobuf cannot be concatenated, so it is not asked for.
    headers.insert(
        header::ACCEPT,
        HeaderValue::from_static("text/plain;version=0.0.4;q=1,application/openmetrics-text;q=0.5,*/*;q=0.1"),
    );
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    for name in [header::USER_AGENT.as_str(), "x-prometheus-scrape-timeout-seconds"] {
        if let Some(value) = from.get(name) {
            headers.insert(http::HeaderName::from_static(name), value.clone());
        }
    }
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await.map_err(|_| Failure::Http)?;
    let mut connection = pin!(connection);
    let work = async {
        let response = sender.send_request(request).await.map_err(|_| Failure::Http)?;
        if response.status() != StatusCode::OK {
            return Err(Failure::Status);
        }
        let headers = response.headers();
        let encoded = headers.get(header::CONTENT_ENCODING).is_some_and(|v| v.as_bytes() != b"identity");
        let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
        let format = match Format::of(content_type) {
            Some(format) if !encoded => format,
            _ => return Err(Failure::Format),
        };
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > MAX_APP_METRICS_BYTES as u64) {
            return Err(Failure::TooLarge);
        }
        let body =
            Limited::new(response.into_body(), MAX_APP_METRICS_BYTES).collect().await.map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() { Failure::TooLarge } else { Failure::Http }
            })?;
        Ok((format, body.to_bytes()))
    };
    let mut work = pin!(work);
    // The connection is driven here, inside the scrape's future: when the timeout drops it,
    // nothing is left running against a stuck app.
    tokio::select! {
        biased;
        done = &mut work => done,
        closed = &mut connection => match closed {
            Ok(()) => work.await,
            Err(_) => Err(Failure::Http),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrape_config_as_istio_reads_it() {
        let parse = |t: &str| AppMetricsTarget::parse(t, 15020);
        assert_eq!(
            parse(r#"{"scrape":"true","path":"/app-metrics","port":"8080"}"#).unwrap(),
            Some(AppMetricsTarget { port: 8080, path: "/app-metrics".into() })
        );
        assert_eq!(
            parse(r#"{"port":"9090"}"#).unwrap(),
            Some(AppMetricsTarget { port: 9090, path: "/metrics".into() })
        );
        assert_eq!(
            parse(r#"{"scrape":"","path":"m?x=1","port":""}"#).unwrap(),
            Some(AppMetricsTarget { port: 80, path: "/m?x=1".into() })
        );
        assert_eq!(parse(r#"{"scrape":"false","port":"9090"}"#).unwrap(), None);
    }

    #[test]
    fn bad_scrape_configs_name_the_field() {
        let err = |t: &str| AppMetricsTarget::parse(t, 15020).unwrap_err().to_string();
        assert!(err(r#"{"port":"15020"}"#).contains("port: \"15020\": the status port itself"));
        assert!(err(r#"{"port":"http"}"#).contains("port: \"http\": not a port number"));
        assert!(err(r#"{"port":"0"}"#).contains("not a port number"));
        assert!(err(r#"{"port":"70000"}"#).contains("not a port number"));
        assert!(err(r#"{"path":"/a b"}"#).contains("path: \"/a b\": not a URL path"));
        assert!(err(r#"{"port":8080}"#).starts_with("ISTIO_PROMETHEUS_ANNOTATIONS: not a JSON object"));
        assert!(err("[1,2]").starts_with("ISTIO_PROMETHEUS_ANNOTATIONS: not a JSON object"));
        assert!(err(&format!(r#"{{"path":"/{}"}}"#, "a".repeat(5000))).contains("at most 4096"));
    }

    #[test]
    fn the_timeout_is_a_little_less_than_the_scrapers() {
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("x-prometheus-scrape-timeout-seconds", HeaderValue::from_static(v));
            scrape_timeout(&h)
        };
        assert_eq!(scrape_timeout(&HeaderMap::new()), DEFAULT_TIMEOUT);
        assert_eq!(with("10"), Duration::from_secs(9));
        assert_eq!(with("0.01"), MIN_TIMEOUT);
        assert_eq!(with("100000"), MAX_TIMEOUT);
        for bad in ["-1", "NaN", "inf", "soon", "0"] {
            assert_eq!(with(bad), DEFAULT_TIMEOUT, "{bad}");
        }
    }
}
