//! Checks for `security.istio.io` resources.

use crate::primitives::{check_dns1123_label, check_port, parse_ip_or_cidr, parse_port};
use crate::security::*;

use super::{Report, labels};

/// Attribute keys AuthorizationPolicy `when` conditions may test. Keys ending in `[` take a
/// bracketed name, e.g. `request.headers[x-token]`.
const CONDITION_KEYS: &[&str] = &[
    "request.headers[",
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "source.serviceAccount",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "request.auth.claims[",
    "destination.ip",
    "destination.port",
    "connection.sni",
    "experimental.envoy.filters.",
];

pub(super) fn peer_authentication(r: &mut Report, spec: &PeerAuthenticationSpec) {
    if let Some(sel) = &spec.selector {
        labels(r, "spec.selector.matchLabels", &sel.match_labels);
    }
    let has_selector = spec.selector.as_ref().is_some_and(|s| !s.match_labels.is_empty());
    if !spec.port_level_mtls.is_empty() && !has_selector {
        r.error("spec.portLevelMtls", "port-level mTLS needs a workload selector");
    }
    for port in spec.port_level_mtls.keys() {
        r.check(format!("spec.portLevelMtls.{port}"), check_port(*port));
    }
}

pub(super) fn authorization_policy(r: &mut Report, spec: &AuthorizationPolicySpec) {
    r.warn(
        "spec",
        "not enforced yet: Trellis reads AuthorizationPolicy but its proxies do not apply it, so it restricts no traffic",
    );
    if spec.selector.is_some() && (spec.target_ref.is_some() || !spec.target_refs.is_empty()) {
        r.error("spec", "selector cannot be combined with targetRef or targetRefs");
    }
    if spec.target_ref.is_some() && !spec.target_refs.is_empty() {
        r.error("spec", "targetRef and targetRefs cannot both be set");
    }
    if let Some(sel) = &spec.selector {
        labels(r, "spec.selector.matchLabels", &sel.match_labels);
    }
    for (i, target) in spec.target_ref.iter().chain(&spec.target_refs).enumerate() {
        let path = if spec.target_ref.is_some() {
            "spec.targetRef".to_owned()
        } else {
            format!("spec.targetRefs[{i}]")
        };
        if target.kind.is_empty() {
            r.error(format!("{path}.kind"), "required");
        }
        if target.name.is_empty() {
            r.error(format!("{path}.name"), "required");
        }
    }
    match (spec.action, &spec.provider) {
        (AuthorizationAction::Custom, None) => {
            r.error("spec.provider.name", "required when action is CUSTOM")
        }
        (AuthorizationAction::Custom, Some(p)) if p.name.is_empty() => {
            r.error("spec.provider.name", "required when action is CUSTOM")
        }
        (AuthorizationAction::Custom, Some(_)) => {}
        (_, Some(_)) => r.error("spec.provider", "only allowed when action is CUSTOM"),
        (_, None) => {}
    }
    if spec.action == AuthorizationAction::Deny && spec.rules.is_empty() {
        r.warn("spec.rules", "a DENY policy without rules matches no request and denies nothing");
    }
    for (i, rule) in spec.rules.iter().enumerate() {
        authorization_rule(r, &format!("spec.rules[{i}]"), rule);
    }
}

fn authorization_rule(r: &mut Report, path: &str, rule: &Rule) {
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
        ("serviceAccounts", &s.service_accounts),
        ("notServiceAccounts", &s.not_service_accounts),
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
    for (name, values) in [
        ("ipBlocks", &s.ip_blocks),
        ("notIpBlocks", &s.not_ip_blocks),
        ("remoteIpBlocks", &s.remote_ip_blocks),
        ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
    ] {
        for (i, block) in values.iter().enumerate() {
            r.check(format!("{path}.{name}[{i}]"), parse_ip_or_cidr(block));
        }
    }
    if (!s.service_accounts.is_empty() || !s.not_service_accounts.is_empty())
        && (!s.principals.is_empty() || !s.not_principals.is_empty())
    {
        r.error(path, "serviceAccounts cannot be combined with principals");
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
            if p.contains("{*}") || p.contains("{**}") {
                // Path templates: `/foo/{*}/bar`; each `{*}` or `{**}` must be a whole segment.
                if p.split('/').any(|seg| seg.contains('{') && seg != "{*}" && seg != "{**}") {
                    r.error(
                        field,
                        format!("{p:?}: path template operators must fill a whole segment, like /a/{{*}}/b"),
                    );
                }
            } else {
                wildcard_value(r, &field, p);
            }
        }
    }
    for (name, values) in [("ports", &op.ports), ("notPorts", &op.not_ports)] {
        for (i, port) in values.iter().enumerate() {
            r.check(format!("{path}.{name}[{i}]"), parse_port(port));
        }
    }
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
    if cond.key.is_empty() {
        r.error(format!("{path}.key"), "required");
    } else if !condition_key_known(&cond.key) {
        r.error(
            format!("{path}.key"),
            format!(
                "unknown attribute {:?}; use one of request.headers[NAME], source.ip, remote.ip, source.namespace, source.principal, request.auth.principal, request.auth.audiences, request.auth.presenter, request.auth.claims[NAME], destination.ip, destination.port, connection.sni",
                cond.key
            ),
        );
    }
    if cond.values.is_empty() && cond.not_values.is_empty() {
        r.error(path, "at least one of values or notValues is required");
    }
    let validate_each = |r: &mut Report, name: &str, values: &[String]| {
        for (i, v) in values.iter().enumerate() {
            let field = format!("{path}.{name}[{i}]");
            match cond.key.as_str() {
                "source.ip" | "remote.ip" | "destination.ip" => {
                    r.check(field, parse_ip_or_cidr(v));
                }
                "destination.port" => {
                    r.check(field, parse_port(v));
                }
                _ => {}
            }
        }
    };
    validate_each(r, "values", &cond.values);
    validate_each(r, "notValues", &cond.not_values);
}

fn condition_key_known(key: &str) -> bool {
    CONDITION_KEYS.iter().any(|known| match known.strip_suffix('[') {
        // A bracketed key needs a non-empty name and the closing bracket.
        Some(_) => key
            .strip_prefix(known)
            .and_then(|rest| rest.strip_suffix(']'))
            .is_some_and(|name| !name.is_empty() && !name.contains(['[', ']'])),
        None if known.ends_with('.') => key.starts_with(known) && key.len() > known.len(),
        None => key == *known,
    })
}
