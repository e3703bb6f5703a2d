//! The mock's book of streamed answers: which are open now, how many were served, how many
//! the client abandoned, and how many bytes hyper took from each. A proxy that cancels its
//! upstream request when its client goes away shows here as an open stream that disappears;
//! one that keeps backpressure shows as a stream whose bytes stop growing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::RecordedRequest;
use super::server::lock;

/// Counts of the mock's streamed (chunked) answers, from
/// [`MockUpstream::stream_stats`](super::MockUpstream::stream_stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Streamed answers whose body is still open (hyper still holds it).
    pub open: usize,
    /// Streamed answers served so far.
    pub total: u64,
    /// Streamed answers dropped before the mock had sent all of them: the client (the proxy)
    /// went away, or the mock stopped. A stream the mock cut on purpose is not counted.
    pub cancelled: u64,
    /// Body bytes hyper took from every streamed answer so far (what reached the socket,
    /// or its buffer): when a reader stops, this stops growing.
    pub bytes_sent: u64,
}

/// One streamed answer still open, from
/// [`MockUpstream::open_streams`](super::MockUpstream::open_streams).
#[derive(Debug, Clone)]
pub struct OpenStream {
    /// The request it answers.
    pub request: RecordedRequest,
    /// Body bytes hyper took from it so far.
    pub bytes_sent: u64,
}

#[derive(Default)]
pub(crate) struct StreamBook {
    open: Mutex<HashMap<u64, (RecordedRequest, Arc<AtomicU64>)>>,
    next: AtomicU64,
    total: AtomicU64,
    cancelled: AtomicU64,
    bytes: AtomicU64,
}

impl StreamBook {
    /// Registers a streamed answer to `request`; the guard unregisters it when dropped.
    pub(crate) fn open(self: &Arc<Self>, request: &RecordedRequest) -> StreamGuard {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let sent = Arc::new(AtomicU64::new(0));
        lock(&self.open).insert(id, (request.clone(), sent.clone()));
        self.total.fetch_add(1, Ordering::Relaxed);
        StreamGuard {
            book: self.clone(),
            id,
            sent,
            finished: AtomicBool::new(false),
        }
    }

    pub(crate) fn stats(&self) -> StreamStats {
        StreamStats {
            open: lock(&self.open).len(),
            total: self.total.load(Ordering::Relaxed),
            cancelled: self.cancelled.load(Ordering::Relaxed),
            bytes_sent: self.bytes.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn open_streams(&self) -> Vec<OpenStream> {
        lock(&self.open)
            .values()
            .map(|(request, sent)| OpenStream {
                request: request.clone(),
                bytes_sent: sent.load(Ordering::Relaxed),
            })
            .collect()
    }
}

/// Held by a streamed body: counts its bytes, and on drop closes its entry.
pub(crate) struct StreamGuard {
    book: Arc<StreamBook>,
    id: u64,
    sent: Arc<AtomicU64>,
    finished: AtomicBool,
}

impl StreamGuard {
    pub(crate) fn sent(&self, n: usize) {
        self.sent.fetch_add(n as u64, Ordering::Relaxed);
        self.book.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The body ended, or the mock cut it on purpose: its drop is no cancellation.
    pub(crate) fn finish(&self) {
        self.finished.store(true, Ordering::Relaxed);
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        lock(&self.book.open).remove(&self.id);
        if !self.finished.load(Ordering::Relaxed) {
            self.book.cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }
}
