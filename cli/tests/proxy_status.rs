//! `trellis proxy-status` as users run it: the real binary against real HTTP servers on
//! 127.0.0.1 — small axum servers serving fixtures, the control plane's own monitoring router,
//! and raw sockets that misbehave.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;

fn trellis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(args)
        .env_remove("TRELLIS_CONTROL_PLANE")
        .output()
        .expect("run trellis")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Serves `router` on 127.0.0.1 from a thread of its own until the test process ends; returns
/// its base URL.
fn serve(router: Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, router).await.unwrap();
        });
    });
    format!("http://{addr}")
}

/// Serves `body` as `/debug/syncz`.
fn serve_syncz(body: String) -> String {
    serve(Router::new().route(
        "/debug/syncz",
        get(move || {
            let body = body.clone();
            async move { ([("content-type", "application/json")], body) }
        }),
    ))
}

/// One type of one proxy: name, sent, acked, nack, held.
type Type<'a> = (&'a str, Option<u64>, Option<u64>, Option<&'a str>, u64);

fn types(entries: &[Type]) -> serde_json::Value {
    entries
        .iter()
        .map(|(kind, sent, acked, nack, held)| {
            (kind.to_string(), serde_json::json!({"sent": sent, "acked": acked, "nack": nack, "held": held}))
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn proxy(pod: &str, workload: &str, status: &str, types: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "id": format!("sidecar~10.1.0.9~{pod}.shop~shop.svc.cluster.local"),
        "namespace": "shop",
        "workload": workload,
        "connectedSince": now() - 303,
        "status": status,
        "types": types,
    })
}

fn all_synced(n: u64) -> serde_json::Value {
    types(&[
        ("settings", Some(n), Some(n), None, 1),
        ("service", Some(n), Some(n), None, 4),
        ("virtualhost", Some(n), Some(n), None, 2),
        ("cluster", Some(n), Some(n), None, 2),
        ("endpoints", Some(n), Some(n), None, 2),
    ])
}

fn mesh(proxies: Vec<serde_json::Value>, rejected: &[&str]) -> String {
    serde_json::json!({"proxies": proxies, "rejectedConfig": rejected}).to_string()
}

#[test]
fn a_synced_mesh_exits_zero_with_one_row_per_proxy() {
    let url = serve_syncz(mesh(
        vec![
            proxy("web-5d8f", "web", "SYNCED", all_synced(3)),
            proxy("api-77c4", "api", "SYNCED", all_synced(3)),
        ],
        &[],
    ));
    let out = trellis(&["proxy-status", "--control-plane", &url]);
    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "NAME      NAMESPACE  SETTINGS    SERVICES    VHOSTS      CLUSTERS    ENDPOINTS   STATUS  CONNECTED"
    );
    // Sorted by namespace, then name.
    assert!(lines[1].starts_with(
        "api-77c4  shop       SYNCED (1)  SYNCED (4)  SYNCED (2)  SYNCED (2)  SYNCED (2)  SYNCED  5m"
    ));
    assert!(lines[2].starts_with("web-5d8f  shop "), "{text}");
    assert_eq!(lines.len(), 3, "{text}");
    assert!(stderr(&out).is_empty());
}

#[test]
fn stale_nacked_and_rejected_config_exit_one_and_are_listed() {
    let stale = types(&[("settings", Some(4), Some(4), None, 1), ("service", Some(5), Some(4), None, 4)]);
    let nacked = types(&[
        ("settings", Some(4), Some(4), None, 1),
        ("cluster", Some(5), Some(4), Some("cluster outbound|80||web.shop: lb policy: unknown"), 3),
    ]);
    let url = serve_syncz(mesh(
        vec![
            proxy("web-5d8f", "web", "SYNCED", all_synced(5)),
            proxy("api-77c4", "api", "STALE", stale),
            proxy("db-0", "db", "NACKED", nacked),
        ],
        &["/config/vs.yaml: VirtualService shop/web: spec.http[0].route[0].weight: 120 is more than 100"],
    ));
    let out = trellis(&["proxy-status", "--control-plane", &url]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(
            "\napi-77c4  shop       SYNCED (1)  STALE (4)   -           -           -           STALE   5m"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "\ndb-0      shop       SYNCED (1)  -           -           NACKED (3)  -           NACKED  5m"
        ),
        "{text}"
    );
    assert!(
        text.contains("\n  db-0.shop cluster: cluster outbound|80||web.shop: lb policy: unknown\n"),
        "{text}"
    );
    assert!(
        text.ends_with(
            "\nRejected config (the control plane keeps serving its last good version):\n  /config/vs.yaml: VirtualService shop/web: spec.http[0].route[0].weight: 120 is more than 100\n"
        ),
        "{text}"
    );

    // Rejected config alone is enough for 1: the config the user applied is not in force.
    let url = serve_syncz(mesh(vec![proxy("web-5d8f", "web", "SYNCED", all_synced(5))], &["f.yaml: bad"]));
    assert_eq!(trellis(&["proxy-status", "--control-plane", &url]).status.code(), Some(1));
}

#[test]
fn one_proxy_in_detail() {
    let nacked = types(&[
        ("settings", Some(4), Some(4), None, 1),
        ("cluster", Some(5), Some(4), Some("cluster outbound|80||web.shop: lb policy: unknown"), 3),
    ]);
    let url = serve_syncz(mesh(
        vec![proxy("web-5d8f", "web", "SYNCED", all_synced(5)), proxy("db-0", "db", "NACKED", nacked)],
        &["f.yaml: bad"],
    ));
    let out = trellis(&["proxy-status", "--control-plane", &url, "db-0.shop"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with(
        "Proxy:         sidecar~10.1.0.9~db-0.shop~shop.svc.cluster.local\nName:          db-0\n"
    ));
    assert!(text.contains("\nStatus:        NACKED\n"), "{text}");
    assert!(text.contains("\ncluster      NACKED  5     4      3\n"), "{text}");
    assert!(text.contains("\n  cluster: cluster outbound|80||web.shop: lb policy: unknown\n"), "{text}");

    // A synced proxy exits 0 even though some config is rejected (printed, not counted).
    let out = trellis(&["proxy-status", "--control-plane", &url, "web"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("Name:          web-5d8f\n"));
    assert!(stdout(&out).ends_with(
        "Rejected config (the control plane keeps serving its last good version):\n  f.yaml: bad\n"
    ));

    // The full node id works too; an unknown proxy is 1 with a message.
    let out = trellis(&[
        "proxy-status",
        "--control-plane",
        &url,
        "sidecar~10.1.0.9~web-5d8f.shop~shop.svc.cluster.local",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let out = trellis(&["proxy-status", "--control-plane", &url, "ratings"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).is_empty());
    assert_eq!(
        stderr(&out),
        format!(
            "trellis proxy-status: no connected proxy matches \"ratings\" (2 connected to {url}/debug/syncz)\n"
        )
    );
}

#[test]
fn json_output_is_syncz_with_the_clis_conclusions() {
    let stale = types(&[("settings", Some(4), Some(4), None, 1), ("service", Some(5), Some(4), None, 4)]);
    let url = serve_syncz(mesh(vec![proxy("api-77c4", "api", "STALE", stale)], &[]));
    let out = trellis(&["proxy-status", "--control-plane", &url, "-o", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &v["proxies"][0];
    assert_eq!(p["name"], "api-77c4");
    assert_eq!(p["status"], "STALE");
    assert_eq!(p["controlPlane"], format!("{url}/debug/syncz"));
    assert_eq!(
        p["types"]["service"],
        serde_json::json!({"state": "STALE", "sent": 5, "acked": 4, "nack": null, "held": 4})
    );
    assert_eq!(v["rejectedConfig"], serde_json::json!([]));
}

#[test]
fn the_address_comes_from_the_environment_and_replicas_are_merged() {
    let a = serve_syncz(mesh(vec![proxy("web-1", "web", "SYNCED", all_synced(2))], &["f.yaml: bad"]));
    let b = serve_syncz(mesh(vec![proxy("web-2", "web", "SYNCED", all_synced(2))], &["f.yaml: bad"]));
    let out = Command::new(env!("CARGO_BIN_EXE_trellis"))
        .arg("proxy-status")
        .env("TRELLIS_CONTROL_PLANE", format!("{a},{b}"))
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(text.contains("\nweb-1 ") && text.contains("\nweb-2 "), "{text}{}", stderr(&out));
    // The same rejection seen by both replicas is listed once.
    assert_eq!(text.matches("f.yaml: bad").count(), 1, "{text}");
    let out = trellis(&["proxy-status", "--control-plane", &a, "--control-plane", &b, "web-2"]);
    assert!(stdout(&out).contains(&format!("Control plane: {b}/debug/syncz\n")), "{}", stdout(&out));
}

#[test]
fn no_proxies_is_zero_and_says_where_it_looked() {
    let url = serve_syncz(mesh(vec![], &[]));
    let out = trellis(&["proxy-status", "--control-plane", &url]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout(&out), format!("No proxies are connected to {url}/debug/syncz.\n"));
}

/// A port nothing listens on.
fn closed_port() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

#[test]
fn connection_refused_exits_two_naming_the_url() {
    let url = closed_port();
    let out = trellis(&["proxy-status", "--control-plane", &url]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stdout(&out).is_empty());
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!(
            "trellis proxy-status: {url}/debug/syncz: cannot connect: Connection refused"
        )),
        "{err}"
    );
    assert!(err.contains("port-forward deploy/trellisd 15014"), "{err}");

    // One replica down is an error too: the answer would be incomplete.
    let good = serve_syncz(mesh(vec![], &[]));
    let out = trellis(&["proxy-status", "--control-plane", &format!("{good},{url}")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains(&format!("{url}/debug/syncz: cannot connect")));
}

#[test]
fn answers_that_are_not_syncz_exit_two() {
    let url = serve(
        Router::new()
            .route("/debug/syncz", get(|| async { "<html><body>Welcome to nginx!</body></html>" }))
            .route("/other/debug/syncz", get(|| async { r#"{"status": "ok"}"# }))
            .route("/huge/debug/syncz", get(|| async { vec![b' '; 17 << 20] }))
            .route("/fail/debug/syncz", get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "overloaded\n") })),
    );
    let run = |path: &str| {
        let out = trellis(&["proxy-status", "--control-plane", &format!("{url}{path}")]);
        assert_eq!(out.status.code(), Some(2), "{path}: {}", stdout(&out));
        assert!(stdout(&out).is_empty());
        stderr(&out)
    };
    assert_eq!(
        run(""),
        format!(
            "trellis proxy-status: {url}/debug/syncz: the answer is not /debug/syncz JSON: expected value at line 1 column 1 (it starts with \"<html><body>Welcome to nginx!</body></html>\")\n"
        )
    );
    assert!(
        run("/other")
            .contains("/other/debug/syncz: the answer is not /debug/syncz JSON: missing field `proxies`")
    );
    assert!(
        run("/huge").contains("/huge/debug/syncz: the answer is larger than 16 MiB; refusing to read it")
    );
    assert_eq!(
        run("/fail"),
        format!(
            "trellis proxy-status: {url}/fail/debug/syncz: answered 503 Service Unavailable: \"overloaded\\n\"\n"
        )
    );
    assert!(
        run("/nowhere")
            .contains("answered 404 Not Found (is this the control plane's monitoring port, 15014?)")
    );
}

/// A server that streams chunks without a length until the client goes away.
#[test]
fn an_endless_answer_is_cut_at_the_limit() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut request = [0u8; 4096];
        let _ = conn.read(&mut request);
        let _ = conn.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
        );
        let chunk = [b' '; 1 << 20];
        let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
        framed.extend_from_slice(&chunk);
        framed.extend_from_slice(b"\r\n");
        while conn.write_all(&framed).is_ok() {}
    });
    let out = trellis(&["proxy-status", "--control-plane", &url]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("the answer is larger than 16 MiB"), "{}", stderr(&out));
}

#[test]
fn a_silent_server_times_out() {
    // Connections complete in the backlog; nothing ever answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let started = Instant::now();
    let out = trellis(&["proxy-status", "--control-plane", &url, "--timeout", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stderr(&out), format!("trellis proxy-status: {url}/debug/syncz: no answer within 1s\n"));
    assert!(started.elapsed() < Duration::from_secs(30));
    drop(listener);
}

#[test]
fn usage_errors_exit_two() {
    for (args, message) in [
        (vec!["proxy-status", "--control-plane", "https://trellisd:15014"], "https is not supported"),
        (vec!["proxy-status", "--control-plane", "http://h:123456"], "is not a port number"),
        (vec!["proxy-status", "-o", "yaml"], "invalid value 'yaml'"),
        (vec!["proxy-status", "--timeout", "0"], "--timeout"),
        (vec!["proxy-status", "a", "b"], "unexpected argument"),
    ] {
        let out = trellis(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).contains(message), "{args:?}: {}", stderr(&out));
    }
    let help = stdout(&trellis(&["proxy-status", "--help"]));
    assert!(help.contains("Exit status:") && help.contains("TRELLIS_CONTROL_PLANE"), "{help}");
}

/// The contract: what the control plane serves, built with its own types and served by its own
/// monitoring router, is what the CLI reads.
#[test]
fn reads_what_the_control_plane_serves() {
    use trellis_control_plane::status::{RejectedConfig, SyncStatus, Syncz, TypeSync};

    let typed =
        |sent, acked, nack: Option<&str>, held| TypeSync { sent, acked, nack: nack.map(str::to_owned), held };
    let syncz = Syncz {
        proxies: vec![SyncStatus {
            id: "sidecar~10.1.0.9~web-5d8f.shop~shop.svc.cluster.local".into(),
            namespace: "shop".into(),
            workload: "web".into(),
            connected_since: now() - 42,
            status: "NACKED".into(),
            types: [
                ("settings".to_owned(), typed(Some(2), Some(2), None, 1)),
                ("service".to_owned(), typed(Some(2), Some(1), None, 7)),
                ("cluster".to_owned(), typed(Some(2), Some(1), Some("bad cluster"), 2)),
                ("endpoints".to_owned(), typed(None, None, None, 0)),
            ]
            .into_iter()
            .collect(),
        }],
        rejected_config: vec!["a.yaml: bad".into()],
    };
    let url =
        serve(Router::new().route("/debug/syncz", get(move || async move { axum::Json(syncz.clone()) })));
    let out = trellis(&["proxy-status", "--control-plane", &url]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.contains(
            "\nweb-5d8f  shop       SYNCED (1)  STALE (7)  -       NACKED (2)  -          NACKED  4"
        ),
        "{text}"
    );
    assert!(
        text.contains("\n  web-5d8f.shop cluster: bad cluster\n") && text.contains("\n  a.yaml: bad\n"),
        "{text}"
    );

    // The real monitoring router, with no proxy connected and a rejected file.
    let rejected = RejectedConfig::default();
    rejected.replace(vec!["/config/dr.yaml: DestinationRule shop/web: spec.host: required".into()]);
    let router = trellis_control_plane::status::router(
        Arc::new(Default::default()),
        rejected,
        Arc::new(prometheus_client::registry::Registry::default()),
    );
    let url = serve(router);
    let out = trellis(&["proxy-status", "--control-plane", &url]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!(
            "No proxies are connected to {url}/debug/syncz.\n\nRejected config (the control plane keeps serving its last good version):\n  /config/dr.yaml: DestinationRule shop/web: spec.host: required\n"
        )
    );
}
