//! Checks for `networking.istio.io` resources.

use std::collections::{BTreeMap, BTreeSet};

use crate::networking::*;
use crate::primitives::{
    GoDuration, check_dns1123_label, check_dns1123_subdomain, check_duration_ms, check_header_name,
    check_host_allowing_partial_wildcard, check_host_or_ip, check_label_key, check_label_value, check_port,
    check_re2_regex, check_unix_socket, check_wildcard_host, is_partial_wildcard, parse_go_duration,
    parse_ip, parse_ip_or_cidr,
};

use super::{Report, export_to, labels};

const HTTP_METHODS: &[&str] =
    &["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];

/// Port protocols Istio recognises (case-insensitive); empty means "detect".
const PROTOCOLS: &[&str] = &[
    "HTTP",
    "HTTPS",
    "GRPC",
    "GRPC-WEB",
    "HTTP2",
    "HTTP_PROXY",
    "MONGO",
    "MYSQL",
    "REDIS",
    "TCP",
    "TLS",
    "UDP",
];

const MAX_DIRECT_RESPONSE_BODY: usize = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// VirtualService

pub(super) fn virtual_service(r: &mut Report, spec: &VirtualServiceSpec) {
    let delegate = spec.hosts.is_empty();
    if delegate {
        // Without hosts a VirtualService can only be a delegate, reached from another one's route.
        if !spec.gateways.is_empty() {
            r.error("spec.gateways", "a delegate VirtualService (one without hosts) must not list gateways");
        }
        if !spec.tcp.is_empty() || !spec.tls.is_empty() {
            r.error("spec", "a delegate VirtualService (one without hosts) supports only http routes");
        }
    }
    let bound_to_mesh = spec.gateways.is_empty() || spec.gateways.iter().any(|g| g == "mesh");
    for (i, host) in spec.hosts.iter().enumerate() {
        let field = format!("spec.hosts[{i}]");
        if host == "*" && bound_to_mesh {
            r.error(field, "the wildcard host \"*\" is only allowed for VirtualServices bound to gateways, not to the mesh");
        } else {
            host_pattern(r, &field, host);
        }
    }
    duplicates(r, "spec.hosts", spec.hosts.iter(), "host");
    for (i, gw) in spec.gateways.iter().enumerate() {
        gateway_reference(r, &format!("spec.gateways[{i}]"), gw);
    }
    if spec.http.is_empty() && spec.tls.is_empty() && spec.tcp.is_empty() {
        r.error("spec", "at least one of http, tls or tcp routes is required");
    }
    for (i, route) in spec.http.iter().enumerate() {
        http_route(r, &format!("spec.http[{i}]"), route, delegate, bound_to_mesh);
    }
    for (i, route) in spec.tls.iter().enumerate() {
        tls_route(r, &format!("spec.tls[{i}]"), route, &spec.hosts);
    }
    for (i, route) in spec.tcp.iter().enumerate() {
        tcp_route(r, &format!("spec.tcp[{i}]"), route);
    }
    export_to(r, "spec.exportTo", &spec.export_to);
}

/// `mesh`, `name` or `namespace/name`.
fn gateway_reference(r: &mut Report, field: &str, gw: &str) {
    if gw == "mesh" {
        return;
    }
    let (ns, name) = gw.split_once('/').unwrap_or(("", gw));
    if !ns.is_empty() && check_dns1123_label(ns).is_err() {
        r.error(field, format!("gateway {gw:?}: {ns:?} is not a valid namespace"));
    } else if check_dns1123_subdomain(name).is_err() {
        r.error(field, format!("gateway {gw:?} is not \"mesh\", a gateway name, or namespace/name"));
    }
}

/// `bound_to_mesh`: the VirtualService applies to sidecars (`gateways` empty or naming `mesh`).
fn http_route(r: &mut Report, path: &str, route: &HttpRoute, in_delegate: bool, bound_to_mesh: bool) {
    let actions: Vec<&str> = [
        (!route.route.is_empty(), "route"),
        (route.redirect.is_some(), "redirect"),
        (route.direct_response.is_some(), "directResponse"),
        (route.delegate.is_some(), "delegate"),
    ]
    .into_iter()
    .filter_map(|(set, name)| set.then_some(name))
    .collect();
    match actions.as_slice() {
        [] => r.error(path, "one of route, redirect, directResponse or delegate is required"),
        [_] => {}
        [first, second, ..] => {
            r.error(path, format!("only one of route, redirect, directResponse or delegate may be set, found {first} and {second}"))
        }
    }
    if route.rewrite.is_some() && route.redirect.is_some() {
        r.error(path, "rewrite cannot be combined with redirect");
    }
    if route.delegate.is_some() && in_delegate {
        r.error(format!("{path}.delegate"), "a delegate VirtualService cannot delegate further");
    }
    for (i, m) in route.matches.iter().enumerate() {
        http_match(r, &format!("{path}.match[{i}]"), m, bound_to_mesh);
    }
    weighted(r, &format!("{path}.route"), route.route.iter().map(|d| (&d.destination, d.weight)));
    for (i, dest) in route.route.iter().enumerate() {
        if let Some(h) = &dest.headers {
            headers(r, &format!("{path}.route[{i}].headers"), h);
        }
    }
    if let Some(redirect) = &route.redirect {
        http_redirect(r, &format!("{path}.redirect"), redirect);
    }
    if let Some(direct) = &route.direct_response {
        direct_response(r, &format!("{path}.directResponse"), direct);
    }
    if let Some(d) = &route.delegate {
        if d.name.is_empty() {
            r.error(format!("{path}.delegate.name"), "required");
        } else {
            r.check(format!("{path}.delegate.name"), check_dns1123_subdomain(&d.name));
        }
        if !d.namespace.is_empty() {
            super::namespace_name(r, &format!("{path}.delegate.namespace"), &d.namespace);
        }
    }
    if let Some(rw) = &route.rewrite {
        if !rw.uri.is_empty() && rw.uri_regex_rewrite.is_some() {
            r.error(format!("{path}.rewrite"), "uri and uriRegexRewrite cannot both be set");
        }
        if let Some(rx) = &rw.uri_regex_rewrite {
            r.check(format!("{path}.rewrite.uriRegexRewrite.match"), check_re2_regex(&rx.pattern));
        }
    }
    let timeout =
        route.timeout.as_ref().and_then(|t| r.check(format!("{path}.timeout"), check_duration_ms(t)));
    if let Some(retries) = &route.retries {
        http_retry(r, &format!("{path}.retries"), retries, timeout);
    }
    if let Some(fault) = &route.fault {
        fault_injection(r, &format!("{path}.fault"), fault);
    }
    mirrors(r, path, route);
    if let Some(cors) = &route.cors_policy {
        cors_policy(r, &format!("{path}.corsPolicy"), cors);
    }
    if let Some(h) = &route.headers {
        headers(r, &format!("{path}.headers"), h);
    }
}

fn http_match(r: &mut Report, path: &str, m: &HttpMatchRequest, bound_to_mesh: bool) {
    for (name, sm) in
        [("uri", &m.uri), ("scheme", &m.scheme), ("method", &m.method), ("authority", &m.authority)]
    {
        if let Some(sm) = sm {
            string_match(r, &format!("{path}.{name}"), sm, false);
        }
    }
    for (section, map) in [("headers", &m.headers), ("withoutHeaders", &m.without_headers)] {
        for (name, sm) in map {
            let field = format!("{path}.{section}.{name}");
            if jwt_routing_claim(name).is_some() {
                jwt_claim_match(r, &field, name, bound_to_mesh);
                string_match(r, &field, sm, true);
            } else if name
                .get(..JWT_CLAIM_HEADER_PREFIX.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(JWT_CLAIM_HEADER_PREFIX))
            {
                // Istio takes it as a plain header name, which no request can carry.
                r.warn(
                    &field,
                    format!("{name:?} names no claim (write @request.auth.claims.NAME, nested: NAME.SUB); this match never applies"),
                );
                string_match(r, &field, sm, true);
            } else if r.check(field.clone(), check_header_name(name, true)).is_some() {
                // An empty match tests only that the header is present.
                string_match(r, &field, sm, true);
            }
        }
    }
    for (name, sm) in &m.query_params {
        let field = format!("{path}.queryParams.{name}");
        if name.is_empty() {
            r.error(field, "query parameter name must not be empty");
        } else {
            string_match(r, &field, sm, true);
        }
    }
    if m.port != 0 {
        r.check(format!("{path}.port"), check_port(m.port));
    }
    labels(r, &format!("{path}.sourceLabels"), &m.source_labels);
    for (i, gw) in m.gateways.iter().enumerate() {
        gateway_reference(r, &format!("{path}.gateways[{i}]"), gw);
    }
    if !m.source_namespace.is_empty() {
        r.check(format!("{path}.sourceNamespace"), check_dns1123_label(&m.source_namespace));
    }
}

/// A JWT-claim match: Istio allows it only in VirtualServices bound to gateways alone. Trellis's
/// proxy cannot route on claims yet, and trellisd drops such a match rather than ignore its
/// condition (which would send every request down the route).
fn jwt_claim_match(r: &mut Report, field: &str, name: &str, bound_to_mesh: bool) {
    if bound_to_mesh {
        r.error(
            field,
            format!("JWT claim based routing ({name:?}) is only supported for VirtualServices bound to gateways (not to the mesh)"),
        );
        return;
    }
    r.warn(
        field,
        format!(
            "not enforced: Trellis does not route on JWT claims ({name:?}) yet; trellisd drops this match, so requests that carry the claim fall through to later routes"
        ),
    );
}

fn string_match(r: &mut Report, path: &str, sm: &StringMatch, empty_ok: bool) {
    let set: Vec<&str> = [("exact", &sm.exact), ("prefix", &sm.prefix), ("regex", &sm.regex)]
        .into_iter()
        .filter_map(|(name, v)| v.is_some().then_some(name))
        .collect();
    match set.as_slice() {
        [] if !empty_ok => r.error(path, "one of exact, prefix or regex is required"),
        [] | [_] => {}
        [a, b, ..] => {
            r.error(path, format!("only one of exact, prefix or regex may be set, found {a} and {b}"))
        }
    }
    if let Some(rx) = &sm.regex {
        r.check(format!("{path}.regex"), check_re2_regex(rx));
    }
}

/// Destinations with weights: with several, each weight is non-negative and they add up to more
/// than 0. As in Istio, weights are relative (33/33/33 is a three-way split): the proxy picks in
/// proportion to the total, whatever it is.
fn weighted<'a>(r: &mut Report, path: &str, destinations: impl Iterator<Item = (&'a Destination, i32)>) {
    let list: Vec<(&Destination, i32)> = destinations.collect();
    for (i, (dest, weight)) in list.iter().enumerate() {
        destination(r, &format!("{path}[{i}].destination"), dest);
        if *weight < 0 {
            r.error(format!("{path}[{i}].weight"), format!("weight {weight} must not be negative"));
        }
    }
    match list.as_slice() {
        [] => {}
        [(_, weight)] => {
            if *weight != 0 && *weight != 100 {
                r.warn(
                    format!("{path}[0].weight"),
                    format!("a single destination receives all traffic; weight {weight} is ignored"),
                );
            }
        }
        _ => {
            let sum: i64 = list.iter().map(|(_, w)| i64::from(*w)).sum();
            if sum == 0 {
                r.error(path, "weights sum to 0; with several destinations, at least one needs a weight");
            } else if sum > i64::from(u32::MAX) {
                r.error(path, format!("weights sum to {sum}, at most {} is allowed", u32::MAX));
            }
        }
    }
}

fn destination(r: &mut Report, path: &str, d: &Destination) {
    if d.host.is_empty() {
        r.error(format!("{path}.host"), "required");
    } else if d.host == "*" {
        r.error(format!("{path}.host"), "destination host \"*\" matches every host; name the destination");
    } else if d.host.contains('*') {
        // Istio accepts a wildcard destination (and routes to the cluster of a ServiceEntry
        // with that very host); Trellis has no such cluster to offer.
        if r.check(format!("{path}.host"), check_host_allowing_partial_wildcard(&d.host)).is_some() {
            r.warn(
                format!("{path}.host"),
                format!(
                    "not enforced: Trellis cannot route to the wildcard destination {:?} unless a ServiceEntry with STATIC endpoints declares this very host; otherwise trellisd sends this destination's traffic nowhere (503)",
                    d.host
                ),
            );
        }
    } else {
        r.check(format!("{path}.host"), check_host_or_ip(&d.host));
    }
    if !d.subset.is_empty() {
        r.check(format!("{path}.subset"), check_dns1123_label(&d.subset));
    }
    if let Some(port) = &d.port {
        r.check(format!("{path}.port.number"), check_port(port.number));
    }
}

fn headers(r: &mut Report, path: &str, h: &Headers) {
    for (side, ops) in [("request", &h.request), ("response", &h.response)] {
        let Some(ops) = ops else { continue };
        for (op, names) in [("set", ops.set.keys().collect::<Vec<_>>()), ("add", ops.add.keys().collect())] {
            for name in names {
                // Istio lets a request set `:authority` (the host the upstream sees).
                if side == "request" && name.eq_ignore_ascii_case(":authority") {
                    continue;
                }
                r.check(format!("{path}.{side}.{op}.{name}"), check_header_name(name, false));
            }
        }
        for (i, name) in ops.remove.iter().enumerate() {
            r.check(format!("{path}.{side}.remove[{i}]"), check_header_name(name, false));
        }
    }
}

fn http_redirect(r: &mut Report, path: &str, redirect: &HttpRedirect) {
    if redirect.redirect_code != 0 && ![301, 302, 303, 307, 308].contains(&redirect.redirect_code) {
        r.error(
            format!("{path}.redirectCode"),
            format!("{} is not a redirect status; use 301, 302, 303, 307 or 308", redirect.redirect_code),
        );
    }
    if redirect.port != 0 {
        r.check(format!("{path}.port"), check_port(redirect.port));
        if redirect.derive_port.is_some() {
            r.error(path, "port and derivePort cannot both be set");
        }
    }
    if redirect.uri.is_empty()
        && redirect.authority.is_empty()
        && redirect.port == 0
        && redirect.derive_port.is_none()
        && redirect.scheme.is_empty()
    {
        r.error(path, "a redirect must set at least one of uri, authority, port, derivePort or scheme");
    }
}

fn direct_response(r: &mut Report, path: &str, direct: &HttpDirectResponse) {
    if !(200..=599).contains(&direct.status) {
        r.error(format!("{path}.status"), format!("{} is not a valid HTTP status (200-599)", direct.status));
    }
    if let Some(body) = &direct.body {
        match (&body.string, &body.bytes) {
            (Some(_), Some(_)) => r.error(format!("{path}.body"), "only one of string or bytes may be set"),
            (Some(text), None) | (None, Some(text)) if text.len() > MAX_DIRECT_RESPONSE_BODY => r.error(
                format!("{path}.body"),
                format!("body is {} bytes, at most {MAX_DIRECT_RESPONSE_BODY} are allowed", text.len()),
            ),
            _ => {}
        }
    }
}

fn http_retry(r: &mut Report, path: &str, retry: &HttpRetry, route_timeout: Option<std::time::Duration>) {
    if retry.attempts < 0 {
        r.error(format!("{path}.attempts"), format!("attempts {} must not be negative", retry.attempts));
    }
    let per_try = retry
        .per_try_timeout
        .as_ref()
        .and_then(|t| r.check(format!("{path}.perTryTimeout"), check_duration_ms(t)));
    if let (Some(per_try), Some(total)) = (per_try, route_timeout)
        && per_try > total
    {
        r.warn(
            format!("{path}.perTryTimeout"),
            format!("{per_try:?} is longer than the route timeout {total:?}, so no retry can happen"),
        );
    }
    r.check(format!("{path}.retryOn"), crate::primitives::check_retry_on(&retry.retry_on));
}

fn fault_injection(r: &mut Report, path: &str, fault: &HttpFaultInjection) {
    if fault.delay.is_none() && fault.abort.is_none() {
        r.error(path, "a fault needs delay or abort");
    }
    if let Some(delay) = &fault.delay {
        let p = format!("{path}.delay");
        match (&delay.fixed_delay, &delay.exponential_delay) {
            (_, Some(_)) => r.error(format!("{p}.exponentialDelay"), "not supported; use fixedDelay"),
            (Some(d), None) => {
                r.check(format!("{p}.fixedDelay"), check_duration_ms(d));
            }
            (None, None) => r.error(format!("{p}.fixedDelay"), "required"),
        }
        percent(r, &format!("{p}.percentage.value"), delay.percentage.as_ref());
        legacy_percent(r, &format!("{p}.percent"), delay.percent);
        if delay.percentage.is_none() && delay.percent == 0 {
            r.warn(format!("{p}.percentage"), "not set: as in Istio, no request is delayed");
        }
    }
    if let Some(abort) = &fault.abort {
        let p = format!("{path}.abort");
        let kinds = [abort.http_status != 0, !abort.grpc_status.is_empty(), !abort.http2_error.is_empty()];
        match kinds.iter().filter(|k| **k).count() {
            0 => r.error(p.clone(), "one of httpStatus, grpcStatus or http2Error is required"),
            1 => {}
            _ => r.error(p.clone(), "only one of httpStatus, grpcStatus or http2Error may be set"),
        }
        if abort.http_status != 0 && !(200..=599).contains(&abort.http_status) {
            r.error(
                format!("{p}.httpStatus"),
                format!("{} is not a valid HTTP status (200-599)", abort.http_status),
            );
        }
        if !abort.grpc_status.is_empty() && crate::primitives::grpc_status_code(&abort.grpc_status).is_none()
        {
            r.error(
                format!("{p}.grpcStatus"),
                format!(
                    "{:?} is not a gRPC status name such as UNAVAILABLE or DEADLINE_EXCEEDED",
                    abort.grpc_status
                ),
            );
        }
        if !abort.http2_error.is_empty() {
            r.error(format!("{p}.http2Error"), "not supported; use httpStatus or grpcStatus");
        }
        percent(r, &format!("{p}.percentage.value"), abort.percentage.as_ref());
        if abort.percentage.is_none() {
            r.warn(format!("{p}.percentage"), "not set: as in Istio, no request is aborted");
        }
    }
}

fn percent(r: &mut Report, field: &str, p: Option<&Percent>) {
    if let Some(p) = p
        && !(0.0..=100.0).contains(&p.value)
    {
        r.error(field, format!("percentage {} must be between 0 and 100", p.value));
    }
}

fn legacy_percent(r: &mut Report, field: &str, value: i32) {
    if !(0..=100).contains(&value) {
        r.error(field, format!("percentage {value} must be between 0 and 100"));
    }
}

fn mirrors(r: &mut Report, path: &str, route: &HttpRoute) {
    if route.mirror.is_some() && !route.mirrors.is_empty() {
        r.error(path, "mirror and mirrors cannot both be set");
    }
    if let Some(m) = &route.mirror {
        destination(r, &format!("{path}.mirror"), m);
    }
    percent(r, &format!("{path}.mirrorPercentage.value"), route.mirror_percentage.as_ref());
    if let Some(p) = route.mirror_percent {
        legacy_percent(r, &format!("{path}.mirrorPercent"), i32::try_from(p).unwrap_or(i32::MAX));
    }
    for (i, m) in route.mirrors.iter().enumerate() {
        destination(r, &format!("{path}.mirrors[{i}].destination"), &m.destination);
        percent(r, &format!("{path}.mirrors[{i}].percentage.value"), m.percentage.as_ref());
    }
}

fn cors_policy(r: &mut Report, path: &str, cors: &CorsPolicy) {
    for (i, origin) in cors.allow_origins.iter().enumerate() {
        string_match(r, &format!("{path}.allowOrigins[{i}]"), origin, false);
    }
    for (i, method) in cors.allow_methods.iter().enumerate() {
        if !HTTP_METHODS.contains(&method.as_str()) && method != "*" {
            r.error(format!("{path}.allowMethods[{i}]"), format!("{method:?} is not an HTTP method"));
        }
    }
    for (section, names) in [("allowHeaders", &cors.allow_headers), ("exposeHeaders", &cors.expose_headers)] {
        for (i, name) in names.iter().enumerate() {
            if name != "*" {
                r.check(format!("{path}.{section}[{i}]"), check_header_name(name, false));
            }
        }
    }
    if let Some(max_age) = &cors.max_age
        && let Some(d) = r.check(format!("{path}.maxAge"), parse_go_duration(&max_age.0))
        && d.subsec_nanos() != 0
    {
        r.error(format!("{path}.maxAge"), format!("{:?} must be whole seconds", max_age.0));
    }
}

fn tls_route(r: &mut Report, path: &str, route: &TlsRoute, vs_hosts: &[String]) {
    if route.matches.is_empty() {
        r.error(format!("{path}.match"), "a TLS route needs at least one match");
    }
    for (i, m) in route.matches.iter().enumerate() {
        let mp = format!("{path}.match[{i}]");
        if m.sni_hosts.is_empty() {
            r.error(format!("{mp}.sniHosts"), "at least one SNI host is required");
        }
        for (j, sni) in m.sni_hosts.iter().enumerate() {
            let field = format!("{mp}.sniHosts[{j}]");
            if r.check(field.clone(), check_wildcard_host(sni)).is_some()
                && !vs_hosts.is_empty()
                && !vs_hosts.iter().any(|h| host_covers(h, sni) || host_covers(sni, h))
            {
                r.error(field, format!("SNI host {sni:?} is not covered by any of the VirtualService hosts"));
            }
        }
        subnets(r, &format!("{mp}.destinationSubnets"), &m.destination_subnets);
        if m.port != 0 {
            r.check(format!("{mp}.port"), check_port(m.port));
        }
        labels(r, &format!("{mp}.sourceLabels"), &m.source_labels);
    }
    l4_destinations(r, path, &route.route);
}

fn tcp_route(r: &mut Report, path: &str, route: &TcpRoute) {
    for (i, m) in route.matches.iter().enumerate() {
        let mp = format!("{path}.match[{i}]");
        subnets(r, &format!("{mp}.destinationSubnets"), &m.destination_subnets);
        if m.port != 0 {
            r.check(format!("{mp}.port"), check_port(m.port));
        }
        if !m.source_subnet.is_empty() {
            r.check(format!("{mp}.sourceSubnet"), parse_ip_or_cidr(&m.source_subnet));
        }
        labels(r, &format!("{mp}.sourceLabels"), &m.source_labels);
    }
    l4_destinations(r, path, &route.route);
}

/// The destinations of a TLS or TCP route: at least one, weighted like HTTP routes.
fn l4_destinations(r: &mut Report, path: &str, route: &[RouteDestination]) {
    if route.is_empty() {
        r.error(format!("{path}.route"), "at least one route destination is required");
    }
    weighted(r, &format!("{path}.route"), route.iter().map(|d| (&d.destination, d.weight)));
}

fn subnets(r: &mut Report, path: &str, values: &[String]) {
    for (i, s) in values.iter().enumerate() {
        r.check(format!("{path}[{i}]"), parse_ip_or_cidr(s));
    }
}

/// Whether wildcard host `pattern` matches `host` (`*.example.com` covers `a.example.com`).
fn host_covers(pattern: &str, host: &str) -> bool {
    pattern == "*"
        || pattern.eq_ignore_ascii_case(host)
        || pattern.strip_prefix('*').is_some_and(|suffix| {
            host.len() > suffix.len() && host.to_ascii_lowercase().ends_with(&suffix.to_ascii_lowercase())
        })
}

/// A host (pattern) of a VirtualService or DestinationRule: an IP, a name, or a wildcard; as in
/// Istio, a partial wildcard too, with a warning.
fn host_pattern(r: &mut Report, field: &str, host: &str) {
    if is_partial_wildcard(host) {
        partial_wildcard(r, field, host);
    } else {
        r.check(field, check_host_or_ip(host));
    }
}

/// A partial wildcard host (`*example.com`): Istio accepts it, and matches it as a plain suffix
/// of the name, as trellisd does. Whether it is valid.
fn partial_wildcard(r: &mut Report, field: &str, host: &str) -> bool {
    if r.check(field, check_host_allowing_partial_wildcard(host)).is_none() {
        return false;
    }
    let suffix = &host[1..];
    r.warn(
        field,
        format!(
            "partial wildcard host {host:?}: accepted as in Istio, which matches it as a plain suffix of the name (it covers \"my{suffix}\" too); write \"*.{}\" for subdomains only",
            suffix.trim_start_matches('-')
        ),
    );
    true
}

fn duplicates<'a>(r: &mut Report, path: &str, values: impl Iterator<Item = &'a String>, what: &str) {
    let mut seen = BTreeSet::new();
    for (i, v) in values.enumerate() {
        if !seen.insert(v.as_str()) {
            r.error(format!("{path}[{i}]"), format!("{what} {v:?} is listed twice"));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// DestinationRule

pub(super) fn destination_rule(r: &mut Report, spec: &DestinationRuleSpec) {
    if spec.host.is_empty() {
        r.error("spec.host", "required");
    } else {
        host_pattern(r, "spec.host", &spec.host);
    }
    if let Some(tp) = &spec.traffic_policy {
        traffic_policy(r, "spec.trafficPolicy", tp, false);
    }
    let top_outlier = spec.traffic_policy.as_ref().is_some_and(|tp| tp.outlier_detection.is_some());
    let mut names = BTreeSet::new();
    for (i, subset) in spec.subsets.iter().enumerate() {
        let path = format!("spec.subsets[{i}]");
        if subset.name.is_empty() {
            r.error(format!("{path}.name"), "required");
        } else if !names.insert(subset.name.as_str()) {
            r.error(format!("{path}.name"), format!("duplicate subset name {:?}", subset.name));
        } else {
            r.check(format!("{path}.name"), check_dns1123_label(&subset.name));
        }
        labels(r, &format!("{path}.labels"), &subset.labels);
        if let Some(tp) = &subset.traffic_policy {
            traffic_policy(r, &format!("{path}.trafficPolicy"), tp, top_outlier);
        }
    }
    export_to(r, "spec.exportTo", &spec.export_to);
    if let Some(sel) = &spec.workload_selector {
        labels(r, "spec.workloadSelector.matchLabels", &sel.match_labels);
    }
}

/// `inherited_outlier`: the policy this one lies over (a subset's: the rule's) has outlier
/// detection.
fn traffic_policy(r: &mut Report, path: &str, tp: &TrafficPolicy, inherited_outlier: bool) {
    if *tp == TrafficPolicy::default() {
        r.error(path, "a traffic policy needs at least one setting");
        return;
    }
    failover_needs_outlier_detection(
        r,
        path,
        tp.load_balancer.as_ref(),
        inherited_outlier || tp.outlier_detection.is_some(),
    );
    policy_parts(
        r,
        path,
        tp.load_balancer.as_ref(),
        tp.connection_pool.as_ref(),
        tp.outlier_detection.as_ref(),
        tp.tls.as_ref(),
    );
    let mut ports = BTreeSet::new();
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        let p = format!("{path}.portLevelSettings[{i}]");
        match &pl.port {
            None => r.error(format!("{p}.port"), "required"),
            Some(port) => {
                if r.check(format!("{p}.port.number"), check_port(port.number)).is_some()
                    && !ports.insert(port.number)
                {
                    r.error(format!("{p}.port.number"), format!("port {} has settings twice", port.number));
                }
            }
        }
        // Port-level settings do not inherit.
        failover_needs_outlier_detection(r, &p, pl.load_balancer.as_ref(), pl.outlier_detection.is_some());
        policy_parts(
            r,
            &p,
            pl.load_balancer.as_ref(),
            pl.connection_pool.as_ref(),
            pl.outlier_detection.as_ref(),
            pl.tls.as_ref(),
        );
    }
    if let Some(tunnel) = &tp.tunnel {
        let p = format!("{path}.tunnel");
        if !tunnel.protocol.is_empty() && tunnel.protocol != "CONNECT" && tunnel.protocol != "POST" {
            r.error(
                format!("{p}.protocol"),
                format!("{:?} is not supported; use CONNECT or POST", tunnel.protocol),
            );
        }
        if tunnel.target_host.is_empty() {
            r.error(format!("{p}.targetHost"), "required");
        }
        r.check(format!("{p}.targetPort"), check_port(tunnel.target_port));
    }
}

fn policy_parts(
    r: &mut Report,
    path: &str,
    lb: Option<&LoadBalancerSettings>,
    pool: Option<&ConnectionPoolSettings>,
    outlier: Option<&OutlierDetection>,
    tls: Option<&ClientTlsSettings>,
) {
    if let Some(lb) = lb {
        load_balancer(r, &format!("{path}.loadBalancer"), lb);
    }
    if let Some(pool) = pool {
        connection_pool(r, &format!("{path}.connectionPool"), pool);
    }
    if let Some(od) = outlier {
        outlier_detection(r, &format!("{path}.outlierDetection"), od);
    }
    if let Some(tls) = tls {
        client_tls(r, &format!("{path}.tls"), tls);
    }
}

fn load_balancer(r: &mut Report, path: &str, lb: &LoadBalancerSettings) {
    if lb.simple.is_some() && lb.consistent_hash.is_some() {
        r.error(path, "simple and consistentHash cannot both be set");
    }
    if lb.simple == Some(SimpleLb::LeastConn) {
        r.warn(format!("{path}.simple"), "LEAST_CONN is deprecated; use LEAST_REQUEST");
    }
    if let Some(ch) = &lb.consistent_hash {
        let p = format!("{path}.consistentHash");
        let keys: Vec<&str> = [
            (ch.http_header_name.is_some(), "httpHeaderName"),
            (ch.http_cookie.is_some(), "httpCookie"),
            (ch.use_source_ip.unwrap_or(false), "useSourceIp"),
            (ch.http_query_parameter_name.is_some(), "httpQueryParameterName"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect();
        match keys.as_slice() {
            [] => r.error(
                p.clone(),
                "one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName is required",
            ),
            [_] => {}
            [a, b, ..] => r.error(p.clone(), format!("only one hash key may be set, found {a} and {b}")),
        }
        if let Some(h) = &ch.http_header_name {
            r.check(format!("{p}.httpHeaderName"), check_header_name(h, false));
        }
        if let Some(cookie) = &ch.http_cookie {
            if cookie.name.is_empty() {
                r.error(format!("{p}.httpCookie.name"), "required");
            }
            if let Some(ttl) = &cookie.ttl {
                r.check(format!("{p}.httpCookie.ttl"), parse_go_duration(&ttl.0));
            }
        }
        if ch.http_query_parameter_name.as_deref() == Some("") {
            r.error(format!("{p}.httpQueryParameterName"), "must not be empty");
        }
        if ch.ring_hash.is_some() && ch.maglev.is_some() {
            r.error(p, "ringHash and maglev cannot both be set");
        }
    }
    if let Some(loc) = &lb.locality_lb_setting {
        locality_lb_setting(r, &format!("{path}.localityLbSetting"), loc);
    }
    if let Some(w) = &lb.warmup_duration_secs {
        r.check(format!("{path}.warmupDurationSecs"), check_duration_ms(w));
    }
    if let Some(w) = &lb.warmup {
        let p = format!("{path}.warmup");
        match &w.duration {
            Some(d) => {
                r.check(format!("{p}.duration"), check_duration_ms(d));
            }
            None => r.error(format!("{p}.duration"), "required"),
        }
        if let Some(m) = w.minimum_percent
            && !(0.0..=100.0).contains(&m)
        {
            r.error(format!("{p}.minimumPercent"), format!("{m} is not between 0 and 100"));
        }
        if let Some(a) = w.aggression
            && (a < 1.0 || a.is_nan())
        {
            r.error(format!("{p}.aggression"), format!("{a} is less than 1"));
        }
        r.warn(p, "read but not enforced: Trellis sends new endpoints their full share of traffic at once");
    }
}

/// Istio's rules for `localityLbSetting` (its `validateLocalityLbSetting`), each naming the
/// field: `distribute` and `failover` exclude each other; `distribute` localities are patterns
/// (`region/zone/subzone`, `*` only as the whole last part) that do not overlap, with weights of
/// 1 to 100 summing to 100 per `from`; `failover` names two different regions; `failoverPriority`
/// lists label keys (or `key=value`), not the topology labels when `failover` is set.
pub(crate) fn locality_lb_setting(r: &mut Report, path: &str, loc: &LocalityLbSetting) {
    use crate::locality::{FailoverLabel, LocalityPattern, REGION_LABEL, SUBZONE_LABEL, ZONE_LABEL};
    if !loc.distribute.is_empty() && !loc.failover.is_empty() {
        r.error(path, "distribute and failover cannot both be set");
    }
    let mut froms: Vec<(String, LocalityPattern)> = Vec::new();
    for (i, d) in loc.distribute.iter().enumerate() {
        let p = format!("{path}.distribute[{i}]");
        if d.from.is_empty() {
            r.error(format!("{p}.from"), "required");
        } else if let Some(pattern) = r.check(format!("{p}.from"), LocalityPattern::parse(&d.from)) {
            no_overlap(r, &format!("{p}.from"), &d.from, &pattern, &froms);
            froms.push((d.from.clone(), pattern));
        }
        if d.to.is_empty() {
            r.error(format!("{p}.to"), "required: the localities traffic goes to, with their weights");
            continue;
        }
        let mut tos: Vec<(String, LocalityPattern)> = Vec::new();
        for (to, weight) in &d.to {
            let field = format!("{p}.to[{to:?}]");
            if let Some(pattern) = r.check(field.clone(), LocalityPattern::parse(to)) {
                no_overlap(r, &field, to, &pattern, &tos);
                tos.push((to.clone(), pattern));
            }
            if !(1..=100).contains(weight) {
                r.error(field, format!("weight {weight} must be between 1 and 100"));
            }
        }
        let sum: u64 = d.to.values().map(|w| u64::from(*w)).sum();
        if sum != 100 {
            r.error(format!("{p}.to"), format!("weights sum to {sum}, must be 100"));
        }
    }
    for (i, f) in loc.failover.iter().enumerate() {
        let p = format!("{path}.failover[{i}]");
        if f.from.is_empty() || f.to.is_empty() {
            r.error(p, "from and to are both required");
            continue;
        }
        if f.from == f.to {
            r.error(p.clone(), format!("from and to are the same region {:?}", f.from));
        }
        for (name, region) in [("from", &f.from), ("to", &f.to)] {
            if region.contains('/') || region.contains('*') {
                r.error(
                    format!("{p}.{name}"),
                    format!("{region:?} is not a region: failover names regions only, without / or *"),
                );
            }
        }
    }
    let mut keys = BTreeSet::new();
    for (i, entry) in loc.failover_priority.iter().enumerate() {
        let field = format!("{path}.failoverPriority[{i}]");
        let label = FailoverLabel::parse(entry);
        if r.check(field.clone(), check_label_key(&label.key)).is_none() {
            continue;
        }
        if let Some(value) = &label.value {
            r.check(field.clone(), check_label_value(value));
        }
        if !keys.insert(label.key.clone()) {
            r.error(field.clone(), format!("label {:?} is listed twice", label.key));
        }
        if !loc.failover.is_empty() && [REGION_LABEL, ZONE_LABEL, SUBZONE_LABEL].contains(&label.key.as_str())
        {
            r.error(
                field,
                format!(
                    "{:?} cannot be listed while failover is set (failover already orders by region)",
                    label.key
                ),
            );
        }
    }
}

/// An error when `pattern` matches a locality that one of `earlier` matches too: Istio refuses
/// such settings, as the weights (or sources) would be ambiguous.
fn no_overlap(
    r: &mut Report,
    field: &str,
    text: &str,
    pattern: &crate::locality::LocalityPattern,
    earlier: &[(String, crate::locality::LocalityPattern)],
) {
    if let Some((other, _)) = earlier.iter().find(|(_, p)| p.overlaps(pattern)) {
        r.error(field, format!("locality {text:?} overlaps {other:?}"));
    }
}

/// A warning when a policy asks for locality failover without outlier detection: as in Istio,
/// failover (and `failoverPriority`) then does nothing, since no endpoint is ever seen unhealthy.
fn failover_needs_outlier_detection(
    r: &mut Report,
    path: &str,
    lb: Option<&LoadBalancerSettings>,
    has_outlier: bool,
) {
    let Some(loc) = lb.and_then(|lb| lb.locality_lb_setting.as_ref()) else { return };
    if has_outlier || loc.enabled == Some(false) {
        return;
    }
    for (name, set) in
        [("failover", !loc.failover.is_empty()), ("failoverPriority", !loc.failover_priority.is_empty())]
    {
        if set {
            r.warn(
                format!("{path}.loadBalancer.localityLbSetting.{name}"),
                "has no effect without outlierDetection: as in Istio, traffic fails over only from endpoints outlier detection ejects",
            );
        }
    }
}

fn non_negative(r: &mut Report, path: &str, fields: &[(&str, i32)]) {
    for (name, value) in fields {
        if *value < 0 {
            r.error(format!("{path}.{name}"), format!("{value} must not be negative"));
        }
    }
}

fn optional_duration(r: &mut Report, field: String, d: Option<&GoDuration>) {
    if let Some(d) = d {
        r.check(field, check_duration_ms(d));
    }
}

fn connection_pool(r: &mut Report, path: &str, pool: &ConnectionPoolSettings) {
    if pool.tcp.is_none() && pool.http.is_none() {
        r.error(path, "a connection pool needs tcp or http settings");
    }
    if let Some(tcp) = &pool.tcp {
        let p = format!("{path}.tcp");
        non_negative(r, &p, &[("maxConnections", tcp.max_connections)]);
        optional_duration(r, format!("{p}.connectTimeout"), tcp.connect_timeout.as_ref());
        optional_duration(r, format!("{p}.maxConnectionDuration"), tcp.max_connection_duration.as_ref());
        // 0s turns the TCP idle timeout off, as Istio documents.
        let idle = tcp.idle_timeout.as_ref().filter(|d| !d.to_std().is_ok_and(|d| d.is_zero()));
        optional_duration(r, format!("{p}.idleTimeout"), idle);
        if let Some(ka) = &tcp.tcp_keepalive {
            optional_duration(r, format!("{p}.tcpKeepalive.time"), ka.time.as_ref());
            optional_duration(r, format!("{p}.tcpKeepalive.interval"), ka.interval.as_ref());
        }
    }
    if let Some(http) = &pool.http {
        let p = format!("{path}.http");
        non_negative(
            r,
            &p,
            &[
                ("http1MaxPendingRequests", http.http1_max_pending_requests),
                ("http2MaxRequests", http.http2_max_requests),
                ("maxRequestsPerConnection", http.max_requests_per_connection),
                ("maxRetries", http.max_retries),
                ("maxConcurrentStreams", http.max_concurrent_streams),
            ],
        );
        optional_duration(r, format!("{p}.idleTimeout"), http.idle_timeout.as_ref());
    }
}

fn outlier_detection(r: &mut Report, path: &str, od: &OutlierDetection) {
    if od.consecutive_errors != 0 {
        r.warn(format!("{path}.consecutiveErrors"), "deprecated; use consecutive5xxErrors");
    }
    non_negative(r, path, &[("consecutiveErrors", od.consecutive_errors)]);
    optional_duration(r, format!("{path}.interval"), od.interval.as_ref());
    optional_duration(r, format!("{path}.baseEjectionTime"), od.base_ejection_time.as_ref());
    for (name, value) in
        [("maxEjectionPercent", od.max_ejection_percent), ("minHealthPercent", od.min_health_percent)]
    {
        if !(0..=100).contains(&value) {
            r.error(format!("{path}.{name}"), format!("{value} must be between 0 and 100"));
        }
    }
}

fn client_tls(r: &mut Report, path: &str, tls: &ClientTlsSettings) {
    let has_files =
        !tls.client_certificate.is_empty() || !tls.private_key.is_empty() || !tls.ca_certificates.is_empty();
    match tls.mode {
        ClientTlsMode::IstioMutual if has_files || !tls.credential_name.is_empty() => r.error(
            path,
            "ISTIO_MUTUAL uses the mesh's own certificates; clientCertificate, privateKey, caCertificates and credentialName must be empty",
        ),
        ClientTlsMode::Mutual if tls.credential_name.is_empty() => {
            for (name, value) in [("clientCertificate", &tls.client_certificate), ("privateKey", &tls.private_key)] {
                if value.is_empty() {
                    r.error(format!("{path}.{name}"), "required when mode is MUTUAL and credentialName is not set");
                }
            }
        }
        _ => {}
    }
    if !tls.credential_name.is_empty() && has_files {
        r.error(
            path,
            "credentialName cannot be combined with clientCertificate, privateKey or caCertificates",
        );
    }
    for (i, san) in tls.subject_alt_names.iter().enumerate() {
        if san.is_empty() {
            r.error(format!("{path}.subjectAltNames[{i}]"), "must not be empty");
        } else if tls.mode == ClientTlsMode::IstioMutual && !san.starts_with("spiffe://") {
            r.warn(
                format!("{path}.subjectAltNames[{i}]"),
                format!("{san:?}: Trellis matches mesh certificates by SPIFFE ID only; this name is ignored"),
            );
        }
    }
    if matches!(tls.mode, ClientTlsMode::Simple | ClientTlsMode::Mutual) {
        if !tls.credential_name.is_empty() {
            r.warn(
                format!("{path}.credentialName"),
                "not supported by Trellis sidecars yet (give clientCertificate, privateKey and caCertificates files): connections to this destination fail",
            );
        }
        if !tls.ca_crl.is_empty() {
            r.warn(format!("{path}.caCrl"), "not enforced yet: revoked server certificates are accepted");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ServiceEntry and WorkloadEntry

pub(super) fn service_entry(r: &mut Report, spec: &ServiceEntrySpec) {
    if spec.hosts.is_empty() {
        r.error("spec.hosts", "at least one host is required");
    }
    for (i, host) in spec.hosts.iter().enumerate() {
        let field = format!("spec.hosts[{i}]");
        if host == "*" {
            r.error(field, "\"*\" is not allowed; name the hosts this entry describes");
            continue;
        }
        let valid = if is_partial_wildcard(host) {
            partial_wildcard(r, &field, host)
        } else {
            r.check(field.clone(), check_wildcard_host(host)).is_some()
        };
        if valid
            && host.starts_with('*')
            && matches!(spec.resolution, ServiceEntryResolution::Dns | ServiceEntryResolution::DnsRoundRobin)
            && spec.endpoints.is_empty()
        {
            r.error(field, format!("wildcard host {host:?} cannot be resolved with DNS; list endpoints or use resolution NONE"));
        }
    }
    duplicates(r, "spec.hosts", spec.hosts.iter(), "host");
    subnets(r, "spec.addresses", &spec.addresses);
    let declared = ports(r, "spec.ports", &spec.ports, true);
    if !spec.endpoints.is_empty() && spec.workload_selector.is_some() {
        r.error("spec", "endpoints and workloadSelector cannot both be set");
    }
    match spec.resolution {
        ServiceEntryResolution::Static if spec.endpoints.is_empty() && spec.workload_selector.is_none() => {
            r.error("spec.endpoints", "STATIC resolution needs endpoints or a workloadSelector");
        }
        ServiceEntryResolution::DnsRoundRobin if spec.endpoints.len() > 1 => {
            r.error("spec.endpoints", "DNS_ROUND_ROBIN resolution allows at most one endpoint");
        }
        ServiceEntryResolution::None if !spec.endpoints.is_empty() => {
            r.error(
                "spec.endpoints",
                "NONE resolution takes no endpoints (traffic goes to the address asked for)",
            );
        }
        _ => {}
    }
    if matches!(spec.resolution, ServiceEntryResolution::Dns | ServiceEntryResolution::DnsRoundRobin)
        && spec.workload_selector.is_none()
        && !spec.endpoints.iter().any(|ep| parse_ip(&ep.address).is_ok())
    {
        // Istio's proxies resolve the names; Trellis's control plane and proxy do not. Without
        // this warning the entry's routes (an egress gateway's among them) would silently not
        // apply.
        r.warn(
            "spec.resolution",
            "Trellis does not resolve host names for DNS resolution: without IP endpoints the entry is left out, its traffic goes by the outbound policy, and VirtualServices and DestinationRules for its hosts do not apply to it",
        );
    }
    if matches!(spec.resolution, ServiceEntryResolution::Dns | ServiceEntryResolution::DnsRoundRobin) {
        for (i, address) in spec.addresses.iter().enumerate() {
            if address.contains('/') {
                r.error(
                    format!("spec.addresses[{i}]"),
                    format!("CIDR {address:?} is allowed only with NONE or STATIC resolution"),
                );
            }
        }
    }
    for (i, ep) in spec.endpoints.iter().enumerate() {
        let path = format!("spec.endpoints[{i}]");
        workload_entry(r, &path, ep, Some(&declared));
        if spec.resolution == ServiceEntryResolution::Static
            && !ep.address.is_empty()
            && !ep.address.starts_with("unix://")
            && parse_ip(&ep.address).is_err()
        {
            r.error(
                format!("{path}.address"),
                format!("{:?} is not an IP address; STATIC resolution needs IP endpoints", ep.address),
            );
        }
    }
    if let Some(sel) = &spec.workload_selector {
        labels(r, "spec.workloadSelector.labels", &sel.labels);
    }
    export_to(r, "spec.exportTo", &spec.export_to);
}

/// Checks a port list; returns the declared port names.
fn ports(r: &mut Report, path: &str, list: &[Port], name_required: bool) -> BTreeSet<String> {
    let mut numbers = BTreeSet::new();
    let mut names = BTreeSet::new();
    for (i, port) in list.iter().enumerate() {
        server_port(r, &format!("{path}[{i}]"), port, name_required);
        if !numbers.insert(port.number) {
            r.error(format!("{path}[{i}].number"), format!("port {} is declared twice", port.number));
        }
        if !port.name.is_empty() && !names.insert(port.name.clone()) {
            r.error(format!("{path}[{i}].name"), format!("port name {:?} is declared twice", port.name));
        }
    }
    names
}

fn server_port(r: &mut Report, path: &str, port: &Port, name_required: bool) {
    r.check(format!("{path}.number"), check_port(port.number));
    if port.target_port != 0 {
        r.check(format!("{path}.targetPort"), check_port(port.target_port));
    }
    if !port.protocol.is_empty() && !PROTOCOLS.iter().any(|p| p.eq_ignore_ascii_case(&port.protocol)) {
        r.error(
            format!("{path}.protocol"),
            format!("{:?} is not one of {}", port.protocol, PROTOCOLS.join(", ")),
        );
    }
    if port.name.is_empty() && name_required {
        r.error(format!("{path}.name"), "required");
    }
}

/// A port name as Istio's WorkloadEntry schema allows it in `ports` keys.
fn is_port_name(name: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    name.len() < 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && edge(name.chars().next())
        && edge(name.chars().last())
}

/// A WorkloadEntry spec, standalone or as a ServiceEntry endpoint (then `declared_ports` lists
/// the port names its `ports` may use).
pub(super) fn workload_entry(
    r: &mut Report,
    path: &str,
    we: &WorkloadEntrySpec,
    declared_ports: Option<&BTreeSet<String>>,
) {
    if we.address.is_empty() {
        if we.network.is_empty() {
            r.error(format!("{path}.address"), "required unless network is set");
        }
    } else if let Some(socket) = we.address.strip_prefix("unix://") {
        if !we.ports.is_empty() {
            r.error(
                format!("{path}.ports"),
                "a unix socket address takes no ports (Istio: UDS may not include ports)",
            );
        }
        if r.check(format!("{path}.address"), check_unix_socket(socket)).is_some() {
            r.warn(
                format!("{path}.address"),
                format!(
                    "not enforced: Trellis's proxy dials only IP endpoints; trellisd leaves the unix socket {:?} out of the service's endpoints",
                    we.address
                ),
            );
        }
    } else if we.address.contains('*') {
        r.error(format!("{path}.address"), format!("{:?} must not be a wildcard", we.address));
    } else {
        r.check(format!("{path}.address"), check_host_or_ip(&we.address));
    }
    for (name, port) in &we.ports {
        let field = format!("{path}.ports.{name}");
        if !is_port_name(name) {
            r.error(
                field.clone(),
                format!("{name:?} is not a port name (1-62 letters, digits, '-' or '_', starting and ending with a letter or digit)"),
            );
        }
        r.check(field.clone(), check_port(*port));
        if let Some(declared) = declared_ports
            && !declared.contains(name)
        {
            r.error(field, format!("port name {name:?} is not declared in spec.ports"));
        }
    }
    labels(r, &format!("{path}.labels"), &we.labels);
    if !we.locality.is_empty() {
        r.check(format!("{path}.locality"), crate::locality::Locality::parse(&we.locality));
    } else if let Some(value) = we.labels.get(crate::locality::LOCALITY_LABEL) {
        let field = format!("{path}.labels.{}", crate::locality::LOCALITY_LABEL);
        r.check(field, crate::locality::Locality::from_label(value));
    }
    if !we.service_account.is_empty() {
        r.check(format!("{path}.serviceAccount"), check_dns1123_subdomain(&we.service_account));
    }
}

// ---------------------------------------------------------------------------------------------
// Sidecar

pub(super) fn sidecar(r: &mut Report, spec: &SidecarSpec) {
    if spec.egress.is_empty()
        && spec.ingress.is_empty()
        && spec.outbound_traffic_policy.is_none()
        && spec.inbound_connection_pool.is_none()
    {
        r.error(
            "spec",
            "a Sidecar needs at least one of egress, ingress, outboundTrafficPolicy or inboundConnectionPool",
        );
    }
    if let Some(sel) = &spec.workload_selector {
        if sel.labels.is_empty() {
            r.error(
                "spec.workloadSelector.labels",
                "must not be empty; omit workloadSelector to apply to the whole namespace",
            );
        }
        labels(r, "spec.workloadSelector.labels", &sel.labels);
    }
    let mut ingress_ports = BTreeSet::new();
    for (i, listener) in spec.ingress.iter().enumerate() {
        let path = format!("spec.ingress[{i}]");
        match &listener.port {
            None => r.error(format!("{path}.port"), "required"),
            Some(port) => {
                server_port(r, &format!("{path}.port"), port, false);
                if !ingress_ports.insert(port.number) {
                    r.error(
                        format!("{path}.port.number"),
                        format!("port {} is used by two ingress listeners", port.number),
                    );
                }
            }
        }
        // trellisd builds inbound listeners from the workload's ports, not from these.
        r.warn(
            &path,
            "not enforced: Trellis does not apply Sidecar ingress listeners yet (port, bind, defaultEndpoint, tls, connectionPool); inbound traffic reaches the port it was sent to",
        );
        bind(r, &format!("{path}.bind"), &listener.bind);
        if !listener.default_endpoint.is_empty() {
            default_endpoint(r, &format!("{path}.defaultEndpoint"), &listener.default_endpoint);
        }
        if let Some(pool) = &listener.connection_pool {
            connection_pool(r, &format!("{path}.connectionPool"), pool);
        }
    }
    let mut catch_all: Option<usize> = None;
    for (i, listener) in spec.egress.iter().enumerate() {
        let path = format!("spec.egress[{i}]");
        match &listener.port {
            Some(port) => server_port(r, &format!("{path}.port"), port, false),
            // A listener without a port catches everything else; two would be ambiguous.
            None => {
                if let Some(first) = catch_all.replace(i) {
                    r.error(
                        path.clone(),
                        format!(
                            "only one egress listener may omit a port, spec.egress[{first}] already does"
                        ),
                    );
                }
            }
        }
        bind(r, &format!("{path}.bind"), &listener.bind);
        if listener.hosts.is_empty() {
            r.error(format!("{path}.hosts"), "at least one host is required");
        }
        for (j, host) in listener.hosts.iter().enumerate() {
            namespaced_host(r, &format!("{path}.hosts[{j}]"), host, true);
        }
    }
    if let Some(pool) = &spec.inbound_connection_pool {
        r.warn("spec.inboundConnectionPool", "not enforced: Trellis does not limit inbound connections yet");
        connection_pool(r, "spec.inboundConnectionPool", pool);
    }
    if let Some(otp) = &spec.outbound_traffic_policy
        && let Some(proxy) = &otp.egress_proxy
    {
        if otp.mode != OutboundTrafficPolicyMode::AllowAny {
            r.error("spec.outboundTrafficPolicy.egressProxy", "only applies when mode is ALLOW_ANY");
        }
        destination(r, "spec.outboundTrafficPolicy.egressProxy", proxy);
        if proxy.port.is_none() {
            r.error("spec.outboundTrafficPolicy.egressProxy.port", "required");
        }
    }
}

/// `namespace/dnsName` as Sidecar egress and Gateway hosts write it. The namespace part is
/// required for Sidecars and optional for Gateways.
fn namespaced_host(r: &mut Report, field: &str, host: &str, namespace_required: bool) {
    let (ns, name) = match host.split_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None if namespace_required => {
            r.error(
                field,
                format!("{host:?} must have the form namespace/dnsName, e.g. ./reviews.prod.svc.cluster.local or istio-system/*"),
            );
            return;
        }
        None => (None, host),
    };
    if let Some(ns) = ns
        && !matches!(ns, "*" | "." | "~")
        && check_dns1123_label(ns).is_err()
    {
        r.error(field, format!("{host:?}: {ns:?} is not a namespace, \"*\", \".\" or \"~\""));
        return;
    }
    if let Err(message) = check_wildcard_host(name) {
        r.error(field, message);
    }
}

fn bind(r: &mut Report, field: &str, bind: &str) {
    if !bind.is_empty() && !bind.starts_with("unix://") {
        r.check(field, parse_ip(bind));
    }
}

fn default_endpoint(r: &mut Report, field: &str, endpoint: &str) {
    if let Some(socket) = endpoint.strip_prefix("unix://") {
        r.check(field, check_unix_socket(socket));
        return;
    }
    let ok = endpoint.rsplit_once(':').is_some_and(|(host, port)| {
        matches!(host, "127.0.0.1" | "0.0.0.0" | "[::1]" | "[::]")
            && crate::primitives::parse_port(port).is_ok()
    });
    if !ok {
        r.error(
            field,
            format!(
                "{endpoint:?} must be 127.0.0.1:PORT, 0.0.0.0:PORT, [::1]:PORT, [::]:PORT or unix:///path"
            ),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Gateway

pub(super) fn gateway(r: &mut Report, spec: &GatewaySpec) {
    if spec.servers.is_empty() {
        r.error("spec.servers", "at least one server is required");
    }
    let mut port_names: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, server) in spec.servers.iter().enumerate() {
        let path = format!("spec.servers[{i}]");
        let protocol = match &server.port {
            None => {
                r.error(format!("{path}.port"), "required");
                String::new()
            }
            Some(port) => {
                server_port(r, &format!("{path}.port"), port, true);
                if port.protocol.is_empty() {
                    r.error(format!("{path}.port.protocol"), "required");
                }
                if !port.name.is_empty()
                    && let Some(first) = port_names.insert(port.name.as_str(), i)
                {
                    r.error(
                        format!("{path}.port.name"),
                        format!("port name {:?} is already used by spec.servers[{first}]", port.name),
                    );
                }
                port.protocol.to_ascii_uppercase()
            }
        };
        if server.hosts.is_empty() {
            r.error(format!("{path}.hosts"), "at least one host is required");
        }
        for (j, host) in server.hosts.iter().enumerate() {
            namespaced_host(r, &format!("{path}.hosts[{j}]"), host, false);
        }
        bind(r, &format!("{path}.bind"), &server.bind);
        if !server.default_endpoint.is_empty() {
            r.warn(format!("{path}.defaultEndpoint"), "read but not enforced by Trellis's gateways");
        }
        match &server.tls {
            None if protocol == "HTTPS" || protocol == "TLS" => {
                r.error(format!("{path}.tls"), format!("required for protocol {protocol}"));
            }
            None => {}
            Some(tls) => server_tls(r, &format!("{path}.tls"), tls),
        }
    }
    labels(r, "spec.selector", &spec.selector);
}

fn server_tls(r: &mut Report, path: &str, tls: &ServerTlsSettings) {
    let has_files = !tls.server_certificate.is_empty() || !tls.private_key.is_empty();
    let has_credential = !tls.credential_name.is_empty() || !tls.credential_names.is_empty();
    if !tls.credential_name.is_empty() && !tls.credential_names.is_empty() {
        r.error(path, "credentialName and credentialNames cannot both be set");
    }
    match tls.mode {
        ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual => {
            if !has_credential && !has_files {
                r.error(
                    path,
                    format!(
                        "{} TLS needs credentialName, or serverCertificate and privateKey",
                        mode_name(tls.mode)
                    ),
                );
            } else if !has_credential && (tls.server_certificate.is_empty() || tls.private_key.is_empty()) {
                r.error(path, "serverCertificate and privateKey must be set together");
            }
            if tls.mode != ServerTlsMode::Simple && !has_credential && tls.ca_certificates.is_empty() {
                r.error(
                    format!("{path}.caCertificates"),
                    format!("required for {} TLS without credentialName", mode_name(tls.mode)),
                );
            }
        }
        ServerTlsMode::IstioMutual if has_files || has_credential || !tls.ca_certificates.is_empty() => {
            r.error(path, "ISTIO_MUTUAL uses the mesh's own certificates; certificate fields and credentialName must be empty");
        }
        _ => {}
    }
    if tls.min_protocol_version != TlsProtocol::TlsAuto
        && tls.max_protocol_version != TlsProtocol::TlsAuto
        && tls.min_protocol_version as u8 > tls.max_protocol_version as u8
    {
        r.error(path, "minProtocolVersion is newer than maxProtocolVersion");
    }
    gateway_tls_not_enforced(r, path, tls);
}

/// What Trellis's gateways read but do not do (trellisd logs the same when it translates).
/// A credentialName naming a Secret that does not exist cannot be known here: trellisd reports
/// it, and leaves that server out.
fn gateway_tls_not_enforced(r: &mut Report, path: &str, tls: &ServerTlsSettings) {
    if tls.mode == ServerTlsMode::IstioMutual
        && (tls.min_protocol_version != TlsProtocol::TlsAuto
            || tls.max_protocol_version != TlsProtocol::TlsAuto
            || !tls.cipher_suites.is_empty())
    {
        r.warn(
            path,
            "ISTIO_MUTUAL uses the mesh's TLS settings; minProtocolVersion, maxProtocolVersion and cipherSuites are ignored",
        );
    }
    if matches!(tls.mode, ServerTlsMode::AutoPassthrough | ServerTlsMode::OptionalMutual) {
        r.warn(
            format!("{path}.mode"),
            format!(
                "{} is not implemented by Trellis's gateways: the server is left out",
                mode_name(tls.mode)
            ),
        );
    }
    for (set, field) in [
        (!tls.credential_names.is_empty(), "credentialNames"),
        (!tls.subject_alt_names.is_empty(), "subjectAltNames"),
        (!tls.verify_certificate_spki.is_empty(), "verifyCertificateSpki"),
        (!tls.verify_certificate_hash.is_empty(), "verifyCertificateHash"),
        (!tls.ca_crl.is_empty(), "caCrl"),
    ] {
        if set {
            r.warn(format!("{path}.{field}"), "read but not enforced by Trellis's gateways");
        }
    }
    for (version, field) in
        [(tls.min_protocol_version, "minProtocolVersion"), (tls.max_protocol_version, "maxProtocolVersion")]
    {
        if matches!(version, TlsProtocol::Tlsv1_0 | TlsProtocol::Tlsv1_1)
            && tls.mode != ServerTlsMode::IstioMutual
        {
            r.warn(format!("{path}.{field}"), "TLS 1.0 and 1.1 are not offered (rustls): TLSV1_2 is used");
        }
    }
    if !tls.cipher_suites.is_empty() && tls.mode != ServerTlsMode::IstioMutual {
        r.warn(
            format!("{path}.cipherSuites"),
            "applies to TLS 1.2 only, and only to the ECDHE AES-GCM and CHACHA20 suites rustls has; the gateway logs and ignores others",
        );
    }
}

fn mode_name(mode: ServerTlsMode) -> &'static str {
    match mode {
        ServerTlsMode::Passthrough => "PASSTHROUGH",
        ServerTlsMode::Simple => "SIMPLE",
        ServerTlsMode::Mutual => "MUTUAL",
        ServerTlsMode::AutoPassthrough => "AUTO_PASSTHROUGH",
        ServerTlsMode::IstioMutual => "ISTIO_MUTUAL",
        ServerTlsMode::OptionalMutual => "OPTIONAL_MUTUAL",
    }
}
