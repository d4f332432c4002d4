//! Helm's install order (releaseutil.InstallOrder): what other objects depend on goes first —
//! namespaces, then service accounts, config, CRDs and RBAC, then services and workloads, and
//! webhook configurations last, so that no webhook intercepts its own installation.

const INSTALL_ORDER: &[&str] = &[
    "PriorityClass",
    "Namespace",
    "NetworkPolicy",
    "ResourceQuota",
    "LimitRange",
    "PodSecurityPolicy",
    "PodDisruptionBudget",
    "ServiceAccount",
    "Secret",
    "SecretList",
    "ConfigMap",
    "StorageClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleList",
    "ClusterRoleBinding",
    "ClusterRoleBindingList",
    "Role",
    "RoleList",
    "RoleBinding",
    "RoleBindingList",
    "Service",
    "DaemonSet",
    "Pod",
    "ReplicationController",
    "ReplicaSet",
    "Deployment",
    "HorizontalPodAutoscaler",
    "StatefulSet",
    "Job",
    "CronJob",
    "IngressClass",
    "Ingress",
    "APIService",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
];

/// The kind's place in Helm's install order; kinds Helm does not list come after all of them.
pub fn install_rank(kind: &str) -> usize {
    INSTALL_ORDER.iter().position(|k| *k == kind).unwrap_or(INSTALL_ORDER.len())
}

/// Sorts `(kind, item)` pairs as Helm's sortManifestsByKind: a stable sort by the kind's place
/// in the install order, kinds Helm does not know after all others, by name.
pub(super) fn sort_by_kind<T>(items: &mut [(String, T)]) {
    items.sort_by(|(a, _), (b, _)| {
        let rank = |kind: &str| INSTALL_ORDER.iter().position(|k| *k == kind);
        match (rank(a), rank(b)) {
            (Some(x), Some(y)) => x.cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => a.cmp(b),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_as_helm_installs() {
        let mut items: Vec<(String, usize)> = [
            "MutatingWebhookConfiguration",
            "Zebra",
            "Deployment",
            "ServiceAccount",
            "Apple",
            "ServiceAccount",
            "ClusterRole",
        ]
        .iter()
        .enumerate()
        .map(|(i, k)| (k.to_string(), i))
        .collect();
        sort_by_kind(&mut items);
        let order: Vec<(&str, usize)> = items.iter().map(|(k, i)| (k.as_str(), *i)).collect();
        assert_eq!(
            order,
            [
                ("ServiceAccount", 3),
                ("ServiceAccount", 5),
                ("ClusterRole", 6),
                ("Deployment", 2),
                ("MutatingWebhookConfiguration", 0),
                ("Apple", 4),
                ("Zebra", 1)
            ]
        );
    }
}
