use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep, sleep};

use crate::error::BoxError;

/// The body stayed silent longer than its idle timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdleTimeout(pub Duration);

impl std::fmt::Display for IdleTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "body sent nothing for {:?}", self.0)
    }
}

impl std::error::Error for IdleTimeout {}

pin_project! {
    /// A response body that fails with [`IdleTimeout`] when no frame arrives for a while, so
    /// an upstream that stalls cannot hold a client (and its memory) forever.
    pub struct IdleTimeoutBody<B> {
        #[pin]
        inner: B,
        #[pin]
        sleep: Sleep,
        idle: Duration,
        // When the last frame arrived. The timer is moved to `last + idle` only when it
        // fires, so a busy stream reads the clock per frame but never touches the timer.
        last: Instant,
        // The waker the timer holds. Polling the timer again for the same task would only
        // register it again; an inner body that is pending ~60 times a stream makes that count.
        registered: Option<Waker>,
    }
}

impl<B> IdleTimeoutBody<B> {
    /// Wraps `inner`; the clock starts now and restarts on every frame.
    pub fn new(inner: B, idle: Duration) -> Self {
        IdleTimeoutBody {
            inner,
            sleep: sleep(idle),
            idle,
            last: Instant::now(),
            registered: None,
        }
    }
}

impl<B> Body for IdleTimeoutBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            *this.last = Instant::now();
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        loop {
            let same_task = this
                .registered
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()));
            if same_task && !this.sleep.is_elapsed() {
                return Poll::Pending;
            }
            if this.sleep.as_mut().poll(cx).is_pending() {
                *this.registered = Some(cx.waker().clone());
                return Poll::Pending;
            }
            *this.registered = None;
            let deadline = *this.last + *this.idle;
            if deadline <= Instant::now() {
                return Poll::Ready(Some(Err(Box::new(IdleTimeout(*this.idle)))));
            }
            // Frames came since the timer was set: wait out the rest from the last one.
            this.sleep.as_mut().reset(deadline);
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use tokio::sync::mpsc;

    /// A body fed by a channel: a frame per message, silence while the sender waits.
    struct Fed(mpsc::Receiver<Bytes>);

    impl Body for Fed {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0.poll_recv(cx).map(|m| m.map(|b| Ok(Frame::data(b))))
        }
    }

    #[tokio::test]
    async fn counts_silence_from_the_last_frame_not_from_the_start() {
        let idle = Duration::from_millis(300);
        let (tx, rx) = mpsc::channel(1);
        let mut body = std::pin::pin!(IdleTimeoutBody::new(Fed(rx), idle));
        // Eight frames 60 ms apart: 480 ms in all, longer than the idle bound, never silent
        // for long. The sender then stays open and silent.
        let feeder = tokio::spawn(async move {
            for i in 0..8u8 {
                tokio::time::sleep(Duration::from_millis(60)).await;
                tx.send(Bytes::from(vec![i])).await.unwrap();
            }
            tx
        });
        let mut got = Vec::new();
        let err = loop {
            match body.frame().await {
                Some(Ok(f)) => got.extend_from_slice(&f.into_data().unwrap()),
                Some(Err(e)) => break e,
                None => panic!("the body ended instead of timing out"),
            }
        };
        assert_eq!(got, (0..8).collect::<Vec<u8>>(), "every frame arrived");
        assert_eq!(err.downcast_ref::<IdleTimeout>(), Some(&IdleTimeout(idle)));
        drop(feeder.await.unwrap());
    }
}
