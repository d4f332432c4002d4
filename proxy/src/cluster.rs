//! A cluster at run time: its endpoints' balancer, how requests pick a hash key, and the
//! connection-pool limits that turn overload into an immediate 503 instead of a queue.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use http::HeaderMap;
use trellis_xds::config as pb;

use crate::balance::{Balancer, hash_key};

pub enum HashSource {
    Header(String),
    Cookie(String),
    Query(String),
    SourceIp,
}

pub struct PoolLimits {
    pub max_connections: u32,
    pub max_pending: u32,
    pub max_http2_requests: u32,
}

pub struct Cluster {
    pub name: std::sync::Arc<str>,
    pub definition: pb::Cluster,
    pub endpoints: Vec<pb::Endpoint>,
    pub balancer: Balancer,
    pub hash: Option<HashSource>,
    pub limits: PoolLimits,
    pub protocol: pb::UpstreamProtocol,
    pub connect_timeout: std::time::Duration,
    pub idle_timeout: Option<std::time::Duration>,
    /// For pooled HTTP connections.
    pub connections: crate::upstream::ConnectionPolicy,
    /// Which endpoints get mutual TLS, and whom they must be.
    pub tls: crate::security::upstream::TlsPolicy,
    /// Outlier detection, when configured.
    pub outlier: Option<crate::outlier::Detector>,
    active: AtomicU64,
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub overflows: AtomicU64,
}

/// Holds a place in the cluster's limits until dropped.
pub struct Admitted<'a>(&'a Cluster);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request in flight on a cluster's endpoint, owned so that it can travel with the response
/// body: the pool limits and the least-request count hold until the body ends.
pub struct InFlight {
    cluster: std::sync::Arc<Cluster>,
    endpoint: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.cluster.active.fetch_sub(1, Ordering::AcqRel);
        self.cluster.balancer.release(self.endpoint);
    }
}

impl Cluster {
    /// Turns an admission and an endpoint pick into one owned guard.
    pub fn in_flight(
        self: &std::sync::Arc<Self>,
        admitted: Admitted<'_>,
        picked: crate::balance::Picked<'_>,
    ) -> InFlight {
        std::mem::forget(admitted);
        InFlight { cluster: self.clone(), endpoint: picked.detach() }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn new(
        definition: pb::Cluster,
        endpoints: Vec<pb::Endpoint>,
        balancer: Balancer,
        hash: Option<HashSource>,
        limits: PoolLimits,
        protocol: pb::UpstreamProtocol,
        connect_timeout: std::time::Duration,
        idle_timeout: Option<std::time::Duration>,
        max_requests_per_connection: u32,
        tls: crate::security::upstream::TlsPolicy,
    ) -> Cluster {
        Cluster {
            connections: crate::upstream::ConnectionPolicy {
                connect_timeout,
                idle_timeout: idle_timeout.unwrap_or(crate::upstream::DEFAULT_IDLE_TIMEOUT),
                max_requests: max_requests_per_connection,
            },
            name: definition.name.as_str().into(),
            definition,
            endpoints,
            balancer,
            hash,
            limits,
            protocol,
            connect_timeout,
            idle_timeout,
            tls,
            outlier: None,
            active: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            overflows: AtomicU64::new(0),
        }
    }

    /// The mutual TLS for the endpoint at `index` of the balancer, if it gets it.
    pub fn tls_for(&self, index: usize) -> Option<&std::sync::Arc<crate::security::upstream::ClusterTls>> {
        let has_sidecar = self.balancer.targets().get(index).is_some_and(|t| t.mesh_tls);
        self.tls.for_endpoint(has_sidecar)
    }

    pub fn name(&self) -> &str {
        &self.definition.name
    }

    /// Picks an endpoint for a request or connection: the balancer's pick, among the endpoints
    /// outlier detection has not ejected. Without a detector, only a branch more.
    #[inline]
    pub fn pick(&self, hash: Option<u64>, avoid: Option<usize>) -> Option<crate::balance::Picked<'_>> {
        match &self.outlier {
            None => self.balancer.pick(hash, avoid),
            Some(detector) => detector.pick(&self.balancer, hash, avoid),
        }
    }

    /// Tells outlier detection what an exchange with endpoint `index` came to.
    #[inline]
    pub fn observe(
        &self,
        index: usize,
        observed: crate::outlier::Observed,
    ) -> Option<crate::outlier::Verdict> {
        self.outlier.as_ref()?.report(index, observed)
    }

    /// Admits one more request (or TCP connection) within the pool limits, or says it overflows.
    /// HTTP/1 requests each hold a connection, and may wait for one up to the pending limit;
    /// HTTP/2 requests share connections, up to the concurrent-request limit.
    pub fn admit(&self, http2: bool) -> Option<Admitted<'_>> {
        let capacity = if http2 {
            u64::from(self.limits.max_http2_requests)
        } else {
            u64::from(self.limits.max_connections) + u64::from(self.limits.max_pending)
        };
        let admitted = self
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < capacity).then_some(n + 1))
            .is_ok();
        if admitted {
            Some(Admitted(self))
        } else {
            self.overflows.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// Requests and connections in flight.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Acquire)
    }

    /// The request's hash key, for hash-based balancing; `None` when the request lacks it.
    pub fn hash_of(&self, headers: &HeaderMap, query: Option<&str>, source: IpAddr) -> Option<u64> {
        match self.hash.as_ref()? {
            HashSource::Header(name) => headers.get(name.as_str()).map(|v| hash_key(v.as_bytes())),
            HashSource::Cookie(name) => headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|c| c.trim().split_once('='))
                .find(|(k, _)| k == name)
                .map(|(_, v)| hash_key(v.as_bytes())),
            HashSource::Query(name) => query?
                .split('&')
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k == name)
                .map(|(_, v)| hash_key(v.as_bytes())),
            HashSource::SourceIp => Some(hash_key(source.to_string().as_bytes())),
        }
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("name", &self.definition.name).finish()
    }
}
