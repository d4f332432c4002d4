//! AuthorizationPolicy → the proxy's `AuthzPolicy`, one per policy that selects the workload
//! (see `policies`), in (namespace, name) order, and the ext_authz providers their CUSTOM
//! actions name, from the mesh config.
//!
//! What the control plane resolves so the proxy does not have to:
//! - principals (and `notPrincipals`, `source.principal` conditions) are expanded over the
//!   mesh's trust domain and its `trustDomainAliases`, as Istio's trust-domain bundle does: a
//!   principal in the trust domain, an alias, or `cluster.local` becomes the same principal
//!   under each of them (`cluster.local/ns/a/sa/b` → `example.org/ns/a/sa/b` when the trust
//!   domain is `example.org`);
//! - `serviceAccounts` (and `source.serviceAccount` values) written without a namespace get the
//!   policy's: `<ns>/<sa>`;
//! - `istio.io/dry-run` becomes `dry_run` (ALLOW and DENY only).
//!
//! A rule the control plane cannot accept (an Istio error, or what the proxy cannot enforce,
//! such as `experimental.envoy.filters.*` keys) is left out of an ALLOW policy — which only
//! narrows what it allows — with a warning naming the resource and field. In a DENY, AUDIT or
//! CUSTOM policy leaving a rule out would let through what it should stop, so the policy is
//! sent instead with a single empty rule, which matches every request (fail closed), and the
//! error is logged loudly. The empty rule carries the index of the first rule at fault, so a
//! denial names it.
//!
//! CUSTOM providers: `extensionProviders[].envoyExtAuthzHttp|Grpc` of the mesh config, their
//! `service` (`host`, or `namespace/host`; a name without a dot is a Kubernetes service in the
//! root namespace) resolved to the endpoint addresses of that service port in the model
//! (ServiceEntry/WorkloadEntry in file mode, EndpointSlices in Kubernetes mode). A provider the
//! mesh config does not have, that is invalid there, whose service is not in the registry or
//! has no ready endpoint is not sent: the policy still names it and the proxy denies what the
//! policy matches (fail closed, whatever `failOpen` says).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use tracing::{error, warn};
use trellis_api::mesh::{ExtensionProvider, MeshConfig, parse_status_on_error};
use trellis_api::resource::{Kind, Resource};
use trellis_api::security::{AuthorizationAction, AuthorizationPolicy, Condition, Rule, dry_run};
use trellis_api::validate::{Finding, authorization_rule_defects};
use trellis_xds::config as pb;

use super::names::resolve_host;
use super::policies::{PolicyKey, lookup};
use super::services;
use crate::model::Model;

/// The `AuthzPolicy` of each selected policy still in the model.
pub fn policies(model: &Model, keys: &[PolicyKey]) -> Vec<pb::AuthzPolicy> {
    let domains = TrustDomains::of(&model.mesh);
    keys.iter()
        .filter_map(|key| match lookup(model, Kind::AuthorizationPolicy, key) {
            Some((key, Resource::AuthorizationPolicy(ap))) => {
                resolve(&key.namespace, &key.name, ap, &domains)
            }
            _ => None,
        })
        .collect()
}

fn resolve(
    namespace: &str,
    name: &str,
    ap: &AuthorizationPolicy,
    domains: &TrustDomains,
) -> Option<pb::AuthzPolicy> {
    let resource = format!("AuthorizationPolicy {namespace}/{name}");
    let spec = &ap.spec;
    let mut action = match spec.action {
        AuthorizationAction::Allow => pb::authz_policy::Action::Allow,
        AuthorizationAction::Deny => pb::authz_policy::Action::Deny,
        AuthorizationAction::Audit => pb::authz_policy::Action::Audit,
        AuthorizationAction::Custom => pb::authz_policy::Action::Custom,
    };
    let dry_run = match (dry_run(ap.metadata.annotations.as_ref()), spec.action) {
        (None, _) => false,
        (Some(Ok(value)), AuthorizationAction::Allow | AuthorizationAction::Deny) => value,
        (Some(Ok(_)), _) => {
            warn!(
                resource,
                field = "metadata.annotations.istio.io/dry-run",
                "only ALLOW and DENY policies can be dry-run; enforced"
            );
            false
        }
        (Some(Err(value)), _) => {
            warn!(
                resource,
                field = "metadata.annotations.istio.io/dry-run",
                "{value:?} is not a boolean; enforced"
            );
            false
        }
    };
    let mut provider = String::new();
    if action == pb::authz_policy::Action::Custom {
        provider = spec.provider.as_ref().map(|p| p.name.clone()).unwrap_or_default();
        if provider.is_empty() {
            if spec.rules.is_empty() {
                return None; // it would match nothing
            }
            error!(
                resource,
                field = "spec.provider.name",
                "a CUSTOM policy without a provider: sent as a DENY of every request it selects (fail closed)"
            );
            action = pb::authz_policy::Action::Deny;
        }
    }
    let mut rules = Vec::new();
    let mut first_defect: Option<(u32, Finding)> = None;
    for (i, rule) in spec.rules.iter().enumerate() {
        let index = u32::try_from(i).unwrap_or(u32::MAX);
        let path = format!("spec.rules[{i}]");
        match authorization_rule_defects(&path, rule).into_iter().next() {
            None => rules.push(resolve_rule(rule, index, namespace, domains)),
            Some(defect) => {
                if action == pb::authz_policy::Action::Allow {
                    warn!(resource, field = %defect.field, "rule left out (an ALLOW policy only narrows without it): {}", defect.message);
                }
                first_defect.get_or_insert((index, defect));
            }
        }
    }
    if let Some((index, defect)) = first_defect
        && action != pb::authz_policy::Action::Allow
    {
        error!(
            resource,
            field = %defect.field,
            "{}; the {} policy now matches every request it selects (fail closed)",
            defect.message,
            spec_action_name(action)
        );
        rules = vec![pb::AuthzRule { index, ..Default::default() }];
    }
    Some(pb::AuthzPolicy {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        action: action.into(),
        dry_run,
        provider,
        rules,
    })
}

fn spec_action_name(action: pb::authz_policy::Action) -> &'static str {
    match action {
        pb::authz_policy::Action::Allow => "ALLOW",
        pb::authz_policy::Action::Deny => "DENY",
        pb::authz_policy::Action::Audit => "AUDIT",
        pb::authz_policy::Action::Custom => "CUSTOM",
    }
}

fn resolve_rule(rule: &Rule, index: u32, namespace: &str, domains: &TrustDomains) -> pb::AuthzRule {
    let accounts = |values: &[String]| qualify_accounts(values, namespace);
    pb::AuthzRule {
        index,
        from: rule
            .from
            .iter()
            .filter_map(|f| f.source.as_ref())
            .map(|s| pb::AuthzSource {
                principals: domains.expand(&s.principals),
                not_principals: domains.expand(&s.not_principals),
                request_principals: s.request_principals.clone(),
                not_request_principals: s.not_request_principals.clone(),
                namespaces: s.namespaces.clone(),
                not_namespaces: s.not_namespaces.clone(),
                service_accounts: accounts(&s.service_accounts),
                not_service_accounts: accounts(&s.not_service_accounts),
                trust_domains: s.trust_domains.clone(),
                not_trust_domains: s.not_trust_domains.clone(),
                ip_blocks: s.ip_blocks.clone(),
                not_ip_blocks: s.not_ip_blocks.clone(),
                remote_ip_blocks: s.remote_ip_blocks.clone(),
                not_remote_ip_blocks: s.not_remote_ip_blocks.clone(),
            })
            .collect(),
        to: rule
            .to
            .iter()
            .filter_map(|t| t.operation.as_ref())
            .map(|o| pb::AuthzOperation {
                hosts: o.hosts.clone(),
                not_hosts: o.not_hosts.clone(),
                ports: o.ports.clone(),
                not_ports: o.not_ports.clone(),
                methods: o.methods.clone(),
                not_methods: o.not_methods.clone(),
                paths: o.paths.clone(),
                not_paths: o.not_paths.clone(),
            })
            .collect(),
        when: rule.when.iter().map(|c| condition(c, namespace, domains)).collect(),
    }
}

fn condition(c: &Condition, namespace: &str, domains: &TrustDomains) -> pb::AuthzCondition {
    let values = |list: &[String]| match c.key.as_str() {
        "source.principal" => domains.expand(list),
        "source.serviceAccount" => qualify_accounts(list, namespace),
        _ => list.to_vec(),
    };
    pb::AuthzCondition { key: c.key.clone(), values: values(&c.values), not_values: values(&c.not_values) }
}

/// `sa` → `<namespace>/sa`; `ns/sa` stays.
fn qualify_accounts(values: &[String], namespace: &str) -> Vec<String> {
    values.iter().map(|v| if v.contains('/') { v.clone() } else { format!("{namespace}/{v}") }).collect()
}

/// Istio's trust-domain bundle: the mesh's trust domain, then its aliases.
struct TrustDomains {
    domains: Vec<String>,
}

const CLUSTER_LOCAL: &str = "cluster.local";

impl TrustDomains {
    fn of(mesh: &MeshConfig) -> TrustDomains {
        let mut domains = vec![mesh.trust_domain().to_owned()];
        for alias in &mesh.trust_domain_aliases {
            if !domains.contains(alias) {
                domains.push(alias.clone());
            }
        }
        TrustDomains { domains }
    }

    /// Each principal, and for one whose trust domain is in the bundle (or is `cluster.local`),
    /// the same principal under every trust domain of the bundle instead.
    fn expand(&self, principals: &[String]) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut push = |p: String| {
            if !out.contains(&p) {
                out.push(p);
            }
        };
        for principal in principals {
            let parts: Vec<&str> = principal.split('/').collect();
            // Not a SPIFFE path (`sa/bar`, `*`), or any trust domain (`*/ns/a/sa/b`): kept.
            let Some((domain, rest)) =
                principal.split_once('/').filter(|_| parts.len() == 5 && parts[0] != "*")
            else {
                push(principal.clone());
                continue;
            };
            if !(self.domains.iter().any(|d| domain_matches(domain, d)) || domain == CLUSTER_LOCAL) {
                push(principal.clone());
                continue;
            }
            for d in &self.domains {
                // A suffix pattern that covers this trust domain (`*-td` for `old-td`) stays.
                let covered = domain.strip_prefix('*').is_some_and(|suffix| d.ends_with(suffix));
                push(if covered { principal.clone() } else { format!("{d}/{rest}") });
            }
        }
        out
    }
}

/// Istio's string match: exact, `*suffix` or `prefix*`.
fn domain_matches(pattern: &str, domain: &str) -> bool {
    pattern == domain
        || pattern.strip_prefix('*').is_some_and(|s| domain.ends_with(s))
        || pattern.strip_suffix('*').is_some_and(|p| domain.starts_with(p))
}

// ---------------------------------------------------------------------------------------------
// ext_authz providers

/// The providers the CUSTOM policies name, resolved; a name that cannot be resolved is left out
/// (the proxy then denies what the policy matches) with a warning.
pub fn ext_authz(model: &Model, policies: &[pb::AuthzPolicy]) -> Vec<pb::ExtAuthzProvider> {
    let named: BTreeSet<&str> = policies
        .iter()
        .filter(|p| p.action() == pb::authz_policy::Action::Custom && !p.provider.is_empty())
        .map(|p| p.provider.as_str())
        .collect();
    if named.is_empty() {
        return Vec::new();
    }
    let registry = services::discover(model);
    let mut providers = Vec::new();
    for name in named {
        let users: Vec<String> = policies
            .iter()
            .filter(|p| p.provider == name)
            .map(|p| format!("AuthorizationPolicy {}/{}", p.namespace, p.name))
            .collect();
        let Some(provider) = model.mesh.extension_provider(name) else {
            warn!(provider = name, policies = ?users, "not in the mesh config's extensionProviders: the proxy denies every request these CUSTOM policies match");
            continue;
        };
        match resolve_provider(provider, &registry, model.mesh.root_namespace()) {
            Ok(resolved) => providers.push(resolved),
            Err(e) => {
                warn!(provider = name, policies = ?users, "{e}: the proxy denies every request these CUSTOM policies match")
            }
        }
    }
    providers
}

fn resolve_provider(
    provider: &ExtensionProvider,
    registry: &[services::Service],
    root_namespace: &str,
) -> Result<pb::ExtAuthzProvider, String> {
    let common = provider.ext_authz().ok_or("not an envoyExtAuthzHttp or envoyExtAuthzGrpc provider")?;
    // The mesh config is only logged when invalid: a provider the proxy could not use must not
    // be sent (the proxy would refuse its whole configuration).
    let problems = provider.problems();
    if !problems.is_empty() {
        return Err(format!("invalid in the mesh config: {}", problems.join("; ")));
    }
    let (namespace, host) = match common.service.split_once('/') {
        Some((ns, host)) => (Some(ns), host),
        None => (None, common.service),
    };
    let hostname = resolve_host(host, namespace.unwrap_or(root_namespace));
    let service = registry
        .iter()
        .find(|s| s.hostname == hostname && namespace.is_none_or(|ns| s.namespace == ns))
        .ok_or_else(|| format!("service {:?} ({hostname}) is not in the registry", common.service))?;
    let port = u16::try_from(common.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("port {} is not a port", common.port))?;
    let port = service.port(port).ok_or_else(|| format!("service {hostname} has no port {port}"))?;
    let addresses: Vec<String> = port
        .endpoints
        .iter()
        .filter_map(|e| {
            let ip: IpAddr = e.address.parse().ok()?;
            Some(SocketAddr::new(ip, u16::try_from(e.port).ok()?).to_string())
        })
        .collect();
    if addresses.is_empty() {
        return Err(format!("service {hostname} port {} has no ready endpoint", port.number));
    }
    let kind = match (&provider.envoy_ext_authz_http, &provider.envoy_ext_authz_grpc) {
        (Some(http), _) => pb::ext_authz_provider::Kind::Http(pb::ExtAuthzHttp {
            path_prefix: http.path_prefix.clone(),
            include_request_headers_in_check: http.include_request_headers_in_check.clone(),
            include_additional_headers_in_check: http.include_additional_headers_in_check.clone(),
            headers_to_upstream_on_allow: http.headers_to_upstream_on_allow.clone(),
            headers_to_downstream_on_deny: http.headers_to_downstream_on_deny.clone(),
        }),
        _ => pb::ext_authz_provider::Kind::Grpc(pb::ExtAuthzGrpc {}),
    };
    Ok(pb::ExtAuthzProvider {
        name: provider.name.clone(),
        kind: Some(kind),
        addresses,
        service: host.to_owned(),
        timeout: common.timeout.and_then(|t| t.to_std().ok()).map(Into::into),
        fail_open: common.fail_open,
        // The proxy answers with 200-599; anything else is its default (403).
        status_on_error: parse_status_on_error(common.status_on_error)
            .ok()
            .filter(|code| (200..=599).contains(code))
            .map_or(0, u32::from),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::test_support::*;
    use crate::translate::{ProxyIdentity, scope_of};

    fn policy(namespace: &str, name: &str, spec: &str) -> String {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{ name: {name}, namespace: {namespace} }}\nspec: {spec}\n---\n"
        )
    }

    fn names(config: &pb::ProxyConfig) -> Vec<String> {
        config.authorization.iter().map(|p| format!("{}/{}", p.namespace, p.name)).collect()
    }

    fn only(config: &pb::ProxyConfig) -> &pb::AuthzPolicy {
        assert_eq!(config.authorization.len(), 1, "{:#?}", config.authorization);
        &config.authorization[0]
    }

    const ALLOW_ALL: &str = "{ rules: [{}] }";

    #[test]
    fn root_policies_apply_everywhere_and_namespace_ones_by_selector() {
        let yaml = policy("istio-system", "mesh-wide", ALLOW_ALL)
            + &policy("istio-system", "root-web", "{ selector: { matchLabels: { app: web } }, rules: [{}] }")
            + &policy("shop", "z-namespace", ALLOW_ALL)
            + &policy("shop", "a-web", "{ selector: { matchLabels: { app: web } }, rules: [{}] }")
            + &policy(
                "shop",
                "web-v2",
                "{ selector: { matchLabels: { app: web, version: v2 } }, rules: [{}] }",
            )
            + &policy("other", "elsewhere", ALLOW_ALL)
            + &policy(
                "shop",
                "gateway",
                "{ targetRefs: [{ kind: Gateway, group: gateway.networking.k8s.io, name: gw }], rules: [{}] }",
            );
        let m = model(&yaml);
        assert_eq!(
            names(&config_for(&m, "shop", &[("app", "web"), ("version", "v1")])),
            ["istio-system/mesh-wide", "istio-system/root-web", "shop/a-web", "shop/z-namespace"],
            "sorted by namespace and name; targetRef and other namespaces left out"
        );
        assert_eq!(
            names(&config_for(&m, "shop", &[("app", "web"), ("version", "v2")])),
            [
                "istio-system/mesh-wide",
                "istio-system/root-web",
                "shop/a-web",
                "shop/web-v2",
                "shop/z-namespace"
            ]
        );
        assert_eq!(
            names(&config_for(&m, "shop", &[("app", "db")])),
            ["istio-system/mesh-wide", "shop/z-namespace"]
        );
        assert_eq!(
            names(&config_for(&m, "web", &[("app", "web")])),
            ["istio-system/mesh-wide", "istio-system/root-web"],
            "a root policy's selector applies in every namespace"
        );
        assert_eq!(names(&config_for(&m, "istio-system", &[])), ["istio-system/mesh-wide"]);
    }

    #[test]
    fn the_scope_tells_apart_workloads_with_different_policies_only() {
        let yaml = policy("shop", "web", "{ selector: { matchLabels: { app: web } }, rules: [{}] }")
            + "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: { name: jwt, namespace: shop }\nspec: { selector: { matchLabels: { app: api } }, jwtRules: [{ issuer: a, jwks: '{\"keys\": []}' }] }\n";
        let m = model(&yaml);
        let scope = |labels: &[(&str, &str)]| {
            scope_of(
                &m,
                &ProxyIdentity { namespace: "shop".into(), labels: labels_of(labels), ..Default::default() },
            )
        };
        assert_eq!(scope(&[("app", "db")]), scope(&[("app", "cache"), ("tier", "x")]));
        assert_ne!(scope(&[("app", "web")]), scope(&[("app", "db")]));
        assert_eq!(scope(&[("app", "web")]).authorization, ["shop/web"]);
        assert_eq!(scope(&[("app", "api")]).request_authentication, ["shop/jwt"]);
        assert!(scope(&[("app", "web")]).request_authentication.is_empty());
    }

    #[test]
    fn actions_dry_run_and_rule_indexes_carry_over() {
        let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: { name: try, namespace: shop, annotations: { istio.io/dry-run: \"true\" } }\nspec: { action: DENY, rules: [{ to: [{ operation: { paths: [/admin] } }] }, { to: [{ operation: { methods: [DELETE], ports: ['8080'] } }] }] }\n";
        let out = config(&model(yaml), "shop");
        let p = only(&out);
        assert_eq!((p.action(), p.dry_run), (pb::authz_policy::Action::Deny, true));
        assert_eq!(p.rules.iter().map(|r| r.index).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(p.rules[1].to[0].ports, ["8080"]);
        assert_eq!(p.rules[0].to[0].paths, ["/admin"]);

        // Istio rejects dry-run on CUSTOM; a model that holds one anyway enforces it.
        let custom = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: { name: c, namespace: shop, annotations: { istio.io/dry-run: \"true\" } }\nspec: { action: CUSTOM, provider: { name: opa }, rules: [{}] }\n";
        let out = config_for(&unchecked_model(custom), "shop", &[]);
        assert!(!only(&out).dry_run);
        assert_eq!(only(&out).provider, "opa");
    }

    fn source_of(config: &pb::ProxyConfig) -> &pb::AuthzSource {
        &only(config).rules[0].from[0]
    }

    #[test]
    fn principals_are_expanded_over_trust_domain_aliases() {
        let yaml = policy(
            "shop",
            "p",
            "{ rules: [{ from: [{ source: { principals: [cluster.local/ns/a/sa/b, old.example/ns/c/sa/d, other.example/ns/e/sa/f, '*', '*/ns/g/sa/h', '*-example/ns/i/sa/j', 'sa/k'], notPrincipals: [cluster.local/ns/x/sa/y] } }], when: [{ key: source.principal, values: [cluster.local/ns/w/sa/z] }] }] }",
        );
        let m = with_mesh(model(&yaml), "trustDomain: new.example\ntrustDomainAliases: [old.example]");
        let out = config(&m, "shop");
        let source = source_of(&out);
        assert_eq!(
            source.principals,
            [
                "new.example/ns/a/sa/b",
                "old.example/ns/a/sa/b",
                "new.example/ns/c/sa/d",
                "old.example/ns/c/sa/d",
                "other.example/ns/e/sa/f",
                "*",
                "*/ns/g/sa/h",
                "*-example/ns/i/sa/j",
                "sa/k",
            ]
        );
        assert_eq!(source.not_principals, ["new.example/ns/x/sa/y", "old.example/ns/x/sa/y"]);
        assert_eq!(only(&out).rules[0].when[0].values, ["new.example/ns/w/sa/z", "old.example/ns/w/sa/z"]);

        // Without aliases: cluster.local principals move to the mesh's trust domain.
        let m = with_mesh(model(&yaml), "trustDomain: new.example");
        assert_eq!(source_of(&config_for(&m, "shop", &[])).principals[0], "new.example/ns/a/sa/b");
        // The default trust domain: principals as written.
        let plain = config(&model(&yaml), "shop");
        assert_eq!(source_of(&plain).principals[..2], ["cluster.local/ns/a/sa/b", "old.example/ns/c/sa/d"]);
    }

    #[test]
    fn service_accounts_get_the_policys_namespace() {
        let yaml = policy(
            "shop",
            "sa",
            "{ rules: [{ from: [{ source: { serviceAccounts: [web, other/api], notServiceAccounts: [batch] } }], when: [{ key: source.serviceAccount, values: [cron], notValues: [x/y] }] }] }",
        );
        let out = config(&model(&yaml), "shop");
        let rule = &only(&out).rules[0];
        assert_eq!(rule.from[0].service_accounts, ["shop/web", "other/api"]);
        assert_eq!(rule.from[0].not_service_accounts, ["shop/batch"]);
        assert_eq!(
            (rule.when[0].values.as_slice(), rule.when[0].not_values.as_slice()),
            (&["shop/cron".to_owned()][..], &["x/y".to_owned()][..])
        );
    }

    #[test]
    fn a_rule_trellis_cannot_enforce_narrows_an_allow_and_makes_a_deny_deny_everything() {
        let unsupported = "{ when: [{ key: 'experimental.envoy.filters.x[y]', values: [z] }] }";
        let good = "{ to: [{ operation: { methods: [GET] } }] }";
        let yaml = policy("shop", "allow", &format!("{{ rules: [{good}, {unsupported}] }}"))
            + &policy("shop", "deny", &format!("{{ action: DENY, rules: [{good}, {unsupported}] }}"))
            + &policy("shop", "audit", &format!("{{ action: AUDIT, rules: [{unsupported}] }}"));
        let out = config(&model(&yaml), "shop");
        let by_name = |name: &str| out.authorization.iter().find(|p| p.name == name).unwrap();
        let allow = by_name("allow");
        assert_eq!(allow.rules.len(), 1, "the bad rule is left out");
        assert_eq!(
            (allow.rules[0].index, allow.rules[0].to[0].methods.as_slice()),
            (0, &["GET".to_owned()][..])
        );
        let deny = by_name("deny");
        assert_eq!(
            deny.rules,
            [pb::AuthzRule { index: 1, ..Default::default() }],
            "fail closed: one empty rule"
        );
        assert_eq!(by_name("audit").rules, [pb::AuthzRule { index: 0, ..Default::default() }]);

        // What validation would refuse (a model from an unchecked source): the same handling.
        let yaml = policy(
            "shop",
            "deny",
            "{ action: DENY, rules: [{ to: [{ operation: { paths: [/x] } }] }, { when: [{ key: request.colour, values: [red] }] }] }",
        ) + &policy(
            "shop",
            "allow",
            "{ rules: [{ from: [{ source: { ipBlocks: [not-an-ip] } }] }] }",
        );
        let out = config_for(&unchecked_model(&yaml), "shop", &[]);
        let by_name = |name: &str| out.authorization.iter().find(|p| p.name == name).unwrap();
        assert_eq!(by_name("deny").rules, [pb::AuthzRule { index: 1, ..Default::default() }]);
        assert!(by_name("allow").rules.is_empty(), "an ALLOW left without rules denies what it selects");
    }

    const PROVIDERS: &str = r#"
extensionProviders:
- name: authz-http
  envoyExtAuthzHttp:
    service: ext-authz.auth.svc.cluster.local
    port: 8000
    timeout: 2s
    pathPrefix: /check
    failOpen: true
    statusOnError: "503"
    includeRequestHeadersInCheck: [authorization]
    headersToUpstreamOnAllow: [x-user]
- name: opa
  envoyExtAuthzGrpc:
    service: opa/opa.example.internal
    port: 9191
- name: short
  envoyExtAuthzGrpc: { service: authz, port: 9000 }
- name: unknown-host
  envoyExtAuthzGrpc: { service: nowhere.example.com, port: 1 }
- name: no-endpoints
  envoyExtAuthzGrpc: { service: idle.auth.svc.cluster.local, port: 9000 }
- name: invalid
  envoyExtAuthzHttp: { service: ext-authz.auth.svc.cluster.local, port: 8000, pathPrefix: "/check?x" }
"#;

    fn custom(name: &str, provider: &str) -> String {
        policy(
            "shop",
            name,
            &format!(
                "{{ action: CUSTOM, provider: {{ name: {provider} }}, rules: [{{ to: [{{ operation: {{ paths: [/admin] }} }}] }}] }}"
            ),
        )
    }

    #[test]
    fn custom_providers_resolve_to_the_endpoints_of_their_service() {
        let yaml = custom("a", "authz-http")
            + &custom("b", "opa")
            + &custom("c", "short")
            + r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: opa, namespace: opa }
spec:
  hosts: [opa.example.internal]
  ports: [{ number: 9191, name: grpc, protocol: GRPC }]
  resolution: STATIC
  workloadSelector: { labels: { app: opa } }
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: opa-1, namespace: opa }
spec: { address: 10.8.0.1, labels: { app: opa }, ports: { grpc: 9292 } }
"#;
        let mut m = with_mesh(model(&yaml), PROVIDERS);
        add_kube_service(&mut m, "auth", "ext-authz", "10.96.9.9", &[("http", 8000, Some(8080))]);
        add_slice(
            &mut m,
            "auth",
            "ext-authz",
            "ext-authz-1",
            &[("http", 8080)],
            &[("10.9.0.1", true, None), ("fd00::9", true, None), ("10.9.0.2", false, None)],
        );
        add_kube_service(&mut m, "istio-system", "authz", "10.96.9.10", &[("grpc", 9000, Some(9000))]);
        add_slice(&mut m, "istio-system", "authz", "authz-1", &[("grpc", 9000)], &[("10.9.1.1", true, None)]);
        let out = config(&m, "shop");
        let got: Vec<(&str, &[String])> =
            out.ext_authz.iter().map(|p| (p.name.as_str(), p.addresses.as_slice())).collect();
        assert_eq!(
            got,
            [
                ("authz-http", &["10.9.0.1:8080".to_owned(), "[fd00::9]:8080".to_owned()][..]),
                ("opa", &["10.8.0.1:9292".to_owned()][..]),
                ("short", &["10.9.1.1:9000".to_owned()][..]),
            ]
        );
        let http = &out.ext_authz[0];
        assert_eq!(http.service, "ext-authz.auth.svc.cluster.local");
        assert_eq!((http.fail_open, http.status_on_error), (true, 503));
        assert_eq!(http.timeout, Some(std::time::Duration::from_secs(2).into()));
        let Some(pb::ext_authz_provider::Kind::Http(settings)) = &http.kind else { panic!("{http:?}") };
        assert_eq!(
            (settings.path_prefix.as_str(), settings.headers_to_upstream_on_allow.as_slice()),
            ("/check", &["x-user".to_owned()][..])
        );
        assert_eq!(out.ext_authz[1].kind, Some(pb::ext_authz_provider::Kind::Grpc(pb::ExtAuthzGrpc {})));
        assert_eq!(out.ext_authz[1].service, "opa.example.internal");
        assert_eq!(
            out.authorization.iter().map(|p| p.provider.as_str()).collect::<Vec<_>>(),
            ["authz-http", "opa", "short"]
        );
    }

    #[test]
    fn a_provider_that_cannot_be_resolved_is_not_sent_and_the_policy_still_names_it() {
        let yaml = custom("missing", "not-in-mesh-config")
            + &custom("nowhere", "unknown-host")
            + &custom("p-idle", "no-endpoints")
            + &custom("q-invalid", "invalid");
        let mut m = with_mesh(model(&yaml), PROVIDERS);
        add_kube_service(&mut m, "auth", "idle", "10.96.9.11", &[("grpc", 9000, Some(9000))]);
        add_slice(&mut m, "auth", "idle", "idle-1", &[("grpc", 9000)], &[("10.9.2.1", false, None)]);
        add_kube_service(&mut m, "auth", "ext-authz", "10.96.9.9", &[("http", 8000, Some(8080))]);
        add_slice(&mut m, "auth", "ext-authz", "ext-authz-1", &[("http", 8080)], &[("10.9.0.1", true, None)]);
        let out = config(&m, "shop");
        assert!(out.ext_authz.is_empty(), "{:?}", out.ext_authz);
        let providers: Vec<(&str, pb::authz_policy::Action)> =
            out.authorization.iter().map(|p| (p.provider.as_str(), p.action())).collect();
        assert_eq!(
            providers,
            [
                ("not-in-mesh-config", pb::authz_policy::Action::Custom),
                ("unknown-host", pb::authz_policy::Action::Custom),
                ("no-endpoints", pb::authz_policy::Action::Custom),
                ("invalid", pb::authz_policy::Action::Custom),
            ],
            "kept, so the proxy denies what they match"
        );
        assert_eq!(out.authorization[0].rules[0].to[0].paths, ["/admin"]);

        // A CUSTOM policy without a provider at all (only from an unchecked source) is a DENY.
        let yaml = policy(
            "shop",
            "anonymous",
            "{ action: CUSTOM, rules: [{ to: [{ operation: { paths: [/x] } }] }] }",
        );
        let out = config_for(&unchecked_model(&yaml), "shop", &[]);
        assert_eq!(only(&out).action(), pb::authz_policy::Action::Deny);
    }

    #[test]
    fn a_policy_deleted_since_scoping_is_left_out() {
        let m = model(&policy("shop", "kept", ALLOW_ALL));
        let mut scope = scope_of(&m, &ProxyIdentity { namespace: "shop".into(), ..Default::default() });
        scope.authorization.push("shop/deleted".into());
        assert_eq!(names(&crate::translate::translate(&m, &scope)), ["shop/kept"]);
    }
}
