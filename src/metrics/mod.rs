//! Metrics through the [`metrics`] facade, rendered in the Prometheus text format.
//!
//! Layers take an optional [`Metrics`] handle and report counters, gauges and histograms
//! through it. A handle reports to one of two places:
//!
//! - [`Metrics::new`]: its own recorder (`metrics-exporter-prometheus`'s, never installed
//!   globally), so several proxies in one process keep separate metrics. The proxy renders it
//!   at `GET /metrics` ([`Metrics::render`]); tests read values back ([`Metrics::get`],
//!   [`Metrics::total`]).
//! - [`Metrics::global`]: whatever `metrics` recorder the application installed (its own
//!   Prometheus exporter, StatsD, OpenTelemetry...), looked up at each update. The layers
//!   never need the proxy's recorder.
//!
//! On the request path an update of an existing series takes no shared lock: each thread
//! keeps the handles it registered with the handle's own recorder, and an update is one
//! atomic operation on the series (`benches/metrics.rs` measures it). The facade has no way
//! to delete a series, so the few gauge families whose series must go away (a cooldown that
//! ended, a session evicted from the bounded table) are kept beside the recorder in a small
//! table and rendered with it; see [`Metrics::remove_matching`].
//!
//! ```
//! use tower_responses::metrics::Metrics;
//!
//! let m = Metrics::new();
//! m.inc("tr_requests_total", "Requests answered.", &[("status", "200")]);
//! m.inc("tr_requests_total", "Requests answered.", &[("status", "200")]);
//! m.observe("tr_request_duration_seconds", "Request duration.", &[("status", "200")], 0.2);
//! assert_eq!(m.get("tr_requests_total", &[("status", "200")]), Some(2.0));
//! let text = m.render();
//! assert!(text.contains("tr_requests_total{status=\"200\"} 2"));
//! assert!(text.contains("tr_request_duration_seconds_count{status=\"200\"} 1"));
//! ```
//!
//! With your own recorder, installed before the first request:
//!
//! ```
//! use tower_responses::metrics::Metrics;
//! use tower_responses::soft_failure::SoftFailureDetectLayer;
//!
//! // metrics::set_global_recorder(your_recorder).unwrap();
//! let layer = SoftFailureDetectLayer::new().metrics(Metrics::global());
//! # let _ = layer;
//! ```

mod cache;
mod readback;
mod removable;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use metrics::{Key, Label, Level, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use self::cache::Handle;
use self::removable::Removable;

/// Histogram buckets, in seconds: from a fast local answer to a long reasoning stream.
const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// Histogram samples queue lock-free in the recorder until they are folded into buckets;
/// fold them every this many samples (and at each render) so the queue stays bounded when
/// nobody scrapes.
const UPKEEP_EVERY: u32 = 1024;

/// Gauge families whose series are removed ([`Metrics::remove_matching`]). The facade cannot
/// delete a series, so these live beside the recorder; they change once per turn or per
/// cooldown, never per event.
const REMOVABLE: [&str; 6] = [
    "tr_credential_cooldown_until_seconds",
    "tr_credential_action_required",
    "tr_session_turns",
    "tr_session_input_tokens_last",
    "tr_session_input_tokens_max",
    "tr_session_input_tokens_sum",
];

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// When the client's request arrived, as a request extension: `tr_first_content_seconds`
/// ([`SoftFailureDetectLayer`](crate::soft_failure::SoftFailureDetectLayer)) counts from it,
/// so retries on other credentials are part of the wait. Without it the layer counts from
/// when the attempt reached it. The proxy inserts it when it hands a request to the stack.
#[derive(Debug, Clone, Copy)]
pub struct RequestStarted(pub Instant);

impl RequestStarted {
    /// Now.
    pub fn now() -> Self {
        RequestStarted(Instant::now())
    }
}

/// Where a handle's updates go. Cloning shares it.
#[derive(Clone)]
pub struct Metrics(Sink);

#[derive(Clone)]
enum Sink {
    Local(Arc<Local>),
    Global,
}

/// A recorder of our own, with its rendering handle.
struct Local {
    /// Tells this recorder's handles apart in the per-thread caches.
    id: u64,
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    removable: Removable,
    samples: AtomicU32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Sink::Local(l) => f.debug_struct("Metrics").field("local", &l.id).finish(),
            Sink::Global => f.write_str("Metrics(global)"),
        }
    }
}

fn key(name: &'static str, labels: &[(&str, &str)]) -> Key {
    let labels: Vec<Label> = labels
        .iter()
        .map(|&(k, v)| Label::new(k.to_owned(), v.to_owned()))
        .collect();
    Key::from_parts(name, labels)
}

fn describe(r: &dyn Recorder, kind: Kind, name: &'static str, help: &'static str) {
    let help = SharedString::const_str(help);
    match kind {
        Kind::Counter => r.describe_counter(name.into(), None, help),
        Kind::Gauge => r.describe_gauge(name.into(), None, help),
        Kind::Histogram => r.describe_histogram(name.into(), Some(Unit::Seconds), help),
    }
}

fn register(r: &dyn Recorder, kind: Kind, name: &'static str, labels: &[(&str, &str)]) -> Handle {
    let key = key(name, labels);
    match kind {
        Kind::Counter => Handle::Counter(r.register_counter(&key, &METADATA)),
        Kind::Gauge => Handle::Gauge(r.register_gauge(&key, &METADATA)),
        Kind::Histogram => Handle::Histogram(r.register_histogram(&key, &METADATA)),
    }
}

impl Metrics {
    /// A handle with its own recorder (not installed globally): what the proxy renders at
    /// `/metrics`.
    pub fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let builder = PrometheusBuilder::new();
        // Only an empty bucket list is refused.
        let builder = match builder.set_buckets(DURATION_BUCKETS) {
            Ok(b) => b,
            Err(_) => PrometheusBuilder::new(),
        };
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        Metrics(Sink::Local(Arc::new(Local {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            recorder,
            handle,
            removable: Removable::default(),
            samples: AtomicU32::new(0),
        })))
    }

    /// A handle that reports to the `metrics` recorder installed at the time of each update
    /// (`metrics::set_global_recorder`, or a thread's `metrics::with_local_recorder`); with
    /// none, updates are dropped. [`render`](Self::render), [`get`](Self::get) and
    /// [`total`](Self::total) know nothing here: read your recorder. Series that
    /// [`remove_matching`](Self::remove_matching) would remove stay until your recorder
    /// expires them (e.g. `PrometheusBuilder::idle_timeout`).
    pub fn global() -> Self {
        Metrics(Sink::Global)
    }

    /// Runs `f` on the series' handle: from this thread's cache for our own recorder (one
    /// registration per thread and series), registered anew for the global one (its recorder
    /// may expire and replace series, so a cached handle could go stale).
    fn with_handle(
        &self,
        kind: Kind,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        f: impl FnOnce(&Handle),
    ) {
        match &self.0 {
            Sink::Local(local) => cache::with(local, kind, name, labels, f, || {
                describe(&local.recorder, kind, name, help);
                register(&local.recorder, kind, name, labels)
            }),
            Sink::Global => metrics::with_recorder(|r| {
                if cache::first_global_use(kind, name) {
                    describe(r, kind, name, help);
                }
                f(&register(r, kind, name, labels));
            }),
        }
    }

    /// The table for `name`, if its series are removable and this handle keeps them.
    fn removable(&self, name: &str) -> Option<&Removable> {
        match &self.0 {
            Sink::Local(local) if REMOVABLE.contains(&name) => Some(&local.removable),
            _ => None,
        }
    }

    /// Adds one to a counter.
    pub fn inc(&self, name: &'static str, help: &'static str, labels: &[(&str, &str)]) {
        self.with_handle(Kind::Counter, name, help, labels, |h| h.add(1.0));
    }

    /// Adds `v` to a counter. Counters count whole things: `v` is rounded, and a negative or
    /// NaN `v` adds nothing.
    pub fn add(&self, name: &'static str, help: &'static str, labels: &[(&str, &str)], v: f64) {
        self.with_handle(Kind::Counter, name, help, labels, |h| h.add(v));
    }

    /// Sets a gauge.
    pub fn set(&self, name: &'static str, help: &'static str, labels: &[(&str, &str)], v: f64) {
        if let Some(table) = self.removable(name) {
            return table.set(name, help, labels, v);
        }
        self.with_handle(Kind::Gauge, name, help, labels, |h| h.set(v));
    }

    /// Sets several gauges that share `labels`: `(name, help, value)` each.
    pub fn set_many(&self, gauges: &[(&'static str, &'static str, f64)], labels: &[(&str, &str)]) {
        let table = gauges.first().and_then(|g| self.removable(g.0));
        if let Some(table) = table.filter(|_| gauges.iter().all(|g| REMOVABLE.contains(&g.0))) {
            return table.set_many(gauges, labels);
        }
        for &(name, help, v) in gauges {
            self.set(name, help, labels, v);
        }
    }

    /// Adds `v` (possibly negative) to a gauge.
    pub fn gauge_add(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        v: f64,
    ) {
        if let Some(table) = self.removable(name) {
            return table.add(name, help, labels, v);
        }
        self.with_handle(Kind::Gauge, name, help, labels, |h| h.gauge_add(v));
    }

    /// Records one sample of a histogram, in seconds (`name` should end in `_seconds`).
    pub fn observe(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        seconds: f64,
    ) {
        self.with_handle(Kind::Histogram, name, help, labels, |h| h.record(seconds));
        if let Sink::Local(local) = &self.0 {
            if local.samples.fetch_add(1, Ordering::Relaxed) % UPKEEP_EVERY == UPKEEP_EVERY - 1 {
                local.handle.run_upkeep();
            }
        }
    }

    /// Removes every series of a family whose labels contain `label=value` (e.g. a credential
    /// state that no longer holds). Only the families listed in this module's `REMOVABLE` can
    /// lose series (the `metrics` facade has no removal); for others this does nothing.
    pub fn remove_matching(&self, name: &'static str, label: &str, value: &str) {
        if let Some(table) = self.removable(name) {
            table.remove_matching(name, label, value);
        }
    }

    /// Removes the one series of a family with exactly `labels`, given in the order they were
    /// set with; the cheap form of [`remove_matching`](Self::remove_matching) when the caller
    /// knows the series (a session's gauges). Only `REMOVABLE` families lose series.
    pub fn remove_series(&self, name: &'static str, labels: &[(&str, &str)]) {
        if let Some(table) = self.removable(name) {
            table.remove(name, labels);
        }
    }

    /// The current value of one counter or gauge series (labels in any order), read back from
    /// what [`render`](Self::render) shows. For tests and diagnostics: it renders the whole
    /// registry. `None` for a handle on the global recorder.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let Sink::Local(local) = &self.0 else {
            return None;
        };
        if REMOVABLE.contains(&name) {
            return local.removable.get(name, labels);
        }
        readback::value(&local.handle.render(), name, labels)
    }

    /// The sum of every series of a counter or gauge family (0 if it has none). Renders the
    /// whole registry, as [`get`](Self::get) does.
    pub fn total(&self, name: &str) -> f64 {
        let Sink::Local(local) = &self.0 else {
            return 0.0;
        };
        if REMOVABLE.contains(&name) {
            return local.removable.total(name);
        }
        readback::total(&local.handle.render(), name)
    }

    /// The registry in the Prometheus text exposition format (empty for a handle on the
    /// global recorder: render that one yourself).
    pub fn render(&self) -> String {
        let Sink::Local(local) = &self.0 else {
            return String::new();
        };
        let mut out = local.handle.render();
        local.removable.render_into(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_labels_and_renders_types() {
        let m = Metrics::new();
        m.set("tr_gauge", "A gauge.", &[("why", "quota \"x\"\nnext")], 3.5);
        m.inc("tr_count_total", "A counter.", &[("why", "a\\b")]);
        let text = m.render();
        assert!(text.contains("# TYPE tr_gauge gauge"), "{text}");
        assert!(text.contains("# TYPE tr_count_total counter"), "{text}");
        assert!(
            text.contains(r#"tr_gauge{why="quota \"x\"\nnext"} 3.5"#),
            "{text}"
        );
        assert_eq!(
            m.get("tr_gauge", &[("why", "quota \"x\"\nnext")]),
            Some(3.5)
        );
        assert_eq!(m.get("tr_count_total", &[("why", "a\\b")]), Some(1.0));
    }

    #[test]
    fn removable_series_go_away() {
        let m = Metrics::new();
        let labels = [("session", "s \"1\""), ("x", "y")];
        m.set("tr_session_turns", "Turns.", &labels, 2.0);
        m.set("tr_session_turns", "Turns.", &[("session", "s2")], 5.0);
        let text = m.render();
        assert!(text.contains("# TYPE tr_session_turns gauge"), "{text}");
        assert!(
            text.contains(r#"tr_session_turns{session="s \"1\"",x="y"} 2"#),
            "{text}"
        );
        assert_eq!(m.total("tr_session_turns"), 7.0);
        m.remove_matching("tr_session_turns", "session", "s \"1\"");
        assert_eq!(m.get("tr_session_turns", &labels), None);
        assert_eq!(m.get("tr_session_turns", &[("session", "s2")]), Some(5.0));
        assert!(!m.render().contains("s \\\"1"));

        // Exact removal takes that one series and leaves one that merely contains the label.
        m.set("tr_session_turns", "Turns.", &[("session", "s3")], 1.0);
        m.remove_series("tr_session_turns", &[("session", "s2")]);
        assert_eq!(m.get("tr_session_turns", &[("session", "s2")]), None);
        assert_eq!(m.get("tr_session_turns", &[("session", "s3")]), Some(1.0));
    }

    #[test]
    fn setting_many_gauges_renders_what_setting_each_does() {
        let removable = [
            ("tr_session_turns", "Turns.", 3.0),
            ("tr_session_input_tokens_last", "Last.", 120.0),
            ("tr_session_input_tokens_max", "Max.", 4e9),
            ("tr_session_input_tokens_sum", "Sum.", 0.5),
        ];
        let mixed = [
            ("tr_session_turns", "Turns.", 9.0),
            ("tr_some_gauge", "Not removable.", 2.0),
        ];
        let labels: [&[(&str, &str)]; 4] = [
            &[("session", "s1")],
            &[("session", "quo\"te\nnew\\line")],
            &[("session", "s1"), ("x", "y")],
            &[],
        ];
        let (many, each) = (Metrics::new(), Metrics::new());
        // Twice each, so the second round updates series the first one made; every value
        // differs, so a set that went missing or astray shows.
        let mut k = 0.0;
        for _round in 0..2 {
            for l in labels {
                for gauges in [&removable[..], &mixed[..], &removable[1..2]] {
                    let gauges: Vec<_> = gauges
                        .iter()
                        .map(|&(n, h, v)| {
                            k += 1.0;
                            (n, h, v + k)
                        })
                        .collect();
                    many.set_many(&gauges, l);
                    for &(n, h, v) in &gauges {
                        each.set(n, h, l, v);
                    }
                }
            }
        }
        // The exporter's own series come in its map's order, which differs by registry.
        let lines = |m: &Metrics| {
            let text = m.render();
            let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
            lines.sort();
            lines
        };
        assert_eq!(lines(&many), lines(&each));
        for l in labels {
            for (n, _, _) in removable.iter().chain(&mixed) {
                assert_eq!(many.get(n, l), each.get(n, l), "{n} {l:?}");
            }
        }
    }

    #[test]
    fn handles_keep_separate_registries() {
        let (a, b) = (Metrics::new(), Metrics::new());
        a.inc("tr_x_total", "X.", &[]);
        a.inc("tr_x_total", "X.", &[]);
        b.inc("tr_x_total", "X.", &[]);
        assert_eq!(a.get("tr_x_total", &[]), Some(2.0));
        assert_eq!(b.get("tr_x_total", &[]), Some(1.0));
        // A clone shares.
        a.clone().add("tr_x_total", "X.", &[], 3.0);
        assert_eq!(a.total("tr_x_total"), 5.0);
    }

    #[test]
    fn updates_from_many_threads_add_up() {
        // Each thread registers its own handle; they share the series.
        let m = Metrics::new();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        m.inc("tr_z_total", "Z.", &[("k", "v")]);
                        m.gauge_add("tr_z_level", "Z level.", &[], 1.0);
                    }
                });
            }
        });
        assert_eq!(m.get("tr_z_total", &[("k", "v")]), Some(4000.0));
        assert_eq!(m.get("tr_z_level", &[]), Some(4000.0));
        // A kind the name was not registered as is another series, not a wrong update.
        m.set("tr_z_total_gauge", "G.", &[("k", "v")], 2.0);
        assert_eq!(m.get("tr_z_total", &[("k", "v")]), Some(4000.0));
    }

    #[test]
    fn global_reports_to_the_installed_recorder() {
        let theirs = PrometheusBuilder::new().build_recorder();
        let handle = theirs.handle();
        let m = Metrics::global();
        metrics::with_local_recorder(&theirs, || {
            m.inc("tr_y_total", "Y.", &[("k", "v")]);
            m.observe("tr_y_seconds", "Y time.", &[], 0.5);
        });
        let text = handle.render();
        assert!(text.contains(r#"tr_y_total{k="v"} 1"#), "{text}");
        assert!(text.contains("# HELP tr_y_total Y."), "{text}");
        assert!(text.contains("tr_y_seconds_count 1"), "{text}");
        assert_eq!(m.get("tr_y_total", &[("k", "v")]), None);
        assert_eq!(m.render(), "");
    }

    #[test]
    fn histogram_samples_fold_into_buckets_across_upkeeps() {
        let m = Metrics::new();
        for _ in 0..3 * UPKEEP_EVERY {
            m.observe("tr_t_seconds", "T.", &[], 0.02);
        }
        let text = m.render();
        assert!(
            text.contains("tr_t_seconds_bucket{le=\"0.025\"} 3072"),
            "{text}"
        );
        assert!(
            text.contains("tr_t_seconds_bucket{le=\"0.01\"} 0"),
            "{text}"
        );
        assert!(text.contains("tr_t_seconds_count 3072"), "{text}");
    }
}
