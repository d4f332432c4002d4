//! RequestAuthentication `jwksUri`: trellisd fetches the key set over real HTTPS (a rustls server
//! on 127.0.0.1 with a test CA that `--jwks-ca-file` makes trusted), inlines it into the JWT
//! provider of the proxies' Settings, pushes a changed key set after a refresh, and keeps the
//! last good keys when the issuer fails. The client alone: refusals of an untrusted server,
//! oversized, failing, non-JSON and slow answers, and redirects.

mod ca_support;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ca_support::{DEADLINE, Trellisd, eventually};
use prost::Message;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_stream::wrappers::ReceiverStream;
use trellis_control_plane::jwks::JwksClient;
use trellis_xds::config as pb;
use trellis_xds::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use trellis_xds::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use trellis_xds::types::{ProxyNode, ResourceType};

const KEYS_1: &str = r#"{"keys": [{"kty": "EC", "kid": "one", "crv": "P-256", "x": "AA", "y": "BB"}]}"#;
const KEYS_2: &str = r#"{"keys": [{"kty": "EC", "kid": "two", "crv": "P-256", "x": "CC", "y": "DD"}]}"#;

/// The compact form trellisd sends.
fn compact(json: &str) -> String {
    serde_json::to_string(&serde_json::from_str::<serde_json::Value>(json).unwrap()).unwrap()
}

/// A CA that signs the server's certificate.
struct TestCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    fn new() -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "jwks test CA");
        let cert = params.self_signed(&key).unwrap();
        TestCa { pem: cert.pem(), issuer: Issuer::new(params, key) }
    }

    /// A server certificate for 127.0.0.1 and `localhost`, and its key.
    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let chain = vec![CertificateDer::from_pem_slice(cert.pem().as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        Arc::new(config)
    }
}

/// What the server answers: status, extra headers, body, and a delay before answering.
#[derive(Clone)]
struct Answer {
    status: u16,
    headers: String,
    body: String,
    delay: Duration,
}

impl Answer {
    fn ok(body: &str) -> Answer {
        Answer { status: 200, headers: String::new(), body: body.to_owned(), delay: Duration::ZERO }
    }
}

/// A tiny HTTP/1.1 server, over TLS when given a config: one request per connection.
struct JwksServer {
    addr: SocketAddr,
    answer: Arc<Mutex<Answer>>,
    requests: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(tls: Option<Arc<rustls::ServerConfig>>, answer: Answer) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answer = Arc::new(Mutex::new(answer));
        let requests = Arc::new(AtomicUsize::new(0));
        let (shared, count) = (answer.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (shared, count, tls) = (shared.clone(), count.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        Some(config) => {
                            if let Ok(stream) = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await {
                                serve_one(stream, &shared, &count).await;
                            }
                        }
                        None => serve_one(tcp, &shared, &count).await,
                    }
                });
            }
        });
        JwksServer { addr, answer, requests }
    }

    fn url(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}/.well-known/jwks.json", self.addr.port())
    }

    fn set(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

async fn serve_one<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    answer: &Mutex<Answer>,
    count: &AtomicUsize,
) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    count.fetch_add(1, Ordering::SeqCst);
    let answer = answer.lock().unwrap().clone();
    tokio::time::sleep(answer.delay).await;
    let response = format!(
        "HTTP/1.1 {} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{}\r\n{}",
        answer.status,
        answer.body.len(),
        answer.headers,
        answer.body
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

const TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn the_client_fetches_over_https_from_a_server_the_extra_ca_makes_trusted() {
    let ca = TestCa::new();
    let server = JwksServer::start(Some(ca.server_config()), Answer::ok(KEYS_1)).await;
    let client = JwksClient::new(Some(&ca.pem)).unwrap();
    assert_eq!(client.fetch(&server.url("https"), TIMEOUT).await.unwrap(), compact(KEYS_1));

    // The system roots alone do not know the test CA.
    let untrusted = JwksClient::new(None).unwrap();
    let err = untrusted.fetch(&server.url("https"), TIMEOUT).await.unwrap_err();
    assert!(err.starts_with("TLS with 127.0.0.1:"), "{err}");
    assert!(JwksClient::new(Some("not a certificate")).is_err());
}

#[tokio::test]
async fn bad_answers_fail_with_the_reason() {
    let server = JwksServer::start(None, Answer::ok(KEYS_1)).await;
    let client = JwksClient::new(None).unwrap();
    let url = server.url("http");
    assert_eq!(client.fetch(&url, TIMEOUT).await.unwrap(), compact(KEYS_1), "plain http is allowed");

    server.set(Answer { status: 404, ..Answer::ok("not here") });
    assert_eq!(client.fetch(&url, TIMEOUT).await.unwrap_err(), "HTTP 404 Not Found");

    server.set(Answer::ok("<html>login</html>"));
    assert!(client.fetch(&url, TIMEOUT).await.unwrap_err().starts_with("the answer is not JSON"));

    server.set(Answer::ok(&format!(r#"{{"keys": [], "padding": "{}"}}"#, "x".repeat(2 << 20))));
    assert_eq!(client.fetch(&url, TIMEOUT).await.unwrap_err(), "the answer is larger than 1048576 bytes");

    server.set(Answer { delay: Duration::from_secs(30), ..Answer::ok(KEYS_1) });
    let err = client.fetch(&url, Duration::from_millis(300)).await.unwrap_err();
    assert_eq!(err, "no complete answer within 300ms");

    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let err = client.fetch(&format!("http://{closed}/jwks"), TIMEOUT).await.unwrap_err();
    assert!(err.starts_with(&format!("connecting to 127.0.0.1:{}", closed.port())), "{err}");
}

#[tokio::test]
async fn redirects_are_followed_but_never_down_to_http() {
    let ca = TestCa::new();
    let secure = JwksServer::start(Some(ca.server_config()), Answer::ok(KEYS_2)).await;
    let location = format!("location: {}\r\n", secure.url("https"));
    let plain = JwksServer::start(None, Answer { status: 302, headers: location, ..Answer::ok("") }).await;
    let client = JwksClient::new(Some(&ca.pem)).unwrap();
    assert_eq!(client.fetch(&plain.url("http"), TIMEOUT).await.unwrap(), compact(KEYS_2));

    let down = format!("location: {}\r\n", plain.url("http"));
    secure.set(Answer { status: 301, headers: down, ..Answer::ok("") });
    let err = client.fetch(&secure.url("https"), TIMEOUT).await.unwrap_err();
    assert!(err.starts_with("refusing a redirect from https to http://"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// trellisd end to end

type Client = AggregatedDiscoveryServiceClient<tonic::transport::Channel>;

/// A proxy's ADS stream that follows the Settings resource, acknowledging each push.
struct SettingsStream {
    requests: mpsc::Sender<DeltaDiscoveryRequest>,
    responses: tonic::Streaming<DeltaDiscoveryResponse>,
}

impl SettingsStream {
    async fn open(xds: SocketAddr) -> SettingsStream {
        let mut client = Client::connect(format!("http://{xds}")).await.unwrap();
        let (requests, rx) = mpsc::channel(4);
        let node = ProxyNode {
            id: "sidecar~127.0.0.1~api-1.shop~shop.svc.cluster.local".into(),
            namespace: "shop".into(),
            workload: "api".into(),
            labels: [("app".to_owned(), "api".to_owned())].into(),
            ..Default::default()
        };
        requests
            .send(DeltaDiscoveryRequest {
                node: Some(node.to_node()),
                type_url: ResourceType::Settings.type_url().into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let responses =
            client.delta_aggregated_resources(ReceiverStream::new(rx)).await.unwrap().into_inner();
        SettingsStream { requests, responses }
    }

    /// The next Settings pushed within `within`, acknowledged; `None` when none comes.
    async fn next(&mut self, within: Duration) -> Option<pb::ProxyConfig> {
        let response = tokio::time::timeout(within, self.responses.message()).await.ok()?;
        let response = response.expect("no error status").expect("the stream stays open");
        assert_eq!(response.type_url, ResourceType::Settings.type_url());
        let ack = DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        };
        self.requests.send(ack).await.unwrap();
        let any = response.resources[0].resource.as_ref().unwrap();
        Some(pb::ProxyConfig::decode(any.value.as_ref()).unwrap())
    }

    /// Settings until one satisfies `done`, within the deadline.
    async fn until(&mut self, what: &str, done: impl Fn(&pb::ProxyConfig) -> bool) -> pb::ProxyConfig {
        let start = std::time::Instant::now();
        loop {
            let left = DEADLINE.checked_sub(start.elapsed()).unwrap_or_default();
            let settings = self
                .next(left)
                .await
                .unwrap_or_else(|| panic!("no Settings with {what} within {DEADLINE:?}"));
            if done(&settings) {
                return settings;
            }
        }
    }
}

fn jwks_of(settings: &pb::ProxyConfig) -> &str {
    assert_eq!(settings.jwt_providers.len(), 1, "{:#?}", settings.jwt_providers);
    &settings.jwt_providers[0].jwks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trellisd_inlines_the_fetched_keys_pushes_new_ones_and_keeps_the_last_good_copy() {
    let ca = TestCa::new();
    let server = JwksServer::start(Some(ca.server_config()), Answer::ok(KEYS_1)).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("issuer-ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir(&config).unwrap();
    std::fs::write(
        config.join("jwt.yaml"),
        format!(
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{ name: api, namespace: shop }}\nspec:\n  selector: {{ matchLabels: {{ app: api }} }}\n  jwtRules:\n  - issuer: https://issuer.test\n    jwksUri: {}\n    timeout: 2s\n",
            server.url("https")
        ),
    )
    .unwrap();
    let args: Vec<OsString> = vec![
        "--config-dir".into(),
        config.into(),
        "--jwks-ca-file".into(),
        ca_file.into(),
        "--jwks-refresh-interval".into(),
        "500ms".into(),
    ];
    let trellisd = Trellisd::start_with(&args, &[]);

    // The first push already carries the keys: trellisd waited for the first fetch.
    let mut stream = SettingsStream::open(trellisd.xds).await;
    let first = stream.next(DEADLINE).await.expect("the first Settings");
    assert_eq!(jwks_of(&first), compact(KEYS_1), "{}", trellisd.logs());
    let provider = &first.jwt_providers[0];
    assert_eq!((provider.source.as_str(), provider.issuer.as_str()), ("shop/api", "https://issuer.test"));
    assert_eq!(provider.jwks_uri, server.url("https"));

    // The issuer rotates its keys: the next refresh pushes them.
    server.set(Answer::ok(KEYS_2));
    stream.until("the new keys", |s| jwks_of(s) == compact(KEYS_2)).await;

    // The issuer fails: trellisd keeps trying and keeps the last good keys (nothing is pushed).
    server.set(Answer { status: 503, ..Answer::ok("down") });
    let before = server.requests();
    eventually("two failed refreshes", async || server.requests() >= before + 2).await;
    assert_eq!(stream.next(Duration::from_millis(300)).await, None, "no push while the issuer fails");
    assert!(trellisd.logs().contains("the last good keys stay in use"), "{}", trellisd.logs());

    // The issuer is back, with other keys again: pushed.
    server.set(Answer::ok(KEYS_1));
    stream.until("the keys after the outage", |s| jwks_of(s) == compact(KEYS_1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_never_reached_gets_empty_keys_until_it_answers() {
    let ca = TestCa::new();
    let server = JwksServer::start(Some(ca.server_config()), Answer { status: 500, ..Answer::ok("") }).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("issuer-ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir(&config).unwrap();
    std::fs::write(
        config.join("jwt.yaml"),
        format!(
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{ name: mesh, namespace: istio-system }}\nspec:\n  jwtRules:\n  - issuer: https://issuer.test\n    jwksUri: {}\n",
            server.url("https")
        ),
    )
    .unwrap();
    let args: Vec<OsString> =
        vec!["--config-dir".into(), config.into(), "--jwks-ca-file".into(), ca_file.into()];
    let trellisd = Trellisd::start_with(&args, &[]);
    let mut stream = SettingsStream::open(trellisd.xds).await;
    let first = stream.next(DEADLINE).await.expect("the first Settings");
    assert_eq!(jwks_of(&first), "", "fail closed: the proxy rejects this issuer's tokens");
    assert!(trellisd.logs().contains("until it succeeds, proxies reject the tokens of this issuer"));

    // The retry (1 s, then backing off) brings the keys once the issuer answers.
    server.set(Answer::ok(KEYS_1));
    stream.until("the keys", |s| jwks_of(s) == compact(KEYS_1)).await;
}

#[test]
fn bad_jwks_flags_stop_trellisd_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let logs = ca_support::start_fails(&["--jwks-ca-file".as_ref(), missing.as_os_str()]);
    assert!(logs.contains(&format!("trellisd: --jwks-ca-file {}: ", missing.display())), "{logs}");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let logs = ca_support::start_fails(&["--jwks-ca-file".as_ref(), garbage.as_os_str()]);
    assert!(logs.contains(&format!("trellisd: --jwks-ca-file {}: ", garbage.display())), "{logs}");
    let logs = ca_support::start_fails(&["--jwks-refresh-interval".as_ref(), "0s".as_ref()]);
    assert!(logs.contains("trellisd: --jwks-refresh-interval 0ns: at least 100ms"), "{logs}");
}
