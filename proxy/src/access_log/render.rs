//! One access log line from what is known of a request or connection (`Facts`): each operator's
//! value, escaped so that no value can break the line. TEXT: `"` and `\` get a backslash,
//! control characters and bytes that are not UTF-8 are written `\xHH`; JSON: a value is a JSON
//! string (escaped as JSON, invalid UTF-8 replaced), or, when the field is one operator, a
//! number or `null` as Envoy types it. Every value is cut to `MAX_VALUE_LEN` bytes (and to
//! an operator's `:N`) before escaping.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use http::HeaderMap;
use trellis_api::access_log::format::{Command, Format, HeaderRef, Operator, Piece};
use trellis_api::access_log::time;

/// A header value, however long, is cut to this many bytes in a line.
pub const MAX_VALUE_LEN: usize = 4096;

/// Everything a line may print about one HTTP request or TCP connection.
pub struct Facts<'a> {
    pub start_unix_nanos: u128,
    /// `HTTP/1.1`, `HTTP/2`; `None` for TCP.
    pub protocol: Option<&'static str>,
    pub request: Option<&'a RequestFacts>,
    pub response_headers: Option<&'a HeaderMap>,
    /// 0 for TCP, as Envoy prints it.
    pub code: u16,
    pub details: &'a str,
    pub flags: &'static str,
    pub termination_details: Option<&'a str>,
    pub duration: Duration,
    /// Until the response's headers.
    pub response_duration: Option<Duration>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_cluster: Option<&'a str>,
    pub upstream_local: Option<SocketAddr>,
    pub upstream_failure: Option<&'a str>,
    pub downstream_remote: SocketAddr,
    pub downstream_local: SocketAddr,
    pub peer_uri_san: Option<&'a str>,
    pub requested_server_name: Option<&'a str>,
    pub route_name: Option<&'a str>,
    /// `""` when the request is not gRPC or has no status.
    pub grpc_status: &'static str,
}

/// The request as it came in, kept for its line.
pub struct RequestFacts {
    pub method: http::Method,
    /// Path and query.
    pub path: String,
    /// The URI's authority, else the Host header.
    pub authority: Option<String>,
    pub scheme: &'static str,
    pub headers: HeaderMap,
}

impl RequestFacts {
    /// A request header, pseudo-headers included.
    pub fn header(&self, name: &str) -> Option<Cow<'_, [u8]>> {
        match name {
            ":method" => Some(Cow::Borrowed(self.method.as_str().as_bytes())),
            ":path" => Some(Cow::Borrowed(self.path.as_bytes())),
            ":authority" | "host" => self.authority.as_deref().map(|a| Cow::Borrowed(a.as_bytes())),
            ":scheme" => Some(Cow::Borrowed(self.scheme.as_bytes())),
            _ => self.headers.get(name).map(|v| Cow::Borrowed(v.as_bytes())),
        }
    }
}

/// A value as an operator yields it. Addresses and times are written straight into the line
/// (they need no escaping), without a string of their own.
enum Value<'a> {
    Absent,
    Number(u128),
    Text(Cow<'a, [u8]>),
    Address(SocketAddr),
    Ip(std::net::IpAddr),
    Time(Option<&'a trellis_api::access_log::time::TimeFormat>, u128),
}

impl Value<'_> {
    /// Writes a value that needs no escaping; `false` for the others.
    fn write_plain(&self, out: &mut String) -> bool {
        let _: std::fmt::Result = match self {
            Value::Number(n) => {
                // itoa: the formatter's machinery costs more than the digits.
                match u64::try_from(*n) {
                    Ok(n) => out.push_str(itoa::Buffer::new().format(n)),
                    Err(_) => out.push_str(itoa::Buffer::new().format(*n)),
                }
                Ok(())
            }
            Value::Address(a) => {
                write_ip(a.ip(), out);
                out.push(':');
                out.push_str(itoa::Buffer::new().format(a.port()));
                Ok(())
            }
            Value::Ip(ip) => {
                write_ip(*ip, out);
                Ok(())
            }
            Value::Time(None, nanos) => {
                time::render_default(*nanos, out);
                Ok(())
            }
            Value::Time(Some(format), nanos) => {
                format.render(*nanos, out);
                Ok(())
            }
            Value::Absent | Value::Text(_) => return false,
        };
        true
    }
}

/// An address as `Display` writes it (IPv6 without brackets, as Envoy's `_WITHOUT_PORT`
/// forms), IPv4 octet by octet: every line has several, and the formatter is slow.
fn write_ip(ip: std::net::IpAddr, out: &mut String) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(itoa::Buffer::new().format(octet));
            }
        }
        std::net::IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

fn text(s: &str) -> Value<'_> {
    Value::Text(Cow::Borrowed(s.as_bytes()))
}

fn optional(s: Option<&str>) -> Value<'_> {
    s.filter(|s| !s.is_empty()).map_or(Value::Absent, text)
}

fn address(a: Option<SocketAddr>) -> Value<'static> {
    a.map_or(Value::Absent, Value::Address)
}

fn millis(d: Duration) -> Value<'static> {
    Value::Number(d.as_millis())
}

fn header<'a>(source: Option<&'a RequestFacts>, h: &HeaderRef) -> Value<'a> {
    let Some(request) = source else { return Value::Absent };
    request
        .header(&h.name)
        .or_else(|| h.alternative.as_deref().and_then(|alt| request.header(alt)))
        .map_or(Value::Absent, Value::Text)
}

fn response_header<'a>(headers: Option<&'a HeaderMap>, h: &HeaderRef) -> Value<'a> {
    let Some(headers) = headers else { return Value::Absent };
    headers
        .get(h.name.as_str())
        .or_else(|| h.alternative.as_deref().and_then(|alt| headers.get(alt)))
        .map_or(Value::Absent, |v| Value::Text(Cow::Borrowed(v.as_bytes())))
}

impl Facts<'_> {
    fn value<'s>(&'s self, command: &'s Command) -> Value<'s> {
        match command {
            Command::StartTime(format) => Value::Time(format.as_ref(), self.start_unix_nanos),
            Command::Req(h) => header(self.request, h),
            Command::ReqWithoutQuery(h) => match header(self.request, h) {
                Value::Text(Cow::Borrowed(v)) => {
                    Value::Text(Cow::Borrowed(v.split(|b| *b == b'?').next().unwrap_or_default()))
                }
                other => other,
            },
            Command::Resp(h) => response_header(self.response_headers, h),
            Command::ResponseCode => Value::Number(u128::from(self.code)),
            Command::ResponseCodeDetails => optional(Some(self.details)),
            Command::ResponseFlags => text(self.flags),
            Command::Duration => millis(self.duration),
            Command::ResponseDuration => self.response_duration.map_or(Value::Absent, millis),
            Command::ResponseTxDuration => {
                self.response_duration.map_or(Value::Absent, |r| millis(self.duration.saturating_sub(r)))
            }
            Command::BytesReceived => Value::Number(u128::from(self.bytes_received)),
            Command::BytesSent => Value::Number(u128::from(self.bytes_sent)),
            Command::Protocol => optional(self.protocol),
            Command::UpstreamHost => address(self.upstream_host),
            Command::UpstreamCluster | Command::UpstreamClusterRaw => optional(self.upstream_cluster),
            Command::UpstreamLocalAddress => address(self.upstream_local),
            Command::UpstreamTransportFailureReason => optional(self.upstream_failure),
            Command::UpstreamServiceTime => {
                // A peer Envoy's own measure when it sent one; else ours, for answers that came
                // from upstream.
                let theirs = self.response_headers.and_then(|h| h.get("x-envoy-upstream-service-time"));
                match (theirs, self.upstream_host, self.response_duration) {
                    (Some(v), _, _) => Value::Text(Cow::Borrowed(v.as_bytes())),
                    (None, Some(_), Some(d)) if self.details == "via_upstream" => millis(d),
                    _ => Value::Absent,
                }
            }
            Command::DownstreamRemoteAddress => Value::Address(self.downstream_remote),
            Command::DownstreamRemoteAddressWithoutPort => Value::Ip(self.downstream_remote.ip()),
            Command::DownstreamRemotePort => Value::Number(u128::from(self.downstream_remote.port())),
            Command::DownstreamLocalAddress => Value::Address(self.downstream_local),
            Command::DownstreamLocalAddressWithoutPort => Value::Ip(self.downstream_local.ip()),
            Command::DownstreamLocalPort => Value::Number(u128::from(self.downstream_local.port())),
            Command::DownstreamPeerUriSan => optional(self.peer_uri_san),
            Command::RequestedServerName => optional(self.requested_server_name),
            Command::RouteName => optional(self.route_name),
            Command::ConnectionTerminationDetails => optional(self.termination_details),
            Command::GrpcStatus => optional(Some(self.grpc_status)),
            Command::Hostname => optional(Some(hostname())),
        }
    }
}

fn hostname() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_owned()))
            .unwrap_or_default()
    })
}

/// The value's bytes cut to the operator's length and the line's cap.
fn cut<'v>(bytes: &'v [u8], op: &Operator) -> &'v [u8] {
    let limit = op.max_len.unwrap_or(usize::MAX).min(MAX_VALUE_LEN);
    &bytes[..bytes.len().min(limit)]
}

/// Appends one TEXT line.
pub fn text_line(format: &Format, facts: &Facts<'_>, out: &mut String) {
    for piece in &format.pieces {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Op(op) => match facts.value(&op.command) {
                Value::Absent => out.push('-'),
                Value::Text(bytes) => escape_text(cut(&bytes, op), out),
                plain => {
                    plain.write_plain(out);
                }
            },
        }
    }
}

/// Appends one JSON line: `{"key":value,...}` and a newline.
pub fn json_line(fields: &[(String, Format)], facts: &Facts<'_>, out: &mut String) {
    out.push('{');
    for (i, (key, format)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        escape_json(key.as_bytes(), out);
        out.push(':');
        if let Some(op) = format.single() {
            match facts.value(&op.command) {
                Value::Absent => out.push_str("null"),
                Value::Number(n) => {
                    let _ = write!(out, "{n}");
                }
                Value::Text(bytes) => escape_json(cut(&bytes, op), out),
                plain => {
                    out.push('"');
                    plain.write_plain(out);
                    out.push('"');
                }
            }
            continue;
        }
        // Text and operators together: one string, `-` for what is absent.
        out.push('"');
        for piece in &format.pieces {
            match piece {
                Piece::Text(t) => escape_json_content(t.as_bytes(), out),
                Piece::Op(op) => match facts.value(&op.command) {
                    Value::Absent => out.push('-'),
                    Value::Text(bytes) => escape_json_content(cut(&bytes, op), out),
                    plain => {
                        plain.write_plain(out);
                    }
                },
            }
        }
        out.push('"');
    }
    out.push_str("}\n");
}

/// The longest prefix of `bytes` that is printable ASCII other than `"` and `\\`: what both
/// encodings copy as it is. Almost every value is all of it, so it goes over in one copy
/// rather than a character at a time.
fn plain_prefix(bytes: &[u8]) -> &str {
    const PLAIN: [bool; 256] = {
        let mut table = [false; 256];
        let mut b = 0x20;
        while b < 0x7f {
            table[b] = b != b'"' as usize && b != b'\\' as usize;
            b += 1;
        }
        table
    };
    let end = bytes.iter().position(|&b| !PLAIN[usize::from(b)]).unwrap_or(bytes.len());
    let plain = &bytes[..end];
    // SAFETY: every byte of `plain` is printable ASCII (the table admits nothing else), and
    // ASCII is UTF-8. Checking again would cost as much as the scan.
    unsafe { std::str::from_utf8_unchecked(plain) }
}

fn escape_text(bytes: &[u8], out: &mut String) {
    let plain = plain_prefix(bytes);
    out.push_str(plain);
    let bytes = &bytes[plain.len()..];
    if bytes.is_empty() {
        return;
    }
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        let _ = write!(out, "\\x{b:02x}");
                    }
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
}

fn escape_json(bytes: &[u8], out: &mut String) {
    out.push('"');
    escape_json_content(bytes, out);
    out.push('"');
}

/// A JSON string's content, without its quotes.
fn escape_json_content(bytes: &[u8], out: &mut String) {
    let plain = plain_prefix(bytes);
    out.push_str(plain);
    let bytes = &bytes[plain.len()..];
    if bytes.is_empty() {
        return;
    }
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' || c == '\u{7f}' => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => out.push(c),
            }
        }
        if !chunk.invalid().is_empty() {
            out.push('\u{fffd}');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_escapes_what_would_break_the_line() {
        let mut out = String::new();
        escape_text(b"a\"b\\c\td\x01e\xff\xfe\xc3\xa9", &mut out);
        assert_eq!(out, "a\\\"b\\\\c\\x09d\\x01e\\xff\\xfe\u{e9}");
    }

    /// Any bytes at all: a JSON value that parses back, a TEXT value without a raw newline,
    /// quote or control character.
    #[test]
    fn no_bytes_break_a_value() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let mut inputs: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b, b'a', b]).collect();
        for _ in 0..2_000 {
            let len = rng.random_range(0..40);
            inputs.push((0..len).map(|_| rng.random()).collect());
        }
        for input in inputs {
            let mut json = String::new();
            escape_json(&input, &mut json);
            assert!(serde_json::from_str::<String>(&json).is_ok(), "{input:?} -> {json}");
            let mut text = String::new();
            escape_text(&input, &mut text);
            let unescaped_quote = text.replace("\\\\", "").replace("\\\"", "").contains('"');
            assert!(!unescaped_quote && !text.chars().any(char::is_control), "{input:?} -> {text}");
        }
    }

    #[test]
    fn json_strings_stay_valid() {
        let mut out = String::new();
        escape_json(b"a\"b\\c\n\r\t\x01\xff\xc3\xa9\x7f", &mut out);
        let back: String = serde_json::from_str(&out).unwrap();
        assert_eq!(back, "a\"b\\c\n\r\t\u{1}\u{fffd}\u{e9}\u{7f}");
    }
}
