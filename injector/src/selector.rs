//! Kubernetes label selectors in their string form (`app=web,tier in (db,cache),!legacy`), as
//! used by the never/always-inject settings.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// All requirements must hold. The empty selector matches everything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelSelector {
    text: String,
    requirements: Vec<Requirement>,
}

impl LabelSelector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for LabelSelector {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for part in split_top_level(text) {
            let part = part.trim();
            if part.is_empty() {
                return Err(format!("label selector {text:?}: empty requirement"));
            }
            requirements.push(parse_requirement(part).map_err(|e| format!("label selector {text:?}: {e}"))?);
        }
        Ok(LabelSelector { text: text.to_owned(), requirements })
    }
}

/// Splits on commas that are not inside `( ... )` value sets.
fn split_top_level(text: &str) -> Vec<&str> {
    if text.trim().is_empty() {
        return Vec::new();
    }
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn parse_requirement(part: &str) -> Result<Requirement, String> {
    let key = |k: &str| -> Result<String, String> {
        let k = k.trim();
        trellis_api::primitives::check_label_key(k)?;
        Ok(k.to_owned())
    };
    let value = |v: &str| -> Result<String, String> {
        let v = v.trim();
        trellis_api::primitives::check_label_value(v)?;
        Ok(v.to_owned())
    };
    if let Some(k) = part.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(key(k)?));
    }
    if let Some((k, v)) = part.split_once("!=") {
        return Ok(Requirement::NotEquals(key(k)?, value(v)?));
    }
    if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
        return Ok(Requirement::Equals(key(k)?, value(v)?));
    }
    for (op, notin) in [(" notin ", true), (" in ", false)] {
        if let Some((k, set)) = part.split_once(op) {
            let set = set.trim();
            let inner = set
                .strip_prefix('(')
                .and_then(|s| s.strip_suffix(')'))
                .ok_or_else(|| format!("{part:?}: the values of {} must be in parentheses", op.trim()))?;
            let values = inner.split(',').map(value).collect::<Result<Vec<_>, _>>()?;
            return Ok(if notin {
                Requirement::NotIn(key(k)?, values)
            } else {
                Requirement::In(key(k)?, values)
            });
        }
    }
    Ok(Requirement::Exists(key(part)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn matches_like_kubectl() {
        let s: LabelSelector = "app=web,tier in (db, cache),!legacy,env!=dev".parse().unwrap();
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "db")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "db"), ("legacy", "")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "ui")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "db"), ("env", "dev")])));
        let exists: LabelSelector = "canary".parse().unwrap();
        assert!(exists.matches(&labels(&[("canary", "x")])));
        assert!("".parse::<LabelSelector>().unwrap().matches(&labels(&[])));
        let notin: LabelSelector = "tier notin (db)".parse().unwrap();
        assert!(notin.matches(&labels(&[])));
    }

    #[test]
    fn bad_selectors_name_the_problem() {
        assert!("app=web,,x".parse::<LabelSelector>().unwrap_err().contains("empty requirement"));
        assert!("tier in db".parse::<LabelSelector>().unwrap_err().contains("must be in parentheses"));
        assert!("bad key=x".parse::<LabelSelector>().unwrap_err().contains("label key \"bad key\""));
        assert!("app=-x".parse::<LabelSelector>().unwrap_err().contains("label value \"-x\""));
    }
}
