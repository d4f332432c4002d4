//! Istio's semantics, case by case (the integration tests run them over real mTLS).

use std::net::IpAddr;

use http::HeaderMap;
use trellis_identity::SpiffeId;
use trellis_xds::config as pb;

use super::*;

fn policy(name: &str, action: Action, rules: Vec<pb::AuthzRule>) -> pb::AuthzPolicy {
    pb::AuthzPolicy {
        namespace: "shop".into(),
        name: name.into(),
        action: action.into(),
        rules,
        ..Default::default()
    }
}

fn rule(
    from: Vec<pb::AuthzSource>,
    to: Vec<pb::AuthzOperation>,
    when: Vec<pb::AuthzCondition>,
) -> pb::AuthzRule {
    pb::AuthzRule { index: 0, from, to, when }
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| (*v).to_owned()).collect()
}

fn principals(values: &[&str]) -> pb::AuthzSource {
    pb::AuthzSource { principals: strings(values), ..Default::default() }
}

fn paths(values: &[&str]) -> pb::AuthzOperation {
    pb::AuthzOperation { paths: strings(values), ..Default::default() }
}

fn when(key: &str, values: &[&str], not_values: &[&str]) -> pb::AuthzCondition {
    pb::AuthzCondition { key: key.into(), values: strings(values), not_values: strings(not_values) }
}

/// A request: from `peer` (an account of namespace `shop`, or none), `method path`.
struct Req {
    peer: Option<SpiffeId>,
    principal: Option<String>,
    method: &'static str,
    path: &'static str,
    host: &'static str,
    headers: HeaderMap,
    port: u16,
    source: IpAddr,
    auth: Option<RequestAuth>,
    tcp: bool,
}

fn req(peer: Option<&str>, method: &'static str, path: &'static str) -> Req {
    let peer = peer.map(|sa| SpiffeId::new("cluster.local", "shop", sa).unwrap());
    Req {
        principal: peer
            .as_ref()
            .map(|p| format!("{}/ns/{}/sa/{}", p.trust_domain, p.namespace, p.service_account)),
        peer,
        method,
        path,
        host: "catalog.shop.svc.cluster.local:8080",
        headers: HeaderMap::new(),
        port: 8080,
        source: "10.1.2.3".parse().unwrap(),
        auth: None,
        tcp: false,
    }
}

impl Req {
    fn attrs(&self) -> Attributes<'_> {
        Attributes {
            peer: self.peer.as_ref(),
            peer_principal: self.principal.as_deref(),
            source_ip: self.source,
            destination_ip: "10.9.9.9".parse().unwrap(),
            destination_port: self.port,
            sni: None,
            http: (!self.tcp).then_some(HttpAttributes {
                method: self.method,
                host: self.host,
                path: self.path,
                headers: &self.headers,
                auth: self.auth.as_ref(),
            }),
        }
    }
}

fn decide(policies: &[pb::AuthzPolicy], r: &Req) -> Decision {
    Authorization::compile(policies).unwrap().decide(&r.attrs())
}

const FRONTEND: &str = "cluster.local/ns/shop/sa/frontend";

#[test]
fn no_policy_allows_and_any_allow_policy_makes_the_workload_default_deny() {
    assert_eq!(decide(&[], &req(None, "GET", "/")), Decision::allow(DecidedBy::NoPolicy));
    let only_frontend =
        policy("only-frontend", Action::Allow, vec![rule(vec![principals(&[FRONTEND])], vec![], vec![])]);
    let p = [only_frontend];
    assert!(decide(&p, &req(Some("frontend"), "GET", "/")).allowed);
    let denied = decide(&p, &req(Some("orders"), "GET", "/"));
    assert_eq!(denied, Decision::deny(DecidedBy::NoAllowMatched));
    assert_eq!(denied.to_string(), "denied: no ALLOW policy matched");
    assert!(!decide(&p, &req(None, "GET", "/")).allowed, "no peer identity, no principal");
}

#[test]
fn empty_spec_denies_all_and_one_empty_rule_allows_all() {
    let deny_all = policy("deny-all", Action::Allow, vec![]);
    assert_eq!(
        decide(&[deny_all], &req(Some("frontend"), "GET", "/")),
        Decision::deny(DecidedBy::NoAllowMatched)
    );
    let allow_all = policy("allow-all", Action::Allow, vec![rule(vec![], vec![], vec![])]);
    assert!(decide(&[allow_all], &req(None, "GET", "/x")).allowed);
}

#[test]
fn deny_wins_over_allow_and_names_its_policy_and_rule() {
    let mut deny = policy(
        "no-admin",
        Action::Deny,
        vec![
            rule(vec![], vec![paths(&["/nothing"])], vec![]),
            rule(vec![], vec![paths(&["/admin*"])], vec![]),
        ],
    );
    deny.rules[1].index = 1;
    let allow = policy("all", Action::Allow, vec![rule(vec![], vec![], vec![])]);
    let d = decide(&[deny, allow], &req(Some("frontend"), "GET", "/admin/users"));
    assert_eq!(d.to_string(), "denied by shop/no-admin rule 1");
    assert_eq!((d.policy(), d.rule().as_str()), ("shop/no-admin", "1"));
}

#[test]
fn not_fields_and_their_absent_attributes() {
    let not_frontend = policy(
        "not-frontend",
        Action::Deny,
        vec![rule(
            vec![pb::AuthzSource { not_principals: strings(&[FRONTEND]), ..Default::default() }],
            vec![],
            vec![],
        )],
    );
    assert!(decide(std::slice::from_ref(&not_frontend), &req(Some("frontend"), "GET", "/")).allowed);
    assert!(!decide(std::slice::from_ref(&not_frontend), &req(Some("orders"), "GET", "/")).allowed);
    assert!(!decide(&[not_frontend], &req(None, "GET", "/")).allowed, "no principal is not frontend's");
    let not_get = policy(
        "not-get",
        Action::Deny,
        vec![rule(
            vec![],
            vec![pb::AuthzOperation { not_methods: strings(&["GET"]), ..Default::default() }],
            vec![],
        )],
    );
    assert!(decide(std::slice::from_ref(&not_get), &req(None, "GET", "/")).allowed);
    assert!(!decide(&[not_get], &req(None, "POST", "/")).allowed);
}

#[test]
fn source_fields() {
    let allow =
        |source: pb::AuthzSource| policy("p", Action::Allow, vec![rule(vec![source], vec![], vec![])]);
    let ok = |source: pb::AuthzSource, r: &Req| decide(&[allow(source)], r).allowed;
    let frontend = req(Some("frontend"), "GET", "/");
    assert!(ok(pb::AuthzSource { namespaces: strings(&["shop"]), ..Default::default() }, &frontend));
    assert!(ok(pb::AuthzSource { namespaces: strings(&["sh*"]), ..Default::default() }, &frontend));
    assert!(!ok(pb::AuthzSource { namespaces: strings(&["other"]), ..Default::default() }, &frontend));
    assert!(ok(
        pb::AuthzSource { service_accounts: strings(&["shop/frontend"]), ..Default::default() },
        &frontend
    ));
    assert!(!ok(
        pb::AuthzSource { service_accounts: strings(&["other/frontend"]), ..Default::default() },
        &frontend
    ));
    assert!(ok(
        pb::AuthzSource { trust_domains: strings(&["cluster.local"]), ..Default::default() },
        &frontend
    ));
    assert!(!ok(
        pb::AuthzSource { not_trust_domains: strings(&["*.local"]), ..Default::default() },
        &frontend
    ));
    assert!(ok(pb::AuthzSource { principals: strings(&["*"]), ..Default::default() }, &frontend));
    assert!(!ok(
        pb::AuthzSource { principals: strings(&["*"]), ..Default::default() },
        &req(None, "GET", "/")
    ));
    assert!(ok(pb::AuthzSource { principals: strings(&["*/sa/frontend"]), ..Default::default() }, &frontend));
    assert!(ok(pb::AuthzSource { ip_blocks: strings(&["10.1.0.0/16"]), ..Default::default() }, &frontend));
    assert!(!ok(pb::AuthzSource { not_ip_blocks: strings(&["10.1.2.3"]), ..Default::default() }, &frontend));
    assert!(ok(
        pb::AuthzSource { remote_ip_blocks: strings(&["10.0.0.0/8"]), ..Default::default() },
        &frontend
    ));
    let mut with_jwt = req(None, "GET", "/");
    with_jwt.auth =
        Some(RequestAuth { principal: "https://issuer.example/alice".into(), ..Default::default() });
    assert!(ok(
        pb::AuthzSource { request_principals: strings(&["https://issuer.example/*"]), ..Default::default() },
        &with_jwt
    ));
    assert!(!ok(pb::AuthzSource { request_principals: strings(&["*"]), ..Default::default() }, &frontend));
    // Fields of one source are ANDed.
    assert!(!ok(
        pb::AuthzSource {
            principals: strings(&[FRONTEND]),
            namespaces: strings(&["other"]),
            ..Default::default()
        },
        &frontend
    ));
    let bad = Authorization::compile(&[allow(pb::AuthzSource {
        ip_blocks: strings(&["10.0.0.0/99"]),
        ..Default::default()
    })])
    .unwrap_err();
    assert_eq!(bad.field, "authorization[0].rules[0]");
    assert!(
        bad.message.contains("from[0].source.ipBlocks") && bad.message.contains("10.0.0.0/99"),
        "{}",
        bad.message
    );
}

#[test]
fn operation_fields() {
    let allow = |op: pb::AuthzOperation| policy("p", Action::Allow, vec![rule(vec![], vec![op], vec![])]);
    let ok = |op: pb::AuthzOperation, r: &Req| decide(&[allow(op)], r).allowed;
    let get = req(None, "GET", "/api/v1/items");
    assert!(
        ok(
            pb::AuthzOperation { hosts: strings(&["CATALOG.shop.svc.cluster.local"]), ..Default::default() },
            &get
        ),
        "hosts ignore case and the port"
    );
    assert!(ok(pb::AuthzOperation { hosts: strings(&["*.svc.cluster.local"]), ..Default::default() }, &get));
    assert!(!ok(pb::AuthzOperation { not_hosts: strings(&["catalog*"]), ..Default::default() }, &get));
    assert!(ok(pb::AuthzOperation { ports: strings(&["8080"]), ..Default::default() }, &get));
    assert!(!ok(pb::AuthzOperation { ports: strings(&["9090"]), ..Default::default() }, &get));
    assert!(
        !ok(pb::AuthzOperation { methods: strings(&["get"]), ..Default::default() }, &get),
        "methods are case-sensitive"
    );
    assert!(ok(pb::AuthzOperation { paths: strings(&["/api/*"]), ..Default::default() }, &get));
    assert!(ok(pb::AuthzOperation { paths: strings(&["/api/{*}/items"]), ..Default::default() }, &get));
    assert!(ok(pb::AuthzOperation { paths: strings(&["/api/{**}"]), ..Default::default() }, &get));
    assert!(!ok(pb::AuthzOperation { not_paths: strings(&["/api/v1/items"]), ..Default::default() }, &get));
    // Values of one list are ORed; operations of one rule too.
    assert!(ok(pb::AuthzOperation { methods: strings(&["POST", "GET"]), ..Default::default() }, &get));
}

#[test]
fn conditions() {
    let allow = |c: pb::AuthzCondition| policy("p", Action::Allow, vec![rule(vec![], vec![], vec![c])]);
    let ok = |c: pb::AuthzCondition, r: &Req| decide(&[allow(c)], r).allowed;
    let mut r = req(Some("frontend"), "GET", "/");
    r.headers.insert("x-team", "payments".parse().unwrap());
    assert!(ok(when("request.headers[X-Team]", &["pay*"], &[]), &r));
    assert!(!ok(when("request.headers[x-team]", &[], &["payments"]), &r));
    assert!(
        ok(when("request.headers[x-missing]", &[], &["anything"]), &r),
        "an absent header is none of the values"
    );
    assert!(!ok(when("request.headers[x-missing]", &["*"], &[]), &r));
    assert!(ok(when("source.namespace", &["shop"], &[]), &r));
    assert!(ok(when("source.serviceAccount", &["shop/frontend"], &[]), &r));
    assert!(ok(when("source.principal", &[FRONTEND], &[]), &r));
    assert!(ok(when("source.trustDomain", &["cluster.local"], &[]), &r));
    assert!(ok(when("source.ip", &["10.1.2.0/24"], &[]), &r));
    assert!(ok(when("remote.ip", &["10.1.2.3"], &[]), &r));
    assert!(ok(when("destination.ip", &["10.9.0.0/16"], &[]), &r));
    assert!(ok(when("destination.port", &["8080"], &[]), &r));
    assert!(!ok(when("connection.sni", &["*"], &[]), &r));
    let mut claims = serde_json::Map::new();
    claims.insert("groups".into(), serde_json::json!(["admins", "dev"]));
    claims.insert("org".into(), serde_json::json!({"team": {"name": "payments"}}));
    r.auth = Some(RequestAuth {
        principal: "iss/sub".into(),
        audiences: vec!["catalog".into()],
        presenter: Some("web-app".into()),
        claims,
    });
    assert!(ok(when("request.auth.claims[groups]", &["admins"], &[]), &r));
    assert!(ok(when("request.auth.claims[org][team][name]", &["payments"], &[]), &r), "nested claims");
    assert!(!ok(when("request.auth.claims[org][team]", &["*"], &[]), &r), "an object is no string");
    assert!(ok(when("request.auth.audiences", &["catalog"], &[]), &r));
    assert!(ok(when("request.auth.presenter", &["web-app"], &[]), &r));
    assert!(ok(when("request.auth.principal", &["iss/sub"], &[]), &r));
    for (key, message) in [
        ("destination.namespace", "not a condition key"),
        ("request.headers[bad header]", "not a header name"),
        ("request.auth.claims[]", "claims are written"),
    ] {
        let err = Authorization::compile(&[allow(when(key, &["x"], &[]))]).unwrap_err();
        assert!(
            err.message.contains("when[0].key") && err.message.contains(message),
            "{key}: {}",
            err.message
        );
    }
    let err = Authorization::compile(&[allow(when("source.ip", &[], &[]))]).unwrap_err();
    assert!(err.message.contains("values or notValues"), "{}", err.message);
}

#[test]
fn http_only_fields_on_tcp_drop_allow_rules_and_widen_deny_rules() {
    let mut tcp = req(Some("frontend"), "", "");
    tcp.tcp = true;
    // ALLOW with a method: the rule cannot apply to TCP; the workload still has an ALLOW
    // policy, so TCP is denied.
    let allow_get = policy(
        "get-only",
        Action::Allow,
        vec![rule(
            vec![],
            vec![pb::AuthzOperation {
                methods: strings(&["GET"]),
                ports: strings(&["8080"]),
                ..Default::default()
            }],
            vec![],
        )],
    );
    assert_eq!(decide(std::slice::from_ref(&allow_get), &tcp), Decision::deny(DecidedBy::NoAllowMatched));
    assert!(decide(&[allow_get], &req(Some("frontend"), "GET", "/")).allowed, "HTTP is allowed");
    // DENY with a method: on TCP the method is removed, so the rule denies all TCP, and with a
    // port only that port's.
    let deny_get = policy(
        "no-get",
        Action::Deny,
        vec![rule(
            vec![],
            vec![pb::AuthzOperation { methods: strings(&["GET"]), ..Default::default() }],
            vec![],
        )],
    );
    assert!(!decide(&[deny_get], &tcp).allowed);
    let deny_get_9090 = policy(
        "no-get-9090",
        Action::Deny,
        vec![rule(
            vec![],
            vec![pb::AuthzOperation {
                methods: strings(&["GET"]),
                ports: strings(&["9090"]),
                ..Default::default()
            }],
            vec![],
        )],
    );
    assert!(decide(std::slice::from_ref(&deny_get_9090), &tcp).allowed);
    tcp.port = 9090;
    assert!(!decide(&[deny_get_9090], &tcp).allowed);
    // A TCP-only ALLOW rule works.
    let allow_port = policy(
        "port",
        Action::Allow,
        vec![rule(
            vec![principals(&[FRONTEND])],
            vec![pb::AuthzOperation { ports: strings(&["9090"]), ..Default::default() }],
            vec![],
        )],
    );
    assert!(decide(&[allow_port], &tcp).allowed);
}

#[test]
fn custom_audit_and_dry_run() {
    let mut custom = policy("ext", Action::Custom, vec![rule(vec![], vec![paths(&["/checked*"])], vec![])]);
    custom.provider = "opa".into();
    let audit = policy("watch", Action::Audit, vec![rule(vec![], vec![], vec![])]);
    let mut dry = policy("would-deny", Action::Deny, vec![rule(vec![], vec![], vec![])]);
    dry.dry_run = true;
    let authz = Authorization::compile(&[custom, audit, dry]).unwrap();
    let checked = req(None, "GET", "/checked/x");
    assert_eq!(
        authz.custom(&checked.attrs()),
        Some(CustomMatch { provider: "opa".into(), policy: "shop/ext".into(), rule: 0 })
    );
    assert_eq!(authz.custom(&req(None, "GET", "/other").attrs()), None);
    assert!(authz.decide(&checked.attrs()).allowed, "AUDIT and dry-run decide nothing");
    assert_eq!(authz.audit(&checked.attrs()), Some(DecidedBy::Rule { policy: "shop/watch".into(), rule: 0 }));
    assert_eq!(
        authz.dry_run(&checked.attrs()).map(|d| d.to_string()).as_deref(),
        Some("denied by shop/would-deny rule 0")
    );
    let mut no_provider = policy("ext", Action::Custom, vec![]);
    no_provider.provider.clear();
    assert_eq!(Authorization::compile(&[no_provider]).unwrap_err().field, "authorization[0].provider");
}

#[test]
fn the_index_finds_the_same_first_rule_as_a_scan() {
    // Many rules, principals and paths, some unindexable: the decision names the first
    // matching rule in policy order, as checking every rule in order would.
    let mut rules = Vec::new();
    for i in 0..200u32 {
        let mut r = match i % 4 {
            0 => rule(vec![principals(&[&format!("cluster.local/ns/shop/sa/sa{i}")])], vec![], vec![]),
            1 => rule(vec![], vec![paths(&[&format!("/p{i}/*")])], vec![]),
            2 => rule(vec![], vec![paths(&[&format!("/exact{i}")])], vec![]),
            _ => rule(
                vec![pb::AuthzSource { namespaces: strings(&[&format!("ns{i}")]), ..Default::default() }],
                vec![],
                vec![],
            ),
        };
        r.index = i;
        rules.push(r);
    }
    // A late catch-all for one path prefix, shadowed by an earlier exact rule.
    let mut late = rule(vec![], vec![paths(&["/p1*"])], vec![]);
    late.index = 999;
    rules.push(late);
    let p = [policy("many", Action::Allow, rules)];
    let by = |r: &Req| decide(&p, r).by;
    assert_eq!(by(&req(Some("sa40"), "GET", "/")), DecidedBy::Rule { policy: "shop/many".into(), rule: 40 });
    assert_eq!(by(&req(None, "GET", "/p13/x")), DecidedBy::Rule { policy: "shop/many".into(), rule: 13 });
    assert_eq!(by(&req(None, "GET", "/p1/x")), DecidedBy::Rule { policy: "shop/many".into(), rule: 1 });
    assert_eq!(by(&req(None, "GET", "/p1zzz")), DecidedBy::Rule { policy: "shop/many".into(), rule: 999 });
    assert_eq!(by(&req(None, "GET", "/exact14")), DecidedBy::Rule { policy: "shop/many".into(), rule: 14 });
    assert_eq!(by(&req(Some("sa41"), "GET", "/nothing")), DecidedBy::NoAllowMatched);
}
