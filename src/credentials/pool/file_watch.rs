//! Credential files (`codex-auth:`, `file:`): looked at once a second at most, re-read off
//! the async workers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use super::super::CredentialSource;
use super::super::oauth::OwnedLogin;
use super::Current;

/// How often a credential's auth file is looked at (one `stat`), at most.
pub(super) const FILE_CHECK_EVERY: Duration = Duration::from_secs(1);

/// A credential file's last seen stamp, and whether a reload changed it since the pool last
/// looked.
pub(super) struct FileWatch {
    pub(super) path: std::path::PathBuf,
    /// The access token's expiry, read from its JWT at each load.
    pub(super) expires: Mutex<Option<SystemTime>>,
    pub(super) stamp: Mutex<Option<SystemTime>>,
    pub(super) checked: Mutex<Option<Instant>>,
    pub(super) reloading: AtomicBool,
    pub(super) changed: AtomicBool,
}

pub(super) fn file_stamp(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).ok().and_then(|m| m.modified().ok())
}

/// Re-reads a credential file whose stamp moved (runs off the async workers). An owned
/// login's file changes with every refresh; only another login written there (`login NAME`
/// ran again) replaces the credential.
pub(super) fn reload_file(
    watch: &FileWatch,
    current: &RwLock<Current>,
    source: &CredentialSource,
    owned: Option<&OwnedLogin>,
    label: &str,
) {
    let stamp = file_stamp(&watch.path);
    let old = *watch.stamp.lock().unwrap_or_else(|p| p.into_inner());
    if let (true, Some(owned)) = (stamp != old, owned) {
        *watch.stamp.lock().unwrap_or_else(|p| p.into_inner()) = stamp;
        if owned.reload_from_disk() {
            *current.write().unwrap_or_else(|p| p.into_inner()) = owned.credential(label).into();
            watch.changed.store(true, Ordering::Release);
        }
    } else if stamp != old {
        match source.load() {
            Ok(mut cred) => {
                cred.label = label.to_string();
                *watch.expires.lock().unwrap_or_else(|p| p.into_inner()) =
                    super::super::oauth::Claims::expiry_of(cred.token.expose());
                *current.write().unwrap_or_else(|p| p.into_inner()) = cred.into();
                *watch.stamp.lock().unwrap_or_else(|p| p.into_inner()) = stamp;
                watch.changed.store(true, Ordering::Release);
            }
            Err(e) => {
                tracing::warn!(credential = label, error = %e, "auth file changed but cannot be read")
            }
        }
    }
    watch.reloading.store(false, Ordering::Release);
}
