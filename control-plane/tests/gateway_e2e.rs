//! The ingress gateway end to end, on loopback: trellisd's Kubernetes source (kube-rs against
//! the stand-in API server), its xDS server and a gateway proxy (`--role gateway`, as Istio's
//! `router`) in this process, a sidecar with its app behind it, and real TLS clients (rustls).
//! Istio `Gateway` servers are configured through the API server — certificates from Secrets
//! (`credentialName`), SNI selection, MUTUAL, PASSTHROUGH, httpsRedirect, a Secret rotated under
//! load — and requests are routed by host and path into the mesh over mutual TLS.

mod ca_support;
mod fake_api;
mod gateway_support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine;
use ca_support::{DEADLINE, eventually};
use fake_api::FakeApi;
use gateway_support::{free_port, mesh_identity, start_control_plane, start_gateway};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use trellis_identity::ca::{CaMaterial, CertificateAuthority};
use trellis_proxy::metrics::{Metrics, Workload};
use trellis_xds::types::ProxyNode;

const SERVICES: &str = "/api/v1/services";
const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
const PODS: &str = "/api/v1/pods";
const SECRETS: &str = "/api/v1/secrets";
const GATEWAYS: &str = "/apis/networking.istio.io/v1/gateways";
const VIRTUAL_SERVICES: &str = "/apis/networking.istio.io/v1/virtualservices";
const DESTINATION_RULES: &str = "/apis/networking.istio.io/v1/destinationrules";
const AUTHORIZATION_POLICIES: &str = "/apis/security.istio.io/v1/authorizationpolicies";
const SERVICE_ENTRIES: &str = "/apis/networking.istio.io/v1/serviceentries";

/// The gateway's pod address, the sidecar's and the TLS backend's.
const GATEWAY_IP: &str = "127.0.0.30";
const SIDECAR_IP: &str = "127.0.0.31";
const BACKEND_IP: &str = "127.0.0.32";

/// Everything a scenario needs, kept alive while it runs.
struct Mesh {
    api: FakeApi,
    app_port: u16,
    backend: TestCa,
    /// The TLS backend's port (its certificate names pass.example.com).
    backend_port: u16,
    /// trellisd's xDS address and the mesh's CA, for proxies a scenario adds.
    xds: String,
    mesh_ca: CertificateAuthority,
    _proxies: Vec<trellis_proxy::Running>,
    _dir: tempfile::TempDir,
}

/// The log lines of this process (trellisd's translation warnings among them).
fn logs() -> &'static Arc<Mutex<String>> {
    static LOGS: OnceLock<Arc<Mutex<String>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(String::new()));
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_env_filter("warn,trellis_proxy::gateway=info")
            .with_writer(move || Sink(sink.clone()))
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        logs
    })
}

struct Sink(Arc<Mutex<String>>);

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().push_str(&String::from_utf8_lossy(buf));
        std::io::stderr().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A CA for test certificates (the gateway's server certificates, client certificates, the
/// passthrough backend's own).
struct TestCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        TestCa { pem: cert.pem(), issuer: Issuer::new(params, key) }
    }

    /// A leaf for `names` (a client certificate when `names` is empty): (chain PEM, key PEM).
    fn leaf(&self, names: &[&str], common_name: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, common_name);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn secret(name: &str, data: &[(&str, &str)]) -> Value {
    let data: serde_json::Map<String, Value> =
        data.iter().map(|(k, v)| (k.to_string(), json!(b64(v)))).collect();
    json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": "istio-system"}, "data": data})
}

/// The app: answers `app <path> xfcc=<x-forwarded-client-cert>`.
async fn start_app() -> u16 {
    let listener = tokio::net::TcpListener::bind((SIDECAR_IP, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().fallback(|request: axum::extract::Request| async move {
        let xfcc = request
            .headers()
            .get("x-forwarded-client-cert")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        format!("app {} xfcc={xfcc}", request.uri().path())
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

/// A backend with its own TLS (for PASSTHROUGH): answers `backend` over HTTP/1.1.
async fn start_tls_backend(ca: &TestCa) -> u16 {
    let (chain, key) = ca.leaf(&["pass.example.com"], "pass.example.com");
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        CertificateDer::pem_slice_iter(chain.as_bytes()).map(Result::unwrap).collect(),
        PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind((BACKEND_IP, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let mut buf = vec![0u8; 4096];
                let _ = tls.read(&mut buf).await;
                let _ = tls
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\nconnection: close\r\n\r\nbackend")
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

impl Mesh {
    async fn start() -> Mesh {
        logs();
        let mut collections = fake_api::WATCHED.to_vec();
        collections.push((SECRETS, "v1", "Secret"));
        collections.push((GATEWAYS, "networking.istio.io/v1", "Gateway"));
        let api = FakeApi::start(&collections).await;
        let xds = start_control_plane(&api, false).await;
        let xds_address = xds.clone();
        let mesh_ca =
            CertificateAuthority::new(&CaMaterial::generate_root("cluster.local").unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();

        // The sidecar in front of the app: mutual TLS only, explicit mode (the authority's
        // port names the app).
        let app_port = start_app().await;
        let config = dir.path().join("sidecar.yaml");
        std::fs::write(&config, "inboundTls: { mode: STRICT }\n").unwrap();
        let sidecar_addr = SocketAddr::new(SIDECAR_IP.parse().unwrap(), 0);
        let sidecar = trellis_proxy::start(
            trellis_proxy::Options {
                outbound: vec![],
                inbound: vec![sidecar_addr],
                admin: vec![sidecar_addr],
                readiness: vec![],
                stats: vec![],
                config_file: Some(config),
                xds: None,
                explicit_inbound: true,
                identity: mesh_identity(&mesh_ca, "spiffe://cluster.local/ns/shop/sa/web"),
            },
            Metrics::new(Workload { name: "test".into(), namespace: "shop".into() }),
            None,
        )
        .unwrap();
        let inbound_port = sidecar.inbound[0].port();

        let backend = TestCa::new("backend CA");
        let backend_port = start_tls_backend(&backend).await;

        for (name, port, ip, app, account) in [
            ("web", inbound_port, SIDECAR_IP, "web", "web"),
            ("secure", backend_port, BACKEND_IP, "secure", "secure"),
        ] {
            api.apply(SERVICES, json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": "shop"},
                "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "main", "port": 443, "targetPort": port}]}}));
            api.apply(SLICES, json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("{name}-1"), "namespace": "shop", "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4", "ports": [{"name": "main", "port": port}],
                "endpoints": [{"addresses": [ip], "targetRef": {"kind": "Pod", "name": format!("{name}-1"), "namespace": "shop"}}]}));
            api.apply(
                PODS,
                json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("{name}-1"), "namespace": "shop", "labels": {"app": app}},
                "spec": {"serviceAccountName": account, "containers": []},
                "status": {"podIP": ip, "podIPs": [{"ip": ip}]}}),
            );
        }
        // Into the mesh over mutual TLS; the passthrough backend is not in the mesh.
        api.apply(DESTINATION_RULES, json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"host": "web.shop.svc.cluster.local", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}}));
        api.apply(DESTINATION_RULES, json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "secure", "namespace": "shop"},
            "spec": {"host": "secure.shop.svc.cluster.local", "trafficPolicy": {"tls": {"mode": "DISABLE"}}}}));

        // The gateway: no capture, its own identity, labelled as Istio's ingress gateway.
        let node = ProxyNode {
            id: format!("router~{GATEWAY_IP}~ingress-1.istio-system~istio-system.svc.cluster.local"),
            namespace: "istio-system".into(),
            workload: "trellis-ingressgateway".into(),
            labels: [("istio".to_owned(), "ingressgateway".to_owned())].into(),
            ..Default::default()
        };
        let identity = mesh_identity(&mesh_ca, "spiffe://cluster.local/ns/istio-system/sa/ingress");
        let workload = Workload { name: "test".into(), namespace: "shop".into() };
        let gateway = start_gateway(xds, GATEWAY_IP, node, identity, workload);
        Mesh {
            api,
            app_port,
            backend,
            backend_port,
            xds: xds_address,
            mesh_ca,
            _proxies: vec![sidecar, gateway],
            _dir: dir,
        }
    }

    fn gateway(&self, name: &str, servers: Value) {
        self.api.apply(
            GATEWAYS,
            json!({"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
            "metadata": {"name": name, "namespace": "istio-system"},
            "spec": {"selector": {"istio": "ingressgateway"}, "servers": servers}}),
        );
    }

    fn virtual_service(&self, name: &str, spec: Value) {
        self.api.apply(
            VIRTUAL_SERVICES,
            json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": "shop"}, "spec": spec}),
        );
    }

    /// Host header for the app behind the sidecar: its port names the app (explicit mode).
    fn host(&self, name: &str) -> String {
        format!("{name}:{}", self.app_port)
    }
}

fn gateway_addr(port: u16) -> SocketAddr {
    SocketAddr::new(GATEWAY_IP.parse().unwrap(), port)
}

/// One HTTP/1.1 request on `stream` (closed after): status line's code, headers and body.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    host: &str,
    path: &str,
) -> Result<(u16, String), String> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
    let mut response = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut response))
        .await
        .map_err(|_| "no answer".to_owned())?
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let code = text.get(9..12).and_then(|c| c.parse().ok()).ok_or_else(|| format!("not HTTP: {text:?}"))?;
    Ok((code, text))
}

async fn http_get(port: u16, host: &str, path: &str) -> Result<(u16, String), String> {
    let tcp =
        tokio::net::TcpStream::connect(gateway_addr(port)).await.map_err(|e| format!("connect: {e}"))?;
    exchange(tcp, host, path).await
}

/// A TLS client trusting `roots`, presenting `client` when given.
fn tls_client(roots: &[&str], client: Option<&(String, String)>) -> tokio_rustls::TlsConnector {
    let mut store = tokio_rustls::rustls::RootCertStore::empty();
    for pem in roots {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            store.add(cert.unwrap()).unwrap();
        }
    }
    let builder = tokio_rustls::rustls::ClientConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store);
    let config = match client {
        Some((chain, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(chain.as_bytes()).map(Result::unwrap).collect(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// An HTTPS request through the gateway: the answer, and the subject of the certificate the
/// gateway presented.
async fn https_get(
    connector: &tokio_rustls::TlsConnector,
    port: u16,
    sni: &str,
    host: &str,
    path: &str,
) -> Result<(u16, String, String), String> {
    let tcp =
        tokio::net::TcpStream::connect(gateway_addr(port)).await.map_err(|e| format!("connect: {e}"))?;
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    let tls = tokio::time::timeout(DEADLINE, connector.connect(name, tcp))
        .await
        .map_err(|_| "handshake hangs".to_owned())?
        .map_err(|e| format!("handshake: {e}"))?;
    let subject = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| String::from_utf8_lossy(c.as_ref()).into_owned())
        .unwrap_or_default();
    let (code, text) = exchange(tls, host, path).await?;
    Ok((code, text, subject))
}

/// Waits (at most `DEADLINE`) for `attempt` to give something.
async fn wait_for<T>(what: &str, attempt: impl AsyncFn() -> Option<T>) -> T {
    let start = tokio::time::Instant::now();
    loop {
        if let Some(found) = attempt().await {
            return found;
        }
        assert!(start.elapsed() < DEADLINE, "not {what} within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for an answer with status `expected`: its text.
async fn until_ok(
    what: &str,
    expected: u16,
    attempt: impl AsyncFn() -> Result<(u16, String), String>,
) -> String {
    wait_for(what, async || attempt().await.ok().filter(|(code, _)| *code == expected).map(|(_, text)| text))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingress_gateway_routes_by_host_and_path_into_the_mesh_over_mutual_tls() {
    let mesh = Mesh::start().await;
    let http = free_port(GATEWAY_IP);
    mesh.gateway(
        "ingress",
        json!([{"port": {"number": http, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]),
    );
    mesh.virtual_service("web", json!({"hosts": ["web.example.com"], "gateways": ["istio-system/ingress"],
        "http": [
            {"match": [{"uri": {"prefix": "/api"}}], "route": [{"destination": {"host": "web", "port": {"number": 443}}}]},
            {"match": [{"uri": {"prefix": "/old"}}], "redirect": {"uri": "/api/new"}}
        ]}));
    // A VirtualService for the mesh only is not the gateway's.
    mesh.virtual_service(
        "mesh-only",
        json!({"hosts": ["mesh.example.com"],
        "http": [{"route": [{"destination": {"host": "web"}}]}]}),
    );

    let host = mesh.host("web.example.com");
    let text =
        until_ok("routed through the gateway", 200, async || http_get(http, &host, "/api/items").await).await;
    assert!(text.contains("app /api/items"), "{text}");
    // The sidecar only accepts mutual TLS, and says who called: the gateway's own identity.
    assert!(text.contains("spiffe://cluster.local/ns/istio-system/sa/ingress"), "{text}");

    // An AuthorizationPolicy selecting the gateway applies at the gateway.
    mesh.api.apply(
        AUTHORIZATION_POLICIES,
        json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "edge", "namespace": "istio-system"},
        "spec": {"selector": {"matchLabels": {"istio": "ingressgateway"}}, "action": "DENY",
                 "rules": [{"to": [{"operation": {"paths": ["/api/admin*"]}}]}]}}),
    );
    let text =
        until_ok("denied at the gateway", 403, async || http_get(http, &host, "/api/admin/users").await)
            .await;
    assert!(!text.contains("app /"), "the app never saw it: {text}");
    let (code, text) = http_get(http, &host, "/api/items").await.unwrap();
    assert_eq!(code, 200, "the rest still passes: {text}");

    let (code, text) = http_get(http, &host, "/other").await.unwrap();
    assert_eq!(code, 404, "no route for the path: {text}");
    let (code, text) = http_get(http, &host, "/old").await.unwrap();
    assert_eq!(code, 301, "{text}");
    assert!(text.to_ascii_lowercase().contains("location: http://web.example.com"), "{text}");
    for host in ["mesh.example.com", "unknown.example.com", "web.shop.svc.cluster.local"] {
        let (code, text) = http_get(http, &mesh.host(host), "/api").await.unwrap();
        assert_eq!(code, 404, "{host} is not routed by the gateway (never passed through): {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_servers_pick_their_certificate_by_sni_verify_clients_and_pass_tls_through() {
    let mesh = Mesh::start().await;
    let ca = TestCa::new("gateway CA");
    let clients = TestCa::new("client CA");
    let (a_chain, a_key) = ca.leaf(&["a.example.com"], "a.example.com");
    let (b_chain, b_key) = ca.leaf(&["b.example.com"], "b.example.com");
    let (c_chain, c_key) = ca.leaf(&["c.example.com"], "c.example.com");
    // Kubernetes' TLS keys, Istio's generic ones, and a CA in a `-cacert` companion.
    mesh.api.apply(SECRETS, secret("a-cert", &[("tls.crt", &a_chain), ("tls.key", &a_key)]));
    mesh.api.apply(SECRETS, secret("b-cert", &[("cert", &b_chain), ("key", &b_key)]));
    mesh.api.apply(SECRETS, secret("c-cert", &[("tls.crt", &c_chain), ("tls.key", &c_key)]));
    mesh.api.apply(SECRETS, secret("c-cert-cacert", &[("ca.crt", &clients.pem)]));
    let (https, redirect, tls) = (free_port(GATEWAY_IP), free_port(GATEWAY_IP), free_port(GATEWAY_IP));
    mesh.gateway("ingress", json!([
        {"port": {"number": https, "name": "https-a", "protocol": "HTTPS"}, "hosts": ["a.example.com"],
         "tls": {"mode": "SIMPLE", "credentialName": "a-cert"}},
        {"port": {"number": https, "name": "https-b", "protocol": "HTTPS"}, "hosts": ["shop/b.example.com"],
         "tls": {"mode": "SIMPLE", "credentialName": "b-cert", "minProtocolVersion": "TLSV1_3"}},
        {"port": {"number": https, "name": "https-c", "protocol": "HTTPS"}, "hosts": ["c.example.com"],
         "tls": {"mode": "MUTUAL", "credentialName": "c-cert"}},
        // Overlaps a.example.com on the same port: reported, and a.example.com keeps its server.
        {"port": {"number": https, "name": "https-dup", "protocol": "HTTPS"}, "hosts": ["a.example.com"],
         "tls": {"mode": "SIMPLE", "credentialName": "b-cert"}},
        // Its Secret does not exist: reported, and the others go on.
        {"port": {"number": https, "name": "https-missing", "protocol": "HTTPS"}, "hosts": ["d.example.com"],
         "tls": {"mode": "SIMPLE", "credentialName": "no-such-secret"}},
        {"port": {"number": redirect, "name": "http", "protocol": "HTTP"}, "hosts": ["*.example.com"],
         "tls": {"httpsRedirect": true}},
        {"port": {"number": tls, "name": "tls", "protocol": "TLS"}, "hosts": ["pass.example.com"],
         "tls": {"mode": "PASSTHROUGH"}}
    ]));
    mesh.virtual_service(
        "web",
        json!({"hosts": ["a.example.com", "b.example.com", "c.example.com"],
        "gateways": ["istio-system/ingress"],
        "http": [{"route": [{"destination": {"host": "web", "port": {"number": 443}}}]}]}),
    );
    mesh.virtual_service(
        "secure",
        json!({"hosts": ["pass.example.com"], "gateways": ["istio-system/ingress"],
        "tls": [{"match": [{"sniHosts": ["pass.example.com"]}],
                 "route": [{"destination": {"host": "secure", "port": {"number": 443}}}]}]}),
    );

    let client = tls_client(&[&ca.pem], None);
    // SNI picks the server, and with it the certificate.
    for name in ["a.example.com", "b.example.com"] {
        let host = mesh.host(name);
        let (text, certificate) = wait_for(&format!("{name} served"), async || {
            match https_get(&client, https, name, &host, "/x").await {
                Ok((200, text, certificate)) => Some((text, certificate)),
                _ => None,
            }
        })
        .await;
        assert!(text.contains("app /x"), "{text}");
        let other = if name == "a.example.com" { "b.example.com" } else { "a.example.com" };
        assert!(certificate.contains(name) && !certificate.contains(other), "{name}'s own certificate");
    }

    // MUTUAL: without a client certificate, no answer; with one from the CA, the route.
    let without = https_get(&client, https, "c.example.com", &mesh.host("c.example.com"), "/m").await;
    assert!(without.is_err(), "a client without a certificate is refused: {without:?}");
    let (c_client_chain, c_client_key) = clients.leaf(&[], "a client");
    let with_cert = tls_client(&[&ca.pem], Some(&(c_client_chain, c_client_key)));
    let (code, text, _) =
        https_get(&with_cert, https, "c.example.com", &mesh.host("c.example.com"), "/m").await.unwrap();
    assert_eq!(code, 200, "{text}");
    // Nor through another server's connection: routes belong to the server SNI picked.
    let (code, text, _) =
        https_get(&client, https, "a.example.com", &mesh.host("c.example.com"), "/m").await.unwrap();
    assert_eq!(code, 404, "{text}");
    let stranger = TestCa::new("stranger").leaf(&[], "stranger");
    let other = tls_client(&[&ca.pem], Some(&stranger));
    assert!(https_get(&other, https, "c.example.com", &mesh.host("c.example.com"), "/m").await.is_err());

    // The missing Secret and the overlap are reported by name.
    let text = logs().lock().unwrap().clone();
    assert!(text.contains("istio-system/no-such-secret") && text.contains("no such Secret"), "{text}");
    assert!(text.contains("overlapping hosts on one port"), "{text}");
    assert!(https_get(&client, https, "d.example.com", "d.example.com", "/").await.is_err());

    // httpsRedirect: 301 to https, whatever the path.
    let text =
        until_ok("redirected", 301, async || http_get(redirect, "a.example.com", "/p?q=1").await).await;
    assert!(text.to_ascii_lowercase().contains("location: https://a.example.com/p?q=1"), "{text}");

    // PASSTHROUGH: the backend's own certificate, through the gateway untouched.
    // (The client trusts only the backend's CA: the handshake is the backend's.)
    let to_backend = tls_client(&[&mesh.backend.pem], None);
    let text = until_ok("passed through", 200, async || {
        https_get(&to_backend, tls, "pass.example.com", "pass.example.com", "/")
            .await
            .map(|(code, text, _)| (code, text))
    })
    .await;
    assert!(text.ends_with("backend"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_is_served_to_new_connections_without_a_failed_request() {
    let mesh = Mesh::start().await;
    let old_ca = TestCa::new("old CA");
    let new_ca = TestCa::new("new CA");
    let (chain, key) = old_ca.leaf(&["a.example.com"], "old a.example.com");
    mesh.api.apply(SECRETS, secret("a-cert", &[("tls.crt", &chain), ("tls.key", &key)]));
    let https = free_port(GATEWAY_IP);
    mesh.gateway(
        "ingress",
        json!([{"port": {"number": https, "name": "https", "protocol": "HTTPS"},
        "hosts": ["a.example.com"], "tls": {"mode": "SIMPLE", "credentialName": "a-cert"}}]),
    );
    mesh.virtual_service(
        "web",
        json!({"hosts": ["a.example.com"], "gateways": ["istio-system/ingress"],
        "http": [{"route": [{"destination": {"host": "web", "port": {"number": 443}}}]}]}),
    );
    let client = tls_client(&[&old_ca.pem, &new_ca.pem], None);
    let host = mesh.host("a.example.com");
    eventually("served", async || {
        matches!(https_get(&client, https, "a.example.com", &host, "/").await, Ok((200, ..)))
    })
    .await;

    // A bounded load loop: a new connection per request, before, during and after the rotation.
    let load = {
        let (client, host) = (client.clone(), host.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed, mut after) = (0u32, Vec::new(), 0u32);
            let deadline = tokio::time::Instant::now() + DEADLINE;
            while after < 20 && tokio::time::Instant::now() < deadline {
                match https_get(&client, https, "a.example.com", &host, "/load").await {
                    Ok((200, _, subject)) => {
                        ok += 1;
                        if subject.contains("new a.example.com") {
                            after += 1;
                        }
                    }
                    other => failed.push(format!("{other:?}")),
                }
            }
            (ok, failed, after)
        })
    };
    let (chain, key) = new_ca.leaf(&["a.example.com"], "new a.example.com");
    assert!(mesh.api.update(SECRETS, "istio-system", "a-cert", |s| {
        s["data"] = json!({"tls.crt": b64(&chain), "tls.key": b64(&key)});
    }));
    let (ok, failed, after) = load.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        ok as usize + failed.len()
    );
    assert_eq!(after, 20, "the new certificate is served to new connections");
    assert!(ok > after, "requests were served before the rotation too");
}

/// The client side of the egress scenario: a sidecar configured by trellisd (explicit mode,
/// outbound on 127.0.0.33), in `shop` as the `sleep` workload.
fn start_xds_sidecar(mesh: &Mesh) -> trellis_proxy::Running {
    let local = SocketAddr::new(SLEEP_IP.parse().unwrap(), 0);
    let node = ProxyNode {
        id: format!("sidecar~{SLEEP_IP}~sleep-1.shop~shop.svc.cluster.local"),
        namespace: "shop".into(),
        workload: "sleep".into(),
        labels: [("app".to_owned(), "sleep".to_owned())].into(),
        ..Default::default()
    };
    trellis_proxy::start(
        trellis_proxy::Options {
            outbound: vec![local],
            inbound: vec![],
            admin: vec![local],
            readiness: vec![],
            stats: vec![],
            config_file: None,
            xds: Some(trellis_proxy::xds::XdsOptions { address: mesh.xds.clone(), node, secure: None }),
            explicit_inbound: false,
            identity: mesh_identity(&mesh.mesh_ca, "spiffe://cluster.local/ns/shop/sa/sleep"),
        },
        Metrics::new(Workload { name: "sleep".into(), namespace: "shop".into() }),
        None,
    )
    .unwrap()
}

const SLEEP_IP: &str = "127.0.0.33";

/// Istio's egress-gateway task through trellisd: a ServiceEntry for the external host, a
/// Gateway server with `ISTIO_MUTUAL`, a VirtualService bound to `mesh` and the gateway, a
/// DestinationRule subset for the gateway with `sni`, and TLS origination from the gateway by
/// the host's DestinationRule. The app's plaintext call leaves its sidecar as the mesh's mutual
/// TLS to the gateway, and the gateway alone calls the external server, over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_reach_an_external_host_through_the_egress_gateway() {
    let mesh = Mesh::start().await;
    let port = free_port(GATEWAY_IP);
    let ca_file = mesh._dir.path().join("external-ca.pem");
    std::fs::write(&ca_file, &mesh.backend.pem).unwrap();
    let host = "pass.example.com";
    // The gateway's Service, whose pod runs as its account (the sidecar checks that identity).
    mesh.api.apply(
        SERVICES,
        json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "istio-egressgateway", "namespace": "istio-system"},
        "spec": {"clusterIP": "10.96.0.80", "ports": [{"name": "https", "port": 80, "targetPort": port}]}}),
    );
    mesh.api.apply(SLICES, json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "istio-egressgateway-1", "namespace": "istio-system",
                     "labels": {"kubernetes.io/service-name": "istio-egressgateway"}},
        "addressType": "IPv4", "ports": [{"name": "https", "port": port}],
        "endpoints": [{"addresses": [GATEWAY_IP], "targetRef": {"kind": "Pod", "name": "egress-1", "namespace": "istio-system"}}]}));
    mesh.api.apply(
        PODS,
        json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "egress-1", "namespace": "istio-system", "labels": {"istio": "ingressgateway"}},
        "spec": {"serviceAccountName": "ingress", "containers": []},
        "status": {"podIP": GATEWAY_IP, "podIPs": [{"ip": GATEWAY_IP}]}}),
    );
    mesh.api.apply(SERVICE_ENTRIES, json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
        "metadata": {"name": "external", "namespace": "shop"},
        "spec": {"hosts": [host], "resolution": "STATIC",
                 "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}, {"number": 443, "name": "https", "protocol": "HTTPS"}],
                 "endpoints": [{"address": BACKEND_IP, "ports": {"https": mesh.backend_port}}]}}));
    mesh.gateway(
        "egress",
        json!([{"port": {"number": port, "name": "https", "protocol": "HTTPS"},
        "hosts": [host], "tls": {"mode": "ISTIO_MUTUAL"}}]),
    );
    mesh.api.apply(
        DESTINATION_RULES,
        json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": "egressgateway-for-external", "namespace": "shop"},
        "spec": {"host": "istio-egressgateway.istio-system.svc.cluster.local",
                 "subsets": [{"name": "external", "trafficPolicy": {"portLevelSettings": [
                     {"port": {"number": 80}, "tls": {"mode": "ISTIO_MUTUAL", "sni": host}}]}}]}}),
    );
    mesh.api.apply(DESTINATION_RULES, json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": "originate-tls", "namespace": "shop"},
        "spec": {"host": host, "trafficPolicy": {"portLevelSettings": [
            {"port": {"number": 443}, "tls": {"mode": "SIMPLE", "caCertificates": ca_file.display().to_string()}}]}}}));
    mesh.virtual_service("through-egress", json!({"hosts": [host], "gateways": ["istio-system/egress", "mesh"],
        "http": [
            {"match": [{"gateways": ["mesh"], "port": 80}],
             "route": [{"destination": {"host": "istio-egressgateway.istio-system.svc.cluster.local", "subset": "external", "port": {"number": 80}}}]},
            {"match": [{"gateways": ["istio-system/egress"], "port": port}],
             "route": [{"destination": {"host": host, "port": {"number": 443}}}]}
        ]}));

    let sidecar = start_xds_sidecar(&mesh);
    let outbound = sidecar.outbound[0];
    let text = until_ok("through the egress gateway", 200, async || {
        let tcp = tokio::net::TcpStream::connect(outbound).await.map_err(|e| format!("connect: {e}"))?;
        exchange(tcp, host, "/headlines").await
    })
    .await;
    assert!(text.ends_with("backend"), "the external server answered over TLS: {text}");
    drop(sidecar);
}
