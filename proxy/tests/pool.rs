//! Connection pools with Envoy's meaning, over real sockets: `maxConnections` caps the
//! connections open to a cluster (counted where they arrive, at the upstream), HTTP/1.1
//! requests beyond it wait in a queue bounded by `http1MaxPendingRequests`, then get 503 with
//! response flag `UO`; `http2MaxRequests` caps the requests in flight.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{Behaviour, Client, Scripted, TestProxy, api_config, wait_until};
use http::{StatusCode, Version};

fn config(upstreams: &[&Scripted], pool: &str) -> String {
    let ports: Vec<u16> = upstreams.iter().map(|u| u.addr.port()).collect();
    api_config(&ports, "HTTP", "", &format!("    connectionPool: {{ {pool} }}"))
}

fn pending(proxy: &TestProxy) -> u64 {
    proxy.running.proxy.config.load().clusters["api"].pending()
}

/// `n` requests at once, each from a client connection of its own; their statuses.
fn fire(proxy: &Arc<TestProxy>, n: usize) -> Vec<tokio::task::JoinHandle<StatusCode>> {
    (0..n)
        .map(|_| {
            let addr = proxy.outbound();
            tokio::spawn(async move {
                let mut client = Client::connect(addr, Version::HTTP_11).await;
                client.get("api", "/").await.status
            })
        })
        .collect()
}

#[tokio::test]
async fn max_connections_caps_connections_and_the_rest_wait_their_turn() {
    let slow = Scripted::start("slow", Behaviour::Slow(300)).await;
    let proxy =
        Arc::new(TestProxy::start(&config(&[&slow], "maxConnections: 2, http1MaxPendingRequests: 10")).await);
    let started = Instant::now();
    let requests = fire(&proxy, 6);
    wait_until("two requests run and four wait", || slow.count() == 2 && pending(&proxy) == 4).await;
    assert_eq!(slow.open.load(Ordering::SeqCst), 2);
    for request in requests {
        assert_eq!(request.await.unwrap(), StatusCode::OK, "queued requests are served, not refused");
    }
    assert_eq!(slow.accepted.load(Ordering::SeqCst), 2, "exactly maxConnections connections were made");
    assert_eq!(slow.most_open.load(Ordering::SeqCst), 2);
    assert!(started.elapsed() >= Duration::from_millis(900), "three waves of two");
    let (_, clusters) = proxy.admin_get("/clusters").await;
    assert!(clusters.contains("api::cx_active::2"), "{clusters}");
    assert!(clusters.contains("api::rq_pending_active::0"), "{clusters}");
}

#[tokio::test]
async fn the_connection_cap_holds_across_endpoints() {
    let a = Scripted::start("a", Behaviour::Slow(200)).await;
    let b = Scripted::start("b", Behaviour::Slow(200)).await;
    let proxy = Arc::new(
        TestProxy::start(&config(&[&a, &b], "maxConnections: 1, http1MaxPendingRequests: 10")).await,
    );
    for request in fire(&proxy, 6) {
        assert_eq!(request.await.unwrap(), StatusCode::OK);
    }
    // One connection at a time in all: an idle one to the other endpoint is closed to make room.
    assert_eq!((a.most_open.load(Ordering::SeqCst), b.most_open.load(Ordering::SeqCst)), (1, 1));
    assert!(a.count() >= 1 && b.count() >= 1, "both endpoints served: {} and {}", a.count(), b.count());
    assert!(proxy.running.proxy.config.load().clusters["api"].pool.open() <= 1);
}

#[tokio::test]
async fn beyond_the_queue_requests_get_503_uo_at_once() {
    let slow = Scripted::start("slow", Behaviour::Slow(600)).await;
    let proxy =
        Arc::new(TestProxy::start(&config(&[&slow], "maxConnections: 1, http1MaxPendingRequests: 2")).await);
    let running = fire(&proxy, 1);
    wait_until("one request runs", || slow.count() == 1).await;
    let queued = fire(&proxy, 2);
    wait_until("two wait", || pending(&proxy) == 2).await;
    let started = Instant::now();
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    let answer = client.get("api", "/").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(answer.text().contains("overflow"), "{}", answer.text());
    assert!(started.elapsed() < Duration::from_millis(500), "refused at once, not queued");
    for request in running.into_iter().chain(queued) {
        assert_eq!(request.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(slow.accepted.load(Ordering::SeqCst), 1);
    let metrics = proxy.metrics().await;
    assert!(
        metrics.lines().any(|l| l.starts_with("istio_requests_total{")
            && l.contains(r#"response_code="503""#)
            && l.contains(r#"response_flags="UO""#)
            && l.ends_with(" 1")),
        "{metrics}"
    );
}

#[tokio::test]
async fn http2_max_requests_caps_requests_in_flight() {
    let slow = Scripted::start("slow", Behaviour::Slow(500)).await;
    let proxy =
        Arc::new(TestProxy::start(&config(&[&slow], "maxConnections: 10, http2MaxRequests: 2")).await);
    let running = fire(&proxy, 2);
    wait_until("two requests run", || slow.count() == 2).await;
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    assert_eq!(client.get("api", "/").await.status, StatusCode::SERVICE_UNAVAILABLE);
    for request in running {
        assert_eq!(request.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(client.get("api", "/").await.status, StatusCode::OK);
}

#[tokio::test]
async fn retired_connections_make_room_under_the_cap() {
    let fast = Scripted::start("fast", Behaviour::Status(200)).await;
    let proxy = TestProxy::start(&config(&[&fast], "maxConnections: 1, maxRequestsPerConnection: 2")).await;
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    for _ in 0..6 {
        assert_eq!(client.get("api", "/").await.status, StatusCode::OK);
    }
    assert_eq!(fast.accepted.load(Ordering::SeqCst), 3, "two requests per connection, one at a time");
}

/// The keepalive settings (idle time, interval, probes) of this process's TCP socket connected
/// to `remote_port` on 127.0.0.1, as the kernel holds them; None for the knobs when keepalive
/// is off. The proxy runs in the test's process, so its sockets are among our own fds.
fn keepalive_towards(remote_port: u16) -> Option<(bool, u32, u32, u32)> {
    use std::os::fd::BorrowedFd;
    let table = std::fs::read_to_string("/proc/self/net/tcp").unwrap();
    let wanted = format!("0100007F:{remote_port:04X}");
    let inode = table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // remote address, state 01 (established), inode
        (fields.get(2) == Some(&wanted.as_str()) && fields.get(3) == Some(&"01"))
            .then(|| fields[9].to_owned())
    })?;
    let target = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        if std::fs::read_link(entry.path()).is_ok_and(|l| l.to_string_lossy() == target) {
            let fd: i32 = entry.file_name().to_string_lossy().parse().unwrap();
            // SAFETY: the fd is open (it was just listed) and only borrowed for these calls.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            let socket = socket2::SockRef::from(&fd);
            return Some((
                socket.keepalive().unwrap(),
                socket.tcp_keepalive_time().unwrap().as_secs() as u32,
                socket.tcp_keepalive_interval().unwrap().as_secs() as u32,
                socket.tcp_keepalive_retries().unwrap(),
            ));
        }
    }
    None
}

#[tokio::test]
async fn tcp_keepalive_is_set_on_upstream_connections() {
    let upstream = Scripted::start("up", Behaviour::Status(200)).await;
    let plain = Scripted::start("plain", Behaviour::Status(200)).await;
    let proxy = TestProxy::start(&config(
        &[&upstream],
        "maxConnections: 10, tcpKeepalive: { time: 7s, interval: 3s, probes: 4 }",
    ))
    .await;
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    assert_eq!(client.get("api", "/").await.status, StatusCode::OK);
    let (on, time, interval, probes) = keepalive_towards(upstream.addr.port()).expect("a pooled connection");
    assert!(on, "SO_KEEPALIVE");
    assert_eq!((time, interval, probes), (7, 3, 4));

    // Without the setting, the socket keeps the system's default: no keepalive.
    let proxy = TestProxy::start(&config(&[&plain], "maxConnections: 10")).await;
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    assert_eq!(client.get("api", "/").await.status, StatusCode::OK);
    let (on, ..) = keepalive_towards(plain.addr.port()).expect("a pooled connection");
    assert!(!on);
}

#[tokio::test]
async fn max_connection_duration_retires_connections_once_they_are_old() {
    let fast = Scripted::start("fast", Behaviour::Status(200)).await;
    let proxy = TestProxy::start(&config(&[&fast], "maxConnections: 10, maxConnectionDuration: 0.3s")).await;
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    let first = Instant::now();
    assert_eq!(client.get("api", "/").await.status, StatusCode::OK);
    assert_eq!(client.get("api", "/").await.status, StatusCode::OK);
    assert_eq!(fast.accepted.load(Ordering::SeqCst), 1, "a young connection is reused");
    // Requests keep coming; once the first connection has lasted 0.3s, a new one takes over.
    let deadline = Instant::now() + Duration::from_secs(10);
    while fast.accepted.load(Ordering::SeqCst) == 1 {
        assert!(Instant::now() < deadline, "no new connection after 10s");
        assert_eq!(client.get("api", "/").await.status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(20)).await; // pacing the stream of requests
    }
    assert!(first.elapsed() >= Duration::from_millis(300), "retired after {:?}", first.elapsed());
    wait_until("the old connection is closed", || fast.open.load(Ordering::SeqCst) == 1).await;
}
