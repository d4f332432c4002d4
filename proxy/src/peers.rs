//! Who is on the other side, for the `source_*` and `destination_*` labels of Istio's metrics.
//!
//! The workload table (`MeshWorkload`) names who runs at an address. A proxy on a config file
//! holds all of it; over xDS it holds its part: the control plane sends the workloads behind
//! the endpoints the proxy holds, and the proxy asks for a caller it does not know by address
//! and by identity ([`PeerTable::missing`]). Outbound, the proxy names the endpoint it picked
//! by its address. Inbound, it names the downstream by the connection's source address, and
//! with mutual TLS only when the peer proved the identity the table gives that address;
//! otherwise it falls back to the one workload that runs under the proven identity, or, when
//! several do, to what the identity itself tells (the namespace). A peer the table does not
//! know is `unknown`, as in Istio.
//!
//! Lookups happen once per connection (inbound) or per picked endpoint (outbound) and give an
//! `Arc`'d label set: no label strings are built per request.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use trellis_xds::config as pb;

use crate::FastMap;

/// Istio's value for what is not known.
pub const UNKNOWN: &str = "unknown";
/// Istio's canonical revision when none is known.
pub const LATEST: &str = "latest";
/// The longest label value accepted from the workload table.
const MAX_VALUE: usize = 256;

/// One side of an exchange, as Istio's labels name it (the principal is not here: it is what
/// mutual TLS proved, per connection).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WorkloadLabels {
    pub workload: Arc<str>,
    pub namespace: Arc<str>,
    pub app: Arc<str>,
    pub version: Arc<str>,
    pub canonical_service: Arc<str>,
    pub canonical_revision: Arc<str>,
    pub cluster: Arc<str>,
}

impl WorkloadLabels {
    /// A peer nobody knows: `unknown` everywhere, revision `latest`.
    pub fn unknown() -> Arc<WorkloadLabels> {
        static UNKNOWN_PEER: OnceLock<Arc<WorkloadLabels>> = OnceLock::new();
        UNKNOWN_PEER.get_or_init(|| Arc::new(WorkloadLabels::with_namespace(UNKNOWN.into()))).clone()
    }

    /// Known only by the namespace its certificate names.
    fn with_namespace(namespace: Arc<str>) -> WorkloadLabels {
        let unknown: Arc<str> = UNKNOWN.into();
        WorkloadLabels {
            workload: unknown.clone(),
            namespace,
            app: unknown.clone(),
            version: unknown.clone(),
            canonical_service: unknown.clone(),
            canonical_revision: LATEST.into(),
            cluster: unknown,
        }
    }

    fn of_entry(w: &pb::MeshWorkload) -> WorkloadLabels {
        let or = |value: &str, default: &str| -> Arc<str> {
            if value.is_empty() { default.into() } else { value.into() }
        };
        WorkloadLabels {
            workload: or(&w.workload, UNKNOWN),
            namespace: or(&w.namespace, UNKNOWN),
            app: or(&w.app, UNKNOWN),
            version: or(&w.version, UNKNOWN),
            canonical_service: or(&w.canonical_service, UNKNOWN),
            canonical_revision: or(&w.canonical_revision, LATEST),
            cluster: or(&w.cluster, UNKNOWN),
        }
    }
}

/// A label set as a key: hashed once, when made, so that a request's series lookup hashes one
/// number and compares one pointer.
#[derive(Clone, Debug)]
pub struct PeerKey {
    pub labels: Arc<WorkloadLabels>,
    hash: u64,
}

impl PeerKey {
    pub fn new(labels: Arc<WorkloadLabels>) -> PeerKey {
        let mut hasher = std::hash::DefaultHasher::new();
        labels.hash(&mut hasher);
        PeerKey { hash: hasher.finish(), labels }
    }

    pub fn unknown() -> PeerKey {
        static UNKNOWN_KEY: OnceLock<PeerKey> = OnceLock::new();
        UNKNOWN_KEY.get_or_init(|| PeerKey::new(WorkloadLabels::unknown())).clone()
    }
}

impl PartialEq for PeerKey {
    fn eq(&self, other: &PeerKey) -> bool {
        self.hash == other.hash && (Arc::ptr_eq(&self.labels, &other.labels) || self.labels == other.labels)
    }
}

impl Eq for PeerKey {}

impl Hash for PeerKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// One address of the table.
#[derive(Debug)]
struct Entry {
    key: PeerKey,
    principal: Arc<str>,
    sidecar: bool,
}

/// The workload table, compiled: by address, and by identity for peers whose address says
/// nothing (behind NAT, or all from one loopback address on a laptop).
#[derive(Debug, Default)]
pub struct PeerTable {
    by_address: FastMap<IpAddr, Entry>,
    /// The one label set of every workload that runs under an identity; `None` when several
    /// different workloads share it (Kubernetes' `default` service account).
    by_principal: HashMap<Arc<str>, Option<PeerKey>>,
    /// Label sets by namespace for identities the table does not know, made on first use.
    namespaces: std::sync::RwLock<HashMap<Arc<str>, PeerKey>>,
}

/// A workload table entry the proxy cannot use, with the field that says why.
#[derive(Debug)]
pub struct TableError {
    pub field: String,
    pub message: String,
}

impl PeerTable {
    /// Compiles the table. Workloads of equal labels share one label set.
    pub fn compile(workloads: &[pb::MeshWorkload]) -> Result<PeerTable, TableError> {
        let mut table = PeerTable::default();
        let mut interned: HashMap<WorkloadLabels, PeerKey> = HashMap::new();
        for (i, w) in workloads.iter().enumerate() {
            let field = |name: &str| format!("workloads[{i}].{name}");
            for (name, value) in [
                ("workload", &w.workload),
                ("namespace", &w.namespace),
                ("app", &w.app),
                ("version", &w.version),
                ("canonical_service", &w.canonical_service),
                ("canonical_revision", &w.canonical_revision),
                ("cluster", &w.cluster),
                ("principal", &w.principal),
            ] {
                if value.len() > MAX_VALUE {
                    return Err(TableError {
                        field: field(name),
                        message: format!("{} bytes, at most {MAX_VALUE}", value.len()),
                    });
                }
            }
            let labels = WorkloadLabels::of_entry(w);
            let key = interned
                .entry(labels)
                .or_insert_with_key(|labels| PeerKey::new(Arc::new(labels.clone())))
                .clone();
            // One copy of each identity, however many pods share it.
            let principal: Arc<str> = match table.by_principal.get_key_value(w.principal.as_str()) {
                Some((known, _)) => known.clone(),
                None => w.principal.as_str().into(),
            };
            if !w.principal.is_empty() {
                table
                    .by_principal
                    .entry(principal.clone())
                    .and_modify(|known| {
                        if known.as_ref().is_some_and(|k| *k != key) {
                            *known = None;
                        }
                    })
                    .or_insert_with(|| Some(key.clone()));
            }
            for (j, address) in w.addresses.iter().enumerate() {
                let ip: IpAddr = address.parse().map_err(|_| TableError {
                    field: format!("workloads[{i}].addresses[{j}]"),
                    message: format!("{address:?} is not an IP address"),
                })?;
                table
                    .by_address
                    .insert(ip, Entry { key: key.clone(), principal: principal.clone(), sidecar: w.sidecar });
            }
        }
        Ok(table)
    }

    /// The workload behind an endpoint this proxy picked (known even without a sidecar, as
    /// Istio knows it from the endpoint's metadata).
    pub fn outbound(&self, address: IpAddr) -> PeerKey {
        self.by_address.get(&address).map_or_else(PeerKey::unknown, |e| e.key.clone())
    }

    /// The workload of a downstream connection from `address`; `principal` is what mutual TLS
    /// proved of it.
    pub fn inbound(&self, address: IpAddr, principal: Option<&str>) -> PeerKey {
        let entry = self.by_address.get(&address);
        let Some(principal) = principal else {
            // Plaintext: only a workload with a sidecar would have told its name (Istio's
            // metadata exchange is between proxies).
            return entry.filter(|e| e.sidecar).map_or_else(PeerKey::unknown, |e| e.key.clone());
        };
        if let Some(e) = entry.filter(|e| &*e.principal == principal) {
            return e.key.clone();
        }
        if let Some(Some(key)) = self.by_principal.get(principal) {
            return key.clone();
        }
        self.of_namespace(principal)
    }

    /// The table entries that would name a caller from `address` proving `principal` (if
    /// any) but that this table lacks: the address, and the identity when the address does not
    /// already vouch for it. Names as the control plane has them (the address in its canonical
    /// form, the SPIFFE ID).
    pub fn missing(&self, address: IpAddr, principal: Option<&str>) -> Vec<String> {
        let entry = self.by_address.get(&address);
        let mut names = Vec::new();
        if entry.is_none() {
            names.push(address.to_string());
        }
        if let Some(principal) = principal
            && entry.is_none_or(|e| &*e.principal != principal)
            && !self.by_principal.contains_key(principal)
        {
            names.push(principal.to_owned());
        }
        names
    }

    /// Whether the table holds `name` (an address or an identity, as [`PeerTable::missing`]
    /// names them).
    pub fn knows(&self, name: &str) -> bool {
        match name.parse::<IpAddr>() {
            Ok(address) => self.by_address.contains_key(&address),
            Err(_) => self.by_principal.contains_key(name),
        }
    }

    /// Only the namespace the identity names (`spiffe://<td>/ns/<ns>/sa/<sa>`).
    fn of_namespace(&self, principal: &str) -> PeerKey {
        let Some(namespace) = namespace_of(principal) else { return PeerKey::unknown() };
        if let Some(key) = self.namespaces.read().ok().and_then(|m| m.get(namespace).cloned()) {
            return key;
        }
        let namespace: Arc<str> = namespace.into();
        let key = PeerKey::new(Arc::new(WorkloadLabels::with_namespace(namespace.clone())));
        // Bounded: identities come from certificates this mesh's CA signed.
        if let Ok(mut map) = self.namespaces.write() {
            map.insert(namespace, key.clone());
        }
        key
    }
}

/// The namespace of a SPIFFE ID in Istio's form.
pub fn namespace_of(principal: &str) -> Option<&str> {
    let rest = &principal[principal.find("/ns/")? + 4..];
    let namespace = rest.split('/').next()?;
    (!namespace.is_empty()).then_some(namespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(name: &str, address: &str, account: &str, sidecar: bool) -> pb::MeshWorkload {
        pb::MeshWorkload {
            uid: format!("shop/{name}-pod"),
            addresses: vec![address.into()],
            workload: name.into(),
            namespace: "shop".into(),
            app: name.into(),
            version: "v1".into(),
            canonical_service: name.into(),
            canonical_revision: "v1".into(),
            cluster: "Kubernetes".into(),
            principal: format!("spiffe://cluster.local/ns/shop/sa/{account}"),
            sidecar,
        }
    }

    fn table() -> PeerTable {
        PeerTable::compile(&[
            workload("frontend", "10.0.0.1", "frontend", true),
            workload("catalog", "10.0.0.2", "catalog", true),
            workload("catalog", "10.0.0.3", "catalog", true),
            workload("batch", "10.0.0.4", "default", true),
            workload("cron", "10.0.0.5", "default", true),
            workload("legacy", "10.0.0.6", "legacy", false),
        ])
        .unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn outbound_names_the_endpoint_and_replicas_share_one_label_set() {
        let t = table();
        let (a, b) = (t.outbound(ip("10.0.0.2")), t.outbound(ip("10.0.0.3")));
        assert!(Arc::ptr_eq(&a.labels, &b.labels), "one label set per workload");
        assert_eq!(&*a.labels.workload, "catalog");
        assert_eq!(&*t.outbound(ip("10.0.0.6")).labels.workload, "legacy", "known without a sidecar");
        assert_eq!(t.outbound(ip("10.9.9.9")), PeerKey::unknown());
        assert_eq!(&*PeerKey::unknown().labels.canonical_revision, "latest");
    }

    #[test]
    fn inbound_trusts_an_address_only_with_the_identity_it_should_prove() {
        let t = table();
        let frontend = Some("spiffe://cluster.local/ns/shop/sa/frontend");
        assert_eq!(&*t.inbound(ip("10.0.0.1"), frontend).labels.workload, "frontend");
        // Catalog's identity from frontend's address: the identity wins, and names catalog.
        let catalog = Some("spiffe://cluster.local/ns/shop/sa/catalog");
        assert_eq!(&*t.inbound(ip("10.0.0.1"), catalog).labels.workload, "catalog");
        // From an address nobody has (a laptop's loopback): the identity names one workload.
        assert_eq!(&*t.inbound(ip("127.0.0.1"), catalog).labels.workload, "catalog");
        // Two workloads run as `default`: only the namespace is certain.
        let shared = t.inbound(ip("127.0.0.1"), Some("spiffe://cluster.local/ns/shop/sa/default"));
        assert_eq!((&*shared.labels.workload, &*shared.labels.namespace), ("unknown", "shop"));
        assert_eq!(
            &*t.inbound(ip("10.0.0.4"), Some("spiffe://cluster.local/ns/shop/sa/default")).labels.workload,
            "batch"
        );
        let stranger = t.inbound(ip("10.0.0.1"), Some("spiffe://cluster.local/ns/elsewhere/sa/x"));
        assert_eq!((&*stranger.labels.workload, &*stranger.labels.namespace), ("unknown", "elsewhere"));
        assert_eq!(&*stranger.labels.canonical_revision, "latest");
        // Plaintext: a sidecar's address is named, an address without one is not.
        assert_eq!(&*t.inbound(ip("10.0.0.1"), None).labels.workload, "frontend");
        assert_eq!(t.inbound(ip("10.0.0.6"), None), PeerKey::unknown());
        assert_eq!(t.inbound(ip("192.0.2.1"), None), PeerKey::unknown());
    }

    #[test]
    fn what_is_missing_to_name_a_caller_is_its_address_and_an_identity_the_address_does_not_prove() {
        let t = table();
        let frontend = "spiffe://cluster.local/ns/shop/sa/frontend";
        assert!(t.missing(ip("10.0.0.1"), Some(frontend)).is_empty(), "known by address and identity");
        assert!(t.missing(ip("10.0.0.1"), None).is_empty());
        assert!(t.missing(ip("10.0.0.4"), Some("spiffe://cluster.local/ns/shop/sa/default")).is_empty());
        assert_eq!(
            t.missing(ip("127.0.0.1"), Some(frontend)),
            ["127.0.0.1"],
            "the identity names one workload"
        );
        let stranger = "spiffe://cluster.local/ns/elsewhere/sa/x";
        assert_eq!(t.missing(ip("10.0.0.1"), Some(stranger)), [stranger]);
        assert_eq!(t.missing(ip("fd00::0001"), Some(stranger)), ["fd00::1", stranger]);
        assert!(t.knows("10.0.0.6") && t.knows(frontend) && !t.knows("10.9.9.9") && !t.knows(stranger));

        // An identity entry (no address), as the control plane sends one on demand.
        let mut alone = workload("elsewhere", "10.0.0.9", "x", true);
        alone.addresses.clear();
        alone.principal = stranger.into();
        let t = PeerTable::compile(&[alone]).unwrap();
        assert!(t.knows(stranger));
        assert_eq!(&*t.inbound(ip("127.0.0.1"), Some(stranger)).labels.workload, "elsewhere");
    }

    #[test]
    fn bad_entries_are_refused_with_the_field() {
        let mut bad = workload("x", "not-an-ip", "x", true);
        let e = PeerTable::compile(&[workload("ok", "10.0.0.1", "ok", true), bad.clone()]).unwrap_err();
        assert_eq!(e.field, "workloads[1].addresses[0]");
        assert!(e.message.contains("not-an-ip"), "{}", e.message);
        bad.addresses = vec!["10.0.0.9".into()];
        bad.app = "a".repeat(300);
        let e = PeerTable::compile(&[bad]).unwrap_err();
        assert_eq!((e.field.as_str(), e.message.as_str()), ("workloads[0].app", "300 bytes, at most 256"));
    }

    #[test]
    fn namespaces_come_from_istio_shaped_identities_only() {
        assert_eq!(namespace_of("spiffe://cluster.local/ns/shop/sa/web"), Some("shop"));
        assert_eq!(namespace_of("spiffe://td/ns/shop"), Some("shop"));
        for odd in ["spiffe://cluster.local/sa/web", "spiffe://x/ns//sa/y", "", "/ns/"] {
            assert_eq!(namespace_of(odd), None, "{odd}");
        }
    }
}
