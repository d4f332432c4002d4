//! Trace context in request headers: W3C `traceparent`/`tracestate` and B3 (the `x-b3-*`
//! headers and the single `b3` header), read from a request and written for the next hop.
//!
//! Reading is strict: a value that is not exactly what its specification allows is ignored as
//! if absent (the proxy then starts a fresh trace), and is never passed on. Parsing works on
//! bytes without allocating, so that hostile headers cost no more than well-formed ones.

use http::header::{HeaderMap, HeaderName, HeaderValue};

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
pub static B3: HeaderName = HeaderName::from_static("b3");
pub static X_B3_TRACEID: HeaderName = HeaderName::from_static("x-b3-traceid");
pub static X_B3_SPANID: HeaderName = HeaderName::from_static("x-b3-spanid");
pub static X_B3_PARENTSPANID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
pub static X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
pub static X_B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// The W3C limit on `tracestate` (32 members of at most 256 bytes would be larger; vendors keep
/// it under 512, and so do we rather than forward an unbounded header).
pub const MAX_TRACESTATE_LEN: usize = 512;

/// The context a request arrived with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Incoming {
    /// The caller's span, when its headers named a valid one.
    pub parent: Option<Parent>,
    /// The caller's sampling decision, when it made one (with or without a span).
    pub sampled: Option<bool>,
    /// B3's debug flag (`x-b3-flags: 1`, `b3: ...-d`): sampled, and passed on.
    pub debug: bool,
    /// The request used the single `b3` header: the next hop gets one too.
    pub single_b3: bool,
    /// Valid `x-b3-*` headers came (ids, or a decision alone): the next hop gets them too.
    pub multi_b3: bool,
    /// The trace headers the request carried, valid or not (they are all replaced).
    pub present: Present,
}

/// The caller's span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parent {
    /// Never zero.
    pub trace_id: u128,
    /// Never zero.
    pub span_id: u64,
    /// The trace id came as 64 bits (B3 allows it): B3 headers carry it on as 64 bits.
    pub short_trace_id: bool,
    /// Read from a valid `traceparent`: its `tracestate` may be passed on.
    pub w3c: bool,
}

/// What a traced request goes on with: the trace, this proxy's span and its parent, and the
/// sampling decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub trace_id: u128,
    pub span_id: u64,
    pub parent_id: Option<u64>,
    pub sampled: bool,
    pub debug: bool,
    pub short_trace_id: bool,
}

impl Outgoing {
    /// This hop's context: the incoming trace continued with span `span_id` as its child, or,
    /// when none came, a new trace (`new_trace` is asked only then).
    pub fn continuing(
        incoming: &Incoming,
        span_id: u64,
        sampled: bool,
        new_trace: impl FnOnce() -> u128,
    ) -> Outgoing {
        let (trace_id, parent_id, short_trace_id) = match incoming.parent {
            Some(p) => (p.trace_id, Some(p.span_id), p.short_trace_id),
            None => (new_trace(), None, false),
        };
        Outgoing { trace_id, span_id, parent_id, sampled, debug: incoming.debug, short_trace_id }
    }
}

/// The formats a hop writes: what came (as Envoy passes on the format it read), or, when
/// nothing valid came, W3C and B3 both, so that an app instrumented for either continues the
/// trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Formats {
    /// `traceparent`, and `tracestate` when a valid one came with a valid `traceparent`.
    pub w3c: bool,
    /// The `x-b3-*` headers.
    pub multi_b3: bool,
    /// The single `b3` header.
    pub single_b3: bool,
}

impl Formats {
    /// Every format: a hop that starts the trace.
    pub const ALL: Formats = Formats { w3c: true, multi_b3: true, single_b3: false };

    pub fn arrived(incoming: &Incoming) -> Formats {
        let formats = Formats {
            w3c: incoming.parent.is_some_and(|p| p.w3c),
            multi_b3: incoming.multi_b3,
            single_b3: incoming.single_b3,
        };
        if formats.w3c || formats.multi_b3 || formats.single_b3 { formats } else { Formats::ALL }
    }
}

/// The trace headers a request carries, found in one pass over its names (the bits are the
/// positions in `NAMES`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Present(u8);

/// Every trace header, in `Present`'s bit order (the `bit` constants).
static NAMES: [&HeaderName; 8] = [
    &TRACEPARENT,
    &TRACESTATE,
    &B3,
    &X_B3_TRACEID,
    &X_B3_SPANID,
    &X_B3_PARENTSPANID,
    &X_B3_SAMPLED,
    &X_B3_FLAGS,
];

/// A trace header's place in `NAMES` and its bit in `Present`.
mod bit {
    pub const TRACEPARENT: usize = 0;
    pub const TRACESTATE: usize = 1;
    pub const B3: usize = 2;
    pub const X_B3_TRACEID: usize = 3;
    pub const X_B3_SPANID: usize = 4;
    pub const X_B3_PARENTSPANID: usize = 5;
    pub const X_B3_SAMPLED: usize = 6;
    pub const X_B3_FLAGS: usize = 7;
}

impl Present {
    pub fn of(headers: &HeaderMap) -> Present {
        let mut bits = 0u8;
        for name in headers.keys() {
            let name = name.as_str().as_bytes();
            // Most names are none of these: the first byte and the length rule them out.
            let bit = match (name.first(), name.len()) {
                (Some(b't'), 11) if name == b"traceparent" => bit::TRACEPARENT,
                (Some(b't'), 10) if name == b"tracestate" => bit::TRACESTATE,
                (Some(b'b'), 2) if name == b"b3" => bit::B3,
                (Some(b'x'), _) if name.starts_with(b"x-b3-") => match &name[5..] {
                    b"traceid" => bit::X_B3_TRACEID,
                    b"spanid" => bit::X_B3_SPANID,
                    b"parentspanid" => bit::X_B3_PARENTSPANID,
                    b"sampled" => bit::X_B3_SAMPLED,
                    b"flags" => bit::X_B3_FLAGS,
                    // Another x-b3- name: not ours to replace.
                    _ => continue,
                },
                _ => continue,
            };
            bits |= 1 << bit;
        }
        Present(bits)
    }

    pub fn any(self) -> bool {
        self.0 != 0
    }

    fn has(self, bit: usize) -> bool {
        self.0 & (1 << bit) != 0
    }
}

impl Incoming {
    /// Reads the request's trace headers: a valid `traceparent` first, then `b3`, then the
    /// `x-b3-*` headers. A sampling decision alone (`b3: 0`, `x-b3-sampled: 1`) counts even
    /// without ids.
    pub fn read(headers: &HeaderMap) -> Incoming {
        Incoming::read_present(headers, Present::of(headers))
    }

    /// As `read`, for a request whose trace headers are known to be `present`: only those are
    /// looked up.
    pub fn read_present(headers: &HeaderMap, present: Present) -> Incoming {
        let mut incoming = Incoming { present, ..Incoming::default() };
        if !present.any() {
            return incoming;
        }
        let get = |bit: usize| if present.has(bit) { headers.get(NAMES[bit]) } else { None };
        // Read once, for the W3C parent and for B3's.
        let b3_trace = get(bit::X_B3_TRACEID).map(|v| b3_trace_id(v.as_bytes()));
        if let Some((mut parent, sampled)) =
            get(bit::TRACEPARENT).and_then(|v| parse_traceparent(v.as_bytes()))
        {
            // A 64-bit B3 trace id beside it (a previous hop wrote both) stays 64-bit in B3.
            parent.short_trace_id =
                b3_trace.flatten().is_some_and(|(id, short)| short && id == parent.trace_id);
            incoming.parent = Some(parent);
            incoming.sampled = Some(sampled);
        }
        if let Some(single) = get(bit::B3).and_then(|v| parse_b3_single(v.as_bytes())) {
            incoming.single_b3 = true;
            if incoming.parent.is_none() {
                incoming.parent = single.parent;
                incoming.sampled = single.sampled;
                incoming.debug = single.debug;
            }
        }
        let multi = present.0 & MULTI_B3 != 0;
        if multi {
            let (parent, sampled, debug) = parse_b3_multi(get, b3_trace);
            // Valid ones came: the next hop gets them, whichever format this hop follows.
            incoming.multi_b3 = parent.is_some() || sampled.is_some() || debug;
            if incoming.parent.is_none() && incoming.sampled.is_none() {
                incoming.parent = parent;
                incoming.sampled = sampled;
                incoming.debug = debug;
            }
        }
        if incoming.debug {
            incoming.sampled = Some(true);
        }
        incoming
    }
}

/// `Present`'s bits of the `x-b3-*` headers.
const MULTI_B3: u8 = 0b1111_1000;

/// `version-traceid-parentid-flags`, lower-case hex. Version 00 is exactly 55 bytes; a later
/// version may append fields after a `-` (read as version 00, as the specification asks);
/// version ff is invalid.
pub fn parse_traceparent(value: &[u8]) -> Option<(Parent, bool)> {
    if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let version = lower_hex(&value[0..2])? as u8;
    if version == 0xff || (version == 0 && value.len() != 55) || (value.len() > 55 && value[55] != b'-') {
        return None;
    }
    let trace_id = lower_hex(&value[3..35])?;
    let span_id = lower_hex(&value[36..52])? as u64;
    let flags = lower_hex(&value[53..55])? as u8;
    if trace_id == 0 || span_id == 0 {
        return None;
    }
    Some((Parent { trace_id, span_id, short_trace_id: false, w3c: true }, flags & 1 == 1))
}

/// A single `b3` header, read.
#[derive(Debug, PartialEq, Eq)]
pub struct SingleB3 {
    pub parent: Option<Parent>,
    pub sampled: Option<bool>,
    pub debug: bool,
}

/// `{trace}-{span}[-{sampling}[-{parent}]]` or `{sampling}` alone; sampling is `0`, `1` or `d`.
pub fn parse_b3_single(value: &[u8]) -> Option<SingleB3> {
    if value.len() == 1 {
        let (sampled, debug) = sampling_state(value)?;
        return Some(SingleB3 { parent: None, sampled: Some(sampled), debug });
    }
    // At most 4 fields; more is malformed.
    let mut fields = value.split(|b| *b == b'-');
    let trace = fields.next()?;
    let span = fields.next()?;
    let state = fields.next();
    let parent_span = fields.next();
    if fields.next().is_some() {
        return None;
    }
    let (trace_id, short_trace_id) = b3_trace_id(trace)?;
    let span_id = b3_span_id(span)?;
    let (sampled, debug) = match state {
        Some(s) => {
            let (sampled, debug) = sampling_state(s)?;
            (Some(sampled), debug)
        }
        None => (None, false),
    };
    if let Some(p) = parent_span {
        b3_span_id(p)?;
    }
    let parent = Parent { trace_id, span_id, short_trace_id, w3c: false };
    Some(SingleB3 { parent: Some(parent), sampled, debug })
}

fn sampling_state(s: &[u8]) -> Option<(bool, bool)> {
    match s {
        b"0" => Some((false, false)),
        b"1" => Some((true, false)),
        b"d" => Some((true, true)),
        _ => None,
    }
}

/// The `x-b3-*` headers: trace and span id together or not at all; `x-b3-sampled` `1`/`0`
/// (and `true`/`false`, which old Zipkin clients send); `x-b3-flags: 1` is debug.
/// `trace`: `x-b3-traceid` when it came, parsed.
fn parse_b3_multi<'h>(
    get: impl Fn(usize) -> Option<&'h HeaderValue>,
    trace: Option<Option<(u128, bool)>>,
) -> (Option<Parent>, Option<bool>, bool) {
    let sampled = get(bit::X_B3_SAMPLED).and_then(|v| match v.as_bytes() {
        b"1" | b"true" => Some(true),
        b"0" | b"false" => Some(false),
        _ => None,
    });
    let debug = get(bit::X_B3_FLAGS).is_some_and(|v| v.as_bytes() == b"1");
    let parent = match (trace, get(bit::X_B3_SPANID)) {
        (Some(trace), Some(span)) => {
            let parent_ok = get(bit::X_B3_PARENTSPANID).is_none_or(|p| b3_span_id(p.as_bytes()).is_some());
            match (trace, b3_span_id(span.as_bytes())) {
                (Some((trace_id, short_trace_id)), Some(span_id)) if parent_ok => {
                    Some(Parent { trace_id, span_id, short_trace_id, w3c: false })
                }
                _ => None,
            }
        }
        _ => None,
    };
    (parent, sampled, debug)
}

/// 16 or 32 hex digits, not all zero; B3 asks for lower case, and upper case is accepted as
/// some clients send it.
fn b3_trace_id(s: &[u8]) -> Option<(u128, bool)> {
    if s.len() != 16 && s.len() != 32 {
        return None;
    }
    let id = any_case_hex(s)?;
    (id != 0).then_some((id, s.len() == 16))
}

fn b3_span_id(s: &[u8]) -> Option<u64> {
    if s.len() != 16 {
        return None;
    }
    let id = any_case_hex(s)? as u64;
    (id != 0).then_some(id)
}

fn lower_hex(s: &[u8]) -> Option<u128> {
    hex(s, false)
}

fn any_case_hex(s: &[u8]) -> Option<u128> {
    hex(s, true)
}

/// Up to 32 hex digits as a number. Every id of every traced request goes through here, so the
/// digits are read from a table, without a branch per character, into two 64-bit halves.
fn hex(s: &[u8], upper_ok: bool) -> Option<u128> {
    if s.is_empty() || s.len() > 32 {
        return None;
    }
    let (high, low) = s.split_at(s.len().saturating_sub(16));
    Some((u128::from(hex64(high, upper_ok)?) << 64) | u128::from(hex64(low, upper_ok)?))
}

/// A hex digit's value; `UPPER` marks `A`-`F`, `NOT_HEX` everything else.
const UPPER: u8 = 0x40;
const NOT_HEX: u8 = 0x80;
const DIGITS: [u8; 256] = {
    let mut table = [NOT_HEX; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        table[b'A' as usize + i] = UPPER | (10 + i as u8);
        i += 1;
    }
    table
};

/// At most 16 hex digits.
fn hex64(s: &[u8], upper_ok: bool) -> Option<u64> {
    let refused = if upper_ok { NOT_HEX } else { NOT_HEX | UPPER };
    let mut n = 0u64;
    let mut bad = 0u8;
    for &b in s {
        let d = DIGITS[usize::from(b)];
        bad |= d & refused;
        n = (n << 4) | u64::from(d & 0xf);
    }
    (bad == 0).then_some(n)
}

/// A `tracestate` worth passing on: bounded, printable ASCII (the W3C list grammar's
/// characters), from a request whose `traceparent` was valid.
pub fn valid_tracestate(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty() && bytes.len() <= MAX_TRACESTATE_LEN && bytes.iter().all(|b| (0x20..0x7f).contains(b))
}

/// Sets the request's trace headers for the next hop, in `formats`; `tracestate` stays when a
/// valid one came beside a valid `traceparent` (`keep_tracestate`). Every other trace header
/// it came with (`present`: malformed values, a stray `x-b3-parentspanid`, a format not
/// written) is removed: nothing goes on unchecked.
pub fn write(
    headers: &mut HeaderMap,
    out: &Outgoing,
    formats: Formats,
    present: Present,
    keep_tracestate: bool,
) {
    // The values, side by side in one buffer that the headers share: one allocation for all
    // of them rather than one each.
    let mut buf = [0u8; VALUES_LEN];
    let mut spans = [None::<(usize, usize)>; 8];
    let mut at = 0;
    if formats.w3c {
        let end = format_traceparent(&mut buf, at, out);
        spans[bit::TRACEPARENT] = Some((at, end));
        at = end;
    }
    if formats.multi_b3 {
        let trace_len = if out.short_trace_id { 16 } else { 32 };
        let parent = out.parent_id.map(|p| (bit::X_B3_PARENTSPANID, u128::from(p), 16));
        for (bit, id, digits) in
            [(bit::X_B3_TRACEID, out.trace_id, trace_len), (bit::X_B3_SPANID, u128::from(out.span_id), 16)]
                .into_iter()
                .chain(parent)
        {
            let end = put_hex_at(&mut buf, at, id, digits);
            spans[bit] = Some((at, end));
            at = end;
        }
    }
    if formats.single_b3 {
        let end = format_single_b3(&mut buf, at, out);
        spans[bit::B3] = Some((at, end));
    }
    let shared = bytes::Bytes::from_owner(buf);
    for (bit, span) in spans.into_iter().enumerate() {
        let value = match bit {
            bit::X_B3_SAMPLED if formats.multi_b3 => {
                Some(HeaderValue::from_static(if out.sampled { "1" } else { "0" }))
            }
            bit::X_B3_FLAGS if formats.multi_b3 && out.debug => Some(HeaderValue::from_static("1")),
            // Hex digits and dashes only: always a valid header value.
            _ => span.and_then(|(from, to)| HeaderValue::from_maybe_shared(shared.slice(from..to)).ok()),
        };
        match value {
            // Replaces what came under the name, in one hashed step.
            Some(value) => {
                headers.insert(NAMES[bit].clone(), value);
            }
            None if !present.has(bit) => {}
            None if bit == bit::TRACESTATE && formats.w3c && keep_tracestate => {
                // The first value, if valid, alone.
                match headers.get(&TRACESTATE).filter(|v| valid_tracestate(v)).cloned() {
                    Some(state) => headers.insert(TRACESTATE.clone(), state),
                    None => headers.remove(&TRACESTATE),
                };
            }
            None => {
                headers.remove(NAMES[bit]);
            }
        }
    }
}

/// Room for every value `write` makes: `traceparent` (55), B3's trace, span and parent ids
/// (32 + 16 + 16) and the single `b3` header (`{32}-{16}-{1}-{16}`, 68).
const VALUES_LEN: usize = 55 + 64 + 68;

/// Writes `traceparent` (`00-{32}-{16}-{2}`) at `at`; returns its end.
pub fn format_traceparent(buf: &mut [u8], at: usize, out: &Outgoing) -> usize {
    buf[at..at + 3].copy_from_slice(b"00-");
    put_hex_at(buf, at + 3, out.trace_id, 32);
    buf[at + 35] = b'-';
    put_hex_at(buf, at + 36, u128::from(out.span_id), 16);
    buf[at + 52] = b'-';
    buf[at + 53] = b'0';
    buf[at + 54] = if out.sampled { b'1' } else { b'0' };
    at + 55
}

/// Writes the single `b3` value at `at`; returns its end.
fn format_single_b3(buf: &mut [u8], at: usize, out: &Outgoing) -> usize {
    let trace_len = if out.short_trace_id { 16 } else { 32 };
    let mut at = put_hex_at(buf, at, out.trace_id, trace_len);
    buf[at] = b'-';
    at = put_hex_at(buf, at + 1, u128::from(out.span_id), 16);
    buf[at] = b'-';
    buf[at + 1] = if out.debug {
        b'd'
    } else if out.sampled {
        b'1'
    } else {
        b'0'
    };
    at += 2;
    if let Some(parent) = out.parent_id {
        buf[at] = b'-';
        at = put_hex_at(buf, at + 1, u128::from(parent), 16);
    }
    at
}

/// Writes the low `digits` (at most 32) lower-case hex digits of `value` at `at`; returns
/// the end.
fn put_hex_at(buf: &mut [u8], at: usize, value: u128, digits: usize) -> usize {
    let digits = digits.min(32);
    let low = hex16(value as u64);
    if digits <= 16 {
        buf[at..at + digits].copy_from_slice(&low[16 - digits..]);
    } else {
        let high_digits = digits - 16;
        buf[at..at + high_digits].copy_from_slice(&hex16((value >> 64) as u64)[16 - high_digits..]);
        buf[at + high_digits..at + digits].copy_from_slice(&low);
    }
    at + digits
}

/// The 16 hex digits of `value`, a byte (two digits) at a time from a table.
fn hex16(value: u64) -> [u8; 16] {
    const PAIRS: [[u8; 2]; 256] = {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut table = [[0u8; 2]; 256];
        let mut i = 0;
        while i < 256 {
            table[i] = [HEX[i >> 4], HEX[i & 0xf]];
            i += 1;
        }
        table
    };
    let mut out = [0u8; 16];
    for (i, byte) in value.to_be_bytes().into_iter().enumerate() {
        let [high, low] = PAIRS[usize::from(byte)];
        out[2 * i] = high;
        out[2 * i + 1] = low;
    }
    out
}

/// Lower-case hex of an id, for the exporters.
pub fn hex_id(value: u128, digits: usize) -> String {
    let mut buf = [0u8; 32];
    put_hex_at(&mut buf, 0, value, digits);
    String::from_utf8_lossy(&buf[..digits]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_read() {
        let (parent, sampled) = parse_traceparent(TP.as_bytes()).unwrap();
        assert_eq!(parent.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(parent.span_id, 0x00f067aa0ba902b7);
        assert!(sampled && parent.w3c);
        let (_, sampled) =
            parse_traceparent(&TP.as_bytes()[..54].iter().chain(b"0").copied().collect::<Vec<_>>()).unwrap();
        assert!(!sampled);
        // A later version may carry more fields.
        let future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra";
        assert!(parse_traceparent(future.as_bytes()).is_some());
    }

    #[test]
    fn malformed_traceparents_are_ignored() {
        let long = format!("{TP}{}", "0".repeat(10_000));
        let cases = [
            "",
            "00",
            "garbage",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-011",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            long.as_str(),
        ];
        for case in cases {
            assert_eq!(parse_traceparent(case.as_bytes()), None, "{case:?}");
        }
        // Not UTF-8, control bytes.
        assert_eq!(parse_traceparent(&[0xff; 55]), None);
        assert_eq!(parse_traceparent(&[0u8; 55]), None);
    }

    #[test]
    fn single_b3_forms() {
        let full =
            parse_b3_single(b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90").unwrap();
        let parent = full.parent.unwrap();
        assert_eq!(parent.trace_id, 0x80f198ee56343ba864fe8b2a57d3eff7);
        assert_eq!(parent.span_id, 0xe457b5a2e4d86bd1);
        assert_eq!(full.sampled, Some(true));
        let short = parse_b3_single(b"64fe8b2a57d3eff7-e457b5a2e4d86bd1").unwrap();
        assert!(short.parent.unwrap().short_trace_id);
        assert_eq!(short.sampled, None);
        let debug = parse_b3_single(b"64fe8b2a57d3eff7-e457b5a2e4d86bd1-d").unwrap();
        assert!(debug.debug && debug.sampled == Some(true));
        assert_eq!(
            parse_b3_single(b"0").unwrap(),
            SingleB3 { parent: None, sampled: Some(false), debug: false }
        );
        for bad in [
            &b""[..],
            b"-",
            b"x",
            b"2",
            b"64fe8b2a57d3eff7",
            b"64fe8b2a57d3eff7-",
            b"64fe8b2a57d3eff7-e457b5a2e4d86bd1-2",
            b"64fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90-x",
            b"64fe8b2a57d3eff-e457b5a2e4d86bd1",
            b"0000000000000000-e457b5a2e4d86bd1",
            b"64fe8b2a57d3eff7-0000000000000000",
            b"64fe8b2a57d3eff7-e457b5a2e4d86bd1-1-0000000000000000",
            b"64fe8b2a57d3eff7-e457b5a2e4d86bd1-1-zz",
            b"64fe8b2a57d3eff7----",
        ] {
            assert_eq!(parse_b3_single(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn multi_b3_needs_both_ids_and_valid_values() {
        let h = headers(&[
            ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-parentspanid", "0020000000000001"),
            ("x-b3-sampled", "1"),
        ]);
        let incoming = Incoming::read(&h);
        assert_eq!(incoming.parent.unwrap().span_id, 0xa2fb4a1d1a96d312);
        assert_eq!(incoming.sampled, Some(true));
        let only_trace =
            headers(&[("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"), ("x-b3-sampled", "0")]);
        let incoming = Incoming::read(&only_trace);
        assert_eq!((incoming.parent, incoming.sampled), (None, Some(false)), "a decision alone counts");
        let bad_parent = headers(&[
            ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-parentspanid", "nope"),
        ]);
        assert_eq!(Incoming::read(&bad_parent).parent, None);
        let debug = headers(&[("x-b3-flags", "1")]);
        assert_eq!(Incoming::read(&debug).sampled, Some(true));
        let junk = headers(&[("x-b3-traceid", "x"), ("x-b3-spanid", "y"), ("x-b3-sampled", "maybe")]);
        let junk = Incoming::read(&junk);
        assert_eq!((junk.parent, junk.sampled, junk.debug, junk.multi_b3), (None, None, false, false));
    }

    #[test]
    fn w3c_wins_over_b3_and_a_bad_one_falls_back() {
        let h = headers(&[("traceparent", TP), ("b3", "64fe8b2a57d3eff7-e457b5a2e4d86bd1-0")]);
        let incoming = Incoming::read(&h);
        assert!(incoming.parent.unwrap().w3c && incoming.single_b3);
        assert_eq!(incoming.sampled, Some(true));
        let h = headers(&[("traceparent", "00-bad"), ("b3", "64fe8b2a57d3eff7-e457b5a2e4d86bd1-0")]);
        let incoming = Incoming::read(&h);
        assert_eq!(incoming.parent.unwrap().span_id, 0xe457b5a2e4d86bd1);
        assert_eq!(incoming.sampled, Some(false));
    }

    #[test]
    fn written_headers_replace_the_incoming_ones() {
        let mut h = headers(&[
            ("traceparent", "00-garbage"),
            ("tracestate", "vendor=1"),
            ("b3", "nonsense"),
            ("x-b3-parentspanid", "stray"),
            ("x-kept", "yes"),
        ]);
        let out = Outgoing {
            trace_id: 0xab,
            span_id: 0xcd,
            parent_id: Some(0xef),
            sampled: true,
            debug: false,
            short_trace_id: false,
        };
        let all = Formats { w3c: true, multi_b3: true, single_b3: true };
        let present = Present::of(&h);
        write(&mut h, &out, all, present, false);
        assert_eq!(h.get("traceparent").unwrap(), "00-000000000000000000000000000000ab-00000000000000cd-01");
        assert_eq!(h.get("x-b3-traceid").unwrap(), "000000000000000000000000000000ab");
        assert_eq!(h.get("x-b3-spanid").unwrap(), "00000000000000cd");
        assert_eq!(h.get("x-b3-parentspanid").unwrap(), "00000000000000ef");
        assert_eq!(h.get("x-b3-sampled").unwrap(), "1");
        assert_eq!(
            h.get("b3").unwrap(),
            "000000000000000000000000000000ab-00000000000000cd-1-00000000000000ef"
        );
        assert!(h.get("tracestate").is_none(), "no valid traceparent came with it");
        assert_eq!(h.get("x-kept").unwrap(), "yes");
        // Each written value reads back as what was written.
        let back = Incoming::read(&h);
        assert_eq!(back.parent.unwrap().span_id, 0xcd);
        assert_eq!(parse_b3_single(h.get("b3").unwrap().as_bytes()).unwrap().parent.unwrap().trace_id, 0xab);
    }

    proptest::proptest! {
        #[test]
        fn hostile_values_never_panic_and_are_never_passed_on(
            name in proptest::sample::select(vec!["traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags"]),
            value in proptest::collection::vec(proptest::num::u8::ANY, 0..80),
        ) {
            let _ = parse_traceparent(&value);
            let _ = parse_b3_single(&value);
            let Ok(value) = HeaderValue::from_bytes(&value) else { return Ok(()) };
            let mut h = HeaderMap::new();
            h.insert(HeaderName::from_static(name), value.clone());
            let incoming = Incoming::read(&h);
            let out = Outgoing::continuing(&incoming, 9, incoming.sampled.unwrap_or(false), || 7);
            write(&mut h, &out, Formats::arrived(&incoming), incoming.present, incoming.parent.is_some_and(|p| p.w3c));
            let back = Incoming::read(&h);
            proptest::prop_assert_eq!(back.parent.map(|p| (p.trace_id, p.span_id)), Some((out.trace_id, 9)));
            // Only a value that parsed survives, as the value this hop wrote.
            if h.get(name) == Some(&value) {
                proptest::prop_assert!(incoming.parent.is_some() || incoming.sampled.is_some());
            }
        }

        #[test]
        fn any_written_context_reads_back(trace in 1u128.., span in 1u64.., parent in proptest::option::of(1u64..), sampled: bool, single: bool) {
            let out = Outgoing { trace_id: trace, span_id: span, parent_id: parent, sampled, debug: false, short_trace_id: false };
            let mut h = HeaderMap::new();
            write(&mut h, &out, Formats { single_b3: single, ..Formats::ALL }, Present::default(), false);
            let back = Incoming::read(&h);
            let p = back.parent.unwrap();
            proptest::prop_assert_eq!((p.trace_id, p.span_id, back.sampled), (trace, span, Some(sampled)));
            if single {
                let b3 = parse_b3_single(h.get("b3").unwrap().as_bytes()).unwrap();
                proptest::prop_assert_eq!(b3.parent.map(|p| (p.trace_id, p.span_id)), Some((trace, span)));
            }
        }
    }

    #[test]
    fn tracestate_is_kept_only_when_valid() {
        let mut h = headers(&[("traceparent", TP), ("tracestate", "congo=t61rcWkgMzE")]);
        let out = Outgoing {
            trace_id: 1,
            span_id: 2,
            parent_id: None,
            sampled: false,
            debug: false,
            short_trace_id: true,
        };
        let present = Present::of(&h);
        write(&mut h, &out, Formats::ALL, present, true);
        assert_eq!(h.get("tracestate").unwrap(), "congo=t61rcWkgMzE");
        assert_eq!(h.get("x-b3-traceid").unwrap(), "0000000000000001", "64-bit ids stay 64-bit in B3");
        assert!(h.get("b3").is_none() && h.get("x-b3-parentspanid").is_none());
        let huge = HeaderValue::from_str(&"a=b,".repeat(200)).unwrap();
        assert!(!valid_tracestate(&huge));
    }

    /// Each hop passes on the formats that came, as Envoy does; a hop that got none (or none
    /// valid) writes W3C and B3 both.
    #[test]
    fn only_the_formats_that_arrived_are_written() {
        const SPAN: &str = "a2fb4a1d1a96d312";
        /// The headers that came, and the trace headers that go on.
        type Case = (&'static [(&'static str, &'static str)], &'static [&'static str]);
        let cases: [Case; 6] = [
            (&[("traceparent", TP), ("tracestate", "a=1")], &["traceparent", "tracestate"]),
            (
                &[("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"), ("x-b3-spanid", SPAN)],
                &["x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled"],
            ),
            (&[("x-b3-sampled", "0")], &["x-b3-traceid", "x-b3-spanid", "x-b3-sampled"]),
            (&[("b3", "64fe8b2a57d3eff7-e457b5a2e4d86bd1-1")], &["b3"]),
            // A stray parent without ids is not a format that came: W3C goes on alone.
            (&[("traceparent", TP), ("x-b3-parentspanid", "nope")], &["traceparent"]),
            (
                &[("traceparent", "00-garbage"), ("b3", "junk")],
                &["traceparent", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled"],
            ),
        ];
        for (came, written) in cases {
            let mut h = headers(came);
            h.insert("x-other", HeaderValue::from_static("kept"));
            let incoming = Incoming::read(&h);
            let out = Outgoing::continuing(&incoming, 6, incoming.sampled.unwrap_or(false), || 5);
            let keep = incoming.parent.is_some_and(|p| p.w3c);
            write(&mut h, &out, Formats::arrived(&incoming), incoming.present, keep);
            let mut names: Vec<&str> = h.keys().map(|n| n.as_str()).filter(|n| *n != "x-other").collect();
            names.sort_unstable();
            let mut want = written.to_vec();
            want.sort_unstable();
            assert_eq!(names, want, "{came:?}");
            assert_eq!(h.get("x-other").unwrap(), "kept");
            assert_eq!(Incoming::read(&h).parent.map(|p| p.span_id), Some(6), "{came:?}");
        }
    }

    proptest::proptest! {
        /// The table-driven hex reads back what is written, at every length, and refuses
        /// upper case where it is not allowed and anything that is not hex.
        #[test]
        fn hex_round_trips(value: u128, digits in 1usize..=32, junk in 0usize..32, byte: u8) {
            let mut buf = [0u8; 32];
            let end = put_hex_at(&mut buf, 0, value, digits);
            let masked = if digits == 32 { value } else { value & ((1u128 << (4 * digits)) - 1) };
            proptest::prop_assert_eq!(hex(&buf[..end], false), Some(masked));
            let upper = buf[..end].to_ascii_uppercase();
            let has_letter = upper.iter().any(u8::is_ascii_alphabetic);
            proptest::prop_assert_eq!(hex(&upper, true), Some(masked));
            proptest::prop_assert_eq!(hex(&upper, false).is_some(), !has_letter);
            let mut bad = buf[..end].to_vec();
            bad[junk % end] = byte;
            proptest::prop_assert_eq!(hex(&bad, true).is_some(), byte.is_ascii_hexdigit());
        }
    }

    #[test]
    fn the_names_present_are_found_in_one_pass() {
        let h = headers(&[
            ("x-b3-sampled", "1"),
            ("tracestate", "a"),
            ("x-b3-other", "1"),
            ("content-type", "x"),
        ]);
        let present = Present::of(&h);
        assert!(present.has(bit::X_B3_SAMPLED) && present.has(bit::TRACESTATE));
        assert!(!present.has(bit::TRACEPARENT) && !present.has(bit::X_B3_FLAGS));
        assert!(!Present::of(&headers(&[("x-b3-other", "1"), ("b", "2")])).any());
    }
}
