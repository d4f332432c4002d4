//! Whether a pod gets the redirect, and with which settings. Pure: the pod as the API server
//! returned it in, the decision out.

use k8s_openapi::api::core::v1::Pod;
use trellis_api::annotations::names::{PROXY_CONTAINER, annotation};
use trellis_proxy_init::settings::{DnsCapture, Settings};

use crate::protocol::{CniError, code};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Leave the pod's network alone, for this reason (logged).
    Skip(String),
    Redirect(Box<Settings>),
}

/// Programs only pods the injector meshed (its status annotation and a proxy container), that
/// have their own network and whose namespace is not excluded; the settings come from the
/// pod's annotations exactly as proxy-init reads them.
pub fn decide(pod: &Pod, excluded_namespaces: &[String], ipv6: bool) -> Result<Decision, CniError> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    if excluded_namespaces.iter().any(|n| n == namespace) {
        return Ok(Decision::Skip(format!("namespace {namespace} is excluded")));
    }
    let spec = pod.spec.as_ref();
    if spec.and_then(|s| s.host_network).unwrap_or(false) {
        return Ok(Decision::Skip("the pod uses the host's network".to_owned()));
    }
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let has_proxy = spec.is_some_and(|s| {
        s.containers.iter().chain(s.init_containers.iter().flatten()).any(|c| c.name == PROXY_CONTAINER)
    });
    // Both signs: a copied annotation without a proxy, or a container merely named like one,
    // would otherwise redirect a pod's traffic to a port nothing listens on.
    if !annotations.contains_key(annotation::SIDECAR_STATUS) || !has_proxy {
        return Ok(Decision::Skip("the pod has no sidecar".to_owned()));
    }
    let invalid = |details: String| {
        CniError::new(code::INVALID_POD_SETTINGS, "the pod's redirect settings are invalid", details)
    };
    match Settings::from_pod_annotations(&annotations, ipv6) {
        Ok(Some(mut settings)) => {
            if dns_capture(pod).map_err(invalid)? {
                settings.capture_dns = DnsCapture::All;
            }
            Ok(Decision::Redirect(Box::new(settings)))
        }
        Ok(None) => Ok(Decision::Skip("interception mode is NONE".to_owned())),
        Err(details) => Err(invalid(details)),
    }
}

/// Whether the pod's proxy captures DNS (`ISTIO_META_DNS_CAPTURE` in its environment, where the
/// injector puts the proxy config's switch). As Istio's CNI plugin does, every port-53 query is
/// then taken: the pod's resolv.conf is not known while its network is being made.
fn dns_capture(pod: &Pod) -> Result<bool, String> {
    let Some(spec) = pod.spec.as_ref() else { return Ok(false) };
    let proxy = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == PROXY_CONTAINER);
    let value = proxy
        .and_then(|c| c.env.as_ref())
        .and_then(|env| env.iter().find(|e| e.name == DNS_CAPTURE_ENV))
        .and_then(|e| e.value.as_deref());
    match value {
        None => Ok(false),
        Some(v) => trellis_api::annotations::parse_bool(DNS_CAPTURE_ENV, v).map_err(|_| {
            let shown: String = v.chars().take(64).collect();
            format!("the proxy's environment variable {DNS_CAPTURE_ENV}: invalid value {shown:?}: expected true or false")
        }),
    }
}

const DNS_CAPTURE_ENV: &str = "ISTIO_META_DNS_CAPTURE";

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    fn meshed(extra_annotations: serde_json::Value) -> Pod {
        let mut annotations = json!({"sidecar.istio.io/status": "{\"containers\":[\"istio-proxy\"]}"});
        annotations.as_object_mut().unwrap().extend(extra_annotations.as_object().unwrap().clone());
        pod(json!({
            "metadata": {"name": "web-0", "namespace": "shop", "annotations": annotations},
            "spec": {"initContainers": [{"name": "istio-proxy"}], "containers": [{"name": "app"}]}
        }))
    }

    #[test]
    fn meshed_pods_get_the_redirect_from_their_annotations() {
        let got =
            decide(&meshed(json!({"traffic.sidecar.istio.io/excludeOutboundPorts": "5432"})), &[], false);
        let Ok(Decision::Redirect(settings)) = got else { panic!("{got:?}") };
        assert_eq!(settings.exclude_outbound_ports, [5432]);
        assert_eq!(settings.proxy_port, 15001);
    }

    #[test]
    fn one_sign_of_a_sidecar_is_not_enough() {
        let container_only = pod(
            json!({"metadata": {"namespace": "shop"}, "spec": {"initContainers": [{"name": "istio-proxy"}], "containers": [{"name": "app"}]}}),
        );
        assert_eq!(decide(&container_only, &[], false), Ok(Decision::Skip("the pod has no sidecar".into())));
        let mut annotation_only = meshed(json!({}));
        annotation_only.spec.as_mut().unwrap().init_containers = None;
        assert_eq!(decide(&annotation_only, &[], false), Ok(Decision::Skip("the pod has no sidecar".into())));
    }

    #[test]
    fn other_pods_are_left_alone() {
        let plain =
            pod(json!({"metadata": {"namespace": "shop"}, "spec": {"containers": [{"name": "app"}]}}));
        assert_eq!(decide(&plain, &[], false), Ok(Decision::Skip("the pod has no sidecar".into())));
        let mut host = meshed(json!({}));
        host.spec.as_mut().unwrap().host_network = Some(true);
        assert_eq!(decide(&host, &[], false), Ok(Decision::Skip("the pod uses the host's network".into())));
        let excluded = decide(&meshed(json!({})), &["kube-system".into(), "shop".into()], false);
        assert_eq!(excluded, Ok(Decision::Skip("namespace shop is excluded".into())));
        let none = decide(&meshed(json!({"sidecar.istio.io/interceptionMode": "NONE"})), &[], false);
        assert_eq!(none, Ok(Decision::Skip("interception mode is NONE".into())));
    }

    #[test]
    fn bad_annotations_fail_the_pod_with_their_names() {
        let err =
            decide(&meshed(json!({"traffic.sidecar.istio.io/includeInboundPorts": "http"})), &[], false)
                .unwrap_err();
        assert_eq!(err.code, code::INVALID_POD_SETTINGS);
        assert!(err.details.contains("traffic.sidecar.istio.io/includeInboundPorts"), "{err}");
        let err =
            decide(&meshed(json!({"traffic.sidecar.istio.io/excludeOutboundPorts": "5432,"})), &[], false)
                .unwrap_err();
        assert!(err.details.contains("traffic.sidecar.istio.io/excludeOutboundPorts"), "{err}");
    }

    #[test]
    fn a_proxy_that_captures_dns_gets_all_port_53_queries() {
        let mut pod = meshed(json!({}));
        let with_env = |value: &str| json!([{"name": "istio-proxy", "env": [{"name": "ISTIO_META_DNS_CAPTURE", "value": value}]}]);
        pod.spec.as_mut().unwrap().init_containers = Some(serde_json::from_value(with_env("true")).unwrap());
        let Ok(Decision::Redirect(settings)) = decide(&pod, &[], false) else { panic!() };
        assert_eq!(settings.capture_dns, DnsCapture::All);
        pod.spec.as_mut().unwrap().init_containers = Some(serde_json::from_value(with_env("false")).unwrap());
        let Ok(Decision::Redirect(settings)) = decide(&pod, &[], false) else { panic!() };
        assert_eq!(settings.capture_dns, DnsCapture::Off);
        pod.spec.as_mut().unwrap().init_containers = Some(serde_json::from_value(with_env("maybe")).unwrap());
        let err = decide(&pod, &[], false).unwrap_err();
        assert!(err.details.contains("ISTIO_META_DNS_CAPTURE"), "{err}");
    }

    #[test]
    fn tproxy_pods_get_the_tproxy_redirect() {
        let got = decide(&meshed(json!({"sidecar.istio.io/interceptionMode": "TPROXY"})), &[], true);
        let Ok(Decision::Redirect(settings)) = got else { panic!("{got:?}") };
        assert_eq!(
            settings.interception,
            trellis_proxy_init::settings::Interception::Tproxy { mark: 1337, route_table: 133 }
        );
    }
}
