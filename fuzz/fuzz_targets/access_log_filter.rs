//! Access log filters: the CEL subset of the Telemetry API's `accessLogging.filter.expression`
//! (trellis_api::access_log::cel), parsed and evaluated against a fixed request.
//!
//! Properties: nothing panics or overflows the stack, in parsing or in evaluation; evaluation
//! is deterministic.
#![no_main]

use std::borrow::Cow;

use libfuzzer_sys::fuzz_target;
use trellis_api::access_log::cel::{Activation, Attribute, Filter, Headers, Value};

struct Request;

impl Activation for Request {
    fn attribute(&self, attribute: Attribute) -> Option<Value<'_>> {
        Some(match attribute {
            Attribute::ResponseCode => Value::Int(503),
            Attribute::ConnectionMtls => Value::Bool(true),
            Attribute::RequestUrlPath | Attribute::RequestPath => Value::Str("/api/items".into()),
            Attribute::RequestMethod => Value::Str("GET".into()),
            Attribute::RequestDuration => Value::Duration(1_500_000),
            Attribute::DestinationPort => Value::Int(9080),
            Attribute::ResponseSize => Value::Int(12),
            _ => return None,
        })
    }

    fn header(&self, which: Headers, name: &str) -> Option<Cow<'_, str>> {
        match (which, name) {
            (Headers::Request, "x-debug") => Some("true".into()),
            (Headers::Response, "content-type") => Some("text/plain".into()),
            _ => None,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(filter) = Filter::parse(text) {
        let first = filter.matches(&Request);
        assert_eq!(first, filter.matches(&Request));
        let _ = filter.evaluate(&Request);
    }
});
