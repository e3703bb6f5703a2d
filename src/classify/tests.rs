use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, StatusCode};

use super::FailureClass::*;
use super::rules::{BILLING_PHRASES, RATE_LIMIT_PHRASES, WEAK_RATE_LIMIT_PHRASES};
use super::*;

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap()
}

fn at(unix: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(unix)
}

fn http(code: u16, body: &str) -> Option<Failure> {
    Failure::from_http_at(status(code), &HeaderMap::new(), body.as_bytes(), at(1_000))
}

fn http_class(code: u16, body: &str) -> FailureClass {
    http(code, body)
        .unwrap_or_else(|| panic!("{code} {body} is a failure"))
        .class
}

fn sse(data: &str) -> Option<Failure> {
    Failure::from_sse_data(data.as_bytes())
}

#[test]
fn every_code_from_protocol_section_3() {
    let cases = [
        ("insufficient_quota", QuotaExhausted),
        ("usage_limit_reached", QuotaExhausted),
        ("usage_not_included", QuotaExhausted),
        ("rate_limit_exceeded", RateLimited),
        ("quota_exceeded", QuotaExhausted),
        ("server_is_overloaded", Overloaded),
        ("slow_down", RateLimited),
        ("server_error", Transient),
        ("context_length_exceeded", ContextLength),
        ("invalid_prompt", InvalidRequest),
        ("cyber_policy", ContentPolicy),
    ];
    for (code, want) in cases {
        assert_eq!(
            classify_error(None, Some(code), None, None),
            want,
            "code {code}"
        );
        // Inside a stream, as Codex sees them.
        let data = format!(
            r#"{{"type":"response.failed","response":{{"status":"failed","error":{{"code":"{code}","message":"x"}}}}}}"#
        );
        assert_eq!(sse(&data).unwrap().class, want, "response.failed {code}");
    }
}

#[test]
fn other_codes_and_types() {
    let cases = [
        (Some("billing_hard_limit_reached"), None, QuotaExhausted),
        (Some("billing_not_active"), None, QuotaExhausted),
        (None, Some("usage_limit_reached"), QuotaExhausted),
        (None, Some("insufficient_quota"), QuotaExhausted),
        (
            Some("context_length_exceeded"),
            Some("invalid_request_error"),
            ContextLength,
        ),
        (
            Some("previous_response_not_found"),
            None,
            PreviousResponseNotFound,
        ),
        (
            Some("model_not_found"),
            Some("invalid_request_error"),
            ModelUnsupported,
        ),
        (Some("invalid_api_key"), None, Auth),
        (None, Some("authentication_error"), Auth),
        (Some("content_filter"), None, ContentPolicy),
        (Some("content_policy_violation"), None, ContentPolicy),
        (Some("rate_limit_exceeded"), Some("tokens"), RateLimited),
        (None, Some("requests"), RateLimited),
        (
            Some("unsupported_country_region_territory"),
            None,
            InvalidRequest,
        ),
        (Some("unknown_url"), None, RouteNotFound),
        (Some("cancelled"), None, Cancelled),
        (Some("Rate_Limit_Exceeded"), None, RateLimited),
        // An unknown code read as phrases.
        (Some("insufficient_funds"), None, QuotaExhausted),
        (Some("something_new"), None, Unknown),
        (Some(""), Some("  "), Unknown),
    ];
    for (code, kind, want) in cases {
        assert_eq!(
            classify_error(None, code, kind, None),
            want,
            "{code:?} {kind:?}"
        );
    }
}

#[test]
fn code_wins_over_message() {
    let cases = [
        (
            "rate_limit_exceeded",
            "You exceeded your current quota",
            RateLimited,
        ),
        (
            "insufficient_quota",
            "Rate limit reached, try again in 2s",
            QuotaExhausted,
        ),
        (
            "invalid_prompt",
            "Your prompt was flagged as potentially violating our usage policy",
            InvalidRequest,
        ),
        ("server_is_overloaded", "usage limit", Overloaded),
    ];
    for (code, message, want) in cases {
        assert_eq!(
            classify_error(Some(status(429)), Some(code), None, Some(message)),
            want,
            "{code}"
        );
    }
}

#[test]
fn generic_codes_defer_to_message_and_status() {
    let cases = [
        (
            None,
            "invalid_request_error",
            "Invalid 'previous_response_id'.",
            PreviousResponseNotFound,
        ),
        (
            None,
            "invalid_request_error",
            "Something is off with input[3]",
            InvalidRequest,
        ),
        (
            Some(502),
            "server_error",
            "The usage limit has been reached",
            QuotaExhausted,
        ),
        (
            None,
            "server_error",
            "An error occurred while processing your request. You can retry your request.",
            Transient,
        ),
        (
            Some(404),
            "invalid_request_error",
            "Invalid URL (POST /v1/responses/compact)",
            RouteNotFound,
        ),
        (
            Some(404),
            "invalid_request_error",
            "Nothing to see",
            RouteNotFound,
        ),
        (
            None,
            "not_found",
            "The model `gpt-9` does not exist",
            ModelUnsupported,
        ),
    ];
    for (st, code, message, want) in cases {
        let got = classify_error(st.map(status), Some(code), None, Some(message));
        assert_eq!(got, want, "{code}: {message}");
    }
}

#[test]
fn every_billing_phrase() {
    for phrase in BILLING_PHRASES {
        let message = format!("Request failed: {phrase}.");
        assert_eq!(
            classify_error(None, None, None, Some(&message)),
            QuotaExhausted,
            "{phrase}"
        );
        let upper = message.to_uppercase();
        assert_eq!(
            classify_error(None, None, None, Some(&upper)),
            QuotaExhausted,
            "{upper}"
        );
    }
}

#[test]
fn every_rate_limit_phrase() {
    for phrase in RATE_LIMIT_PHRASES.iter().chain(WEAK_RATE_LIMIT_PHRASES) {
        let message = format!("Request failed: {phrase}.");
        let want = if phrase.contains("quota") {
            // "quota exceeded" contains the billing phrase "quota", and billing is checked first.
            QuotaExhausted
        } else {
            RateLimited
        };
        assert_eq!(
            classify_error(None, None, None, Some(&message)),
            want,
            "{phrase}"
        );
    }
}

#[test]
fn billing_phrases_win_over_rate_limit_phrases() {
    let cases = [
        "You exceeded your current quota, please retry later",
        "Rate limit: the usage limit has been reached",
        "Too many requests: credit balance is too low",
        "Throttled because billing failed",
    ];
    for message in cases {
        assert_eq!(
            classify_error(None, None, None, Some(message)),
            QuotaExhausted,
            "{message}"
        );
    }
}

#[test]
fn content_policy_safety_and_cancelled_are_neither() {
    let cases = [
        (
            "Your request was rejected by our content policy. Please retry.",
            ContentPolicy,
        ),
        (
            "Flagged by the safety system; try again with a different prompt",
            ContentPolicy,
        ),
        ("Output blocked by content filter", ContentPolicy),
        ("Response cancelled by user", Cancelled),
        ("The request was canceled, retry if needed", Cancelled),
    ];
    for (message, want) in cases {
        let class = classify_error(None, None, None, Some(message));
        assert_eq!(class, want, "{message}");
        assert!(
            !class.cools_credential() && !class.retry_elsewhere(),
            "{message}"
        );
    }
    assert_eq!(classify_error(None, None, None, Some("")), Unknown);
    assert_eq!(classify_error(None, None, None, None), Unknown);
}

#[test]
fn other_phrases() {
    let cases = [
        (
            Some(400),
            "The 'gpt-5-pro' model is not supported when using Codex with a ChatGPT account.",
            ModelUnsupported,
        ),
        (
            Some(404),
            "The model `gpt-9` does not exist or you do not have access to it.",
            ModelUnsupported,
        ),
        (Some(400), "Unsupported model", ModelUnsupported),
        (
            Some(400),
            "Unsupported parameter: 'temperature' is not supported with this model.",
            InvalidRequest,
        ),
        (
            Some(400),
            "Unsupported parameter: previous_response_id",
            InvalidRequest,
        ),
        (
            Some(400),
            "previous_response_id is only supported on the WebSocket transport",
            InvalidRequest,
        ),
        (
            Some(400),
            "Previous response with id 'resp_1' not found.",
            PreviousResponseNotFound,
        ),
        (
            Some(404),
            "Item with id 'rs_1' not found. Items are not persisted when `store` is false.",
            PreviousResponseNotFound,
        ),
        (
            Some(400),
            "Your input exceeds the context window of this model. Please adjust your input and try again.",
            ContextLength,
        ),
        (
            Some(400),
            "This model's maximum context length is 128000 tokens.",
            ContextLength,
        ),
        (
            Some(403),
            "You have insufficient permissions for this operation. Missing scopes: api.responses.write.",
            Auth,
        ),
        (Some(401), "Incorrect API key provided: sk-abc.", Auth),
        (Some(403), "You exceeded your current quota", QuotaExhausted),
        (
            Some(403),
            "Country, region, or territory not supported",
            InvalidRequest,
        ),
        (
            None,
            "The server is overloaded, please try again later",
            Overloaded,
        ),
        (
            None,
            "Rate limit reached for gpt-5 on tokens per min (TPM)",
            RateLimited,
        ),
        (
            None,
            "An error occurred while processing your request.",
            Transient,
        ),
        (None, "Please try again in 20s", RateLimited),
        // Weak phrases do not override a status that says otherwise.
        (
            Some(500),
            "The server had an issue. You can retry your request.",
            Transient,
        ),
        (
            Some(400),
            "Invalid input; fix it and try again",
            InvalidRequest,
        ),
    ];
    for (st, message, want) in cases {
        assert_eq!(
            classify_error(st.map(status), None, None, Some(message)),
            want,
            "{message}"
        );
    }
}

#[test]
fn status_fallbacks() {
    let cases = [
        (429, RateLimited),
        (402, QuotaExhausted),
        (401, Auth),
        (403, Auth),
        (404, RouteNotFound),
        (405, RouteNotFound),
        (408, Transient),
        (400, InvalidRequest),
        (413, InvalidRequest),
        (422, InvalidRequest),
        (499, Cancelled),
        (500, Transient),
        (502, Transient),
        (503, Overloaded),
        (504, Transient),
        (529, Overloaded),
    ];
    for (code, want) in cases {
        assert_eq!(
            classify_error(Some(status(code)), None, None, None),
            want,
            "{code}"
        );
        let bodiless = if code == 403 { Blocked } else { want };
        assert_eq!(http_class(code, ""), bodiless, "empty {code}");
    }
    assert_eq!(classify_error(Some(status(200)), None, None, None), Unknown);
}

#[test]
fn forbidden_pages_are_not_auth() {
    // A CDN challenge in front of the API is not the key's fault...
    let page = "<!DOCTYPE html><html><head><title>Just a moment...</title></head></html>";
    assert_eq!(http_class(403, page), Blocked);
    assert_eq!(http_class(403, "  "), Blocked);
    assert!(!Blocked.cools_credential() && !Blocked.retry_elsewhere());
    // ...but the API's own refusal, or a page that says so, is.
    assert_eq!(
        http_class(
            403,
            r#"{"error":{"message":"denied","code":"permission_denied"}}"#
        ),
        Auth
    );
    assert_eq!(
        http_class(403, "<html><title>Invalid API key</title></html>"),
        Auth
    );
    assert_eq!(http_class(401, ""), Auth);
}

#[test]
fn class_properties() {
    let all = [
        RateLimited,
        QuotaExhausted,
        Auth,
        ModelUnsupported,
        ContextLength,
        Overloaded,
        Transient,
        StaleConnection,
        InvalidRequest,
        ContentPolicy,
        PreviousResponseNotFound,
        RouteNotFound,
        Cancelled,
        Unknown,
    ];
    let cools = [RateLimited, QuotaExhausted, Auth, Overloaded, Transient];
    let mut labels = std::collections::HashSet::new();
    for class in all {
        assert_eq!(
            class.cools_credential(),
            cools.contains(&class),
            "{class:?}"
        );
        assert_eq!(
            class.retry_elsewhere(),
            cools.contains(&class) || class == StaleConnection,
            "{class:?}"
        );
        let label = class.as_str();
        assert!(
            label.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{label}"
        );
        assert!(labels.insert(label), "duplicate label {label}");
        assert_eq!(class.to_string(), label);
    }
}

#[test]
fn quota_429_with_resets_at_and_resets_in_seconds() {
    let f = http(
        429,
        r#"{"error":{"type":"usage_limit_reached","message":"The usage limit has been reached","plan_type":"plus","resets_at":1900000000}}"#,
    )
    .unwrap();
    assert_eq!(f.class, QuotaExhausted);
    assert_eq!(f.status, Some(StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(f.kind.as_deref(), Some("usage_limit_reached"));
    assert_eq!(
        f.message.as_deref(),
        Some("The usage limit has been reached")
    );
    assert_eq!(f.retry.reset_at, Some(at(1_900_000_000)));
    assert_eq!(f.origin, Origin::Http);
    assert!(f.cools_credential());

    let f = http(
        429,
        r#"{"error":{"type":"usage_limit_reached","resets_in_seconds":3600}}"#,
    )
    .unwrap();
    assert_eq!(f.retry.after, Some(Duration::from_secs(3600)));
    let f = http(
        429,
        r#"{"error":{"type":"usage_limit_reached","resets_at":"1900000000.5"}}"#,
    )
    .unwrap();
    assert_eq!(
        f.retry.reset_at,
        Some(UNIX_EPOCH + Duration::from_millis(1_900_000_000_500))
    );
    // Nonsense reset values are dropped, not turned into a cooldown.
    let f = http(
        429,
        r#"{"error":{"type":"usage_limit_reached","resets_at":-5,"resets_in_seconds":"soon"}}"#,
    )
    .unwrap();
    assert_eq!(f.retry, RetryHint::default());
}

#[test]
fn rate_limit_429_hint_from_message_and_headers() {
    let mut headers = HeaderMap::new();
    headers.insert("x-ratelimit-reset-tokens", HeaderValue::from_static("6m0s"));
    headers.insert(
        "x-ratelimit-reset-requests",
        HeaderValue::from_static("20ms"),
    );
    let body = br#"{"error":{"message":"Rate limit reached for gpt-5 on tokens per min (TPM). Please try again in 28ms.","type":"tokens","code":"rate_limit_exceeded"}}"#;
    let f =
        Failure::from_http_at(StatusCode::TOO_MANY_REQUESTS, &headers, body, at(1_000)).unwrap();
    assert_eq!(f.class, RateLimited);
    assert_eq!(f.code.as_deref(), Some("rate_limit_exceeded"));
    assert_eq!(f.retry.after, Some(Duration::from_secs(360)));

    let mut headers = HeaderMap::new();
    headers.insert(
        "retry-after",
        HeaderValue::from_static("Thu, 01 Jan 1970 00:17:00 GMT"),
    );
    let f = Failure::from_http_at(StatusCode::TOO_MANY_REQUESTS, &headers, b"", at(1_000)).unwrap();
    assert_eq!(f.retry.after, Some(Duration::from_secs(20)));
    assert_eq!(f.retry.until(at(1_000)), Some(at(1_020)));
}

#[test]
fn codex_headers_on_a_quota_answer() {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("x-codex-primary-used-percent", "100"),
        ("x-codex-primary-window-minutes", "10080"),
        ("x-codex-primary-reset-at", "1900600000"),
        ("x-codex-secondary-used-percent", "100"),
        ("x-codex-secondary-window-minutes", "300"),
        ("x-codex-secondary-reset-at", "1900000000"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    let body = br#"{"error":{"type":"usage_limit_reached","resets_at":1900000000}}"#;
    let f =
        Failure::from_http_at(StatusCode::TOO_MANY_REQUESTS, &headers, body, at(1_000)).unwrap();
    // The weekly reset, not the body's (earlier) 5-hour one.
    assert_eq!(f.retry.reset_at, Some(at(1_900_600_000)));
}

#[test]
fn bodies_of_every_shape() {
    let cases = [
        (502, "The usage limit has been reached", QuotaExhausted),
        (
            502,
            r#"{"detail":"The usage limit has been reached"}"#,
            QuotaExhausted,
        ),
        (
            502,
            r#"{"error":{"message":"The usage limit has been reached","type":"server_error"}}"#,
            QuotaExhausted,
        ),
        (502, "error code: 502", Transient),
        (
            503,
            "upstream connect error or disconnect/reset before headers",
            Overloaded,
        ),
        (429, "Too Many Requests", RateLimited),
        (404, r#"{"detail":"Not Found"}"#, RouteNotFound),
        (
            400,
            r#"{"detail":"Instructions are required"}"#,
            InvalidRequest,
        ),
        (
            401,
            r#"{"detail":{"code":"token_expired","message":"Provided authentication token is expired."}}"#,
            Auth,
        ),
        (
            402,
            r#"{"detail":{"code":"deactivated_workspace"}}"#,
            QuotaExhausted,
        ),
        (
            422,
            r#"{"detail":[{"loc":["body","input"],"msg":"Input must be a list","type":"value_error"}]}"#,
            InvalidRequest,
        ),
        (
            400,
            r#"{"message":"Invalid 'previous_response_id'.","code":"invalid_request_error"}"#,
            PreviousResponseNotFound,
        ),
        (
            400,
            r#"{"error":"Unsupported parameter: max_output_tokens"}"#,
            InvalidRequest,
        ),
        (
            400,
            "<html><head><title>400 Bad Request</title></head><body>nginx</body></html>",
            InvalidRequest,
        ),
        (404, "<html><body>nope</body></html>", RouteNotFound),
        (
            500,
            r#"{"error":{"message":"The server had an error processing your request. You can retry your request.","type":"server_error","code":null}}"#,
            Transient,
        ),
    ];
    for (code, body, want) in cases {
        assert_eq!(http_class(code, body), want, "{code} {body}");
    }
    assert_eq!(
        http(502, "error code: 502").unwrap().message.as_deref(),
        Some("error code: 502")
    );
    let html = http(400, "<html><title>\n 400  Bad Request </title></html>").unwrap();
    assert_eq!(html.message.as_deref(), Some("400 Bad Request"));
    let detail = http(400, r#"{"detail":{"code":"x","message":"m"}}"#).unwrap();
    assert_eq!(
        (detail.code.as_deref(), detail.message.as_deref()),
        (Some("x"), Some("m"))
    );
}

#[test]
fn successes_are_not_failures() {
    let cases = [
        (200, ""),
        (200, "not json"),
        (
            200,
            r#"{"id":"resp_1","object":"response","status":"completed","error":null}"#,
        ),
        (
            200,
            r#"{"id":"resp_1","status":"incomplete","incomplete_details":{"reason":"max_output_tokens"}}"#,
        ),
        (200, "event: response.created\ndata: {}\n\n"),
        (204, ""),
        (304, r#"{"error":{"code":"insufficient_quota"}}"#),
        (101, ""),
    ];
    for (code, body) in cases {
        assert_eq!(http(code, body), None, "{code} {body}");
    }
}

#[test]
fn failed_response_objects_in_a_200() {
    let f = http(
        200,
        r#"{"id":"resp_1","object":"response","status":"failed","error":{"code":"insufficient_quota","message":"You exceeded your current quota"}}"#,
    )
    .unwrap();
    assert_eq!(f.class, QuotaExhausted);
    assert_eq!(f.status, Some(StatusCode::OK));
    assert_eq!(f.code.as_deref(), Some("insufficient_quota"));

    let f = http(200, r#"{"status":"failed","error":{"message":"Rate limit reached. Please try again in 35 seconds."}}"#).unwrap();
    assert_eq!(
        (f.class, f.retry.after),
        (RateLimited, Some(Duration::from_secs(35)))
    );
    assert_eq!(
        http_class(200, r#"{"status":"failed","error":null}"#),
        Unknown
    );
    assert_eq!(http_class(200, r#"{"status":"cancelled"}"#), Cancelled);
    assert_eq!(
        http_class(
            200,
            r#"{"status":"incomplete","incomplete_details":{"reason":"usage_limit_reached"}}"#
        ),
        QuotaExhausted
    );
    assert_eq!(
        http_class(200, r#"{"error":{"code":"server_is_overloaded"}}"#),
        Overloaded
    );
}

#[test]
fn sse_events() {
    let f = sse(r#"{"type":"response.failed","sequence_number":9,"response":{"id":"resp_1","status":"failed","error":{"code":"usage_limit_reached","message":"The usage limit has been reached","type":"usage_limit_reached","resets_at":1900000000,"resets_in_seconds":60}}}"#).unwrap();
    assert_eq!(f.class, QuotaExhausted);
    assert_eq!(f.status, None);
    assert_eq!(f.origin, Origin::Stream);
    assert_eq!(
        f.retry,
        RetryHint {
            after: Some(Duration::from_secs(60)),
            reset_at: Some(at(1_900_000_000))
        }
    );

    // Top-level fields.
    let f = sse(r#"{"type":"error","code":"rate_limit_exceeded","message":"Slow down. Try again in 1.5s","param":null}"#).unwrap();
    assert_eq!(
        (f.class, f.retry.after),
        (RateLimited, Some(Duration::from_millis(1500)))
    );
    assert_eq!(f.kind, None, "the event type is not the error type");
    // Fields under "error", with a status.
    let f = sse(r#"{"type":"error","status":429,"error":{"type":"usage_limit_reached","message":"The usage limit has been reached","resets_in_seconds":120}}"#).unwrap();
    assert_eq!(f.class, QuotaExhausted);
    assert_eq!(f.status, Some(StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(f.retry.after, Some(Duration::from_secs(120)));
    let f =
        sse(r#"{"type":"error","message":"Request failed: credits have been exhausted"}"#).unwrap();
    assert_eq!(f.class, QuotaExhausted);
    assert_eq!(sse(r#"{"type":"error"}"#).unwrap().class, Unknown);
    assert_eq!(
        sse(r#"{"type":"response.failed","response":{"status":"failed"}}"#)
            .unwrap()
            .class,
        Unknown
    );

    let incomplete = |reason: &str| {
        sse(&format!(
            r#"{{"type":"response.incomplete","response":{{"status":"incomplete","incomplete_details":{{"reason":"{reason}"}}}}}}"#
        ))
    };
    assert_eq!(incomplete("max_output_tokens"), None);
    assert_eq!(incomplete("content_filter"), None);
    assert_eq!(incomplete("interrupted"), None);
    assert_eq!(
        incomplete("usage_limit_reached").unwrap().class,
        QuotaExhausted
    );
    assert_eq!(
        incomplete("insufficient_quota").unwrap().class,
        QuotaExhausted
    );
    assert_eq!(
        incomplete("rate_limit_exceeded").unwrap().class,
        RateLimited
    );
    assert_eq!(incomplete("quota").unwrap().code.as_deref(), Some("quota"));
    assert_eq!(
        sse(r#"{"type":"response.incomplete","response":{"status":"incomplete"}}"#),
        None
    );

    for other in [
        r#"{"type":"response.completed","response":{"status":"completed"}}"#,
        r#"{"type":"response.output_text.delta","delta":"error: rate limit"}"#,
        r#"{"type":"codex.rate_limits","primary":{"used_percent":100}}"#,
        r#"{"type":"response.created","response":{"status":"in_progress","error":null}}"#,
        "[DONE]",
        "",
    ] {
        assert_eq!(sse(other), None, "{other}");
    }
}

#[test]
fn transport_failures() {
    let stale = Failure::transport(true, "connection reset");
    assert_eq!(
        (stale.class, stale.origin, stale.status),
        (StaleConnection, Origin::Transport, None)
    );
    assert!(stale.retry_elsewhere() && !stale.cools_credential());
    let refused = Failure::transport(false, "connect refused");
    assert_eq!(refused.class, Transient);
    assert!(refused.retry_elsewhere());
    // The network's fault is not the credential's.
    assert!(!refused.cools_credential());
    assert_eq!(refused.to_string(), "transient: connect refused");
    assert!(http(500, "").unwrap().cools_credential());
}

#[test]
fn garbage_never_panics() {
    let deep = "[".repeat(100_000);
    let long_message = format!(r#"{{"error":{{"message":"{}"}}}}"#, "é".repeat(10_000));
    let inputs: Vec<Vec<u8>> = vec![
        b"\xff\xfe\x00garbage\xc3".to_vec(),
        deep.clone().into_bytes(),
        format!(r#"{{"error":{deep}"#).into_bytes(),
        br#"{"error":{"code":{"nested":true},"type":[1,2],"message":42,"resets_at":1e308}}"#
            .to_vec(),
        br#"{"error":{"message":"cut sho"#.to_vec(),
        br#"{"detail":[]}"#.to_vec(),
        br#"{"detail":null,"error":null}"#.to_vec(),
        br#"[1,2,3]"#.to_vec(),
        b"<title>".to_vec(),
        b"<title>unterminated".to_vec(),
        long_message.into_bytes(),
        vec![b'a'; 1 << 20],
        b"\xef\xbb\xbferror code: 520".to_vec(),
    ];
    for input in &inputs {
        for code in [200, 400, 429, 502] {
            let f = Failure::from_http_at(status(code), &HeaderMap::new(), input, at(0));
            if code >= 400 {
                let f = f.expect("an error status is always a failure");
                assert!(f.message.as_ref().is_none_or(|m| m.len() <= 1024));
            }
        }
        let _ = Failure::from_sse_data(input);
    }
    // A truncated JSON body still yields its text for phrase matching.
    assert_eq!(
        http_class(502, r#"{"error":{"message":"The usage limit has been rea"#),
        QuotaExhausted
    );
    assert_eq!(http_class(520, "\u{feff}error code: 520"), Transient);
    let f = http(400, r#"{"error":{"code":{"nested":true},"message":42}}"#).unwrap();
    assert_eq!(
        (f.class, f.code, f.message.as_deref()),
        (InvalidRequest, None, Some("42"))
    );
}
