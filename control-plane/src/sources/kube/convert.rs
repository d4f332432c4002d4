//! Kubernetes objects → the model's neutral shapes. Pure functions: every field that may be
//! missing or malformed is skipped rather than trusted, because these objects come from the
//! cluster, not from us.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use trellis_api::locality::Locality;

use crate::model::{KubeEndpoint, KubeEndpointSlice, KubePod, KubeSecret, KubeService, KubeServicePort};

/// The annotation that limits which namespaces see a Service (Istio's).
pub const EXPORT_TO_ANNOTATION: &str = "networking.istio.io/exportTo";
/// The label the EndpointSlice controller sets to the owning Service's name.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The keys of a Secret a Gateway reads: Kubernetes' TLS Secret and Istio's generic one.
pub const TLS_SECRET_KEYS: [&str; 6] = ["tls.crt", "tls.key", "ca.crt", "cert", "key", "cacert"];
/// Larger values are not certificates (a Secret may hold up to 1 MiB of anything).
const MAX_TLS_VALUE: usize = 256 << 10;

/// A Secret's TLS keys as text; `None` when it has none (most Secrets: tokens, passwords), so
/// the model keeps only what a Gateway could use. Values that are not UTF-8 or are too large
/// are left out with a warning naming the Secret and key.
pub fn tls_secret(secret: &Secret) -> Option<KubeSecret> {
    let meta = &secret.metadata;
    let (namespace, name) =
        (meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default());
    let mut data = std::collections::BTreeMap::new();
    for (key, value) in secret.data.iter().flatten() {
        if !TLS_SECRET_KEYS.contains(&key.as_str()) {
            continue;
        }
        match std::str::from_utf8(&value.0) {
            Ok(text) if text.len() <= MAX_TLS_VALUE => {
                data.insert(key.clone(), text.to_owned());
            }
            Ok(text) => {
                tracing::warn!(secret = %format!("{namespace}/{name}"), key, bytes = text.len(), "Secret value too large for a certificate; left out")
            }
            Err(_) => {
                tracing::warn!(secret = %format!("{namespace}/{name}"), key, "Secret value is not PEM text; left out")
            }
        }
    }
    (!data.is_empty()).then_some(KubeSecret { namespace, name, data })
}

pub fn service(svc: &Service) -> KubeService {
    let meta = &svc.metadata;
    let spec = svc.spec.as_ref();
    // `clusterIPs` is the dual-stack field; `clusterIP` alone is what older servers fill.
    let ips = spec
        .and_then(|s| s.cluster_ips.clone())
        .filter(|ips| !ips.is_empty())
        .or_else(|| spec.and_then(|s| s.cluster_ip.clone()).map(|ip| vec![ip]))
        .unwrap_or_default();
    let export_to = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(EXPORT_TO_ANNOTATION))
        .map(|value| split_list(value))
        .unwrap_or_default();
    KubeService {
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        // Headless services say "None"; that and anything unparsable is simply not an address.
        addresses: ips.iter().filter_map(|ip| ip.parse().ok()).collect(),
        ports: spec.and_then(|s| s.ports.as_ref()).into_iter().flatten().filter_map(service_port).collect(),
        labels: meta.labels.clone().unwrap_or_default(),
        export_to,
    }
}

fn service_port(p: &k8s_openapi::api::core::v1::ServicePort) -> Option<KubeServicePort> {
    let port = u16::try_from(p.port).ok()?;
    let target_port = match &p.target_port {
        Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
        // A named target port is resolved per pod, from the endpoint slice's ports.
        Some(IntOrString::String(_)) => None,
        // The API server defaults it to `port`; an object without it means the same.
        None => Some(port),
    };
    Some(KubeServicePort {
        name: p.name.clone().unwrap_or_default(),
        port,
        app_protocol: p.app_protocol.clone(),
        target_port,
    })
}

/// `a, b,,c` → `[a, b, c]`.
fn split_list(value: &str) -> Vec<String> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

/// `None` for slices no Service owns (hand-made or mirrored without the label): translation
/// finds slices through their service, so those could never be used.
pub fn endpoint_slice(slice: &EndpointSlice) -> Option<KubeEndpointSlice> {
    let meta = &slice.metadata;
    let service = meta.labels.as_ref()?.get(SERVICE_NAME_LABEL)?.clone();
    let ports = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| Some((p.name.clone().unwrap_or_default(), u16::try_from(p.port?).ok()?)))
        .collect();
    let endpoints = slice.endpoints.iter().filter_map(endpoint).collect();
    Some(KubeEndpointSlice {
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        service,
        ports,
        endpoints,
    })
}

/// `None` when no address is an IP (FQDN slices): there is nothing to connect to.
fn endpoint(e: &k8s_openapi::api::discovery::v1::Endpoint) -> Option<KubeEndpoint> {
    let addresses: Vec<IpAddr> = e.addresses.iter().filter_map(|a| a.parse().ok()).collect();
    if addresses.is_empty() {
        return None;
    }
    // The API says an absent `ready` means "unknown", to be read as ready.
    let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
    let pod = e.target_ref.as_ref().filter(|r| r.kind.as_deref() == Some("Pod")).and_then(|r| r.name.clone());
    let node_name = e.node_name.clone().filter(|n| !n.is_empty());
    Some(KubeEndpoint { addresses, ready, pod, node_name })
}

/// A node's locality, from its topology labels (only the metadata is watched).
pub fn node_locality(meta: &ObjectMeta) -> Locality {
    let labels = meta.labels.as_ref();
    Locality::from_topology_labels(|key| labels.and_then(|l| l.get(key)).cloned())
}

/// `None` for pods that are not part of the mesh's address space: host-network pods share the
/// node's IP, and finished pods (`Succeeded`/`Failed`) have given their IP back for reuse by
/// another pod.
pub fn pod(pod: &Pod) -> Option<KubePod> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    if spec.and_then(|s| s.host_network).unwrap_or(false) {
        return None;
    }
    let status = pod.status.as_ref();
    if matches!(status.and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")) {
        return None;
    }
    // `podIPs` is the dual-stack field; `podIP` alone is what older servers fill.
    let ips: Vec<IpAddr> = match status.and_then(|s| s.pod_ips.as_ref()).filter(|ips| !ips.is_empty()) {
        Some(ips) => ips.iter().filter_map(|ip| ip.ip.parse().ok()).collect(),
        None => status.and_then(|s| s.pod_ip.as_deref()).and_then(|ip| ip.parse().ok()).into_iter().collect(),
    };
    Some(KubePod {
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        labels: meta.labels.clone().unwrap_or_default(),
        ips,
        // Admission fills it in; a pod without one runs as "default", as Kubernetes does.
        service_account: spec
            .and_then(|s| s.service_account_name.clone())
            .filter(|sa| !sa.is_empty())
            .unwrap_or_else(|| "default".to_owned()),
        node_name: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        workload_name: workload_name(meta),
    })
}

/// The pod's workload name, from its controlling owner (see `trellis_api::workload`).
fn workload_name(meta: &ObjectMeta) -> String {
    let owner = meta.owner_references.iter().flatten().find(|o| o.controller == Some(true));
    let hash = meta.labels.as_ref().and_then(|l| l.get("pod-template-hash")).map(String::as_str);
    trellis_api::workload::workload_name(
        meta.name.as_deref(),
        meta.generate_name.as_deref(),
        owner.map(|o| trellis_api::workload::Owner { kind: &o.kind, name: &o.name }),
        hash,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn from<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn secrets_keep_only_their_tls_keys_and_only_what_is_text_of_a_sane_size() {
        use base64::Engine;
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let secret: Secret = from(json!({
            "metadata": {"namespace": "istio-system", "name": "a-cert"},
            "data": {
                "tls.crt": b64(b"CHAIN"), "tls.key": b64(b"KEY"), "password": b64(b"hunter2"),
                "ca.crt": b64(&[0xff, 0xfe, 0x00]), "cacert": b64(&vec![b'A'; MAX_TLS_VALUE + 1])
            }
        }));
        let kept = tls_secret(&secret).unwrap();
        let keys: Vec<_> = kept.data.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            keys,
            [("tls.crt", "CHAIN"), ("tls.key", "KEY")],
            "no password, no binary, nothing oversized"
        );
        assert!(!format!("{kept:?}").contains("KEY\""), "Debug never shows the material: {kept:?}");
        let token: Secret =
            from(json!({"metadata": {"namespace": "shop", "name": "token"}, "data": {"token": b64(b"t")}}));
        assert_eq!(tls_secret(&token), None, "a Secret without TLS keys is not kept");
        assert_eq!(tls_secret(&from(json!({"metadata": {}}))), None);
    }

    #[test]
    fn services_keep_ips_ports_and_export_to() {
        let svc: Service = from(json!({
            "metadata": {"namespace": "shop", "name": "reviews", "labels": {"app": "reviews"},
                "annotations": {"networking.istio.io/exportTo": " ., istio-system ,,"}},
            "spec": {"clusterIP": "10.0.0.7", "clusterIPs": ["10.0.0.7", "fd00::7"], "ports": [
                {"name": "http", "port": 9080, "targetPort": 8080, "appProtocol": "http"},
                {"name": "grpc", "port": 9090, "targetPort": "grpc-port"},
                {"name": "plain", "port": 7000},
                {"name": "bad", "port": 70000}
            ]}
        }));
        let s = service(&svc);
        assert_eq!((s.namespace.as_str(), s.name.as_str()), ("shop", "reviews"));
        assert_eq!(s.addresses, vec!["10.0.0.7".parse::<IpAddr>().unwrap(), "fd00::7".parse().unwrap()]);
        assert_eq!(s.export_to, vec![".", "istio-system"]);
        assert_eq!(s.labels.get("app").map(String::as_str), Some("reviews"));
        let ports: Vec<_> = s
            .ports
            .iter()
            .map(|p| (p.name.as_str(), p.port, p.app_protocol.as_deref(), p.target_port))
            .collect();
        assert_eq!(
            ports,
            vec![
                ("http", 9080, Some("http"), Some(8080)),
                ("grpc", 9090, None, None),
                ("plain", 7000, None, Some(7000)),
            ]
        );
    }

    #[test]
    fn headless_services_have_no_address() {
        let svc: Service = from(json!({"metadata": {"name": "db"}, "spec": {"clusterIP": "None"}}));
        assert!(service(&svc).addresses.is_empty());
        let bare: Service = from(json!({"metadata": {"name": "x"}}));
        assert_eq!(service(&bare).name, "x");
    }

    #[test]
    fn endpoint_slices_keep_ready_state_and_pods() {
        let slice: EndpointSlice = from(json!({
            "metadata": {"namespace": "shop", "name": "reviews-abc",
                "labels": {"kubernetes.io/service-name": "reviews"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}, {"name": "nameless"}],
            "endpoints": [
                {"addresses": ["10.1.0.5"], "targetRef": {"kind": "Pod", "name": "reviews-1"}, "nodeName": "node-a"},
                {"addresses": ["10.1.0.6"], "conditions": {"ready": false}},
                {"addresses": ["not-an-ip"]}
            ]
        }));
        let s = endpoint_slice(&slice).unwrap();
        assert_eq!(s.service, "reviews");
        assert_eq!(s.ports, BTreeMap::from([("http".to_owned(), 8080)]));
        assert_eq!(s.endpoints.len(), 2);
        assert!(s.endpoints[0].ready);
        assert_eq!(s.endpoints[0].pod.as_deref(), Some("reviews-1"));
        assert_eq!(s.endpoints[0].node_name.as_deref(), Some("node-a"));
        assert_eq!(s.endpoints[1].node_name, None);
        assert!(!s.endpoints[1].ready);
        assert_eq!(s.endpoints[1].pod, None);
    }

    #[test]
    fn slices_without_a_service_are_left_out() {
        let slice: EndpointSlice =
            from(json!({"metadata": {"name": "manual"}, "addressType": "IPv4", "endpoints": []}));
        assert_eq!(endpoint_slice(&slice), None);
    }

    #[test]
    fn pods_outside_the_mesh_address_space_are_left_out() {
        let pod_json = |spec: serde_json::Value, status: serde_json::Value| -> Pod {
            from(json!({"metadata": {"namespace": "shop", "name": "p", "labels": {"app": "a"}},
                "spec": spec, "status": status}))
        };
        let running = pod_json(
            json!({"containers": [], "serviceAccountName": "reviews", "nodeName": "node-a"}),
            json!({"phase": "Running", "podIP": "10.1.0.5", "podIPs": [{"ip": "10.1.0.5"}, {"ip": "fd00::5"}]}),
        );
        let p = pod(&running).unwrap();
        assert_eq!(p.ips, vec!["10.1.0.5".parse::<IpAddr>().unwrap(), "fd00::5".parse().unwrap()]);
        assert_eq!(p.service_account, "reviews");
        assert_eq!(p.node_name, "node-a");
        assert_eq!(p.labels.get("app").map(String::as_str), Some("a"));

        let old_server = pod_json(json!({"containers": []}), json!({"podIP": "10.1.0.9"}));
        let p = pod(&old_server).unwrap();
        assert_eq!(p.ips, vec!["10.1.0.9".parse::<IpAddr>().unwrap()]);
        assert_eq!(p.service_account, "default");

        let host = pod_json(json!({"containers": [], "hostNetwork": true}), json!({"podIP": "192.168.1.2"}));
        assert_eq!(pod(&host), None);
        let done = pod_json(json!({"containers": []}), json!({"phase": "Succeeded", "podIP": "10.1.0.5"}));
        assert_eq!(pod(&done), None);
    }

    #[test]
    fn a_pods_workload_is_its_deployment() {
        let of = |metadata: serde_json::Value| -> String {
            let p: Pod = from(json!({"metadata": metadata, "spec": {"containers": []},
                "status": {"phase": "Running", "podIP": "10.1.0.5"}}));
            pod(&p).unwrap().workload_name
        };
        let deployed = of(json!({"namespace": "shop", "name": "reviews-v1-7d9f8c6b5-x2x",
            "labels": {"pod-template-hash": "7d9f8c6b5"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "reviews-v1-7d9f8c6b5",
                "uid": "u", "controller": true}]}));
        assert_eq!(deployed, "reviews-v1");
        let set = of(json!({"namespace": "shop", "name": "db-0",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "u", "controller": true}]}));
        assert_eq!(set, "db");
        assert_eq!(of(json!({"namespace": "shop", "name": "bare"})), "bare");
    }

    #[test]
    fn nodes_give_their_topology_labels_as_a_locality() {
        let meta: ObjectMeta = from(json!({"name": "node-a", "labels": {
            "topology.kubernetes.io/region": "us-east-1",
            "topology.kubernetes.io/zone": "us-east-1a",
            "topology.istio.io/subzone": "rack-7",
            "kubernetes.io/hostname": "node-a"}}));
        assert_eq!(node_locality(&meta).to_string(), "us-east-1/us-east-1a/rack-7");
        let bare: ObjectMeta = from(json!({"name": "node-b"}));
        assert!(node_locality(&bare).is_unknown());
    }
}
