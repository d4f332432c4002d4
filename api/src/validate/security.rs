//! Checks for `security.istio.io` resources.
//!
//! AuthorizationPolicy: Istio's errors (unknown `when` keys, bad addresses, ports and path
//! templates, `serviceAccounts` beside `principals`/`namespaces`, CUSTOM without a provider...),
//! warnings where Istio's handling of TCP traffic surprises (an ALLOW rule that mixes HTTP-only
//! fields with `ports` is dropped whole on TCP; a DENY rule's HTTP-only fields are ignored on TCP,
//! so it denies more), and warnings for what Istio accepts but Trellis cannot enforce, saying
//! what the control plane does instead. RequestAuthentication: Istio's checks of a JWT rule.

use std::collections::BTreeMap;

use crate::primitives::{
    check_dns1123_label, check_duration_ms, check_header_name, check_port, parse_ip_or_cidr,
};
use crate::security::*;

use super::{Report, labels};

/// Attribute keys AuthorizationPolicy `when` conditions may test (Istio's list). Keys ending in
/// `[` take a bracketed name, e.g. `request.headers[x-token]`.
const CONDITION_KEYS: &[&str] = &[
    "request.headers[",
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "source.serviceAccount",
    "source.trustDomain",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "request.auth.claims[",
    "destination.ip",
    "destination.port",
    "connection.sni",
];

/// Istio accepts these keys; Trellis's proxy has no such attributes.
const EXPERIMENTAL_KEYS: &str = "experimental.envoy.filters.";

/// What the control plane does with a rule Trellis cannot enforce.
const UNUSABLE_RULE: &str = "trellisd leaves this rule out of an ALLOW policy and makes a DENY, AUDIT or CUSTOM policy match every request instead (fail closed)";

pub(super) fn peer_authentication(r: &mut Report, spec: &PeerAuthenticationSpec) {
    if let Some(sel) = &spec.selector {
        labels(r, "spec.selector.matchLabels", &sel.match_labels);
    }
    let has_selector = spec.selector.as_ref().is_some_and(|s| !s.match_labels.is_empty());
    if spec.port_level_mtls.written && spec.port_level_mtls.is_empty() {
        // Istio's schema: at least one port when the field is given.
        r.error("spec.portLevelMtls", "empty; list at least one port, or leave the field out");
    } else if !spec.port_level_mtls.is_empty() && !has_selector {
        r.error("spec.portLevelMtls", "port-level mTLS needs a workload selector");
    }
    for port in spec.port_level_mtls.keys() {
        r.check(format!("spec.portLevelMtls.{port}"), check_port(*port));
    }
}

/// `selector`, `targetRef` and `targetRefs`, as AuthorizationPolicy and RequestAuthentication
/// share them.
fn attachment(
    r: &mut Report,
    selector: Option<&crate::networking::MatchLabelsSelector>,
    target_ref: Option<&PolicyTargetReference>,
    target_refs: &[PolicyTargetReference],
) {
    let targeted = target_ref.is_some() || !target_refs.is_empty();
    if selector.is_some() && targeted {
        r.error("spec", "selector cannot be combined with targetRef or targetRefs");
    }
    if target_ref.is_some() && !target_refs.is_empty() {
        r.error("spec", "targetRef and targetRefs cannot both be set");
    }
    if let Some(sel) = selector {
        labels(r, "spec.selector.matchLabels", &sel.match_labels);
    }
    for (i, target) in target_ref.into_iter().chain(target_refs).enumerate() {
        let path =
            if target_ref.is_some() { "spec.targetRef".to_owned() } else { format!("spec.targetRefs[{i}]") };
        if target.kind.is_empty() {
            r.error(format!("{path}.kind"), "required");
        }
        if target.name.is_empty() {
            r.error(format!("{path}.name"), "required");
        }
    }
    if targeted {
        let field = if target_ref.is_some() { "spec.targetRef" } else { "spec.targetRefs" };
        r.warn(
            field,
            "a policy attached with targetRef applies to gateways and waypoints: sidecars, and so Trellis, ignore it",
        );
    }
}

pub(super) fn authorization_policy(
    r: &mut Report,
    spec: &AuthorizationPolicySpec,
    annotations: Option<&BTreeMap<String, String>>,
) {
    attachment(r, spec.selector.as_ref(), spec.target_ref.as_ref(), &spec.target_refs);
    match (spec.action, &spec.provider) {
        (AuthorizationAction::Custom, None) => {
            r.error("spec.provider.name", "required when action is CUSTOM")
        }
        (AuthorizationAction::Custom, Some(p)) if p.name.is_empty() => {
            r.error("spec.provider.name", "required when action is CUSTOM")
        }
        (AuthorizationAction::Custom, Some(_)) => {}
        (action, Some(_)) => r.error(
            "spec.provider",
            format!("only allowed when action is CUSTOM, found {}", action_name(action)),
        ),
        (_, None) => {}
    }
    dry_run_annotation(r, spec.action, annotations);
    if spec.action == AuthorizationAction::Deny && spec.rules.is_empty() {
        r.warn("spec.rules", "a DENY policy without rules matches no request and denies nothing");
    }
    if spec.action == AuthorizationAction::Custom && spec.rules.is_empty() {
        r.warn(
            "spec.rules",
            "a CUSTOM policy without rules matches no request; add an empty rule {} to check every request",
        );
    }
    for (i, rule) in spec.rules.iter().enumerate() {
        let path = format!("spec.rules[{i}]");
        authorization_rule(r, &path, rule);
        if spec.action == AuthorizationAction::Custom {
            custom_rule(r, &path, rule);
        }
        tcp_pitfalls(r, spec.action, &path, rule);
    }
}

/// Istio: only ALLOW and DENY policies can be dry-run, and the value is a boolean.
fn dry_run_annotation(
    r: &mut Report,
    action: AuthorizationAction,
    annotations: Option<&BTreeMap<String, String>>,
) {
    let Some(value) = dry_run(annotations) else { return };
    let field = format!("metadata.annotations.{DRY_RUN_ANNOTATION}");
    if !matches!(action, AuthorizationAction::Allow | AuthorizationAction::Deny) {
        r.error(
            field,
            format!("only ALLOW and DENY policies can be dry-run, this one is {}", action_name(action)),
        );
    } else if let Err(value) = value {
        r.error(field, format!("{value:?} is not a boolean (use \"true\" or \"false\")"));
    }
}

fn action_name(action: AuthorizationAction) -> &'static str {
    match action {
        AuthorizationAction::Allow => "ALLOW",
        AuthorizationAction::Deny => "DENY",
        AuthorizationAction::Audit => "AUDIT",
        AuthorizationAction::Custom => "CUSTOM",
    }
}

/// Istio's CUSTOM action cannot test identities: the external authorizer sees the request.
fn custom_rule(r: &mut Report, path: &str, rule: &Rule) {
    for (i, from) in rule.from.iter().enumerate() {
        let Some(s) = &from.source else { continue };
        for (name, values) in [
            ("namespaces", &s.namespaces),
            ("notNamespaces", &s.not_namespaces),
            ("serviceAccounts", &s.service_accounts),
            ("notServiceAccounts", &s.not_service_accounts),
            ("principals", &s.principals),
            ("notPrincipals", &s.not_principals),
            ("requestPrincipals", &s.request_principals),
            ("notRequestPrincipals", &s.not_request_principals),
        ] {
            if !values.is_empty() {
                r.error(format!("{path}.from[{i}].source.{name}"), "not supported with action CUSTOM");
            }
        }
    }
    for (i, cond) in rule.when.iter().enumerate() {
        let key = cond.key.as_str();
        if matches!(key, "source.namespace" | "source.serviceAccount" | "source.principal")
            || key.starts_with("request.auth.")
        {
            r.error(format!("{path}.when[{i}].key"), format!("{key:?} is not supported with action CUSTOM"));
        }
    }
}

/// The fields of a rule that only HTTP requests have, by path.
fn http_only_fields(path: &str, rule: &Rule) -> Vec<String> {
    let mut fields = Vec::new();
    for (i, from) in rule.from.iter().enumerate() {
        let Some(s) = &from.source else { continue };
        for (name, values) in [
            ("requestPrincipals", &s.request_principals),
            ("notRequestPrincipals", &s.not_request_principals),
        ] {
            if !values.is_empty() {
                fields.push(format!("{path}.from[{i}].source.{name}"));
            }
        }
    }
    for (i, to) in rule.to.iter().enumerate() {
        let Some(op) = &to.operation else { continue };
        for (name, values) in [
            ("hosts", &op.hosts),
            ("notHosts", &op.not_hosts),
            ("methods", &op.methods),
            ("notMethods", &op.not_methods),
            ("paths", &op.paths),
            ("notPaths", &op.not_paths),
        ] {
            if !values.is_empty() {
                fields.push(format!("{path}.to[{i}].operation.{name}"));
            }
        }
    }
    for (i, cond) in rule.when.iter().enumerate() {
        if cond.key.starts_with("request.") {
            fields.push(format!("{path}.when[{i}]"));
        }
    }
    fields
}

/// Istio's TCP pitfalls, where they bite: an ALLOW rule that tests an HTTP-only field cannot
/// match a TCP connection, so one that also lists `ports` does not allow those ports for TCP
/// (istio/istio#37920); a DENY rule loses its HTTP-only fields on TCP and denies more
/// (istio/istio#25832).
fn tcp_pitfalls(r: &mut Report, action: AuthorizationAction, path: &str, rule: &Rule) {
    let http = http_only_fields(path, rule);
    if http.is_empty() {
        return;
    }
    match action {
        AuthorizationAction::Allow => {
            let ports: Vec<String> = rule
                .to
                .iter()
                .enumerate()
                .filter_map(|(i, to)| {
                    let op = to.operation.as_ref()?;
                    let mut listed = Vec::new();
                    if !op.ports.is_empty() {
                        listed.push(format!("{path}.to[{i}].operation.ports"));
                    }
                    if !op.not_ports.is_empty() {
                        listed.push(format!("{path}.to[{i}].operation.notPorts"));
                    }
                    Some(listed)
                })
                .flatten()
                .collect();
            if ports.is_empty() {
                return;
            }
            for field in http {
                r.warn(
                    field,
                    format!(
                        "HTTP-only: on a TCP port this whole rule is dropped, so the ports in {} do not allow TCP connections (istio/istio#37920); put TCP ports in a rule of their own",
                        ports.join(", ")
                    ),
                );
            }
        }
        AuthorizationAction::Deny => {
            for field in http {
                r.warn(
                    field,
                    "HTTP-only: on a TCP port this field is ignored and the DENY rule matches without it, denying every TCP connection the rest of the rule matches (istio/istio#25832); add ports to keep the rule to HTTP ports",
                );
            }
        }
        AuthorizationAction::Audit | AuthorizationAction::Custom => {}
    }
}

pub(super) fn authorization_rule(r: &mut Report, path: &str, rule: &Rule) {
    for (i, from) in rule.from.iter().enumerate() {
        let p = format!("{path}.from[{i}].source");
        match &from.source {
            None => r.error(p, "required"),
            Some(source) if *source == Source::default() => r.error(p, "must set at least one field"),
            Some(source) => authorization_source(r, &p, source),
        }
    }
    for (i, to) in rule.to.iter().enumerate() {
        let p = format!("{path}.to[{i}].operation");
        match &to.operation {
            None => r.error(p, "required"),
            Some(op) if *op == Operation::default() => r.error(p, "must set at least one field"),
            Some(op) => authorization_operation(r, &p, op),
        }
    }
    for (i, cond) in rule.when.iter().enumerate() {
        condition(r, &format!("{path}.when[{i}]"), cond);
    }
}

fn authorization_source(r: &mut Report, path: &str, s: &Source) {
    for (name, values) in [
        ("principals", &s.principals),
        ("notPrincipals", &s.not_principals),
        ("requestPrincipals", &s.request_principals),
        ("notRequestPrincipals", &s.not_request_principals),
        ("trustDomains", &s.trust_domains),
        ("notTrustDomains", &s.not_trust_domains),
    ] {
        wildcard_values(r, &format!("{path}.{name}"), values);
    }
    for (name, values) in [("namespaces", &s.namespaces), ("notNamespaces", &s.not_namespaces)] {
        wildcard_values(r, &format!("{path}.{name}"), values);
        for (i, ns) in values.iter().enumerate() {
            if !ns.contains('*') {
                r.check(format!("{path}.{name}[{i}]"), check_dns1123_label(ns));
            }
        }
    }
    for (name, values) in
        [("serviceAccounts", &s.service_accounts), ("notServiceAccounts", &s.not_service_accounts)]
    {
        service_accounts(r, &format!("{path}.{name}"), values);
    }
    for (name, values) in [
        ("ipBlocks", &s.ip_blocks),
        ("notIpBlocks", &s.not_ip_blocks),
        ("remoteIpBlocks", &s.remote_ip_blocks),
        ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
    ] {
        for (i, block) in values.iter().enumerate() {
            r.check(format!("{path}.{name}[{i}]"), ip_or_cidr(block));
        }
    }
    let accounts = !s.service_accounts.is_empty() || !s.not_service_accounts.is_empty();
    let identities = !s.principals.is_empty()
        || !s.not_principals.is_empty()
        || !s.namespaces.is_empty()
        || !s.not_namespaces.is_empty();
    if accounts && identities {
        let field = if s.service_accounts.is_empty() { "notServiceAccounts" } else { "serviceAccounts" };
        r.error(
            format!("{path}.{field}"),
            "cannot be combined with principals or namespaces (or their not- forms)",
        );
    }
}

/// Istio's `serviceAccounts`: `<name>` (the policy's namespace) or `<namespace>/<name>`, no
/// wildcards, at most 16.
fn service_accounts(r: &mut Report, path: &str, values: &[String]) {
    if values.len() > 16 {
        r.error(path, format!("at most 16 values, found {}", values.len()));
    }
    for (i, v) in values.iter().enumerate() {
        r.check(format!("{path}[{i}]"), service_account(v));
    }
}

fn service_account(v: &str) -> Result<(), String> {
    let format = "expected <service account> or <namespace>/<service account>";
    if v.is_empty() {
        return Err("must not be empty".into());
    }
    if v.contains('*') {
        return Err(format!("{v:?}: wildcards are not allowed in service accounts"));
    }
    if v.len() > 320 {
        return Err(format!("{v:?}: longer than 320 characters"));
    }
    match v.split_once('/') {
        None => Ok(()),
        Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() && !sa.contains('/') => Ok(()),
        Some(_) => Err(format!("{v:?}: {format}")),
    }
}

/// An address or CIDR, written exactly (no surrounding blanks), as Istio parses them.
fn ip_or_cidr(v: &str) -> Result<(), String> {
    if v.trim() != v {
        return Err(format!("{v:?}: remove the surrounding blanks"));
    }
    parse_ip_or_cidr(v).map(drop)
}

/// A port as `ports` and `destination.port` take it: digits only, 1-65535.
fn port(v: &str) -> Result<(), String> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{v:?} is not a port number"));
    }
    match v.parse::<u32>() {
        Ok(n) => check_port(n).map(drop),
        Err(_) => Err(format!("port {v} is out of range 1-65535")),
    }
}

fn authorization_operation(r: &mut Report, path: &str, op: &Operation) {
    for (name, values) in [
        ("hosts", &op.hosts),
        ("notHosts", &op.not_hosts),
        ("methods", &op.methods),
        ("notMethods", &op.not_methods),
    ] {
        wildcard_values(r, &format!("{path}.{name}"), values);
    }
    for (name, values) in [("paths", &op.paths), ("notPaths", &op.not_paths)] {
        for (i, p) in values.iter().enumerate() {
            let field = format!("{path}.{name}[{i}]");
            if p.contains(['{', '}']) {
                path_template(r, &field, p);
            } else {
                wildcard_value(r, &field, p);
            }
        }
    }
    for (name, values) in [("ports", &op.ports), ("notPorts", &op.not_ports)] {
        for (i, v) in values.iter().enumerate() {
            r.check(format!("{path}.{name}[{i}]"), port(v));
        }
    }
}

/// Istio's path templates: `{*}` is one segment, `{**}` any number of them and no operator may
/// follow it; each operator fills a whole segment. Trellis's proxy also needs the template to
/// start with `/` and `{**}` to be its last segment.
fn path_template(r: &mut Report, field: &str, p: &str) {
    let mut after_any = false;
    for segment in p.trim_matches('/').split('/') {
        match segment {
            "{*}" | "{**}" if after_any => {
                r.error(field, format!("{p:?}: {{**}} must be the last operator of a path template"));
                return;
            }
            "{*}" => {}
            "{**}" => after_any = true,
            s if s.contains(['{', '}', '*']) => {
                r.error(
                    field,
                    format!("{p:?}: {{*}} and {{**}} must each fill a whole segment, like /a/{{*}}/b"),
                );
                return;
            }
            s if !s.chars().all(is_path_char) => {
                r.error(field, format!("{p:?}: segment {s:?} has characters a path template cannot match"));
                return;
            }
            _ => {}
        }
    }
    let ends_with_any = p.strip_prefix('/').is_some_and(|rest| rest.split('/').next_back() == Some("{**}"));
    if !p.starts_with('/') || (after_any && !ends_with_any) {
        r.warn(
            field,
            format!("{p:?}: Trellis matches path templates that start with '/' and end with {{**}} when they use it; {UNUSABLE_RULE}"),
        );
    }
}

/// RFC 3986 `pchar` (unreserved, percent, sub-delims but `*`, `:` and `@`).
fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~%!$&'()+,;=:@".contains(c)
}

/// Istio matches these values exactly, by prefix (`abc*`), by suffix (`*abc`) or as presence
/// (`*`); a `*` anywhere else would never match what the user meant.
fn wildcard_values(r: &mut Report, path: &str, values: &[String]) {
    for (i, v) in values.iter().enumerate() {
        wildcard_value(r, &format!("{path}[{i}]"), v);
    }
}

fn wildcard_value(r: &mut Report, field: &str, v: &str) {
    if v.is_empty() {
        r.error(field, "must not be empty");
        return;
    }
    let inner = v.strip_prefix('*').unwrap_or(v);
    let inner = inner.strip_suffix('*').unwrap_or(inner);
    if inner.contains('*') || (v.len() > 1 && v.starts_with('*') && v.ends_with('*')) {
        r.error(field, format!("{v:?}: '*' is only supported alone, as a prefix or as a suffix"));
    }
}

fn condition(r: &mut Report, path: &str, cond: &Condition) {
    let key = cond.key.as_str();
    let key_field = format!("{path}.key");
    match key {
        "" => r.error(key_field, "required"),
        "destination.namespace" => {
            r.error(key_field, "attribute destination.namespace is replaced by the metadata.namespace")
        }
        k if k.starts_with("destination.labels") => {
            r.error(key_field, format!("attribute {k} is replaced by the workload selector"))
        }
        "destination.name" | "destination.user" => {
            r.error(key_field, format!("deprecated attribute {key}: only supported in v1alpha1"))
        }
        k if k.starts_with(EXPERIMENTAL_KEYS) => {
            if bracketed_name(k).is_some() {
                r.warn(key_field, format!("{k:?}: Trellis's proxy has no Envoy filter metadata; {UNUSABLE_RULE}"));
            } else {
                r.error(key_field, format!("{k:?}: should have the form {EXPERIMENTAL_KEYS}<filter>[<name>]"));
            }
        }
        k if !condition_key_known(k) => r.error(
            key_field,
            format!(
                "unknown attribute {k:?}; use one of request.headers[NAME], source.ip, remote.ip, source.namespace, source.principal, source.serviceAccount, source.trustDomain, request.auth.principal, request.auth.audiences, request.auth.presenter, request.auth.claims[NAME], destination.ip, destination.port, connection.sni"
            ),
        ),
        k => {
            let inside = |prefix: &str| k.strip_prefix(prefix).and_then(|rest| rest.strip_suffix(']'));
            if let Some(name) = inside("request.headers[")
                && check_header_name(name, false).is_err()
            {
                r.warn(key_field, format!("{name:?} is not an HTTP header name Trellis can match; {UNUSABLE_RULE}"));
            } else if let Some(names) = inside("request.auth.claims[")
                && !claims_well_formed(names)
            {
                r.warn(
                    key_field,
                    format!("{k:?}: Trellis reads nested claims as request.auth.claims[a][b]; {UNUSABLE_RULE}"),
                );
            }
        }
    }
    if cond.values.is_empty() && cond.not_values.is_empty() {
        r.error(path, "at least one of values or notValues is required");
    }
    for (name, values) in [("values", &cond.values), ("notValues", &cond.not_values)] {
        if key == "source.serviceAccount" {
            service_accounts(r, &format!("{path}.{name}"), values);
            continue;
        }
        for (i, v) in values.iter().enumerate() {
            let field = format!("{path}.{name}[{i}]");
            if v.is_empty() {
                r.error(field, "must not be empty");
                continue;
            }
            match key {
                "source.ip" | "remote.ip" | "destination.ip" => {
                    r.check(field, ip_or_cidr(v));
                }
                "destination.port" => {
                    r.check(field, port(v));
                }
                _ => {}
            }
        }
    }
}

/// The name in `prefix[name]`, Istio's `a[b]` form.
fn bracketed_name(key: &str) -> Option<&str> {
    let open = key.find('[')?;
    let name = key.strip_suffix(']')?.get(open + 1..)?;
    (open > 0 && !name.is_empty()).then_some(name)
}

fn condition_key_known(key: &str) -> bool {
    CONDITION_KEYS.iter().any(|known| match known.strip_suffix('[') {
        // Istio's `a[b]` form: a non-empty name and the closing bracket.
        Some(_) => {
            key.strip_prefix(known).and_then(|rest| rest.strip_suffix(']')).is_some_and(|n| !n.is_empty())
        }
        None => key == *known,
    })
}

/// Claims nest as `request.auth.claims[a][b]`; each name non-empty.
fn claims_well_formed(names: &str) -> bool {
    names.split("][").all(|n| !n.is_empty() && !n.contains(['[', ']']))
}

// ---------------------------------------------------------------------------------------------
// RequestAuthentication

pub(super) fn request_authentication(r: &mut Report, spec: &RequestAuthenticationSpec) {
    attachment(r, spec.selector.as_ref(), spec.target_ref.as_ref(), &spec.target_refs);
    for (i, rule) in spec.jwt_rules.iter().enumerate() {
        jwt_rule(r, &format!("spec.jwtRules[{i}]"), rule);
    }
}

fn jwt_rule(r: &mut Report, path: &str, rule: &JwtRule) {
    let field = |name: &str| format!("{path}.{name}");
    if rule.issuer.is_empty() {
        if rule.jwks_uri.is_empty() {
            r.error(field("issuer"), "required (Istio also accepts a rule with only jwksUri)");
        } else {
            r.warn(
                field("issuer"),
                "Trellis matches a token to its rule by the issuer: trellisd leaves a rule without one out, so the tokens it would verify are not accepted",
            );
        }
    }
    for (i, audience) in rule.audiences.iter().enumerate() {
        if audience.is_empty() {
            r.error(format!("{}[{i}]", field("audiences")), "must not be empty");
        }
    }
    if !rule.jwks_uri.is_empty() {
        r.check(field("jwksUri"), check_jwks_uri(&rule.jwks_uri));
    }
    if !rule.jwks.is_empty() {
        r.check(field("jwks"), check_jwks(&rule.jwks));
        if !rule.jwks_uri.is_empty() {
            r.warn(field("jwksUri"), "ignored: jwks is set, and the inline keys are used");
        }
    } else if rule.jwks_uri.is_empty() && !rule.issuer.is_empty() {
        r.warn(
            path,
            "neither jwks nor jwksUri: Trellis does not look the keys up in the issuer's OpenID configuration, so tokens of this issuer are rejected; set jwksUri",
        );
    }
    for (i, header) in rule.from_headers.iter().enumerate() {
        let f = format!("{}[{i}].name", field("fromHeaders"));
        if header.name.is_empty() {
            r.error(f, "required");
        } else {
            r.check(f, check_header_name(&header.name, false));
        }
    }
    for (name, values) in [
        ("fromParams", &rule.from_params),
        ("fromCookies", &rule.from_cookies),
        ("spaceDelimitedClaims", &rule.space_delimited_claims),
    ] {
        for (i, v) in values.iter().enumerate() {
            if v.is_empty() {
                r.error(format!("{}[{i}]", field(name)), "must not be empty");
            } else if name == "fromCookies" && !is_cookie_name(v) {
                r.warn(
                    format!("{}[{i}]", field(name)),
                    format!("{v:?} is not a cookie name; trellisd leaves it out"),
                );
            }
        }
    }
    if !rule.output_payload_to_header.is_empty() {
        r.check(field("outputPayloadToHeader"), check_header_name(&rule.output_payload_to_header, false));
    }
    for (i, c) in rule.output_claim_to_headers.iter().enumerate() {
        let f = format!("{}[{i}]", field("outputClaimToHeaders"));
        if c.header.is_empty() {
            r.error(format!("{f}.header"), "required");
        } else if !c.header.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_') {
            r.error(
                format!("{f}.header"),
                format!("{:?} is not a valid header name (letters, digits, '-', '_')", c.header),
            );
        }
        if c.claim.is_empty() {
            r.error(format!("{f}.claim"), "required");
        } else if !is_claim_path(&c.claim) {
            r.warn(
                format!("{f}.claim"),
                format!("{:?}: nested claims are written a.b, without empty names; trellisd leaves this header out", c.claim),
            );
        }
    }
    if let Some(timeout) = &rule.timeout {
        r.check(field("timeout"), check_duration_ms(timeout).map(drop));
    }
    if let Some(presence) = rule.presence.as_deref().filter(|p| !matches!(*p, "" | "OPTIONAL")) {
        r.warn(
            field("presence"),
            format!("{presence}: not supported by Trellis, a request without a token passes without identity; require one with an AuthorizationPolicy (requestPrincipals: [\"*\"])"),
        );
    }
}

/// A cookie name the proxy can look up (no `=`, `;` or blanks).
pub fn is_cookie_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(|c: char| c == '=' || c == ';' || c.is_whitespace())
}

/// A claim, or a nested one as `a.b`: no empty name.
pub fn is_claim_path(claim: &str) -> bool {
    !claim.is_empty() && claim.split('.').all(|n| !n.is_empty())
}

/// Istio's `jwksUri`: an `http` or `https` URL with a host.
pub fn check_jwks_uri(uri: &str) -> Result<(), String> {
    let not_url = || format!("{uri:?} is not an http or https URL");
    if uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(not_url());
    }
    let (scheme, rest) = uri.split_once("://").ok_or_else(not_url)?;
    if !scheme.eq_ignore_ascii_case("https") && !scheme.eq_ignore_ascii_case("http") {
        return Err(format!("{uri:?}: URI scheme {scheme:?} is not supported; use https (or http)"));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(format!("{uri:?}: user information in the URL is not supported"));
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (ip, after) = v6.split_once(']').ok_or_else(not_url)?;
            ip.parse::<std::net::Ipv6Addr>()
                .map_err(|_| format!("{uri:?}: {ip:?} is not an IPv6 address"))?;
            (None, after.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(authority), None),
        },
    };
    if let Some(host) = host {
        if host.is_empty() {
            return Err(format!("{uri:?}: no host"));
        }
        crate::primitives::check_host_or_ip(&host.to_ascii_lowercase())
            .ok()
            .filter(|()| !host.contains('*'))
            .ok_or_else(|| format!("{uri:?}: {host:?} is not a host name or IP address"))?;
    }
    if let Some(port) = port {
        self::port(port).map_err(|e| format!("{uri:?}: {e}"))?;
    }
    Ok(())
}

/// A JSON Web Key Set (`{"keys": [...]}`) or a single key (`{"kty": ...}`), as Istio's parser
/// takes them.
fn check_jwks(text: &str) -> Result<(), String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not a JSON Web Key Set: {e}"))?;
    let keys = match (value.get("keys"), value.get("kty")) {
        (Some(serde_json::Value::Array(keys)), _) => keys.clone(),
        (None, Some(serde_json::Value::String(_))) => vec![value.clone()],
        _ => {
            return Err(
                "not a JSON Web Key Set: expected {\"keys\": [...]} or a single key with \"kty\"".into()
            );
        }
    };
    for (i, key) in keys.iter().enumerate() {
        if !key.get("kty").is_some_and(serde_json::Value::is_string) {
            return Err(format!("not a JSON Web Key Set: key {i} has no \"kty\""));
        }
    }
    Ok(())
}
