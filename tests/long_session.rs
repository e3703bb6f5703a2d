//! A simulated 10,000-turn Codex session through the proxy: memory flat, per-turn input flat,
//! metrics bounded.
//!
//! The client behaves as the Codex CLI does: every turn sends only its new message with
//! `previous_response_id` set to the last completed response; a `502` (a transport loss) is
//! retried as is; a `400 previous_response_not_found` makes it drop the anchor and resend its
//! whole history, which is seed 003's context blowup (~70K tokens a turn instead of 2-3K).
//! The upstream is the platform-like [`ResponseStore`] (2,300 input tokens per item, seed
//! 003's healthy per-turn figure) with two credentials and a loss every 50 turns, so the
//! owner pinning and the loss mapping are both exercised at every step.
//!
//! The process holds the proxy, the mock and the client, so the client rebuilds its history
//! only when it must resend it and the mock's store keeps the latest ids only: what the RSS
//! readings can still grow by is the proxy's.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::StatusCode;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower_responses::sse::SseDecoder;
use tower_responses::testing::{Fault, MockUpstream, Reply, ResponseStore};

const TURNS: u64 = 10_000;
const TOKENS_PER_ITEM: u64 = 2_300;
/// Every this many upstream requests, one is lost: the connection closes as the request lands
/// (a reused connection: the stale-connection retry sends it again unseen), or, every
/// [`WORKED_EVERY`]th time, after the upstream worked on it (the client gets a `502`).
const LOSS_EVERY: u64 = 50;
const WORKED_EVERY: u64 = 10;
/// Turns at which memory is read.
const CHECKPOINTS: [u64; 4] = [1_000, 4_000, 7_000, TURNS];

/// How much RSS may grow from turn 1,000 to the end (the proxy's owner map's share, with room
/// for the allocator).
const MAX_GROWTH_MIB: u64 = 4;
/// Ids the mock's store keeps: far fewer than the turns, so the mock's memory is flat.
const STORE_CAPACITY: usize = 1_000;

/// The user message of `turn`.
fn message(turn: u64) -> Value {
    json!({"type": "message", "role": "user",
        "content": [{"type": "input_text", "text": format!("turn {turn}: next step")}]})
}

/// Metric series the proxy exports (sample lines of its scrape).
fn series(proxy: &RunningProxy) -> usize {
    proxy
        .metrics
        .render()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .count()
}

/// The completed response's id and its `usage.input_tokens`, from a stream.
fn completed(body: &Bytes) -> Option<(String, u64)> {
    let mut d = SseDecoder::new();
    d.push(body.clone());
    let mut out = None;
    while let Ok(Some(ev)) = d.next_event() {
        if ev.event_type() == Some("response.completed") {
            let v: Value = serde_json::from_slice(&ev.data).ok()?;
            out = Some((
                v["response"]["id"].as_str()?.to_owned(),
                v["response"]["usage"]["input_tokens"].as_u64()?,
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_turns_keep_memory_input_and_metrics_flat() {
    let mock = MockUpstream::start().await.unwrap();
    // The store keeps the latest ids only (the client anchors on the last one), so what the
    // mock holds stays flat and the memory readings are about the proxy.
    let store = ResponseStore::with_capacity(TOKENS_PER_ITEM, STORE_CAPACITY);
    let upstream_requests = Arc::new(AtomicU64::new(0));
    let losses = Arc::new(AtomicU64::new(0));
    {
        let (store, n, losses) = (store.clone(), upstream_requests.clone(), losses.clone());
        mock.set_handler(move |r| {
            let i = n.fetch_add(1, Ordering::Relaxed);
            if i % LOSS_EVERY == LOSS_EVERY - 1 {
                let worked = (i / LOSS_EVERY) % WORKED_EVERY == 0;
                // On a fresh connection even an instant close may have been worked on: the
                // proxy cannot tell, and answers 502 too.
                if worked || r.conn_request_index == 0 {
                    losses.fetch_add(1, Ordering::Relaxed);
                }
                // Past the fresh-connection layer's 250 ms "never started" window.
                let after = if worked { 300 } else { 0 };
                return Some(Reply::fault(Fault::CloseAfterWorking(
                    Duration::from_millis(after),
                )));
            }
            store.answer(r)
        });
    }
    let mut cfg = config_for(mock.base_url());
    cfg.credentials = vec!["sk-one".parse().unwrap(), "sk-two".parse().unwrap()];
    let proxy = start_proxy(cfg).await;
    let c = client();
    let url = proxy.url("/v1/responses");

    let mut prev: Option<String> = None;
    let (mut retries, mut resends, mut max_input) = (0u64, 0u64, 0u64);
    let mut readings: Vec<(u64, u64, usize)> = Vec::new();
    let started = Instant::now();
    for turn in 1..=TURNS {
        let new = message(turn);
        let mut attempts = 0;
        let input_tokens = loop {
            attempts += 1;
            assert!(attempts <= 5, "turn {turn} never completed");
            let input = match prev {
                Some(_) => vec![new.clone()],
                // The history is rebuilt when needed, not kept: 10,000 `Value`s are ~15 MiB of
                // test memory that would hide the proxy's in the readings.
                None => (1..=turn).map(message).collect(),
            };
            let mut body = json!({"model": "gpt-5", "stream": true, "store": true,
                "prompt_cache_key": "long-session", "input": input});
            if let Some(p) = &prev {
                body["previous_response_id"] = json!(p);
            }
            let res = send(&c, json_req(&url, None, body)).await;
            let status = res.status();
            let bytes = res.into_body().collect().await.unwrap().to_bytes();
            match status {
                StatusCode::OK => {
                    let (id, tokens) = completed(&bytes).unwrap_or_else(|| {
                        panic!("turn {turn}: {}", String::from_utf8_lossy(&bytes))
                    });
                    prev = Some(id);
                    break tokens;
                }
                StatusCode::BAD_GATEWAY => retries += 1, // a loss: Codex retries as is
                _ if error_code(&bytes).as_deref() == Some("previous_response_not_found") => {
                    // What Codex does: forget the anchor, resend everything.
                    resends += 1;
                    prev = None;
                }
                _ => panic!("turn {turn}: {status} {}", String::from_utf8_lossy(&bytes)),
            }
        };
        max_input = max_input.max(input_tokens);
        // The mock records every request; the proxy's memory is what is measured.
        if turn % 100 == 0 {
            mock.clear_requests();
        }
        if CHECKPOINTS.contains(&turn) {
            readings.push((turn, rss(), series(&proxy)));
        }
    }
    let took = started.elapsed();
    let (_, rss_1000, series_1000) = readings[0];
    let (_, rss_end, series_end) = readings[readings.len() - 1];
    let mib: Vec<String> = readings
        .iter()
        .map(|(t, r, _)| format!("{t}: {} MiB", r >> 20))
        .collect();
    eprintln!("RSS by turn: {}", mib.join(", "));
    eprintln!(
        "{TURNS} turns in {took:?}: {} losses after work, {retries} retries, {resends} full resends, max \
         input {max_input} tokens/turn, RSS {} -> {} MiB (turn 1,000 -> {TURNS}), {series_1000} \
         -> {series_end} metric series",
        losses.load(Ordering::Relaxed),
        rss_1000 >> 20,
        rss_end >> 20
    );
    assert!(losses.load(Ordering::Relaxed) >= TURNS / LOSS_EVERY / WORKED_EVERY - 1);
    assert_eq!(
        retries,
        losses.load(Ordering::Relaxed),
        "every loss after work was a retryable 502, every other one retried unseen"
    );
    assert_eq!(resends, 0, "a loss made the client resend its history");
    // Flat: one item's worth, every turn (the first turn sent one item too).
    assert_eq!(max_input, TOKENS_PER_ITEM, "per-turn input grew");
    // The test's own state is flat (history rebuilt on demand, a bounded store), so growth here
    // is the proxy's. Measured: 18 -> 20 MiB; the 2 MiB is the proxy's owner map (every
    // response id and its credential, ~230 bytes each), which is bounded (100,000 ids, 7 days)
    // and only 10% full at 10,000 turns. Before the mock and the test were bounded this process
    // grew 20 -> 37 MiB, which hid anything the proxy did.
    assert!(
        rss_end < rss_1000 + (MAX_GROWTH_MIB << 20),
        "memory grew by {} MiB over 9,000 turns",
        (rss_end.saturating_sub(rss_1000)) >> 20
    );
    assert_eq!(store.len(), STORE_CAPACITY, "the mock's store is bounded");
    assert_eq!(
        series_end, series_1000,
        "the metric series grew with the turns"
    );
}
