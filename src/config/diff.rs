//! What changed between two configs, for the admin API's answers and the logs.

use super::Config;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Changed {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl Changed {
    fn of<T: PartialEq>(old: &BTreeMap<String, &T>, new: &BTreeMap<String, &T>) -> Changed {
        Changed {
            added: new
                .keys()
                .filter(|k| !old.contains_key(*k))
                .cloned()
                .collect(),
            removed: old
                .keys()
                .filter(|k| !new.contains_key(*k))
                .cloned()
                .collect(),
            changed: new
                .iter()
                .filter(|(k, v)| old.get(*k).is_some_and(|o| o != *v))
                .map(|(k, _)| k.clone())
                .collect(),
        }
    }
}

#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Summary {
    pub listeners: Changed,
    pub pools: Changed,
    pub routes: Changed,
    /// Anything outside listeners, pools and routes (edge, admin, server).
    pub other: bool,
}

fn listeners(c: &Config) -> BTreeMap<String, &super::ListenerSettings> {
    c.listeners.iter().map(|l| (l.name.clone(), l)).collect()
}

fn pools(c: &Config) -> BTreeMap<String, &super::PoolConfig> {
    c.pools.iter().map(|(n, p)| (n.clone(), p)).collect()
}

fn routes(c: &Config) -> BTreeMap<String, &super::RouteConfig> {
    c.routes.iter().map(|r| (r.name.clone(), r)).collect()
}

pub fn summarize(old: &Config, new: &Config) -> Summary {
    let order_changed = old
        .routes
        .iter()
        .map(|r| &r.name)
        .ne(new.routes.iter().map(|r| &r.name));
    let mut summary = Summary {
        listeners: Changed::of(&listeners(old), &listeners(new)),
        pools: Changed::of(&pools(old), &pools(new)),
        routes: Changed::of(&routes(old), &routes(new)),
        other: old.edge != new.edge || old.admin != new.admin || old.server != new.server,
    };
    if order_changed && summary.routes.added.is_empty() && summary.routes.removed.is_empty() {
        summary.other = true;
    }
    summary
}
