//! Connection IO that the request handler can break on purpose.
//!
//! hyper owns the connection while serving it, so a handler cannot close it directly. Each
//! connection instead shares a [`ConnControl`]: the handler asks for an abort, the connection
//! task (which `select!`s on [`ConnControl::aborted`]) drops hyper's connection, and
//! [`ConnIo`]'s `Drop` turns that drop into a FIN or an RST.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// How a connection is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Abort {
    /// Orderly close: the peer reads end-of-file.
    Fin,
    /// Abortive close: the peer gets `ECONNRESET`.
    Reset,
}

/// The abort requests of one connection.
#[derive(Debug, Default)]
pub(crate) struct ConnControl {
    state: Mutex<AbortState>,
    notify: Notify,
}

#[derive(Debug, Default)]
struct AbortState {
    now: Option<Abort>,
    after_flush: Option<Abort>,
}

impl ConnControl {
    fn state(&self) -> std::sync::MutexGuard<'_, AbortState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Breaks the connection as soon as the connection task notices.
    pub(crate) fn abort_now(&self, abort: Abort) {
        self.state().now = Some(abort);
        self.notify.notify_one();
    }

    /// Breaks the connection once everything hyper has buffered so far reached the socket.
    /// Used to cut a body mid-stream: the events already handed to hyper must arrive first.
    pub(crate) fn abort_after_flush(&self, abort: Abort) {
        self.state().after_flush = Some(abort);
    }

    fn flushed(&self) {
        let pending = self.state().after_flush.take();
        if let Some(abort) = pending {
            self.abort_now(abort);
        }
    }

    fn requested(&self) -> Option<Abort> {
        self.state().now
    }

    /// Resolves once an abort was requested.
    pub(crate) async fn aborted(&self) {
        self.notify.notified().await;
    }
}

/// The connection's socket, as hyper sees it.
pub(crate) struct ConnIo {
    inner: TokioIo<TcpStream>,
    control: Arc<ConnControl>,
}

impl ConnIo {
    pub(crate) fn new(stream: TcpStream, control: Arc<ConnControl>) -> ConnIo {
        ConnIo {
            inner: TokioIo::new(stream),
            control,
        }
    }
}

impl Drop for ConnIo {
    fn drop(&mut self) {
        if self.control.requested() == Some(Abort::Reset) {
            // A zero linger makes close() send RST instead of FIN; with zero it never blocks,
            // which is why tokio's deprecation does not apply here. `set_zero_linger` would
            // need a newer tokio than the manifest promises.
            #[allow(deprecated)]
            let _ = self.inner.inner().set_linger(Some(Duration::ZERO));
        }
    }
}

impl Read for ConnIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl Write for ConnIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // hyper flushes its whole write buffer into the socket before flushing the socket, so
        // a successful flush means every byte handed to hyper before it has been sent.
        let res = Pin::new(&mut self.inner).poll_flush(cx);
        if let Poll::Ready(Ok(())) = res {
            self.control.flushed();
        }
        res
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
