//! `ISTIO_KUBE_APP_PROBERS`: the app's original probes and lifecycle hooks, as the injector hands
//! them over (a JSON object from the path the kubelet now calls to the probe or hook it
//! replaced: `/app-health/<container>/...` or `/app-lifecycle/<container>/...`), checked at
//! start-up. A value that is not such an object stops the proxy; one probe that cannot run fails
//! that probe alone, with the probe, field and value at fault as its answer, so that a mistake in
//! one container's liveness probe does not keep the whole pod from starting.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use rustls::pki_types::ServerName;
use serde::Deserialize;
use serde_json::Value;

/// The environment variable, as Istio names it.
pub const PROBERS_ENV: &str = "ISTIO_KUBE_APP_PROBERS";

/// Far more than any pod's probes take (one is about 150 bytes), and small enough that a value
/// this long is a mistake rather than a pod.
pub const MAX_PROBERS_LEN: usize = 64 * 1024;

/// The kubelet's default, and what it takes a `timeoutSeconds` of 0 to mean.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// A lifecycle hook has no timeout of its own: the kubelet waits for a postStart hook, and bounds
/// a preStop hook by the pod's grace period. This only stops an app that never answers from
/// holding a place among the probes in flight for ever.
const HOOK_TIMEOUT: Duration = Duration::from_secs(3600);

const KINDS: [&str; 3] = ["livez", "readyz", "startupz"];
const HOOKS: [&str; 2] = ["poststartz", "prestopz"];

/// The app's probes by the path the kubelet calls (`/app-health/<container>/livez`), and those
/// that cannot run, with the reason.
#[derive(Debug, Default)]
pub struct AppProbers {
    probes: BTreeMap<String, Arc<Prober>>,
    unusable: BTreeMap<String, String>,
}

/// One probe: what to do, and how long the app has to answer.
#[derive(Debug, PartialEq)]
pub struct Prober {
    pub action: Action,
    pub timeout: Duration,
}

#[derive(Debug, PartialEq)]
pub enum Action {
    HttpGet(HttpGet),
    /// The probe passes when a connection opens.
    TcpSocket {
        host: Option<String>,
        port: u16,
    },
    /// `grpc.health.v1.Health/Check` for `service`, in plaintext as the kubelet sends it.
    Grpc {
        port: u16,
        service: String,
    },
}

#[derive(Debug, PartialEq)]
pub struct HttpGet {
    pub scheme: Scheme,
    /// `None`: the app's own address (the kubelet's default is the pod's IP).
    pub host: Option<String>,
    pub port: u16,
    pub path: PathAndQuery,
    pub headers: HeaderMap,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    /// TLS, without verifying the app's certificate, as the kubelet does.
    Https,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbersError {
    #[error("{PROBERS_ENV}: {len} bytes, more than the {MAX_PROBERS_LEN} accepted")]
    TooLarge { len: usize },
    #[error("{PROBERS_ENV}: not a JSON object of probes: {0}")]
    NotJson(serde_json::Error),
    #[error(
        "{PROBERS_ENV}: {probe:?}: not a health or lifecycle path; expected /app-health/<container>/livez, readyz or startupz, or /app-lifecycle/<container>/poststartz or prestopz"
    )]
    Path { probe: String },
    #[error("{PROBERS_ENV}: {probe:?}: {field}: {source}")]
    Shape { probe: String, field: String, source: serde_json::Error },
    #[error("{PROBERS_ENV}: {probe:?}: {reason}")]
    Probe { probe: String, reason: String },
    #[error("{PROBERS_ENV}: {probe:?}: {field}: {value}: {reason}")]
    Field { probe: String, field: &'static str, value: String, reason: String },
}

impl AppProbers {
    /// From the environment; unset or empty means the injector rewrote no probe.
    pub fn from_env() -> Result<AppProbers, ProbersError> {
        match std::env::var(PROBERS_ENV) {
            Ok(text) => AppProbers::parse(&text),
            Err(_) => Ok(AppProbers::default()),
        }
    }

    pub fn parse(text: &str) -> Result<AppProbers, ProbersError> {
        if text.len() > MAX_PROBERS_LEN {
            return Err(ProbersError::TooLarge { len: text.len() });
        }
        if text.trim().is_empty() {
            return Ok(AppProbers::default());
        }
        let entries: BTreeMap<String, Value> = serde_json::from_str(text).map_err(ProbersError::NotJson)?;
        let mut probers = AppProbers::default();
        for (path, value) in entries {
            match parse_prober(&path, value) {
                Ok(prober) => {
                    probers.probes.insert(path, Arc::new(prober));
                }
                Err(e) => {
                    probers.unusable.insert(path, e.to_string());
                }
            }
        }
        Ok(probers)
    }

    /// The probe the kubelet calls at `path`.
    pub fn get(&self, path: &str) -> Option<&Arc<Prober>> {
        self.probes.get(path)
    }

    /// Why the probe at `path` cannot run, when it cannot.
    pub fn unusable(&self, path: &str) -> Option<&str> {
        self.unusable.get(path).map(String::as_str)
    }

    /// Every probe that cannot run, by path, with the reason.
    pub fn problems(&self) -> impl Iterator<Item = (&str, &str)> {
        self.unusable.iter().map(|(path, reason)| (path.as_str(), reason.as_str()))
    }

    /// Probes that run.
    pub fn len(&self) -> usize {
        self.probes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.probes.is_empty() && self.unusable.is_empty()
    }
}

/// What a path the injector writes stands for (Istio checks the same shapes).
#[derive(Clone, Copy, PartialEq)]
enum Check {
    /// `/app-health/<container>/livez|readyz|startupz`
    Probe,
    /// `/app-lifecycle/<container>/poststartz|prestopz`
    Hook,
}

fn check_of(path: &str) -> Option<Check> {
    let (check, rest, kinds) = match (path.strip_prefix("/app-health/"), path.strip_prefix("/app-lifecycle/"))
    {
        (Some(rest), _) => (Check::Probe, rest, &KINDS[..]),
        (_, Some(rest)) => (Check::Hook, rest, &HOOKS[..]),
        _ => return None,
    };
    let (container, kind) = rest.split_once('/')?;
    (!container.is_empty() && kinds.contains(&kind)).then_some(check)
}

// The probe as Kubernetes writes it. Ports are kept as JSON values so that a missing, named or
// out-of-range port gets a message of ours rather than serde's.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawProber {
    http_get: Option<RawHttpGet>,
    tcp_socket: Option<RawTcpSocket>,
    grpc: Option<RawGrpc>,
    timeout_seconds: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawHttpGet {
    path: Option<String>,
    port: Option<Value>,
    host: Option<String>,
    scheme: Option<String>,
    #[serde(default)]
    http_headers: Vec<RawHeader>,
}

#[derive(Deserialize)]
struct RawHeader {
    name: String,
    value: String,
}

#[derive(Deserialize)]
struct RawTcpSocket {
    port: Option<Value>,
    host: Option<String>,
}

#[derive(Deserialize)]
struct RawGrpc {
    port: Option<Value>,
    service: Option<String>,
}

fn parse_prober(probe: &str, value: Value) -> Result<Prober, ProbersError> {
    let Some(check) = check_of(probe) else {
        return Err(ProbersError::Path { probe: probe.to_owned() });
    };
    let raw: RawProber = serde_path_to_error::deserialize(value).map_err(|e| ProbersError::Shape {
        probe: probe.to_owned(),
        field: e.path().to_string(),
        source: e.into_inner(),
    })?;
    let field = |field: &'static str, value: String, reason: &str| ProbersError::Field {
        probe: probe.to_owned(),
        field,
        value,
        reason: reason.to_owned(),
    };
    let timeout = match raw.timeout_seconds {
        None | Some(0) if check == Check::Hook => HOOK_TIMEOUT,
        None | Some(0) => DEFAULT_TIMEOUT,
        Some(n) if n < 0 => return Err(field("timeoutSeconds", n.to_string(), "negative")),
        // Kubernetes's field is an int32; beyond it, a deadline could overflow the clock.
        Some(n) if n > i64::from(i32::MAX) => {
            return Err(field("timeoutSeconds", n.to_string(), "more than Kubernetes allows (2147483647)"));
        }
        Some(n) => Duration::from_secs(n.unsigned_abs()),
    };
    let action = match (raw.http_get, raw.tcp_socket, raw.grpc) {
        (Some(get), None, None) => Action::HttpGet(http_get(get, &field)?),
        (None, Some(tcp), None) => Action::TcpSocket {
            host: host(tcp.host, "tcpSocket.host", &field)?,
            port: port(tcp.port, "tcpSocket.port", &field)?,
        },
        (None, None, Some(grpc)) => Action::Grpc {
            port: port(grpc.port, "grpc.port", &field)?,
            service: grpc.service.unwrap_or_default(),
        },
        (None, None, None) => {
            return Err(ProbersError::Probe {
                probe: probe.to_owned(),
                reason: "no httpGet, tcpSocket or grpc action".to_owned(),
            });
        }
        _ => {
            return Err(ProbersError::Probe {
                probe: probe.to_owned(),
                reason: "more than one of httpGet, tcpSocket and grpc; a probe has one action".to_owned(),
            });
        }
    };
    Ok(Prober { action, timeout })
}

type FieldError<'a> = dyn Fn(&'static str, String, &str) -> ProbersError + 'a;

fn http_get(raw: RawHttpGet, field: &FieldError) -> Result<HttpGet, ProbersError> {
    let scheme = match raw.scheme.as_deref() {
        // The kubelet writes HTTP or HTTPS; Istio's agent takes either case.
        None => Scheme::Http,
        Some(s) if s.eq_ignore_ascii_case("http") => Scheme::Http,
        Some(s) if s.eq_ignore_ascii_case("https") => Scheme::Https,
        Some(other) => return Err(field("httpGet.scheme", format!("{other:?}"), "not HTTP or HTTPS")),
    };
    let path = match raw.path.as_deref() {
        None | Some("") => PathAndQuery::from_static("/"),
        // Like the kubelet, a path without its leading slash is taken as if it had one.
        Some(p) => {
            let absolute = if p.starts_with('/') { p.to_owned() } else { format!("/{p}") };
            absolute.parse().map_err(|_| field("httpGet.path", format!("{p:?}"), "not a URL path"))?
        }
    };
    let mut headers = HeaderMap::new();
    for header in raw.http_headers {
        let name = HeaderName::try_from(header.name.as_str()).map_err(|_| {
            field("httpGet.httpHeaders.name", format!("{:?}", header.name), "not a header name")
        })?;
        let value = HeaderValue::try_from(header.value.as_str()).map_err(|_| {
            field("httpGet.httpHeaders.value", format!("{:?}", header.value), "not a header value")
        })?;
        // Repeated names are all sent, as the kubelet sends them.
        headers.append(name, value);
    }
    Ok(HttpGet {
        scheme,
        host: host(raw.host, "httpGet.host", field)?,
        port: port(raw.port, "httpGet.port", field)?,
        path,
        headers,
    })
}

/// A port number; a name means the injector could not resolve it (the container does not
/// declare it), which the kubelet would have refused too.
fn port(value: Option<Value>, name: &'static str, field: &FieldError) -> Result<u16, ProbersError> {
    let Some(value) = value else {
        return Err(field(name, "(missing)".to_owned(), "a probe needs the app's port"));
    };
    let number = match &value {
        Value::Number(n) if n.is_i64() || n.is_u64() => n.as_i64(),
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok(),
        Value::String(_) => return Err(field(name, value.to_string(), "a named port; expected a number")),
        _ => return Err(field(name, value.to_string(), "not a port number")),
    };
    number
        .and_then(|n| u16::try_from(n).ok())
        .filter(|p| *p != 0)
        .ok_or_else(|| field(name, value.to_string(), "out of range 1-65535"))
}

/// A host to probe instead of the app's address: a DNS name or an IP address.
fn host(
    value: Option<String>,
    name: &'static str,
    field: &FieldError,
) -> Result<Option<String>, ProbersError> {
    match value {
        None => Ok(None),
        Some(h) if h.is_empty() => Ok(None),
        Some(h) => match ServerName::try_from(h.as_str()) {
            Ok(_) => Ok(Some(h)),
            Err(_) => Err(field(name, format!("{h:?}"), "not a DNS name or IP address")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a document with one bad probe says about it: the proxy starts, and only that
    /// probe fails.
    fn error(text: &str) -> String {
        let probers = AppProbers::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        let problems: Vec<_> = probers.problems().collect();
        assert_eq!(problems.len(), 1, "{text}: {problems:?}");
        assert_eq!(probers.len(), 0, "{text}");
        problems[0].1.to_owned()
    }

    fn document_error(text: &str) -> String {
        AppProbers::parse(text).expect_err(text).to_string()
    }

    #[test]
    fn the_injectors_probers_are_read() {
        // What injector/src/probes.rs writes for an httpGet, a tcpSocket and a gRPC probe.
        let probers = AppProbers::parse(
            r#"{
              "/app-health/app/livez": {"httpGet": {"path": "/healthz?full=1", "port": 8080, "scheme": "HTTP",
                  "httpHeaders": [{"name": "X-Probe", "value": "a"}, {"name": "x-probe", "value": "b"}]}, "timeoutSeconds": 1},
              "/app-health/app/readyz": {"tcpSocket": {"port": 8080}, "timeoutSeconds": 1},
              "/app-health/app/startupz": {"grpc": {"port": 9090, "service": "health"}, "timeoutSeconds": 3},
              "/app-health/side/livez": {"httpGet": {"port": "8443", "scheme": "HTTPS", "host": "localhost"}}
            }"#,
        )
        .unwrap();
        assert_eq!(probers.len(), 4);
        let Action::HttpGet(live) = &probers.get("/app-health/app/livez").unwrap().action else { panic!() };
        assert_eq!((live.scheme, live.port, live.path.as_str()), (Scheme::Http, 8080, "/healthz?full=1"));
        let sent: Vec<_> = live.headers.get_all("x-probe").iter().collect();
        assert_eq!(sent, ["a", "b"]);
        assert_eq!(
            *probers.get("/app-health/app/readyz").unwrap().as_ref(),
            Prober { action: Action::TcpSocket { host: None, port: 8080 }, timeout: Duration::from_secs(1) }
        );
        assert_eq!(
            *probers.get("/app-health/app/startupz").unwrap().as_ref(),
            Prober {
                action: Action::Grpc { port: 9090, service: "health".into() },
                timeout: Duration::from_secs(3)
            }
        );
        let side = probers.get("/app-health/side/livez").unwrap();
        assert_eq!(side.timeout, DEFAULT_TIMEOUT, "the kubelet's default");
        let Action::HttpGet(side) = &side.action else { panic!() };
        assert_eq!((side.scheme, side.port, side.path.as_str()), (Scheme::Https, 8443, "/"));
        assert_eq!(side.host.as_deref(), Some("localhost"));
        assert!(probers.get("/app-health/other/livez").is_none());
    }

    #[test]
    fn the_injectors_lifecycle_hooks_are_read() {
        // What injector/src/probes.rs writes for Istio's hello-probes case: hooks carry no
        // timeout, and get a long one rather than a probe's second.
        let probers = AppProbers::parse(
            r#"{
              "/app-lifecycle/hello/poststartz": {"tcpSocket": {"port": 93}},
              "/app-lifecycle/hello/prestopz": {"httpGet": {"port": 91, "scheme": "HTTP"}},
              "/app-lifecycle/side/prestopz": {"httpGet": {"path": "/drain", "port": 8080}, "timeoutSeconds": 20}
            }"#,
        )
        .unwrap();
        assert_eq!(probers.problems().count(), 0);
        assert_eq!(
            *probers.get("/app-lifecycle/hello/poststartz").unwrap().as_ref(),
            Prober { action: Action::TcpSocket { host: None, port: 93 }, timeout: HOOK_TIMEOUT }
        );
        let pre_stop = probers.get("/app-lifecycle/hello/prestopz").unwrap();
        assert_eq!(pre_stop.timeout, HOOK_TIMEOUT);
        let Action::HttpGet(get) = &pre_stop.action else { panic!() };
        assert_eq!((get.scheme, get.port, get.path.as_str()), (Scheme::Http, 91, "/"));
        assert_eq!(probers.get("/app-lifecycle/side/prestopz").unwrap().timeout, Duration::from_secs(20));
    }

    #[test]
    fn nothing_set_means_no_probes() {
        assert!(AppProbers::parse("").unwrap().is_empty());
        assert!(AppProbers::parse("{}").unwrap().is_empty());
    }

    #[test]
    fn bad_json_is_refused() {
        let e = document_error(r#"{"/app-health/app/livez": {"tcpSocket": "#);
        assert!(e.starts_with("ISTIO_KUBE_APP_PROBERS: not a JSON object of probes: EOF"), "{e}");
        let e = document_error("[1, 2]");
        assert!(e.starts_with("ISTIO_KUBE_APP_PROBERS: not a JSON object of probes: invalid type"), "{e}");
    }

    #[test]
    fn a_missing_port_names_the_probe_and_field() {
        assert_eq!(
            error(r#"{"/app-health/app/livez": {"httpGet": {"path": "/healthz"}}}"#),
            r#"ISTIO_KUBE_APP_PROBERS: "/app-health/app/livez": httpGet.port: (missing): a probe needs the app's port"#
        );
        assert_eq!(
            error(r#"{"/app-health/app/readyz": {"tcpSocket": {}}}"#),
            r#"ISTIO_KUBE_APP_PROBERS: "/app-health/app/readyz": tcpSocket.port: (missing): a probe needs the app's port"#
        );
    }

    #[test]
    fn ports_out_of_range_or_named_are_refused() {
        for (port, reason) in [
            ("70000", "70000: out of range 1-65535"),
            ("0", "0: out of range 1-65535"),
            ("-1", "-1: out of range 1-65535"),
            ("8080.5", "8080.5: not a port number"),
            ("\"99999\"", "\"99999\": out of range 1-65535"),
            ("\"http\"", "\"http\": a named port; expected a number"),
            ("true", "true: not a port number"),
        ] {
            assert_eq!(
                error(&format!(r#"{{"/app-health/app/startupz": {{"grpc": {{"port": {port}}}}}}}"#)),
                format!(r#"ISTIO_KUBE_APP_PROBERS: "/app-health/app/startupz": grpc.port: {reason}"#)
            );
        }
    }

    #[test]
    fn an_unknown_scheme_is_refused() {
        assert_eq!(
            error(r#"{"/app-health/app/livez": {"httpGet": {"port": 80, "scheme": "FTP"}}}"#),
            r#"ISTIO_KUBE_APP_PROBERS: "/app-health/app/livez": httpGet.scheme: "FTP": not HTTP or HTTPS"#
        );
    }

    #[test]
    fn oversized_input_is_refused_before_it_is_read() {
        let text = format!(
            r#"{{"/app-health/app/livez": {{"tcpSocket": {{"port": 80}}}}, "x": "{}"}}"#,
            "a".repeat(MAX_PROBERS_LEN)
        );
        assert_eq!(
            document_error(&text),
            format!("ISTIO_KUBE_APP_PROBERS: {} bytes, more than the 65536 accepted", text.len())
        );
    }

    #[test]
    fn other_mistakes_name_what_is_wrong() {
        let cases = [
            (r#"{"/healthz": {"tcpSocket": {"port": 80}}}"#, "\"/healthz\": not a health or lifecycle path"),
            (
                r#"{"/app-health/app/alive": {"tcpSocket": {"port": 80}}}"#,
                "\"/app-health/app/alive\": not a health or lifecycle path",
            ),
            (
                r#"{"/app-lifecycle/app/livez": {"tcpSocket": {"port": 80}}}"#,
                "\"/app-lifecycle/app/livez\": not a health or lifecycle path",
            ),
            (
                r#"{"/app-health/app/prestopz": {"tcpSocket": {"port": 80}}}"#,
                "\"/app-health/app/prestopz\": not a health or lifecycle path",
            ),
            (
                r#"{"/app-lifecycle//prestopz": {"tcpSocket": {"port": 80}}}"#,
                "\"/app-lifecycle//prestopz\": not a health or lifecycle path",
            ),
            (r#"{"/app-health/app/livez": {"timeoutSeconds": 1}}"#, "no httpGet, tcpSocket or grpc action"),
            (
                r#"{"/app-health/app/livez": {"tcpSocket": {"port": 80}, "grpc": {"port": 80}}}"#,
                "more than one of httpGet, tcpSocket and grpc",
            ),
            (
                r#"{"/app-health/app/livez": {"tcpSocket": {"port": 80}, "timeoutSeconds": -2}}"#,
                "timeoutSeconds: -2: negative",
            ),
            (
                r#"{"/app-health/app/livez": {"tcpSocket": {"port": 80}, "timeoutSeconds": 9223372036854775807}}"#,
                "timeoutSeconds: 9223372036854775807: more than Kubernetes allows",
            ),
            (
                r#"{"/app-health/app/livez": {"httpGet": {"port": 80, "path": 3}}}"#,
                "httpGet.path: invalid type: integer `3`",
            ),
            (
                r#"{"/app-health/app/livez": {"tcpSocket": {"port": 80, "host": "a b"}}}"#,
                "tcpSocket.host: \"a b\": not a DNS name",
            ),
            (
                r#"{"/app-health/app/livez": {"httpGet": {"port": 80, "httpHeaders": [{"name": "bad name", "value": "v"}]}}}"#,
                "httpGet.httpHeaders.name: \"bad name\": not a header name",
            ),
            (
                r#"{"/app-health/app/livez": {"httpGet": {"port": 80, "httpHeaders": [{"name": "x", "value": "a\nb"}]}}}"#,
                "httpGet.httpHeaders.value: \"a\\nb\": not a header value",
            ),
            (
                r#"{"/app-health/app/livez": {"httpGet": {"port": 80, "path": "/a b"}}}"#,
                "httpGet.path: \"/a b\": not a URL path",
            ),
        ];
        for (text, expected) in cases {
            let e = error(text);
            assert!(e.starts_with("ISTIO_KUBE_APP_PROBERS: "), "{e}");
            assert!(e.contains(expected), "{text}: {e} does not say {expected:?}");
        }
    }

    #[test]
    fn one_bad_probe_fails_alone() {
        let probers = AppProbers::parse(
            r#"{
              "/app-health/app/livez": {"tcpSocket": {"port": 8080, "host": "467.0.0.1"}},
              "/app-health/app/readyz": {"tcpSocket": {"port": 8080}}
            }"#,
        )
        .unwrap();
        assert!(probers.get("/app-health/app/readyz").is_some());
        assert!(probers.get("/app-health/app/livez").is_none());
        let reason = probers.unusable("/app-health/app/livez").unwrap();
        assert!(reason.contains("tcpSocket.host: \"467.0.0.1\""), "{reason}");
        assert_eq!(probers.unusable("/app-health/app/readyz"), None);
        assert!(!probers.is_empty());
    }
}
