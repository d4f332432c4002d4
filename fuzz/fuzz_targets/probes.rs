//! `ISTIO_KUBE_APP_PROBERS`, the app's original probes the injector hands the proxy
//! (`trellis_proxy::app_health::AppProbers::parse`), checked whole when the proxy starts.
//!
//! Input: a mode byte. Even: the rest is the variable's text. Odd: the rest is a JSON list of
//! containers (Kubernetes `Container`s, with their probes and lifecycle hooks; those with
//! `restartPolicy: Always` are placed as the user's native sidecars), whose probes and hooks the
//! injector rewrites (`trellis_injector::probes::rewrite`), as it does for a pod it injects.
//!
//! Properties: nothing panics; every probe of a document read is found again at its path, either
//! to run or with the reason it cannot; and what the injector writes for probes the API server
//! would accept, the proxy reads and can run (a probe it could not run would fail that probe of
//! every injected pod).
#![no_main]

use k8s_openapi::api::core::v1::{Container, LifecycleHandler, PodSpec, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use libfuzzer_sys::fuzz_target;
use trellis_injector::probes::rewrite;
use trellis_proxy::app_health::AppProbers;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode % 2 == 0 {
        let Ok(text) = std::str::from_utf8(rest) else { return };
        if let Ok(probers) = AppProbers::parse(text) {
            let paths: std::collections::BTreeMap<String, serde_json::Value> =
                serde_json::from_str(text).unwrap_or_default();
            for path in paths.keys() {
                assert!(probers.get(path).is_some() != probers.unusable(path).is_some(), "{path}");
            }
        }
        return;
    }
    let Ok(mut containers) = serde_json::from_slice::<Vec<Container>>(rest) else { return };
    if !containers.iter().all(valid_for_the_api_server) {
        return;
    }
    // Native sidecars are init containers; the rest are the app's.
    let (sidecars, containers): (Vec<Container>, Vec<Container>) =
        containers.drain(..).partition(|c| c.restart_policy.as_deref() == Some("Always"));
    let mut spec = PodSpec { init_containers: Some(sidecars), containers, ..PodSpec::default() };
    let probers = rewrite(&mut spec, 15020);
    let containers: Vec<&Container> = spec.init_containers.iter().flatten().chain(&spec.containers).collect();
    let text = serde_json::to_string(&probers).expect("probers serialize");
    match AppProbers::parse(&text) {
        Err(e) => panic!("the proxy refuses what the injector wrote: {e}\n{text}"),
        Ok(probers) => {
            if containers.iter().any(|c| may_fail_alone(c)) {
                return;
            }
            if let Some((path, reason)) = probers.problems().next() {
                panic!("the proxy cannot run a probe the injector wrote: {path}: {reason}\n{text}");
            }
        }
    }
});

/// The little of the API server's validation of a container's probes that the proxy relies on:
/// a DNS-1123 label as the name, ports in range (named ports exist), one action per probe,
/// non-negative timeouts, header names that are HTTP tokens.
fn valid_for_the_api_server(c: &Container) -> bool {
    let label = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    };
    let named = |name: &str| c.ports.iter().flatten().any(|p| p.name.as_deref() == Some(name));
    let port = |p: &IntOrString| match p {
        IntOrString::Int(n) => (1..=65535).contains(n),
        IntOrString::String(s) => label(s) && s.len() <= 15 && named(s),
    };
    let probe_ok = |probe: &Option<Probe>| {
        let Some(p) = probe else { return true };
        let actions = [p.http_get.is_some(), p.tcp_socket.is_some(), p.grpc.is_some(), p.exec.is_some()];
        if actions.iter().filter(|a| **a).count() != 1 || p.timeout_seconds.is_some_and(|t| t < 0) {
            return false;
        }
        if let Some(get) = &p.http_get {
            let headers_ok = get.http_headers.iter().flatten().all(|h| {
                !h.name.is_empty()
                    && h.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
            });
            let scheme_ok = get.scheme.as_deref().is_none_or(|s| s == "HTTP" || s == "HTTPS");
            return port(&get.port) && headers_ok && scheme_ok;
        }
        if let Some(tcp) = &p.tcp_socket {
            return port(&tcp.port);
        }
        if let Some(grpc) = &p.grpc {
            return (1..=65535).contains(&grpc.port);
        }
        true
    };
    // Hooks: the API server checks an httpGet hook as a probe's; a tcpSocket hook it does not
    // check at all (see `may_fail_alone`).
    let hook_ok = |hook: Option<&LifecycleHandler>| {
        let Some(h) = hook else { return true };
        let headers_ok = |get: &k8s_openapi::api::core::v1::HTTPGetAction| {
            get.http_headers.iter().flatten().all(|h| {
                !h.name.is_empty()
                    && h.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
            })
        };
        match &h.http_get {
            Some(get) => {
                port(&get.port)
                    && headers_ok(get)
                    && get.scheme.as_deref().is_none_or(|s| s == "HTTP" || s == "HTTPS")
            }
            None => true,
        }
    };
    let lifecycle = c.lifecycle.as_ref();
    label(&c.name)
        && c.ports.iter().flatten().all(|p| (1..=65535).contains(&p.container_port))
        && probe_ok(&c.liveness_probe)
        && probe_ok(&c.readiness_probe)
        && probe_ok(&c.startup_probe)
        && hook_ok(lifecycle.and_then(|l| l.post_start.as_ref()))
        && hook_ok(lifecycle.and_then(|l| l.pre_stop.as_ref()))
}

/// Fields the API server accepts whatever they hold (any `host` of httpGet and tcpSocket, any
/// `path`, any header value, anything in a tcpSocket hook), for which the kubelet then fails only
/// that probe or hook: the proxy does the same (fuzz/README.md, finding 2), so a probe or hook
/// with such a field may be unusable, alone.
fn may_fail_alone(c: &Container) -> bool {
    use k8s_openapi::api::core::v1::{HTTPGetAction, TCPSocketAction};
    let uri_safe = |s: &str| s.bytes().all(|b| b.is_ascii_graphic() && !b"\"<>\\^`{|}".contains(&b));
    let tcp_host = |t: &TCPSocketAction| t.host.as_deref().is_some_and(|h| !h.is_empty());
    let get_fails = |get: &HTTPGetAction| {
        get.host.as_deref().is_some_and(|h| !h.is_empty())
            || get.path.as_deref().is_some_and(|p| !uri_safe(p))
            || get
                .http_headers
                .iter()
                .flatten()
                .any(|h| !h.value.bytes().all(|b| b == b' ' || b == b'\t' || b.is_ascii_graphic()))
    };
    let probes = [&c.liveness_probe, &c.readiness_probe, &c.startup_probe]
        .into_iter()
        .flatten()
        .any(|p| p.tcp_socket.as_ref().is_some_and(tcp_host) || p.http_get.as_ref().is_some_and(get_fails));
    let lifecycle = c.lifecycle.as_ref();
    let hooks = [lifecycle.and_then(|l| l.post_start.as_ref()), lifecycle.and_then(|l| l.pre_stop.as_ref())]
        .into_iter()
        .flatten()
        .any(|h| h.tcp_socket.is_some() || h.http_get.as_ref().is_some_and(get_fails));
    probes || hooks
}
