//! The subset of CEL (the Common Expression Language) that Istio users write in an access log
//! filter (`Telemetry.accessLogging[].filter.expression`, Envoy's `ExpressionFilter`):
//!
//! - literals: `true`, `false`, `null`, integers (`400`, `0x1F`, `-1`), unsigned (`7u`), doubles
//!   (`1.5`, `2e3`), strings in single or double quotes with `\n \t \r \\ \' \" \xHH \uHHHH`
//!   escapes, raw strings (`r'...'`), lists (`[200, 204]`);
//! - operators: `!`, unary `-`, `* / %`, `+ -` (integers, doubles, string concatenation), `== != <
//!   <= > >=`, `in` (list membership, header presence), `&&`, `||` (both with CEL's rule that
//!   `true || error` is `true`), `c ? a : b`, parentheses;
//! - functions: `has(request.headers.name)` (and `has(x.y)` of any attribute), `size(x)`,
//!   `int(x)`, `uint(x)`, `double(x)`, `string(x)`, `duration('1s')`, `matches(s, re)`; methods
//!   `s.startsWith(p)`, `s.endsWith(p)`, `s.contains(p)`, `s.matches(re)`, `s.size()`. A regular
//!   expression must be a literal (compiled once, RE2 syntax).
//! - attributes (Envoy's names): `request.{path, url_path, host, scheme, method, headers,
//!   referer, useragent, id, protocol, query, size, duration}`, `response.{code, code_details,
//!   grpc_status, headers, size}`, `connection.{mtls,
//!   requested_server_name, termination_details, uri_san_peer_certificate}`, `source.{address,
//!   port}`, `destination.{address, port}`, `upstream.{address, port}`, `xds.{cluster_name,
//!   route_name}`. Headers are read with `request.headers['x-debug']` (or `.name` for names
//!   that are identifiers); names are matched case-insensitively, as HTTP's are.
//!
//! Anything outside the subset is a parse error naming the part. Evaluation follows CEL: an
//! attribute or header that is absent is an error, and a filter whose value is an error, or not
//! a boolean, writes no line (as Envoy's filter).

use std::borrow::Cow;
use std::fmt;

/// The longest filter expression accepted.
pub const MAX_EXPRESSION_LEN: usize = 16 << 10;
/// How deeply expressions may nest (parentheses, operators, calls): hostile input must not
/// exhaust the stack.
const MAX_DEPTH: usize = 48;
/// How many operators one expression may have: evaluation recurses through them.
const MAX_OPERATORS: usize = 512;

/// A parsed filter.
#[derive(Clone, Debug)]
pub struct Filter {
    expr: Expr,
}

/// An attribute of the request, response or connection, by Envoy's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Attribute {
    RequestPath,
    RequestUrlPath,
    RequestHost,
    RequestScheme,
    RequestMethod,
    RequestHeaders,
    RequestReferer,
    RequestUserAgent,
    RequestId,
    RequestProtocol,
    RequestQuery,
    RequestSize,
    RequestDuration,
    ResponseCode,
    ResponseCodeDetails,
    ResponseGrpcStatus,
    ResponseHeaders,
    ResponseSize,
    ConnectionMtls,
    ConnectionRequestedServerName,
    ConnectionTerminationDetails,
    ConnectionUriSanPeerCertificate,
    SourceAddress,
    SourcePort,
    DestinationAddress,
    DestinationPort,
    UpstreamAddress,
    UpstreamPort,
    XdsClusterName,
    XdsRouteName,
}

const ATTRIBUTES: &[(&str, &str, Attribute)] = &[
    ("request", "path", Attribute::RequestPath),
    ("request", "url_path", Attribute::RequestUrlPath),
    ("request", "host", Attribute::RequestHost),
    ("request", "scheme", Attribute::RequestScheme),
    ("request", "method", Attribute::RequestMethod),
    ("request", "headers", Attribute::RequestHeaders),
    ("request", "referer", Attribute::RequestReferer),
    ("request", "useragent", Attribute::RequestUserAgent),
    ("request", "id", Attribute::RequestId),
    ("request", "protocol", Attribute::RequestProtocol),
    ("request", "query", Attribute::RequestQuery),
    ("request", "size", Attribute::RequestSize),
    ("request", "duration", Attribute::RequestDuration),
    ("response", "code", Attribute::ResponseCode),
    ("response", "code_details", Attribute::ResponseCodeDetails),
    ("response", "grpc_status", Attribute::ResponseGrpcStatus),
    ("response", "headers", Attribute::ResponseHeaders),
    ("response", "size", Attribute::ResponseSize),
    ("connection", "mtls", Attribute::ConnectionMtls),
    ("connection", "requested_server_name", Attribute::ConnectionRequestedServerName),
    ("connection", "termination_details", Attribute::ConnectionTerminationDetails),
    ("connection", "uri_san_peer_certificate", Attribute::ConnectionUriSanPeerCertificate),
    ("source", "address", Attribute::SourceAddress),
    ("source", "port", Attribute::SourcePort),
    ("destination", "address", Attribute::DestinationAddress),
    ("destination", "port", Attribute::DestinationPort),
    ("upstream", "address", Attribute::UpstreamAddress),
    ("upstream", "port", Attribute::UpstreamPort),
    ("xds", "cluster_name", Attribute::XdsClusterName),
    ("xds", "route_name", Attribute::XdsRouteName),
];

/// Which headers a map value stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Headers {
    Request,
    Response,
}

/// A value during evaluation.
#[derive(Clone, Debug, PartialEq)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Double(f64),
    Str(Cow<'a, str>),
    /// Nanoseconds.
    Duration(i128),
    List(Vec<Value<'a>>),
    /// A header map, read through the activation.
    Headers(Headers),
}

/// What a filter reads: the attributes of one request or connection.
pub trait Activation {
    /// The attribute's value; `None` when it is absent (a TCP connection has no response code).
    /// `RequestHeaders` and `ResponseHeaders` are asked through `header`.
    fn attribute(&self, attribute: Attribute) -> Option<Value<'_>>;
    /// A header's value (`name` in lower case), or `None`.
    fn header(&self, which: Headers, name: &str) -> Option<Cow<'_, str>>;
}

/// Why an expression is outside the subset, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CelError {
    /// Byte offset in the expression.
    pub at: usize,
    pub message: String,
}

impl fmt::Display for CelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at offset {}: {}", self.at, self.message)
    }
}

impl std::error::Error for CelError {}

#[derive(Clone, Debug)]
enum Expr {
    Literal(Value<'static>),
    Attribute(Attribute),
    /// A header of the map attribute, by a name known when parsed (`request.headers.x`,
    /// `request.headers['x']`).
    Header(Headers, String),
    Index(Box<Expr>, Box<Expr>),
    List(Vec<Expr>),
    Not(Box<Expr>),
    Negate(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Conditional(Box<Expr>, Box<Expr>, Box<Expr>),
    Binary(BinaryOp, Box<Expr>, Box<Expr>),
    /// `has(...)` of an attribute, or of a header.
    HasAttribute(Attribute),
    HasHeader(Headers, String),
    Call(Function, Vec<Expr>),
    Matches(Box<Expr>, Box<regex::Regex>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BinaryOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Function {
    Size,
    Int,
    Uint,
    Double,
    String,
    Duration,
    StartsWith,
    EndsWith,
    Contains,
}

impl Filter {
    /// Parses an expression of the subset.
    pub fn parse(text: &str) -> Result<Filter, CelError> {
        if text.len() > MAX_EXPRESSION_LEN {
            return Err(CelError {
                at: 0,
                message: format!("the expression is {} bytes, more than {MAX_EXPRESSION_LEN}", text.len()),
            });
        }
        let tokens = lex(text)?;
        let mut parser = Parser { tokens, at: 0, depth: 0, operators: 0, end: text.len() };
        let expr = parser.expression()?;
        if let Some(token) = parser.tokens.get(parser.at) {
            return Err(CelError { at: token.at, message: format!("unexpected {}", token.kind) });
        }
        Ok(Filter { expr })
    }

    /// Whether the line is written: the expression is `true`. An error, or a value that is not
    /// a boolean, is `false`.
    pub fn matches(&self, activation: &dyn Activation) -> bool {
        matches!(eval(&self.expr, activation), Ok(Value::Bool(true)))
    }

    /// The expression's value, or why it has none (tests and `trellis` diagnostics).
    pub fn evaluate<'a>(&self, activation: &'a dyn Activation) -> Result<Value<'a>, String> {
        eval(&self.expr, activation)
    }

    /// Whether the expression reads any attribute of the response (HTTP only).
    pub fn reads(&self, attribute: Attribute) -> bool {
        fn walk(e: &Expr, a: Attribute) -> bool {
            match e {
                Expr::Attribute(x) | Expr::HasAttribute(x) => *x == a,
                Expr::Header(h, _) | Expr::HasHeader(h, _) => {
                    a == if *h == Headers::Request {
                        Attribute::RequestHeaders
                    } else {
                        Attribute::ResponseHeaders
                    }
                }
                Expr::Literal(_) => false,
                Expr::Index(x, y) | Expr::And(x, y) | Expr::Or(x, y) | Expr::Binary(_, x, y) => {
                    walk(x, a) || walk(y, a)
                }
                Expr::List(xs) | Expr::Call(_, xs) => xs.iter().any(|x| walk(x, a)),
                Expr::Not(x) | Expr::Negate(x) | Expr::Matches(x, _) => walk(x, a),
                Expr::Conditional(x, y, z) => walk(x, a) || walk(y, a) || walk(z, a),
            }
        }
        walk(&self.expr, attribute)
    }
}

// ---------------------------------------------------------------------------------------------
// Lexing

#[derive(Clone, Debug, PartialEq)]
enum Kind {
    Ident(String),
    Int(i64),
    Uint(u64),
    Double(f64),
    Str(String),
    Punct(&'static str),
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Ident(s) => write!(f, "{s:?}"),
            Kind::Int(n) => write!(f, "{n}"),
            Kind::Uint(n) => write!(f, "{n}u"),
            Kind::Double(n) => write!(f, "{n}"),
            Kind::Str(s) => write!(f, "string {:?}", clip(s)),
            Kind::Punct(p) => write!(f, "{p:?}"),
        }
    }
}

#[derive(Clone, Debug)]
struct Token {
    kind: Kind,
    at: usize,
}

const PUNCTUATION: &[&str] = &[
    "==", "!=", "<=", ">=", "&&", "||", "<", ">", "!", "(", ")", "[", "]", ".", ",", "?", ":", "+", "-", "*",
    "/", "%",
];

fn lex(text: &str) -> Result<Vec<Token>, CelError> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        let fail = |message: String| CelError { at: start, message };
        if c.is_ascii_alphabetic() || c == b'_' {
            let len = bytes[i..].iter().take_while(|b| b.is_ascii_alphanumeric() || **b == b'_').count();
            let word = &text[i..i + len];
            i += len;
            // Raw strings: r'...' or R"..."
            if (word == "r" || word == "R") && matches!(bytes.get(i), Some(b'\'' | b'"')) {
                let (s, used) = string(&text[i..], true).map_err(|m| CelError { at: i, message: m })?;
                tokens.push(Token { kind: Kind::Str(s), at: start });
                i += used;
                continue;
            }
            tokens.push(Token { kind: Kind::Ident(word.to_owned()), at: start });
            continue;
        }
        if c.is_ascii_digit() || (c == b'.' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            let (kind, used) = number(&text[i..]).map_err(fail)?;
            tokens.push(Token { kind, at: start });
            i += used;
            continue;
        }
        if c == b'\'' || c == b'"' {
            let (s, used) = string(&text[i..], false).map_err(fail)?;
            tokens.push(Token { kind: Kind::Str(s), at: start });
            i += used;
            continue;
        }
        let Some(p) = PUNCTUATION.iter().find(|p| text[i..].starts_with(**p)) else {
            let ch = text[i..].chars().next().unwrap_or('?');
            return Err(fail(format!("{ch:?} is not part of the supported CEL subset")));
        };
        tokens.push(Token { kind: Kind::Punct(p), at: start });
        i += p.len();
    }
    Ok(tokens)
}

fn number(text: &str) -> Result<(Kind, usize), String> {
    let bytes = text.as_bytes();
    if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        let len = hex.bytes().take_while(u8::is_ascii_hexdigit).count();
        let digits = &hex[..len];
        let unsigned = matches!(hex.as_bytes().get(len), Some(b'u' | b'U'));
        let used = 2 + len + usize::from(unsigned);
        return if unsigned {
            u64::from_str_radix(digits, 16)
                .map(|n| (Kind::Uint(n), used))
                .map_err(|_| format!("0x{digits} is not a uint"))
        } else {
            i64::from_str_radix(digits, 16)
                .map(|n| (Kind::Int(n), used))
                .map_err(|_| format!("0x{digits} is not an int"))
        };
    }
    let mut len = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    let mut double = false;
    if bytes.get(len) == Some(&b'.') && bytes.get(len + 1).is_some_and(u8::is_ascii_digit) {
        double = true;
        len += 1 + bytes[len + 1..].iter().take_while(|b| b.is_ascii_digit()).count();
    }
    if matches!(bytes.get(len), Some(b'e' | b'E')) {
        let mut at = len + 1;
        if matches!(bytes.get(at), Some(b'+' | b'-')) {
            at += 1;
        }
        let digits = bytes[at.min(bytes.len())..].iter().take_while(|b| b.is_ascii_digit()).count();
        if digits > 0 {
            double = true;
            len = at + digits;
        }
    }
    let literal = &text[..len];
    if double {
        return literal
            .parse::<f64>()
            .map(|n| (Kind::Double(n), len))
            .map_err(|_| format!("{literal} is not a double"));
    }
    if matches!(bytes.get(len), Some(b'u' | b'U')) {
        return literal
            .parse::<u64>()
            .map(|n| (Kind::Uint(n), len + 1))
            .map_err(|_| format!("{literal}u is not a uint"));
    }
    // A negative literal's minus is an operator; i64::MIN's magnitude is read as an int only
    // behind that minus, which `Negate` folds.
    match literal.parse::<i64>() {
        Ok(n) => Ok((Kind::Int(n), len)),
        Err(_) if literal == "9223372036854775808" => Ok((Kind::Uint(1 << 63), len)),
        Err(_) => Err(format!("{} is not an int", clip(literal))),
    }
}

/// A quoted string at the start of `text`: its value and the bytes it takes.
fn string(text: &str, raw: bool) -> Result<(String, usize), String> {
    let quote = text.chars().next().ok_or("a string is not closed")?;
    let mut out = String::new();
    let mut chars = text.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            _ if c == quote => return Ok((out, i + 1)),
            '\n' | '\r' => return Err("a string is not closed on its line".to_owned()),
            '\\' if !raw => {
                let Some((_, e)) = chars.next() else { break };
                match e {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    '\\' | '\'' | '"' | '`' | '?' => out.push(e),
                    'x' | 'u' | 'U' => {
                        let n = match e {
                            'x' => 2,
                            'u' => 4,
                            _ => 8,
                        };
                        let mut code = 0u32;
                        for _ in 0..n {
                            let digit = chars
                                .next()
                                .and_then(|(_, d)| d.to_digit(16))
                                .ok_or("a \\x/\\u escape needs hex digits")?;
                            code = code * 16 + digit;
                        }
                        out.push(
                            char::from_u32(code)
                                .ok_or_else(|| format!("\\{e}{code:x} is not a character"))?,
                        );
                    }
                    other => return Err(format!("\\{other} is not an escape of the supported CEL subset")),
                }
            }
            _ => out.push(c),
        }
    }
    Err("a string is not closed".to_owned())
}

// ---------------------------------------------------------------------------------------------
// Parsing

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    depth: usize,
    operators: usize,
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Kind> {
        self.tokens.get(self.at).map(|t| &t.kind)
    }

    fn offset(&self) -> usize {
        self.tokens.get(self.at).map_or(self.end, |t| t.at)
    }

    fn fail<T>(&self, message: impl Into<String>) -> Result<T, CelError> {
        Err(CelError { at: self.offset(), message: message.into() })
    }

    fn eat(&mut self, punct: &str) -> bool {
        if matches!(self.peek(), Some(Kind::Punct(p)) if *p == punct) {
            self.at += 1;
            return true;
        }
        false
    }

    fn expect(&mut self, punct: &str) -> Result<(), CelError> {
        if self.eat(punct) {
            return Ok(());
        }
        match self.peek() {
            Some(kind) => self.fail(format!("expected {punct:?}, found {kind}")),
            None => self.fail(format!("expected {punct:?} at the end")),
        }
    }

    fn nested<T>(&mut self, f: impl FnOnce(&mut Parser) -> Result<T, CelError>) -> Result<T, CelError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.fail(format!("nested more than {MAX_DEPTH} deep"));
        }
        let result = f(self);
        self.depth -= 1;
        result
    }

    /// Counts one more operator node.
    fn operator(&mut self) -> Result<(), CelError> {
        self.operators += 1;
        if self.operators > MAX_OPERATORS {
            return self.fail(format!("more than {MAX_OPERATORS} operators"));
        }
        Ok(())
    }

    fn expression(&mut self) -> Result<Expr, CelError> {
        self.nested(|p| {
            let condition = p.or()?;
            if !p.eat("?") {
                return Ok(condition);
            }
            let then = p.or()?;
            p.expect(":")?;
            let otherwise = p.expression()?;
            Ok(Expr::Conditional(Box::new(condition), Box::new(then), Box::new(otherwise)))
        })
    }

    fn or(&mut self) -> Result<Expr, CelError> {
        let mut left = self.and()?;
        while self.eat("||") {
            self.operator()?;
            let right = self.and()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, CelError> {
        let mut left = self.relation()?;
        while self.eat("&&") {
            self.operator()?;
            let right = self.relation()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn relation(&mut self) -> Result<Expr, CelError> {
        let left = self.additive()?;
        let op = match self.peek() {
            Some(Kind::Punct("==")) => BinaryOp::Eq,
            Some(Kind::Punct("!=")) => BinaryOp::Ne,
            Some(Kind::Punct("<")) => BinaryOp::Lt,
            Some(Kind::Punct("<=")) => BinaryOp::Le,
            Some(Kind::Punct(">")) => BinaryOp::Gt,
            Some(Kind::Punct(">=")) => BinaryOp::Ge,
            Some(Kind::Ident(w)) if w == "in" => BinaryOp::In,
            _ => return Ok(left),
        };
        self.at += 1;
        self.operator()?;
        let right = self.additive()?;
        if matches!(self.peek(), Some(Kind::Punct("==" | "!=" | "<" | "<=" | ">" | ">="))) {
            return self.fail("comparisons do not chain: add parentheses");
        }
        // `'x-debug' in request.headers`: a header's presence, by a name known now.
        if op == BinaryOp::In
            && let (Expr::Literal(Value::Str(name)), Expr::Attribute(a)) = (&left, &right)
            && let Some(which) = headers_of(*a)
        {
            return Ok(Expr::HasHeader(which, name.to_ascii_lowercase()));
        }
        Ok(Expr::Binary(op, Box::new(left), Box::new(right)))
    }

    fn additive(&mut self) -> Result<Expr, CelError> {
        let mut left = self.multiplicative()?;
        loop {
            let op = match self.peek() {
                Some(Kind::Punct("+")) => BinaryOp::Add,
                Some(Kind::Punct("-")) => BinaryOp::Sub,
                _ => return Ok(left),
            };
            self.at += 1;
            self.operator()?;
            let right = self.multiplicative()?;
            left = Expr::Binary(op, Box::new(left), Box::new(right));
        }
    }

    fn multiplicative(&mut self) -> Result<Expr, CelError> {
        let mut left = self.unary()?;
        loop {
            let op = match self.peek() {
                Some(Kind::Punct("*")) => BinaryOp::Mul,
                Some(Kind::Punct("/")) => BinaryOp::Div,
                Some(Kind::Punct("%")) => BinaryOp::Rem,
                _ => return Ok(left),
            };
            self.at += 1;
            self.operator()?;
            let right = self.unary()?;
            left = Expr::Binary(op, Box::new(left), Box::new(right));
        }
    }

    fn unary(&mut self) -> Result<Expr, CelError> {
        self.nested(|p| {
            if p.eat("!") {
                return Ok(Expr::Not(Box::new(p.unary()?)));
            }
            if p.eat("-") {
                let operand = p.unary()?;
                return Ok(match operand {
                    Expr::Literal(Value::Int(n)) => Expr::Literal(Value::Int(-n)),
                    Expr::Literal(Value::Uint(n)) if n == 1 << 63 => Expr::Literal(Value::Int(i64::MIN)),
                    Expr::Literal(Value::Double(n)) => Expr::Literal(Value::Double(-n)),
                    other => Expr::Negate(Box::new(other)),
                });
            }
            p.member()
        })
    }

    fn member(&mut self) -> Result<Expr, CelError> {
        let mut expr = self.primary()?;
        loop {
            if self.eat("[") {
                let key = self.expression()?;
                self.expect("]")?;
                expr = match (&expr, key) {
                    (Expr::Attribute(a), Expr::Literal(Value::Str(name))) if headers_of(*a).is_some() => {
                        Expr::Header(headers_of(*a).unwrap_or(Headers::Request), name.to_ascii_lowercase())
                    }
                    (_, key) => Expr::Index(Box::new(expr), Box::new(key)),
                };
                continue;
            }
            if self.eat(".") {
                let offset = self.offset();
                let Some(Kind::Ident(name)) = self.peek().cloned() else {
                    return self.fail("expected a name after \".\"");
                };
                self.at += 1;
                if self.eat("(") {
                    let args = self.arguments()?;
                    expr = self.method(expr, &name, args, offset)?;
                    continue;
                }
                expr = match &expr {
                    Expr::Attribute(a) if headers_of(*a).is_some() => {
                        Expr::Header(headers_of(*a).unwrap_or(Headers::Request), name.to_ascii_lowercase())
                    }
                    _ => return Err(CelError { at: offset, message: format!(".{name}: no such field") }),
                };
                continue;
            }
            return Ok(expr);
        }
    }

    fn arguments(&mut self) -> Result<Vec<Expr>, CelError> {
        let mut args = Vec::new();
        if self.eat(")") {
            return Ok(args);
        }
        loop {
            args.push(self.expression()?);
            if self.eat(")") {
                return Ok(args);
            }
            self.expect(",")?;
        }
    }

    fn method(
        &mut self,
        receiver: Expr,
        name: &str,
        mut args: Vec<Expr>,
        at: usize,
    ) -> Result<Expr, CelError> {
        let fail = |message: String| Err(CelError { at, message });
        let function = match (name, args.len()) {
            ("startsWith", 1) => Function::StartsWith,
            ("endsWith", 1) => Function::EndsWith,
            ("contains", 1) => Function::Contains,
            ("size", 0) => Function::Size,
            ("matches", 1) => return matches_regex(receiver, args.remove(0), at),
            ("startsWith" | "endsWith" | "contains" | "matches" | "size", n) => {
                return fail(format!("{name}() does not take {n} argument(s)"));
            }
            _ => return fail(format!("{name}() is not a method of the supported CEL subset")),
        };
        args.insert(0, receiver);
        Ok(Expr::Call(function, args))
    }

    fn primary(&mut self) -> Result<Expr, CelError> {
        let offset = self.offset();
        let Some(kind) = self.peek().cloned() else {
            return self.fail("the expression ends too early");
        };
        self.at += 1;
        match kind {
            Kind::Int(n) => Ok(Expr::Literal(Value::Int(n))),
            Kind::Uint(n) => Ok(Expr::Literal(Value::Uint(n))),
            Kind::Double(n) => Ok(Expr::Literal(Value::Double(n))),
            Kind::Str(s) => Ok(Expr::Literal(Value::Str(Cow::Owned(s)))),
            Kind::Punct("(") => {
                let inner = self.expression()?;
                self.expect(")")?;
                Ok(inner)
            }
            Kind::Punct("[") => {
                let mut items = Vec::new();
                if !self.eat("]") {
                    loop {
                        items.push(self.expression()?);
                        if self.eat("]") {
                            break;
                        }
                        self.expect(",")?;
                    }
                }
                Ok(Expr::List(items))
            }
            Kind::Punct(p) => Err(CelError { at: offset, message: format!("unexpected {p:?}") }),
            Kind::Ident(word) => self.identifier(&word, offset),
        }
    }

    fn identifier(&mut self, word: &str, offset: usize) -> Result<Expr, CelError> {
        match word {
            "true" => return Ok(Expr::Literal(Value::Bool(true))),
            "false" => return Ok(Expr::Literal(Value::Bool(false))),
            "null" => return Ok(Expr::Literal(Value::Null)),
            _ => {}
        }
        if self.eat("(") {
            const FUNCTIONS: [&str; 8] =
                ["has", "matches", "size", "int", "uint", "double", "string", "duration"];
            if !FUNCTIONS.contains(&word) {
                return Err(CelError {
                    at: offset,
                    message: format!("{word}() is not a function of the supported CEL subset"),
                });
            }
            let mut args = self.arguments()?;
            let fail = |message: String| Err(CelError { at: offset, message });
            let function = match (word, args.len()) {
                ("has", 1) => {
                    return match args.remove(0) {
                        Expr::Attribute(a) => Ok(Expr::HasAttribute(a)),
                        Expr::Header(h, name) => Ok(Expr::HasHeader(h, name)),
                        _ => fail(
                            "has() takes a field selection, such as has(request.headers.x_debug)".to_owned(),
                        ),
                    };
                }
                ("matches", 2) => {
                    let pattern = args.remove(1);
                    return matches_regex(args.remove(0), pattern, offset);
                }
                ("size", 1) => Function::Size,
                ("int", 1) => Function::Int,
                ("uint", 1) => Function::Uint,
                ("double", 1) => Function::Double,
                ("string", 1) => Function::String,
                ("duration", 1) => {
                    // A literal duration is read now, so that a bad one is a parse error.
                    if let Expr::Literal(Value::Str(s)) = &args[0] {
                        let nanos = parse_duration(s).map_err(|m| CelError { at: offset, message: m })?;
                        return Ok(Expr::Literal(Value::Duration(nanos)));
                    }
                    Function::Duration
                }
                ("has" | "matches" | "size" | "int" | "uint" | "double" | "string" | "duration", n) => {
                    return fail(format!("{word}() does not take {n} argument(s)"));
                }
                _ => return fail(format!("{word}() is not a function of the supported CEL subset")),
            };
            return Ok(Expr::Call(function, args));
        }
        let roots = ["request", "response", "connection", "source", "destination", "upstream", "xds"];
        if !roots.contains(&word) {
            return Err(CelError {
                at: offset,
                message: format!(
                    "{word:?} is not an attribute of the supported CEL subset (request, response, connection, source, destination, upstream, xds)"
                ),
            });
        }
        let field_at = self.offset();
        if !self.eat(".") {
            return Err(CelError { at: field_at, message: format!("{word} needs a field: {word}.<name>") });
        }
        let Some(Kind::Ident(field)) = self.peek().cloned() else {
            return self.fail(format!("{word}. needs a field name"));
        };
        self.at += 1;
        match ATTRIBUTES.iter().find(|(r, f, _)| *r == word && *f == field) {
            Some((_, _, attribute)) => Ok(Expr::Attribute(*attribute)),
            None => Err(CelError {
                at: field_at,
                message: format!("{word}.{field} is not an attribute of the supported CEL subset"),
            }),
        }
    }
}

fn headers_of(a: Attribute) -> Option<Headers> {
    match a {
        Attribute::RequestHeaders => Some(Headers::Request),
        Attribute::ResponseHeaders => Some(Headers::Response),
        _ => None,
    }
}

fn matches_regex(subject: Expr, pattern: Expr, at: usize) -> Result<Expr, CelError> {
    let Expr::Literal(Value::Str(pattern)) = pattern else {
        return Err(CelError { at, message: "matches() needs a literal regular expression".to_owned() });
    };
    let regex = regex::RegexBuilder::new(&pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| CelError { at, message: format!("matches({:?}): {e}", clip(&pattern)) })?;
    Ok(Expr::Matches(Box::new(subject), Box::new(regex)))
}

/// Go's duration syntax, as CEL's `duration()`: `1s`, `1.5h`, `300ms`, `-2m30s`.
fn parse_duration(text: &str) -> Result<i128, String> {
    let bad = || format!("duration({:?}): not a duration such as \"1s\" or \"300ms\"", clip(text));
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest.is_empty() {
        return Err(bad());
    }
    if rest == "0" {
        return Ok(0);
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let len = rest.bytes().take_while(|b| b.is_ascii_digit() || *b == b'.').count();
        let number: f64 = rest[..len].parse().map_err(|_| bad())?;
        rest = &rest[len..];
        let unit_len = rest.bytes().take_while(|b| b.is_ascii_alphabetic() || *b >= 0x80).count();
        let unit = rest.get(..unit_len).ok_or_else(bad)?;
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        total += number * scale;
        rest = &rest[unit_len..];
    }
    if !total.is_finite() || total > 1e30 {
        return Err(bad());
    }
    let nanos = total as i128;
    Ok(if negative { -nanos } else { nanos })
}

fn clip(text: &str) -> &str {
    match text.char_indices().nth(64) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluation

type Outcome<'a> = Result<Value<'a>, String>;

fn eval<'a>(expr: &Expr, act: &'a dyn Activation) -> Outcome<'a> {
    match expr {
        Expr::Literal(v) => Ok(v.clone()),
        Expr::Attribute(a) => match headers_of(*a) {
            Some(which) => Ok(Value::Headers(which)),
            None => act.attribute(*a).ok_or_else(|| format!("no such attribute: {a:?}")),
        },
        Expr::Header(which, name) => header(act, *which, name),
        Expr::HasAttribute(a) => Ok(Value::Bool(match headers_of(*a) {
            Some(_) => true,
            None => act.attribute(*a).is_some(),
        })),
        Expr::HasHeader(which, name) => Ok(Value::Bool(act.header(*which, name).is_some())),
        Expr::Index(container, key) => {
            let container = eval(container, act)?;
            let key = eval(key, act)?;
            match (container, key) {
                (Value::Headers(which), Value::Str(name)) => header(act, which, &name.to_ascii_lowercase()),
                (Value::List(items), Value::Int(i)) => usize::try_from(i)
                    .ok()
                    .and_then(|i| items.into_iter().nth(i))
                    .ok_or_else(|| "index out of range".to_owned()),
                (Value::List(items), Value::Uint(i)) => usize::try_from(i)
                    .ok()
                    .and_then(|i| items.into_iter().nth(i))
                    .ok_or_else(|| "index out of range".to_owned()),
                _ => Err("no such index".to_owned()),
            }
        }
        Expr::List(items) => items.iter().map(|e| eval(e, act)).collect::<Result<_, _>>().map(Value::List),
        Expr::Not(inner) => match eval(inner, act)? {
            Value::Bool(b) => Ok(Value::Bool(!b)),
            _ => Err("! needs a bool".to_owned()),
        },
        Expr::Negate(inner) => match eval(inner, act)? {
            Value::Int(n) => n.checked_neg().map(Value::Int).ok_or_else(|| "overflow".to_owned()),
            Value::Double(n) => Ok(Value::Double(-n)),
            Value::Duration(n) => Ok(Value::Duration(-n)),
            _ => Err("- needs a number".to_owned()),
        },
        Expr::And(left, right) => logic(eval(left, act), || eval(right, act), false),
        Expr::Or(left, right) => logic(eval(left, act), || eval(right, act), true),
        Expr::Conditional(c, a, b) => match eval(c, act)? {
            Value::Bool(true) => eval(a, act),
            Value::Bool(false) => eval(b, act),
            _ => Err("?: needs a bool condition".to_owned()),
        },
        Expr::Binary(op, left, right) => binary(*op, eval(left, act)?, eval(right, act)?, act),
        Expr::Matches(subject, regex) => match eval(subject, act)? {
            Value::Str(s) => Ok(Value::Bool(regex.is_match(&s))),
            _ => Err("matches() needs a string".to_owned()),
        },
        Expr::Call(function, args) => {
            let args = args.iter().map(|e| eval(e, act)).collect::<Result<Vec<_>, _>>()?;
            call(*function, args, act)
        }
    }
}

fn header<'a>(act: &'a dyn Activation, which: Headers, name: &str) -> Outcome<'a> {
    act.header(which, name).map(Value::Str).ok_or_else(|| format!("no such key: {name:?}"))
}

/// `&&` (`short` false) and `||` (`short` true), commutative over errors as CEL's are.
fn logic<'a>(left: Outcome<'a>, right: impl FnOnce() -> Outcome<'a>, short: bool) -> Outcome<'a> {
    if let Ok(Value::Bool(b)) = left
        && b == short
    {
        return Ok(Value::Bool(short));
    }
    let right = right();
    if let Ok(Value::Bool(b)) = right
        && b == short
    {
        return Ok(Value::Bool(short));
    }
    match (left, right) {
        (Ok(Value::Bool(_)), Ok(Value::Bool(_))) => Ok(Value::Bool(!short)),
        (Err(e), _) | (_, Err(e)) => Err(e),
        _ => Err("&& and || need bools".to_owned()),
    }
}

/// Numbers of any kind compared by value, as CEL's heterogeneous comparison does.
fn numeric(v: &Value<'_>) -> Option<f64> {
    match v {
        Value::Int(n) => Some(*n as f64),
        Value::Uint(n) => Some(*n as f64),
        Value::Double(n) => Some(*n),
        _ => None,
    }
}

fn compare(a: &Value<'_>, b: &Value<'_>) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => Some(x.cmp(y)),
        (Value::Uint(x), Value::Uint(y)) => Some(x.cmp(y)),
        (Value::Int(x), Value::Uint(y)) => Some(i128::from(*x).cmp(&i128::from(*y))),
        (Value::Uint(x), Value::Int(y)) => Some(i128::from(*x).cmp(&i128::from(*y))),
        (Value::Str(x), Value::Str(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::Duration(x), Value::Duration(y)) => Some(x.cmp(y)),
        _ => numeric(a)?.partial_cmp(&numeric(b)?),
    }
}

fn equal(a: &Value<'_>, b: &Value<'_>) -> bool {
    match (a, b) {
        (Value::List(x), Value::List(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| equal(p, q)),
        (Value::Null, Value::Null) => true,
        _ => compare(a, b) == Some(std::cmp::Ordering::Equal),
    }
}

fn binary<'a>(op: BinaryOp, a: Value<'a>, b: Value<'a>, act: &'a dyn Activation) -> Outcome<'a> {
    use std::cmp::Ordering::*;
    let ordered = |want: &[std::cmp::Ordering]| {
        compare(&a, &b)
            .map(|o| Value::Bool(want.contains(&o)))
            .ok_or_else(|| format!("cannot compare {} and {}", kind(&a), kind(&b)))
    };
    match op {
        BinaryOp::Eq => Ok(Value::Bool(equal(&a, &b))),
        BinaryOp::Ne => Ok(Value::Bool(!equal(&a, &b))),
        BinaryOp::Lt => ordered(&[Less]),
        BinaryOp::Le => ordered(&[Less, Equal]),
        BinaryOp::Gt => ordered(&[Greater]),
        BinaryOp::Ge => ordered(&[Greater, Equal]),
        BinaryOp::In => match b {
            Value::List(items) => Ok(Value::Bool(items.iter().any(|i| equal(&a, i)))),
            Value::Headers(which) => match a {
                Value::Str(name) => Ok(Value::Bool(act.header(which, &name.to_ascii_lowercase()).is_some())),
                _ => Err("a header name is a string".to_owned()),
            },
            _ => Err("in needs a list or a map".to_owned()),
        },
        BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div | BinaryOp::Rem => arithmetic(op, a, b),
    }
}

fn arithmetic<'a>(op: BinaryOp, a: Value<'a>, b: Value<'a>) -> Outcome<'a> {
    let overflow = || "overflow or division by zero".to_owned();
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => match op {
            BinaryOp::Add => x.checked_add(y),
            BinaryOp::Sub => x.checked_sub(y),
            BinaryOp::Mul => x.checked_mul(y),
            BinaryOp::Div => x.checked_div(y),
            _ => x.checked_rem(y),
        }
        .map(Value::Int)
        .ok_or_else(overflow),
        (Value::Uint(x), Value::Uint(y)) => match op {
            BinaryOp::Add => x.checked_add(y),
            BinaryOp::Sub => x.checked_sub(y),
            BinaryOp::Mul => x.checked_mul(y),
            BinaryOp::Div => x.checked_div(y),
            _ => x.checked_rem(y),
        }
        .map(Value::Uint)
        .ok_or_else(overflow),
        (Value::Double(x), Value::Double(y)) => match op {
            BinaryOp::Add => Ok(Value::Double(x + y)),
            BinaryOp::Sub => Ok(Value::Double(x - y)),
            BinaryOp::Mul => Ok(Value::Double(x * y)),
            BinaryOp::Div => Ok(Value::Double(x / y)),
            _ => Err("% needs integers".to_owned()),
        },
        (Value::Duration(x), Value::Duration(y)) => match op {
            BinaryOp::Add => Ok(Value::Duration(x.saturating_add(y))),
            BinaryOp::Sub => Ok(Value::Duration(x.saturating_sub(y))),
            _ => Err("durations only add and subtract".to_owned()),
        },
        (Value::Str(x), Value::Str(y)) if op == BinaryOp::Add => {
            if x.len() + y.len() > MAX_EXPRESSION_LEN * 16 {
                return Err("string too long".to_owned());
            }
            Ok(Value::Str(Cow::Owned(format!("{x}{y}"))))
        }
        (a, b) => Err(format!("no arithmetic on {} and {}", kind(&a), kind(&b))),
    }
}

fn call<'a>(function: Function, mut args: Vec<Value<'a>>, _act: &'a dyn Activation) -> Outcome<'a> {
    let first = args.remove(0);
    let text = |v: &Value<'_>| match v {
        Value::Str(s) => Ok(s.to_string()),
        other => Err(format!("needs a string, not {}", kind(other))),
    };
    match function {
        Function::StartsWith | Function::EndsWith | Function::Contains => {
            let (s, p) = (text(&first)?, text(&args[0])?);
            Ok(Value::Bool(match function {
                Function::StartsWith => s.starts_with(&p),
                Function::EndsWith => s.ends_with(&p),
                _ => s.contains(&p),
            }))
        }
        Function::Size => match first {
            Value::Str(s) => Ok(Value::Int(s.chars().count() as i64)),
            Value::List(items) => Ok(Value::Int(items.len() as i64)),
            other => Err(format!("size() of {}", kind(&other))),
        },
        Function::Int => match first {
            Value::Int(n) => Ok(Value::Int(n)),
            Value::Uint(n) => i64::try_from(n).map(Value::Int).map_err(|_| "int() overflow".to_owned()),
            Value::Double(n) if n.is_finite() && n > -9.3e18 && n < 9.3e18 => Ok(Value::Int(n as i64)),
            Value::Str(s) => s.parse().map(Value::Int).map_err(|_| format!("int({:?})", clip(&s))),
            Value::Duration(n) => {
                i64::try_from(n / 1_000_000_000).map(Value::Int).map_err(|_| "int() overflow".to_owned())
            }
            other => Err(format!("int() of {}", kind(&other))),
        },
        Function::Uint => match first {
            Value::Uint(n) => Ok(Value::Uint(n)),
            Value::Int(n) => u64::try_from(n).map(Value::Uint).map_err(|_| "uint() of a negative".to_owned()),
            Value::Double(n) if n.is_finite() && (0.0..1.8e19).contains(&n) => Ok(Value::Uint(n as u64)),
            Value::Str(s) => s.parse().map(Value::Uint).map_err(|_| format!("uint({:?})", clip(&s))),
            other => Err(format!("uint() of {}", kind(&other))),
        },
        Function::Double => match first {
            Value::Double(n) => Ok(Value::Double(n)),
            Value::Int(n) => Ok(Value::Double(n as f64)),
            Value::Uint(n) => Ok(Value::Double(n as f64)),
            Value::Str(s) => s.parse().map(Value::Double).map_err(|_| format!("double({:?})", clip(&s))),
            other => Err(format!("double() of {}", kind(&other))),
        },
        Function::String => Ok(Value::Str(Cow::Owned(match first {
            Value::Str(s) => s.into_owned(),
            Value::Int(n) => n.to_string(),
            Value::Uint(n) => n.to_string(),
            Value::Double(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => return Err(format!("string() of {}", kind(&other))),
        }))),
        Function::Duration => match first {
            Value::Str(s) => parse_duration(&s).map(Value::Duration),
            other => Err(format!("duration() of {}", kind(&other))),
        },
    }
}

fn kind(v: &Value<'_>) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Int(_) => "int",
        Value::Uint(_) => "uint",
        Value::Double(_) => "double",
        Value::Str(_) => "string",
        Value::Duration(_) => "duration",
        Value::List(_) => "list",
        Value::Headers(_) => "map",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Default)]
    struct Fake {
        attributes: Vec<(Attribute, Value<'static>)>,
        request: BTreeMap<&'static str, &'static str>,
        response: BTreeMap<&'static str, &'static str>,
    }

    impl Activation for Fake {
        fn attribute(&self, attribute: Attribute) -> Option<Value<'_>> {
            self.attributes.iter().find(|(a, _)| *a == attribute).map(|(_, v)| v.clone())
        }
        fn header(&self, which: Headers, name: &str) -> Option<Cow<'_, str>> {
            let map = if which == Headers::Request { &self.request } else { &self.response };
            map.get(name).map(|v| Cow::Borrowed(*v))
        }
    }

    fn http(code: i64, mtls: bool) -> Fake {
        Fake {
            attributes: vec![
                (Attribute::ResponseCode, Value::Int(code)),
                (Attribute::ConnectionMtls, Value::Bool(mtls)),
                (Attribute::RequestUrlPath, Value::Str("/api/v1/items".into())),
                (Attribute::RequestMethod, Value::Str("GET".into())),
                (Attribute::RequestDuration, Value::Duration(1_500_000_000)),
                (Attribute::DestinationPort, Value::Int(9080)),
            ],
            request: BTreeMap::from([("x-debug", "true"), ("user-agent", "curl/8")]),
            response: BTreeMap::from([("content-type", "text/plain")]),
        }
    }

    fn check(expr: &str, act: &Fake) -> bool {
        Filter::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}")).matches(act)
    }

    #[test]
    fn what_istio_users_write() {
        let ok = http(200, true);
        let bad = http(503, false);
        for (expr, on_ok, on_bad) in [
            ("response.code >= 400", false, true),
            ("response.code >= 400 || connection.mtls == false", false, true),
            ("request.headers['x-debug'] == 'true'", true, true),
            ("request.url_path.startsWith('/api')", true, true),
            ("!request.url_path.startsWith('/health')", true, true),
            ("has(request.headers.x_missing)", false, false),
            ("!has(request.headers.x_missing)", true, true),
            ("'x-debug' in request.headers", true, true),
            ("'X-Debug' in request.headers", true, true),
            ("response.code in [200, 204]", true, false),
            ("response.code >= 500 && response.code < 600", false, true),
            ("request.duration > duration('1s')", true, true),
            ("request.method == \"GET\" && destination.port == 9080", true, true),
            ("request.url_path.matches('^/api/v[0-9]+/')", true, true),
            ("matches(request.url_path, 'items$')", true, true),
            ("response.headers['content-type'].contains('text')", true, true),
            ("size(request.url_path) > 5u", true, true),
            ("response.code / 100 == 5", false, true),
            ("connection.mtls ? response.code == 200 : false", true, false),
            ("int('42') + 1 == 43 && string(7) + 'x' == '7x' && double(1) == 1.0", true, true),
            ("response.code == 200.0", true, false),
        ] {
            assert_eq!(check(expr, &ok), on_ok, "{expr} on 200");
            assert_eq!(check(expr, &bad), on_bad, "{expr} on 503");
        }
    }

    #[test]
    fn errors_write_no_line_but_or_can_recover() {
        let tcp =
            Fake { attributes: vec![(Attribute::ConnectionMtls, Value::Bool(false))], ..Default::default() };
        // No response code on a TCP connection: an error, so no line...
        assert!(!check("response.code >= 400", &tcp));
        assert!(!check("!(response.code >= 400)", &tcp));
        // ...unless the other side of || decides, as CEL's commutative || does.
        assert!(check("response.code >= 400 || connection.mtls == false", &tcp));
        assert!(check("connection.mtls == false || response.code >= 400", &tcp));
        assert!(!check("response.code >= 400 && connection.mtls == false", &tcp));
        assert!(check("!has(response.code)", &tcp));
        // A missing header is an error; its presence test is not.
        assert!(!check("request.headers['x-nope'] == 'a'", &tcp));
        // Not a boolean: no line.
        assert!(!check("'text'", &tcp));
        assert!(!check("1 / 0 == 1", &tcp));
        assert!(!check("9223372036854775807 + 1 > 0", &tcp));
        assert!(!check("'a' < 1", &tcp));
    }

    #[test]
    fn literals() {
        let f = Fake::default();
        for expr in [
            "0x10 == 16",
            "7u == 7u",
            "-9223372036854775808 < 0",
            "1e3 == 1000.0",
            "'\\x41\\u00e9\\n' == \"A\u{e9}\\n\"",
            "r'\\d' == '\\\\d'",
            "null == null",
            "[1, 2] == [1, 2]",
            "-(3) == -3",
            "duration('1m30s') == duration('90s')",
        ] {
            assert!(check(expr, &f), "{expr}");
        }
    }

    #[test]
    fn outside_the_subset_is_a_parse_error_naming_it() {
        for (expr, message) in [
            ("response.flags > 0", "response.flags is not an attribute"),
            ("filter_state['x'] == 'y'", "\"filter_state\" is not an attribute"),
            ("request", "needs a field"),
            ("request.headers.x.y == 'a'", "no such field"),
            ("request.url_path.lowerAscii() == 'a'", "lowerAscii() is not a method"),
            ("exists(x)", "exists() is not a function"),
            ("has(1)", "has() takes a field selection"),
            ("response.code >= ", "ends too early"),
            ("response.code >= 400 )", "unexpected \")\""),
            ("(response.code", "expected \")\""),
            ("'open", "not closed"),
            ("'\\q'", "\\q is not an escape"),
            ("a = b", "'=' is not part"),
            ("1 < 2 < 3", "do not chain"),
            ("request.url_path.matches(request.host)", "literal regular expression"),
            ("matches(request.host, '(')", "matches(\"(\")"),
            ("duration('soon') > request.duration", "not a duration"),
            ("99999999999999999999 > 1", "is not an int"),
            ("request.headers.x.startsWith()", "does not take 0"),
            ("[1, 2", "expected"),
        ] {
            let e = Filter::parse(expr).expect_err(expr);
            assert!(e.message.contains(message), "{expr}: {e}");
        }
    }

    #[test]
    fn hostile_expressions_fail_cleanly() {
        let deep = format!("{}true{}", "(".repeat(5_000), ")".repeat(5_000));
        assert!(Filter::parse(&deep).unwrap_err().message.contains("nested"));
        let nots = format!("{}true", "!".repeat(10_000));
        assert!(Filter::parse(&nots).unwrap_err().message.contains("nested"));
        assert!(
            Filter::parse(&"a".repeat(MAX_EXPRESSION_LEN + 1)).unwrap_err().message.contains("more than")
        );
        assert!(Filter::parse("\u{e9}").is_err());
        assert!(Filter::parse("").is_err());
        assert!(Filter::parse("'\\u{d800}'").is_err());
        assert!(Filter::parse("'\\ud800'").is_err());
        assert!(Filter::parse("0x").is_err());
        // Long chains are loops when parsed; their operators are counted and capped.
        let chain = vec!["response.code == 1"; 200].join(" || ");
        assert!(!check(&chain, &http(2, true)));
        let chain = vec!["1"; 600].join(" + ");
        assert!(Filter::parse(&chain).unwrap_err().message.contains("operators"));
    }
}
