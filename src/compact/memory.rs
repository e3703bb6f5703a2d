use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::CompactForm;
use crate::profile::Profile;

/// Most refusals remembered: model names come from clients, so the map must not grow with
/// whatever they send.
const MAX_REMEMBERED: usize = 256;
/// The longest a refused model is remembered, whatever the configuration says.
const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

type Key = (Profile, CompactForm, String);

/// Models the upstream refused to compact, per profile and form, each until a deadline.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    map: Mutex<HashMap<Key, Instant>>,
}

fn key(profile: Profile, form: CompactForm, model: &str) -> Key {
    (profile, form, model.to_ascii_lowercase())
}

impl Refusals {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Instant>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `model` is remembered as refused; forgets it once its time is up.
    pub(crate) fn is_refused(&self, profile: Profile, form: CompactForm, model: &str) -> bool {
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
        out.sort();
        out.dedup();
        out
    }

    /// How many refusals are remembered now.
    pub(crate) fn len(&self) -> usize {
        let now = Instant::now();
        let mut map = self.lock();
        map.retain(|_, until| *until > now);
        map.len()
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
