//! The workload table: every pod and WorkloadEntry with an IP address, named as Istio's
//! telemetry names workloads (workload, namespace, app, version, canonical service and revision,
//! cluster, principal). Proxies look their peers up in it by address to fill the `source_*` and
//! `destination_*` metric labels. The table depends on the model only, never on the proxy: the
//! push pipeline builds it once per generation and every proxy shares the same resources.

use std::net::IpAddr;

use trellis_api::annotations::names::label;
use trellis_api::workload::{
    DEFAULT_CLUSTER_ID, WORKLOAD_NAME_LABEL, app, canonical_revision, canonical_service, version,
};
use trellis_xds::config as pb;

use super::objects;
use crate::model::{KubePod, Model};

/// The table, sorted by uid (`namespace/name`): pods first, then WorkloadEntries.
pub fn table(model: &Model) -> Vec<pb::MeshWorkload> {
    let trust_domain = model.mesh.trust_domain();
    let pods = model.pods.values().filter(|p| !p.ips.is_empty()).map(|pod| of_pod(pod, trust_domain));
    let entries = objects::workload_entries(model).filter_map(|we| {
        // A DNS name is no address a peer connects from.
        let address: IpAddr = we.spec.address.parse().ok()?;
        let workload = we
            .spec
            .labels
            .get(WORKLOAD_NAME_LABEL)
            .filter(|w| !w.is_empty())
            .cloned()
            .unwrap_or_else(|| we.name.to_owned());
        let account = if we.spec.service_account.is_empty() { "default" } else { &we.spec.service_account };
        Some(entry(
            format!("{}/{}", we.namespace, we.name),
            vec![address],
            workload,
            we.namespace,
            &we.spec.labels,
            format!("spiffe://{trust_domain}/ns/{}/sa/{account}", we.namespace),
        ))
    });
    let mut table: Vec<pb::MeshWorkload> = pods.chain(entries).collect();
    table.sort_by(|a, b| a.uid.cmp(&b.uid));
    table.dedup_by(|a, b| a.uid == b.uid);
    table
}

fn of_pod(pod: &KubePod, trust_domain: &str) -> pb::MeshWorkload {
    let workload = if pod.workload_name.is_empty() { pod.name.clone() } else { pod.workload_name.clone() };
    entry(
        format!("{}/{}", pod.namespace, pod.name),
        pod.ips.clone(),
        workload,
        &pod.namespace,
        &pod.labels,
        format!("spiffe://{trust_domain}/ns/{}/sa/{}", pod.namespace, pod.service_account),
    )
}

fn entry(
    uid: String,
    addresses: Vec<IpAddr>,
    workload: String,
    namespace: &str,
    labels: &std::collections::BTreeMap<String, String>,
    principal: String,
) -> pb::MeshWorkload {
    pb::MeshWorkload {
        uid,
        addresses: addresses.iter().map(ToString::to_string).collect(),
        namespace: namespace.to_owned(),
        app: app(labels).unwrap_or_default().to_owned(),
        version: version(labels).unwrap_or_default().to_owned(),
        canonical_service: canonical_service(labels, &workload),
        canonical_revision: canonical_revision(labels),
        cluster: DEFAULT_CLUSTER_ID.to_owned(),
        principal,
        sidecar: labels.get(label::TLS_MODE).is_some_and(|m| m == label::TLS_MODE_ISTIO),
        workload,
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn pods_and_workload_entries_are_named_as_istio_names_them() {
        let yaml = r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: vm-1, namespace: shop }
spec:
  address: 10.6.0.1
  serviceAccount: legacy
  labels: { app: billing, version: v7, security.istio.io/tlsMode: istio, service.istio.io/workload-name: billing-vms }
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: plain, namespace: shop }
spec: { address: 10.6.0.2 }
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: by-name, namespace: shop }
spec: { address: db.example.com }
"#;
        let mut model = unchecked_model(yaml);
        add_pod(
            &mut model,
            "shop",
            "reviews-v1-abc-x",
            "10.1.0.5",
            &[
                ("app", "reviews"),
                ("version", "v1"),
                ("service.istio.io/canonical-revision", "r1"),
                ("security.istio.io/tlsMode", "istio"),
            ],
        );
        if let Some(pod) = model.pods.get_mut(&("shop".to_owned(), "reviews-v1-abc-x".to_owned())) {
            std::sync::Arc::make_mut(pod).workload_name = "reviews-v1".into();
        }
        let table = table(&model);
        let uids: Vec<&str> = table.iter().map(|w| w.uid.as_str()).collect();
        assert_eq!(
            uids,
            ["shop/plain", "shop/reviews-v1-abc-x", "shop/vm-1"],
            "the DNS entry has no address"
        );

        let pod = &table[1];
        assert_eq!(pod.addresses, ["10.1.0.5"]);
        assert_eq!((pod.workload.as_str(), pod.namespace.as_str()), ("reviews-v1", "shop"));
        assert_eq!((pod.app.as_str(), pod.version.as_str()), ("reviews", "v1"));
        assert_eq!((pod.canonical_service.as_str(), pod.canonical_revision.as_str()), ("reviews", "r1"));
        assert_eq!((pod.cluster.as_str(), pod.sidecar), ("Kubernetes", true));
        assert_eq!(pod.principal, "spiffe://cluster.local/ns/shop/sa/default");

        let vm = &table[2];
        assert_eq!((vm.workload.as_str(), vm.canonical_service.as_str()), ("billing-vms", "billing"));
        assert_eq!(vm.principal, "spiffe://cluster.local/ns/shop/sa/legacy");
        assert!(vm.sidecar);

        let plain = &table[0];
        assert_eq!((plain.workload.as_str(), plain.app.as_str(), plain.version.as_str()), ("plain", "", ""));
        assert_eq!(
            (plain.canonical_service.as_str(), plain.canonical_revision.as_str()),
            ("plain", "latest")
        );
        assert_eq!(plain.principal, "spiffe://cluster.local/ns/shop/sa/default");
        assert!(!plain.sidecar, "no tlsMode label: no sidecar");
    }
}
