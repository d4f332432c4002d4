//! `trellis proxy-config` as users run it: the real binary against a real proxy (in this test
//! process, on loopback, with a mesh certificate from a real CA and traffic that gets one of
//! its endpoints ejected), against raw sockets that misbehave, and against the stand-in API
//! server (control-plane/tests/fake_api) for pods.

#[path = "../../control-plane/tests/fake_api/mod.rs"]
mod fake_api;
mod kube_cluster;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kube_cluster::{Cluster, DEPLOYMENTS, PODS, Run, run_trellis};
use serde_json::{Value, json};
use trellis_identity::SpiffeId;
use trellis_identity::ca::{CaMaterial, CertificateAuthority};
use trellis_identity::cert::WorkloadCertificate;
use trellis_identity::client::new_key_and_csr;
use trellis_identity::tls::MeshTls;
use trellis_proxy::metrics::{Metrics, Workload};

const IDENTITY: &str = "spiffe://cluster.local/ns/shop/sa/web";

/// The proxy every test reads, started once: its admin address, and the endpoints of `api`.
struct Fixture {
    admin: SocketAddr,
    bad: SocketAddr,
    good: SocketAddr,
}

/// An HTTP/1.1 server that answers every request with `status` and closes; from a thread.
fn http_server(status: u16) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let _ =
                    write!(stream, "HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
            });
        }
    });
    addr
}

fn config(bad: SocketAddr, good: SocketAddr) -> String {
    format!(
        r#"
outboundPolicy: REGISTRY_ONLY
opaquePorts: [3306]
services:
  - name: api.shop.svc.cluster.local
    aliases: [api]
    addresses: [10.96.0.10]
    ports: [{{ port: 80, protocol: HTTP, virtualHost: "api.shop.svc.cluster.local:80" }}]
  - name: db.shop.svc.cluster.local
    addresses: [10.96.0.11]
    ports: [{{ port: 3306, tcpCluster: "outbound|3306||db.shop.svc.cluster.local" }}]
virtualHosts:
  - name: api.shop.svc.cluster.local:80
    routes:
      - name: shop/api.http[0]
        matches: [{{ path: {{ prefix: /v2 }}, headers: [{{ name: end-user, value: {{ exact: jason }} }}] }}]
        forward: {{ clusters: [{{ cluster: "outbound|80|v2|api.shop.svc.cluster.local" }}] }}
      - name: default
        forward: {{ clusters: [{{ cluster: "outbound|80||api.shop.svc.cluster.local" }}] }}
clusters:
  - name: outbound|80||api.shop.svc.cluster.local
    service: api.shop.svc.cluster.local:80
    loadBalancer: {{ policy: ROUND_ROBIN }}
    tls: {{ mode: DISABLE }}
    outlierDetection: {{ consecutive5xxErrors: 1, interval: 60s, baseEjectionTime: 600s, maxEjectionPercent: 50 }}
  - name: outbound|80|v2|api.shop.svc.cluster.local
    service: api.shop.svc.cluster.local:80
    subset: {{ version: v2 }}
  - name: outbound|3306||db.shop.svc.cluster.local
    service: db.shop.svc.cluster.local:3306
endpoints:
  - service: api.shop.svc.cluster.local:80
    endpoints:
      - {{ address: 127.0.0.1, port: {bad_port} }}
      - {{ address: 127.0.0.1, port: {good_port} }}
inboundTls: {{ mode: STRICT, ports: {{ "9090": PERMISSIVE }} }}
"#,
        bad_port = bad.port(),
        good_port = good.port(),
    )
}

/// Starts the proxy (on a runtime of its own thread, for the whole test process), sends the
/// traffic that ejects `bad`, and waits (bounded) until the proxy reports it ejected.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let bad = http_server(500);
        let good = http_server(200);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime =
                tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            runtime.block_on(async move {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("config.yaml");
                std::fs::write(&path, config(bad, good)).unwrap();
                let ca =
                    CertificateAuthority::new(&CaMaterial::generate_root("cluster.local").unwrap()).unwrap();
                let id = SpiffeId::parse(IDENTITY).unwrap();
                let (key, csr) = new_key_and_csr(&id).unwrap();
                let cert =
                    WorkloadCertificate::from_chain(ca.sign_workload(&csr, &id, 3600).unwrap(), key).unwrap();
                let tls = MeshTls::new("cluster.local");
                tls.install(cert).unwrap();
                let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
                let options = trellis_proxy::Options {
                    outbound: vec![local],
                    inbound: vec![local],
                    admin: vec![local],
                    readiness: vec![local],
                    stats: vec![local],
                    config_file: Some(path),
                    xds: None,
                    explicit_inbound: true,
                    identity: Some(trellis_proxy::Identity { tls, renewal: None }),
                };
                let workload = Workload { name: "web".into(), namespace: "shop".into() };
                let running = trellis_proxy::start(options, Metrics::new(workload), None).unwrap();
                tx.send((running.admin[0], running.outbound[0])).unwrap();
                // Holds the proxy (and its config file) for the life of the test process.
                let _keep = (running, dir);
                std::future::pending::<()>().await;
            });
        });
        let (admin, outbound) = rx.recv_timeout(Duration::from_secs(30)).expect("the proxy starts");
        // Round robin over both endpoints: the 500 ejects `bad` (one consecutive error).
        for _ in 0..2 {
            let mut stream = std::net::TcpStream::connect(outbound).unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            stream.write_all(b"GET / HTTP/1.1\r\nhost: api\r\nconnection: close\r\n\r\n").unwrap();
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let page = admin_get(admin, "/clusters?format=json");
            if page.contains("\"failed_outlier_check\":true") {
                break;
            }
            assert!(Instant::now() < deadline, "the bad endpoint was never ejected: {page}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Fixture { admin, bad, good }
    })
}

fn admin_get(admin: SocketAddr, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(admin).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

/// Runs `trellis proxy-config <args>` on a runtime of its own (the binary, bounded in time).
fn trellis(args: &[&str]) -> Run {
    let mut all = vec!["proxy-config"];
    all.extend_from_slice(args);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run_trellis(&all, None))
}

fn against_proxy(what: &str, output: &str) -> Run {
    let admin = fixture().admin.to_string();
    let run = trellis(&[what, "--admin", &admin, "-o", output]);
    run.assert_ok();
    run
}

fn json_of(run: &Run) -> Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", run.stdout))
}

fn yaml_of(run: &Run) -> Value {
    serde_saphyr::from_str(&run.stdout).unwrap_or_else(|e| panic!("not YAML ({e}): {}", run.stdout))
}

/// The cells (split on runs of 2+ spaces) of the table's first row whose cells begin with
/// `first`.
fn row<'a>(table: &'a str, first: &[&str]) -> Vec<&'a str> {
    let cells = |line: &'a str| -> Vec<&'a str> {
        line.split("  ").map(str::trim).filter(|c| !c.is_empty()).collect()
    };
    table
        .lines()
        .map(cells)
        .find(|cells| cells.len() >= first.len() && cells[..first.len()] == *first)
        .unwrap_or_else(|| panic!("no row {first:?} in\n{table}"))
}

#[test]
fn listeners_as_table_json_and_yaml() {
    let table = against_proxy("listeners", "table").stdout;
    assert!(table.starts_with("ADDRESS"), "{table}");
    assert_eq!(
        row(&table, &["10.96.0.10"]),
        ["10.96.0.10", "80", "HTTP", "Route: api.shop.svc.cluster.local:80"]
    );
    assert_eq!(
        row(&table, &["10.96.0.11"]),
        ["10.96.0.11", "3306", "TCP (opaque port)", "Cluster: outbound|3306||db.shop.svc.cluster.local"]
    );
    assert!(table.contains("BlackHoleCluster (outboundTrafficPolicy REGISTRY_ONLY)"), "{table}");
    assert_eq!(
        row(&table, &["0.0.0.0", "9090"]),
        ["0.0.0.0", "9090", "inbound: mTLS PERMISSIVE", "Inbound: the app on this port"]
    );
    assert!(table.contains("inbound: mTLS STRICT"), "{table}");

    for value in [json_of(&against_proxy("listeners", "json")), yaml_of(&against_proxy("listeners", "yaml"))]
    {
        let listeners = value["listeners"].as_array().unwrap();
        assert_eq!(listeners.len(), 5, "{value}");
        assert_eq!(
            listeners[0],
            json!({"address": "10.96.0.10", "port": "80", "match": "HTTP",
                   "destination": "Route: api.shop.svc.cluster.local:80", "service": "api.shop.svc.cluster.local"})
        );
        assert_eq!(value["config_version"], 1);
        assert!(value.get("routes").is_none(), "only what was asked: {value}");
    }
}

#[test]
fn routes_as_table_json_and_yaml() {
    let table = against_proxy("routes", "table").stdout;
    assert!(table.starts_with("NAME"), "{table}");
    assert_eq!(
        row(
            &table,
            &[
                "80",
                "api.shop.svc.cluster.local:80",
                "api.shop.svc.cluster.local:80,api:80",
                "/v2* header end-user=jason"
            ]
        ),
        [
            "80",
            "api.shop.svc.cluster.local:80",
            "api.shop.svc.cluster.local:80,api:80",
            "/v2* header end-user=jason",
            "api.shop",
            "shop/api.http[0]",
            "outbound|80|v2|api.shop.svc.cluster.local",
        ]
    );
    assert!(table.lines().any(|l| l.contains("/*") && l.contains("default")), "{table}");

    for value in [json_of(&against_proxy("routes", "json")), yaml_of(&against_proxy("routes", "yaml"))] {
        let routes = value["routes"].as_array().unwrap();
        assert_eq!(routes.len(), 2, "{value}");
        assert_eq!(routes[0]["virtual_service"], "api.shop");
        assert_eq!(routes[0]["domains"], json!(["api.shop.svc.cluster.local:80", "api:80"]));
        // The route as the proxy holds it, in proto3 JSON.
        assert_eq!(routes[0]["config"]["matches"][0]["path"]["prefix"], "/v2", "{value}");
        assert_eq!(routes[1]["virtual_service"], "-");
    }
}

#[test]
fn clusters_as_table_json_and_yaml() {
    let table = against_proxy("clusters", "table").stdout;
    assert!(table.starts_with("SERVICE FQDN"), "{table}");
    assert_eq!(
        row(&table, &["api.shop.svc.cluster.local", "80", "-"]),
        [
            "api.shop.svc.cluster.local",
            "80",
            "-",
            "outbound",
            "ROUND_ROBIN",
            "DISABLE",
            "on",
            "2",
            "outbound|80||api.shop.svc.cluster.local"
        ]
    );
    assert_eq!(row(&table, &["api.shop.svc.cluster.local", "80", "v2"])[2], "v2");

    for value in [json_of(&against_proxy("clusters", "json")), yaml_of(&against_proxy("clusters", "yaml"))] {
        let clusters = value["clusters"].as_array().unwrap();
        assert_eq!(clusters.len(), 3, "{value}");
        let api = clusters.iter().find(|c| c["name"] == "outbound|80||api.shop.svc.cluster.local").unwrap();
        assert_eq!(api["outlier_detection"], true);
        assert_eq!(api["config"]["outlierDetection"]["consecutive5xxErrors"], 1, "{value}");
    }
}

#[test]
fn endpoints_show_the_ejected_one_unhealthy() {
    let f = fixture();
    let table = against_proxy("endpoints", "table").stdout;
    assert!(table.starts_with("ENDPOINT"), "{table}");
    let cluster = "outbound|80||api.shop.svc.cluster.local";
    assert_eq!(
        row(&table, &[f.bad.to_string().as_str()]),
        [f.bad.to_string().as_str(), "UNHEALTHY", "FAILED", "1", "1", "no", cluster]
    );
    assert_eq!(
        row(&table, &[f.good.to_string().as_str()]),
        [f.good.to_string().as_str(), "HEALTHY", "OK", "0", "1", "no", cluster]
    );

    // istioctl's short names work too.
    assert_eq!(against_proxy("ep", "table").stdout, table);

    for value in [json_of(&against_proxy("endpoints", "json")), yaml_of(&against_proxy("endpoints", "yaml"))]
    {
        let endpoints = value["endpoints"].as_array().unwrap();
        let bad = endpoints.iter().find(|e| e["endpoint"] == f.bad.to_string()).unwrap();
        assert_eq!(
            (&bad["status"], &bad["outlier_check"], &bad["ejections"]),
            (&json!("UNHEALTHY"), &json!("FAILED"), &json!(1))
        );
        let good = endpoints.iter().find(|e| e["endpoint"] == f.good.to_string()).unwrap();
        assert_eq!((&good["status"], &good["outlier_check"]), (&json!("HEALTHY"), &json!("OK")));
    }
}

#[test]
fn secret_shows_the_certificate_and_its_root() {
    let table = against_proxy("secret", "table").stdout;
    assert!(table.starts_with("RESOURCE NAME"), "{table}");
    let leaf = row(&table, &["default"]);
    assert_eq!(&leaf[..4], ["default", "Cert Chain", "ACTIVE", "true"], "{table}");
    assert_eq!(&leaf[8..], [IDENTITY, "cluster.local"], "{table}");
    // An hour's certificate: 59 minutes and some seconds are left.
    assert!(leaf[7].starts_with("59m") || leaf[7].starts_with("1h"), "{table}");
    let root = row(&table, &["ROOTCA"]);
    assert_eq!(&root[..4], ["ROOTCA", "CA", "ACTIVE", "true"], "{table}");

    for value in [json_of(&against_proxy("secret", "json")), yaml_of(&against_proxy("secret", "yaml"))] {
        let secrets = value["secrets"].as_array().unwrap();
        assert_eq!(secrets.len(), 2, "{value}");
        let leaf = &secrets[0];
        assert_eq!((&leaf["identity"], &leaf["valid"]), (&json!(IDENTITY), &json!(true)));
        let (before, after) = (leaf["not_before"].as_u64().unwrap(), leaf["not_after"].as_u64().unwrap());
        assert!(after > before && after - before <= 3600 + 300, "{value}");
        // The serial /certs gives, and as openssl prints one: hex.
        let serial = leaf["serial_number"].as_str().unwrap();
        assert!(!serial.is_empty() && serial.chars().all(|c| c.is_ascii_hexdigit()), "{serial}");
        assert_eq!(secrets[1]["resource_name"], "ROOTCA");
        assert!(secrets[1]["not_after"].as_u64().unwrap() > after, "{value}");
    }
}

#[test]
fn all_shows_every_section() {
    let f = fixture();
    let table = against_proxy("all", "table").stdout;
    for title in ["LISTENERS", "ROUTES", "CLUSTERS", "ENDPOINTS", "SECRETS"] {
        assert!(table.lines().any(|l| l == title), "{title} missing from\n{table}");
    }
    assert!(table.starts_with(&format!("Proxy: {}", f.admin)), "{table}");
    for value in [json_of(&against_proxy("all", "json")), yaml_of(&against_proxy("all", "yaml"))] {
        for key in ["listeners", "routes", "clusters", "endpoints", "secrets"] {
            assert!(value[key].as_array().is_some_and(|a| !a.is_empty()), "{key} in {value}");
        }
    }
}

/// istioctl's narrowing flags: by host, port, subset, cluster and status.
#[test]
fn filters_narrow_the_rows() {
    let f = fixture();
    let admin = f.admin.to_string();
    let json = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--admin", &admin, "-o", "json"]);
        let run = trellis(&all);
        run.assert_ok();
        json_of(&run)
    };
    let names = |value: &Value, key: &str, field: &str| -> Vec<String> {
        value[key].as_array().unwrap().iter().map(|r| r[field].as_str().unwrap().to_owned()).collect()
    };
    let unhealthy = json(&["endpoints", "--status", "unhealthy"]);
    assert_eq!(names(&unhealthy, "endpoints", "endpoint"), [f.bad.to_string()]);
    let by_port = json(&["endpoints", "--port", &f.good.port().to_string()]);
    assert_eq!(names(&by_port, "endpoints", "endpoint"), [f.good.to_string()]);
    let v2 = json(&["clusters", "--fqdn", "api.shop", "--subset", "v2"]);
    assert_eq!(names(&v2, "clusters", "name"), ["outbound|80|v2|api.shop.svc.cluster.local"]);
    let db = json(&["all", "--fqdn", "db"]);
    assert_eq!(names(&db, "listeners", "address"), ["10.96.0.11"]);
    assert_eq!(names(&db, "clusters", "name"), ["outbound|3306||db.shop.svc.cluster.local"]);
    assert!(
        db["routes"].as_array().unwrap().is_empty() && db["endpoints"].as_array().unwrap().is_empty(),
        "{db}"
    );
    assert_eq!(db["secrets"].as_array().map(Vec::len), Some(2), "the certificate is not a service's: {db}");
    let none = trellis(&["endpoints", "--admin", &admin, "--cluster", "nothing"]);
    none.assert_ok();
    assert_eq!(none.stdout.lines().count(), 1, "only the header: {}", none.stdout);
    let bad = trellis(&["endpoints", "--admin", &admin, "--status", "sick"]);
    assert_eq!(bad.code, Some(2));
    assert!(bad.stderr.contains("invalid value 'sick' for '--status"), "{}", bad.stderr);
}

/// A port nothing listens on is refused at once; one that accepts and never answers is given
/// up at --timeout. Both exit 2 with the address named.
#[test]
fn an_unreachable_proxy_is_a_clear_error_in_bounded_time() {
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let run = trellis(&["clusters", "--admin", &closed]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains(&format!("--admin {closed}: cannot connect")), "{}", run.stderr);
    assert!(run.stderr.contains("kubectl port-forward"), "{}", run.stderr);
    assert!(run.stdout.is_empty());

    // Accepts, reads, never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming().flatten() {
            held.push(stream);
        }
    });
    let run = trellis(&["all", "--admin", &addr, "--timeout", "1"]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains(&format!("{addr}: no answer within 1s (--timeout)")), "{}", run.stderr);
}

/// A server that answers every request with `response` (raw bytes), from a thread.
fn raw_server(response: &'static [u8]) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(response);
        }
    });
    addr.to_string()
}

#[test]
fn malformed_admin_answers_are_refused_with_the_page_named() {
    for (response, what, expected) in [
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 22\r\nconnection: close\r\n\r\n<html>Welcome!</html>\n",
            "listeners",
            "the proxy's /config_dump answer is not what this trellis reads",
        ),
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 12\r\nconnection: close\r\n\r\n{\"version\": ",
            "routes",
            "EOF while parsing",
        ),
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 17\r\nconnection: close\r\n\r\napi::rq_total::4\n",
            "endpoints",
            "/clusters?format=json answer is not what this trellis reads",
        ),
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 28\r\nconnection: close\r\n\r\n{\"certificates\": [{\"x\": 1}]}",
            "secret",
            "missing field `identity`",
        ),
        (
            "HTTP/1.1 404 Not Found\r\ncontent-length: 10\r\nconnection: close\r\n\r\nnot found\n",
            "clusters",
            "GET /config_dump answered 404 Not Found (is this a Trellis proxy's admin port",
        ),
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 99999999999\r\nconnection: close\r\n\r\n{",
            "clusters",
            "is larger than 32 MiB; refusing to read it",
        ),
        ("SSH-2.0-OpenSSH_9.2\r\n", "secret", "GET /certs"),
    ] {
        let addr = raw_server(response.as_bytes());
        let run = trellis(&[what, "--admin", &addr]);
        assert_eq!(run.code, Some(2), "{what}: {run:?}");
        assert!(run.stderr.contains(expected), "{what}: expected {expected:?} in {}", run.stderr);
        assert!(run.stderr.starts_with("trellis proxy-config: "), "{}", run.stderr);
        assert!(run.stdout.is_empty(), "{what}: {}", run.stdout);
    }
}

#[test]
fn usage_errors() {
    let admin = "127.0.0.1:1";
    for (args, expected) in [
        (vec!["listners", "--admin", admin], "invalid value 'listners'"),
        (vec!["clusters", "--admin", admin, "-o", "xml"], "invalid value 'xml'"),
        (vec!["clusters"], "required"),
        (vec!["clusters", "web-0", "--admin", admin], "cannot be used with"),
        (vec!["clusters", "--admin", "127.0.0.1"], "--admin \"127.0.0.1\": host:port expected"),
        (vec!["clusters", "--admin", admin, "--timeout", "0"], "--timeout"),
        (vec!["clusters", "Web_0"], "pod \"Web_0\": not a pod name"),
        (vec!["clusters", "web-0.shop", "-n", "other"], "--namespace says \"other\""),
    ] {
        let run = trellis(&args);
        assert_eq!(run.code, Some(2), "{args:?}: {run:?}");
        assert!(run.stderr.contains(expected), "{args:?}: expected {expected:?} in {}", run.stderr);
    }
}

fn pod(name: &str, containers: Value, init_containers: Value, phase: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "shop"},
           "spec": {"containers": containers, "initContainers": init_containers},
           "status": {"phase": phase, "podIP": "10.1.0.5"}})
}

/// Pods through the stand-in API server: an unknown pod, one without the proxy and one not
/// running are named as such; a pod with the proxy reaches the port-forward (which the stand-in
/// does not serve: its refusal is reported as such).
#[tokio::test]
async fn pods_are_found_through_the_api_server() {
    let cluster = Cluster::start().await;
    let app = json!([{"name": "app", "image": "app"}]);
    let proxy = json!([{"name": "istio-proxy", "image": "trellis", "restartPolicy": "Always"}]);
    cluster.api.apply(PODS, pod("no-mesh", app.clone(), json!([]), "Running"));
    cluster.api.apply(PODS, pod("pending", app.clone(), proxy.clone(), "Pending"));
    cluster.api.apply(PODS, pod("web-0", app.clone(), proxy.clone(), "Running"));
    let kubeconfig = Some(&cluster.kubeconfig);
    let run = |args: &'static [&'static str]| {
        let mut all = vec!["proxy-config"];
        all.extend_from_slice(args);
        run_trellis_owned(all, kubeconfig.cloned())
    };

    let unknown = run(&["clusters", "nope.shop"]).await;
    assert_eq!(unknown.code, Some(2), "{unknown:?}");
    assert!(
        unknown
            .stderr
            .contains(&format!("pod \"nope\" not found in namespace \"shop\" (at {})", cluster.api.url)),
        "{}",
        unknown.stderr
    );
    let unknown = run(&["clusters", "web-0", "-n", "other"]).await;
    assert!(unknown.stderr.contains("pod \"web-0\" not found in namespace \"other\""), "{}", unknown.stderr);

    let outside = run(&["clusters", "no-mesh.shop"]).await;
    assert_eq!(outside.code, Some(2));
    assert!(outside.stderr.contains("pod no-mesh.shop has no istio-proxy container"), "{}", outside.stderr);

    let pending = run(&["clusters", "pending", "-n", "shop"]).await;
    assert!(pending.stderr.contains("pod pending.shop is Pending, not Running"), "{}", pending.stderr);

    let refused = run(&["clusters", "web-0.shop"]).await;
    assert_eq!(refused.code, Some(2), "{refused:?}");
    assert!(
        refused.stderr.contains("pod web-0.shop: cannot port-forward to the admin port 15000"),
        "{}",
        refused.stderr
    );

    // A Deployment: its first Running pod with the proxy, by its selector.
    let labelled = |name: &str, phase: &str, init: &Value| {
        let mut object = pod(name, app.clone(), init.clone(), phase);
        object["metadata"]["labels"] = json!({"app": "api"});
        cluster.api.apply(PODS, object);
    };
    labelled("api-a-pending", "Pending", &proxy);
    labelled("api-b-no-mesh", "Running", &json!([]));
    labelled("api-c", "Running", &proxy);
    labelled("api-d", "Running", &proxy);
    cluster.api.apply(
        DEPLOYMENTS,
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "api", "namespace": "shop"},
               "spec": {"selector": {"matchLabels": {"app": "api"}},
                        "template": {"metadata": {"labels": {"app": "api"}}, "spec": {"containers": app}}}}),
    );
    let picked = run(&["clusters", "deploy/api.shop"]).await;
    assert!(picked.stderr.contains("pod api-c.shop: cannot port-forward"), "{}", picked.stderr);
    let picked = run(&["clusters", "deployment/api", "-n", "shop"]).await;
    assert!(picked.stderr.contains("pod api-c.shop: cannot port-forward"), "{}", picked.stderr);
    let unknown = run(&["clusters", "deploy/nope.shop"]).await;
    assert!(
        unknown.stderr.contains("deployment \"nope\" not found in namespace \"shop\""),
        "{}",
        unknown.stderr
    );
    let kind = run(&["clusters", "statefulset/db.shop"]).await;
    assert!(kind.stderr.contains("not \"statefulset\""), "{}", kind.stderr);
    cluster.api.apply(
        DEPLOYMENTS,
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "empty", "namespace": "shop"},
               "spec": {"selector": {"matchLabels": {"app": "empty"}},
                        "template": {"metadata": {"labels": {"app": "empty"}}, "spec": {"containers": app}}}}),
    );
    let empty = run(&["clusters", "deploy/empty.shop"]).await;
    // (The stand-in Deployment controller may have made it a pod, without the proxy.)
    let refused = ["deployment empty.shop: none of its ", " is Running with an istio-proxy container"];
    assert!(refused.iter().all(|part| empty.stderr.contains(part)), "{}", empty.stderr);

    // An API server that is down.
    cluster.api.stop();
    let down = run(&["clusters", "web-0.shop", "--timeout", "2"]).await;
    assert_eq!(down.code, Some(2), "{down:?}");
    assert!(down.stderr.contains("pod web-0.shop"), "{}", down.stderr);
}

async fn run_trellis_owned(args: Vec<&'static str>, kubeconfig: Option<std::path::PathBuf>) -> Run {
    run_trellis(&args, kubeconfig.as_ref()).await
}

/// A stand-in API server that serves what `trellis proxy-config <pod>` asks of a real one: the
/// pod, and its port-forward subresource (WebSocket, `v4.channel.k8s.io`: per port a data and
/// an error channel, each opened with a frame of the port number) relayed to `admin`, as the
/// kubelet relays into the pod's network namespace. `refuse` plays a kubelet that cannot reach
/// the port: it answers on the error channel.
mod port_forward {
    use std::net::SocketAddr;

    use bytes::Bytes;
    use futures_util::{SinkExt, StreamExt};
    use http_body_util::Full;
    use hyper::body::Incoming;
    use hyper::{Request, Response, StatusCode};
    use hyper_util::rt::TokioIo;
    use serde_json::{Value, json};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;

    #[derive(Clone)]
    pub struct StandIn {
        pub pod: Value,
        pub admin: SocketAddr,
        pub refuse: bool,
    }

    /// Serves on 127.0.0.1 until the test ends; returns its URL.
    pub async fn start(stand_in: StandIn) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let stand_in = stand_in.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let stand_in = stand_in.clone();
                        async move { Ok::<_, std::convert::Infallible>(answer(request, stand_in)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        format!("http://{addr}")
    }

    fn answer(mut request: Request<Incoming>, stand_in: StandIn) -> Response<Full<Bytes>> {
        let name = stand_in.pod["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        let pod_path = format!("/api/v1/namespaces/shop/pods/{name}");
        let path = request.uri().path().to_owned();
        if path == pod_path {
            return Response::new(Full::new(Bytes::from(stand_in.pod.to_string())));
        }
        let key = request.headers().get("sec-websocket-key").and_then(|k| k.to_str().ok()).map(str::to_owned);
        let query = request.uri().query().unwrap_or_default().to_owned();
        let ports: Vec<&str> = query.split('&').filter_map(|kv| kv.strip_prefix("ports=")).collect();
        if path != format!("{pod_path}/portforward") || key.is_none() || ports != ["15000"] {
            let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                "message": format!("{path}?{query} not found"), "reason": "NotFound", "code": 404});
            let mut response = Response::new(Full::new(Bytes::from(status.to_string())));
            *response.status_mut() = StatusCode::NOT_FOUND;
            return response;
        }
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else { return };
            let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            relay(ws, stand_in).await;
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .header("sec-websocket-accept", derive_accept_key(key.unwrap_or_default().as_bytes()))
            .header("sec-websocket-protocol", "v4.channel.k8s.io")
            .body(Full::new(Bytes::new()))
            .unwrap()
    }

    async fn relay<S>(ws: WebSocketStream<S>, stand_in: StandIn)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let (mut to_client, mut from_client) = ws.split();
        let port = 15000u16.to_le_bytes();
        for channel in [0u8, 1] {
            let _ = to_client.send(Message::binary(vec![channel, port[0], port[1]])).await;
        }
        if stand_in.refuse {
            let error = b"\x01an error occurred forwarding 15000 -> 15000: dial tcp4 127.0.0.1:15000: connect: connection refused";
            let _ = to_client.send(Message::binary(error.to_vec())).await;
            // A kubelet keeps the stream open; the client must not wait for it.
            while from_client.next().await.is_some() {}
            return;
        }
        let Ok(admin) = tokio::net::TcpStream::connect(stand_in.admin).await else { return };
        let (mut admin_read, mut admin_write) = admin.into_split();
        let upstream = async move {
            while let Some(Ok(message)) = from_client.next().await {
                if let Message::Binary(bytes) = message
                    && bytes.first() == Some(&0)
                    && admin_write.write_all(&bytes[1..]).await.is_err()
                {
                    break;
                }
            }
        };
        let downstream = async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match admin_read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut frame = Vec::with_capacity(n + 1);
                        frame.push(0u8);
                        frame.extend_from_slice(&buf[..n]);
                        if to_client.send(Message::binary(frame)).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = to_client.close().await;
        };
        tokio::select! {
            _ = upstream => {}
            _ = downstream => {}
        }
    }
}

/// A pod's proxy, reached through the API server's port-forward: the same tables as through
/// --admin; a kubelet that cannot reach the admin port is reported with its own words.
#[tokio::test]
async fn a_pod_is_reached_through_the_port_forward() {
    let admin = tokio::task::spawn_blocking(|| fixture().admin).await.unwrap();
    let proxy = json!([{"name": "istio-proxy", "image": "trellis", "restartPolicy": "Always"}]);
    let web = pod("web-0", json!([{"name": "app", "image": "app"}]), proxy, "Running");
    let dir = tempfile::tempdir().unwrap();

    let url = port_forward::start(port_forward::StandIn { pod: web.clone(), admin, refuse: false }).await;
    let kubeconfig = kube_cluster::write_kubeconfig(&dir, &url);
    let run = run_trellis(&["proxy-config", "endpoints", "web-0.shop"], Some(&kubeconfig)).await;
    run.assert_ok();
    assert!(run.stdout.starts_with("ENDPOINT"), "{}", run.stdout);
    assert!(run.stdout.contains("UNHEALTHY") && run.stdout.contains("FAILED"), "{}", run.stdout);
    let run =
        run_trellis(&["proxy-config", "all", "web-0", "-n", "shop", "-o", "json"], Some(&kubeconfig)).await;
    run.assert_ok();
    let all = json_of(&run);
    assert_eq!(all["secrets"][0]["identity"], IDENTITY, "{all}");
    assert_eq!(all["clusters"].as_array().map(Vec::len), Some(3), "{all}");
    let run = run_trellis(&["proxy-config", "all", "web-0.shop"], Some(&kubeconfig)).await;
    run.assert_ok();
    assert!(
        run.stdout.starts_with("Proxy: pod web-0.shop (admin port 15000, port-forwarded)"),
        "{}",
        run.stdout
    );

    let refusing = tempfile::tempdir().unwrap();
    let url = port_forward::start(port_forward::StandIn { pod: web, admin, refuse: true }).await;
    let kubeconfig = kube_cluster::write_kubeconfig(&refusing, &url);
    let run =
        run_trellis(&["proxy-config", "clusters", "web-0.shop", "--timeout", "20"], Some(&kubeconfig)).await;
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(
        run.stderr.contains("pod web-0.shop (admin port 15000, port-forwarded): the port-forward failed: an error occurred forwarding 15000 -> 15000"),
        "{}",
        run.stderr
    );
}
