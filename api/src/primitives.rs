//! Checks for the small value types Istio's API is built from: durations, ports, CIDRs, DNS
//! names, label keys, header names and regular expressions.
//!
//! Each function returns a message that describes what is wrong with the value; the caller adds
//! the field path and the resource. They never panic, whatever the input.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A duration as users write it in Istio YAML (`"100ms"`, `"1.5s"`, `"1m30s"`), kept as written
/// so that documents round-trip unchanged. [`GoDuration::to_std`] gives the value.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct GoDuration(pub String);

impl GoDuration {
    pub fn to_std(&self) -> Result<Duration, String> {
        parse_go_duration(&self.0)
    }
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for GoDuration {
    fn from(s: &str) -> Self {
        GoDuration(s.to_owned())
    }
}

/// Longest duration we accept: protobuf's Duration tops out at 10,000 years; nobody means more
/// than that and the arithmetic stays far from overflow.
const MAX_DURATION_SECS: u64 = 315_576_000_000;

/// Parses a Go-style duration (what Kubernetes and Istio accept): one or more decimal numbers,
/// each with a unit `ns`, `us`, `µs`, `ms`, `s`, `m` or `h`. Signs are rejected because no Istio
/// field takes a negative duration.
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    if text.is_empty() {
        return Err("empty duration".into());
    }
    if text.starts_with('-') {
        return Err(format!("duration {text:?} is negative"));
    }
    let body = text.strip_prefix('+').unwrap_or(text);
    if body.is_empty() {
        return Err(format!("invalid duration {text:?}: use a number and a unit, e.g. 100ms, 1.5s, 2m"));
    }
    if body == "0" {
        return Ok(Duration::ZERO);
    }
    let bad = || format!("invalid duration {text:?}: use a number and a unit, e.g. 100ms, 1.5s, 2m");
    let mut total_nanos: u128 = 0;
    let mut rest = body;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(bad());
        }
        let unit_len = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => {
                return Err(format!("invalid duration {text:?}: missing unit (ns, us, ms, s, m, h)"));
            }
            other => return Err(format!("invalid duration {text:?}: unknown unit {other:?}")),
        };
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        let whole = whole.trim_start_matches('0');
        // Cap digit counts so the arithmetic below cannot overflow u128.
        if whole.len() > 20 || frac.len() > 20 {
            return Err(format!("duration {text:?} is too long"));
        }
        let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| bad())? };
        let mut nanos = whole * unit_nanos;
        if !frac.is_empty() {
            let digits: u128 = frac.parse().map_err(|_| bad())?;
            nanos += digits * unit_nanos / 10u128.pow(frac.len() as u32);
        }
        total_nanos += nanos;
        if total_nanos > u128::from(MAX_DURATION_SECS) * 1_000_000_000 {
            return Err(format!("duration {text:?} is too long"));
        }
        rest = next;
    }
    let secs = (total_nanos / 1_000_000_000) as u64;
    let nanos = (total_nanos % 1_000_000_000) as u32;
    Ok(Duration::new(secs, nanos))
}

/// Istio's rule for timeouts and intervals: at least 1ms, and no finer than milliseconds.
pub fn check_duration_ms(d: &GoDuration) -> Result<Duration, String> {
    let value = d.to_std()?;
    if value < Duration::from_millis(1) {
        return Err(format!("duration {:?} must be at least 1ms", d.0));
    }
    if value.subsec_nanos() % 1_000_000 != 0 {
        return Err(format!(
            "duration {:?} is finer than a millisecond; only ms precision is supported",
            d.0
        ));
    }
    Ok(value)
}

/// The socket of a `unix://` address (the text after the scheme), as Istio checks it: an
/// abstract socket (`@name`; Linux gives it no file) or an absolute path to a file (not a
/// directory).
pub fn check_unix_socket(socket: &str) -> Result<(), String> {
    if socket.starts_with('@') {
        return Ok(());
    }
    if !socket.starts_with('/') {
        Err(format!(
            "{:?} is not an absolute unix socket path or an abstract socket (@name)",
            format!("unix://{socket}")
        ))
    } else if socket.ends_with('/') {
        Err(format!("{:?} names a directory, not a socket", format!("unix://{socket}")))
    } else {
        Ok(())
    }
}

/// A port number in 1..=65535.
pub fn check_port(port: u32) -> Result<u16, String> {
    match u16::try_from(port) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(format!("port {port} is out of range 1-65535")),
    }
}

/// A port written as text (annotations, AuthorizationPolicy ports).
pub fn parse_port(text: &str) -> Result<u16, String> {
    let trimmed = text.trim();
    // Digits only: Rust's integer parser accepts a leading '+', Go's (and so Istio's) does not.
    match trimmed.parse::<u32>() {
        Ok(n) if trimmed.bytes().all(|b| b.is_ascii_digit()) => check_port(n),
        _ if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) => {
            Err(format!("port {trimmed} is out of range 1-65535"))
        }
        _ => Err(format!("{trimmed:?} is not a port number")),
    }
}

/// A CIDR with an explicit prefix length, IPv4 or IPv6 (`10.0.0.0/8`, `fd00::/8`).
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let trimmed = text.trim();
    if !trimmed.contains('/') {
        return Err(format!("{trimmed:?} is not a CIDR (missing /prefix-length)"));
    }
    trimmed.parse::<IpNet>().map_err(|_| format!("{trimmed:?} is not a valid CIDR"))
}

/// An IP address or a CIDR; a bare address means the single host.
pub fn parse_ip_or_cidr(text: &str) -> Result<IpNet, String> {
    let trimmed = text.trim();
    if trimmed.contains('/') {
        return parse_cidr(trimmed);
    }
    trimmed
        .parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{trimmed:?} is not an IP address or CIDR"))
}

pub fn parse_ip(text: &str) -> Result<IpAddr, String> {
    let trimmed = text.trim();
    trimmed.parse::<IpAddr>().map_err(|_| format!("{trimmed:?} is not an IP address"))
}

/// RFC 1123 label: 1-63 of `[a-z0-9-]`, starting and ending alphanumeric. Istio accepts upper
/// case in host names, so `allow_upper` lets callers choose.
fn is_label(s: &str, allow_upper: bool) -> bool {
    s.len() <= 63 && is_label_of_any_length(s, allow_upper)
}

/// A label's characters without its length limit: Kubernetes checks an object name
/// (a DNS-1123 subdomain) only for its total length, so a 64-character name is accepted.
fn is_label_of_any_length(s: &str, allow_upper: bool) -> bool {
    let ok_char =
        |c: char| c.is_ascii_digit() || c.is_ascii_lowercase() || (allow_upper && c.is_ascii_uppercase());
    !s.is_empty()
        && s.chars().all(|c| ok_char(c) || c == '-')
        && s.chars().next().is_some_and(ok_char)
        && s.chars().last().is_some_and(ok_char)
}

/// A Kubernetes namespace or object name of the DNS-1123 label form (lower case, ≤ 63).
pub fn check_dns1123_label(s: &str) -> Result<(), String> {
    if is_label(s, false) {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a valid DNS-1123 label (lower-case letters, digits and '-', at most 63 characters, starting and ending with a letter or digit)"
        ))
    }
}

/// A Kubernetes object name: DNS-1123 subdomain (dot-separated labels, ≤ 253 in all; as in
/// Kubernetes, a label of it is not held to 63).
pub fn check_dns1123_subdomain(s: &str) -> Result<(), String> {
    if !s.is_empty() && s.len() <= 253 && s.split('.').all(|l| is_label_of_any_length(l, false)) {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a valid DNS-1123 subdomain (lower-case labels separated by '.', at most 253 characters)"
        ))
    }
}

/// A host name as Istio accepts it in `hosts` fields: a DNS name (short or fully qualified),
/// optionally starting with a `*.` wildcard label, or `*` alone.
pub fn check_wildcard_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("host must not be empty".into());
    }
    if host == "*" {
        return Ok(());
    }
    if host.len() > 255 {
        return Err(format!("host {host:?} is longer than 255 characters"));
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    if name.contains('*') {
        return Err(format!(
            "host {host:?}: a wildcard is only allowed as the whole first label ('*.example.com')"
        ));
    }
    // Istio, like DNS, allows a trailing dot for an absolute name.
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.split('.').all(|l| is_label(l, true)) {
        Ok(())
    } else {
        Err(format!("host {host:?} is not a valid DNS name"))
    }
}

/// Istio's partial wildcard: a leading `*` glued to the rest of the first label (`*x`,
/// `*example.com`), as opposed to the whole-label `*.example.com`. Istio matches such a host as
/// a plain suffix of the name, so `*example.com` covers `api.example.com` and `myexample.com`.
pub fn is_partial_wildcard(host: &str) -> bool {
    host.len() > 1 && host.starts_with('*') && !host.starts_with("*.")
}

/// [`check_wildcard_host`], also accepting a partial wildcard (see [`is_partial_wildcard`]):
/// Istio's host rule for ServiceEntry hosts and route destinations lets the first label be `*`,
/// `*label` or `*-label`.
pub fn check_host_allowing_partial_wildcard(host: &str) -> Result<(), String> {
    let misplaced = || {
        format!(
            "host {host:?}: a wildcard is allowed only at the start of the first label ('*.example.com', or Istio's partial '*example.com')"
        )
    };
    if !is_partial_wildcard(host) {
        let name = host.strip_prefix("*.").unwrap_or(host);
        return if host != "*" && name.contains('*') { Err(misplaced()) } else { check_wildcard_host(host) };
    }
    let rest = &host[1..];
    let rest = rest.strip_prefix('-').unwrap_or(rest);
    if rest.is_empty() || rest.starts_with('.') || rest.contains('*') || check_wildcard_host(rest).is_err() {
        return Err(misplaced());
    }
    Ok(())
}

/// A host that is either a DNS name (with optional wildcard) or an IP address.
pub fn check_host_or_ip(host: &str) -> Result<(), String> {
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    check_wildcard_host(host)
}

/// Kubernetes label key: optional DNS-subdomain prefix and `/`, then a name of up to 63
/// characters of `[A-Za-z0-9._-]` starting and ending alphanumeric.
pub fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && check_dns1123_subdomain(p).is_err()
    {
        return Err(format!("label key {key:?} has an invalid prefix {p:?}"));
    }
    if is_qualified_name_part(name) {
        Ok(())
    } else {
        Err(format!(
            "label key {key:?} is invalid (at most 63 of letters, digits, '-', '_', '.', starting and ending with a letter or digit)"
        ))
    }
}

/// Kubernetes label value: empty, or up to 63 of `[A-Za-z0-9._-]` starting and ending
/// alphanumeric.
pub fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_qualified_name_part(value) {
        Ok(())
    } else {
        Err(format!(
            "label value {value:?} is invalid (at most 63 of letters, digits, '-', '_', '.', starting and ending with a letter or digit)"
        ))
    }
}

fn is_qualified_name_part(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| alnum(c) || matches!(c, '-' | '_' | '.'))
        && s.chars().next().is_some_and(alnum)
        && s.chars().last().is_some_and(alnum)
}

/// An HTTP header field name (RFC 9110 token). Pseudo-headers such as `:authority` are accepted
/// only when `allow_pseudo` is set.
pub fn check_header_name(name: &str, allow_pseudo: bool) -> Result<(), String> {
    let token = if allow_pseudo { name.strip_prefix(':').unwrap_or(name) } else { name };
    let is_tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if !token.is_empty() && token.chars().all(is_tchar) {
        Ok(())
    } else {
        Err(format!("{name:?} is not a valid HTTP header name"))
    }
}

/// Conditions Envoy understands in `retryOn`, besides plain HTTP status codes.
/// gRPC's status names, in the order of their codes (`OK` is 0, `UNAUTHENTICATED` 16).
pub const GRPC_STATUS_NAMES: &[&str] = &[
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The code of a gRPC status name (`UNAVAILABLE` is 14).
pub fn grpc_status_code(name: &str) -> Option<u32> {
    GRPC_STATUS_NAMES.iter().position(|n| *n == name).and_then(|i| u32::try_from(i).ok())
}

pub const RETRY_ON_CONDITIONS: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// A comma-separated `retryOn` value: each entry a condition above or an HTTP status code.
pub fn check_retry_on(retry_on: &str) -> Result<(), String> {
    for condition in retry_on.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        let is_status = condition.len() == 3
            && condition.bytes().all(|b| b.is_ascii_digit())
            && condition.parse::<u16>().is_ok_and(|code| (100..=599).contains(&code));
        if !is_status && !RETRY_ON_CONDITIONS.contains(&condition) {
            return Err(format!(
                "{condition:?} is not a retry condition; use an HTTP status code or one of {}",
                RETRY_ON_CONDITIONS.join(", ")
            ));
        }
    }
    Ok(())
}

/// Istio (through Envoy) evaluates regular expressions with Google RE2. We compile with the
/// `regex` crate, which implements the same family of syntax (no look-around, no
/// back-references), and reject the few constructs that one accepts and the other does not, so
/// that what validates here also works in the data plane.
pub const MAX_REGEX_LEN: usize = 1024;

pub fn check_re2_regex(pattern: &str) -> Result<regex::Regex, String> {
    if pattern.len() > MAX_REGEX_LEN {
        return Err(format!("regex is {} bytes long, at most {MAX_REGEX_LEN} are allowed", pattern.len()));
    }
    if let Some(what) = non_re2_construct(pattern) {
        return Err(format!("regex {pattern:?}: {what}"));
    }
    regex::RegexBuilder::new(pattern).size_limit(1 << 20).build().map_err(|e| match e {
        regex::Error::Syntax(msg) => {
            let first = msg.lines().find(|l| l.starts_with("error:")).unwrap_or("invalid syntax");
            format!("regex {pattern:?} is invalid: {}", first.trim_start_matches("error: "))
        }
        regex::Error::CompiledTooBig(_) => {
            format!("regex {pattern:?} compiles to a program that is too large")
        }
        _ => format!("regex {pattern:?} is invalid"),
    })
}

/// Finds syntax the `regex` crate accepts (or rejects less clearly) but RE2 does not have.
fn non_re2_construct(pattern: &str) -> Option<&'static str> {
    const ESCAPES: [(char, &str); 4] = [
        ('Q', "\\Q...\\E literal quoting is not supported"),
        ('C', "\\C (any byte) is not supported"),
        ('<', "\\< word-start assertions are not RE2 syntax"),
        ('>', "\\> word-end assertions are not RE2 syntax"),
    ];
    const CLASS_OPS: [(&str, &str); 3] = [
        ("&&", "character-class intersection (&&) is not RE2 syntax"),
        ("~~", "character-class symmetric difference (~~) is not RE2 syntax"),
        ("--", "character-class difference (--) is not RE2 syntax"),
    ];
    let mut class_depth = 0usize;
    let mut chars = pattern.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                let escaped = chars.next().map(|(_, e)| e);
                if let Some(&(_, what)) = ESCAPES.iter().find(|(e, _)| Some(*e) == escaped) {
                    return Some(what);
                }
                if escaped == Some('b') && pattern[i..].starts_with("\\b{") {
                    return Some("\\b{...} boundary assertions are not RE2 syntax");
                }
            }
            '[' => {
                class_depth += 1;
                // `[]...]` and `[^]...]`: a `]` right after the opening is a literal.
                let rest = &pattern[i + 1..];
                let skip = if rest.starts_with("^]") { 2 } else { usize::from(rest.starts_with(']')) };
                for _ in 0..skip {
                    chars.next();
                }
            }
            ']' if class_depth > 0 => class_depth -= 1,
            _ if class_depth > 0 => {
                if let Some(&(_, what)) = CLASS_OPS.iter().find(|(op, _)| pattern[i..].starts_with(op)) {
                    return Some(what);
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_go_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_go_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_go_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_go_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_go_duration(".5s"), Ok(Duration::from_millis(500)));
    }

    #[test]
    fn bad_durations_say_why() {
        assert_eq!(
            parse_go_duration("10").unwrap_err(),
            "invalid duration \"10\": missing unit (ns, us, ms, s, m, h)"
        );
        assert_eq!(parse_go_duration("10d").unwrap_err(), "invalid duration \"10d\": unknown unit \"d\"");
        assert_eq!(parse_go_duration("-1s").unwrap_err(), "duration \"-1s\" is negative");
        assert!(parse_go_duration("1..2s").is_err());
        assert!(parse_go_duration("s").is_err());
        assert!(parse_go_duration("").is_err());
        assert!(parse_go_duration("+").is_err());
        assert_eq!(parse_go_duration("0000000000000000000001s"), Ok(Duration::from_secs(1)));
        assert!(parse_go_duration("99999999999999999999999h").is_err());
        assert!(parse_go_duration("9999999999999h").is_err());
        assert!(parse_go_duration(&"9".repeat(10_000)).is_err());
    }

    #[test]
    fn millisecond_rule() {
        assert!(check_duration_ms(&"1ms".into()).is_ok());
        assert_eq!(check_duration_ms(&"0s".into()).unwrap_err(), "duration \"0s\" must be at least 1ms");
        assert!(check_duration_ms(&"1500us".into()).unwrap_err().contains("finer than a millisecond"));
    }

    #[test]
    fn ports_and_cidrs() {
        assert_eq!(parse_port("8080"), Ok(8080));
        assert_eq!(parse_port("0").unwrap_err(), "port 0 is out of range 1-65535");
        assert_eq!(parse_port("65536").unwrap_err(), "port 65536 is out of range 1-65535");
        assert_eq!(parse_port("http").unwrap_err(), "\"http\" is not a port number");
        assert_eq!(parse_port("+80").unwrap_err(), "\"+80\" is not a port number");
        assert_eq!(parse_port("99999999999").unwrap_err(), "port 99999999999 is out of range 1-65535");
        assert_eq!(parse_ip(" 10.0.0.1 ").map(|ip| ip.to_string()), Ok("10.0.0.1".to_owned()));
        assert!(parse_cidr("10.0.0.0/8").is_ok());
        assert!(parse_cidr("fd00::/8").is_ok());
        assert_eq!(
            parse_cidr("10.0.0.1").unwrap_err(),
            "\"10.0.0.1\" is not a CIDR (missing /prefix-length)"
        );
        assert_eq!(parse_cidr("10.0.0.0/33").unwrap_err(), "\"10.0.0.0/33\" is not a valid CIDR");
        assert!(parse_ip_or_cidr("10.0.0.1").is_ok());
        assert!(parse_ip_or_cidr("nope").is_err());
    }

    #[test]
    fn hosts() {
        for ok in ["reviews", "reviews.prod.svc.cluster.local", "*.example.com", "*", "Foo.com", "a.b."] {
            assert!(check_wildcard_host(ok).is_ok(), "{ok}");
        }
        for bad in ["", "*.*.com", "foo.*.com", "-a.com", "a..b", "a_b.com", &"a".repeat(64)] {
            assert!(check_wildcard_host(bad).is_err(), "{bad}");
        }
        assert!(check_host_or_ip("10.1.2.3").is_ok());
    }

    #[test]
    fn partial_wildcards_as_istio_allows_them() {
        for partial in ["*x", "*example.com", "*-api.example.com", "*Foo.com"] {
            assert!(is_partial_wildcard(partial), "{partial}");
            assert!(check_wildcard_host(partial).is_err(), "{partial}");
            assert!(check_host_allowing_partial_wildcard(partial).is_ok(), "{partial}");
        }
        for whole in ["*", "*.example.com", "example.com"] {
            assert!(!is_partial_wildcard(whole), "{whole}");
            assert!(check_host_allowing_partial_wildcard(whole).is_ok(), "{whole}");
        }
        for bad in
            ["*-", "**", "**.com", "*.*x", "*x.*.com", "*-.com", "*--a.com", "*a_b.com", "x*", "*.", ""]
        {
            assert!(check_host_allowing_partial_wildcard(bad).is_err(), "{bad}");
        }
        assert!(check_host_allowing_partial_wildcard(&format!("*{}", "a".repeat(300))).is_err());
    }

    #[test]
    fn unix_sockets_are_absolute_paths_or_abstract_names() {
        for ok in ["/var/run/app.sock", "@foo", "@"] {
            assert!(check_unix_socket(ok).is_ok(), "{ok}");
        }
        assert_eq!(
            check_unix_socket("run/app.sock").unwrap_err(),
            "\"unix://run/app.sock\" is not an absolute unix socket path or an abstract socket (@name)"
        );
        assert_eq!(
            check_unix_socket("/var/run/").unwrap_err(),
            "\"unix:///var/run/\" names a directory, not a socket"
        );
        assert!(check_unix_socket("").is_err());
    }

    #[test]
    fn labels_and_headers() {
        // Kubernetes holds an object name to 253 characters in all, not to 63 per label.
        assert!(check_dns1123_subdomain(&"a".repeat(64)).is_ok());
        assert!(check_dns1123_subdomain(&"a".repeat(254)).is_err());
        assert!(check_dns1123_subdomain("a..b").is_err());
        assert!(check_dns1123_label(&"a".repeat(64)).is_err());
        assert!(check_label_key("app").is_ok());
        assert!(check_label_key("app.kubernetes.io/name").is_ok());
        assert!(check_label_key("bad key").is_err());
        assert!(check_label_key("Bad_Prefix/x").is_err());
        assert!(check_label_value("").is_ok());
        assert!(check_label_value("v1.2_3-a").is_ok());
        assert!(check_label_value("-v1").is_err());
        assert!(check_header_name("x-canary", false).is_ok());
        assert!(check_header_name(":authority", true).is_ok());
        assert!(check_header_name(":authority", false).is_err());
        assert!(check_header_name("bad header", false).is_err());
        assert!(check_header_name("", false).is_err());
    }

    #[test]
    fn regexes_are_held_to_re2() {
        assert!(check_re2_regex("^/api/v[0-9]+/.*$").is_ok());
        assert!(check_re2_regex(r"foo\\Q").is_ok(), "an escaped backslash followed by Q is fine");
        assert_eq!(
            check_re2_regex(r"\Qa.b\E").unwrap_err(),
            "regex \"\\\\Qa.b\\\\E\": \\Q...\\E literal quoting is not supported"
        );
        assert!(check_re2_regex("[a-z&&[^aeiou]]").unwrap_err().contains("intersection"));
        assert!(check_re2_regex("a--b").is_ok(), "-- outside a class is a literal");
        assert!(
            check_re2_regex("[]a--b]").unwrap_err().contains("difference"),
            "] first in a class is literal"
        );
        assert!(check_re2_regex("[^]a]x").is_ok());
        assert!(check_re2_regex("(?=x)").unwrap_err().contains("look-around"));
        assert!(check_re2_regex(r"(a)\1").is_err());
        assert!(check_re2_regex("(").unwrap_err().starts_with("regex \"(\" is invalid"));
        assert!(check_re2_regex(&"a".repeat(2000)).unwrap_err().contains("at most 1024"));
    }
}
