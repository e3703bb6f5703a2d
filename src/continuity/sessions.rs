use std::sync::Mutex;
use std::time::SystemTime;

use crate::credentials::ttl_map::TtlMap;

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
/// series removed from the metrics) past `capacity`. A [`TtlMap`] keeps them in the order they
/// were last seen, so recording a turn costs the same with 10 sessions or 100,000 (the table
/// was once a scan over every session, and every session's series, per new session).
pub(super) struct Sessions {
    inner: Mutex<TtlMap<SessionStats>>,
}

/// Sessions do not expire (they leave by capacity only), so the map's clock is never read.
const NEVER: SystemTime = SystemTime::UNIX_EPOCH;

impl Sessions {
    pub(super) fn new(capacity: usize) -> Self {
        Sessions {
            inner: Mutex::new(TtlMap::new(capacity)),
        }
    }

    pub(super) fn get(&self, session: &str) -> Option<SessionStats> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(session, NEVER)
    }

    pub(super) fn record(&self, session: &str, input_tokens: u64, metrics: Option<&Metrics>) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut stats = g.get(session, NEVER).unwrap_or_default();
        if stats.turns == 0 {
            stats.first_input = input_tokens;
        }
        stats.turns += 1;
        stats.last_input = input_tokens;
        stats.max_input = stats.max_input.max(input_tokens);
        stats.total_input += input_tokens;
        // The evicted session's gauges go with it, each by its exact series.
        g.insert_reporting(session, stats, None, NEVER, |old| {
            if let Some(m) = metrics {
                for name in SERIES {
                    m.remove_series(name, &[("session", old)]);
                }
            }
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_seen_session_leaves_with_its_gauges() {
        let m = Metrics::new();
        let sessions = Sessions::new(3);
        for (s, tokens) in [("a", 10), ("b", 20), ("c", 30), ("a", 11)] {
            sessions.record(s, tokens, Some(&m));
        }
        // "a" was seen again, so "b" is the least recently seen when "d" arrives.
        sessions.record("d", 40, Some(&m));
        assert_eq!(sessions.get("b"), None);
        for name in SERIES {
            assert_eq!(m.get(name, &[("session", "b")]), None, "{name}");
        }
        let a = sessions.get("a").expect("a kept");
        assert_eq!(
            (a.turns, a.first_input, a.last_input, a.total_input),
            (2, 10, 11, 21)
        );
        assert_eq!(m.get("tr_session_turns", &[("session", "a")]), Some(2.0));
        assert_eq!(
            m.get("tr_session_input_tokens_sum", &[("session", "c")]),
            Some(30.0)
        );
        assert_eq!(m.get("tr_session_turns", &[("session", "d")]), Some(1.0));
    }

    #[test]
    fn a_full_table_keeps_its_size_under_many_new_sessions() {
        let m = Metrics::new();
        let sessions = Sessions::new(100);
        for i in 0..5_000 {
            sessions.record(&format!("s{i}"), 1, Some(&m));
        }
        // The newest 100 stay, and only theirs are exported.
        assert!(sessions.get("s4899").is_none());
        assert!(sessions.get("s4900").is_some());
        assert_eq!(m.total("tr_session_turns"), 100.0);
    }
}
