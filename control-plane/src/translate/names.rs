//! What translated resources are called. Cluster names follow Istio's so that `/clusters`,
//! metrics and habits carry over; the other names only have to be unique and stable.

/// The DNS suffix of Kubernetes service names. Istio takes it from a control-plane flag, not
/// from the mesh config, and nearly every cluster keeps the default.
pub const DOMAIN_SUFFIX: &str = "cluster.local";

/// A cluster without endpoints, as Istio's: routes to destinations that do not exist go here,
/// so their share of the traffic fails (503 / closed connection) and the rest still flows.
pub const BLACK_HOLE_CLUSTER: &str = "BlackHoleCluster";

/// `outbound|<port>|<subset>|<host>`; the subset is empty for the service's own cluster.
pub fn cluster_name(port: u16, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

/// `<host>:<port>`: names both the virtual host that routes a service port and the endpoint set
/// behind it (each set carries the target port of that service port).
pub fn service_port_name(host: &str, port: u16) -> String {
    format!("{host}:{port}")
}

/// The FQDN of a Kubernetes service.
pub fn kube_hostname(name: &str, namespace: &str) -> String {
    format!("{name}.{namespace}.svc.{DOMAIN_SUFFIX}")
}

/// Istio's reading of a host written in a resource: a short name (no dot) is a Kubernetes
/// service in the resource's own namespace; anything with a dot, and wildcards, stay as written.
pub fn resolve_host(host: &str, namespace: &str) -> String {
    if host.contains('.') || host.starts_with('*') {
        host.to_ascii_lowercase()
    } else {
        kube_hostname(&host.to_ascii_lowercase(), namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_resolve_in_the_resource_namespace() {
        for (host, ns, want) in [
            ("reviews", "shop", "reviews.shop.svc.cluster.local"),
            ("Reviews", "shop", "reviews.shop.svc.cluster.local"),
            ("reviews.shop", "other", "reviews.shop"),
            ("reviews.shop.svc.cluster.local", "other", "reviews.shop.svc.cluster.local"),
            ("*.shop.svc.cluster.local", "other", "*.shop.svc.cluster.local"),
            ("*", "other", "*"),
        ] {
            assert_eq!(resolve_host(host, ns), want, "{host} in {ns}");
        }
    }

    #[test]
    fn cluster_names_follow_istio() {
        assert_eq!(cluster_name(9080, "", "r.s.svc.cluster.local"), "outbound|9080||r.s.svc.cluster.local");
        assert_eq!(
            cluster_name(9080, "v1", "r.s.svc.cluster.local"),
            "outbound|9080|v1|r.s.svc.cluster.local"
        );
        assert_eq!(service_port_name("r.s.svc.cluster.local", 9080), "r.s.svc.cluster.local:9080");
    }
}
