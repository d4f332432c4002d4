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
    pub name: String,
    pub version: u64,
    pub any: Any,
    /// Names of resources of the next type down (a virtual host's clusters, a cluster's
    /// endpoint set) that a proxy holding this one needs too.
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
                .insert(name.to_owned(), Arc::new(Entry { name: name.to_owned(), version, any, deps }));
        };
        let settings = settings_of(config);
        put(ResourceType::Settings, SETTINGS_NAME, pack(ResourceType::Settings, &settings), Vec::new());
        for e in &config.endpoints {
            put(ResourceType::Endpoints, &e.service, pack(ResourceType::Endpoints, e), Vec::new());
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

/// The workload table as resources, one per workload; `previous` is returned itself when
/// nothing changed, so sessions see "unchanged" by pointer.
pub fn pack_workloads(table: &[pb::MeshWorkload], previous: Option<&TypeMap>) -> TypeMap {
    let fresh: BTreeMap<String, Arc<Entry>> = table
        .iter()
        .map(|w| {
            let any = pack(ResourceType::Workload, w);
            let version = xxhash_rust::xxh64::xxh64(&any.value, 0);
            (w.uid.clone(), Arc::new(Entry { name: w.uid.clone(), version, any, deps: Vec::new() }))
        })
        .collect();
    match previous {
        Some(old) if **old == fresh => old.clone(),
        _ => Arc::new(fresh),
    }
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
}
