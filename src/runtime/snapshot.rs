//! The whole runtime state compiled from one config version. Requests hold an `Arc` of the
//! snapshot they started with, so a reload never changes a request in flight.

use super::policy::budget::Budgets;
use super::policy::shared::SharedStore;
use super::pool::Pool;
use super::router::{Route, Router};
use crate::config::{Cidr, EscapedSlashes, Loaded, LogField, MinBodyRate};
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Global edge policies, compiled.
pub struct EdgePolicy {
    pub trusted_proxies: Vec<IpNet>,
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
    pub security_headers: bool,
    pub access_log: bool,
    pub access_log_fields: Vec<LogField>,
    pub keepalive_timeout: Duration,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub merge_slashes: bool,
    pub escaped_slashes: EscapedSlashes,
    pub min_body_rate: MinBodyRate,
}

pub struct Snapshot {
    pub loaded: Loaded,
    pub router: Router,
    pub pools: BTreeMap<String, Arc<Pool>>,
    pub edge: EdgePolicy,
    /// The listeners that read a PROXY protocol header first, with the peers they trust.
    pub proxy_protocol: BTreeMap<String, Vec<IpNet>>,
    /// Token budgets; the same counters in every snapshot of the process.
    pub budgets: Budgets,
    /// `store.redis`, kept from the previous snapshot while its settings stay the same.
    pub store: Option<Arc<SharedStore>>,
    pub loaded_at: SystemTime,
}

impl Snapshot {
    /// Runs once the snapshot is current: queues move to its pools (and dispatch into any
    /// new room), and the queues of pools that are gone answer their waiting requests.
    pub fn activate(&self, previous: Option<&Snapshot>) {
        for pool in self.pools.values() {
            if let Some(q) = &pool.queue {
                q.attach(pool);
            }
        }
        let kept = |q: &Arc<super::queue::Queue>| {
            self.pools
                .values()
                .any(|p| p.queue.as_ref().is_some_and(|k| Arc::ptr_eq(k, q)))
        };
        for old in previous.into_iter().flat_map(|s| s.pools.values()) {
            if let Some(q) = old.queue.as_ref().filter(|q| !kept(q)) {
                q.close();
            }
        }
    }

    /// Compiles `loaded`, reusing the balancers (and health state) of `previous`'s pools.
    pub async fn build(loaded: Loaded, previous: Option<&Snapshot>) -> Snapshot {
        let c = &loaded.config;
        let mut pools = BTreeMap::new();
        for (name, pc) in &c.pools {
            let prev = previous.and_then(|s| s.pools.get(name)).map(|p| p.as_ref());
            pools.insert(name.clone(), Arc::new(Pool::build(name, pc, prev).await));
        }
        let previous_route = |name: &str| {
            previous.and_then(|s| s.router.routes().iter().find(|r| r.name == name).cloned())
        };
        let routes = c
            .routes
            .iter()
            .filter_map(|r| {
                Route::compile(r, &pools, previous_route(&r.name).as_deref()).map(Arc::new)
            })
            .collect();
        let edge = EdgePolicy {
            trusted_proxies: nets(&c.edge.trusted_proxies),
            allow: nets(&c.edge.allow),
            deny: nets(&c.edge.deny),
            security_headers: c.edge.security_headers,
            access_log: c.edge.access_log.enabled,
            access_log_fields: c.edge.access_log.fields.clone(),
            keepalive_timeout: c.edge.keepalive_timeout.get(),
            header_timeout: c.edge.header_timeout.get(),
            body_timeout: c.edge.body_timeout.get(),
            merge_slashes: c.edge.merge_slashes,
            escaped_slashes: c.edge.escaped_slashes,
            min_body_rate: c.edge.min_body_rate,
        };
        let proxy_protocol = c
            .listeners
            .iter()
            .filter_map(|l| Some((l.name.clone(), nets(&l.proxy_protocol.as_ref()?.trusted))))
            .collect();

        let store = c.store.redis.as_ref().and_then(|rc| {
            let kept = previous.and_then(|p| p.store.clone());
            match kept.filter(|s| s.config == *rc) {
                Some(s) => Some(s),
                None => SharedStore::start(rc)
                    .map_err(|e| log::error!("store.redis: {e}"))
                    .ok(),
            }
        });
        Snapshot {
            store,
            router: Router::new(routes),
            pools,
            edge,
            proxy_protocol,
            budgets: previous.map(|p| p.budgets.clone()).unwrap_or_default(),
            loaded_at: SystemTime::now(),
            loaded,
        }
    }
}

/// The networks of a CIDR list, for matching.
pub(super) fn nets(list: &[Cidr]) -> Vec<IpNet> {
    list.iter().map(|c| c.0).collect()
}
