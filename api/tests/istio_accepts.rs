//! Configuration Istio accepts that `trellis validate` once refused: relative weights, object
//! names Kubernetes accepts, and files that mix Kubernetes kinds with Istio's.

use trellis_api::check::{UnknownFields, check_text};
use trellis_api::validate::Severity;

fn problems(text: &str) -> Vec<String> {
    check_text(text, UnknownFields::Reject)
        .problems
        .iter()
        .map(|p| {
            format!(
                "{} {}: {}",
                if p.severity == Severity::Error { "error" } else { "warning" },
                p.field,
                p.message
            )
        })
        .collect()
}

fn split(weights: &[i32]) -> String {
    let mut text = String::from(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n",
    );
    for (i, w) in weights.iter().enumerate() {
        text.push_str(&format!("    - {{destination: {{host: reviews, subset: v{i}}}, weight: {w}}}\n"));
    }
    text
}

#[test]
fn weights_are_relative_as_in_istio() {
    assert_eq!(problems(&split(&[33, 33, 33])), Vec::<String>::new());
    assert_eq!(problems(&split(&[1, 3])), Vec::<String>::new());
    assert_eq!(problems(&split(&[500, 500])), Vec::<String>::new());
    assert_eq!(
        problems(&split(&[0, 0])),
        [
            "error spec.http[0].route: weights sum to 0; with several destinations, at least one needs a weight"
        ]
    );
    assert_eq!(
        problems(&split(&[i32::MAX, i32::MAX, i32::MAX])),
        ["error spec.http[0].route: weights sum to 6442450941, at most 4294967295 is allowed"]
    );
}

#[test]
fn a_64_character_name_kubernetes_accepts_is_accepted() {
    let name = "a".repeat(64);
    let text = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}}}\nspec: {{hosts: [api.example.com], ports: [{{number: 443, name: https, protocol: TLS}}], resolution: DNS, endpoints: [{{address: 192.0.2.1}}]}}\n"
    );
    assert_eq!(problems(&text), Vec::<String>::new());
    let too_long = "a".repeat(254);
    let text = text.replace(&name, &too_long);
    assert!(problems(&text).iter().any(|p| p.starts_with("error metadata.name")), "{:?}", problems(&text));
}

#[test]
fn kubernetes_kinds_are_passed_over_and_ignored_istio_kinds_warned_about() {
    let text = "apiVersion: v1\nkind: Service\nmetadata: {name: reviews}\nspec: {ports: [{port: 9080}]}\n---\n\
apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: reviews}\n---\n\
apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: auth}\nspec: {url: oci://example/auth:1}\n---\n\
apiVersion: networking.istio.io/v1\nkind: VirtualServce\nmetadata: {name: typo}\n";
    let found = problems(text);
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(
        found[0],
        "warning kind: Trellis does not read Istio's WasmPlugin resources: this one is accepted but has no effect"
    );
    assert!(found[1].starts_with("error kind: unknown kind \"VirtualServce\""), "{found:?}");
}

#[test]
fn a_request_may_set_its_authority_in_header_operations() {
    let vs = |side: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews}}\nspec:\n  hosts: [reviews]\n  http:\n  - headers: {{{side}: {{set: {{\":authority\": reviews.shop}}}}}}\n    route: [{{destination: {{host: reviews}}}}]\n"
        )
    };
    assert_eq!(problems(&vs("request")), Vec::<String>::new());
    let response = problems(&vs("response"));
    assert!(
        response.len() == 1 && response[0].starts_with("error spec.http[0].headers.response.set.:authority"),
        "{response:?}"
    );
}

#[test]
fn telemetry_istio_accepts_is_accepted_with_warnings_for_what_trellis_ignores() {
    let telemetry = |spec: &str| {
        format!(
            "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: t, namespace: default}}\nspec:\n{spec}\n"
        )
    };
    let both = problems(&telemetry(
        "  selector: {matchLabels: {app: a}}\n  targetRef: {group: gateway.networking.k8s.io, kind: Gateway, name: g}",
    ));
    assert!(both.iter().all(|p| p.starts_with("warning")), "{both:?}");
    assert!(both.iter().any(|p| p.starts_with("warning spec.selector: ignored")), "{both:?}");
    let formatter = problems(&telemetry(
        "  tracing: [{providers: [{name: otel}], customTags: {key1: {formatter: {value: \"%REQ(key1)%\"}}}}]",
    ));
    assert_eq!(
        formatter,
        [
            "warning spec.tracing[0].customTags.key1.formatter: not supported, ignored: Trellis leaves formatter tags out of its spans"
        ]
    );
}

#[test]
fn a_tcp_idle_timeout_of_zero_turns_it_off_as_istio_documents() {
    let dr = |pool: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: api}}\n\
             spec: {{host: api, trafficPolicy: {{connectionPool: {pool}}}}}\n"
        )
    };
    assert_eq!(problems(&dr("{tcp: {idleTimeout: 0s}}")), Vec::<String>::new());
    // The HTTP pool's idle timeout has no such meaning: zero stays a mistake.
    assert_eq!(
        problems(&dr("{http: {idleTimeout: 0s}}")),
        ["error spec.trafficPolicy.connectionPool.http.idleTimeout: duration \"0s\" must be at least 1ms"]
    );
}

#[test]
fn a_partial_wildcard_service_entry_host_is_accepted_with_a_warning() {
    let text = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: partial}\nspec: {hosts: ['*example.com'], ports: [{number: 443, name: tls, protocol: TLS}], resolution: NONE}\n";
    assert_eq!(
        problems(text),
        [
            "warning spec.hosts[0]: partial wildcard host \"*example.com\": accepted as in Istio, which matches it as a plain suffix of the name (it covers \"myexample.com\" too); write \"*.example.com\" for subdomains only"
        ]
    );
    // Istio's own test case: a host that is nothing but a partial wildcard.
    let bare = "apiVersion: networking.istio.io/v1alpha3\nkind: ServiceEntry\nmetadata: {name: partial-wildcard}\nspec: {hosts: ['*x']}\n";
    let found = problems(bare);
    assert!(
        found.len() == 1 && found[0].starts_with("warning spec.hosts[0]: partial wildcard host \"*x\""),
        "{found:?}"
    );
    // Gateways and Sidecars keep Istio's rule there: no partial wildcards.
    let gateway = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec: {selector: {istio: ingressgateway}, servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*example.com']}]}\n";
    assert!(
        problems(gateway).iter().any(|p| p.starts_with("error spec.servers[0].hosts[0]")),
        "{:?}",
        problems(gateway)
    );
}

#[test]
fn abstract_unix_sockets_are_accepted_and_said_to_be_unrouted() {
    let we = "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: uds-abstract}\nspec: {address: 'unix://@foo'}\n";
    assert_eq!(
        problems(we),
        [
            "warning spec.address: not enforced: Trellis's proxy dials only IP endpoints; trellisd leaves the unix socket \"unix://@foo\" out of the service's endpoints"
        ]
    );
    let se = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: uds}\nspec: {hosts: [uds.local], ports: [{number: 80, name: http, protocol: HTTP}], resolution: STATIC, endpoints: [{address: 'unix://@agent'}, {address: 'unix:///run/app.sock'}]}\n";
    let found = problems(se);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found.iter().all(|p| p.starts_with("warning spec.endpoints[")), "{found:?}");
    let sidecar = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default}\nspec: {ingress: [{port: {number: 80, name: http, protocol: HTTP}, defaultEndpoint: 'unix://@app'}]}\n";
    assert!(!problems(sidecar).iter().any(|p| p.starts_with("error")), "{:?}", problems(sidecar));
}

#[test]
fn wildcard_destination_hosts_are_accepted_with_a_warning_that_they_are_not_routed() {
    let text = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews-eu}\nspec:\n  http:\n  - route: [{destination: {host: '*.eu.bookinfo.com'}}]\n    mirror: {host: '*mirror.example.com'}\n";
    let found = problems(text);
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(
        found[0],
        "warning spec.http[0].route[0].destination.host: not enforced: Trellis cannot route to the wildcard destination \"*.eu.bookinfo.com\" unless a ServiceEntry with STATIC endpoints declares this very host; otherwise trellisd sends this destination's traffic nowhere (503)"
    );
    assert!(found[1].starts_with("warning spec.http[0].mirror.host: not enforced"), "{found:?}");
}

#[test]
fn jwt_claim_matches_are_accepted_with_a_warning_that_trellis_does_not_route_on_them() {
    let vs = |headers: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: foo}}\nspec:\n  hosts: [foo.com]\n  gateways: [foo-gateway]\n  http:\n  - match: [{{uri: {{prefix: /}}, {headers}}}]\n    route: [{{destination: {{host: istiod.istio-system.svc.cluster.local, port: {{number: 15010}}}}}}]\n"
        )
    };
    assert_eq!(
        problems(&vs("headers: {'@request.auth.claims.foo': {exact: foo}}")),
        [
            "warning spec.http[0].match[0].headers.@request.auth.claims.foo: not enforced: Trellis does not route on JWT claims (\"@request.auth.claims.foo\") yet; trellisd drops this match, so requests that carry the claim fall through to later routes"
        ]
    );
    // Nested claims, either spelling, and the claim's absence.
    let nested = problems(&vs("withoutHeaders: {'@request.auth.claims.groups.admin': {}}"));
    assert!(nested.len() == 1 && nested[0].contains("not enforced"), "{nested:?}");
    let bracketed = problems(&vs("headers: {'@request.auth.claims[groups][admin]': {exact: 'yes'}}"));
    assert!(bracketed.len() == 1 && bracketed[0].contains("not enforced"), "{bracketed:?}");
    assert_eq!(
        trellis_api::networking::jwt_routing_claim("@Request.Auth.Claims[a.b][c]"),
        Some(vec!["a.b", "c"])
    );
    assert_eq!(trellis_api::networking::jwt_routing_claim("@request.auth.claims[]"), None);
    assert_eq!(trellis_api::networking::jwt_routing_claim("x-claims"), None);
    // As in Istio, only a VirtualService bound to gateways alone may route on claims.
    for gateways in ["gateways: [mesh, foo-gateway]\n  ", ""] {
        let mesh = vs("headers: {'@request.auth.claims.foo': {exact: foo}}")
            .replace("gateways: [foo-gateway]\n  ", gateways);
        assert_eq!(
            problems(&mesh),
            [
                "error spec.http[0].match[0].headers.@request.auth.claims.foo: JWT claim based routing (\"@request.auth.claims.foo\") is only supported for VirtualServices bound to gateways (not to the mesh)"
            ],
            "{mesh}"
        );
    }
    let nameless = problems(&vs("headers: {'@request.auth.claims.': {exact: x}}"));
    assert!(nameless.len() == 1 && nameless[0].contains("names no claim"), "{nameless:?}");
    // Other names must still be header names.
    let bad = problems(&vs("headers: {'@request.auth.principal': {exact: x}}"));
    assert!(bad.len() == 1 && bad[0].starts_with("error"), "{bad:?}");
}

#[test]
fn an_ipv6_address_ending_in_a_colon_needs_quotes_in_a_flow_list() {
    // By the YAML spec `001:db8::]` ends with a ':' that makes a one-pair mapping, where Go's
    // parser reads a string (a deliberate difference, see istio_validate_differences.txt).
    let se = |address: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: full}}\nspec:\n  hosts: [example.com]\n  addresses: [1.2.3.4, {address}]\n  ports: [{{number: 1234, name: foo, protocol: HTTP}}]\n  resolution: DNS\n  endpoints: [{{address: 192.0.2.1}}]\n"
        )
    };
    assert_eq!(problems(&se("\"001:db8::\"")), Vec::<String>::new());
    let unquoted = problems(&se("001:db8::"));
    assert!(unquoted.len() == 1 && unquoted[0].starts_with("error spec.addresses[1]"), "{unquoted:?}");
}

#[test]
fn partial_wildcard_virtual_service_and_destination_rule_hosts_are_accepted_with_a_warning() {
    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: partial}\nspec: {hosts: ['*foo.example.com'], http: [{route: [{destination: {host: foo.example.com}}]}]}\n";
    let found = problems(vs);
    assert!(
        found.len() == 1
            && found[0].starts_with("warning spec.hosts[0]: partial wildcard host \"*foo.example.com\""),
        "{found:?}"
    );
    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: partial}\nspec: {host: '*-api.example.com'}\n";
    let found = problems(dr);
    assert_eq!(
        found,
        [
            "warning spec.host: partial wildcard host \"*-api.example.com\": accepted as in Istio, which matches it as a plain suffix of the name (it covers \"my-api.example.com\" too); write \"*.api.example.com\" for subdomains only"
        ]
    );
    let bad = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: partial}\nspec: {host: 'foo*.example.com'}\n";
    assert!(problems(bad).iter().any(|p| p.starts_with("error spec.host")), "{:?}", problems(bad));
}

#[test]
fn sidecar_ingress_listeners_and_inbound_pools_are_said_to_be_unenforced() {
    let text = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default}\nspec:\n  ingress: [{port: {number: 9080, name: http, protocol: HTTP}, defaultEndpoint: '127.0.0.1:8080'}]\n  inboundConnectionPool: {tcp: {maxConnections: 10}}\n";
    assert_eq!(
        problems(text),
        [
            "warning spec.ingress[0]: not enforced: Trellis does not apply Sidecar ingress listeners yet (port, bind, defaultEndpoint, tls, connectionPool); inbound traffic reaches the port it was sent to",
            "warning spec.inboundConnectionPool: not enforced: Trellis does not limit inbound connections yet",
        ]
    );
}
