//! Access logs over real requests and connections through the proxy: every command operator in
//! TEXT, Istio's default TEXT and JSON formats, JSON fields keeping their types, denials that
//! name the policy and rule, CEL filters, a TCP connection's line, hostile header values that
//! cannot break a line, and a log file nobody reads, which costs requests nothing but dropped
//! (and counted) lines.

mod common;

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{Client, TestProxy, Upstream, api_config, get, wait_until};
use http::{Request, StatusCode, Version};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use trellis_proxy::config::Snapshot;

/// The proxy's config with `logs` (YAML list items of `accessLogs`) added.
fn with_logs(config: &str, logs: &str) -> String {
    format!("{config}\naccessLogs:\n{logs}")
}

/// Lines of `path`, once there are at least `n` (bounded wait).
async fn lines(path: &Path, n: usize) -> Vec<String> {
    let read = || std::fs::read_to_string(path).unwrap_or_default();
    wait_until(&format!("{n} line(s) in {}", path.display()), || read().lines().count() >= n).await;
    read().lines().map(str::to_owned).collect()
}

fn log_path(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

const ALL_OPERATORS: &[&str] = &[
    "%START_TIME%",
    "%START_TIME(%Y-%m-%dT%H:%M:%S.%3f%z)%",
    "%START_TIME(%s)%",
    "%REQ(:METHOD)%",
    "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "%REQ_WITHOUT_QUERY(:PATH)%",
    "%REQ(:AUTHORITY)%",
    "%REQ(X-CUSTOM?USER-AGENT):4%",
    "%REQ(X-REQUEST-ID)%",
    "%RESP(X-UPSTREAM)%",
    "%RESP(X-MISSING)%",
    "%PROTOCOL%",
    "%RESPONSE_CODE%",
    "%RESPONSE_CODE_DETAILS%",
    "%RESPONSE_FLAGS%",
    "%BYTES_RECEIVED%",
    "%BYTES_SENT%",
    "%DURATION%",
    "%RESPONSE_DURATION%",
    "%RESPONSE_TX_DURATION%",
    "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "%UPSTREAM_SERVICE_TIME%",
    "%UPSTREAM_HOST%",
    "%UPSTREAM_CLUSTER%",
    "%UPSTREAM_CLUSTER_RAW%",
    "%UPSTREAM_LOCAL_ADDRESS%",
    "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    "%DOWNSTREAM_REMOTE_ADDRESS%",
    "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    "%DOWNSTREAM_REMOTE_PORT%",
    "%DOWNSTREAM_LOCAL_ADDRESS%",
    "%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%",
    "%DOWNSTREAM_LOCAL_PORT%",
    "%DOWNSTREAM_PEER_URI_SAN%",
    "%REQUESTED_SERVER_NAME%",
    "%ROUTE_NAME%",
    "%CONNECTION_TERMINATION_DETAILS%",
    "%GRPC_STATUS%",
    "%HOSTNAME%",
];

#[tokio::test]
async fn every_operator_over_a_real_request() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_path(&dir, "access.log");
    let upstream = Upstream::start("api").await;
    let format = ALL_OPERATORS.join("|");
    let logs = format!("  - {{ path: {:?}, textFormat: {:?} }}", path.display().to_string(), format);
    let proxy =
        TestProxy::start(&with_logs(&api_config(&[upstream.addr.port()], "HTTP", "", ""), &logs)).await;
    let stream = TcpStream::connect(proxy.outbound()).await.unwrap();
    let client_addr = stream.local_addr().unwrap();
    drop(stream);
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    let request = Request::post("/items?color=red")
        .header("host", "api")
        .header("user-agent", "curl/8.5")
        .body(Full::new(bytes::Bytes::from_static(b"hello")))
        .unwrap();
    let answer = client.send(request).await.unwrap();
    assert_eq!((answer.status, answer.text()), (StatusCode::OK, "hello".to_owned()));
    let line = lines(&path, 1).await.remove(0);
    let values: Vec<&str> = line.split('|').collect();
    assert_eq!(values.len(), ALL_OPERATORS.len(), "{line}");
    let value = |op: &str| values[ALL_OPERATORS.iter().position(|o| *o == op).unwrap()];
    let seen = upstream.last();
    // Times: Envoy's default form, and the strftime forms, all of the same moment.
    let start = value("%START_TIME%");
    assert!(start.len() == 24 && start.ends_with('Z') && start.as_bytes()[10] == b'T', "{start}");
    assert_eq!(value("%START_TIME(%Y-%m-%dT%H:%M:%S.%3f%z)%"), format!("{}+0000", &start[..23]));
    let epoch: u64 = value("%START_TIME(%s)%").parse().unwrap();
    assert!(epoch > 1_700_000_000);
    // The request.
    assert_eq!(value("%REQ(:METHOD)%"), "POST");
    assert_eq!(value("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"), "/items?color=red");
    assert_eq!(value("%REQ_WITHOUT_QUERY(:PATH)%"), "/items");
    assert_eq!(value("%REQ(:AUTHORITY)%"), "api");
    assert_eq!(value("%REQ(X-CUSTOM?USER-AGENT):4%"), "curl", "the alternative, cut to 4");
    assert_eq!(value("%REQ(X-REQUEST-ID)%"), seen.headers["x-request-id"], "the id the app saw");
    assert_eq!(value("%PROTOCOL%"), "HTTP/1.1");
    // The response.
    assert_eq!(value("%RESP(X-UPSTREAM)%"), "api");
    assert_eq!(value("%RESP(X-MISSING)%"), "-");
    assert_eq!(value("%RESPONSE_CODE%"), "200");
    assert_eq!(value("%RESPONSE_CODE_DETAILS%"), "via_upstream");
    assert_eq!(value("%RESPONSE_FLAGS%"), "-");
    assert_eq!(value("%BYTES_RECEIVED%"), "5");
    assert_eq!(value("%BYTES_SENT%"), "5");
    let ms = |op: &str| value(op).parse::<u64>().unwrap_or_else(|_| panic!("{op}: {}", value(op)));
    assert!(ms("%DURATION%") >= ms("%RESPONSE_DURATION%"));
    assert_eq!(ms("%RESPONSE_DURATION%") + ms("%RESPONSE_TX_DURATION%"), ms("%DURATION%"));
    assert_eq!(ms("%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%"), ms("%UPSTREAM_SERVICE_TIME%"));
    // The upstream.
    assert_eq!(value("%UPSTREAM_HOST%"), upstream.addr.to_string());
    assert_eq!(value("%UPSTREAM_CLUSTER%"), "api");
    assert_eq!(value("%UPSTREAM_CLUSTER_RAW%"), "api");
    assert_eq!(value("%UPSTREAM_LOCAL_ADDRESS%"), "-", "not known for pooled HTTP connections");
    assert_eq!(value("%UPSTREAM_TRANSPORT_FAILURE_REASON%"), "-");
    assert_eq!(value("%ROUTE_NAME%"), "all");
    // The downstream: this client, and the proxy's port it dialled (explicit mode).
    let remote: std::net::SocketAddr = value("%DOWNSTREAM_REMOTE_ADDRESS%").parse().unwrap();
    assert_eq!(remote.ip(), client_addr.ip());
    assert_eq!(value("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"), "127.0.0.1");
    assert_eq!(value("%DOWNSTREAM_REMOTE_PORT%"), remote.port().to_string());
    assert_eq!(value("%DOWNSTREAM_LOCAL_ADDRESS%"), proxy.outbound().to_string());
    assert_eq!(value("%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%"), "127.0.0.1");
    assert_eq!(value("%DOWNSTREAM_LOCAL_PORT%"), proxy.outbound().port().to_string());
    assert_eq!(value("%DOWNSTREAM_PEER_URI_SAN%"), "-", "plaintext");
    assert_eq!(value("%REQUESTED_SERVER_NAME%"), "-");
    assert_eq!(value("%CONNECTION_TERMINATION_DETAILS%"), "-");
    assert_eq!(value("%GRPC_STATUS%"), "-");
    assert!(!value("%HOSTNAME%").is_empty());
}

#[tokio::test]
async fn istios_default_text_format_when_none_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_path(&dir, "access.log");
    let upstream = Upstream::start("api").await;
    let logs = format!("  - {{ path: {:?} }}", path.display().to_string());
    let proxy =
        TestProxy::start(&with_logs(&api_config(&[upstream.addr.port()], "HTTP", "", ""), &logs)).await;
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    let answer = client
        .send(get("api", "/status/418", &[("x-status", "418"), ("user-agent", "curl/8")]))
        .await
        .unwrap();
    assert_eq!(answer.status.as_u16(), 418);
    let line = lines(&path, 1).await.remove(0);
    let id = &upstream.last().headers["x-request-id"];
    // [START] "METHOD PATH PROTOCOL" CODE FLAGS DETAILS TERMINATION "FAILURE" RECEIVED SENT
    // DURATION SERVICE_TIME "XFF" "UA" "ID" "AUTHORITY" "UPSTREAM" CLUSTER UPSTREAM_LOCAL
    // DOWNSTREAM_LOCAL DOWNSTREAM_REMOTE SNI ROUTE
    let rest = line.split_once("] ").unwrap().1;
    let words: Vec<&str> = rest.split(' ').collect();
    assert_eq!(
        &words[..8],
        ["\"GET", "/status/418", "HTTP/1.1\"", "418", "-", "via_upstream", "-", "\"-\""],
        "{line}"
    );
    assert_eq!(words[8], "0");
    assert_eq!(words[9], "3", "the body 'api'");
    assert!(words[10].parse::<u64>().is_ok() && words[11].parse::<u64>().is_ok(), "{line}");
    assert_eq!(
        &words[12..17],
        ["\"-\"", "\"curl/8\"", &format!("\"{id}\""), "\"api\"", &format!("\"{}\"", upstream.addr)],
        "{line}"
    );
    assert_eq!(words[17], "api");
    assert_eq!(words[18], "-");
    assert_eq!(words[19], proxy.outbound().to_string());
    assert!(words[20].starts_with("127.0.0.1:"));
    assert_eq!(&words[21..], ["-", "all"]);
    assert!(line.starts_with('[') && !line.contains('\n'));
}

#[tokio::test]
async fn json_lines_keep_their_types_and_istios_default_fields() {
    let dir = tempfile::tempdir().unwrap();
    let (default_path, custom_path) = (log_path(&dir, "default.json"), log_path(&dir, "custom.json"));
    let upstream = Upstream::start("api").await;
    let logs = format!(
        "  - {{ path: {:?}, encoding: ACCESS_LOG_ENCODING_JSON }}\n  - {{ path: {:?}, encoding: ACCESS_LOG_ENCODING_JSON, jsonFields: [{{ key: code, format: '%RESPONSE_CODE%' }}, {{ key: summary, format: '%REQ(:METHOD)% %RESPONSE_CODE% %RESP(X-MISSING)%' }}, {{ key: missing, format: '%RESP(X-MISSING)%' }}, {{ key: 'we \"say\"', format: '%PROTOCOL%' }}] }}",
        default_path.display().to_string(),
        custom_path.display().to_string()
    );
    let proxy =
        TestProxy::start(&with_logs(&api_config(&[upstream.addr.port()], "HTTP", "", ""), &logs)).await;
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_2).await;
    assert_eq!(client.get("api", "/json").await.status, StatusCode::OK);
    let line = lines(&default_path, 1).await.remove(0);
    let json: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    let object = json.as_object().unwrap();
    let keys: Vec<&str> = object.keys().map(String::as_str).collect();
    let istio: Vec<&str> = trellis_api::access_log::ISTIO_JSON_FORMAT.iter().map(|(k, _)| *k).collect();
    assert_eq!(keys, istio, "Istio's fields, sorted as Envoy prints them");
    assert_eq!(json["response_code"], 200, "a number");
    assert_eq!(json["bytes_sent"], 3);
    assert_eq!(json["method"], "GET");
    assert_eq!(json["path"], "/json");
    assert_eq!(json["protocol"], "HTTP/2");
    assert_eq!(json["authority"], "api");
    assert_eq!(json["upstream_host"], upstream.addr.to_string());
    assert_eq!(json["upstream_cluster"], "api");
    assert_eq!(json["route_name"], "all");
    assert_eq!(json["response_flags"], "-");
    assert_eq!(json["response_code_details"], "via_upstream");
    assert!(json["upstream_transport_failure_reason"].is_null(), "absent values are null");
    assert!(json["duration"].is_u64());
    let custom = lines(&custom_path, 1).await.remove(0);
    let custom: serde_json::Value = serde_json::from_str(&custom).unwrap();
    assert_eq!(
        custom,
        serde_json::json!({"code": 200, "summary": "GET 200 -", "missing": null, "we \"say\"": "HTTP/2"})
    );
}

#[tokio::test]
async fn failures_are_flagged_with_envoys_letters_and_details() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_path(&dir, "access.log");
    // Nothing listens on the endpoint: connect failure (UF).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let format = "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %UPSTREAM_HOST% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\"";
    let logs = format!("  - {{ path: {:?}, textFormat: '{format}' }}", path.display().to_string());
    let proxy = TestProxy::start(&with_logs(&api_config(&[closed], "HTTP", "", ""), &logs)).await;
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    assert_eq!(client.get("api", "/").await.status, StatusCode::SERVICE_UNAVAILABLE);
    let line = lines(&path, 1).await.remove(0);
    let prefix =
        format!("503 UF upstream_reset_before_response_started{{connection_failure}} 127.0.0.1:{closed} \"");
    assert!(line.starts_with(&prefix), "{line}");
    assert!(line.contains("connect to 127.0.0.1"), "the reason is given: {line}");
}

/// The app's proxy, plaintext inbound in explicit mode, with `policies` and an access log.
async fn guarded(policies: &str, path: &Path) -> TestProxy {
    let format = "%RESPONSE_CODE% %RESPONSE_CODE_DETAILS% %UPSTREAM_CLUSTER%";
    let config = format!(
        "authorization:\n{policies}\naccessLogs: [{{ path: {:?}, textFormat: '{format}' }}]\n",
        path.display().to_string()
    );
    TestProxy::start(&config).await
}

async fn call_inbound(proxy: &TestProxy, app: &Upstream, path: &str) -> StatusCode {
    let mut client = Client::connect(proxy.inbound(), Version::HTTP_11).await;
    client.get(&format!("app:{}", app.addr.port()), path).await.status
}

#[tokio::test]
async fn a_denial_names_the_policy_and_rule_or_that_no_allow_policy_matched() {
    let dir = tempfile::tempdir().unwrap();
    let app = Upstream::start("app").await;
    let deny_log = log_path(&dir, "deny.log");
    let deny = guarded(
        r#"  - namespace: shop
    name: no-admin
    action: DENY
    rules:
      - { index: 0, to: [{ methods: [DELETE] }] }
      - { index: 1, to: [{ paths: ["/admin*"] }] }
"#,
        &deny_log,
    )
    .await;
    assert_eq!(call_inbound(&deny, &app, "/items").await, StatusCode::OK);
    assert_eq!(call_inbound(&deny, &app, "/admin/users").await, StatusCode::FORBIDDEN);
    let got = lines(&deny_log, 2).await;
    assert_eq!(got[0], format!("200 via_upstream inbound|{}||", app.addr.port()));
    assert_eq!(got[1], "403 rbac_access_denied_matched_policy[ns[shop]-policy[no-admin]-rule[1]] -");

    let allow_log = log_path(&dir, "allow.log");
    let allow = guarded(
        r#"  - { namespace: shop, name: public-only, rules: [{ to: [{ paths: ["/public*"] }] }] }
"#,
        &allow_log,
    )
    .await;
    assert_eq!(call_inbound(&allow, &app, "/private").await, StatusCode::FORBIDDEN);
    assert_eq!(lines(&allow_log, 1).await[0], "403 rbac_access_denied_matched_policy[none] -");
}

#[tokio::test]
async fn a_cel_filter_chooses_the_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_path(&dir, "errors.log");
    let upstream = Upstream::start("api").await;
    let logs = format!(
        "  - {{ path: {:?}, textFormat: '%RESPONSE_CODE% %REQ(:PATH)%', filter: \"response.code >= 400 || request.headers['x-debug'] == 'true'\" }}",
        path.display().to_string()
    );
    let proxy =
        TestProxy::start(&with_logs(&api_config(&[upstream.addr.port()], "HTTP", "", ""), &logs)).await;
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    for (path, headers) in [
        ("/ok", vec![]),
        ("/teapot", vec![("x-status", "418")]),
        ("/debugged", vec![("x-debug", "true")]),
        ("/ok-again", vec![("x-debug", "no")]),
        ("/last", vec![("x-status", "500")]),
    ] {
        client.send(get("api", path, &headers)).await.unwrap();
    }
    assert_eq!(lines(&path, 3).await, ["418 /teapot", "200 /debugged", "500 /last"]);
}

#[tokio::test]
async fn hostile_header_values_never_break_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let (text_path, json_path) = (log_path(&dir, "a.log"), log_path(&dir, "a.json"));
    let upstream = Upstream::start("api").await;
    let logs = format!(
        "  - {{ path: {:?}, textFormat: '\"%REQ(USER-AGENT)%\" %REQ(X-BIG)% end' }}\n  - {{ path: {:?}, encoding: ACCESS_LOG_ENCODING_JSON, jsonFields: [{{ key: ua, format: '%REQ(USER-AGENT)%' }}, {{ key: big, format: 'x %REQ(X-BIG)%' }}] }}",
        text_path.display().to_string(),
        json_path.display().to_string()
    );
    let proxy =
        TestProxy::start(&with_logs(&api_config(&[upstream.addr.port()], "HTTP", "", ""), &logs)).await;
    // Quotes, a backslash, a tab and bytes that are not UTF-8, sent raw; and a 20 KiB value.
    let big = "b".repeat(20 << 10);
    let request = format!(
        "GET /h HTTP/1.1\r\nHost: api\r\nUser-Agent: a\"b\\c\td~\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"
    );
    let mut bytes = request.into_bytes();
    // A lone 0xff byte in place of the ~: not UTF-8.
    let at = bytes.iter().position(|b| *b == b'~').unwrap();
    bytes[at] = 0xff;
    let mut stream = TcpStream::connect(proxy.outbound()).await.unwrap();
    stream.write_all(&bytes).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
    let text = lines(&text_path, 1).await;
    assert_eq!(text.len(), 1, "one line");
    let max = trellis_proxy::access_log::render::MAX_VALUE_LEN;
    assert_eq!(text[0], format!("\"a\\\"b\\\\c\\x09d\\xff\" {} end", "b".repeat(max)));
    let json = lines(&json_path, 1).await;
    let value: serde_json::Value = serde_json::from_str(&json[0]).unwrap();
    assert_eq!(value["ua"], "a\"b\\c\td\u{fffd}");
    assert_eq!(value["big"], format!("x {}", "b".repeat(max)));
}

#[tokio::test]
async fn a_tcp_connection_gets_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_path(&dir, "tcp.log");
    // A TCP server that answers with "pong" and closes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let db = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"pong").await;
                let _ = s.shutdown().await;
            });
        }
    });
    let format = "%PROTOCOL% %RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_HOST% %UPSTREAM_CLUSTER% %BYTES_RECEIVED% %BYTES_SENT% %UPSTREAM_LOCAL_ADDRESS% %DURATION% %REQUESTED_SERVER_NAME%";
    let config = format!(
        r#"
services:
  - name: db.test
    ports: [{{ port: 443, protocol: TLS, tcpCluster: db }}]
clusters: [{{ name: db, service: db.test }}]
endpoints:
  - {{ service: db.test, endpoints: [{{ address: 127.0.0.1, port: {} }}] }}
accessLogs: [{{ path: {:?}, textFormat: '{format}' }}]
"#,
        db.port(),
        path.display().to_string()
    );
    let proxy = TestProxy::start(&config).await;
    let hello = client_hello("db.test");
    let mut stream = TcpStream::connect(proxy.outbound()).await.unwrap();
    stream.write_all(&hello).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, b"pong");
    drop(stream);
    let line = lines(&path, 1).await.remove(0);
    let words: Vec<&str> = line.split(' ').collect();
    assert_eq!(&words[..7], ["-", "0", "-", &db.to_string(), "db", &hello.len().to_string(), "4"], "{line}");
    assert!(words[7].starts_with("127.0.0.1:"), "the proxy's end of the upstream connection: {line}");
    assert!(words[8].parse::<u64>().is_ok());
    assert_eq!(words[9], "db.test", "the TLS server name passed through");
}

#[tokio::test]
async fn mutual_tls_lines_name_the_peer_and_the_server_name() {
    use common::mesh::{ca, identity, mesh};
    const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
    const CATALOG: &str = "spiffe://cluster.local/ns/shop/sa/catalog";
    let dir = tempfile::tempdir().unwrap();
    let (server_log, client_log) = (log_path(&dir, "server.log"), log_path(&dir, "client.log"));
    let ca = ca();
    let app = Upstream::start("catalog").await;
    let format = "%DOWNSTREAM_PEER_URI_SAN% %REQUESTED_SERVER_NAME% %UPSTREAM_CLUSTER% %UPSTREAM_HOST% %RESPONSE_CODE%";
    let server_config = format!(
        "inboundTls: {{ mode: STRICT }}\naccessLogs: [{{ path: {:?}, textFormat: '{format}' }}]\n",
        server_log.display().to_string()
    );
    let server =
        TestProxy::start_with_identity(&server_config, true, identity(mesh(&ca, "cluster.local", CATALOG)))
            .await;
    let client_config = format!(
        r#"
services:
  - name: catalog.shop.svc.cluster.local
    aliases: [catalog]
    ports: [{{ port: {app_port}, protocol: HTTP }}]
virtualHosts:
  - name: catalog.shop.svc.cluster.local:{app_port}
    routes: [{{ name: all, forward: {{ clusters: [{{ cluster: catalog }}] }} }}]
clusters:
  - {{ name: catalog, service: catalog.shop.svc.cluster.local }}
endpoints:
  - service: catalog.shop.svc.cluster.local
    serviceAccounts: ["{CATALOG}"]
    endpoints: [{{ address: 127.0.0.1, port: {inbound}, meshTls: true }}]
accessLogs: [{{ path: {path:?}, textFormat: '{format}' }}]
"#,
        app_port = app.addr.port(),
        inbound = server.inbound().port(),
        path = client_log.display().to_string(),
    );
    let client =
        TestProxy::start_with_identity(&client_config, true, identity(mesh(&ca, "cluster.local", FRONTEND)))
            .await;
    let mut http = Client::connect(client.outbound(), Version::HTTP_11).await;
    let answer = http.get(&format!("catalog:{}", app.addr.port()), "/items").await;
    assert_eq!((answer.status, answer.text()), (StatusCode::OK, "catalog".to_owned()));
    let server_line = lines(&server_log, 1).await.remove(0);
    let words: Vec<&str> = server_line.split(' ').collect();
    assert_eq!(words[0], FRONTEND, "the verified caller: {server_line}");
    // Trellis's client proxies dial endpoints by address and send no server name (the TLS
    // passthrough test shows one logged).
    assert_eq!(words[1], "-", "{server_line}");
    assert_eq!(words[2], format!("inbound|{}||", app.addr.port()));
    assert_eq!(&words[3..], [&app.addr.to_string(), "200"]);
    let client_line = lines(&client_log, 1).await.remove(0);
    assert_eq!(client_line, format!("- - catalog {} 200", server.inbound()), "plaintext from the app");
}

/// The first bytes of a TLS connection to `server_name`: all the proxy reads before it relays.
fn client_hello(server_name: &str) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).unwrap();
    let mut connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut hello = Vec::new();
    connection.write_tls(&mut hello).unwrap();
    hello
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_nobody_reads_costs_requests_nothing_but_dropped_lines() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = log_path(&dir, "stuck.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // A reader that holds the pipe open and never reads: the writer fills the pipe and blocks.
    let _reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(&fifo)
        .unwrap();
    let upstream = Upstream::start("api").await;
    let logs = format!("  - {{ path: {:?}, textFormat: '%REQ(X-PAD)%' }}", fifo.display().to_string());
    let proxy =
        TestProxy::start(&with_logs(&api_config(&[upstream.addr.port()], "HTTP", "", ""), &logs)).await;
    // 4 KiB lines: the pipe (64 KiB) and the proxy's buffer (1 MiB) are full after about 270.
    let pad = "p".repeat(4000);
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    for _ in 0..400 {
        let answer = client.send(get("api", "/", &[("x-pad", &pad)])).await.unwrap();
        assert_eq!(answer.status, StatusCode::OK, "every request is answered");
    }
    let dropped = |metrics: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with("trellis_access_log_dropped_total "))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let metrics = proxy.metrics().await;
    assert!(dropped(&metrics) >= 100, "{metrics}");
    assert_eq!(upstream.count(), 400);
}

#[tokio::test]
async fn a_log_file_that_cannot_open_drops_and_counts_its_lines() {
    let upstream = Upstream::start("api").await;
    let logs = "  - { path: /nonexistent-dir/trellis/access.log }";
    let proxy =
        TestProxy::start(&with_logs(&api_config(&[upstream.addr.port()], "HTTP", "", ""), logs)).await;
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    assert_eq!(client.get("api", "/").await.status, StatusCode::OK);
    // The writer gives up on the file; the line is counted as dropped once it knows.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let metrics = proxy.metrics().await;
        if metrics.lines().any(|l| l.starts_with("trellis_access_log_dropped_total ") && !l.ends_with(" 0")) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no drop counted: {metrics}");
        assert_eq!(client.get("api", "/").await.status, StatusCode::OK);
    }
}

#[test]
fn bad_access_logs_are_refused_naming_the_field() {
    for (logs, field, message) in [
        ("[{ path: /tmp/x, textFormat: '%NOPE%' }]", "access_logs[0].text_format", "%NOPE%"),
        (
            "[{ path: /tmp/x, encoding: ACCESS_LOG_ENCODING_JSON, jsonFields: [{ key: a, format: '%REQ(%' }] }]",
            "access_logs[0].json_fields[0].format",
            "not closed",
        ),
        ("[{ path: /tmp/x, filter: 'response.code >=' }]", "access_logs[0].filter", "ends too early"),
        ("[{ path: /tmp/x, filter: 'response.flags == 1' }]", "access_logs[0].filter", "response.flags"),
        ("[{ textFormat: '%DURATION%' }]", "access_logs[0].path", "required"),
    ] {
        let config = trellis_proxy::config::parse(&format!("accessLogs: {logs}")).unwrap();
        let Err(e) = Snapshot::compile(config, 1, None) else { panic!("{logs} compiled") };
        assert_eq!(e.field, field, "{logs}");
        assert!(e.message.contains(message), "{logs}: {}", e.message);
    }
}

#[tokio::test]
async fn grpc_status_blackhole_and_abandoned_responses() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_path(&dir, "access.log");
    let upstream = Upstream::start("api").await;
    let format = "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %GRPC_STATUS% %UPSTREAM_CLUSTER%";
    let config = format!(
        "outboundPolicy: REGISTRY_ONLY\n{}\naccessLogs: [{{ path: {:?}, textFormat: '{format}' }}]\n",
        api_config(&[upstream.addr.port()], "HTTP", "", ""),
        path.display().to_string()
    );
    let proxy = TestProxy::start(&config).await;
    // A gRPC failure in a trailers-only answer.
    upstream.fail_next(1);
    let mut h2 = Client::connect(proxy.outbound(), Version::HTTP_2).await;
    let grpc =
        get("api", "/pkg.Svc/Call", &[("content-type", "application/grpc"), ("x-fail-grpc-status", "14")]);
    assert_eq!(h2.send(grpc).await.unwrap().header("grpc-status"), Some("14"));
    // Nowhere the registry knows.
    let mut h1 = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    assert_eq!(h1.get("nowhere.example", "/x").await.status, StatusCode::BAD_GATEWAY);
    // A client that leaves before the body it asked for comes.
    let mut leaving = TcpStream::connect(proxy.outbound()).await.unwrap();
    leaving.write_all(b"GET /slow HTTP/1.1\r\nHost: api\r\nx-body-delay-ms: 5000\r\n\r\n").await.unwrap();
    let mut head = [0u8; 12];
    leaving.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    drop(leaving);
    let got = lines(&path, 3).await;
    assert_eq!(got[0], "/pkg.Svc/Call 200 - via_upstream 14 api");
    assert_eq!(got[1], "/x 502 NR route_not_found - BlackHoleCluster");
    assert_eq!(got[2], "/slow 200 DC via_upstream - api", "abandoned: Envoy's DC");
}

#[tokio::test]
async fn logs_follow_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_path(&dir, "access.log");
    let upstream = Upstream::start("api").await;
    let plain = api_config(&[upstream.addr.port()], "HTTP", "", "");
    let logged = with_logs(
        &plain,
        &format!("  - {{ path: {:?}, textFormat: '%REQ(:PATH)%' }}", path.display().to_string()),
    );
    let proxy = TestProxy::start(&plain).await;
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    assert_eq!(client.get("api", "/before").await.status, StatusCode::OK);
    proxy.reload(&logged).await;
    assert_eq!(client.get("api", "/during").await.status, StatusCode::OK);
    assert_eq!(lines(&path, 1).await, ["/during"]);
    proxy.reload(&plain).await;
    assert_eq!(client.get("api", "/after").await.status, StatusCode::OK);
    // On again: the request after is the next line, so /after was never written.
    proxy.reload(&logged).await;
    assert_eq!(client.get("api", "/again").await.status, StatusCode::OK);
    assert_eq!(lines(&path, 2).await, ["/during", "/again"]);
}
