//! `login`: signs a ChatGPT account in for the proxy to own (`codex-oauth:NAME`).
//!
//! `login NAME` runs the device-code flow the Codex CLI uses (`codex login --device-auth`):
//! it prints a verification URL and a one-time code, the person approves it in a browser,
//! and the login is saved in the state directory (mode 0600). `login --import PATH --name
//! NAME` takes over an existing Codex `auth.json` instead, once: from then on the proxy
//! refreshes that login, so nothing else may use the source file again (refresh tokens are
//! single-use; two owners revoke each other). Either way the account is then served with
//! `--credential codex-oauth:NAME`. Running `login NAME` again replaces a login the authority
//! refused, and a running proxy picks it up.
//!
//! ```no_run
//! use clap::Parser;
//! use tower_responses::proxy::login::{LoginArgs, run};
//!
//! #[derive(Parser)]
//! struct Cli {
//!     #[command(flatten)]
//!     login: LoginArgs,
//! }
//!
//! # #[tokio::main] async fn main() -> std::process::ExitCode {
//! run(Cli::parse().login).await
//! # }
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use crate::credentials::Secret;
use crate::credentials::oauth::{
    AuthorityClient, CODEX_CLIENT_ID, Claims, DEFAULT_AUTH_BASE_URL, LoginState, LoginStore,
    StoredLogin, TokenAnswer, TokenError, Tokens, default_state_dir, parse_login, rfc3339,
    valid_name,
};

/// How long a person has to approve a device code.
const DEVICE_CODE_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// The largest `auth.json` imported.
const MAX_IMPORT: u64 = 256 * 1024;

/// Arguments of `login`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoginArgs {
    /// The login's name: served as `--credential codex-oauth:NAME`.
    #[arg(value_name = "NAME")]
    pub login: Option<String>,
    /// The login's name (the same as NAME).
    #[arg(long = "name", value_name = "NAME", conflicts_with = "login")]
    pub name: Option<String>,
    /// Take over this Codex `auth.json` instead of signing in; nothing else may use it after.
    #[arg(long, value_name = "PATH")]
    pub import: Option<PathBuf>,
    /// Where logins are stored (default `$XDG_DATA_HOME/tower-responses`, else
    /// `~/.local/share/tower-responses`).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The authority to sign in with.
    #[arg(long, value_name = "URL", default_value = DEFAULT_AUTH_BASE_URL)]
    pub auth_base_url: String,
}

impl LoginArgs {
    /// Arguments for login `name` in `state_dir` at `auth_base_url`.
    pub fn new(name: &str, state_dir: impl Into<PathBuf>, auth_base_url: &str) -> Self {
        LoginArgs {
            login: Some(name.to_string()),
            name: None,
            import: None,
            state_dir: Some(state_dir.into()),
            auth_base_url: auth_base_url.to_string(),
        }
    }
}

/// Runs `login`, printing to stdout and stderr; the exit code says whether it worked.
pub async fn run(args: LoginArgs) -> ExitCode {
    run_with(args, &mut std::io::stdout()).await
}

/// Runs `login`, printing what a person reads (the code, the result) to `out`, errors to
/// stderr.
pub async fn run_with(args: LoginArgs, out: &mut (dyn Write + Send)) -> ExitCode {
    match login(args, out).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn login(args: LoginArgs, out: &mut (dyn Write + Send)) -> Result<(), String> {
    let name = args
        .login
        .or(args.name)
        .unwrap_or_else(|| "default".to_string());
    if !valid_name(&name) {
        return Err(format!(
            "`{name}`: a login name is 1 to 64 of A-Z a-z 0-9 . _ - (not starting with a dot)"
        ));
    }
    let dir = args.state_dir.unwrap_or_else(default_state_dir);
    let store = LoginStore::new(&dir);
    let base = args.auth_base_url.trim_end_matches('/').to_string();
    let stored = match &args.import {
        Some(path) => import(path)?,
        None => device_flow(&base, &name, out).await?,
    };
    store.write(&name, &stored).map_err(|e| {
        format!(
            "cannot save the login in {}: {e}",
            store.path(&name).display()
        )
    })?;
    let say = |out: &mut (dyn Write + Send), s: String| {
        let _ = writeln!(out, "{s}");
    };
    say(out, describe(&name, &stored));
    say(
        out,
        format!("saved in {} (mode 0600)", store.path(&name).display()),
    );
    if let Some(path) = &args.import {
        say(
            out,
            format!(
                "The proxy now owns this login and refreshes it. Do not use {} again, with the \
                 Codex CLI or anything else: refresh tokens are single-use, and the next refresh \
                 by one owner would revoke the other's. Sign the Codex CLI in again \
                 (`codex login`) to give it a login of its own.",
                path.display()
            ),
        );
    }
    say(
        out,
        format!(
            "serve it with: --credential codex-oauth:{name} --state-dir {}{}",
            dir.display(),
            if base == DEFAULT_AUTH_BASE_URL {
                String::new()
            } else {
                format!(" --auth-base-url {base}")
            }
        ),
    );
    let _ = out.flush();
    Ok(())
}

/// The login's label, account id, plan and expiry, from its tokens' claims.
fn describe(name: &str, login: &StoredLogin) -> String {
    let id = login
        .tokens
        .id_token
        .as_ref()
        .and_then(|t| Claims::read(t.expose()))
        .unwrap_or_default();
    let access = Claims::read(login.tokens.access_token.expose()).unwrap_or_default();
    let unknown = || "unknown".to_string();
    format!(
        "login {name}: account {}, plan {}, user {}, access token expires {}",
        login
            .tokens
            .account_id
            .clone()
            .or(id.account_id)
            .unwrap_or_else(unknown),
        id.plan.or(access.plan).unwrap_or_else(unknown),
        id.email.or(id.user_id).unwrap_or_else(unknown),
        access.expires.map(rfc3339).unwrap_or_else(unknown),
    )
}

fn import(path: &std::path::Path) -> Result<StoredLogin, String> {
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut text = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_IMPORT + 1), &mut text)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if text.len() as u64 > MAX_IMPORT {
        return Err(format!("{} is too large for an auth.json", path.display()));
    }
    let mut login = parse_login(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    // What the file says about refreshes is the other owner's business; the proxy starts clean.
    login.state = LoginState::default();
    Ok(login)
}

async fn device_flow(
    base: &str,
    name: &str,
    out: &mut (dyn Write + Send),
) -> Result<StoredLogin, String> {
    let client = AuthorityClient::new(base, CODEX_CLIENT_ID, Duration::from_secs(30));
    let code = client.device_code().await.map_err(|e| e.to_string())?;
    let _ = writeln!(
        out,
        "To sign in login {name}, open {} in a browser and enter this code:\n\n    {}\n\n\
         (it expires in {} minutes; waiting for approval...)",
        code.verification_url,
        code.user_code,
        DEVICE_CODE_LIFETIME.as_secs() / 60
    );
    let _ = out.flush();
    let deadline = Instant::now() + DEVICE_CODE_LIFETIME;
    let grant = loop {
        match client.poll_device(&code).await {
            Ok(Some(grant)) => break grant,
            Ok(None) | Err(TokenError::Unsent(_)) | Err(TokenError::Unanswered(_)) => {}
            Err(e) => return Err(format!("the device code was refused: {e}")),
        }
        if Instant::now() >= deadline {
            return Err("the code was not approved in time; run `login` again".into());
        }
        tokio::time::sleep(code.interval).await;
    };
    let answer = client
        .exchange(&grant)
        .await
        .map_err(|e| format!("the approved code could not be exchanged for tokens: {e}"))?;
    stored_from(answer)
}

fn stored_from(answer: TokenAnswer) -> Result<StoredLogin, String> {
    let access = answer
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or("the authority sent no access token")?;
    let refresh = answer
        .refresh_token
        .filter(|t| !t.is_empty())
        .ok_or("the authority sent no refresh token")?;
    let id_token = answer.id_token.filter(|t| !t.is_empty());
    let account_id = id_token
        .as_deref()
        .and_then(Claims::read)
        .and_then(|c| c.account_id)
        .or_else(|| Claims::read(&access).and_then(|c| c.account_id));
    Ok(StoredLogin {
        tokens: Tokens {
            access_token: Secret::new(access),
            refresh_token: Secret::new(refresh),
            id_token: id_token.map(Secret::new),
            account_id,
        },
        last_refresh: Some(rfc3339(SystemTime::now())),
        state: LoginState::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        login: LoginArgs,
    }

    #[test]
    fn both_forms_parse() {
        let a = Cli::try_parse_from(["login", "alice", "--state-dir", "/s"])
            .unwrap()
            .login;
        assert_eq!(a.login.as_deref(), Some("alice"));
        assert_eq!(a.state_dir.as_deref(), Some(std::path::Path::new("/s")));
        assert_eq!(a.auth_base_url, DEFAULT_AUTH_BASE_URL);
        let b = Cli::try_parse_from([
            "login",
            "--import",
            "/a/auth.json",
            "--name",
            "work",
            "--auth-base-url",
            "http://127.0.0.1:9",
        ])
        .unwrap()
        .login;
        assert_eq!(b.name.as_deref(), Some("work"));
        assert_eq!(
            b.import.as_deref(),
            Some(std::path::Path::new("/a/auth.json"))
        );
        assert_eq!(b.auth_base_url, "http://127.0.0.1:9");
        assert!(Cli::try_parse_from(["login", "a", "--name", "b"]).is_err());
    }
}
