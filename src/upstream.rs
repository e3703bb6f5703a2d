//! Turning a client request into the upstream's: the base URL, hop-by-hop headers, and the
//! path rules that keep a client inside the upstream's prefix.
//!
//! ```
//! use tower_responses::upstream::UpstreamBase;
//!
//! let base = UpstreamBase::parse("https://chatgpt.com/backend-api/codex").unwrap();
//! let uri = base.map(&"/v1/responses?x=1".parse().unwrap()).unwrap();
//! assert_eq!(uri.to_string(), "https://chatgpt.com/backend-api/codex/responses?x=1");
//! // A dot segment would climb out of `/backend-api/codex`: never mapped.
//! assert!(base.map(&"/v1/%2E%2e/accounts".parse().unwrap()).is_none());
//! ```

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Uri};

use crate::error::ConfigError;

/// Headers that describe one hop and must not be forwarded (RFC 9110 section 7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names finds which fixed ones are there (usually `Connection` alone,
    // or none): cheaper than eight hashed removals on every message, two per request.
    let mut present = 0u8;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        // What `Connection` lists besides the fixed names, and only what the message has:
        // `Connection: keep-alive` (what servers send) builds no name.
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|n| {
                !HOP_BY_HOP
                    .iter()
                    .any(|h| n.eq_ignore_ascii_case(h.as_str()))
            })
            .filter(|n| headers.contains_key(*n))
            .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .collect();
        for name in &listed {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// Checks that a client path stays where it is put: `Err` names the first problem.
///
/// The upstream (or a CDN in front of it) may normalise what we forward, so a path is refused
/// if any normaliser could read it differently from us: `.` and `..` segments, raw or
/// percent-encoded in either case; empty segments (`//`, a trailing `/`); backslashes, raw or
/// encoded; encoded slashes; an encoded `%` (double encoding); encoded control characters; and
/// malformed percent-escapes. A lone `/` is fine.
///
/// ```
/// use tower_responses::upstream::check_path;
///
/// assert!(check_path("/v1/responses/resp_123/input_items").is_ok());
/// assert!(check_path("/v1/../../backend-api/me").is_err());
/// assert!(check_path("/v1/%2e%2E/x").is_err());
/// assert!(check_path("/v1//responses").is_err());
/// assert!(check_path("/v1/a%2fb").is_err());
/// ```
pub fn check_path(path: &str) -> Result<(), &'static str> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err("the path must start with `/`");
    };
    if rest.is_empty() {
        return Ok(());
    }
    for segment in rest.split('/') {
        check_segment(segment.as_bytes())?;
    }
    Ok(())
}

fn check_segment(segment: &[u8]) -> Result<(), &'static str> {
    if segment.is_empty() {
        return Err("empty path segment");
    }
    // Only "." and ".." matter as decoded text, so the decoded form is tracked as "all dots so
    // far, and how many" instead of being built.
    let mut dots = 0usize;
    let mut only_dots = true;
    let mut i = 0;
    while i < segment.len() {
        let byte = match segment[i] {
            b'%' => {
                let hex = |b: u8| (b as char).to_digit(16);
                let (Some(hi), Some(lo)) = (
                    segment.get(i + 1).copied().and_then(hex),
                    segment.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err("malformed percent-encoding");
                };
                i += 3;
                let decoded = (hi * 16 + lo) as u8;
                match decoded {
                    b'/' | b'\\' => return Err("encoded slash or backslash"),
                    b'%' => return Err("encoded `%` (double encoding)"),
                    0..=0x1f | 0x7f => return Err("encoded control character"),
                    b => b,
                }
            }
            b'\\' => return Err("backslash"),
            b => {
                i += 1;
                b
            }
        };
        if byte == b'.' {
            dots += 1;
        } else {
            only_dots = false;
        }
    }
    if only_dots && dots <= 2 {
        return Err("`.` or `..` segment");
    }
    Ok(())
}

/// The upstream base URL, split once at startup.
#[derive(Debug, Clone)]
pub struct UpstreamBase {
    scheme: Scheme,
    authority: Authority,
    /// `Host` for every request, built once (a header value per request was an allocation).
    host: Option<HeaderValue>,
    prefix: String,
}

impl UpstreamBase {
    /// Parses `http(s)://host[:port][/prefix]`.
    pub fn parse(url: &str) -> Result<Self, ConfigError> {
        let uri: Uri = url
            .parse()
            .map_err(|e| ConfigError(format!("invalid upstream URL `{url}`: {e}")))?;
        let scheme = uri
            .scheme()
            .filter(|s| **s == Scheme::HTTP || **s == Scheme::HTTPS)
            .cloned()
            .ok_or_else(|| {
                ConfigError(format!("upstream URL `{url}` must be http:// or https://"))
            })?;
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| ConfigError(format!("upstream URL `{url}` has no host")))?;
        if uri.query().is_some() {
            return Err(ConfigError(format!(
                "upstream URL `{url}` must not have a query"
            )));
        }
        Ok(UpstreamBase {
            scheme,
            host: HeaderValue::from_str(authority.as_str()).ok(),
            authority,
            prefix: uri.path().trim_end_matches('/').to_string(),
        })
    }

    /// Maps a client path `/v1/X?q` to `base/X?q`; `None` for paths outside `/v1/` and for
    /// paths [`check_path`] refuses.
    pub fn map(&self, client: &Uri) -> Option<Uri> {
        check_path(client.path()).ok()?;
        let rest = client.path().strip_prefix("/v1")?;
        if !rest.is_empty() && !rest.starts_with('/') {
            return None;
        }
        let mut pq = format!("{}{}", self.prefix, rest);
        if let Some(q) = client.query() {
            pq.push('?');
            pq.push_str(q);
        }
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(PathAndQuery::try_from(pq).ok()?)
            .build()
            .ok()
    }

    /// Rewrites a request for the upstream: URI, `Host`, hop-by-hop headers, and an identity
    /// `Accept-Encoding` so streams arrive as plain SSE the layers can read.
    pub fn prepare<B>(&self, req: &mut Request<B>, uri: Uri) {
        *req.uri_mut() = uri;
        let headers = req.headers_mut();
        strip_hop_by_hop(headers);
        if let Some(host) = &self.host {
            headers.insert(header::HOST, host.clone());
        }
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_paths_under_the_prefix() {
        let base = UpstreamBase::parse("https://chatgpt.com/backend-api/codex/").unwrap();
        let u = base.map(&"/v1/responses?x=1".parse().unwrap()).unwrap();
        assert_eq!(
            u.to_string(),
            "https://chatgpt.com/backend-api/codex/responses?x=1"
        );
        assert!(base.map(&"/v2/responses".parse().unwrap()).is_none());
        assert!(base.map(&"/v1x".parse().unwrap()).is_none());
        assert!(UpstreamBase::parse("ftp://x").is_err());
        assert!(UpstreamBase::parse("not a url").is_err());
    }

    #[test]
    fn paths_that_a_normaliser_could_read_differently_are_refused() {
        for bad in [
            "/v1/..",
            "/v1/../x",
            "/v1/./responses",
            "/v1/%2e%2e/x",
            "/v1/%2E%2E/x",
            "/v1/.%2e/x",
            "/v1/%2e/x",
            "/v1//responses",
            "/v1/responses/",
            "/v1/a%2fb",
            "/v1/a%2Fb",
            "/v1/a%5cb",
            "/v1/a\\b",
            "/v1/a%252e",
            "/v1/a%00",
            "/v1/a%zz",
            "/v1/a%2",
            "v1/responses",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
        for good in [
            "/",
            "/v1",
            "/v1/responses",
            "/v1/files/file-1.txt",
            "/v1/a%20b",
            "/v1/...",
        ] {
            assert!(check_path(good).is_ok(), "{good}");
        }
        let base = UpstreamBase::parse("https://chatgpt.com/backend-api/codex").unwrap();
        assert!(base.map(&"/v1/../../probe".parse().unwrap()).is_none());
    }

    /// What `strip_hop_by_hop` did before it looked at the names first: every name that
    /// `Connection` lists, then the fixed ones, each removed by lookup.
    fn strip_by_lookups(headers: &mut HeaderMap) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for name in named.iter().chain(HOP_BY_HOP.iter()) {
            headers.remove(name);
        }
    }

    #[test]
    fn stripping_leaves_what_removing_each_name_left() {
        const NAMES: [&str; 14] = [
            "connection",
            "keep-alive",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "proxy-authenticate",
            "proxy-authorization",
            "x-a",
            "x-b",
            "content-type",
            "host",
            "x-codex-primary-used-percent",
            "set-cookie",
        ];
        // What a `Connection` line may list: fixed names in any case, headers that are or
        // are not there, whitespace, empty and invalid tokens.
        const TOKENS: [&str; 14] = [
            "keep-alive",
            "Keep-Alive",
            "close",
            "x-a",
            " X-A ",
            "x-b",
            "",
            "bad name",
            "te",
            "UPGRADE",
            "x-missing",
            "content-type",
            "x-\u{e9}",
            "host\t",
        ];
        let mut rng = 0x5EED_u64;
        let mut below = |n: usize| {
            // splitmix64
            rng = rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = rng;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) % n as u64) as usize
        };
        for case in 0..20_000 {
            let mut h = HeaderMap::new();
            for _ in 0..below(8) {
                let name = NAMES[below(NAMES.len())];
                let value = if name == "connection" {
                    let n = 1 + below(3);
                    let tokens: Vec<&str> = (0..n).map(|_| TOKENS[below(TOKENS.len())]).collect();
                    tokens.join(if below(2) == 0 { "," } else { ", " })
                } else {
                    format!("v{}", below(3))
                };
                let Ok(value) = HeaderValue::from_bytes(value.as_bytes()) else {
                    continue;
                };
                h.append(HeaderName::from_static(name), value);
            }
            let mut expected = h.clone();
            strip_by_lookups(&mut expected);
            let before = format!("{h:?}");
            strip_hop_by_hop(&mut h);
            assert_eq!(h, expected, "case {case}: {before}");
        }
    }

    #[test]
    fn strips_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            "keep-alive, x-secret-hop".parse().unwrap(),
        );
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }
}
