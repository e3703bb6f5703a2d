//! Per-thread caches of registered series handles.
//!
//! Registering a series with a recorder builds its key (label strings allocated) and looks it
//! up in the recorder's sharded map under a read lock. A thread that updates a series again
//! finds its handle here instead: name and labels are hashed where they lie, looked up in a
//! map only this thread touches, and the update is one atomic operation on the series.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::{Arc, Weak};

use foldhash::fast::FixedState;

use super::{Kind, Local};

/// A registered series.
pub(super) enum Handle {
    Counter(metrics::Counter),
    Gauge(metrics::Gauge),
    Histogram(metrics::Histogram),
}

impl Handle {
    pub(super) fn add(&self, v: f64) {
        if let Handle::Counter(c) = self {
            if v >= 0.5 {
                // `as` saturates: a huge value cannot wrap.
                c.increment(v.round() as u64);
            }
        }
    }

    pub(super) fn set(&self, v: f64) {
        if let Handle::Gauge(g) = self {
            g.set(v);
        }
    }

    pub(super) fn gauge_add(&self, v: f64) {
        if let Handle::Gauge(g) = self {
            g.increment(v);
        }
    }

    pub(super) fn record(&self, v: f64) {
        if let Handle::Histogram(h) = self {
            h.record(v);
        }
    }

    fn kind(&self) -> Kind {
        match self {
            Handle::Counter(_) => Kind::Counter,
            Handle::Gauge(_) => Kind::Gauge,
            Handle::Histogram(_) => Kind::Histogram,
        }
    }
}

/// One registered series: what it was registered as, to tell apart keys whose hashes meet.
struct Entry {
    name: &'static str,
    labels: Box<[(Box<str>, Box<str>)]>,
    handle: Handle,
}

impl Entry {
    fn is(&self, kind: Kind, name: &str, labels: &[(&str, &str)]) -> bool {
        self.handle.kind() == kind
            && self.name == name
            && self.labels.len() == labels.len()
            && self
                .labels
                .iter()
                .zip(labels)
                .all(|((k, v), (wk, wv))| **k == **wk && **v == **wv)
    }
}

/// One recorder's handles as this thread registered them, by the hash of kind, name and
/// labels (hashed as they are: nothing is rendered or allocated to look one up).
struct Series {
    id: u64,
    // Whose handles these are: once it is dropped, the entry goes at the next miss.
    owner: Weak<Local>,
    handles: HashMap<u64, Vec<Entry>, FixedState>,
}

thread_local! {
    static CACHE: RefCell<Vec<Series>> = const { RefCell::new(Vec::new()) };
    // Families this thread has described to the global recorder.
    static DESCRIBED: RefCell<HashSet<(Kind, &'static str)>> = RefCell::new(HashSet::new());
}

/// Runs `f` on the handle of `name{labels}` in `local`, registering it with `register` on
/// this thread's first use.
pub(super) fn with(
    local: &Arc<Local>,
    kind: Kind,
    name: &'static str,
    labels: &[(&str, &str)],
    f: impl FnOnce(&Handle),
    register: impl FnOnce() -> Handle,
) {
    let hash = FixedState::default().hash_one((kind, name, labels));
    CACHE.with_borrow_mut(|all| {
        let pos = match all.iter().position(|s| s.id == local.id) {
            Some(pos) => pos,
            None => {
                all.retain(|s| s.owner.strong_count() > 0);
                all.push(Series {
                    id: local.id,
                    owner: Arc::downgrade(local),
                    handles: HashMap::with_hasher(FixedState::default()),
                });
                all.len() - 1
            }
        };
        let bucket = all[pos].handles.entry(hash).or_default();
        match bucket.iter().find(|e| e.is(kind, name, labels)) {
            Some(e) => f(&e.handle),
            None => {
                let handle = register();
                f(&handle);
                bucket.push(Entry {
                    name,
                    labels: labels.iter().map(|&(k, v)| (k.into(), v.into())).collect(),
                    handle,
                });
            }
        }
    });
}

/// Whether this thread reports `name` to the global recorder for the first time (describe
/// it then: describing takes the recorder's lock in some exporters).
pub(super) fn first_global_use(kind: Kind, name: &'static str) -> bool {
    DESCRIBED.with_borrow_mut(|d| d.insert((kind, name)))
}
