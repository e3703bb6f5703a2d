//! The load client: one keep-alive HTTP/1.1 connection per simulated client, timing each
//! answer at its head, its first content event, every event end, and its last byte.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use memchr::memmem;
use tokio::net::TcpStream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What to send.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub path: String,
    pub auth: Option<String>,
    /// Send `max_output_tokens` in every body.
    pub max_output_tokens: Option<u32>,
}

/// Timings of one answer, from the moment the request was sent (or, open-loop, scheduled).
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub head: Duration,
    pub first_content: Option<Duration>,
    pub last: Duration,
    pub events: usize,
    /// HTTP status (0 when none arrived).
    pub status: u16,
    /// The first bytes of a failed answer, for the error report.
    pub error_body: Option<String>,
    /// Gaps between consecutive event ends (only when asked for).
    pub gaps: Vec<Duration>,
    pub ok: bool,
}

/// A Codex-CLI-shaped request body (about 2.7 KB) naming `model`; with `max_output_tokens`
/// as an SDK would send it (the Codex backend refuses it, so the proxy removes it and
/// enforces the cap on the stream, parsing every delta).
pub fn request_body(model: &str, stream: bool, max_output_tokens: Option<u32>) -> Bytes {
    let instructions = "You are Codex, a coding agent running in the user's terminal. Follow the \
        repository's conventions, keep changes minimal, run the tests, and explain what you \
        changed and why. Never invent file contents; read them first. "
        .repeat(8);
    let body = serde_json::json!({
        "model": model,
        "instructions": instructions,
        "input": [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "<environment_context>cwd: /work/repo, sandbox: workspace-write</environment_context>"}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "The proxy test fails on a cut stream; find why and fix it, then run cargo test."}]},
        ],
        "tools": [{
            "type": "function", "name": "shell",
            "description": "Runs a shell command and returns its output.",
            "strict": false,
            "parameters": {"type": "object", "properties": {
                "command": {"type": "array", "items": {"type": "string"}},
                "workdir": {"type": "string"}, "timeout_ms": {"type": "number"}},
                "required": ["command"], "additionalProperties": false},
        }],
        "tool_choice": "auto",
        "parallel_tool_calls": false,
        "reasoning": {"effort": "medium", "summary": "auto"},
        "store": false,
        "stream": stream,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "0198c1f2-6b1a-7c33-9d2e-bench00000001",
    });
    let mut body = body;
    if let Some(max) = max_output_tokens {
        body["max_output_tokens"] = serde_json::json!(max);
    }
    Bytes::from(body.to_string())
}

/// `absolute` for the pooled client (it needs the authority and sends origin-form itself);
/// a bare connection sends the URI as given, and some servers (uvicorn) route only
/// origin-form.
fn build(target: &Target, body: &Bytes, absolute: bool) -> Request<Full<Bytes>> {
    let uri = if absolute {
        format!("http://{}{}", target.addr, target.path)
    } else {
        target.path.clone()
    };
    let mut req = Request::post(uri)
        .header(header::HOST, target.addr.to_string())
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "text/event-stream");
    if let Some(auth) = &target.auth {
        req = req.header(header::AUTHORIZATION, format!("Bearer {auth}"));
    }
    req.body(Full::new(body.clone()))
        .unwrap_or_else(|_| Request::new(Full::new(Bytes::new())))
}

/// One client's connection, reopened when it breaks.
pub struct Conn {
    target: Target,
    sender: Option<SendRequest<Full<Bytes>>>,
    /// Sent as the `session_id` header of the next request (`drive --sessions`).
    pub session: Option<String>,
}

impl Conn {
    pub fn new(target: Target) -> Conn {
        Conn {
            target,
            sender: None,
            session: None,
        }
    }

    async fn sender(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, BoxError> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = TcpStream::connect(self.target.addr).await?;
            stream.set_nodelay(true)?;
            let (sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.sender = Some(sender);
        }
        let sender = self.sender.as_mut().ok_or("no connection")?;
        sender.ready().await?;
        Ok(sender)
    }

    /// Sends one request and reads the whole answer; `opened` counts answers whose first
    /// content event arrived.
    pub async fn once(&mut self, body: &Bytes, gaps: bool, opened: Option<&AtomicUsize>) -> Sample {
        let start = Instant::now();
        let mut req = build(&self.target, body, false);
        if let Some(id) = self.session.as_deref().and_then(|s| s.parse().ok()) {
            req.headers_mut().insert("session_id", id);
        }
        let res = match self.sender().await {
            Ok(s) => s.send_request(req).await.map_err(BoxError::from),
            Err(e) => Err(e),
        };
        match res {
            Ok(res) => read(res, start, gaps, opened).await,
            Err(_) => {
                self.sender = None;
                Sample {
                    last: start.elapsed(),
                    ..Sample::default()
                }
            }
        }
    }
}

/// Reads an answer body, timing events. `start` is when the request counted as sent.
pub async fn read(
    res: http::Response<hyper::body::Incoming>,
    start: Instant,
    gaps: bool,
    opened: Option<&AtomicUsize>,
) -> Sample {
    let mut s = Sample {
        head: start.elapsed(),
        ..Sample::default()
    };
    s.status = res.status().as_u16();
    let status_ok = res.status().is_success();
    let mut body = res.into_body();
    let content = memmem::Finder::new(b"output_item.added");
    let completed = memmem::Finder::new(b"response.completed");
    let mut seen_completed = false;
    // The last bytes of the previous chunk, so markers split across chunks are still found.
    let mut tail: Vec<u8> = Vec::with_capacity(64);
    let mut prev_newline = false;
    let mut last_event: Option<Instant> = None;
    loop {
        match body.frame().await {
            None => break,
            Some(Err(_)) => {
                s.last = start.elapsed();
                return s;
            }
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                let now = Instant::now();
                let mut window = std::mem::take(&mut tail);
                window.extend_from_slice(&data[..data.len().min(64)]);
                let hit = |f: &memmem::Finder| f.find(&window).is_some() || f.find(&data).is_some();
                if s.first_content.is_none() && hit(&content) {
                    s.first_content = Some(now - start);
                    if let Some(o) = opened {
                        o.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if !seen_completed && hit(&completed) {
                    seen_completed = true;
                }
                let mut ended = 0;
                for b in data.iter() {
                    let nl = *b == b'\n';
                    if nl && prev_newline {
                        ended += 1;
                        prev_newline = false;
                    } else {
                        prev_newline = nl;
                    }
                }
                if ended > 0 {
                    s.events += ended;
                    if gaps {
                        if let Some(prev) = last_event {
                            s.gaps.push(now - prev);
                        }
                        // Events that arrived in the same chunk are zero apart.
                        s.gaps
                            .extend(std::iter::repeat_n(Duration::ZERO, ended - 1));
                    }
                    last_event = Some(now);
                }
                let keep = data.len().min(64);
                tail.clear();
                tail.extend_from_slice(&data[data.len() - keep..]);
            }
        }
    }
    s.last = start.elapsed();
    // A JSON answer (stream:false) has no events; its completeness is its status.
    s.ok = status_ok && (seen_completed || s.events == 0);
    s
}

/// Sequential requests on one connection for `dur` (after `warmup` unrecorded ones).
pub async fn serial(
    target: &Target,
    body: &Bytes,
    warmup: usize,
    dur: Duration,
    max: usize,
) -> Vec<Sample> {
    let mut conn = Conn::new(target.clone());
    for _ in 0..warmup {
        conn.once(body, false, None).await;
    }
    let end = Instant::now() + dur;
    let mut out = Vec::new();
    while Instant::now() < end && out.len() < max {
        out.push(conn.once(body, false, None).await);
    }
    out
}

/// `clients` closed-loop clients for `dur`; returns samples and the wall time used.
pub async fn closed_loop(
    target: &Target,
    body: &Bytes,
    clients: usize,
    dur: Duration,
    gaps: bool,
) -> (Vec<Sample>, Duration) {
    let start = Instant::now();
    let end = start + dur;
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let target = target.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::new(target);
            let mut out = Vec::new();
            while Instant::now() < end {
                out.push(conn.once(&body, gaps, None).await);
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        if let Ok(v) = t.await {
            all.extend(v);
        }
    }
    (all, start.elapsed())
}

/// Open loop: requests start at a fixed rate whatever the answers do; latency counts from
/// the scheduled start, so queueing shows. Requests still running at `drain` are counted as
/// failed.
pub async fn open_loop(
    target: &Target,
    body: &Bytes,
    rate: f64,
    dur: Duration,
    drain: Duration,
) -> (Vec<Sample>, usize) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build(connector);
    let client = Arc::new(client);
    let total = (rate * dur.as_secs_f64()) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let at = start + interval * i as u32;
        tokio::time::sleep_until(at.into()).await;
        let client = client.clone();
        let req = build(target, body, true);
        tasks.push(tokio::spawn(async move {
            match client.request(req).await {
                Ok(res) => read(res, at, false, None).await,
                Err(_) => Sample {
                    last: at.elapsed(),
                    ..Sample::default()
                },
            }
        }));
    }
    let deadline = tokio::time::Instant::now() + drain;
    let mut out = Vec::with_capacity(total);
    let mut unfinished = 0;
    for mut t in tasks {
        match tokio::time::timeout_at(deadline, &mut t).await {
            Ok(Ok(s)) => out.push(s),
            _ => {
                t.abort();
                unfinished += 1;
            }
        }
    }
    (out, unfinished)
}

/// `n` streams opened over `ramp`, each on its own connection, all held to the end. Calls
/// `probe` once, with the number of streams whose content had started, as soon as all `n`
/// have started or at `probe_at` after the start, whichever comes first (a loaded proxy
/// that starts them late is then read with most of them open, not a few).
pub async fn many_streams(
    target: &Target,
    body: &Bytes,
    n: usize,
    ramp: Duration,
    probe_at: Duration,
    deadline: Duration,
    probe: impl FnOnce(usize),
) -> (Vec<Sample>, usize) {
    let opened = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let target = target.clone();
        let body = body.clone();
        let opened = opened.clone();
        let at = start + ramp.mul_f64(i as f64 / n as f64);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let mut conn = Conn::new(target);
            conn.once(&body, true, Some(&opened)).await
        }));
    }
    let probe_by = start + probe_at;
    while opened.load(Ordering::Relaxed) < n && Instant::now() < probe_by {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    probe(opened.load(Ordering::Relaxed));
    let end = tokio::time::Instant::from_std(start + deadline);
    let mut out = Vec::with_capacity(n);
    let mut unfinished = 0;
    for mut t in tasks {
        match tokio::time::timeout_at(end, &mut t).await {
            Ok(Ok(s)) => out.push(s),
            _ => {
                t.abort();
                unfinished += 1;
            }
        }
    }
    (out, unfinished)
}
