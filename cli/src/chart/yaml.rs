//! Helm's `toYaml`, `fromYaml` and `toJson`, text for text.
//!
//! Helm's `toYaml` is sigs.k8s.io/yaml's Marshal: the value goes through encoding/json, is read
//! back by go-yaml v2 and written by go-yaml v2's emitter. What a chart hashes (a checksum of a
//! rendered ConfigMap) depends on that exact text, so this writer follows go-yaml v2's choices:
//! keys in its "natural" order, block style with sequences not indented under their key, plain
//! scalars unless a plain one would read back as something else (then double quotes; single
//! quotes when only the plain syntax is in the way), literal blocks for multi-line strings,
//! lines folded at spaces past column 80.

use std::cmp::Ordering;

use gotmpl::Value;

use super::funcs::{Map, format_float, parse_go_int, parse_go_uint};
use super::values::from_yaml_value;

/// A value as go-yaml v2 holds it after reading encoding/json's text.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(String, Node)>),
}

/// `toYaml`: None where Helm's would fail and render "" (NaN, infinities, functions).
pub(super) fn to_yaml(v: &Value) -> Option<String> {
    let node = through_json(v)?;
    let mut e = Emitter::default();
    e.root(&node);
    Some(e.out)
}

/// `fromYaml`: a map, or a map holding the parse error under "Error", as Helm's.
pub(super) fn from_yaml(text: &str) -> Value {
    let mut m = Map::new();
    if text.trim().is_empty() {
        return Value::Map(m.into());
    }
    match serde_saphyr::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Null) => {}
        Ok(parsed @ serde_json::Value::Object(_)) => return from_yaml_value(&parsed),
        Ok(other) => {
            let found = match other {
                serde_json::Value::Array(_) => "a list",
                serde_json::Value::String(_) => "a string",
                _ => "a scalar",
            };
            m.insert("Error".into(), Value::String(format!("cannot unmarshal {found} into a map").into()));
        }
        Err(e) => {
            m.insert("Error".into(), Value::String(e.to_string().into()));
        }
    }
    Value::Map(m.into())
}

/// `toJson` (encoding/json's Marshal): None where Helm's would fail and render "".
pub(super) fn to_json(v: &Value) -> Option<String> {
    let mut out = String::new();
    write_json(v, &mut out)?;
    Some(out)
}

fn write_json(v: &Value, out: &mut String) -> Option<()> {
    match v {
        Value::Nil => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(n) => out.push_str(&n.to_string()),
        Value::Uint(n) => out.push_str(&n.to_string()),
        Value::Float(f) => out.push_str(&json_float(*f)?),
        Value::String(s) => json_string(s, out),
        Value::List(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(item, out)?;
            }
            out.push(']');
        }
        Value::Map(m) => {
            out.push('{');
            for (i, (k, item)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json_string(k, out);
                out.push(':');
                write_json(item, out)?;
            }
            out.push('}');
        }
        _ => return None,
    }
    Some(())
}

/// encoding/json's float64: shortest digits, exponent only below 1e-6 or from 1e21 up.
fn json_float(f: f64) -> Option<String> {
    if !f.is_finite() {
        return None;
    }
    let abs = f.abs();
    if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        let sci = format!("{f:e}");
        let (mantissa, exponent) = sci.split_once('e')?;
        let exponent: i32 = exponent.parse().ok()?;
        let sign = if exponent < 0 { '-' } else { '+' };
        Some(format!("{mantissa}e{sign}{}", exponent.abs()))
    } else {
        Some(format!("{f}"))
    }
}

/// encoding/json's string escaping, HTML-safe as Go's default is.
fn json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// What go-yaml v2 holds after reading `json.Marshal(v)`: numbers that JSON writes without a
/// fraction become integers, maps become key-sorted pairs.
fn through_json(v: &Value) -> Option<Node> {
    Some(match v {
        Value::Nil => Node::Null,
        Value::Bool(b) => Node::Bool(*b),
        Value::Int(n) => Node::Int(*n),
        Value::Uint(n) => Node::Uint(*n),
        Value::Float(f) => {
            if !f.is_finite() {
                return None;
            }
            if f.fract() == 0.0 && f.abs() < 1e21 {
                if *f >= i64::MIN as f64 && *f < i64::MAX as f64 {
                    Node::Int(*f as i64)
                } else if *f >= 0.0 && *f < u64::MAX as f64 {
                    Node::Uint(*f as u64)
                } else {
                    Node::Float(*f)
                }
            } else {
                Node::Float(*f)
            }
        }
        Value::String(s) => Node::Str(s.to_string()),
        Value::List(items) => Node::Seq(items.iter().map(through_json).collect::<Option<_>>()?),
        Value::Map(m) => {
            let mut entries =
                m.iter().map(|(k, v)| Some((k.to_string(), through_json(v)?))).collect::<Option<Vec<_>>>()?;
            entries.sort_by(|(a, _), (b, _)| natural_order(a, b));
            Node::Map(entries)
        }
        _ => return None,
    })
}

/// go-yaml v2's key order (its keyList.Less): letters by code point, runs of digits by value,
/// a letter after anything else.
fn natural_order(a: &str, b: &str) -> Ordering {
    if natural_less(a, b) {
        Ordering::Less
    } else if natural_less(b, a) {
        Ordering::Greater
    } else {
        Ordering::Equal
    }
}

fn natural_less(a: &str, b: &str) -> bool {
    let ar: Vec<char> = a.chars().collect();
    let br: Vec<char> = b.chars().collect();
    let mut i = 0;
    while i < ar.len() && i < br.len() {
        if ar[i] == br[i] {
            i += 1;
            continue;
        }
        let al = ar[i].is_alphabetic();
        let bl = br[i].is_alphabetic();
        if al && bl {
            return ar[i] < br[i];
        }
        if al || bl {
            return bl;
        }
        let (mut an, mut bn) = (0i64, 0i64);
        if ar[i] == '0' || br[i] == '0' {
            let mut j = i;
            while j > 0 && ar[j - 1].is_ascii_digit() {
                j -= 1;
                if ar[j] != '0' {
                    an = 1;
                    bn = 1;
                    break;
                }
            }
        }
        let mut ai = i;
        while ai < ar.len() && ar[ai].is_ascii_digit() {
            an = an.wrapping_mul(10).wrapping_add(i64::from(ar[ai] as u8 - b'0'));
            ai += 1;
        }
        let mut bi = i;
        while bi < br.len() && br[bi].is_ascii_digit() {
            bn = bn.wrapping_mul(10).wrapping_add(i64::from(br[bi] as u8 - b'0'));
            bi += 1;
        }
        if an != bn {
            return an < bn;
        }
        if ai != bi {
            return ai < bi;
        }
        return ar[i] < br[i];
    }
    ar.len() < br.len()
}

/// go-yaml v2's resolve: would this text, written plain, read back as a string?
fn resolves_to_string(s: &str) -> bool {
    const SPECIAL: &[&str] = &[
        "y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON", "n", "N", "no", "No", "NO",
        "false", "False", "FALSE", "off", "Off", "OFF", "", "~", "null", "Null", "NULL", ".nan", ".NaN",
        ".NAN", ".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF", "-.inf", "-.Inf", "-.INF", "<<",
    ];
    if SPECIAL.contains(&s) {
        return false;
    }
    match s.as_bytes()[0] {
        b'.' => go_parse_float(s).is_none(),
        b'+' | b'-' | b'0'..=b'9' => {
            if is_timestamp(s) {
                return false;
            }
            let plain = s.replace('_', "");
            if parse_go_int(&plain).is_some() || parse_go_uint(&plain).is_some() {
                return false;
            }
            if is_yaml_float(&plain) && go_parse_float(&plain).is_some() {
                return false;
            }
            let binary = plain.strip_prefix("0b").or_else(|| plain.strip_prefix("-0b"));
            !binary.is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b == b'0' || b == b'1'))
        }
        _ => true,
    }
}

/// strconv.ParseFloat's decimal forms (the ones a plain YAML scalar can take here).
fn go_parse_float(s: &str) -> Option<f64> {
    let body = s.trim_start_matches(['+', '-']);
    if body.is_empty()
        || body.contains('_')
        || !body.bytes().all(|b| b.is_ascii_digit() || b".eE+-".contains(&b))
    {
        return None;
    }
    s.parse().ok()
}

/// `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`
fn is_yaml_float(s: &str) -> bool {
    let b = s.trim_start_matches(['+', '-']).as_bytes();
    if s.len() - b.len() > 1 {
        return false;
    }
    let digits = |from: usize| b[from..].iter().take_while(|c| c.is_ascii_digit()).count();
    let mut i;
    if b.first() == Some(&b'.') {
        let n = digits(1);
        if n == 0 {
            return false;
        }
        i = 1 + n;
    } else {
        let n = digits(0);
        if n == 0 {
            return false;
        }
        i = n;
        if b.get(i) == Some(&b'.') {
            i += 1 + digits(i + 1);
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let n = digits(i);
        if n == 0 {
            return false;
        }
        i += n;
    }
    i == b.len()
}

/// go-yaml v2's timestamps: 2006-1-2, optionally with a time.
fn is_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 6 || !b[..4].iter().all(u8::is_ascii_digit) || b[4] != b'-' {
        return false;
    }
    let (date, time) = match s.find(['T', 't', ' ']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let parts: Vec<&str> = date.split('-').collect();
    let valid_date = parts.len() == 3
        && parts[1..].iter().all(|p| (1..=2).contains(&p.len()) && p.bytes().all(|c| c.is_ascii_digit()))
        && (1..=12).contains(&parts[1].parse::<u32>().unwrap_or(0))
        && (1..=31).contains(&parts[2].parse::<u32>().unwrap_or(0));
    match time {
        None => valid_date,
        Some(t) => {
            valid_date && {
                let t = t.trim_end_matches('Z');
                let clock = t.split(['+', '-']).next().unwrap_or("");
                let hms: Vec<&str> = clock.split(':').collect();
                hms.len() == 3
                    && hms
                        .iter()
                        .all(|p| !p.is_empty() && p.split('.').all(|q| q.bytes().all(|c| c.is_ascii_digit())))
            }
        }
    }
}

/// `^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$`
fn is_base60_float(s: &str) -> bool {
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (main, fraction) = match body.split_once('.') {
        Some((m, f)) => (m, Some(f)),
        None => (body, None),
    };
    if fraction.is_some_and(|f| !f.bytes().all(|c| c.is_ascii_digit() || c == b'_')) {
        return false;
    }
    let mut parts = main.split(':');
    let first = parts.next().unwrap_or("");
    if !first.as_bytes().first().is_some_and(u8::is_ascii_digit)
        || !first.bytes().all(|c| c.is_ascii_digit() || c == b'_')
    {
        return false;
    }
    let rest: Vec<&str> = parts.collect();
    !rest.is_empty()
        && rest.iter().all(|p| match p.as_bytes() {
            [d] => d.is_ascii_digit(),
            [t, d] => (b'0'..=b'5').contains(t) && d.is_ascii_digit(),
            _ => false,
        })
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Style {
    Plain,
    Single,
    Double,
    Literal,
}

/// go-yaml v2's scalar analysis (yaml_emitter_analyze_scalar), in the block context.
struct Analysis {
    multiline: bool,
    block_plain_allowed: bool,
    single_quoted_allowed: bool,
    block_allowed: bool,
}

fn is_printable(c: char) -> bool {
    let c = c as u32;
    c == 0x0A
        || (0x20..=0x7E).contains(&c)
        || (0xA0..=0xD7FF).contains(&c)
        || ((0xE000..=0xFFFD).contains(&c) && c != 0xFEFF)
}

fn is_break(c: char) -> bool {
    matches!(c, '\r' | '\n' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

fn analyze(s: &str) -> Analysis {
    if s.is_empty() {
        return Analysis {
            multiline: false,
            block_plain_allowed: true,
            single_quoted_allowed: true,
            block_allowed: false,
        };
    }
    let chars: Vec<char> = s.chars().collect();
    let mut block_indicators = s.starts_with("---") || s.starts_with("...");
    let (mut line_breaks, mut special) = (false, false);
    let (mut leading_space, mut leading_break, mut trailing_space, mut trailing_break) =
        (false, false, false, false);
    let (mut break_space, mut space_break) = (false, false);
    let (mut previous_space, mut previous_break) = (false, false);
    let mut preceded_by_whitespace = true;
    for (i, &c) in chars.iter().enumerate() {
        let followed_by_whitespace = chars.get(i + 1).is_none_or(|n| *n == ' ' || *n == '\t');
        if i == 0 {
            match c {
                '#' | ',' | '[' | ']' | '{' | '}' | '&' | '*' | '!' | '|' | '>' | '\'' | '"' | '%' | '@'
                | '`' => {
                    block_indicators = true;
                }
                '?' | ':' | '-' if followed_by_whitespace => block_indicators = true,
                _ => {}
            }
        } else {
            match c {
                ':' if followed_by_whitespace => block_indicators = true,
                '#' if preceded_by_whitespace => block_indicators = true,
                _ => {}
            }
        }
        if !is_printable(c) {
            special = true;
        }
        if c == ' ' {
            leading_space |= i == 0;
            trailing_space |= i + 1 == chars.len();
            break_space |= previous_break;
            previous_space = true;
            previous_break = false;
        } else if is_break(c) {
            line_breaks = true;
            leading_break |= i == 0;
            trailing_break |= i + 1 == chars.len();
            space_break |= previous_space;
            previous_space = false;
            previous_break = true;
        } else {
            previous_space = false;
            previous_break = false;
        }
        preceded_by_whitespace = c == ' ' || c == '\t' || is_break(c) || c == '\0';
    }
    let mut a = Analysis {
        multiline: line_breaks,
        block_plain_allowed: true,
        single_quoted_allowed: true,
        block_allowed: true,
    };
    if leading_space || leading_break || trailing_space || trailing_break {
        a.block_plain_allowed = false;
    }
    if trailing_space {
        a.block_allowed = false;
    }
    if break_space {
        a.block_plain_allowed = false;
        a.single_quoted_allowed = false;
    }
    if space_break || special {
        a.block_plain_allowed = false;
        a.single_quoted_allowed = false;
        a.block_allowed = false;
    }
    if line_breaks || block_indicators {
        a.block_plain_allowed = false;
    }
    a
}

/// go-yaml v2's choice of style for a string (stringv, then select_scalar_style).
fn style_of(s: &str, simple_key: bool) -> Style {
    let can_use_plain = resolves_to_string(s) && !is_base60_float(s);
    let a = analyze(s);
    let mut style = if s.contains('\n') {
        Style::Literal
    } else if can_use_plain {
        Style::Plain
    } else {
        Style::Double
    };
    if simple_key && a.multiline {
        style = Style::Double;
    }
    if style == Style::Plain && (!a.block_plain_allowed || (s.is_empty() && simple_key)) {
        style = Style::Single;
    }
    if style == Style::Single && !a.single_quoted_allowed {
        style = Style::Double;
    }
    if style == Style::Literal && (!a.block_allowed || simple_key) {
        style = Style::Double;
    }
    style
}

/// go-yaml v2's default line width.
const BEST_WIDTH: usize = 80;

#[derive(Default)]
struct Emitter {
    out: String,
    column: usize,
}

impl Emitter {
    fn put(&mut self, c: char) {
        self.out.push(c);
        if c == '\n' {
            self.column = 0;
        } else {
            self.column += 1;
        }
    }

    fn put_str(&mut self, s: &str) {
        for c in s.chars() {
            self.put(c);
        }
    }

    /// A new line (unless at the start of one) indented to `indent`.
    fn indent(&mut self, indent: usize) {
        if !self.out.is_empty() && !self.out.ends_with('\n') {
            self.put('\n');
        }
        while self.column < indent {
            self.put(' ');
        }
    }

    fn root(&mut self, node: &Node) {
        match node {
            Node::Map(entries) if !entries.is_empty() => self.block_map(entries, 0, true),
            Node::Seq(items) if !items.is_empty() => self.block_seq(items, 0, true),
            scalar => self.scalar(scalar, 2, false, false),
        }
        if !self.out.ends_with('\n') {
            self.put('\n');
        }
    }

    fn block_map(&mut self, entries: &[(String, Node)], indent: usize, first_inline: bool) {
        for (i, (key, value)) in entries.iter().enumerate() {
            if i > 0 || !first_inline {
                self.indent(indent);
            }
            self.string(key, indent + 2, true, false);
            self.put(':');
            self.value(value, indent, true);
        }
    }

    fn block_seq(&mut self, items: &[Node], indent: usize, first_inline: bool) {
        for (i, item) in items.iter().enumerate() {
            if i > 0 || !first_inline {
                self.indent(indent);
            }
            self.put('-');
            self.value(item, indent, false);
        }
    }

    /// The value after `key:` (in a map at `indent`) or after `-` (in a sequence at `indent`).
    fn value(&mut self, node: &Node, indent: usize, in_map: bool) {
        match node {
            Node::Map(entries) if !entries.is_empty() => {
                if in_map {
                    self.block_map(entries, indent + 2, false);
                } else {
                    self.put(' ');
                    self.block_map(entries, indent + 2, true);
                }
            }
            Node::Seq(items) if !items.is_empty() => {
                if in_map {
                    // go-yaml writes a map's sequences at the key's own indentation.
                    self.block_seq(items, indent, false);
                } else {
                    self.put(' ');
                    self.block_seq(items, indent + 2, true);
                }
            }
            scalar => self.scalar(scalar, indent + 2, true, true),
        }
    }

    fn scalar(&mut self, node: &Node, indent: usize, lead: bool, allow_breaks: bool) {
        let plain = match node {
            Node::Null => "null".to_owned(),
            Node::Bool(b) => b.to_string(),
            Node::Int(n) => n.to_string(),
            Node::Uint(n) => n.to_string(),
            Node::Float(f) => match format_float(*f).as_str() {
                "+Inf" => ".inf".to_owned(),
                "-Inf" => "-.inf".to_owned(),
                "NaN" => ".nan".to_owned(),
                other => other.to_owned(),
            },
            Node::Str(s) => return self.string(s, indent, false, lead && allow_breaks),
            Node::Seq(_) => "[]".to_owned(),
            Node::Map(_) => "{}".to_owned(),
        };
        if lead {
            self.put(' ');
        }
        self.put_str(&plain);
    }

    /// A string scalar; `lead` puts the space that separates it from `:` or `-`.
    fn string(&mut self, s: &str, indent: usize, simple_key: bool, lead: bool) {
        let allow_breaks = !simple_key;
        match style_of(s, simple_key) {
            Style::Plain => {
                if lead {
                    self.put(' ');
                }
                self.plain(s, indent, allow_breaks);
            }
            Style::Single => {
                if lead {
                    self.put(' ');
                }
                self.single_quoted(s, indent, allow_breaks);
            }
            Style::Double => {
                if lead {
                    self.put(' ');
                }
                self.double_quoted(s, indent, allow_breaks);
            }
            Style::Literal => {
                self.put_str(" |");
                self.literal(s, indent);
            }
        }
    }

    fn plain(&mut self, s: &str, indent: usize, allow_breaks: bool) {
        let chars: Vec<char> = s.chars().collect();
        let mut spaces = false;
        for (i, &c) in chars.iter().enumerate() {
            if c == ' ' {
                if allow_breaks && !spaces && self.column > BEST_WIDTH && chars.get(i + 1) != Some(&' ') {
                    self.indent(indent);
                } else {
                    self.put(c);
                }
                spaces = true;
            } else {
                self.put(c);
                spaces = false;
            }
        }
    }

    fn single_quoted(&mut self, s: &str, indent: usize, allow_breaks: bool) {
        let chars: Vec<char> = s.chars().collect();
        self.put('\'');
        let mut spaces = false;
        for (i, &c) in chars.iter().enumerate() {
            if c == ' ' {
                if allow_breaks
                    && !spaces
                    && self.column > BEST_WIDTH
                    && i > 0
                    && i + 1 < chars.len()
                    && chars.get(i + 1) != Some(&' ')
                {
                    self.indent(indent);
                } else {
                    self.put(c);
                }
                spaces = true;
            } else {
                if c == '\'' {
                    self.put('\'');
                }
                self.put(c);
                spaces = false;
            }
        }
        self.put('\'');
    }

    fn double_quoted(&mut self, s: &str, indent: usize, allow_breaks: bool) {
        let chars: Vec<char> = s.chars().collect();
        self.put('"');
        let mut spaces = false;
        for (i, &c) in chars.iter().enumerate() {
            if !is_printable(c) || is_break(c) || c == '"' || c == '\\' || (i == 0 && c == '\u{feff}') {
                self.put('\\');
                match c {
                    '\0' => self.put('0'),
                    '\u{7}' => self.put('a'),
                    '\u{8}' => self.put('b'),
                    '\t' => self.put('t'),
                    '\n' => self.put('n'),
                    '\u{b}' => self.put('v'),
                    '\u{c}' => self.put('f'),
                    '\r' => self.put('r'),
                    '\u{1b}' => self.put('e'),
                    '"' => self.put('"'),
                    '\\' => self.put('\\'),
                    '\u{85}' => self.put('N'),
                    '\u{a0}' => self.put('_'),
                    '\u{2028}' => self.put('L'),
                    '\u{2029}' => self.put('P'),
                    c if (c as u32) <= 0xFF => self.put_str(&format!("x{:02X}", c as u32)),
                    c if (c as u32) <= 0xFFFF => self.put_str(&format!("u{:04X}", c as u32)),
                    c => self.put_str(&format!("U{:08X}", c as u32)),
                }
                spaces = false;
            } else if c == ' ' {
                if allow_breaks && !spaces && self.column > BEST_WIDTH && i > 0 && i + 1 < chars.len() {
                    self.indent(indent);
                    if chars.get(i + 1) == Some(&' ') {
                        self.put('\\');
                    }
                } else {
                    self.put(c);
                }
                spaces = true;
            } else {
                self.put(c);
                spaces = false;
            }
        }
        self.put('"');
    }

    fn literal(&mut self, s: &str, indent: usize) {
        let chars: Vec<char> = s.chars().collect();
        if chars.first().is_some_and(|c| *c == ' ' || is_break(*c)) {
            self.put('2');
        }
        match chars.as_slice() {
            [] => self.put('-'),
            [.., last] if !is_break(*last) => self.put('-'),
            [_] => self.put('+'),
            [.., before, _] if is_break(*before) => self.put('+'),
            _ => {}
        }
        self.put('\n');
        let mut breaks = true;
        for &c in &chars {
            if is_break(c) {
                self.out.push(c);
                self.column = 0;
                breaks = true;
            } else {
                if breaks {
                    self.indent(indent);
                }
                self.put(c);
                breaks = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn yaml(text: &str) -> String {
        let v = from_yaml_value(&serde_saphyr::from_str::<serde_json::Value>(text).unwrap());
        to_yaml(&v).unwrap()
    }

    #[test]
    fn writes_block_style_as_go_yaml_v2() {
        let out = yaml(
            "b: 1\na:\n  list: [x, {k: v, j: [1, 2]}, [p, q]]\n  empty: {}\n  none: []\n  n: null\n  f: 0.5\n  big: 1e6\n",
        );
        let expected = "\
a:
  big: 1000000
  empty: {}
  f: 0.5
  list:
  - x
  - j:
    - 1
    - 2
    k: v
  - - p
    - q
  \"n\": null
  none: []
b: 1
";
        assert_eq!(out, expected);
    }

    #[test]
    fn quotes_only_what_would_read_back_differently() {
        let out = yaml(
            "s1: \"true\"\ns2: \"15017\"\ns3: \"0.1.0\"\ns4: \"\"\ns5: \"*\"\ns6: \"a: b\"\ns7: \"yes\"\ns8: \"1e3\"\n\
             s9: \"trellisd.ns.svc:15012\"\ns10: \"--flag\"\ns11: \"- x\"\ns12: \"tab\\there\"\ns13: \"it's\"\ns14: \"2001-12-14\"\n\
             s15: \"190:20:30\"\ns16: \"0x1F\"\ns17: \"a #b\"\ns18: \"x \"\n",
        );
        let expected = [
            "s1: \"true\"",
            "s2: \"15017\"",
            "s3: 0.1.0",
            "s4: \"\"",
            "s5: '*'",
            "s6: 'a: b'",
            "s7: \"yes\"",
            "s8: \"1e3\"",
            "s9: trellisd.ns.svc:15012",
            "s10: --flag",
            "s11: '- x'",
            "s12: \"tab\\there\"",
            "s13: it's",
            "s14: \"2001-12-14\"",
            "s15: \"190:20:30\"",
            "s16: \"0x1F\"",
            "s17: 'a #b'",
            "s18: 'x '",
        ];
        for line in expected {
            assert!(out.lines().any(|l| l == line), "{line} not in\n{out}");
        }
    }

    #[test]
    fn keys_sort_naturally() {
        let out = yaml("a10: 1\na9: 1\nB: 1\na: 1\n_x: 1\n");
        // Go puts what is not a letter before letters.
        assert_eq!(out, "_x: 1\nB: 1\na: 1\na9: 1\na10: 1\n");
    }

    #[test]
    fn multi_line_strings_are_literal_blocks() {
        let out =
            yaml("t: \"line one\\n  indented\\n\\nlast\\n\"\nu: \"no newline\\nat end\"\nw: \"two\\n\\n\"\n");
        assert_eq!(
            out,
            "t: |\n  line one\n    indented\n\n  last\nu: |-\n  no newline\n  at end\nw: |+\n  two\n\n"
        );
    }

    #[test]
    fn long_lines_fold_at_spaces_past_column_80() {
        let words = vec!["word"; 30].join(" ");
        let out = yaml(&format!("k: {words}\n"));
        let first = out.lines().next().unwrap();
        assert!(first.chars().count() > 80 && first.chars().count() < 90, "{out}");
        assert!(out.lines().nth(1).unwrap().starts_with("  word"), "{out}");
        let v = serde_saphyr::from_str::<serde_json::Value>(&out).unwrap();
        assert_eq!(v["k"], serde_json::Value::String(words));
    }

    #[test]
    fn from_yaml_reports_errors_in_the_map() {
        let Value::Map(m) = from_yaml("- a\n") else { panic!() };
        assert!(m.contains_key("Error"));
        let Value::Map(m) = from_yaml("a: 1\n") else { panic!() };
        assert_eq!(m.get("a"), Some(&Value::Float(1.0)));
        assert_eq!(from_yaml(""), Value::Map(Arc::new(Map::new())));
    }

    #[test]
    fn to_json_escapes_as_go() {
        let v = from_yaml_value(&serde_json::json!({"b": "<a&b>", "a": [1, 0.5, null, true]}));
        assert_eq!(to_json(&v).unwrap(), r#"{"a":[1,0.5,null,true],"b":"\u003ca\u0026b\u003e"}"#);
    }
}
