use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

use super::{Credential, Secret};

/// Where a credential comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// The key itself.
    Literal(Secret),
    /// An environment variable holding the key.
    Env(String),
    /// A Codex CLI `auth.json` (ChatGPT login or stored API key).
    CodexAuth(PathBuf),
}

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
    /// A name safe to log.
    pub fn label(&self) -> String {
        match self {
            CredentialSource::Literal(s) => {
                // The last four characters identify a key to its owner without revealing it.
                let tail: String = s
                    .expose()
                    .chars()
                    .rev()
                    .take(4)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                if s.expose().chars().count() >= 20 {
                    format!("key-…{tail}")
                } else {
                    "key".to_string()
                }
            }
            CredentialSource::Env(name) => format!("env:{name}"),
            CredentialSource::CodexAuth(p) => format!("codex-auth:{}", p.display()),
        }
    }

    /// The file behind this credential, if it is one (watched for changes).
    pub fn path(&self) -> Option<&Path> {
        match self {
            CredentialSource::CodexAuth(p) => Some(p),
            _ => None,
        }
    }

    /// Reads the credential now.
    pub fn load(&self) -> Result<Credential, LoadError> {
        let label = self.label();
        match self {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_form_and_never_prints_secrets() {
        let lit: CredentialSource = "sk-proj-abcdefghijklmnopqrstuvwxyz".parse().unwrap();
        assert_eq!(lit.label(), "key-…wxyz");
        assert!(!format!("{lit:?}").contains("abcdef"));
        assert_eq!(
            "env:FOO".parse::<CredentialSource>().unwrap(),
            CredentialSource::Env("FOO".into())
        );
        assert!("env:".parse::<CredentialSource>().is_err());
        assert!("".parse::<CredentialSource>().is_err());
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
}
