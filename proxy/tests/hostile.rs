//! Hostile and broken clients: malformed HTTP, oversized headers and bodies, request smuggling,
//! slow clients and a flood of idle connections. The proxy answers with the right status or
//! closes, and other clients are unaffected.

mod common;

use std::time::{Duration, Instant};

use common::{Client, TestProxy, Upstream, api_config};
use http::{StatusCode, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(upstream: &Upstream) -> String {
    let limits = r#"limits: { maxRequestHeadersBytes: 16384, maxRequestBodyBytes: "1024", requestHeadersTimeout: 0.5s }"#;
    format!("{limits}\n{}", api_config(&[upstream.addr.port()], "HTTP", "", ""))
}

/// Sends raw bytes, then reads until the proxy closes or 5 seconds pass; returns what came back.
async fn raw(proxy: &TestProxy, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(proxy.outbound()).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(response: &str) -> Option<u16> {
    response.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

#[tokio::test]
async fn malformed_requests_get_400_and_reach_no_upstream() {
    let upstream = Upstream::start("api").await;
    let proxy = TestProxy::start(&config(&upstream)).await;
    for request in [
        &b"GET / HTTP/1.1\r\nHost api\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: api\r\nBad Header: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: api\r\nX: \x01\x02\r\n\r\n",
        // Smuggling: two lengths, or a length beside chunked encoding.
        b"POST / HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"POST / HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: gzip, chunked, identity\r\n\r\n",
    ] {
        let response = raw(&proxy, request).await;
        assert_eq!(status_of(&response), Some(400), "{:?} -> {response:?}", String::from_utf8_lossy(request));
    }
    // Chunked beside a length: read as chunked alone (HTTP's rule), and the connection closes
    // after the answer, so what follows is never read as a second request.
    let response = raw(
        &proxy,
        b"POST / HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: api\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&response), Some(200), "{response}");
    assert!(response.to_lowercase().contains("connection: close"), "{response}");
    assert_eq!(upstream.count(), 1);
    let seen = upstream.last();
    assert!(
        !seen.headers.contains_key("content-length")
            || seen.headers.get("content-length").map(String::as_str) == Some("0"),
        "{seen:?}"
    );
    assert!(
        upstream.seen.lock().unwrap().iter().all(|s| s.path != "/smuggled"),
        "a smuggled request got through"
    );
}

#[tokio::test]
async fn oversized_headers_get_431_and_bodies_413() {
    let upstream = Upstream::start("api").await;
    let proxy = TestProxy::start(&config(&upstream)).await;
    let big = format!("GET / HTTP/1.1\r\nHost: api\r\nX-Big: {}\r\n\r\n", "a".repeat(64 * 1024));
    assert_eq!(status_of(&raw(&proxy, big.as_bytes()).await), Some(431));

    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    let declared = http::Request::post("/").header("host", "api").body(vec![b'x'; 2048].into()).unwrap();
    assert_eq!(client.send(declared).await.unwrap().status, StatusCode::PAYLOAD_TOO_LARGE);
    // Chunked, so the size shows only while streaming.
    let chunked = format!(
        "POST / HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n{}\r\n0\r\n\r\n",
        "y".repeat(2048)
    );
    assert_eq!(status_of(&raw(&proxy, chunked.as_bytes()).await), Some(413));
    // Inbound too.
    let mut inbound = Client::connect(proxy.inbound(), Version::HTTP_11).await;
    let declared = http::Request::post("/")
        .header("host", format!("app:{}", upstream.addr.port()))
        .body(vec![b'x'; 2048].into())
        .unwrap();
    assert_eq!(inbound.send(declared).await.unwrap().status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(upstream.count(), 0, "nothing too large was forwarded whole");
}

#[tokio::test]
async fn slow_clients_are_cut_off_and_others_are_served() {
    let upstream = Upstream::start("api").await;
    let proxy = TestProxy::start(&config(&upstream)).await;
    // On a new connection, and on a keep-alive connection whose first request was answered: the
    // first head arrives in two parts, so the connection's timer is armed for its deadline, and
    // the second head must still be cut off at a deadline of its own, later than that one.
    for answered_first in [false, true] {
        let mut slow = TcpStream::connect(proxy.outbound()).await.unwrap();
        if answered_first {
            slow.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            slow.write_all(b"Host: api\r\n\r\n").await.unwrap();
            let mut answer = Vec::new();
            let mut buf = [0u8; 512];
            while !answer.ends_with(b"api") {
                let n =
                    tokio::time::timeout(Duration::from_secs(5), slow.read(&mut buf)).await.unwrap().unwrap();
                assert!(n > 0, "closed before the first answer: {}", String::from_utf8_lossy(&answer));
                answer.extend_from_slice(&buf[..n]);
            }
            assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
        }
        slow.write_all(b"GET / HTTP/1.1\r\nHost: api\r\n").await.unwrap();
        let started = Instant::now();
        // A header line now and then, never finishing: the header timeout (0.5s) closes it.
        let mut closed = false;
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if slow.write_all(b"X-Slow: 1\r\n").await.is_err() {
                closed = true;
                break;
            }
            let mut buf = [0u8; 512];
            if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1), slow.read(&mut buf)).await {
                closed = n == 0 || String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408");
                if closed {
                    break;
                }
            }
        }
        assert!(closed, "the slow client was not cut off (answered first: {answered_first})");
        assert!(started.elapsed() < Duration::from_secs(4));
    }
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    assert_eq!(client.get("api", "/").await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_connections_leaves_memory_bounded_and_others_served() {
    let upstream = Upstream::start("api").await;
    // Silent connections wait for their first bytes up to the detection deadline.
    let proxy = TestProxy::start(&format!("protocolDetectionTimeout: 2s\n{}", config(&upstream))).await;
    let rss = || {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
            .unwrap()
    };
    // Warm up first (allocator arenas of the worker threads, the client, the pools), so the
    // measurement is of the connections alone.
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    for _ in 0..20 {
        assert_eq!(client.get("api", "/").await.status, StatusCode::OK);
    }
    let mut warm = Vec::new();
    for _ in 0..100 {
        warm.push(TcpStream::connect(proxy.outbound()).await.unwrap());
    }
    common::wait_until("the warm-up connections are held", || {
        proxy.running.proxy.connections.load(std::sync::atomic::Ordering::Acquire) >= 100
    })
    .await;
    drop(warm);
    let before = rss();
    let mut idle = Vec::new();
    for _ in 0..500 {
        idle.push(TcpStream::connect(proxy.outbound()).await.unwrap());
    }
    common::wait_until("the proxy holds every idle connection", || {
        proxy.running.proxy.connections.load(std::sync::atomic::Ordering::Acquire) >= 500
    })
    .await;
    for _ in 0..20 {
        assert_eq!(client.get("api", "/").await.status, StatusCode::OK);
    }
    let grown_kib = rss().saturating_sub(before);
    // 500 connections, both ends in this process: a few KiB each (1.5 MiB measured), not more.
    assert!(grown_kib < 10 * 1024, "RSS grew {grown_kib} KiB for 500 idle connections");
    // Silent connections are closed by the detection deadline or the header timeout.
    drop(client);
    common::wait_until("idle connections are closed", || {
        proxy.running.proxy.connections.load(std::sync::atomic::Ordering::Acquire) < 50
    })
    .await;
    drop(idle);
}

#[tokio::test]
async fn the_proxys_own_ports_are_never_a_destination() {
    let upstream = Upstream::start("api").await;
    let proxy = TestProxy::start(&config(&upstream)).await;
    let admin = proxy.running.admin[0].port();
    let inbound = proxy.inbound().port();
    // Inbound, the authority's port may not name the admin port or the proxy's listeners.
    let mut client = Client::connect(proxy.inbound(), Version::HTTP_11).await;
    for port in [admin, inbound, proxy.outbound().port()] {
        let answer = client.get(&format!("app:{port}"), "/quitquitquit").await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "port {port}");
    }
    assert!(!proxy.running.proxy.is_draining());
    // Outbound, passing through to one of our own listeners would loop.
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    for addr in [format!("127.0.0.1:{inbound}"), format!("0.0.0.0:{admin}")] {
        assert_eq!(client.get(&addr, "/").await.status, StatusCode::LOOP_DETECTED, "{addr}");
    }

    // In a pod, an inbound connection that did not come through the redirect is refused.
    let strict = TestProxy::start_strict(&config(&upstream)).await;
    let mut client = Client::connect(strict.inbound(), Version::HTTP_11).await;
    let answer = client.get(&format!("app:{}", upstream.addr.port()), "/").await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(upstream.count(), 0);
}
