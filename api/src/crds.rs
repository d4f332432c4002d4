//! CustomResourceDefinitions for the Istio kinds, generated from the Rust types, serving every
//! version Istio serves (with `v1` as the storage version) so that existing manifests apply.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::networking::{DestinationRule, Gateway, ServiceEntry, Sidecar, VirtualService, WorkloadEntry};
use crate::resource::Kind;
use crate::security::{AuthorizationPolicy, PeerAuthentication, RequestAuthentication};

/// Every CRD Trellis installs, one per Istio kind.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![
        served_in_all_versions(VirtualService::crd(), Kind::VirtualService),
        served_in_all_versions(DestinationRule::crd(), Kind::DestinationRule),
        served_in_all_versions(ServiceEntry::crd(), Kind::ServiceEntry),
        served_in_all_versions(WorkloadEntry::crd(), Kind::WorkloadEntry),
        served_in_all_versions(Sidecar::crd(), Kind::Sidecar),
        served_in_all_versions(Gateway::crd(), Kind::Gateway),
        served_in_all_versions(PeerAuthentication::crd(), Kind::PeerAuthentication),
        served_in_all_versions(AuthorizationPolicy::crd(), Kind::AuthorizationPolicy),
        served_in_all_versions(RequestAuthentication::crd(), Kind::RequestAuthentication),
    ]
}

/// The derive produces the `v1` version; Istio serves older versions with the same schema.
fn served_in_all_versions(mut crd: CustomResourceDefinition, kind: Kind) -> CustomResourceDefinition {
    let Some(template) = crd.spec.versions.first().cloned() else {
        return crd;
    };
    crd.spec.versions = kind
        .versions()
        .iter()
        .map(|version| {
            let mut v = template.clone();
            v.name = (*version).to_owned();
            v.storage = *version == "v1";
            v.served = true;
            v
        })
        .collect();
    crd
}

/// All CRDs as one multi-document YAML stream, for the Helm chart.
pub fn to_yaml() -> String {
    all().iter().filter_map(|crd| serde_saphyr::to_string(crd).ok()).collect::<Vec<_>>().join("---\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_serves_istios_versions_with_v1_stored() {
        let crds = all();
        assert_eq!(crds.len(), 9);
        for crd in &crds {
            let versions: Vec<(&str, bool)> =
                crd.spec.versions.iter().map(|v| (v.name.as_str(), v.storage)).collect();
            let stored: Vec<&str> = versions.iter().filter(|(_, s)| *s).map(|(n, _)| *n).collect();
            assert_eq!(stored, vec!["v1"], "{}", crd.spec.names.kind);
            assert!(versions.len() >= 2, "{}", crd.spec.names.kind);
        }
        let vs = crds.iter().find(|c| c.spec.names.kind == "VirtualService").unwrap();
        assert_eq!(vs.metadata.name.as_deref(), Some("virtualservices.networking.istio.io"));
        let names: Vec<&str> = vs.spec.versions.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["v1alpha3", "v1beta1", "v1"]);
    }

    #[test]
    fn the_charts_crds_are_current() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/trellis/crds/istio-crds.yaml");
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == to_yaml(),
            "{} is stale: run `cargo run --bin trellis -- crds > charts/trellis/crds/istio-crds.yaml`",
            path.display()
        );
    }

    #[test]
    fn schemas_describe_the_spec_fields() {
        let yaml = to_yaml();
        for field in [
            "http",
            "trafficPolicy",
            "consecutive5xxErrors",
            "portLevelMtls",
            "notPrincipals",
            "match",
            "jwtRules",
            "trustDomains",
        ] {
            assert!(yaml.contains(field), "CRD YAML lacks {field}");
        }
    }
}
