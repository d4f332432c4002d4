//! Istio field values → proxy values. The proxy refuses a whole configuration for one value it
//! cannot compile, so each value is checked here and a bad one is dropped alone, with a warning
//! naming the resource and the field. (Validation rejects such objects before they reach the
//! model; this is the second line.)

use std::fmt::Display;
use std::time::Duration;

use tracing::warn;
use trellis_api::networking::{HeaderOperations, StringMatch};
use trellis_api::primitives::{GoDuration, check_header_name, check_re2_regex};
use trellis_xds::config as pb;

/// The proxy refuses longer durations as mistakes.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// A duration the proxy accepts; `None` when unset or zero (Istio's "disabled").
pub fn duration(value: Option<&GoDuration>, source: &dyn Display, field: &str) -> Option<Duration> {
    let value = value?;
    match value.to_std() {
        Ok(d) if d > MAX_DURATION => {
            warn!(resource = %source, field, value = %value, "duration longer than a year, ignored");
            None
        }
        Ok(d) => (!d.is_zero()).then_some(d),
        Err(message) => {
            warn!(resource = %source, field, %message, "bad duration, ignored");
            None
        }
    }
}

/// Why a match condition cannot be used (already logged).
#[derive(Debug, PartialEq, Eq)]
pub struct Unusable;

/// A string condition; `Ok(None)` when the match sets no kind (a header or query parameter
/// then only has to be present).
pub fn string_match(
    m: &StringMatch,
    ignore_case: bool,
    source: &dyn Display,
    field: &str,
) -> Result<Option<pb::StringMatch>, Unusable> {
    use pb::string_match::Kind;
    let kind = match (&m.exact, &m.prefix, &m.regex) {
        (Some(exact), _, _) if ignore_case => Kind::Regex(format!("(?i){}", escape_regex(exact))),
        (Some(exact), _, _) => Kind::Exact(exact.clone()),
        (None, Some(prefix), _) if ignore_case => Kind::Regex(format!("(?i){}.*", escape_regex(prefix))),
        (None, Some(prefix), _) => Kind::Prefix(prefix.clone()),
        (None, None, Some(regex)) => {
            let regex = if ignore_case { format!("(?i){regex}") } else { regex.clone() };
            if let Err(message) = check_re2_regex(&regex) {
                warn!(resource = %source, field, %message, "bad regex, match skipped");
                return Err(Unusable);
            }
            Kind::Regex(regex)
        }
        (None, None, None) => return Ok(None),
    };
    Ok(Some(pb::StringMatch { kind: Some(kind) }))
}

/// Escapes what the regex syntax treats specially, so that a literal matches itself.
pub(crate) fn escape_regex(literal: &str) -> String {
    let mut out = String::with_capacity(literal.len());
    for c in literal.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A header name the proxy accepts; logs and returns `None` otherwise.
pub fn header_name(name: &str, source: &dyn Display, field: &str) -> Option<String> {
    match check_header_name(name, false) {
        Ok(()) => Some(name.to_ascii_lowercase()),
        Err(message) => {
            warn!(resource = %source, field, %message, "bad header name, skipped");
            None
        }
    }
}

fn header_value_ok(value: &str) -> bool {
    value.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80)
}

/// Header edits with the bad names and values left out.
pub fn header_operations(ops: &HeaderOperations, source: &dyn Display, field: &str) -> pb::HeaderOperations {
    let pairs = |map: &std::collections::BTreeMap<String, String>, what: &str| {
        map.iter()
            // `:authority` becomes the route's authority rewrite (see `routes::authority_header`).
            .filter(|(name, _)| !name.eq_ignore_ascii_case(":authority"))
            .filter_map(|(name, value)| {
                let field = format!("{field}.{what}.{name}");
                let name = header_name(name, source, &field)?;
                if !header_value_ok(value) {
                    warn!(resource = %source, field, "header value with control characters, skipped");
                    return None;
                }
                Some((name, value.clone()))
            })
            .collect()
    };
    pb::HeaderOperations {
        set: pairs(&ops.set, "set"),
        add: pairs(&ops.add, "add"),
        remove: ops
            .remove
            .iter()
            .enumerate()
            .filter_map(|(i, name)| header_name(name, source, &format!("{field}.remove[{i}]")))
            .collect(),
    }
}

/// `later` applied after `earlier`: its `set` wins, additions and removals accumulate.
pub fn merge_header_operations(
    earlier: Option<pb::HeaderOperations>,
    later: Option<pb::HeaderOperations>,
) -> Option<pb::HeaderOperations> {
    match (earlier, later) {
        (Some(mut a), Some(b)) => {
            a.set.extend(b.set);
            a.add.extend(b.add);
            for name in b.remove {
                if !a.remove.contains(&name) {
                    a.remove.push(name);
                }
            }
            Some(a)
        }
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(s: &str) -> StringMatch {
        StringMatch { exact: Some(s.into()), ..Default::default() }
    }

    #[test]
    fn string_matches_convert_and_bad_ones_are_dropped() {
        use pb::string_match::Kind;
        let kind = |m: &StringMatch, ignore_case| {
            string_match(m, ignore_case, &"test", "f").map(|m| m.and_then(|m| m.kind))
        };
        assert_eq!(kind(&exact("/a"), false), Ok(Some(Kind::Exact("/a".into()))));
        assert_eq!(kind(&exact("/a.b"), true), Ok(Some(Kind::Regex("(?i)/a\\.b".into()))));
        let prefix = StringMatch { prefix: Some("/v1/".into()), ..Default::default() };
        assert_eq!(kind(&prefix, true), Ok(Some(Kind::Regex("(?i)/v1/.*".into()))));
        assert_eq!(kind(&StringMatch::default(), false), Ok(None));
        let bad = StringMatch { regex: Some("(".into()), ..Default::default() };
        assert_eq!(kind(&bad, false), Err(Unusable));
    }

    #[test]
    fn escaped_literals_are_valid_regexes_matching_themselves() {
        let literal = "/a.b+c(d)[e]{1}^$|?*\\#&-~";
        let re = check_re2_regex(&format!("^{}$", escape_regex(literal))).unwrap();
        assert!(re.is_match(literal));
    }

    #[test]
    fn durations_zero_bad_and_huge_are_unset() {
        let d = |s: &str| duration(Some(&GoDuration::from(s)), &"test", "timeout");
        assert_eq!(d("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(d("0s"), None);
        assert_eq!(d("soon"), None);
        assert_eq!(d("9000h"), None);
        assert_eq!(duration(None, &"test", "timeout"), None);
    }

    #[test]
    fn header_operations_drop_bad_entries_and_merge() {
        let ops = HeaderOperations {
            set: [("X-A".into(), "1".into()), ("bad name".into(), "2".into()), ("x-b".into(), "\n".into())]
                .into(),
            add: Default::default(),
            remove: vec!["x-gone".into(), ":authority".into()],
        };
        let out = header_operations(&ops, &"test", "headers.request");
        assert_eq!(out.set, [("x-a".to_owned(), "1".to_owned())].into());
        assert_eq!(out.remove, ["x-gone"]);
        let later = pb::HeaderOperations {
            set: [("x-a".to_owned(), "2".to_owned())].into(),
            remove: vec!["x-gone".into(), "x-other".into()],
            ..Default::default()
        };
        let merged = merge_header_operations(Some(out), Some(later)).unwrap();
        assert_eq!(merged.set["x-a"], "2");
        assert_eq!(merged.remove, ["x-gone", "x-other"]);
    }
}
