use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::Connect;
use tower_service::Service;

use crate::body::{ReplayBody, ResponseBody};
use crate::error::BoxError;

/// A hyper-util client as the innermost service of the stack: it takes the stack's
/// request type and gives the stack's response type, with errors boxed.
///
/// The hyper-util error survives boxing, so outer layers can downcast to
/// `hyper_util::client::legacy::Error` to tell a connect failure from a broken connection.
#[derive(Debug, Clone)]
pub struct ClientService<C> {
    client: Client<C, ReplayBody>,
}

impl<C> ClientService<C> {
    /// Wraps a client.
    pub fn new(client: Client<C, ReplayBody>) -> Self {
        ClientService { client }
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
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReplayBody>) -> Self::Future {
        let fut = self.client.request(req);
        Box::pin(async move {
            let res = fut.await.map_err(|e| Box::new(e) as BoxError)?;
            Ok(res.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed_unsync()))
        })
    }
}
