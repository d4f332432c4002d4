//! Trace context headers (`trellis_proxy::trace::context`): W3C `traceparent`/`tracestate` and
//! B3 (`b3`, `x-b3-*`), read from every traced request's headers.
//!
//! Input: lines of `name: value` (the request's headers). Properties: nothing panics; a
//! `traceparent` that parses prints back (as version 00) to one that parses the same; after the
//! proxy rewrites the headers for the next hop, every trace header it leaves parses, none is an
//! input value that did not, and reading them back gives the trace, span and decision written;
//! only the formats that came valid are written (both W3C and B3 when none did).
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use trellis_proxy::trace::context::{
    Formats, Incoming, Outgoing, parse_b3_single, parse_traceparent, valid_tracestate, write,
};

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else { continue };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name.trim_ascii()), HeaderValue::from_bytes(value))
        {
            headers.append(name, value);
        }
    }
    if let Some(tp) = headers.get("traceparent")
        && let Some((parent, sampled)) = parse_traceparent(tp.as_bytes())
    {
        let flags = if sampled { "01" } else { "00" };
        let printed = format!("00-{:032x}-{:016x}-{flags}", parent.trace_id, parent.span_id);
        let (again, sampled_again) =
            parse_traceparent(printed.as_bytes()).expect("printed traceparent parses");
        assert_eq!(
            (again.trace_id, again.span_id, sampled_again),
            (parent.trace_id, parent.span_id, sampled)
        );
    }
    let incoming = Incoming::read(&headers);
    let before = headers.clone();
    let out = Outgoing::continuing(&incoming, 0x5678, incoming.sampled.unwrap_or(false), || 0x1234);
    let formats = Formats::arrived(&incoming);
    write(&mut headers, &out, formats, incoming.present, incoming.parent.is_some_and(|p| p.w3c));
    // Exactly one of each written header, each valid; none of a format not written.
    assert_eq!(headers.get_all("traceparent").iter().count(), usize::from(formats.w3c));
    assert_eq!(headers.get_all("x-b3-spanid").iter().count(), usize::from(formats.multi_b3));
    assert_eq!(headers.get_all("b3").iter().count(), usize::from(formats.single_b3));
    if formats.w3c {
        let (parent, sampled) =
            parse_traceparent(headers["traceparent"].as_bytes()).expect("written traceparent");
        assert_eq!((parent.trace_id, parent.span_id, sampled), (out.trace_id, out.span_id, out.sampled));
    }
    if let Some(b3) = headers.get("b3") {
        let single = parse_b3_single(b3.as_bytes()).expect("written b3");
        assert_eq!(single.parent.map(|p| p.span_id), Some(out.span_id));
    }
    if let Some(state) = headers.get("tracestate") {
        assert!(valid_tracestate(state));
        assert!(incoming.parent.is_some_and(|p| p.w3c), "tracestate only beside a valid traceparent");
        assert!(before.get_all("tracestate").iter().any(|v| v == state));
    }
    let back = Incoming::read(&headers);
    let read = back.parent.expect("the written context reads back");
    assert_eq!(
        (read.trace_id, read.span_id, back.sampled),
        (out.trace_id, out.span_id, Some(out.sampled || out.debug))
    );
});
