//! The mock server: accept loop, per-connection serving, and the script.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use super::io::{Abort, ConnControl, ConnIo};
use super::record::bearer;
use super::script::Plan;
use super::stream::{MockBody, Pacing, streamed};
use super::streams::{OpenStream, StreamBook, StreamStats};
use super::{RecordedRequest, Reply, StaleMode};
use crate::error::ApiError;

/// Request bodies above this are refused with 413 (and recorded without their body).
const MAX_REQUEST_BODY: usize = 32 * 1024 * 1024;

type Handler = dyn Fn(&RecordedRequest) -> Option<Reply> + Send + Sync;

/// A scriptable OpenAI Responses upstream on `127.0.0.1`, for tests.
///
/// Clones share one server; it stops when [`shutdown`](MockUpstream::shutdown) is called or
/// the last clone is dropped. Every request is recorded (see [`requests`](Self::requests))
/// and answered by, in order: the stale-connection treatment ([`set_stale`](Self::set_stale)),
/// the handler ([`set_handler`](Self::set_handler)), the next reply pushed for its bearer
/// token ([`push_for`](Self::push_for)), the next reply pushed for anyone
/// ([`push`](Self::push)), and the default ([`set_default`](Self::set_default), initially
/// [`Reply::auto`]).
#[derive(Clone)]
pub struct MockUpstream {
    inner: Arc<Inner>,
}

struct Inner {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        #[cfg(feature = "websocket")]
        self.shared.ws.shutdown();
    }
}

pub(crate) struct Shared {
    script: Mutex<Script>,
    records: Mutex<Vec<RecordedRequest>>,
    connections: AtomicU64,
    /// The WebSocket on the responses route: its script and sockets.
    #[cfg(feature = "websocket")]
    pub(crate) ws: Arc<super::ws::WsShared>,
    streams: Arc<StreamBook>,
}

struct Script {
    queue: VecDeque<Reply>,
    per_credential: HashMap<String, VecDeque<Reply>>,
    default: Reply,
    handler: Option<Arc<Handler>>,
    stale: Option<(Duration, StaleMode)>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not turn every later call into a second panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Resolves once the mock is told to stop (or its handle is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

impl MockUpstream {
    /// Starts a server on `127.0.0.1` with an OS-chosen port. Needs a tokio runtime.
    pub async fn start() -> std::io::Result<MockUpstream> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            script: Mutex::new(Script {
                queue: VecDeque::new(),
                per_credential: HashMap::new(),
                default: Reply::auto(),
                handler: None,
                stale: None,
            }),
            records: Mutex::new(Vec::new()),
            connections: AtomicU64::new(0),
            #[cfg(feature = "websocket")]
            ws: Arc::default(),
            streams: Arc::default(),
        });
        let (stop, stop_rx) = watch::channel(false);
        let accept = tokio::spawn(accept_loop(listener, shared.clone(), stop_rx));
        Ok(MockUpstream {
            inner: Arc::new(Inner {
                addr,
                shared,
                stop,
                accept: Mutex::new(Some(accept)),
            }),
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The API base URL, `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.inner.addr)
    }

    #[cfg(feature = "websocket")]
    pub(crate) fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    fn script(&self) -> MutexGuard<'_, Script> {
        lock(&self.inner.shared.script)
    }

    /// Queues a reply for the next request (first in, first out), whatever its credential.
    pub fn push(&self, reply: Reply) {
        self.script().queue.push_back(reply);
    }

    /// Queues a reply for the next request whose bearer token is `credential`; these queues
    /// are consulted before the shared one.
    pub fn push_for(&self, credential: &str, reply: Reply) {
        self.script()
            .per_credential
            .entry(credential.to_owned())
            .or_default()
            .push_back(reply);
    }

    /// The reply for requests no script matches (initially [`Reply::auto`]).
    pub fn set_default(&self, reply: Reply) {
        self.script().default = reply;
    }

    /// Consults `f` first for every request (after the stale treatment); `None` falls
    /// through to the queues. `f` runs on the server task and may call this handle; a clone
    /// moved into `f` keeps the server alive until [`shutdown`](Self::shutdown).
    pub fn set_handler(
        &self,
        f: impl Fn(&RecordedRequest) -> Option<Reply> + Send + Sync + 'static,
    ) {
        self.script().handler = Some(Arc::new(f));
    }

    /// Simulates a provider that drops idle keep-alive connections: a request arriving on a
    /// connection that has been idle for at least `after_idle` (since its previous response
    /// ended) gets `mode` instead of its script, which stays queued for the retry. The first
    /// request of a connection is never stale.
    pub fn set_stale(&self, after_idle: Duration, mode: StaleMode) {
        self.script().stale = Some((after_idle, mode));
    }

    /// Stops simulating stale connections.
    pub fn clear_stale(&self) {
        self.script().stale = None;
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.inner.shared.records).clone()
    }

    /// Forgets the requests recorded so far and returns how many there were: a long run
    /// (a soak, a 10,000-turn session) keeps the mock's own memory flat this way.
    pub fn clear_requests(&self) -> usize {
        std::mem::take(&mut *lock(&self.inner.shared.records)).len()
    }

    /// How many requests were received so far.
    pub fn request_count(&self) -> usize {
        lock(&self.inner.shared.records).len()
    }

    /// How many connections were accepted so far.
    pub fn connections_accepted(&self) -> u64 {
        self.inner.shared.connections.load(Ordering::Relaxed)
    }

    /// Counts of streamed answers: open now, served, abandoned by the client, bytes taken.
    /// A client that goes away mid-stream shows as `open` falling back and `cancelled`
    /// rising; a reader that stops shows as `bytes_sent` no longer growing.
    pub fn stream_stats(&self) -> StreamStats {
        self.inner.shared.streams.stats()
    }

    /// The streamed answers open now, with their requests and the bytes sent of each.
    pub fn open_streams(&self) -> Vec<OpenStream> {
        self.inner.shared.streams.open_streams()
    }

    /// Stops accepting, drops every open connection (open bodies end abruptly) and waits for
    /// the server tasks to finish. Later requests are refused.
    pub async fn shutdown(&self) {
        self.inner.stop.send_replace(true);
        #[cfg(feature = "websocket")]
        self.inner.shared.ws.shutdown();
        let accept = lock(&self.inner.accept).take();
        if let Some(task) = accept {
            let _ = task.await;
        }
    }
}

impl std::fmt::Debug for MockUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockUpstream")
            .field("addr", &self.inner.addr)
            .field("requests", &self.request_count())
            .finish()
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let id = shared.connections.fetch_add(1, Ordering::Relaxed);
                    conns.spawn(serve_connection(stream, id, shared.clone(), stop.clone()));
                }
                // Out of file descriptors and the like: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    conns.shutdown().await;
}

/// What the handler knows of the connection it serves.
pub(crate) struct ConnState {
    id: u64,
    next_index: AtomicU64,
    /// When the last response ended; the connection has idled since.
    last_activity: Mutex<Option<Instant>>,
    pub(crate) control: Arc<ConnControl>,
}

impl ConnState {
    pub(crate) fn touch(&self) {
        *lock(&self.last_activity) = Some(Instant::now());
    }
}

async fn serve_connection(
    stream: TcpStream,
    id: u64,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let control = Arc::new(ConnControl::default());
    let conn = Arc::new(ConnState {
        id,
        next_index: AtomicU64::new(0),
        last_activity: Mutex::new(None),
        control: control.clone(),
    });
    let io = ConnIo::new(stream, control.clone());
    let service = service_fn(move |req| handle(shared.clone(), conn.clone(), req));
    let serving = http1::Builder::new()
        .keep_alive(true)
        // Idle connections are the point of the stale tests: never time them out here.
        .header_read_timeout(None)
        .serve_connection(io, service)
        // The responses route also answers WebSocket upgrades (`testing::ws`).
        .with_upgrades();
    // Dropping `serving` drops the socket: FIN, or RST when an abort asked for it.
    tokio::select! {
        _ = serving => {}
        _ = control.aborted() => {}
        _ = stopped(&mut stop) => {}
    }
}

enum Choice {
    Stale(StaleMode),
    Reply(Reply),
}

impl Shared {
    fn choose(&self, req: &RecordedRequest) -> Choice {
        let handler = {
            let script = lock(&self.script);
            if let (Some((after, mode)), Some(idle)) = (script.stale, req.idle_before) {
                if idle >= after {
                    return Choice::Stale(mode);
                }
            }
            script.handler.clone()
        };
        // Outside the lock: the handler may call back into the mock.
        if let Some(reply) = handler.and_then(|f| f(req)) {
            return Choice::Reply(reply);
        }
        let mut script = lock(&self.script);
        let scripted = req
            .credential
            .as_ref()
            .and_then(|c| script.per_credential.get_mut(c))
            .and_then(VecDeque::pop_front);
        let reply = scripted
            .or_else(|| script.queue.pop_front())
            .unwrap_or_else(|| script.default.clone());
        Choice::Reply(reply)
    }
}

type Answer = Result<Response<MockBody>, Infallible>;

async fn handle(shared: Arc<Shared>, conn: Arc<ConnState>, req: Request<Incoming>) -> Answer {
    #[cfg(feature = "websocket")]
    if super::ws::is_upgrade(&req) {
        return Ok(super::ws::answer(&shared.ws, &conn, req));
    }
    let arrived = Instant::now();
    let index = conn.next_index.fetch_add(1, Ordering::Relaxed);
    let idle_before = match index {
        0 => None,
        _ => lock(&conn.last_activity).map(|t| arrived.saturating_duration_since(t)),
    };
    let (parts, body) = req.into_parts();
    let (body, too_large) = match Limited::new(body, MAX_REQUEST_BODY).collect().await {
        Ok(collected) => (collected.to_bytes(), false),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => (Bytes::new(), true),
        // The client went away mid-body: nobody is left to answer.
        Err(_) => return std::future::pending().await,
    };
    let record = RecordedRequest {
        conn_id: conn.id,
        conn_request_index: index,
        credential: bearer(&parts.headers),
        account_id: parts
            .headers
            .get("chatgpt-account-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        method: parts.method,
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned()),
        headers: parts.headers,
        body,
        idle_before,
    };
    lock(&shared.records).push(record.clone());

    if too_large {
        let err = ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "The mock upstream refuses request bodies over 32 MiB.",
        );
        return Ok(respond(err.status, json_headers(), err.to_json(), &conn));
    }

    let reply = match shared.choose(&record) {
        Choice::Stale(StaleMode::Fin) => return abort(&conn, Abort::Fin).await,
        Choice::Stale(StaleMode::Reset) => return abort(&conn, Abort::Reset).await,
        Choice::Stale(StaleMode::Html400) => return Ok(html_400(&conn)),
        Choice::Reply(reply) => reply,
    };
    match reply.plan(&record) {
        Plan::Abort(how, delay) => {
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            abort(&conn, how).await
        }
        Plan::Respond(p) => {
            let body = if p.streamed {
                let pacing = Pacing {
                    gap: p.gap,
                    first_wait: p.first_wait,
                    hold_open: p.hold_open,
                    cut_after: p.cut_after,
                    cut_how: p.cut_how,
                };
                let guard = shared.streams.open(&record);
                streamed(p.chunks, pacing, conn.clone(), guard)
            } else {
                MockBody::full(p.chunks.concat().into(), conn.clone())
            };
            let mut res = Response::new(body);
            *res.status_mut() = p.status;
            *res.headers_mut() = p.headers;
            Ok(res)
        }
    }
}

/// Breaks the connection and never answers.
async fn abort(conn: &ConnState, how: Abort) -> Answer {
    conn.control.abort_now(how);
    std::future::pending().await
}

fn json_headers() -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h
}

fn respond(
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
    conn: &Arc<ConnState>,
) -> Response<MockBody> {
    let mut res = Response::new(MockBody::full(body, conn.clone()));
    *res.status_mut() = status;
    *res.headers_mut() = headers;
    res
}

/// What a load balancer answers on a connection it already forgot.
fn html_400(conn: &Arc<ConnState>) -> Response<MockBody> {
    let mut headers = http::HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    let body = Bytes::from_static(
        b"<html>\r\n<head><title>400 Bad Request</title></head>\r\n<body>\r\n\
          <center><h1>400 Bad Request</h1></center>\r\n</body>\r\n</html>\r\n",
    );
    respond(StatusCode::BAD_REQUEST, headers, body, conn)
}
