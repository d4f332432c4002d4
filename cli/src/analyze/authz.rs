//! AuthorizationPolicies that do not do what they say:
//!
//! - one whose selector picks no workload, or that is namespace-wide in a namespace without
//!   workloads (IST0127), checked where the input shows workloads;
//! - a rule with HTTP-only fields (hosts, methods, paths, request principals, `request.*`
//!   conditions) on a workload port that is TCP (TRL0001): a proxy cannot see those on a TCP
//!   connection, so on that port an ALLOW rule allows nothing and other rules apply without
//!   them (a DENY rule denies more), as in Istio and as the proxy enforces it. A port is TCP
//!   when its Service says so (`appProtocol`, or the port name's prefix: tcp, tls, https,
//!   mongo, mysql, redis); ports left to detection are not.

use trellis_api::security::{AuthorizationAction, AuthorizationPolicySpec, Rule};

use super::finding::{Finding, HTTP_RULE_ON_TCP_PORT, NO_MATCHING_WORKLOADS};
use super::model::{Labels, Mesh, Obj, ServicePort, Workload, show_labels};

pub fn check(mesh: &Mesh, out: &mut Vec<Finding>) {
    for policy in &mesh.authorization_policies {
        if policy.spec.has_target_ref() {
            continue; // applies to a Gateway or Service, not to selected workloads
        }
        let empty = Labels::new();
        let selector = policy.spec.selector.as_ref().map_or(&empty, |s| &s.match_labels);
        let selected = mesh.selected_workloads(&policy.namespace, selector);
        if selected.is_empty() {
            if mesh.knows_workloads() {
                out.push(selects_nothing(policy, selector));
            }
            continue;
        }
        for (i, rule) in policy.spec.rules.iter().enumerate() {
            let fields = http_only_fields(rule);
            if fields.is_empty() {
                continue;
            }
            let ports = rule_ports(rule);
            let tcp = tcp_ports(mesh, &selected, ports.as_deref());
            let Some((service, port, target)) = tcp.first() else { continue };
            let effect = match policy.spec.action {
                AuthorizationAction::Allow => "this rule never matches there",
                AuthorizationAction::Deny => "this DENY rule denies there without looking at them",
                AuthorizationAction::Audit | AuthorizationAction::Custom => {
                    "this rule applies there without looking at them"
                }
            };
            let mut finding = Finding::new(
                HTTP_RULE_ON_TCP_PORT,
                &policy.subject,
                format!(
                    "spec.rules[{i}] uses HTTP-only fields ({}) but applies to TCP port {target} (port {} {:?} of \
                     Service {}/{}): a TCP connection has none of them, so {effect}",
                    fields.join(", "),
                    port.port,
                    port.name,
                    service.namespace,
                    service.name
                ),
                "limit the rule to the HTTP ports with `to.operation.ports`, use only source, port and IP \
                 conditions for TCP, or name the Service port http-… if it carries HTTP",
            );
            for (service, _, _) in &tcp {
                finding = finding.with(&service.subject);
            }
            out.push(finding);
        }
    }
}

fn selects_nothing(policy: &Obj<AuthorizationPolicySpec>, selector: &Labels) -> Finding {
    let message = if selector.is_empty() {
        format!("namespace {} has no workloads for this namespace-wide policy to apply to", policy.namespace)
    } else {
        format!(
            "no workload in {} has the labels {}: the policy applies to nothing",
            policy.namespace,
            show_labels(selector)
        )
    };
    Finding::new(
        NO_MATCHING_WORKLOADS,
        &policy.subject,
        message,
        "correct the selector's labels (or the namespace) to those of the pods it is meant for",
    )
}

/// The HTTP-only fields a rule uses, as written.
fn http_only_fields(rule: &Rule) -> Vec<&'static str> {
    let mut fields = Vec::new();
    let mut note = |used: bool, name: &'static str| {
        if used && !fields.contains(&name) {
            fields.push(name);
        }
    };
    for source in rule.from.iter().filter_map(|f| f.source.as_ref()) {
        note(!source.request_principals.is_empty(), "requestPrincipals");
        note(!source.not_request_principals.is_empty(), "notRequestPrincipals");
    }
    for operation in rule.to.iter().filter_map(|t| t.operation.as_ref()) {
        note(!operation.hosts.is_empty(), "hosts");
        note(!operation.not_hosts.is_empty(), "notHosts");
        note(!operation.methods.is_empty(), "methods");
        note(!operation.not_methods.is_empty(), "notMethods");
        note(!operation.paths.is_empty(), "paths");
        note(!operation.not_paths.is_empty(), "notPaths");
    }
    for condition in &rule.when {
        note(condition.key.starts_with("request."), "request.* conditions");
    }
    fields
}

/// The workload ports a rule is limited to; `None` when some operation (or none) names no port.
fn rule_ports(rule: &Rule) -> Option<Vec<u32>> {
    let operations: Vec<_> = rule.to.iter().map(|t| t.operation.as_ref()).collect();
    if operations.is_empty() || operations.iter().any(|o| o.is_none_or(|o| o.ports.is_empty())) {
        return None;
    }
    Some(operations.iter().flatten().flat_map(|o| o.ports.iter().filter_map(|p| p.parse().ok())).collect())
}

/// The TCP ports of the selected workloads (per their Services) that `ports` includes: the
/// Service, its port and the workload's port number.
fn tcp_ports<'a>(
    mesh: &'a Mesh,
    workloads: &[&'a Obj<Workload>],
    ports: Option<&[u32]>,
) -> Vec<(&'a Obj<super::model::ServiceSpec>, &'a ServicePort, u32)> {
    let mut found = Vec::new();
    for workload in workloads {
        for service in mesh.services_of(&workload.namespace, &workload.labels) {
            for port in service.spec.ports.iter().filter(|p| is_tcp(p)) {
                let target = target_port(port, &workload.spec);
                let included = ports.is_none_or(|list| list.contains(&target));
                if included
                    && !found.iter().any(|(s, p, _): &(&Obj<_>, &ServicePort, u32)| {
                        std::ptr::eq(*s, service) && *p == port
                    })
                {
                    found.push((service, port, target));
                }
            }
        }
    }
    found
}

/// The number a Service port reaches on a workload: its targetPort, by number or by the
/// container port's name, else the port itself.
fn target_port(port: &ServicePort, workload: &Workload) -> u32 {
    if port.target_port.is_empty() {
        return port.port;
    }
    port.target_port.parse().ok().unwrap_or_else(|| {
        workload.ports.iter().find(|(_, name)| *name == port.target_port).map_or(port.port, |(n, _)| *n)
    })
}

/// Whether a Service port is declared as (opaque or TLS) TCP, the way Istio reads it.
pub fn is_tcp(port: &ServicePort) -> bool {
    let declared = if port.app_protocol.is_empty() {
        port.name.split('-').next().unwrap_or_default()
    } else if port.app_protocol == "kubernetes.io/wss" {
        "tls"
    } else {
        port.app_protocol.as_str()
    };
    matches!(declared.to_ascii_lowercase().as_str(), "tcp" | "tls" | "https" | "mongo" | "mysql" | "redis")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(name: &str, app_protocol: &str) -> ServicePort {
        ServicePort {
            port: 80,
            name: name.into(),
            app_protocol: app_protocol.into(),
            ..ServicePort::default()
        }
    }

    #[test]
    fn tcp_ports_as_istio_reads_them() {
        assert!(is_tcp(&port("tcp-db", "")));
        assert!(is_tcp(&port("mongo", "")));
        assert!(is_tcp(&port("https", "")));
        assert!(is_tcp(&port("web", "TCP")));
        assert!(is_tcp(&port("http", "kubernetes.io/wss")));
        assert!(!is_tcp(&port("tcp", "http")), "appProtocol wins over the name");
        assert!(!is_tcp(&port("", "")), "unnamed ports are detected, not declared");
        assert!(!is_tcp(&port("tcpdump", "")));
        assert!(!is_tcp(&port("grpc-web", "")));
    }

    #[test]
    fn target_ports_by_number_and_name() {
        let workload = Workload {
            kind: super::super::model::WorkloadKind::Pod,
            containers: Vec::new(),
            init_containers: Vec::new(),
            ports: vec![(5432, "pg".into())],
            host_network: false,
        };
        let mut p = port("tcp", "");
        assert_eq!(target_port(&p, &workload), 80);
        p.target_port = "8080".into();
        assert_eq!(target_port(&p, &workload), 8080);
        p.target_port = "pg".into();
        assert_eq!(target_port(&p, &workload), 5432);
        p.target_port = "nope".into();
        assert_eq!(target_port(&p, &workload), 80);
    }
}
