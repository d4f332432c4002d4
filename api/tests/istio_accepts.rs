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
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}}}\nspec: {{hosts: [api.example.com], ports: [{{number: 443, name: https, protocol: TLS}}], resolution: DNS}}\n"
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
