//! Values as Helm computes them: the chart's values.yaml, under the user's values (each `-f`
//! file deep-merged in order, then each `--set`). Maps merge key by key, anything else (lists
//! included) is replaced, and a user `null` deletes the chart's default.

use std::path::Path;
use std::sync::Arc;

use gotmpl::Value;

use super::funcs::Map;

/// Where a user value came from, and the dotted paths it sets (`injector.replicaCount`,
/// `cni.excludeNamespaces[1]`), to name it when a template rejects one.
#[derive(Debug, Clone)]
pub(super) struct Origin {
    pub label: String,
    pub paths: Vec<String>,
}

/// The user's values, merged, and where each came from.
#[derive(Debug, Default)]
pub(super) struct UserValues {
    pub values: Map,
    pub origins: Vec<Origin>,
}

/// Template data from parsed YAML. Numbers are float64, as Helm reads values files (through
/// JSON), so `kindOf` and printing agree with Helm.
pub(super) fn from_yaml_value(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::String(s) => Value::String(s.as_str().into()),
        serde_json::Value::Array(items) => {
            Value::List(items.iter().map(from_yaml_value).collect::<Vec<_>>().into())
        }
        serde_json::Value::Object(m) => {
            Value::Map(Arc::new(m.iter().map(|(k, v)| (Arc::from(k.as_str()), from_yaml_value(v))).collect()))
        }
    }
}

/// Parses a values document: a map, or nothing at all.
pub(super) fn parse_values(text: &str) -> Result<Map, String> {
    let parsed: serde_json::Value = if text.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_saphyr::from_str(text).map_err(|e| e.to_string())?
    };
    match from_yaml_value(&parsed) {
        Value::Nil => Ok(Map::new()),
        Value::Map(m) => Ok(Arc::unwrap_or_clone(m)),
        other => Err(format!("must be a map of values (key: value), found a {}", yaml_kind(&other))),
    }
}

fn yaml_kind(v: &Value) -> &'static str {
    match v {
        Value::List(_) => "list",
        Value::String(_) => "string",
        Value::Float(_) | Value::Int(_) | Value::Uint(_) => "number",
        Value::Bool(_) => "boolean",
        _ => "value",
    }
}

/// Reads the `-f` files and applies the `--set` arguments, in Helm's order.
pub(super) fn user_values(
    files: &[impl AsRef<Path>],
    sets: &[String],
) -> Result<UserValues, (String, String)> {
    let mut user = UserValues::default();
    for file in files {
        let file = file.as_ref();
        let label = format!("-f {}", file.display());
        let text =
            std::fs::read_to_string(file).map_err(|e| (label.clone(), format!("cannot read it: {e}")))?;
        let values = parse_values(&text).map_err(|e| (label.clone(), e))?;
        let mut paths = Vec::new();
        collect_paths(&values, "", &mut paths);
        merge_maps(&mut user.values, values);
        user.origins.push(Origin { label, paths });
    }
    for set in sets {
        let label = format!("--set {set}");
        let assignments = parse_set(set).map_err(|e| (label.clone(), e))?;
        let mut paths = Vec::new();
        for (path, value) in assignments {
            paths.push(path_string(&path));
            set_path(&mut user.values, &path, value);
        }
        user.origins.push(Origin { label, paths });
    }
    Ok(user)
}

/// Helm's mergeMaps for `-f` files: maps merge deeply, the later file wins everything else.
pub(super) fn merge_maps(dst: &mut Map, src: Map) {
    for (key, value) in src {
        match (dst.get_mut(&key), value) {
            (Some(Value::Map(d)), Value::Map(s)) => merge_maps(Arc::make_mut(d), Arc::unwrap_or_clone(s)),
            (_, value) => {
                dst.insert(key, value);
            }
        }
    }
}

/// Helm's CoalesceValues: the user's values over the chart's defaults. A user `null` removes the
/// default; a map merges into a default map; anything else replaces the default.
pub(super) fn coalesce(mut user: Map, defaults: &Map) -> Map {
    for (key, default) in defaults {
        match user.get_mut(key) {
            None => {
                user.insert(key.clone(), default.clone());
            }
            Some(Value::Nil) => {
                user.remove(key);
            }
            Some(Value::Map(mine)) => {
                if let Value::Map(theirs) = default {
                    let merged = coalesce(Arc::unwrap_or_clone(mine.clone()), theirs);
                    *mine = Arc::new(merged);
                }
            }
            Some(_) => {}
        }
    }
    user
}

fn collect_paths(m: &Map, prefix: &str, out: &mut Vec<String>) {
    for (key, value) in m {
        let path = if prefix.is_empty() { key.to_string() } else { format!("{prefix}.{key}") };
        out.push(path.clone());
        if let Value::Map(inner) = value {
            collect_paths(inner, &path, out);
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum PathElem {
    Key(String),
    Index(usize),
}

fn path_string(path: &[PathElem]) -> String {
    let mut s = String::new();
    for elem in path {
        match elem {
            PathElem::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            PathElem::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// Helm's largest list index in `--set` (strvals' MaxIndex).
const MAX_INDEX: usize = 65536;

/// Parses one `--set` argument, Helm's syntax: `a.b=c`, several separated by commas,
/// `list[0]=x`, `list={a,b}`, backslash escapes (`a\.b=c` sets the key "a.b"). Values are
/// typed as Helm types them: true/false, null, integers (not written with a leading 0), strings.
pub(super) fn parse_set(arg: &str) -> Result<Vec<(Vec<PathElem>, Value)>, String> {
    let chars: Vec<char> = arg.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < chars.len() {
        let (path, next) = parse_key(&chars, i)?;
        i = next;
        // chars[i] is '='
        i += 1;
        let value = if chars.get(i) == Some(&'{') {
            let (items, next) = parse_list(&chars, i + 1)?;
            i = next;
            Value::List(items.into())
        } else {
            let (raw, next) = read_until(&chars, i, &[','])?;
            i = next;
            typed_value(&raw)
        };
        out.push((path, value));
        match chars.get(i) {
            None => {}
            Some(',') => i += 1,
            Some(c) => return Err(format!("unexpected {c:?} after a value")),
        }
    }
    if out.is_empty() {
        return Err("expected key=value".to_owned());
    }
    Ok(out)
}

fn parse_key(chars: &[char], mut i: usize) -> Result<(Vec<PathElem>, usize), String> {
    let mut path = Vec::new();
    let mut key = String::new();
    let mut after_index = false;
    loop {
        match chars.get(i) {
            None | Some(',') => {
                let shown = path_string(&path);
                let shown = if key.is_empty() {
                    shown
                } else if shown.is_empty() {
                    key
                } else {
                    format!("{shown}.{key}")
                };
                return Err(if shown.is_empty() {
                    "expected key=value".to_owned()
                } else {
                    format!("key {shown:?} has no value (expected key=value)")
                });
            }
            Some('\\') => {
                let c = chars.get(i + 1).ok_or("a key cannot end with a backslash")?;
                key.push(*c);
                i += 2;
            }
            Some('=') => {
                if !after_index {
                    if key.is_empty() {
                        return Err("empty key before '='".to_owned());
                    }
                    path.push(PathElem::Key(key));
                }
                return Ok((path, i));
            }
            Some('.') => {
                if !after_index {
                    if key.is_empty() {
                        return Err(format!("empty key in {:?}", chars.iter().collect::<String>()));
                    }
                    path.push(PathElem::Key(std::mem::take(&mut key)));
                }
                after_index = false;
                i += 1;
            }
            Some('[') => {
                if !after_index {
                    if key.is_empty() {
                        return Err("a list index needs a key before it".to_owned());
                    }
                    path.push(PathElem::Key(std::mem::take(&mut key)));
                }
                let close = chars[i..].iter().position(|c| *c == ']').ok_or("unclosed '[' in key")? + i;
                let digits: String = chars[i + 1..close].iter().collect();
                let index: usize =
                    digits.parse().map_err(|_| format!("list index {digits:?} is not a number"))?;
                if index > MAX_INDEX {
                    return Err(format!(
                        "list index {index} is greater than the largest supported, {MAX_INDEX}"
                    ));
                }
                path.push(PathElem::Index(index));
                after_index = true;
                i = close + 1;
            }
            Some(c) => {
                if after_index {
                    return Err(format!("unexpected {c:?} after a list index"));
                }
                key.push(*c);
                i += 1;
            }
        }
    }
}

fn read_until(chars: &[char], mut i: usize, stops: &[char]) -> Result<(String, usize), String> {
    let mut s = String::new();
    while let Some(&c) = chars.get(i) {
        if stops.contains(&c) {
            break;
        }
        if c == '\\' {
            s.push(*chars.get(i + 1).ok_or("a value cannot end with a backslash")?);
            i += 2;
        } else {
            s.push(c);
            i += 1;
        }
    }
    Ok((s, i))
}

/// `{a,b,c}`: the items up to the closing brace (i is just past the opening one).
fn parse_list(chars: &[char], mut i: usize) -> Result<(Vec<Value>, usize), String> {
    let mut items = Vec::new();
    loop {
        let (raw, next) = read_until(chars, i, &[',', '}'])?;
        i = next;
        match chars.get(i) {
            Some(',') => {
                items.push(typed_value(&raw));
                i += 1;
            }
            Some('}') => {
                if !(raw.is_empty() && items.is_empty()) {
                    items.push(typed_value(&raw));
                }
                return Ok((items, i + 1));
            }
            _ => return Err("a list value ({a,b}) is missing its closing '}'".to_owned()),
        }
    }
}

/// strvals' typedVal.
fn typed_value(raw: &str) -> Value {
    if raw.eq_ignore_ascii_case("true") {
        Value::Bool(true)
    } else if raw.eq_ignore_ascii_case("false") {
        Value::Bool(false)
    } else if raw.eq_ignore_ascii_case("null") {
        Value::Nil
    } else if raw == "0" {
        Value::Int(0)
    } else if let Some(n) = raw.strip_prefix('0').is_none().then(|| raw.parse::<i64>().ok()).flatten() {
        // strconv.ParseInt(raw, 10, 64): decimal, an optional sign, no prefixes or underscores.
        Value::Int(n)
    } else {
        Value::String(raw.into())
    }
}

fn set_path(m: &mut Map, path: &[PathElem], value: Value) {
    let Some((PathElem::Key(key), rest)) = path.split_first() else { return };
    if rest.is_empty() {
        m.insert(key.as_str().into(), value);
        return;
    }
    let child = m.remove(key.as_str()).unwrap_or(Value::Nil);
    m.insert(key.as_str().into(), set_in(child, rest, value));
}

/// Sets `value` at `path` inside `node`, making maps and lists as the path needs them.
fn set_in(node: Value, path: &[PathElem], value: Value) -> Value {
    let Some((first, rest)) = path.split_first() else { return value };
    match first {
        PathElem::Key(key) => {
            let mut m = match node {
                Value::Map(m) => Arc::unwrap_or_clone(m),
                _ => Map::new(),
            };
            let child = m.remove(key.as_str()).unwrap_or(Value::Nil);
            m.insert(key.as_str().into(), set_in(child, rest, value));
            Value::Map(Arc::new(m))
        }
        PathElem::Index(index) => {
            let mut items: Vec<Value> = match node {
                Value::List(items) => items.to_vec(),
                _ => Vec::new(),
            };
            if items.len() <= *index {
                items.resize(*index + 1, Value::Nil);
            }
            let child = std::mem::replace(&mut items[*index], Value::Nil);
            items[*index] = set_in(child, rest, value);
            Value::List(items.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(args: &[&str]) -> Map {
        let mut m = Map::new();
        for arg in args {
            for (path, value) in parse_set(arg).unwrap() {
                set_path(&mut m, &path, value);
            }
        }
        m
    }

    fn get<'a>(m: &'a Map, path: &str) -> &'a Value {
        let mut node = m.get(path.split('.').next().unwrap()).unwrap();
        for key in path.split('.').skip(1) {
            node = node.field(key).unwrap();
        }
        node
    }

    #[test]
    fn set_types_values_as_helm_does() {
        let m = set(&[
            "a.b=c,a.n=3,a.z=0,a.o=010,a.t=true,a.f=False,a.x=null,a.e=",
            "a.neg=-2,a.big=99999999999999999999",
        ]);
        assert_eq!(get(&m, "a.b"), &Value::String("c".into()));
        assert_eq!(get(&m, "a.n"), &Value::Int(3));
        assert_eq!(get(&m, "a.z"), &Value::Int(0));
        assert_eq!(get(&m, "a.o"), &Value::String("010".into()));
        assert_eq!(get(&m, "a.t"), &Value::Bool(true));
        assert_eq!(get(&m, "a.f"), &Value::Bool(false));
        assert_eq!(get(&m, "a.x"), &Value::Nil);
        assert_eq!(get(&m, "a.e"), &Value::String("".into()));
        assert_eq!(get(&m, "a.neg"), &Value::Int(-2));
        assert_eq!(get(&m, "a.big"), &Value::String("99999999999999999999".into()));
    }

    #[test]
    fn set_handles_lists_and_escapes() {
        let m = set(&["l={a,b,3}", "x[1].name=n", r"ann.prometheus\.io/port=15017", r"v=a\,b"]);
        assert_eq!(
            m.get("l").unwrap(),
            &Value::List(vec![Value::String("a".into()), Value::String("b".into()), Value::Int(3)].into())
        );
        let Value::List(x) = m.get("x").unwrap() else { panic!() };
        assert_eq!(x[0], Value::Nil);
        assert_eq!(x[1].field("name"), Some(&Value::String("n".into())));
        assert_eq!(get(&m, "ann").field("prometheus.io/port"), Some(&Value::Int(15017)));
        assert_eq!(m.get("v").unwrap(), &Value::String("a,b".into()));
    }

    #[test]
    fn malformed_set_is_refused_with_the_reason() {
        for (arg, expected) in [
            ("injector.replicaCount", "has no value"),
            ("", "expected key=value"),
            ("=3", "empty key"),
            ("a..b=1", "empty key"),
            ("a[x]=1", "is not a number"),
            ("a[0=1", "unclosed"),
            ("l={a,b", "closing"),
            ("a=1,b", "has no value"),
            ("a[99999999]=1", "greater than"),
        ] {
            let e = parse_set(arg).unwrap_err();
            assert!(e.contains(expected), "{arg}: {e}");
        }
    }

    #[test]
    fn user_values_override_defaults_and_null_deletes() {
        let defaults = parse_values("a:\n  keep: 1\n  drop: 2\n  over: 3\nlist: [1, 2]\n").unwrap();
        let user = set(&["a.drop=null,a.over=x,list={9}"]);
        let merged = coalesce(user, &defaults);
        let a = merged.get("a").unwrap();
        assert_eq!(a.field("keep"), Some(&Value::Float(1.0)));
        assert_eq!(a.field("drop"), None);
        assert_eq!(a.field("over"), Some(&Value::String("x".into())));
        assert_eq!(merged.get("list").unwrap(), &Value::List(vec![Value::Int(9)].into()));
    }

    #[test]
    fn values_files_must_be_maps() {
        assert!(parse_values("- a\n- b\n").unwrap_err().contains("found a list"));
        assert!(parse_values("just text").unwrap_err().contains("found a string"));
        assert!(parse_values("a: [").is_err());
        assert!(parse_values("# only a comment\n").unwrap().is_empty());
    }

    #[test]
    fn files_merge_deeply_and_replace_lists() {
        let mut dst = parse_values("a:\n  x: 1\n  l: [1]\n").unwrap();
        merge_maps(&mut dst, parse_values("a:\n  y: 2\n  l: [2, 3]\n").unwrap());
        let a = dst.get("a").unwrap();
        assert_eq!(a.field("x"), Some(&Value::Float(1.0)));
        assert_eq!(a.field("y"), Some(&Value::Float(2.0)));
        assert_eq!(a.field("l"), Some(&Value::List(vec![Value::Float(2.0), Value::Float(3.0)].into())));
    }
}
