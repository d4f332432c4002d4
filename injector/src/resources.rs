//! The proxy's requests and limits, from `sidecar.istio.io/proxyCPU`, `proxyMemory`,
//! `proxyCPULimit` and `proxyMemoryLimit`.
//!
//! As in Istio's template: a pod that sets any of them gets exactly what it sets and none of the
//! defaults — a request only from `proxyCPU`/`proxyMemory`, a limit only from the `*Limit` ones.
//! Mixing them with the defaults would give `proxyCPU: 4000m` a request above the default 2-core
//! limit, which Kubernetes refuses for every pod of the workload.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use trellis_api::annotations::{self, AnnotationError, Quantity, names::annotation as ann};

/// For pods that set none: sized for the Trellis proxy (Istio's are sized for Envoy).
const DEFAULT_REQUESTS: [(&str, &str); 2] = [("cpu", "50m"), ("memory", "64Mi")];
const DEFAULT_LIMITS: [(&str, &str); 2] = [("cpu", "2"), ("memory", "512Mi")];

/// One resource's request and limit annotations.
struct Pair {
    resource: &'static str,
    request: &'static str,
    limit: &'static str,
}

const PAIRS: [Pair; 2] = [
    Pair { resource: "cpu", request: ann::PROXY_CPU, limit: ann::PROXY_CPU_LIMIT },
    Pair { resource: "memory", request: ann::PROXY_MEMORY, limit: ann::PROXY_MEMORY_LIMIT },
];

/// The proxy container's `resources`, or every annotation that cannot be used.
pub fn proxy_resources(annotations: &BTreeMap<String, String>) -> Result<Value, Vec<AnnotationError>> {
    let mut errors = Vec::new();
    let read = |name: &str, errors: &mut Vec<AnnotationError>| -> Option<Quantity> {
        let value = annotations.get(name)?;
        annotations::parse_resource_quantity(name, value).map_err(|e| errors.push(e)).ok()
    };
    let mut requests = Map::new();
    let mut limits = Map::new();
    let mut any_set = false;
    for pair in &PAIRS {
        any_set |= annotations.contains_key(pair.request) || annotations.contains_key(pair.limit);
        let request = read(pair.request, &mut errors);
        let limit = read(pair.limit, &mut errors);
        if let (Some(request), Some(limit)) = (&request, &limit)
            && let (Some(r), Some(l)) = (request.to_millis(), limit.to_millis())
            && r > l
        {
            errors.push(AnnotationError::new(
                pair.request,
                request.as_str(),
                format!(
                    "the request is above the limit {} = {:?}; Kubernetes refuses such a pod",
                    pair.limit,
                    limit.as_str()
                ),
            ));
        }
        if let Some(q) = request {
            requests.insert(pair.resource.to_owned(), Value::String(q.to_string()));
        }
        if let Some(q) = limit {
            limits.insert(pair.resource.to_owned(), Value::String(q.to_string()));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    if !any_set {
        let map = |pairs: &[(&str, &str)]| {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned()))).collect()
        };
        requests = map(&DEFAULT_REQUESTS);
        limits = map(&DEFAULT_LIMITS);
    }
    let mut resources = Map::new();
    if !requests.is_empty() {
        resources.insert("requests".to_owned(), Value::Object(requests));
    }
    if !limits.is_empty() {
        resources.insert("limits".to_owned(), Value::Object(limits));
    }
    Ok(Value::Object(resources))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn resources(pairs: &[(&str, &str)]) -> Result<Value, Vec<String>> {
        let annotations = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        proxy_resources(&annotations).map_err(|errors| errors.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn defaults_only_when_nothing_is_annotated() {
        assert_eq!(
            resources(&[]).unwrap(),
            json!({"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "2", "memory": "512Mi"}})
        );
    }

    #[test]
    fn a_large_cpu_request_alone_gets_no_default_limit() {
        // Istio's traffic-annotations case: the request alone, so Kubernetes accepts the pod.
        assert_eq!(
            resources(&[("sidecar.istio.io/proxyCPU", "4000m")]).unwrap(),
            json!({"requests": {"cpu": "4000m"}})
        );
        assert_eq!(
            resources(&[("sidecar.istio.io/proxyMemoryLimit", "2Gi")]).unwrap(),
            json!({"limits": {"memory": "2Gi"}})
        );
        assert_eq!(
            resources(&[
                ("sidecar.istio.io/proxyCPU", "100m"),
                ("sidecar.istio.io/proxyCPULimit", "1000m"),
                ("sidecar.istio.io/proxyMemory", "1Gi"),
                ("sidecar.istio.io/proxyMemoryLimit", "2Gi"),
            ])
            .unwrap(),
            json!({"requests": {"cpu": "100m", "memory": "1Gi"}, "limits": {"cpu": "1000m", "memory": "2Gi"}})
        );
    }

    #[test]
    fn a_request_above_its_own_limit_is_refused_naming_both() {
        let errors =
            resources(&[("sidecar.istio.io/proxyCPU", "4"), ("sidecar.istio.io/proxyCPULimit", "500m")])
                .unwrap_err();
        assert_eq!(
            errors,
            [
                r#"annotation sidecar.istio.io/proxyCPU: invalid value "4": the request is above the limit sidecar.istio.io/proxyCPULimit = "500m"; Kubernetes refuses such a pod"#
            ]
        );
        // Equal is fine, and units are compared by value, not by text.
        assert!(
            resources(&[
                ("sidecar.istio.io/proxyMemory", "1Gi"),
                ("sidecar.istio.io/proxyMemoryLimit", "1024Mi")
            ])
            .is_ok()
        );
    }

    #[test]
    fn malformed_quantities_are_named() {
        let errors = resources(&[
            ("sidecar.istio.io/proxyCPU", "four"),
            ("sidecar.istio.io/proxyMemory", "-1Gi"),
            ("sidecar.istio.io/proxyCPULimit", "1e99999"),
            ("sidecar.istio.io/proxyMemoryLimit", ""),
        ])
        .unwrap_err();
        assert_eq!(errors.len(), 4, "{errors:?}");
        for (error, name) in
            errors.iter().zip(["proxyCPU", "proxyCPULimit", "proxyMemory", "proxyMemoryLimit"])
        {
            assert!(error.starts_with(&format!("annotation sidecar.istio.io/{name}: ")), "{error}");
        }
        let huge = "9".repeat(100_000);
        let errors = resources(&[("sidecar.istio.io/proxyCPU", &huge)]).unwrap_err();
        assert!(errors[0].contains("sidecar.istio.io/proxyCPU") && errors[0].len() < 400, "{}", errors[0]);
    }
}
