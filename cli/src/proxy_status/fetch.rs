//! `GET <control plane>/debug/syncz` with a minimal HTTP/1.1 client: one connection, one
//! request, a deadline over all of it, and a cap on the size of the answer.

use std::time::Duration;

use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper::body::Bytes;
use hyper::{Request, StatusCode, Uri, header};
use hyper_util::rt::TokioIo;

use super::model::Syncz;

/// The largest answer read. A mesh of 10,000 proxies is a few MiB of JSON.
pub const MAX_BODY: usize = 16 << 20;
/// How much of an error page is read, to quote its start.
const MAX_ERROR_BODY: usize = 64 << 10;
const PATH: &str = "/debug/syncz";

/// Where `/debug/syncz` is, from the user's `--control-plane`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The full URL, for messages.
    pub url: String,
    host: String,
    port: u16,
    authority: String,
    path: String,
}

impl Endpoint {
    /// Accepts `http://host:port`, `host:port` (http assumed), and a base path (e.g. through
    /// `kubectl proxy`: `http://127.0.0.1:8001/api/v1/namespaces/NS/services/trellisd:15014/proxy`),
    /// to which `/debug/syncz` is added unless it is already there.
    pub fn parse(input: &str) -> Result<Endpoint, String> {
        let input = input.trim();
        let with_scheme = if input.contains("://") { input.to_owned() } else { format!("http://{input}") };
        let uri: Uri =
            with_scheme.parse().map_err(|e| format!("--control-plane {input:?}: not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(format!(
                    "--control-plane {input:?}: https is not supported; the monitoring port (15014) serves plain HTTP"
                ));
            }
            other => return Err(format!("--control-plane {input:?}: scheme {other:?} is not http")),
        }
        let authority = match uri.authority() {
            Some(a) if !a.host().is_empty() => a,
            _ => return Err(format!("--control-plane {input:?}: no host")),
        };
        if authority.as_str().contains('@') {
            return Err(format!("--control-plane {input:?}: user information is not supported"));
        }
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
        // `Uri` accepts any digits after the colon; a port that is not a u16 must not become 80.
        let port = match authority.as_str().strip_prefix(authority.host()).and_then(|r| r.strip_prefix(':')) {
            None => 80,
            Some(text) => match text.parse::<u16>() {
                Ok(port) if port > 0 => port,
                _ => return Err(format!("--control-plane {input:?}: {text:?} is not a port number")),
            },
        };
        let base = uri.path().trim_end_matches('/');
        let path = if base.ends_with(PATH) { base.to_owned() } else { format!("{base}{PATH}") };
        Ok(Endpoint {
            url: format!("http://{authority}{path}"),
            host,
            port,
            authority: authority.as_str().to_owned(),
            path,
        })
    }
}

/// Fetches and reads `/debug/syncz`. Errors name the URL and say what went wrong.
pub async fn syncz(endpoint: &Endpoint, timeout: Duration) -> Result<Syncz, String> {
    let url = &endpoint.url;
    let body = match tokio::time::timeout(timeout, get(endpoint)).await {
        Ok(result) => result.map_err(|e| format!("{url}: {e}"))?,
        Err(_) => return Err(format!("{url}: no answer within {}s", timeout.as_secs_f64())),
    };
    parse(&body).map_err(|e| format!("{url}: {e}"))
}

/// Reads an answer's body as `/debug/syncz` JSON.
pub fn parse(body: &[u8]) -> Result<Syncz, String> {
    serde_json::from_slice(body).map_err(|e| {
        format!("the answer is not /debug/syncz JSON: {e} (it starts with {})", quote_start(body))
    })
}

async fn get(endpoint: &Endpoint) -> Result<Bytes, String> {
    let stream = tokio::net::TcpStream::connect((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(|e| {
            let hint = match e.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    "; is trellisd listening there? (e.g. `kubectl -n <trellis namespace> port-forward deploy/trellisd 15014`)"
                }
                _ => "",
            };
            format!("cannot connect: {e}{hint}")
        })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    // Drives the connection; ends with it (or with the runtime).
    tokio::spawn(connection);
    let request = Request::get(endpoint.path.as_str())
        .header(header::HOST, endpoint.authority.as_str())
        .header(header::ACCEPT, "application/json")
        .header(header::USER_AGENT, concat!("trellis/", env!("CARGO_PKG_VERSION")))
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let response = sender.send_request(request).await.map_err(|e| format!("HTTP request: {e}"))?;
    let status = response.status();
    if status != StatusCode::OK {
        let body = Limited::new(response.into_body(), MAX_ERROR_BODY).collect().await;
        let start = body.map(|b| quote_start(&b.to_bytes())).unwrap_or_default();
        let hint = if status == StatusCode::NOT_FOUND {
            " (is this the control plane's monitoring port, 15014?)"
        } else {
            ""
        };
        return Err(format!("answered {status}{hint}: {start}"));
    }
    let declared = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY as u64) {
        return Err(too_large());
    }
    match Limited::new(response.into_body(), MAX_BODY).collect().await {
        Ok(body) => Ok(body.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(too_large()),
        Err(e) => Err(format!("reading the answer: {e}")),
    }
}

fn too_large() -> String {
    format!("the answer is larger than {} MiB; refusing to read it", MAX_BODY >> 20)
}

/// The first characters of a body, quoted and escaped, for a message.
fn quote_start(body: &[u8]) -> String {
    const SHOWN: usize = 80;
    let text = String::from_utf8_lossy(&body[..body.len().min(SHOWN * 4)]);
    let mut start: String = text.chars().take(SHOWN).collect();
    if text.chars().nth(SHOWN).is_some() || body.len() > SHOWN * 4 {
        start.push_str("...");
    }
    format!("{start:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let e = Endpoint::parse("http://127.0.0.1:15014").unwrap();
        assert_eq!(
            (e.url.as_str(), e.host.as_str(), e.port),
            ("http://127.0.0.1:15014/debug/syncz", "127.0.0.1", 15014)
        );
        assert_eq!(e.path, "/debug/syncz");
        let e = Endpoint::parse("trellisd.trellis-system:15014").unwrap();
        assert_eq!(e.url, "http://trellisd.trellis-system:15014/debug/syncz");
        assert_eq!(e.authority, "trellisd.trellis-system:15014");
        let e = Endpoint::parse("http://[::1]:15014/").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 15014));
        let e = Endpoint::parse("localhost").unwrap();
        assert_eq!((e.url.as_str(), e.port), ("http://localhost/debug/syncz", 80));
        let proxied = "http://127.0.0.1:8001/api/v1/namespaces/trellis-system/services/trellisd:15014/proxy/";
        let e = Endpoint::parse(proxied).unwrap();
        assert_eq!(e.path, "/api/v1/namespaces/trellis-system/services/trellisd:15014/proxy/debug/syncz");
        let e = Endpoint::parse("http://h:1/debug/syncz").unwrap();
        assert_eq!(e.path, "/debug/syncz");

        for (bad, why) in [
            ("https://h:15014", "https is not supported"),
            ("ftp://h", "is not http"),
            ("http://", "not a URL"),
            ("http://user:pw@h:1", "user information"),
            ("http://h:99999", "\"99999\" is not a port number"),
            ("http://h:0", "\"0\" is not a port number"),
            ("http://h:", "\"\" is not a port number"),
            ("h p://x", "not a URL"),
        ] {
            let err = Endpoint::parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
            assert!(err.contains("--control-plane"), "{bad}: {err}");
        }
    }

    #[test]
    fn bodies_that_are_not_syncz() {
        let err = parse(b"<html><body>Welcome to nginx!</body></html>").unwrap_err();
        assert!(
            err.starts_with("the answer is not /debug/syncz JSON: expected value at line 1 column 1"),
            "{err}"
        );
        assert!(err.contains(r#"(it starts with "<html><body>Welcome to nginx!</body></html>")"#), "{err}");
        let err = parse(b"{\"status\":\"ok\"}").unwrap_err();
        assert!(err.contains("missing field `proxies`"), "{err}");
        let err = parse(br#"{"proxies": 3}"#).unwrap_err();
        assert!(err.contains("invalid type: integer `3`"), "{err}");
        let err = parse(br#"{"proxies": [{"id": "a", "connectedSince": -1}]}"#).unwrap_err();
        assert!(err.contains("invalid value"), "{err}");
        // Deep nesting does not overflow the stack (serde_json skips unknown fields without
        // recursing, and limits recursion elsewhere).
        let deep = format!(r#"{{"proxies":[],"x":{}{}}}"#, "[".repeat(100_000), "]".repeat(100_000));
        assert!(parse(deep.as_bytes()).is_ok_and(|s| s.proxies.is_empty()));
        let deep = format!(r#"{{"proxies":{}{}}}"#, "[".repeat(100_000), "]".repeat(100_000));
        assert!(parse(deep.as_bytes()).is_err());
        // Not UTF-8, and long: quoted, escaped and cut.
        let err = parse(&[0xff; 1000]).unwrap_err();
        assert!(err.contains("(it starts with \"\u{fffd}\u{fffd}") && err.ends_with("...\")"), "{err}");
        assert!(err.len() < 400, "{err}");
        let err = parse(b"\x1b[2J").unwrap_err();
        assert!(err.contains(r#""\u{1b}[2J""#), "{err}");
        assert!(parse(b"").unwrap_err().contains("EOF"));
    }
}
