//! `trellis-proxy`: the sidecar data plane. A connection's path: `listen` accepts it on the
//! outbound (15001) or inbound (15006) port and reads where it was headed; `connection` decides
//! between HTTP and opaque TCP (`detect`); HTTP is served by `serve` and each request routed
//! and forwarded by `forward` (routes from `route`, clusters from `cluster`, endpoints picked by
//! `balance`, connections from `upstream`); TCP is relayed by `tcp`. `config` compiles the
//! configuration that all of this reads, `watch` reloads it, `admin` and `metrics` show it.
//! `app_health` serves the status port, where the kubelet's probes of the app arrive.

pub mod access_log;
pub mod admin;
pub mod app_health;
pub mod balance;
pub mod body;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod detect;
pub mod dns;
pub mod drain;
pub mod dual_stack;
pub mod fault;
pub mod forward;
pub mod gateway;
pub mod header_timer;
pub mod headers;
pub mod listen;
pub mod locality;
pub mod metrics;
pub mod metrics_overrides;
pub mod mirror;
pub mod outlier;
pub mod peers;
pub mod ratelimit;
pub mod retry_budget;
pub mod route;
pub mod security;
pub mod serve;
pub mod tcp;
pub mod tproxy;
pub mod trace;
pub mod upstream;
pub mod watch;
pub mod xds;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use arc_swap::ArcSwap;

use crate::config::Snapshot;
use crate::metrics::Metrics;
use crate::upstream::Pools;

/// Maps on the request path: foldhash instead of SipHash (keys are ours, not an attacker's
/// choosing alone, and the seed is random per process).
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Randomness for request ids, weighted splits and retry jitter, which need it fast and
/// unpredictable enough, not secret: a generator per thread, seeded from the OS's.
pub(crate) fn with_fast_rng<T>(f: impl FnOnce(&mut rand::rngs::SmallRng) -> T) -> T {
    use rand::{SeedableRng, rngs::SmallRng};
    thread_local! {
        static RNG: std::cell::RefCell<SmallRng> = std::cell::RefCell::new(SmallRng::from_rng(&mut rand::rng()));
    }
    RNG.with_borrow_mut(f)
}

/// `Box::pin(make())` in a frame of its own. Written in place as `Box::pin(f(..))`, the value is
/// first built in the caller's stack frame: every poll of a hot path then reserves, and probes
/// page by page, stack for it (Pools::send's frame was 13 KiB), and a request's stack spans
/// more pages. Keeps the type, for a value used through it (a connection shut down gracefully).
#[inline(never)]
pub(crate) fn pin_out_of_line<T>(make: impl FnOnce() -> T) -> std::pin::Pin<Box<T>> {
    Box::pin(make())
}

/// A future for a branch taken rarely (a new connection, an upgrade, a DNS lookup, an
/// on-demand fetch), built out of line (`pin_out_of_line`) and polled through the box's vtable,
/// so that its poll is not inlined into the caller's either.
pub(crate) fn box_out_of_line<'a, F: std::future::Future + Send + 'a>(
    make: impl FnOnce() -> F,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = F::Output> + Send + 'a>> {
    pin_out_of_line(make)
}

/// Changes the log filter at run time (the admin `/logging` endpoint).
pub type LogControl = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// What every connection shares: the current configuration, upstream pools, metrics and the
/// lifecycle switches.
pub struct Proxy {
    pub config: ArcSwap<Snapshot>,
    pub pools: Pools,
    /// Shared with the response bodies in flight, which record their request when they end.
    pub metrics: Arc<Metrics>,
    /// Set once a configuration is loaded.
    pub ready: AtomicBool,
    /// Flips when the proxy starts draining.
    pub drain: drain::Drain,
    pub connections: AtomicUsize,
    pub log_control: Option<LogControl>,
    /// Every port the proxy listens on: never a destination (a loop, or a way in to the admin).
    pub own_ports: std::sync::RwLock<Vec<u16>>,
    /// Inbound connections without a redirect are served, routed by their authority's port
    /// (for running without iptables: the demo, tests, benchmarks). Off in a pod: there, such a
    /// connection is someone dialling the inbound port directly.
    pub explicit_inbound: bool,
    /// Fetches resources on demand when config comes from a control plane (set once the xDS
    /// client starts).
    pub on_demand: std::sync::OnceLock<xds::OnDemand>,
    /// Mirrored copies in flight.
    pub mirrors: Arc<mirror::InFlight>,
    /// Whether the configuration in force writes access logs (see [`access_log::Switch`]).
    pub access_log: access_log::Switch,
}

impl Proxy {
    pub fn new(
        snapshot: Snapshot,
        metrics: Metrics,
        log_control: Option<LogControl>,
        explicit_inbound: bool,
    ) -> Arc<Proxy> {
        let access_log = access_log::Switch::default();
        access_log.follow(&snapshot, &metrics);
        metrics.follow_overrides(&snapshot.source);
        Arc::new(Proxy {
            config: ArcSwap::from_pointee(snapshot),
            pools: Pools::default(),
            metrics: Arc::new(metrics),
            ready: AtomicBool::new(false),
            drain: drain::Drain::default(),
            connections: AtomicUsize::new(0),
            log_control,
            own_ports: std::sync::RwLock::default(),
            explicit_inbound,
            on_demand: std::sync::OnceLock::new(),
            mirrors: Arc::default(),
            access_log,
        })
    }

    /// Whether `addr` is one of the proxy's own listeners (on any local address).
    pub fn is_own(&self, addr: std::net::SocketAddr, local: std::net::IpAddr) -> bool {
        let ip = addr.ip();
        let here = ip.is_loopback() || ip.is_unspecified() || ip == local;
        here && self.own_ports.read().is_ok_and(|ports| ports.contains(&addr.port()))
    }

    /// Ready: a first configuration is loaded, a certificate is held when the proxy has a mesh
    /// identity, and it is not draining.
    pub fn is_ready(&self) -> bool {
        let certified = self.pools.mesh_tls().is_none_or(|m| m.current().is_some());
        self.ready.load(Ordering::Acquire) && certified && !self.is_draining()
    }

    pub fn is_draining(&self) -> bool {
        self.drain.is_draining()
    }

    pub fn start_drain(&self) {
        self.drain.start();
        self.ready.store(false, Ordering::Release);
    }
}

/// Which capture port a connection came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Outbound,
    Inbound,
}

/// Where the proxy listens. Port 0 picks a free port (tests).
#[derive(Debug)]
pub struct Options {
    pub outbound: Vec<std::net::SocketAddr>,
    pub inbound: Vec<std::net::SocketAddr>,
    pub admin: Vec<std::net::SocketAddr>,
    pub readiness: Vec<std::net::SocketAddr>,
    pub stats: Vec<std::net::SocketAddr>,
    pub config_file: Option<std::path::PathBuf>,
    /// Config from a control plane instead of a file.
    pub xds: Option<xds::XdsOptions>,
    /// See [`Proxy::explicit_inbound`].
    pub explicit_inbound: bool,
    /// The mesh identity: mutual TLS on both sides, with a certificate kept current by the
    /// renewal loop when one is given.
    pub identity: Option<Identity>,
}

/// The proxy's mesh identity.
pub struct Identity {
    pub tls: Arc<trellis_identity::tls::MeshTls>,
    pub renewal: Option<trellis_identity::manager::Renewal>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("tls", &self.tls).finish_non_exhaustive()
    }
}

/// A started proxy and the addresses it actually bound.
pub struct Running {
    pub proxy: Arc<Proxy>,
    pub outbound: Vec<std::net::SocketAddr>,
    pub inbound: Vec<std::net::SocketAddr>,
    pub admin: Vec<std::net::SocketAddr>,
    pub readiness: Vec<std::net::SocketAddr>,
    pub stats: Vec<std::net::SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Config(#[from] watch::LoadError),
}

/// Loads the configuration, binds every listener and starts serving (on the current tokio
/// runtime).
pub fn start(
    options: Options,
    metrics: Metrics,
    log_control: Option<LogControl>,
) -> Result<Running, StartError> {
    let (snapshot, loaded) = match &options.config_file {
        Some(path) => {
            let (snapshot, bytes) = watch::load(path, 1, None)?;
            (snapshot, Some(bytes))
        }
        None => (Snapshot::empty(), None),
    };
    let proxy = Proxy::new(snapshot, metrics, log_control, options.explicit_inbound);
    let renewal = match options.identity {
        Some(identity) => {
            proxy.pools.set_mesh_tls(identity.tls.clone());
            proxy.metrics.set_mesh_tls(identity.tls.clone());
            identity.renewal.map(|r| (identity.tls, r))
        }
        None => None,
    };
    let bind_all = |addrs: &[std::net::SocketAddr]| -> Result<Vec<tokio::net::TcpListener>, StartError> {
        addrs.iter().map(|a| bind(*a).map_err(|source| StartError::Bind { addr: *a, source })).collect()
    };
    let (outbound, inbound) = (bind_all(&options.outbound)?, bind_all(&options.inbound)?);
    let (admin, readiness, stats) =
        (bind_all(&options.admin)?, bind_all(&options.readiness)?, bind_all(&options.stats)?);
    let local =
        |ls: &[tokio::net::TcpListener]| ls.iter().filter_map(|l| l.local_addr().ok()).collect::<Vec<_>>();
    if let Ok(mut ports) = proxy.own_ports.write() {
        let all = [&outbound, &inbound, &admin, &readiness, &stats];
        *ports = all
            .iter()
            .flat_map(|ls| ls.iter())
            .filter_map(|l| l.local_addr().ok())
            .map(|a| a.port())
            .collect();
    }
    let running = Running {
        proxy: proxy.clone(),
        outbound: local(&outbound),
        inbound: local(&inbound),
        admin: local(&admin),
        readiness: local(&readiness),
        stats: local(&stats),
    };
    for l in outbound {
        tokio::spawn(listen::accept_loop(l, Side::Outbound, proxy.clone()));
    }
    for l in inbound {
        tokio::spawn(listen::accept_loop(l, Side::Inbound, proxy.clone()));
    }
    for (ls, which) in [
        (admin, admin::Endpoints::Admin),
        (readiness, admin::Endpoints::Readiness),
        (stats, admin::Endpoints::Stats),
    ] {
        for l in ls {
            tokio::spawn(admin::serve(l, which, proxy.clone()));
        }
    }
    tokio::spawn(reap_pools(proxy.clone()));
    if let Some((tls, renewal)) = renewal {
        tokio::spawn(trellis_identity::manager::keep_certified(tls, renewal));
    }
    if let (Some(path), Some(bytes)) = (options.config_file, loaded) {
        tokio::spawn(watch::watch(path, bytes, proxy.clone()));
    }
    match options.xds {
        // Ready once the first complete config has arrived.
        Some(xds) => xds::start(proxy.clone(), xds),
        None => proxy.ready.store(true, Ordering::Release),
    }
    Ok(running)
}

/// Every 30 seconds, closes idle upstream connections past their time.
async fn reap_pools(proxy: Arc<Proxy>) {
    let mut drained = std::pin::pin!(proxy.drain.wait());
    loop {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(30)) => proxy.pools.reap(upstream::DEFAULT_IDLE_TIMEOUT),
            _ = &mut drained => return,
        }
    }
}

/// A listener; IPv6 ones are IPv6-only so that `0.0.0.0` and `[::]` can both be bound.
pub(crate) fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket =
        if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    if addr.is_ipv6() {
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::Ipv6V6Only, &true)
            .map_err(std::io::Error::from)?;
    }
    socket.bind(addr)?;
    socket.listen(4096)
}
