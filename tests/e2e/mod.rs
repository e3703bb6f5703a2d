//! Shared by the end-to-end tests: where the real clients are, and how to run one without
//! ever hanging the test run.
//!
//! The clients are installed by `.ci/install-clients` into `target/e2e/` (relative to the
//! crate root); `TR_CODEX_BIN`, `TR_PYTHON` and `TR_NODE_MODULES` point elsewhere.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::process::Command;

/// One `codex exec` of a test: a provider named `provider` at `base_url`, with the client's
/// key in `TR_E2E_CLIENT_KEY`, the model and the prompt. What the e2e tests vary is here; the
/// rest (no plugins, no analytics, no update check, full sandbox) is the same for all.
pub struct CodexExec<'a> {
    /// The provider's display name (`OpenAI` makes Codex compact remotely).
    pub provider: &'a str,
    /// The provider's `base_url` (the proxy's, or the mock's for a run without the proxy).
    pub base_url: &'a str,
    /// `supports_websockets` on the provider: Codex talks over the Responses WebSocket.
    pub websockets: bool,
    /// `model_auto_compact_token_limit`, for a test that makes Codex compact.
    pub compact_limit: Option<u64>,
    /// The key Codex sends (`env_key`).
    pub client_key: &'a str,
    /// `-m`.
    pub model: &'a str,
    /// The prompt.
    pub prompt: &'a str,
}

impl CodexExec<'_> {
    /// Runs it with `home` as `CODEX_HOME`, in `work`.
    pub async fn run_in(&self, home: &Path, work: &Path) -> Ran {
        let provider = format!(
            "model_providers.e2e={{ name = \"{}\", base_url = \"{}\", \
             env_key = \"TR_E2E_CLIENT_KEY\", wire_api = \"responses\", supports_websockets = {} }}",
            self.provider, self.base_url, self.websockets
        );
        let mut cmd = command(codex_bin());
        cmd.current_dir(work)
            .env("CODEX_HOME", home)
            .env("TR_E2E_CLIENT_KEY", self.client_key)
            .args(["exec", "--skip-git-repo-check", "-s", "danger-full-access"])
            .args(["-c", "features.plugins=false"])
            .args(["-c", "analytics.enabled=false"])
            .args(["-c", "check_for_update_on_startup=false"]);
        if let Some(limit) = self.compact_limit {
            cmd.args(["-c", &format!("model_auto_compact_token_limit={limit}")]);
        }
        cmd.args(["-c", "model_provider=e2e"])
            .args(["-c", &provider])
            .args(["-m", self.model, self.prompt]);
        run(cmd).await
    }

    /// Runs it in a fresh home and working directory.
    pub async fn run(&self) -> Ran {
        let home = TempDir::new("codex-home");
        let work = TempDir::new("codex-work");
        self.run_in(home.path(), work.path()).await
    }
}

/// Longest any client process may run; a hung client is killed (its whole process group)
/// and the test fails with what it printed so far.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

const INSTALL_HINT: &str = "run .ci/install-clients (installs the Codex CLI and the OpenAI \
     SDKs into target/e2e/)";

fn e2e_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("e2e")
}

fn located(env: &str, default: PathBuf, what: &str) -> PathBuf {
    let path = std::env::var_os(env).map_or(default, PathBuf::from);
    assert!(
        path.exists(),
        "{what} not found at {} ({env} overrides the path): {INSTALL_HINT}",
        path.display()
    );
    path
}

/// The Codex CLI launcher.
pub fn codex_bin() -> PathBuf {
    located(
        "TR_CODEX_BIN",
        e2e_dir().join("node_modules/.bin/codex"),
        "the Codex CLI",
    )
}

/// The Python interpreter of the venv holding the `openai` package.
pub fn python() -> PathBuf {
    located(
        "TR_PYTHON",
        e2e_dir().join("venv/bin/python"),
        "the Python venv with openai",
    )
}

/// The `node_modules` directory holding the `openai` package.
pub fn node_modules() -> PathBuf {
    let dir = located(
        "TR_NODE_MODULES",
        e2e_dir().join("node_modules"),
        "node_modules",
    );
    assert!(
        dir.join("openai/package.json").exists(),
        "the openai Node package is missing from {}: {INSTALL_HINT}",
        dir.display()
    );
    dir
}

/// A file shipped next to this module (the client scripts).
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/e2e")
        .join(name)
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("tr-e2e-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a client process did.
#[derive(Debug)]
pub struct Ran {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// Both streams, for failure messages.
    pub fn transcript(&self) -> String {
        format!(
            "exit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// A command with stdin from `/dev/null`, piped output, the ambient OpenAI settings removed
/// (a developer's own key or base URL must not leak into the run), limited to
/// [`CLIENT_TIMEOUT`].
pub fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    command_for(program, CLIENT_TIMEOUT)
}

/// [`command`] with another time limit.
///
/// The limit is enforced by GNU `timeout`, which runs the client in a new process group and
/// signals that whole group when time is up (TERM, then KILL 5 s later): the codex launcher
/// is a node script that starts a native binary, which starts shells, and killing only the
/// process we spawned would leave those running.
pub fn command_for(program: impl AsRef<std::ffi::OsStr>, limit: Duration) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.args(["-k", "5"])
        .arg(format!("{}", limit.as_secs_f64()))
        .arg(program)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("OPENAI_ORG_ID")
        .env_remove("OPENAI_PROJECT_ID")
        .env_remove("CODEX_HOME")
        .kill_on_drop(true);
    cmd
}

/// GNU `timeout`'s exit status when it had to stop the command (124), or was killed itself.
fn timed_out(status: std::process::ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.code() == Some(124) || status.code() == Some(137) || status.signal().is_some()
}

/// Runs a command from [`command`] to completion; fails the test, with what the client
/// printed, when its time limit stopped it.
pub async fn run(mut cmd: Command) -> Ran {
    let what = format!("{:?}", cmd.as_std());
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e} (GNU coreutils `timeout` is needed)"));
    // A backstop only: `timeout` itself ends the client well before this.
    let backstop = CLIENT_TIMEOUT + Duration::from_secs(30);
    let ran = match tokio::time::timeout(backstop, child.wait_with_output()).await {
        Ok(Ok(Output {
            status,
            stdout,
            stderr,
        })) => Ran {
            status,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        },
        Ok(Err(e)) => panic!("waiting for {what}: {e}"),
        Err(_) => panic!("{what} outlived its time limit; `timeout` was killed"),
    };
    if timed_out(ran.status) {
        panic!(
            "{what} did not finish within its time limit and was killed\n{}",
            ran.transcript()
        );
    }
    ran
}
