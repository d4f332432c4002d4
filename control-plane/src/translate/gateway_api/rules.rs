//! One HTTPRoute rule → Istio VirtualService HTTP routes, which the route translation the
//! sidecars and Istio Gateways use ([`super::super::routes`]) then compiles: the proxy side has
//! one route model, whichever API the route was written in.

use std::collections::BTreeMap;

use trellis_api::gateway_api::{
    HeaderModifier, HttpBackendRef, HttpRouteFilter, HttpRouteMatch, HttpRouteRule, parse_duration_ms,
};
use trellis_api::networking::{
    Destination, HeaderOperations, Headers, HttpDirectResponse, HttpMatchRequest, HttpRedirect, HttpRewrite,
    HttpRoute, HttpRouteDestination, PortSelector, StringMatch,
};
use trellis_api::primitives::GoDuration;

use crate::translate::names::kube_hostname;

/// A backend that cannot be used (missing Service, reference not permitted, unknown kind): its
/// share of requests fails. Names nothing, so route translation sends it to the black hole.
pub const INVALID_BACKEND_HOST: &str = "invalid-backend.trellis.invalid";

/// One match of a rule, ready to be ordered among all the routes of a host.
pub struct Compiled {
    pub precedence: Precedence,
    pub route: HttpRoute,
}

/// Gateway API's order among matches of one host, most specific first: exact paths, then
/// regular expressions (implementation-specific; Istio's order), then longer prefixes, then
/// a method, more headers, more query parameters; ties go to the older route, then by
/// `namespace/name`, then to the rule and match written first.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Precedence {
    path_kind: u8,
    path_len: std::cmp::Reverse<usize>,
    no_method: bool,
    headers: std::cmp::Reverse<usize>,
    query: std::cmp::Reverse<usize>,
    created: String,
    route: String,
    rule: usize,
    matched: usize,
}

/// Where a rule is: for names, log fields and the precedence tie-breaks.
pub struct RuleAt<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub created: &'a str,
    pub index: usize,
}

/// The routes of one rule, one per match. `valid(backend)` says whether a backend may be
/// used; invalid ones get their share of requests failed (all invalid: 500, as the API asks).
pub fn compile(
    at: &RuleAt<'_>,
    rule: &HttpRouteRule,
    valid: &dyn Fn(&HttpBackendRef) -> bool,
) -> Vec<Compiled> {
    let default_match = [HttpRouteMatch::default()];
    let matches: &[HttpRouteMatch] = if rule.matches.is_empty() { &default_match } else { &rule.matches };
    let base = base_route(at, rule, valid);
    let full_path_rewrite = rule
        .filters
        .iter()
        .filter_map(|f| f.url_rewrite.as_ref().and_then(|r| r.path.as_ref()))
        .any(|p| p.kind == "ReplaceFullPath");
    matches
        .iter()
        .enumerate()
        .map(|(j, m)| {
            let mut route = base.clone();
            route.name = format!("{}/{}/rule{}/match{j}", at.namespace, at.name, at.index);
            route.matches = request_matches(m, full_path_rewrite);
            let (kind, len) = path_rank(m);
            Compiled {
                precedence: Precedence {
                    path_kind: kind,
                    path_len: std::cmp::Reverse(len),
                    no_method: m.method.is_none(),
                    headers: std::cmp::Reverse(m.headers.len()),
                    query: std::cmp::Reverse(m.query_params.len()),
                    created: at.created.to_owned(),
                    route: format!("{}/{}", at.namespace, at.name),
                    rule: at.index,
                    matched: j,
                },
                route,
            }
        })
        .collect()
}

fn path_rank(m: &HttpRouteMatch) -> (u8, usize) {
    let Some(path) = &m.path else { return (2, 1) };
    let len = path.value.as_deref().unwrap_or("/").len();
    match path.kind.as_deref().unwrap_or("PathPrefix") {
        "Exact" => (0, len),
        "RegularExpression" => (1, len),
        _ => (2, len),
    }
}

/// A Gateway API path prefix matches whole path elements: `/foo` matches `/foo` and `/foo/x`,
/// not `/foobar`. As two Istio matches, exact `/foo` and prefix `/foo/` (a rewrite of the
/// prefix then replaces either); under a full-path rewrite as one regular expression.
fn request_matches(m: &HttpRouteMatch, full_path_rewrite: bool) -> Vec<HttpMatchRequest> {
    let mut base =
        HttpMatchRequest { method: m.method.as_ref().map(|method| exact(method)), ..Default::default() };
    for header in &m.headers {
        base.headers
            .entry(header.name.to_ascii_lowercase())
            .or_insert_with(|| value_match(&header.kind, &header.value));
    }
    for param in &m.query_params {
        base.query_params.entry(param.name.clone()).or_insert_with(|| value_match(&param.kind, &param.value));
    }
    let Some(path) = &m.path else { return vec![base] };
    let value = path.value.clone().unwrap_or_else(|| "/".into());
    match path.kind.as_deref().unwrap_or("PathPrefix") {
        "Exact" => vec![HttpMatchRequest { uri: Some(exact(&value)), ..base }],
        "RegularExpression" => vec![HttpMatchRequest { uri: Some(regex(&value)), ..base }],
        _ => {
            let trimmed = value.trim_end_matches('/');
            if trimmed.is_empty() {
                return vec![HttpMatchRequest { uri: Some(prefix("/")), ..base }];
            }
            if full_path_rewrite {
                let pattern = format!("{}(/.*)?", crate::translate::values::escape_regex(trimmed));
                return vec![HttpMatchRequest { uri: Some(regex(&pattern)), ..base }];
            }
            vec![
                HttpMatchRequest { uri: Some(exact(trimmed)), ..base.clone() },
                HttpMatchRequest { uri: Some(prefix(&format!("{trimmed}/"))), ..base },
            ]
        }
    }
}

fn value_match(kind: &Option<String>, value: &str) -> StringMatch {
    match kind.as_deref() {
        Some("RegularExpression") => regex(value),
        _ => exact(value),
    }
}

fn exact(v: &str) -> StringMatch {
    StringMatch { exact: Some(v.to_owned()), ..Default::default() }
}

fn prefix(v: &str) -> StringMatch {
    StringMatch { prefix: Some(v.to_owned()), ..Default::default() }
}

fn regex(v: &str) -> StringMatch {
    StringMatch { regex: Some(v.to_owned()), ..Default::default() }
}

/// Everything of a rule but its matches.
fn base_route(at: &RuleAt<'_>, rule: &HttpRouteRule, valid: &dyn Fn(&HttpBackendRef) -> bool) -> HttpRoute {
    let mut route = HttpRoute::default();
    let mut headers = Headers::default();
    for filter in &rule.filters {
        apply_filter(filter, &mut route, &mut headers);
    }
    if headers.request.is_some() || headers.response.is_some() {
        route.headers = Some(headers);
    }
    route.timeout =
        rule.timeouts.as_ref().and_then(|t| t.request.as_deref()).and_then(|t| match parse_duration_ms(t) {
            // 0 means no timeout in the Gateway API.
            Ok(0) => None,
            Ok(ms) => Some(GoDuration(format!("{ms}ms"))),
            Err(e) => {
                tracing::warn!(resource = %format!("HTTPRoute {}/{}", at.namespace, at.name),
                    field = %format!("spec.rules[{}].timeouts.request", at.index), "{e}; no timeout");
                None
            }
        });
    if route.redirect.is_some() {
        return route;
    }
    let weighted: Vec<(&HttpBackendRef, u32)> =
        rule.backend_refs.iter().map(|b| (b, b.weight.unwrap_or(1))).filter(|(_, w)| *w > 0).collect();
    let any_valid = weighted.iter().any(|(b, _)| valid(b));
    if !any_valid {
        // No backend (none written, all weights zero, or none usable): the API asks for 500.
        route.direct_response = Some(HttpDirectResponse { status: 500, body: None });
        return route;
    }
    route.route = weighted
        .into_iter()
        .map(|(b, weight)| HttpRouteDestination {
            destination: if valid(b) {
                Destination {
                    host: kube_hostname(&b.name, b.namespace.as_deref().unwrap_or(at.namespace)),
                    port: b.port.map(|number| PortSelector { number }),
                    ..Default::default()
                }
            } else {
                Destination { host: INVALID_BACKEND_HOST.into(), ..Default::default() }
            },
            weight: i32::try_from(weight).unwrap_or(i32::MAX),
            headers: None,
        })
        .collect();
    route
}

fn apply_filter(filter: &HttpRouteFilter, route: &mut HttpRoute, headers: &mut Headers) {
    match filter.kind.as_str() {
        "RequestHeaderModifier" => {
            if let Some(m) = &filter.request_header_modifier {
                headers.request = Some(operations(m));
            }
        }
        "ResponseHeaderModifier" => {
            if let Some(m) = &filter.response_header_modifier {
                headers.response = Some(operations(m));
            }
        }
        "RequestRedirect" => {
            if let Some(r) = &filter.request_redirect {
                let uri = r
                    .path
                    .as_ref()
                    .and_then(|p| p.replace_full_path.clone().or_else(|| p.replace_prefix_match.clone()))
                    .unwrap_or_default();
                let authority = match (&r.hostname, r.port) {
                    (Some(host), Some(port)) => format!("{host}:{port}"),
                    (Some(host), None) => host.clone(),
                    _ => String::new(),
                };
                route.redirect = Some(HttpRedirect {
                    uri,
                    authority,
                    scheme: r.scheme.clone().unwrap_or_default(),
                    redirect_code: r.status_code.unwrap_or(302),
                    ..Default::default()
                });
            }
        }
        "URLRewrite" => {
            if let Some(r) = &filter.url_rewrite {
                let uri = r
                    .path
                    .as_ref()
                    .and_then(|p| match p.kind.as_str() {
                        "ReplacePrefixMatch" => p.replace_prefix_match.clone(),
                        _ => p.replace_full_path.clone(),
                    })
                    .unwrap_or_default();
                route.rewrite = Some(HttpRewrite {
                    uri,
                    authority: r.hostname.clone().unwrap_or_default(),
                    ..Default::default()
                });
            }
        }
        // Named by `not_enforced` for warnings; nothing to build.
        _ => {}
    }
}

fn operations(m: &HeaderModifier) -> HeaderOperations {
    HeaderOperations {
        set: m.set.iter().map(|h| (h.name.clone(), h.value.clone())).collect::<BTreeMap<_, _>>(),
        add: m.add.iter().map(|h| (h.name.clone(), h.value.clone())).collect::<BTreeMap<_, _>>(),
        remove: m.remove.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_api::gateway_api::HttpPathMatch;

    fn path(kind: &str, value: &str) -> HttpRouteMatch {
        HttpRouteMatch {
            path: Some(HttpPathMatch { kind: Some(kind.into()), value: Some(value.into()) }),
            ..Default::default()
        }
    }

    #[test]
    fn a_path_prefix_matches_whole_elements() {
        let uris: Vec<_> = request_matches(&path("PathPrefix", "/foo/"), false)
            .into_iter()
            .map(|m| m.uri.unwrap())
            .collect();
        assert_eq!(uris, [exact("/foo"), prefix("/foo/")]);
        assert_eq!(request_matches(&path("PathPrefix", "/"), false)[0].uri, Some(prefix("/")));
        assert_eq!(request_matches(&path("PathPrefix", "/a.b"), true)[0].uri, Some(regex("/a\\.b(/.*)?")));
    }

    #[test]
    fn precedence_orders_exact_then_longer_prefixes_then_more_headers() {
        let at = |index| RuleAt { namespace: "ns", name: "r", created: "", index };
        let rule = |m: HttpRouteMatch| HttpRouteRule { matches: vec![m], ..Default::default() };
        let mut with_header = path("PathPrefix", "/a");
        with_header.headers.push(trellis_api::gateway_api::HttpValueMatch {
            kind: None,
            name: "x".into(),
            value: "1".into(),
        });
        let mut all: Vec<Compiled> =
            [path("PathPrefix", "/a"), path("PathPrefix", "/a/b"), path("Exact", "/a"), with_header]
                .into_iter()
                .enumerate()
                .flat_map(|(i, m)| compile(&at(i), &rule(m), &|_| true))
                .collect();
        all.sort_by(|a, b| a.precedence.cmp(&b.precedence));
        let order: Vec<usize> = all.iter().map(|c| c.precedence.rule).collect();
        assert_eq!(order, [2, 1, 3, 0]);
    }

    #[test]
    fn without_a_usable_backend_the_answer_is_500() {
        let at = RuleAt { namespace: "ns", name: "r", created: "", index: 0 };
        let backend = |name: &str, weight| HttpBackendRef {
            name: name.into(),
            port: Some(80),
            weight: Some(weight),
            ..Default::default()
        };
        let rule = HttpRouteRule { backend_refs: vec![backend("gone", 1)], ..Default::default() };
        let routes = compile(&at, &rule, &|b| b.name != "gone");
        assert_eq!(routes[0].route.direct_response.as_ref().map(|d| d.status), Some(500));
        let rule =
            HttpRouteRule { backend_refs: vec![backend("a", 3), backend("gone", 1)], ..Default::default() };
        let routes = compile(&at, &rule, &|b| b.name != "gone");
        let hosts: Vec<_> =
            routes[0].route.route.iter().map(|d| (d.destination.host.as_str(), d.weight)).collect();
        assert_eq!(hosts, [("a.ns.svc.cluster.local", 3), (INVALID_BACKEND_HOST, 1)]);
        let rule = HttpRouteRule { backend_refs: vec![backend("a", 0)], ..Default::default() };
        assert!(compile(&at, &rule, &|_| true)[0].route.direct_response.is_some(), "all weights zero");
    }
}
