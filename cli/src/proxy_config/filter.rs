//! istioctl's narrowing flags, over the rows of every view: `--fqdn` (a service host, or any
//! part of one), `--port`, `--subset`, `--cluster` and `--status`. A row is kept when it passes
//! every flag that applies to its view; a flag that does not apply to a view leaves it whole.

use super::views::{ClusterRow, EndpointRow, ListenerRow, RouteRow};

#[derive(clap::Args, Clone, Debug, Default)]
pub struct Filter {
    /// Only what concerns this service host (or a part of it: `reviews` matches
    /// `reviews.shop.svc.cluster.local`): listeners, routes (by domain), clusters, endpoints
    /// (by cluster name).
    #[arg(long, value_name = "HOST")]
    pub fqdn: Option<String>,
    /// Only this service port (listeners, routes, clusters) or endpoint port (endpoints).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// Only this subset (clusters).
    #[arg(long, value_name = "NAME")]
    pub subset: Option<String>,
    /// Only the endpoints of this cluster (its full name, e.g. `outbound|9080|v1|reviews...`).
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,
    /// Only endpoints with this status.
    #[arg(long, value_enum)]
    pub status: Option<Status>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Status {
    Healthy,
    Unhealthy,
}

/// As istioctl's `--fqdn`: a part of the host, any case.
fn host_matches(wanted: &str, host: &str) -> bool {
    host.to_ascii_lowercase().contains(&wanted.to_ascii_lowercase())
}

/// The host of `host:port` (brackets of an IPv6 literal kept off).
fn without_port(domain: &str) -> &str {
    match domain.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() && !host.ends_with(':') => host,
        _ => domain,
    }
}

impl Filter {
    pub fn listener(&self, row: &ListenerRow) -> bool {
        self.fqdn.as_deref().is_none_or(|f| host_matches(f, &row.service))
            && self.port.is_none_or(|p| row.port == p.to_string())
    }

    pub fn route(&self, row: &RouteRow) -> bool {
        self.fqdn.as_deref().is_none_or(|f| row.domains.iter().any(|d| host_matches(f, without_port(d))))
            && self.port.is_none_or(|p| row.name == p.to_string())
    }

    pub fn cluster(&self, row: &ClusterRow) -> bool {
        self.fqdn.as_deref().is_none_or(|f| host_matches(f, &row.service))
            && self.port.is_none_or(|p| row.port == p.to_string())
            && self.subset.as_deref().is_none_or(|s| row.subset == s)
    }

    pub fn endpoint(&self, row: &EndpointRow) -> bool {
        let endpoint_port = row.endpoint.rsplit_once(':').map(|(_, port)| port);
        // The cluster's host: the last part of an Istio-style name, else the whole name.
        let cluster_host = row.cluster.rsplit('|').next().unwrap_or(&row.cluster);
        self.fqdn.as_deref().is_none_or(|f| host_matches(f, without_port(cluster_host)))
            && self.port.is_none_or(|p| endpoint_port == Some(p.to_string().as_str()))
            && self.cluster.as_deref().is_none_or(|c| row.cluster == c)
            && self.status.is_none_or(|s| (row.status == "HEALTHY") == (s == Status::Healthy))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(address: &str, status: &str, cluster: &str) -> EndpointRow {
        EndpointRow {
            endpoint: address.into(),
            status: status.into(),
            outlier_check: "-".into(),
            cluster: cluster.into(),
            weight: 1,
            mesh_tls: false,
            ejections: None,
            active_requests: 0,
        }
    }

    #[test]
    fn endpoints_by_host_port_cluster_and_status() {
        let rows = [
            endpoint("10.0.0.1:9080", "HEALTHY", "outbound|9080|v1|reviews.shop.svc.cluster.local"),
            endpoint("10.0.0.2:9080", "UNHEALTHY", "outbound|9080|v2|reviews.shop.svc.cluster.local"),
            endpoint("[::1]:80", "HEALTHY", "outbound|80||ratings.shop.svc.cluster.local"),
        ];
        let kept = |filter: Filter| -> Vec<&str> {
            rows.iter().filter(|r| filter.endpoint(r)).map(|r| r.endpoint.as_str()).collect()
        };
        assert_eq!(kept(Filter::default()).len(), 3);
        assert_eq!(
            kept(Filter { fqdn: Some("reviews".into()), ..Default::default() }),
            ["10.0.0.1:9080", "10.0.0.2:9080"]
        );
        assert_eq!(kept(Filter { fqdn: Some("RATINGS.shop".into()), ..Default::default() }), ["[::1]:80"]);
        assert_eq!(kept(Filter { port: Some(80), ..Default::default() }), ["[::1]:80"]);
        assert_eq!(kept(Filter { status: Some(Status::Unhealthy), ..Default::default() }), ["10.0.0.2:9080"]);
        assert_eq!(
            kept(Filter {
                cluster: Some("outbound|9080|v1|reviews.shop.svc.cluster.local".into()),
                status: Some(Status::Healthy),
                ..Default::default()
            }),
            ["10.0.0.1:9080"]
        );
        assert!(kept(Filter { fqdn: Some("nothing".into()), ..Default::default() }).is_empty());
    }

    #[test]
    fn listeners_by_service_and_port() {
        let row = |service: &str, port: &str| ListenerRow {
            address: "10.0.0.1".into(),
            port: port.into(),
            matches: "HTTP".into(),
            destination: "-".into(),
            service: service.into(),
        };
        let filter = Filter { fqdn: Some("reviews".into()), port: Some(9080), ..Default::default() };
        assert!(filter.listener(&row("reviews.shop.svc.cluster.local", "9080")));
        assert!(!filter.listener(&row("reviews.shop.svc.cluster.local", "80")));
        assert!(!filter.listener(&row("-", "9080")));
        assert_eq!(without_port("reviews:9080"), "reviews");
        assert_eq!(without_port("reviews"), "reviews");
    }
}
