//! Request bodies: collected with a limit into replayable bytes, decoded from
//! `Content-Encoding`; response body helpers.
//!
//! Every layer that may retry needs the request body more than once, and every layer that
//! rewrites it needs it whole, so the stack reads it once at the edge: [`read_request`]
//! collects it with a size limit (an endless body stops at the limit), decodes `zstd`, `gzip`,
//! `deflate` and `br` (the Codex CLI sends zstd) with the same limit on the decoded size (a
//! decompression bomb stops there too), and returns a request whose body is plain
//! [`Bytes`] that clone for free.
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use tower_responses::body::{read_request, BodyError};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let plain = br#"{"model":"gpt-5.5"}"#;
//! let req = http::Request::post("/v1/responses")
//!     .header("content-encoding", "zstd")
//!     .body(Full::new(Bytes::from(zstd::encode_all(&plain[..], 3).unwrap())))
//!     .unwrap();
//! let req = read_request(req, 1024).await.unwrap();
//! assert_eq!(&req.body()[..], plain);
//! assert!(req.headers().get("content-encoding").is_none());
//!
//! let big = http::Request::new(Full::new(Bytes::from(vec![0u8; 2048])));
//! assert!(matches!(read_request(big, 1024).await, Err(BodyError::TooLarge { limit: 1024 })));
//! # }
//! ```

mod coalesce;
mod decode;
mod idle_timeout;
mod limited;
mod prefix;
mod replay;

pub use coalesce::{COALESCE_MAX_BYTES, COALESCE_MAX_YIELDS, Coalesce};
pub use decode::{INLINE_DECODE_LIMIT, decode, decode_off_runtime};
pub use idle_timeout::{IdleTimeout, IdleTimeoutBody};
pub use limited::collect_limited;
pub use prefix::{DEFAULT_PEEK_TIMEOUT, Peek, Rest, prefixed, read_prefix, read_prefix_within};
pub use replay::ReplayBody;

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;

use crate::error::{ApiError, BoxError};

/// The largest request body accepted by default, after decoding: 32 MiB.
///
/// The Codex CLI resends the whole conversation every turn (tool outputs, encrypted reasoning),
/// so a long session's request runs to several MiB; 32 MiB leaves room while still bounding
/// what one client can make the proxy hold.
pub const DEFAULT_BODY_LIMIT: usize = 32 * 1024 * 1024;

/// The response body type between layers.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// A complete response body of these bytes.
pub fn full_body(b: impl Into<Bytes>) -> ResponseBody {
    use http_body_util::BodyExt;
    http_body_util::Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Why a body could not be read.
#[derive(Debug)]
pub enum BodyError {
    /// More than `limit` bytes, before or after decoding.
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// A `Content-Encoding` this crate does not decode.
    UnsupportedEncoding(String),
    /// The bytes are not valid for their declared encoding.
    Decode {
        /// The encoding that failed.
        encoding: String,
        /// What the decoder said.
        source: std::io::Error,
    },
    /// Reading the body failed (the client went away mid-body).
    Read(BoxError),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::TooLarge { limit } => {
                write!(f, "request body is larger than the limit of {limit} bytes")
            }
            BodyError::UnsupportedEncoding(e) => write!(
                f,
                "unsupported Content-Encoding `{e}` (supported: zstd, gzip, deflate, br, identity)"
            ),
            BodyError::Decode { encoding, source } => {
                write!(f, "request body is not valid {encoding}: {source}")
            }
            BodyError::Read(e) => write!(f, "could not read the request body: {e}"),
        }
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BodyError::Decode { source, .. } => Some(source),
            BodyError::Read(e) => Some(e.as_ref()),
            _ => None,
        }
    }
}

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> Self {
        let message = e.to_string();
        match e {
            BodyError::TooLarge { .. } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                message,
            )
            .with_code("request_too_large"),
            BodyError::UnsupportedEncoding(_) => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_request_error",
                message,
            )
            .with_code("unsupported_content_encoding"),
            BodyError::Decode { .. } => {
                ApiError::invalid_request(message).with_code("invalid_content_encoding")
            }
            BodyError::Read(_) => ApiError::invalid_request(message).with_code("body_read_error"),
        }
    }
}

/// Reads a request's body into replayable [`Bytes`], decoding its `Content-Encoding`.
///
/// The body is collected with [`collect_limited`] and decoded with [`decode_off_runtime`] (several
/// `Content-Encoding` lines count as one comma-separated list), both bounded by `limit`. A
/// declared `Content-Length` above `limit` fails before anything is read. On success
/// `Content-Encoding` and `Transfer-Encoding` are removed and `Content-Length` states the
/// decoded length; a request that had neither a length nor a body (a plain `GET`) is left
/// without one rather than gaining `Content-Length: 0`.
///
/// # Errors
///
/// Any [`BodyError`]; convert it into an [`ApiError`] to answer the client.
pub async fn read_request<B>(req: Request<B>, limit: usize) -> Result<Request<Bytes>, BodyError>
where
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(BodyError::TooLarge { limit });
    }
    let had_framing = parts.headers.contains_key(header::CONTENT_LENGTH)
        || parts.headers.contains_key(header::TRANSFER_ENCODING);

    let mut bytes = collect_limited(body, limit).await?;
    // Encodings are listed in the order they were applied, across lines too.
    let encodings: Vec<HeaderValue> = parts
        .headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .cloned()
        .collect();
    for encoding in encodings.iter().rev() {
        bytes = decode_off_runtime(encoding, bytes, limit).await?;
    }

    parts.headers.remove(header::CONTENT_ENCODING);
    parts.headers.remove(header::TRANSFER_ENCODING);
    if had_framing || !bytes.is_empty() {
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    } else {
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    Ok(Request::from_parts(parts, bytes))
}

/// Clones a request for another attempt: method, URI, version, headers, extensions and body.
pub fn clone_request<B: Clone>(req: &Request<B>) -> Request<B> {
    let mut out = Request::new(req.body().clone());
    *out.method_mut() = req.method().clone();
    *out.uri_mut() = req.uri().clone();
    *out.version_mut() = req.version();
    *out.headers_mut() = req.headers().clone();
    *out.extensions_mut() = req.extensions().clone();
    out
}

#[cfg(test)]
mod tests {
    use super::decode::tests::gzip;
    use super::*;
    use http_body_util::Full;

    #[test]
    fn errors_map_to_envelopes() {
        let cases = [
            (BodyError::TooLarge { limit: 5 }, 413, "request_too_large"),
            (
                BodyError::UnsupportedEncoding("x".into()),
                415,
                "unsupported_content_encoding",
            ),
            (
                BodyError::Decode {
                    encoding: "gzip".into(),
                    source: std::io::Error::other("bad"),
                },
                400,
                "invalid_content_encoding",
            ),
            (BodyError::Read("gone".into()), 400, "body_read_error"),
        ];
        for (err, status, code) in cases {
            let api = ApiError::from(err);
            assert_eq!(api.status.as_u16(), status);
            assert_eq!(api.code.as_deref(), Some(code));
        }
    }

    #[test]
    fn clone_keeps_extensions() {
        #[derive(Clone, Debug, PartialEq)]
        struct Marker(u8);
        let mut req = Request::post("http://x/v1/responses")
            .body(ReplayBody::new(Bytes::from_static(b"{}")))
            .unwrap();
        req.extensions_mut().insert(Marker(7));
        req.headers_mut()
            .insert("x-a", HeaderValue::from_static("1"));
        let c = clone_request(&req);
        assert_eq!(c.extensions().get::<Marker>(), Some(&Marker(7)));
        assert_eq!(c.headers()["x-a"], "1");
        assert_eq!(c.uri(), req.uri());
    }

    #[tokio::test]
    async fn read_request_decodes_and_fixes_headers() {
        let json = br#"{"model":"gpt-5","input":"hi"}"#;
        let req = Request::post("/v1/responses")
            .header(header::CONTENT_ENCODING, "gzip")
            .header(header::TRANSFER_ENCODING, "chunked")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(gzip(json))))
            .unwrap();
        let req = read_request(req, 1024).await.unwrap();
        assert_eq!(req.body(), &json[..]);
        assert!(req.headers().get(header::CONTENT_ENCODING).is_none());
        assert!(req.headers().get(header::TRANSFER_ENCODING).is_none());
        assert_eq!(
            req.headers()[header::CONTENT_LENGTH],
            json.len().to_string().as_str()
        );
        assert_eq!(req.headers()[header::CONTENT_TYPE], "application/json");
    }

    #[tokio::test]
    async fn read_request_applies_encodings_across_header_lines() {
        let json = br#"{"input":[]}"#;
        let once = gzip(json);
        let twice = zstd::encode_all(&once[..], 1).unwrap();
        let req = Request::post("/")
            .header(header::CONTENT_ENCODING, "gzip")
            .header(header::CONTENT_ENCODING, "zstd")
            .body(Full::new(Bytes::from(twice)))
            .unwrap();
        let req = read_request(req, 1024).await.unwrap();
        assert_eq!(req.body(), &json[..]);
    }

    #[tokio::test]
    async fn read_request_leaves_bodiless_get_without_length() {
        let req = Request::get("/v1/models")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let req = read_request(req, 1024).await.unwrap();
        assert!(req.headers().get(header::CONTENT_LENGTH).is_none());
        assert!(req.body().is_empty());
    }

    #[tokio::test]
    async fn read_request_rejects_declared_length_before_reading() {
        // The body is small, but the client announced more than the limit.
        let req = Request::post("/")
            .header(header::CONTENT_LENGTH, "5000")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let err = read_request(req, 1000).await.unwrap_err();
        assert!(matches!(err, BodyError::TooLarge { limit: 1000 }));
    }

    #[tokio::test]
    async fn read_request_bounds_the_decoded_size() {
        let zeros = vec![0u8; 64 * 1024];
        let req = Request::post("/")
            .header(header::CONTENT_ENCODING, "gzip")
            .body(Full::new(Bytes::from(gzip(&zeros))))
            .unwrap();
        let err = read_request(req, 4096).await.unwrap_err();
        assert!(matches!(err, BodyError::TooLarge { limit: 4096 }));
    }
}
