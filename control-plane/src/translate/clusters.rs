//! DestinationRules → clusters: one cluster per service port, plus one per subset of the rule
//! that applies to the service, each with its load balancer and connection pool.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tracing::{debug, warn};
use trellis_api::mesh::MeshConfig;
use trellis_api::networking::{
    ClientTlsMode, ClientTlsSettings, ConnectionPoolSettings, DestinationRuleSpec, H2UpgradePolicy,
    HttpSettings, LoadBalancerSettings, OutlierDetection, SimpleLb, TcpKeepalive, TrafficPolicy,
};
use trellis_api::retry_budget::{BudgetOverrides, BudgetSetting};
use trellis_xds::config as pb;

use super::hosts;
use super::names::{cluster_name, resolve_host, service_port_name};
use super::objects::{self, Object};
use super::services::{Service, ServicePort};
use super::values::{duration, header_name};
use super::visibility::View;
use crate::model::Model;

type Rule<'a> = Object<'a, DestinationRuleSpec>;

/// The DestinationRules a scope sees, with their hosts resolved.
pub struct DestinationRules<'a> {
    rules: Vec<(Rule<'a>, String)>,
    /// Where Istio looks for a service's rule, in order: the proxy's namespace, the service's,
    /// the root namespace. Rules elsewhere do not apply.
    proxy_namespace: &'a str,
    root_namespace: &'a str,
}

impl<'a> DestinationRules<'a> {
    pub fn visible(model: &'a Model, view: &View<'a>) -> DestinationRules<'a> {
        let default = view.mesh.default_destination_rule_export_to();
        let rules = objects::destination_rules(model)
            .filter(|dr| view.sees_exported(&dr.spec.export_to, &default, dr.namespace))
            .filter(|dr| {
                // It applies only to the workloads it selects, and proxies sharing a scope
                // need not share labels.
                let selective = dr.spec.workload_selector.is_some();
                if selective {
                    debug!(resource = %dr, "workloadSelector: not applied");
                }
                !selective
            })
            .map(|dr| (dr, resolve_host(&dr.spec.host, dr.namespace)))
            .collect();
        DestinationRules { rules, proxy_namespace: view.namespace, root_namespace: view.root_namespace }
    }

    /// The rule for a service: the first namespace in Istio's order that has one; within it the
    /// most specific host, then the first by name.
    pub fn for_service(&self, service: &Service) -> Option<Rule<'a>> {
        [self.proxy_namespace, &service.namespace, self.root_namespace].into_iter().find_map(|ns| {
            self.rules
                .iter()
                .filter(|(dr, host)| dr.namespace == ns && hosts::matches(host, &service.hostname))
                .min_by_key(|(dr, host)| (hosts::specificity(host), dr.name))
                .map(|(dr, _)| *dr)
        })
    }
}

/// The clusters of one service port: `outbound|port||host` and one per subset of `rule`.
pub fn for_port(
    service: &Service,
    port: &ServicePort,
    rule: Option<Rule<'_>>,
    connect_timeout: Duration,
    mesh_budget: BudgetSetting,
    mesh: &MeshConfig,
) -> Vec<pb::Cluster> {
    let endpoints = service_port_name(&service.hostname, port.number);
    let retry_budget = retry_budget(mesh_budget, rule);
    let build = |name: String, subset: BTreeMap<String, String>, policy: Policy<'_>| pb::Cluster {
        name,
        service: endpoints.clone(),
        subset,
        port: 0,
        load_balancer: Some(load_balancer(policy.lb, rule)),
        connection_pool: Some(connection_pool(policy.pool, connect_timeout, rule)),
        upstream_protocol: upstream_protocol(port.protocol, policy.pool.and_then(|p| p.http.as_ref())).into(),
        tls: Some(client_tls(policy.tls, rule)),
        outlier_detection: policy.outlier.map(|od| outlier_detection(od, rule)),
        retry_budget,
        locality_lb: super::locality::setting(mesh, policy.lb),
    };
    let top = Policy::default().overlay(rule.and_then(|r| r.spec.traffic_policy.as_ref()), port.number);
    let mut clusters = vec![build(cluster_name(port.number, "", &service.hostname), BTreeMap::new(), top)];
    let Some(rule) = rule else { return clusters };
    let mut seen = BTreeSet::new();
    for (i, subset) in rule.spec.subsets.iter().enumerate() {
        if subset.name.is_empty() || subset.name.contains('|') || !seen.insert(&subset.name) {
            warn!(resource = %rule, field = %format!("spec.subsets[{i}].name"), name = %subset.name, "empty, duplicate or invalid subset name, skipped");
            continue;
        }
        let policy = top.overlay(subset.traffic_policy.as_ref(), port.number);
        let name = cluster_name(port.number, &subset.name, &service.hostname);
        clusters.push(build(name, subset.labels.clone(), policy));
    }
    clusters
}

/// The retry budget of a rule's clusters (Trellis's own, beyond Istio): the mesh's, with the
/// rule's `retry-budget.trellis.io/*` annotations over it. Validation refuses a rule with a bad
/// one; should one get here, it is left out with a warning.
fn retry_budget(mesh: BudgetSetting, rule: Option<Rule<'_>>) -> Option<pb::RetryBudget> {
    let setting = match rule {
        None => mesh,
        Some(rule) => {
            let (overrides, problems) = BudgetOverrides::from_annotations(rule.annotations);
            for (key, message) in problems {
                warn!(resource = %rule, field = %format!("metadata.annotations.{key}"), %message, "ignored");
            }
            overrides.apply(mesh)
        }
    };
    setting.effective().map(|b| pb::RetryBudget {
        retry_ratio: b.retry_ratio,
        min_retries_per_second: b.min_retries_per_second,
        ttl: Some(b.ttl.into()),
    })
}

/// The parts of a traffic policy the proxy implements.
#[derive(Clone, Copy, Default)]
struct Policy<'a> {
    lb: Option<&'a LoadBalancerSettings>,
    pool: Option<&'a ConnectionPoolSettings>,
    outlier: Option<&'a OutlierDetection>,
    tls: Option<&'a ClientTlsSettings>,
}

/// A DestinationRule's `tls`: unset is Istio's auto mTLS (mutual TLS to endpoints with a
/// sidecar); SIMPLE and MUTUAL originate TLS with the rule's files, which the proxy reads.
fn client_tls(tls: Option<&ClientTlsSettings>, rule: Option<Rule<'_>>) -> pb::ClientTls {
    use pb::client_tls::Mode;
    let Some(tls) = tls else { return pb::ClientTls::default() };
    let warn = |field: &str, message: &str| {
        if let Some(rule) = rule {
            warn!(resource = %rule, field = %format!("trafficPolicy.tls.{field}"), "{message}");
        }
    };
    let mode = match tls.mode {
        ClientTlsMode::Disable => Mode::Disable,
        ClientTlsMode::IstioMutual => Mode::IstioMutual,
        ClientTlsMode::Simple => Mode::Simple,
        ClientTlsMode::Mutual => Mode::Mutual,
    };
    if matches!(mode, Mode::Simple | Mode::Mutual) {
        if !tls.credential_name.is_empty() {
            warn(
                "credentialName",
                "not supported by Trellis sidecars yet (give the files instead): connections to this destination fail",
            );
        }
        if !tls.ca_crl.is_empty() {
            warn("caCrl", "not enforced yet: revoked server certificates are accepted");
        }
    }
    // The proxy matches mesh certificates by SPIFFE ID only; another kind of name could never
    // match, and would cost the proxy its whole config.
    let subject_alt_names = match mode {
        Mode::IstioMutual => tls
            .subject_alt_names
            .iter()
            .filter(|san| match trellis_identity::SpiffeId::parse(san) {
                Ok(_) => true,
                Err(e) => {
                    if let Some(rule) = rule {
                        warn!(resource = %rule, field = "trafficPolicy.tls.subjectAltNames", %e, "not a SPIFFE ID; left out (the service's accounts are checked instead when none is left)");
                    }
                    false
                }
            })
            .cloned()
            .collect(),
        Mode::Simple | Mode::Mutual => tls.subject_alt_names.clone(),
        _ => Vec::new(),
    };
    let originated = |value: &String| {
        if matches!(mode, Mode::Simple | Mode::Mutual) { value.clone() } else { String::new() }
    };
    pb::ClientTls {
        mode: mode.into(),
        subject_alt_names,
        ca_certificates: originated(&tls.ca_certificates),
        client_certificate: if mode == Mode::Mutual { tls.client_certificate.clone() } else { String::new() },
        private_key: if mode == Mode::Mutual { tls.private_key.clone() } else { String::new() },
        // ISTIO_MUTUAL sends `sni` too: an egress gateway picks its server by it.
        sni: if matches!(mode, Mode::Simple | Mode::Mutual | Mode::IstioMutual) {
            tls.sni.clone()
        } else {
            String::new()
        },
        insecure_skip_verify: tls.insecure_skip_verify.unwrap_or(false)
            && matches!(mode, Mode::Simple | Mode::Mutual),
    }
}

impl<'a> Policy<'a> {
    /// `policy` laid over `self`: each setting it has replaces ours, and its `portLevelSettings`
    /// entry for `port`, if any, replaces them all — Istio documents that port-level settings
    /// do not inherit.
    fn overlay(self, policy: Option<&'a TrafficPolicy>, port: u16) -> Policy<'a> {
        let Some(policy) = policy else { return self };
        let by_port = policy
            .port_level_settings
            .iter()
            .find(|p| p.port.as_ref().map(|s| s.number) == Some(port.into()));
        match by_port {
            Some(p) => Policy {
                lb: p.load_balancer.as_ref(),
                pool: p.connection_pool.as_ref(),
                outlier: p.outlier_detection.as_ref(),
                tls: p.tls.as_ref(),
            },
            None => Policy {
                lb: policy.load_balancer.as_ref().or(self.lb),
                pool: policy.connection_pool.as_ref().or(self.pool),
                outlier: policy.outlier_detection.as_ref().or(self.outlier),
                tls: policy.tls.as_ref().or(self.tls),
            },
        }
    }
}

/// A rule's `outlierDetection` with Istio's defaults made explicit: `consecutive5xxErrors` 5
/// when unset (0 turns it off), gateway errors only when set (or through the deprecated
/// `consecutiveErrors`, which Istio reads as gateway errors), local-origin failures 5 when
/// split and unset; the durations and percentages as given (the proxy applies Envoy's defaults
/// to what is left unset). Values validation refuses never get here; a duration that still does
/// not convert is left to the proxy's default, with a warning.
fn outlier_detection(od: &OutlierDetection, rule: Option<Rule<'_>>) -> pb::OutlierDetection {
    const DEFAULT_CONSECUTIVE: u32 = 5;
    let source = rule.map(|r| r.to_string()).unwrap_or_default();
    let field = "trafficPolicy.outlierDetection";
    let legacy = u32::try_from(od.consecutive_errors).unwrap_or(0);
    let percent = |v: i32| u32::try_from(v).unwrap_or(0).min(100);
    pb::OutlierDetection {
        consecutive_5xx_errors: match (od.consecutive_5xx_errors, legacy) {
            (Some(n), _) => n,
            // Istio: the deprecated field turns 5xx ejection off in favour of gateway errors.
            (None, 1..) => 0,
            (None, 0) => DEFAULT_CONSECUTIVE,
        },
        consecutive_gateway_errors: od.consecutive_gateway_errors.unwrap_or(legacy),
        split_external_local_origin_errors: od.split_external_local_origin_errors,
        consecutive_local_origin_failures: if od.split_external_local_origin_errors {
            od.consecutive_local_origin_failures.unwrap_or(DEFAULT_CONSECUTIVE)
        } else {
            0
        },
        interval: duration(od.interval.as_ref(), &source, &format!("{field}.interval")).map(Into::into),
        base_ejection_time: duration(
            od.base_ejection_time.as_ref(),
            &source,
            &format!("{field}.baseEjectionTime"),
        )
        .map(Into::into),
        max_ejection_time: None,
        max_ejection_percent: percent(od.max_ejection_percent),
        min_health_percent: percent(od.min_health_percent),
    }
}

fn load_balancer(lb: Option<&LoadBalancerSettings>, rule: Option<Rule<'_>>) -> pb::LoadBalancer {
    use pb::load_balancer::Policy as P;
    let simple = |policy: P| pb::LoadBalancer { policy: policy.into(), hash_key: None };
    // Istio's default since 1.14.
    let Some(lb) = lb else { return simple(P::LeastRequest) };
    if let Some(hash) = &lb.consistent_hash {
        use pb::hash_key::Kind;
        let source = rule.map(|r| r.to_string()).unwrap_or_default();
        let key = if let Some(header) = &hash.http_header_name {
            header_name(header, &source, "trafficPolicy.loadBalancer.consistentHash.httpHeaderName")
                .map(Kind::Header)
        } else if let Some(cookie) = &hash.http_cookie {
            Some(Kind::Cookie(cookie.name.clone()))
        } else if hash.use_source_ip == Some(true) {
            Some(Kind::SourceIp(true))
        } else {
            hash.http_query_parameter_name.clone().map(Kind::QueryParameter)
        };
        if key.is_none() {
            warn!(resource = %source, field = "trafficPolicy.loadBalancer.consistentHash", "no usable hash key");
        }
        let policy = if hash.maglev.is_some() { P::Maglev } else { P::RingHash };
        return pb::LoadBalancer {
            policy: policy.into(),
            hash_key: key.map(|k| pb::HashKey { kind: Some(k) }),
        };
    }
    simple(match lb.simple.unwrap_or_default() {
        SimpleLb::RoundRobin => P::RoundRobin,
        SimpleLb::Random => P::Random,
        SimpleLb::Unspecified | SimpleLb::LeastConn | SimpleLb::LeastRequest => P::LeastRequest,
        SimpleLb::Passthrough => {
            debug!(resource = ?rule, "PASSTHROUGH load balancing is not implemented; using LEAST_REQUEST");
            P::LeastRequest
        }
    })
}

fn connection_pool(
    pool: Option<&ConnectionPoolSettings>,
    mesh_connect_timeout: Duration,
    rule: Option<Rule<'_>>,
) -> pb::ConnectionPool {
    let source = rule.map(|r| r.to_string()).unwrap_or_default();
    let tcp = pool.and_then(|p| p.tcp.as_ref());
    let http = pool.and_then(|p| p.http.as_ref());
    let count = |n: Option<i32>| n.and_then(|n| u32::try_from(n).ok()).unwrap_or(0);
    let field = "trafficPolicy.connectionPool";
    let connect_timeout = duration(
        tcp.and_then(|t| t.connect_timeout.as_ref()),
        &source,
        &format!("{field}.tcp.connectTimeout"),
    )
    .unwrap_or(mesh_connect_timeout);
    let idle_timeout =
        duration(http.and_then(|h| h.idle_timeout.as_ref()), &source, &format!("{field}.http.idleTimeout"))
            .or_else(|| {
                let tcp_idle = tcp.and_then(|t| t.idle_timeout.as_ref());
                // Istio: a TCP idle timeout of 0s turns it off (the proxy reads zero so).
                if tcp_idle.and_then(|d| d.to_std().ok()).is_some_and(|d| d.is_zero()) {
                    return Some(Duration::ZERO);
                }
                duration(tcp_idle, &source, &format!("{field}.tcp.idleTimeout"))
            });
    pb::ConnectionPool {
        max_connections: count(tcp.map(|t| t.max_connections)),
        http1_max_pending_requests: count(http.map(|h| h.http1_max_pending_requests)),
        http2_max_requests: count(http.map(|h| h.http2_max_requests)),
        connect_timeout: Some(connect_timeout.into()),
        idle_timeout: idle_timeout.map(Into::into),
        max_requests_per_connection: count(http.map(|h| h.max_requests_per_connection)),
        max_retries: count(http.map(|h| h.max_retries)),
        tcp_keepalive: tcp.and_then(|t| t.tcp_keepalive.as_ref()).map(|k| tcp_keepalive(k, &source, field)),
        max_connection_duration: duration(
            tcp.and_then(|t| t.max_connection_duration.as_ref()),
            &source,
            &format!("{field}.tcp.maxConnectionDuration"),
        )
        .map(Into::into),
    }
}

/// Istio's keepalive in the kernel's units: whole seconds from 1 to 32767 (Envoy counts in
/// seconds too), at most 127 probes; a value outside is brought within, with a warning.
fn tcp_keepalive(k: &TcpKeepalive, source: &str, field: &str) -> pb::TcpKeepalive {
    const MAX_SECONDS: u64 = 32_767;
    let knob = |value: Option<&trellis_api::primitives::GoDuration>, name: &str| {
        let field = format!("{field}.tcp.tcpKeepalive.{name}");
        let d = duration(value, &source, &field)?;
        let seconds = d.as_secs().clamp(1, MAX_SECONDS);
        if seconds != d.as_secs() || d.subsec_nanos() != 0 {
            warn!(resource = %source, %field, value = ?d, used = seconds, "the kernel counts keepalive in whole seconds, 1 to 32767");
        }
        Some(Duration::from_secs(seconds).into())
    };
    let probes = if k.probes > 127 {
        warn!(resource = %source, field = %format!("{field}.tcp.tcpKeepalive.probes"), value = k.probes, used = 127, "the kernel allows at most 127 probes");
        127
    } else {
        k.probes
    };
    pb::TcpKeepalive {
        probes,
        time: knob(k.time.as_ref(), "time"),
        interval: knob(k.interval.as_ref(), "interval"),
    }
}

/// How the proxy speaks to the endpoints of a port: HTTP/2 for ports declared HTTP/2 or gRPC,
/// HTTP/1.1 for HTTP unless the rule upgrades it, the client's protocol for detected ports.
fn upstream_protocol(protocol: pb::Protocol, http: Option<&HttpSettings>) -> pb::UpstreamProtocol {
    let upgrade = http.is_some_and(|h| h.h2_upgrade_policy == H2UpgradePolicy::Upgrade);
    let client_protocol = http.is_some_and(|h| h.use_client_protocol);
    match protocol {
        pb::Protocol::Http2 | pb::Protocol::Grpc => pb::UpstreamProtocol::Http2PriorKnowledge,
        _ if client_protocol => pb::UpstreamProtocol::SameAsDownstream,
        pb::Protocol::Http | pb::Protocol::Auto if upgrade => pb::UpstreamProtocol::Http2PriorKnowledge,
        pb::Protocol::Http => pb::UpstreamProtocol::Http1,
        _ => pb::UpstreamProtocol::SameAsDownstream,
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use pb::load_balancer::Policy as Lb;

    const API: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: api, namespace: shop }
spec:
  hosts: [api.shop.internal]
  resolution: STATIC
  ports:
    - { number: 80, name: http, protocol: HTTP }
    - { number: 9090, name: grpc, protocol: GRPC }
    - { number: 8080, name: web }
  endpoints:
    - { address: 10.3.0.1, labels: { version: v1 } }
    - { address: 10.3.0.2, labels: { version: v2 } }
"#;

    fn lb(c: &pb::Cluster) -> (Lb, Option<pb::hash_key::Kind>) {
        let lb = c.load_balancer.clone().unwrap();
        (lb.policy(), lb.hash_key.and_then(|k| k.kind))
    }

    fn pool(c: &pb::Cluster) -> pb::ConnectionPool {
        c.connection_pool.unwrap()
    }

    fn secs(s: u64) -> Option<pbjson_types::Duration> {
        Some(std::time::Duration::from_secs(s).into())
    }

    #[test]
    fn without_a_rule_clusters_get_istios_defaults() {
        let config = config(&model(API), "shop");
        assert_eq!(
            cluster_names(&config),
            [
                "outbound|8080||api.shop.internal",
                "outbound|80||api.shop.internal",
                "outbound|9090||api.shop.internal"
            ],
            "sorted by name"
        );
        let http = cluster(&config, "outbound|80||api.shop.internal");
        assert_eq!(lb(http), (Lb::LeastRequest, None));
        assert_eq!(pool(http), pb::ConnectionPool { connect_timeout: secs(10), ..Default::default() });
        assert_eq!(http.upstream_protocol(), pb::UpstreamProtocol::Http1);
        let grpc = cluster(&config, "outbound|9090||api.shop.internal");
        assert_eq!(grpc.upstream_protocol(), pb::UpstreamProtocol::Http2PriorKnowledge);
        let detected = cluster(&config, "outbound|8080||api.shop.internal");
        assert_eq!(detected.upstream_protocol(), pb::UpstreamProtocol::SameAsDownstream);

        let config = super::super::test_support::config(&with_mesh(model(API), "connectTimeout: 2s"), "shop");
        assert_eq!(pool(cluster(&config, "outbound|80||api.shop.internal")).connect_timeout, secs(2));
    }

    #[test]
    fn tls_origination_settings_reach_the_proxy_and_mesh_modes_carry_no_files() {
        let dr = |tls: &str| {
            format!(
                "{API}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{ name: api, namespace: shop }}\nspec:\n  host: api.shop.internal\n  trafficPolicy:\n    tls: {tls}\n"
            )
        };
        let tls_of = |yaml: String| {
            cluster(&config(&model(&yaml), "shop"), "outbound|80||api.shop.internal").tls.clone().unwrap()
        };
        let mutual = tls_of(dr(
            "{ mode: MUTUAL, clientCertificate: /etc/certs/c.pem, privateKey: /etc/certs/k.pem, caCertificates: /etc/certs/ca.pem, sni: api.example.com, subjectAltNames: [api.example.com] }",
        ));
        assert_eq!(
            mutual,
            pb::ClientTls {
                mode: pb::client_tls::Mode::Mutual.into(),
                subject_alt_names: vec!["api.example.com".into()],
                ca_certificates: "/etc/certs/ca.pem".into(),
                client_certificate: "/etc/certs/c.pem".into(),
                private_key: "/etc/certs/k.pem".into(),
                sni: "api.example.com".into(),
                insecure_skip_verify: false,
            }
        );
        let simple = tls_of(dr("{ mode: SIMPLE, insecureSkipVerify: true }"));
        assert_eq!(simple.mode(), pb::client_tls::Mode::Simple);
        assert!(simple.insecure_skip_verify && simple.client_certificate.is_empty());
        let mesh = tls_of(dr(
            "{ mode: ISTIO_MUTUAL, sni: x.example.com, subjectAltNames: [\"spiffe://cluster.local/ns/shop/sa/api\"] }",
        ));
        assert_eq!(
            mesh,
            pb::ClientTls {
                mode: pb::client_tls::Mode::IstioMutual.into(),
                subject_alt_names: vec!["spiffe://cluster.local/ns/shop/sa/api".into()],
                sni: "x.example.com".into(),
                ..Default::default()
            }
        );
    }

    #[test]
    fn a_tcp_idle_timeout_of_zero_turns_it_off_and_reaches_the_proxy_as_zero() {
        let dr = |idle: &str| {
            format!(
                "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{ name: api, namespace: shop }}\n\
                 spec: {{ host: api.shop.internal, trafficPolicy: {{ connectionPool: {{ tcp: {{ idleTimeout: {idle} }} }} }} }}\n"
            )
        };
        let idle = |text: &str| {
            let config = config(&model(&format!("{API}---\n{}", dr(text))), "shop");
            pool(cluster(&config, "outbound|80||api.shop.internal")).idle_timeout
        };
        assert_eq!(idle("0s"), Some(pbjson_types::Duration { seconds: 0, nanos: 0 }));
        assert_eq!(idle("45s"), secs(45));
    }

    #[test]
    fn load_balancer_pool_and_port_level_overrides() {
        let dr = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: api, namespace: shop }
spec:
  host: api.shop.internal
  trafficPolicy:
    loadBalancer: { simple: ROUND_ROBIN }
    connectionPool:
      tcp:
        maxConnections: 100
        connectTimeout: 1s
        maxConnectionDuration: 1h
        tcpKeepalive: { time: 600s, interval: 75.5s, probes: 200 }
      http:
        http1MaxPendingRequests: 10
        http2MaxRequests: 200
        maxRequestsPerConnection: 5
        maxRetries: 3
        idleTimeout: 30s
        h2UpgradePolicy: UPGRADE
    portLevelSettings:
      - port: { number: 9090 }
        loadBalancer: { simple: RANDOM }
  subsets:
    - name: v1
      labels: { version: v1 }
    - name: v2
      labels: { version: v2 }
      trafficPolicy:
        loadBalancer:
          consistentHash: { httpHeaderName: X-User, maglev: { tableSize: 65537 } }
"#;
        let config = config(&model(&format!("{API}---\n{dr}")), "shop");
        let http = cluster(&config, "outbound|80||api.shop.internal");
        assert_eq!(lb(http), (Lb::RoundRobin, None));
        assert_eq!(
            pool(http),
            pb::ConnectionPool {
                max_connections: 100,
                http1_max_pending_requests: 10,
                http2_max_requests: 200,
                connect_timeout: secs(1),
                idle_timeout: secs(30),
                max_requests_per_connection: 5,
                max_retries: 3,
                // Whole seconds and at most 127 probes, as the kernel takes them.
                tcp_keepalive: Some(pb::TcpKeepalive { probes: 127, time: secs(600), interval: secs(75) }),
                max_connection_duration: secs(3600),
            }
        );
        assert_eq!(http.upstream_protocol(), pb::UpstreamProtocol::Http2PriorKnowledge, "h2UpgradePolicy");

        let by_port = cluster(&config, "outbound|9090||api.shop.internal");
        assert_eq!(lb(by_port), (Lb::Random, None));
        assert_eq!(
            pool(by_port),
            pb::ConnectionPool { connect_timeout: secs(10), ..Default::default() },
            "port-level settings do not inherit the rule's"
        );

        let v1 = cluster(&config, "outbound|80|v1|api.shop.internal");
        assert_eq!((v1.service.as_str(), v1.port), ("api.shop.internal:80", 0));
        assert_eq!(v1.subset, labels_of(&[("version", "v1")]));
        assert_eq!((lb(v1), pool(v1)), (lb(http), pool(http)), "a subset without a policy takes the rule's");

        let v2 = cluster(&config, "outbound|80|v2|api.shop.internal");
        assert_eq!(lb(v2), (Lb::Maglev, Some(pb::hash_key::Kind::Header("x-user".into()))));
        assert_eq!(pool(v2), pool(http), "the subset overrides the load balancer only");
        let v2_grpc = cluster(&config, "outbound|9090|v2|api.shop.internal");
        assert_eq!(lb(v2_grpc).0, Lb::Maglev, "the subset's policy is laid over the port's");
    }

    #[test]
    fn outlier_detection_gets_istios_defaults_and_port_level_settings_replace_it() {
        let dr = |policy: &str| {
            format!(
                "{API}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{ name: api, namespace: shop }}\nspec:\n  host: api.shop.internal\n  trafficPolicy: {policy}\n  subsets: [{{ name: v1, labels: {{ version: v1 }} }}]\n"
            )
        };
        let od = |yaml: String, name: &str| cluster(&config(&model(&yaml), "shop"), name).outlier_detection;
        let top = "outbound|80||api.shop.internal";
        let defaults = od(dr("{ outlierDetection: { baseEjectionTime: 200ms } }"), top).unwrap();
        assert_eq!(
            defaults,
            pb::OutlierDetection {
                consecutive_5xx_errors: 5,
                base_ejection_time: Some(std::time::Duration::from_millis(200).into()),
                ..Default::default()
            }
        );
        let full = od(
            dr("{ outlierDetection: { consecutive5xxErrors: 0, consecutiveGatewayErrors: 3, splitExternalLocalOriginErrors: true, interval: 50ms, maxEjectionPercent: 50, minHealthPercent: 30 } }"),
            top,
        )
        .unwrap();
        assert_eq!(
            (
                full.consecutive_5xx_errors,
                full.consecutive_gateway_errors,
                full.consecutive_local_origin_failures
            ),
            (0, 3, 5),
            "0 turns 5xx off; split defaults local-origin failures to 5"
        );
        assert_eq!((full.max_ejection_percent, full.min_health_percent), (50, 30));
        assert_eq!(full.interval, Some(std::time::Duration::from_millis(50).into()));
        let legacy = od(dr("{ outlierDetection: { consecutiveErrors: 7 } }"), top).unwrap();
        assert_eq!((legacy.consecutive_5xx_errors, legacy.consecutive_gateway_errors), (0, 7));
        // Subsets inherit; a port's settings replace the whole policy.
        let yaml = dr(
            "{ outlierDetection: { consecutive5xxErrors: 2 }, portLevelSettings: [{ port: { number: 9090 }, loadBalancer: { simple: RANDOM } }] }",
        );
        assert_eq!(od(yaml.clone(), "outbound|80|v1|api.shop.internal").unwrap().consecutive_5xx_errors, 2);
        assert_eq!(od(yaml, "outbound|9090||api.shop.internal"), None);
        assert_eq!(od(API.to_owned(), top), None);
    }

    #[test]
    fn retry_budgets_are_on_by_default_and_set_mesh_wide_or_per_rule() {
        let linkerds = |ratio: f64, min: u32, ttl: u64| pb::RetryBudget {
            retry_ratio: ratio,
            min_retries_per_second: min,
            ttl: secs(ttl),
        };
        let budget = |config: &pb::ProxyConfig, name: &str| cluster(config, name).retry_budget;
        let plain = config(&model(API), "shop");
        assert_eq!(budget(&plain, "outbound|80||api.shop.internal"), Some(linkerds(0.2, 10, 10)));

        let rule = |annotations: &str| {
            format!(
                "{API}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{ name: api, namespace: shop, annotations: {{ {annotations} }} }}
spec:
  host: api.shop.internal
  subsets: [{{ name: v1, labels: {{ version: v1 }} }}]
"
            )
        };
        let tuned = config(
            &model(&rule("retry-budget.trellis.io/retry-ratio: '0.5', retry-budget.trellis.io/ttl: 30s")),
            "shop",
        );
        for name in [
            "outbound|80||api.shop.internal",
            "outbound|80|v1|api.shop.internal",
            "outbound|9090||api.shop.internal",
        ] {
            assert_eq!(budget(&tuned, name), Some(linkerds(0.5, 10, 30)), "{name}: every port and subset");
        }
        let off = config(&model(&rule("retry-budget.trellis.io/enabled: 'false'")), "shop");
        assert_eq!(budget(&off, "outbound|80|v1|api.shop.internal"), None);

        // Mesh-wide: values, or off (and then a rule's value turns it back on for its host).
        let mesh =
            |yaml: &str, annotations: &str| config(&with_mesh(model(&rule(annotations)), yaml), "shop");
        let wide = mesh("retryBudget: { retryRatio: 0.1, minRetriesPerSecond: 1 }", "");
        assert_eq!(budget(&wide, "outbound|80||api.shop.internal"), Some(linkerds(0.1, 1, 10)));
        let mesh_off = mesh("retryBudget: { enabled: false, minRetriesPerSecond: 3 }", "");
        assert_eq!(budget(&mesh_off, "outbound|80||api.shop.internal"), None);
        let back_on = mesh(
            "retryBudget: { enabled: false, minRetriesPerSecond: 3 }",
            "retry-budget.trellis.io/retry-ratio: '1'",
        );
        assert_eq!(budget(&back_on, "outbound|80||api.shop.internal"), Some(linkerds(1.0, 3, 10)));
        // A bad mesh value is left out (trellisd warned at start-up).
        let bad = mesh("retryBudget: { retryRatio: 7000 }", "");
        assert_eq!(budget(&bad, "outbound|80||api.shop.internal"), Some(linkerds(0.2, 10, 10)));
    }

    #[test]
    fn consistent_hash_keys() {
        for (hash, want) in [
            (
                "{ httpCookie: { name: session, ttl: 0s } }",
                (Lb::RingHash, Some(pb::hash_key::Kind::Cookie("session".into()))),
            ),
            ("{ useSourceIp: true }", (Lb::RingHash, Some(pb::hash_key::Kind::SourceIp(true)))),
            (
                "{ httpQueryParameterName: user }",
                (Lb::RingHash, Some(pb::hash_key::Kind::QueryParameter("user".into()))),
            ),
        ] {
            let dr = format!(
                "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{ name: api, namespace: shop }}
spec:
  host: api.shop.internal
  trafficPolicy: {{ loadBalancer: {{ consistentHash: {hash} }} }}
"
            );
            let config = config(&model(&format!("{API}---\n{dr}")), "shop");
            assert_eq!(lb(cluster(&config, "outbound|80||api.shop.internal")), want, "{hash}");
        }
    }

    #[test]
    fn subsets_come_only_from_the_rule_that_applies_in_istios_namespace_order() {
        let rule = |ns: &str, host: &str, subset: &str| {
            format!(
                "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{ name: r-{subset}, namespace: {ns} }}
spec:
  host: \"{host}\"
  subsets: [{{ name: {subset}, labels: {{ version: {subset} }} }}]
---
"
            )
        };
        let yaml = [
            rule("istio-system", "*.svc.cluster.local", "root"),
            rule("shop", "reviews", "shop"),
            rule("web", REVIEWS, "web"),
            rule("third", REVIEWS, "third"),
            rule("shop", "ratings.other.svc.cluster.local", "elsewhere"),
        ]
        .concat();
        let m = bookinfo(&yaml);
        let subsets = |namespace: &str| -> Vec<String> {
            let config = config(&m, namespace);
            let prefix = "outbound|9080|";
            let suffix = format!("|{REVIEWS}");
            cluster_names(&config)
                .iter()
                .filter_map(|n| n.strip_prefix(prefix)?.strip_suffix(suffix.as_str()).map(str::to_owned))
                .filter(|subset| !subset.is_empty())
                .collect()
        };
        assert_eq!(subsets("web"), ["web"], "the proxy's namespace first");
        assert_eq!(subsets("shop"), ["shop"], "then the service's");
        assert_eq!(subsets("third"), ["third"]);
        assert_eq!(subsets("other"), ["shop"], "a third namespace's rule does not apply");
        let config = config(&m, "other");
        assert!(
            cluster_names(&config).contains(&"outbound|9080|root|ratings.shop.svc.cluster.local"),
            "the root namespace's rule applies last: {:?}",
            cluster_names(&config)
        );
    }
}
