use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use super::{ResponseBody, full_body};
use crate::error::BoxError;

/// What follows a prefix read by [`read_prefix`]: nothing (the body ended), the rest of the
/// body, or the error that stopped the read.
pub type Rest = Option<Result<ResponseBody, BoxError>>;

/// Reads a response body until it ends or more than `limit` bytes have arrived. Layers that
/// must look at an answer before deciding (classify an error, learn from a 400) read this
/// much and then hand the answer on whole with [`prefixed`].
pub async fn read_prefix(mut body: ResponseBody, limit: usize) -> (Bytes, Rest) {
    let mut buf = BytesMut::new();
    loop {
        match body.frame().await {
            None => return (buf.freeze(), None),
            Some(Err(e)) => return (buf.freeze(), Some(Err(e))),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                    if buf.len() > limit {
                        return (buf.freeze(), Some(Ok(body)));
                    }
                }
            }
        }
    }
}

/// How long a layer waits for an error body it peeks at: an error answer is small and
/// arrives at once, so a body that stalls is answered with what came.
pub const DEFAULT_PEEK_TIMEOUT: Duration = Duration::from_secs(10);

/// What [`read_prefix_within`] read.
pub struct Peek {
    /// The bytes read.
    pub prefix: Bytes,
    /// What follows them (as [`read_prefix`] returns it).
    pub rest: Rest,
    /// `true` when the time bound ended the read: `rest` is the body still to come, which
    /// may never come.
    pub stalled: bool,
}

impl Peek {
    /// The body of an error answer: all of it, or, when it stalled, what was read (the
    /// client is answered now instead of waiting on an upstream that sends nothing).
    pub fn into_error_body(self) -> ResponseBody {
        if self.stalled {
            full_body(self.prefix)
        } else {
            prefixed(self.prefix, self.rest)
        }
    }

    /// The error answer again, from its head and [`into_error_body`](Self::into_error_body);
    /// a stalled body's `Content-Length` is dropped, since what was read is shorter.
    pub fn into_error_response(
        self,
        mut parts: http::response::Parts,
    ) -> http::Response<ResponseBody> {
        if self.stalled {
            parts.headers.remove(http::header::CONTENT_LENGTH);
        }
        http::Response::from_parts(parts, self.into_error_body())
    }
}

/// [`read_prefix`] bounded in time: after `within`, it stops with what it has and
/// [`Peek::stalled`] set.
pub async fn read_prefix_within(mut body: ResponseBody, limit: usize, within: Duration) -> Peek {
    let mut buf = BytesMut::new();
    // The read borrows the body, so a stalled read can still hand it on.
    let read = async {
        loop {
            match body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(e),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        buf.extend_from_slice(&data);
                        if buf.len() > limit {
                            return Ok(Some(()));
                        }
                    }
                }
            }
        }
    };
    let outcome = tokio::time::timeout(within, read).await;
    let prefix = buf.freeze();
    match outcome {
        Ok(Ok(None)) => Peek {
            prefix,
            rest: None,
            stalled: false,
        },
        Ok(Ok(Some(()))) => Peek {
            prefix,
            rest: Some(Ok(body)),
            stalled: false,
        },
        Ok(Err(e)) => Peek {
            prefix,
            rest: Some(Err(e)),
            stalled: false,
        },
        Err(_) => Peek {
            prefix,
            rest: Some(Ok(body)),
            stalled: true,
        },
    }
}

/// The body again: `prefix`, then the rest (or its error), as the client would have had it.
pub fn prefixed(prefix: Bytes, rest: Rest) -> ResponseBody {
    match rest {
        None => full_body(prefix),
        Some(rest) => Prefixed {
            prefix: (!prefix.is_empty()).then_some(prefix),
            rest: Some(rest),
        }
        .boxed_unsync(),
    }
}

struct Prefixed {
    prefix: Option<Bytes>,
    rest: Rest,
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(p) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        match &mut self.rest {
            None => Poll::Ready(None),
            Some(Ok(body)) => Pin::new(body).poll_frame(cx),
            Some(Err(_)) => match self.rest.take() {
                Some(Err(e)) => Poll::Ready(Some(Err(e))),
                _ => Poll::Ready(None),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none()
            && match &self.rest {
                None => true,
                Some(Ok(b)) => b.is_end_stream(),
                Some(Err(_)) => false,
            }
    }

    fn size_hint(&self) -> SizeHint {
        let p = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        let hint = match &self.rest {
            Some(Ok(b)) => b.size_hint(),
            _ => SizeHint::with_exact(0),
        };
        // The upper bound first: raising the lower one past an exact upper one panics (a
        // prefix before an error, whose hint is exactly 0, did: found by the chaos soak).
        let mut out = SizeHint::new();
        if let Some(upper) = hint.upper() {
            out.set_upper(upper.saturating_add(p));
        }
        out.set_lower(hint.lower().saturating_add(p));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_prefix_and_its_rest_read_as_the_whole_body() {
        let body = full_body(Bytes::from_static(b"0123456789"));
        let (prefix, rest) = read_prefix(body, 3).await;
        assert!(prefix.len() > 3 || rest.is_none());
        let whole = prefixed(prefix, rest).collect().await.unwrap().to_bytes();
        assert_eq!(&whole[..], b"0123456789");
        let (prefix, rest) = read_prefix(full_body(Bytes::from_static(b"ab")), 10).await;
        assert!(rest.is_none(), "ended within the limit");
        assert_eq!(&prefix[..], b"ab");
    }

    #[test]
    fn a_prefix_before_an_error_hints_its_length_without_panicking() {
        let body = prefixed(Bytes::from_static(b"{\"id\":1}"), Some(Err("cut".into())));
        let hint = body.size_hint();
        assert_eq!(hint.lower(), 8);
        assert_eq!(hint.upper(), Some(8));
        let sized = prefixed(
            Bytes::from_static(b"ab"),
            Some(Ok(full_body(Bytes::from_static(b"cde")))),
        );
        assert_eq!(sized.size_hint().exact(), Some(5));
    }
}
