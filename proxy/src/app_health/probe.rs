//! Running one probe against the app, now, the way the kubelet would: a connect for
//! `tcpSocket`, a GET for `httpGet` (2xx and 3xx pass), a health check for `grpc`. The
//! connection is the proxy's own (its UID), so the pod's redirect lets it through to the app
//! instead of capturing it. Each probe uses one connection, driven inside the probe's future:
//! when the timeout drops it, nothing is left running against a stuck app.

use std::pin::pin;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use http_body_util::Empty;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use super::grpc;
use super::probers::{Action, HttpGet, Prober, Scheme};

/// Runs `prober` once against the app at `app_host` (used when the probe names no host), giving
/// up at `deadline`. `Err` says why it failed, in words for the kubelet's event.
pub(super) async fn run(
    prober: &Prober,
    app_host: &str,
    deadline: tokio::time::Instant,
) -> Result<(), String> {
    match tokio::time::timeout_at(deadline, act(&prober.action, app_host)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(format!("no answer within {:?}", prober.timeout)),
    }
}

async fn act(action: &Action, app_host: &str) -> Result<(), String> {
    match action {
        Action::TcpSocket { host, port } => {
            connect(host.as_deref().unwrap_or(app_host), *port).await.map(drop)
        }
        Action::HttpGet(get) => http_get(get, get.host.as_deref().unwrap_or(app_host)).await,
        Action::Grpc { port, service } => {
            let stream = connect(app_host, *port).await?;
            grpc::check(stream, &authority(app_host, *port), service).await
        }
    }
}

async fn connect(host: &str, port: u16) -> Result<TcpStream, String> {
    TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("connect {}: {}", authority(host, port), reason(&e)))
}

async fn http_get(get: &HttpGet, host: &str) -> Result<(), String> {
    let stream = connect(host, get.port).await?;
    let authority = authority(host, get.port);
    let request = request(get, &authority)?;
    let status = match get.scheme {
        Scheme::Http => exchange(TokioIo::new(stream), request).await?,
        Scheme::Https => {
            let name = ServerName::try_from(host.to_owned())
                .map_err(|_| format!("{host:?} is not a DNS name or IP address"))?;
            let tls = tokio_rustls::TlsConnector::from(any_certificate()?)
                .connect(name, stream)
                .await
                .map_err(|e| format!("TLS handshake with {authority}: {}", reason(&e)))?;
            exchange(TokioIo::new(tls), request).await?
        }
    };
    // The kubelet's rule: below 400 passes (it follows a redirect only to the same host,
    // and counts one elsewhere as passed).
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(format!("status {}", status.as_u16()))
    }
}

/// The kubelet's request: its usual headers, replaced by any the probe sets under the same
/// name (`Host` included), and no keep-alive.
fn request(get: &HttpGet, authority: &str) -> Result<Request<Empty<Bytes>>, String> {
    let mut headers = HeaderMap::new();
    let host = HeaderValue::try_from(authority).map_err(|_| format!("{authority:?} is not a Host header"))?;
    headers.insert(header::HOST, host);
    // Apps and their frameworks recognise probes by this agent.
    headers.insert(header::USER_AGENT, HeaderValue::from_static("kube-probe/1.33"));
    headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    for name in get.headers.keys() {
        headers.remove(name);
    }
    for (name, value) in &get.headers {
        headers.append(name, value.clone());
    }
    let mut request = Request::get(get.path.as_str()).body(Empty::new()).map_err(|e| e.to_string())?;
    *request.headers_mut() = headers;
    Ok(request)
}

/// Sends `request` on a fresh HTTP/1.1 connection and returns the answer's status; the body
/// is not needed.
async fn exchange<T>(io: T, request: Request<Empty<Bytes>>) -> Result<StatusCode, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = http1::handshake(io).await.map_err(|e| format!("HTTP: {e}"))?;
    let mut connection = pin!(connection);
    let mut response = pin!(sender.send_request(request));
    let answer = tokio::select! {
        biased;
        answer = &mut response => answer,
        done = &mut connection => match done {
            // The connection may finish (the app closed it) just after handing the answer over.
            Ok(()) => response.await,
            Err(e) => return Err(format!("HTTP: {e}")),
        },
    };
    answer.map(|a| a.status()).map_err(|e| format!("HTTP: {e}"))
}

/// TLS that accepts any certificate: the kubelet does not verify an app's either (the app's
/// certificate is usually self-signed, or for a name the probe does not use). Built once.
fn any_certificate() -> Result<Arc<ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            // The name is not used: each probe sends its own host as the server name.
            let settings = trellis_identity::origination::Settings {
                sni: "localhost".to_owned(),
                insecure_skip_verify: true,
                ..Default::default()
            };
            let origination = trellis_identity::origination::Origination::new(&settings)?;
            Ok(origination.client_config(trellis_identity::tls::Carries::Http1).0)
        })
        .clone()
}

/// `host:port`, with an IPv6 address in brackets.
fn authority(host: &str, port: u16) -> String {
    if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}

/// The OS's words without the error number ("connection refused"), as the kubelet shows them.
fn reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    let words = text.split(" (os error ").next().unwrap_or_default();
    let mut chars = words.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_errors_read_as_the_kubelet_shows_them() {
        let refused = std::io::Error::from_raw_os_error(nix::libc::ECONNREFUSED);
        assert_eq!(reason(&refused), "connection refused");
        assert_eq!(reason(&std::io::Error::other("Odd")), "odd");
    }

    #[test]
    fn authority_brackets_ipv6() {
        assert_eq!(authority("::1", 80), "[::1]:80");
        assert_eq!(authority("127.0.0.1", 80), "127.0.0.1:80");
        assert_eq!(authority("app.local", 80), "app.local:80");
    }

    #[test]
    fn probe_headers_replace_the_kubelets() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("app.example"));
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        let get = HttpGet {
            scheme: Scheme::Http,
            host: None,
            port: 80,
            path: http::uri::PathAndQuery::from_static("/h?x=1"),
            headers,
        };
        let request = request(&get, "127.0.0.1:80").unwrap();
        assert_eq!(request.uri(), "/h?x=1");
        assert_eq!(request.headers()[header::HOST], "app.example");
        assert_eq!(request.headers().get_all("x-a").iter().count(), 2);
        assert_eq!(request.headers()[header::USER_AGENT], "kube-probe/1.33");
    }
}
