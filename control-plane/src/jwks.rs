//! The JSON Web Key Sets of RequestAuthentications' `jwksUri`s, fetched by trellisd and inlined
//! into the proxies' JWT providers, as istiod does by default: each URI is fetched when a rule
//! first names it, then every refresh interval (Istio's `PILOT_JWT_PUB_KEY_REFRESH_INTERVAL`,
//! 20 minutes); a failed fetch keeps the last good keys and is retried with backoff. Keys go
//! into the model (`Model::jwks`), so a fetch that changes them is a model change and is pushed
//! like any other.
//!
//! Until a URI has been fetched once, its providers are sent with an empty `jwks`: the proxy
//! rejects the tokens of that issuer (fail closed).
//!
//! The client is a plain HTTP/1.1 GET over rustls (the system roots in
//! `/etc/ssl/certs/ca-certificates.crt`, plus `--jwks-ca-file` for private issuers), answers at
//! most 1 MiB, within the rule's `timeout` (default 5 s), following up to three redirects but
//! never from https to http.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;
use tokio_rustls::rustls;
use tracing::{debug, info, warn};
use trellis_api::resource::{Kind, Resource};

use crate::model::{Model, ModelHandle};

/// Istio's default `PILOT_JWT_PUB_KEY_REFRESH_INTERVAL`.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(20 * 60);
/// A RequestAuthentication rule's `timeout` when it sets none (Istio's default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Larger answers are refused: a key set is a few kilobytes.
pub const MAX_JWKS_BYTES: usize = 1 << 20;
/// Where Debian (and the distroless images built on it) keep the system's trusted roots.
pub const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";
const MAX_REDIRECTS: usize = 3;
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// What to fetch

/// Every `jwksUri` the model's RequestAuthentications need fetched (rules without inline
/// `jwks`, with an issuer, in policies sidecars read), with the longest `timeout` any of them
/// gives.
pub fn wanted(model: &Model) -> BTreeMap<String, Duration> {
    let mut uris: BTreeMap<String, Duration> = BTreeMap::new();
    for (_, resource) in model.of_kind(Kind::RequestAuthentication) {
        let Resource::RequestAuthentication(ra) = &**resource else { continue };
        if ra.spec.has_target_ref() {
            continue;
        }
        for rule in &ra.spec.jwt_rules {
            if rule.jwks_uri.is_empty() || !rule.jwks.is_empty() || rule.issuer.is_empty() {
                continue;
            }
            let timeout = rule
                .timeout
                .as_ref()
                .and_then(|t| t.to_std().ok())
                .filter(|t| !t.is_zero())
                .unwrap_or(DEFAULT_TIMEOUT);
            let entry = uris.entry(rule.jwks_uri.clone()).or_insert(timeout);
            *entry = (*entry).max(timeout);
        }
    }
    uris
}

// ---------------------------------------------------------------------------------------------
// Keeping the keys fresh

/// Fetches what the model wants, keeps it fresh, and forgets what it no longer wants. The first
/// round (every URI once, concurrently) completes before `ready` is sent, so that the first push
/// can carry keys. Runs until the model handle is dropped.
pub async fn run(
    model: ModelHandle,
    client: JwksClient,
    refresh: Duration,
    ready: Option<tokio::sync::oneshot::Sender<()>>,
) {
    let client = Arc::new(client);
    let mut changes = model.subscribe();
    let mut tasks: HashMap<String, (Duration, JoinHandle<()>)> = HashMap::new();
    let mut ready = ready;
    loop {
        changes.mark_unchanged();
        let wanted = wanted(&model.snapshot());
        tasks.retain(|uri, (timeout, task)| {
            let keep = wanted.get(uri) == Some(timeout);
            if !keep {
                task.abort();
            }
            keep
        });
        model.update(|m| {
            let before = m.jwks.len();
            m.jwks.retain(|uri, _| wanted.contains_key(uri));
            m.jwks.len() != before
        });
        let new: Vec<(String, Duration)> =
            wanted.into_iter().filter(|(uri, _)| !tasks.contains_key(uri)).collect();
        // First attempts run together, and the first round is awaited: trellisd's first push
        // then carries the keys of every issuer that answered.
        let first = futures_util::future::join_all(
            new.iter().map(|(uri, timeout)| fetch_once(&model, &client, uri, *timeout)),
        )
        .await;
        for ((uri, timeout), ok) in new.into_iter().zip(first) {
            let delay = if ok { refresh } else { RETRY_FIRST };
            let task =
                tokio::spawn(keep_fresh(model.clone(), client.clone(), uri.clone(), timeout, refresh, delay));
            tasks.insert(uri, (timeout, task));
        }
        if let Some(ready) = ready.take() {
            let _ = ready.send(());
        }
        if changes.changed().await.is_err() {
            break;
        }
    }
    for (_, (_, task)) in tasks {
        task.abort();
    }
}

/// Refetches `uri` every `refresh`, and after a failure with backoff (1 s doubling up to a
/// minute, never beyond `refresh`).
async fn keep_fresh(
    model: ModelHandle,
    client: Arc<JwksClient>,
    uri: String,
    timeout: Duration,
    refresh: Duration,
    first_delay: Duration,
) {
    let mut delay = first_delay;
    let mut backoff = RETRY_FIRST;
    loop {
        tokio::time::sleep(delay).await;
        if fetch_once(&model, &client, &uri, timeout).await {
            backoff = RETRY_FIRST;
            delay = refresh;
        } else {
            delay = backoff.min(refresh);
            backoff = (backoff * 2).min(RETRY_MAX);
        }
    }
}

/// One fetch; the keys go into the model when they differ from the ones it holds. Returns
/// whether the fetch succeeded.
async fn fetch_once(model: &ModelHandle, client: &JwksClient, uri: &str, timeout: Duration) -> bool {
    match client.fetch(uri, timeout).await {
        Ok(keys) => {
            let mut changed = false;
            model.update(|m| {
                if m.jwks.get(uri).is_some_and(|old| **old == *keys) {
                    return false;
                }
                m.jwks.insert(uri.to_owned(), keys.as_str().into());
                changed = true;
                true
            });
            if changed {
                info!(jwks_uri = uri, "fetched new keys; pushing them to the proxies");
            } else {
                debug!(jwks_uri = uri, "keys unchanged");
            }
            true
        }
        Err(e) => {
            if model.snapshot().jwks.contains_key(uri) {
                warn!(jwks_uri = uri, "fetching the JWKS failed: {e}; the last good keys stay in use");
            } else {
                warn!(
                    jwks_uri = uri,
                    "fetching the JWKS failed: {e}; until it succeeds, proxies reject the tokens of this issuer"
                );
            }
            false
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The HTTP client

/// Fetches key sets over HTTP/1.1, plain or over rustls.
#[derive(Clone)]
pub struct JwksClient {
    tls: Arc<rustls::ClientConfig>,
    max_bytes: usize,
}

impl JwksClient {
    /// A client that trusts the system roots (when the bundle is readable) and `extra_roots`
    /// (PEM). With neither, HTTPS fetches fail and say why.
    pub fn new(extra_roots: Option<&str>) -> Result<JwksClient, String> {
        let mut roots = rustls::RootCertStore::empty();
        match std::fs::read_to_string(SYSTEM_ROOTS) {
            Ok(pem) => {
                if let Ok(system) = trellis_identity::tls::root_store(&pem) {
                    roots.extend(system.roots);
                }
            }
            Err(e) => debug!("system roots {SYSTEM_ROOTS}: {e}"),
        }
        if let Some(pem) = extra_roots {
            let extra = trellis_identity::tls::root_store(pem)?;
            roots.extend(extra.roots);
        }
        if roots.is_empty() {
            warn!(
                "no trusted roots ({SYSTEM_ROOTS} unreadable, no --jwks-ca-file): https jwksUri fetches will fail"
            );
        }
        Self::with_roots(roots)
    }

    /// A client that trusts exactly `roots`.
    pub fn with_roots(roots: rustls::RootCertStore) -> Result<JwksClient, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(JwksClient { tls: Arc::new(tls), max_bytes: MAX_JWKS_BYTES })
    }

    /// The key set at `uri`, as compact JSON, within `timeout` (redirects included).
    pub async fn fetch(&self, uri: &str, timeout: Duration) -> Result<String, String> {
        tokio::time::timeout(timeout, self.fetch_following(uri))
            .await
            .map_err(|_| format!("no complete answer within {timeout:?}"))?
    }

    async fn fetch_following(&self, uri: &str) -> Result<String, String> {
        let mut current: http::Uri = uri.parse().map_err(|e| format!("{uri:?}: {e}"))?;
        for _ in 0..=MAX_REDIRECTS {
            match self.get(&current).await? {
                Answer::Body(body) => return parse_jwks(&body),
                Answer::Redirect(location) => {
                    let next = redirect_target(&current, &location)?;
                    debug!(from = %current, to = %next, "JWKS redirect");
                    current = next;
                }
            }
        }
        Err(format!("more than {MAX_REDIRECTS} redirects"))
    }

    async fn get(&self, uri: &http::Uri) -> Result<Answer, String> {
        let https = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("https") => true,
            Some(s) if s.eq_ignore_ascii_case("http") => false,
            _ => return Err(format!("{uri}: only http and https URLs can be fetched")),
        };
        let authority = uri.authority().ok_or_else(|| format!("{uri}: no host"))?;
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        if https {
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|_| format!("{host:?} is not a DNS name or IP address"))?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS with {host}:{port}: {e}"))?;
            self.exchange(tls, uri, authority.as_str()).await
        } else {
            self.exchange(tcp, uri, authority.as_str()).await
        }
    }

    async fn exchange<S>(&self, stream: S, uri: &http::Uri, authority: &str) -> Result<Answer, String>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let request = http::Request::get(path)
            .header(http::header::HOST, authority)
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, "trellisd")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let answer = async {
            let response = sender.send_request(request).await.map_err(|e| format!("HTTP: {e}"))?;
            let status = response.status();
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get(http::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or_else(|| format!("HTTP {status} without a Location"))?;
                return Ok(Answer::Redirect(location.to_owned()));
            }
            if status != http::StatusCode::OK {
                return Err(format!("HTTP {status}"));
            }
            let declared = response
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > self.max_bytes as u64) {
                return Err(format!("the answer is larger than {} bytes", self.max_bytes));
            }
            let body = Limited::new(response.into_body(), self.max_bytes)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        format!("the answer is larger than {} bytes", self.max_bytes)
                    } else {
                        format!("reading the answer: {e}")
                    }
                })?
                .to_bytes();
            Ok(Answer::Body(body))
        }
        .await;
        connection.abort();
        answer
    }
}

enum Answer {
    Body(Bytes),
    Redirect(String),
}

/// Where a redirect leads: absolute, or a path on the same host; never from https to http.
fn redirect_target(from: &http::Uri, location: &str) -> Result<http::Uri, String> {
    let target: http::Uri = if location.starts_with('/') && !location.starts_with("//") {
        let mut parts = from.clone().into_parts();
        parts.path_and_query = Some(location.parse().map_err(|e| format!("redirect to {location:?}: {e}"))?);
        http::Uri::from_parts(parts).map_err(|e| format!("redirect to {location:?}: {e}"))?
    } else {
        location.parse().map_err(|e| format!("redirect to {location:?}: {e}"))?
    };
    let secure = |u: &http::Uri| u.scheme_str().is_some_and(|s| s.eq_ignore_ascii_case("https"));
    if secure(from) && !secure(&target) {
        return Err(format!("refusing a redirect from https to {target}"));
    }
    Ok(target)
}

/// The answer must be a JSON Web Key Set (`{"keys": [...]}`); it is kept as compact JSON.
fn parse_jwks(body: &[u8]) -> Result<String, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the answer is not JSON: {e}"))?;
    match value.get("keys") {
        Some(serde_json::Value::Array(keys))
            if keys.iter().all(|k| k.get("kty").is_some_and(|t| t.is_string())) => {}
        _ => {
            return Err(
                "the answer is not a JSON Web Key Set ({\"keys\": [...]}, each key with \"kty\")".into()
            );
        }
    }
    serde_json::to_string(&value).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::test_support::model;

    #[test]
    fn wanted_uris_come_from_rules_without_inline_keys() {
        let m = model(
            r#"apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: { name: a, namespace: shop }
spec:
  jwtRules:
    - { issuer: one, jwksUri: "https://one.example.com/jwks" }
    - { issuer: two, jwksUri: "https://two.example.com/jwks", jwks: '{"keys": []}' }
    - { issuer: three, jwksUri: "https://one.example.com/jwks", timeout: 9s }
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: { name: gateway, namespace: shop }
spec:
  targetRefs: [{ kind: Gateway, group: gateway.networking.k8s.io, name: gw }]
  jwtRules: [{ issuer: four, jwksUri: "https://four.example.com/jwks" }]
"#,
        );
        assert_eq!(
            wanted(&m),
            BTreeMap::from([("https://one.example.com/jwks".to_owned(), Duration::from_secs(9))])
        );
    }

    #[test]
    fn answers_must_be_key_sets() {
        assert_eq!(
            parse_jwks(br#"{ "keys": [ {"kty": "EC", "crv": "P-256"} ] }"#).unwrap(),
            r#"{"keys":[{"crv":"P-256","kty":"EC"}]}"#
        );
        assert!(parse_jwks(b"<html>").unwrap_err().contains("not JSON"));
        assert!(parse_jwks(br#"{"keys": [{}]}"#).unwrap_err().contains("not a JSON Web Key Set"));
        assert!(parse_jwks(br#"{"kty": "EC"}"#).is_err());
    }

    #[test]
    fn redirects_stay_secure() {
        let from: http::Uri = "https://a.example.com/jwks".parse().unwrap();
        assert_eq!(redirect_target(&from, "/v2/jwks").unwrap().to_string(), "https://a.example.com/v2/jwks");
        assert_eq!(
            redirect_target(&from, "https://b.example.com/k").unwrap().to_string(),
            "https://b.example.com/k"
        );
        assert!(redirect_target(&from, "http://b.example.com/k").unwrap_err().contains("refusing"));
    }
}
