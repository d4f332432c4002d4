//! Formats compiled once per configuration for the request path. A header operator points at
//! a slot of the headers kept for the line (no name is parsed, hashed or compared per line),
//! and a JSON line's keys and literal text are escaped here, once, rather than on every line.

use http::HeaderName;
use trellis_api::access_log::format::{Command, Format, HeaderRef, Piece};

use super::render::{MAX_VALUE_LEN, escape_json_content};

/// The header names some line reads, each at its slot (its index): what a request or
/// response keeps of its headers for the line, in this order.
#[derive(Debug, Default)]
pub struct Names(Vec<HeaderName>);

impl Names {
    /// The slot of `name`, added if new; `None` for what is not a header name (no request
    /// carries it, so the value is always absent).
    pub fn slot(&mut self, name: &str) -> Option<usize> {
        let header = HeaderName::from_bytes(name.as_bytes()).ok()?;
        Some(match self.0.iter().position(|n| *n == header) {
            Some(i) => i,
            None => {
                self.0.push(header);
                self.0.len() - 1
            }
        })
    }

    pub fn as_slice(&self) -> &[HeaderName] {
        &self.0
    }

    /// The slot of a name already known (a filter's lookup by name).
    pub fn find(&self, name: &str) -> Option<usize> {
        self.0.iter().position(|n| n == name)
    }
}

/// Where a request header operator finds its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestAt {
    Method,
    Path,
    /// `:authority` and `host`: the URI's authority, else the Host header.
    Authority,
    Scheme,
    Slot(usize),
    /// Not a header name: never present.
    Nowhere,
}

impl RequestAt {
    fn of(name: &str, names: &mut Names) -> RequestAt {
        match name {
            ":method" => RequestAt::Method,
            ":path" => RequestAt::Path,
            ":authority" | "host" => RequestAt::Authority,
            ":scheme" => RequestAt::Scheme,
            _ => names.slot(name).map_or(RequestAt::Nowhere, RequestAt::Slot),
        }
    }
}

/// What an operator prints.
#[derive(Debug)]
pub enum Source {
    /// `%REQ(A?B)%`, `%REQ_WITHOUT_QUERY(A?B)%` (`strip_query`).
    Request { first: RequestAt, alternative: Option<RequestAt>, strip_query: bool },
    /// `%RESP(A?B)%`: slots of the response's kept headers.
    Response { first: Option<usize>, alternative: Option<usize> },
    /// `%UPSTREAM_SERVICE_TIME%`: the slot of `x-envoy-upstream-service-time`.
    UpstreamServiceTime(Option<usize>),
    /// Everything that is not a header.
    Fact(Command),
}

/// An operator, compiled: its source, and the length its value is cut to (the operator's `:N`
/// and the line's cap).
#[derive(Debug)]
pub struct Op {
    pub source: Source,
    pub max_len: usize,
}

#[derive(Debug)]
pub enum Part {
    /// Literal text: as written in TEXT lines, escaped as JSON string content in JSON lines.
    Text(Box<str>),
    Op(Op),
}

/// A TEXT line's format.
#[derive(Debug)]
pub struct Template {
    pub parts: Vec<Part>,
}

/// One key of a JSON line.
#[derive(Debug)]
pub struct JsonField {
    /// `{"key":` for the first field, `,"key":` for the others: escaped, with what comes
    /// before it.
    pub key: Box<str>,
    pub value: JsonValue,
}

#[derive(Debug)]
pub enum JsonValue {
    /// The format is one operator: the value keeps its type (number, string, `null`).
    Single(Op),
    /// Text and operators: one string.
    Mixed(Vec<Part>),
}

/// The header names a log's formats read, collected while compiling them.
#[derive(Debug, Default)]
pub struct Registry {
    pub request: Names,
    pub response: Names,
}

impl Registry {
    fn op(&mut self, op: &trellis_api::access_log::format::Operator) -> Op {
        let request = |h: &HeaderRef, strip_query: bool, names: &mut Names| Source::Request {
            first: RequestAt::of(&h.name, names),
            alternative: h.alternative.as_deref().map(|alt| RequestAt::of(alt, names)),
            strip_query,
        };
        let source = match &op.command {
            Command::Req(h) => request(h, false, &mut self.request),
            Command::ReqWithoutQuery(h) => request(h, true, &mut self.request),
            Command::Resp(h) => Source::Response {
                first: self.response.slot(&h.name),
                alternative: h.alternative.as_deref().and_then(|alt| self.response.slot(alt)),
            },
            Command::UpstreamServiceTime => {
                Source::UpstreamServiceTime(self.response.slot("x-envoy-upstream-service-time"))
            }
            other => Source::Fact(other.clone()),
        };
        Op { source, max_len: op.max_len.unwrap_or(usize::MAX).min(MAX_VALUE_LEN) }
    }

    fn parts(&mut self, format: &Format, json: bool) -> Vec<Part> {
        format
            .pieces
            .iter()
            .map(|piece| match piece {
                Piece::Text(t) if json => {
                    let mut escaped = String::with_capacity(t.len());
                    escape_json_content(t.as_bytes(), &mut escaped);
                    Part::Text(escaped.into())
                }
                Piece::Text(t) => Part::Text(t.as_str().into()),
                Piece::Op(op) => Part::Op(self.op(op)),
            })
            .collect()
    }

    pub fn text(&mut self, format: &Format) -> Template {
        Template { parts: self.parts(format, false) }
    }

    pub fn json(&mut self, fields: &[(String, Format)]) -> Vec<JsonField> {
        fields
            .iter()
            .enumerate()
            .map(|(i, (key, format))| {
                let mut escaped = String::with_capacity(key.len() + 4);
                escaped.push(if i == 0 { '{' } else { ',' });
                escaped.push('"');
                escape_json_content(key.as_bytes(), &mut escaped);
                escaped.push_str("\":");
                let value = match format.single() {
                    Some(op) => JsonValue::Single(self.op(op)),
                    None => JsonValue::Mixed(self.parts(format, true)),
                };
                JsonField { key: escaped.into(), value }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_api::access_log::format::parse;

    #[test]
    fn header_operators_point_at_shared_slots_and_pseudo_headers() {
        let mut registry = Registry::default();
        let t = registry.text(
            &parse("%REQ(X-A?:PATH)% %REQ(x-a)% %REQ(HOST)% %RESP(X-C)% %UPSTREAM_SERVICE_TIME%").unwrap(),
        );
        let sources: Vec<String> = t
            .parts
            .iter()
            .filter_map(|p| match p {
                Part::Op(op) => Some(format!("{:?}", op.source)),
                Part::Text(_) => None,
            })
            .collect();
        assert_eq!(
            sources,
            [
                "Request { first: Slot(0), alternative: Some(Path), strip_query: false }",
                "Request { first: Slot(0), alternative: None, strip_query: false }",
                "Request { first: Authority, alternative: None, strip_query: false }",
                "Response { first: Some(0), alternative: None }",
                "UpstreamServiceTime(Some(1))",
            ]
        );
        assert_eq!(registry.request.as_slice(), ["x-a"]);
        assert_eq!(registry.response.as_slice(), ["x-c", "x-envoy-upstream-service-time"]);
    }

    #[test]
    fn json_keys_and_text_are_escaped_once_when_compiled() {
        let mut registry = Registry::default();
        let fields = registry.json(&[
            ("a\"b".to_owned(), parse("%PROTOCOL%").unwrap()),
            ("c".to_owned(), parse("x\"y %PROTOCOL%").unwrap()),
        ]);
        assert_eq!(&*fields[0].key, "{\"a\\\"b\":");
        assert_eq!(&*fields[1].key, ",\"c\":");
        let JsonValue::Mixed(parts) = &fields[1].value else { panic!("text and an operator: mixed") };
        assert!(matches!(&parts[0], Part::Text(t) if &**t == "x\\\"y "));
    }
}
