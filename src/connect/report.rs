//! How a client service tells the layers above it which connection carried a request.
//!
//! The fresh-connection layer decides from the connection's history whether a failure was a
//! stale pooled connection's, and it needs that for failed requests too, which have no
//! response to carry extensions. So it puts a [`ConnectionReport`] on each request and the
//! client service at the bottom fills it in with a [`ConnectionInfo`], on success and on
//! error alike. A retry asks the client service for a connection that is not from the pool
//! with the [`NewConnection`] request extension.
//!
//! [`ClientService`](super::ClientService) (hyper-util) and, with the `reqwest` feature,
//! `ReqwestService` speak this protocol; any other client service can too.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::ConnTag;

/// Request extension: the slot a client service fills with the [`ConnectionInfo`] of the
/// connection that carried the request. Clones share the slot.
///
/// ```
/// use tower_responses::connect::{ConnectionInfo, ConnectionReport};
///
/// let report = ConnectionReport::new();
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(report.clone());
/// // ... the client service, on the request's way out:
/// if let Some(r) = req.extensions().get::<ConnectionReport>() {
///     r.set(ConnectionInfo::new().reused(true));
/// }
/// assert!(report.get().expect("filled in").is_reused());
/// ```
#[derive(Debug, Clone, Default)]
pub struct ConnectionReport(Arc<Mutex<Option<ConnectionInfo>>>);

impl ConnectionReport {
    /// An empty slot.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fills the slot (a later report replaces an earlier one).
    pub fn set(&self, info: ConnectionInfo) {
        *self.lock() = Some(info);
    }

    /// What the client service reported, if it reported anything.
    pub fn get(&self) -> Option<ConnectionInfo> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<ConnectionInfo>> {
        // The slot only ever holds a finished value; a panic elsewhere cannot leave it torn.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Request extension: this request must not ride a pooled connection. The fresh-connection
/// layer sets it on its retry; a client service that cannot honour it sends the request as
/// usual (see each client service's docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NewConnection;

/// What a client service knows about the connection that carried one request.
///
/// With a [`ConnTag`] (connections made by a [`TaggingConnector`](super::TaggingConnector))
/// everything is known exactly. A client service that cannot tag connections states what it
/// can tell instead: whether the connection came from the pool, how long it had idled, when
/// the request was written; what it leaves out counts as unknown, and an unknown connection
/// is treated as a fresh one (its failures are never retried as stale).
#[derive(Clone, Default)]
pub struct ConnectionInfo {
    tag: Option<ConnTag>,
    reused: Option<bool>,
    idle: Option<Duration>,
    written_at: Option<Instant>,
    retire: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl fmt::Debug for ConnectionInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionInfo")
            .field("id", &self.id())
            .field("reused", &self.is_reused())
            .field("idle", &self.idle())
            .field("retirable", &self.retire.is_some())
            .finish()
    }
}

impl ConnectionInfo {
    /// Nothing known yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A tagged connection: its history comes from the tag.
    pub fn tagged(tag: ConnTag) -> Self {
        ConnectionInfo {
            tag: Some(tag),
            ..Self::default()
        }
    }

    /// Whether the connection came from the pool (for untagged connections).
    pub fn reused(mut self, reused: bool) -> Self {
        self.reused = Some(reused);
        self
    }

    /// How long the connection had idled before this request, at least (for untagged
    /// connections). A lower bound is safe: it can only make a stale answer look fresh.
    pub fn idle_before_use(mut self, idle: Duration) -> Self {
        self.idle = Some(idle);
        self
    }

    /// When the request was written, at the earliest (for untagged connections).
    pub fn written_at(mut self, at: Instant) -> Self {
        self.written_at = Some(at);
        self
    }

    /// How to take the connection out of the pool (hyper-util's poison).
    pub fn on_retire(mut self, retire: impl Fn() + Send + Sync + 'static) -> Self {
        self.retire = Some(Arc::new(retire));
        self
    }

    /// The connection's tag, when the connector tags connections.
    pub fn tag(&self) -> Option<&ConnTag> {
        self.tag.as_ref()
    }

    /// The tagged connection's id.
    pub fn id(&self) -> Option<u64> {
        self.tag.as_ref().map(ConnTag::id)
    }

    /// Whether the request rode a connection that had carried requests before (or, untagged,
    /// came from the pool). `false` when unknown.
    pub fn is_reused(&self) -> bool {
        match &self.tag {
            Some(tag) => tag.is_reused(),
            None => self.reused.unwrap_or(false),
        }
    }

    /// How long the connection idled before this request, when known.
    pub fn idle(&self) -> Option<Duration> {
        match &self.tag {
            Some(tag) => Some(tag.idle_before_use()),
            None => self.idle,
        }
    }

    /// How long ago the request's last bytes were written, when known.
    pub fn since_last_write(&self) -> Option<Duration> {
        match &self.tag {
            Some(tag) => Some(tag.since_last_write()),
            None => self.written_at.map(|at| at.elapsed()),
        }
    }

    /// How long ago the connection was opened, when known.
    pub fn age(&self) -> Option<Duration> {
        self.tag.as_ref().map(ConnTag::age)
    }

    /// Whether [`retire`](Self::retire) can take the connection out of the pool.
    pub fn can_retire(&self) -> bool {
        self.retire.is_some()
    }

    /// Takes the connection out of the pool after its current request, if the client service
    /// said how; otherwise does nothing.
    pub fn retire(&self) {
        if let Some(retire) = &self.retire {
            retire();
        }
    }
}
