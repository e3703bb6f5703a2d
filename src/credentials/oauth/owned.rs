//! One owned login at run time: its current pair, its refresh, and what it learned.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Semaphore;

use super::client::{AuthorityClient, TokenAnswer, TokenError};
use super::store::{LoginStore, StoredLogin, Tokens, login_json, parse_login, rfc3339};
use super::{Claims, OAuthSettings};
use crate::credentials::policy::Renewal;
use crate::credentials::{Claim, Credential, LoadError, PoolState, Secret};

/// First backoff after a refresh failed for now; doubles to [`BACKOFF_MAX`].
const BACKOFF_FLOOR: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(600);

/// A 401 this soon after a refresh most likely hit the token before it.
const FRESH_AFTER_REFRESH: Duration = Duration::from_secs(10);

/// How often a replica waiting on another's refresh looks for the pair it stores.
const PAIR_POLL: Duration = Duration::from_millis(100);

/// What every owned login of a pool shares: the settings, the store, the authority client,
/// and the bound on refreshes running at once.
pub(crate) struct Logins {
    pub(crate) settings: OAuthSettings,
    pub(crate) store: LoginStore,
    client: AuthorityClient,
    gate: Arc<Semaphore>,
    /// A store other replicas share: refreshes are claimed there, and rotated pairs go there.
    shared: OnceLock<Arc<dyn PoolState>>,
    /// This process's name in refresh claims.
    holder: String,
}

impl Logins {
    pub(crate) fn new(settings: OAuthSettings) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Logins {
            shared: OnceLock::new(),
            holder: format!(
                "{}-{nanos:x}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ),
            store: LoginStore::new(&settings.state_dir),
            client: AuthorityClient::new(
                &settings.auth_base_url,
                &settings.client_id,
                settings.refresh_timeout,
            ),
            gate: Arc::new(Semaphore::new(settings.max_concurrent_refreshes.max(1))),
            settings,
        }
    }
}

/// Why a refresh starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefreshTrigger {
    /// The access token expires within the lead.
    Expiring,
    /// The upstream answered 401.
    Unauthorized,
}

/// How a refresh ended, for the log and `tr_credential_refresh_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// New tokens, stored.
    Ok,
    /// New tokens whose expiry is no later than the old: stored; no more refreshes.
    NotExtended,
    /// New tokens that could not be stored: used from memory; a restart needs `login NAME`.
    StoreFailed,
    /// The stored file had a newer login (`login NAME` ran): adopted, nothing sent.
    Adopted,
    /// Refused for now, or never sent: backing off.
    Transient,
    /// Refused for good: out until `login NAME`.
    Permanent,
    /// Sent, never answered: out until `login NAME` (the token may be spent).
    Unanswered,
    /// Not started (another was running, or backing off).
    Skipped,
}

impl Outcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::NotExtended => "not_extended",
            Outcome::StoreFailed => "store_failed",
            Outcome::Adopted => "adopted",
            Outcome::Transient => "transient",
            Outcome::Permanent => "permanent",
            Outcome::Unanswered => "unanswered",
            Outcome::Skipped => "skipped",
        }
    }
}

struct Inner {
    stored: StoredLogin,
    expires: Option<SystemTime>,
    /// Next refresh allowed at, and failures in a row.
    backoff: Option<(SystemTime, u32)>,
    /// Why the login is out until `login NAME` (only in memory when the file could not say).
    reauth: Option<String>,
    last_done: Option<Instant>,
    /// The current pair came from a refresh after a 401 and has served nothing yet.
    after_401_unproven: bool,
}

/// One `codex-oauth:NAME` credential.
pub(crate) struct OwnedLogin {
    name: String,
    logins: Arc<Logins>,
    inner: Mutex<Inner>,
    refreshing: AtomicBool,
}

fn expiry(tokens: &Tokens) -> Option<SystemTime> {
    Claims::expiry_of(tokens.access_token.expose())
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl OwnedLogin {
    /// Loads login `name` from the state directory. A stored record of a refresh that was
    /// sent and never answered, or of a refusal for good, keeps it out until `login NAME`.
    pub(crate) fn load(name: &str, logins: Arc<Logins>) -> Result<OwnedLogin, LoadError> {
        let stored = logins.store.read(name)?;
        let mut reauth = stored.state.reauth_required.clone();
        if let Some(sent) = stored.state.refresh_sent_at.filter(|_| reauth.is_none()) {
            tracing::error!(
                login = name,
                refresh_sent_at = %rfc3339(UNIX_EPOCH + Duration::from_secs(sent)),
                file = %logins.store.path(name).display(),
                "a refresh of this login was sent but its answer was never stored (the proxy \
                 stopped, or could not write its state directory); the stored pair is whole but \
                 its refresh token may be spent, so it is not sent again: run `login {name}`"
            );
            reauth = Some("refresh_unstored".into());
        } else if let Some(why) = &reauth {
            tracing::warn!(
                login = name,
                reason = %why,
                "this login was refused for good; out of rotation until `login {name}` runs again"
            );
        }
        let expires = expiry(&stored.tokens);
        Ok(OwnedLogin {
            name: name.to_string(),
            logins,
            inner: Mutex::new(Inner {
                expires,
                stored,
                backoff: None,
                reauth,
                last_done: None,
                after_401_unproven: false,
            }),
            refreshing: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The login's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The login's file.
    pub(crate) fn path(&self) -> std::path::PathBuf {
        self.logins.store.path(&self.name)
    }

    /// The credential requests carry now.
    pub(crate) fn credential(&self, label: &str) -> Credential {
        let inner = self.lock();
        Credential {
            label: label.to_string(),
            token: inner.stored.tokens.access_token.clone(),
            account_id: inner.stored.tokens.account_id.clone().map(Secret::new),
        }
    }

    /// The access token's expiry and where refreshing stands.
    pub(crate) fn token_state(&self, now: SystemTime) -> (Option<SystemTime>, Renewal) {
        let inner = self.lock();
        let renewal = if inner.reauth.is_some() {
            Renewal::ReauthRequired
        } else if inner.stored.state.not_extending {
            Renewal::Stopped
        } else {
            match inner.backoff {
                Some((next, _)) if next > now => Renewal::BackingOff(next),
                _ => Renewal::Possible,
            }
        };
        (inner.expires, renewal)
    }

    /// The access token's expiry.
    pub(crate) fn expires(&self) -> Option<SystemTime> {
        self.lock().expires
    }

    /// A request was answered with the current pair.
    pub(crate) fn served(&self) {
        self.lock().after_401_unproven = false;
    }

    /// Whether a 401 calls for a refresh: not while one runs or right after one (the 401
    /// most likely hit the old token), and not twice in a row: a pair fresh from a
    /// 401-triggered refresh that is refused again takes the login out until `login NAME`.
    /// Returns `Err` with the reason when the login is now out.
    pub(crate) fn wants_refresh_after_401(&self) -> Result<bool, String> {
        if self.refreshing.load(Ordering::Acquire) {
            return Ok(false);
        }
        let mut inner = self.lock();
        if inner.reauth.is_some() {
            return Ok(false);
        }
        if inner
            .last_done
            .is_some_and(|t| t.elapsed() < FRESH_AFTER_REFRESH)
        {
            return Ok(false);
        }
        if inner.after_401_unproven {
            let why = "unauthorized_after_refresh".to_string();
            tracing::error!(
                login = %self.name,
                "the upstream refused this login again right after a refresh; out of rotation \
                 until `login {}` signs it in again",
                self.name
            );
            inner.reauth = Some(why.clone());
            return Err(why);
        }
        Ok(true)
    }

    /// Adopts the stored file when it holds another login than memory does (`login NAME`
    /// ran again): returns whether it did.
    pub(crate) fn reload_from_disk(&self) -> bool {
        let Ok(stored) = self.logins.store.read(&self.name) else {
            return false;
        };
        let mut inner = self.lock();
        self.adopt_if_new(&mut inner, stored)
    }

    fn adopt_if_new(&self, inner: &mut Inner, stored: StoredLogin) -> bool {
        if stored.tokens.refresh_token == inner.stored.tokens.refresh_token
            || stored.state.reauth_required.is_some()
            || stored.state.refresh_sent_at.is_some()
        {
            return false;
        }
        tracing::info!(
            login = %self.name,
            "the stored login changed (`login` ran again); using it"
        );
        inner.expires = expiry(&stored.tokens);
        inner.stored = stored;
        inner.reauth = None;
        inner.backoff = None;
        inner.after_401_unproven = false;
        true
    }

    /// Coordinates this login's refreshes with other replicas through `state` (a shared
    /// store): one claim per refresh, the rotated pair stored there for the others.
    pub(crate) fn share_state(&self, state: Arc<dyn PoolState>) {
        let _ = self.logins.shared.set(state);
    }

    /// Before a refresh on a shared store: claim it, or take the pair another replica
    /// stored. `Err` ends the refresh with that outcome (adopted, or backing off: a claim
    /// that cannot be had means no refresh, since two replicas redeeming one single-use
    /// refresh token can revoke the login).
    async fn claim_across_replicas(&self, state: &dyn PoolState) -> Result<(), Outcome> {
        let name = &self.name;
        let ttl = self.logins.settings.refresh_timeout + Duration::from_secs(5);
        let give_up = Instant::now() + ttl;
        loop {
            match state.claim_refresh(name, &self.logins.holder, ttl).await {
                Claim::Granted => match state.token_pair(name).await {
                    // Another replica may have refreshed just before the claim was free.
                    Ok(pair) => match self.adopt_shared(pair).await {
                        Some(outcome) => {
                            state.release_refresh(name, &self.logins.holder).await;
                            return Err(outcome);
                        }
                        None => return Ok(()),
                    },
                    Err(e) => {
                        state.release_refresh(name, &self.logins.holder).await;
                        tracing::warn!(login = %name, error = %e, "cannot read the shared token pair; not refreshing");
                        self.back_off("the shared state did not answer");
                        return Err(Outcome::Transient);
                    }
                },
                Claim::Held => {
                    if let Ok(pair) = state.token_pair(name).await {
                        if let Some(outcome) = self.adopt_shared(pair).await {
                            return Err(outcome);
                        }
                    }
                    if Instant::now() > give_up {
                        self.back_off("another replica held the refresh claim too long");
                        return Err(Outcome::Transient);
                    }
                    tokio::time::sleep(PAIR_POLL).await;
                }
                Claim::Unavailable => {
                    tracing::warn!(
                        login = %name,
                        "the shared state is unreachable: no refresh without a claim (another \
                         replica may be refreshing); the current token serves meanwhile"
                    );
                    self.back_off("the shared state is unreachable");
                    return Err(Outcome::Transient);
                }
            }
        }
    }

    /// Takes a pair another replica stored, if it is another than this one's: written to
    /// the state directory (best effort) and used.
    async fn adopt_shared(&self, pair: Option<String>) -> Option<Outcome> {
        let stored = parse_login(pair?.as_bytes()).ok()?;
        if stored.tokens.refresh_token == self.lock().stored.tokens.refresh_token {
            return None;
        }
        if let Err(e) = self.write_off_runtime(&stored).await {
            tracing::warn!(login = %self.name, error = %e, "cannot store the pair another replica refreshed; using it from memory");
        }
        let adopted = self.adopt_if_new(&mut self.lock(), stored);
        if adopted {
            tracing::info!(login = %self.name, "took the pair another replica refreshed; no token call");
        }
        adopted.then_some(Outcome::Adopted)
    }

    /// After a refresh on a shared store: the rotated pair goes there, written only over the
    /// pair that was refreshed, and the claim ends.
    async fn publish(&self, state: &dyn PoolState, refreshed: &Secret) {
        let name = &self.name;
        let current = self.lock().stored.clone();
        if current.tokens.refresh_token != *refreshed {
            let Ok(json) = login_json(&current) else {
                return;
            };
            let json = String::from_utf8_lossy(&json).into_owned();
            // A few tries: a replica that cannot see the new pair would redeem the spent one.
            for attempt in 0..3u32 {
                match state
                    .swap_token_pair(
                        name,
                        refreshed.expose(),
                        current.tokens.refresh_token.expose(),
                        &json,
                    )
                    .await
                {
                    Ok(true) => break,
                    Ok(false) => {
                        tracing::warn!(login = %name, "the shared token pair changed under this refresh; keeping the stored one there");
                        break;
                    }
                    Err(e) if attempt == 2 => {
                        tracing::error!(login = %name, error = %e, "the refreshed pair could not be shared; other replicas keep the old one until it is");
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }
        state.release_refresh(name, &self.logins.holder).await;
    }

    /// Claims the single flight: `false` when a refresh runs already.
    pub(crate) fn begin(&self) -> bool {
        !self.refreshing.swap(true, Ordering::AcqRel)
    }

    /// Runs the refresh claimed with [`begin`](Self::begin), and ends the claim.
    pub(crate) async fn refresh(&self, trigger: RefreshTrigger) -> Outcome {
        let outcome = self.refresh_claimed(trigger).await;
        {
            let mut inner = self.lock();
            inner.last_done = Some(Instant::now());
            let renewed = matches!(
                outcome,
                Outcome::Ok | Outcome::NotExtended | Outcome::StoreFailed
            );
            inner.after_401_unproven = renewed && trigger == RefreshTrigger::Unauthorized;
        }
        self.refreshing.store(false, Ordering::Release);
        outcome
    }

    async fn refresh_claimed(&self, trigger: RefreshTrigger) -> Outcome {
        let Some(state) = self.logins.shared.get().cloned() else {
            return self.refresh_here(trigger).await;
        };
        // With a shared store: claimed there first, published after.
        if let Err(outcome) = self.claim_across_replicas(state.as_ref()).await {
            return outcome;
        }
        let refreshed = self.lock().stored.tokens.refresh_token.clone();
        let outcome = self.refresh_here(trigger).await;
        self.publish(state.as_ref(), &refreshed).await;
        outcome
    }

    /// The refresh itself.
    async fn refresh_here(&self, trigger: RefreshTrigger) -> Outcome {
        let name = &self.name;
        let store = &self.logins.store;
        {
            let inner = self.lock();
            if inner.reauth.is_some() {
                return Outcome::Skipped;
            }
            if inner
                .backoff
                .is_some_and(|(next, _)| next > SystemTime::now())
            {
                return Outcome::Skipped;
            }
            if trigger == RefreshTrigger::Expiring && inner.stored.state.not_extending {
                return Outcome::Skipped;
            }
        }
        // At most a few refreshes at once across the pool, and never waiting unboundedly.
        let gate = self.logins.gate.clone();
        let Ok(Ok(_permit)) =
            tokio::time::timeout(self.logins.settings.refresh_timeout, gate.acquire_owned()).await
        else {
            self.back_off("other refreshes held the pool's refresh slots too long");
            return Outcome::Transient;
        };
        // A guarded reload: if `login NAME` wrote a new login meanwhile, use it, send nothing.
        let disk = self.read_off_runtime().await;
        let mut marked = {
            let mut inner = self.lock();
            if let Ok(disk) = disk {
                if self.adopt_if_new(&mut inner, disk) {
                    return Outcome::Adopted;
                }
            }
            inner.stored.clone()
        };
        // Record the call before making it: a crash from here on leaves a file that says its
        // refresh token may be spent. (Only this refresh writes the file: single flight.)
        marked.state.refresh_sent_at = Some(unix(SystemTime::now()));
        if let Err(e) = self.write_off_runtime(&marked).await {
            tracing::error!(
                login = %name,
                error = %e,
                dir = %store.dir().display(),
                "cannot write the state directory; not refreshing (nothing was sent)"
            );
            self.back_off("the state directory is not writable");
            return Outcome::Transient;
        }
        let sent_with = marked.tokens.refresh_token.clone();
        self.lock().stored = marked;
        tracing::info!(login = %name, trigger = ?trigger, "refreshing the login");
        match self.logins.client.refresh(&sent_with).await {
            Ok(answer) => self.store_answer(answer, trigger).await,
            Err(TokenError::Unsent(e)) | Err(TokenError::Transient(e)) => {
                // The refresh token is unspent (never sent, or refused without rotation): the
                // record of the call goes, so a restart may use it.
                let mut clean = self.lock().stored.clone();
                clean.state.refresh_sent_at = None;
                if self.write_off_runtime(&clean).await.is_ok() {
                    self.lock().stored = clean;
                }
                tracing::warn!(login = %name, error = %e, "refresh failed for now; backing off");
                self.back_off(&e);
                Outcome::Transient
            }
            Err(TokenError::Permanent(code)) => {
                tracing::error!(
                    login = %name,
                    code = %code,
                    "the authority refused this login's refresh token for good; its access \
                     token is not used either (the whole login may be revoked): out of \
                     rotation until `login {name}` signs it in again"
                );
                self.out_for_good(&code).await;
                Outcome::Permanent
            }
            Err(TokenError::Unanswered(e)) => {
                // It may have reached the authority and rotated the token: never send it again.
                if let Ok(disk) = self.read_off_runtime().await {
                    if self.adopt_if_new(&mut self.lock(), disk) {
                        return Outcome::Adopted;
                    }
                }
                tracing::error!(
                    login = %name,
                    error = %e,
                    "a refresh was sent and no answer came; its refresh token may be spent, so it \
                     is not sent again: out of rotation until `login {name}` signs it in again"
                );
                self.out_for_good("refresh_unanswered").await;
                Outcome::Unanswered
            }
        }
    }

    fn back_off(&self, why: &str) {
        let mut inner = self.lock();
        let failures = inner.backoff.map_or(0, |(_, n)| n) + 1;
        let wait = BACKOFF_FLOOR
            .saturating_mul(1 << (failures - 1).min(10))
            .min(BACKOFF_MAX);
        inner.backoff = Some((SystemTime::now() + wait, failures));
        tracing::info!(
            login = %self.name,
            why,
            retry_in_secs = wait.as_secs(),
            "refresh backing off"
        );
    }

    async fn out_for_good(&self, code: &str) {
        let mut marked = {
            let mut inner = self.lock();
            inner.reauth = Some(code.to_string());
            inner.stored.clone()
        };
        marked.state.reauth_required = Some(code.to_string());
        // Best effort: the sent-refresh record already keeps a restart from using it.
        if self.write_off_runtime(&marked).await.is_ok() {
            self.lock().stored = marked;
        }
    }

    /// Reads the stored login on the blocking pool.
    async fn read_off_runtime(&self) -> Result<StoredLogin, LoadError> {
        let (store, name) = (self.logins.store.clone(), self.name.clone());
        tokio::task::spawn_blocking(move || store.read(&name))
            .await
            .unwrap_or_else(|e| Err(LoadError(format!("reading the login failed: {e}"))))
    }

    /// Writes the login on the blocking pool (the write flushes to disk).
    async fn write_off_runtime(&self, login: &StoredLogin) -> std::io::Result<()> {
        let (store, name, login) = (self.logins.store.clone(), self.name.clone(), login.clone());
        tokio::task::spawn_blocking(move || store.write(&name, &login))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }

    /// Takes the authority's answer: fields that came back replace the old ones, as in the
    /// Codex CLI; stored before use whenever the disk allows. Only a refresh ahead of expiry
    /// judges whether the expiry moved (after a 401 the point was a new token, and a refresh
    /// within the second of the last one may well keep its `exp`).
    async fn store_answer(&self, answer: TokenAnswer, trigger: RefreshTrigger) -> Outcome {
        let name = &self.name;
        let now = SystemTime::now();
        let (old_expires, mut next) = {
            let inner = self.lock();
            (inner.expires, inner.stored.clone())
        };
        let sent_at = next.state.refresh_sent_at;
        if let Some(t) = answer.access_token.filter(|t| !t.is_empty()) {
            next.tokens.access_token = Secret::new(t);
        }
        if let Some(t) = answer.refresh_token.filter(|t| !t.is_empty()) {
            next.tokens.refresh_token = Secret::new(t);
        }
        if let Some(t) = answer.id_token.filter(|t| !t.is_empty()) {
            if let Some(account) = Claims::read(&t).and_then(|c| c.account_id) {
                next.tokens.account_id = Some(account);
            }
            next.tokens.id_token = Some(Secret::new(t));
        }
        let expires = expiry(&next.tokens).or_else(|| {
            answer
                .expires_in
                .map(|s| now + Duration::from_secs(s.min(1 << 32)))
        });
        let extended = match (old_expires, expires, trigger) {
            (Some(old), Some(new), RefreshTrigger::Expiring) => new > old,
            _ => true,
        };
        next.last_refresh = Some(rfc3339(now));
        next.state.refresh_sent_at = None;
        next.state.not_extending = !extended;
        let outcome = match self.write_off_runtime(&next).await {
            Ok(()) if extended => Outcome::Ok,
            Ok(()) => Outcome::NotExtended,
            Err(e) => {
                tracing::error!(
                    login = %name,
                    error = %e,
                    file = %self.logins.store.path(name).display(),
                    "refreshed, but the new tokens could not be stored; serving with them from \
                     memory. The stored pair is the old one, whole, and says its refresh token \
                     was spent: after a restart this login needs `login {name}`"
                );
                // The file still records the call (its refresh token is spent).
                next.state.refresh_sent_at = sent_at;
                Outcome::StoreFailed
            }
        };
        if outcome == Outcome::NotExtended {
            tracing::warn!(
                login = %name,
                expires = %expires.map(rfc3339).unwrap_or_default(),
                "a refresh did not extend this login's expiry (an account under advanced \
                 security?): no more refreshes; it serves until then, then needs `login {name}`"
            );
        } else if outcome == Outcome::Ok {
            tracing::info!(
                login = %name,
                expires = %expires.map(rfc3339).unwrap_or_default(),
                "login refreshed and stored"
            );
        }
        let mut inner = self.lock();
        inner.stored = next;
        inner.expires = expires;
        inner.backoff = None;
        inner.after_401_unproven = false;
        outcome
    }
}
