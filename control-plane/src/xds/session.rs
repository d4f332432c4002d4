//! One proxy's delta xDS session: what it subscribed to, what it holds, and which responses it
//! has acknowledged. Pure state: the server feeds it requests and new resources and sends what
//! it returns.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use trellis_xds::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource};
use trellis_xds::types::ResourceType;

use super::resources::{Entry, ScopeResources, TypeMap};

/// What the proxy holds of one type, as far as the server knows.
#[derive(Clone, Debug)]
enum Known {
    /// Exactly the resources of this (shared) map: the common case for wildcard types, and
    /// free in memory however large the map.
    Shared(TypeMap),
    /// Names and versions, for on-demand types, sorted by name. A slice of exactly its size
    /// whose names are the shared resources' own (a proxy's few dozen names would otherwise
    /// each be a copy, in a map node with room for eleven).
    Own(Box<[(Arc<str>, u64)]>),
}

impl Default for Known {
    fn default() -> Self {
        Known::Own(Box::default())
    }
}

impl Known {
    fn version(&self, name: &str) -> Option<u64> {
        match self {
            Known::Shared(map) => map.get(name).map(|e| e.version),
            Known::Own(held) => held.binary_search_by(|(n, _)| (**n).cmp(name)).ok().map(|i| held[i].1),
        }
    }

    fn len(&self) -> usize {
        match self {
            Known::Shared(map) => map.len(),
            Known::Own(map) => map.len(),
        }
    }

    fn names(&self) -> Vec<&str> {
        match self {
            Known::Shared(map) => map.keys().map(String::as_str).collect(),
            Known::Own(held) => held.iter().map(|(n, _)| &**n).collect(),
        }
    }
}

/// A NACK, as the proxy sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nack {
    pub generation: u64,
    pub message: String,
}

/// Per type: what was last sent and what came back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TypeStatus {
    /// Model generation of the last response sent.
    pub sent: Option<u64>,
    /// Model generation of the last response acknowledged.
    pub acked: Option<u64>,
    /// Set while the last response is rejected.
    pub nack: Option<Nack>,
}

#[derive(Debug, Default)]
struct TypeState {
    opened: bool,
    /// Whether a response of this type has been sent on this stream: for a wildcard type the
    /// first one goes out even when empty, so the proxy knows it holds the complete set.
    answered: bool,
    wildcard: bool,
    explicit: BTreeSet<String>,
    /// Subscribed since the last push: answered even when the proxy already holds them.
    forced: BTreeSet<String>,
    known: Known,
    /// The last response's nonce and generation; ACKs of older nonces are stale.
    latest: Option<(String, u64)>,
    status: TypeStatus,
}

#[derive(Debug, Default)]
pub struct Session {
    /// Per type, in [`ResourceType::PUSH_ORDER`]; a type is in use once `opened`. An array, not
    /// a map: a map's node holds room for eleven states, and every connected proxy has one.
    types: [TypeState; ResourceType::PUSH_ORDER.len()],
    next_nonce: u64,
}

/// What a request meant.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Handled {
    /// Subscriptions changed: push now.
    pub push: bool,
    /// A NACK for the latest response of its type.
    pub nack: Option<(ResourceType, String)>,
    /// An ACK or NACK of a response that was not the latest of its type (ignored).
    pub stale: bool,
}

const WILDCARD: &str = "*";
/// A response carries about this many bytes of resources at most (a single larger resource
/// goes alone). The proxy's gRPC decoder keeps a buffer as large as the largest response it
/// ever received, for as long as the stream lives, so the first address table goes out in parts.
pub const MAX_RESPONSE_BYTES: usize = 8 * 1024;

/// A response decided by [`Session::push`] and already counted as sent (its nonce is the
/// latest of its type), held as references into the shared resources until the stream sends
/// it, so a proxy waiting for its turn costs a pointer per resource rather than a copy.
#[derive(Debug)]
pub struct Outgoing {
    pub kind: ResourceType,
    pub(super) nonce: String,
    pub(super) generation: u64,
    pub(super) resources: Vec<Arc<Entry>>,
    pub(super) removed: Vec<String>,
}

impl Outgoing {
    pub fn into_response(self) -> DeltaDiscoveryResponse {
        let type_url = self.kind.type_url();
        DeltaDiscoveryResponse {
            system_version_info: self.generation.to_string(),
            resources: self
                .resources
                .iter()
                .map(|entry| Resource {
                    name: entry.name.to_string(),
                    version: format!("{:016x}", entry.version),
                    resource: Some(entry.any.clone()),
                    ..Default::default()
                })
                .collect(),
            type_url: type_url.to_owned(),
            nonce: self.nonce,
            removed_resources: self.removed,
        }
    }
}

/// Approximate encoded size of one resource in a response.
fn response_bytes(entry: &Entry) -> usize {
    entry.any.value.len() + entry.any.type_url.len() + entry.name.len() + 32
}

impl Session {
    /// Applies one request. An unknown type is an error for the caller to log; the stream
    /// goes on.
    pub fn handle(&mut self, request: &DeltaDiscoveryRequest) -> Result<Handled, String> {
        let kind = ResourceType::from_type_url(&request.type_url)
            .ok_or_else(|| format!("type_url: {:?} is not a type Trellis serves", request.type_url))?;
        let state = &mut self.types[index(kind)];
        let mut handled = Handled::default();

        if !request.response_nonce.is_empty() {
            match &state.latest {
                Some((nonce, generation)) if *nonce == request.response_nonce => {
                    match &request.error_detail {
                        Some(status) => {
                            state.status.nack =
                                Some(Nack { generation: *generation, message: status.message.clone() });
                            handled.nack = Some((kind, status.message.clone()));
                        }
                        None => {
                            state.status.acked = Some(*generation);
                            state.status.nack = None;
                        }
                    }
                }
                _ => handled.stale = true,
            }
        }

        if !state.opened {
            state.opened = true;
            handled.push = true;
            if !request.initial_resource_versions.is_empty() {
                // A reconnecting proxy says what it holds; versions we cannot read count as
                // "holds something else", so those resources are sent again.
                let mut held: Vec<(Arc<str>, u64)> = request
                    .initial_resource_versions
                    .iter()
                    .map(|(name, v)| (name.as_str().into(), u64::from_str_radix(v, 16).unwrap_or(0)))
                    .collect();
                held.sort_unstable();
                state.known = Known::Own(held.into_boxed_slice());
            }
            if kind.is_wildcard() && request.resource_names_subscribe.is_empty() {
                state.wildcard = true;
            }
        }
        for name in &request.resource_names_subscribe {
            handled.push = true;
            if name == WILDCARD {
                state.wildcard = true;
            } else {
                state.explicit.insert(name.clone());
                state.forced.insert(name.clone());
            }
        }
        for name in &request.resource_names_unsubscribe {
            handled.push = true;
            if name == WILDCARD {
                state.wildcard = false;
            } else {
                state.explicit.remove(name);
                state.forced.remove(name);
            }
        }
        Ok(handled)
    }

    /// The responses that bring the proxy from what it holds to `resources`, in the order they
    /// must be sent: additions and updates by [`ResourceType::PUSH_ORDER`], then removals in
    /// the reverse order. Empty when the proxy is up to date.
    pub fn push(&mut self, resources: &ScopeResources, generation: u64) -> Vec<Outgoing> {
        let desired = self.desired(resources);
        let mut updates = Vec::new();
        let mut removals = Vec::new();
        for kind in ResourceType::PUSH_ORDER {
            let state = &mut self.types[index(kind)];
            if !state.opened {
                continue;
            }
            let current = resources.of(kind);
            let wanted = &desired[&kind];
            let wants_all = match wanted {
                Wanted::All => true,
                Wanted::Names(names) => state.wildcard && names.len() == current.len(),
            };
            // The common case on a mesh-wide change: this type did not change for this scope.
            if state.answered
                && let Known::Shared(held) = &state.known
                && Arc::ptr_eq(held, &current)
                && state.forced.is_empty()
                && wants_all
            {
                continue;
            }
            let mut changed = Vec::new();
            let mut consider = |name: &String, entry: &Arc<Entry>| {
                if state.forced.contains(name.as_str()) || state.known.version(name) != Some(entry.version) {
                    changed.push(entry.clone());
                }
            };
            match wanted {
                Wanted::All => current.iter().for_each(|(name, entry)| consider(name, entry)),
                Wanted::Names(names) => {
                    for name in names {
                        if let Some(entry) = current.get(name.as_str()) {
                            consider(name, entry);
                        }
                    }
                }
            }
            let mut removed: Vec<String> = state
                .known
                .names()
                .into_iter()
                .filter(|n| !current.contains_key(*n) || !wanted.contains(n))
                .map(str::to_owned)
                .collect();
            // A name asked for that does not exist: say so, so the proxy stops waiting for it.
            removed.extend(state.forced.iter().filter(|n| !current.contains_key(n.as_str())).cloned());
            removed.sort();
            removed.dedup();

            state.known = match wanted {
                Wanted::Names(names) if !wants_all => Known::Own(
                    names
                        .iter()
                        .filter_map(|n| current.get(n.as_str()).map(|e| (e.name.clone(), e.version)))
                        .collect(),
                ),
                _ => Known::Shared(current.clone()),
            };
            state.forced.clear();
            if !changed.is_empty() || (!state.answered && state.wildcard && removed.is_empty()) {
                updates.push((kind, changed));
            }
            state.answered = true;
            if !removed.is_empty() {
                removals.push((kind, removed));
            }
        }
        let mut out = Vec::new();
        for (kind, resources) in updates {
            let mut part = Vec::new();
            let mut part_bytes = 0;
            for entry in resources {
                let bytes = response_bytes(&entry);
                if !part.is_empty() && part_bytes + bytes > MAX_RESPONSE_BYTES {
                    out.push(self.response(kind, generation, std::mem::take(&mut part), Vec::new()));
                    part_bytes = 0;
                }
                part_bytes += bytes;
                part.push(entry);
            }
            out.push(self.response(kind, generation, part, Vec::new()));
        }
        for (kind, removed) in removals.into_iter().rev() {
            out.push(self.response(kind, generation, Vec::new(), removed));
        }
        out
    }

    /// Per type, the names the proxy should hold: its subscriptions plus, for what it holds,
    /// what that refers to. A wildcard type that refers to nothing is simply "all", without
    /// listing a large address table for every proxy on every push.
    fn desired(&self, resources: &ScopeResources) -> BTreeMap<ResourceType, Wanted> {
        let mut desired: BTreeMap<ResourceType, Wanted> = BTreeMap::new();
        // Top-down: a service's dependants first, so references flow towards endpoints.
        for kind in ResourceType::PUSH_ORDER.into_iter().rev() {
            let below = referenced_type(kind);
            let state = Some(&self.types[index(kind)]).filter(|s| s.opened);
            if below.is_none() && state.is_some_and(|s| s.wildcard) {
                desired.insert(kind, Wanted::All);
                continue;
            }
            let mut names = match desired.remove(&kind) {
                Some(Wanted::Names(names)) => names,
                _ => BTreeSet::new(),
            };
            if let Some(state) = state {
                if state.wildcard {
                    names.extend(resources.of(kind).keys().cloned());
                }
                names.extend(state.explicit.iter().cloned());
            }
            if let Some(below) = below {
                let map = resources.of(kind);
                let deps: Vec<String> = names
                    .iter()
                    .filter_map(|n| map.get(n.as_str()))
                    .flat_map(|e| e.deps.iter().cloned())
                    .collect();
                match desired.entry(below).or_insert_with(|| Wanted::Names(BTreeSet::new())) {
                    Wanted::Names(set) => set.extend(deps),
                    Wanted::All => {}
                }
            }
            desired.insert(kind, Wanted::Names(names));
        }
        desired
    }

    fn response(
        &mut self,
        kind: ResourceType,
        generation: u64,
        resources: Vec<Arc<Entry>>,
        removed: Vec<String>,
    ) -> Outgoing {
        self.next_nonce += 1;
        let nonce = self.next_nonce.to_string();
        {
            let state = &mut self.types[index(kind)];
            state.latest = Some((nonce.clone(), generation));
            state.status.sent = Some(generation);
        }
        Outgoing { kind, nonce, generation, resources, removed }
    }

    fn opened(&self) -> impl Iterator<Item = (ResourceType, &TypeState)> {
        ResourceType::PUSH_ORDER.into_iter().zip(&self.types).filter(|(_, s)| s.opened)
    }

    /// Per type in use: sent, acknowledged, rejected, and the number of resources held.
    pub fn types_in_use(&self) -> impl Iterator<Item = (ResourceType, TypeStatus, usize)> + '_ {
        self.opened().map(|(k, s)| (k, s.status.clone(), s.known.len()))
    }

    /// Per type: sent, acknowledged, rejected.
    #[cfg(test)]
    pub fn status(&self) -> BTreeMap<ResourceType, TypeStatus> {
        self.opened().map(|(k, s)| (k, s.status.clone())).collect()
    }

    /// Number of resources the proxy holds, per type.
    #[cfg(test)]
    pub fn held(&self) -> BTreeMap<ResourceType, usize> {
        self.opened().map(|(k, s)| (k, s.known.len())).collect()
    }
}

/// Where `kind`'s state is in [`Session::types`].
fn index(kind: ResourceType) -> usize {
    ResourceType::PUSH_ORDER.iter().position(|k| *k == kind).unwrap_or(0)
}

/// The names a proxy should hold of one type.
enum Wanted {
    All,
    Names(BTreeSet<String>),
}

impl Wanted {
    fn contains(&self, name: &str) -> bool {
        match self {
            Wanted::All => true,
            Wanted::Names(names) => names.contains(name),
        }
    }
}

fn referenced_type(kind: ResourceType) -> Option<ResourceType> {
    match kind {
        ResourceType::VirtualHost => Some(ResourceType::Cluster),
        ResourceType::Cluster => Some(ResourceType::Endpoints),
        ResourceType::Endpoints => Some(ResourceType::Workload),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_xds::config as pb;
    use trellis_xds::google::rpc::Status;

    /// Service `web` (port 80) routed to clusters `a` (and `b` when split), each on endpoint set
    /// `web:80`; service `db` with cluster `db`.
    fn config(split: bool) -> pb::ProxyConfig {
        let mut clusters = vec![pb::WeightedCluster { cluster: "a".into(), weight: 90 }];
        if split {
            clusters.push(pb::WeightedCluster { cluster: "b".into(), weight: 10 });
        }
        let cluster = |name: &str, svc: &str| pb::Cluster {
            name: name.into(),
            service: svc.into(),
            ..Default::default()
        };
        pb::ProxyConfig {
            services: vec![
                pb::Service { name: "web".into(), ..Default::default() },
                pb::Service { name: "db".into(), ..Default::default() },
            ],
            virtual_hosts: vec![pb::VirtualHost {
                name: "web:80".into(),
                routes: vec![pb::Route {
                    action: Some(pb::route::Action::Forward(pb::Forward { clusters })),
                    ..Default::default()
                }],
            }],
            clusters: vec![cluster("a", "web:80"), cluster("b", "web:80"), cluster("db", "db:5432")],
            endpoints: vec![
                pb::ServiceEndpoints { service: "web:80".into(), ..Default::default() },
                pb::ServiceEndpoints { service: "db:5432".into(), ..Default::default() },
            ],
            ..Default::default()
        }
    }

    fn request(kind: ResourceType, subscribe: &[&str]) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: kind.type_url().into(),
            resource_names_subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn push(
        session: &mut Session,
        resources: &ScopeResources,
        generation: u64,
    ) -> Vec<DeltaDiscoveryResponse> {
        session.push(resources, generation).into_iter().map(Outgoing::into_response).collect()
    }

    fn open_all(session: &mut Session) {
        for kind in ResourceType::PUSH_ORDER {
            session.handle(&request(kind, &[])).unwrap();
        }
    }

    /// `type:name,name|removed:name` per response, for compact assertions.
    fn summary(responses: &[DeltaDiscoveryResponse]) -> Vec<String> {
        responses
            .iter()
            .map(|r| {
                let kind = ResourceType::from_type_url(&r.type_url).unwrap().short_name();
                let names: Vec<&str> = r.resources.iter().map(|x| x.name.as_str()).collect();
                if r.removed_resources.is_empty() {
                    format!("{kind}:{}", names.join(","))
                } else {
                    format!("{kind}-removed:{}", r.removed_resources.join(","))
                }
            })
            .collect()
    }

    fn ack(session: &mut Session, response: &DeltaDiscoveryResponse) -> Handled {
        session
            .handle(&DeltaDiscoveryRequest {
                type_url: response.type_url.clone(),
                response_nonce: response.nonce.clone(),
                ..Default::default()
            })
            .unwrap()
    }

    #[test]
    fn a_new_proxy_gets_the_address_table_and_settings_only() {
        let resources = ScopeResources::pack(&config(false), None);
        let mut session = Session::default();
        open_all(&mut session);
        assert_eq!(
            summary(&push(&mut session, &resources, 1)),
            ["settings:settings", "service:db,web"],
            "no workloads: they come with the endpoints that refer to them, or when asked for"
        );
        assert!(push(&mut session, &resources, 1).is_empty(), "nothing changed, nothing sent");
    }

    #[test]
    fn an_empty_address_table_is_still_answered_once() {
        let resources = ScopeResources::pack(&pb::ProxyConfig::default(), None);
        let mut session = Session::default();
        open_all(&mut session);
        assert_eq!(summary(&push(&mut session, &resources, 1)), ["settings:settings", "service:"]);
        assert!(push(&mut session, &resources, 2).is_empty());
    }

    #[test]
    fn a_large_address_table_goes_out_in_parts() {
        // 150 services of about 450 bytes each, and one (s075) larger than a whole part.
        let name = |i: usize| format!("s{i:03}-{}", "x".repeat(if i == 75 { 10_000 } else { 200 }));
        let config = pb::ProxyConfig {
            services: (0..150).map(|i| pb::Service { name: name(i), ..Default::default() }).collect(),
            ..Default::default()
        };
        let resources = ScopeResources::pack(&config, None);
        let mut session = Session::default();
        session.handle(&request(ResourceType::Service, &[])).unwrap();
        let parts = push(&mut session, &resources, 1);
        let names: Vec<String> =
            parts.iter().flat_map(|r| r.resources.iter().map(|x| x.name.clone())).collect();
        assert_eq!(names, (0..150).map(name).collect::<Vec<_>>(), "every service once, in order");
        assert!(parts.len() > 8, "{} parts", parts.len());
        for part in &parts {
            let bytes = prost::Message::encoded_len(part);
            let alone = part.resources.len() == 1;
            assert!(
                alone || bytes <= MAX_RESPONSE_BYTES + 200,
                "{bytes} bytes in {} resources",
                part.resources.len()
            );
        }
        assert!(parts.iter().any(|r| r.resources.len() == 1 && r.resources[0].name == name(75)));
        let nonces: BTreeSet<&str> = parts.iter().map(|r| r.nonce.as_str()).collect();
        assert_eq!(nonces.len(), parts.len(), "each part has its own nonce");
    }

    #[test]
    fn a_virtual_host_comes_after_its_clusters_and_their_endpoints() {
        let resources = ScopeResources::pack(&config(false), None);
        let mut session = Session::default();
        open_all(&mut session);
        push(&mut session, &resources, 1);
        let handled = session.handle(&request(ResourceType::VirtualHost, &["web:80"])).unwrap();
        assert!(handled.push);
        assert_eq!(
            summary(&push(&mut session, &resources, 1)),
            ["endpoints:web:80", "cluster:a", "virtualhost:web:80"]
        );
        assert_eq!(session.held()[&ResourceType::Service], 2);
        assert_eq!(session.held()[&ResourceType::Cluster], 1, "only what the proxy uses");
    }

    #[test]
    fn the_workloads_behind_endpoints_come_before_them_and_a_caller_is_sent_when_asked_for() {
        let mut config = config(false);
        let endpoint =
            |address: &str| pb::Endpoint { address: address.into(), port: 80, ..Default::default() };
        config.endpoints[0].endpoints = vec![endpoint("10.0.0.1"), endpoint("10.0.0.2")];
        let workload = |uid: &str, address: &str| pb::MeshWorkload {
            uid: uid.into(),
            addresses: vec![address.into()],
            principal: format!("spiffe://cluster.local/ns/shop/sa/{uid}"),
            ..Default::default()
        };
        let table =
            [workload("web-1", "10.0.0.1"), workload("web-2", "10.0.0.2"), workload("client", "10.9.0.9")];
        let resources = ScopeResources::pack(&config, None)
            .with_shared(ResourceType::Workload, super::super::resources::pack_workloads(&table, None));
        let mut session = Session::default();
        open_all(&mut session);
        push(&mut session, &resources, 1);
        session.handle(&request(ResourceType::VirtualHost, &["web:80"])).unwrap();
        assert_eq!(
            summary(&push(&mut session, &resources, 1)),
            ["workload:10.0.0.1,10.0.0.2", "endpoints:web:80", "cluster:a", "virtualhost:web:80"]
        );
        // A connection from 10.9.0.9: the proxy asks for that address, and for an identity.
        session
            .handle(&request(
                ResourceType::Workload,
                &["10.9.0.9", "spiffe://cluster.local/ns/shop/sa/client"],
            ))
            .unwrap();
        assert_eq!(
            summary(&push(&mut session, &resources, 1)),
            ["workload:10.9.0.9,spiffe://cluster.local/ns/shop/sa/client"]
        );
        session.handle(&request(ResourceType::Workload, &["192.0.2.1"])).unwrap();
        assert_eq!(
            summary(&push(&mut session, &resources, 1)),
            ["workload-removed:192.0.2.1"],
            "no such workload"
        );
        assert_eq!(session.held()[&ResourceType::Workload], 4, "what it uses, not the mesh's table");
    }

    #[test]
    fn a_new_split_sends_the_new_cluster_first_and_a_dropped_one_is_removed_last() {
        let before = ScopeResources::pack(&config(false), None);
        let after = ScopeResources::pack(&config(true), Some(&before));
        let mut session = Session::default();
        open_all(&mut session);
        session.handle(&request(ResourceType::VirtualHost, &["web:80"])).unwrap();
        push(&mut session, &before, 1);
        assert_eq!(summary(&push(&mut session, &after, 2)), ["cluster:b", "virtualhost:web:80"]);
        assert_eq!(summary(&push(&mut session, &before, 3)), ["virtualhost:web:80", "cluster-removed:b"]);
    }

    #[test]
    fn a_reconnecting_proxy_is_sent_only_what_it_lacks() {
        let resources = ScopeResources::pack(&config(false), None);
        let services = resources.of(ResourceType::Service);
        let mut session = Session::default();
        let mut first = request(ResourceType::Service, &[]);
        first.initial_resource_versions = [
            ("web".to_string(), format!("{:016x}", services["web"].version)),
            ("db".to_string(), "stale".to_string()),
            ("gone".to_string(), "0000000000000001".to_string()),
        ]
        .into();
        session.handle(&first).unwrap();
        assert_eq!(summary(&push(&mut session, &resources, 7)), ["service:db", "service-removed:gone"]);
    }

    #[test]
    fn acks_nacks_and_stale_nonces() {
        let before = ScopeResources::pack(&config(false), None);
        let after = ScopeResources::pack(&config(true), Some(&before));
        let mut session = Session::default();
        open_all(&mut session);
        session.handle(&request(ResourceType::VirtualHost, &["web:80"])).unwrap();
        let first = push(&mut session, &before, 1);
        let vh = first.iter().find(|r| r.type_url == ResourceType::VirtualHost.type_url()).unwrap().clone();
        let second = push(&mut session, &after, 2);
        let vh2 = second.iter().find(|r| r.type_url == ResourceType::VirtualHost.type_url()).unwrap().clone();

        assert!(ack(&mut session, &vh).stale, "an ACK of an older response is ignored");
        assert_eq!(session.status()[&ResourceType::VirtualHost].acked, None);

        let nack = DeltaDiscoveryRequest {
            type_url: vh2.type_url.clone(),
            response_nonce: vh2.nonce.clone(),
            error_detail: Some(Status { code: 3, message: "cluster b: bad".into(), details: vec![] }),
            ..Default::default()
        };
        let handled = session.handle(&nack).unwrap();
        assert_eq!(handled.nack, Some((ResourceType::VirtualHost, "cluster b: bad".into())));
        let status = &session.status()[&ResourceType::VirtualHost];
        assert_eq!((status.sent, status.acked), (Some(2), None));
        assert_eq!(status.nack.as_ref().map(|n| n.generation), Some(2));
        assert!(push(&mut session, &after, 2).is_empty(), "a rejected version is not resent as is");

        let third = push(&mut session, &before, 3);
        let vh3 = third.iter().find(|r| r.type_url == ResourceType::VirtualHost.type_url()).unwrap().clone();
        ack(&mut session, &vh3);
        let status = &session.status()[&ResourceType::VirtualHost];
        assert_eq!((status.acked, status.nack.clone()), (Some(3), None));
    }

    #[test]
    fn asking_again_resends_and_asking_for_nothing_known_says_removed() {
        let resources = ScopeResources::pack(&config(false), None);
        let mut session = Session::default();
        open_all(&mut session);
        session.handle(&request(ResourceType::Cluster, &["db"])).unwrap();
        assert_eq!(
            summary(&push(&mut session, &resources, 1)),
            ["settings:settings", "endpoints:db:5432", "cluster:db", "service:db,web"]
        );
        session.handle(&request(ResourceType::Cluster, &["db", "nope"])).unwrap();
        assert_eq!(summary(&push(&mut session, &resources, 1)), ["cluster:db", "cluster-removed:nope"]);
        let unsubscribe = DeltaDiscoveryRequest {
            type_url: ResourceType::Cluster.type_url().into(),
            resource_names_unsubscribe: vec!["db".into()],
            ..Default::default()
        };
        session.handle(&unsubscribe).unwrap();
        assert_eq!(
            summary(&push(&mut session, &resources, 1)),
            ["cluster-removed:db", "endpoints-removed:db:5432"],
            "referrers go first"
        );
    }

    #[test]
    fn an_unknown_type_is_an_error_naming_it() {
        let mut session = Session::default();
        let err = session.handle(&DeltaDiscoveryRequest {
            type_url: "type.googleapis.com/x.Y".into(),
            ..Default::default()
        });
        assert_eq!(err.unwrap_err(), "type_url: \"type.googleapis.com/x.Y\" is not a type Trellis serves");
    }
}
