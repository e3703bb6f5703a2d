//! The state directory: one file per owned login, shaped like the Codex CLI's `auth.json`.
//!
//! Every write goes to a temporary file (mode 0600) that is flushed to disk and renamed over
//! the login's file, so a crash or a failed write leaves the old pair or the new one, never
//! neither and never half of one. Beside the Codex fields, a `proxy` object records what a
//! restart must know: a refresh that was sent but whose answer was never stored (its refresh
//! token may be spent), a login the authority refused for good, a login whose refreshes no
//! longer extend its expiry.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::credentials::{LoadError, Secret};

/// The largest login file read: a real one is a few kilobytes.
const MAX_LOGIN_FILE: u64 = 256 * 1024;

/// A login's tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    /// The bearer token requests carry.
    pub access_token: Secret,
    /// The single-use, rotating token that buys the next pair.
    pub refresh_token: Secret,
    /// The id token (the account's claims), if the authority sent one.
    pub id_token: Option<Secret>,
    /// The ChatGPT account id requests carry in `ChatGPT-Account-ID`.
    pub account_id: Option<String>,
}

/// What a restart must know about a login beyond its tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginState {
    /// Unix seconds when a refresh was sent whose answer was not stored (yet). Set before the
    /// token call and cleared with its result: found set at start-up, the stored refresh token
    /// may already be spent and is never sent again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_sent_at: Option<u64>,
    /// Why the authority refused this login for good (`refresh_token_reused`, ...): out of
    /// rotation until `login NAME` writes a new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reauth_required: Option<String>,
    /// A refresh returned an expiry no later than the one before (accounts under advanced
    /// security): no more refreshes; the login lasts until its access token expires.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub not_extending: bool,
}

/// One owned login as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLogin {
    /// Its tokens.
    pub tokens: Tokens,
    /// When it was last refreshed (RFC 3339, as the Codex CLI writes it).
    pub last_refresh: Option<String>,
    /// What a restart must know.
    pub state: LoginState,
}

#[derive(Serialize, Deserialize)]
struct FileForm {
    #[serde(rename = "OPENAI_API_KEY", default)]
    api_key: Option<String>,
    tokens: Option<FileTokens>,
    #[serde(default)]
    last_refresh: Option<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    proxy: LoginState,
}

fn is_default(s: &LoginState) -> bool {
    *s == LoginState::default()
}

#[derive(Serialize, Deserialize)]
struct FileTokens {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id_token: Option<String>,
    access_token: Option<String>,
    refresh_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    account_id: Option<String>,
}

/// Whether `name` can name a login: 1 to 64 of `A-Z a-z 0-9 . _ -`, not starting with a dot
/// (it becomes a file name in the state directory).
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The state directory's logins.
#[derive(Debug, Clone)]
pub struct LoginStore {
    dir: PathBuf,
}

impl LoginStore {
    /// The logins under `dir` (created with mode 0700 at the first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LoginStore { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of login `name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// The temporary file a write of `name` goes through.
    pub fn temp_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!(".{name}.json.tmp"))
    }

    /// Reads login `name`. Errors name the file, never its content.
    pub fn read(&self, name: &str) -> Result<StoredLogin, LoadError> {
        let path = self.path(name);
        read_login_file(&path).map_err(|e| match e {
            ReadError::Missing => LoadError(format!(
                "no login named {name} in {}: run `login {name}` (or `login --import PATH --name {name}`) first",
                self.dir.display()
            )),
            ReadError::Other(msg) => LoadError(msg),
        })
    }

    /// Writes login `name`: a 0600 temporary file, flushed, renamed over the old one, and the
    /// directory flushed, so the file holds the old login or the new one, whole.
    pub fn write(&self, name: &str, login: &StoredLogin) -> io::Result<()> {
        create_private_dir(&self.dir)?;
        let text = login_json(login).map_err(io::Error::other)?;
        let temp = self.temp_path(name);
        // A temporary file left by a crash may have any mode: start afresh.
        match std::fs::remove_file(&temp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut file = private_options().open(&temp)?;
        let written = file
            .write_all(&text)
            .and_then(|()| file.sync_all())
            .and_then(|()| std::fs::rename(&temp, self.path(name)));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&temp);
            return Err(e);
        }
        // The rename itself survives a power cut only once the directory is flushed.
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

fn private_options() -> std::fs::OpenOptions {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

enum ReadError {
    Missing,
    Other(String),
}

fn read_login_file(path: &Path) -> Result<StoredLogin, ReadError> {
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => ReadError::Missing,
        _ => ReadError::Other(format!("cannot read {}: {e}", path.display())),
    })?;
    let mut text = Vec::new();
    file.take(MAX_LOGIN_FILE + 1)
        .read_to_end(&mut text)
        .map_err(|e| ReadError::Other(format!("cannot read {}: {e}", path.display())))?;
    if text.len() as u64 > MAX_LOGIN_FILE {
        return Err(ReadError::Other(format!(
            "{} is larger than {MAX_LOGIN_FILE} bytes: not a login file",
            path.display()
        )));
    }
    parse_login(&text).map_err(|why| ReadError::Other(format!("{}: {why}", path.display())))
}

/// Reads a Codex `auth.json` (or a stored login) that holds a ChatGPT login with a refresh
/// token. Errors never contain the content.
pub fn parse_login(text: &[u8]) -> Result<StoredLogin, String> {
    // serde's message names the position, never the content.
    let form: FileForm =
        serde_json::from_slice(text).map_err(|e| format!("not a Codex auth.json: {e}"))?;
    let tokens = form
        .tokens
        .ok_or("holds no ChatGPT login (no `tokens`); an API key needs no login")?;
    let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
    let access = non_empty(tokens.access_token).ok_or("has no tokens.access_token")?;
    let refresh = non_empty(tokens.refresh_token).ok_or("has no tokens.refresh_token")?;
    let id_token = non_empty(tokens.id_token);
    // The Codex CLI reads the account from the id token when the file does not name it.
    let account_id = non_empty(tokens.account_id).or_else(|| {
        id_token
            .as_deref()
            .and_then(super::Claims::read)
            .and_then(|c| c.account_id)
    });
    Ok(StoredLogin {
        tokens: Tokens {
            access_token: Secret::new(access),
            refresh_token: Secret::new(refresh),
            id_token: id_token.map(Secret::new),
            account_id,
        },
        last_refresh: form.last_refresh,
        state: form.proxy,
    })
}

/// A login in the file's form (what [`parse_login`] reads back): the state directory's
/// files, and the token pair replicas share.
pub(crate) fn login_json(login: &StoredLogin) -> serde_json::Result<Vec<u8>> {
    let form = FileForm {
        api_key: None,
        tokens: Some(FileTokens {
            id_token: login
                .tokens
                .id_token
                .as_ref()
                .map(|t| t.expose().to_string()),
            access_token: Some(login.tokens.access_token.expose().to_string()),
            refresh_token: Some(login.tokens.refresh_token.expose().to_string()),
            account_id: login.tokens.account_id.clone(),
        }),
        last_refresh: login.last_refresh.clone(),
        proxy: login.state.clone(),
    };
    serde_json::to_vec_pretty(&form)
}

/// `t` as RFC 3339 in UTC (`2026-12-01T22:06:49Z`), as the Codex CLI writes `last_refresh`.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn login(refresh: &str) -> StoredLogin {
        StoredLogin {
            tokens: Tokens {
                access_token: Secret::new("at"),
                refresh_token: Secret::new(refresh),
                id_token: None,
                account_id: Some("acct".into()),
            },
            last_refresh: Some(rfc3339(SystemTime::now())),
            state: LoginState::default(),
        }
    }

    #[test]
    fn writes_are_private_whole_and_read_back() {
        let dir = std::env::temp_dir().join(format!("tr-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = LoginStore::new(&dir);
        assert!(store.read("a").unwrap_err().0.contains("login a"));
        store.write("a", &login("rt-1")).unwrap();
        let mut second = login("rt-2");
        second.state.refresh_sent_at = Some(5);
        store.write("a", &second).unwrap();
        assert_eq!(store.read("a").unwrap(), second);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(store.path("a"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A write that cannot create its temporary file leaves the old login whole.
        std::fs::create_dir_all(store.temp_path("a").join("blocker")).unwrap();
        assert!(store.write("a", &login("rt-3")).is_err());
        assert_eq!(store.read("a").unwrap(), second);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn names_and_dates() {
        assert!(valid_name("alice.work_2-x"));
        for bad in ["", ".hidden", "a/b", "../x", "a b", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
        let t = UNIX_EPOCH + Duration::from_secs(1_796_162_809);
        assert_eq!(rfc3339(t), "2026-12-01T22:06:49Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }
}
