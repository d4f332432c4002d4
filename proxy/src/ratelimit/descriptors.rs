//! The descriptors of a request, made by Envoy's `rate_limits` actions. One computation serves
//! both rate-limit filters, as in Envoy where a route's `rate_limits` feed them both: the global
//! filter sends the descriptors to the RateLimitService, the local one matches them against its
//! configured descriptors.

use std::borrow::Cow;
use std::net::IpAddr;

use http::HeaderName;
use trellis_xds::config as pb;

use crate::config::ConfigError;
use crate::route::StringMatcher;

/// One descriptor: its entries, in the order of the rule's actions.
pub type Descriptor = Vec<(String, String)>;

/// Where a `request_headers` action reads its value: a header, or one of HTTP/2's pseudo-headers
/// (Istio's documented example counts by `:path`).
#[derive(Debug)]
enum Source {
    Header(HeaderName),
    Path,
    Method,
    Authority,
    Scheme,
}

impl Source {
    fn read<'a, B>(&self, request: &'a http::Request<B>) -> Option<Cow<'a, str>> {
        match self {
            Source::Header(name) => request.headers().get(name)?.to_str().ok().map(Cow::Borrowed),
            Source::Path => request.uri().path_and_query().map(|p| Cow::Borrowed(p.as_str())),
            Source::Method => Some(Cow::Borrowed(request.method().as_str())),
            Source::Authority => match request.uri().authority() {
                Some(a) => Some(Cow::Borrowed(a.as_str())),
                None => request.headers().get(http::header::HOST)?.to_str().ok().map(Cow::Borrowed),
            },
            Source::Scheme => Some(Cow::Borrowed(request.uri().scheme_str().unwrap_or("http"))),
        }
    }
}

enum Action {
    RequestHeaders {
        header: Source,
        key: String,
        skip_if_absent: bool,
    },
    RemoteAddress,
    GenericKey {
        key: String,
        value: String,
    },
    HeaderValueMatch {
        key: String,
        value: String,
        expect_match: bool,
        headers: Vec<(HeaderName, Option<StringMatcher>)>,
    },
}

impl std::fmt::Debug for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::RequestHeaders { header, key, .. } => write!(f, "request_headers({header:?} as {key})"),
            Action::RemoteAddress => f.write_str("remote_address"),
            Action::GenericKey { key, value } => write!(f, "generic_key({key}={value})"),
            Action::HeaderValueMatch { key, value, .. } => write!(f, "header_value_match({key}={value})"),
        }
    }
}

#[derive(Debug)]
struct Rule {
    actions: Vec<Action>,
    /// The ports whose route it belongs to; empty: every port's.
    ports: Vec<u16>,
    virtual_host: bool,
}

impl Rule {
    fn applies_to(&self, port: u16) -> bool {
        self.ports.is_empty() || self.ports.contains(&port)
    }
}

/// Whether a virtual host's rules count next to a route's (Envoy's `VhRateLimitsOptions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtualHostRules {
    /// Only for a route without rules of its own (Envoy's default).
    Override,
    Include,
    Ignore,
}

impl VirtualHostRules {
    pub fn of(value: i32) -> VirtualHostRules {
        match pb::VirtualHostRateLimits::try_from(value) {
            Ok(pb::VirtualHostRateLimits::Include) => VirtualHostRules::Include,
            Ok(pb::VirtualHostRateLimits::Ignore) => VirtualHostRules::Ignore,
            _ => VirtualHostRules::Override,
        }
    }
}

/// The compiled `rate_limits` of the routes (and virtual hosts) a filter sees.
#[derive(Debug, Default)]
pub struct Rules {
    rules: Vec<Rule>,
}

impl Rules {
    /// Compiles the rules; errors name `field.rules[i]...`.
    pub fn compile(rules: &[pb::RateLimitDescriptorRule], field: &str) -> Result<Rules, ConfigError> {
        let err = |f: String, message: String| ConfigError { field: format!("{field}.{f}"), message };
        let mut compiled = Vec::with_capacity(rules.len());
        for (i, rule) in rules.iter().enumerate() {
            let mut actions = Vec::with_capacity(rule.actions.len());
            for (j, a) in rule.actions.iter().enumerate() {
                let f = format!("rules[{i}].actions[{j}]");
                actions.push(
                    compile_action(a, &format!("{field}.{f}"))
                        .map_err(|(sub, m)| err(format!("{f}{sub}"), m))?,
                );
            }
            let ports = rule
                .ports
                .iter()
                .enumerate()
                .map(|(k, &p)| crate::config::port(p, &format!("{field}.rules[{i}].ports[{k}]")))
                .collect::<Result<Vec<u16>, _>>()?;
            compiled.push(Rule { actions, ports, virtual_host: rule.virtual_host });
        }
        Ok(Rules { rules: compiled })
    }

    /// The descriptors of one request to the app's `port`: one per rule that counts there and
    /// whose actions all give an entry.
    pub fn descriptors<B>(
        &self,
        request: &http::Request<B>,
        port: u16,
        remote: IpAddr,
        virtual_host: VirtualHostRules,
    ) -> Vec<Descriptor> {
        let route_has_rules = self.rules.iter().any(|r| !r.virtual_host && r.applies_to(port));
        let take_virtual_host = match virtual_host {
            VirtualHostRules::Override => !route_has_rules,
            VirtualHostRules::Include => true,
            VirtualHostRules::Ignore => false,
        };
        self.rules
            .iter()
            .filter(|r| r.applies_to(port) && (!r.virtual_host || take_virtual_host))
            .filter_map(|r| descriptor(&r.actions, request, remote))
            .collect()
    }
}

/// The descriptor one rule makes: `None` when an action has no entry to give (Envoy then makes
/// no descriptor for the rule), or when no action gave one.
fn descriptor<B>(actions: &[Action], request: &http::Request<B>, remote: IpAddr) -> Option<Descriptor> {
    let headers = request.headers();
    let mut entries = Vec::with_capacity(actions.len());
    for action in actions {
        let entry = match action {
            Action::RequestHeaders { header, key, skip_if_absent } => match header.read(request) {
                Some(value) => (key.clone(), value.into_owned()),
                None if *skip_if_absent => continue,
                None => return None,
            },
            Action::RemoteAddress => ("remote_address".to_owned(), remote.to_string()),
            Action::GenericKey { key, value } => (key.clone(), value.clone()),
            Action::HeaderValueMatch { key, value, expect_match, headers: wanted } => {
                let all = wanted.iter().all(|(name, matcher)| {
                    let mut values = headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
                    match matcher {
                        None => values.next().is_some(),
                        Some(m) => values.any(|v| m.matches(v)),
                    }
                });
                if all != *expect_match {
                    return None;
                }
                (key.clone(), value.clone())
            }
        };
        entries.push(entry);
    }
    (!entries.is_empty()).then_some(entries)
}

/// Compiles one action; an error is (the sub-field, the message).
fn compile_action(a: &pb::RateLimitAction, field: &str) -> Result<Action, (String, String)> {
    use pb::rate_limit_action::Action as A;
    let header_name = |name: &str, f: &str| {
        HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
            .map_err(|_| (f.to_owned(), format!("{name:?} is not a header name")))
    };
    Ok(match &a.action {
        None => return Err((String::new(), "an action is required".into())),
        Some(A::RequestHeaders(h)) => {
            if h.descriptor_key.is_empty() {
                return Err((".request_headers.descriptor_key".into(), "required".into()));
            }
            Action::RequestHeaders {
                header: match h.header_name.to_ascii_lowercase().as_str() {
                    ":path" => Source::Path,
                    ":method" => Source::Method,
                    ":authority" => Source::Authority,
                    ":scheme" => Source::Scheme,
                    _ => Source::Header(header_name(&h.header_name, ".request_headers.header_name")?),
                },
                key: h.descriptor_key.clone(),
                skip_if_absent: h.skip_if_absent,
            }
        }
        Some(A::RemoteAddress(_)) => Action::RemoteAddress,
        Some(A::GenericKey(g)) => {
            if g.descriptor_value.is_empty() {
                return Err((".generic_key.descriptor_value".into(), "required".into()));
            }
            Action::GenericKey {
                key: if g.descriptor_key.is_empty() {
                    "generic_key".into()
                } else {
                    g.descriptor_key.clone()
                },
                value: g.descriptor_value.clone(),
            }
        }
        Some(A::HeaderValueMatch(m)) => {
            if m.descriptor_value.is_empty() {
                return Err((".header_value_match.descriptor_value".into(), "required".into()));
            }
            let mut headers = Vec::with_capacity(m.headers.len());
            for (i, h) in m.headers.iter().enumerate() {
                let f = format!(".header_value_match.headers[{i}]");
                let name = header_name(&h.name, &format!("{f}.name"))?;
                let matcher = h
                    .value
                    .as_ref()
                    .map(|s| StringMatcher::compile(s, &format!("{field}{f}.value")))
                    .transpose()
                    .map_err(|e| (format!("{f}.value"), e.message))?;
                headers.push((name, matcher));
            }
            Action::HeaderValueMatch {
                key: if m.descriptor_key.is_empty() {
                    "header_match".into()
                } else {
                    m.descriptor_key.clone()
                },
                value: m.descriptor_value.clone(),
                expect_match: m.expect_match,
                headers,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn action(a: pb::rate_limit_action::Action) -> pb::RateLimitAction {
        pb::RateLimitAction { action: Some(a) }
    }

    fn path_rule(ports: Vec<u32>, virtual_host: bool) -> pb::RateLimitDescriptorRule {
        pb::RateLimitDescriptorRule {
            actions: vec![action(pb::rate_limit_action::Action::RequestHeaders(pb::RequestHeadersAction {
                header_name: ":path".into(),
                descriptor_key: if virtual_host { "VHOST_PATH" } else { "PATH" }.into(),
                skip_if_absent: false,
            }))],
            ports,
            virtual_host,
        }
    }

    fn shown(d: &[Descriptor]) -> Vec<String> {
        d.iter().map(|d| d.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")).collect()
    }

    #[test]
    fn descriptors_follow_envoys_actions() {
        use pb::rate_limit_action::Action as A;
        let rules = vec![
            path_rule(vec![], false),
            pb::RateLimitDescriptorRule {
                actions: vec![
                    action(A::GenericKey(pb::GenericKeyAction {
                        descriptor_key: String::new(),
                        descriptor_value: "shop".into(),
                    })),
                    action(A::RemoteAddress(true)),
                ],
                ..Default::default()
            },
            pb::RateLimitDescriptorRule {
                actions: vec![action(A::HeaderValueMatch(pb::HeaderValueMatchAction {
                    descriptor_key: String::new(),
                    descriptor_value: "premium".into(),
                    expect_match: true,
                    headers: vec![pb::HeaderMatch {
                        name: "x-plan".into(),
                        value: Some(pb::StringMatch {
                            kind: Some(pb::string_match::Kind::Exact("premium".into())),
                        }),
                    }],
                }))],
                ..Default::default()
            },
        ];
        let rules = Rules::compile(&rules, "g").unwrap();
        let remote: IpAddr = "10.0.0.7".parse().unwrap();
        let mut request = http::Request::get("/items?page=2").body(()).unwrap();
        let at = |r: &http::Request<()>| shown(&rules.descriptors(r, 80, remote, VirtualHostRules::Override));
        assert_eq!(at(&request), ["PATH=/items?page=2", "generic_key=shop,remote_address=10.0.0.7"]);
        request.headers_mut().insert("x-plan", HeaderValue::from_static("premium"));
        assert_eq!(
            at(&request),
            ["PATH=/items?page=2", "generic_key=shop,remote_address=10.0.0.7", "header_match=premium"]
        );
    }

    #[test]
    fn a_ports_route_rules_override_its_virtual_hosts_unless_told_otherwise() {
        let rules = Rules::compile(&[path_rule(vec![9080], false), path_rule(vec![], true)], "l").unwrap();
        let request = http::Request::get("/a").body(()).unwrap();
        let remote: IpAddr = "10.0.0.7".parse().unwrap();
        let at = |port, vh| shown(&rules.descriptors(&request, port, remote, vh));
        // Port 9080 has a route rule: the virtual host's does not count (Envoy's OVERRIDE).
        assert_eq!(at(9080, VirtualHostRules::Override), ["PATH=/a"]);
        assert_eq!(at(9080, VirtualHostRules::Include), ["PATH=/a", "VHOST_PATH=/a"]);
        // Another port's route has none: the virtual host's counts, unless ignored.
        assert_eq!(at(8080, VirtualHostRules::Override), ["VHOST_PATH=/a"]);
        assert!(at(8080, VirtualHostRules::Ignore).is_empty());
    }

    #[test]
    fn bad_rules_name_the_field() {
        let bad = [pb::RateLimitDescriptorRule {
            actions: vec![pb::RateLimitAction { action: None }],
            ..Default::default()
        }];
        assert_eq!(Rules::compile(&bad, "g").unwrap_err().field, "g.rules[0].actions[0]");
        let bad = [path_rule(vec![70000], false)];
        assert_eq!(Rules::compile(&bad, "g").unwrap_err().field, "g.rules[0].ports[0]");
    }
}
