//! Reading the start of a suspect answer without losing any of it.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame};
use http_body_util::BodyExt;

use crate::body::ResponseBody;
use crate::error::BoxError;

/// What reading the start of a body found.
pub(crate) struct Peeked {
    /// The frames read, in order, to be replayed.
    frames: VecDeque<Frame<Bytes>>,
    /// The data of those frames, at most `limit` bytes of it.
    pub(crate) prefix: BytesMut,
    pub(crate) end: PeekEnd,
}

/// How peeking stopped.
pub(crate) enum PeekEnd {
    /// The body ended: the prefix is all of it.
    Complete,
    /// The limit was reached, or the body stalled past the timeout; more may follow.
    More,
    /// The body failed.
    Failed(BoxError),
}

/// Reads frames until `limit` data bytes, the body's end, an error, or `timeout`.
pub(crate) async fn peek(body: &mut ResponseBody, limit: usize, timeout: Duration) -> Peeked {
    let mut frames = VecDeque::new();
    let mut prefix = BytesMut::new();
    let deadline = tokio::time::Instant::now() + timeout;
    let end = loop {
        if prefix.len() >= limit {
            break PeekEnd::More;
        }
        match tokio::time::timeout_at(deadline, body.frame()).await {
            // Dropping a pending `frame()` loses nothing: frames are only taken when ready.
            Err(_elapsed) => break PeekEnd::More,
            Ok(None) => break PeekEnd::Complete,
            Ok(Some(Err(e))) => break PeekEnd::Failed(e),
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let room = limit.saturating_sub(prefix.len());
                    prefix.extend_from_slice(&data[..data.len().min(room)]);
                }
                frames.push_back(frame);
            }
        }
    };
    Peeked {
        frames,
        prefix,
        end,
    }
}

impl Peeked {
    /// The whole body again: the frames read, then the error or the unread rest.
    pub(crate) fn replay(self, rest: ResponseBody) -> ResponseBody {
        let (error, rest) = match self.end {
            PeekEnd::Complete => (None, None),
            PeekEnd::More => (None, Some(rest)),
            PeekEnd::Failed(e) => (Some(e), None),
        };
        Replayed {
            frames: self.frames,
            error,
            rest,
        }
        .boxed_unsync()
    }
}

struct Replayed {
    frames: VecDeque<Frame<Bytes>>,
    error: Option<BoxError>,
    rest: Option<ResponseBody>,
}

impl Body for Replayed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(frame) = self.frames.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if let Some(e) = self.error.take() {
            return Poll::Ready(Some(Err(e)));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
            && self.error.is_none()
            && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static str]) -> ResponseBody {
        Replayed {
            frames: parts
                .iter()
                .map(|p| Frame::data(Bytes::from_static(p.as_bytes())))
                .collect(),
            error: None,
            rest: None,
        }
        .boxed_unsync()
    }

    async fn all(body: ResponseBody) -> Bytes {
        body.collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn a_body_cut_at_the_limit_replays_whole() {
        let mut body = chunks(&["ab", "cd", "ef"]);
        let peeked = peek(&mut body, 3, Duration::from_secs(5)).await;
        assert_eq!(&peeked.prefix[..], b"abc");
        assert!(matches!(peeked.end, PeekEnd::More));
        assert_eq!(&all(peeked.replay(body)).await[..], b"abcdef");
    }

    #[tokio::test]
    async fn a_short_body_is_read_to_its_end() {
        let mut body = chunks(&["ab", "cd"]);
        let peeked = peek(&mut body, 100, Duration::from_secs(5)).await;
        assert_eq!(&peeked.prefix[..], b"abcd");
        assert!(matches!(peeked.end, PeekEnd::Complete));
        let replayed = peeked.replay(body);
        assert!(!replayed.is_end_stream());
        assert_eq!(&all(replayed).await[..], b"abcd");
    }
}
