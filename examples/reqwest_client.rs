//! tower-responses under your own `reqwest::Client`: its proxies, TLS roots and timeouts,
//! with the whole stack above it.
//!
//! ```text
//! cargo run --all-features --example reqwest_client                 # against the embedded mock
//! OPENAI_API_KEY=sk-... cargo run --all-features --example reqwest_client -- https://api.openai.com/v1
//! ```
//! Against the mock it also makes the first key's stream fail on quota and the pooled
//! connection go stale between two requests, and asserts that the client never notices.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_responses::body::ReplayBody;
use tower_responses::connect::ReqwestService;
use tower_responses::credentials::{Pool, PoolMember};
use tower_responses::marks::ServedBy;
use tower_responses::metrics::Metrics;
use tower_responses::stack::ResponsesStack;
use tower_responses::testing::{MockUpstream, Reply, StaleMode, events};

const KEY_A: &str = "sk-example-aaaaaaaaaaaaaaaa-AAAA";
const KEY_B: &str = "sk-example-bbbbbbbbbbbbbbbb-BBBB";

#[tokio::main]
async fn main() -> Result<(), tower_responses::error::BoxError> {
    let arg = std::env::args().nth(1);
    let mock = match arg {
        None => Some(MockUpstream::start().await?),
        Some(_) => None,
    };
    let base = arg.unwrap_or_else(|| mock.as_ref().map(|m| m.base_url()).unwrap_or_default());
    let keys = match std::env::var("OPENAI_API_KEY") {
        Ok(key) => vec![key],
        Err(_) => vec![KEY_A.to_string(), KEY_B.to_string()],
    };

    // Your client, configured as you like (here: idle connections go after 20 s, below
    // providers' idle limits; add `.proxy(..)`, `.add_root_certificate(..)`, timeouts). The
    // builder function runs twice: once for the pooled client, once for the unpooled one the
    // stale-connection retry uses.
    let client = ReqwestService::from_builder(|| {
        reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(20))
            .connect_timeout(Duration::from_secs(10))
    })?;
    let members = keys
        .iter()
        .map(|k| Ok(PoolMember::new(k.parse()?)))
        .collect::<Result<Vec<_>, tower_responses::error::BoxError>>()?;
    let metrics = Metrics::new();
    let stack = ResponsesStack::new()
        .pool(Arc::new(Pool::new(members)?))
        .metrics(metrics.clone())
        .reqwest(client);

    if let Some(mock) = &mock {
        // The first key's stream fails on quota after its lifecycle events; the mock drops
        // any connection that idled 300 ms after reading the next request on it.
        mock.push_for(
            KEY_A,
            Reply::sse(vec![
                events::created("resp_q"),
                events::in_progress("resp_q"),
                events::failed(
                    "resp_q",
                    "insufficient_quota",
                    "You exceeded your current quota",
                ),
            ]),
        );
        mock.set_stale(Duration::from_millis(300), StaleMode::Reset);
    }

    let mut served = Vec::new();
    for i in 0..2 {
        if i > 0 && mock.is_some() {
            // Long enough for the pooled connection to go stale at the mock.
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        let req = http::Request::post(format!("{base}/responses"))
            .header("content-type", "application/json")
            .body(ReplayBody::new(
                r#"{"model":"gpt-5.5","stream":true,"input":"Write one sentence about reqwest."}"#,
            ))?;
        let res = stack.clone().oneshot(req).await?;
        let by = res.extensions().get::<ServedBy>().map(|s| s.0.to_string());
        println!("request {i}: status {} served by {by:?}", res.status());
        assert_eq!(res.status(), 200);
        let text = res.into_body().collect().await?.to_bytes();
        let text = String::from_utf8_lossy(&text);
        assert!(text.contains("response.completed"), "{text}");
        assert!(!text.contains("response.failed"), "{text}");
        served.push(by);
    }

    if let Some(mock) = mock {
        let retries = metrics.total("tr_fresh_retries_total");
        println!(
            "upstream saw {} requests; {retries} stale-connection retry",
            mock.request_count()
        );
        // Request 0: the first key's quota failure, then the second key. Request 1: the
        // second key on the pooled connection, which went stale, then on a fresh one.
        // Labels come from kind and position, never from the key: the second key is key-2.
        assert!(served.iter().all(|s| s.as_deref() == Some("key-2")));
        assert_eq!(retries, 1.0);
        assert_eq!(mock.request_count(), 4);
        mock.shutdown().await;
    }
    Ok(())
}
