//! The DNS benchmark's two ends (bench/dns.sh).
//!
//! `dns-load serve ADDR`: a resolver that answers every A question with 10.0.0.1 (TTL 0), over
//! UDP, as fast as one thread can: the upstream behind the proxy, and the direct baseline.
//!
//! `dns-load query ADDR NAME SECONDS CONCURRENCY`: CONCURRENCY clients, each with its own UDP
//! socket and one query in flight, ask for NAME until SECONDS pass (a query unanswered for a
//! second counts as lost and is sent again). Prints one line:
//! `answered=N lost=N qps=N p50_us=N p99_us=N`.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match args.get(1).map(String::as_str) {
        Some("serve") => runtime.block_on(serve(args.get(2).ok_or("serve ADDR")?.parse()?)),
        Some("query") if args.len() == 6 => runtime.block_on(load(
            args[2].parse()?,
            &args[3],
            Duration::from_secs_f64(args[4].parse()?),
            args[5].parse()?,
        )),
        _ => Err("usage: dns-load serve ADDR | dns-load query ADDR NAME SECONDS CONCURRENCY".into()),
    }
}

async fn serve(addr: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    let socket = UdpSocket::bind(addr).await?;
    println!("dns-load resolver on {addr}");
    let mut buffer = [0u8; 4096];
    loop {
        let (n, from) = socket.recv_from(&mut buffer).await?;
        let Ok(query) = Message::from_vec(&buffer[..n]) else { continue };
        let mut answer = Message::response(query.metadata.id, OpCode::Query);
        answer.metadata.recursion_available = true;
        answer.metadata.recursion_desired = query.metadata.recursion_desired;
        if let Some(question) = query.queries.first() {
            answer.add_query(question.clone());
            answer.add_answer(Record::from_rdata(
                question.name().clone(),
                0,
                RData::A(A(Ipv4Addr::new(10, 0, 0, 1))),
            ));
        }
        if let Ok(bytes) = answer.to_vec() {
            let _ = socket.send_to(&bytes, from).await;
        }
    }
}

async fn load(
    server: SocketAddr,
    name: &str,
    seconds: Duration,
    concurrency: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let name = Name::from_ascii(name)?;
    let deadline = Instant::now() + seconds;
    let mut clients = Vec::new();
    for i in 0..concurrency {
        let name = name.clone();
        clients.push(tokio::spawn(async move { client(server, name, deadline, i as u16).await }));
    }
    let (mut latencies, mut lost) = (Vec::new(), 0u64);
    for c in clients {
        let (l, n) = c.await??;
        latencies.extend(l);
        lost += n;
    }
    latencies.sort_unstable();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "answered={} lost={lost} qps={:.0} p50_us={} p99_us={}",
        latencies.len(),
        latencies.len() as f64 / seconds.as_secs_f64(),
        at(0.50),
        at(0.99)
    );
    Ok(())
}

/// One client: a query in flight at a time; latencies in microseconds, and how many were lost.
async fn client(
    server: SocketAddr,
    name: Name,
    deadline: Instant,
    seed: u16,
) -> std::io::Result<(Vec<u64>, u64)> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    socket.connect(server).await?;
    let mut buffer = [0u8; 4096];
    let (mut latencies, mut lost) = (Vec::new(), 0u64);
    let mut id = seed.wrapping_mul(7919);
    while Instant::now() < deadline {
        id = id.wrapping_add(1);
        let mut query = Message::new(id, MessageType::Query, OpCode::Query);
        query.metadata.recursion_desired = true;
        query.add_query(Query::query(name.clone(), RecordType::A));
        let bytes = query.to_vec().map_err(std::io::Error::other)?;
        let sent = Instant::now();
        socket.send(&bytes).await?;
        let answered = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                let n = socket.recv(&mut buffer).await?;
                if n >= 2 && buffer[..2] == id.to_be_bytes() {
                    return Ok::<_, std::io::Error>(());
                }
            }
        })
        .await;
        match answered {
            Ok(Ok(())) => latencies.push(sent.elapsed().as_micros() as u64),
            Ok(Err(e)) => return Err(e),
            Err(_) => lost += 1,
        }
    }
    Ok((latencies, lost))
}
