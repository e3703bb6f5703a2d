//! The floor: the least a Rust proxy on hyper can do. Accept, rewrite the URI, forward with
//! a pooled hyper-util client, stream the answer back. No body reading, no parsing, no
//! headers touched beyond `Host` and `Connection`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

type Body = UnsyncBoxBody<Bytes, hyper::Error>;

struct Shared {
    client: Client<HttpConnector, Incoming>,
    upstream: String,
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let (mut parts, body) = req.into_parts();
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let Ok(uri) = format!("http://{}{pq}", shared.upstream).parse::<Uri>() else {
        return Ok(bad_gateway());
    };
    parts.uri = uri;
    parts.headers.remove(header::HOST);
    parts.headers.remove(header::CONNECTION);
    match shared
        .client
        .request(Request::from_parts(parts, body))
        .await
    {
        Ok(res) => Ok(res.map(BodyExt::boxed_unsync)),
        Err(_) => Ok(bad_gateway()),
    }
}

fn bad_gateway() -> Response<Body> {
    let body = Full::new(Bytes::from_static(b"bad gateway"))
        .map_err(|e| match e {})
        .boxed_unsync();
    let mut res = Response::new(body);
    *res.status_mut() = StatusCode::BAD_GATEWAY;
    res
}

/// Serves until the process ends, forwarding to `upstream` (`host:port`).
pub async fn serve(listener: TcpListener, upstream: String) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(20))
        .build(connector);
    let shared = Arc::new(Shared { client, upstream });
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(shared.clone(), req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
