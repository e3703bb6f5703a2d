//! Response bodies: sized ones sent at once, and streamed ones fed chunk by chunk by a task
//! that paces, holds open or cuts them.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

use super::io::{Abort, ConnControl};
use super::server::ConnState;
use super::streams::StreamGuard;

enum Msg {
    Data(Bytes),
    /// Close the connection this way once the chunks before this one are on the wire.
    Cut(Abort),
}

enum Kind {
    Full(Option<Bytes>),
    Channel(mpsc::Receiver<Msg>, StreamGuard),
    /// Cut: never yields again; the connection is about to be dropped.
    Stalled,
}

/// The body of every mock response.
pub(crate) struct MockBody {
    kind: Kind,
    conn: Arc<ConnState>,
}

impl MockBody {
    /// The whole body at once, with a `Content-Length`.
    pub(crate) fn full(bytes: Bytes, conn: Arc<ConnState>) -> MockBody {
        let kind = Kind::Full((!bytes.is_empty()).then_some(bytes));
        MockBody { kind, conn }
    }

    fn control(&self) -> &ConnControl {
        &self.conn.control
    }
}

impl Drop for MockBody {
    fn drop(&mut self) {
        // hyper drops the body once it has written the last of it: the connection idles from
        // here until its next request.
        self.conn.touch();
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        match &mut this.kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Channel(rx, guard) => match ready!(rx.poll_recv(cx)) {
                Some(Msg::Data(b)) => {
                    guard.sent(b.len());
                    Poll::Ready(Some(Ok(Frame::data(b))))
                }
                Some(Msg::Cut(how)) => {
                    guard.finish();
                    this.control().abort_after_flush(how);
                    this.kind = Kind::Stalled;
                    Poll::Pending
                }
                None => {
                    guard.finish();
                    Poll::Ready(None)
                }
            },
            Kind::Stalled => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.kind, Kind::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// How a streamed body is fed.
pub(crate) struct Pacing {
    pub(crate) gap: Option<Duration>,
    pub(crate) first_wait: Option<Duration>,
    pub(crate) hold_open: bool,
    pub(crate) cut_after: Option<usize>,
    /// How the cut closes the connection (FIN unless a reset was asked for).
    pub(crate) cut_how: Abort,
}

/// A streamed body and the task feeding it. The task ends when the body is done or dropped:
/// hyper drops it when the client goes away, and stopping the mock drops every connection.
/// The task never ends the body early itself, so a stopping mock never looks like a clean end
/// of stream.
pub(crate) fn streamed(
    chunks: Vec<Bytes>,
    pacing: Pacing,
    conn: Arc<ConnState>,
    guard: StreamGuard,
) -> MockBody {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(feed(tx, chunks, pacing));
    MockBody {
        kind: Kind::Channel(rx, guard),
        conn,
    }
}

async fn feed(tx: mpsc::Sender<Msg>, chunks: Vec<Bytes>, pacing: Pacing) {
    let total = chunks.len();
    for (i, chunk) in chunks.into_iter().enumerate() {
        if pacing.cut_after == Some(i) {
            let _ = tx.send(Msg::Cut(pacing.cut_how)).await;
            return;
        }
        let delay = match i {
            0 => None,
            1 => pacing.first_wait.or(pacing.gap),
            _ => pacing.gap,
        };
        if let Some(delay) = delay {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = tx.closed() => return,
            }
        }
        if tx.send(Msg::Data(chunk)).await.is_err() {
            return;
        }
    }
    if pacing.cut_after.is_some_and(|n| n >= total) {
        let _ = tx.send(Msg::Cut(pacing.cut_how)).await;
        return;
    }
    if pacing.hold_open {
        tx.closed().await;
    }
}
