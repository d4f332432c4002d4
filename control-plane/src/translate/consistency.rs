//! The promise translation keeps: its output is whole. Every name is unique, and every virtual
//! host a service port names, every cluster a route or a port names and every endpoint set a
//! cluster names is in the same configuration — the proxy refuses a configuration otherwise.

use std::collections::BTreeSet;
use std::net::IpAddr;

use trellis_xds::config as pb;

/// The first broken promise of `config`, naming where it is.
pub fn check_consistent(config: &pb::ProxyConfig) -> Result<(), String> {
    let endpoint_sets = unique(config.endpoints.iter().map(|e| e.service.as_str()), "endpoints")?;
    let clusters = unique(config.clusters.iter().map(|c| c.name.as_str()), "clusters")?;
    let virtual_hosts = unique(config.virtual_hosts.iter().map(|v| v.name.as_str()), "virtual hosts")?;
    unique(config.services.iter().map(|s| s.name.as_str()), "services")?;

    for set in &config.endpoints {
        for e in &set.endpoints {
            e.address
                .parse::<IpAddr>()
                .map_err(|_| format!("endpoints {:?}: bad address {:?}", set.service, e.address))?;
            if !(1..=65535).contains(&e.port) {
                return Err(format!("endpoints {:?}: {} has port {}", set.service, e.address, e.port));
            }
        }
    }
    for c in &config.clusters {
        if !endpoint_sets.contains(c.service.as_str()) {
            return Err(format!("cluster {:?}: no endpoints {:?}", c.name, c.service));
        }
    }
    for vh in &config.virtual_hosts {
        for r in &vh.routes {
            let at = || format!("virtual host {:?}, route {:?}", vh.name, r.name);
            match &r.action {
                None => return Err(format!("{}: no action", at())),
                Some(pb::route::Action::Forward(f)) => {
                    if f.clusters.is_empty()
                        || (f.clusters.len() > 1 && f.clusters.iter().all(|c| c.weight == 0))
                    {
                        return Err(format!("{}: no cluster to forward to", at()));
                    }
                    if let Some(missing) = f.clusters.iter().find(|c| !clusters.contains(c.cluster.as_str()))
                    {
                        return Err(format!("{}: no cluster {:?}", at(), missing.cluster));
                    }
                }
                Some(_) => {}
            }
            if let Some(missing) = r.mirrors.iter().find(|m| !clusters.contains(m.cluster.as_str())) {
                return Err(format!("{}: no mirror cluster {:?}", at(), missing.cluster));
            }
        }
    }
    for s in &config.services {
        for a in &s.addresses {
            a.parse::<IpAddr>().map_err(|_| format!("service {:?}: bad address {a:?}", s.name))?;
        }
        unique(s.ports.iter().map(|p| p.port), &format!("ports of service {:?}", s.name))?;
        for p in &s.ports {
            if !(1..=65535).contains(&p.port) {
                return Err(format!("service {:?}: bad port {}", s.name, p.port));
            }
            if !p.virtual_host.is_empty() && !virtual_hosts.contains(p.virtual_host.as_str()) {
                return Err(format!(
                    "service {:?} port {}: no virtual host {:?}",
                    s.name, p.port, p.virtual_host
                ));
            }
            if !p.tcp_cluster.is_empty() && !clusters.contains(p.tcp_cluster.as_str()) {
                return Err(format!("service {:?} port {}: no cluster {:?}", s.name, p.port, p.tcp_cluster));
            }
            if let Some(missing) = p.tcp_clusters.iter().find(|c| !clusters.contains(c.cluster.as_str())) {
                return Err(format!(
                    "service {:?} port {}: no cluster {:?}",
                    s.name, p.port, missing.cluster
                ));
            }
            if p.tcp_clusters.len() > 1 && p.tcp_clusters.iter().all(|c| c.weight == 0) {
                return Err(format!("service {:?} port {}: no TCP cluster to go to", s.name, p.port));
            }
        }
    }
    Ok(())
}

fn unique<T: Ord + std::fmt::Debug>(
    items: impl Iterator<Item = T>,
    what: &str,
) -> Result<BTreeSet<T>, String> {
    let mut seen = BTreeSet::new();
    for item in items {
        if let Some(dup) = seen.replace(item) {
            return Err(format!("{what}: {dup:?} is defined twice"));
        }
    }
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole() -> pb::ProxyConfig {
        pb::ProxyConfig {
            services: vec![pb::Service {
                name: "a".into(),
                addresses: vec!["10.0.0.1".into()],
                ports: vec![pb::ServicePort {
                    port: 80,
                    virtual_host: "a:80".into(),
                    tcp_cluster: "c".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            virtual_hosts: vec![pb::VirtualHost {
                name: "a:80".into(),
                routes: vec![pb::Route {
                    action: Some(pb::route::Action::Forward(pb::Forward {
                        clusters: vec![pb::WeightedCluster { cluster: "c".into(), weight: 0 }],
                    })),
                    ..Default::default()
                }],
            }],
            clusters: vec![pb::Cluster { name: "c".into(), service: "e".into(), ..Default::default() }],
            endpoints: vec![pb::ServiceEndpoints {
                service: "e".into(),
                endpoints: vec![pb::Endpoint {
                    address: "10.1.0.1".into(),
                    port: 8080,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn broken_references_and_duplicates_are_found() {
        assert_eq!(check_consistent(&whole()), Ok(()));
        type Break = fn(&mut pb::ProxyConfig);
        let breaks: [(Break, &str); 10] = [
            (|c| c.services[0].ports[0].virtual_host = "b:80".into(), "no virtual host"),
            (|c| c.services[0].ports[0].tcp_cluster = "d".into(), "no cluster"),
            (|c| c.clusters[0].service = "f".into(), "no endpoints"),
            (
                |c| {
                    c.services[0].ports[0].tcp_clusters = vec![
                        pb::WeightedCluster { cluster: "c".into(), weight: 1 },
                        pb::WeightedCluster { cluster: "z".into(), weight: 1 },
                    ]
                },
                "no cluster \"z\"",
            ),
            (
                |c| {
                    let none = pb::WeightedCluster { cluster: "c".into(), weight: 0 };
                    c.services[0].ports[0].tcp_clusters = vec![none.clone(), none];
                },
                "no TCP cluster to go to",
            ),
            (|c| c.endpoints[0].endpoints[0].port = 0, "has port 0"),
            (|c| c.endpoints[0].endpoints[0].address = "host".into(), "bad address"),
            (
                |c| {
                    let again = c.clusters[0].clone();
                    c.clusters.push(again);
                },
                "defined twice",
            ),
            (
                |c| {
                    if let Some(pb::route::Action::Forward(f)) = &mut c.virtual_hosts[0].routes[0].action {
                        f.clusters[0].cluster = "x".into();
                    }
                },
                "no cluster \"x\"",
            ),
            (
                |c| {
                    c.virtual_hosts[0].routes[0]
                        .mirrors
                        .push(pb::Mirror { cluster: "m".into(), percent: 100.0 })
                },
                "no mirror cluster \"m\"",
            ),
        ];
        for (change, words) in breaks {
            let mut config = whole();
            change(&mut config);
            let err = check_consistent(&config).unwrap_err();
            assert!(err.contains(words), "{err}");
        }
    }
}
