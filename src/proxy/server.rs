use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};

use super::config::{ConfigError, ProxyConfig, UsageHeaders};
use super::edge::{self, EdgeRules, MediaType};
use super::request_id::{InSpan, RequestId, X_REQUEST_ID, X_UPSTREAM_REQUEST_ID};
use crate::body::{IdleTimeoutBody, ReplayBody, full_body as full, read_request};
use crate::connect::{ConnTag, UpstreamClientBuilder, UpstreamConnector};
use crate::credentials::usage::{self, CredentialUsage, UsageLedger, UsageObserver};
use crate::credentials::{CHATGPT_ACCOUNT_ID, Pool, Secret, ServedBy, bearer_token};
use crate::error::ApiError;
use crate::facts::RequestFacts;
use crate::fresh::FreshConnectionLayer;
use crate::json::ObjectSpans;
use crate::metrics::{Metrics, RequestStarted};
use crate::soft_failure::StreamObservers;
use crate::stack::{HeadTimeoutElapsed, ResponsesStack, StackService};
use crate::upstream::{UpstreamBase, strip_hop_by_hop};
use tower::ServiceExt;
use tracing::Instrument;

/// The body of every answer the proxy gives.
pub type ProxyBody = crate::body::ResponseBody;

/// How long an in-flight connection may finish after shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// The smallest head limit accepted: request lines and a few ordinary headers must fit.
const MIN_HEADER_BYTES: usize = 8192;
/// The longest client head or body timeout accepted (a day): longer is a mistake.
const MAX_CLIENT_TIMEOUT_SECS: u64 = 24 * 60 * 60;

struct Shared {
    config: ProxyConfig,
    base: UpstreamBase,
    pool: Option<Arc<Pool>>,
    client_keys: Vec<Secret>,
    edge: EdgeRules,
    stack: StackService,
    connector: UpstreamConnector,
    metrics: Metrics,
    /// Requests and tokens today per credential, input tokens per turn per session.
    ledger: Arc<UsageLedger>,
    /// One permit per client WebSocket: an upgraded socket leaves hyper's connection (and
    /// its connection permit), so sockets have their own limit.
    ws_sockets: Arc<Semaphore>,
    /// `true` once shutdown began: client sockets finish their turn and close.
    stopping: watch::Sender<bool>,
    /// What all client sockets' transcripts may hold together.
    transcripts: crate::websocket::transcript::TranscriptBudget,
}

/// A bound proxy, ready to serve.
pub struct Proxy {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("listen", &self.listener.local_addr().ok())
            .field("upstream", &self.shared.config.upstream)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// Loads credentials, checks the configuration and binds the listener.
    pub async fn bind(config: ProxyConfig) -> Result<Proxy, ConfigError> {
        let builder = UpstreamClientBuilder::new()
            .pool_idle_timeout(Duration::from_secs(config.pool_idle_timeout_secs));
        Self::bind_with(config, builder).await
    }

    /// Like [`bind`](Self::bind), with your own upstream client settings (e.g. a private CA).
    pub async fn bind_with(
        config: ProxyConfig,
        client: UpstreamClientBuilder,
    ) -> Result<Proxy, ConfigError> {
        let base = UpstreamBase::parse(&config.upstream)?;
        check_edge_config(&config)?;
        config.websocket.check()?;
        let metrics = Metrics::new();
        let pool = if config.credentials.is_empty() {
            None
        } else {
            let pool = Pool::with_logins(config.credentials.clone(), config.oauth_settings())
                .map_err(|e| ConfigError(format!("credential: {e}")))?
                .with_strategy(config.strategy)
                .with_soft_limit(config.soft_limit)
                .with_default_profile(config.profile())
                .with_metrics(metrics.clone());
            let pool = match config.shared_state(Some(metrics.clone()))? {
                Some(state) => pool.with_state(state),
                None => pool,
            };
            Some(Arc::new(pool))
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| ConfigError(format!("cannot listen on {}: {e}", config.listen)))?;
        let connector = client.connector();
        let mut stack = ResponsesStack::new()
            .profile(config.profile())
            .compact(config.compact.clone())
            .normalize(config.normalize.clone())
            .metrics(metrics.clone())
            .head_timeout(config.upstream_timeout())
            .upstream_base(config.upstream.clone());
        if let Some(pool) = &pool {
            stack = stack.pool(pool.clone());
        }
        let bottom = FreshConnectionLayer::new()
            .metrics(metrics.clone())
            .service(client.build_with(connector.clone()), connector.clone());
        let stack = stack.service(bottom);
        let shared = Shared {
            base,
            pool,
            client_keys: config.client_keys.clone(),
            edge: EdgeRules::new(config.client_keys.is_empty(), &config.allowed_origins),
            stack,
            connector,
            metrics,
            ws_sockets: Arc::new(Semaphore::new(config.websocket.max_sockets)),
            stopping: watch::Sender::new(false),
            transcripts: crate::websocket::transcript::TranscriptBudget::new(
                config.websocket.max_transcripts_total_bytes,
            ),
            config,
            ledger: Arc::default(),
        };
        Ok(Proxy {
            listener,
            shared: Arc::new(shared),
        })
    }

    /// The address it listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| self.shared.config.listen)
    }

    /// The metrics registry the proxy reports into.
    pub fn metrics(&self) -> Metrics {
        self.shared.metrics.clone()
    }

    /// The credential pool (`None` without upstream credentials): its state store holds the
    /// session bindings and response-id owners the proxy has learned (a benchmark fills it
    /// before the load; a status tool may read it).
    pub fn pool(&self) -> Option<&Arc<Pool>> {
        self.shared.pool.as_ref()
    }

    /// Serves until `shutdown` completes, then stops accepting, lets in-flight requests finish
    /// (up to 10 s), and returns.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        let stop_rx = self.shared.stopping.subscribe();
        // Every connection task holds a sender; when all are gone, recv() yields None.
        let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
        let config = &self.shared.config;
        let mut http = http1::Builder::new();
        // The header read timeout also runs while a keep-alive connection waits for its next
        // request (hyper restarts it when the connection goes idle), so it is the idle
        // timeout too. Limits are checked while the head is parsed, before any service runs.
        http.timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout())
            .max_headers(config.max_headers)
            .max_header_size(config.max_header_bytes);
        let connections = Arc::new(Semaphore::new(config.max_connections));
        let mut at_limit = false;
        tokio::pin!(shutdown);
        loop {
            // A permit per connection, taken before accept: at the limit, new clients wait in
            // the kernel's listen backlog instead of costing a task and a file descriptor.
            let permit = match connections.clone().try_acquire_owned() {
                Ok(permit) => {
                    at_limit = false;
                    permit
                }
                Err(_) => {
                    if !at_limit {
                        at_limit = true;
                        tracing::warn!(
                            max_connections = config.max_connections,
                            "client connection limit reached; new connections wait until one closes"
                        );
                        self.shared.metrics.inc(
                            "tr_client_connection_limit_hits_total",
                            "Times the client connection limit was reached.",
                            &[],
                        );
                    }
                    tokio::select! {
                        _ = &mut shutdown => break,
                        permit = connections.clone().acquire_owned() => match permit {
                            Ok(permit) => permit,
                            Err(_) => break,
                        },
                    }
                }
            };
            let (stream, peer) = tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: pause instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let shared = self.shared.clone();
            let mut stop = stop_rx.clone();
            let alive = alive_tx.clone();
            let http = http.clone();
            tokio::spawn(async move {
                let _open = OpenConnection::new(permit, shared.metrics.clone());
                let svc = service_fn(move |req| handle(shared.clone(), peer, req));
                // Upgrades: a WebSocket client's connection leaves hyper after the 101.
                let conn = http
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades();
                tokio::pin!(conn);
                tokio::select! {
                    res = conn.as_mut() => log_conn_end(res),
                    _ = stop.changed() => {
                        conn.as_mut().graceful_shutdown();
                        log_conn_end(conn.await);
                    }
                }
                drop(alive);
            });
        }
        tracing::info!("shutting down: no new connections, finishing in-flight requests");
        self.shared.stopping.send_replace(true);
        drop(alive_tx);
        // Connections and client sockets (each holds a socket permit until it closes).
        let sockets = self.shared.config.websocket.max_sockets;
        let sockets = u32::try_from(sockets).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
            alive_rx.recv().await;
            let _ = self.shared.ws_sockets.acquire_many(sockets).await;
        })
        .await;
        Ok(())
    }
}

/// A served client connection: holds its permit and counts itself in
/// `tr_client_connections_open` for as long as it lives.
struct OpenConnection {
    _permit: tokio::sync::OwnedSemaphorePermit,
    metrics: Metrics,
}

impl OpenConnection {
    const GAUGE: &'static str = "tr_client_connections_open";
    const HELP: &'static str = "Client connections being served.";

    fn new(permit: tokio::sync::OwnedSemaphorePermit, metrics: Metrics) -> Self {
        metrics.gauge_add(Self::GAUGE, Self::HELP, &[], 1.0);
        OpenConnection {
            _permit: permit,
            metrics,
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.metrics.gauge_add(Self::GAUGE, Self::HELP, &[], -1.0);
    }
}

fn log_conn_end(res: Result<(), hyper::Error>) {
    if let Err(e) = res {
        tracing::debug!(error = %e, "client connection ended with an error");
    }
}

fn api_error(err: ApiError) -> Response<ProxyBody> {
    err.into_stack_response()
}

/// A coarse route name for metrics: never the raw path, which a client controls.
fn route_label(path: &str) -> &'static str {
    match path {
        "/healthz" => "healthz",
        "/metrics" => "metrics",
        "/status" => "status",
        "/status.json" => "status_json",
        // Where the Codex CLI reads its account's limits (`chatgpt_base_url` pointed here).
        "/backend-api/wham/usage" | "/api/codex/usage" => "usage",
        "/v1/responses" => "responses",
        // The ChatGPT backend's own path, for a client whose base URL is the proxy's
        // `/backend-api/codex`: served for WebSocket upgrades only.
        "/backend-api/codex/responses" => "codex_responses",
        "/v1/responses/compact" => "compact",
        "/v1/models" => "models",
        p if p.starts_with("/v1/") => "other",
        _ => "not_found",
    }
}

#[allow(
    clippy::manual_async_fn,
    reason = "an `async fn` stores its arguments twice in its future, which every request allocates"
)]
fn handle(
    shared: Arc<Shared>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> impl Future<Output = Result<Response<ProxyBody>, Infallible>> {
    async move {
        let id = RequestId::from_headers(req.headers());
        // Every log line of the request, its answer's body included, carries the id.
        let span = tracing::info_span!("request", id = %id);
        let res = answer(shared, peer, req).instrument(span.clone()).await;
        let (mut parts, body) = res.into_parts();
        if let Some(upstream_id) = parts.headers.remove(&X_REQUEST_ID) {
            parts.headers.insert(&X_UPSTREAM_REQUEST_ID, upstream_id);
        }
        if let Some(v) = id.header_value() {
            parts.headers.insert(&X_REQUEST_ID, v);
        }
        let body = InSpan::new(body, span).boxed_unsync();
        Ok(Response::from_parts(parts, body))
    }
}

#[allow(
    clippy::manual_async_fn,
    reason = "an `async fn` stores its arguments twice in its future, which every request allocates"
)]
fn answer(
    shared: Arc<Shared>,
    peer: SocketAddr,
    mut req: Request<Incoming>,
) -> impl Future<Output = Response<ProxyBody>> {
    async move {
        let started = Instant::now();
        req.extensions_mut().insert(RequestStarted(started));
        let method = req.method().clone();
        let route = route_label(req.uri().path());
        let cors = shared.edge.allowed_origin(req.headers());
        let mut res = match dispatch(&shared, peer, req, route).await {
            Ok(res) => res,
            Err(Refused { err, close }) => {
                tracing::info!(status = err.status.as_u16(), code = err.code.as_deref().unwrap_or(""), message = %err.message, close, "answered with an error");
                let mut res = api_error(err);
                if close {
                    res.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                res
            }
        };
        if let Some(origin) = cors {
            // A page of an allowed origin may read the answer.
            let h = res.headers_mut();
            h.entry(header::ACCESS_CONTROL_ALLOW_ORIGIN)
                .or_insert(origin);
            h.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        let status = res.status();
        shared.metrics.inc(
            "tr_requests_total",
            "Requests answered, by route and status.",
            &[("route", route), ("status", status.as_str())],
        );
        shared.metrics.observe(
            "tr_request_duration_seconds",
            "Time from a request's arrival to its response head, by route and status.",
            &[("route", route), ("status", status.as_str())],
            started.elapsed().as_secs_f64(),
        );
        tracing::info!(
            %method,
            route,
            status = status.as_u16(),
            head_ms = started.elapsed().as_millis() as u64,
            "request"
        );
        res
    }
}

/// What the edge decided about a request.
enum Admitted {
    /// Answered here (`/healthz`, `/metrics`).
    Local(Response<ProxyBody>),
    /// Checked, read and ready for the stack.
    Forward(Request<ReplayBody>),
}

/// An error answer, and whether the connection ends after it.
struct Refused {
    err: ApiError,
    close: bool,
}

/// Errors from the stack keep the connection: the client did nothing wrong.
impl From<ApiError> for Refused {
    fn from(err: ApiError) -> Self {
        Refused { err, close: false }
    }
}

/// The edge: who may ask, what they may ask for, and the body, read within its limits.
#[allow(
    clippy::manual_async_fn,
    reason = "an `async fn` stores its arguments twice in its future, which every request allocates"
)]
fn admit(
    shared: &Arc<Shared>,
    peer: SocketAddr,
    req: Request<Incoming>,
    route: &'static str,
) -> impl Future<Output = Result<Admitted, ApiError>> {
    async move {
        if shared.client_keys.is_empty() && !peer.ip().is_loopback() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "permission_error",
                "this proxy has no client keys configured and only serves loopback clients",
            )
            .with_code("loopback_only"));
        }
        if let Some(res) = shared.edge.preflight(&req)? {
            return Ok(Admitted::Local(res));
        }
        shared.edge.check(&req)?;
        match (req.method(), route) {
            (&Method::GET, "healthz") => {
                return Ok(Admitted::Local(
                    Response::builder()
                        .header(header::CONTENT_TYPE, "application/json")
                        .body(full(r#"{"status":"ok"}"#))
                        .unwrap_or_else(|_| Response::new(full(""))),
                ));
            }
            (_, "healthz" | "metrics" | "status" | "status_json" | "usage")
                if req.method() != Method::GET =>
            {
                return Err(ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "invalid_request_error",
                    format!("{} only answers GET", req.uri().path()),
                ));
            }
            _ => {}
        }
        let upgrade = is_websocket_upgrade(req.headers());
        if route == "not_found" || (route == "codex_responses" && !upgrade) {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "unknown path: this proxy serves /v1/*, /healthz, /metrics and /status",
            )
            .with_code("unknown_url"));
        }
        let mut req = req;
        if !shared.client_keys.is_empty() {
            check_client_key(shared, req.headers())?;
            // The client key is this proxy's secret; it has no business upstream.
            req.headers_mut().remove(header::AUTHORIZATION);
        }
        if route == "metrics" {
            shared.metrics.set(
                "tr_upstream_connections_opened",
                "Upstream connections opened since start.",
                &[],
                shared.connector.opened() as f64,
            );
            return Ok(Admitted::Local(
                Response::builder()
                    .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
                    .body(full(shared.metrics.render()))
                    .unwrap_or_else(|_| Response::new(full(""))),
            ));
        }
        if route == "status_json" || (route == "status" && !wants_html(req.headers())) {
            // `/status` answers JSON to a client that asks only for JSON (the `status` command
            // of earlier versions).
            return Ok(Admitted::Local(json_answer(&status_report(shared))));
        }
        if route == "status" {
            let page = super::status::render_html(&status_report(shared), SystemTime::now());
            return Ok(Admitted::Local(
                Response::builder()
                    .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
                    .header(header::CACHE_CONTROL, "no-store")
                    .body(full(page))
                    .unwrap_or_else(|_| Response::new(full(""))),
            ));
        }
        if route == "usage" {
            return Ok(Admitted::Local(json_answer(&codex_usage(shared)?)));
        }
        if upgrade {
            return accept_websocket(shared, req, route).map(Admitted::Local);
        }
        let upstream_uri = shared.base.map(req.uri()).ok_or_else(|| {
            ApiError::invalid_request("path cannot be mapped to the upstream")
                .with_code("invalid_path")
        })?;
        // Only the Responses API is JSON; `/v1/files` uploads and audio are multipart or binary
        // and pass as they are, under the same body limit.
        let responses = edge::is_responses_path(req.uri().path());
        let media = if responses {
            Some(edge::check_media_type(req.headers())?)
        } else {
            None
        };
        let req = tokio::time::timeout(
            shared.config.body_read_timeout(),
            read_request(req, shared.config.body_limit),
        )
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                "the request body did not arrive in time",
            )
            .with_code("request_timeout")
        })?
        .map_err(ApiError::from)?;
        if media == Some(MediaType::Missing) && !req.body().is_empty() {
            return Err(edge::unsupported_media_type());
        }
        // One pass validates the body and reads what the layers decide from.
        let facts = if responses && req.method() == Method::POST && !req.body().is_empty() {
            Some(check_json_object(req.body())?)
        } else {
            None
        };
        let (mut parts, body) = req.into_parts();
        // The client's extensions mean nothing upstream; the stack starts from a clean slate,
        // but for when the request arrived (time to first content counts from it).
        let arrived = parts.extensions.remove::<RequestStarted>();
        parts.extensions = Default::default();
        let mut upstream = Request::from_parts(parts, ReplayBody::new(body));
        if let Some(arrived) = arrived {
            upstream.extensions_mut().insert(arrived);
        }
        shared.base.prepare(&mut upstream, upstream_uri);
        if let Some((facts, spans)) = facts {
            RequestFacts::attach_parsed(&mut upstream, facts, spans);
        }
        Ok(Admitted::Forward(upstream))
    }
}

/// Answers a request: the edge first, then the stack.
#[allow(
    clippy::manual_async_fn,
    reason = "an `async fn` stores its arguments twice in its future, which every request allocates"
)]
fn dispatch(
    shared: &Arc<Shared>,
    peer: SocketAddr,
    req: Request<Incoming>,
    route: &'static str,
) -> impl Future<Output = Result<Response<ProxyBody>, Refused>> {
    async move {
        let upstream = match admit(shared, peer, req, route).await {
            Ok(Admitted::Local(res)) => return Ok(res),
            Ok(Admitted::Forward(upstream)) => upstream,
            // The edge may have left the body unread, or the client may be hostile: either way
            // this connection carries nothing more (nothing pipelined behind it is read).
            Err(err) => return Err(Refused { err, close: true }),
        };
        Ok(forward(shared, upstream).await?)
    }
}

/// Sends an admitted request through the stack and prepares its answer for the client.
#[allow(
    clippy::manual_async_fn,
    reason = "an `async fn` stores its arguments twice in its future, which every request allocates"
)]
fn forward(
    shared: &Shared,
    mut upstream: Request<ReplayBody>,
) -> impl Future<Output = Result<Response<ProxyBody>, ApiError>> {
    async move {
        let session = RequestFacts::cached(&upstream)
            .and_then(|facts| crate::facts::session_key(upstream.headers(), &facts));
        // Windows from `codex.rate_limits`, tokens per account and session from the terminal
        // event: read from the events the stack already parses, not by a second reader.
        StreamObservers::add(
            &mut upstream,
            Arc::new(UsageObserver::new(
                shared.pool.clone(),
                shared.ledger.clone(),
                session.clone(),
            )),
        );
        if shared.pool.is_some() {
            // Rotation sets the credential's headers; the client's never go upstream.
            upstream.headers_mut().remove(header::AUTHORIZATION);
            upstream.headers_mut().remove(&CHATGPT_ACCOUNT_ID);
        } else if let Some(auth) = upstream.headers_mut().get_mut(header::AUTHORIZATION) {
            auth.set_sensitive(true);
        }
        // The response-head timeout is the stack's, per upstream attempt (`HeadTimeoutLayer`):
        // a whole-stack bound would also cut folds, local compaction and retries.
        let res = shared.stack.clone().oneshot(upstream).await.map_err(|e| {
            if HeadTimeoutElapsed::find(&*e).is_some() {
                return ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "server_error",
                    "the upstream did not answer in time",
                )
                .with_code("upstream_timeout");
            }
            // Never sent (connect refused, handed back) or lost after the upstream had it.
            let kind = match crate::marks::AttemptError::find(&*e).map(|a| a.phase) {
                Some(crate::marks::Phase::Unsent) => "connect",
                _ => "transport",
            };
            shared.metrics.inc(
                "tr_upstream_errors_total",
                "Upstream requests that got no HTTP answer, by kind.",
                &[("kind", kind)],
            );
            tracing::warn!(error = %e, kind, "upstream request failed");
            ApiError::upstream_unavailable(format!(
                "the upstream could not be reached ({kind} error); retry the request"
            ))
        })?;
        if let Some(tag) = res.extensions().get::<ConnTag>() {
            tracing::debug!(
                conn = tag.id(),
                reused = tag.is_reused(),
                idle_ms = tag.idle_before_use().as_millis() as u64,
                "upstream answered"
            );
        }
        let idle = shared.config.stream_idle_timeout();
        let (mut parts, body) = res.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let served = parts.extensions.get::<ServedBy>().map(|s| s.0.clone());
        if let Some(label) = &served {
            shared.ledger.record_request(label, SystemTime::now());
        }
        // Only a reply with usage headers has any to rewrite: the pool's figures are gathered
        // (a lock per credential) for those alone.
        if let (Some(pool), UsageHeaders::Pooled, true) = (
            &shared.pool,
            shared.config.usage_headers,
            crate::classify::has_header_prefix(&parts.headers, "x-codex-"),
        ) {
            usage::rewrite_codex_headers(
                &mut parts.headers,
                &pool.pooled_usage(),
                SystemTime::now(),
            );
        }
        // Layers may end an event stream early (at its terminal event, at a token cap), so the
        // upstream's length no longer holds, and hyper aborts a body shorter than its
        // Content-Length. Event streams go out chunked.
        if crate::sse::is_event_stream(&parts.headers) {
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        Ok(Response::from_parts(
            parts,
            IdleTimeoutBody::new(body, idle).boxed_unsync(),
        ))
    }
}

/// Whether a `/status` client wants the page: a browser asks for `text/html`, and a client
/// that says nothing gets it too; one asking only for JSON gets JSON.
fn wants_html(headers: &http::HeaderMap) -> bool {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    accept.is_empty() || accept.contains("text/html") || !accept.contains("json")
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// What a person must do for a credential to come back, if anything.
fn action_required(reason: &str) -> Option<&'static str> {
    ["owner_refresh_needed", "reauth_required"]
        .into_iter()
        .find(|r| reason.contains(r))
}

fn windows_json(windows: impl Iterator<Item = serde_json::Value>) -> serde_json::Value {
    serde_json::Value::Array(windows.collect())
}

/// `GET /status.json` (and `/status` for JSON clients): what `tower-responses status` prints
/// and the page shows. "degraded" when every upstream credential is cooling down (nothing
/// can be served until one comes back). Labels, kinds, states and figures only: never a
/// secret.
fn status_report(shared: &Shared) -> serde_json::Value {
    use crate::credentials::policy::KeyKind;
    let now = SystemTime::now();
    let credentials: Vec<serde_json::Value> = shared
        .pool
        .iter()
        .flat_map(|pool| pool.labels().into_iter().map(move |label| (pool, label)))
        .map(|(pool, label)| {
            let kind = match pool.kind_of(&label) {
                Some(KeyKind::Login) => "codex-auth",
                Some(KeyKind::Owned) => "codex-oauth",
                _ => "key",
            };
            let usage = pool.usage_of(&label);
            let windows = windows_json(usage.iter().flat_map(|u| u.windows.iter()).map(|w| {
                serde_json::json!({
                    "window": w.kind.as_str(),
                    "used_percent": w.used_at(now),
                    "window_minutes": w.window_minutes,
                    "resets_at": w.reset_at.map(unix_secs),
                })
            }));
            let mut c = match pool.cooldown_of(&label) {
                Some(c) => serde_json::json!({
                    "label": &*label,
                    "state": "cooling",
                    "class": c.class.as_str(),
                    "reason": c.reason,
                    "retry_in_secs": c.until.map(|t| t.duration_since(now).unwrap_or_default().as_secs()),
                    "until": c.until.map(unix_secs),
                    "action_required": action_required(&c.reason),
                }),
                _ => serde_json::json!({ "label": &*label, "state": "ready" }),
            };
            c["kind"] = kind.into();
            c["standing"] = pool.standing_of(&label).as_str().into();
            let today = shared.ledger.today(&label, now);
            c["requests_today"] = today.requests.into();
            c["tokens_today"] = today.tokens.into();
            c["plan_type"] = usage.as_ref().and_then(|u| u.plan_type.clone()).into();
            c["windows"] = windows;
            c
        })
        .collect();
    let pooled = windows_json(shared.pool.iter().flat_map(|p| p.pooled_usage()).map(|w| {
        serde_json::json!({
            "window": w.kind.as_str(),
            "used_percent": w.used_percent,
            "window_minutes": w.window_minutes,
            "resets_at": w.reset_at.map(unix_secs),
            "exhausted": w.exhausted,
            "accounts": w.accounts,
        })
    }));
    let sessions: Vec<serde_json::Value> = shared
        .ledger
        .top_sessions(10)
        .into_iter()
        .map(|(key, turns)| serde_json::json!({ "session": key, "input_tokens": turns }))
        .collect();
    let ready = credentials.is_empty() || credentials.iter().any(|c| c["state"] == "ready");
    // Where cooldowns, owners and sessions live, and whether a shared backend answers.
    let state = match shared.pool.as_ref().and_then(|p| p.state().health()) {
        Some(h) => serde_json::json!({
            "backend": h.backend,
            "up": h.up,
            "view_age_secs": h.view_age.map(|a| (a.as_secs_f64() * 10.0).round() / 10.0),
        }),
        None => serde_json::json!({ "backend": "memory", "up": true }),
    };
    let ws_open =
        (shared.config.websocket.max_sockets).saturating_sub(shared.ws_sockets.available_permits());
    serde_json::json!({
        "state": state,
        "websocket": { "client_sockets_open": ws_open, "max_sockets": shared.config.websocket.max_sockets },
        "sessions": sessions,
        "status": if ready { "ok" } else { "degraded" },
        "version": env!("CARGO_PKG_VERSION"),
        "upstream": shared.config.upstream,
        "profile": shared.config.profile().as_str(),
        "strategy": shared.config.strategy.as_str(),
        "soft_limit": shared.pool.as_ref().map(|p| p.soft_limit()),
        "now": unix_secs(now),
        "credentials": credentials,
        "pool": pooled,
    })
}

/// `GET /backend-api/wham/usage` and `GET /api/codex/usage`: the pool's usage in the payload
/// the Codex CLI parses, so it refuses to send only when every account is used up.
fn codex_usage(shared: &Shared) -> Result<serde_json::Value, ApiError> {
    let Some(pool) = &shared.pool else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "this proxy has no credential pool: each client's own account answers for its usage",
        )
        .with_code("unknown_url"));
    };
    let accounts: Vec<CredentialUsage> = pool
        .labels()
        .iter()
        .filter_map(|l| pool.usage_of(l))
        .collect();
    let refs: Vec<&CredentialUsage> = accounts.iter().collect();
    Ok(usage::codex_usage_payload(
        &pool.pooled_usage(),
        &refs,
        SystemTime::now(),
    ))
}

fn json_answer(value: &serde_json::Value) -> Response<ProxyBody> {
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(value.to_string()))
        .unwrap_or_else(|_| Response::new(full("")))
}

/// Refuses configurations the edge cannot serve safely, and values hyper would panic on.
fn check_edge_config(config: &ProxyConfig) -> Result<(), ConfigError> {
    if config.client_keys.is_empty() && !config.listen.ip().is_loopback() {
        return Err(ConfigError(format!(
            "refusing to listen on {} without a client key: anyone who can reach it could \
             spend your credentials; pass --client-key or listen on a loopback address",
            config.listen
        )));
    }
    if !config.client_keys.is_empty() && config.credentials.is_empty() {
        return Err(ConfigError(
            "client keys need upstream credentials (--credential): clients send their client \
             key in `Authorization`, the same header that would have to carry their own \
             upstream key, so a proxy with client keys cannot pass keys through"
                .into(),
        ));
    }
    for origin in &config.allowed_origins {
        let o = origin.trim().trim_end_matches('/');
        let valid = o.split_once("://").is_some_and(|(scheme, host)| {
            !scheme.is_empty() && !host.is_empty() && !host.contains(['/', '*', ' '])
        });
        if !valid {
            return Err(ConfigError(format!(
                "allowed_origins: `{origin}` is not an origin like `https://app.example` or \
                 `http://localhost:3000` (no paths, no wildcards)"
            )));
        }
    }
    // Timeouts end up as `Instant + Duration` inside hyper, which panics on overflow.
    let timeouts = [
        ("header_read_timeout_secs", config.header_read_timeout_secs),
        ("body_read_timeout_secs", config.body_read_timeout_secs),
    ];
    for (name, secs) in timeouts {
        if !(1..=MAX_CLIENT_TIMEOUT_SECS).contains(&secs) {
            return Err(ConfigError(format!(
                "{name} must be between 1 and {MAX_CLIENT_TIMEOUT_SECS}"
            )));
        }
    }
    for (name, n) in [
        ("max_headers", config.max_headers),
        ("max_connections", config.max_connections),
    ] {
        if n == 0 {
            return Err(ConfigError(format!("{name} must be at least 1")));
        }
    }
    if config.max_header_bytes < MIN_HEADER_BYTES {
        return Err(ConfigError(format!(
            "max_header_bytes must be at least {MIN_HEADER_BYTES}"
        )));
    }
    Ok(())
}

fn check_client_key(shared: &Shared, headers: &http::HeaderMap) -> Result<(), ApiError> {
    if shared.client_keys.is_empty() {
        return Ok(());
    }
    let presented = bearer_token(headers).unwrap_or_default();
    // Compare against every key so the time taken does not reveal which one matched.
    let ok = shared
        .client_keys
        .iter()
        .fold(false, |acc, k| k.ct_eq(presented) | acc);
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "missing or wrong client key: send `Authorization: Bearer <client key>`",
        )
        .with_code("invalid_api_key"))
    }
}

fn is_websocket_upgrade(headers: &http::HeaderMap) -> bool {
    crate::websocket::accept::is_upgrade(headers)
}

/// A WebSocket upgrade that passed the edge and the client key: the `101`, and the socket's
/// session spawned to run once hyper hands the connection over. Each turn goes through
/// [`ws_turn`], the same stack as an HTTP request.
fn accept_websocket(
    shared: &Arc<Shared>,
    mut req: Request<Incoming>,
    route: &'static str,
) -> Result<Response<ProxyBody>, ApiError> {
    use crate::websocket::choose::ChosenCarrier;
    use crate::websocket::http_carrier::{HttpCarrier, TurnService};
    use crate::websocket::{SocketCarrier, accept, session::Session};
    let limits = shared.config.websocket.clone();
    // 426 is the one answer on which the Codex CLI goes to HTTP at once, for the session.
    let use_http = |why: &str, code: &str| {
        ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "invalid_request_error",
            format!("{why}; use HTTP"),
        )
        .with_code(code)
    };
    if !limits.enabled {
        return Err(use_http(
            "WebSocket is switched off on this proxy (websocket.enabled)",
            "websocket_not_supported",
        ));
    }
    if !matches!(route, "responses" | "codex_responses") {
        return Err(use_http(
            "WebSocket is served on /v1/responses only",
            "websocket_not_supported",
        ));
    }
    let res = accept::handshake(&req)?;
    let Ok(permit) = shared.ws_sockets.clone().try_acquire_owned() else {
        tracing::warn!(
            max_sockets = limits.max_sockets,
            "client WebSocket limit reached; the client is sent to HTTP"
        );
        return Err(use_http(
            "this proxy serves as many WebSockets as it may (websocket.max_sockets)",
            "websocket_limit_reached",
        ));
    };
    let upgrade = hyper::upgrade::on(&mut req);
    let (parts, _) = req.into_parts();
    let turns = shared.clone();
    let service = TurnService::new(tower::service_fn(move |req| ws_turn(turns.clone(), req)));
    let http = HttpCarrier::new(service, "/v1/responses");
    let profile = shared.config.profile();
    let carrier = match &shared.pool {
        Some(pool) if limits.upstream.uses_socket(profile, true) => {
            match SocketCarrier::new(
                pool.clone(),
                shared.connector.clone(),
                &shared.config.upstream,
            ) {
                Ok(socket) => ChosenCarrier::socket(socket.metrics(shared.metrics.clone()), http),
                Err(e) => {
                    tracing::warn!(error = %e, "no upstream socket for this upstream; turns go over HTTP");
                    ChosenCarrier::http(http)
                }
            }
        }
        _ => ChosenCarrier::http(http),
    };
    tracing::info!(carrier = ?carrier, transport = limits.upstream.as_str(), "websocket accepted");
    let session = Session::new(
        carrier,
        parts.headers,
        limits.clone(),
        shared.metrics.clone(),
    )
    .stop_on(shared.stopping.subscribe())
    .transcript_budget(shared.transcripts.clone());
    let metrics = shared.metrics.clone();
    tokio::spawn(
        accept::serve(upgrade, session, limits, metrics, permit)
            // Under the upgrade request's span: every line of the socket carries its id.
            .instrument(tracing::info_span!(parent: &tracing::Span::current(), "websocket")),
    );
    Ok(res)
}

/// One turn of a client WebSocket, as the HTTP request it stands for: mapped to the
/// upstream, its body's facts read, then [`forward`] like any `POST /v1/responses`.
async fn ws_turn(
    shared: Arc<Shared>,
    mut req: Request<ReplayBody>,
) -> Result<Response<ProxyBody>, ApiError> {
    let started = Instant::now();
    let upstream_uri = shared.base.map(req.uri()).ok_or_else(|| {
        ApiError::invalid_request("path cannot be mapped to the upstream").with_code("invalid_path")
    })?;
    let (facts, spans) = check_json_object(req.body().bytes())?;
    req.extensions_mut().insert(RequestStarted(started));
    shared.base.prepare(&mut req, upstream_uri);
    RequestFacts::attach_parsed(&mut req, facts, spans);
    let res = forward(&shared, req).await;
    let status = match &res {
        Ok(r) => r.status(),
        Err(e) => e.status,
    };
    shared.metrics.inc(
        "tr_requests_total",
        "Requests answered, by route and status.",
        &[("route", "responses_ws"), ("status", status.as_str())],
    );
    tracing::info!(
        route = "responses_ws",
        status = status.as_u16(),
        head_ms = started.elapsed().as_millis() as u64,
        "websocket turn"
    );
    res
}

/// Requests to the Responses API are JSON objects; catching anything else here gives the
/// client a clear 400 instead of whatever the upstream makes of it.
///
/// The same pass finds where the body's top-level entries sit, for the layers that edit it.
fn check_json_object(body: &[u8]) -> Result<(RequestFacts, Option<ObjectSpans>), ApiError> {
    RequestFacts::try_parse_with_spans(body).map_err(|e| {
        let what = if std::str::from_utf8(body).is_err() {
            "the request body is not valid UTF-8".to_string()
        } else {
            format!("the request body is not a JSON object: {e}")
        };
        ApiError::invalid_request(what).with_code("invalid_json")
    })
}
