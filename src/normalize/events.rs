//! What the cap and the fold read from upstream events.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

/// The few fields of a Responses stream event the layer reads; the rest is skipped.
#[derive(Deserialize, Default)]
pub(crate) struct Fields<'a> {
    #[serde(default)]
    pub(crate) sequence_number: Option<u64>,
    #[serde(default, borrow)]
    pub(crate) delta: Option<Cow<'a, str>>,
    #[serde(default)]
    pub(crate) output_index: Option<u64>,
    #[serde(default, borrow)]
    pub(crate) item: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub(crate) response: Option<&'a RawValue>,
}

impl<'a> Fields<'a> {
    pub(crate) fn parse(data: &'a [u8]) -> Option<Fields<'a>> {
        serde_json::from_slice(data).ok()
    }
}

/// Delta events whose text the client sees, and where that text lands in the output item.
pub(crate) fn visible_delta(event_type: &str) -> Option<TextSlot> {
    match event_type {
        "response.output_text.delta" => Some(TextSlot::OutputText),
        "response.refusal.delta" => Some(TextSlot::Refusal),
        "response.function_call_arguments.delta" => Some(TextSlot::Arguments),
        "response.custom_tool_call_input.delta" => Some(TextSlot::Input),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TextSlot {
    OutputText,
    Refusal,
    Arguments,
    Input,
}

#[derive(Debug)]
struct Item {
    index: u64,
    value: Value,
    text: String,
    slot: Option<TextSlot>,
    done: bool,
}

/// The response as far as the stream has told it: the `response.created` object and the
/// output items, bounded by `budget` bytes (past it, nothing more is recorded).
#[derive(Debug)]
pub(crate) struct Tracker {
    base: Option<Value>,
    items: Vec<Item>,
    usage: Option<Value>,
    budget: usize,
    used: usize,
}

impl Tracker {
    pub(crate) fn new(budget: usize) -> Self {
        Tracker {
            base: None,
            items: Vec::new(),
            usage: None,
            budget,
            used: 0,
        }
    }

    fn spend(&mut self, n: usize) -> bool {
        if self.used.saturating_add(n) > self.budget {
            return false;
        }
        self.used += n;
        true
    }

    pub(crate) fn response(&mut self, raw: &RawValue) {
        if !self.spend(raw.get().len()) {
            return;
        }
        if let Ok(mut v) = serde_json::from_str::<Value>(raw.get()) {
            if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                self.usage = Some(u.clone());
            }
            if let Some(obj) = v.as_object_mut() {
                obj.remove("output");
            }
            self.base = Some(v);
        }
    }

    pub(crate) fn item(&mut self, index: u64, raw: &RawValue, done: bool) {
        if !self.spend(raw.get().len()) {
            return;
        }
        let Ok(value) = serde_json::from_str::<Value>(raw.get()) else {
            return;
        };
        match self.items.iter_mut().find(|i| i.index == index) {
            Some(item) => {
                item.value = value;
                item.done = done;
            }
            None => self.items.push(Item {
                index,
                value,
                text: String::new(),
                slot: None,
                done,
            }),
        }
    }

    pub(crate) fn text(&mut self, index: u64, slot: TextSlot, delta: &str) {
        if !self.spend(delta.len()) {
            return;
        }
        if let Some(item) = self.items.iter_mut().find(|i| i.index == index) {
            item.slot = Some(slot);
            item.text.push_str(delta);
        }
    }

    /// The output items in order; items still in progress carry the text streamed so far and
    /// `status: "incomplete"`.
    pub(crate) fn output(&self) -> Vec<Value> {
        let mut items: Vec<&Item> = self.items.iter().collect();
        items.sort_by_key(|i| i.index);
        items
            .into_iter()
            .map(|i| {
                let mut v = i.value.clone();
                if !i.done {
                    if let Some(obj) = v.as_object_mut() {
                        obj.insert("status".into(), json!("incomplete"));
                        match i.slot {
                            Some(TextSlot::OutputText) => {
                                obj.insert(
                                    "content".into(),
                                    json!([{"type": "output_text", "text": i.text, "annotations": []}]),
                                );
                            }
                            Some(TextSlot::Refusal) => {
                                obj.insert(
                                    "content".into(),
                                    json!([{"type": "refusal", "refusal": i.text}]),
                                );
                            }
                            Some(TextSlot::Arguments) => {
                                obj.insert("arguments".into(), json!(i.text));
                            }
                            Some(TextSlot::Input) => {
                                obj.insert("input".into(), json!(i.text));
                            }
                            None => {}
                        }
                    }
                }
                v
            })
            .collect()
    }

    /// Only the finished items, in order.
    pub(crate) fn done_output(&self) -> Vec<Value> {
        let mut items: Vec<&Item> = self.items.iter().filter(|i| i.done).collect();
        items.sort_by_key(|i| i.index);
        items.into_iter().map(|i| i.value.clone()).collect()
    }

    /// A `response` object for `response.incomplete` with reason `max_output_tokens`.
    pub(crate) fn incomplete_response(&self) -> Value {
        let mut v = self
            .base
            .clone()
            .unwrap_or_else(|| json!({"id": null, "object": "response"}));
        if let Some(obj) = v.as_object_mut() {
            obj.insert("status".into(), json!("incomplete"));
            obj.insert(
                "incomplete_details".into(),
                json!({"reason": "max_output_tokens"}),
            );
            obj.insert("output".into(), Value::Array(self.output()));
            obj.insert("usage".into(), self.usage.clone().unwrap_or(Value::Null));
        }
        v
    }
}
