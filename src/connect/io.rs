use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::rt::{Read, ReadBufCursor, Write};
use pin_project_lite::pin_project;

use super::ConnTag;

pin_project! {
    /// A connection's IO with its [`ConnTag`]; counts requests as HTTP/1 turns (a write that
    /// follows a read starts a new request) and records activity.
    #[derive(Debug)]
    pub struct Tagged<T> {
        #[pin]
        inner: T,
        tag: ConnTag,
        // Whether the last bytes moved were written; the next write after a read is a new request.
        writing: bool,
    }
}

impl<T> Tagged<T> {
    pub(crate) fn new(inner: T, tag: ConnTag) -> Self {
        Tagged {
            inner,
            tag,
            writing: false,
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
        let res = this.inner.poll_read(cx, buf);
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
        after_write(this.writing, this.tag, &res);
        res
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let res = this.inner.poll_write_vectored(cx, bufs);
        after_write(this.writing, this.tag, &res);
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

fn after_write(writing: &mut bool, tag: &ConnTag, res: &Poll<std::io::Result<usize>>) {
    match res {
        Poll::Ready(Ok(n)) => wrote(writing, tag, *n),
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
