//! [`Coalesce`]: what the upstream has already sent goes on as one frame.
//!
//! hyper's client hands a response body over one HTTP chunk at a time, through a channel
//! that holds a single chunk, from the connection's own task. An upstream that writes each
//! SSE event as its own chunk therefore costs, per event, a wake-up of each task, a pass
//! through every layer's body and one `write` to the client; nginx instead reads whatever is
//! readable and writes it in one go. `Coalesce` does the same within the rules of a poll:
//! when a chunk arrives and the next is not there yet, it yields to the runtime (the
//! connection task, woken by the chunk just taken, runs and hands over the next one) and
//! keeps collecting while the yields bring more. It forwards what it holds after two polls
//! in a row that bring nothing: hyper's server polls a pending body twice in one turn (once
//! more after flushing), so two empty polls mean the connection task has run and had nothing
//! more. A lone event therefore waits one turn of the scheduler, never a timer; and a frame
//! is bounded in bytes ([`COALESCE_MAX_BYTES`]) and in yields ([`COALESCE_MAX_YIELDS`]), so a
//! steady trickle cannot hold data back either.
//!
//! ```
//! use std::collections::VecDeque;
//! use std::pin::Pin;
//! use std::task::{Context, Poll};
//! use bytes::Bytes;
//! use http_body::{Body, Frame};
//! use http_body_util::BodyExt;
//! use tower_responses::body::Coalesce;
//!
//! /// Chunks that are all there already, as a socket's read buffer holds them.
//! struct Ready(VecDeque<&'static str>);
//! impl Body for Ready {
//!     type Data = Bytes;
//!     type Error = std::convert::Infallible;
//!     fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>)
//!         -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
//!         Poll::Ready(self.0.pop_front().map(|c| Ok(Frame::data(Bytes::from(c)))))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let chunks = ["event: a\n\n", "event: b\n\n", "event: c\n\n"];
//! let mut body = Coalesce::new(Ready(chunks.into()));
//! let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
//! assert_eq!(&frame[..], b"event: a\n\nevent: b\n\nevent: c\n\n");
//! assert!(body.frame().await.is_none());
//! # }
//! ```

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

/// The most bytes one coalesced frame collects before it is forwarded.
pub const COALESCE_MAX_BYTES: usize = 16 * 1024;

/// The most times one coalesced frame yields to the runtime waiting for more.
pub const COALESCE_MAX_YIELDS: u8 = 32;

pin_project! {
    /// A body that forwards data already sent together as one frame. See the
    /// [module docs](self).
    pub struct Coalesce<B: Body> {
        #[pin]
        inner: B,
        // The chunks of the frame being collected, as hyper handed them over: a lone one
        // goes on as it is, several are copied once into a buffer of exactly their size
        // (nothing is reserved ahead, and no capacity stays behind between frames).
        parts: Vec<Bytes>,
        // Their length together.
        held: usize,
        // What ended the collection (trailers, an error, the end), handed on next.
        after: Option<After<B::Error>>,
        // Polls in a row that brought nothing while data was held.
        idle: u8,
        yields: u8,
    }
}

enum After<E> {
    Trailers(Frame<Bytes>),
    Error(E),
    End,
}

impl<B: Body<Data = Bytes>> Coalesce<B> {
    /// Wraps `inner`.
    pub fn new(inner: B) -> Self {
        Coalesce {
            inner,
            parts: Vec::new(),
            held: 0,
            after: None,
            idle: 0,
            yields: 0,
        }
    }
}

/// The collected chunks as one: the lone chunk itself, or one copy of them all.
fn take(parts: &mut Vec<Bytes>, held: &mut usize, yields: &mut u8) -> Bytes {
    *yields = 0;
    let len = std::mem::take(held);
    if parts.len() == 1 {
        return parts.pop().unwrap_or_default();
    }
    let mut frame = BytesMut::with_capacity(len);
    for part in parts.drain(..) {
        frame.extend_from_slice(&part);
    }
    // A long list is not kept for the next frame: an open stream idles with a small one.
    if parts.capacity() > 16 {
        *parts = Vec::new();
    }
    frame.freeze()
}

impl<B: Body<Data = Bytes>> Body for Coalesce<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        if *this.held == 0 {
            match this.after.take() {
                Some(After::Trailers(t)) => return Poll::Ready(Some(Ok(t))),
                Some(After::Error(e)) => return Poll::Ready(Some(Err(e))),
                Some(After::End) => return Poll::Ready(None),
                None => {}
            }
        }
        let mut got = false;
        loop {
            let ended = match this.inner.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        if data.is_empty() {
                            continue;
                        }
                        got = true;
                        *this.idle = 0;
                        *this.held += data.len();
                        this.parts.push(data);
                        if *this.held >= COALESCE_MAX_BYTES {
                            let data = take(this.parts, this.held, this.yields);
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        continue;
                    }
                    Err(frame) => After::Trailers(frame),
                },
                Poll::Ready(Some(Err(e))) => After::Error(e),
                Poll::Ready(None) => After::End,
                Poll::Pending => {
                    if *this.held == 0 {
                        return Poll::Pending;
                    }
                    if !got {
                        *this.idle += 1;
                    }
                    if *this.idle < 2 && *this.yields < COALESCE_MAX_YIELDS {
                        // Let the connection task hand over what it has already read.
                        *this.yields += 1;
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    *this.idle = 0;
                    let data = take(this.parts, this.held, this.yields);
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
            };
            if *this.held == 0 {
                return Poll::Ready(match ended {
                    After::Trailers(t) => Some(Ok(t)),
                    After::Error(e) => Some(Err(e)),
                    After::End => None,
                });
            }
            *this.after = Some(ended);
            let data = take(this.parts, this.held, this.yields);
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held == 0
            && match &self.after {
                Some(After::End) => true,
                Some(_) => false,
                None => self.inner.is_end_stream(),
            }
    }

    fn size_hint(&self) -> SizeHint {
        let held = self.held as u64;
        if matches!(self.after, Some(After::End)) {
            return SizeHint::with_exact(held);
        }
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(held));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(held));
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::collections::VecDeque;

    type Item = Result<Frame<Bytes>, &'static str>;

    /// Answers from a script: `None` entries are `Pending` without a wake-up (the chunk is
    /// not there yet, and nothing will announce it), as hyper's channel behaves between
    /// chunks when the connection task has not run.
    struct Script(VecDeque<Option<Option<Item>>>);

    impl Body for Script {
        type Data = Bytes;
        type Error = &'static str;
        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Item>> {
            match self.0.pop_front() {
                Some(Some(item)) => Poll::Ready(item),
                Some(None) => Poll::Pending,
                None => Poll::Ready(None),
            }
        }
    }

    fn data(s: &str) -> Option<Option<Item>> {
        Some(Some(Ok(Frame::data(Bytes::from(s.to_owned())))))
    }

    const PENDING: Option<Option<Item>> = None;

    async fn frames(script: Vec<Option<Option<Item>>>) -> Vec<Result<Bytes, &'static str>> {
        let mut body = Coalesce::new(Script(script.into()));
        let mut out = Vec::new();
        let within = std::time::Duration::from_secs(5);
        while let Some(f) = tokio::time::timeout(within, body.frame())
            .await
            .expect("no frame is held waiting for more")
        {
            out.push(f.map(|f| f.into_data().unwrap_or_default()));
        }
        out
    }

    #[tokio::test]
    async fn chunks_handed_over_one_per_turn_go_on_together() {
        let got = frames(vec![
            data("a"),
            PENDING,
            data("b"),
            PENDING,
            data("c"),
            PENDING,
            PENDING,
            PENDING,
            data("d"),
        ])
        .await;
        assert_eq!(got, vec![Ok(Bytes::from("abc")), Ok(Bytes::from("d"))]);
    }

    #[tokio::test]
    async fn a_lone_chunk_goes_on_once_polls_bring_nothing() {
        // Pending for ever after it: a chunk alone must not wait for more.
        let mut script: Vec<_> = vec![data("event: a\n\n")];
        script.extend(std::iter::repeat_with(|| PENDING).take(1000));
        let mut body = Coalesce::new(Script(script.into()));
        let frame = tokio::time::timeout(std::time::Duration::from_secs(5), body.frame())
            .await
            .expect("a lone chunk is forwarded without waiting for more")
            .unwrap()
            .unwrap();
        assert_eq!(frame.into_data().unwrap(), "event: a\n\n");
    }

    #[tokio::test]
    async fn bounded_in_bytes_and_in_turns() {
        let big = "x".repeat(COALESCE_MAX_BYTES / 2 + 1);
        let got = frames((0..5).map(|_| data(&big)).collect()).await;
        let sizes: Vec<usize> = got.iter().map(|f| f.as_ref().unwrap().len()).collect();
        assert_eq!(sizes, vec![2 * big.len(), 2 * big.len(), big.len()]);

        // A trickle that brings one byte every turn still goes on after the yield bound.
        let mut script = Vec::new();
        for _ in 0..100 {
            script.push(data("y"));
            script.push(PENDING);
        }
        let got = frames(script).await;
        let max = usize::from(COALESCE_MAX_YIELDS) + 1;
        assert!(
            got.iter().all(|f| f.as_ref().unwrap().len() <= max),
            "{got:?}"
        );
        assert_eq!(
            got.iter().map(|f| f.as_ref().unwrap().len()).sum::<usize>(),
            100
        );
    }

    #[tokio::test]
    async fn nothing_is_held_between_frames() {
        // Forty small chunks at once, then a lone one: the frame is exactly what came, and
        // the stream keeps no buffer for the next frame while it waits (an open stream's
        // memory), unlike a reserved block that stayed behind.
        let mut script: Vec<_> = (0..40).map(|_| data("data: x\n\n")).collect();
        script.extend([PENDING, PENDING, PENDING, data("z")]);
        let mut body = Coalesce::new(Script(script.into()));
        let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(frame.len(), 40 * 9);
        assert_eq!((body.held, body.parts.capacity()), (0, 0));
        let lone = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(lone, "z");
        assert!(body.parts.capacity() <= 4, "{}", body.parts.capacity());
    }

    #[tokio::test]
    async fn an_error_after_data_comes_after_the_data() {
        let got = frames(vec![data("a"), data("b"), Some(Some(Err("cut")))]).await;
        assert_eq!(got, vec![Ok(Bytes::from("ab")), Err("cut")]);
    }

    #[tokio::test]
    async fn trailers_and_end_pass() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-t", http::HeaderValue::from_static("1"));
        let script = vec![data("a"), Some(Some(Ok(Frame::trailers(trailers))))];
        let body = Coalesce::new(Script(script.into()));
        assert!(!body.is_end_stream());
        let collected = body.collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["x-t"], "1");
        assert_eq!(collected.to_bytes(), "a");
    }
}
