//! What the mock saw of each request.

use std::io::Read;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, header};

/// Decoded bodies larger than this are treated as undecodable: a test never needs more, and
/// a zip bomb must not take the test process down.
const MAX_DECODED: u64 = 64 * 1024 * 1024;

/// One request as the mock received it, recorded before any reply or fault.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// Which connection carried it: 0 for the first connection accepted, then 1, 2, ...
    pub conn_id: u64,
    /// Its position on that connection: 0 for the first request, 1 for the next one on the
    /// same kept-alive connection, ...
    pub conn_request_index: u64,
    /// The bearer token of `Authorization: Bearer <token>`.
    pub credential: Option<String>,
    /// The `ChatGPT-Account-ID` header.
    pub account_id: Option<String>,
    /// The request method.
    pub method: Method,
    /// Path and query, as sent (e.g. `/v1/responses`).
    pub path: String,
    /// All request headers.
    pub headers: HeaderMap,
    /// The full body as received (still compressed if it was sent with `Content-Encoding`);
    /// empty when it exceeded the mock's 32 MiB limit (the mock then answers 413).
    pub body: Bytes,
    /// How long the connection had been idle (since the end of the previous response) when
    /// this request arrived; `None` for the first request on a connection.
    pub idle_before: Option<Duration>,
}

impl RecordedRequest {
    /// The body parsed as JSON, after undoing `Content-Encoding` (zstd, gzip, deflate, br);
    /// `None` when it is not JSON or cannot be decoded.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.decoded_body()?).ok()
    }

    /// The body with `Content-Encoding` undone; `None` for an unknown encoding, corrupt data,
    /// or more than 64 MiB decoded.
    pub fn decoded_body(&self) -> Option<Bytes> {
        let encoding = self
            .header(header::CONTENT_ENCODING.as_str())
            .map(|v| v.trim().to_ascii_lowercase());
        let raw = &self.body[..];
        match encoding.as_deref() {
            None | Some("") | Some("identity") => Some(self.body.clone()),
            Some("zstd") => read_bounded(zstd::stream::read::Decoder::new(raw).ok()?),
            Some("gzip") | Some("x-gzip") => read_bounded(flate2::read::GzDecoder::new(raw)),
            Some("deflate") => read_bounded(flate2::read::ZlibDecoder::new(raw)),
            Some("br") => read_bounded(brotli_decompressor::Decompressor::new(raw, 4096)),
            Some(_) => None,
        }
    }

    /// A header value as text; `None` when absent or not visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body's `stream` field is `true`.
    pub fn wants_stream(&self) -> bool {
        self.json()
            .and_then(|v| v.get("stream").and_then(serde_json::Value::as_bool))
            .unwrap_or(false)
    }
}

fn read_bounded(reader: impl Read) -> Option<Bytes> {
    let mut out = Vec::new();
    reader.take(MAX_DECODED + 1).read_to_end(&mut out).ok()?;
    (out.len() as u64 <= MAX_DECODED).then(|| Bytes::from(out))
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive).
pub(crate) fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn rec(headers: HeaderMap, body: impl Into<Bytes>) -> RecordedRequest {
        RecordedRequest {
            conn_id: 0,
            conn_request_index: 0,
            credential: None,
            account_id: None,
            method: Method::POST,
            path: "/v1/responses".into(),
            headers,
            body: body.into(),
            idle_before: None,
        }
    }

    #[test]
    fn json_undoes_content_encoding() {
        let plain = br#"{"stream":true}"#;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(plain).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_ENCODING, "gzip".parse().unwrap());
        let r = rec(headers.clone(), gz.finish().unwrap());
        assert_eq!(r.json().unwrap()["stream"], true);
        assert!(r.wants_stream());

        let z = zstd::bulk::compress(plain, 1).unwrap();
        headers.insert(header::CONTENT_ENCODING, "zstd".parse().unwrap());
        assert!(rec(headers.clone(), z).wants_stream());

        // Corrupt data and unknown encodings are None, not a panic.
        assert!(rec(headers, &b"nope"[..]).json().is_none());
        assert!(rec(HeaderMap::new(), &b"{not json"[..]).json().is_none());
    }

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "bearer  sk-1 ".parse().unwrap());
        assert_eq!(bearer(&h).as_deref(), Some("sk-1"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}
