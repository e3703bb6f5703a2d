//! Turning a client request into the upstream's: the base URL, hop-by-hop headers.
//!
//! ```
//! use tower_responses::upstream::UpstreamBase;
//!
//! let base = UpstreamBase::parse("https://chatgpt.com/backend-api/codex").unwrap();
//! let uri = base.map(&"/v1/responses?x=1".parse().unwrap()).unwrap();
//! assert_eq!(uri.to_string(), "https://chatgpt.com/backend-api/codex/responses?x=1");
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

/// The upstream base URL, split once at startup.
#[derive(Debug, Clone)]
pub struct UpstreamBase {
    scheme: Scheme,
    authority: Authority,
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
            authority,
            prefix: uri.path().trim_end_matches('/').to_string(),
        })
    }

    /// Maps a client path `/v1/X?q` to `base/X?q`; `None` for paths outside `/v1/`.
    pub fn map(&self, client: &Uri) -> Option<Uri> {
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
        if let Ok(host) = HeaderValue::from_str(self.authority.as_str()) {
            headers.insert(header::HOST, host);
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
