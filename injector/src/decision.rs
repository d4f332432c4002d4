//! Whether a pod gets a sidecar, decided the way Istio decides it.
//!
//! The namespace label reaches the webhook through the MutatingWebhookConfiguration's
//! selectors; the request itself carries only the namespace name. The decision therefore takes
//! what is known about the namespace as an input and re-checks everything the pod shows.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::Pod;
use trellis_api::annotations::pod_inject_override;

use crate::config::InjectorConfig;

/// Namespaces whose pods are never injected: the control plane of the cluster itself.
pub const IGNORED_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

/// Why a pod is left alone; the text is what metrics and logs show.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SkipReason {
    HostNetwork,
    OptedOut,
    IgnoredNamespace,
    NeverInjectSelector,
    NotEnabled,
}

impl SkipReason {
    pub const ALL: [SkipReason; 5] = [
        SkipReason::HostNetwork,
        SkipReason::OptedOut,
        SkipReason::IgnoredNamespace,
        SkipReason::NeverInjectSelector,
        SkipReason::NotEnabled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::HostNetwork => "host-network",
            SkipReason::OptedOut => "opted-out",
            SkipReason::IgnoredNamespace => "ignored-namespace",
            SkipReason::NeverInjectSelector => "never-inject-selector",
            SkipReason::NotEnabled => "not-enabled",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InjectDecision {
    Inject,
    Skip(SkipReason),
}

/// What is known about the pod's namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NamespaceInjection {
    /// Labelled `istio-injection: enabled` (or selected by the namespace webhook).
    Enabled,
    /// Not labelled: only a pod-level opt-in injects.
    NotEnabled,
}

pub fn decide(pod: &Pod, namespace: &str, ns: NamespaceInjection, config: &InjectorConfig) -> InjectDecision {
    let spec_host_network = pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false);
    if spec_host_network {
        return InjectDecision::Skip(SkipReason::HostNetwork);
    }
    if IGNORED_NAMESPACES.contains(&namespace) {
        return InjectDecision::Skip(SkipReason::IgnoredNamespace);
    }
    let empty = BTreeMap::new();
    let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
    let annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    match pod_inject_override(labels, annotations) {
        Some(false) => return InjectDecision::Skip(SkipReason::OptedOut),
        Some(true) => return InjectDecision::Inject,
        None => {}
    }
    if config.never_inject.iter().any(|s| s.matches(labels)) {
        return InjectDecision::Skip(SkipReason::NeverInjectSelector);
    }
    if ns == NamespaceInjection::Enabled || config.always_inject.iter().any(|s| s.matches(labels)) {
        InjectDecision::Inject
    } else {
        InjectDecision::Skip(SkipReason::NotEnabled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(labels: &[(&str, &str)], annotations: &[(&str, &str)], host_network: bool) -> Pod {
        let map = |pairs: &[(&str, &str)]| -> Option<BTreeMap<String, String>> {
            Some(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
        };
        serde_json::from_value(serde_json::json!({
            "metadata": {"labels": map(labels), "annotations": map(annotations)},
            "spec": {"hostNetwork": host_network, "containers": [{"name": "app"}]}
        }))
        .unwrap()
    }

    #[test]
    fn follows_istio() {
        let cfg = InjectorConfig::default();
        let on = NamespaceInjection::Enabled;
        let off = NamespaceInjection::NotEnabled;
        assert_eq!(decide(&pod(&[], &[], false), "shop", on, &cfg), InjectDecision::Inject);
        assert_eq!(
            decide(&pod(&[], &[], false), "shop", off, &cfg),
            InjectDecision::Skip(SkipReason::NotEnabled)
        );
        let opt_in = pod(&[("sidecar.istio.io/inject", "true")], &[], false);
        assert_eq!(decide(&opt_in, "shop", off, &cfg), InjectDecision::Inject);
        let opt_out = pod(&[("sidecar.istio.io/inject", "false")], &[], false);
        assert_eq!(decide(&opt_out, "shop", on, &cfg), InjectDecision::Skip(SkipReason::OptedOut));
        let legacy = pod(&[], &[("sidecar.istio.io/inject", "false")], false);
        assert_eq!(decide(&legacy, "shop", on, &cfg), InjectDecision::Skip(SkipReason::OptedOut));
        assert_eq!(
            decide(&pod(&[], &[], true), "shop", on, &cfg),
            InjectDecision::Skip(SkipReason::HostNetwork)
        );
        assert_eq!(
            decide(&opt_in, "kube-system", on, &cfg),
            InjectDecision::Skip(SkipReason::IgnoredNamespace)
        );
    }

    #[test]
    fn selectors_decide_between_namespace_and_pod() {
        let cfg = InjectorConfig {
            never_inject: vec!["app=legacy".parse().unwrap()],
            always_inject: vec!["mesh=yes".parse().unwrap()],
            ..InjectorConfig::default()
        };
        let legacy = pod(&[("app", "legacy")], &[], false);
        assert_eq!(
            decide(&legacy, "shop", NamespaceInjection::Enabled, &cfg),
            InjectDecision::Skip(SkipReason::NeverInjectSelector)
        );
        let always = pod(&[("mesh", "yes")], &[], false);
        assert_eq!(decide(&always, "shop", NamespaceInjection::NotEnabled, &cfg), InjectDecision::Inject);
    }
}
