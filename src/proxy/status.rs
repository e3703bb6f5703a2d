//! `tower-responses status`: asks a running proxy's `GET /status` and prints its health and
//! the state of each upstream credential.
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

/// `URL/status`, keeping a path prefix the proxy may sit under (`http://host/tr`).
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
    format!("http://{authority}{prefix}/status")
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
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_path_follows_the_url_prefix() {
        let uri = |s: &str| status_uri(&s.parse().unwrap());
        assert_eq!(
            uri("http://127.0.0.1:8787").unwrap(),
            "http://127.0.0.1:8787/status"
        );
        assert_eq!(uri("http://h:1/tr/").unwrap(), "http://h:1/tr/status");
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
}
