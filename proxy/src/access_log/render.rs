//! One access log line from what is known of a request or connection (`Facts`): each operator's
//! value, escaped so that no value can break the line. TEXT: `"` and `\` get a backslash,
//! control characters and bytes that are not UTF-8 are written `\xHH`; JSON: a value is a JSON
//! string (escaped as JSON, invalid UTF-8 replaced), or, when the field is one operator, a
//! number or `null` as Envoy types it. Every value is cut to `MAX_VALUE_LEN` bytes (and to
//! an operator's `:N`) before escaping.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use trellis_api::access_log::format::Command;
use trellis_api::access_log::time;

use super::template::{JsonField, JsonValue, Names, Op, Part, RequestAt, Source, Template};

/// A header value, however long, is cut to this many bytes in a line.
pub const MAX_VALUE_LEN: usize = 4096;

/// Everything a line may print about one HTTP request or TCP connection.
pub struct Facts<'a> {
    pub start_unix_nanos: u128,
    /// `HTTP/1.1`, `HTTP/2`; `None` for TCP.
    pub protocol: Option<&'static str>,
    pub request: Option<&'a RequestFacts>,
    pub response_headers: Option<&'a Captured>,
    /// The names of the kept headers, by slot (for a filter's lookups by name).
    pub request_names: &'a Names,
    pub response_names: &'a Names,
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

/// Up to this many header values, the kept ones are found by going over them all once.
const SCAN_UP_TO: usize = 16;

/// What a request or response keeps of its headers for the line: the values of the names the
/// formats read, by slot, and every header when a filter reads them all.
#[derive(Debug, Default)]
pub struct Captured {
    values: Vec<Option<HeaderValue>>,
    all: Option<HeaderMap>,
}

impl Captured {
    pub fn keep(names: &Names, all: bool, headers: &HeaderMap) -> Captured {
        let names = names.as_slice();
        // Slots past the end are absent: nothing is allocated until a header is found.
        let mut values: Vec<Option<HeaderValue>> = Vec::new();
        let mut keep = |slot: usize, value: &HeaderValue| {
            if values.len() <= slot {
                values.reserve_exact(names.len());
                values.resize(slot + 1, None);
            }
            // The first value under a name, as `HeaderMap::get` gives it.
            values[slot].get_or_insert_with(|| value.clone());
        };
        if headers.len() <= SCAN_UP_TO {
            // A request's few headers, each compared with the few names (a length and a few
            // bytes): cheaper than hashing every name for a lookup.
            for (name, value) in headers {
                if let Some(slot) = names.iter().position(|n| n == name) {
                    keep(slot, value);
                }
            }
        } else {
            for (slot, name) in names.iter().enumerate() {
                if let Some(value) = headers.get(name) {
                    keep(slot, value);
                }
            }
        }
        Captured { values, all: all.then(|| headers.clone()) }
    }

    fn at(&self, slot: usize) -> Option<&HeaderValue> {
        self.values.get(slot)?.as_ref()
    }

    /// A header by name (a filter's lookup): from every header when they were all kept, else
    /// from the slots.
    pub fn by_name(&self, name: &str, names: &Names) -> Option<&HeaderValue> {
        match &self.all {
            Some(all) => all.get(name),
            None => self.at(names.find(name)?),
        }
    }
}

/// The request as it came in, kept for its line.
pub struct RequestFacts {
    pub method: http::Method,
    /// The path and query, then the authority: one allocation for both.
    strings: String,
    path_len: usize,
    has_authority: bool,
    pub scheme: &'static str,
    pub headers: Captured,
}

impl RequestFacts {
    /// `authority`: the URI's, else the Host header.
    pub fn new(
        method: http::Method,
        path: &str,
        authority: Option<&str>,
        scheme: &'static str,
        headers: Captured,
    ) -> RequestFacts {
        let mut strings = String::with_capacity(path.len() + authority.map_or(0, str::len));
        strings.push_str(path);
        strings.push_str(authority.unwrap_or_default());
        RequestFacts {
            method,
            strings,
            path_len: path.len(),
            has_authority: authority.is_some(),
            scheme,
            headers,
        }
    }

    /// Path and query.
    pub fn path(&self) -> &str {
        self.strings.get(..self.path_len).unwrap_or_default()
    }

    pub fn authority(&self) -> Option<&str> {
        if self.has_authority { self.strings.get(self.path_len..) } else { None }
    }

    /// A request header by name, pseudo-headers included.
    pub fn header<'s>(&'s self, name: &str, names: &Names) -> Option<&'s [u8]> {
        match name {
            ":method" => Some(self.method.as_str().as_bytes()),
            ":path" => Some(self.path().as_bytes()),
            ":authority" | "host" => self.authority().map(str::as_bytes),
            ":scheme" => Some(self.scheme.as_bytes()),
            _ => self.headers.by_name(name, names).map(HeaderValue::as_bytes),
        }
    }

    fn at(&self, at: RequestAt) -> Option<&[u8]> {
        match at {
            RequestAt::Method => Some(self.method.as_str().as_bytes()),
            RequestAt::Path => Some(self.path().as_bytes()),
            RequestAt::Authority => self.authority().map(str::as_bytes),
            RequestAt::Scheme => Some(self.scheme.as_bytes()),
            RequestAt::Slot(slot) => self.headers.at(slot).map(HeaderValue::as_bytes),
            RequestAt::Nowhere => None,
        }
    }
}

/// A value as an operator yields it. Addresses and times are written straight into the line
/// (they need no escaping), without a string of their own.
enum Value<'a> {
    Absent,
    Number(u64),
    Text(&'a [u8]),
    /// Text the proxy itself made of printable ASCII without `"` or `\\` (protocol, flags,
    /// method): nothing to escape, nothing to scan for.
    Safe(&'static str),
    Address(&'a SocketAddr),
    Ip(std::net::IpAddr),
    /// Nanoseconds since the Unix epoch (64 bits last until 2554).
    Time(Option<&'a trellis_api::access_log::time::TimeFormat>, u64),
}

impl Value<'_> {
    /// Writes a value that needs no escaping; `false` for the others.
    fn write_plain(&self, out: &mut String) -> bool {
        match self {
            Value::Number(n) => write_number(*n, out),
            Value::Address(a) => {
                write_ip(a.ip(), out);
                out.push(':');
                out.push_str(itoa::Buffer::new().format(a.port()));
            }
            Value::Ip(ip) => write_ip(*ip, out),
            Value::Time(None, nanos) => write_default_time(u128::from(*nanos), out),
            Value::Time(Some(format), nanos) => format.render(u128::from(*nanos), out),
            Value::Absent | Value::Text(_) | Value::Safe(_) => return false,
        }
        true
    }
}

/// itoa: the formatter's machinery costs more than the digits.
fn write_number(n: u64, out: &mut String) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// `%START_TIME%` in its default form (`2026-12-07T20:25:10.123Z`): all but the milliseconds
/// change once a second, so the thread keeps them from its last line rather than working out
/// the date for every one.
fn write_default_time(unix_nanos: u128, out: &mut String) {
    thread_local! {
        /// The second, and its rendering up to the milliseconds (`...T20:25:10.`).
        static SECOND: std::cell::RefCell<(u64, String)> =
            const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let (Ok(second), Ok(millis)) =
        (u64::try_from(unix_nanos / 1_000_000_000), u16::try_from(unix_nanos / 1_000_000 % 1000))
    else {
        return time::render_default(unix_nanos, out);
    };
    SECOND.with_borrow_mut(|(cached, prefix)| {
        if *cached != second {
            prefix.clear();
            time::render_default(unix_nanos, prefix);
            // `.mmmZ` off the end: what stays for the whole second.
            prefix.truncate(prefix.len().saturating_sub(4));
            *cached = second;
        }
        out.push_str(prefix);
        for digit in [millis / 100, millis / 10 % 10, millis % 10] {
            out.push(char::from(b'0' + digit as u8));
        }
        out.push('Z');
    });
}

/// An address as `Display` writes it (IPv6 without brackets, as Envoy's `_WITHOUT_PORT`
/// forms), IPv4 from a table of the octets' digits: every line has several, and the formatter
/// is slow.
fn write_ip(ip: std::net::IpAddr, out: &mut String) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut buf = [0u8; 15];
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                let [n, digits @ ..] = OCTETS[usize::from(octet)];
                let n = usize::from(n);
                buf[len..len + n].copy_from_slice(&digits[..n]);
                len += n;
            }
            // Digits and dots: ASCII, one char each.
            out.extend(buf[..len].iter().map(|&b| char::from(b)));
        }
        std::net::IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// Each octet's decimal digits: their count, then the digits.
const OCTETS: [[u8; 4]; 256] = {
    let mut table = [[0u8; 4]; 256];
    let mut i = 0;
    while i < 256 {
        let (h, t, u) = ((i / 100) as u8, (i / 10 % 10) as u8, (i % 10) as u8);
        table[i] = if i >= 100 {
            [3, b'0' + h, b'0' + t, b'0' + u]
        } else if i >= 10 {
            [2, b'0' + t, b'0' + u, 0]
        } else {
            [1, b'0' + u, 0, 0]
        };
        i += 1;
    }
    table
};

fn text(s: &str) -> Value<'_> {
    Value::Text(s.as_bytes())
}

fn optional(s: Option<&str>) -> Value<'_> {
    s.filter(|s| !s.is_empty()).map_or(Value::Absent, text)
}

fn address(a: &Option<SocketAddr>) -> Value<'_> {
    a.as_ref().map_or(Value::Absent, Value::Address)
}

fn millis(d: Duration) -> Value<'static> {
    Value::Number(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Facts<'_> {
    fn value<'s>(&'s self, source: &'s Source) -> Value<'s> {
        match source {
            Source::Request { first: RequestAt::Method, .. } => {
                self.request.map_or(Value::Absent, |r| method(&r.method))
            }
            Source::Request { first, alternative, strip_query } => {
                let Some(request) = self.request else { return Value::Absent };
                let Some(v) = request.at(*first).or_else(|| alternative.and_then(|alt| request.at(alt)))
                else {
                    return Value::Absent;
                };
                if *strip_query {
                    Value::Text(v.split(|b| *b == b'?').next().unwrap_or_default())
                } else {
                    Value::Text(v)
                }
            }
            Source::Response { first, alternative } => {
                let Some(headers) = self.response_headers else { return Value::Absent };
                first
                    .and_then(|slot| headers.at(slot))
                    .or_else(|| alternative.and_then(|slot| headers.at(slot)))
                    .map_or(Value::Absent, |v| Value::Text(v.as_bytes()))
            }
            Source::UpstreamServiceTime(slot) => {
                // A peer Envoy's own measure when it sent one; else ours, for answers that came
                // from upstream.
                let theirs = slot.and_then(|slot| self.response_headers?.at(slot));
                match (theirs, self.upstream_host, self.response_duration) {
                    (Some(v), _, _) => Value::Text(v.as_bytes()),
                    (None, Some(_), Some(d)) if self.details == "via_upstream" => millis(d),
                    _ => Value::Absent,
                }
            }
            Source::Fact(command) => self.fact(command),
        }
    }

    fn fact<'s>(&'s self, command: &'s Command) -> Value<'s> {
        match command {
            Command::StartTime(format) => {
                Value::Time(format.as_ref(), u64::try_from(self.start_unix_nanos).unwrap_or(u64::MAX))
            }
            // Compiled to `Source`s of their own.
            Command::Req(_)
            | Command::ReqWithoutQuery(_)
            | Command::Resp(_)
            | Command::UpstreamServiceTime => Value::Absent,
            Command::ResponseCode => Value::Number(u64::from(self.code)),
            Command::ResponseCodeDetails => optional(Some(self.details)),
            // Envoy's letters, or `-`.
            Command::ResponseFlags => Value::Safe(self.flags),
            Command::Duration => millis(self.duration),
            Command::ResponseDuration => self.response_duration.map_or(Value::Absent, millis),
            Command::ResponseTxDuration => {
                self.response_duration.map_or(Value::Absent, |r| millis(self.duration.saturating_sub(r)))
            }
            Command::BytesReceived => Value::Number(self.bytes_received),
            Command::BytesSent => Value::Number(self.bytes_sent),
            Command::Protocol => self.protocol.map_or(Value::Absent, Value::Safe),
            Command::UpstreamHost => address(&self.upstream_host),
            Command::UpstreamCluster | Command::UpstreamClusterRaw => optional(self.upstream_cluster),
            Command::UpstreamLocalAddress => address(&self.upstream_local),
            Command::UpstreamTransportFailureReason => optional(self.upstream_failure),
            Command::DownstreamRemoteAddress => Value::Address(&self.downstream_remote),
            Command::DownstreamRemoteAddressWithoutPort => Value::Ip(self.downstream_remote.ip()),
            Command::DownstreamRemotePort => Value::Number(u64::from(self.downstream_remote.port())),
            Command::DownstreamLocalAddress => Value::Address(&self.downstream_local),
            Command::DownstreamLocalAddressWithoutPort => Value::Ip(self.downstream_local.ip()),
            Command::DownstreamLocalPort => Value::Number(u64::from(self.downstream_local.port())),
            Command::DownstreamPeerUriSan => optional(self.peer_uri_san),
            Command::RequestedServerName => optional(self.requested_server_name),
            Command::RouteName => optional(self.route_name),
            Command::ConnectionTerminationDetails => optional(self.termination_details),
            Command::GrpcStatus => optional(Some(self.grpc_status)),
            Command::Hostname => optional(Some(hostname())),
        }
    }
}

/// A method's name: a token (RFC 9110), so nothing to escape. Extension methods are not
/// `'static`: they go through the escaping as any text does.
fn method(method: &http::Method) -> Value<'_> {
    use http::Method as M;
    let name = match *method {
        M::GET => "GET",
        M::POST => "POST",
        M::PUT => "PUT",
        M::DELETE => "DELETE",
        M::HEAD => "HEAD",
        M::OPTIONS => "OPTIONS",
        M::PATCH => "PATCH",
        M::CONNECT => "CONNECT",
        M::TRACE => "TRACE",
        _ => return Value::Text(method.as_str().as_bytes()),
    };
    Value::Safe(name)
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

/// The value's bytes cut to the operator's length (and the line's cap).
fn cut<'v>(bytes: &'v [u8], op: &Op) -> &'v [u8] {
    &bytes[..bytes.len().min(op.max_len)]
}

/// ASCII text cut as `cut` does.
fn cut_str<'v>(text: &'v str, op: &Op) -> &'v str {
    text.get(..text.len().min(op.max_len)).unwrap_or(text)
}

/// Appends one TEXT line.
pub fn text_line(template: &Template, facts: &Facts<'_>, out: &mut String) {
    for part in &template.parts {
        match part {
            Part::Text(t) => out.push_str(t),
            Part::Op(op) => match facts.value(&op.source) {
                Value::Absent => out.push('-'),
                Value::Text(bytes) => escape_text(cut(bytes, op), out),
                Value::Safe(text) => out.push_str(cut_str(text, op)),
                plain => {
                    plain.write_plain(out);
                }
            },
        }
    }
}

/// Appends one JSON line: `{"key":value,...}` and a newline.
pub fn json_line(fields: &[JsonField], facts: &Facts<'_>, out: &mut String) {
    if fields.is_empty() {
        out.push('{');
    }
    for field in fields {
        // `{"key":` or `,"key":`
        out.push_str(&field.key);
        let parts = match &field.value {
            JsonValue::Single(op) => {
                match facts.value(&op.source) {
                    Value::Absent => out.push_str("null"),
                    Value::Number(n) => write_number(n, out),
                    Value::Text(bytes) => escape_json(cut(bytes, op), out),
                    Value::Safe(text) => {
                        out.push('"');
                        out.push_str(cut_str(text, op));
                        out.push('"');
                    }
                    plain => {
                        out.push('"');
                        plain.write_plain(out);
                        out.push('"');
                    }
                }
                continue;
            }
            JsonValue::Mixed(parts) => parts,
        };
        // Text and operators together: one string, `-` for what is absent.
        out.push('"');
        for part in parts {
            match part {
                Part::Text(escaped) => out.push_str(escaped),
                Part::Op(op) => match facts.value(&op.source) {
                    Value::Absent => out.push('-'),
                    Value::Text(bytes) => escape_json_content(cut(bytes, op), out),
                    Value::Safe(text) => out.push_str(cut_str(text, op)),
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
/// encodings copy as it is. Almost every value is all of it, so it is found eight bytes at a
/// time (as memchr searches) and goes over in one copy.
fn plain_prefix(bytes: &[u8]) -> &str {
    let end = plain_len(bytes);
    let plain = &bytes[..end];
    // SAFETY: every byte of `plain` is printable ASCII (`plain_len` admits nothing else), and
    // ASCII is UTF-8. Checking again would cost as much as the scan.
    unsafe { std::str::from_utf8_unchecked(plain) }
}

const PLAIN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0x20;
    while b < 0x7f {
        table[b] = b != b'"' as usize && b != b'\\' as usize;
        b += 1;
    }
    table
};

fn plain_len(bytes: &[u8]) -> usize {
    let mut at = 0;
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let Ok(word) = <[u8; 8]>::try_from(word) else { break };
        if !is_plain(u64::from_ne_bytes(word)) {
            return at + first_special(&bytes[at..]);
        }
        at += 8;
    }
    // The tail: its last eight bytes as one word (overlapping what was already seen), when the
    // value has eight.
    if at < bytes.len()
        && let Some(last) = bytes.len().checked_sub(8)
        && let Ok(word) = <[u8; 8]>::try_from(&bytes[last..])
        && is_plain(u64::from_ne_bytes(word))
    {
        return bytes.len();
    }
    at + first_special(&bytes[at..])
}

/// Whether all eight bytes of `w` are plain. The classic bit tricks: `below(w, n)` is non-zero
/// when some byte is below `n` (n <= 0x80), exact for "is there one" (which is all that is
/// asked: the byte is then found one at a time).
#[inline]
fn is_plain(w: u64) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let below = |w: u64, n: u8| w.wrapping_sub(ONES * u64::from(n)) & !w & HIGH;
    let zero = |w: u64| below(w, 1);
    let special = below(w, 0x20)
        | (w & HIGH)
        | zero(w ^ (ONES * u64::from(b'"')))
        | zero(w ^ (ONES * u64::from(b'\\')))
        | zero(w ^ (ONES * 0x7f));
    special == 0
}

/// Where the first byte that is not plain is, one byte at a time (`bytes.len()` if none).
fn first_special(bytes: &[u8]) -> usize {
    bytes.iter().position(|&b| !PLAIN[usize::from(b)]).unwrap_or(bytes.len())
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
pub(super) fn escape_json_content(bytes: &[u8], out: &mut String) {
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
    use http::HeaderName;

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

    /// The word-at-a-time scan stops where the byte-at-a-time one would, for every byte at
    /// every position of a word and in the tail.
    #[test]
    fn the_word_scan_finds_the_first_byte_to_escape() {
        let naive = |bytes: &[u8]| bytes.iter().position(|&b| !PLAIN[usize::from(b)]).unwrap_or(bytes.len());
        for len in 0..20 {
            for at in 0..len {
                for special in 0..=255u8 {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = special;
                    assert_eq!(plain_len(&bytes), naive(&bytes), "{special:#x} at {at} of {len}");
                }
            }
        }
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
        for _ in 0..5_000 {
            let len = rng.random_range(0..64);
            let bytes: Vec<u8> = (0..len).map(|_| rng.random_range(0x1e..0x82)).collect();
            assert_eq!(plain_len(&bytes), naive(&bytes), "{bytes:?}");
        }
    }

    /// The time kept for the second renders what rendering from scratch would, across seconds,
    /// and back in time (a line from a request that started earlier).
    #[test]
    fn the_cached_second_renders_as_from_scratch() {
        let base: u128 = 1_796_680_000_123_456_789;
        for nanos in [
            base,
            base + 1,
            base + 876_543_211,
            base + 876_543_210,
            base - 1_000_000_000,
            base + 86_400_000_000_000,
            0,
            999_999_999,
            1_000_000_000,
        ] {
            let (mut cached, mut fresh) = (String::new(), String::new());
            write_default_time(nanos, &mut cached);
            time::render_default(nanos, &mut fresh);
            assert_eq!(cached, fresh, "{nanos}");
        }
    }

    #[test]
    fn addresses_print_as_display_prints_them() {
        let mut addresses: Vec<std::net::IpAddr> =
            (0..=255u8).map(|o| std::net::Ipv4Addr::new(o, 255 - o, o / 3, 10).into()).collect();
        addresses.push(std::net::Ipv6Addr::LOCALHOST.into());
        addresses.push("2001:db8::1:0:0:1".parse().unwrap());
        for ip in addresses {
            let mut out = String::new();
            write_ip(ip, &mut out);
            assert_eq!(out, ip.to_string());
        }
    }

    #[test]
    fn kept_headers_fill_their_slots_and_nothing_else() {
        let mut names = super::super::template::Names::default();
        for name in ["x-a", "x-b", "x-c"] {
            names.slot(name);
        }
        let mut headers = HeaderMap::new();
        headers.insert("x-b", HeaderValue::from_static("b"));
        headers.insert("x-other", HeaderValue::from_static("o"));
        headers.append("x-b", HeaderValue::from_static("second"));
        let kept = Captured::keep(&names, false, &headers);
        let at = |slot| kept.at(slot).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!((at(0), at(1), at(2)), (None, Some("b".into()), None), "the first value");
        // Past the scan's limit, the names are looked up: the same slots.
        let mut many = headers.clone();
        for i in 0..SCAN_UP_TO {
            many.insert(
                HeaderName::from_bytes(format!("x-pad-{i}").as_bytes()).unwrap(),
                HeaderValue::from_static("p"),
            );
        }
        many.insert("x-c", HeaderValue::from_static("c"));
        let kept_many = Captured::keep(&names, false, &many);
        let at_many = |slot| kept_many.at(slot).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!((at_many(0), at_many(1), at_many(2)), (None, Some("b".into()), Some("c".into())));
        assert_eq!(kept.by_name("x-b", &names).unwrap(), "b");
        assert!(kept.by_name("x-other", &names).is_none(), "not kept");
        let all = Captured::keep(&names, true, &headers);
        assert_eq!(all.by_name("x-other", &names).unwrap(), "o", "a filter that reads them all");
        assert!(
            Captured::keep(&names, false, &HeaderMap::new()).values.capacity() == 0,
            "nothing found, nothing allocated"
        );
    }

    #[test]
    fn json_strings_stay_valid() {
        let mut out = String::new();
        escape_json(b"a\"b\\c\n\r\t\x01\xff\xc3\xa9\x7f", &mut out);
        let back: String = serde_json::from_str(&out).unwrap();
        assert_eq!(back, "a\"b\\c\n\r\t\u{1}\u{fffd}\u{e9}\u{7f}");
    }
}
