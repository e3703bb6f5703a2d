//! An existing axum app that mounts the tower-responses stack under `/v1` beside its own
//! routes, so its users can point a Responses client (the Codex CLI, an SDK) at it.
//!
//! ```text
//! cargo run --all-features --example axum_app            # against the embedded mock upstream
//! UPSTREAM=https://api.openai.com/v1 cargo run --all-features --example axum_app -- --serve
//! ```
//! Without `--serve` it starts the test-util mock upstream, serves the app on 127.0.0.1:0,
//! sends one streamed Responses request through `/v1/responses`, prints the answer, and exits.

use axum::Router;
use axum::routing::get;
use http_body_util::BodyExt;
use tower_responses::connect::UpstreamClientBuilder;
use tower_responses::stack::{Forward, ResponsesStack};
use tower_responses::testing::MockUpstream;

#[tokio::main]
async fn main() -> Result<(), tower_responses::error::BoxError> {
    let serve = std::env::args().any(|a| a == "--serve");
    let mock = if serve {
        None
    } else {
        Some(MockUpstream::start().await?)
    };
    let upstream = match (&mock, std::env::var("UPSTREAM")) {
        (Some(m), _) => m.base_url(),
        (None, Ok(url)) => url,
        (None, Err(_)) => "https://api.openai.com/v1".to_string(),
    };

    // The whole stack, one line; Forward adapts it to axum's request body.
    let stack = ResponsesStack::new().client(&UpstreamClientBuilder::new());
    let responses = Forward::new(stack, &upstream)?;

    let app = Router::new()
        .route("/", get(|| async { "my app's own page" }))
        .route("/health", get(|| async { "ok" }))
        .nest_service("/v1", responses);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    println!("app listening on http://{addr} (Responses API under /v1, upstream {upstream})");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    if serve {
        server.await??;
        return Ok(());
    }

    // One request through the app, as a client would send it.
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let own = client.get(format!("http://{addr}/").parse()?).await?;
    let own_text = own.into_body().collect().await?.to_bytes();
    let req = http::Request::post(format!("http://{addr}/v1/responses"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            br#"{"model":"gpt-5.5","stream":true,"input":"Say hello from axum"}"#,
        )))?;
    let res = client.request(req).await?;
    let status = res.status();
    let body = res.into_body().collect().await?.to_bytes();
    let text: String = String::from_utf8_lossy(&body)
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter(|v| v["type"] == "response.output_text.delta")
        .filter_map(|v| v["delta"].as_str().map(str::to_string))
        .collect();
    println!("GET / -> {}", String::from_utf8_lossy(&own_text));
    println!("POST /v1/responses -> {status}: {text}");
    assert_eq!(&own_text[..], b"my app's own page");
    assert!(
        status.is_success() && !text.is_empty(),
        "the stack answered through the app"
    );
    server.abort();
    Ok(())
}
