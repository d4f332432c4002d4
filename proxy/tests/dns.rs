//! The DNS proxy's listeners on loopback, with a resolver of the test's own behind them: answers
//! from the configuration (and a changed configuration answered at once), forwarding over UDP
//! and TCP, SERVFAIL in bounded time when no resolver answers, and hostile input — garbage,
//! responses, cut frames, a flood of TCP connections — getting an error or nothing while the
//! listeners keep serving.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::TestProxy;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use trellis_proxy::dns::{self, Upstreams};

const CONFIG: &str = r#"
services:
  - name: api.external.test
    addresses: [240.240.0.7]
    ports: [{ port: 80, protocol: HTTP }]
"#;

/// A resolver that knows `other.test` (10.9.9.9) over UDP and TCP, counting what it is asked.
async fn resolver() -> (SocketAddr, Arc<AtomicUsize>) {
    // One port for both: the UDP port the system picks may be taken for TCP by another test
    // running at the same time, so pick again (a bounded number of times).
    let mut attempts = 0;
    let (udp, addr, tcp) = loop {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        match TcpListener::bind(addr).await {
            Ok(tcp) => break (udp, addr, tcp),
            Err(_) if attempts < 50 => attempts += 1,
            Err(e) => panic!("no port free for both UDP and TCP after 50 tries: {e}"),
        }
    };
    let asked = Arc::new(AtomicUsize::new(0));
    let count = asked.clone();
    tokio::spawn(async move {
        let mut buffer = [0u8; 4096];
        while let Ok((n, from)) = udp.recv_from(&mut buffer).await {
            count.fetch_add(1, Ordering::SeqCst);
            if let Some(answer) = resolve(&buffer[..n]) {
                let _ = udp.send_to(&answer, from).await;
            }
        }
    });
    let count = asked.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = tcp.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            if let Some(query) = read_framed(&mut stream).await
                && let Some(answer) = resolve(&query)
            {
                let _ = stream.write_all(&framed(&answer)).await;
            }
        }
    });
    (addr, asked)
}

fn resolve(query: &[u8]) -> Option<Vec<u8>> {
    let query = Message::from_vec(query).ok()?;
    let question = query.queries.first()?.clone();
    let mut answer = Message::response(query.metadata.id, OpCode::Query);
    answer.add_query(question.clone());
    if question.name().to_ascii() == "other.test." {
        answer.add_answer(Record::from_rdata(
            question.name().clone(),
            5,
            RData::A(A(Ipv4Addr::new(10, 9, 9, 9))),
        ));
    } else {
        answer.metadata.response_code = ResponseCode::NXDomain;
    }
    answer.to_vec().ok()
}

fn query(name: &str) -> Vec<u8> {
    let mut m = Message::new(0x4242, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    m.to_vec().unwrap()
}

fn framed(message: &[u8]) -> Vec<u8> {
    let mut out = (message.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(message);
    out
}

async fn read_framed(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut length = [0u8; 2];
    stream.read_exact(&mut length).await.ok()?;
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(length))];
    stream.read_exact(&mut message).await.ok()?;
    Some(message)
}

/// One UDP exchange with the DNS proxy; `None` when nothing comes back within `wait`.
async fn udp(server: SocketAddr, bytes: &[u8], wait: Duration) -> Option<Message> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(bytes, server).await.unwrap();
    let mut buffer = [0u8; 4096];
    let (n, _) = tokio::time::timeout(wait, socket.recv_from(&mut buffer)).await.ok()?.ok()?;
    Some(Message::from_vec(&buffer[..n]).unwrap())
}

async fn tcp(server: SocketAddr, bytes: &[u8]) -> Option<Message> {
    let mut stream = TcpStream::connect(server).await.unwrap();
    stream.write_all(&framed(bytes)).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), read_framed(&mut stream)).await.ok()??;
    Some(Message::from_vec(&answer).unwrap())
}

fn first_a(m: &Message) -> Option<Ipv4Addr> {
    m.answers.iter().find_map(|r| match r.data {
        RData::A(a) => Some(a.0),
        _ => None,
    })
}

async fn start(resolvers: Vec<SocketAddr>) -> (TestProxy, SocketAddr) {
    let proxy = TestProxy::start(CONFIG).await;
    let upstreams = Upstreams { servers: resolvers, timeout: Duration::from_millis(300) };
    let bound = dns::start(&proxy.running.proxy, &["127.0.0.1:0".parse().unwrap()], upstreams).unwrap();
    (proxy, bound[0])
}

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn mesh_names_from_the_configuration_and_the_rest_from_the_resolver() {
    let (resolver, asked) = resolver().await;
    let (proxy, server) = start(vec![resolver]).await;

    let mesh = udp(server, &query("api.external.test."), WAIT).await.expect("an answer");
    assert_eq!((mesh.metadata.id, first_a(&mesh)), (0x4242, Some(Ipv4Addr::new(240, 240, 0, 7))));
    assert!(mesh.metadata.authoritative);
    let over_tcp = tcp(server, &query("api.external.test.")).await.expect("a TCP answer");
    assert_eq!(first_a(&over_tcp), Some(Ipv4Addr::new(240, 240, 0, 7)));
    assert_eq!(asked.load(Ordering::SeqCst), 0, "the resolver never hears of mesh names");

    let other = udp(server, &query("other.test."), WAIT).await.expect("a forwarded answer");
    assert_eq!(first_a(&other), Some(Ipv4Addr::new(10, 9, 9, 9)));
    let other_tcp = tcp(server, &query("other.test.")).await.expect("a forwarded TCP answer");
    assert_eq!(first_a(&other_tcp), Some(Ipv4Addr::new(10, 9, 9, 9)));
    let missing = udp(server, &query("missing.test."), WAIT).await.expect("NXDOMAIN passed on");
    assert_eq!(missing.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(asked.load(Ordering::SeqCst), 3);

    // A new configuration is answered from at once: the old name goes upstream, the new is ours.
    proxy.reload(&CONFIG.replace("api.external.test", "new.external.test")).await;
    let new = udp(server, &query("new.external.test."), WAIT).await.expect("an answer");
    assert_eq!(first_a(&new), Some(Ipv4Addr::new(240, 240, 0, 7)));
    let old = udp(server, &query("api.external.test."), WAIT).await.expect("an answer");
    assert_eq!(old.metadata.response_code, ResponseCode::NXDomain, "forwarded now");
}

#[tokio::test]
async fn no_resolver_answering_is_servfail_in_bounded_time() {
    // A UDP port nobody reads, and a TCP port that refuses.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let nobody = silent.local_addr().unwrap();
    let (_proxy, server) = start(vec![nobody]).await;
    let started = Instant::now();
    let answer = udp(server, &query("other.test."), WAIT).await.expect("SERVFAIL, not silence");
    assert_eq!((answer.metadata.id, answer.metadata.response_code), (0x4242, ResponseCode::ServFail));
    assert_eq!(answer.queries.len(), 1);
    assert!(started.elapsed() < WAIT);
    let over_tcp = tcp(server, &query("other.test.")).await.expect("SERVFAIL over TCP");
    assert_eq!(over_tcp.metadata.response_code, ResponseCode::ServFail);
}

#[tokio::test]
async fn hostile_input_gets_an_error_or_nothing_and_the_listeners_keep_serving() {
    let (resolver, asked) = resolver().await;
    let (_proxy, server) = start(vec![resolver]).await;
    let short = Duration::from_millis(300);

    // Noise shorter than a header: nothing back.
    assert!(udp(server, b"\x01\x02\x03", short).await.is_none());
    // A header with an impossible question count: FORMERR with its id.
    let formerr =
        udp(server, &[0xbe, 0xef, 1, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0], WAIT).await.expect("FORMERR");
    assert_eq!((formerr.metadata.id, formerr.metadata.response_code), (0xbeef, ResponseCode::FormErr));
    // A response is never answered (two servers cannot bounce errors at each other).
    let mut response = query("api.external.test.");
    response[2] |= 0x80;
    assert!(udp(server, &response, short).await.is_none());
    // A datagram longer than any query.
    let huge = vec![0x41u8; 9000];
    let _ = udp(server, &huge, short).await;

    // TCP: a length promising more than is sent, then the client goes away.
    let mut cut = TcpStream::connect(server).await.unwrap();
    cut.write_all(&[0x00, 0x40, 0x12]).await.unwrap();
    drop(cut);
    // A zero-length message: the connection is closed, not answered.
    let mut empty = TcpStream::connect(server).await.unwrap();
    empty.write_all(&[0, 0]).await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(WAIT, empty.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the connection is closed, not left hanging");
    // More connections than the listener keeps: the extra ones are closed, and later ones served.
    let mut flood = Vec::new();
    for _ in 0..200 {
        if let Ok(stream) = TcpStream::connect(server).await {
            flood.push(stream);
        }
    }
    drop(flood);
    assert_eq!(asked.load(Ordering::SeqCst), 0, "nothing hostile reached the resolver");

    let deadline = Instant::now() + WAIT;
    let answer = loop {
        if let Some(answer) = tcp(server, &query("api.external.test.")).await {
            break answer;
        }
        assert!(Instant::now() < deadline, "TCP never served again after the flood");
        tokio::task::yield_now().await;
    };
    assert_eq!(first_a(&answer), Some(Ipv4Addr::new(240, 240, 0, 7)));
    let still = udp(server, &query("api.external.test."), WAIT).await.expect("UDP still answers");
    assert_eq!(first_a(&still), Some(Ipv4Addr::new(240, 240, 0, 7)));
}
