//! Upstream connections that know their own history.
//!
//! [`TaggingConnector`] wraps any hyper-util connector (plain TCP, or rustls through
//! hyper-rustls) and gives every connection a [`ConnTag`]: an id, when it was opened, how many
//! requests it has carried, and how long it sat idle before the request it carries now. The
//! tag travels in the connection's `Connected` metadata, so hyper-util copies it into every
//! response's extensions, and `capture_connection` shows it even when a request fails before
//! any response. The fresh-connection layer decides from it whether a failure came from a
//! stale pooled connection; client services hand it (or what they know instead) up in a
//! [`ConnectionReport`].
//!
//! The same IO hands hyper the chunks of a chunked body that one read brought as one chunk
//! (`rechunk`), so an upstream that writes every SSE event as its own chunk costs hyper one
//! chunk per read, as nginx forwards per read, instead of a decode and a hand-over per event.
//!
//! ```
//! use tower_responses::connect::{ConnTag, TaggingConnector};
//! use hyper_util::client::legacy::{Client, connect::HttpConnector};
//! use hyper_util::rt::TokioExecutor;
//! use http_body_util::Full;
//! use bytes::Bytes;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! let addr = listener.local_addr().unwrap();
//! tokio::spawn(async move {
//!     let (mut sock, _) = listener.accept().await.unwrap();
//!     use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!     let mut buf = [0u8; 1024];
//!     let _ = sock.read(&mut buf).await.unwrap();
//!     sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
//! });
//! let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
//!     .build(TaggingConnector::new(HttpConnector::new()));
//! let res = client.get(format!("http://{addr}/").parse().unwrap()).await.unwrap();
//! let tag = res.extensions().get::<ConnTag>().expect("tagged");
//! assert_eq!(tag.uses(), 1);
//! assert!(!tag.is_reused());
//! # }
//! ```

mod client;
mod io;
pub(crate) mod rechunk;
mod report;
#[cfg(feature = "reqwest")]
mod reqwest;
mod service;
mod tag;

#[cfg(feature = "reqwest")]
pub use self::reqwest::ReqwestService;
pub use client::{UpstreamClientBuilder, UpstreamConnector};
pub use io::Tagged;
pub use report::{ConnectionInfo, ConnectionReport, NewConnection};
pub use service::ClientService;
pub use tag::ConnTag;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use tower_service::Service;

/// A connector that tags each connection it opens with a [`ConnTag`].
///
/// Put it outermost (around the TLS connector) so the TLS handshake is not counted as a use.
#[derive(Debug, Clone)]
pub struct TaggingConnector<C> {
    inner: C,
    next_id: Arc<AtomicU64>,
}

impl<C> TaggingConnector<C> {
    /// Wraps a connector.
    pub fn new(inner: C) -> Self {
        TaggingConnector {
            inner,
            next_id: Arc::new(AtomicU64::new(1)),
        }
    }

    /// How many connections this connector (and its clones) has opened.
    pub fn opened(&self) -> u64 {
        self.next_id.load(Ordering::Relaxed) - 1
    }
}

impl<C> Service<Uri> for TaggingConnector<C>
where
    C: Service<Uri>,
    C::Response: Connection,
    C::Future: Send + 'static,
{
    type Response = Tagged<C::Response>;
    type Error = C::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let fut = self.inner.call(uri);
        let ids = self.next_id.clone();
        Box::pin(async move {
            let io = fut.await?;
            let tag = ConnTag::new(ids.fetch_add(1, Ordering::Relaxed));
            tracing::debug!(conn = tag.id(), "upstream connection opened");
            Ok(Tagged::new(io, tag))
        })
    }
}

impl<T: Connection> Connection for Tagged<T> {
    fn connected(&self) -> Connected {
        self.inner_ref().connected().extra(self.tag().clone())
    }
}
