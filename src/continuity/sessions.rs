use std::collections::HashMap;
use std::sync::Mutex;

use crate::metrics::Metrics;

/// Token accounting of one session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Turns answered.
    pub turns: u64,
    /// Input tokens of the first turn.
    pub first_input: u64,
    /// Input tokens of the latest turn.
    pub last_input: u64,
    /// Largest input of any turn.
    pub max_input: u64,
    /// Input tokens of all turns together.
    pub total_input: u64,
}

/// Per-session stats, bounded: the least recently seen sessions are dropped (and their
/// series removed from the metrics) past `capacity`.
/// Stats per session, each with the tick it was last seen at; and the current tick.
type Table = (HashMap<String, (SessionStats, u64)>, u64);

pub(super) struct Sessions {
    inner: Mutex<Table>,
    capacity: usize,
}

impl Sessions {
    pub(super) fn new(capacity: usize) -> Self {
        Sessions {
            inner: Mutex::new((HashMap::new(), 0)),
            capacity: capacity.max(1),
        }
    }

    pub(super) fn get(&self, session: &str) -> Option<SessionStats> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .get(session)
            .map(|(s, _)| *s)
    }

    pub(super) fn record(&self, session: &str, input_tokens: u64, metrics: Option<&Metrics>) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.1 += 1;
        let tick = g.1;
        if g.0.len() >= self.capacity && !g.0.contains_key(session) {
            if let Some(old) =
                g.0.iter()
                    .min_by_key(|(_, (_, t))| *t)
                    .map(|(k, _)| k.clone())
            {
                g.0.remove(&old);
                if let Some(m) = metrics {
                    for name in SERIES {
                        m.remove_matching(name, "session", &old);
                    }
                }
            }
        }
        // The key is copied only for a new session.
        let (stats, seen) = match g.0.get_mut(session) {
            Some(entry) => entry,
            None => g.0.entry(session.to_owned()).or_default(),
        };
        *seen = tick;
        if stats.turns == 0 {
            stats.first_input = input_tokens;
        }
        stats.turns += 1;
        stats.last_input = input_tokens;
        stats.max_input = stats.max_input.max(input_tokens);
        stats.total_input += input_tokens;
        let stats = *stats;
        drop(g);
        if let Some(m) = metrics {
            m.set_many(
                &[
                    (
                        SERIES[0],
                        "Turns answered in the session.",
                        stats.turns as f64,
                    ),
                    (
                        SERIES[1],
                        "Input tokens of the session's latest turn.",
                        stats.last_input as f64,
                    ),
                    (
                        SERIES[2],
                        "Largest per-turn input of the session.",
                        stats.max_input as f64,
                    ),
                    (
                        SERIES[3],
                        "Input tokens of all the session's turns.",
                        stats.total_input as f64,
                    ),
                ],
                &[("session", session)],
            );
            m.inc("tr_turns_total", "Turns answered with usage.", &[]);
            m.add(
                "tr_input_tokens_total",
                "Input tokens reported by the upstream.",
                &[],
                input_tokens as f64,
            );
        }
    }
}

const SERIES: [&str; 4] = [
    "tr_session_turns",
    "tr_session_input_tokens_last",
    "tr_session_input_tokens_max",
    "tr_session_input_tokens_sum",
];
