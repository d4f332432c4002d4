//! What a new connection speaks, from its first bytes, read with `peek` so nothing is consumed
//! and no round trip is added: client-first protocols send at once. A connection that stays
//! silent past the deadline is a server-first protocol (MySQL, SMTP) and is proxied as TCP.

use std::time::Duration;

use tokio::net::TcpStream;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detected {
    Http1,
    Http2,
    Tls,
    Opaque,
}

/// Enough bytes to recognise every prefix below.
const PEEK: usize = 24;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const METHODS: [&[u8]; 9] =
    [b"GET ", b"POST ", b"PUT ", b"DELETE ", b"HEAD ", b"OPTIONS ", b"PATCH ", b"CONNECT ", b"TRACE "];

/// Classifies what the bytes seen so far are; `None` while they could still be either.
pub fn classify(bytes: &[u8]) -> Option<Detected> {
    if bytes.is_empty() {
        return None;
    }
    // A TLS handshake record: content type 22, version 3.x.
    if bytes[0] == 0x16 {
        return Some(if bytes.len() < 2 || bytes[1] == 0x03 { Detected::Tls } else { Detected::Opaque });
    }
    let prefix_of = |whole: &[u8]| whole.starts_with(&bytes[..bytes.len().min(whole.len())]);
    if bytes.len() >= H2_PREFACE.len() && bytes.starts_with(H2_PREFACE) {
        return Some(Detected::Http2);
    }
    if METHODS.iter().any(|m| bytes.starts_with(m)) {
        return Some(Detected::Http1);
    }
    let undecided = prefix_of(H2_PREFACE) || METHODS.iter().any(|m| prefix_of(m));
    if undecided { None } else { Some(Detected::Opaque) }
}

/// What a TLS client's ClientHello asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hello {
    pub server_name: Option<String>,
    pub alpn: Vec<Vec<u8>>,
}

/// The server name a TLS client asks for (SNI), read from its ClientHello without consuming
/// it, so the bytes can be passed on untouched. `None` when there is none or it is not TLS.
pub async fn server_name(stream: &TcpStream, deadline: Duration) -> Option<String> {
    client_hello(stream, deadline).await?.server_name
}

/// The ClientHello's server name and ALPN values, read without consuming them. `None` when it
/// is not TLS or does not arrive in time.
pub async fn client_hello(stream: &TcpStream, deadline: Duration) -> Option<Hello> {
    // A ClientHello fits in one TLS record (16 KiB), post-quantum key shares included.
    let mut buf = vec![0u8; 16 * 1024 + 5];
    let attempt = async {
        loop {
            let n = stream.peek(&mut buf).await.ok().filter(|n| *n > 0)?;
            let mut acceptor = rustls::server::Acceptor::default();
            let mut bytes = &buf[..n];
            acceptor.read_tls(&mut bytes).ok()?;
            match acceptor.accept() {
                Ok(Some(accepted)) => {
                    let hello = accepted.client_hello();
                    return Some(Hello {
                        server_name: hello.server_name().map(str::to_owned),
                        alpn: hello.alpn().map(|list| list.map(<[u8]>::to_vec).collect()).unwrap_or_default(),
                    });
                }
                Ok(None) if n < buf.len() => tokio::time::sleep(Duration::from_millis(1)).await,
                _ => return None,
            }
        }
    };
    tokio::time::timeout(deadline, attempt).await.ok().flatten()
}

/// Peeks at the connection until its protocol is known, or the deadline passes.
pub async fn detect(stream: &TcpStream, deadline: Duration) -> Detected {
    let mut buf = [0u8; PEEK];
    let attempt = async {
        loop {
            match stream.peek(&mut buf).await {
                // Closed before saying anything: nothing to detect; TCP handling closes it.
                Ok(0) | Err(_) => return Detected::Opaque,
                Ok(n) => {
                    if let Some(d) = classify(&buf[..n]) {
                        return d;
                    }
                    if n == buf.len() {
                        return Detected::Opaque;
                    }
                    // More bytes are on their way. The socket stays readable while these
                    // unread bytes sit in it, so wait a little rather than spin.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    };
    tokio::time::timeout(deadline, attempt).await.unwrap_or(Detected::Opaque)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_the_usual_openings() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(classify(b"POST /x HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(classify(H2_PREFACE), Some(Detected::Http2));
        assert_eq!(classify(&[0x16, 0x03, 0x01, 0x02, 0x00]), Some(Detected::Tls));
        assert_eq!(classify(b"\x00\x00\x00\x0a\x03"), Some(Detected::Opaque));
        assert_eq!(classify(b"SSH-2.0-OpenSSH"), Some(Detected::Opaque));
        assert_eq!(classify(b"GETX"), Some(Detected::Opaque));
    }

    #[test]
    fn waits_while_a_prefix_is_ambiguous() {
        assert_eq!(classify(b""), None);
        assert_eq!(classify(b"G"), None);
        assert_eq!(classify(b"PO"), None);
        assert_eq!(classify(b"PRI * HTTP/2"), None);
        assert_eq!(classify(b"P"), None);
    }
}
