//! The checks a request passes before anything about it is trusted: the request target, the
//! method, `Host` (DNS rebinding), `Origin` (cross-site requests from web pages), the path
//! (no escape from the upstream's prefix) and the media type of Responses API bodies.
//!
//! They look only at the request head, so a refused request costs no body read. Each refusal is
//! an [`ApiError`] in the OpenAI envelope; the server closes the connection after it.

use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header};

use crate::body::{ResponseBody, full_body};
use crate::error::ApiError;
use crate::upstream::check_path;

/// What the edge allows, fixed at startup.
#[derive(Debug, Clone)]
pub(super) struct EdgeRules {
    /// No client keys: only loopback `Host` values are served.
    keyless: bool,
    /// Serialized origins (`scheme://host[:port]`), lowercase, without a trailing `/`.
    allowed_origins: Vec<String>,
}

impl EdgeRules {
    pub(super) fn new(keyless: bool, allowed_origins: &[String]) -> Self {
        EdgeRules {
            keyless,
            allowed_origins: allowed_origins
                .iter()
                .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
                .collect(),
        }
    }

    /// Every head check, in the order that gives the most useful answer.
    pub(super) fn check<B>(&self, req: &Request<B>) -> Result<(), ApiError> {
        check_method(req.method())?;
        check_target(req.uri())?;
        self.check_host(req.version(), req.headers())?;
        self.check_origin(req.headers())?;
        check_path(req.uri().path()).map_err(invalid_path)
    }

    /// Answers a CORS preflight from an allowed origin (`OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`), after the same target, `Host` and path checks as any
    /// request. `Ok(None)` for anything else, which [`check`](Self::check) then judges.
    pub(super) fn preflight<B>(
        &self,
        req: &Request<B>,
    ) -> Result<Option<Response<ResponseBody>>, ApiError> {
        let headers = req.headers();
        let requested = headers.get(header::ACCESS_CONTROL_REQUEST_METHOD);
        let Some(requested) = requested
            .filter(|_| req.method() == Method::OPTIONS && headers.contains_key(header::ORIGIN))
        else {
            return Ok(None);
        };
        check_target(req.uri())?;
        self.check_host(req.version(), headers)?;
        self.check_origin(headers)?;
        let method = Method::from_bytes(requested.as_bytes()).map_err(|_| {
            ApiError::invalid_request("Access-Control-Request-Method is not a method")
        })?;
        check_method(&method)?;
        check_path(req.uri().path()).map_err(invalid_path)?;
        let mut res = Response::new(full_body(""));
        *res.status_mut() = StatusCode::NO_CONTENT;
        let h = res.headers_mut();
        if let Some(origin) = headers.get(header::ORIGIN) {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        }
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, DELETE"),
        );
        // The page may send what it asks for (`Authorization`, `Content-Type`, SDK headers):
        // the origin is trusted by configuration, and the client key still applies.
        if let Some(asked) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
        }
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
        Ok(Some(res))
    }

    /// The `Origin` to name in `Access-Control-Allow-Origin`, if the request has an allowed one.
    pub(super) fn allowed_origin(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let mut origins = headers.get_all(header::ORIGIN).iter();
        match (origins.next(), origins.next()) {
            (Some(origin), None) if self.is_allowed(origin) => Some(origin.clone()),
            _ => None,
        }
    }

    fn is_allowed(&self, origin: &HeaderValue) -> bool {
        origin.to_str().ok().is_some_and(|o| {
            let o = o.trim().trim_end_matches('/');
            self.allowed_origins
                .iter()
                .any(|a| a.eq_ignore_ascii_case(o))
        })
    }

    /// In keyless mode the only thing standing between a web page and the user's credentials
    /// is that browsers send the name they resolved in `Host`: a rebinding attacker's page
    /// says `evil.example`, never `localhost`.
    fn check_host(&self, version: Version, headers: &HeaderMap) -> Result<(), ApiError> {
        let mut hosts = headers.get_all(header::HOST).iter();
        let (host, extra) = (hosts.next(), hosts.next());
        if extra.is_some() {
            return Err(
                ApiError::invalid_request("more than one Host header").with_code("invalid_host")
            );
        }
        let host = match host {
            Some(h) => Some(h.to_str().map_err(|_| {
                ApiError::invalid_request("the Host header is not valid").with_code("invalid_host")
            })?),
            // RFC 9112 section 3.2: an HTTP/1.1 request without Host is a 400.
            None if version >= Version::HTTP_11 => {
                return Err(ApiError::invalid_request("the request has no Host header")
                    .with_code("invalid_host"));
            }
            None => None,
        };
        if self.keyless && !host.is_some_and(is_loopback_host) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "permission_error",
                "without client keys this proxy only answers requests addressed to localhost, \
                 127.0.0.1 or [::1] (protection against DNS rebinding)",
            )
            .with_code("host_not_allowed"));
        }
        Ok(())
    }

    /// A browser names the page that makes a request in `Origin` (on every POST, and on
    /// cross-origin requests of any method); `Sec-Fetch-Site` tells the rest (an `<img>` or
    /// a navigation from another site). A web page is not a client of this proxy unless
    /// configured: a "simple" `text/plain` POST needs no CORS preflight, so without this
    /// check any page could spend the user's credentials.
    fn check_origin(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let mut origins = headers.get_all(header::ORIGIN).iter();
        let refused = |why: &str| {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "permission_error",
                format!("{why}; allow a web origin with `allowed_origins` in the configuration"),
            )
            .with_code("origin_not_allowed"))
        };
        match (origins.next(), origins.next()) {
            (Some(_), Some(_)) => return refused("more than one Origin header"),
            (Some(origin), None) => {
                return if self.is_allowed(origin) {
                    Ok(())
                } else {
                    refused("requests from this web origin are not accepted")
                };
            }
            (None, _) => {}
        }
        let cross_site = headers
            .get("sec-fetch-site")
            .is_some_and(|v| !matches!(v.as_bytes(), b"same-origin" | b"none"));
        if cross_site {
            return refused("requests from other web sites are not accepted");
        }
        Ok(())
    }
}

/// The methods the OpenAI API uses. Anything else (`TRACE`, `CONNECT`, WebDAV verbs) is not
/// forwarded.
fn check_method(method: &Method) -> Result<(), ApiError> {
    if matches!(*method, Method::GET | Method::POST | Method::DELETE) {
        return Ok(());
    }
    let why = if *method == Method::CONNECT {
        "CONNECT is not supported: this is not an open proxy".to_string()
    } else {
        format!("method {method} is not supported; use GET, POST or DELETE")
    };
    Err(
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "invalid_request_error", why)
            .with_code("method_not_allowed"),
    )
}

/// Only origin-form targets (`/v1/responses`). An absolute-form target
/// (`POST http://other/v1/responses`) is what a client configured to use a forward proxy
/// sends; answering it would make this an open proxy for whatever the client meant to reach.
fn check_target(uri: &Uri) -> Result<(), ApiError> {
    if uri.scheme().is_some() || uri.authority().is_some() || !uri.path().starts_with('/') {
        return Err(ApiError::invalid_request(
            "only origin-form request targets (`/v1/...`) are accepted: this is not a forward proxy",
        )
        .with_code("invalid_request_target"));
    }
    Ok(())
}

fn invalid_path(why: &str) -> ApiError {
    ApiError::invalid_request(format!("the request path is not accepted: {why}"))
        .with_code("invalid_path")
}

/// `localhost`, `127.0.0.1` or `[::1]`, each with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        // A colon inside brackets belongs to the IPv6 address, not a port.
        Some((name, port)) if !port.contains(']') => {
            if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
                return false;
            }
            name
        }
        _ => host,
    };
    name.eq_ignore_ascii_case("localhost") || name == "127.0.0.1" || name == "[::1]"
}

/// Whether a path is the Responses API, whose bodies must be JSON objects.
pub(super) fn is_responses_path(path: &str) -> bool {
    path == "/v1/responses" || path.starts_with("/v1/responses/")
}

/// What a Responses API request says about its body's media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MediaType {
    Json,
    /// No `Content-Type`: fine only if the body turns out empty.
    Missing,
}

/// `/v1/responses*` bodies are JSON. Requiring the header is what turns a cross-site form or
/// `text/plain` POST into one that needs a CORS preflight, which a browser will not send
/// without the server's consent.
pub(super) fn check_media_type(headers: &HeaderMap) -> Result<MediaType, ApiError> {
    let mut values = headers.get_all(header::CONTENT_TYPE).iter();
    let value = match (values.next(), values.next()) {
        (None, _) => return Ok(MediaType::Missing),
        (Some(v), None) => v,
        (Some(_), Some(_)) => return Err(unsupported_media_type()),
    };
    let essence = value
        .to_str()
        .ok()
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim_matches([' ', '\t']));
    match essence {
        Some(e) if e.eq_ignore_ascii_case("application/json") => Ok(MediaType::Json),
        _ => Err(unsupported_media_type()),
    }
}

/// The 415 for a Responses API body that is not declared JSON.
pub(super) fn unsupported_media_type() -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "invalid_request_error",
        "Responses API requests must be sent with `Content-Type: application/json`",
    )
    .with_code("unsupported_media_type")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_with_and_without_ports() {
        for ok in [
            "localhost",
            "LocalHost:8787",
            "127.0.0.1",
            "127.0.0.1:1",
            "[::1]",
            "[::1]:8787",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8787",
            "localhost.",
            "localhost.evil.example",
            "127.0.0.2",
            "127.0.0.1.nip.io",
            "localhost:",
            "localhost:80x",
            "[::1]x",
            "::1",
            "",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }

    #[test]
    fn media_types() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, v.parse().unwrap());
            check_media_type(&h)
        };
        assert_eq!(with("application/json").unwrap(), MediaType::Json);
        assert_eq!(
            with("Application/JSON; charset=utf-8").unwrap(),
            MediaType::Json
        );
        assert!(with("text/plain;charset=UTF-8").is_err());
        assert!(with("application/jsonx").is_err());
        assert!(with("multipart/form-data; boundary=x").is_err());
        assert_eq!(
            check_media_type(&HeaderMap::new()).unwrap(),
            MediaType::Missing
        );
    }
}
