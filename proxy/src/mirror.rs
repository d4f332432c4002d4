//! Mirroring (a VirtualService's `mirror`, `mirrorPercentage` and `mirrors`), as Envoy shadows
//! requests: a copy of a forwarded request goes to another cluster, with `-shadow` appended to
//! its authority's host, and its answer is thrown away. Fire and forget: the copy runs in a task
//! of its own, never delays the request nor changes its answer. Bounded: bodies are copied only
//! when declared and small, and at most [`MAX_IN_FLIGHT`] copies are in flight per proxy.
//! Routes without mirrors pay one branch.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Uri, header};
use http_body_util::BodyExt;
use trellis_xds::config as pb;

use crate::Proxy;
use crate::cluster::Cluster;
use crate::config::ConfigError;
use crate::fault::Share;
use crate::upstream::Key;

/// The largest body copied to a mirror (a larger one, or one of unknown length, is not).
pub const MAX_BODY: u64 = 64 << 10;
/// Copies in flight at once, per proxy; beyond them a copy is not sent.
pub const MAX_IN_FLIGHT: usize = 1024;
/// How long a copy may take when its route has no timeout (Envoy's default route timeout).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// How a copy ended, for `trellis_mirrored_requests_total{result}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mirrored {
    /// The mirror answered (any status).
    Answered,
    /// No answer: no endpoint, the mirror cluster's limits, a failed connection, a reset, or
    /// its time ran out.
    Failed,
    /// Not sent: [`MAX_IN_FLIGHT`] copies were in flight.
    DroppedInFlight,
    /// Not sent: the body is streamed or longer than [`MAX_BODY`].
    DroppedBody,
}

impl Mirrored {
    pub fn label(self) -> &'static str {
        match self {
            Mirrored::Answered => "answered",
            Mirrored::Failed => "failed",
            Mirrored::DroppedInFlight => "dropped_in_flight",
            Mirrored::DroppedBody => "dropped_body",
        }
    }
}

/// A route's mirrors.
pub struct Mirrors {
    targets: Vec<(Arc<Cluster>, Share)>,
}

impl std::fmt::Debug for Mirrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.targets.iter().map(|(c, s)| (c.name(), s))).finish()
    }
}

impl Mirrors {
    /// `None` when the route has no mirrors; a mirror naming no cluster, or a share outside
    /// 0-100, is refused naming its field.
    pub fn compile(
        list: &[pb::Mirror],
        clusters: &std::collections::BTreeMap<String, Arc<Cluster>>,
        field: &str,
    ) -> Result<Option<Box<Mirrors>>, ConfigError> {
        if list.is_empty() {
            return Ok(None);
        }
        let mut targets = Vec::with_capacity(list.len());
        for (i, m) in list.iter().enumerate() {
            let cluster = clusters.get(&m.cluster).cloned().ok_or_else(|| ConfigError {
                field: format!("{field}[{i}].cluster"),
                message: format!("no cluster {:?}", m.cluster),
            })?;
            targets.push((cluster, Share::from_percent(m.percent, &format!("{field}[{i}].percent"))?));
        }
        Ok(Some(Box::new(Mirrors { targets })))
    }

    /// The mirrors this request goes to, each drawn on its own; empty (no allocation) when none.
    pub fn draw(&self) -> Vec<Arc<Cluster>> {
        self.targets.iter().filter(|(_, share)| share.draw()).map(|(c, _)| c.clone()).collect()
    }
}

/// Copies in flight, under [`MAX_IN_FLIGHT`].
#[derive(Debug, Default)]
pub struct InFlight(AtomicUsize);

impl InFlight {
    pub fn now(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }

    fn try_take(self: &Arc<Self>) -> Option<Slot> {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < MAX_IN_FLIGHT).then_some(n + 1))
            .ok()
            .map(|_| Slot(self.clone()))
    }
}

/// One copy's place in flight, given back when the copy ends.
struct Slot(Arc<InFlight>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `host[:port]` with `-shadow` after the host, as Envoy names a shadow's authority.
pub fn shadow_authority(authority: &str) -> String {
    let (host, port) = match authority.strip_prefix('[').and_then(|rest| rest.split_once(']')) {
        // An IPv6 literal: its colons are not a port's.
        Some((v6, after)) => (&authority[..v6.len() + 2], after),
        None => match authority.rsplit_once(':') {
            Some((host, _)) if !host.contains(':') => (host, &authority[host.len()..]),
            _ => (authority, ""),
        },
    };
    format!("{host}-shadow{port}")
}

/// Sends a copy of the request (`parts` and its whole `body`) to each of `mirrors`, each in a
/// task of its own; returns at once.
pub fn send(
    proxy: &Arc<Proxy>,
    mirrors: Vec<Arc<Cluster>>,
    parts: &http::request::Parts,
    body: &Bytes,
    timeout: Option<Duration>,
    source: IpAddr,
) {
    for cluster in mirrors {
        let Some(slot) = proxy.mirrors.try_take() else {
            proxy.metrics.mirrored(cluster.name(), Mirrored::DroppedInFlight);
            continue;
        };
        let mut request = Request::from_parts(parts.clone(), crate::forward::full(body.clone()));
        shadow(&mut request);
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let exchange = exchange(request, &cluster, &proxy, source);
            let result = match tokio::time::timeout(timeout.unwrap_or(DEFAULT_TIMEOUT), exchange).await {
                Ok(result) => result,
                Err(_) => Mirrored::Failed,
            };
            proxy.metrics.mirrored(cluster.name(), result);
            drop(slot);
        });
    }
}

/// Counts copies not sent because the request's body cannot be copied.
pub fn dropped_body(proxy: &Proxy, mirrors: &[Arc<Cluster>]) {
    for cluster in mirrors {
        proxy.metrics.mirrored(cluster.name(), Mirrored::DroppedBody);
    }
}

/// The authority, in the Host header and (HTTP/2) the URI, with `-shadow` after its host.
fn shadow<B>(request: &mut Request<B>) {
    let authority = request
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| request.headers().get(header::HOST).and_then(|h| h.to_str().ok()))
        .map(shadow_authority);
    let Some(authority) = authority else { return };
    if let Ok(value) = HeaderValue::from_str(&authority) {
        request.headers_mut().insert(header::HOST, value);
    }
    if request.uri().authority().is_some() {
        let mut parts = request.uri().clone().into_parts();
        parts.authority = authority.parse().ok();
        if let Ok(uri) = Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }
}

/// One copy: an endpoint of the mirror cluster, a place in its pool limits, the exchange, and
/// the answer read to its end (so that the connection can be used again) and dropped.
async fn exchange(
    mut request: Request<crate::upstream::Body>,
    cluster: &Arc<Cluster>,
    proxy: &Proxy,
    source: IpAddr,
) -> Mirrored {
    cluster.requests.fetch_add(1, Ordering::Relaxed);
    let hash = cluster.hash_of(request.headers(), request.uri().query(), source);
    let Some(picked) = cluster.pick(hash, None) else { return Mirrored::Failed };
    let index = picked.index();
    let Some(target) = cluster.balancer.targets().get(index).map(|t| t.addr) else {
        return Mirrored::Failed;
    };
    let protocol = crate::forward::upstream_protocol(cluster.protocol, request.version());
    let Some(admitted) = cluster.admit(protocol == crate::upstream::Protocol::Http2).await else {
        return Mirrored::Failed;
    };
    let _in_flight = cluster.in_flight(admitted, picked);
    crate::forward::prepare_uri(&mut request, protocol, target);
    let key = Key { addr: target, protocol, source: None, tls: None, pool: 0 };
    let tls = cluster.tls_for(index).map(Arc::as_ref);
    match proxy.pools.send(key, &cluster.connections, tls, Some(&cluster.pool), request).await {
        Ok(response) => {
            crate::forward::observe(
                cluster,
                index,
                crate::outlier::Observed::Status(response.status().as_u16()),
                proxy,
            );
            let mut body = response.into_body();
            while let Some(frame) = body.frame().await {
                if frame.is_err() {
                    break;
                }
            }
            Mirrored::Answered
        }
        Err(crate::upstream::UpstreamError::Overflow(_)) => Mirrored::Failed,
        Err(_) => {
            crate::forward::observe(cluster, index, crate::outlier::Observed::ConnectFailed, proxy);
            Mirrored::Failed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shadow_authority_keeps_the_port() {
        assert_eq!(shadow_authority("reviews"), "reviews-shadow");
        assert_eq!(shadow_authority("reviews:9080"), "reviews-shadow:9080");
        assert_eq!(
            shadow_authority("reviews.shop.svc.cluster.local:80"),
            "reviews.shop.svc.cluster.local-shadow:80"
        );
        assert_eq!(shadow_authority("10.0.0.1:80"), "10.0.0.1-shadow:80");
        assert_eq!(shadow_authority("[fd00::1]:80"), "[fd00::1]-shadow:80");
        assert_eq!(shadow_authority("[fd00::1]"), "[fd00::1]-shadow");
    }

    #[test]
    fn bad_mirrors_name_their_field() {
        let config = |mirrors: &str| {
            format!(
                "virtualHosts: [{{ name: a, routes: [{{ name: r, forward: {{ clusters: [{{ cluster: c }}] }}, mirrors: {mirrors} }}] }}]\nclusters: [{{ name: c, service: s }}]"
            )
        };
        let refused = |mirrors: &str| {
            let parsed = crate::config::parse(&config(mirrors)).expect("parses");
            crate::config::Snapshot::compile(parsed, 1, None).err().map(|e| (e.field, e.message))
        };
        assert_eq!(refused("[{ cluster: c, percent: 50 }]"), None);
        let (field, message) =
            refused("[{ cluster: c, percent: 50 }, { cluster: d, percent: 5 }]").expect("refused");
        assert_eq!(
            (field.as_str(), message.as_str()),
            ("virtual_hosts[0].routes[0].mirrors[1].cluster", "no cluster \"d\"")
        );
        let (field, _) = refused("[{ cluster: c, percent: 100.5 }]").expect("refused");
        assert_eq!(field, "virtual_hosts[0].routes[0].mirrors[0].percent");
    }

    #[test]
    fn copies_in_flight_are_capped() {
        let in_flight = Arc::new(InFlight::default());
        let mut slots: Vec<Slot> = (0..MAX_IN_FLIGHT).map(|_| in_flight.try_take().expect("room")).collect();
        assert!(in_flight.try_take().is_none(), "one more than the cap is not sent");
        slots.pop();
        assert!(in_flight.try_take().is_some(), "a copy that ended makes room");
        drop(slots);
        assert_eq!(in_flight.now(), 0);
    }

    #[test]
    fn the_shadow_authority_is_set_in_host_and_uri() {
        let mut h1 = Request::get("/a?b").header("host", "api:80").body(()).unwrap();
        shadow(&mut h1);
        assert_eq!(h1.headers()["host"], "api-shadow:80");
        assert_eq!(h1.uri(), "/a?b");
        let mut h2 = Request::get("http://api/a").body(()).unwrap();
        shadow(&mut h2);
        assert_eq!(h2.uri(), "http://api-shadow/a");
        assert_eq!(h2.headers()["host"], "api-shadow");
    }
}
