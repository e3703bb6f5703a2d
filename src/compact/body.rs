//! Reading a bounded prefix of a response body and putting it back in front.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::body::ResponseBody;
use crate::error::BoxError;

/// Bytes already read from a body, then the rest of it.
pub(crate) struct Prefixed {
    prefix: Option<Bytes>,
    rest: Option<ResponseBody>,
}

impl Prefixed {
    pub(crate) fn body(prefix: Bytes, rest: Option<ResponseBody>) -> ResponseBody {
        Prefixed {
            prefix: (!prefix.is_empty()).then_some(prefix),
            rest,
        }
        .boxed_unsync()
    }
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
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let p = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        let mut hint = self
            .rest
            .as_ref()
            .map_or(SizeHint::with_exact(0), |r| r.size_hint());
        hint.set_lower(hint.lower() + p);
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + p);
        }
        hint
    }
}

/// Reads at least `limit` bytes (or to the end); returns them and, if the body goes on, the
/// rest. A read error ends the prefix and drops the rest.
pub(crate) async fn read_prefix(
    mut body: ResponseBody,
    limit: usize,
) -> (Bytes, Option<ResponseBody>) {
    let mut buf = BytesMut::new();
    while buf.len() < limit {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
            }
            Some(Err(_)) | None => return (buf.freeze(), None),
        }
    }
    (buf.freeze(), Some(body))
}
