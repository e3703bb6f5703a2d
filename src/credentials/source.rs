use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

use super::{Credential, Secret};

/// Where a credential comes from.
///
/// Written `sk-...` (the key itself), `env:NAME`, `file:PATH`, `codex-auth:PATH` or
/// `codex-oauth:NAME`. Prefer anything but a literal key on a command line: a literal key
/// there is visible to every user of the machine in the process list.
#[derive(Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// The key itself.
    Literal(Secret),
    /// An environment variable holding the key.
    Env(String),
    /// A Codex CLI `auth.json` (ChatGPT login or stored API key), *borrowed*: re-read when
    /// it changes, never refreshed or written by the proxy.
    CodexAuth(PathBuf),
    /// A file holding the key and nothing else (surrounding whitespace is ignored), as
    /// container secrets are mounted. Re-read when it changes.
    File(PathBuf),
    /// A ChatGPT login the proxy owns, by name: stored in its state directory (made by
    /// `login NAME` or `login --import PATH --name NAME`) and refreshed by the proxy alone.
    CodexOAuth(String),
}

/// The largest key file read: a key is a few hundred bytes, so anything bigger is not one.
const MAX_KEY_FILE: u64 = 64 * 1024;

impl fmt::Debug for CredentialSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

/// A credential that could not be loaded. Never contains the secret.
#[derive(Debug)]
pub struct LoadError(pub String);

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LoadError {}

impl FromStr for CredentialSource {
    type Err = LoadError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Some(name) = s.strip_prefix("env:") {
            if name.is_empty() {
                return Err(LoadError("`env:` needs a variable name".into()));
            }
            Ok(CredentialSource::Env(name.to_string()))
        } else if let Some(path) = s.strip_prefix("codex-auth:") {
            Ok(CredentialSource::CodexAuth(expand_home(path)))
        } else if let Some(name) = s.strip_prefix("codex-oauth:") {
            if !super::oauth::valid_name(name) {
                return Err(LoadError(format!(
                    "`codex-oauth:{name}`: a login name is 1 to 64 of A-Z a-z 0-9 . _ - (not starting with a dot)"
                )));
            }
            Ok(CredentialSource::CodexOAuth(name.to_string()))
        } else if let Some(path) = s.strip_prefix("file:") {
            if path.is_empty() {
                return Err(LoadError("`file:` needs a path".into()));
            }
            Ok(CredentialSource::File(expand_home(path)))
        } else if s.is_empty() {
            Err(LoadError("empty credential".into()))
        } else {
            Ok(CredentialSource::Literal(Secret::new(s)))
        }
    }
}

impl<'de> Deserialize<'de> for CredentialSource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|e: LoadError| serde::de::Error::custom(e.0))
    }
}

fn expand_home(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => Path::new(&home).join(rest),
        _ => PathBuf::from(path),
    }
}

#[derive(Deserialize)]
struct AuthFile {
    tokens: Option<AuthTokens>,
    #[serde(rename = "OPENAI_API_KEY")]
    api_key: Option<String>,
}

#[derive(Deserialize)]
struct AuthTokens {
    access_token: Option<String>,
    account_id: Option<String>,
}

impl CredentialSource {
    /// What kind of source this is: `key`, `env`, `file`, `codex-auth` or `codex-oauth`.
    pub fn kind(&self) -> &'static str {
        match self {
            CredentialSource::Literal(_) => "key",
            CredentialSource::Env(_) => "env",
            CredentialSource::File(_) => "file",
            CredentialSource::CodexAuth(_) => "codex-auth",
            CredentialSource::CodexOAuth(_) => "codex-oauth",
        }
    }

    /// The label of the `position`th credential (from 1) when it has no configured name:
    /// its kind and position, e.g. `key-1`, `codex-auth-2`. Never derived from the secret,
    /// not even a few characters of it: labels go into every log line and metric.
    pub fn label_at(&self, position: usize) -> String {
        format!("{}-{position}", self.kind())
    }

    /// A description safe to log: the kind, and the variable or file it reads (never any of
    /// the secret). The pool labels its members with [`label_at`](Self::label_at) or a
    /// configured name instead.
    pub fn label(&self) -> String {
        match self {
            CredentialSource::Literal(_) => "key".to_string(),
            CredentialSource::Env(name) => format!("env:{name}"),
            CredentialSource::File(p) => format!("file:{}", p.display()),
            CredentialSource::CodexAuth(p) => format!("codex-auth:{}", p.display()),
            CredentialSource::CodexOAuth(name) => format!("codex-oauth:{name}"),
        }
    }

    /// The file behind this credential, if it is one (watched for changes).
    pub fn path(&self) -> Option<&Path> {
        match self {
            CredentialSource::CodexAuth(p) | CredentialSource::File(p) => Some(p),
            _ => None,
        }
    }

    /// Reads the credential now. A `codex-oauth:` login is read from the default state
    /// directory; a [`Pool`](super::Pool) reads it from its own and refreshes it.
    pub fn load(&self) -> Result<Credential, LoadError> {
        let label = self.label();
        match self {
            CredentialSource::CodexOAuth(name) => {
                let store = super::oauth::LoginStore::new(super::oauth::default_state_dir());
                let login = store.read(name)?;
                Ok(Credential {
                    label,
                    token: login.tokens.access_token,
                    account_id: login.tokens.account_id.map(Secret::new),
                })
            }
            CredentialSource::File(path) => {
                let key = read_key_file(path)?;
                Ok(Credential::api_key(label, key))
            }
            CredentialSource::Literal(s) => Ok(Credential {
                label,
                token: s.clone(),
                account_id: None,
            }),
            CredentialSource::Env(name) => match std::env::var(name) {
                Ok(v) if !v.trim().is_empty() => Ok(Credential::api_key(label, v.trim())),
                _ => Err(LoadError(format!(
                    "environment variable {name} is not set or empty"
                ))),
            },
            CredentialSource::CodexAuth(path) => {
                let text = std::fs::read(path)
                    .map_err(|e| LoadError(format!("cannot read {}: {e}", path.display())))?;
                let file: AuthFile = serde_json::from_slice(&text).map_err(|e| {
                    // serde's message names the position, never the content.
                    LoadError(format!("{} is not a Codex auth.json: {e}", path.display()))
                })?;
                if let Some(tokens) = file.tokens {
                    if let Some(token) = tokens.access_token.filter(|t| !t.is_empty()) {
                        return Ok(Credential {
                            label,
                            token: Secret::new(token),
                            account_id: tokens
                                .account_id
                                .filter(|a| !a.is_empty())
                                .map(Secret::new),
                        });
                    }
                }
                match file.api_key.filter(|k| !k.is_empty()) {
                    Some(key) => Ok(Credential::api_key(label, key)),
                    None => Err(LoadError(format!(
                        "{} has neither tokens.access_token nor OPENAI_API_KEY",
                        path.display()
                    ))),
                }
            }
        }
    }
}

/// Reads a key file, bounded, and trims it. Errors name the file, never its content.
fn read_key_file(path: &Path) -> Result<String, LoadError> {
    let cannot = |e: std::io::Error| LoadError(format!("cannot read {}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(cannot)?;
    let mut text = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_KEY_FILE + 1), &mut text)
        .map_err(cannot)?;
    if text.len() as u64 > MAX_KEY_FILE {
        return Err(LoadError(format!(
            "{} is larger than {MAX_KEY_FILE} bytes: not a key file",
            path.display()
        )));
    }
    let key = std::str::from_utf8(&text)
        .map_err(|_| LoadError(format!("{} is not UTF-8 text", path.display())))?
        .trim();
    if key.is_empty() {
        return Err(LoadError(format!("{} is empty", path.display())));
    }
    if key.contains(['\r', '\n']) {
        return Err(LoadError(format!(
            "{} holds more than one line: a key file holds the key alone",
            path.display()
        )));
    }
    Ok(key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_form_and_never_prints_secrets() {
        let lit: CredentialSource = "sk-proj-abcdefghijklmnopqrstuvwxyz".parse().unwrap();
        assert_eq!(lit.label(), "key");
        assert_eq!(lit.label_at(3), "key-3");
        assert!(!format!("{lit:?}").contains("wxyz"));
        let file: CredentialSource = "file:/run/secrets/openai".parse().unwrap();
        assert_eq!(file, CredentialSource::File("/run/secrets/openai".into()));
        assert_eq!(file.label_at(2), "file-2");
        assert!("file:".parse::<CredentialSource>().is_err());
        assert_eq!(
            "env:FOO".parse::<CredentialSource>().unwrap(),
            CredentialSource::Env("FOO".into())
        );
        assert!("env:".parse::<CredentialSource>().is_err());
        assert!("".parse::<CredentialSource>().is_err());
        let owned: CredentialSource = "codex-oauth:alice".parse().unwrap();
        assert_eq!(owned, CredentialSource::CodexOAuth("alice".into()));
        assert_eq!(owned.label_at(1), "codex-oauth-1");
        assert_eq!(owned.path(), None, "not a borrowed file");
        for bad in ["codex-oauth:", "codex-oauth:../x", "codex-oauth:a/b"] {
            assert!(bad.parse::<CredentialSource>().is_err(), "{bad}");
        }
    }

    #[test]
    fn loads_codex_auth_file() {
        let dir = std::env::temp_dir().join(format!("tr-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("auth.json");
        std::fs::write(
            &path,
            r#"{"tokens":{"access_token":"at-123","refresh_token":"rt","id_token":"it","account_id":"acct-9"},"last_refresh":"2026-01-01T00:00:00Z","OPENAI_API_KEY":null}"#,
        )
        .unwrap();
        let cred = CredentialSource::CodexAuth(path.clone()).load().unwrap();
        assert_eq!(cred.token.expose(), "at-123");
        assert_eq!(cred.account_id.as_ref().unwrap().expose(), "acct-9");
        let mut h = http::HeaderMap::new();
        h.insert("authorization", "Bearer client".parse().unwrap());
        cred.apply(&mut h);
        assert_eq!(h["authorization"], "Bearer at-123");
        assert_eq!(h["chatgpt-account-id"], "acct-9");

        std::fs::write(&path, r#"{"OPENAI_API_KEY":"sk-from-file"}"#).unwrap();
        assert_eq!(
            CredentialSource::CodexAuth(path.clone())
                .load()
                .unwrap()
                .token
                .expose(),
            "sk-from-file"
        );
        std::fs::write(&path, "not json sk-secret").unwrap();
        let err = CredentialSource::CodexAuth(path.clone())
            .load()
            .unwrap_err();
        assert!(!err.0.contains("sk-secret"));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn loads_a_key_file_trimmed_and_bounded() {
        let dir = std::env::temp_dir().join(format!("tr-keyfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        std::fs::write(&path, "  sk-from-a-file\n").unwrap();
        let source = CredentialSource::File(path.clone());
        let cred = source.load().unwrap();
        assert_eq!(cred.token.expose(), "sk-from-a-file");
        assert_eq!(cred.account_id, None);

        for bad in ["", "sk-one\nsk-two\n"] {
            std::fs::write(&path, bad).unwrap();
            let err = source.load().unwrap_err();
            assert!(!err.0.contains("sk-"), "{}", err.0);
        }
        std::fs::write(&path, vec![b'k'; 70 * 1024]).unwrap();
        assert!(source.load().unwrap_err().0.contains("larger than"));
        std::fs::remove_file(&path).unwrap();
        assert!(source.load().unwrap_err().0.contains("cannot read"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
