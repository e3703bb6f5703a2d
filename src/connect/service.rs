use std::error::Error as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Extensions, Request, Response};
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::{CaptureConnection, Connect, capture_connection};
use hyper_util::client::legacy::{Client, Error as ClientError};
use hyper_util::rt::TokioExecutor;
use tower_service::Service;

use super::{ConnTag, ConnectionInfo, ConnectionReport, NewConnection};
use crate::body::{Coalesce, ReplayBody, ResponseBody};
use crate::classify::Failure;
use crate::error::BoxError;
use crate::marks::{AttemptError, Phase};

/// A hyper-util client as the innermost service of the stack: it takes the stack's
/// request type and gives the stack's response type, with errors boxed.
///
/// Errors are [`AttemptError`]s saying how far the request got ([`Phase::Unsent`] for a
/// connect failure or a request hyper handed back unwritten, else [`Phase::Sent`]), with
/// hyper-util's error as their source.
///
/// It speaks the [connection report protocol](super::ConnectionReport): a request carrying a
/// [`ConnectionReport`] gets the [`ConnectionInfo`] of its connection (the [`ConnTag`] when
/// the connector is a [`TaggingConnector`](super::TaggingConnector), and hyper-util's poison
/// to retire it), and a request carrying [`NewConnection`] goes through a second client with
/// pooling off when one was given ([`with_connector`](Self::with_connector)).
#[derive(Debug)]
pub struct ClientService<C> {
    // Shared: every layer above keeps a clone of the service below it in each request's
    // future, so a clone is one count, not two hyper-util clients (~320 bytes and their own
    // counts) per layer per request.
    clients: Arc<Clients<C>>,
}

#[derive(Debug)]
struct Clients<C> {
    pooled: Client<C, ReplayBody>,
    // Pooling off: each of its requests opens a connection of its own.
    unpooled: Option<Client<C, ReplayBody>>,
}

impl<C> Clone for ClientService<C> {
    fn clone(&self) -> Self {
        ClientService {
            clients: self.clients.clone(),
        }
    }
}

impl<C> ClientService<C> {
    /// Wraps a client. Requests asking for a [`NewConnection`] go through it too (and may
    /// get a pooled connection): use [`with_connector`](Self::with_connector) to honour them.
    pub fn new(client: Client<C, ReplayBody>) -> Self {
        ClientService {
            clients: Arc::new(Clients {
                pooled: client,
                unpooled: None,
            }),
        }
    }
}

impl<C> ClientService<C>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    /// Wraps `client`; `connector` (the one `client` was built on, so connection ids stay
    /// unique) opens the connections for requests asking for a [`NewConnection`].
    pub fn with_connector(client: Client<C, ReplayBody>, connector: C) -> Self {
        let unpooled = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        ClientService {
            clients: Arc::new(Clients {
                pooled: client,
                unpooled: Some(unpooled),
            }),
        }
    }
}

impl<C> Service<Request<ReplayBody>> for ClientService<C>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    type Response = Response<ResponseBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // hyper-util's client queues internally and is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<ReplayBody>) -> Self::Future {
        let report = req.extensions().get::<ConnectionReport>().cloned();
        let capture = report.as_ref().map(|_| capture_connection(&mut req));
        let clients = &*self.clients;
        let client = match (&clients.unpooled, req.extensions().get::<NewConnection>()) {
            (Some(unpooled), Some(_)) => unpooled,
            _ => &clients.pooled,
        };
        let fut = client.request(req);
        Box::pin(async move {
            let result = fut.await;
            if let (Some(report), Some(capture)) = (report, capture) {
                if let Some(info) = captured(capture) {
                    report.set(info);
                }
            }
            match result {
                // What the upstream sent together goes up the stack as one frame: every
                // layer above, and the write to the client, then run once per batch
                // instead of once per SSE event (see `Coalesce`).
                Ok(res) => Ok(res
                    .map(|b| Coalesce::new(b.map_err(|e| Box::new(e) as BoxError)).boxed_unsync())),
                Err(e) => Err(Box::new(attempt_error(e)) as BoxError),
            }
        })
    }
}

/// The connection a request went out on, once hyper-util has one; `None` when no
/// connection was made.
fn captured(capture: CaptureConnection) -> Option<ConnectionInfo> {
    let tag = capture.connection_metadata().as_ref().map(|c| {
        let mut ext = Extensions::new();
        c.get_extras(&mut ext);
        ext.remove::<ConnTag>()
    })?;
    let info = match tag {
        Some(tag) => ConnectionInfo::tagged(tag),
        None => ConnectionInfo::new(),
    };
    // `Connected` is not `Clone`: the retire hook keeps the capture and poisons through it.
    Some(info.on_retire(move || {
        if let Some(c) = capture.connection_metadata().as_ref() {
            c.poison();
        }
    }))
}

/// The error an attempt ends with, saying how far it got: a request that was never written
/// (a connect error, or one hyper handed back unsent) is [`Phase::Unsent`]; any other may
/// have reached the upstream.
pub(crate) fn attempt_error(err: ClientError) -> AttemptError {
    let unsent = err.is_connect()
        || err
            .source()
            .and_then(|s| s.downcast_ref::<hyper::Error>())
            .is_some_and(hyper::Error::is_canceled);
    let phase = if unsent { Phase::Unsent } else { Phase::Sent };
    let failure = Failure::transport(false, err.to_string());
    AttemptError::new(phase, failure).with_source(err)
}
