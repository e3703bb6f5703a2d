//! `tower-responses status`: asks a running proxy's `GET /status.json` and prints its health,
//! the state of each upstream credential and its usage windows. [`render_html`] makes the
//! `GET /status` page from the same JSON.
//!
//! Exit codes: 0 when the proxy answers and can serve (`"status": "ok"`), 1 when it cannot be
//! reached, refuses, or every credential is cooling down (`"degraded"`).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::ProxyConfig;
use super::cli::StatusArgs;

/// Where a proxy listens by default.
const DEFAULT_URL: &str = "http://127.0.0.1:8787";

/// The most of an answer read: a status page is a few hundred bytes per credential.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

pub(super) async fn run(args: StatusArgs) -> ExitCode {
    let answer = match target(&args) {
        Ok((url, key)) => fetch(&args, &url, key.as_deref())
            .await
            .map(|answer| (url, answer)),
        Err(msg) => Err(msg),
    };
    match answer {
        Ok((url, answer)) => {
            if args.json {
                println!("{answer}");
            } else {
                print!("{}", describe(&url, &answer));
            }
            if answer.get("status").and_then(Value::as_str) == Some("ok") {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(msg) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// `URL/status.json`, keeping a path prefix the proxy may sit under (`http://host/tr`).
fn status_uri(base: &Uri) -> Result<Uri, String> {
    if base.scheme_str() != Some("http") {
        return Err(format!(
            "--url `{base}`: status speaks plain HTTP to a proxy (http://HOST:PORT)"
        ));
    }
    let authority = base
        .authority()
        .ok_or_else(|| format!("--url `{base}` has no host"))?;
    let prefix = base.path().trim_end_matches('/');
    format!("http://{authority}{prefix}/status.json")
        .parse()
        .map_err(|e| format!("--url `{base}`: {e}"))
}

/// Where to ask and with which key: the flags, else the proxy's own TOML file, else the
/// default address without a key.
fn target(args: &StatusArgs) -> Result<(Uri, Option<String>), String> {
    let file = match &args.config {
        Some(path) => Some(ProxyConfig::from_file(path).map_err(|e| e.to_string())?),
        None => None,
    };
    let url = match (&args.url, &file) {
        (Some(url), _) => url.clone(),
        (None, Some(cfg)) => {
            let mut addr = cfg.listen;
            // A proxy listening on every address is reached on loopback.
            if addr.ip().is_unspecified() {
                addr.set_ip(match addr {
                    SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                    SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
                });
            }
            format!("http://{addr}")
                .parse()
                .map_err(|e| format!("listen `{addr}`: {e}"))?
        }
        (None, None) => Uri::from_static(DEFAULT_URL),
    };
    let key = match (&args.client_key, &file) {
        (Some(source), _) => {
            let key = source.load().map_err(|e| format!("--client-key: {e}"))?;
            Some(key.token.expose().to_string())
        }
        (None, Some(cfg)) => cfg.client_keys.first().map(|k| k.expose().to_string()),
        (None, None) => None,
    };
    Ok((url, key))
}

async fn fetch(args: &StatusArgs, url: &Uri, key: Option<&str>) -> Result<Value, String> {
    let uri = status_uri(url)?;
    let mut req = Request::get(uri.clone()).header(header::ACCEPT, "application/json");
    if let Some(key) = key {
        req = req.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let timeout = Duration::from_secs(args.timeout_secs);
    let answer = async {
        let res = client
            .request(req)
            .await
            .map_err(|e| format!("cannot reach the proxy at {uri}: {}", root_cause(&e)))?;
        let status = res.status();
        let body = Limited::new(res.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| format!("the answer from {uri} broke off: {e}"))?
            .to_bytes();
        Ok::<_, String>((status, body))
    };
    let (status, body) = tokio::time::timeout(timeout, answer)
        .await
        .map_err(|_| format!("no answer from {uri} in {} s", args.timeout_secs))??;
    let value: Value = serde_json::from_slice(&body).map_err(|_| {
        format!(
            "{uri} answered {status} with something that is not JSON: is this a tower-responses proxy?"
        )
    })?;
    if status != StatusCode::OK {
        let message = value
            .pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap_or("no error message");
        let hint = if status == StatusCode::UNAUTHORIZED {
            " (pass its client key with --client-key)"
        } else {
            ""
        };
        return Err(format!("{uri} answered {status}: {message}{hint}"));
    }
    Ok(value)
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// The answer in a few lines a person reads.
fn describe(url: &Uri, answer: &Value) -> String {
    let text = |v: &Value, key: &str| {
        v.get(key)
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string()
    };
    let mut out = format!("proxy {url}: {}\n", text(answer, "status"));
    out.push_str(&format!(
        "upstream: {} ({})\n",
        text(answer, "upstream"),
        text(answer, "profile")
    ));
    out.push_str(&format!("state: {}\n", state_line(answer)));
    if let Some(open) = answer
        .pointer("/websocket/client_sockets_open")
        .and_then(Value::as_u64)
    {
        out.push_str(&format!("websockets: {open} client sockets open\n"));
    }
    let credentials = answer
        .get("credentials")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if credentials.is_empty() {
        out.push_str("credentials: none (each client's own key goes upstream)\n");
    }
    for c in &credentials {
        let mut line = format!("credential {}: {}", text(c, "label"), text(c, "state"));
        if let Some(class) = c.get("class").and_then(Value::as_str) {
            line.push_str(&format!(" ({class}"));
            if let Some(reason) = c.get("reason").and_then(Value::as_str) {
                line.push_str(&format!(": {reason}"));
            }
            match c.get("retry_in_secs").and_then(Value::as_u64) {
                Some(secs) => line.push_str(&format!(", back in {secs} s)")),
                None => line.push_str(", until its login changes or an operator clears it)"),
            }
        }
        out.push_str(&line);
        out.push('\n');
        if let Some(requests) = c.get("requests_today").and_then(Value::as_u64) {
            let tokens = c.get("tokens_today").and_then(Value::as_u64).unwrap_or(0);
            out.push_str(&format!(
                "  today      {requests} requests, {tokens} tokens\n"
            ));
        }
        for w in c
            .get("windows")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let used = w.get("used_percent").and_then(Value::as_f64).unwrap_or(0.0);
            let mut line = format!("  {:<10} {:>5.1} % used", text(w, "window"), used);
            if let Some(at) = w.get("resets_at").and_then(Value::as_u64) {
                line.push_str(&format!(", resets {}", clock(at)));
            }
            out.push_str(&line);
            out.push('\n');
        }
    }
    for w in answer
        .get("pool")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let used = w.get("used_percent").and_then(Value::as_f64).unwrap_or(0.0);
        out.push_str(&format!(
            "pool {}: {:.1} % used over {} accounts{}\n",
            text(w, "window"),
            used,
            w.get("accounts").and_then(Value::as_u64).unwrap_or(0),
            if w.get("exhausted").and_then(Value::as_bool) == Some(true) {
                " (exhausted)"
            } else {
                ""
            }
        ));
    }
    out
}

/// Where the proxy keeps its state and how that backend is doing, in one line:
/// `memory`, `redis (up, local view 0.4 s old)`, or `redis DOWN: serving on a local view 12 s
/// old`.
fn state_line(report: &Value) -> String {
    let state = report.get("state");
    let backend = state
        .and_then(|s| s.get("backend"))
        .and_then(Value::as_str)
        .unwrap_or("memory");
    if backend == "memory" {
        return "memory (this process only)".to_string();
    }
    let age = match state
        .and_then(|s| s.get("view_age_secs"))
        .and_then(Value::as_f64)
    {
        Some(a) => format!("local view {a:.1} s old"),
        None => "local view never read".to_string(),
    };
    match state.and_then(|s| s.get("up")).and_then(Value::as_bool) {
        Some(true) => format!("{backend} (up, {age})"),
        _ => format!("{backend} DOWN: serving on the {age}"),
    }
}

/// A Unix time as `YYYY-MM-DD HH:MM UTC` (the page and the terminal have no time zone).
fn clock(unix: u64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_secs(unix);
    let s = httpdate::fmt_http_date(t);
    // `Sun, 06 Nov 1994 08:49:37 GMT` -> `06 Nov 1994 08:49 UTC`
    match s.get(5..22) {
        Some(day_time) => format!("{day_time} UTC"),
        None => s,
    }
}

/// Escapes text for HTML (labels are configured by the operator; reasons quote upstreams).
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const PAGE_STYLE: &str = "body{font:14px system-ui,sans-serif;margin:24px;color:#1b1f24;background:#f6f8fa}\
h1{font-size:20px;margin:0 0 4px}.sub{color:#57606a;margin-bottom:16px}\
table{border-collapse:collapse;background:#fff;width:100%;max-width:1100px}\
th,td{border-bottom:1px solid #d0d7de;padding:8px 10px;text-align:left;vertical-align:top}\
th{background:#eaeef2;font-weight:600}.state-ready{color:#1a7f37}.state-cooling{color:#9a6700}\
.state-reauth{color:#cf222e;font-weight:600}.win{margin:2px 0}.bar{display:inline-block;width:160px;\
height:10px;background:#eaeef2;border-radius:5px;overflow:hidden;vertical-align:middle;margin:0 6px}\
.fill{height:100%;background:#2da44e}.fill.warn{background:#bf8700}.fill.full{background:#cf222e}\
.muted{color:#57606a}.win>.muted:first-child{display:inline-block;width:76px}.win{white-space:nowrap}";

fn bar(w: &Value) -> String {
    let used = w
        .get("used_percent")
        .and_then(Value::as_f64)
        .unwrap_or(0.0)
        .clamp(0.0, 100.0);
    let class = if used >= 100.0 {
        "fill full"
    } else if used >= 80.0 {
        "fill warn"
    } else {
        "fill"
    };
    let window = w.get("window").and_then(Value::as_str).unwrap_or("?");
    let reset = w
        .get("resets_at")
        .and_then(Value::as_u64)
        .map(|at| format!(" <span class=\"muted\">resets {}</span>", clock(at)))
        .unwrap_or_default();
    format!(
        "<div class=\"win\" data-window=\"{w}\"><span class=\"muted\">{w}</span>\
         <span class=\"bar\" role=\"meter\" aria-valuenow=\"{used:.0}\" aria-valuemin=\"0\" \
         aria-valuemax=\"100\"><span class=\"{class}\" style=\"width:{used:.1}%;display:block\"></span></span>\
         {used:.1} %{reset}</div>",
        w = esc(window),
    )
}

/// A session's input tokens per turn as an inline SVG line: a context blow-up climbs.
fn sparkline(turns: &[u64]) -> String {
    let (w, h) = (240.0, 40.0);
    let max = turns.iter().copied().max().unwrap_or(0).max(1) as f64;
    let step = if turns.len() > 1 {
        w / (turns.len() - 1) as f64
    } else {
        0.0
    };
    let points: Vec<String> = turns
        .iter()
        .enumerate()
        .map(|(i, t)| {
            format!(
                "{:.1},{:.1}",
                i as f64 * step,
                h - 2.0 - (*t as f64 / max) * (h - 4.0)
            )
        })
        .collect();
    format!(
        "<svg class=\"turns\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" \
         aria-label=\"input tokens per turn\"><polyline fill=\"none\" stroke=\"#0969da\" \
         stroke-width=\"2\" points=\"{}\"/></svg>",
        points.join(" ")
    )
}

fn sessions_html(report: &Value) -> String {
    let rows: String = report
        .get("sessions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|s| {
            let turns: Vec<u64> = s
                .get("input_tokens")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_u64)
                .collect();
            let key: String = s
                .get("session")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .chars()
                .take(24)
                .collect();
            format!(
                "<tr class=\"session\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&key),
                turns.len(),
                turns.last().copied().unwrap_or(0),
                sparkline(&turns)
            )
        })
        .collect();
    if rows.is_empty() {
        return "<p class=\"muted\">no session has finished a turn yet</p>".to_string();
    }
    format!(
        "<table><thead><tr><th>session</th><th>turns</th><th>last input tokens</th>\
         <th>input tokens per turn</th></tr></thead><tbody>{rows}</tbody></table>"
    )
}

/// The `GET /status` page: one server-rendered HTML document, no script and no external
/// asset, from the same JSON as `/status.json`.
pub(super) fn render_html(report: &Value, now: std::time::SystemTime) -> String {
    let text = |v: &Value, key: &str| esc(v.get(key).and_then(Value::as_str).unwrap_or("?"));
    let now_unix = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut rows = String::new();
    let credentials = report
        .get("credentials")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for c in &credentials {
        let (state_class, state) = match (
            c.get("state").and_then(Value::as_str),
            c.get("action_required").and_then(Value::as_str),
        ) {
            (Some("ready"), _) => (
                "state-ready",
                format!("in rotation ({})", text(c, "standing")),
            ),
            (_, Some(action)) => ("state-reauth", format!("reauth needed: {}", esc(action))),
            _ => {
                let until = c
                    .get("until")
                    .and_then(Value::as_u64)
                    .map(|t| format!(" until {}", clock(t)))
                    .unwrap_or_default();
                (
                    "state-cooling",
                    format!("cooling: {}{until}", text(c, "class")),
                )
            }
        };
        let windows: String = c
            .get("windows")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(bar)
            .collect();
        let windows = if windows.is_empty() {
            "<span class=\"muted\">no usage reported yet</span>".to_string()
        } else {
            windows
        };
        rows.push_str(&format!(
            "<tr class=\"credential\" data-label=\"{label}\"><td>{label}</td><td>{kind}</td>\
             <td class=\"{state_class}\">{state}</td><td>{windows}</td><td>{requests}</td><td>{tokens}</td></tr>",
            label = text(c, "label"),
            kind = text(c, "kind"),
            requests = c.get("requests_today").and_then(Value::as_u64).unwrap_or(0),
            tokens = c.get("tokens_today").and_then(Value::as_u64).unwrap_or(0),
        ));
    }
    if credentials.is_empty() {
        rows.push_str("<tr><td colspan=\"6\" class=\"muted\">no credentials: each client's own key goes upstream</td></tr>");
    }
    let pool: String = report
        .get("pool")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(bar)
        .collect();
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>tower-responses status</title>\
         <style>{PAGE_STYLE}</style></head><body><h1>tower-responses: {status}</h1>\
         <div class=\"sub\">upstream {upstream} ({profile}) · strategy {strategy} · version {version} · \
         as of {asof}</div><div class=\"sub\" id=\"state\">state {state} · {sockets} client WebSockets open</div><h2>Pool</h2><div id=\"pool\">{pool}</div><h2>Credentials</h2>\
         <table><thead><tr><th>credential</th><th>kind</th><th>state</th><th>windows</th>\
         <th>requests today</th><th>tokens today</th></tr></thead><tbody>{rows}</tbody></table>\
         <h2>Sessions with the most input</h2>{sessions}</body></html>",
        status = text(report, "status"),
        upstream = text(report, "upstream"),
        profile = text(report, "profile"),
        strategy = text(report, "strategy"),
        version = text(report, "version"),
        asof = clock(now_unix),
        state = esc(&state_line(report)),
        sockets = report
            .pointer("/websocket/client_sockets_open")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        sessions = sessions_html(report),
        pool = if pool.is_empty() {
            "<span class=\"muted\">no usage reported yet</span>".to_string()
        } else {
            pool
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_path_follows_the_url_prefix() {
        let uri = |s: &str| status_uri(&s.parse().unwrap());
        assert_eq!(
            uri("http://127.0.0.1:8787").unwrap(),
            "http://127.0.0.1:8787/status.json"
        );
        assert_eq!(uri("http://h:1/tr/").unwrap(), "http://h:1/tr/status.json");
        assert!(uri("https://h").unwrap_err().contains("plain HTTP"));
    }

    #[test]
    fn a_cooling_credential_says_why_and_for_how_long() {
        let answer = serde_json::json!({
            "status": "degraded", "upstream": "http://u/v1", "profile": "openai",
            "credentials": [{"label": "key-1", "state": "cooling", "class": "rate_limited",
                             "reason": "429", "retry_in_secs": 30}]
        });
        let text = describe(&"http://127.0.0.1:1".parse().unwrap(), &answer);
        assert!(text.contains("degraded"), "{text}");
        assert!(
            text.contains("credential key-1: cooling (rate_limited: 429, back in 30 s)"),
            "{text}"
        );
    }

    #[test]
    fn the_state_line_says_when_the_shared_store_is_down() {
        let report = |state: Value| serde_json::json!({ "state": state });
        assert_eq!(
            state_line(&report(
                serde_json::json!({"backend": "memory", "up": true})
            )),
            "memory (this process only)"
        );
        assert_eq!(
            state_line(&report(
                serde_json::json!({"backend": "redis", "up": true, "view_age_secs": 0.4})
            )),
            "redis (up, local view 0.4 s old)"
        );
        assert_eq!(
            state_line(&report(
                serde_json::json!({"backend": "redis", "up": false, "view_age_secs": 12.0})
            )),
            "redis DOWN: serving on the local view 12.0 s old"
        );
        let text = describe(
            &"http://127.0.0.1:1".parse().unwrap(),
            &report(serde_json::json!({"backend": "redis", "up": false})),
        );
        assert!(
            text.contains("state: redis DOWN: serving on the local view never read"),
            "{text}"
        );
    }
}
