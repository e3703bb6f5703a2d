//! The layer's own `compaction` items: a summary carried in `encrypted_content`, marked so it
//! can be recognised and expanded before anything goes upstream.

use bytes::Bytes;
use memchr::memmem;
use serde::Deserialize;

use crate::json::{RawObject, array_items, item_type, join_array};

/// The versioned prefix of a locally produced `encrypted_content`: `trsum1:` followed by the
/// summary in standard base64.
///
/// Real upstream compaction blobs never start with it, so an item carrying it is known to be
/// the layer's own and is expanded on every request (see [`expand_marked_items`]).
pub const MARKER_PREFIX: &str = "trsum1:";

/// What the model reads in front of a summary made by another model, in the spirit of the
/// Codex CLI's own local compaction (its `SUMMARY_PREFIX`): the history was replaced by a
/// summary, build on it.
pub const SUMMARY_PREFIX: &str = "Another language model started to solve this problem and \
produced a summary of its thinking process. You also have access to the state of the tools \
that were used by that language model. Use this to build on the work that has already been \
done and avoid duplicating work. Here is the summary produced by the other language model; \
use the information in this summary to assist with your own analysis:";

/// Encodes a summary as a marked `encrypted_content` value (`trsum1:<base64>`).
pub fn encode_summary(summary: &str) -> String {
    let mut out = String::with_capacity(MARKER_PREFIX.len() + summary.len().div_ceil(3) * 4);
    out.push_str(MARKER_PREFIX);
    base64_encode(summary.as_bytes(), &mut out);
    out
}

/// The summary inside a marked `encrypted_content`; `None` when the value is not marked or
/// not valid (bad base64, not UTF-8).
pub fn decode_summary(encrypted_content: &str) -> Option<String> {
    let b64 = encrypted_content.strip_prefix(MARKER_PREFIX)?;
    String::from_utf8(base64_decode(b64.as_bytes())?).ok()
}

/// Whether `body` may hold a marked item; a cheap check before any parsing.
pub(crate) fn may_hold_marker(body: &[u8]) -> bool {
    memmem::find(body, MARKER_PREFIX.as_bytes()).is_some()
}

/// The user message that replaces a marked item: [`SUMMARY_PREFIX`], a blank line, the
/// summary.
pub fn summary_message(summary: &str) -> String {
    let text = format!("{SUMMARY_PREFIX}\n\n{summary}");
    serde_json::json!({
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": text}],
    })
    .to_string()
}

#[derive(Deserialize)]
struct Compaction<'a> {
    #[serde(borrow, default)]
    encrypted_content: Option<std::borrow::Cow<'a, str>>,
}

/// The body with every marked `compaction` item of `input` replaced by a user message holding
/// its summary ([`summary_message`]), and how many were replaced; `None` when there is nothing
/// to replace (or the body is not a JSON object with an `input` list). Everything else is
/// copied byte for byte.
///
/// A marked item whose content cannot be decoded is dropped rather than forwarded: the
/// upstream could not read it either.
///
/// ```
/// use tower_responses::compact::{encode_summary, expand_marked_items, SUMMARY_PREFIX};
///
/// let item = serde_json::json!({"type": "compaction", "encrypted_content": encode_summary("We fixed the parser.")});
/// let body = format!(r#"{{"model":"gpt-5.5","input":[{item},{{"role":"user","content":"next"}}]}}"#);
/// let (expanded, n) = expand_marked_items(body.as_bytes()).unwrap();
/// assert_eq!(n, 1);
/// let v: serde_json::Value = serde_json::from_slice(&expanded).unwrap();
/// let text = v["input"][0]["content"][0]["text"].as_str().unwrap();
/// assert!(text.starts_with(SUMMARY_PREFIX) && text.ends_with("We fixed the parser."));
/// assert_eq!(v["input"][1]["content"], "next");
/// assert!(!String::from_utf8_lossy(&expanded).contains("trsum1:"));
/// ```
pub fn expand_marked_items(body: &[u8]) -> Option<(Bytes, usize)> {
    if !may_hold_marker(body) {
        return None;
    }
    let mut obj = RawObject::parse(body).ok()?;
    let items = array_items(obj.get("input")?)?;
    let mut replaced = 0usize;
    let mut out: Vec<std::borrow::Cow<'_, str>> = Vec::with_capacity(items.len());
    for item in items {
        let marked = (item_type(item) == Some("compaction") && may_hold_marker(item.as_bytes()))
            .then(|| serde_json::from_str::<Compaction<'_>>(item).ok())
            .flatten()
            .and_then(|c| c.encrypted_content)
            .filter(|c| c.starts_with(MARKER_PREFIX));
        let Some(content) = marked else {
            out.push(item.into());
            continue;
        };
        replaced += 1;
        match decode_summary(&content) {
            Some(summary) => out.push(summary_message(&summary).into()),
            None => tracing::warn!("dropping a locally compacted item that cannot be decoded"),
        }
    }
    if replaced == 0 {
        return None;
    }
    let input = join_array(out.iter().map(|s| s.as_ref()));
    obj.set("input", input);
    Some((obj.to_bytes(), replaced))
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(input: &[u8], out: &mut String) {
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
}

fn sextet(c: u8) -> Option<u32> {
    Some(u32::from(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    }))
}

fn base64_decode(input: &[u8]) -> Option<Vec<u8>> {
    if input.len() % 4 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(input.len() / 4 * 3);
    let quads = input.len() / 4;
    for (q, chunk) in input.chunks(4).enumerate() {
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && q + 1 != quads) {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | sextet(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_and_rejects_garbage() {
        for s in [
            "",
            "a",
            "ab",
            "abc",
            "abcd",
            "héllo wörld ✓",
            "line\nbreak \"quoted\"",
        ] {
            let enc = encode_summary(s);
            assert!(enc.starts_with(MARKER_PREFIX));
            assert_eq!(decode_summary(&enc).as_deref(), Some(s), "{s}");
        }
        let mut out = String::new();
        base64_encode(b"foobar", &mut out);
        assert_eq!(out, "Zm9vYmFy");
        out.clear();
        base64_encode(b"fo", &mut out);
        assert_eq!(out, "Zm8=");
        for bad in [
            "trsum1:Zm9",
            "trsum1:Zm=v",
            "trsum1:Z===",
            "trsum1:Zm9*",
            "other:Zm8=",
        ] {
            assert_eq!(decode_summary(bad), None, "{bad}");
        }
        // Valid base64, invalid UTF-8.
        assert_eq!(decode_summary("trsum1:/w=="), None);
    }

    #[test]
    fn leaves_other_bodies_alone() {
        assert!(
            expand_marked_items(br#"{"input":[{"type":"compaction","encrypted_content":"real"}]}"#)
                .is_none()
        );
        // The marker in a user's text is not an item.
        assert!(
            expand_marked_items(br#"{"input":[{"role":"user","content":"trsum1:Zm8="}]}"#)
                .is_none()
        );
        assert!(expand_marked_items(b"trsum1: not json").is_none());
    }

    #[test]
    fn drops_undecodable_marked_items() {
        let body = br#"{"input":[{"type":"compaction","encrypted_content":"trsum1:%%%"},{"role":"user","content":"x"}],"model":"m"}"#;
        let (out, n) = expand_marked_items(body).unwrap();
        assert_eq!(n, 1);
        assert_eq!(
            &out[..],
            br#"{"input":[{"role":"user","content":"x"}],"model":"m"}"#
        );
    }
}
