//! A pool's admission queue (`pools.NAME.queue`): when every backend that could serve a
//! request is at its `max_inflight`, the request waits here instead of getting 503.
//!
//! Binding is late: a waiting request holds no backend. When a slot frees (an
//! [`InflightGuard`] drops, a reload or a health change adds room), [`Queue::dispatch`] walks
//! the waiting requests in order — strict between priority classes, round robin between
//! tenants within one — and gives each a backend the moment one can take it, with the slot
//! already reserved. The queue outlives reloads (a pool of the same name keeps it), so
//! waiting requests keep their place; a reload that removes the pool or its queue answers
//! them.

use super::pool::{InflightGuard, Member, NoBackend, Pool};
use crate::config::{Priority, QueueConfig};
use crate::metrics;
use parking_lot::Mutex;
use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// A backend with one of its slots taken for the request.
pub struct Grant {
    pub member: Member,
    pub slot: InflightGuard,
}

/// Why a request got no slot from the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `queue.max` requests wait already.
    Full,
    /// Waited `queue.timeout`.
    Timeout,
    /// The client went away while waiting.
    Gone,
    /// A reload removed the pool or its queue.
    Closed,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Full => "full",
            Refused::Timeout => "timeout",
            Refused::Gone => "gone",
            Refused::Closed => "closed",
        }
    }
}

/// What a waiting request needs of a backend.
pub struct Wants {
    pub priority: Priority,
    /// Who takes turns within a class: the key's name, else the client's address.
    pub tenant: String,
    pub model: Option<String>,
    /// The `consistent_hash` key, when the pool hashes.
    pub hash_key: Vec<u8>,
}

struct Waiter {
    id: u64,
    model: Option<String>,
    hash_key: Vec<u8>,
    reply: oneshot::Sender<Result<Grant, Refused>>,
}

/// The waiting requests of one tenant in one class, oldest first.
struct Line {
    tenant: String,
    waiters: VecDeque<Waiter>,
}

struct Inner {
    settings: QueueConfig,
    /// The pool of the current snapshot; dispatch picks backends from it.
    pool: Weak<Pool>,
    closed: bool,
    /// One list of tenant lines per priority class; the front line is served next.
    classes: [VecDeque<Line>; 4],
}

pub struct Queue {
    pool_name: String,
    inner: Mutex<Inner>,
    /// Waiting requests, read without the lock on every released slot.
    waiting: AtomicUsize,
    next_id: AtomicU64,
}

impl Queue {
    pub fn new(pool_name: &str, settings: QueueConfig) -> Queue {
        for p in Priority::ALL {
            metrics::QUEUE_DEPTH.with_label_values(&[pool_name, p.as_str()]);
        }
        for reason in metrics::QUEUE_REJECT_REASONS {
            metrics::QUEUE_REJECTED.with_label_values(&[pool_name, reason]);
        }
        Queue {
            pool_name: pool_name.to_string(),
            inner: Mutex::new(Inner {
                settings,
                pool: Weak::new(),
                closed: false,
                classes: Default::default(),
            }),
            waiting: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
        }
    }

    /// New limits from a reload; requests already waiting keep their place.
    pub fn configure(&self, settings: QueueConfig) {
        self.inner.lock().settings = settings;
    }

    /// Points the queue at the pool of the snapshot that just became current, and gives any
    /// room the new pool has to the waiting requests.
    pub fn attach(&self, pool: &Arc<Pool>) {
        self.inner.lock().pool = Arc::downgrade(pool);
        self.dispatch();
    }

    /// The pool or its queue is gone from the config: every waiting request is answered.
    pub fn close(&self) {
        let waiters: Vec<(usize, Waiter)> = {
            let mut inner = self.inner.lock();
            inner.closed = true;
            self.waiting.store(0, Ordering::SeqCst);
            let mut out = Vec::new();
            for (rank, class) in inner.classes.iter_mut().enumerate() {
                for line in class.drain(..) {
                    out.extend(line.waiters.into_iter().map(|w| (rank, w)));
                }
            }
            out
        };
        for (rank, w) in waiters {
            self.left(rank, Refused::Closed);
            let _ = w.reply.send(Err(Refused::Closed));
        }
    }

    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Waiting requests per priority class, for `/status`.
    pub fn depths(&self) -> [usize; 4] {
        let inner = self.inner.lock();
        let mut out = [0; 4];
        for (i, class) in inner.classes.iter().enumerate() {
            out[i] = class.iter().map(|l| l.waiters.len()).sum();
        }
        out
    }

    pub fn settings(&self) -> QueueConfig {
        self.inner.lock().settings
    }

    /// Puts a request in line. The returned ticket is its place: waiting on it gives a
    /// backend, and dropping it (the client left, the request ended) leaves the line.
    pub fn enqueue(self: &Arc<Self>, wants: Wants) -> Result<Ticket, Refused> {
        let (reply, rx) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let rank = wants.priority.rank();
        let mut evicted = None;
        let timeout = {
            let mut inner = self.inner.lock();
            if inner.closed {
                return Err(Refused::Closed);
            }
            if self.waiting.load(Ordering::SeqCst) >= inner.settings.max {
                match inner.make_room(rank, &wants.tenant) {
                    Some(victim) => {
                        self.waiting.fetch_sub(1, Ordering::SeqCst);
                        evicted = Some(victim);
                    }
                    None => {
                        drop(inner);
                        self.count_rejected(Refused::Full);
                        return Err(Refused::Full);
                    }
                }
            }
            let waiter = Waiter {
                id,
                model: wants.model,
                hash_key: wants.hash_key,
                reply,
            };
            let class = &mut inner.classes[rank];
            match class.iter_mut().find(|l| l.tenant == wants.tenant) {
                Some(line) => line.waiters.push_back(waiter),
                None => class.push_back(Line {
                    tenant: wants.tenant,
                    waiters: VecDeque::from([waiter]),
                }),
            }
            self.waiting.fetch_add(1, Ordering::SeqCst);
            inner.settings.timeout.get()
        };
        metrics::QUEUE_DEPTH
            .with_label_values(&[self.pool_name.as_str(), wants.priority.as_str()])
            .inc();
        if let Some((victim_rank, victim)) = evicted {
            self.left(victim_rank, Refused::Full);
            let _ = victim.reply.send(Err(Refused::Full));
        }
        // A slot may have freed between the caller's failed try and the push; the fence
        // pairs with the release's SeqCst decrement of the in-flight count.
        std::sync::atomic::fence(Ordering::SeqCst);
        self.dispatch();
        Ok(Ticket {
            queue: self.clone(),
            id,
            rank,
            since: Instant::now(),
            timeout,
            rx,
            done: false,
        })
    }

    /// Gives free slots to waiting requests, in order, until none of them can be placed.
    pub fn dispatch(&self) {
        if self.waiting() == 0 {
            return;
        }
        let mut undelivered = Vec::new();
        let mut placed = Vec::new();
        {
            let mut inner = self.inner.lock();
            let Some(pool) = inner.pool.upgrade() else {
                return;
            };
            // Models whose backends are all full (or down) in this pass: nothing freed since.
            let mut full: HashSet<Option<String>> = HashSet::new();
            'classes: for rank in 0..inner.classes.len() {
                while let Some(waiter) = next_placeable(&mut inner.classes[rank], &pool, &mut full)
                {
                    match waiter {
                        Placed::Done(w, grant) => {
                            placed.push(rank);
                            if let Err(Ok(grant)) = w.reply.send(Ok(grant)) {
                                undelivered.push(grant);
                            }
                        }
                        Placed::NothingFree => break 'classes,
                    }
                }
            }
            self.waiting.fetch_sub(placed.len(), Ordering::SeqCst);
        }
        for rank in placed {
            self.depth(rank).dec();
        }
        // Dropped outside the lock: each one frees its slot and dispatches again.
        drop(undelivered);
    }

    /// Takes a request out of its line; false when dispatch already gave it a slot.
    fn remove(&self, id: u64, rank: usize) -> bool {
        let mut inner = self.inner.lock();
        let class = &mut inner.classes[rank];
        for (li, line) in class.iter_mut().enumerate() {
            if let Some(wi) = line.waiters.iter().position(|w| w.id == id) {
                line.waiters.remove(wi);
                if line.waiters.is_empty() {
                    class.remove(li);
                }
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                return true;
            }
        }
        false
    }

    fn depth(&self, rank: usize) -> pingora_prometheus::prometheus::IntGauge {
        metrics::QUEUE_DEPTH
            .with_label_values(&[self.pool_name.as_str(), Priority::ALL[rank.min(3)].as_str()])
    }

    fn left(&self, rank: usize, why: Refused) {
        self.depth(rank).dec();
        self.count_rejected(why);
    }

    fn count_rejected(&self, why: Refused) {
        metrics::QUEUE_REJECTED
            .with_label_values(&[self.pool_name.as_str(), why.as_str()])
            .inc();
    }
}

impl Inner {
    /// A full queue still takes a request that would be served before someone waiting: the
    /// newest request of the longest line of a lower class, or of the same class when that
    /// line is longer than the newcomer's tenant's by more than one, gives up its place.
    fn make_room(&mut self, rank: usize, tenant: &str) -> Option<(usize, Waiter)> {
        let lowest = (0..self.classes.len())
            .rev()
            .find(|r| !self.classes[*r].is_empty())?;
        if lowest < rank {
            return None;
        }
        let class = &mut self.classes[lowest];
        let (li, longest) = class
            .iter()
            .enumerate()
            .max_by_key(|(_, l)| l.waiters.len())?;
        if lowest == rank {
            let own = class
                .iter()
                .find(|l| l.tenant == tenant)
                .map_or(0, |l| l.waiters.len());
            if longest.tenant == tenant || longest.waiters.len() <= own + 1 {
                return None;
            }
        }
        let victim = class[li].waiters.pop_back()?;
        if class[li].waiters.is_empty() {
            class.remove(li);
        }
        Some((lowest, victim))
    }
}

enum Placed {
    Done(Waiter, Grant),
    /// No waiting request of any class can be placed: every backend is full or down.
    NothingFree,
}

/// The first waiting request of `class`, in turn order, that a backend can take now, with
/// that backend's slot reserved; its tenant moves to the back of the turn. `None` when no
/// request of this class can be placed.
fn next_placeable(
    class: &mut VecDeque<Line>,
    pool: &Pool,
    full: &mut HashSet<Option<String>>,
) -> Option<Placed> {
    for li in 0..class.len() {
        loop {
            let line = &class[li];
            let Some(wi) = line.waiters.iter().position(|w| !full.contains(&w.model)) else {
                break;
            };
            let w = &line.waiters[wi];
            match pool.select_reserved(&w.hash_key, w.model.as_deref(), |_| true) {
                Ok((member, slot)) => {
                    let waiter = class[li]
                        .waiters
                        .remove(wi)
                        .expect("wi is the position just found in this line");
                    if let Some(mut line) = class.remove(li) {
                        if !line.waiters.is_empty() {
                            line.waiters.shrink_to_fit();
                            class.push_back(line);
                        }
                    }
                    return Some(Placed::Done(waiter, Grant { member, slot }));
                }
                Err(NoBackend::AllFull | NoBackend::Unavailable) => {
                    if w.model.is_none() {
                        // Any backend would have done: none has room.
                        return Some(Placed::NothingFree);
                    }
                    full.insert(w.model.clone());
                }
            }
        }
    }
    None
}

/// A request's place in a queue.
pub struct Ticket {
    queue: Arc<Queue>,
    id: u64,
    rank: usize,
    since: Instant,
    timeout: Duration,
    rx: oneshot::Receiver<Result<Grant, Refused>>,
    /// Out of the line (given a slot, answered, or removed): nothing left to undo.
    done: bool,
}

impl Ticket {
    /// Waits for a slot, at most the queue's timeout, or until `gone` says the client left.
    pub async fn wait(&mut self, gone: impl Future<Output = ()>) -> Result<Grant, Refused> {
        let timeout = tokio::time::sleep(self.timeout);
        let ended = tokio::select! {
            r = &mut self.rx => {
                self.done = true;
                r.unwrap_or(Err(Refused::Closed))
            }
            _ = timeout => self.leave(Refused::Timeout),
            _ = gone => self.leave(Refused::Gone),
        };
        metrics::QUEUE_WAIT
            .with_label_values(&[self.queue.pool_name.as_str()])
            .observe(self.since.elapsed().as_secs_f64());
        ended
    }

    /// How long the request has been waiting.
    pub fn waited(&self) -> Duration {
        self.since.elapsed()
    }

    /// Leaves the line for `why`; a slot that dispatch gave in the meantime is taken instead.
    fn leave(&mut self, why: Refused) -> Result<Grant, Refused> {
        self.done = true;
        if self.queue.remove(self.id, self.rank) {
            self.queue.left(self.rank, why);
            return Err(why);
        }
        match self.rx.try_recv() {
            Ok(result) => result,
            Err(_) => Err(Refused::Closed),
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.done && self.queue.remove(self.id, self.rank) {
            self.queue.left(self.rank, Refused::Gone);
        }
    }
}
