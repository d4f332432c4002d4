//! Envoy's access log format strings, as Istio users write them in the mesh config's
//! `accessLogFormat`: literal text with command operators (`%RESPONSE_CODE%`,
//! `%REQ(X-REQUEST-ID)%`, `%REQ(X-ENVOY-ORIGINAL-PATH?:PATH):64%`, `%START_TIME(%s.%3f)%`).
//!
//! The grammar is Envoy's: an operator is `%NAME%`, `%NAME(ARGS)%` or `%NAME(ARGS):N%`, where
//! `NAME` is upper case letters, digits and `_`, `ARGS` runs to the first `)` and `N` caps the
//! value's length; `%%` is a literal `%`. Every operator Envoy has but Trellis does not fill is
//! an error (never a silent `-`), and so is every name Envoy does not have.

use std::fmt;

use super::time::TimeFormat;

/// The longest format accepted: the mesh config's whole ConfigMap is capped at 1 MiB, a format
/// far shorter.
pub const MAX_FORMAT_LEN: usize = 64 << 10;

/// A parsed format string: text and operators in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Format {
    pub pieces: Vec<Piece>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Op(Operator),
}

/// A command operator and the length its value is cut to (`:N`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operator {
    pub command: Command,
    pub max_len: Option<usize>,
}

/// What an operator prints. Values that are absent print `-` in text (and `null` in JSON).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// When the request (or connection) started, UTC: RFC 3339 with milliseconds, or the
    /// strftime-like format given.
    StartTime(Option<TimeFormat>),
    /// A request header (`:method`, `:path`, `:authority`, `:scheme` are the pseudo-headers),
    /// or the alternative when the first is absent.
    Req(HeaderRef),
    /// As `Req`, with the query string cut off (Istio's `REQ_WITHOUT_QUERY` formatter).
    ReqWithoutQuery(HeaderRef),
    /// A response header.
    Resp(HeaderRef),
    ResponseCode,
    /// Why the response is what it is (`via_upstream`, `route_not_found`,
    /// `rbac_access_denied_matched_policy[ns[NS]-policy[NAME]-rule[N]]`, ...).
    ResponseCodeDetails,
    ResponseFlags,
    /// Whole request (or connection), in milliseconds.
    Duration,
    /// Until the response's first byte (its headers), in milliseconds.
    ResponseDuration,
    /// From the response's first byte to its last, in milliseconds.
    ResponseTxDuration,
    BytesReceived,
    BytesSent,
    /// `HTTP/1.1`, `HTTP/2`; `-` for TCP.
    Protocol,
    UpstreamHost,
    /// Istio's cluster name (`outbound|9080||reviews.default.svc.cluster.local`).
    UpstreamCluster,
    UpstreamClusterRaw,
    UpstreamLocalAddress,
    UpstreamTransportFailureReason,
    /// `X-ENVOY-UPSTREAM-SERVICE-TIME` as Envoy sets it: how long the upstream took to answer,
    /// in milliseconds (also `%UPSTREAM_SERVICE_TIME%`).
    UpstreamServiceTime,
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    DownstreamRemotePort,
    DownstreamLocalAddress,
    DownstreamLocalAddressWithoutPort,
    DownstreamLocalPort,
    /// The verified SPIFFE ID of a mutual TLS peer.
    DownstreamPeerUriSan,
    /// The SNI the downstream TLS client sent.
    RequestedServerName,
    RouteName,
    ConnectionTerminationDetails,
    GrpcStatus,
    Hostname,
}

/// A header name (lower case) and its alternative.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderRef {
    pub name: String,
    pub alternative: Option<String>,
}

/// What is wrong with a format string: the operator as written, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatError {
    /// The operator (or the text from the `%` that starts no operator), at most 64 characters.
    pub operator: String,
    pub message: String,
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.operator, self.message)
    }
}

impl std::error::Error for FormatError {}

/// Envoy operators Trellis does not fill: an error that says so, rather than "unknown".
const NOT_SUPPORTED: &[&str] = &[
    "TRAILER",
    "DYNAMIC_METADATA",
    "CLUSTER_METADATA",
    "UPSTREAM_METADATA",
    "FILTER_STATE",
    "UPSTREAM_FILTER_STATE",
    "REQUEST_DURATION",
    "REQUEST_TX_DURATION",
    "UPSTREAM_REQUEST_ATTEMPT_COUNT",
    "RESPONSE_FLAGS_LONG",
    "REQUEST_HEADERS_BYTES",
    "RESPONSE_HEADERS_BYTES",
    "RESPONSE_TRAILERS_BYTES",
    "UPSTREAM_WIRE_BYTES_SENT",
    "UPSTREAM_WIRE_BYTES_RECEIVED",
    "DOWNSTREAM_WIRE_BYTES_SENT",
    "DOWNSTREAM_WIRE_BYTES_RECEIVED",
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS",
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT",
    "DOWNSTREAM_LOCAL_URI_SAN",
    "DOWNSTREAM_PEER_SUBJECT",
    "DOWNSTREAM_LOCAL_SUBJECT",
    "DOWNSTREAM_TLS_VERSION",
    "DOWNSTREAM_TLS_CIPHER",
    "DOWNSTREAM_TLS_SESSION_ID",
    "DOWNSTREAM_PEER_FINGERPRINT_256",
    "DOWNSTREAM_PEER_SERIAL",
    "DOWNSTREAM_PEER_ISSUER",
    "DOWNSTREAM_PEER_CERT",
    "UPSTREAM_PEER_URI_SAN",
    "UPSTREAM_LOCAL_URI_SAN",
    "UPSTREAM_TLS_VERSION",
    "CONNECTION_ID",
    "UPSTREAM_CONNECTION_ID",
    "STREAM_ID",
    "LOCAL_REPLY_BODY",
    "VIRTUAL_CLUSTER_NAME",
    "CEL",
    "METADATA",
    "ENVIRONMENT",
    "UPSTREAM_REMOTE_ADDRESS",
    "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
    "UPSTREAM_REMOTE_PORT",
    "UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
    "UPSTREAM_LOCAL_PORT",
    "GRPC_STATUS_NUMBER",
    "TRACE_ID",
    "ACCESS_LOG_TYPE",
    "DOWNSTREAM_HANDSHAKE_DURATION",
    "UNIQUE_ID",
    "REQUEST_HEADERS",
    "RESPONSE_HEADERS",
];

/// Parses a format string. Errors name the first operator that is wrong.
pub fn parse(text: &str) -> Result<Format, FormatError> {
    if text.len() > MAX_FORMAT_LEN {
        return Err(FormatError {
            operator: String::new(),
            message: format!("the format is {} bytes, more than {MAX_FORMAT_LEN}", text.len()),
        });
    }
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('%') {
        literal.push_str(&rest[..at]);
        rest = &rest[at..];
        if let Some(after) = rest.strip_prefix("%%") {
            literal.push('%');
            rest = after;
            continue;
        }
        let (operator, len) = operator_at(rest)?;
        if !literal.is_empty() {
            pieces.push(Piece::Text(std::mem::take(&mut literal)));
        }
        pieces.push(Piece::Op(operator));
        rest = &rest[len..];
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        pieces.push(Piece::Text(literal));
    }
    Ok(Format { pieces })
}

/// The operator `text` starts with (at its `%`), and how many bytes it takes.
fn operator_at(text: &str) -> Result<(Operator, usize), FormatError> {
    let bytes = text.as_bytes();
    let name_len =
        bytes[1..].iter().take_while(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || **b == b'_').count();
    let name = &text[1..1 + name_len];
    let mut at = 1 + name_len;
    let shown = |end: usize| clip(prefix(text, end));
    let fail = |end: usize, message: String| FormatError { operator: shown(end), message };
    if name.is_empty() {
        return Err(fail(
            text.len().min(16),
            "a % starts no command operator (write %% for a literal %)".to_owned(),
        ));
    }
    let mut args = None;
    if bytes.get(at) == Some(&b'(') {
        let Some(close) = text[at..].find(')') else {
            return Err(fail(text.len(), "the operator's ( is not closed".to_owned()));
        };
        args = Some(&text[at + 1..at + close]);
        at += close + 1;
    }
    let mut max_len = None;
    if bytes.get(at) == Some(&b':') {
        let digits = bytes[at + 1..].iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return Err(fail(at + 1, "a length (:N) must be a number".to_owned()));
        }
        let n = text[at + 1..at + 1 + digits]
            .parse::<usize>()
            .map_err(|_| fail(at + 1 + digits, "the length is too large".to_owned()))?;
        max_len = Some(n);
        at += 1 + digits;
    }
    if bytes.get(at) != Some(&b'%') {
        return Err(fail(at + 1, "the operator is not closed with %".to_owned()));
    }
    at += 1;
    let written = &text[..at];
    let error = |message: String| FormatError { operator: clip(written), message };
    let command = command(name, args).map_err(error)?;
    if max_len.is_some()
        && !matches!(command, Command::Req(_) | Command::ReqWithoutQuery(_) | Command::Resp(_))
    {
        return Err(error("only REQ, RESP and REQ_WITHOUT_QUERY take a length (:N)".to_owned()));
    }
    Ok((Operator { command, max_len }, at))
}

fn command(name: &str, args: Option<&str>) -> Result<Command, String> {
    let no_args = |command: Command| match args {
        None => Ok(command),
        Some(_) => Err(format!("{name} takes no argument")),
    };
    match name {
        "START_TIME" => match args {
            None => Ok(Command::StartTime(None)),
            Some(spec) => TimeFormat::parse(spec).map(|f| Command::StartTime(Some(f))),
        },
        "REQ" => header_ref(name, args).map(Command::Req),
        "REQ_WITHOUT_QUERY" => header_ref(name, args).map(Command::ReqWithoutQuery),
        "RESP" => {
            let header = header_ref(name, args)?;
            // Envoy's own header, which Trellis's proxies do not add: its value is measured.
            if header.name == "x-envoy-upstream-service-time" && header.alternative.is_none() {
                return Ok(Command::UpstreamServiceTime);
            }
            Ok(Command::Resp(header))
        }
        "RESPONSE_CODE" => no_args(Command::ResponseCode),
        "RESPONSE_CODE_DETAILS" => no_args(Command::ResponseCodeDetails),
        "RESPONSE_FLAGS" => no_args(Command::ResponseFlags),
        "DURATION" => no_args(Command::Duration),
        "RESPONSE_DURATION" => no_args(Command::ResponseDuration),
        "RESPONSE_TX_DURATION" => no_args(Command::ResponseTxDuration),
        "BYTES_RECEIVED" => no_args(Command::BytesReceived),
        "BYTES_SENT" => no_args(Command::BytesSent),
        "PROTOCOL" => no_args(Command::Protocol),
        "UPSTREAM_HOST" => no_args(Command::UpstreamHost),
        "UPSTREAM_CLUSTER" => no_args(Command::UpstreamCluster),
        "UPSTREAM_CLUSTER_RAW" => no_args(Command::UpstreamClusterRaw),
        "UPSTREAM_LOCAL_ADDRESS" => no_args(Command::UpstreamLocalAddress),
        "UPSTREAM_TRANSPORT_FAILURE_REASON" => no_args(Command::UpstreamTransportFailureReason),
        "UPSTREAM_SERVICE_TIME" => no_args(Command::UpstreamServiceTime),
        "DOWNSTREAM_REMOTE_ADDRESS" => no_args(Command::DownstreamRemoteAddress),
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => no_args(Command::DownstreamRemoteAddressWithoutPort),
        "DOWNSTREAM_REMOTE_PORT" => no_args(Command::DownstreamRemotePort),
        "DOWNSTREAM_LOCAL_ADDRESS" => no_args(Command::DownstreamLocalAddress),
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => no_args(Command::DownstreamLocalAddressWithoutPort),
        "DOWNSTREAM_LOCAL_PORT" => no_args(Command::DownstreamLocalPort),
        "DOWNSTREAM_PEER_URI_SAN" => no_args(Command::DownstreamPeerUriSan),
        "REQUESTED_SERVER_NAME" => no_args(Command::RequestedServerName),
        "ROUTE_NAME" => no_args(Command::RouteName),
        "CONNECTION_TERMINATION_DETAILS" => no_args(Command::ConnectionTerminationDetails),
        "GRPC_STATUS" => no_args(Command::GrpcStatus),
        "HOSTNAME" => no_args(Command::Hostname),
        _ if NOT_SUPPORTED.contains(&name) => {
            Err(format!("{name} is an Envoy operator Trellis does not support"))
        }
        _ => Err(format!("{name} is not a command operator")),
    }
}

/// `X` or `X?Y`: header names, lower-cased (pseudo-headers keep their `:`).
fn header_ref(name: &str, args: Option<&str>) -> Result<HeaderRef, String> {
    let Some(args) = args else {
        return Err(format!("{name} needs a header name: {name}(X) or {name}(X?Y)"));
    };
    let (first, alternative) = match args.split_once('?') {
        Some((a, b)) => (a, Some(b)),
        None => (args, None),
    };
    Ok(HeaderRef { name: header_name(first)?, alternative: alternative.map(header_name).transpose()? })
}

fn header_name(text: &str) -> Result<String, String> {
    let bare = text.strip_prefix(':').unwrap_or(text);
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$&'*+-.^_`|~".contains(&b);
    if bare.is_empty() || !bare.bytes().all(token) {
        return Err(format!("{:?} is not a header name", clip(text)));
    }
    Ok(text.to_ascii_lowercase())
}

/// The first `end` bytes of `text`, or fewer, to end on a character.
fn prefix(text: &str, end: usize) -> &str {
    let mut end = end.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// At most 64 characters of what the user wrote, for an error message.
fn clip(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_owned(),
    }
}

impl Format {
    /// Whether any operator reads the response (headers, code, details): TCP lines have none.
    pub fn operators(&self) -> impl Iterator<Item = &Operator> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Op(op) => Some(op),
            Piece::Text(_) => None,
        })
    }

    /// The format is one operator and nothing else (a JSON value that keeps its type).
    pub fn single(&self) -> Option<&Operator> {
        match self.pieces.as_slice() {
            [Piece::Op(op)] => Some(op),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(command: Command) -> Piece {
        Piece::Op(Operator { command, max_len: None })
    }

    #[test]
    fn operators_and_text_in_order() {
        let f =
            parse("[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH):10%\" %%\n").unwrap();
        assert_eq!(
            f.pieces,
            vec![
                Piece::Text("[".into()),
                op(Command::StartTime(None)),
                Piece::Text("] \"".into()),
                op(Command::Req(HeaderRef { name: ":method".into(), alternative: None })),
                Piece::Text(" ".into()),
                Piece::Op(Operator {
                    command: Command::Req(HeaderRef {
                        name: "x-envoy-original-path".into(),
                        alternative: Some(":path".into())
                    }),
                    max_len: Some(10)
                }),
                Piece::Text("\" %\n".into()),
            ]
        );
    }

    #[test]
    fn upstream_service_time_is_measured() {
        assert_eq!(
            parse("%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%").unwrap().pieces,
            vec![op(Command::UpstreamServiceTime)]
        );
        assert_eq!(parse("%UPSTREAM_SERVICE_TIME%").unwrap().pieces, vec![op(Command::UpstreamServiceTime)]);
    }

    #[test]
    fn start_time_takes_a_format_with_percent_signs() {
        let f = parse("%START_TIME(%Y/%m/%dT%H:%M:%S.%3f%z)% x").unwrap();
        assert!(matches!(&f.pieces[0], Piece::Op(Operator { command: Command::StartTime(Some(_)), .. })));
        assert_eq!(f.pieces[1], Piece::Text(" x".into()));
    }

    #[test]
    fn bad_operators_are_named() {
        for (text, operator, message) in [
            ("a %NOPE% b", "%NOPE%", "not a command operator"),
            ("%DYNAMIC_METADATA(a:b)%", "%DYNAMIC_METADATA(a:b)%", "does not support"),
            ("%REQ%", "%REQ%", "needs a header name"),
            ("%REQ()%", "%REQ()%", "not a header name"),
            ("%REQ(a b)%", "%REQ(a b)%", "not a header name"),
            ("%REQ(X", "%REQ(X", "not closed"),
            ("%RESPONSE_CODE", "%RESPONSE_CODE", "not closed with %"),
            ("%RESPONSE_CODE(x)%", "%RESPONSE_CODE(x)%", "takes no argument"),
            ("%DURATION:3%", "%DURATION:3%", "take a length"),
            ("%REQ(A):x%", "%REQ(A):", "must be a number"),
            ("100% sure", "% sure", "starts no command operator"),
            ("%START_TIME(%Q)%", "%START_TIME(%Q)%", "%Q"),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.operator, operator, "{text}");
            assert!(e.message.contains(message), "{text}: {e}");
        }
    }

    #[test]
    fn hostile_formats_fail_cleanly() {
        assert!(parse(&"%".repeat(MAX_FORMAT_LEN + 1)).unwrap_err().message.contains("more than"));
        assert!(parse("%\u{e9}%").is_err());
        assert!(parse("%REQ(\u{e9})%").is_err());
        assert!(parse("%REQ(A):99999999999999999999999%").unwrap_err().message.contains("too large"));
        let long = format!("%{}%", "A".repeat(500));
        assert!(parse(&long).unwrap_err().operator.len() < 80);
        // Literal text of any kind is kept as it is.
        assert_eq!(parse("\u{e9}\n\"").unwrap().pieces, vec![Piece::Text("\u{e9}\n\"".into())]);
    }
}
