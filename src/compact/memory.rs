use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::CompactForm;
use crate::credentials::PoolState;
use crate::profile::Profile;

/// The family of refused compaction models in a shared store.
const FACT_KIND: &str = "compact";
/// Longest model name shared (names come from clients).
const MAX_SHARED_MODEL: usize = 128;

/// Most refusals remembered: model names come from clients, so the map must not grow with
/// whatever they send.
const MAX_REMEMBERED: usize = 256;
/// The longest a refused model is remembered, whatever the configuration says.
const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

type Key = (Profile, CompactForm, String);

/// Models the upstream refused to compact, per profile and form, each until a deadline. With
/// a shared store, a refusal one replica met keeps every replica off the remote endpoint for
/// that model (each would otherwise pay one refused round trip per model).
#[derive(Default)]
pub(crate) struct Refusals {
    map: Mutex<HashMap<Key, Instant>>,
    shared: Option<Arc<dyn PoolState>>,
}

impl std::fmt::Debug for Refusals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refusals")
            .field("shared", &self.shared.is_some())
            .finish_non_exhaustive()
    }
}

fn key(profile: Profile, form: CompactForm, model: &str) -> Key {
    (profile, form, model.to_ascii_lowercase())
}

fn fact(profile: Profile, form: CompactForm, model: &str) -> String {
    format!(
        "{} {} {}",
        profile.as_str(),
        form.as_str(),
        model.to_ascii_lowercase()
    )
}

impl Refusals {
    /// Refusals learnt from, and taught to, the replicas sharing `state`.
    pub(crate) fn shared(state: Arc<dyn PoolState>) -> Self {
        Refusals {
            shared: Some(state),
            ..Self::default()
        }
    }

    fn shared_facts(&self) -> Vec<String> {
        self.shared
            .as_ref()
            .map_or_else(Vec::new, |s| s.facts(FACT_KIND))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Instant>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `model` is remembered as refused; forgets it once its time is up.
    pub(crate) fn is_refused(&self, profile: Profile, form: CompactForm, model: &str) -> bool {
        if self.shared.is_some() {
            let f = fact(profile, form, model);
            if self.shared_facts().contains(&f) {
                return true;
            }
        }
        let k = key(profile, form, model);
        let mut map = self.lock();
        match map.get(&k) {
            Some(&until) if until > Instant::now() => true,
            Some(_) => {
                map.remove(&k);
                false
            }
            None => false,
        }
    }

    /// Remembers a refusal for `ttl`; returns how many are remembered.
    pub(crate) fn remember(
        &self,
        profile: Profile,
        form: CompactForm,
        model: &str,
        ttl: Duration,
    ) -> usize {
        if let Some(state) = &self.shared {
            if model.len() <= MAX_SHARED_MODEL {
                let until = SystemTime::now() + ttl.min(MAX_TTL);
                state.learn_fact(FACT_KIND, &fact(profile, form, model), until);
            }
        }
        let now = Instant::now();
        let mut map = self.lock();
        map.retain(|_, until| *until > now);
        if map.len() >= MAX_REMEMBERED {
            if let Some(oldest) = map.iter().min_by_key(|(_, u)| **u).map(|(k, _)| k.clone()) {
                map.remove(&oldest);
            }
        }
        // A configured TTL of centuries must not overflow the clock: cap it at a year.
        map.insert(key(profile, form, model), now + ttl.min(MAX_TTL));
        map.len()
    }

    /// The remembered models, sorted, duplicates across forms merged.
    pub(crate) fn models(&self) -> Vec<String> {
        let now = Instant::now();
        let mut out: Vec<String> = self
            .lock()
            .iter()
            .filter(|(_, u)| **u > now)
            .map(|((_, _, m), _)| m.clone())
            .collect();
        for f in self.shared_facts() {
            if let Some(model) = f.splitn(3, ' ').nth(2) {
                out.push(model.to_string());
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// How many refusals are remembered now.
    pub(crate) fn len(&self) -> usize {
        let now = Instant::now();
        let mut map = self.lock();
        map.retain(|_, until| *until > now);
        if self.shared.is_none() {
            return map.len();
        }
        let mut all: Vec<String> = map.keys().map(|(p, f, m)| fact(*p, *f, m)).collect();
        drop(map);
        all.extend(self.shared_facts());
        all.sort();
        all.dedup();
        all.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_per_form_and_forgets() {
        let r = Refusals::default();
        let ttl = Duration::from_secs(60);
        r.remember(Profile::Openai, CompactForm::V1, "GPT-5.5", ttl);
        assert!(r.is_refused(Profile::Openai, CompactForm::V1, "gpt-5.5"));
        assert!(!r.is_refused(Profile::Openai, CompactForm::V2, "gpt-5.5"));
        assert!(!r.is_refused(Profile::ChatgptCodex, CompactForm::V1, "gpt-5.5"));
        r.remember(Profile::Openai, CompactForm::V2, "x", Duration::ZERO);
        assert!(!r.is_refused(Profile::Openai, CompactForm::V2, "x"));
        assert_eq!(r.models(), ["gpt-5.5"]);
    }

    #[test]
    fn refusals_on_one_shared_store_are_everyones() {
        use crate::credentials::MemoryState;
        let state: Arc<dyn PoolState> = Arc::new(MemoryState::default());
        let (a, b) = (
            Refusals::shared(state.clone()),
            Refusals::shared(state.clone()),
        );
        a.remember(
            Profile::Openai,
            CompactForm::V2,
            "GPT-X",
            Duration::from_secs(60),
        );
        assert!(b.is_refused(Profile::Openai, CompactForm::V2, "gpt-x"));
        assert!(!b.is_refused(Profile::Openai, CompactForm::V1, "gpt-x"));
        assert_eq!(b.models(), ["gpt-x"]);
        assert_eq!(b.len(), 1);
        // Unshared memories stay apart.
        assert!(!Refusals::default().is_refused(Profile::Openai, CompactForm::V2, "gpt-x"));
    }

    #[test]
    fn a_huge_ttl_does_not_panic() {
        let r = Refusals::default();
        r.remember(Profile::Openai, CompactForm::V1, "m", Duration::MAX);
        assert!(r.is_refused(Profile::Openai, CompactForm::V1, "m"));
    }

    #[test]
    fn bounded() {
        let r = Refusals::default();
        for i in 0..MAX_REMEMBERED + 50 {
            r.remember(
                Profile::Openai,
                CompactForm::V1,
                &format!("m{i}"),
                Duration::from_secs(60),
            );
        }
        assert_eq!(r.len(), MAX_REMEMBERED);
    }
}
