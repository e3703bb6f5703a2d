//! A small Prometheus registry the layers and the proxy report into.
//!
//! Layers take an optional [`Metrics`] handle; the proxy renders it at `GET /metrics` in the
//! Prometheus text format. Series are few (per route, class, credential), so a mutex-guarded
//! map is cheap next to a network round trip.
//!
//! ```
//! use tower_responses::metrics::Metrics;
//!
//! let m = Metrics::new();
//! m.inc("tr_requests_total", "Requests answered.", &[("status", "200")]);
//! m.inc("tr_requests_total", "Requests answered.", &[("status", "200")]);
//! assert_eq!(m.get("tr_requests_total", &[("status", "200")]), Some(2.0));
//! assert!(m.render().contains("tr_requests_total{status=\"200\"} 2"));
//! ```

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

#[derive(Debug)]
struct Family {
    help: &'static str,
    kind: Kind,
    series: BTreeMap<String, f64>,
}

/// A shared metrics registry. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct Metrics(Arc<Mutex<BTreeMap<&'static str, Family>>>);

fn render_labels(labels: &[(&str, &str)]) -> String {
    let mut out = String::new();
    write_labels(&mut out, labels);
    out
}

fn write_labels(out: &mut String, labels: &[(&str, &str)]) {
    if labels.is_empty() {
        return;
    }
    out.push('{');
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        if !v.contains(['\\', '"', '\n']) {
            out.push_str(v);
        } else {
            for c in v.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\n' => out.push_str("\\n"),
                    c => out.push(c),
                }
            }
        }
        out.push('"');
    }
    out.push('}');
}

thread_local! {
    // Updates render their labels here, so an update of an existing series allocates nothing.
    static LABELS: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

fn apply(
    map: &mut BTreeMap<&'static str, Family>,
    key: &str,
    name: &'static str,
    help: &'static str,
    kind: Kind,
    f: impl FnOnce(&mut f64),
) {
    let fam = map.entry(name).or_insert_with(|| Family {
        help,
        kind,
        series: BTreeMap::new(),
    });
    match fam.series.get_mut(key) {
        Some(v) => f(v),
        None => f(fam.series.entry(key.to_owned()).or_insert(0.0)),
    }
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<&'static str, Family>> {
        // A panic while holding the lock cannot leave the map inconsistent: keep serving.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(
        &self,
        name: &'static str,
        help: &'static str,
        kind: Kind,
        labels: &[(&str, &str)],
        f: impl FnOnce(&mut f64),
    ) {
        self.with_key(labels, |map, key| apply(map, key, name, help, kind, f));
    }

    /// Runs `f` under the lock with `labels` rendered into a reused buffer.
    fn with_key<R>(
        &self,
        labels: &[(&str, &str)],
        f: impl FnOnce(&mut BTreeMap<&'static str, Family>, &str) -> R,
    ) -> R {
        LABELS.with_borrow_mut(|key| {
            key.clear();
            write_labels(key, labels);
            f(&mut self.lock(), key)
        })
    }

    /// Adds one to a counter.
    pub fn inc(&self, name: &'static str, help: &'static str, labels: &[(&str, &str)]) {
        self.add(name, help, labels, 1.0);
    }

    /// Adds `v` to a counter.
    pub fn add(&self, name: &'static str, help: &'static str, labels: &[(&str, &str)], v: f64) {
        self.update(name, help, Kind::Counter, labels, |x| *x += v);
    }

    /// Sets a gauge.
    pub fn set(&self, name: &'static str, help: &'static str, labels: &[(&str, &str)], v: f64) {
        self.update(name, help, Kind::Gauge, labels, |x| *x = v);
    }

    /// Sets several gauges that share `labels` (one lock, labels rendered once): `(name,
    /// help, value)` each.
    pub fn set_many(&self, gauges: &[(&'static str, &'static str, f64)], labels: &[(&str, &str)]) {
        self.with_key(labels, |map, key| {
            for &(name, help, v) in gauges {
                apply(map, key, name, help, Kind::Gauge, |x| *x = v);
            }
        });
    }

    /// Adds `v` (possibly negative) to a gauge.
    pub fn gauge_add(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        v: f64,
    ) {
        self.update(name, help, Kind::Gauge, labels, |x| *x += v);
    }

    /// Removes every series of a family whose labels contain `label=value` (e.g. a credential
    /// state that no longer holds).
    pub fn remove_matching(&self, name: &'static str, label: &str, value: &str) {
        let needle = render_labels(&[(label, value)]);
        let needle = &needle[1..needle.len() - 1];
        if let Some(fam) = self.lock().get_mut(name) {
            fam.series.retain(|k, _| !k.contains(needle));
        }
    }

    /// The current value of one series.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.lock()
            .get(name)?
            .series
            .get(&render_labels(labels))
            .copied()
    }

    /// The sum of every series of a family.
    pub fn total(&self, name: &str) -> f64 {
        self.lock()
            .get(name)
            .map_or(0.0, |f| f.series.values().sum())
    }

    /// The registry in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let map = self.lock();
        let mut out = String::new();
        for (name, fam) in map.iter() {
            let kind = match fam.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            let _ = writeln!(out, "# HELP {name} {}", fam.help);
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, v) in &fam.series {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        }
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
        let text = m.render();
        assert!(text.contains("# TYPE tr_gauge gauge"));
        assert!(text.contains(r#"tr_gauge{why="quota \"x\"\nnext"} 3.5"#));
        m.remove_matching("tr_gauge", "why", "quota \"x\"\nnext");
        assert_eq!(m.get("tr_gauge", &[("why", "quota \"x\"\nnext")]), None);
    }
}
