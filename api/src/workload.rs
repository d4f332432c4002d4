//! Who a workload is, in the words Istio's telemetry uses: its workload name (the Deployment
//! behind a pod, not the pod), its canonical service and revision, its app and version, and the
//! cluster it runs in. The injector, the control plane's workload table and the proxy's own
//! metric labels all name a workload through these functions, so that both ends of a call agree.

use std::collections::BTreeMap;

use crate::annotations::names::label;

/// Istio's default cluster id (`CLUSTER_ID` / `ISTIO_META_CLUSTER_ID`) when none is configured.
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";

/// The label Istio's WorkloadEntry auto-registration puts on entries: the WorkloadGroup's name,
/// which is the workload's name.
pub const WORKLOAD_NAME_LABEL: &str = "service.istio.io/workload-name";

/// The controller that owns a pod, as its `ownerReferences` entry with `controller: true`
/// names it.
#[derive(Clone, Copy, Debug)]
pub struct Owner<'a> {
    pub kind: &'a str,
    pub name: &'a str,
}

/// A pod's workload name, as Istio derives it: a ReplicaSet's name without the pod template
/// hash (so the Deployment's name), a CronJob's Job without its schedule suffix, any other
/// controller's name; a pod without a controller is its own workload (its name, else its
/// `generateName` without the trailing dash).
pub fn workload_name(
    pod_name: Option<&str>,
    generate_name: Option<&str>,
    owner: Option<Owner<'_>>,
    pod_template_hash: Option<&str>,
) -> String {
    if let Some(owner) = owner {
        return match (owner.kind, pod_template_hash) {
            ("ReplicaSet", Some(hash)) => {
                owner.name.strip_suffix(&format!("-{hash}")).unwrap_or(owner.name).to_owned()
            }
            ("Job", _) => strip_schedule_suffix(owner.name).to_owned(),
            _ => owner.name.to_owned(),
        };
    }
    if let Some(name) = pod_name.filter(|n| !n.is_empty()) {
        return name.to_owned();
    }
    generate_name.unwrap_or_default().trim_end_matches('-').to_owned()
}

/// `nightly-28911520` → `nightly`: Jobs created by a CronJob carry the scheduled time in
/// minutes since the epoch (8 digits today). A Job named by hand, like `migrate-2`, keeps its
/// name.
fn strip_schedule_suffix(name: &str) -> &str {
    match name.rsplit_once('-') {
        Some((base, suffix))
            if (8..=10).contains(&suffix.len()) && suffix.bytes().all(|b| b.is_ascii_digit()) =>
        {
            base
        }
        _ => name,
    }
}

fn first_label<'a>(labels: &'a BTreeMap<String, String>, keys: &[&str]) -> Option<&'a str> {
    keys.iter().find_map(|k| labels.get(*k)).map(String::as_str).filter(|v| !v.is_empty())
}

/// Istio's canonical service: `service.istio.io/canonical-name`, else `app.kubernetes.io/name`,
/// else `app`, else the workload name.
pub fn canonical_service(labels: &BTreeMap<String, String>, workload: &str) -> String {
    first_label(labels, &[label::CANONICAL_NAME, label::APP_KUBERNETES_NAME, label::APP])
        .unwrap_or(workload)
        .to_owned()
}

/// Istio's canonical revision: `service.istio.io/canonical-revision`, else
/// `app.kubernetes.io/version`, else `version`, else `latest`.
pub fn canonical_revision(labels: &BTreeMap<String, String>) -> String {
    first_label(labels, &[label::CANONICAL_REVISION, label::APP_KUBERNETES_VERSION, label::VERSION])
        .unwrap_or("latest")
        .to_owned()
}

/// The `app` label the metrics call the app (`unknown` without one).
pub fn app(labels: &BTreeMap<String, String>) -> Option<&str> {
    first_label(labels, &[label::APP])
}

/// The `version` label the metrics call the version (`unknown` without one).
pub fn version(labels: &BTreeMap<String, String>) -> Option<&str> {
    first_label(labels, &[label::VERSION])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn workload_names_follow_the_controller() {
        let rs = Owner { kind: "ReplicaSet", name: "reviews-v1-7d9f8c6b5" };
        assert_eq!(
            workload_name(Some("reviews-v1-7d9f8c6b5-x2x"), None, Some(rs), Some("7d9f8c6b5")),
            "reviews-v1"
        );
        // A ReplicaSet of its own (no template hash) is the workload.
        assert_eq!(workload_name(None, None, Some(rs), None), "reviews-v1-7d9f8c6b5");
        let cron = Owner { kind: "Job", name: "nightly-28911520" };
        assert_eq!(workload_name(None, None, Some(cron), None), "nightly");
        let by_hand = Owner { kind: "Job", name: "migrate-2" };
        assert_eq!(workload_name(None, None, Some(by_hand), None), "migrate-2");
        let set = Owner { kind: "StatefulSet", name: "db" };
        assert_eq!(workload_name(Some("db-0"), None, Some(set), None), "db");
        assert_eq!(workload_name(Some("bare"), Some("ignored-"), None, None), "bare");
        assert_eq!(workload_name(None, Some("worker-"), None, None), "worker");
        assert_eq!(workload_name(Some(""), None, None, None), "");
    }

    #[test]
    fn canonical_names_take_the_first_label_istio_reads() {
        let all = labels(&[
            ("service.istio.io/canonical-name", "canon"),
            ("app.kubernetes.io/name", "k8s-name"),
            ("app", "app"),
            ("service.istio.io/canonical-revision", "r1"),
            ("app.kubernetes.io/version", "k1"),
            ("version", "v1"),
        ]);
        assert_eq!((canonical_service(&all, "w"), canonical_revision(&all)), ("canon".into(), "r1".into()));
        let k8s = labels(&[("app.kubernetes.io/name", "k8s-name"), ("app", "app"), ("version", "v1")]);
        assert_eq!(
            (canonical_service(&k8s, "w"), canonical_revision(&k8s)),
            ("k8s-name".into(), "v1".into())
        );
        let only_app = labels(&[("app", "app")]);
        assert_eq!(
            (canonical_service(&only_app, "w"), canonical_revision(&only_app)),
            ("app".into(), "latest".into())
        );
        let none = labels(&[("app", "")]);
        assert_eq!((canonical_service(&none, "w"), canonical_revision(&none)), ("w".into(), "latest".into()));
        assert_eq!((app(&all), version(&all)), (Some("app"), Some("v1")));
        assert_eq!((app(&none), version(&none)), (None, None));
    }
}
