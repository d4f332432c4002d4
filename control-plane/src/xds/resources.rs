//! One scope's resources, packed once and shared by every proxy in that scope: per type, a
//! sorted map from resource name to its encoding, version and what it refers to.

use std::collections::BTreeMap;
use std::sync::Arc;

use pbjson_types::Any;
use trellis_xds::config as pb;
use trellis_xds::types::{ResourceType, SETTINGS_NAME, pack, settings_of};

/// A packed resource.
#[derive(Debug, PartialEq)]
pub struct Entry {
    pub name: Arc<str>,
    pub version: u64,
    pub any: Any,
    /// Names of resources of the next type down (a virtual host's clusters, a cluster's
    /// endpoint set, an endpoint set's workloads) that a proxy holding this one needs too.
    pub deps: Vec<String>,
}

pub type TypeMap = Arc<BTreeMap<String, Arc<Entry>>>;

/// Every resource of one scope, by type.
#[derive(Debug, Default)]
pub struct ScopeResources {
    maps: BTreeMap<ResourceType, TypeMap>,
}

impl ScopeResources {
    /// Packs a translated config. Type maps equal to the ones in `previous` are shared with it,
    /// so sessions can tell "nothing changed" by pointer.
    pub fn pack(config: &pb::ProxyConfig, previous: Option<&ScopeResources>) -> ScopeResources {
        let mut maps: BTreeMap<ResourceType, BTreeMap<String, Arc<Entry>>> = BTreeMap::new();
        let mut put = |kind: ResourceType, name: &str, any: Any, deps: Vec<String>| {
            let version = xxhash_rust::xxh64::xxh64(&any.value, 0);
            maps.entry(kind)
                .or_default()
                .insert(name.to_owned(), Arc::new(Entry { name: name.into(), version, any, deps }));
        };
        let settings = settings_of(config);
        put(ResourceType::Settings, SETTINGS_NAME, pack(ResourceType::Settings, &settings), Vec::new());
        for e in &config.endpoints {
            put(ResourceType::Endpoints, &e.service, pack(ResourceType::Endpoints, e), workloads_of(e));
        }
        for c in &config.clusters {
            put(ResourceType::Cluster, &c.name, pack(ResourceType::Cluster, c), vec![c.service.clone()]);
        }
        for vh in &config.virtual_hosts {
            put(ResourceType::VirtualHost, &vh.name, pack(ResourceType::VirtualHost, vh), clusters_of(vh));
        }
        for s in &config.services {
            put(ResourceType::Service, &s.name, pack(ResourceType::Service, s), Vec::new());
        }
        let maps = ResourceType::PUSH_ORDER
            .into_iter()
            .map(|kind| {
                let fresh = maps.remove(&kind).unwrap_or_default();
                let map = match previous.and_then(|p| p.maps.get(&kind)) {
                    Some(old) if **old == fresh => old.clone(),
                    _ => Arc::new(fresh),
                };
                (kind, map)
            })
            .collect();
        ScopeResources { maps }
    }

    pub fn of(&self, kind: ResourceType) -> TypeMap {
        self.maps.get(&kind).cloned().unwrap_or_default()
    }

    /// The same resources with `kind`'s taken from `shared`: a type every scope holds alike
    /// (the workload table) is packed once per generation, not once per scope.
    pub fn with_shared(mut self, kind: ResourceType, shared: TypeMap) -> ScopeResources {
        self.maps.insert(kind, shared);
        self
    }
}

/// The workload table as resources a proxy asks for by name: one per address (named by the
/// address, carrying only it), which is how a proxy names the workload behind an endpoint it
/// holds or a connection it accepted, and one per identity that a single label set runs under
/// (named by the SPIFFE ID, with no address), for a mutual TLS peer whose address says nothing
/// (NAT, or every caller on one loopback address). An address two workloads claim goes to the
/// first by uid. `previous` is returned itself when nothing changed, so sessions see
/// "unchanged" by pointer.
pub fn pack_workloads(table: &[pb::MeshWorkload], previous: Option<&TypeMap>) -> TypeMap {
    let mut fresh: BTreeMap<String, Arc<Entry>> = BTreeMap::new();
    let mut put = |name: String, w: &pb::MeshWorkload| {
        let any = pack(ResourceType::Workload, w);
        let version = xxhash_rust::xxh64::xxh64(&any.value, 0);
        fresh.entry(name).or_insert_with_key(|name| {
            Arc::new(Entry { name: name.as_str().into(), version, any, deps: Vec::new() })
        });
    };
    // Per identity: its one label set, or `None` once two differ.
    let mut identities: BTreeMap<&str, Option<pb::MeshWorkload>> = BTreeMap::new();
    for w in table {
        for address in &w.addresses {
            let Ok(ip) = address.parse::<std::net::IpAddr>() else { continue };
            put(ip.to_string(), &pb::MeshWorkload { addresses: vec![ip.to_string()], ..w.clone() });
        }
        if w.principal.is_empty() {
            continue;
        }
        let labels_only =
            pb::MeshWorkload { uid: String::new(), addresses: Vec::new(), sidecar: false, ..w.clone() };
        identities
            .entry(&w.principal)
            .and_modify(|known| {
                if known.as_ref().is_some_and(|k| *k != labels_only) {
                    *known = None;
                }
            })
            .or_insert(Some(labels_only));
    }
    for (principal, labels) in identities {
        if let Some(labels) = labels {
            put(principal.to_owned(), &labels);
        }
    }
    match previous {
        Some(old) if **old == fresh => old.clone(),
        _ => Arc::new(fresh),
    }
}

/// The workload names an endpoint set refers to: its addresses, as [`pack_workloads`] names
/// them.
fn workloads_of(endpoints: &pb::ServiceEndpoints) -> Vec<String> {
    let mut names: Vec<String> = endpoints
        .endpoints
        .iter()
        .filter_map(|e| e.address.parse::<std::net::IpAddr>().ok())
        .map(|ip| ip.to_string())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The clusters a virtual host's routes forward and mirror to.
fn clusters_of(vh: &pb::VirtualHost) -> Vec<String> {
    let mut names: Vec<String> = vh
        .routes
        .iter()
        .filter_map(|r| match &r.action {
            Some(pb::route::Action::Forward(f)) => Some(f.clusters.iter().map(|c| c.cluster.clone())),
            _ => None,
        })
        .flatten()
        .chain(vh.routes.iter().flat_map(|r| r.mirrors.iter().map(|m| m.cluster.clone())))
        .collect();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(weight: u32) -> pb::ProxyConfig {
        pb::ProxyConfig {
            services: vec![pb::Service { name: "web".into(), ..Default::default() }],
            virtual_hosts: vec![pb::VirtualHost {
                name: "web:80".into(),
                routes: vec![pb::Route {
                    action: Some(pb::route::Action::Forward(pb::Forward {
                        clusters: vec![
                            pb::WeightedCluster { cluster: "b".into(), weight },
                            pb::WeightedCluster { cluster: "a".into(), weight: 100 - weight },
                        ],
                    })),
                    ..Default::default()
                }],
            }],
            clusters: vec![pb::Cluster { name: "a".into(), service: "web:80".into(), ..Default::default() }],
            ..Default::default()
        }
    }

    #[test]
    fn mirror_clusters_are_references_too() {
        let mut mirrored = config(10);
        mirrored.virtual_hosts[0].routes[0].mirrors = vec![
            pb::Mirror { cluster: "shadow".into(), percent: 100.0 },
            pb::Mirror { cluster: "a".into(), percent: 5.0 },
        ];
        let packed = ScopeResources::pack(&mirrored, None);
        assert_eq!(packed.of(ResourceType::VirtualHost)["web:80"].deps, ["a", "b", "shadow"]);
    }

    #[test]
    fn references_are_recorded_and_unchanged_maps_shared() {
        let first = ScopeResources::pack(&config(10), None);
        assert_eq!(first.of(ResourceType::VirtualHost)["web:80"].deps, ["a", "b"]);
        assert_eq!(first.of(ResourceType::Cluster)["a"].deps, ["web:80"]);
        let second = ScopeResources::pack(&config(50), Some(&first));
        assert!(Arc::ptr_eq(&first.of(ResourceType::Service), &second.of(ResourceType::Service)));
        assert!(!Arc::ptr_eq(&first.of(ResourceType::VirtualHost), &second.of(ResourceType::VirtualHost)));
        assert_ne!(
            first.of(ResourceType::VirtualHost)["web:80"].version,
            second.of(ResourceType::VirtualHost)["web:80"].version
        );
    }

    fn workload(uid: &str, addresses: &[&str], app: &str, account: &str) -> pb::MeshWorkload {
        pb::MeshWorkload {
            uid: uid.into(),
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            workload: app.into(),
            namespace: "shop".into(),
            app: app.into(),
            principal: format!("spiffe://cluster.local/ns/shop/sa/{account}"),
            sidecar: true,
            ..Default::default()
        }
    }

    fn decoded(map: &TypeMap, name: &str) -> pb::MeshWorkload {
        use prost::Message;
        pb::MeshWorkload::decode(&map[name].any.value[..]).unwrap()
    }

    #[test]
    fn workloads_are_named_by_address_and_by_an_identity_only_one_label_set_runs_under() {
        let table = [
            workload("shop/web-1", &["10.0.0.1", "fd00::0001"], "web", "web"),
            workload("shop/web-2", &["10.0.0.2"], "web", "web"),
            workload("shop/batch", &["10.0.0.3"], "batch", "default"),
            workload("shop/cron", &["10.0.0.4", "not-an-ip"], "cron", "default"),
            // Claims web-1's address: the first by uid keeps it.
            workload("shop/zz-late", &["10.0.0.1"], "late", "late"),
        ];
        let map = pack_workloads(&table, None);
        assert_eq!(
            map.keys().map(String::as_str).collect::<Vec<_>>(),
            [
                "10.0.0.1",
                "10.0.0.2",
                "10.0.0.3",
                "10.0.0.4",
                "fd00::1",
                "spiffe://cluster.local/ns/shop/sa/late",
                "spiffe://cluster.local/ns/shop/sa/web",
            ],
            "the shared `default` identity names no one; addresses in their canonical form"
        );
        let first = decoded(&map, "10.0.0.1");
        assert_eq!(
            (first.uid.as_str(), first.addresses.as_slice()),
            ("shop/web-1", &["10.0.0.1".to_string()][..])
        );
        let by_identity = decoded(&map, "spiffe://cluster.local/ns/shop/sa/web");
        assert_eq!((by_identity.app.as_str(), by_identity.addresses.len()), ("web", 0));
        assert!(Arc::ptr_eq(&map, &pack_workloads(&table, Some(&map))), "unchanged: the same map");
    }

    #[test]
    fn an_endpoint_set_refers_to_the_workloads_at_its_addresses() {
        let endpoint =
            |address: &str| pb::Endpoint { address: address.into(), port: 80, ..Default::default() };
        let config = pb::ProxyConfig {
            endpoints: vec![pb::ServiceEndpoints {
                service: "web:80".into(),
                endpoints: vec![
                    endpoint("10.0.0.2"),
                    endpoint("10.0.0.1"),
                    endpoint("10.0.0.2"),
                    endpoint("fd00::0001"),
                ],
                ..Default::default()
            }],
            ..Default::default()
        };
        let packed = ScopeResources::pack(&config, None);
        assert_eq!(packed.of(ResourceType::Endpoints)["web:80"].deps, ["10.0.0.1", "10.0.0.2", "fd00::1"]);
    }
}
