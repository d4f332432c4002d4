//! Access logs as Istio configures them: the mesh config's `accessLogFile`, `accessLogEncoding`
//! and `accessLogFormat` (Envoy's format strings, `format`), Istio's default TEXT and JSON
//! formats, and the CEL filters of the Telemetry API (`cel`). Parsing only; the proxy writes
//! the lines.

pub mod cel;
pub mod format;
pub mod time;

use crate::mesh::AccessLogEncoding;

/// Istio's default TEXT format (`EnvoyTextLogFormat`, Istio 1.9 onwards).
pub const ISTIO_TEXT_FORMAT: &str = concat!(
    "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" ",
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% ",
    "\"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% ",
    "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" ",
    "\"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER% ",
    "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% ",
    "%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"
);

/// Istio's default JSON format (`EnvoyJSONLogFormatIstio`), keys in the order Envoy prints
/// them (sorted).
pub const ISTIO_JSON_FORMAT: &[(&str, &str)] = &[
    ("authority", "%REQ(:AUTHORITY)%"),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    ("connection_termination_details", "%CONNECTION_TERMINATION_DETAILS%"),
    ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("duration", "%DURATION%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("requested_server_name", "%REQUESTED_SERVER_NAME%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_code_details", "%RESPONSE_CODE_DETAILS%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("route_name", "%ROUTE_NAME%"),
    ("start_time", "%START_TIME%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("upstream_local_address", "%UPSTREAM_LOCAL_ADDRESS%"),
    ("upstream_service_time", "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%"),
    ("upstream_transport_failure_reason", "%UPSTREAM_TRANSPORT_FAILURE_REASON%"),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
];

/// A JSON log's fields: the keys, in order, with their format strings.
pub type JsonFields = Vec<(String, String)>;

/// A TEXT format as Istio uses it: its own default when empty, and a newline added when
/// missing ("Istio will insert a newline on all formats").
pub fn text_format(format: Option<&str>) -> String {
    match format.filter(|f| !f.is_empty()) {
        None => ISTIO_TEXT_FORMAT.to_owned(),
        Some(f) if f.ends_with('\n') => f.to_owned(),
        Some(f) => format!("{f}\n"),
    }
}

/// A JSON format as Istio reads `accessLogFormat` under JSON encoding: a JSON object whose
/// values are format strings; its default when empty. Keys are sorted, as Envoy prints them.
pub fn json_fields(format: Option<&str>) -> Result<JsonFields, String> {
    let Some(text) = format.filter(|f| !f.trim().is_empty()) else {
        return Ok(ISTIO_JSON_FORMAT.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect());
    };
    if text.len() > format::MAX_FORMAT_LEN {
        return Err(format!("the format is {} bytes, more than {}", text.len(), format::MAX_FORMAT_LEN));
    }
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| format!("under JSON encoding, a JSON object of key to format string: {e}"))?;
    let serde_json::Value::Object(object) = value else {
        return Err("under JSON encoding, a JSON object of key to format string".to_owned());
    };
    if object.is_empty() {
        return json_fields(None);
    }
    let mut fields = Vec::with_capacity(object.len());
    for (key, value) in object {
        let serde_json::Value::String(format) = value else {
            return Err(format!(
                "{key:?}: a format string (nested objects and other values are not supported)"
            ));
        };
        fields.push((key, format));
    }
    fields.sort();
    Ok(fields)
}

/// The problem with the mesh config's `accessLogFormat` under `encoding`, if any: every
/// operator must be one Trellis fills.
pub fn check_format(format: Option<&str>, encoding: AccessLogEncoding) -> Result<(), String> {
    match encoding {
        AccessLogEncoding::Text => format::parse(&text_format(format)).map(drop).map_err(|e| e.to_string()),
        AccessLogEncoding::Json => {
            for (key, value) in json_fields(format)? {
                format::parse(&value).map_err(|e| format!("{key:?}: {e}"))?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_defaults_parse() {
        let text = format::parse(ISTIO_TEXT_FORMAT).unwrap();
        assert_eq!(text.operators().count(), 24);
        for (_, value) in ISTIO_JSON_FORMAT {
            assert!(format::parse(value).unwrap().single().is_some(), "{value}");
        }
        let sorted: Vec<_> = ISTIO_JSON_FORMAT.iter().map(|(k, _)| *k).collect();
        assert!(sorted.is_sorted());
    }

    #[test]
    fn text_formats_end_with_a_newline() {
        assert_eq!(text_format(None), ISTIO_TEXT_FORMAT);
        assert_eq!(text_format(Some("")), ISTIO_TEXT_FORMAT);
        assert_eq!(text_format(Some("%DURATION%")), "%DURATION%\n");
        assert_eq!(text_format(Some("%DURATION%\n")), "%DURATION%\n");
    }

    #[test]
    fn json_formats() {
        assert_eq!(json_fields(None).unwrap().len(), ISTIO_JSON_FORMAT.len());
        assert_eq!(json_fields(Some("{}")).unwrap().len(), ISTIO_JSON_FORMAT.len());
        assert_eq!(
            json_fields(Some(r#"{"z": "%DURATION%", "a": "x %PROTOCOL%"}"#)).unwrap(),
            vec![("a".to_owned(), "x %PROTOCOL%".to_owned()), ("z".to_owned(), "%DURATION%".to_owned())]
        );
        assert!(json_fields(Some("[1]")).unwrap_err().contains("JSON object"));
        assert!(json_fields(Some("{")).unwrap_err().contains("JSON object"));
        assert!(json_fields(Some(r#"{"a": {"b": "%DURATION%"}}"#)).unwrap_err().contains("\"a\""));
    }

    #[test]
    fn formats_are_checked_under_their_encoding() {
        assert!(check_format(None, AccessLogEncoding::Text).is_ok());
        assert!(check_format(None, AccessLogEncoding::Json).is_ok());
        let e = check_format(Some("%BOGUS%"), AccessLogEncoding::Text).unwrap_err();
        assert!(e.contains("%BOGUS%"), "{e}");
        let e = check_format(Some(r#"{"d": "%BOGUS%"}"#), AccessLogEncoding::Json).unwrap_err();
        assert!(e.contains("\"d\"") && e.contains("%BOGUS%"), "{e}");
        // A text format under JSON encoding is not an object.
        assert!(check_format(Some("%DURATION%"), AccessLogEncoding::Json).is_err());
    }
    /// Inputs made of the parsers' own pieces: neither parser nor evaluation may panic, and a
    /// parsed START_TIME format renders at any time.
    mod never_panics {
        use proptest::prelude::*;

        use super::super::cel::{Activation, Attribute, Filter, Headers, Value};
        use super::super::format::{Command, Piece, parse};

        struct Request;

        impl Activation for Request {
            fn attribute(&self, attribute: Attribute) -> Option<Value<'_>> {
                match attribute {
                    Attribute::ResponseCode => Some(Value::Int(503)),
                    Attribute::RequestUrlPath => Some(Value::Str("/api".into())),
                    Attribute::RequestDuration => Some(Value::Duration(5)),
                    _ => None,
                }
            }
            fn header(&self, _: Headers, name: &str) -> Option<std::borrow::Cow<'_, str>> {
                (name == "x").then(|| "y".into())
            }
        }

        fn pieces(options: &'static [&'static str]) -> impl Strategy<Value = String> {
            proptest::collection::vec(proptest::sample::select(options), 0..24).prop_map(|p| p.concat())
        }

        proptest! {
            #[test]
            fn formats(text in pieces(&["%", "%%", "REQ", "(", ")", ":", "?", "X-A", ":PATH", "12",
                "START_TIME", "%Y", "%3f", "%s", "RESPONSE_CODE", "a", " ", "\u{e9}", "_"])) {
                if let Ok(format) = parse(&text) {
                    for piece in &format.pieces {
                        if let Piece::Op(op) = piece && let Command::StartTime(Some(f)) = &op.command {
                            let mut out = String::new();
                            f.render(u128::MAX, &mut out);
                        }
                    }
                }
            }

            #[test]
            fn filters(text in pieces(&["response.code", "request.headers", "['x']", ".x", "has(", ")",
                "(", "!", "-", "1", "0", "9223372036854775807", "u", "1.5", "'s'", "==", "<", ">=", "in",
                "[", "]", ",", "&&", "||", "?", ":", "+", "*", "/", "%", "size(", "int(", "duration('1s')",
                ".startsWith('/')", ".matches('a')", "request.duration", "request.url_path", " "])) {
                if let Ok(filter) = Filter::parse(&text) {
                    let _ = filter.matches(&Request);
                }
            }
        }
    }
}
