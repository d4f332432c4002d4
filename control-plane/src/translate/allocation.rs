//! Addresses for ServiceEntry hosts that list none (Istio's DNS auto-allocation): a proxy that
//! answers its pod's DNS can then give such a host an address, and traffic to that address is
//! known to be for that host, TCP included.
//!
//! Addresses come from 240.240.0.0/16 (reserved, never routed) and depend only on the host
//! name, so every proxy and every push agree; two names that land on one address are told
//! apart in name order, the later one taking the next free address. Wildcard hosts get none
//! (no single name to answer for), nor do hosts with an address of their own.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};

use super::services::{Origin, Service};

/// 240.240.x.y with y in 1..=254: 256 × 254 addresses.
const SLOTS: u64 = 256 * 254;

fn address_of(slot: u64) -> Ipv4Addr {
    let third = (slot / 254) as u8;
    let fourth = (slot % 254) as u8 + 1;
    Ipv4Addr::new(240, 240, third, fourth)
}

/// Gives every address-less, non-wildcard ServiceEntry host its address.
pub fn assign(services: &mut [Service]) {
    let wanting = |s: &Service| {
        matches!(s.origin, Origin::ServiceEntry { .. }) && s.addresses.is_empty() && !s.hostname.contains('*')
    };
    let mut taken: HashSet<IpAddr> = services.iter().flat_map(|s| s.addresses.iter().copied()).collect();
    let mut names: Vec<&str> = services.iter().filter(|s| wanting(s)).map(|s| s.hostname.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let mut given: BTreeMap<String, IpAddr> = BTreeMap::new();
    for name in names {
        let start = xxhash_rust::xxh64::xxh64(name.as_bytes(), 0) % SLOTS;
        let free =
            (0..SLOTS).map(|i| IpAddr::V4(address_of((start + i) % SLOTS))).find(|ip| !taken.contains(ip));
        let Some(ip) = free else {
            tracing::warn!(host = name, "no address left in 240.240.0.0/16 to allocate");
            break;
        };
        taken.insert(ip);
        given.insert(name.to_owned(), ip);
    }
    for service in services.iter_mut() {
        if wanting(service)
            && let Some(ip) = given.get(&service.hostname)
        {
            service.addresses = vec![*ip];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(host: &str, origin: Origin, addresses: &[&str]) -> Service {
        Service {
            hostname: host.into(),
            namespace: "shop".into(),
            origin,
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            ports: Vec::new(),
            export_to: Vec::new(),
        }
    }

    fn entry(host: &str, addresses: &[&str]) -> Service {
        service(host, Origin::ServiceEntry { name: "se".into() }, addresses)
    }

    #[test]
    fn only_address_less_named_entries_get_one_from_the_reserved_range() {
        let mut services = vec![
            entry("api.external.test", &[]),
            entry("*.wild.test", &[]),
            entry("fixed.test", &["10.1.2.3"]),
            service("headless.shop.svc.cluster.local", Origin::Kubernetes { name: "headless".into() }, &[]),
        ];
        assign(&mut services);
        assert_eq!(services[0].addresses.len(), 1);
        let IpAddr::V4(given) = services[0].addresses[0] else { panic!("{:?}", services[0].addresses) };
        let [a, b, _, d] = given.octets();
        assert_eq!((a, b), (240, 240), "{given}");
        assert!(d != 0 && d != 255, "{given}");
        assert!(services[1].addresses.is_empty(), "wildcards get none");
        assert_eq!(services[2].addresses, vec!["10.1.2.3".parse::<IpAddr>().unwrap()]);
        assert!(services[3].addresses.is_empty(), "Kubernetes services keep what they have");
    }

    #[test]
    fn the_address_depends_on_the_name_only_and_one_name_has_one() {
        let mut alone = vec![entry("db.example", &[])];
        let mut crowd = vec![
            entry("zz.example", &[]),
            entry("db.example", &[]),
            entry("aa.example", &[]),
            entry("db.example", &[]),
        ];
        assign(&mut alone);
        assign(&mut crowd);
        assert_eq!(alone[0].addresses, crowd[1].addresses);
        assert_eq!(crowd[1].addresses, crowd[3].addresses);
        let mut all: Vec<IpAddr> = crowd.iter().map(|s| s.addresses[0]).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 3, "distinct names, distinct addresses");
    }

    #[test]
    fn a_taken_address_is_skipped() {
        let mut probe = vec![entry("db.example", &[])];
        assign(&mut probe);
        let natural = probe[0].addresses[0].to_string();
        let mut services = vec![entry("db.example", &[]), entry("squatter.example", &[&natural])];
        assign(&mut services);
        assert_ne!(services[0].addresses[0].to_string(), natural);
    }

    #[test]
    fn a_proxy_that_asks_gets_the_address_in_its_services_and_others_do_not() {
        use crate::translate::test_support::{labels_of, model};
        use crate::translate::{ProxyIdentity, scope_of, translate};
        let m = model(
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: external, namespace: shop }
spec:
  hosts: [api.external.test]
  resolution: STATIC
  ports: [{ number: 80, name: http, protocol: HTTP }]
  endpoints: [{ address: 10.9.0.5 }]
"#,
        );
        let addresses = |auto: bool| {
            let proxy =
                ProxyIdentity { namespace: "shop".into(), labels: labels_of(&[]), dns_auto_allocate: auto };
            let config = translate(&m, &scope_of(&m, &proxy));
            let service = config.services.iter().find(|s| s.name == "api.external.test").cloned();
            service.map(|s| s.addresses).unwrap_or_default()
        };
        assert_eq!(addresses(false), Vec::<String>::new());
        let given = addresses(true);
        assert_eq!(given.len(), 1);
        assert!(given[0].starts_with("240.240."), "{given:?}");
        assert_eq!(addresses(true), given, "the same on every push");
    }
}
