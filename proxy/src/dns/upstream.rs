//! The pod's own resolvers (its `resolv.conf`), and asking them: a query that is not ours goes,
//! unchanged, to each in turn until one answers, over the transport it came on.
//!
//! The proxy's own sockets are not captured (the redirect exempts the proxy's user), so these
//! queries reach the resolvers themselves and not 15053 again.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// How long one resolver has to answer before the next is asked (glibc's default timeout is
/// 5 seconds per try: the client is still waiting when the second resolver is asked).
pub const PER_RESOLVER: Duration = Duration::from_secs(2);
/// The largest UDP answer taken from a resolver (the client offered at most this much).
const MAX_UDP_ANSWER: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstreams {
    pub servers: Vec<SocketAddr>,
    pub timeout: Duration,
}

impl Upstreams {
    /// The nameservers `resolv.conf` lists (port 53), in its order. A file without any means
    /// the local resolver, as the C library reads it.
    pub fn from_resolv_conf(path: &Path) -> Result<Upstreams, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Upstreams::parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(bytes: &[u8]) -> Result<Upstreams, String> {
        let config = resolv_conf::Config::parse(bytes).map_err(|e| e.to_string())?;
        let servers = config
            .get_nameservers_or_local()
            .into_iter()
            .map(|ip| SocketAddr::new(IpAddr::from(ip), 53))
            .collect();
        Ok(Upstreams { servers, timeout: PER_RESOLVER })
    }

    /// The first answer with the query's id, from the resolvers in turn; `None` when none
    /// answered in time.
    pub async fn exchange_udp(&self, query: &[u8]) -> Option<Vec<u8>> {
        for server in &self.servers {
            match tokio::time::timeout(self.timeout, udp_once(*server, query)).await {
                Ok(Ok(answer)) => return Some(answer),
                Ok(Err(e)) => tracing::debug!(%server, "DNS over UDP: {e}"),
                Err(_) => tracing::debug!(%server, "DNS over UDP: no answer in {:?}", self.timeout),
            }
        }
        None
    }

    pub async fn exchange_tcp(&self, query: &[u8]) -> Option<Vec<u8>> {
        for server in &self.servers {
            match tokio::time::timeout(self.timeout, tcp_once(*server, query)).await {
                Ok(Ok(answer)) => return Some(answer),
                Ok(Err(e)) => tracing::debug!(%server, "DNS over TCP: {e}"),
                Err(_) => tracing::debug!(%server, "DNS over TCP: no answer in {:?}", self.timeout),
            }
        }
        None
    }
}

/// A socket of its own per query: the kernel picks a random port, and only the resolver it is
/// connected to can answer on it.
async fn udp_once(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let local = match server {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(server).await?;
    socket.send(query).await?;
    let mut buffer = vec![0u8; MAX_UDP_ANSWER];
    loop {
        let n = socket.recv(&mut buffer).await?;
        // Anything else on this port (a late answer, noise) is skipped: keep waiting.
        if answers(query, &buffer[..n]) {
            buffer.truncate(n);
            return Ok(buffer);
        }
    }
}

async fn tcp_once(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let length = u16::try_from(query.len()).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "query longer than 65535 bytes")
    })?;
    let mut stream = TcpStream::connect(server).await?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(query);
    stream.write_all(&framed).await?;
    let answer = read_framed(&mut stream).await?;
    if !answers(query, &answer) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "answer to another query"));
    }
    Ok(answer)
}

/// One length-prefixed DNS message of a TCP stream (RFC 1035 4.2.2).
pub async fn read_framed<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Vec<u8>> {
    let mut length = [0u8; 2];
    stream.read_exact(&mut length).await?;
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(length))];
    stream.read_exact(&mut message).await?;
    Ok(message)
}

/// Same id, and a response.
fn answers(query: &[u8], answer: &[u8]) -> bool {
    answer.len() >= 12 && query.len() >= 2 && answer[..2] == query[..2] && answer[2] & 0x80 != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers_in_order_on_port_53() {
        let text = b"search shop.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\nnameserver fd00::a\noptions ndots:5\n";
        let upstreams = Upstreams::parse(text).unwrap();
        assert_eq!(
            upstreams.servers,
            vec!["10.96.0.10:53".parse::<SocketAddr>().unwrap(), "[fd00::a]:53".parse().unwrap()]
        );
    }

    #[test]
    fn a_file_without_nameservers_means_the_local_resolver() {
        let upstreams = Upstreams::parse(b"search example\n").unwrap();
        assert!(upstreams.servers.iter().all(|s| s.ip().is_loopback() && s.port() == 53), "{upstreams:?}");
        assert!(!upstreams.servers.is_empty());
    }

    #[test]
    fn a_broken_file_names_the_line() {
        let err = Upstreams::parse(b"nameserver not-an-address\n").unwrap_err();
        assert!(err.contains('1') || err.to_lowercase().contains("line"), "{err}");
        let missing = Upstreams::from_resolv_conf(Path::new("/nonexistent/resolv.conf")).unwrap_err();
        assert!(missing.starts_with("/nonexistent/resolv.conf: "), "{missing}");
    }

    #[test]
    fn only_a_response_with_the_query_id_is_an_answer() {
        let query = [0x12, 0x34, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        let mut answer = query;
        answer[2] |= 0x80;
        assert!(answers(&query, &answer));
        assert!(!answers(&query, &query), "a query is not an answer");
        let mut other = answer;
        other[1] = 0x35;
        assert!(!answers(&query, &other));
        assert!(!answers(&query, &answer[..11]));
    }
}
