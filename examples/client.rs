//! tower-responses on the client side, no proxy: a hyper-util client wrapped in the stack,
//! used directly from Rust code to stream a response.
//!
//! ```text
//! cargo run --all-features --example client                     # against the embedded mock
//! OPENAI_API_KEY=sk-... cargo run --all-features --example client -- https://api.openai.com/v1
//! ```

use std::sync::Arc;

use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_responses::body::ReplayBody;
use tower_responses::connect::UpstreamClientBuilder;
use tower_responses::credentials::{Pool, PoolMember};
use tower_responses::sse::SseDecoder;
use tower_responses::stack::ResponsesStack;
use tower_responses::testing::MockUpstream;

#[tokio::main]
async fn main() -> Result<(), tower_responses::error::BoxError> {
    let arg = std::env::args().nth(1);
    let mock = if arg.is_none() {
        Some(MockUpstream::start().await?)
    } else {
        None
    };
    let base = arg.unwrap_or_else(|| mock.as_ref().map(|m| m.base_url()).unwrap_or_default());
    let key =
        std::env::var("OPENAI_API_KEY").unwrap_or_else(|_| "sk-example-key-for-the-mock".into());

    // One line for the stack; a pool of one credential turns on rotation and continuity.
    let pool = Arc::new(Pool::new(vec![PoolMember::new(key.parse()?)])?);
    let stack = ResponsesStack::new()
        .pool(pool)
        .client(&UpstreamClientBuilder::new());

    let req = http::Request::post(format!("{base}/responses"))
        .header("content-type", "application/json")
        .body(ReplayBody::new(
            r#"{"model":"gpt-5.5","stream":true,"input":"Write one sentence about tower middleware."}"#,
        ))?;
    let res = stack.oneshot(req).await?;
    println!("status: {}", res.status());

    // Read the stream event by event as it arrives.
    let mut body = res.into_body();
    let mut decoder = SseDecoder::new();
    let mut text = String::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        decoder.push(data);
        while let Some(ev) = decoder.next_event()? {
            let v: serde_json::Value = serde_json::from_slice(&ev.data)?;
            match ev.event_type() {
                Some("response.output_text.delta") => {
                    let delta = v["delta"].as_str().unwrap_or_default();
                    print!("{delta}");
                    text.push_str(delta);
                }
                Some("response.completed") => {
                    println!("\nusage: {}", v["response"]["usage"]);
                }
                _ => {}
            }
        }
    }
    assert!(!text.is_empty(), "the stream carried text");
    Ok(())
}
