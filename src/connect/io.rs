use std::cell::RefCell;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::rt::TokioIo;
use pin_project_lite::pin_project;

use super::ConnTag;
use super::rechunk::{Fed, Malformed, Rechunk};

/// The most a worker thread keeps of its re-framing buffer between reads (hyper's reads grow
/// with a fast upstream, up to its own buffer limit of some 400 KiB).
const OUT_KEEP: usize = 64 * 1024;

thread_local! {
    /// A worker thread's buffer for re-framing what a read brought; a connection holds
    /// none of its own between reads.
    static OUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

pin_project! {
    /// A connection's IO with its [`ConnTag`]; counts requests as HTTP/1 turns (a write that
    /// follows a read starts a new request) and records activity.
    ///
    /// It also hands hyper each read's chunks of a chunked body as one chunk (see
    /// `connect::rechunk`), so an upstream that writes every event as its own chunk costs
    /// hyper one chunk per read rather than one per event.
    #[derive(Debug)]
    pub struct Tagged<T> {
        #[pin]
        inner: T,
        tag: ConnTag,
        // Whether the last bytes moved were written; the next write after a read is a new request.
        writing: bool,
        rechunk: Rechunk,
        // Re-framed bytes hyper had no room for in the last read.
        pending: Vec<u8>,
    }
}

impl<T> Tagged<T> {
    pub(crate) fn new(inner: T, tag: ConnTag) -> Self {
        Tagged {
            inner,
            tag,
            writing: false,
            rechunk: Rechunk::default(),
            pending: Vec::new(),
        }
    }

    /// The connection's tag.
    pub fn tag(&self) -> &ConnTag {
        &self.tag
    }

    /// The wrapped IO.
    pub fn inner_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: Read> Read for Tagged<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let res = read(this.inner, this.rechunk, this.pending, cx, buf);
        // hyper's cursor cannot be inspected after the call, so any completed read counts as
        // activity; an EOF read is the connection's end and is never followed by a request.
        if let Poll::Ready(Ok(())) = res {
            *this.writing = false;
            this.tag.touch();
        }
        res
    }
}

impl<T: Write> Write for Tagged<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let res = this.inner.poll_write(cx, data);
        after_write(this.writing, this.tag, this.rechunk, data, &res);
        res
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let res = this.inner.poll_write_vectored(cx, bufs);
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &b[..]);
        after_write(this.writing, this.tag, this.rechunk, first, &res);
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

/// Reads through `rechunk`: what hyper gets is what it re-framed from the connection's bytes.
///
/// The connection is read straight into hyper's buffer, and what needs no re-framing (a
/// head, a fixed-length body, a chunked body's bytes left as they are) stays there: only a
/// re-framed read is copied, from the output buffer it was re-framed into. hyper's cursor
/// cannot be looked into after a read, so the read goes through `TokioIo`'s view of it as a
/// tokio `ReadBuf`, which can.
fn read<T: Read>(
    inner: Pin<&mut T>,
    rechunk: &mut Rechunk,
    pending: &mut Vec<u8>,
    cx: &mut Context<'_>,
    buf: ReadBufCursor<'_>,
) -> Poll<std::io::Result<()>> {
    let mut follow = TokioIo::new(Follow {
        inner: TokioIo::new(inner),
        rechunk,
        pending,
    });
    Pin::new(&mut follow).poll_read(cx, buf)
}

/// The connection as tokio reads it, re-framed on the way: see [`read`].
struct Follow<'a, T> {
    inner: TokioIo<Pin<&'a mut T>>,
    rechunk: &'a mut Rechunk,
    pending: &'a mut Vec<u8>,
}

impl<T: Read> tokio::io::AsyncRead for Follow<'_, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let (rechunk, pending) = (&mut *this.rechunk, &mut *this.pending);
        let mut inner = Pin::new(&mut this.inner);
        if !pending.is_empty() {
            let n = pending.len().min(buf.remaining());
            buf.put_slice(&pending[..n]);
            pending.drain(..n);
            return Poll::Ready(Ok(()));
        }
        if rechunk.is_broken() {
            return Poll::Ready(Err(Malformed.into()));
        }
        if rechunk.is_off() || buf.remaining() == 0 {
            return inner.poll_read(cx, buf);
        }
        let start = buf.filled().len();
        loop {
            ready!(inner.as_mut().poll_read(cx, buf))?;
            if buf.filled().len() == start {
                return Poll::Ready(Ok(()));
            }
            let kept = OUT.with(|cell| match cell.try_borrow_mut() {
                Ok(mut out) => refeed(rechunk, pending, buf, start, &mut out),
                Err(_) => refeed(rechunk, pending, buf, start, &mut Vec::new()),
            });
            if kept {
                return Poll::Ready(Ok(()));
            }
            if rechunk.is_broken() {
                return Poll::Ready(Err(Malformed.into()));
            }
            // Only framing was read (a size line, a CRLF): hyper has nothing to read yet.
        }
    }
}

/// Re-frames what a read put in `buf` from `start` on, leaving there what hyper should read
/// (the rest in `pending`); whether that is anything.
fn refeed(
    rechunk: &mut Rechunk,
    pending: &mut Vec<u8>,
    buf: &mut tokio::io::ReadBuf<'_>,
    start: usize,
    out: &mut Vec<u8>,
) -> bool {
    out.clear();
    match rechunk.feed(&buf.filled()[start..], out) {
        Fed::Prefix(n) => buf.set_filled(start + n),
        Fed::Written => {
            // A re-framed read is at most twelve bytes longer than what was read (a chunk's
            // size line and CRLF around data that came without them): those wait in
            // `pending` when hyper's buffer was full.
            buf.set_filled(start);
            let n = out.len().min(buf.remaining());
            buf.put_slice(&out[..n]);
            pending.extend_from_slice(&out[n..]);
        }
    }
    if out.capacity() > OUT_KEEP {
        *out = Vec::new();
    }
    // A broken body fails on the next read, after the data before the fault.
    buf.filled().len() > start
}

fn after_write(
    writing: &mut bool,
    tag: &ConnTag,
    rechunk: &mut Rechunk,
    first: &[u8],
    res: &Poll<std::io::Result<usize>>,
) {
    match res {
        Poll::Ready(Ok(n)) => {
            if *n > 0 && !*writing {
                rechunk.request(first);
            }
            wrote(writing, tag, *n)
        }
        // A request whose first write fails (a pooled connection the server already reset)
        // still counts as a use: otherwise a reused connection that broke on write would look
        // like a fresh one, and the fresh-connection layer could not tell it was stale.
        Poll::Ready(Err(_)) if !*writing => {
            *writing = true;
            tag.begin_use();
        }
        _ => {}
    }
}

fn wrote(writing: &mut bool, tag: &ConnTag, n: usize) {
    if n == 0 {
        return;
    }
    tag.wrote();
    if *writing {
        tag.touch();
    } else {
        *writing = true;
        tag.begin_use();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IO whose reads succeed empty and whose writes succeed until told to fail.
    struct Flaky {
        fail_writes: bool,
    }

    impl Read for Flaky {
        fn poll_read(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            _buf: ReadBufCursor<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl Write for Flaky {
        fn poll_write(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            if self.fail_writes {
                Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()))
            } else {
                Poll::Ready(Ok(data.len()))
            }
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn a_reused_connection_that_breaks_on_write_still_counts_as_reused() {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut io = Tagged::new(Flaky { fail_writes: false }, ConnTag::new(1));
        assert!(
            Pin::new(&mut io)
                .poll_write(&mut cx, b"GET / HTTP/1.1\r\n\r\n")
                .is_ready()
        );
        let mut storage = [0u8; 8];
        let mut buf = hyper::rt::ReadBuf::new(&mut storage);
        assert!(
            Pin::new(&mut io)
                .poll_read(&mut cx, buf.unfilled())
                .is_ready()
        );
        assert_eq!(io.tag().uses(), 1);

        io.inner.fail_writes = true;
        let res = Pin::new(&mut io).poll_write(&mut cx, b"GET / HTTP/1.1\r\n\r\n");
        assert!(matches!(res, Poll::Ready(Err(_))));
        assert!(io.tag().is_reused());
        // hyper may try the same request's write again: still one request.
        let _ = Pin::new(&mut io).poll_write(&mut cx, b"x");
        assert_eq!(io.tag().uses(), 2);
    }
}
