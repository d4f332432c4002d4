//! The names this proxy answers for: every service of its configuration that has an address,
//! by its full name and the short names its namespace reaches it by (`reviews`,
//! `reviews.shop`, `reviews.shop.svc`, as the control plane lists them), and wildcard hosts
//! (`*.example.com`, with the addresses a ServiceEntry gives them) for the names below them.
//!
//! Services without an address are left out, as Istio's agent leaves them out: a headless
//! Kubernetes service is answered by the cluster's DNS (which knows its pods' own names too),
//! and a ServiceEntry without addresses only has one here when the control plane allocated it
//! (`ISTIO_META_DNS_AUTO_ALLOCATE`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use trellis_xds::config as pb;

use crate::FastMap;

/// The addresses of one name, in the order the configuration lists them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Addresses {
    pub v4: Vec<Ipv4Addr>,
    pub v6: Vec<Ipv6Addr>,
}

impl Addresses {
    fn add(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) if !self.v4.contains(&v4) => self.v4.push(v4),
            IpAddr::V6(v6) if !self.v6.contains(&v6) => self.v6.push(v6),
            _ => {}
        }
    }
}

#[derive(Debug, Default)]
pub struct NameTable {
    /// Lower case, without the final dot.
    exact: FastMap<String, Addresses>,
    /// `*.example.com` as `.example.com`, longest first: the most specific wildcard wins.
    wildcards: Vec<(String, Addresses)>,
}

impl NameTable {
    pub fn from_config(config: &pb::ProxyConfig) -> NameTable {
        let mut table = NameTable::default();
        for service in &config.services {
            let mut addresses = Addresses::default();
            // The control plane sends addresses it parsed; one it could not is skipped, not fatal.
            for ip in service.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
                addresses.add(ip);
            }
            if addresses.v4.is_empty() && addresses.v6.is_empty() {
                continue;
            }
            for name in std::iter::once(&service.name).chain(&service.aliases) {
                table.insert(name, &addresses);
            }
        }
        table.wildcards.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        table
    }

    /// Several services of one name (a ServiceEntry with two addresses, or one that adds to a
    /// Kubernetes service) answer with all their addresses.
    fn insert(&mut self, name: &str, addresses: &Addresses) {
        let name = normalize(name);
        let entry = match name.strip_prefix('*') {
            Some(suffix) if suffix.starts_with('.') => {
                let at = match self.wildcards.iter().position(|(s, _)| s == suffix) {
                    Some(at) => at,
                    None => {
                        self.wildcards.push((suffix.to_owned(), Addresses::default()));
                        self.wildcards.len() - 1
                    }
                };
                &mut self.wildcards[at].1
            }
            _ => self.exact.entry(name).or_default(),
        };
        let v4 = addresses.v4.iter().map(|a| IpAddr::V4(*a));
        for ip in v4.chain(addresses.v6.iter().map(|a| IpAddr::V6(*a))) {
            entry.add(ip);
        }
    }

    /// The addresses of `name` (any case, with or without the final dot).
    pub fn lookup(&self, name: &str) -> Option<&Addresses> {
        let name = name.strip_suffix('.').unwrap_or(name);
        let found = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            self.exact.get(&name.to_ascii_lowercase())
        } else {
            self.exact.get(name)
        };
        found.or_else(|| {
            // `*.example.com` covers `a.example.com` and `a.b.example.com`, not `example.com`.
            self.wildcards
                .iter()
                .find(|(suffix, _)| {
                    name.len() > suffix.len()
                        && name.is_char_boundary(name.len() - suffix.len())
                        && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                })
                .map(|(_, addresses)| addresses)
        })
    }

    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, aliases: &[&str], addresses: &[&str]) -> pb::Service {
        pb::Service {
            name: name.into(),
            aliases: aliases.iter().map(|a| (*a).to_owned()).collect(),
            addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
            ports: Vec::new(),
        }
    }

    fn table(services: Vec<pb::Service>) -> NameTable {
        NameTable::from_config(&pb::ProxyConfig { services, ..Default::default() })
    }

    #[test]
    fn full_and_short_names_answer_with_the_service_addresses() {
        let t = table(vec![service(
            "reviews.shop.svc.cluster.local",
            &["reviews", "reviews.shop", "reviews.shop.svc"],
            &["10.96.0.20", "fd00::20"],
        )]);
        let want =
            Addresses { v4: vec!["10.96.0.20".parse().unwrap()], v6: vec!["fd00::20".parse().unwrap()] };
        for name in [
            "reviews.shop.svc.cluster.local.",
            "Reviews.Shop.svc.cluster.local",
            "reviews",
            "reviews.shop.svc",
        ] {
            assert_eq!(t.lookup(name), Some(&want), "{name}");
        }
        assert_eq!(t.lookup("ratings.shop.svc.cluster.local"), None);
        assert_eq!(t.lookup(""), None);
    }

    #[test]
    fn services_without_a_usable_address_are_left_out() {
        let t = table(vec![
            service("headless.shop.svc.cluster.local", &["headless"], &[]),
            service("broken.example", &[], &["not-an-ip", "10.0.0.0/8"]),
        ]);
        assert!(t.is_empty());
        assert_eq!(t.lookup("headless"), None);
    }

    #[test]
    fn one_name_in_two_services_has_the_addresses_of_both() {
        let t = table(vec![
            service("db.example", &[], &["240.240.0.1"]),
            service("db.example", &[], &["240.240.0.2", "240.240.0.1"]),
        ]);
        let found = t.lookup("db.example").map(|a| a.v4.len());
        assert_eq!(found, Some(2));
    }

    #[test]
    fn wildcards_cover_the_names_below_them_and_the_most_specific_wins() {
        let t = table(vec![
            service("*.example.com", &[], &["240.240.1.1"]),
            service("*.api.example.com", &[], &["240.240.1.2"]),
            service("exact.api.example.com", &[], &["240.240.1.3"]),
        ]);
        let v4 = |name: &str| t.lookup(name).map(|a| a.v4[0].to_string());
        assert_eq!(v4("www.example.com").as_deref(), Some("240.240.1.1"));
        assert_eq!(v4("a.b.example.com").as_deref(), Some("240.240.1.1"));
        assert_eq!(v4("v1.API.example.com").as_deref(), Some("240.240.1.2"));
        assert_eq!(v4("exact.api.example.com").as_deref(), Some("240.240.1.3"));
        assert_eq!(v4("example.com"), None);
        assert_eq!(v4("badexample.com"), None);
        // A multi-byte name never splits a character.
        assert_eq!(v4("é.example.co"), None);
    }
}
