//! The `tower-responses` binary as a user runs it: its version and help, its errors for bad
//! values, configuration from flags, `TR_*` variables and TOML, and `serve` / `status`
//! against the mock upstream over real HTTP, with request ids in the logs and the answers.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use http::{Request, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tower_responses::testing::{MockUpstream, Reply};

use common::{client, json_req, send_collect};

const BIN: &str = env!("CARGO_BIN_EXE_tower-responses");
/// A bound on every wait for the child, far above what it needs.
const WAIT: Duration = Duration::from_secs(20);

/// The binary with a clean environment: no `TR_*` or `RUST_LOG` from the caller.
fn command() -> Command {
    let mut cmd = Command::new(BIN);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("TR_") || name == "RUST_LOG" {
            cmd.env_remove(&*name);
        }
    }
    cmd.stdin(Stdio::null());
    cmd
}

fn run(args: &[&str]) -> Output {
    command().args(args).output().expect("the binary runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A served proxy process; killed when dropped.
struct Served {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
    addr: SocketAddr,
}

impl Served {
    /// Starts `cmd` and waits for its "proxy ready" line, which names the bound address.
    async fn start(mut cmd: Command) -> Served {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut served = Served {
            child,
            lines,
            seen: Vec::new(),
            addr: ([127, 0, 0, 1], 0).into(),
        };
        let ready = served.wait_line(|l| l.contains("proxy ready")).await;
        served.addr = listen_addr(&ready);
        served
    }

    /// The next line (after those already seen) for which `pred` holds.
    async fn wait_line(&mut self, pred: impl Fn(&str) -> bool) -> String {
        let found = tokio::time::timeout(WAIT, async {
            while let Some(line) = self.lines.recv().await {
                self.seen.push(line.clone());
                if pred(&line) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            _ => panic!(
                "no such log line; the process wrote:\n{}",
                self.seen.join("\n")
            ),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `127.0.0.1:PORT` in a "proxy ready" line, text or JSON.
fn listen_addr(line: &str) -> SocketAddr {
    let at = line
        .find("127.0.0.1:")
        .expect("the ready line names the address");
    let rest = &line[at..];
    let end = rest
        .char_indices()
        .skip("127.0.0.1:".len())
        .find(|(_, c)| !c.is_ascii_digit())
        .map_or(rest.len(), |(i, _)| i);
    rest[..end].parse().expect("an address")
}

fn streaming_request(
    url: &str,
    request_id: Option<&str>,
) -> Request<http_body_util::Full<bytes::Bytes>> {
    let mut req = json_req(
        url,
        None,
        json!({"model": "gpt-5", "input": "hello", "stream": true}),
    );
    if let Some(id) = request_id {
        req.headers_mut()
            .insert("x-request-id", id.parse().unwrap());
    }
    req
}

#[test]
fn version_prints_the_crate_version() {
    let out = run(&["--version"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        format!("tower-responses {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn every_subcommand_has_its_own_help() {
    for (sub, flag) in [
        ("serve", "--upstream <URL>"),
        ("demo", "--log-format <FORMAT>"),
        ("status", "--url <URL>"),
    ] {
        let out = run(&[sub, "--help"]);
        assert!(out.status.success(), "{sub}: {}", stderr(&out));
        let help = stdout(&out);
        assert!(
            help.contains(&format!("Usage: tower-responses {sub}")),
            "{sub}: {help}"
        );
        assert!(help.contains(flag), "{sub} help lacks {flag}: {help}");
    }
    let top = stdout(&run(&["--help"]));
    for sub in ["serve", "demo", "status"] {
        assert!(top.contains(sub), "top-level help lacks {sub}: {top}");
    }
    assert!(top.contains("[env: TR_UPSTREAM="), "{top}");
}

#[test]
fn bad_values_are_named_with_what_was_expected() {
    let out = run(&["--listen", "localhost-ish"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("invalid value 'localhost-ish' for '--listen <ADDR>'"),
        "{err}"
    );

    let out = run(&["serve", "--profile", "azure"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("expected openai, chatgpt-codex or generic"),
        "{}",
        stderr(&out)
    );

    let out = command()
        .env("TR_MAX_CONNECTIONS", "many")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--max-connections"),
        "{}",
        stderr(&out)
    );

    let out = run(&["--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));

    // Values clap accepts but the proxy refuses still fail at once, before serving.
    let out = run(&["--listen", "127.0.0.1:0", "--max-header-bytes", "10"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("max_header_bytes must be at least 8192"),
        "{}",
        stderr(&out)
    );
}

/// The default subcommand is `serve`; a flag beats the environment; the client's request id
/// comes back and is in every JSON log line of its request; another request gets a fresh one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_is_the_default_and_request_ids_reach_logs_and_answers() {
    let mock = MockUpstream::start().await.unwrap();
    let mut cmd = command();
    cmd.args(["--listen", "127.0.0.1:0", "--upstream", &mock.base_url()])
        .args(["--log-format", "json"])
        // Loses to the flag: if the environment won, nothing would be reachable.
        .env("TR_UPSTREAM", "http://127.0.0.1:9/v1")
        .env("RUST_LOG", "info");
    let mut proxy = Served::start(cmd).await;
    let http = client();

    let (status, headers, body) = send_collect(
        &http,
        streaming_request(&proxy.url("/v1/responses"), Some("client-trace-42")),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        String::from_utf8_lossy(&body).contains("response.completed"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(headers["x-request-id"], "client-trace-42");
    assert!(
        headers["x-upstream-request-id"]
            .to_str()
            .unwrap()
            .starts_with("req_mock_"),
        "the upstream's own id is kept beside ours"
    );
    let line = proxy
        .wait_line(|l| l.contains(r#""message":"request""#))
        .await;
    let log: Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(log["span"]["id"], "client-trace-42", "{line}");
    assert_eq!(log["fields"]["route"], "responses", "{line}");

    // No id (or one not worth keeping): a fresh UUID each time.
    let mut ids = Vec::new();
    for sent in [None, Some("has spaces in it")] {
        let (status, headers, _) =
            send_collect(&http, streaming_request(&proxy.url("/v1/responses"), sent)).await;
        assert_eq!(status, StatusCode::OK);
        let id = headers["x-request-id"].to_str().unwrap().to_string();
        assert_eq!(id.len(), 36, "a UUID: {id}");
        assert_eq!(&id[14..15], "7", "version 7: {id}");
        let line = proxy
            .wait_line(|l| l.contains(r#""message":"request""#))
            .await;
        let log: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(log["span"]["id"], id.as_str(), "{line}");
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1]);
    // Every line written during a request is inside its span.
    for line in proxy
        .seen
        .iter()
        .filter(|l| l.contains(r#""message":"request""#))
    {
        let log: Value = serde_json::from_str(line).unwrap();
        assert_eq!(log["span"]["name"], "request", "{line}");
    }
}

/// `TR_*` variables configure `serve` (a credential, the address, the log format) and a
/// literal key in the environment is not warned about; a literal key as a flag is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_takes_its_settings_from_the_environment() {
    let mock = MockUpstream::start().await.unwrap();
    let mut cmd = command();
    cmd.arg("serve")
        .env("TR_LISTEN", "127.0.0.1:0")
        .env("TR_UPSTREAM", mock.base_url())
        .env("TR_CREDENTIAL", "env:TR_TEST_UPSTREAM_KEY")
        .env("TR_TEST_UPSTREAM_KEY", "sk-from-the-environment")
        .env("TR_LOG_FORMAT", "text")
        .env("RUST_LOG", "info");
    let mut proxy = Served::start(cmd).await;
    let (status, _, _) = send_collect(
        &client(),
        streaming_request(&proxy.url("/v1/responses"), Some("env-test")),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let seen = mock.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].header("authorization"),
        Some("Bearer sk-from-the-environment")
    );
    // Text logs carry the id in the span prefix.
    let line = proxy
        .wait_line(|l| l.contains(r#"route="responses""#))
        .await;
    assert!(line.contains("request{id=env-test}"), "{line}");
    assert!(
        !line.contains('\u{1b}'),
        "no colour codes in a pipe: {line}"
    );
    assert!(
        !proxy.seen.iter().any(|l| l.contains("process list")),
        "{:?}",
        proxy.seen
    );

    let warned = command()
        .args([
            "--credential",
            "sk-literal-on-the-command-line",
            "--listen",
            "nope:1",
        ])
        .output()
        .unwrap();
    // The bad address stops it first: clap checks every value before anything runs.
    assert_eq!(warned.status.code(), Some(2));
    let warned = command()
        .args(["--credential", "sk-literal-on-the-command-line"])
        .args(["--listen", "127.0.0.1:0", "--max-connections", "0"])
        .output()
        .unwrap();
    assert!(
        stderr(&warned).contains("process list"),
        "{}",
        stderr(&warned)
    );
    assert!(stderr(&warned).contains("max_connections must be at least 1"));
}

/// TOML fills what neither flags nor the environment say; `status` reports each credential,
/// including one cooling down after a rate limit, and needs the client key when there is one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toml_configures_serve_and_status_reports_credentials() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = std::env::temp_dir().join(format!("tr-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("proxy.toml");
    std::fs::write(
        &file,
        format!(
            r#"
            listen = "127.0.0.1:1"
            upstream = "{}"
            credentials = ["sk-toml-key-aaaaaaaaaaaaaaaa", "sk-toml-key-bbbbbbbbbbbbbbbb"]
            log_format = "json"
            "#,
            mock.base_url()
        ),
    )
    .unwrap();
    let mut cmd = command();
    cmd.args(["serve", "--config", file.to_str().unwrap()])
        .args(["--client-key", "env:TR_TEST_CLIENT_KEY"])
        .env("TR_TEST_CLIENT_KEY", "client-secret")
        // The environment beats the file's port 1.
        .env("TR_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "info");
    let mut proxy = Served::start(cmd).await;
    assert!(
        proxy.seen.last().unwrap().starts_with('{'),
        "JSON logs from the file: {:?}",
        proxy.seen
    );

    // The first key is rate limited for a minute; the request rotates to the second.
    mock.push_for(
        "sk-toml-key-aaaaaaaaaaaaaaaa",
        Reply::json(
            StatusCode::TOO_MANY_REQUESTS,
            json!({"error": {"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}}),
        )
        .with_header("retry-after", "60"),
    );
    let (status, headers, _) = send_collect(
        &client(),
        json_req(
            &proxy.url("/v1/responses"),
            Some("client-secret"),
            json!({"model": "gpt-5", "input": "hi", "stream": true}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // What the rotation layer logs deep in the stack carries the request's id too.
    let id = headers["x-request-id"].to_str().unwrap().to_string();
    let cooled = proxy.wait_line(|l| l.contains("credential cooling")).await;
    let log: Value = serde_json::from_str(&cooled).unwrap();
    assert_eq!(log["span"]["id"], id.as_str(), "{cooled}");

    let url = proxy.url("");
    let status_cmd = |args: &[&str]| {
        let mut cmd = command();
        cmd.args(["status", "--url", &url]).args(args);
        cmd.env("TR_TEST_CLIENT_KEY", "client-secret");
        cmd
    };
    let refused = tokio::task::spawn_blocking({
        let mut cmd = status_cmd(&[]);
        move || cmd.output().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("--client-key"),
        "{}",
        stderr(&refused)
    );

    let shown = tokio::task::spawn_blocking({
        let mut cmd = status_cmd(&["--client-key", "env:TR_TEST_CLIENT_KEY"]);
        move || cmd.output().unwrap()
    })
    .await
    .unwrap();
    assert!(shown.status.success(), "{}", stderr(&shown));
    let text = stdout(&shown);
    assert!(text.contains(": ok"), "{text}");
    assert!(text.contains(&mock.base_url()), "{text}");
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("credential "))
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].contains("cooling (rate_limited"), "{text}");
    assert!(lines[0].contains("back in"), "{text}");
    assert!(lines[1].ends_with(": ready"), "{text}");
    assert!(
        !text.contains("sk-toml-key"),
        "no secret in the status: {text}"
    );

    let raw = tokio::task::spawn_blocking({
        let mut cmd = status_cmd(&["--client-key", "env:TR_TEST_CLIENT_KEY", "--json"]);
        move || cmd.output().unwrap()
    })
    .await
    .unwrap();
    let v: Value = serde_json::from_str(&stdout(&raw)).expect("status --json is JSON");
    assert_eq!(v["status"], "ok");
    assert_eq!(v["credentials"][0]["class"], "rate_limited");
    assert!(v["credentials"][0]["retry_in_secs"].as_u64().unwrap() <= 60);

    // Given the proxy's TOML file, status finds the address and the client key in it.
    let own = dir.join("status.toml");
    std::fs::write(
        &own,
        format!(
            "listen = \"{}\"\nclient_keys = [\"client-secret\"]\n",
            proxy.addr
        ),
    )
    .unwrap();
    let from_file = tokio::task::spawn_blocking({
        let mut cmd = command();
        cmd.args(["status", "--config", own.to_str().unwrap()]);
        move || cmd.output().unwrap()
    })
    .await
    .unwrap();
    assert!(from_file.status.success(), "{}", stderr(&from_file));
    assert!(stdout(&from_file).contains(&format!("proxy http://{}", proxy.addr)));
    drop(proxy);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn status_says_when_nothing_answers() {
    // Port 9 (discard) on loopback: nothing listens there on a test machine. Serve settings
    // in the environment (as a service unit would set them) do not get in status's way.
    let out = command()
        .args([
            "status",
            "--url",
            "http://127.0.0.1:9",
            "--timeout-secs",
            "5",
        ])
        .env("TR_LISTEN", "127.0.0.1:0")
        .env("TR_CREDENTIAL", "env:NOT_SET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot reach the proxy at http://127.0.0.1:9/status"),
        "{}",
        stderr(&out)
    );
}
