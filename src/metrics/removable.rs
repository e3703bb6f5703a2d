//! Gauge families whose series can be removed, kept beside the recorder.
//!
//! The `metrics` facade registers series and never deletes one; a session evicted from the
//! bounded session table, or a cooldown that ended, must leave `/metrics` all the same. These
//! few families change once per turn or per cooldown, so one mutex over them is cheap.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use metrics_exporter_prometheus::formatting::{write_help_line, write_type_line};

thread_local! {
    /// The key buffer of [`Removable::update`], kept per thread.
    static KEY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

#[derive(Debug)]
struct Family {
    help: &'static str,
    // Labels rendered (`{k="v",...}`) to value.
    series: BTreeMap<String, f64>,
}

#[derive(Debug, Default)]
pub(super) struct Removable(Mutex<BTreeMap<&'static str, Family>>);

/// Writes `{k="v",...}` (nothing for no labels), escaped as the text format wants.
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

/// Runs `f` on the series `key` (rendered labels) of family `name`, made at 0 if new.
fn with_series(
    map: &mut BTreeMap<&'static str, Family>,
    name: &'static str,
    help: &'static str,
    key: &str,
    f: impl FnOnce(&mut f64),
) {
    let fam = map.entry(name).or_insert_with(|| Family {
        help,
        series: BTreeMap::new(),
    });
    match fam.series.get_mut(key) {
        Some(v) => f(v),
        None => f(fam.series.entry(key.to_owned()).or_insert(0.0)),
    }
}

fn rendered(labels: &[(&str, &str)]) -> String {
    let mut out = String::new();
    write_labels(&mut out, labels);
    out
}

/// A sample value as the text format spells it.
fn write_value(out: &mut String, v: f64) {
    use std::fmt::Write;
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        let _ = write!(out, "{v}");
    }
}

impl Removable {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<&'static str, Family>> {
        // A panic while holding the lock cannot leave the map inconsistent: keep serving.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        f: impl FnOnce(&mut f64),
    ) {
        // Rendered into a reused buffer: the series usually exists (a session's gauges are
        // set on every turn), and looking it up must not allocate its key each time.
        KEY.with_borrow_mut(|key| {
            key.clear();
            write_labels(key, labels);
            with_series(&mut self.lock(), name, help, key, f);
        });
    }

    /// Sets one series in each of several families, all with the same labels: the key is
    /// rendered and the lock taken once (a session's four gauges, every turn).
    pub(super) fn set_many(
        &self,
        gauges: &[(&'static str, &'static str, f64)],
        labels: &[(&str, &str)],
    ) {
        KEY.with_borrow_mut(|key| {
            key.clear();
            write_labels(key, labels);
            let mut map = self.lock();
            for &(name, help, v) in gauges {
                with_series(&mut map, name, help, key, |x| *x = v);
            }
        });
    }

    pub(super) fn set(&self, name: &'static str, help: &'static str, l: &[(&str, &str)], v: f64) {
        self.update(name, help, l, |x| *x = v);
    }

    pub(super) fn add(&self, name: &'static str, help: &'static str, l: &[(&str, &str)], v: f64) {
        self.update(name, help, l, |x| *x += v);
    }

    pub(super) fn remove_matching(&self, name: &str, label: &str, value: &str) {
        let needle = rendered(&[(label, value)]);
        // `label="value"` without the braces, preceded by `{` or `,`: never a match inside
        // another label's value, whose quotes are escaped.
        let needle = &needle[1..needle.len() - 1];
        if let Some(fam) = self.lock().get_mut(name) {
            fam.series.retain(|k, _| {
                !k.match_indices(needle)
                    .any(|(i, _)| matches!(k.as_bytes()[i - 1], b'{' | b','))
            });
        }
    }

    /// Removes the one series with exactly these labels (in the order they were set with):
    /// a lookup, where [`remove_matching`](Self::remove_matching) reads every series.
    pub(super) fn remove(&self, name: &str, labels: &[(&str, &str)]) {
        KEY.with_borrow_mut(|key| {
            key.clear();
            write_labels(key, labels);
            if let Some(fam) = self.lock().get_mut(name) {
                fam.series.remove(key.as_str());
            }
        });
    }

    pub(super) fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.lock()
            .get(name)?
            .series
            .get(&rendered(labels))
            .copied()
    }

    pub(super) fn total(&self, name: &str) -> f64 {
        self.lock()
            .get(name)
            .map_or(0.0, |f| f.series.values().sum())
    }

    /// Appends the families in the text format, as the exporter writes its own.
    pub(super) fn render_into(&self, out: &mut String) {
        for (name, fam) in self.lock().iter() {
            if fam.series.is_empty() {
                continue;
            }
            write_help_line(out, name, None, None, fam.help);
            write_type_line(out, name, None, None, "gauge");
            for (labels, v) in &fam.series {
                out.push_str(name);
                out.push_str(labels);
                out.push(' ');
                write_value(out, *v);
                out.push('\n');
            }
            out.push('\n');
        }
    }
}
