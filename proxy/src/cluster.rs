//! A cluster at run time: its endpoints' balancer, how requests pick a hash key, outlier
//! detection, and the connection-pool limits with Envoy's meaning: at most `max_connections`
//! connections to the cluster; HTTP/1.1 requests (one per connection at a time) beyond them wait
//! in a queue of at most `max_pending`, and beyond that get 503 (`UO`) at once; at most
//! `max_requests` requests in flight (Istio's `http2MaxRequests`, Envoy's `max_requests`).

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
    pub max_requests: u32,
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
    /// Locality-aware balancing, when it changes anything for this proxy.
    pub locality: Option<crate::locality::LocalityLb>,
    /// The retry budget, when configured; shared with the cluster's next versions while its
    /// settings stay the same.
    pub retry_budget: Option<std::sync::Arc<crate::retry_budget::RetryBudget>>,
    /// `maxRetries`: retries in flight at once.
    pub retry_limit: crate::retry_budget::RetryLimit,
    /// The cluster's connections and their cap.
    pub pool: std::sync::Arc<crate::upstream::ClusterConnections>,
    /// HTTP/1.1 requests in flight, one per connection: at most `max_connections`.
    http1_slots: AtomicU64,
    /// An HTTP/1.1 slot was given back while requests were waiting.
    slot_freed: tokio::sync::Notify,
    /// HTTP/1.1 requests waiting for a slot.
    pending: AtomicU64,
    /// Requests (and TCP connections) in flight.
    active: AtomicU64,
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub overflows: AtomicU64,
}

/// Holds a place in the cluster's limits until dropped.
pub struct Admitted<'a> {
    cluster: &'a Cluster,
    /// HTTP/1.1: the request holds one of the cluster's connection slots.
    slot: bool,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.cluster.active.fetch_sub(1, Ordering::AcqRel);
        if self.slot {
            self.cluster.release_slot();
        }
    }
}

/// A request in flight on a cluster's endpoint, owned so that it can travel with the response
/// body: the pool limits and the least-request count hold until the body ends.
pub struct InFlight {
    cluster: std::sync::Arc<Cluster>,
    endpoint: usize,
    slot: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.cluster.active.fetch_sub(1, Ordering::AcqRel);
        self.cluster.balancer.release(self.endpoint);
        if self.slot {
            self.cluster.release_slot();
        }
    }
}

impl Cluster {
    /// Turns an admission and an endpoint pick into one owned guard.
    pub fn in_flight(
        self: &std::sync::Arc<Self>,
        admitted: Admitted<'_>,
        picked: crate::balance::Picked<'_>,
    ) -> InFlight {
        let slot = admitted.slot;
        std::mem::forget(admitted);
        InFlight { cluster: self.clone(), endpoint: picked.detach(), slot }
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
        pool: std::sync::Arc<crate::upstream::ClusterConnections>,
    ) -> Cluster {
        pool.set_max(limits.max_connections);
        Cluster {
            http1_slots: AtomicU64::new(0),
            slot_freed: tokio::sync::Notify::new(),
            pending: AtomicU64::new(0),
            pool,
            connections: crate::upstream::ConnectionPolicy {
                connect_timeout,
                idle_timeout: idle_timeout.unwrap_or(crate::upstream::DEFAULT_IDLE_TIMEOUT),
                max_requests: max_requests_per_connection,
                keepalive: None,
                max_duration: None,
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
            locality: None,
            retry_budget: None,
            retry_limit: crate::retry_budget::RetryLimit::default(),
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
    /// outlier detection has not ejected, in the locality locality-aware balancing chooses.
    /// Without a detector or locality, only a branch or two more.
    #[inline]
    pub fn pick(&self, hash: Option<u64>, avoid: Option<usize>) -> Option<crate::balance::Picked<'_>> {
        match (&self.locality, &self.outlier) {
            (None, None) => self.balancer.pick(hash, avoid),
            (None, Some(detector)) => detector.pick(&self.balancer, hash, avoid),
            (Some(locality), detector) => locality.pick(&self.balancer, detector.as_ref(), hash, avoid),
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

    /// A request on its way to the cluster: its deposit into the retry budget. Without a
    /// budget, only a branch.
    #[inline]
    pub fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(budget) = &self.retry_budget {
            budget.deposit(std::time::Instant::now());
        }
    }

    /// Whether one more retry may be made: a place under `maxRetries` (held by the permit until
    /// the retry's answer), then a token from the retry budget.
    pub fn admit_retry(&self) -> Result<crate::retry_budget::RetryPermit<'_>, crate::retry_budget::Refused> {
        use crate::retry_budget::Refused;
        let permit = self.retry_limit.try_acquire().ok_or(Refused::MaxRetries)?;
        match &self.retry_budget {
            Some(budget) if !budget.try_withdraw(std::time::Instant::now()) => Err(Refused::Budget),
            _ => Ok(permit),
        }
    }

    /// Admits one more request within the pool limits, or says it overflows (counted). Every
    /// request counts against `max_requests`; an HTTP/1.1 request also takes one of the
    /// `max_connections` slots (it holds a connection until its response ends), waiting for
    /// one in a queue of at most `max_pending`. HTTP/2 requests share connections.
    pub async fn admit(&self, http2: bool) -> Option<Admitted<'_>> {
        let max_requests = u64::from(self.limits.max_requests);
        let counted = self
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max_requests).then_some(n + 1))
            .is_ok();
        if !counted {
            self.overflows.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let mut admitted = Admitted { cluster: self, slot: false };
        if http2 {
            return Some(admitted);
        }
        if !self.try_slot() && !crate::box_out_of_line(|| self.wait_for_slot()).await {
            return None;
        }
        admitted.slot = true;
        Some(admitted)
    }

    /// One of the `max_connections` HTTP/1.1 slots, if one is free: an atomic update, no lock.
    fn try_slot(&self) -> bool {
        let max = u64::from(self.limits.max_connections);
        self.http1_slots
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max).then_some(n + 1))
            .is_ok()
    }

    /// Gives a slot back and wakes a waiting request. SeqCst on both sides (here, and the
    /// waiter's queueing and look): otherwise each could miss the other's write.
    fn release_slot(&self) {
        self.http1_slots.fetch_sub(1, Ordering::SeqCst);
        if self.pending.load(Ordering::SeqCst) > 0 {
            self.slot_freed.notify_one();
        }
    }

    /// Waits in the cluster's queue for an HTTP/1.1 slot, unless the queue is full.
    async fn wait_for_slot(&self) -> bool {
        let max_pending = u64::from(self.limits.max_pending);
        let queued = self
            .pending
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max_pending).then_some(n + 1))
            .is_ok();
        if !queued {
            self.overflows.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        // Leaves the queue however the wait ends (a slot, or the request dropped by a timeout).
        struct Queued<'a>(&'a AtomicU64);
        impl Drop for Queued<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _queued = Queued(&self.pending);
        loop {
            // Registered before looking, so that a slot given back meanwhile wakes it.
            let freed = self.slot_freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.try_slot() {
                return true;
            }
            freed.await;
        }
    }

    /// Requests in flight.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Acquire)
    }

    /// HTTP/1.1 requests waiting for a connection.
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Acquire)
    }

    /// A place for one more TCP connection (or upgraded HTTP connection) under the cluster's
    /// cap, or `None` (counted as an overflow).
    pub fn open_connection(&self) -> Option<crate::upstream::OpenConnection> {
        let opened = self.pool.try_open();
        if opened.is_none() {
            self.overflows.fetch_add(1, Ordering::Relaxed);
        }
        opened
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
