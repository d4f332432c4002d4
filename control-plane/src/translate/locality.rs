//! Localities: where endpoints and proxies run, and each cluster's locality setting. The proxy
//! does the balancing (see `LocalityLoadBalancing` in config.proto); translation only says
//! where things are and which setting applies.
//!
//! Where a workload runs, as Istio reads it: a pod's `istio-locality` label, else its node's
//! topology labels (`topology.kubernetes.io/region` and `zone`, `topology.istio.io/subzone`);
//! a WorkloadEntry's `locality`, else its `istio-locality` label. A proxy's own locality comes
//! from the registry first (its pod, or the WorkloadEntry at its address), then from its own
//! `istio-locality` label, as Istio's control plane prefers the registry over what the proxy
//! says.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use tracing::warn;
use trellis_api::locality::{FailoverLabel, LOCALITY_LABEL, Locality};
use trellis_api::mesh::MeshConfig;
use trellis_api::networking::{DestinationRuleSpec, LoadBalancerSettings, LocalityLbSetting, TrafficPolicy};
use trellis_xds::config as pb;

use super::objects;
use crate::model::{KubePod, Model};

/// A pod's locality: its `istio-locality` label, else its node's (by `node`, the pod's node
/// or, for an endpoint whose pod is not known, the endpoint's).
pub fn of_pod(model: &Model, pod: Option<&KubePod>, node: Option<&str>) -> Locality {
    if let Some(label) = pod.and_then(|p| p.labels.get(LOCALITY_LABEL)) {
        match Locality::from_label(label) {
            Ok(locality) => return locality,
            Err(message) => {
                let pod = pod.map(|p| format!("{}/{}", p.namespace, p.name)).unwrap_or_default();
                warn!(%pod, label = LOCALITY_LABEL, %message, "label ignored");
            }
        }
    }
    let node = pod.map(|p| p.node_name.as_str()).filter(|n| !n.is_empty()).or(node);
    node.and_then(|n| model.nodes.get(n)).map(|l| (**l).clone()).unwrap_or_default()
}

/// A WorkloadEntry's (or a ServiceEntry's inline endpoint's) locality; validation has refused
/// bad ones, which are unknown here.
pub fn of_workload_entry(locality: &str, labels: &BTreeMap<String, String>) -> Locality {
    let parsed = match (locality, labels.get(LOCALITY_LABEL)) {
        ("", Some(label)) => Locality::from_label(label),
        (text, _) => Locality::parse(text),
    };
    parsed.unwrap_or_default()
}

/// As the proxy's configuration carries it: `None` for the unknown locality.
pub fn to_pb(locality: &Locality) -> Option<pb::Locality> {
    (!locality.is_unknown()).then(|| pb::Locality {
        region: locality.region.clone(),
        zone: locality.zone.clone(),
        subzone: locality.subzone.clone(),
    })
}

/// Where a connected proxy runs in the registry, from its node id: its pod's name and its IP.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Instance {
    pub pod: Option<String>,
    pub ip: Option<IpAddr>,
}

/// A proxy's locality: its pod's (found by name, else by IP, in its namespace), else the
/// WorkloadEntry's at its IP, else its own `istio-locality` label.
pub fn of_proxy(
    model: &Model,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    instance: &Instance,
) -> Locality {
    let by_name =
        instance.pod.as_ref().and_then(|name| model.pods.get(&(namespace.to_owned(), name.clone())));
    let by_ip = || {
        let ip = instance.ip?;
        model.pods.values().find(|p| p.namespace == namespace && p.ips.contains(&ip))
    };
    if let Some(pod) = by_name.or_else(by_ip) {
        let locality = of_pod(model, Some(pod), None);
        if !locality.is_unknown() {
            return locality;
        }
    }
    if let Some(ip) = instance.ip {
        let entry = objects::workload_entries(model)
            .find(|we| we.namespace == namespace && we.spec.address.parse::<IpAddr>().ok() == Some(ip));
        if let Some(we) = entry {
            let locality = of_workload_entry(&we.spec.locality, &we.spec.labels);
            if !locality.is_unknown() {
                return locality;
            }
        }
    }
    labels.get(LOCALITY_LABEL).and_then(|l| Locality::from_label(l).ok()).unwrap_or_default()
}

/// The locality setting of a cluster, Istio's `GetLocalityLbSetting`: the policy's own, else the
/// mesh's; `enabled: false` in the one that applies turns it off. Unset in both, it is on
/// (Istio's default mesh config), with nothing but proximity failover, which the proxy applies
/// only with outlier detection.
pub fn setting(mesh: &MeshConfig, lb: Option<&LoadBalancerSettings>) -> Option<pb::LocalityLoadBalancing> {
    let chosen = lb.and_then(|lb| lb.locality_lb_setting.as_ref()).or(mesh.locality_lb_setting.as_ref());
    match chosen {
        Some(s) if s.enabled == Some(false) => None,
        Some(s) => Some(to_pb_setting(s)),
        None => Some(pb::LocalityLoadBalancing::default()),
    }
}

fn to_pb_setting(s: &LocalityLbSetting) -> pb::LocalityLoadBalancing {
    pb::LocalityLoadBalancing {
        distribute: s
            .distribute
            .iter()
            .map(|d| pb::LocalityDistribute { from: d.from.clone(), to: d.to.clone() })
            .collect(),
        failover: s
            .failover
            .iter()
            .map(|f| pb::LocalityFailover { from: f.from.clone(), to: f.to.clone() })
            .collect(),
        failover_priority: s.failover_priority.clone(),
    }
}

/// What of a proxy's place its configuration depends on, given the model: proxies that differ
/// only in what no cluster reads share a translation. The locality (looked up only then)
/// matters once any DestinationRule has outlier detection or a locality setting, or the mesh
/// distributes; the labels only those a `failoverPriority` names.
pub fn relevant(
    model: &Model,
    locality: impl FnOnce() -> Locality,
    labels: &BTreeMap<String, String>,
) -> (Locality, BTreeMap<String, String>) {
    let mut in_use = model.mesh.locality_lb_setting.as_ref().is_some_and(|s| !s.distribute.is_empty());
    let mut keys = BTreeSet::new();
    let mut note = |setting: Option<&LocalityLbSetting>| {
        if let Some(s) = setting {
            in_use = true;
            keys.extend(s.failover_priority.iter().map(|l| FailoverLabel::parse(l).key));
        }
    };
    note(model.mesh.locality_lb_setting.as_ref().filter(|s| !s.failover_priority.is_empty()));
    let mut outlier = false;
    for dr in objects::destination_rules(model) {
        for policy in policies(dr.spec) {
            outlier |= policy.outlier_detection.is_some()
                || policy.port_level_settings.iter().any(|p| p.outlier_detection.is_some());
            note(policy.load_balancer.as_ref().and_then(|lb| lb.locality_lb_setting.as_ref()));
            for port in &policy.port_level_settings {
                note(port.load_balancer.as_ref().and_then(|lb| lb.locality_lb_setting.as_ref()));
            }
        }
    }
    if !(in_use || outlier) {
        return (Locality::default(), BTreeMap::new());
    }
    let labels =
        labels.iter().filter(|(k, _)| keys.contains(*k)).map(|(k, v)| (k.clone(), v.clone())).collect();
    (locality(), labels)
}

/// A rule's traffic policies: its own and its subsets'.
fn policies(spec: &DestinationRuleSpec) -> impl Iterator<Item = &TrafficPolicy> {
    spec.traffic_policy.iter().chain(spec.subsets.iter().filter_map(|s| s.traffic_policy.as_ref()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::test_support::*;
    use super::super::{ProxyIdentity, scope_of_instance, translate};
    use super::*;

    fn loc(text: &str) -> Locality {
        Locality::parse(text).unwrap()
    }

    #[test]
    fn a_pods_label_wins_over_its_node_and_an_endpoint_falls_back_to_its_nodes() {
        let mut m = Model::default();
        m.nodes.insert("n1".into(), Arc::new(loc("us-east/us-east-1a")));
        m.nodes.insert("n2".into(), Arc::new(loc("us-east/us-east-1b/rack-2")));
        let pod = |labels: &[(&str, &str)], node: &str| KubePod {
            labels: labels_of(labels),
            node_name: node.into(),
            ..Default::default()
        };
        assert_eq!(of_pod(&m, Some(&pod(&[], "n1")), None), loc("us-east/us-east-1a"));
        assert_eq!(of_pod(&m, Some(&pod(&[(LOCALITY_LABEL, "eu.west.a")], "n1")), None), loc("eu/west/a"));
        assert_eq!(
            of_pod(&m, Some(&pod(&[(LOCALITY_LABEL, "a.b.c.d")], "n1")), None),
            loc("us-east/us-east-1a")
        );
        assert_eq!(of_pod(&m, None, Some("n2")), loc("us-east/us-east-1b/rack-2"));
        assert_eq!(of_pod(&m, Some(&pod(&[], "")), Some("n2")), loc("us-east/us-east-1b/rack-2"));
        assert!(of_pod(&m, Some(&pod(&[], "gone")), None).is_unknown());
    }

    #[test]
    fn a_workload_entrys_field_wins_over_its_label() {
        let labels = labels_of(&[(LOCALITY_LABEL, "eu.west")]);
        assert_eq!(of_workload_entry("us-east/a", &labels), loc("us-east/a"));
        assert_eq!(of_workload_entry("", &labels), loc("eu/west"));
        assert!(of_workload_entry("", &BTreeMap::new()).is_unknown());
        assert!(of_workload_entry("a/b/c/d", &BTreeMap::new()).is_unknown());
    }

    #[test]
    fn the_setting_is_the_rules_else_the_meshs_and_on_by_default() {
        let mesh = MeshConfig::default();
        assert_eq!(setting(&mesh, None), Some(pb::LocalityLoadBalancing::default()));
        let off: LoadBalancerSettings =
            serde_json::from_value(serde_json::json!({"localityLbSetting": {"enabled": false}})).unwrap();
        assert_eq!(setting(&mesh, Some(&off)), None);
        let (mesh_off, _) = MeshConfig::from_yaml("localityLbSetting: {enabled: false}").unwrap();
        assert_eq!(setting(&mesh_off, None), None);
        let mine: LoadBalancerSettings = serde_json::from_value(serde_json::json!({
            "localityLbSetting": {"failover": [{"from": "us-east", "to": "eu-west"}]}
        }))
        .unwrap();
        let got = setting(&mesh_off, Some(&mine)).expect("the rule's own wins over the mesh's off");
        assert_eq!(got.failover, [pb::LocalityFailover { from: "us-east".into(), to: "eu-west".into() }]);
    }

    /// reviews in three zones of us-east and one in eu-west, each pod on its own node; the
    /// caller, productpage, on a node of us-east-1a.
    fn zoned(yaml: &str) -> Model {
        let mut m = bookinfo(yaml);
        let nodes = [
            ("node-a", "us-east/us-east-1a"),
            ("node-b", "us-east/us-east-1b"),
            ("node-eu", "eu-west/eu-west-1a"),
        ];
        for (name, locality) in nodes {
            m.nodes.insert(name.into(), Arc::new(loc(locality)));
        }
        let on = |m: &mut Model, pod: &str, node: &str| {
            let key = ("shop".to_owned(), pod.to_owned());
            let mut p = (*m.pods[&key]).clone();
            p.node_name = node.into();
            m.pods.insert(key, Arc::new(p));
        };
        on(&mut m, "productpage", "node-a");
        on(&mut m, "reviews-v1", "node-a");
        on(&mut m, "reviews-v2", "node-b");
        on(&mut m, "reviews-v3", "node-eu");
        m
    }

    const OUTLIER: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: reviews, namespace: shop }
spec:
  host: reviews
  trafficPolicy:
    outlierDetection: { consecutive5xxErrors: 3 }
"#;

    fn connected(m: &Model, pod: &str, labels: &[(&str, &str)]) -> pb::ProxyConfig {
        let proxy =
            ProxyIdentity { namespace: "shop".into(), labels: labels_of(labels), ..Default::default() };
        let instance = Instance { pod: Some(pod.into()), ip: None };
        translate(m, &scope_of_instance(m, &proxy, &instance))
    }

    #[test]
    fn kubernetes_endpoints_and_the_proxy_get_their_nodes_localities() {
        let m = zoned(OUTLIER);
        let config = connected(&m, "productpage", &[("app", "productpage")]);
        assert_eq!(config.locality, to_pb(&loc("us-east/us-east-1a")));
        let by_address: BTreeMap<&str, Option<&pb::Locality>> = endpoints(&config, REVIEWS_VH)
            .iter()
            .map(|e| (e.address.as_str(), e.locality.as_ref()))
            .collect();
        assert_eq!(by_address["10.1.3.1"], to_pb(&loc("us-east/us-east-1a")).as_ref());
        assert_eq!(by_address["10.1.3.2"], to_pb(&loc("us-east/us-east-1b")).as_ref());
        assert_eq!(by_address["10.1.3.3"], to_pb(&loc("eu-west/eu-west-1a")).as_ref());
        // Istio's default: locality balancing on, nothing but proximity (the proxy applies it
        // with the outlier detection the cluster has).
        let reviews = cluster(&config, &format!("outbound|9080||{REVIEWS}"));
        assert_eq!(reviews.locality_lb, Some(pb::LocalityLoadBalancing::default()));
        assert!(reviews.outlier_detection.is_some());
        // The pod's istio-locality label wins over its node.
        let mut labelled = zoned(OUTLIER);
        let key = ("shop".to_owned(), "reviews-v1".to_owned());
        let mut pod = (*labelled.pods[&key]).clone();
        pod.labels.insert(LOCALITY_LABEL.into(), "ap-south.ap-south-1a".into());
        labelled.pods.insert(key, Arc::new(pod));
        let config = connected(&labelled, "productpage", &[]);
        let first = endpoints(&config, REVIEWS_VH).iter().find(|e| e.address == "10.1.3.1").unwrap();
        assert_eq!(first.locality, to_pb(&loc("ap-south/ap-south-1a")));
    }

    #[test]
    fn proxies_in_other_zones_share_a_translation_until_a_cluster_reads_the_locality() {
        let plain = zoned("");
        let here = connected(&plain, "productpage", &[]);
        let there = connected(&plain, "reviews-v3", &[]);
        assert_eq!(here, there, "no outlier detection, no locality setting: the locality is not read");
        assert_eq!(here.locality, None);
        let with_outlier = zoned(OUTLIER);
        assert_ne!(
            connected(&with_outlier, "productpage", &[]).locality,
            connected(&with_outlier, "reviews-v3", &[]).locality
        );
    }

    #[test]
    fn rules_settings_reach_their_clusters_and_failover_priority_picks_the_labels_sent() {
        let yaml = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: reviews, namespace: shop }
spec:
  host: reviews
  trafficPolicy:
    outlierDetection: { consecutive5xxErrors: 3 }
    loadBalancer:
      localityLbSetting:
        failoverPriority: [topology.istio.io/network, "topology.istio.io/cluster=c1"]
  subsets:
    - name: v1
      labels: { version: v1 }
      trafficPolicy:
        loadBalancer:
          localityLbSetting:
            distribute: [{ from: "us-east/*", to: { "us-east/*": 80, "eu-west/*": 20 } }]
    - name: v2
      labels: { version: v2 }
      trafficPolicy: { loadBalancer: { localityLbSetting: { enabled: false } } }
"#;
        let m = zoned(yaml);
        let config =
            connected(&m, "productpage", &[("app", "productpage"), ("topology.istio.io/network", "n1")]);
        let top = cluster(&config, &format!("outbound|9080||{REVIEWS}")).locality_lb.clone().unwrap();
        assert_eq!(top.failover_priority, ["topology.istio.io/network", "topology.istio.io/cluster=c1"]);
        let v1 = cluster(&config, &format!("outbound|9080|v1|{REVIEWS}")).locality_lb.clone().unwrap();
        assert_eq!(v1.distribute[0].from, "us-east/*");
        assert_eq!(v1.distribute[0].to, BTreeMap::from([("eu-west/*".into(), 20), ("us-east/*".into(), 80)]));
        assert_eq!(cluster(&config, &format!("outbound|9080|v2|{REVIEWS}")).locality_lb, None);
        // Only the labels a failoverPriority names go out.
        assert_eq!(config.workload_labels, labels_of(&[("topology.istio.io/network", "n1")]));
        // The mesh config's setting applies where the rule sets none; enabled: false turns it off.
        let off = with_mesh(zoned(OUTLIER), "localityLbSetting: { enabled: false }");
        let config = connected(&off, "productpage", &[]);
        assert_eq!(cluster(&config, &format!("outbound|9080||{REVIEWS}")).locality_lb, None);
        let mesh = with_mesh(zoned(""), "localityLbSetting: { failover: [{ from: us-east, to: eu-west }] }");
        let config = connected(&mesh, "productpage", &[]);
        let setting = cluster(&config, &format!("outbound|9080||{REVIEWS}")).locality_lb.clone().unwrap();
        assert_eq!(setting.failover.len(), 1);
    }

    #[test]
    fn workload_entries_carry_their_locality_and_a_proxy_at_one_takes_it() {
        let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: db, namespace: shop }
spec:
  hosts: [db.shop.internal]
  resolution: STATIC
  ports: [{ number: 5432, name: tcp, protocol: TCP }]
  workloadSelector: { labels: { app: db } }
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: db-1, namespace: shop }
spec: { address: 10.6.0.1, labels: { app: db }, locality: us-east/us-east-1a/rack-3 }
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: db-2, namespace: shop }
spec: { address: 10.6.0.2, labels: { app: db, istio-locality: eu-west.eu-west-1b } }
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: db, namespace: shop }
spec:
  host: db.shop.internal
  trafficPolicy: { outlierDetection: { consecutive5xxErrors: 3 } }
"#;
        let m = model(yaml);
        let proxy = ProxyIdentity {
            namespace: "shop".into(),
            labels: labels_of(&[("app", "db")]),
            ..Default::default()
        };
        let at = |ip: &str| Instance { pod: None, ip: Some(ip.parse().unwrap()) };
        let config = translate(&m, &scope_of_instance(&m, &proxy, &at("10.6.0.2")));
        let localities: Vec<_> =
            endpoints(&config, "db.shop.internal:5432").iter().map(|e| e.locality.clone()).collect();
        assert_eq!(localities, [to_pb(&loc("us-east/us-east-1a/rack-3")), to_pb(&loc("eu-west/eu-west-1b"))]);
        assert_eq!(config.locality, to_pb(&loc("eu-west/eu-west-1b")), "the entry at the proxy's address");
        // Elsewhere, the proxy's own istio-locality label.
        let labelled = ProxyIdentity {
            namespace: "shop".into(),
            labels: labels_of(&[(LOCALITY_LABEL, "ap-south.ap-south-1a")]),
            ..Default::default()
        };
        let config = translate(&m, &scope_of_instance(&m, &labelled, &at("10.9.9.9")));
        assert_eq!(config.locality, to_pb(&loc("ap-south/ap-south-1a")));
    }
}
