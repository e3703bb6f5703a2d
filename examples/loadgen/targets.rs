//! Starting what is measured, each as its own process so its CPU and memory can be read
//! apart from the load client's and the mock's.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A target process, stopped on drop: SIGTERM first (nginx's master then stops its workers,
/// which a SIGKILL to the master alone would leave running with their ports), SIGKILL after
/// two seconds.
pub struct Running {
    pub addr: SocketAddr,
    pub pid: u32,
    child: Child,
    log: Option<PathBuf>,
}

impl Running {
    /// The last lines the target wrote to its log, for error reports.
    pub fn log_tail(&self) -> String {
        let Some(path) = &self.log else {
            return String::new();
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port (bound and released; the small race is harmless here).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Runs this harness again as `loadgen <args>` and waits for its `READY <addr>` line.
pub fn spawn_self(args: &[&str]) -> Result<Running, String> {
    spawn_self_on(None, args)
}

/// A command for `program`, pinned to the CPU list `cpus` (`taskset -c`, which execs the
/// program, so the child's pid is the program's) when one is given.
pub fn pinned(cpus: Option<&str>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    match cpus {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpus).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// [`spawn_self`] pinned to the CPU list `cpus`.
pub fn spawn_self_on(cpus: Option<&str>, args: &[&str]) -> Result<Running, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = pinned(cpus, exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start loadgen {}: {e}", args.join(" ")))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let addr = line
        .trim()
        .strip_prefix("READY ")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("loadgen {} did not start: {line:?}", args.join(" ")))?;
    Ok(Running {
        addr,
        pid: child.id(),
        child,
        log: None,
    })
}

fn wait_port(addr: SocketAddr, child: &mut Child, timeout: Duration) -> Result<(), String> {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited with {status} before listening"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("not listening on {addr} after {timeout:?}"))
}

/// nginx as a plain streaming reverse proxy: `proxy_buffering off`, upstream keep-alive,
/// no access log, one worker per core.
pub fn nginx(bin: &str, upstream: SocketAddr, dir: &Path) -> Result<Running, String> {
    let upstream = format!("upstream mock {{ server {upstream}; keepalive 1024; }}");
    start_nginx(bin, dir, "auto", None, &upstream, PROXY_LOCATION)
}

const PROXY_LOCATION: &str = "proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 600s;";

/// [`nginx`] with one worker, pinned to the CPU list `cpus`: the side-by-side run gives every
/// proxy one core.
pub fn nginx_hop(
    bin: &str,
    upstream: SocketAddr,
    dir: &Path,
    cpus: &str,
) -> Result<Running, String> {
    let upstream = format!("upstream mock {{ server {upstream}; keepalive 1024; }}");
    start_nginx(bin, dir, "1", Some(cpus), &upstream, PROXY_LOCATION)
}

/// nginx as the upstream: answers every request with `stream`, the whole answer in one
/// write, `text/event-stream`; one worker pinned to `cpus`. nginx's `return` takes at most
/// 4 KB of text, so the answer is a file, kept open and in the page cache
/// (`open_file_cache`, `sendfile`): served from memory. A POST to a file is a 405 in nginx;
/// `error_page 405 =200 $uri` serves the file instead.
pub fn nginx_static(bin: &str, stream: &str, dir: &Path, cpus: &str) -> Result<Running, String> {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("v1")).map_err(|e| e.to_string())?;
    std::fs::write(root.join("v1/responses"), stream).map_err(|e| e.to_string())?;
    let location = format!(
        "root {};
      default_type text/event-stream;
      sendfile on;
      tcp_nopush on;
      open_file_cache max=16 inactive=600s;
      open_file_cache_valid 600s;
      error_page 405 =200 $uri;",
        root.display()
    );
    start_nginx(bin, dir, "1", Some(cpus), "", &location)
}

fn start_nginx(
    bin: &str,
    dir: &Path,
    workers: &str,
    cpus: Option<&str>,
    upstream: &str,
    location: &str,
) -> Result<Running, String> {
    let port = free_port().map_err(|e| e.to_string())?;
    let d = dir.display();
    let conf = format!(
        r#"worker_processes {workers};
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 65536; }}
worker_rlimit_nofile 140000;
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  keepalive_requests 1000000;
  {upstream}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      {location}
    }}
  }}
}}
"#
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).map_err(|e| e.to_string())?;
    let mut child = pinned(cpus, bin)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&path)
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {bin}: {e}"))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_port(addr, &mut child, Duration::from_secs(10))
        .map_err(|e| format!("nginx {e}: {}", read_tail(&dir.join("error.log"))))?;
    Ok(Running {
        addr,
        pid: child.id(),
        child,
        log: Some(dir.join("error.log")),
    })
}

/// LiteLLM's proxy server with one `openai/` deployment per mock model name, pointed at
/// the mock for the Responses API; offline settings and a random master key. The mock's
/// model names are unknown to LiteLLM's cost map, so `supports_reasoning` is declared: without
/// it LiteLLM refuses the Codex body's `reasoning.effort` with a 400.
pub fn litellm(
    bin: &str,
    upstream: SocketAddr,
    models: &[String],
    workers: usize,
    dir: &Path,
) -> Result<(Running, String), String> {
    let port = free_port().map_err(|e| e.to_string())?;
    let key = format!("sk-bench-{:016x}", random_u64());
    let mut yaml = String::from("model_list:\n");
    for m in models {
        yaml.push_str(&format!(
            "  - model_name: {m}\n    litellm_params:\n      model: openai/{m}\n      api_base: http://{upstream}/v1\n      api_key: sk-bench-upstream\n    model_info:\n      supports_reasoning: true\n"
        ));
    }
    yaml.push_str(&format!(
        "litellm_settings:\n  telemetry: false\n  request_timeout: 600\ngeneral_settings:\n  master_key: {key}\n"
    ));
    let path = dir.join("litellm.yaml");
    std::fs::write(&path, yaml).map_err(|e| e.to_string())?;
    let log = dir.join("litellm.log");
    let out = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut child = Command::new(bin)
        .arg("--config")
        .arg(&path)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--num_workers", &workers.to_string()])
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .env("LITELLM_MASTER_KEY", &key)
        .env("LITELLM_LOG", "ERROR")
        .env("LITELLM_TELEMETRY", "False")
        .env("DISABLE_SCHEMA_UPDATE", "True")
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot start {bin}: {e}"))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_port(addr, &mut child, Duration::from_secs(180))
        .map_err(|e| format!("litellm {e}:\n{}", read_tail(&log)))?;
    Ok((
        Running {
            addr,
            pid: child.id(),
            child,
            log: Some(log),
        },
        key,
    ))
}

fn read_tail(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Enough randomness for a throwaway key, without a dependency.
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// A fresh temporary directory for one target's files.
pub fn temp_dir(name: &str) -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!(
        "loadgen-{name}-{}-{:08x}",
        std::process::id(),
        random_u64() as u32
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}
