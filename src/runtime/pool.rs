//! An upstream pool: its members (resolved addresses), a Pingora load balancer over them,
//! and the settings that turn a chosen backend into an `HttpPeer`.
//!
//! The load balancer and its health table live in an [`LbHandle`] that a reload hands on to
//! the next snapshot when the pool's balancing and checking settings did not change, so a
//! surviving backend keeps its health state and the balancer its position.

use super::health::{self, HealthTable};
use super::load;
use super::member::now_ms;
pub use super::member::{BackendMeta, BackendStats, InflightGuard, Member};
use super::placement::{self, Candidate, Ring};
use super::queue::Queue;
use crate::config::{BackendConfig, Balance, HealthCheckConfig, PoolConfig, UpstreamTlsSettings};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::selection::{BackendIter, BackendSelection, Consistent, Random, RoundRobin};
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::prelude::HttpPeer;
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How many candidates a selection may look at before giving up.
const MAX_SELECT_STEPS: usize = 256;

/// Why no backend was picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoBackend {
    /// None healthy (or all tried, drained, ejected, or not serving the model).
    Unavailable,
    /// Some would do, but every one is at its `max_inflight`.
    AllFull,
}

type Members = Arc<ArcSwap<Vec<Member>>>;

/// Discovery that reads the pool's current member list: a reload or a DNS refresh stores a new
/// list, then calls `LoadBalancer::update`.
struct MemberDiscovery(Members);

#[async_trait]
impl ServiceDiscovery for MemberDiscovery {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let mut set = BTreeSet::new();
        for m in self.0.load().iter() {
            set.insert(Backend::new_with_weight(&m.label, m.meta.weight)?);
        }
        Ok((set, HashMap::new()))
    }
}

/// Pingora's balancer is generic over the algorithm; this erases that.
pub enum Balancer {
    RoundRobin(LoadBalancer<RoundRobin>),
    Random(LoadBalancer<Random>),
    Consistent(LoadBalancer<Consistent>),
}

macro_rules! each {
    ($self:expr, $lb:ident => $body:expr) => {
        match $self {
            Balancer::RoundRobin($lb) => $body,
            Balancer::Random($lb) => $body,
            Balancer::Consistent($lb) => $body,
        }
    };
}

impl Balancer {
    fn new(balance: Balance, backends: Backends) -> Self {
        fn lb<S>(b: Backends) -> LoadBalancer<S>
        where
            S: BackendSelection + 'static,
            S::Iter: BackendIter,
        {
            LoadBalancer::from_backends(b)
        }
        match balance {
            Balance::Random => Balancer::Random(lb(backends)),
            Balance::ConsistentHash => Balancer::Consistent(lb(backends)),
            Balance::RoundRobin | Balance::LeastRequests | Balance::LeastLoad => {
                Balancer::RoundRobin(lb(backends))
            }
        }
    }

    pub async fn update(&self) -> pingora::Result<()> {
        each!(self, lb => lb.update().await)
    }

    pub fn backends(&self) -> &Backends {
        each!(self, lb => lb.backends())
    }

    fn select_with<F: Fn(&Backend, bool) -> bool>(&self, key: &[u8], accept: F) -> Option<Backend> {
        each!(self, lb => lb.select_with(key, MAX_SELECT_STEPS, accept))
    }
}

/// The settings that, when changed, need a fresh balancer (and fresh health state).
#[derive(Debug, Clone, PartialEq)]
struct LbKey {
    balance: Balance,
    health_check: HealthCheckConfig,
    tls: Option<UpstreamTlsSettings>,
}

/// The part of a pool that outlives reloads.
pub struct LbHandle {
    key: LbKey,
    pub balancer: Balancer,
    members: Members,
    pub health: Arc<HealthTable>,
    /// How often the health check runs; `None` when it is off.
    pub check_every: Option<Duration>,
    pub next_check: Mutex<Instant>,
    pub checking: std::sync::atomic::AtomicBool,
    /// When `least_load` reads the engines' metrics next, and whether a read is running.
    pub next_scrape: Mutex<Instant>,
    pub scraping: std::sync::atomic::AtomicBool,
    stats: Mutex<HashMap<SocketAddr, Arc<BackendStats>>>,
    /// The `affinity` ring of the current members.
    ring: ArcSwap<Ring>,
}

impl LbHandle {
    pub fn members(&self) -> Arc<Vec<Member>> {
        self.members.load_full()
    }

    /// Gives each member the counters of its address, so they survive reloads.
    fn attach_counters(&self, members: &mut [Member]) {
        let mut map = self.stats.lock();
        map.retain(|addr, c| {
            c.inflight.load(Ordering::Relaxed) > 0 || members.iter().any(|m| m.addr == *addr)
        });
        for m in members {
            m.stats = map.entry(m.addr).or_default().clone();
        }
    }

    /// Stores a new member list and rebuilds the selector. Health of kept members survives.
    /// The `affinity` ring is built only for a pool that has `affinity` (`with_ring`): it
    /// hashes 160 points per unit of weight, which for a file of 1,000 pools was 90 % of a
    /// reload.
    pub async fn set_members(&self, mut members: Vec<Member>, with_ring: bool) {
        self.attach_counters(&mut members);
        let ring = match with_ring {
            true => Ring::new(members.iter().map(|m| (m.addr, m.meta.weight))),
            false => Ring::default(),
        };
        self.ring.store(Arc::new(ring));
        self.members.store(Arc::new(members));
        if let Err(e) = self.balancer.update().await {
            log::error!("cannot update the balancer: {e}");
        }
    }
}

/// How a `consistent_hash` pool picks the key.
pub use crate::config::HashOn;

/// The `consistent_hash` key of a client address for `hash_on: client_ip`: its raw octets
/// (4 for IPv4, 16 for IPv6, an IPv4-mapped IPv6 address counting as IPv4), empty when the
/// address is unknown. HTTP routes and TCP listeners both hash this, so one client lands on
/// the same backend of a pool through either.
pub fn client_ip_key(ip: Option<IpAddr>, buf: &mut [u8; 16]) -> &[u8] {
    match ip.map(|ip| ip.to_canonical()) {
        Some(IpAddr::V4(v4)) => {
            buf[..4].copy_from_slice(&v4.octets());
            &buf[..4]
        }
        Some(IpAddr::V6(v6)) => {
            *buf = v6.octets();
            &buf[..]
        }
        None => b"",
    }
}

/// A pool as one snapshot sees it.
pub struct Pool {
    pub name: String,
    pub config: PoolConfig,
    pub lb: Arc<LbHandle>,
    pub hash_on: Option<HashOn>,
    tls: Option<UpstreamTlsSettings>,
    /// `queue:`; kept across reloads by a pool of the same name.
    pub queue: Option<Arc<Queue>>,
}

impl Pool {
    /// Builds the pool, reusing `previous`'s balancer when its settings are unchanged.
    pub async fn build(name: &str, config: &PoolConfig, previous: Option<&Pool>) -> Pool {
        let tls = config.tls.settings();
        let key = LbKey {
            balance: config.balance,
            health_check: config.health_check.clone(),
            tls: tls.clone(),
        };
        let members = resolve(&config.backends).await;
        let lb = match previous.filter(|p| p.lb.key == key) {
            Some(p) => {
                p.lb.set_members(members, config.affinity.is_some()).await;
                p.lb.clone()
            }
            // New balancing: fresh health state, but the same in-flight counters, so requests
            // still running hold their slots against the new balancer too.
            None => {
                let counters = previous.map(|p| p.lb.stats.lock().clone());
                Arc::new(new_handle(name, config, key, members, counters).await)
            }
        };
        for m in lb.members().iter() {
            let addr = &*m.label;
            let healthy = lb.balancer.backends().ready(&backend_of(m));
            crate::metrics::set_backend_healthy(name, addr, healthy);
            crate::metrics::set_backend_ejected(name, addr, m.stats.is_ejected());
            crate::metrics::CONNECT_FAILURES.with_label_values(&[name, addr]);
        }
        let queue = config
            .queue
            .map(|settings| match previous.and_then(|p| p.queue.clone()) {
                Some(q) => {
                    q.configure(settings);
                    q
                }
                None => Arc::new(Queue::new(name, settings)),
            });
        Pool {
            name: name.to_string(),
            config: config.clone(),
            lb,
            hash_on: config.hash_on.clone(),
            tls,
            queue,
        }
    }

    /// Picks a backend for `key` among those that `accept` it and serve `model`. Unhealthy,
    /// draining, ejected and full backends never qualify.
    pub fn select(
        &self,
        key: &[u8],
        model: Option<&str>,
        accept: impl Fn(&SocketAddr) -> bool,
    ) -> Result<Member, NoBackend> {
        let members = self.lb.members.load();
        let usable = |m: &Member| {
            !m.meta.drain && !m.stats.is_ejected() && m.meta.serves(model) && accept(&m.addr)
        };
        let ok = |m: &Member| usable(m) && m.has_room();
        let chosen = match (&self.config.affinity, self.config.balance) {
            (Some(affinity), _) if !key.is_empty() => {
                let candidates = self.candidates(&members, ok);
                let ring = self.lb.ring.load();
                let hash = placement::key_hash(key);
                placement::bounded(&ring, hash, affinity.max_load_factor, candidates)
            }
            (_, Balance::LeastLoad) => placement::least_loaded(self.candidates(&members, ok)),
            (_, Balance::LeastRequests) => self.least_requests(&members, ok),
            _ => {
                let find = |addr: &SocketAddr| members.iter().find(|m| m.addr == *addr);
                self.lb
                    .balancer
                    .select_with(key, |b, healthy| {
                        healthy && b.addr.as_inet().and_then(find).is_some_and(ok)
                    })
                    .and_then(|b| b.addr.as_inet().and_then(find).cloned())
            }
        };
        chosen.ok_or_else(|| {
            if members.iter().any(|m| usable(m) && self.is_healthy(m)) {
                NoBackend::AllFull
            } else {
                NoBackend::Unavailable
            }
        })
    }

    /// Like [`Pool::select`], and takes an in-flight slot of the chosen backend in the same
    /// step, so concurrent requests can never push a backend past its `max_inflight`.
    pub fn select_reserved(
        &self,
        key: &[u8],
        model: Option<&str>,
        accept: impl Fn(&SocketAddr) -> bool,
    ) -> Result<(Member, InflightGuard), NoBackend> {
        let mut full: Vec<SocketAddr> = Vec::new();
        loop {
            let member = self.select(key, model, |a| !full.contains(a) && accept(a))?;
            if let Some(slot) = InflightGuard::reserve(&member, self.queue.as_ref()) {
                return Ok((member, slot));
            }
            // Filled up between the check and the reservation: try another one.
            full.push(member.addr);
            if full.len() >= 16 {
                return Err(NoBackend::AllFull);
            }
        }
    }

    /// The healthy members `ok` accepts, with the load placement compares: the engine's own
    /// (`least_load`), else requests in flight per unit of weight.
    fn candidates(
        &self,
        members: &[Member],
        ok: impl Fn(&Member) -> bool,
    ) -> Vec<Candidate<Member>> {
        let interval = self.config.load.as_ref().map(|l| l.interval.get());
        members
            .iter()
            .filter(|m| ok(m) && self.is_healthy(m))
            .map(|m| Candidate {
                addr: m.addr,
                load: match interval {
                    Some(every) => load::score(m, every),
                    None => m.stats.inflight.load(Ordering::Relaxed) as f64 / m.meta.weight as f64,
                },
                item: m.clone(),
            })
            .collect()
    }

    /// Power of two choices: of two random healthy candidates, the one with fewer requests
    /// in flight per unit of weight.
    fn least_requests(&self, members: &[Member], ok: impl Fn(&Member) -> bool) -> Option<Member> {
        let candidates: Vec<&Member> = members
            .iter()
            .filter(|m| ok(m) && self.is_healthy(m))
            .collect();
        let load =
            |m: &Member| m.stats.inflight.load(Ordering::Relaxed) as f64 / m.meta.weight as f64;
        match candidates.len() {
            0 => None,
            1 => Some(candidates[0].clone()),
            n => {
                let a = fastrand::usize(..n);
                let b = (a + 1 + fastrand::usize(..n - 1)) % n;
                let pick = if load(candidates[b]) < load(candidates[a]) {
                    b
                } else {
                    a
                };
                Some(candidates[pick].clone())
            }
        }
    }

    /// Passive health: counts an answer (or a connect failure) from `member`.
    pub fn record_outcome(&self, member: &Member, failed: bool) {
        let Some(ph) = &self.config.passive_health else {
            return;
        };
        let stats = &member.stats;
        if !failed {
            stats.failures.store(0, Ordering::Relaxed);
            return;
        }
        let n = stats.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= ph.consecutive_failures && !stats.is_ejected() {
            let eject_for = ph.eject_for.get();
            let until = now_ms() + eject_for.as_millis() as u64;
            stats.ejected_until.store(until, Ordering::Relaxed);
            stats.failures.store(0, Ordering::Relaxed);
            let addr = member.addr.to_string();
            crate::metrics::set_backend_ejected(&self.name, &addr, true);
            log::warn!(
                "pool {}: backend {addr} ejected for {eject_for:?} after {n} failures in a row",
                self.name,
            );
            self.end_ejection_later(stats.clone(), addr, until, eject_for);
        }
    }

    /// Sets the `backend_ejected` gauge back to 0 when the ejection that ends at `until` is
    /// over. Nothing else would: an ejected backend gets no traffic to notice the time is up.
    fn end_ejection_later(&self, stats: Arc<BackendStats>, addr: String, until: u64, d: Duration) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Not on a runtime (never the case when serving): the next snapshot resets it.
            return;
        };
        let pool = self.name.clone();
        runtime.spawn(async move {
            tokio::time::sleep(d).await;
            // Wait out any rounding of the millisecond clock, bounded.
            for _ in 0..100 {
                if !stats.is_ejected() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // Only the ejection this task was started for: a later one has its own task.
            if stats.ejected_until.load(Ordering::Relaxed) == until && !stats.is_ejected() {
                crate::metrics::set_backend_ejected(&pool, &addr, false);
                log::info!("pool {pool}: backend {addr} is back from its ejection");
            }
        });
    }

    /// The models this pool's usable backends serve (configured names only).
    pub fn models(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .lb
            .members()
            .iter()
            .filter(|m| !m.meta.drain && self.is_healthy(m) && !m.stats.is_ejected())
            .flat_map(|m| m.meta.models.iter().cloned())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    pub fn is_healthy(&self, m: &Member) -> bool {
        self.lb.balancer.backends().ready(&backend_of(m))
    }

    /// The Pingora peer for `member`, with this pool's timeouts and TLS settings.
    pub fn peer(&self, member: &Member, read_timeout: Duration) -> HttpPeer {
        let sni = self.tls.as_ref().map(|t| {
            t.sni
                .clone()
                .unwrap_or_else(|| member.meta.address.host().to_string())
        });
        let mut peer = HttpPeer::new(member.addr, sni.is_some(), sni.unwrap_or_default());
        let t = &self.config.timeouts;
        peer.options.connection_timeout = Some(t.connect.get());
        peer.options.total_connection_timeout = Some(t.connect.get() * 2);
        peer.options.read_timeout = Some(read_timeout);
        peer.options.write_timeout = Some(t.write.get());
        peer.options.idle_timeout = Some(t.idle.get());
        if let Some(tls) = &self.tls {
            peer.options.verify_cert = tls.verify;
            peer.options.verify_hostname = tls.verify;
        }
        peer
    }
}

fn backend_of(m: &Member) -> Backend {
    Backend {
        addr: pingora::protocols::l4::socket::SocketAddr::Inet(m.addr),
        weight: m.meta.weight,
        ext: Default::default(),
    }
}

async fn new_handle(
    name: &str,
    config: &PoolConfig,
    key: LbKey,
    members: Vec<Member>,
    counters: Option<HashMap<SocketAddr, Arc<BackendStats>>>,
) -> LbHandle {
    let mut handle = build_handle(name, config, key).await;
    if let Some(c) = counters {
        handle.stats = Mutex::new(c);
    }
    handle.set_members(members, config.affinity.is_some()).await;
    handle
}

async fn build_handle(name: &str, config: &PoolConfig, key: LbKey) -> LbHandle {
    let table = Arc::new(HealthTable::default());
    let default_host = config
        .backends
        .first()
        .map(|b| b.address.host().to_string())
        .unwrap_or_else(|| "localhost".into());
    let members: Members = Arc::new(ArcSwap::from_pointee(Vec::new()));
    let mut backends = Backends::new(Box::new(MemberDiscovery(members.clone())));
    let check = health::build(
        name,
        &config.health_check,
        key.tls.as_ref(),
        &default_host,
        table.clone(),
    );
    let check_every = check.as_ref().map(|_| config.health_check.interval.get());
    if let Some(c) = check {
        backends.set_health_check(c);
    }
    LbHandle {
        key,
        balancer: Balancer::new(config.balance, backends),
        members,
        health: table,
        check_every,
        next_check: Mutex::new(Instant::now()),
        checking: Default::default(),
        next_scrape: Mutex::new(Instant::now()),
        scraping: Default::default(),
        stats: Default::default(),
        ring: Default::default(),
    }
}

/// Resolves every backend address; a host name becomes one member per address it has.
pub async fn resolve(backends: &[BackendConfig]) -> Vec<Member> {
    let mut out: Vec<Member> = Vec::with_capacity(backends.len());
    for b in backends {
        let meta = Arc::new(BackendMeta {
            address: b.address.clone(),
            weight: b.weight.max(1),
            drain: b.drain,
            models: b.models.clone(),
            authorization: b.api_key.as_ref().map(|k| k.header().clone()),
            max_inflight: b.max_inflight,
        });
        let addrs: Vec<SocketAddr> = match b.address.socket_addr() {
            Some(a) => vec![a],
            None => match tokio::net::lookup_host(b.address.as_str()).await {
                Ok(it) => it.collect(),
                Err(e) => {
                    log::warn!("cannot resolve backend {}: {e}", b.address);
                    Vec::new()
                }
            },
        };
        for addr in addrs {
            if !out.iter().any(|m| m.addr == addr) {
                out.push(Member {
                    addr,
                    label: addr.to_string().into(),
                    meta: meta.clone(),
                    stats: Default::default(),
                });
            }
        }
    }
    out
}

/// Whether the pool names any backend by host name (and so needs DNS refreshes).
pub fn has_hostnames(config: &PoolConfig) -> bool {
    config
        .backends
        .iter()
        .any(|b| b.address.socket_addr().is_none())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ip_key_is_the_raw_octets() {
        let mut buf = [0u8; 16];
        let v4: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(client_ip_key(Some(v4), &mut buf), &[10, 1, 2, 3]);
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(client_ip_key(Some(mapped), &mut buf), &[10, 1, 2, 3]);
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let want = match v6 {
            IpAddr::V6(a) => a.octets(),
            IpAddr::V4(_) => unreachable!(),
        };
        assert_eq!(client_ip_key(Some(v6), &mut buf), &want);
        assert!(client_ip_key(None, &mut buf).is_empty());
    }
}
