//! The value matchers of AuthorizationPolicy: Istio's string syntax (`abc` exact, `abc*`
//! prefix, `*abc` suffix, `*` present), path templates (`{*}` one segment, `{**}` any rest) and
//! address blocks.

use std::net::IpAddr;

use ipnet::IpNet;

/// One value of Istio's string syntax.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Exact(String),
    Prefix(String),
    Suffix(String),
    /// `*`: any non-empty value.
    Present,
}

impl Value {
    pub fn parse(text: &str) -> Value {
        if text == "*" {
            Value::Present
        } else if let Some(prefix) = text.strip_suffix('*') {
            Value::Prefix(prefix.to_owned())
        } else if let Some(suffix) = text.strip_prefix('*') {
            Value::Suffix(suffix.to_owned())
        } else {
            Value::Exact(text.to_owned())
        }
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            Value::Exact(v) => value == v,
            Value::Prefix(p) => value.starts_with(p.as_str()),
            Value::Suffix(s) => value.ends_with(s.as_str()),
            Value::Present => !value.is_empty(),
        }
    }

    /// For hosts: ASCII case does not matter.
    pub fn matches_ignoring_case(&self, value: &str) -> bool {
        let (v, n) = (value.as_bytes(), |s: &str| s.len());
        match self {
            Value::Exact(e) => value.eq_ignore_ascii_case(e),
            Value::Prefix(p) => v.len() >= n(p) && v[..n(p)].eq_ignore_ascii_case(p.as_bytes()),
            Value::Suffix(s) => v.len() >= n(s) && v[v.len() - n(s)..].eq_ignore_ascii_case(s.as_bytes()),
            Value::Present => !value.is_empty(),
        }
    }
}

/// A list of values: matches when any does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AnyOf(pub Vec<Value>);

impl AnyOf {
    pub fn parse(values: &[String]) -> AnyOf {
        AnyOf(values.iter().map(|v| Value::parse(v)).collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, value: &str) -> bool {
        self.0.iter().any(|m| m.matches(value))
    }

    pub fn matches_ignoring_case(&self, value: &str) -> bool {
        self.0.iter().any(|m| m.matches_ignoring_case(value))
    }
}

/// A path: Istio's string syntax, or a template of segments where `{*}` is one segment and a
/// final `{**}` any number (zero included) of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathMatch {
    Value(Value),
    Template(Vec<Segment>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    One,
    Rest,
}

impl PathMatch {
    pub fn parse(text: &str) -> Result<PathMatch, String> {
        if !text.contains('{') {
            return Ok(PathMatch::Value(Value::parse(text)));
        }
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!("{text:?}: a path template starts with '/'"));
        };
        let segments: Vec<Segment> = rest
            .split('/')
            .map(|s| match s {
                "{*}" => Ok(Segment::One),
                "{**}" => Ok(Segment::Rest),
                s if s.contains(['{', '}', '*']) => {
                    Err(format!("{text:?}: a template segment is {{*}} or {{**}} alone, not {s:?}"))
                }
                s => Ok(Segment::Literal(s.to_owned())),
            })
            .collect::<Result<_, _>>()?;
        if segments.iter().rev().skip(1).any(|s| *s == Segment::Rest) {
            return Err(format!("{text:?}: {{**}} can only be the last segment"));
        }
        Ok(PathMatch::Template(segments))
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Value(v) => v.matches(path),
            PathMatch::Template(segments) => {
                let Some(rest) = path.strip_prefix('/') else { return false };
                let mut parts = rest.split('/');
                for segment in segments {
                    match segment {
                        Segment::Rest => return true,
                        Segment::One => match parts.next() {
                            Some(p) if !p.is_empty() => {}
                            _ => return false,
                        },
                        Segment::Literal(l) => {
                            if parts.next() != Some(l.as_str()) {
                                return false;
                            }
                        }
                    }
                }
                parts.next().is_none()
            }
        }
    }

    /// The literal prefix every matching path starts with, for the path index.
    pub fn literal_prefix(&self) -> Option<&str> {
        match self {
            PathMatch::Value(Value::Exact(p) | Value::Prefix(p)) => Some(p),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AnyPath(pub Vec<PathMatch>);

impl AnyPath {
    pub fn parse(values: &[String], field: &str) -> Result<AnyPath, String> {
        values
            .iter()
            .map(|v| PathMatch::parse(v).map_err(|e| format!("{field}: {e}")))
            .collect::<Result<_, _>>()
            .map(AnyPath)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, path: &str) -> bool {
        self.0.iter().any(|m| m.matches(path))
    }
}

/// Address blocks: an address (a block of one) or a CIDR.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Blocks(pub Vec<IpNet>);

impl Blocks {
    pub fn parse(values: &[String], field: &str) -> Result<Blocks, String> {
        values
            .iter()
            .map(|v| {
                v.parse::<IpNet>()
                    .or_else(|_| v.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("{field}: {v:?} is not an IP address or CIDR block"))
            })
            .collect::<Result<_, _>>()
            .map(Blocks)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// An IPv4 peer seen through an IPv6 socket (`::ffff:a.b.c.d`) is its IPv4 address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Ports as Istio writes them in `ports` and `destination.port`: numbers, exact.
pub fn parse_ports(values: &[String], field: &str) -> Result<Vec<u16>, String> {
    values
        .iter()
        .map(|v| {
            v.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| format!("{field}: {v:?} is not a port"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_string_syntax() {
        let m = |pattern: &str, value: &str| Value::parse(pattern).matches(value);
        assert!(m("/allow", "/allow") && !m("/allow", "/allowed"));
        assert!(m("/allow*", "/allow") && m("/allow*", "/allowed") && m("/allow*", "/allow/x"));
        assert!(m("*.example.com", "api.example.com") && !m("*.example.com", "example.org"));
        assert!(m("*", "x") && !m("*", ""));
        assert!(Value::parse("*.Example.COM").matches_ignoring_case("API.example.com"));
        assert!(!Value::parse("abc*").matches_ignoring_case("ab"));
    }

    #[test]
    fn path_templates() {
        let t = |pattern: &str| PathMatch::parse(pattern).unwrap();
        assert!(t("/foo/{*}").matches("/foo/bar") && !t("/foo/{*}").matches("/foo/bar/baz"));
        assert!(!t("/foo/{*}").matches("/foo/") && !t("/foo/{*}").matches("/foo"));
        assert!(t("/foo/{**}").matches("/foo/") && t("/foo/{**}").matches("/foo/a/b/c"));
        assert!(t("/{*}/bar/{**}").matches("/x/bar/y") && !t("/{*}/bar/{**}").matches("/x/baz/y"));
        for bad in ["/foo/{**}/bar", "/foo/{*}x", "foo/{*}", "/a/{x}"] {
            assert!(PathMatch::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn blocks_and_ports() {
        let b = Blocks::parse(&["10.0.0.0/8".into(), "192.168.1.7".into(), "fd00::/8".into()], "ipBlocks")
            .unwrap();
        assert!(b.contains("10.1.2.3".parse().unwrap()) && b.contains("192.168.1.7".parse().unwrap()));
        assert!(b.contains("::ffff:10.0.0.1".parse().unwrap()), "a mapped IPv4 peer");
        assert!(!b.contains("192.168.1.8".parse().unwrap()) && b.contains("fd00::1".parse().unwrap()));
        let err = Blocks::parse(&["10.0.0.0/33".into()], "from[0].source.ipBlocks").unwrap_err();
        assert!(err.contains("10.0.0.0/33"), "{err}");
        assert_eq!(parse_ports(&["8080".into()], "ports"), Ok(vec![8080]));
        assert!(parse_ports(&["80*".into()], "ports").unwrap_err().contains("80*"));
    }
}
