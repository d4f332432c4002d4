//! VirtualServices → one virtual host per service port, and the cluster TCP on that port goes
//! to.
//!
//! Which VirtualService routes a host: Istio merges several only for gateways; for sidecars one
//! wins. Here the most specific host wins (an exact name over a wildcard, as Envoy picks virtual
//! host domains), then a VirtualService in the proxy's own namespace, then (namespace, name)
//! order — Istio takes the oldest, but creation times are not something every config source
//! has.
//!
//! Destinations that are not services visible to the proxy (or subsets no visible
//! DestinationRule defines) go to the black-hole cluster, so their share of a split fails as in
//! Istio; a route whose destinations all fail answers 503 directly.

use std::collections::{BTreeMap, BTreeSet};

use tracing::{debug, warn};
use trellis_api::networking::{
    Destination, Headers, HttpBody, HttpMatchRequest, HttpRoute, HttpRouteDestination, L4MatchAttributes,
    RouteDestination, StringMatch, TlsMatchAttributes, VirtualServiceSpec,
};
use trellis_xds::config as pb;

use super::hosts;
use super::names::{BLACK_HOLE_CLUSTER, cluster_name, resolve_host};
use super::objects::{self, Object};
use super::retries;
use super::services::{Service, ServicePort};
use super::values::{
    Unusable, duration, header_name, header_operations, merge_header_operations, string_match,
};
use super::visibility::View;
use crate::model::Model;

type Vs<'a> = Object<'a, VirtualServiceSpec>;

/// The VirtualServices a scope sees, with their hosts resolved.
pub struct VirtualServices<'a> {
    list: Vec<(Vs<'a>, Vec<String>)>,
    namespace: &'a str,
}

impl<'a> VirtualServices<'a> {
    /// Exported to the proxy's namespace, bound to sidecars (`gateways` empty or naming `mesh`)
    /// and admitted by the Sidecar's egress.
    pub fn visible(model: &'a Model, view: &View<'a>) -> VirtualServices<'a> {
        let default = view.mesh.default_virtual_service_export_to();
        let list = objects::virtual_services(model)
            .filter(|vs| applies_to_sidecars(&vs.spec.gateways))
            .filter(|vs| view.sees_exported(&vs.spec.export_to, &default, vs.namespace))
            .map(|vs| (vs, vs.spec.hosts.iter().map(|h| resolve_host(h, vs.namespace)).collect::<Vec<_>>()))
            .filter(|(vs, hosts)| view.admits_any(vs.namespace, hosts))
            .collect();
        VirtualServices { list, namespace: view.namespace }
    }

    /// Every host these VirtualServices route to; Istio shows them to a proxy whose Sidecar
    /// would hide them, so that the routes work.
    pub fn destination_hosts(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for (vs, _) in &self.list {
            let spec = vs.spec;
            let http = spec.http.iter().flat_map(|r| {
                let mirrors = r.mirror.iter().chain(r.mirrors.iter().map(|m| &m.destination));
                r.route.iter().map(|d| &d.destination).chain(mirrors)
            });
            let l4 = spec.tcp.iter().flat_map(|r| &r.route).chain(spec.tls.iter().flat_map(|r| &r.route));
            for d in http.chain(l4.map(|d| &d.destination)) {
                out.insert(resolve_host(&d.host, vs.namespace));
            }
        }
        out
    }

    /// The VirtualService that routes `host` (see the module comment for the order).
    pub fn for_host(&self, host: &str) -> Option<Vs<'a>> {
        self.list
            .iter()
            .filter_map(|(vs, patterns)| {
                let best = patterns
                    .iter()
                    .filter(|p| hosts::matches(p, host))
                    .map(|p| hosts::specificity(p))
                    .min()?;
                Some(((best, vs.namespace != self.namespace, vs.namespace, vs.name), *vs))
            })
            .min_by_key(|(key, _)| *key)
            .map(|(_, vs)| vs)
    }
}

/// A VirtualService's gateway reference as `namespace/name` (a bare name is in the
/// VirtualService's namespace).
pub fn qualified_gateway(reference: &str, namespace: &str) -> String {
    if reference.contains('/') { reference.to_owned() } else { format!("{namespace}/{reference}") }
}

fn applies_to_sidecars(gateways: &[String]) -> bool {
    gateways.is_empty() || gateways.iter().any(|g| g == "mesh")
}

/// What routing needs to know of the rest of the translation.
pub struct Registry<'a> {
    pub services: &'a BTreeMap<String, Service>,
    /// Names of the clusters that exist.
    pub clusters: &'a BTreeSet<String>,
    /// The proxy's namespace, for `sourceNamespace` matches.
    pub namespace: &'a str,
    pub default_retry: Option<pb::RetryPolicy>,
    /// `None` for sidecars; for a gateway's routes, the gateways (`namespace/name`) of the
    /// port being routed, which a match's `gateways` must name for it to apply.
    pub gateways: Option<&'a [String]>,
}

/// A route's `fault` as the proxy takes it: a percentage left unset is 0, as in Istio (the
/// legacy integer `percent` of a delay counts when `percentage` is not set). What validation
/// refuses (exponential delays, HTTP/2 errors, bad values) never gets here; should it, that
/// part is left out with a warning.
fn fault(
    f: &trellis_api::networking::HttpFaultInjection,
    vs: Vs<'_>,
    field: &str,
) -> Option<pb::FaultInjection> {
    let delay = f.delay.as_ref().and_then(|d| {
        let fixed = duration(d.fixed_delay.as_ref(), &vs, &format!("{field}.delay.fixedDelay"));
        if fixed.is_none() {
            warn!(resource = %vs, field = %format!("{field}.delay"), "no usable fixedDelay; delay left out");
        }
        let percent = d.percentage.as_ref().map_or(f64::from(d.percent.clamp(0, 100)), |p| p.value);
        fixed.map(|fixed| (fixed, percent))
    });
    let abort = f.abort.as_ref().and_then(|a| {
        use pb::fault_injection::Abort;
        let kind = if a.http_status != 0 {
            u32::try_from(a.http_status).ok().map(Abort::AbortHttpStatus)
        } else {
            trellis_api::primitives::grpc_status_code(&a.grpc_status).map(Abort::AbortGrpcStatus)
        };
        if kind.is_none() {
            warn!(resource = %vs, field = %format!("{field}.abort"), "no usable httpStatus or grpcStatus; abort left out");
        }
        kind.map(|kind| (kind, a.percentage.as_ref().map_or(0.0, |p| p.value)))
    });
    if delay.is_none() && abort.is_none() {
        return None;
    }
    let (delay, delay_percent) = delay.map_or((None, 0.0), |(d, p)| (Some(d.into()), p));
    let (abort, abort_percent) = abort.map_or((None, 0.0), |(a, p)| (Some(a), p));
    Some(pb::FaultInjection { delay, delay_percent, abort, abort_percent })
}

/// How one service port is routed.
pub struct PortRouting {
    pub virtual_host: pb::VirtualHost,
    /// Set for ports that may carry plain TCP (TCP, TLS, detected): the clusters its
    /// connections go to, with their weights (one cluster: weight 0).
    pub tcp_clusters: Option<Vec<(String, u32)>>,
}

impl Registry<'_> {
    /// The virtual host `name` of a service port (HTTP routes apply to ports that may carry
    /// HTTP; TCP and TLS ports get the default route, which they never use) and its TCP
    /// cluster.
    pub fn route_port(
        &self,
        service: &Service,
        port: &ServicePort,
        vs: Option<Vs<'_>>,
        name: String,
    ) -> PortRouting {
        let http_capable = !matches!(port.protocol, pb::Protocol::Tcp | pb::Protocol::Tls);
        let carries_tcp = matches!(port.protocol, pb::Protocol::Tcp | pb::Protocol::Tls | pb::Protocol::Auto);
        let mut routes: Vec<pb::Route> = match vs {
            Some(vs) if http_capable => vs
                .spec
                .http
                .iter()
                .enumerate()
                .filter_map(|(i, r)| self.http_route(vs, i, r, port.number))
                .collect(),
            _ => Vec::new(),
        };
        // Also when a VirtualService has no route for this port: Istio then routes it as if
        // there were none.
        if routes.is_empty() {
            routes.push(self.default_route(service, port));
        }
        let tcp_clusters = carries_tcp.then(|| self.tcp_clusters(service, port, vs));
        PortRouting { virtual_host: pb::VirtualHost { name, routes }, tcp_clusters }
    }

    /// A gateway-bound VirtualService's HTTP routes for a gateway port (see `gateways`).
    pub fn gateway_http_routes(&self, vs: Vs<'_>, port: u16) -> Vec<pb::Route> {
        vs.spec.http.iter().enumerate().filter_map(|(i, r)| self.http_route(vs, i, r, port)).collect()
    }

    /// Whether a match's `gateways` let it apply here: empty, it follows the VirtualService's;
    /// otherwise it must name `mesh` (sidecars) or one of this port's gateways (`name` in the
    /// VirtualService's namespace, or `namespace/name`).
    fn match_applies(&self, gateways: &[String], namespace: &str) -> bool {
        match self.gateways {
            None => applies_to_sidecars(gateways),
            Some(ours) => {
                gateways.is_empty()
                    || gateways.iter().any(|g| ours.iter().any(|o| *o == qualified_gateway(g, namespace)))
            }
        }
    }

    fn default_route(&self, service: &Service, port: &ServicePort) -> pb::Route {
        let cluster = cluster_name(port.number, "", &service.hostname);
        pb::Route {
            name: "default".into(),
            action: Some(forward(vec![(cluster, 0)])),
            retries: self.default_retry.clone(),
            ..Default::default()
        }
    }

    /// One HTTP route, or `None` when none of its matches can apply here or it is unusable.
    fn http_route(&self, vs: Vs<'_>, i: usize, route: &HttpRoute, port: u16) -> Option<pb::Route> {
        let field = format!("spec.http[{i}]");
        if route.delegate.is_some() {
            debug!(resource = %vs, field, "delegation applies to gateways only; route skipped");
            return None;
        }
        if route.cors_policy.is_some() {
            debug!(resource = %vs, field, "CORS is not implemented");
        }
        let matches: Vec<pb::RouteMatch> = route
            .matches
            .iter()
            .enumerate()
            .filter_map(|(j, m)| self.http_match(vs, &format!("{field}.match[{j}]"), m, port))
            .collect();
        if !route.matches.is_empty() && matches.is_empty() {
            return None;
        }
        let (request_headers, response_headers) = route_headers(vs, &field, route);
        let mut rewrite = route.rewrite.as_ref().map(|r| {
            if r.uri_regex_rewrite.is_some() {
                debug!(resource = %vs, field = %format!("{field}.rewrite.uriRegexRewrite"), "not implemented");
            }
            pb::Rewrite { uri: r.uri.clone(), authority: r.authority.clone() }
        });
        // Istio lets a header operation set `:authority`; it is the authority rewrite under
        // another name. As in Envoy, `rewrite.authority` wins when both are given.
        if let Some(authority) = authority_header(route) {
            let r = rewrite.get_or_insert_with(pb::Rewrite::default);
            if r.authority.is_empty() {
                r.authority = authority;
            }
        }
        let compiled = pb::Route {
            name: if route.name.is_empty() {
                format!("{}/{}.http[{i}]", vs.namespace, vs.name)
            } else {
                route.name.clone()
            },
            matches,
            action: Some(self.http_action(vs, &field, route, port)?),
            request_headers,
            response_headers,
            rewrite: rewrite.filter(|r| !r.uri.is_empty() || !r.authority.is_empty()),
            timeout: duration(route.timeout.as_ref(), &vs, &format!("{field}.timeout")).map(Into::into),
            retries: retries::for_route(
                route.retries.as_ref(),
                self.default_retry.as_ref(),
                &vs,
                &format!("{field}.retries"),
            ),
            fault: route.fault.as_ref().and_then(|f| fault(f, vs, &format!("{field}.fault"))),
            mirrors: self.mirrors(vs, &field, route, port),
        };
        // What the proxy would refuse costs this route only, not the proxy's whole config.
        if let Err(bad) = trellis_xds::uri::check_route(&compiled) {
            warn!(resource = %vs, field = %format!("{field}.{}", bad.field), "{bad}; route skipped");
            return None;
        }
        Some(compiled)
    }

    fn http_action(
        &self,
        vs: Vs<'_>,
        field: &str,
        route: &HttpRoute,
        port: u16,
    ) -> Option<pb::route::Action> {
        if let Some(r) = &route.redirect {
            if r.port != 0 || r.derive_port.is_some() {
                debug!(resource = %vs, field = %format!("{field}.redirect.port"), "redirect ports are not implemented");
            }
            return Some(pb::route::Action::Redirect(pb::Redirect {
                uri: r.uri.clone(),
                authority: r.authority.clone(),
                scheme: r.scheme.clone(),
                response_code: r.redirect_code,
            }));
        }
        if let Some(d) = &route.direct_response {
            if !(100..=599).contains(&d.status) {
                warn!(resource = %vs, field = %format!("{field}.directResponse.status"), status = d.status, "not an HTTP status; route skipped");
                return None;
            }
            let body = d.body.as_ref().map(|b| body_text(b, vs, field)).unwrap_or_default();
            return Some(pb::route::Action::DirectResponse(pb::DirectResponse { status: d.status, body }));
        }
        if route.route.is_empty() {
            warn!(resource = %vs, field, "neither route, redirect nor directResponse; route skipped");
            return None;
        }
        Some(self.split(vs, field, &route.route, port))
    }

    /// A match for this port, or `None` when it cannot match here: it names another port, a
    /// gateway, another source namespace, or conditions the proxy cannot evaluate.
    fn http_match(&self, vs: Vs<'_>, field: &str, m: &HttpMatchRequest, port: u16) -> Option<pb::RouteMatch> {
        if (m.port != 0 && m.port != u32::from(port))
            || !self.match_applies(&m.gateways, vs.namespace)
            || (!m.source_namespace.is_empty() && m.source_namespace != self.namespace)
        {
            return None;
        }
        // Source labels differ between proxies that share a translation; authority and scheme
        // have no place in the proxy's match.
        if !m.source_labels.is_empty() || m.authority.is_some() || m.scheme.is_some() {
            debug!(resource = %vs, field, "sourceLabels, authority and scheme matches are not implemented; match skipped");
            return None;
        }
        let single = |s: Option<&StringMatch>, ignore_case, f: &str| match s {
            Some(s) => string_match(s, ignore_case, &vs, &format!("{field}.{f}")),
            None => Ok(None),
        };
        let headers = |map: &BTreeMap<String, StringMatch>, f: &str| {
            map.iter()
                .map(|(name, value)| {
                    let hfield = format!("{field}.{f}.{name}");
                    if trellis_api::networking::jwt_routing_claim(name).is_some() {
                        // Dropping only the condition would send every request down the route.
                        warn!(resource = %vs, field = %hfield, "JWT-claim matches are not enforced: Trellis does not route on JWT claims yet; match skipped");
                        return Err(Unusable);
                    }
                    let name = header_name(name, &vs, &hfield).ok_or(Unusable)?;
                    Ok(pb::HeaderMatch { name, value: string_match(value, false, &vs, &hfield)? })
                })
                .collect::<Result<Vec<_>, Unusable>>()
        };
        let query_params = m
            .query_params
            .iter()
            .map(|(name, value)| {
                let value = string_match(value, false, &vs, &format!("{field}.queryParams.{name}"))?;
                // Istio reads `exact: ""` as "present".
                let value = value.filter(|v| v.kind != Some(pb::string_match::Kind::Exact(String::new())));
                Ok(pb::QueryMatch { name: name.clone(), value })
            })
            .collect::<Result<Vec<_>, Unusable>>();
        Some(pb::RouteMatch {
            path: single(m.uri.as_ref(), m.ignore_uri_case, "uri").ok()?,
            method: single(m.method.as_ref(), false, "method").ok()?,
            headers: headers(&m.headers, "headers").ok()?,
            query_params: query_params.ok()?,
            port: 0,
            without_headers: headers(&m.without_headers, "withoutHeaders").ok()?,
        })
    }

    /// Weighted destinations. Istio drops zero weights from a split; a split of only zeros is
    /// read as even.
    fn split(
        &self,
        vs: Vs<'_>,
        field: &str,
        destinations: &[HttpRouteDestination],
        port: u16,
    ) -> pb::route::Action {
        let weight = |d: &HttpRouteDestination| u32::try_from(d.weight).unwrap_or(0);
        let all_zero = destinations.iter().all(|d| weight(d) == 0);
        let mut clusters = Vec::new();
        let mut failed = 0;
        for (j, d) in destinations.iter().enumerate() {
            let weight = match (destinations.len(), all_zero) {
                (1, _) => 0,
                (_, true) => 1,
                _ => weight(d),
            };
            if destinations.len() > 1 && weight == 0 {
                continue;
            }
            let cluster =
                self.destination(vs, &format!("{field}.route[{j}].destination"), &d.destination, port);
            failed += usize::from(cluster == BLACK_HOLE_CLUSTER);
            clusters.push((cluster, weight));
        }
        if failed == clusters.len() {
            return pb::route::Action::DirectResponse(pb::DirectResponse {
                status: 503,
                body: String::new(),
            });
        }
        forward(clusters)
    }

    /// A route's `mirror` (with `mirrorPercentage`, or the legacy `mirrorPercent`) and
    /// `mirrors`, each with its share; unset shares are Istio's 100 %. A mirror whose
    /// destination this proxy does not see, or whose share is not a percentage, is left out
    /// with a warning naming it (validation refuses the latter first).
    fn mirrors(&self, vs: Vs<'_>, field: &str, route: &HttpRoute, port: u16) -> Vec<pb::Mirror> {
        let single = route.mirror.as_ref().map(|d| {
            let percent = match (&route.mirror_percentage, route.mirror_percent) {
                (Some(p), _) => p.value,
                (None, Some(legacy)) => f64::from(legacy),
                (None, None) => 100.0,
            };
            (format!("{field}.mirror"), d, percent)
        });
        let listed = route.mirrors.iter().enumerate().map(|(i, m)| {
            (
                format!("{field}.mirrors[{i}].destination"),
                &m.destination,
                m.percentage.as_ref().map_or(100.0, |p| p.value),
            )
        });
        single
            .into_iter()
            .chain(listed)
            .filter_map(|(at, destination, percent)| {
                if !(0.0..=100.0).contains(&percent) {
                    warn!(resource = %vs, field = %at, percent, "not a percentage; mirror left out");
                    return None;
                }
                match self.resolve(destination, vs.namespace, port) {
                    Ok(cluster) => Some(pb::Mirror { cluster, percent }),
                    Err(reason) => {
                        warn!(resource = %vs, field = %at, %reason, "unknown mirror destination; mirror left out");
                        None
                    }
                }
            })
            .collect()
    }

    /// The cluster a destination names, or the black hole when it names nothing this proxy
    /// sees.
    fn destination(&self, vs: Vs<'_>, field: &str, d: &Destination, routed_port: u16) -> String {
        self.resolve(d, vs.namespace, routed_port).unwrap_or_else(|reason| {
            if d.host.contains('*') {
                // Istio accepts a wildcard destination; without a ServiceEntry of that very host
                // there is no cluster to send it to.
                warn!(resource = %vs, field = %format!("{field}.host"), host = %d.host, %reason, "wildcard destination host not enforced: Trellis cannot route to it; its traffic fails");
            } else {
                warn!(resource = %vs, field, %reason, "unknown destination; its traffic fails");
            }
            BLACK_HOLE_CLUSTER.to_owned()
        })
    }

    /// Without a port, a destination means a single-port service's port, else the port being
    /// routed.
    fn resolve(&self, d: &Destination, namespace: &str, routed_port: u16) -> Result<String, String> {
        let host = resolve_host(&d.host, namespace);
        let service = self.services.get(&host).ok_or_else(|| format!("no service {host} visible here"))?;
        let port = match d.port.as_ref().map(|p| p.number).filter(|n| *n != 0) {
            Some(n) => u16::try_from(n).map_err(|_| format!("{n} is not a port"))?,
            None => match service.ports.as_slice() {
                [only] => only.number,
                _ => routed_port,
            },
        };
        service.port(port).ok_or_else(|| format!("{host} has no port {port}"))?;
        let name = cluster_name(port, &d.subset, &host);
        if !self.clusters.contains(&name) {
            return Err(format!("no DestinationRule visible here defines subset {:?} of {host}", d.subset));
        }
        Ok(name)
    }

    /// TCP on a port goes to the destinations of the first matching `tls` route (TLS ports) or
    /// `tcp` route, split by weight as HTTP routes are (zero weights dropped, all zero read as
    /// even; one destination: weight 0); a destination this proxy does not see gets the black
    /// hole, so its share of the connections is closed.
    fn tcp_clusters(&self, service: &Service, port: &ServicePort, vs: Option<Vs<'_>>) -> Vec<(String, u32)> {
        let default = vec![(cluster_name(port.number, "", &service.hostname), 0)];
        let Some(vs) = vs else { return default };
        let tls_routes = if port.protocol == pb::Protocol::Tls { vs.spec.tls.as_slice() } else { &[] };
        let tls = tls_routes.iter().enumerate().find(|(_, r)| {
            r.matches.is_empty() || r.matches.iter().any(|m| self.tls_match(vs, m, service, port.number))
        });
        let chosen = match tls {
            Some((i, r)) => Some((format!("spec.tls[{i}]"), &r.route)),
            None => vs
                .spec
                .tcp
                .iter()
                .enumerate()
                .find(|(_, r)| {
                    r.matches.is_empty() || r.matches.iter().any(|m| self.tcp_match(m, port.number))
                })
                .map(|(i, r)| (format!("spec.tcp[{i}]"), &r.route)),
        };
        let Some((field, route)) = chosen else { return default };
        if route.is_empty() {
            warn!(resource = %vs, field, "no destination; using the service's cluster");
            return default;
        }
        self.l4_split(vs, &field, route, port.number)
    }

    /// A gateway's `tls` or `tcp` route destinations, weighted as for sidecars (zero weights
    /// dropped, all zero read as even, one destination: weight 0).
    pub fn gateway_l4_split(
        &self,
        vs: Vs<'_>,
        field: &str,
        route: &[RouteDestination],
        port: u16,
    ) -> Vec<pb::WeightedCluster> {
        let split = self.l4_split(vs, field, route, port);
        split.into_iter().map(|(cluster, weight)| pb::WeightedCluster { cluster, weight }).collect()
    }

    /// Route destinations as (cluster, weight): zero weights dropped, all zero read as even,
    /// one destination: weight 0.
    fn l4_split(&self, vs: Vs<'_>, field: &str, route: &[RouteDestination], port: u16) -> Vec<(String, u32)> {
        let weight = |d: &RouteDestination| u32::try_from(d.weight).unwrap_or(0);
        let all_zero = route.iter().all(|d| weight(d) == 0);
        route
            .iter()
            .enumerate()
            .filter_map(|(j, d)| {
                let weight = match (route.len(), all_zero) {
                    (1, _) => 0,
                    (_, true) => 1,
                    _ => weight(d),
                };
                if route.len() > 1 && weight == 0 {
                    return None;
                }
                let at = format!("{field}.route[{j}].destination");
                Some((self.destination(vs, &at, &d.destination, port), weight))
            })
            .collect()
    }

    /// Whether an L4 match of a gateway-bound VirtualService applies to this gateway port.
    pub fn gateway_l4_applies(&self, vs: Vs<'_>, port: u32, gateways: &[String], routed_port: u16) -> bool {
        (port == 0 || port == u32::from(routed_port)) && self.match_applies(gateways, vs.namespace)
    }

    fn l4_applies(&self, port: u32, gateways: &[String], source_namespace: &str, routed_port: u16) -> bool {
        (port == 0 || port == u32::from(routed_port))
            && applies_to_sidecars(gateways)
            && (source_namespace.is_empty() || source_namespace == self.namespace)
    }

    fn tls_match(&self, vs: Vs<'_>, m: &TlsMatchAttributes, service: &Service, port: u16) -> bool {
        self.l4_applies(m.port, &m.gateways, &m.source_namespace, port)
            && m.source_labels.is_empty()
            && m.destination_subnets.is_empty()
            && (m.sni_hosts.is_empty()
                || m.sni_hosts
                    .iter()
                    .any(|h| hosts::matches(&resolve_host(h, vs.namespace), &service.hostname)))
    }

    fn tcp_match(&self, m: &L4MatchAttributes, port: u16) -> bool {
        self.l4_applies(m.port, &m.gateways, &m.source_namespace, port)
            && m.source_labels.is_empty()
            && m.destination_subnets.is_empty()
            && m.source_subnet.is_empty()
    }
}

/// The `:authority` a route's request header operations set (`set` before `add`; the route's
/// own before its single destination's, which Trellis merges into the route).
fn authority_header(route: &HttpRoute) -> Option<String> {
    let single = match route.route.as_slice() {
        [only] => only.headers.as_ref(),
        _ => None,
    };
    [single, route.headers.as_ref()]
        .into_iter()
        .flatten()
        .filter_map(|h| h.request.as_ref())
        .flat_map(|ops| ops.set.iter().chain(ops.add.iter()))
        .find(|(name, _)| name.eq_ignore_ascii_case(":authority"))
        .map(|(_, value)| value.clone())
}

/// The route's header edits, and a lone destination's after them; the proxy has no place for
/// the headers of one destination among several.
fn route_headers(
    vs: Vs<'_>,
    field: &str,
    route: &HttpRoute,
) -> (Option<pb::HeaderOperations>, Option<pb::HeaderOperations>) {
    let convert = |headers: Option<&Headers>, at: &str| {
        let ops = |o: Option<&_>, what: &str| o.map(|o| header_operations(o, &vs, &format!("{at}.{what}")));
        (
            ops(headers.and_then(|h| h.request.as_ref()), "request"),
            ops(headers.and_then(|h| h.response.as_ref()), "response"),
        )
    };
    let (request, response) = convert(route.headers.as_ref(), &format!("{field}.headers"));
    match route.route.as_slice() {
        [only] => {
            let (d_request, d_response) =
                convert(only.headers.as_ref(), &format!("{field}.route[0].headers"));
            (merge_header_operations(request, d_request), merge_header_operations(response, d_response))
        }
        several => {
            if several.iter().any(|d| d.headers.is_some()) {
                debug!(resource = %vs, field, "per-destination headers in a split are not implemented");
            }
            (request, response)
        }
    }
}

fn forward(clusters: Vec<(String, u32)>) -> pb::route::Action {
    pb::route::Action::Forward(pb::Forward {
        clusters: clusters
            .into_iter()
            .map(|(cluster, weight)| pb::WeightedCluster { cluster, weight })
            .collect(),
    })
}

/// A direct response body: text as is, bytes (base64) when they are text.
fn body_text(body: &HttpBody, vs: Vs<'_>, field: &str) -> String {
    use base64::Engine;
    if let Some(text) = &body.string {
        return text.clone();
    }
    let Some(encoded) = &body.bytes else { return String::new() };
    match base64::engine::general_purpose::STANDARD.decode(encoded).map(String::from_utf8) {
        Ok(Ok(text)) => text,
        _ => {
            warn!(resource = %vs, field = %format!("{field}.directResponse.body.bytes"), "not base64 of UTF-8 text; empty body");
            String::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::test_support::*;
    use super::*;

    fn reviews_routes(yaml: &str) -> Vec<pb::Route> {
        let config = config(&bookinfo(&format!("{REVIEWS_SUBSETS}\n---\n{yaml}")), "shop");
        routes(&config, REVIEWS_VH).to_vec()
    }

    fn subset(name: &str) -> String {
        format!("outbound|9080|{name}|{REVIEWS}")
    }

    fn exact(value: &str) -> Option<pb::StringMatch> {
        Some(pb::StringMatch { kind: Some(pb::string_match::Kind::Exact(value.into())) })
    }

    fn prefix(value: &str) -> Option<pb::StringMatch> {
        Some(pb::StringMatch { kind: Some(pb::string_match::Kind::Prefix(value.into())) })
    }

    const VS: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: { name: reviews, namespace: shop }\n";

    #[test]
    fn a_weighted_split_goes_to_subset_clusters() {
        let routes = reviews_routes(&format!(
            "{VS}spec:
  hosts: [reviews]
  http:
    - route:
        - {{ destination: {{ host: reviews, subset: v1 }}, weight: 90 }}
        - {{ destination: {{ host: reviews, subset: v2 }}, weight: 10 }}
"
        ));
        assert_eq!(routes.len(), 1);
        assert_eq!(forwards(&routes[0]), [(subset("v1").as_str(), 90), (subset("v2").as_str(), 10)]);
        assert_eq!(routes[0].name, "shop/reviews.http[0]", "unnamed routes are named after their place");
    }

    #[test]
    fn a_header_match_routes_first_and_the_rest_falls_through() {
        let routes = reviews_routes(&format!(
            "{VS}spec:
  hosts: [reviews.shop.svc.cluster.local]
  http:
    - name: jason
      match: [{{ headers: {{ end-user: {{ exact: jason }} }} }}]
      route: [{{ destination: {{ host: reviews, subset: v2 }} }}]
    - route: [{{ destination: {{ host: reviews, subset: v1 }} }}]
"
        ));
        assert_eq!(routes[0].name, "jason");
        assert_eq!(
            routes[0].matches,
            [pb::RouteMatch {
                headers: vec![pb::HeaderMatch { name: "end-user".into(), value: exact("jason") }],
                ..Default::default()
            }]
        );
        assert_eq!(forwards(&routes[0]), [(subset("v2").as_str(), 0)]);
        assert!(routes[1].matches.is_empty());
        assert_eq!(forwards(&routes[1]), [(subset("v1").as_str(), 0)]);
    }

    #[test]
    fn faults_reach_the_proxy_with_unset_percentages_as_zero() {
        let routes = reviews_routes(&format!(
            "{VS}spec:
  hosts: [reviews]
  http:
    - match: [{{ uri: {{ prefix: /a }} }}]
      fault: {{ delay: {{ fixedDelay: 2s, percentage: {{ value: 12.5 }} }}, abort: {{ httpStatus: 503, percentage: {{ value: 30 }} }} }}
      route: [{{ destination: {{ host: reviews }} }}]
    - match: [{{ uri: {{ prefix: /b }} }}]
      fault: {{ abort: {{ grpcStatus: UNAVAILABLE }} }}
      route: [{{ destination: {{ host: reviews }} }}]
    - match: [{{ uri: {{ prefix: /c }} }}]
      fault: {{ delay: {{ fixedDelay: 1s, percent: 40 }} }}
      route: [{{ destination: {{ host: reviews }} }}]
    - route: [{{ destination: {{ host: reviews }} }}]
"
        ));
        use pb::fault_injection::Abort;
        assert_eq!(
            routes[0].fault,
            Some(pb::FaultInjection {
                delay: Some(std::time::Duration::from_secs(2).into()),
                delay_percent: 12.5,
                abort: Some(Abort::AbortHttpStatus(503)),
                abort_percent: 30.0,
            })
        );
        assert_eq!(
            routes[1].fault,
            Some(pb::FaultInjection { abort: Some(Abort::AbortGrpcStatus(14)), ..Default::default() }),
            "percentage unset: 0, as in Istio"
        );
        assert_eq!(
            routes[2].fault.as_ref().map(|f| f.delay_percent),
            Some(40.0),
            "the legacy integer percent"
        );
        assert_eq!(routes[3].fault, None);
    }

    #[test]
    fn mirrors_reach_the_proxy_with_istios_default_share_and_unknown_ones_are_left_out() {
        let routes = reviews_routes(&format!(
            "{VS}spec:
  hosts: [reviews]
  http:
    - match: [{{ uri: {{ prefix: /a }} }}]
      mirror: {{ host: reviews, subset: v2 }}
      mirrorPercentage: {{ value: 12.5 }}
      route: [{{ destination: {{ host: reviews, subset: v1 }} }}]
    - match: [{{ uri: {{ prefix: /b }} }}]
      mirror: {{ host: ratings }}
      mirrorPercent: 30
      route: [{{ destination: {{ host: reviews }} }}]
    - match: [{{ uri: {{ prefix: /c }} }}]
      mirrors:
        - {{ destination: {{ host: reviews, subset: v2 }} }}
        - {{ destination: {{ host: ratings }}, percentage: {{ value: 5 }} }}
        - {{ destination: {{ host: nowhere.example.com }} }}
        - {{ destination: {{ host: reviews, subset: v9 }} }}
      route: [{{ destination: {{ host: reviews }} }}]
    - route: [{{ destination: {{ host: reviews }} }}]
"
        ));
        let mirror = |cluster: &str, percent: f64| pb::Mirror { cluster: cluster.into(), percent };
        let ratings = "outbound|9080||ratings.shop.svc.cluster.local";
        assert_eq!(routes[0].mirrors, [mirror(&subset("v2"), 12.5)]);
        assert_eq!(routes[1].mirrors, [mirror(ratings, 30.0)], "the legacy integer mirrorPercent");
        assert_eq!(
            routes[2].mirrors,
            [mirror(&subset("v2"), 100.0), mirror(ratings, 5.0)],
            "unset shares are 100; unknown hosts and subsets are left out, not black-holed"
        );
        assert!(routes[3].mirrors.is_empty());
    }

    #[test]
    fn timeouts_and_retries_are_kept_and_routes_without_retries_get_istios() {
        let routes = reviews_routes(&format!(
            "{VS}spec:
  hosts: [reviews]
  http:
    - match: [{{ uri: {{ prefix: /slow }} }}]
      timeout: 3s
      retries: {{ attempts: 3, perTryTimeout: 1s, retryOn: \"5xx,connect-failure\" }}
      route: [{{ destination: {{ host: reviews }} }}]
    - match: [{{ uri: {{ prefix: /once }} }}]
      retries: {{ attempts: 0 }}
      route: [{{ destination: {{ host: reviews }} }}]
    - route: [{{ destination: {{ host: reviews }} }}]
"
        ));
        assert_eq!(routes[0].timeout, Some(Duration::from_secs(3).into()));
        let retries = routes[0].retries.clone().unwrap();
        assert_eq!(retries.attempts, 3);
        assert_eq!(retries.per_try_timeout, Some(Duration::from_secs(1).into()));
        assert_eq!(retries.retry_on, ["5xx", "connect-failure"]);
        assert_eq!(routes[1].retries, None, "zero attempts: no retries");
        assert_eq!(routes[2].timeout, None);
        assert_eq!(routes[2].retries.as_ref().map(|r| (r.attempts, r.retry_on.len())), Some((2, 0)));
        assert_eq!(forwards(&routes[2]), [(format!("outbound|9080||{REVIEWS}").as_str(), 0)]);
    }

    #[test]
    fn without_a_virtual_service_a_port_gets_one_default_route() {
        let config = config(&bookinfo(""), "shop");
        let routes = routes(&config, "ratings.shop.svc.cluster.local:9080");
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].name, "default");
        assert!(routes[0].matches.is_empty());
        assert_eq!(forwards(&routes[0]), [("outbound|9080||ratings.shop.svc.cluster.local", 0)]);
        assert_eq!(routes[0].retries.as_ref().map(|r| r.attempts), Some(2));
        let port = &service(&config, "ratings.shop.svc.cluster.local").ports[0];
        assert_eq!(port.virtual_host, "ratings.shop.svc.cluster.local:9080");
        assert_eq!(port.tcp_cluster, "", "HTTP ports carry no TCP");
    }

    #[test]
    fn a_wildcard_destination_fails_its_route() {
        // Istio accepts it; with no ServiceEntry of that very host there is no cluster.
        let routes = reviews_routes(&format!(
            "{VS}spec:
  hosts: [reviews]
  http:
    - match: [{{ uri: {{ prefix: /eu }} }}]
      route: [{{ destination: {{ host: '*.eu.bookinfo.com' }} }}]
    - route: [{{ destination: {{ host: reviews, subset: v1 }} }}]
"
        ));
        assert_eq!(routes.len(), 2, "{routes:#?}");
        assert_eq!(
            routes[0].action,
            Some(pb::route::Action::DirectResponse(pb::DirectResponse { status: 503, body: String::new() }))
        );
        assert_eq!(forwards(&routes[1]), [(subset("v1").as_str(), 0)]);
    }

    #[test]
    fn a_gateways_jwt_claim_match_is_dropped_not_ignored() {
        // The proxy cannot test a claim: the match never applies, rather than applying to every
        // request.
        let m = model(
            r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: { name: public, namespace: edge }
spec:
  selector: { istio: ingressgateway }
  servers: [{ port: { number: 80, name: http, protocol: HTTP }, hosts: ["*.example.com"] }]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: web, namespace: shop }
spec:
  hosts: [web.shop.internal]
  ports: [{ number: 80, name: http, protocol: HTTP }]
  resolution: STATIC
  endpoints: [{ address: 10.0.0.1 }]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: web, namespace: shop }
spec:
  hosts: [web.example.com]
  gateways: [edge/public]
  http:
    - name: admins
      match: [{ headers: { "@request.auth.claims.group": { exact: admin } } }]
      route: [{ destination: { host: web.shop.internal } }]
    - name: everyone
      route: [{ destination: { host: web.shop.internal } }]
"#,
        );
        let proxy = super::super::ProxyIdentity {
            namespace: "istio-system".into(),
            labels: labels_of(&[("istio", "ingressgateway")]),
            ..Default::default()
        };
        let config = super::super::translate(
            &m,
            &super::super::scope_of_router(&m, &proxy, &Default::default(), true),
        );
        let names: Vec<&str> = config
            .virtual_hosts
            .iter()
            .filter(|vh| vh.name.contains("web.example.com"))
            .flat_map(|vh| vh.routes.iter().map(|r| r.name.as_str()))
            .collect();
        assert_eq!(names, ["everyone"], "{:#?}", config.virtual_hosts);
    }

    #[test]
    fn unknown_destinations_answer_503_or_fail_their_share() {
        let config = config(
            &bookinfo(&format!(
                "{REVIEWS_SUBSETS}\n---\n{VS}spec:
  hosts: [reviews]
  http:
    - match: [{{ uri: {{ prefix: /gone }} }}]
      route: [{{ destination: {{ host: nowhere.example.com }} }}]
    - match: [{{ uri: {{ prefix: /canary }} }}]
      route:
        - {{ destination: {{ host: reviews, subset: v1 }}, weight: 50 }}
        - {{ destination: {{ host: reviews, subset: v9 }}, weight: 50 }}
    - route: [{{ destination: {{ host: ratings }} }}]
"
            )),
            "shop",
        );
        let routes = routes(&config, REVIEWS_VH);
        assert_eq!(
            routes[0].action,
            Some(pb::route::Action::DirectResponse(pb::DirectResponse { status: 503, body: String::new() }))
        );
        assert_eq!(forwards(&routes[1]), [(subset("v1").as_str(), 50), (BLACK_HOLE_CLUSTER, 50)]);
        assert!(cluster(&config, BLACK_HOLE_CLUSTER).subset.is_empty());
        assert!(endpoints(&config, BLACK_HOLE_CLUSTER).is_empty());
        assert_eq!(forwards(&routes[2]), [("outbound|9080||ratings.shop.svc.cluster.local", 0)]);
    }

    #[test]
    fn matches_and_actions_convert_field_by_field() {
        let routes = reviews_routes(&format!(
            "{VS}spec:
  hosts: [reviews]
  http:
    - name: old
      match: [{{ uri: {{ exact: /v0 }}, ignoreUriCase: true }}]
      redirect: {{ uri: /v1, authority: reviews.shop, redirectCode: 308 }}
    - name: teapot
      match:
        - method: {{ exact: BREW }}
          queryParams: {{ pot: {{ exact: \"\" }}, kind: {{ regex: \"tea|coffee\" }} }}
          withoutHeaders: {{ x-milk: {{}} }}
      directResponse: {{ status: 418, body: {{ string: short and stout }} }}
    - name: elsewhere
      match:
        - {{ uri: {{ prefix: /a }}, port: 8080 }}
        - {{ uri: {{ prefix: /b }}, gateways: [ingress] }}
        - {{ uri: {{ prefix: /c }}, sourceNamespace: web }}
      route: [{{ destination: {{ host: reviews }} }}]
    - name: api
      match: [{{ uri: {{ prefix: /a }}, port: 9080 }}, {{ uri: {{ prefix: /c }}, sourceNamespace: shop }}]
      rewrite: {{ uri: /api/ }}
      headers:
        request: {{ set: {{ x-routed: trellis }}, remove: [cookie] }}
        response: {{ add: {{ x-served-by: reviews }} }}
      route:
        - destination: {{ host: reviews }}
          headers: {{ request: {{ set: {{ x-destination: reviews }} }} }}
"
        ));
        let names: Vec<_> = routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            ["old", "teapot", "api"],
            "no match of `elsewhere` can apply to this proxy and port"
        );

        let regex = Some(pb::StringMatch { kind: Some(pb::string_match::Kind::Regex("(?i)/v0".into())) });
        assert_eq!(routes[0].matches[0].path, regex);
        assert_eq!(
            routes[0].action,
            Some(pb::route::Action::Redirect(pb::Redirect {
                uri: "/v1".into(),
                authority: "reviews.shop".into(),
                scheme: String::new(),
                response_code: 308,
            }))
        );

        let teapot = &routes[1].matches[0];
        assert_eq!(teapot.method, exact("BREW"));
        let regex = Some(pb::StringMatch { kind: Some(pb::string_match::Kind::Regex("tea|coffee".into())) });
        assert_eq!(
            teapot.query_params,
            [
                pb::QueryMatch { name: "kind".into(), value: regex },
                pb::QueryMatch { name: "pot".into(), value: None }
            ]
        );
        assert_eq!(teapot.without_headers, [pb::HeaderMatch { name: "x-milk".into(), value: None }]);
        assert_eq!(
            routes[1].action,
            Some(pb::route::Action::DirectResponse(pb::DirectResponse {
                status: 418,
                body: "short and stout".into()
            }))
        );

        let api = &routes[2];
        assert_eq!(api.matches.len(), 2);
        assert_eq!((api.matches[0].path.clone(), api.matches[0].port), (prefix("/a"), 0));
        assert_eq!(api.rewrite, Some(pb::Rewrite { uri: "/api/".into(), authority: String::new() }));
        let request = api.request_headers.clone().unwrap();
        assert_eq!(request.set, labels_of(&[("x-routed", "trellis"), ("x-destination", "reviews")]));
        assert_eq!(request.remove, ["cookie"]);
        assert_eq!(api.response_headers.clone().unwrap().add, labels_of(&[("x-served-by", "reviews")]));
    }

    #[test]
    fn an_authority_header_operation_is_the_authority_rewrite() {
        let routes = reviews_routes(&format!(
            "{VS}spec:
  hosts: [reviews]
  http:
    - name: by-header
      match: [{{ uri: {{ prefix: /a }} }}]
      headers: {{ request: {{ set: {{ \":authority\": reviews.shop, x-env: prod }} }} }}
      route: [{{ destination: {{ host: reviews }} }}]
    - name: on-the-destination
      match: [{{ uri: {{ prefix: /b }} }}]
      route: [{{ destination: {{ host: reviews }}, headers: {{ request: {{ add: {{ \":authority\": b.shop }} }} }} }}]
    - name: rewrite-wins
      headers: {{ request: {{ set: {{ \":authority\": header.shop }} }} }}
      rewrite: {{ authority: rewrite.shop }}
      route: [{{ destination: {{ host: reviews }} }}]
"
        ));
        let authority = |i: usize| routes[i].rewrite.as_ref().map(|r| r.authority.as_str());
        assert_eq!(
            [authority(0), authority(1), authority(2)],
            [Some("reviews.shop"), Some("b.shop"), Some("rewrite.shop")]
        );
        // The pseudo-header is not passed on as a header of its own.
        let set = routes[0].request_headers.as_ref().map(|h| h.set.clone()).unwrap_or_default();
        assert_eq!(set.keys().map(String::as_str).collect::<Vec<_>>(), ["x-env"]);
    }

    #[test]
    fn routes_with_a_rewrite_or_redirect_the_proxy_would_refuse_are_skipped() {
        let routes = reviews_routes(&format!(
            "{VS}spec:
  hosts: [reviews]
  http:
    - name: spaced-rewrite
      match: [{{ uri: {{ prefix: /a }} }}]
      rewrite: {{ uri: \"/a b\" }}
      route: [{{ destination: {{ host: reviews }} }}]
    - name: relative-redirect
      match: [{{ uri: {{ prefix: /b }} }}]
      redirect: {{ uri: elsewhere }}
    - name: bad-scheme
      match: [{{ uri: {{ prefix: /c }} }}]
      redirect: {{ uri: /c, scheme: \"ht tp\" }}
    - name: fine
      rewrite: {{ uri: /, authority: \"reviews.shop:9080\" }}
      route: [{{ destination: {{ host: reviews }} }}]
"
        ));
        let names: Vec<_> = routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["fine"]);
    }

    #[test]
    fn the_most_specific_virtual_service_wins_then_the_proxys_namespace() {
        let vs = |ns: &str, name: &str, host: &str, subset: &str| {
            format!(
                "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: {name}, namespace: {ns} }}
spec:
  hosts: [\"{host}\"]
  http: [{{ route: [{{ destination: {{ host: {REVIEWS}, subset: {subset} }} }}] }}]
---
"
            )
        };
        let yaml = [
            REVIEWS_SUBSETS.to_owned() + "---\n",
            vs("shop", "all", "*.shop.svc.cluster.local", "v3"),
            vs("web", "reviews-from-web", REVIEWS, "v2"),
            vs("shop", "reviews", "reviews", "v1"),
        ]
        .concat();
        let m = bookinfo(&yaml);
        let first = |config: &pb::ProxyConfig, vh: &str| forwards(&routes(config, vh)[0])[0].0.to_owned();
        let shop = config(&m, "shop");
        assert_eq!(first(&shop, REVIEWS_VH), subset("v1"), "exact host, proxy's namespace");
        assert_eq!(
            first(&shop, "ratings.shop.svc.cluster.local:9080"),
            subset("v3"),
            "the wildcard routes hosts without an exact VirtualService"
        );
        let web = config(&m, "web");
        assert_eq!(first(&web, REVIEWS_VH), subset("v2"), "exact host, proxy's namespace");
        let other = config(&m, "other");
        assert_eq!(first(&other, REVIEWS_VH), subset("v1"), "exact host, then namespace order");
    }

    #[test]
    fn tcp_routes_pick_the_ports_tcp_cluster() {
        let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: db, namespace: shop }
spec:
  hosts: [db.shop.internal]
  resolution: STATIC
  ports: [{ number: 5432, name: tcp-postgres, protocol: TCP }, { number: 5433, name: tcp-admin, protocol: TCP }]
  endpoints:
    - { address: 10.2.0.1, labels: { role: primary } }
    - { address: 10.2.0.2, labels: { role: replica } }
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: db, namespace: shop }
spec:
  host: db.shop.internal
  subsets: [{ name: primary, labels: { role: primary } }]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: db, namespace: shop }
spec:
  hosts: [db.shop.internal]
  tcp:
    - match: [{ port: 5432 }]
      route: [{ destination: { host: db.shop.internal, subset: primary } }]
"#;
        let config = config(&model(yaml), "shop");
        let ports = &service(&config, "db.shop.internal").ports;
        assert_eq!(ports[0].tcp_cluster, "outbound|5432|primary|db.shop.internal");
        assert_eq!(ports[1].tcp_cluster, "outbound|5433||db.shop.internal", "the route matches 5432 only");
        assert_eq!(
            forwards(&routes(&config, "db.shop.internal:5432")[0]),
            [("outbound|5432||db.shop.internal", 0)]
        );
    }

    #[test]
    fn weighted_tcp_and_tls_routes_split_connections() {
        let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: db, namespace: shop }
spec:
  hosts: [db.shop.internal]
  resolution: STATIC
  ports: [{ number: 5432, name: tcp-postgres, protocol: TCP }, { number: 443, name: tls, protocol: TLS }]
  endpoints:
    - { address: 10.2.0.1, labels: { role: primary } }
    - { address: 10.2.0.2, labels: { role: replica } }
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: db, namespace: shop }
spec:
  host: db.shop.internal
  subsets: [{ name: primary, labels: { role: primary } }, { name: replica, labels: { role: replica } }]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: db, namespace: shop }
spec:
  hosts: [db.shop.internal]
  tls:
    - match: [{ port: 443, sniHosts: [db.shop.internal] }]
      route:
        - { destination: { host: db.shop.internal, subset: primary }, weight: 75 }
        - { destination: { host: db.shop.internal, subset: gone }, weight: 25 }
  tcp:
    - match: [{ port: 5432 }]
      route:
        - { destination: { host: db.shop.internal, subset: primary }, weight: 80 }
        - { destination: { host: db.shop.internal, subset: replica }, weight: 20 }
        - { destination: { host: db.shop.internal }, weight: 0 }
"#;
        let config = config(&model(yaml), "shop");
        let ports = &service(&config, "db.shop.internal").ports;
        let split = |p: &pb::ServicePort| -> Vec<(String, u32)> {
            p.tcp_clusters.iter().map(|c| (c.cluster.clone(), c.weight)).collect()
        };
        let tls = ports.iter().find(|p| p.port == 443).unwrap();
        assert_eq!(tls.tcp_cluster, "");
        assert_eq!(
            split(tls),
            [("outbound|443|primary|db.shop.internal".to_owned(), 75), (BLACK_HOLE_CLUSTER.to_owned(), 25)],
            "an unknown subset's share is closed, as in Istio"
        );
        let tcp = ports.iter().find(|p| p.port == 5432).unwrap();
        assert_eq!(
            split(tcp),
            [
                ("outbound|5432|primary|db.shop.internal".to_owned(), 80),
                ("outbound|5432|replica|db.shop.internal".to_owned(), 20)
            ],
            "zero weights are dropped"
        );
        assert!(config.clusters.iter().any(|c| c.name == BLACK_HOLE_CLUSTER));
    }

    #[test]
    fn virtual_services_bound_to_gateways_only_do_not_route_sidecars() {
        let routes = reviews_routes(&format!(
            "{VS}spec:
  hosts: [reviews]
  gateways: [shop/ingress]
  http: [{{ route: [{{ destination: {{ host: reviews, subset: v1 }} }}] }}]
"
        ));
        assert_eq!(routes[0].name, "default");
    }
}
