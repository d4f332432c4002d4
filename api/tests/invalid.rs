//! Table of invalid documents, each with the one error it must produce, word for word.

use trellis_api::check::{UnknownFields, check_text};
use trellis_api::validate::Severity;

const VS: &str = "networking.istio.io/v1 VirtualService";
const DR: &str = "networking.istio.io/v1beta1 DestinationRule";
const SE: &str = "networking.istio.io/v1 ServiceEntry";
const WE: &str = "networking.istio.io/v1 WorkloadEntry";
const SC: &str = "networking.istio.io/v1 Sidecar";
const GW: &str = "networking.istio.io/v1alpha3 Gateway";
const PA: &str = "security.istio.io/v1 PeerAuthentication";
const AP: &str = "security.istio.io/v1beta1 AuthorizationPolicy";
const RA: &str = "security.istio.io/v1 RequestAuthentication";

/// A document of `kind` named production/orders with the given flow-style spec.
fn doc(kind: &str, spec: &str) -> String {
    let (api_version, kind) = kind.split_once(' ').unwrap();
    format!(
        "apiVersion: {api_version}\nkind: {kind}\nmetadata:\n  name: orders\n  namespace: production\nspec: {spec}\n"
    )
}

/// The routing part of a VirtualService spec for host `orders`.
fn vs_http(route: &str) -> String {
    doc(VS, &format!("{{hosts: [orders], http: [{route}]}}"))
}

const R: &str = "route: [{destination: {host: orders}}]";

/// A DestinationRule for `orders` with one annotation.
fn dr_annotated(key: &str, value: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: orders\n  namespace: production\n  annotations: {{{key}: '{value}'}}\nspec: {{host: orders}}\n"
    )
}

fn cases() -> Vec<(String, &'static str)> {
    let v = |kind: &str, spec: &str| doc(kind, spec);
    vec![
        // --- DestinationRule annotations: Trellis's retry budget
        (dr_annotated("retry-budget.trellis.io/retry-ratio", "-1"),
         "DestinationRule production/orders: metadata.annotations.retry-budget.trellis.io/retry-ratio: -1 is not a ratio between 0 and 1000 (0.2: one retry per five requests)"),
        (dr_annotated("retry-budget.trellis.io/retry-ratio", "twenty percent"),
         "DestinationRule production/orders: metadata.annotations.retry-budget.trellis.io/retry-ratio: \"twenty percent\" is not a number"),
        (dr_annotated("retry-budget.trellis.io/min-retries-per-second", "-5"),
         "DestinationRule production/orders: metadata.annotations.retry-budget.trellis.io/min-retries-per-second: -5 is not between 0 and 2147483647"),
        (dr_annotated("retry-budget.trellis.io/ttl", "5m"),
         "DestinationRule production/orders: metadata.annotations.retry-budget.trellis.io/ttl: 300s is not between 1s and 60s"),
        (dr_annotated("retry-budget.trellis.io/enabled", "yes"),
         "DestinationRule production/orders: metadata.annotations.retry-budget.trellis.io/enabled: \"yes\" is not \"true\" or \"false\""),
        (dr_annotated("retry-budget.trellis.io/ratio", "0.2"),
         "DestinationRule production/orders: metadata.annotations.retry-budget.trellis.io/ratio: unknown retry budget annotation; known: retry-budget.trellis.io/enabled, retry-budget.trellis.io/retry-ratio, retry-budget.trellis.io/min-retries-per-second, retry-budget.trellis.io/ttl"),
        // --- VirtualService
        (vs_http("{route: [{destination: {host: orders, subset: v1}, weight: 0}, {destination: {host: orders, subset: v2}, weight: 0}]}"),
         "VirtualService production/orders: spec.http[0].route: weights sum to 0; with several destinations, at least one needs a weight"),
        (vs_http("{route: [{destination: {host: orders}, weight: -10}, {destination: {host: orders}, weight: 110}]}"),
         "VirtualService production/orders: spec.http[0].route[0].weight: weight -10 must not be negative"),
        (v(VS, "{hosts: [orders]}"),
         "VirtualService production/orders: spec: at least one of http, tls or tcp routes is required"),
        (v(VS, &format!("{{hosts: ['*'], http: [{{{R}}}]}}")),
         "VirtualService production/orders: spec.hosts[0]: the wildcard host \"*\" is only allowed for VirtualServices bound to gateways, not to the mesh"),
        (v(VS, &format!("{{hosts: [orders..svc], http: [{{{R}}}]}}")),
         "VirtualService production/orders: spec.hosts[0]: host \"orders..svc\" is not a valid DNS name"),
        (v(VS, &format!("{{hosts: [orders, orders], http: [{{{R}}}]}}")),
         "VirtualService production/orders: spec.hosts[1]: host \"orders\" is listed twice"),
        (v(VS, &format!("{{hosts: [orders], gateways: [Bad_Gateway], http: [{{{R}}}]}}")),
         "VirtualService production/orders: spec.gateways[0]: gateway \"Bad_Gateway\" is not \"mesh\", a gateway name, or namespace/name"),
        (vs_http("{timeout: 5s}"),
         "VirtualService production/orders: spec.http[0]: one of route, redirect, directResponse or delegate is required"),
        (vs_http(&format!("{{{R}, redirect: {{uri: /new}}}}")),
         "VirtualService production/orders: spec.http[0]: only one of route, redirect, directResponse or delegate may be set, found route and redirect"),
        (vs_http("{redirect: {uri: /new}, rewrite: {uri: /old}}"),
         "VirtualService production/orders: spec.http[0]: rewrite cannot be combined with redirect"),
        (vs_http(&format!("{{{R}, timeout: 10}}")),
         "VirtualService production/orders: spec.http[0].timeout: invalid duration \"10\": missing unit (ns, us, ms, s, m, h)"),
        (vs_http(&format!("{{{R}, timeout: 5d}}")),
         "VirtualService production/orders: spec.http[0].timeout: invalid duration \"5d\": unknown unit \"d\""),
        (vs_http(&format!("{{{R}, timeout: 0s}}")),
         "VirtualService production/orders: spec.http[0].timeout: duration \"0s\" must be at least 1ms"),
        (vs_http(&format!("{{{R}, timeout: 1500us}}")),
         "VirtualService production/orders: spec.http[0].timeout: duration \"1500us\" is finer than a millisecond; only ms precision is supported"),
        (vs_http(&format!("{{{R}, retries: {{attempts: -1}}}}")),
         "VirtualService production/orders: spec.http[0].retries.attempts: attempts -1 must not be negative"),
        (vs_http(&format!("{{{R}, retries: {{attempts: 3, perTryTimeout: 2x}}}}")),
         "VirtualService production/orders: spec.http[0].retries.perTryTimeout: invalid duration \"2x\": unknown unit \"x\""),
        (vs_http(&format!("{{{R}, retries: {{attempts: 3, retryOn: '5xx,bogus'}}}}")),
         "VirtualService production/orders: spec.http[0].retries.retryOn: \"bogus\" is not a retry condition; use an HTTP status code or one of 5xx, gateway-error, reset, reset-before-request, connect-failure, envoy-ratelimited, retriable-4xx, refused-stream, retriable-status-codes, retriable-headers, http3-post-connect-failure, cancelled, deadline-exceeded, internal, resource-exhausted, unavailable"),
        (vs_http(&format!("{{{R}, fault: {{abort: {{httpStatus: 503, percentage: {{value: 150}}}}}}}}")),
         "VirtualService production/orders: spec.http[0].fault.abort.percentage.value: percentage 150 must be between 0 and 100"),
        (vs_http(&format!("{{{R}, fault: {{abort: {{httpStatus: 700}}}}}}")),
         "VirtualService production/orders: spec.http[0].fault.abort.httpStatus: 700 is not a valid HTTP status (200-599)"),
        (vs_http(&format!("{{{R}, fault: {{abort: {{percentage: {{value: 5}}}}}}}}")),
         "VirtualService production/orders: spec.http[0].fault.abort: one of httpStatus, grpcStatus or http2Error is required"),
        (vs_http(&format!("{{{R}, fault: {{abort: {{grpcStatus: NOPE}}}}}}")),
         "VirtualService production/orders: spec.http[0].fault.abort.grpcStatus: \"NOPE\" is not a gRPC status name such as UNAVAILABLE or DEADLINE_EXCEEDED"),
        (vs_http(&format!("{{{R}, fault: {{delay: {{percentage: {{value: 5}}}}}}}}")),
         "VirtualService production/orders: spec.http[0].fault.delay.fixedDelay: required"),
        (vs_http(&format!("{{{R}, fault: {{}}}}")),
         "VirtualService production/orders: spec.http[0].fault: a fault needs delay or abort"),
        (vs_http(&format!("{{{R}, match: [{{uri: {{regex: '(?=lookahead)'}}}}]}}")),
         "VirtualService production/orders: spec.http[0].match[0].uri.regex: regex \"(?=lookahead)\" is invalid: look-around, including look-ahead and look-behind, is not supported"),
        (vs_http(&format!("{{{R}, match: [{{uri: {{regex: '\\Qa.b\\E'}}}}]}}")),
         "VirtualService production/orders: spec.http[0].match[0].uri.regex: regex \"\\\\Qa.b\\\\E\": \\Q...\\E literal quoting is not supported"),
        (vs_http(&format!("{{{R}, match: [{{uri: {{prefix: /a, exact: /b}}}}]}}")),
         "VirtualService production/orders: spec.http[0].match[0].uri: only one of exact, prefix or regex may be set, found exact and prefix"),
        (vs_http(&format!("{{{R}, match: [{{method: {{}}}}]}}")),
         "VirtualService production/orders: spec.http[0].match[0].method: one of exact, prefix or regex is required"),
        (vs_http(&format!("{{{R}, match: [{{headers: {{'bad header': {{exact: x}}}}}}]}}")),
         "VirtualService production/orders: spec.http[0].match[0].headers.bad header: \"bad header\" is not a valid HTTP header name"),
        (vs_http(&format!("{{{R}, match: [{{port: 70000}}]}}")),
         "VirtualService production/orders: spec.http[0].match[0].port: port 70000 is out of range 1-65535"),
        (vs_http(&format!("{{{R}, match: [{{sourceLabels: {{'app!': x}}}}]}}")),
         "VirtualService production/orders: spec.http[0].match[0].sourceLabels.app!: label key \"app!\" is invalid (at most 63 of letters, digits, '-', '_', '.', starting and ending with a letter or digit)"),
        (vs_http("{route: [{destination: {subset: v1}}]}"),
         "VirtualService production/orders: spec.http[0].route[0].destination.host: required"),
        (vs_http("{route: [{destination: {host: '*'}}]}"),
         "VirtualService production/orders: spec.http[0].route[0].destination.host: destination host \"*\" matches every host; name the destination"),
        (vs_http("{route: [{destination: {host: 'a.*.orders'}}]}"),
         "VirtualService production/orders: spec.http[0].route[0].destination.host: host \"a.*.orders\": a wildcard is allowed only at the start of the first label ('*.example.com', or Istio's partial '*example.com')"),
        (vs_http("{route: [{destination: {host: orders, subset: V_1}}]}"),
         "VirtualService production/orders: spec.http[0].route[0].destination.subset: \"V_1\" is not a valid DNS-1123 label (lower-case letters, digits and '-', at most 63 characters, starting and ending with a letter or digit)"),
        (vs_http("{redirect: {uri: /x, redirectCode: 200}}"),
         "VirtualService production/orders: spec.http[0].redirect.redirectCode: 200 is not a redirect status; use 301, 302, 303, 307 or 308"),
        (vs_http("{redirect: {redirectCode: 301}}"),
         "VirtualService production/orders: spec.http[0].redirect: a redirect must set at least one of uri, authority, port, derivePort or scheme"),
        (vs_http("{directResponse: {status: 99}}"),
         "VirtualService production/orders: spec.http[0].directResponse.status: 99 is not a valid HTTP status (200-599)"),
        (vs_http(&format!("{{{R}, mirror: {{host: a}}, mirrors: [{{destination: {{host: b}}}}]}}")),
         "VirtualService production/orders: spec.http[0]: mirror and mirrors cannot both be set"),
        (vs_http(&format!("{{{R}, mirror: {{host: a}}, mirrorPercentage: {{value: -1}}}}")),
         "VirtualService production/orders: spec.http[0].mirrorPercentage.value: percentage -1 must be between 0 and 100"),
        (vs_http(&format!("{{{R}, mirror: {{host: a}}, mirrorPercent: 300}}")),
         "VirtualService production/orders: spec.http[0].mirrorPercent: percentage 300 must be between 0 and 100"),
        (vs_http(&format!("{{{R}, mirrors: [{{destination: {{host: a}}}}, {{destination: {{host: b}}, percentage: {{value: 100.5}}}}]}}")),
         "VirtualService production/orders: spec.http[0].mirrors[1].percentage.value: percentage 100.5 must be between 0 and 100"),
        (vs_http(&format!("{{{R}, mirror: {{host: '*'}}}}")),
         "VirtualService production/orders: spec.http[0].mirror.host: destination host \"*\" matches every host; name the destination"),
        (vs_http(&format!("{{{R}, mirrors: [{{destination: {{host: a, subset: V_1}}}}]}}")),
         "VirtualService production/orders: spec.http[0].mirrors[0].destination.subset: \"V_1\" is not a valid DNS-1123 label (lower-case letters, digits and '-', at most 63 characters, starting and ending with a letter or digit)"),
        (vs_http(&format!("{{{R}, corsPolicy: {{allowMethods: [FETCH]}}}}")),
         "VirtualService production/orders: spec.http[0].corsPolicy.allowMethods[0]: \"FETCH\" is not an HTTP method"),
        (vs_http(&format!("{{{R}, corsPolicy: {{maxAge: 1500ms}}}}")),
         "VirtualService production/orders: spec.http[0].corsPolicy.maxAge: \"1500ms\" must be whole seconds"),
        (vs_http(&format!("{{{R}, headers: {{request: {{set: {{'x y': z}}}}}}}}")),
         "VirtualService production/orders: spec.http[0].headers.request.set.x y: \"x y\" is not a valid HTTP header name"),
        (v(VS, "{hosts: [orders], tls: [{match: [{sniHosts: [other.com]}], route: [{destination: {host: orders}}]}]}"),
         "VirtualService production/orders: spec.tls[0].match[0].sniHosts[0]: SNI host \"other.com\" is not covered by any of the VirtualService hosts"),
        (v(VS, "{hosts: [orders], tcp: [{match: [{destinationSubnets: [10.0.0.0/33]}], route: [{destination: {host: orders}}]}]}"),
         "VirtualService production/orders: spec.tcp[0].match[0].destinationSubnets[0]: \"10.0.0.0/33\" is not a valid CIDR"),
        (v(VS, "{hosts: [orders], tcp: [{match: [{port: 3306}]}]}"),
         "VirtualService production/orders: spec.tcp[0].route: at least one route destination is required"),
        (v(VS, &format!("{{hosts: [orders], exportTo: ['~', prod], http: [{{{R}}}]}}")),
         "VirtualService production/orders: spec.exportTo: \"~\" (visible nowhere) cannot be combined with other values"),
        (v(VS, &format!("{{gateways: [mesh], http: [{{{R}}}]}}")),
         "VirtualService production/orders: spec.gateways: a delegate VirtualService (one without hosts) must not list gateways"),
        // --- DestinationRule
        (v(DR, "{trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}"),
         "DestinationRule production/orders: spec.host: required"),
        (v(DR, "{host: orders, subsets: [{name: v1, labels: {version: v1}}, {name: v1, labels: {version: v2}}]}"),
         "DestinationRule production/orders: spec.subsets[1].name: duplicate subset name \"v1\""),
        (v(DR, "{host: orders, subsets: [{labels: {version: v1}}]}"),
         "DestinationRule production/orders: spec.subsets[0].name: required"),
        (v(DR, "{host: orders, subsets: [{name: v1, labels: {version: '-v1'}}]}"),
         "DestinationRule production/orders: spec.subsets[0].labels.version: label value \"-v1\" is invalid (at most 63 of letters, digits, '-', '_', '.', starting and ending with a letter or digit)"),
        (v(DR, "{host: orders, trafficPolicy: {}}"),
         "DestinationRule production/orders: spec.trafficPolicy: a traffic policy needs at least one setting"),
        (v(DR, "{host: orders, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN, consistentHash: {useSourceIp: true}}}}"),
         "DestinationRule production/orders: spec.trafficPolicy.loadBalancer: simple and consistentHash cannot both be set"),
        (v(DR, "{host: orders, trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user, useSourceIp: true}}}}"),
         "DestinationRule production/orders: spec.trafficPolicy.loadBalancer.consistentHash: only one hash key may be set, found httpHeaderName and useSourceIp"),
        (v(DR, "{host: orders, trafficPolicy: {loadBalancer: {consistentHash: {ringHash: {minimumRingSize: 1024}}}}}"),
         "DestinationRule production/orders: spec.trafficPolicy.loadBalancer.consistentHash: one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName is required"),
        (v(DR, "{host: orders, trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {ttl: 0s}}}}}"),
         "DestinationRule production/orders: spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.name: required"),
        (v(DR, "{host: orders, trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, ringHash: {}, maglev: {}}}}}"),
         "DestinationRule production/orders: spec.trafficPolicy.loadBalancer.consistentHash: ringHash and maglev cannot both be set"),
        (v(DR, "{host: orders, trafficPolicy: {loadBalancer: {localityLbSetting: {distribute: [{from: us-west/*, to: {us-west/*: 80, us-east/*: 10}}]}}}}"),
         "DestinationRule production/orders: spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to: weights sum to 90, must be 100"),
        (v(DR, "{host: orders, trafficPolicy: {loadBalancer: {localityLbSetting: {failover: [{from: us-east, to: us-east}]}}}}"),
         "DestinationRule production/orders: spec.trafficPolicy.loadBalancer.localityLbSetting.failover[0]: from and to are the same region \"us-east\""),
        (v(DR, "{host: orders, trafficPolicy: {loadBalancer: {localityLbSetting: {distribute: [{from: us-west/*, to: {us-west/*: 80, us-east/*: 20}}], failover: [{from: us-west, to: us-east}]}}}}"),
         "DestinationRule production/orders: spec.trafficPolicy.loadBalancer.localityLbSetting: distribute and failover cannot both be set"),
        (v(DR, "{host: orders, trafficPolicy: {loadBalancer: {localityLbSetting: {distribute: [{from: 'us-west/*/rack', to: {us-west/*: 100}}]}}}}"),
         "DestinationRule production/orders: spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].from: locality \"us-west/*/rack\": the wildcard * may only be the whole last part, once"),
        (v(DR, "{host: orders, trafficPolicy: {loadBalancer: {localityLbSetting: {distribute: [{from: us-west/a/b/c, to: {us-west/*: 100}}]}}}}"),
         "DestinationRule production/orders: spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].from: locality \"us-west/a/b/c\" has 4 parts; the form is region/zone/subzone"),
        (v(DR, "{host: orders, trafficPolicy: {loadBalancer: {localityLbSetting: {distribute: [{from: us-west/*, to: {'us-west//a': 100}}]}}}}"),
         "DestinationRule production/orders: spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to[\"us-west//a\"]: locality \"us-west//a\" has an empty part; the form is region/zone/subzone"),
        (v(DR, "{host: orders, trafficPolicy: {loadBalancer: {localityLbSetting: {distribute: [{from: us-west/*, to: {us-west/*: 70, us-west/a: 30}}]}}}}"),
         "DestinationRule production/orders: spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to[\"us-west/a\"]: locality \"us-west/a\" overlaps \"us-west/*\""),
        (v(DR, "{host: orders, trafficPolicy: {loadBalancer: {localityLbSetting: {distribute: [{from: us-west/*, to: {us-west/*: 100}}, {from: us-west/a, to: {us-east/*: 100}}]}}}}"),
         "DestinationRule production/orders: spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[1].from: locality \"us-west/a\" overlaps \"us-west/*\""),
        (v(DR, "{host: orders, trafficPolicy: {loadBalancer: {localityLbSetting: {distribute: [{from: us-west/*, to: {us-west/*: 100, us-east/*: 0}}]}}}}"),
         "DestinationRule production/orders: spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to[\"us-east/*\"]: weight 0 must be between 1 and 100"),
        (v(DR, "{host: orders, trafficPolicy: {loadBalancer: {localityLbSetting: {distribute: [{from: us-west/*}]}}}}"),
         "DestinationRule production/orders: spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to: required: the localities traffic goes to, with their weights"),
        (v(DR, "{host: orders, trafficPolicy: {loadBalancer: {localityLbSetting: {failover: [{from: us-east/a, to: eu-west}]}}}}"),
         "DestinationRule production/orders: spec.trafficPolicy.loadBalancer.localityLbSetting.failover[0].from: \"us-east/a\" is not a region: failover names regions only, without / or *"),
        (v(DR, "{host: orders, trafficPolicy: {loadBalancer: {localityLbSetting: {failover: [{from: us-east}]}}}}"),
         "DestinationRule production/orders: spec.trafficPolicy.loadBalancer.localityLbSetting.failover[0]: from and to are both required"),
        (v(DR, "{host: orders, trafficPolicy: {loadBalancer: {localityLbSetting: {failover: [{from: us-east, to: eu-west}], failoverPriority: [topology.kubernetes.io/zone]}}}}"),
         "DestinationRule production/orders: spec.trafficPolicy.loadBalancer.localityLbSetting.failoverPriority[0]: \"topology.kubernetes.io/zone\" cannot be listed while failover is set (failover already orders by region)"),
        (v(DR, "{host: orders, trafficPolicy: {loadBalancer: {localityLbSetting: {failoverPriority: ['bad key!']}}}}"),
         "DestinationRule production/orders: spec.trafficPolicy.loadBalancer.localityLbSetting.failoverPriority[0]: label key \"bad key!\" is invalid (at most 63 of letters, digits, '-', '_', '.', starting and ending with a letter or digit)"),
        (v(DR, "{host: orders, trafficPolicy: {loadBalancer: {localityLbSetting: {failoverPriority: [topology.istio.io/network, 'topology.istio.io/network=n1']}}}}"),
         "DestinationRule production/orders: spec.trafficPolicy.loadBalancer.localityLbSetting.failoverPriority[1]: label \"topology.istio.io/network\" is listed twice"),
        (v(DR, "{host: orders, subsets: [{name: v1, trafficPolicy: {loadBalancer: {localityLbSetting: {distribute: [{from: '*', to: {'*': 50}}]}}}}]}"),
         "DestinationRule production/orders: spec.subsets[0].trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to: weights sum to 50, must be 100"),
        (v(DR, "{host: orders, trafficPolicy: {portLevelSettings: [{port: {number: 80}, loadBalancer: {localityLbSetting: {failover: [{from: a, to: a}]}}}]}}"),
         "DestinationRule production/orders: spec.trafficPolicy.portLevelSettings[0].loadBalancer.localityLbSetting.failover[0]: from and to are the same region \"a\""),
        (v(DR, "{host: orders, trafficPolicy: {loadBalancer: {simple: FASTEST}}}"),
         "DestinationRule production/orders: spec.trafficPolicy.loadBalancer.simple: unknown variant `FASTEST`, expected one of UNSPECIFIED, LEAST_CONN, RANDOM, PASSTHROUGH, ROUND_ROBIN, LEAST_REQUEST (line 6, column 61)"),
        (v(DR, "{host: orders, trafficPolicy: {connectionPool: {tcp: {maxConnections: -1}}}}"),
         "DestinationRule production/orders: spec.trafficPolicy.connectionPool.tcp.maxConnections: -1 must not be negative"),
        (v(DR, "{host: orders, trafficPolicy: {connectionPool: {}}}"),
         "DestinationRule production/orders: spec.trafficPolicy.connectionPool: a connection pool needs tcp or http settings"),
        (v(DR, "{host: orders, trafficPolicy: {connectionPool: {http: {idleTimeout: forever}}}}"),
         "DestinationRule production/orders: spec.trafficPolicy.connectionPool.http.idleTimeout: invalid duration \"forever\": use a number and a unit, e.g. 100ms, 1.5s, 2m"),
        (v(DR, "{host: orders, trafficPolicy: {outlierDetection: {maxEjectionPercent: 150}}}"),
         "DestinationRule production/orders: spec.trafficPolicy.outlierDetection.maxEjectionPercent: 150 must be between 0 and 100"),
        (v(DR, "{host: orders, trafficPolicy: {outlierDetection: {interval: 0s}}}"),
         "DestinationRule production/orders: spec.trafficPolicy.outlierDetection.interval: duration \"0s\" must be at least 1ms"),
        (v(DR, "{host: orders, trafficPolicy: {outlierDetection: {baseEjectionTime: -1s}}}"),
         "DestinationRule production/orders: spec.trafficPolicy.outlierDetection.baseEjectionTime: duration \"-1s\" is negative"),
        (v(DR, "{host: orders, trafficPolicy: {portLevelSettings: [{port: {number: 80}, outlierDetection: {minHealthPercent: 101}}]}}"),
         "DestinationRule production/orders: spec.trafficPolicy.portLevelSettings[0].outlierDetection.minHealthPercent: 101 must be between 0 and 100"),
        (v(DR, "{host: orders, trafficPolicy: {outlierDetection: {consecutive5xxErrors: -3}}}"),
         "DestinationRule production/orders: spec.trafficPolicy.outlierDetection.consecutive5xxErrors: invalid u32 (line 6, column 79)"),
        (v(DR, "{host: orders, trafficPolicy: {tls: {mode: ISTIO_MUTUAL, clientCertificate: /etc/cert.pem}}}"),
         "DestinationRule production/orders: spec.trafficPolicy.tls: ISTIO_MUTUAL uses the mesh's own certificates; clientCertificate, privateKey, caCertificates and credentialName must be empty"),
        (v(DR, "{host: orders, trafficPolicy: {tls: {mode: MUTUAL, privateKey: /etc/key.pem}}}"),
         "DestinationRule production/orders: spec.trafficPolicy.tls.clientCertificate: required when mode is MUTUAL and credentialName is not set"),
        (v(DR, "{host: orders, trafficPolicy: {tls: {mode: STRICT}}}"),
         "DestinationRule production/orders: spec.trafficPolicy.tls.mode: unknown variant `STRICT`, expected one of DISABLE, SIMPLE, MUTUAL, ISTIO_MUTUAL (line 6, column 50)"),
        (v(DR, "{host: orders, trafficPolicy: {portLevelSettings: [{port: {number: 80}, loadBalancer: {simple: RANDOM}}, {port: {number: 80}, loadBalancer: {simple: RANDOM}}]}}"),
         "DestinationRule production/orders: spec.trafficPolicy.portLevelSettings[1].port.number: port 80 has settings twice"),
        (v(DR, "{host: orders, trafficPolicy: {portLevelSettings: [{loadBalancer: {simple: RANDOM}}]}}"),
         "DestinationRule production/orders: spec.trafficPolicy.portLevelSettings[0].port: required"),
        // --- ServiceEntry and WorkloadEntry
        (v(SE, "{hosts: ['*'], ports: [{number: 443, name: https, protocol: TLS}], resolution: NONE}"),
         "ServiceEntry production/orders: spec.hosts[0]: \"*\" is not allowed; name the hosts this entry describes"),
        (v(SE, "{ports: [{number: 80, name: http, protocol: HTTP}]}"),
         "ServiceEntry production/orders: spec.hosts: at least one host is required"),
        (v(SE, "{hosts: [api.example.com], ports: [{number: 80, name: http, protocol: HTTPX}]}"),
         "ServiceEntry production/orders: spec.ports[0].protocol: \"HTTPX\" is not one of HTTP, HTTPS, GRPC, GRPC-WEB, HTTP2, HTTP_PROXY, MONGO, MYSQL, REDIS, TCP, TLS, UDP"),
        (v(SE, "{hosts: [api.example.com], ports: [{number: 80, name: http}, {number: 80, name: web}]}"),
         "ServiceEntry production/orders: spec.ports[1].number: port 80 is declared twice"),
        (v(SE, "{hosts: [api.example.com], ports: [{number: 80}]}"),
         "ServiceEntry production/orders: spec.ports[0].name: required"),
        (v(SE, "{hosts: [api.example.com], ports: [{number: 80, name: http}], resolution: STATIC}"),
         "ServiceEntry production/orders: spec.endpoints: STATIC resolution needs endpoints or a workloadSelector"),
        (v(SE, "{hosts: [api.example.com], ports: [{number: 80, name: http}], resolution: STATIC, endpoints: [{address: db.example.com}]}"),
         "ServiceEntry production/orders: spec.endpoints[0].address: \"db.example.com\" is not an IP address; STATIC resolution needs IP endpoints"),
        (v(SE, "{hosts: ['*.example.com'], ports: [{number: 80, name: http}], resolution: DNS}"),
         "ServiceEntry production/orders: spec.hosts[0]: wildcard host \"*.example.com\" cannot be resolved with DNS; list endpoints or use resolution NONE"),
        (v(SE, "{hosts: [api.example.com], ports: [{number: 80, name: http}], resolution: DNS, endpoints: [{address: a.example.com, ports: {grpc: 9090}}]}"),
         "ServiceEntry production/orders: spec.endpoints[0].ports.grpc: port name \"grpc\" is not declared in spec.ports"),
        (v(SE, "{hosts: [api.example.com], addresses: [not-an-ip], ports: [{number: 80, name: http}]}"),
         "ServiceEntry production/orders: spec.addresses[0]: \"not-an-ip\" is not an IP address or CIDR"),
        (v(SE, "{hosts: [api.example.com], ports: [{number: 80, name: http}], resolution: DNS_ROUND_ROBIN, endpoints: [{address: a.example.com}, {address: b.example.com}]}"),
         "ServiceEntry production/orders: spec.endpoints: DNS_ROUND_ROBIN resolution allows at most one endpoint"),
        (v(SE, "{hosts: [api.example.com], ports: [{number: 80, name: http}], resolution: MAGIC}"),
         "ServiceEntry production/orders: spec.resolution: unknown variant `MAGIC`, expected one of NONE, STATIC, DNS, DNS_ROUND_ROBIN, DYNAMIC_DNS (line 6, column 81)"),
        (v(WE, "{labels: {app: orders}}"),
         "WorkloadEntry production/orders: spec.address: required unless network is set"),
        (v(WE, "{address: 'unix://relative.sock'}"),
         "WorkloadEntry production/orders: spec.address: \"unix://relative.sock\" is not an absolute unix socket path or an abstract socket (@name)"),
        (v(WE, "{address: 'unix://@foo', ports: {http: 80}}"),
         "WorkloadEntry production/orders: spec.ports: a unix socket address takes no ports (Istio: UDS may not include ports)"),
        (v(WE, "{address: 'unix:///run/'}"),
         "WorkloadEntry production/orders: spec.address: \"unix:///run/\" names a directory, not a socket"),
        (v(SE, "{hosts: ['*-'], resolution: NONE}"),
         "ServiceEntry production/orders: spec.hosts[0]: host \"*-\": a wildcard is allowed only at the start of the first label ('*.example.com', or Istio's partial '*example.com')"),
        (v(WE, "{address: 10.0.0.1, ports: {http: 0}}"),
         "WorkloadEntry production/orders: spec.ports.http: port 0 is out of range 1-65535"),
        (v(WE, "{address: 10.0.0.1, serviceAccount: Orders_SA}"),
         "WorkloadEntry production/orders: spec.serviceAccount: \"Orders_SA\" is not a valid DNS-1123 subdomain (lower-case labels separated by '.', at most 253 characters)"),
        (v(WE, "{address: 10.0.0.1, locality: us-east/a/rack-1/shelf}"),
         "WorkloadEntry production/orders: spec.locality: locality \"us-east/a/rack-1/shelf\" has 4 parts; the form is region/zone/subzone"),
        (v(WE, "{address: 10.0.0.1, locality: /us-east-1a}"),
         "WorkloadEntry production/orders: spec.locality: locality \"/us-east-1a\" has an empty region; the form is region/zone/subzone"),
        (v(WE, "{address: 10.0.0.1, locality: 'us-east/*'}"),
         "WorkloadEntry production/orders: spec.locality: locality \"us-east/*\" has a wildcard; only localityLbSetting patterns may"),
        (v(WE, "{address: 10.0.0.1, labels: {istio-locality: us-east.a.b.c}}"),
         "WorkloadEntry production/orders: spec.labels.istio-locality: locality \"us-east/a/b/c\" has 4 parts; the form is region/zone/subzone"),
        // --- Sidecar
        (v(SC, "{workloadSelector: {labels: {app: orders}}}"),
         "Sidecar production/orders: spec: a Sidecar needs at least one of egress, ingress, outboundTrafficPolicy or inboundConnectionPool"),
        (v(SC, "{egress: [{hosts: [payments.production.svc.cluster.local]}]}"),
         "Sidecar production/orders: spec.egress[0].hosts[0]: \"payments.production.svc.cluster.local\" must have the form namespace/dnsName, e.g. ./reviews.prod.svc.cluster.local or istio-system/*"),
        (v(SC, "{egress: [{hosts: ['./*']}, {hosts: ['istio-system/*']}]}"),
         "Sidecar production/orders: spec.egress[1]: only one egress listener may omit a port, spec.egress[0] already does"),
        (v(SC, "{egress: [{port: {number: 9080, protocol: HTTP, name: http}}]}"),
         "Sidecar production/orders: spec.egress[0].hosts: at least one host is required"),
        (v(SC, "{ingress: [{defaultEndpoint: '127.0.0.1:8080'}]}"),
         "Sidecar production/orders: spec.ingress[0].port: required"),
        (v(SC, "{ingress: [{port: {number: 9080, protocol: HTTP, name: http}, defaultEndpoint: '10.0.0.1:8080'}]}"),
         "Sidecar production/orders: spec.ingress[0].defaultEndpoint: \"10.0.0.1:8080\" must be 127.0.0.1:PORT, 0.0.0.0:PORT, [::1]:PORT, [::]:PORT or unix:///path"),
        (v(SC, "{outboundTrafficPolicy: {mode: REGISTRY_ONLY, egressProxy: {host: egress.example.com, port: {number: 3128}}}}"),
         "Sidecar production/orders: spec.outboundTrafficPolicy.egressProxy: only applies when mode is ALLOW_ANY"),
        // --- Gateway
        (v(GW, "{selector: {istio: ingressgateway}}"),
         "Gateway production/orders: spec.servers: at least one server is required"),
        (v(GW, "{servers: [{port: {number: 443, name: https, protocol: HTTPS}, hosts: ['*.example.com']}]}"),
         "Gateway production/orders: spec.servers[0].tls: required for protocol HTTPS"),
        (v(GW, "{servers: [{port: {number: 443, name: https, protocol: HTTPS}, hosts: ['*.example.com'], tls: {mode: SIMPLE}}]}"),
         "Gateway production/orders: spec.servers[0].tls: SIMPLE TLS needs credentialName, or serverCertificate and privateKey"),
        (v(GW, "{servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: [a.com]}, {port: {number: 8080, name: http, protocol: HTTP}, hosts: [b.com]}]}"),
         "Gateway production/orders: spec.servers[1].port.name: port name \"http\" is already used by spec.servers[0]"),
        (v(GW, "{servers: [{port: {number: 80, name: http, protocol: HTTP}}]}"),
         "Gateway production/orders: spec.servers[0].hosts: at least one host is required"),
        (v(GW, "{servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['Bad_NS/a.com']}]}"),
         "Gateway production/orders: spec.servers[0].hosts[0]: \"Bad_NS/a.com\": \"Bad_NS\" is not a namespace, \"*\", \".\" or \"~\""),
        (v(GW, "{servers: [{port: {number: 443, name: https, protocol: HTTPS}, hosts: [a.com], tls: {mode: MUTUAL, serverCertificate: /c.pem, privateKey: /k.pem}}]}"),
         "Gateway production/orders: spec.servers[0].tls.caCertificates: required for MUTUAL TLS without credentialName"),
        // --- PeerAuthentication
        (v(PA, "{mtls: {mode: STRICT}, portLevelMtls: {8080: {mode: DISABLE}}}"),
         "PeerAuthentication production/orders: spec.portLevelMtls: port-level mTLS needs a workload selector"),
        (v(PA, "{selector: {matchLabels: {app: orders}}, portLevelMtls: {0: {mode: DISABLE}}}"),
         "PeerAuthentication production/orders: spec.portLevelMtls.0: port 0 is out of range 1-65535"),
        (v(PA, "{selector: {matchLabels: {app: orders}}, portLevelMtls: {}}"),
         "PeerAuthentication production/orders: spec.portLevelMtls: empty; list at least one port, or leave the field out"),
        (v(PA, "{mtls: {mode: ENFORCED}}"),
         "PeerAuthentication production/orders: spec.mtls.mode: unknown variant `ENFORCED`, expected one of UNSET, DISABLE, PERMISSIVE, STRICT (line 6, column 21)"),
        // --- AuthorizationPolicy
        (v(AP, "{action: CUSTOM, rules: [{to: [{operation: {paths: [/admin]}}]}]}"),
         "AuthorizationPolicy production/orders: spec.provider.name: required when action is CUSTOM"),
        (v(AP, "{action: DENY, provider: {name: opa}, rules: [{}]}"),
         "AuthorizationPolicy production/orders: spec.provider: only allowed when action is CUSTOM, found DENY"),
        (v(AP, "{rules: [{from: [{source: {principals: ['cluster.local/*/sa/*']}}]}]}"),
         "AuthorizationPolicy production/orders: spec.rules[0].from[0].source.principals[0]: \"cluster.local/*/sa/*\": '*' is only supported alone, as a prefix or as a suffix"),
        (v(AP, "{rules: [{from: [{source: {ipBlocks: [10.0.0.0/40]}}]}]}"),
         "AuthorizationPolicy production/orders: spec.rules[0].from[0].source.ipBlocks[0]: \"10.0.0.0/40\" is not a valid CIDR"),
        (v(AP, "{rules: [{from: [{source: {}}]}]}"),
         "AuthorizationPolicy production/orders: spec.rules[0].from[0].source: must set at least one field"),
        (v(AP, "{rules: [{to: [{operation: {ports: ['http']}}]}]}"),
         "AuthorizationPolicy production/orders: spec.rules[0].to[0].operation.ports[0]: \"http\" is not a port number"),
        (v(AP, "{rules: [{when: [{key: 'request.headers[x-token]'}]}]}"),
         "AuthorizationPolicy production/orders: spec.rules[0].when[0]: at least one of values or notValues is required"),
        (v(AP, "{rules: [{when: [{key: request.colour, values: [red]}]}]}"),
         "AuthorizationPolicy production/orders: spec.rules[0].when[0].key: unknown attribute \"request.colour\"; use one of request.headers[NAME], source.ip, remote.ip, source.namespace, source.principal, source.serviceAccount, source.trustDomain, request.auth.principal, request.auth.audiences, request.auth.presenter, request.auth.claims[NAME], destination.ip, destination.port, connection.sni"),
        (v(AP, "{rules: [{when: [{key: source.ip, values: [10.1.2.300]}]}]}"),
         "AuthorizationPolicy production/orders: spec.rules[0].when[0].values[0]: \"10.1.2.300\" is not an IP address or CIDR"),
        (v(AP, "{selector: {matchLabels: {app: orders}}, targetRef: {kind: Service, name: orders}}"),
         "AuthorizationPolicy production/orders: spec: selector cannot be combined with targetRef or targetRefs"),
        (v(AP, "{rules: [{when: [{key: destination.namespace, values: [shop]}]}]}"),
         "AuthorizationPolicy production/orders: spec.rules[0].when[0].key: attribute destination.namespace is replaced by the metadata.namespace"),
        (v(AP, "{rules: [{when: [{key: 'destination.labels[app]', values: [web]}]}]}"),
         "AuthorizationPolicy production/orders: spec.rules[0].when[0].key: attribute destination.labels[app] is replaced by the workload selector"),
        (v(AP, "{rules: [{when: [{key: destination.user, values: [web]}]}]}"),
         "AuthorizationPolicy production/orders: spec.rules[0].when[0].key: deprecated attribute destination.user: only supported in v1alpha1"),
        (v(AP, "{rules: [{when: [{key: destination.name, values: [web]}]}]}"),
         "AuthorizationPolicy production/orders: spec.rules[0].when[0].key: deprecated attribute destination.name: only supported in v1alpha1"),
        (v(AP, "{rules: [{when: [{key: source.ip, values: [], notValues: []}]}]}"),
         "AuthorizationPolicy production/orders: spec.rules[0].when[0]: at least one of values or notValues is required"),
        (v(AP, "{rules: [{when: [{key: destination.port, values: ['0']}]}]}"),
         "AuthorizationPolicy production/orders: spec.rules[0].when[0].values[0]: port 0 is out of range 1-65535"),
        (v(AP, "{rules: [{from: [{source: {serviceAccounts: [bar/sa], namespaces: [bar]}}]}]}"),
         "AuthorizationPolicy production/orders: spec.rules[0].from[0].source.serviceAccounts: cannot be combined with principals or namespaces (or their not- forms)"),
        (v(AP, "{rules: [{from: [{source: {notServiceAccounts: [sa], principals: [cluster.local/ns/a/sa/b]}}]}]}"),
         "AuthorizationPolicy production/orders: spec.rules[0].from[0].source.notServiceAccounts: cannot be combined with principals or namespaces (or their not- forms)"),
        (v(AP, "{rules: [{from: [{source: {serviceAccounts: ['shop/*']}}]}]}"),
         "AuthorizationPolicy production/orders: spec.rules[0].from[0].source.serviceAccounts[0]: \"shop/*\": wildcards are not allowed in service accounts"),
        (v(AP, "{rules: [{from: [{source: {serviceAccounts: [a/b/c]}}]}]}"),
         "AuthorizationPolicy production/orders: spec.rules[0].from[0].source.serviceAccounts[0]: \"a/b/c\": expected <service account> or <namespace>/<service account>"),
        (v(AP, "{rules: [{from: [{source: {notIpBlocks: [10.0.0.300]}}]}]}"),
         "AuthorizationPolicy production/orders: spec.rules[0].from[0].source.notIpBlocks[0]: \"10.0.0.300\" is not an IP address or CIDR"),
        (v(AP, "{rules: [{from: [{source: {remoteIpBlocks: [' 10.0.0.1']}}]}]}"),
         "AuthorizationPolicy production/orders: spec.rules[0].from[0].source.remoteIpBlocks[0]: \" 10.0.0.1\": remove the surrounding blanks"),
        (v(AP, "{rules: [{to: [{operation: {ports: ['0']}}]}]}"),
         "AuthorizationPolicy production/orders: spec.rules[0].to[0].operation.ports[0]: port 0 is out of range 1-65535"),
        (v(AP, "{rules: [{to: [{operation: {notPorts: ['65536']}}]}]}"),
         "AuthorizationPolicy production/orders: spec.rules[0].to[0].operation.notPorts[0]: port 65536 is out of range 1-65535"),
        (v(AP, "{rules: [{to: [{operation: {paths: ['/a/{*}x/b']}}]}]}"),
         "AuthorizationPolicy production/orders: spec.rules[0].to[0].operation.paths[0]: \"/a/{*}x/b\": {*} and {**} must each fill a whole segment, like /a/{*}/b"),
        (v(AP, "{rules: [{to: [{operation: {notPaths: ['/a/{**}/{*}']}}]}]}"),
         "AuthorizationPolicy production/orders: spec.rules[0].to[0].operation.notPaths[0]: \"/a/{**}/{*}\": {**} must be the last operator of a path template"),
        (v(AP, "{action: CUSTOM, provider: {}, rules: [{}]}"),
         "AuthorizationPolicy production/orders: spec.provider.name: required when action is CUSTOM"),
        (v(AP, "{action: CUSTOM, provider: {name: opa}, rules: [{from: [{source: {principals: ['*']}}]}]}"),
         "AuthorizationPolicy production/orders: spec.rules[0].from[0].source.principals: not supported with action CUSTOM"),
        (v(AP, "{action: ALLOW, provider: {name: opa}, rules: [{}]}"),
         "AuthorizationPolicy production/orders: spec.provider: only allowed when action is CUSTOM, found ALLOW"),
        (v(AP, "{selector: {matchLabels: {app: orders}}, targetRefs: [{kind: Service, name: orders}]}"),
         "AuthorizationPolicy production/orders: spec: selector cannot be combined with targetRef or targetRefs"),
        ("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: orders, namespace: production, annotations: {istio.io/dry-run: 'true'}}\nspec: {action: CUSTOM, provider: {name: opa}, rules: [{}]}\n".into(),
         "AuthorizationPolicy production/orders: metadata.annotations.istio.io/dry-run: only ALLOW and DENY policies can be dry-run, this one is CUSTOM"),
        ("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: orders, namespace: production, annotations: {istio.io/dry-run: 'yes'}}\nspec: {action: DENY, rules: [{}]}\n".into(),
         "AuthorizationPolicy production/orders: metadata.annotations.istio.io/dry-run: \"yes\" is not a boolean (use \"true\" or \"false\")"),
        ("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: orders, namespace: production, annotations: {istio.io/dry-run: 'true'}}\nspec: {mtls: {mode: STRICT}}\n".into(),
         "PeerAuthentication production/orders: metadata.annotations.istio.io/dry-run: only an AuthorizationPolicy supports this annotation; remove it"),
        // --- RequestAuthentication
        (v(RA, "{jwtRules: [{audiences: [a]}]}"),
         "RequestAuthentication production/orders: spec.jwtRules[0].issuer: required (Istio also accepts a rule with only jwksUri)"),
        (v(RA, "{jwtRules: [{issuer: a, jwksUri: 'ftp://keys.example.com/jwks'}]}"),
         "RequestAuthentication production/orders: spec.jwtRules[0].jwksUri: \"ftp://keys.example.com/jwks\": URI scheme \"ftp\" is not supported; use https (or http)"),
        (v(RA, "{jwtRules: [{issuer: a, jwksUri: 'keys.example.com/jwks'}]}"),
         "RequestAuthentication production/orders: spec.jwtRules[0].jwksUri: \"keys.example.com/jwks\" is not an http or https URL"),
        (v(RA, "{jwtRules: [{issuer: a, jwksUri: 'https://keys.example.com:99999/jwks'}]}"),
         "RequestAuthentication production/orders: spec.jwtRules[0].jwksUri: \"https://keys.example.com:99999/jwks\": port 99999 is out of range 1-65535"),
        (v(RA, "{jwtRules: [{issuer: a, jwksUri: 'https:///jwks'}]}"),
         "RequestAuthentication production/orders: spec.jwtRules[0].jwksUri: \"https:///jwks\": no host"),
        (v(RA, "{jwtRules: [{issuer: a, jwks: '{\"keys\": 1}'}]}"),
         "RequestAuthentication production/orders: spec.jwtRules[0].jwks: not a JSON Web Key Set: expected {\"keys\": [...]} or a single key with \"kty\""),
        (v(RA, "{jwtRules: [{issuer: a, jwksUri: 'https://k.example.com/j', fromHeaders: [{name: 'x token', prefix: 'Bearer '}]}]}"),
         "RequestAuthentication production/orders: spec.jwtRules[0].fromHeaders[0].name: \"x token\" is not a valid HTTP header name"),
        (v(RA, "{jwtRules: [{issuer: a, jwksUri: 'https://k.example.com/j', fromHeaders: [{prefix: 'Bearer '}]}]}"),
         "RequestAuthentication production/orders: spec.jwtRules[0].fromHeaders[0].name: required"),
        (v(RA, "{jwtRules: [{issuer: a, jwksUri: 'https://k.example.com/j', outputClaimToHeaders: [{header: 'x:sub', claim: sub}]}]}"),
         "RequestAuthentication production/orders: spec.jwtRules[0].outputClaimToHeaders[0].header: \"x:sub\" is not a valid header name (letters, digits, '-', '_')"),
        (v(RA, "{jwtRules: [{issuer: a, jwksUri: 'https://k.example.com/j', fromParams: ['']}]}"),
         "RequestAuthentication production/orders: spec.jwtRules[0].fromParams[0]: must not be empty"),
        (v(RA, "{jwtRules: [{issuer: a, jwksUri: 'https://k.example.com/j', timeout: 0s}]}"),
         "RequestAuthentication production/orders: spec.jwtRules[0].timeout: duration \"0s\" must be at least 1ms"),
        (v(RA, "{selector: {matchLabels: {app: orders}}, targetRefs: [{kind: Service, name: orders}], jwtRules: [{issuer: a, jwksUri: 'https://k.example.com/j'}]}"),
         "RequestAuthentication production/orders: spec: selector cannot be combined with targetRef or targetRefs"),
        // --- Whole documents
        ("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  namespace: production\nspec: {hosts: [a], http: [{route: [{destination: {host: a}}]}]}\n".into(),
         "VirtualService production/<unnamed>: metadata.name: required"),
        ("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: Orders\nspec: {hosts: [a], http: [{route: [{destination: {host: a}}]}]}\n".into(),
         "VirtualService Orders: metadata.name: \"Orders\" is not a valid DNS-1123 subdomain (lower-case labels separated by '.', at most 253 characters)"),
        ("apiVersion: networking.istio.io/v2\nkind: VirtualService\nmetadata: {name: orders}\n".into(),
         "VirtualService orders: kind: VirtualService does not exist in version \"v2\" of networking.istio.io; served versions are v1alpha3, v1beta1, v1"),
        ("apiVersion: security.istio.io/v1alpha3\nkind: AuthorizationPolicy\nmetadata: {name: orders}\n".into(),
         "AuthorizationPolicy orders: kind: AuthorizationPolicy does not exist in version \"v1alpha3\" of security.istio.io; served versions are v1beta1, v1"),
        ("apiVersion: networking.istio.io/v1\nkind: ProxyConfig\nmetadata: {name: orders}\n".into(),
         "ProxyConfig orders: kind: unknown kind \"ProxyConfig\" in apiVersion \"networking.istio.io/v1\"; Trellis reads networking.istio.io VirtualService/DestinationRule/ServiceEntry/WorkloadEntry/Sidecar/Gateway/EnvoyFilter; security.istio.io PeerAuthentication/AuthorizationPolicy/RequestAuthentication; telemetry.istio.io Telemetry; v1 Namespace"),
        ("apiVersion: networking.istio.io/v1\nkind: EnvoyFilter\nmetadata: {name: orders}\n".into(),
         "EnvoyFilter orders: kind: EnvoyFilter does not exist in version \"v1\" of networking.istio.io; served versions are v1alpha3"),
        ("kind: VirtualService\nmetadata: {name: orders}\n".into(),
         "VirtualService orders: apiVersion: missing apiVersion"),
        ("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: orders\n".into(),
         "unclosed bracket '{' (line 3, column 11)"),
        ("apiVersion: networking.istio.io/v1\nkind: VirtualService\nkind: Gateway\n".into(),
         "duplicate mapping key: kind, set DuplicateKeyPolicy in Options if acceptable (line 3, column 1)"),
        ("just a string\n".into(),
         "a document must be a mapping with apiVersion and kind, found a string"),
        ("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: orders}\nspec: {hosts: orders}\n".into(),
         "VirtualService orders: spec.hosts: expected sequence start (line 4, column 15)"),
        ("apiVersion: v1\nkind: Namespace\nmetadata: {name: Production}\n".into(),
         "Namespace Production: metadata.name: \"Production\" is not a valid DNS-1123 label (lower-case letters, digits and '-', at most 63 characters, starting and ending with a letter or digit)"),
    ]
}

#[test]
fn each_invalid_document_gives_its_exact_error() {
    let cases = cases();
    assert!(cases.len() >= 60, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for (text, expected) in &cases {
        let checked = check_text(text, UnknownFields::Warn);
        let errors: Vec<String> = checked
            .problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
            .map(|p| p.to_string().trim_start_matches("doc 1: ").to_owned())
            .collect();
        if errors != [expected.to_string()] {
            failures.push(format!("document:\n{text}expected: {expected}\n     got: {errors:#?}\n"));
        }
        assert!(checked.accepted.is_empty(), "an invalid document was accepted:\n{text}");
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn unknown_fields_warn_by_default_and_fail_when_strict() {
    let text = doc(VS, &format!("{{hosts: [orders], http: [{{{R}, retires: {{attempts: 3}}}}]}}"));
    let lenient = check_text(&text, UnknownFields::Warn);
    assert_eq!(lenient.errors(), 0);
    assert_eq!(lenient.accepted.len(), 1);
    assert_eq!(
        lenient.problems[0].to_string(),
        "doc 1: VirtualService production/orders: spec.http[0].retires: warning: unknown field"
    );
    let strict = check_text(&text, UnknownFields::Reject);
    assert_eq!(strict.errors(), 1);
    assert!(strict.accepted.is_empty());
    assert_eq!(
        strict.problems[0].to_string(),
        "doc 1: VirtualService production/orders: spec.http[0].retires: unknown field"
    );
}

#[test]
fn a_bad_document_does_not_hide_the_good_ones() {
    let good = doc(VS, &format!("{{hosts: [orders], http: [{{{R}}}]}}"));
    let text = format!(
        "{good}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: [oops\n---\n{good}"
    );
    let checked = check_text(&text, UnknownFields::Warn);
    assert_eq!(checked.documents, 3);
    assert_eq!(checked.accepted.len(), 2);
    assert_eq!(checked.errors(), 1);
    assert_eq!(checked.problems[0].doc, 2);
    assert_eq!(checked.problems[0].line, Some(10), "{}", checked.problems[0]);
}

#[test]
fn warnings_do_not_reject() {
    let text = doc(DR, "{host: orders, trafficPolicy: {loadBalancer: {simple: LEAST_CONN}}}");
    let checked = check_text(&text, UnknownFields::Reject);
    assert_eq!(checked.errors(), 0);
    assert_eq!(checked.accepted.len(), 1);
    assert_eq!(
        checked.problems[0].to_string(),
        "doc 1: DestinationRule production/orders: spec.trafficPolicy.loadBalancer.simple: warning: LEAST_CONN is deprecated; use LEAST_REQUEST"
    );
}

#[test]
fn a_fault_without_a_percentage_is_accepted_with_a_warning_that_it_does_nothing() {
    let text = vs_http(&format!("{{{R}, fault: {{abort: {{httpStatus: 503}}, delay: {{fixedDelay: 1s}}}}}}"));
    let checked = check_text(&text, UnknownFields::Reject);
    assert_eq!(checked.errors(), 0);
    assert_eq!(checked.accepted.len(), 1);
    let problems: Vec<String> = checked.problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        problems,
        [
            "doc 1: VirtualService production/orders: spec.http[0].fault.delay.percentage: warning: not set: as in Istio, no request is delayed",
            "doc 1: VirtualService production/orders: spec.http[0].fault.abort.percentage: warning: not set: as in Istio, no request is aborted",
        ]
    );
    assert!(checked.problems.iter().all(|p| p.severity == Severity::Warning));
}

#[test]
fn locality_failover_without_outlier_detection_is_accepted_with_a_warning() {
    let warnings = |spec: &str| -> Vec<String> {
        let checked = check_text(&doc(DR, spec), UnknownFields::Reject);
        assert_eq!(checked.errors(), 0, "{spec}: {:?}", checked.problems);
        checked.problems.iter().map(|p| p.to_string().trim_start_matches("doc 1: ").to_owned()).collect()
    };
    assert_eq!(
        warnings(
            "{host: orders, trafficPolicy: {loadBalancer: {localityLbSetting: {failover: [{from: us-east, to: eu-west}]}}}}"
        ),
        [
            "DestinationRule production/orders: spec.trafficPolicy.loadBalancer.localityLbSetting.failover: warning: has no effect without outlierDetection: as in Istio, traffic fails over only from endpoints outlier detection ejects"
        ]
    );
    // A subset inherits the rule's outlier detection; distribute needs none.
    assert!(
        warnings("{host: orders, trafficPolicy: {outlierDetection: {consecutive5xxErrors: 3}}, subsets: [{name: v1, trafficPolicy: {loadBalancer: {localityLbSetting: {failoverPriority: [topology.istio.io/network]}}}}]}")
            .is_empty()
    );
    assert!(
        warnings("{host: orders, trafficPolicy: {loadBalancer: {localityLbSetting: {distribute: [{from: 'us-east/*', to: {'us-east/*': 80, 'eu-west/*': 20}}]}}}}")
            .is_empty()
    );
    // Istio's documented examples.
    assert!(
        warnings("{host: orders, trafficPolicy: {outlierDetection: {consecutive5xxErrors: 1}, loadBalancer: {localityLbSetting: {enabled: true, failover: [{from: us-east, to: eu-west}, {from: us-west, to: us-east}], failoverPriority: [topology.istio.io/network, 'topology.istio.io/cluster=c1']}}}}")
            .is_empty()
    );
}

/// Istio's egress task writes `resolution: DNS` without endpoints; Trellis resolves no names,
/// so such an entry (and the routes through an egress gateway built on it) does nothing.
#[test]
fn a_dns_service_entry_without_ip_endpoints_is_said_to_be_left_out() {
    let warnings = |spec: &str| -> Vec<String> {
        let checked = check_text(&doc(SE, spec), UnknownFields::Reject);
        assert_eq!(checked.errors(), 0, "{spec}: {:?}", checked.problems);
        checked.problems.iter().map(|p| p.to_string().trim_start_matches("doc 1: ").to_owned()).collect()
    };
    let ports = "ports: [{number: 80, name: http, protocol: HTTP}]";
    let found = warnings(&format!("{{hosts: [edition.cnn.com], {ports}, resolution: DNS}}"));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("spec.resolution: warning: Trellis does not resolve host names"), "{found:?}");
    let named = warnings(&format!(
        "{{hosts: [edition.cnn.com], {ports}, resolution: DNS_ROUND_ROBIN, endpoints: [{{address: cnn.example.net}}]}}"
    ));
    assert_eq!(named.len(), 1, "a name is no IP endpoint: {named:?}");
    for fine in [
        format!(
            "{{hosts: [edition.cnn.com], {ports}, resolution: DNS, endpoints: [{{address: 203.0.113.10}}]}}"
        ),
        format!(
            "{{hosts: [edition.cnn.com], {ports}, resolution: DNS, workloadSelector: {{labels: {{app: cnn}}}}}}"
        ),
        format!("{{hosts: [edition.cnn.com], {ports}, resolution: NONE}}"),
    ] {
        assert_eq!(warnings(&fine), Vec::<String>::new(), "{fine}");
    }
}

#[test]
fn gateway_fields_trellis_does_not_enforce_are_named_in_warnings() {
    let warnings = |spec: &str| -> Vec<String> {
        let checked = check_text(&doc(GW, spec), UnknownFields::Reject);
        assert_eq!(checked.errors(), 0, "{spec}: {:?}", checked.problems);
        checked.problems.iter().map(|p| p.to_string().trim_start_matches("doc 1: ").to_owned()).collect()
    };
    let plain = "{servers: [{port: {number: 443, name: https, protocol: HTTPS}, hosts: [a.example.com], tls: {mode: MUTUAL, credentialName: a-cert, minProtocolVersion: TLSV1_2}}]}";
    assert_eq!(warnings(plain), Vec::<String>::new(), "what the gateway does is not warned about");
    let unenforced = "{servers: [{port: {number: 443, name: https, protocol: HTTPS}, hosts: [a.example.com], defaultEndpoint: '127.0.0.1:8080', tls: {mode: OPTIONAL_MUTUAL, credentialName: a-cert, subjectAltNames: [client], minProtocolVersion: TLSV1_1, cipherSuites: [ECDHE-RSA-AES128-GCM-SHA256]}}]}";
    let p = "Gateway production/orders: spec.servers[0]";
    assert_eq!(
        warnings(unenforced),
        [
            format!("{p}.defaultEndpoint: warning: read but not enforced by Trellis's gateways"),
            format!(
                "{p}.tls.mode: warning: OPTIONAL_MUTUAL is not implemented by Trellis's gateways: the server is left out"
            ),
            format!("{p}.tls.subjectAltNames: warning: read but not enforced by Trellis's gateways"),
            format!(
                "{p}.tls.minProtocolVersion: warning: TLS 1.0 and 1.1 are not offered (rustls): TLSV1_2 is used"
            ),
            format!(
                "{p}.tls.cipherSuites: warning: applies to TLS 1.2 only, and only to the ECDHE AES-GCM and CHACHA20 suites rustls has; the gateway logs and ignores others"
            ),
        ]
    );
    // ISTIO_MUTUAL (an egress gateway reached by sidecars) is enforced: only the settings the
    // mesh's own TLS replaces are named.
    let mesh = "{servers: [{port: {number: 80, name: https, protocol: HTTPS}, hosts: [edition.cnn.com], tls: {mode: ISTIO_MUTUAL}}]}";
    assert_eq!(warnings(mesh), Vec::<String>::new());
    let mesh_pinned = "{servers: [{port: {number: 80, name: https, protocol: HTTPS}, hosts: [edition.cnn.com], tls: {mode: ISTIO_MUTUAL, minProtocolVersion: TLSV1_3}}]}";
    assert_eq!(
        warnings(mesh_pinned),
        [format!(
            "{p}.tls: warning: ISTIO_MUTUAL uses the mesh's TLS settings; minProtocolVersion, maxProtocolVersion and cipherSuites are ignored"
        )]
    );
}
