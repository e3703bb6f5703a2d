use std::fmt;

use memchr::memmem;
use serde::Deserialize;
use serde_json::Value;

use crate::json::{RawObject, join_array, scan_array_items, scan_field};

/// One rewrite of a request body, as data.
///
/// Rules act on top-level fields of the body; [`Rule::Strip`] also takes a dotted path one
/// level deep (`reasoning.summary`). A rule that finds nothing to do changes nothing.
///
/// In configuration every rule is a table with one key naming it:
///
/// ```
/// use tower_responses::normalize::{Conversion, Rule};
///
/// let rules: Vec<Rule> = serde_json::from_str(r#"[
///     {"strip": "temperature"},
///     {"default": {"field": "instructions", "value": ""}},
///     {"force": {"field": "stream", "value": true}},
///     {"rename": {"from": "max_tokens", "to": "max_output_tokens"}},
///     {"convert": {"field": "input", "conversion": "string-to-messages"}},
///     {"allow": {"field": "service_tier", "values": ["priority"]}}
/// ]"#).unwrap();
/// assert_eq!(rules[0], Rule::strip("temperature"));
/// assert_eq!(rules[4], Rule::Convert { field: "input".into(), conversion: Conversion::StringToMessages });
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "RuleSpec")]
pub enum Rule {
    /// Removes a field (`strip = "temperature"`).
    Strip {
        /// The field, or `parent.child`.
        field: String,
    },
    /// Sets a field only when it is absent (`default = { field, value }`).
    Default {
        /// The field.
        field: String,
        /// Its value when absent.
        value: Value,
    },
    /// Sets a field whatever it was (`force = { field, value }`).
    Force {
        /// The field.
        field: String,
        /// Its value.
        value: Value,
    },
    /// Renames a field in place, unless the new name is already present
    /// (`rename = { from, to }`).
    Rename {
        /// The name clients send.
        from: String,
        /// The name the upstream wants.
        to: String,
    },
    /// Converts a field's shape (`convert = { field, conversion }`).
    Convert {
        /// The field, usually `input`.
        field: String,
        /// What to do to it.
        conversion: Conversion,
    },
    /// Removes a field unless its value is one of `values`
    /// (`allow = { field, values }`).
    Allow {
        /// The field.
        field: String,
        /// The values the upstream accepts.
        values: Vec<Value>,
    },
}

/// Shape changes a [`Rule::Convert`] can make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Conversion {
    /// A string becomes `[{"role":"user","content":[{"type":"input_text","text":...}]}]`.
    StringToMessages,
    /// Items of the list with `"role":"system"` get `"role":"developer"`, in place: order and
    /// every other byte are kept, so the prompt-cache prefix stays the same.
    SystemToDeveloper,
}

/// The configuration shape of a [`Rule`]: one key naming it.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum RuleSpec {
    Strip(String),
    Default {
        field: String,
        value: Value,
    },
    Force {
        field: String,
        value: Value,
    },
    Rename {
        from: String,
        to: String,
    },
    Convert {
        field: String,
        conversion: Conversion,
    },
    Allow {
        field: String,
        values: Vec<Value>,
    },
}

impl From<RuleSpec> for Rule {
    fn from(spec: RuleSpec) -> Rule {
        match spec {
            RuleSpec::Strip(field) => Rule::Strip { field },
            RuleSpec::Default { field, value } => Rule::Default { field, value },
            RuleSpec::Force { field, value } => Rule::Force { field, value },
            RuleSpec::Rename { from, to } => Rule::Rename { from, to },
            RuleSpec::Convert { field, conversion } => Rule::Convert { field, conversion },
            RuleSpec::Allow { field, values } => Rule::Allow { field, values },
        }
    }
}

impl Rule {
    /// `Strip { field }`.
    pub fn strip(field: impl Into<String>) -> Rule {
        Rule::Strip {
            field: field.into(),
        }
    }

    /// `Default { field, value }`.
    pub fn default_value(field: impl Into<String>, value: Value) -> Rule {
        Rule::Default {
            field: field.into(),
            value,
        }
    }

    /// `Force { field, value }`.
    pub fn force(field: impl Into<String>, value: Value) -> Rule {
        Rule::Force {
            field: field.into(),
            value,
        }
    }

    /// `Rename { from, to }`.
    pub fn rename(from: impl Into<String>, to: impl Into<String>) -> Rule {
        Rule::Rename {
            from: from.into(),
            to: to.into(),
        }
    }

    /// `Convert { field, conversion }`.
    pub fn convert(field: impl Into<String>, conversion: Conversion) -> Rule {
        Rule::Convert {
            field: field.into(),
            conversion,
        }
    }

    /// `Allow { field, values }`.
    pub fn allow(field: impl Into<String>, values: Vec<Value>) -> Rule {
        Rule::Allow {
            field: field.into(),
            values,
        }
    }

    /// Applies the rule; `true` when the body changed.
    pub fn apply(&self, obj: &mut RawObject<'_>) -> bool {
        match self {
            Rule::Strip { field } => strip(obj, field),
            Rule::Default { field, value } => {
                if obj.contains(field) {
                    return false;
                }
                obj.set_value(field, value);
                true
            }
            Rule::Force { field, value } => {
                if obj.get(field).is_some_and(|raw| same_value(raw, value)) {
                    return false;
                }
                obj.set_value(field, value);
                true
            }
            Rule::Rename { from, to } => {
                if !obj.contains(from) || obj.contains(to) {
                    return false;
                }
                obj.rename(from, to);
                true
            }
            Rule::Convert { field, conversion } => convert(obj, field, *conversion),
            Rule::Allow { field, values } => match obj.get(field) {
                Some(raw) if !values.iter().any(|v| same_value(raw, v)) => {
                    obj.remove(field);
                    true
                }
                _ => false,
            },
        }
    }
}

/// A short label for metrics and logs: the rule's kind and field, never a value.
impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Strip { field } => write!(f, "strip:{field}"),
            Rule::Default { field, .. } => write!(f, "default:{field}"),
            Rule::Force { field, .. } => write!(f, "force:{field}"),
            Rule::Rename { from, to } => write!(f, "rename:{from}->{to}"),
            Rule::Convert { field, conversion } => {
                let c = match conversion {
                    Conversion::StringToMessages => "string-to-messages",
                    Conversion::SystemToDeveloper => "system-to-developer",
                };
                write!(f, "convert:{field}:{c}")
            }
            Rule::Allow { field, .. } => write!(f, "allow:{field}"),
        }
    }
}

/// Compares raw JSON text with a value without allocating for the common scalars.
fn same_value(raw: &str, value: &Value) -> bool {
    match value {
        Value::Bool(true) => raw == "true",
        Value::Bool(false) => raw == "false",
        Value::Null => raw == "null",
        _ => serde_json::from_str::<Value>(raw).is_ok_and(|v| &v == value),
    }
}

/// Removes a top-level field, or `parent.child` inside a top-level object (only that parent is
/// re-encoded).
pub(crate) fn strip(obj: &mut RawObject<'_>, path: &str) -> bool {
    if obj.remove(path).is_some() {
        return true;
    }
    let Some((parent, child)) = path.split_once('.') else {
        return false;
    };
    let Some(mut map) = obj.get_as::<serde_json::Map<String, Value>>(parent) else {
        return false;
    };
    if map.remove(child).is_none() {
        return false;
    }
    obj.set_value(parent, &map);
    true
}

fn convert(obj: &mut RawObject<'_>, field: &str, conversion: Conversion) -> bool {
    let Some(raw) = obj.get(field) else {
        return false;
    };
    match conversion {
        Conversion::StringToMessages => {
            if !raw.starts_with('"') {
                return false;
            }
            // The raw string is already valid JSON text: reuse it rather than re-encode.
            let list =
                format!(r#"[{{"role":"user","content":[{{"type":"input_text","text":{raw}}}]}}]"#);
            obj.set(field, list);
            true
        }
        Conversion::SystemToDeveloper => {
            // Most bodies have no system item: a substring scan avoids splitting the list.
            if !raw.starts_with('[') || memmem::find(raw.as_bytes(), b"\"system\"").is_none() {
                return false;
            }
            // `raw` was validated when the body was parsed: scanning is enough to split it.
            let Some(items) = scan_array_items(raw) else {
                return false;
            };
            let mut changed = false;
            let rewritten: Vec<std::borrow::Cow<'_, str>> = items
                .into_iter()
                .map(|item| match system_to_developer(item) {
                    Some(new) => {
                        changed = true;
                        std::borrow::Cow::Owned(new)
                    }
                    None => std::borrow::Cow::Borrowed(item),
                })
                .collect();
            if changed {
                let list = join_array(rewritten.iter().map(|c| c.as_ref()));
                obj.set(field, list);
            }
            changed
        }
    }
}

/// The item with its role changed, if it is a system item; every other byte kept.
fn system_to_developer(item: &str) -> Option<String> {
    memmem::find(item.as_bytes(), b"\"system\"")?;
    let span = scan_field(item, "role")?;
    if &item[span.clone()] != "\"system\"" {
        return None;
    }
    Some(format!(
        "{}\"developer\"{}",
        &item[..span.start],
        &item[span.end..]
    ))
}

/// The ChatGPT Codex backend's rule set (PROTOCOL.md §2), `max_output_tokens` excepted (it
/// has its own policy).
pub fn codex_rules() -> Vec<Rule> {
    let mut rules = vec![
        Rule::force("stream", Value::Bool(true)),
        Rule::force("store", Value::Bool(false)),
    ];
    rules.extend(CODEX_REJECTED.iter().map(|f| Rule::strip(*f)));
    rules.extend([
        Rule::default_value("instructions", Value::String(String::new())),
        Rule::convert("input", Conversion::StringToMessages),
        Rule::convert("input", Conversion::SystemToDeveloper),
        Rule::allow("service_tier", vec![Value::String("priority".into())]),
    ]);
    rules
}

/// Fields the Codex backend answers 400 to (besides `max_output_tokens`).
pub const CODEX_REJECTED: [&str; 9] = [
    "max_completion_tokens",
    "temperature",
    "top_p",
    "truncation",
    "user",
    "metadata",
    "safety_identifier",
    "prompt_cache_retention",
    "previous_response_id",
];

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(rule: Rule, body: &str) -> (bool, String) {
        let mut obj = RawObject::parse(body.as_bytes()).unwrap();
        let changed = rule.apply(&mut obj);
        (changed, String::from_utf8(obj.to_bytes().to_vec()).unwrap())
    }

    #[test]
    fn strip_top_level_and_nested() {
        assert_eq!(
            run(Rule::strip("temperature"), r#"{"a":1,"temperature":0.2}"#),
            (true, r#"{"a":1}"#.into())
        );
        assert_eq!(
            run(Rule::strip("x"), r#"{"a":1}"#),
            (false, r#"{"a":1}"#.into())
        );
        assert_eq!(
            run(
                Rule::strip("reasoning.summary"),
                r#"{"reasoning":{"effort":"low","summary":"auto"},"b":2}"#
            ),
            (true, r#"{"reasoning":{"effort":"low"},"b":2}"#.into())
        );
    }

    #[test]
    fn default_keeps_the_callers_value() {
        let r = Rule::default_value("instructions", json!(""));
        assert_eq!(
            run(r.clone(), r#"{"a":1}"#),
            (true, r#"{"a":1,"instructions":""}"#.into())
        );
        assert_eq!(
            run(r, r#"{"instructions":"be brief"}"#),
            (false, r#"{"instructions":"be brief"}"#.into())
        );
    }

    #[test]
    fn force_replaces_in_place() {
        let r = Rule::force("stream", json!(true));
        assert_eq!(
            run(r.clone(), r#"{"stream":false,"x":1}"#),
            (true, r#"{"stream":true,"x":1}"#.into())
        );
        assert!(!run(r.clone(), r#"{"stream":true}"#).0);
        assert_eq!(
            run(r, r#"{"x":1}"#),
            (true, r#"{"x":1,"stream":true}"#.into())
        );
    }

    #[test]
    fn rename_keeps_position_and_never_overwrites() {
        let r = Rule::rename("max_tokens", "max_output_tokens");
        assert_eq!(
            run(r.clone(), r#"{"max_tokens":5,"x":1}"#),
            (true, r#"{"max_output_tokens":5,"x":1}"#.into())
        );
        assert!(!run(r, r#"{"max_tokens":5,"max_output_tokens":6}"#).0);
    }

    #[test]
    fn string_input_becomes_a_message_list() {
        let r = Rule::convert("input", Conversion::StringToMessages);
        let (changed, out) = run(r.clone(), r#"{"input":"hi \"you\""}"#);
        assert!(changed);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v["input"],
            json!([{"role":"user","content":[{"type":"input_text","text":"hi \"you\""}]}])
        );
        assert!(!run(r, r#"{"input":[]}"#).0);
    }

    #[test]
    fn system_becomes_developer_in_place() {
        let r = Rule::convert("input", Conversion::SystemToDeveloper);
        let body = r#"{"input":[{"role":"user","content":"system"},{"type":"message","role":"system","content":"rules"},{"role":"user","content":"q"}]}"#;
        let (changed, out) = run(r.clone(), body);
        assert!(changed);
        assert_eq!(
            out,
            r#"{"input":[{"role":"user","content":"system"},{"type":"message","role":"developer","content":"rules"},{"role":"user","content":"q"}]}"#
        );
        assert!(!run(r, r#"{"input":[{"role":"developer","content":"x"}]}"#).0);
    }

    #[test]
    fn allow_drops_other_values() {
        let r = Rule::allow("service_tier", vec![json!("priority")]);
        assert!(!run(r.clone(), r#"{"service_tier":"priority"}"#).0);
        assert_eq!(
            run(r, r#"{"service_tier":"flex","a":1}"#),
            (true, r#"{"a":1}"#.into())
        );
    }

    #[test]
    fn labels_name_fields_not_values() {
        assert_eq!(
            Rule::force("stream", json!(true)).to_string(),
            "force:stream"
        );
        assert_eq!(
            Rule::convert("input", Conversion::SystemToDeveloper).to_string(),
            "convert:input:system-to-developer"
        );
    }
}
