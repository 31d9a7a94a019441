//! Where an inference request goes within a pool: consistent hashing with bounded loads
//! (`affinity`), and the least loaded backend (`least_load`, or the in-flight count).
//!
//! The ring is hashed with SHA-256 of the backend address, so every switchyard node (and
//! every restart) puts a key on the same backend, and adding or removing one backend moves
//! only the keys that land on it.

use sha2::{Digest, Sha256};
use std::net::SocketAddr;

/// Points per unit of weight on the ring: enough for an even spread over a few backends.
const POINTS_PER_WEIGHT: usize = 160;

/// The consistent-hash ring of a pool's members.
#[derive(Debug, Default)]
pub struct Ring {
    points: Vec<(u64, SocketAddr)>,
}

fn hash64(bytes: &[u8]) -> u64 {
    let d = Sha256::digest(bytes);
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    u64::from_be_bytes(first)
}

/// The ring position of an affinity key (a prompt prefix, a session header).
pub fn key_hash(key: &[u8]) -> u64 {
    hash64(key)
}

impl Ring {
    pub fn new(members: impl Iterator<Item = (SocketAddr, usize)>) -> Ring {
        let mut points = Vec::new();
        for (addr, weight) in members {
            let name = addr.to_string();
            for i in 0..POINTS_PER_WEIGHT * weight.max(1) {
                points.push((hash64(format!("{name}#{i}").as_bytes()), addr));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    /// The backends in ring order from `hash`, each once.
    pub fn walk(&self, hash: u64) -> impl Iterator<Item = SocketAddr> + '_ {
        let start = self.points.partition_point(|(h, _)| *h < hash);
        let mut seen: Vec<SocketAddr> = Vec::new();
        self.points[start..]
            .iter()
            .chain(&self.points[..start])
            .filter_map(move |(_, a)| {
                if seen.contains(a) {
                    None
                } else {
                    seen.push(*a);
                    Some(*a)
                }
            })
    }
}

/// A backend that may take the request, with its load (requests in flight, or the engine's
/// own count corrected by what was sent since).
pub struct Candidate<T> {
    pub addr: SocketAddr,
    pub load: f64,
    pub item: T,
}

/// The least loaded candidate; ties go to the first.
pub fn least_loaded<T>(candidates: Vec<Candidate<T>>) -> Option<T> {
    candidates
        .into_iter()
        .reduce(|best, c| if c.load < best.load { c } else { best })
        .map(|c| c.item)
}

/// Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam): the key's
/// backend on the ring unless its load would pass `factor` × the average (counting this
/// request), then the next one on the ring that is within the bound, and only when none is,
/// the least loaded. The next one on the ring, not the least loaded within the bound: a
/// key pushed off its replica then always goes to the same second one, whose cache warms
/// for it (choosing by load sent each such request somewhere cold, which was the TTFT tail).
pub fn bounded<T>(
    ring: &Ring,
    hash: u64,
    factor: f64,
    mut candidates: Vec<Candidate<T>>,
) -> Option<T> {
    if candidates.is_empty() {
        return None;
    }
    let total: f64 = candidates.iter().map(|c| c.load).sum();
    let bound = (factor * (total + 1.0) / candidates.len() as f64).ceil();
    for addr in ring.walk(hash) {
        let Some(i) = candidates.iter().position(|c| c.addr == addr) else {
            continue;
        };
        if candidates[i].load + 1.0 <= bound {
            return Some(candidates.swap_remove(i).item);
        }
    }
    least_loaded(candidates)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([10, 0, 0, 1], 8000 + i)))
            .collect()
    }

    fn owner(ring: &Ring, key: u32) -> SocketAddr {
        ring.walk(key_hash(&key.to_be_bytes()))
            .next()
            .expect("a backend")
    }

    #[test]
    fn adding_a_backend_moves_only_keys_to_it() {
        let four = Ring::new(addrs(4).into_iter().map(|a| (a, 1)));
        let five_addrs = addrs(5);
        let five = Ring::new(five_addrs.iter().map(|a| (*a, 1)));
        let mut moved = 0;
        for key in 0..2000u32 {
            let (before, after) = (owner(&four, key), owner(&five, key));
            if before != after {
                moved += 1;
                assert_eq!(after, five_addrs[4], "key {key} moved between old backends");
            }
        }
        // About a fifth should move to the new one.
        assert!((250..=600).contains(&moved), "{moved} of 2000 moved");
    }

    #[test]
    fn the_bound_sends_a_hot_key_elsewhere_and_it_comes_back() {
        let list = addrs(3);
        let ring = Ring::new(list.iter().map(|a| (*a, 1)));
        let hash = key_hash(b"conversation-1");
        let preferred = ring.walk(hash).next().expect("owner");
        let with_loads = |hot: f64| -> Vec<Candidate<SocketAddr>> {
            list.iter()
                .map(|a| Candidate {
                    addr: *a,
                    load: if *a == preferred { hot } else { 0.0 },
                    item: *a,
                })
                .collect()
        };
        assert_eq!(bounded(&ring, hash, 1.25, with_loads(0.0)), Some(preferred));
        let moved = bounded(&ring, hash, 1.25, with_loads(4.0)).expect("a backend");
        assert_ne!(moved, preferred);
        assert_eq!(bounded(&ring, hash, 1.25, with_loads(0.0)), Some(preferred));
    }

    #[test]
    fn a_key_pushed_off_its_backend_goes_to_the_next_on_the_ring_not_the_idlest() {
        let list = addrs(4);
        let ring = Ring::new(list.iter().map(|a| (*a, 1)));
        let hash = key_hash(b"conversation-2");
        let order: Vec<SocketAddr> = ring.walk(hash).collect();
        // The owner is hot, the next on the ring busy but within the bound, the rest idle.
        let load = |a: &SocketAddr| match order.iter().position(|o| o == a) {
            Some(0) => 6.0,
            Some(1) => 2.0,
            _ => 0.0,
        };
        let candidates = list
            .iter()
            .map(|a| Candidate {
                addr: *a,
                load: load(a),
                item: *a,
            })
            .collect();
        assert_eq!(bounded(&ring, hash, 1.25, candidates), Some(order[1]));
    }
}
