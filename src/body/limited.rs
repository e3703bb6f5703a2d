use bytes::{Buf, Bytes, BytesMut};
use http_body::Body;
use http_body_util::BodyExt;

use super::BodyError;
use crate::error::BoxError;

/// Collects a body, failing with [`BodyError::TooLarge`] as soon as it passes `limit` bytes.
///
/// A declared length over the limit fails before reading anything; an endless body fails
/// after `limit` bytes plus one frame. A body that arrives as one frame is returned without
/// a copy.
pub async fn collect_limited<B>(body: B, limit: usize) -> Result<Bytes, BodyError>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    if body.size_hint().lower() > limit as u64 {
        return Err(BodyError::TooLarge { limit });
    }
    let mut body = std::pin::pin!(body);
    let mut first: Option<Bytes> = None;
    let mut rest: Option<BytesMut> = None;
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read(e.into()))?;
        let Ok(mut data) = frame.into_data() else {
            continue; // trailers
        };
        let chunk = data.copy_to_bytes(data.remaining());
        total = total.saturating_add(chunk.len());
        if total > limit {
            return Err(BodyError::TooLarge { limit });
        }
        if chunk.is_empty() {
            continue;
        }
        match (&mut first, &mut rest) {
            (None, _) => first = Some(chunk),
            (Some(f), None) => {
                let mut buf = BytesMut::with_capacity((f.len() + chunk.len()).max(8 * 1024));
                buf.extend_from_slice(f);
                buf.extend_from_slice(&chunk);
                rest = Some(buf);
            }
            (Some(_), Some(buf)) => buf.extend_from_slice(&chunk),
        }
    }
    Ok(match (first, rest) {
        (_, Some(buf)) => buf.freeze(),
        (Some(f), None) => f,
        (None, None) => Bytes::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    struct Chunks {
        chunk: usize,
        left: Option<usize>,
        hint: Option<u64>,
    }

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            if let Some(left) = &mut self.left {
                if *left == 0 {
                    return Poll::Ready(None);
                }
                *left -= 1;
            }
            Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from(
                vec![b'a'; self.chunk],
            )))))
        }
        fn size_hint(&self) -> http_body::SizeHint {
            self.hint.map_or_else(
                http_body::SizeHint::default,
                http_body::SizeHint::with_exact,
            )
        }
    }

    #[tokio::test]
    async fn joins_chunks_under_the_limit() {
        let b = collect_limited(
            Chunks {
                chunk: 10,
                left: Some(3),
                hint: None,
            },
            30,
        )
        .await
        .unwrap();
        assert_eq!(b.len(), 30);
    }

    #[tokio::test]
    async fn an_endless_body_stops_at_the_limit() {
        let err = collect_limited(
            Chunks {
                chunk: 4096,
                left: None,
                hint: None,
            },
            100_000,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, BodyError::TooLarge { limit: 100_000 }));
    }

    #[tokio::test]
    async fn a_declared_length_over_the_limit_fails_before_reading() {
        // `left: Some(0)` yields nothing, so only the size hint can fail it.
        let err = collect_limited(
            Chunks {
                chunk: 1,
                left: Some(0),
                hint: Some(1 << 30),
            },
            1024,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, BodyError::TooLarge { .. }));
    }

    #[tokio::test]
    async fn one_chunk_is_not_copied() {
        let data = Bytes::from(vec![7u8; 1000]);
        let ptr = data.as_ptr();
        let out = collect_limited(http_body_util::Full::new(data), 1000)
            .await
            .unwrap();
        assert_eq!(out.as_ptr(), ptr);
    }
}
