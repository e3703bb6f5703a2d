//! Per-thread caches of registered series handles.
//!
//! Registering a series with a recorder builds its key (label strings allocated) and looks it
//! up in the recorder's sharded map under a read lock. A thread that updates a series again
//! finds its handle here instead: the labels are rendered into a reused buffer, looked up in
//! a map only this thread touches, and the update is one atomic operation on the series.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};

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

/// One recorder's handles as this thread registered them, keyed by name and labels.
struct Series {
    id: u64,
    // Whose handles these are: once it is dropped, the entry goes at the next miss.
    owner: Weak<Local>,
    handles: HashMap<Box<str>, Handle>,
}

thread_local! {
    static SERIES: RefCell<Vec<Series>> = const { RefCell::new(Vec::new()) };
    // Keys are rendered here, so a hit allocates nothing.
    static KEY: RefCell<String> = const { RefCell::new(String::new()) };
    // Families this thread has described to the global recorder.
    static DESCRIBED: RefCell<HashSet<(Kind, &'static str)>> = RefCell::new(HashSet::new());
}

/// Writes `name` and `labels` as one key: labels in the Prometheus form (escaped), so two
/// label sets never render alike.
fn write_key(out: &mut String, name: &str, labels: &[(&str, &str)]) {
    out.clear();
    out.push_str(name);
    super::removable::write_labels(out, labels);
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
    KEY.with_borrow_mut(|key| {
        write_key(key, name, labels);
        SERIES.with_borrow_mut(|all| {
            let pos = match all.iter().position(|s| s.id == local.id) {
                Some(pos) => pos,
                None => {
                    all.retain(|s| s.owner.strong_count() > 0);
                    all.push(Series {
                        id: local.id,
                        owner: Arc::downgrade(local),
                        handles: HashMap::new(),
                    });
                    all.len() - 1
                }
            };
            let handles = &mut all[pos].handles;
            match handles.get(key.as_str()) {
                Some(h) if h.kind() == kind => f(h),
                _ => {
                    let h = register();
                    f(&h);
                    handles.insert(key.as_str().into(), h);
                }
            }
        });
    });
}

/// Whether this thread reports `name` to the global recorder for the first time (describe
/// it then: describing takes the recorder's lock in some exporters).
pub(super) fn first_global_use(kind: Kind, name: &'static str) -> bool {
    DESCRIBED.with_borrow_mut(|d| d.insert((kind, name)))
}
