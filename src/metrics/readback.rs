//! Reads sample values back out of the Prometheus text format the exporter rendered: the
//! exporter keeps its values to itself, and tests want to see what a scraper sees.

/// One sample line: `name{k="v",...} value`, labels unescaped.
struct Sample<'a> {
    name: &'a str,
    labels: Vec<(&'a str, String)>,
    value: f64,
}

fn samples(text: &str) -> impl Iterator<Item = Sample<'_>> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(parse_line)
}

fn parse_line(line: &str) -> Option<Sample<'_>> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = after;
        loop {
            rest = rest.trim_start_matches(',');
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = rest.find("=\"")?;
            let key = &rest[..eq];
            let (value, after) = unescape_value(&rest[eq + 2..])?;
            labels.push((key, value));
            rest = after;
        }
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// The label value up to its closing quote, unescaped, and what follows the quote.
fn unescape_value(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &s[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

fn same_labels(have: &[(&str, String)], want: &[(&str, &str)]) -> bool {
    have.len() == want.len()
        && want
            .iter()
            .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v))
}

/// The value of `name` with exactly these labels (in any order).
pub(super) fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(text)
        .find(|s| s.name == name && same_labels(&s.labels, labels))
        .map(|s| s.value)
}

/// The sum of every sample of `name`.
pub(super) fn total(text: &str, name: &str) -> f64 {
    samples(text)
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_escaped_labels_in_any_order() {
        let text = "# TYPE a counter\na{x=\"1\",y=\"q \\\"z\\\"\\n\\\\\"} 3\na 2\nab 7\n";
        assert_eq!(
            value(text, "a", &[("y", "q \"z\"\n\\"), ("x", "1")]),
            Some(3.0)
        );
        assert_eq!(value(text, "a", &[]), Some(2.0));
        assert_eq!(value(text, "a", &[("x", "1")]), None);
        assert_eq!(total(text, "a"), 5.0);
        assert_eq!(value("g inf\n", "g", &[]), Some(f64::INFINITY));
    }
}
