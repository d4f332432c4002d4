//! One AuthorizationPolicy rule, compiled: its sources, operations and conditions, and whether
//! it matches a request or connection. A rule compiled for opaque TCP loses its HTTP-only
//! fields as Istio's does (see [`Protocol`]).

use http::HeaderName;
use trellis_xds::config as pb;

use super::attributes::Attributes;
use super::matcher::{AnyOf, AnyPath, Blocks, Value, parse_ports};

/// What the rule is compiled for. On TCP there are no methods, paths, hosts, headers or JWTs:
/// Istio drops an ALLOW rule that uses one (it could never be satisfied) and removes the field
/// from a DENY, AUDIT or CUSTOM rule (which then matches more).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Tcp,
}

#[derive(Debug)]
pub struct Rule {
    pub index: u32,
    pub from: Vec<Source>,
    pub to: Vec<Operation>,
    pub when: Vec<Condition>,
}

#[derive(Debug, Default)]
pub struct Source {
    pub principals: AnyOf,
    not_principals: AnyOf,
    request_principals: AnyOf,
    not_request_principals: AnyOf,
    namespaces: AnyOf,
    not_namespaces: AnyOf,
    service_accounts: Vec<(String, String)>,
    not_service_accounts: Vec<(String, String)>,
    trust_domains: AnyOf,
    not_trust_domains: AnyOf,
    ip_blocks: Blocks,
    not_ip_blocks: Blocks,
    remote_ip_blocks: Blocks,
    not_remote_ip_blocks: Blocks,
}

#[derive(Debug, Default)]
pub struct Operation {
    hosts: AnyOf,
    not_hosts: AnyOf,
    ports: Vec<u16>,
    not_ports: Vec<u16>,
    methods: AnyOf,
    not_methods: AnyOf,
    pub paths: AnyPath,
    not_paths: AnyPath,
}

#[derive(Debug)]
pub struct Condition {
    key: Key,
    values: Values,
    not_values: Values,
}

#[derive(Debug)]
enum Values {
    Strings(AnyOf),
    Blocks(Blocks),
    Ports(Vec<u16>),
}

#[derive(Debug)]
enum Key {
    Header(HeaderName),
    SourceIp,
    RemoteIp,
    SourceNamespace,
    SourceServiceAccount,
    SourceTrustDomain,
    SourcePrincipal,
    AuthPrincipal,
    AuthAudiences,
    AuthPresenter,
    AuthClaims(Vec<String>),
    DestinationIp,
    DestinationPort,
    ConnectionSni,
}

impl Key {
    fn parse(key: &str) -> Result<Key, String> {
        let inside = |prefix: &str| key.strip_prefix(prefix).and_then(|rest| rest.strip_suffix(']'));
        if let Some(name) = inside("request.headers[") {
            return HeaderName::try_from(name.to_ascii_lowercase())
                .map(Key::Header)
                .map_err(|_| format!("{key:?}: {name:?} is not a header name"));
        }
        if let Some(names) = inside("request.auth.claims[") {
            let names: Vec<String> = names.split("][").map(str::to_owned).collect();
            if names.iter().any(|n| n.is_empty() || n.contains(['[', ']'])) {
                return Err(format!("{key:?}: claims are written request.auth.claims[a][b]"));
            }
            return Ok(Key::AuthClaims(names));
        }
        Ok(match key {
            "source.ip" => Key::SourceIp,
            "remote.ip" => Key::RemoteIp,
            "source.namespace" => Key::SourceNamespace,
            "source.serviceAccount" => Key::SourceServiceAccount,
            "source.trustDomain" => Key::SourceTrustDomain,
            "source.principal" => Key::SourcePrincipal,
            "request.auth.principal" => Key::AuthPrincipal,
            "request.auth.audiences" => Key::AuthAudiences,
            "request.auth.presenter" => Key::AuthPresenter,
            "destination.ip" => Key::DestinationIp,
            "destination.port" => Key::DestinationPort,
            "connection.sni" => Key::ConnectionSni,
            other => return Err(format!("{other:?}: not a condition key Trellis supports")),
        })
    }

    fn http_only(key: &str) -> bool {
        key.starts_with("request.")
    }
}

fn service_accounts(values: &[String], field: &str) -> Result<Vec<(String, String)>, String> {
    values
        .iter()
        .map(|v| match v.split_once('/') {
            Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() && !sa.contains('/') => {
                Ok((ns.to_owned(), sa.to_owned()))
            }
            _ => Err(format!("{field}: {v:?} is not <namespace>/<service account>")),
        })
        .collect()
}

impl Rule {
    /// `None`: an ALLOW rule that cannot apply to `protocol` (it uses an HTTP-only field on TCP).
    pub fn compile(
        rule: &pb::AuthzRule,
        field: &str,
        action: pb::authz_policy::Action,
        protocol: Protocol,
    ) -> Result<Option<Rule>, String> {
        let tcp = protocol == Protocol::Tcp;
        let uses_http = rule
            .from
            .iter()
            .flat_map(|s| [&s.request_principals, &s.not_request_principals])
            .any(|v| !v.is_empty())
            || rule
                .to
                .iter()
                .flat_map(|o| [&o.hosts, &o.not_hosts, &o.methods, &o.not_methods, &o.paths, &o.not_paths])
                .any(|v| !v.is_empty())
            || rule.when.iter().any(|c| Key::http_only(&c.key));
        if tcp && uses_http && action == pb::authz_policy::Action::Allow {
            return Ok(None);
        }
        // On TCP the HTTP-only fields are left out (empty lists match anything).
        let http = |values: &[String]| if tcp { Vec::new() } else { values.to_vec() };
        let from = rule
            .from
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let f = |name: &str| format!("{field}.from[{i}].source.{name}");
                Ok(Source {
                    principals: AnyOf::parse(&s.principals),
                    not_principals: AnyOf::parse(&s.not_principals),
                    request_principals: AnyOf::parse(&http(&s.request_principals)),
                    not_request_principals: AnyOf::parse(&http(&s.not_request_principals)),
                    namespaces: AnyOf::parse(&s.namespaces),
                    not_namespaces: AnyOf::parse(&s.not_namespaces),
                    service_accounts: service_accounts(&s.service_accounts, &f("serviceAccounts"))?,
                    not_service_accounts: service_accounts(
                        &s.not_service_accounts,
                        &f("notServiceAccounts"),
                    )?,
                    trust_domains: AnyOf::parse(&s.trust_domains),
                    not_trust_domains: AnyOf::parse(&s.not_trust_domains),
                    ip_blocks: Blocks::parse(&s.ip_blocks, &f("ipBlocks"))?,
                    not_ip_blocks: Blocks::parse(&s.not_ip_blocks, &f("notIpBlocks"))?,
                    remote_ip_blocks: Blocks::parse(&s.remote_ip_blocks, &f("remoteIpBlocks"))?,
                    not_remote_ip_blocks: Blocks::parse(&s.not_remote_ip_blocks, &f("notRemoteIpBlocks"))?,
                })
            })
            .collect::<Result<_, String>>()?;
        let to = rule
            .to
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let f = |name: &str| format!("{field}.to[{i}].operation.{name}");
                Ok(Operation {
                    hosts: AnyOf::parse(&http(&o.hosts)),
                    not_hosts: AnyOf::parse(&http(&o.not_hosts)),
                    ports: parse_ports(&o.ports, &f("ports"))?,
                    not_ports: parse_ports(&o.not_ports, &f("notPorts"))?,
                    methods: AnyOf::parse(&http(&o.methods)),
                    not_methods: AnyOf::parse(&http(&o.not_methods)),
                    paths: AnyPath::parse(&http(&o.paths), &f("paths"))?,
                    not_paths: AnyPath::parse(&http(&o.not_paths), &f("notPaths"))?,
                })
            })
            .collect::<Result<_, String>>()?;
        let when = rule
            .when
            .iter()
            .enumerate()
            .filter(|(_, c)| !(tcp && Key::http_only(&c.key)))
            .map(|(i, c)| {
                let f = format!("{field}.when[{i}]");
                let key = Key::parse(&c.key).map_err(|e| format!("{f}.key: {e}"))?;
                let values = |list: &[String], name: &str| -> Result<Values, String> {
                    let f = format!("{f}.{name}");
                    Ok(match key {
                        Key::SourceIp | Key::RemoteIp | Key::DestinationIp => {
                            Values::Blocks(Blocks::parse(list, &f)?)
                        }
                        Key::DestinationPort => Values::Ports(parse_ports(list, &f)?),
                        _ => Values::Strings(AnyOf::parse(list)),
                    })
                };
                if c.values.is_empty() && c.not_values.is_empty() {
                    return Err(format!("{f}: values or notValues is required"));
                }
                Ok(Condition {
                    values: values(&c.values, "values")?,
                    not_values: values(&c.not_values, "notValues")?,
                    key,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Some(Rule { index: rule.index, from, to, when }))
    }

    pub fn matches(&self, a: &Attributes<'_>) -> bool {
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(a)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(a)))
            && self.when.iter().all(|c| c.matches(a))
    }
}

/// `list` must match when given; `not` must not.
fn both(
    list_empty: bool,
    matched: impl FnOnce() -> bool,
    not_empty: bool,
    not_matched: impl FnOnce() -> bool,
) -> bool {
    (list_empty || matched()) && (not_empty || !not_matched())
}

impl Source {
    fn matches(&self, a: &Attributes<'_>) -> bool {
        let principal = a.peer_principal;
        let auth = a.http.as_ref().and_then(|h| h.auth);
        let peer = a.peer;
        let on_principal = |m: &AnyOf| principal.is_some_and(|p| m.matches(p));
        let on_request = |m: &AnyOf| auth.is_some_and(|r| m.matches(&r.principal));
        let on_namespace = |m: &AnyOf| peer.is_some_and(|p| m.matches(&p.namespace));
        let on_domain = |m: &AnyOf| peer.is_some_and(|p| m.matches(&p.trust_domain));
        let on_account = |list: &[(String, String)]| {
            peer.is_some_and(|p| list.iter().any(|(ns, sa)| *ns == p.namespace && *sa == p.service_account))
        };
        both(
            self.principals.is_empty(),
            || on_principal(&self.principals),
            self.not_principals.is_empty(),
            || on_principal(&self.not_principals),
        ) && both(
            self.request_principals.is_empty(),
            || on_request(&self.request_principals),
            self.not_request_principals.is_empty(),
            || on_request(&self.not_request_principals),
        ) && both(
            self.namespaces.is_empty(),
            || on_namespace(&self.namespaces),
            self.not_namespaces.is_empty(),
            || on_namespace(&self.not_namespaces),
        ) && both(
            self.service_accounts.is_empty(),
            || on_account(&self.service_accounts),
            self.not_service_accounts.is_empty(),
            || on_account(&self.not_service_accounts),
        ) && both(
            self.trust_domains.is_empty(),
            || on_domain(&self.trust_domains),
            self.not_trust_domains.is_empty(),
            || on_domain(&self.not_trust_domains),
        ) && both(
            self.ip_blocks.is_empty(),
            || self.ip_blocks.contains(a.source_ip),
            self.not_ip_blocks.is_empty(),
            || self.not_ip_blocks.contains(a.source_ip),
        ) && both(
            // Without trusted proxies in front (Istio's numTrustedProxies 0), the remote
            // client is the connection's source.
            self.remote_ip_blocks.is_empty(),
            || self.remote_ip_blocks.contains(a.source_ip),
            self.not_remote_ip_blocks.is_empty(),
            || self.not_remote_ip_blocks.contains(a.source_ip),
        )
    }
}

impl Operation {
    fn matches(&self, a: &Attributes<'_>) -> bool {
        let http = a.http.as_ref();
        let on_host = |m: &AnyOf| {
            http.is_some_and(|h| {
                // `Host: api.example.com:8080` is `api.example.com` too.
                let bare = h.host.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()));
                m.matches_ignoring_case(h.host) || bare.is_some_and(|(host, _)| m.matches_ignoring_case(host))
            })
        };
        let on_method = |m: &AnyOf| http.is_some_and(|h| m.matches(h.method));
        let on_path = |m: &AnyPath| http.is_some_and(|h| m.matches(h.path));
        both(
            self.hosts.is_empty(),
            || on_host(&self.hosts),
            self.not_hosts.is_empty(),
            || on_host(&self.not_hosts),
        ) && both(
            self.ports.is_empty(),
            || self.ports.contains(&a.destination_port),
            self.not_ports.is_empty(),
            || self.not_ports.contains(&a.destination_port),
        ) && both(
            self.methods.is_empty(),
            || on_method(&self.methods),
            self.not_methods.is_empty(),
            || on_method(&self.not_methods),
        ) && both(
            self.paths.is_empty(),
            || on_path(&self.paths),
            self.not_paths.is_empty(),
            || on_path(&self.not_paths),
        )
    }
}

impl Condition {
    fn matches(&self, a: &Attributes<'_>) -> bool {
        let empty = |v: &Values| match v {
            Values::Strings(s) => s.is_empty(),
            Values::Blocks(b) => b.is_empty(),
            Values::Ports(p) => p.is_empty(),
        };
        (empty(&self.values) || self.test(&self.values, a))
            && (empty(&self.not_values) || !self.test(&self.not_values, a))
    }

    /// Whether any of the attribute's values is one of `values`.
    fn test(&self, values: &Values, a: &Attributes<'_>) -> bool {
        let http = a.http.as_ref();
        let auth = http.and_then(|h| h.auth);
        let strings = |found: &[&str]| match values {
            Values::Strings(m) => found.iter().any(|v| m.matches(v)),
            _ => false,
        };
        match &self.key {
            Key::SourceIp | Key::RemoteIp => matches!(values, Values::Blocks(b) if b.contains(a.source_ip)),
            Key::DestinationIp => matches!(values, Values::Blocks(b) if b.contains(a.destination_ip)),
            Key::DestinationPort => matches!(values, Values::Ports(p) if p.contains(&a.destination_port)),
            Key::Header(name) => {
                let Some(h) = http else { return false };
                let mut all = h.headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).peekable();
                if all.peek().is_none() {
                    return false;
                }
                // Several lines of one header are one value, joined with commas (as Envoy reads them).
                let joined = all.collect::<Vec<_>>().join(",");
                strings(&[joined.as_str()])
            }
            Key::SourceNamespace => a.peer.is_some_and(|p| strings(&[&p.namespace])),
            Key::SourceServiceAccount => {
                a.peer.is_some_and(|p| strings(&[&format!("{}/{}", p.namespace, p.service_account)]))
            }
            Key::SourceTrustDomain => a.peer.is_some_and(|p| strings(&[&p.trust_domain])),
            Key::SourcePrincipal => a.peer_principal.is_some_and(|p| strings(&[p])),
            Key::AuthPrincipal => auth.is_some_and(|r| strings(&[&r.principal])),
            Key::AuthAudiences => {
                auth.is_some_and(|r| strings(&r.audiences.iter().map(String::as_str).collect::<Vec<_>>()))
            }
            Key::AuthPresenter => auth.and_then(|r| r.presenter.as_deref()).is_some_and(|p| strings(&[p])),
            Key::AuthClaims(path) => auth.is_some_and(|r| strings(&r.claim_values(path))),
            Key::ConnectionSni => a.sni.is_some_and(|s| strings(&[s])),
        }
    }
}

/// The values a rule's sources require of the peer's principal, when every source requires
/// an exact one: the principal index files the rule under each.
pub fn exact_principals(rule: &Rule) -> Option<Vec<&str>> {
    if rule.from.is_empty() {
        return None;
    }
    let mut all = Vec::new();
    for source in &rule.from {
        if source.principals.is_empty() {
            return None;
        }
        for value in &source.principals.0 {
            match value {
                Value::Exact(p) => all.push(p.as_str()),
                _ => return None,
            }
        }
    }
    Some(all)
}

/// The literal paths or prefixes a rule's operations require, when every operation requires
/// one: the path index files the rule under each (`true` for a prefix).
pub fn literal_paths(rule: &Rule) -> Option<Vec<(&str, bool)>> {
    if rule.to.is_empty() {
        return None;
    }
    let mut all = Vec::new();
    for operation in &rule.to {
        if operation.paths.is_empty() {
            return None;
        }
        for path in &operation.paths.0 {
            match path {
                super::matcher::PathMatch::Value(Value::Exact(p)) => all.push((p.as_str(), false)),
                super::matcher::PathMatch::Value(Value::Prefix(p)) => all.push((p.as_str(), true)),
                _ => return None,
            }
        }
    }
    Some(all)
}
