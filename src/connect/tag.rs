use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What is known about one upstream connection. Cheap to clone (an `Arc`).
///
/// Times are kept as nanoseconds since the connection opened so they fit in atomics: the IO
/// wrapper updates them from inside poll functions without a lock.
#[derive(Debug, Clone)]
pub struct ConnTag(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    id: u64,
    created: Instant,
    uses: AtomicU64,
    last_active_ns: AtomicU64,
    last_write_ns: AtomicU64,
    idle_before_use_ns: AtomicU64,
}

impl ConnTag {
    pub(crate) fn new(id: u64) -> Self {
        ConnTag(Arc::new(Inner {
            id,
            created: Instant::now(),
            uses: AtomicU64::new(0),
            last_active_ns: AtomicU64::new(0),
            last_write_ns: AtomicU64::new(0),
            idle_before_use_ns: AtomicU64::new(0),
        }))
    }

    /// The connection's id, unique per connector (1, 2, ...).
    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// When the connection was opened.
    pub fn created(&self) -> Instant {
        self.0.created
    }

    /// How long ago the connection was opened.
    pub fn age(&self) -> Duration {
        self.0.created.elapsed()
    }

    /// How many requests have started on this connection, the current one included. A request
    /// counts once it tried to write, even if that write failed.
    pub fn uses(&self) -> u64 {
        self.0.uses.load(Ordering::Acquire)
    }

    /// Whether the current request is not the connection's first: it came from the pool.
    pub fn is_reused(&self) -> bool {
        self.uses() > 1
    }

    /// How long the connection sat idle before the current request started writing.
    /// Zero for a connection's first request.
    pub fn idle_before_use(&self) -> Duration {
        Duration::from_nanos(self.0.idle_before_use_ns.load(Ordering::Acquire))
    }

    /// When bytes last moved on the connection.
    pub fn last_active(&self) -> Instant {
        self.0.created + Duration::from_nanos(self.0.last_active_ns.load(Ordering::Acquire))
    }

    /// How long ago the last request bytes were written. A reused connection that fails
    /// within moments of the write failed before the upstream could have worked on the
    /// request; one that fails later may have run it.
    pub fn since_last_write(&self) -> Duration {
        let at = Duration::from_nanos(self.0.last_write_ns.load(Ordering::Acquire));
        self.0.created.elapsed().saturating_sub(at)
    }

    pub(crate) fn wrote(&self) {
        self.0.last_write_ns.store(self.now_ns(), Ordering::Release);
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.0.created.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// A request starts writing. The caller decides it is a new request (a write after a read).
    pub(crate) fn begin_use(&self) {
        let now = self.now_ns();
        let uses = self.0.uses.fetch_add(1, Ordering::AcqRel);
        let idle = if uses == 0 {
            0
        } else {
            now.saturating_sub(self.0.last_active_ns.load(Ordering::Acquire))
        };
        self.0.idle_before_use_ns.store(idle, Ordering::Release);
        self.0.last_active_ns.store(now, Ordering::Release);
    }

    pub(crate) fn touch(&self) {
        self.0
            .last_active_ns
            .store(self.now_ns(), Ordering::Release);
    }
}
