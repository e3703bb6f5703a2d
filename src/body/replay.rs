use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// A whole request body that can be sent again: every clone starts from the first byte.
///
/// Layers that retry clone the request (see [`clone_request`](super::clone_request)); layers
/// that read or rewrite the body use [`bytes`](Self::bytes) and [`ReplayBody::new`].
#[derive(Debug, Default)]
pub struct ReplayBody {
    bytes: Bytes,
    sent: bool,
}

impl ReplayBody {
    /// A body of these bytes.
    pub fn new(bytes: impl Into<Bytes>) -> Self {
        ReplayBody {
            bytes: bytes.into(),
            sent: false,
        }
    }

    /// The whole body (even after it was sent).
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }
}

impl Clone for ReplayBody {
    fn clone(&self) -> Self {
        ReplayBody::new(self.bytes.clone())
    }
}

impl From<Bytes> for ReplayBody {
    fn from(b: Bytes) -> Self {
        ReplayBody::new(b)
    }
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sent || self.bytes.is_empty() {
            return Poll::Ready(None);
        }
        self.sent = true;
        Poll::Ready(Some(Ok(Frame::data(self.bytes.clone()))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent || self.bytes.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        if self.sent {
            SizeHint::with_exact(0)
        } else {
            SizeHint::with_exact(self.bytes.len() as u64)
        }
    }
}
