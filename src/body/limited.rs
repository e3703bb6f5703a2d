//! Collecting a body into [`Bytes`] without ever holding more than a limit.

use bytes::{Buf, Bytes};
use http_body::Body;
use http_body_util::BodyExt;

use super::BodyError;
use crate::error::BoxError;

/// Collects a body's data frames into one [`Bytes`], failing once it exceeds `limit` bytes.
///
/// The body is rejected before it is polled when its `size_hint().lower()` (for hyper, the
/// `Content-Length`) is already above the limit, and otherwise as soon as the running total
/// passes it: an endless body stops there, and at most `limit` bytes are ever kept. A body that
/// arrives as a single chunk is returned without a copy. Trailers are ignored.
///
/// # Errors
///
/// [`BodyError::TooLarge`] over the limit, [`BodyError::Read`] when the body fails.
pub async fn collect_limited<B>(body: B, limit: usize) -> Result<Bytes, BodyError>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let hint = body.size_hint();
    if hint.lower() > limit as u64 {
        return Err(BodyError::TooLarge { limit });
    }
    // Only a hint, so it is clamped: a lying body must not make us allocate past the limit.
    let expected = usize::try_from(hint.lower()).unwrap_or(limit).min(limit);

    let mut body = std::pin::pin!(body);
    let mut first: Option<Bytes> = None;
    let mut rest: Option<Vec<u8>> = None;
    let mut total = 0usize;

    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read(e.into()))?;
        let Ok(mut data) = frame.into_data() else {
            continue;
        };
        let len = data.remaining();
        if len == 0 {
            continue;
        }
        total = total.saturating_add(len);
        if total > limit {
            return Err(BodyError::TooLarge { limit });
        }
        if let Some(buf) = rest.as_mut() {
            reserve_bounded(buf, len, limit);
            put(buf, data);
        } else if let Some(head) = first.take() {
            let mut buf = Vec::with_capacity(expected.max(total));
            buf.extend_from_slice(&head);
            put(&mut buf, data);
            rest = Some(buf);
        } else {
            // For `Bytes` data (hyper, `Full`) this takes the chunk without copying it.
            first = Some(data.copy_to_bytes(len));
        }
    }

    Ok(match (rest, first) {
        (Some(buf), _) => Bytes::from(buf),
        (None, Some(head)) => head,
        (None, None) => Bytes::new(),
    })
}

/// Grows `buf` for `additional` more bytes, doubling but never past `limit`, so a body just
/// under the limit does not leave a buffer of twice its size.
fn reserve_bounded(buf: &mut Vec<u8>, additional: usize, limit: usize) {
    let needed = buf.len() + additional;
    if needed <= buf.capacity() {
        return;
    }
    let target = buf
        .capacity()
        .saturating_mul(2)
        .max(needed)
        .min(limit.max(needed));
    buf.reserve_exact(target - buf.len());
}

fn put(buf: &mut Vec<u8>, mut data: impl Buf) {
    while data.has_remaining() {
        let chunk = data.chunk();
        let n = chunk.len();
        buf.extend_from_slice(chunk);
        data.advance(n);
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};

    use http_body::{Frame, SizeHint};
    use http_body_util::Full;

    use super::*;

    /// Yields `chunk`-sized frames forever, counting the bytes handed out.
    struct Endless {
        chunk: Bytes,
        served: Arc<AtomicUsize>,
    }

    impl Body for Endless {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            self.served.fetch_add(self.chunk.len(), Ordering::Relaxed);
            Poll::Ready(Some(Ok(Frame::data(self.chunk.clone()))))
        }
    }

    /// Declares a length but must never be polled.
    struct Declared(u64);

    impl Body for Declared {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            panic!("a body declaring more than the limit was polled")
        }

        fn size_hint(&self) -> SizeHint {
            SizeHint::with_exact(self.0)
        }
    }

    /// A body made of the given frames (data or trailers) and errors, in order.
    struct Frames(std::collections::VecDeque<Result<Frame<Bytes>, std::io::Error>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            Poll::Ready(self.0.pop_front())
        }
    }

    fn frames(items: Vec<Result<Frame<Bytes>, std::io::Error>>) -> Frames {
        Frames(items.into())
    }

    #[tokio::test]
    async fn single_chunk_is_not_copied() {
        let data = Bytes::from(vec![7u8; 1000]);
        let out = collect_limited(Full::new(data.clone()), 1000)
            .await
            .unwrap();
        assert_eq!(out, data);
        assert_eq!(out.as_ptr(), data.as_ptr());
    }

    #[tokio::test]
    async fn chunks_are_joined_and_trailers_ignored() {
        let body = frames(vec![
            Ok(Frame::data(Bytes::from_static(b"hello "))),
            Ok(Frame::data(Bytes::new())),
            Ok(Frame::data(Bytes::from_static(b"world"))),
            Ok(Frame::trailers(http::HeaderMap::new())),
        ]);
        assert_eq!(collect_limited(body, 11).await.unwrap(), "hello world");
    }

    #[tokio::test]
    async fn over_limit_plain_body_is_too_large() {
        let body = Full::new(Bytes::from(vec![0u8; 101]));
        let err = collect_limited(body, 100).await.unwrap_err();
        assert!(matches!(err, BodyError::TooLarge { limit: 100 }));
        // Exactly at the limit is fine.
        assert_eq!(
            collect_limited(Full::new(Bytes::from(vec![0u8; 100])), 100)
                .await
                .unwrap()
                .len(),
            100
        );
    }

    #[tokio::test]
    async fn endless_body_stops_at_the_limit() {
        let served = Arc::new(AtomicUsize::new(0));
        let body = Endless {
            chunk: Bytes::from(vec![b'x'; 16 * 1024]),
            served: served.clone(),
        };
        let limit = 1024 * 1024;
        let err = collect_limited(body, limit).await.unwrap_err();
        assert!(matches!(err, BodyError::TooLarge { .. }));
        assert!(served.load(Ordering::Relaxed) <= limit + 16 * 1024);
    }

    #[tokio::test]
    async fn declared_length_over_limit_fails_without_polling() {
        let err = collect_limited(Declared(10 * 1024 * 1024), 1024 * 1024)
            .await
            .unwrap_err();
        assert!(matches!(err, BodyError::TooLarge { limit: 1048576 }));
    }

    #[tokio::test]
    async fn body_error_is_a_read_error() {
        let body = frames(vec![
            Ok(Frame::data(Bytes::from_static(b"{\"model\""))),
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "client went away",
            )),
        ]);
        let err = collect_limited(body, 1024).await.unwrap_err();
        match err {
            BodyError::Read(e) => assert!(e.to_string().contains("client went away")),
            other => panic!("expected Read, got {other:?}"),
        }
    }

    #[test]
    fn growth_never_passes_the_limit() {
        let mut buf = Vec::with_capacity(600);
        buf.extend_from_slice(&[0; 600]);
        reserve_bounded(&mut buf, 300, 1000);
        assert!(
            buf.capacity() >= 900 && buf.capacity() <= 1000,
            "{}",
            buf.capacity()
        );
    }
}
