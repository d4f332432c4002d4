//! Rules of a VirtualService that never take a request, because the rules are tried in order
//! and the first that matches wins (Istio's validation reports the same, as IST0130 and
//! IST0131):
//!
//! - a rule after one without `match` (which takes everything) is unreachable, as is a rule
//!   each of whose matches an earlier one already has (IST0130);
//! - a match that an earlier one already has (names aside), or a URI prefix match that an
//!   earlier prefix match with the same other conditions covers, is never used (IST0131).

use serde::Serialize;
use serde_json::Value;
use trellis_api::networking::{HttpMatchRequest, StringMatch, VirtualServiceSpec};

use super::finding::{Code, Finding, INEFFECTIVE_MATCH, UNREACHABLE_RULE};
use super::model::Obj;

pub fn check(vs: &Obj<VirtualServiceSpec>, out: &mut Vec<Finding>) {
    let spec = &vs.spec;
    let http: Vec<Rule> = spec
        .http
        .iter()
        .enumerate()
        .map(|(i, r)| Rule {
            field: format!("spec.http[{i}]"),
            label: named(format!("spec.http[{i}]"), &r.name),
            matches: r.matches.iter().map(comparable_http).collect(),
        })
        .collect();
    let tcp: Vec<Rule> =
        spec.tcp.iter().enumerate().map(|(i, r)| Rule::l4(format!("spec.tcp[{i}]"), &r.matches)).collect();
    let tls: Vec<Rule> =
        spec.tls.iter().enumerate().map(|(i, r)| Rule::l4(format!("spec.tls[{i}]"), &r.matches)).collect();
    let mut report =
        |code: Code, message: String, fix: &str| out.push(Finding::new(code, &vs.subject, message, fix));
    let first_seen = ordered_rules(&http, &mut report);
    ordered_rules(&tcp, &mut report);
    ordered_rules(&tls, &mut report);
    // Repeated matches, and those after a catch-all, are reported already.
    let prefixes: Vec<PrefixMatch> = first_seen
        .into_iter()
        .filter_map(|(i, j)| PrefixMatch::of(&spec.http[i].matches[j], format!("spec.http[{i}]"), j))
        .collect();
    overlapping_prefixes(&prefixes, &mut report);
}

/// A rule as the order check sees it: its field and its matches, comparable.
struct Rule {
    field: String,
    /// The field and the rule's name, if it has one.
    label: String,
    matches: Vec<Value>,
}

impl Rule {
    /// TCP and TLS rules have no names.
    fn l4<T: Serialize>(field: String, matches: &[T]) -> Rule {
        Rule { label: field.clone(), field, matches: matches.iter().map(to_value).collect() }
    }
}

const REORDER: &str = "remove it, or move it before the rule that takes its requests (rules are tried in order; the first match wins)";

/// Reports unreachable rules and repeated matches; returns `(rule, match)` of the matches seen
/// first, in order.
fn ordered_rules(rules: &[Rule], report: &mut impl FnMut(Code, String, &str)) -> Vec<(usize, usize)> {
    let mut seen: Vec<(&Value, &str, usize)> = Vec::new();
    let mut first_seen = Vec::new();
    let mut catch_all: Option<&str> = None;
    // Rules are named by label; matches by field.
    for (i, rule) in rules.iter().enumerate() {
        if rule.matches.is_empty() {
            if let Some(earlier) = catch_all {
                report(
                    UNREACHABLE_RULE,
                    format!(
                        "rule {} is never used: rule {earlier} has no match either and takes every request",
                        rule.label
                    ),
                    "only the last rule may go without match; remove one of them or give the first a match",
                );
            }
            catch_all = Some(&rule.label);
            continue;
        }
        if let Some(earlier) = catch_all {
            report(
                UNREACHABLE_RULE,
                format!(
                    "rule {} is never used: rule {earlier} before it has no match and takes every request",
                    rule.label
                ),
                REORDER,
            );
            continue;
        }
        let mut repeated = 0;
        for (j, m) in rule.matches.iter().enumerate() {
            match seen.iter().find(|(value, _, _)| *value == m) {
                Some((_, field, k)) => {
                    repeated += 1;
                    report(
                        INEFFECTIVE_MATCH,
                        format!(
                            "{}.match[{j}] is never used: {field}.match[{k}] before it is the same match",
                            rule.field
                        ),
                        "remove the repeated match",
                    );
                }
                None => {
                    seen.push((m, &rule.field, j));
                    first_seen.push((i, j));
                }
            }
        }
        if repeated == rule.matches.len() {
            report(
                UNREACHABLE_RULE,
                format!("rule {} is never used: every match of it is taken by a rule before it", rule.label),
                REORDER,
            );
        }
    }
    first_seen
}

/// A URI prefix match with the conditions that decide whether an earlier one covers it. A
/// match without method counts as `GET`, as Istio's check counts it.
struct PrefixMatch {
    rule: String,
    index: usize,
    prefix: String,
    port: u32,
    method: String,
    authority: String,
    headers: Vec<(String, String)>,
    query: Vec<(String, String)>,
    without_headers: Vec<(String, String)>,
}

impl PrefixMatch {
    fn of(m: &HttpMatchRequest, rule: String, index: usize) -> Option<PrefixMatch> {
        let prefix = m.uri.as_ref()?.prefix.clone().filter(|p| !p.is_empty())?;
        let pairs = |map: &std::collections::BTreeMap<String, StringMatch>| {
            map.iter().map(|(k, v)| (k.clone(), condition(Some(v)))).collect()
        };
        let method = condition(m.method.as_ref());
        Some(PrefixMatch {
            rule,
            index,
            prefix,
            port: m.port,
            method: if method.is_empty() { "exact:GET".to_owned() } else { method },
            authority: condition(m.authority.as_ref()),
            headers: pairs(&m.headers),
            query: pairs(&m.query_params),
            without_headers: pairs(&m.without_headers),
        })
    }

    /// Whether this (earlier) match takes every request `later` would.
    fn covers(&self, later: &PrefixMatch) -> bool {
        let wider = |a: &str, b: &str| a == b || a.starts_with(b);
        let same_keys = |a: &[(String, String)], b: &[(String, String)]| {
            a.len() == b.len() && a.iter().all(|(k, v)| b.iter().any(|(bk, bv)| bk == k && wider(v, bv)))
        };
        later.prefix.starts_with(&self.prefix)
            && self.port == later.port
            && wider(&self.method, &later.method)
            && wider(&self.authority, &later.authority)
            && same_keys(&self.headers, &later.headers)
            && same_keys(&self.query, &later.query)
            && same_keys(&self.without_headers, &later.without_headers)
    }
}

fn overlapping_prefixes(matches: &[PrefixMatch], report: &mut impl FnMut(Code, String, &str)) {
    for (i, earlier) in matches.iter().enumerate() {
        for later in &matches[i + 1..] {
            // Equal prefixes are the repeated matches the order check reports.
            if later.prefix != earlier.prefix && earlier.covers(later) {
                report(
                    INEFFECTIVE_MATCH,
                    format!(
                        "{}.match[{}] (uri prefix {:?}) is never used: {}.match[{}] (uri prefix {:?}) before it takes those requests",
                        later.rule, later.index, later.prefix, earlier.rule, earlier.index, earlier.prefix
                    ),
                    "put the longer prefix first, or remove it",
                );
            }
        }
    }
}

/// `exact:v` or `prefix:v`; empty for no condition or a regex.
fn condition(m: Option<&StringMatch>) -> String {
    match m {
        Some(StringMatch { exact: Some(v), .. }) => format!("exact:{v}"),
        Some(StringMatch { prefix: Some(v), .. }) => format!("prefix:{v}"),
        _ => String::new(),
    }
}

/// A match without its name: two matches that differ only in name take the same requests.
fn comparable_http(m: &HttpMatchRequest) -> Value {
    let mut value = to_value(m);
    if let Some(map) = value.as_object_mut() {
        map.remove("name");
    }
    value
}

fn to_value(m: &impl Serialize) -> Value {
    serde_json::to_value(m).unwrap_or(Value::Null)
}

fn named(field: String, name: &str) -> String {
    if name.is_empty() { field } else { format!("{field} ({name:?})") }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{found, mesh};
    use super::*;

    fn run(http: &str) -> Vec<Finding> {
        let text = format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: r}}\nspec:\n  hosts: [r]\n  http:\n{http}"
        );
        let mesh = mesh(&text);
        let mut out = Vec::new();
        check(&mesh.virtual_services[0], &mut out);
        out
    }

    #[test]
    fn a_match_without_method_counts_as_get_when_prefixes_overlap() {
        let out = run(
            "  - match: [{uri: {prefix: /a}}]\n    route: [{destination: {host: r}}]\n  - match: [{uri: {prefix: /ab}, method: {exact: GET}}]\n    route: [{destination: {host: r}}]\n",
        );
        assert_eq!(found(&out), ["IST0131 VirtualService r"]);
        let post = run(
            "  - match: [{uri: {prefix: /a}}]\n    route: [{destination: {host: r}}]\n  - match: [{uri: {prefix: /ab}, method: {exact: POST}}]\n    route: [{destination: {host: r}}]\n",
        );
        assert!(post.is_empty(), "{post:?}");
    }

    #[test]
    fn headers_must_match_for_a_prefix_to_cover() {
        let out = run(
            "  - match: [{uri: {prefix: /a}, headers: {x: {exact: '1'}}}]\n    route: [{destination: {host: r}}]\n  - match: [{uri: {prefix: /ab}}]\n    route: [{destination: {host: r}}]\n",
        );
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn exact_matches_are_not_compared_as_prefixes() {
        let out = run(
            "  - match: [{uri: {prefix: /}}, {uri: {exact: /}, method: {exact: GET}}]\n    route: [{destination: {host: r}}]\n",
        );
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn two_catch_alls() {
        let out = run("  - route: [{destination: {host: r}}]\n  - route: [{destination: {host: r}}]\n");
        assert_eq!(found(&out), ["IST0130 VirtualService r"]);
        assert!(out[0].message.contains("has no match either"), "{}", out[0].message);
    }
}
