//! The Sprig functions Helm charts use, with Sprig's (and Go's) semantics, on the values of the
//! `gotmpl` engine. Helm's own functions (`include`, `tpl`, `toYaml`, ...) are in `engine`.
//!
//! Go's conventions kept on purpose, because a chart is written against them:
//! - Arguments declared `string` or `int` in Sprig must be one: `trim 3` is an error, as in Go.
//! - Values read from values files are float64 (Helm reads YAML through JSON), `--set` integers
//!   are int64: `kindOf` tells them apart as Helm does.
//! - Maps are copy-on-write here, not references: `set` and `merge` return the changed map, and
//!   templates use what they return (`$d = set $d "k" v`), which behaves the same under Helm.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use gotmpl::{FuncMap, TemplateError, Value};

pub(super) type Map = BTreeMap<Arc<str>, Value>;
pub(super) type FuncResult = gotmpl::Result<Value>;

pub(super) fn error(message: impl Into<String>) -> TemplateError {
    TemplateError::Exec(message.into())
}

/// The message of an engine error, without the engine's "execution error: " prefix.
pub(super) fn message(e: &TemplateError) -> String {
    match e {
        TemplateError::Exec(m) => m.clone(),
        other => other.to_string(),
    }
}

/// Go's reflect kind of a template value, as Sprig's `kindOf` names it.
pub(super) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Nil => "invalid",
        Value::Bool(_) => "bool",
        Value::Int(_) => "int64",
        Value::Uint(_) => "uint64",
        Value::Float(_) => "float64",
        Value::String(_) => "string",
        Value::List(_) => "slice",
        Value::Map(_) => "map",
        Value::Function(_) => "func",
        #[allow(unreachable_patterns)]
        _ => "string",
    }
}

/// Sprig's `empty`: nil, false, 0, "" and empty lists and maps.
pub(super) fn is_empty(v: &Value) -> bool {
    !v.is_truthy()
}

/// Go's `fmt.Sprint` of a value (`%v`): what `toString`, `join` and `quote` make of non-strings.
pub(super) fn strval(v: &Value) -> String {
    match v {
        Value::String(s) => s.to_string(),
        other => format_v(other),
    }
}

fn format_v(v: &Value) -> String {
    match v {
        Value::Nil => "<nil>".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Int(n) => n.to_string(),
        Value::Uint(n) => n.to_string(),
        Value::Float(f) => format_float(*f),
        Value::String(s) => s.to_string(),
        Value::List(items) => {
            format!("[{}]", items.iter().map(format_v).collect::<Vec<_>>().join(" "))
        }
        Value::Map(m) => format!(
            "map[{}]",
            m.iter().map(|(k, v)| format!("{k}:{}", format_v(v))).collect::<Vec<_>>().join(" ")
        ),
        other => other.to_string(),
    }
}

/// Go's `%v` (and strconv's shortest `%g`) for a float64: `2`, `0.5`, `1e+06`, `1.5e-07`.
pub(super) fn format_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".to_owned();
    }
    if f.is_infinite() {
        return if f > 0.0 { "+Inf" } else { "-Inf" }.to_owned();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0" } else { "0" }.to_owned();
    }
    // Rust's `{:e}` gives the shortest digits that round-trip, as Go's shortest formatting does.
    let sci = format!("{:e}", f.abs());
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if f < 0.0 { "-" } else { "" };
    if !(-4..6).contains(&exponent) {
        let (first, rest) = digits.split_at(1);
        let fraction = if rest.is_empty() { String::new() } else { format!(".{rest}") };
        let exp_sign = if exponent < 0 { '-' } else { '+' };
        return format!("{sign}{first}{fraction}e{exp_sign}{:02}", exponent.abs());
    }
    if exponent < 0 {
        let zeros = "0".repeat((-exponent - 1) as usize);
        return format!("{sign}0.{zeros}{digits}");
    }
    let int_len = exponent as usize + 1;
    if digits.len() <= int_len {
        format!("{sign}{digits}{}", "0".repeat(int_len - digits.len()))
    } else {
        format!("{sign}{}.{}", &digits[..int_len], &digits[int_len..])
    }
}

/// Go's `strconv.Quote` (Sprig's `quote` uses `%q`).
pub(super) fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if c == ' ' || (!c.is_control() && !c.is_whitespace() && c != '\u{feff}') => out.push(c),
            c if (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push('"');
    out
}

// --- arguments, checked as Go checks them against the Go function's parameter types

fn arity(name: &str, args: &[Value], want: usize) -> gotmpl::Result<()> {
    if args.len() == want {
        Ok(())
    } else {
        Err(error(format!("wrong number of args for {name}: want {want} got {}", args.len())))
    }
}

fn at_least(name: &str, args: &[Value], want: usize) -> gotmpl::Result<()> {
    if args.len() >= want {
        Ok(())
    } else {
        Err(error(format!("wrong number of args for {name}: want at least {want} got {}", args.len())))
    }
}

pub(super) fn string_arg<'a>(name: &str, args: &'a [Value], i: usize) -> gotmpl::Result<&'a str> {
    match args.get(i) {
        Some(Value::String(s)) => Ok(s),
        Some(Value::Nil) | None => Err(error(format!("{name}: invalid value; expected string"))),
        Some(v) => Err(error(format!("{name}: wrong type for value; expected string; got {}", kind(v)))),
    }
}

fn int_arg(name: &str, args: &[Value], i: usize) -> gotmpl::Result<i64> {
    match args.get(i) {
        Some(Value::Int(n)) => Ok(*n),
        Some(Value::Uint(n)) => i64::try_from(*n).map_err(|_| error(format!("{name}: {n} overflows int"))),
        Some(Value::Nil) | None => Err(error(format!("{name}: invalid value; expected int"))),
        Some(v) => Err(error(format!("{name}: wrong type for value; expected int; got {}", kind(v)))),
    }
}

fn map_arg(name: &str, args: &[Value], i: usize) -> gotmpl::Result<Map> {
    match args.get(i) {
        Some(Value::Map(m)) => Ok(m.as_ref().clone()),
        // A nil map: readable, and empty.
        Some(Value::Nil) | None => Ok(Map::new()),
        Some(v) => Err(error(format!(
            "{name}: wrong type for value; expected map[string]interface {{}}; got {}",
            kind(v)
        ))),
    }
}

fn string(s: impl Into<Arc<str>>) -> Value {
    Value::String(s.into())
}

fn list(items: Vec<Value>) -> Value {
    Value::List(items.into())
}

fn map(m: Map) -> Value {
    Value::Map(Arc::new(m))
}

/// Sprig's `strslice`: a list's non-nil items as strings, nothing for nil, else the one value.
fn strslice(v: &Value) -> Vec<String> {
    match v {
        Value::List(items) => items.iter().filter(|i| !matches!(i, Value::Nil)).map(strval).collect(),
        Value::Nil => Vec::new(),
        other => vec![strval(other)],
    }
}

/// spf13/cast's `ToInt`, as Sprig's `int` uses it: errors become 0.
pub(super) fn to_int(v: &Value) -> i64 {
    match v {
        Value::Int(n) => *n,
        Value::Uint(n) => *n as i64,
        Value::Float(f) => *f as i64,
        Value::Bool(b) => i64::from(*b),
        Value::String(s) => parse_go_int(trim_zero_decimal(s)).unwrap_or(0),
        _ => 0,
    }
}

/// cast's trimZeroDecimal: "2.0" reads as "2", "2.5" stays.
fn trim_zero_decimal(s: &str) -> &str {
    match s.split_once('.') {
        Some((int, fraction)) if !fraction.is_empty() && fraction.bytes().all(|b| b == b'0') => int,
        _ => s,
    }
}

/// Go's `strconv.ParseInt(s, 0, 64)`: a sign, then 0x / 0o / 0b / 0 (octal) prefixes, and
/// underscores between digits when a prefix is given.
pub(super) fn parse_go_int(s: &str) -> Option<i64> {
    let (negative, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let magnitude = parse_go_uint(body)?;
    if negative {
        if magnitude <= i64::MAX as u64 + 1 { Some((magnitude as i64).wrapping_neg()) } else { None }
    } else {
        i64::try_from(magnitude).ok()
    }
}

/// Go's `strconv.ParseUint(s, 0, 64)`.
pub(super) fn parse_go_uint(s: &str) -> Option<u64> {
    let lower = s.to_ascii_lowercase();
    let (radix, digits, prefixed) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d, true)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d, true)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d, true)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, &lower[1..], true)
    } else {
        (10, lower.as_str(), false)
    };
    let digits = if prefixed {
        if digits.starts_with('_') && radix != 8 || digits.ends_with('_') || digits.contains("__") {
            return None;
        }
        digits.replace('_', "")
    } else {
        digits.to_owned()
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(&digits, radix).ok()
}

/// mergo's `Merge` without overwrite, as Sprig's `merge` uses it: what `dst` lacks (or holds
/// empty) comes from `src`; maps on both sides merge deeply; `dst` wins otherwise.
pub(super) fn merge_into(dst: &mut Map, src: &Map) {
    for (key, src_value) in src {
        if matches!(src_value, Value::Nil) {
            continue;
        }
        match dst.get_mut(key) {
            Some(Value::Map(dst_map)) if matches!(src_value, Value::Map(_)) => {
                if let Value::Map(src_map) = src_value {
                    merge_into(Arc::make_mut(dst_map), src_map);
                }
            }
            Some(dst_value) if !is_empty(dst_value) => {}
            _ => {
                dst.insert(key.clone(), src_value.clone());
            }
        }
    }
}

/// The Sprig functions charts use (and a few neighbours), by name.
pub(super) fn sprig() -> FuncMap {
    let mut f = FuncMap::new();
    let mut add = |name: &str, func: fn(&[Value]) -> FuncResult| {
        f.insert(name.to_owned(), Arc::new(func));
    };

    // defaults and flow control
    add("default", |a| {
        at_least("default", a, 1)?;
        match a.get(1) {
            Some(given) if !is_empty(given) => Ok(given.clone()),
            _ => Ok(a[0].clone()),
        }
    });
    add("empty", |a| {
        arity("empty", a, 1)?;
        Ok(Value::Bool(is_empty(&a[0])))
    });
    add("ternary", |a| {
        arity("ternary", a, 3)?;
        match &a[2] {
            Value::Bool(b) => Ok(if *b { a[0].clone() } else { a[1].clone() }),
            v => Err(error(format!("ternary: wrong type for value; expected bool; got {}", kind(v)))),
        }
    });

    // strings
    add("quote", |a| {
        Ok(string(
            a.iter()
                .filter(|v| !matches!(v, Value::Nil))
                .map(|v| go_quote(&strval(v)))
                .collect::<Vec<_>>()
                .join(" "),
        ))
    });
    add("squote", |a| {
        Ok(string(
            a.iter()
                .filter(|v| !matches!(v, Value::Nil))
                .map(|v| format!("'{}'", strval(v)))
                .collect::<Vec<_>>()
                .join(" "),
        ))
    });
    add("toString", |a| {
        arity("toString", a, 1)?;
        Ok(string(strval(&a[0])))
    });
    add("trim", |a| {
        arity("trim", a, 1)?;
        Ok(string(string_arg("trim", a, 0)?.trim()))
    });
    add("trimSuffix", |a| {
        arity("trimSuffix", a, 2)?;
        let (suffix, s) = (string_arg("trimSuffix", a, 0)?, string_arg("trimSuffix", a, 1)?);
        Ok(string(s.strip_suffix(suffix).unwrap_or(s)))
    });
    add("trimPrefix", |a| {
        arity("trimPrefix", a, 2)?;
        let (prefix, s) = (string_arg("trimPrefix", a, 0)?, string_arg("trimPrefix", a, 1)?);
        Ok(string(s.strip_prefix(prefix).unwrap_or(s)))
    });
    add("trunc", |a| {
        arity("trunc", a, 2)?;
        let (c, s) = (int_arg("trunc", a, 0)?, string_arg("trunc", a, 1)?);
        let len = s.len() as i64;
        // Byte offsets, as Go slices strings; an offset inside a character keeps it whole.
        let cut = |i: i64| {
            let mut i = i as usize;
            while !s.is_char_boundary(i) {
                i += 1;
            }
            i
        };
        Ok(string(if c < 0 && len + c > 0 {
            &s[cut(len + c)..]
        } else if c >= 0 && len > c {
            &s[..cut(c)]
        } else {
            s
        }))
    });
    add("replace", |a| {
        arity("replace", a, 3)?;
        let (old, new, s) =
            (string_arg("replace", a, 0)?, string_arg("replace", a, 1)?, string_arg("replace", a, 2)?);
        Ok(string(s.replace(old, new)))
    });
    add("nospace", |a| {
        arity("nospace", a, 1)?;
        Ok(string(string_arg("nospace", a, 0)?.chars().filter(|c| !c.is_whitespace()).collect::<String>()))
    });
    add("lower", |a| {
        arity("lower", a, 1)?;
        Ok(string(string_arg("lower", a, 0)?.to_lowercase()))
    });
    add("upper", |a| {
        arity("upper", a, 1)?;
        Ok(string(string_arg("upper", a, 0)?.to_uppercase()))
    });
    add("contains", |a| {
        arity("contains", a, 2)?;
        Ok(Value::Bool(string_arg("contains", a, 1)?.contains(string_arg("contains", a, 0)?)))
    });
    add("hasPrefix", |a| {
        arity("hasPrefix", a, 2)?;
        Ok(Value::Bool(string_arg("hasPrefix", a, 1)?.starts_with(string_arg("hasPrefix", a, 0)?)))
    });
    add("hasSuffix", |a| {
        arity("hasSuffix", a, 2)?;
        Ok(Value::Bool(string_arg("hasSuffix", a, 1)?.ends_with(string_arg("hasSuffix", a, 0)?)))
    });
    add("indent", |a| {
        arity("indent", a, 2)?;
        Ok(string(indent(int_arg("indent", a, 0)?, string_arg("indent", a, 1)?)))
    });
    add("nindent", |a| {
        arity("nindent", a, 2)?;
        Ok(string(format!("\n{}", indent(int_arg("nindent", a, 0)?, string_arg("nindent", a, 1)?))))
    });
    add("join", |a| {
        arity("join", a, 2)?;
        Ok(string(strslice(&a[1]).join(string_arg("join", a, 0)?)))
    });
    add("splitList", |a| {
        arity("splitList", a, 2)?;
        let (sep, s) = (string_arg("splitList", a, 0)?, string_arg("splitList", a, 1)?);
        Ok(list(s.split(sep).map(string).collect()))
    });
    add("b64enc", |a| {
        arity("b64enc", a, 1)?;
        Ok(string(base64::engine::general_purpose::STANDARD.encode(string_arg("b64enc", a, 0)?)))
    });
    add("sha256sum", |a| {
        arity("sha256sum", a, 1)?;
        let digest = ring::digest::digest(&ring::digest::SHA256, string_arg("sha256sum", a, 0)?.as_bytes());
        Ok(string(digest.as_ref().iter().map(|b| format!("{b:02x}")).collect::<String>()))
    });
    add("regexMatch", |a| {
        arity("regexMatch", a, 2)?;
        let (pattern, s) = (string_arg("regexMatch", a, 0)?, string_arg("regexMatch", a, 1)?);
        // Sprig ignores a bad pattern: no match.
        Ok(Value::Bool(regex::Regex::new(pattern).is_ok_and(|r| r.is_match(s))))
    });

    // numbers
    for name in ["int", "int64"] {
        add(name, |a| {
            arity("int", a, 1)?;
            Ok(Value::Int(to_int(&a[0])))
        });
    }

    // types
    add("kindOf", |a| {
        arity("kindOf", a, 1)?;
        Ok(string(kind(&a[0])))
    });
    add("kindIs", |a| {
        arity("kindIs", a, 2)?;
        Ok(Value::Bool(string_arg("kindIs", a, 0)? == kind(&a[1])))
    });
    add("deepCopy", |a| {
        arity("deepCopy", a, 1)?;
        Ok(a[0].clone())
    });

    // lists
    add("list", |a| Ok(list(a.to_vec())));
    for name in ["append", "push"] {
        add(name, |a| {
            arity("append", a, 2)?;
            match &a[0] {
                Value::List(items) => Ok(list(items.iter().cloned().chain([a[1].clone()]).collect())),
                v => Err(error(format!("append: cannot push on type {}", kind(v)))),
            }
        });
    }
    add("prepend", |a| {
        arity("prepend", a, 2)?;
        match &a[0] {
            Value::List(items) => Ok(list([a[1].clone()].into_iter().chain(items.iter().cloned()).collect())),
            v => Err(error(format!("prepend: cannot prepend on type {}", kind(v)))),
        }
    });
    add("has", |a| {
        arity("has", a, 2)?;
        match &a[1] {
            Value::Nil => Ok(Value::Bool(false)),
            Value::List(items) => Ok(Value::Bool(items.iter().any(|i| *i == a[0]))),
            v => Err(error(format!("has: cannot find has on type {}", kind(v)))),
        }
    });
    add("compact", |a| {
        arity("compact", a, 1)?;
        match &a[0] {
            Value::List(items) => Ok(list(items.iter().filter(|i| !is_empty(i)).cloned().collect())),
            v => Err(error(format!("compact: cannot compact on type {}", kind(v)))),
        }
    });
    add("uniq", |a| {
        arity("uniq", a, 1)?;
        match &a[0] {
            Value::List(items) => {
                let mut out: Vec<Value> = Vec::new();
                for i in items.iter() {
                    if !out.contains(i) {
                        out.push(i.clone());
                    }
                }
                Ok(list(out))
            }
            v => Err(error(format!("uniq: cannot find uniq on type {}", kind(v)))),
        }
    });
    add("sortAlpha", |a| {
        arity("sortAlpha", a, 1)?;
        let mut items = strslice(&a[0]);
        items.sort();
        Ok(list(items.into_iter().map(string).collect()))
    });

    // dicts
    add("dict", |a| {
        let mut m = Map::new();
        for pair in a.chunks(2) {
            let value = pair.get(1).cloned().unwrap_or_else(|| string(""));
            m.insert(strval(&pair[0]).into(), value);
        }
        Ok(map(m))
    });
    add("set", |a| {
        arity("set", a, 3)?;
        let mut m = map_arg("set", a, 0)?;
        m.insert(string_arg("set", a, 1)?.into(), a[2].clone());
        Ok(map(m))
    });
    add("unset", |a| {
        arity("unset", a, 2)?;
        let mut m = map_arg("unset", a, 0)?;
        m.remove(string_arg("unset", a, 1)?);
        Ok(map(m))
    });
    add("hasKey", |a| {
        arity("hasKey", a, 2)?;
        Ok(Value::Bool(map_arg("hasKey", a, 0)?.contains_key(string_arg("hasKey", a, 1)?)))
    });
    add("keys", |a| {
        // Go's map order is random; sorted is one of its orders, and a stable one.
        let mut keys = Vec::new();
        for i in 0..a.len() {
            keys.extend(map_arg("keys", a, i)?.into_keys().map(Value::String));
        }
        Ok(list(keys))
    });
    add("merge", |a| {
        at_least("merge", a, 1)?;
        let mut dst = map_arg("merge", a, 0)?;
        for i in 1..a.len() {
            merge_into(&mut dst, &map_arg("merge", a, i)?);
        }
        Ok(map(dst))
    });

    // Helm's failure functions (no template set needed).
    add("fail", |a| {
        arity("fail", a, 1)?;
        Err(error(string_arg("fail", a, 0)?))
    });
    add("required", |a| {
        arity("required", a, 2)?;
        let warning = string_arg("required", a, 0)?;
        match &a[1] {
            Value::Nil => Err(error(warning)),
            Value::String(s) if s.is_empty() => Err(error(warning)),
            v => Ok(v.clone()),
        }
    });
    f
}

fn indent(spaces: i64, s: &str) -> String {
    let pad = " ".repeat(spaces.max(0) as usize);
    format!("{pad}{}", s.replace('\n', &format!("\n{pad}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_go_prints_them() {
        for (f, go) in [
            (2.0, "2"),
            (0.5, "0.5"),
            (123456.0, "123456"),
            (1e6, "1e+06"),
            (1234567.0, "1.234567e+06"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-2.5, "-2.5"),
            (1e21, "1e+21"),
        ] {
            assert_eq!(format_float(f), go, "{f}");
        }
    }

    #[test]
    fn quote_escapes_as_go_does() {
        assert_eq!(go_quote("a\"b\\c\nd\te"), r#""a\"b\\c\nd\te""#);
        assert_eq!(go_quote("µs é"), "\"µs é\"");
        assert_eq!(go_quote("\u{1}"), r#""\x01""#);
    }

    #[test]
    fn int_reads_strings_as_cast_does() {
        assert_eq!(to_int(&string("12")), 12);
        assert_eq!(to_int(&string("2.0")), 2);
        assert_eq!(to_int(&string("2.5")), 0);
        assert_eq!(to_int(&string("abc")), 0);
        assert_eq!(to_int(&string("0x10")), 16);
        assert_eq!(to_int(&string("010")), 8);
        assert_eq!(to_int(&Value::Float(3.9)), 3);
        assert_eq!(to_int(&Value::Nil), 0);
    }

    #[test]
    fn merge_keeps_the_destination_and_fills_in() {
        let mut dst = Map::new();
        dst.insert("a".into(), string("dst"));
        dst.insert("empty".into(), string(""));
        let mut src = Map::new();
        src.insert("a".into(), string("src"));
        src.insert("b".into(), string("src"));
        src.insert("empty".into(), string("src"));
        merge_into(&mut dst, &src);
        assert_eq!(dst.get("a"), Some(&string("dst")));
        assert_eq!(dst.get("b"), Some(&string("src")));
        assert_eq!(dst.get("empty"), Some(&string("src")));
    }
}
