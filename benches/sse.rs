//! Throughput of SSE decoding on a realistic Responses stream, and of type sniffing alone.
// `criterion_group!` generates a public function without docs.
#![allow(missing_docs)]

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tower_responses::sse::{EventKind, SseDecoder, sniff_type};

const ITEM: &str = "msg_68a1f0c5d2e08190b7c6a5b4c3d2e1f0";
const CALL: &str = "fc_68a1f0c7f3a48190a1b2c3d4e5f60718";
const WORDS: [&str; 12] = [
    " the",
    " decoder",
    " keeps",
    " \\\"raw\\\"",
    " bytes",
    ",\\n",
    " résumé",
    " 🚀",
    " `next_event()`",
    " so",
    " that",
    " retries",
];

/// About 4 MB of `event:`/`data:` pairs shaped like a Codex answer: lifecycle events, then
/// mostly `response.output_text.delta` (150 to 300 bytes each) with runs of larger
/// `response.function_call_arguments.delta`, then `response.completed`.
fn stream() -> (Bytes, usize) {
    let mut out = String::with_capacity(4 << 20);
    let mut events = 0;
    let mut push = |out: &mut String, ty: &str, json: String| {
        out.push_str("event: ");
        out.push_str(ty);
        out.push_str("\ndata: ");
        out.push_str(&json);
        out.push_str("\n\n");
        events += 1;
    };
    let response = r#"{"id":"resp_68a1f0c2e9b88190a4c1d2e3f4a5b6c7","object":"response","created_at":1755426498,"status":"in_progress","model":"gpt-5-codex","output":[],"usage":null}"#;
    push(
        &mut out,
        "response.created",
        format!(r#"{{"type":"response.created","sequence_number":0,"response":{response}}}"#),
    );
    push(
        &mut out,
        "response.in_progress",
        format!(r#"{{"type":"response.in_progress","sequence_number":1,"response":{response}}}"#),
    );
    let mut seq = 2u64;
    while out.len() < 4 << 20 {
        seq += 1;
        if seq % 50 < 5 {
            let args = r#"{\"command\":[\"bash\",\"-lc\",\"cargo test -q --lib sse 2>&1 | tail -n 40\"],\"workdir\":\"/work/wt/sse\"}"#.repeat(4);
            let json = format!(
                r#"{{"type":"response.function_call_arguments.delta","sequence_number":{seq},"item_id":"{CALL}","output_index":2,"delta":"{args}","obfuscation":"Qw"}}"#
            );
            push(&mut out, "response.function_call_arguments.delta", json);
        } else {
            let n = (seq % 7 + 1) as usize;
            let delta: String = (0..n)
                .map(|k| WORDS[(seq as usize + k) % WORDS.len()])
                .collect();
            let json = format!(
                r#"{{"type":"response.output_text.delta","sequence_number":{seq},"item_id":"{ITEM}","output_index":1,"content_index":0,"delta":"{delta}","logprobs":[],"obfuscation":"aB3dE5gH"}}"#
            );
            push(&mut out, "response.output_text.delta", json);
        }
    }
    let completed = r#"{"type":"response.completed","response":{"id":"resp_68a1f0c2e9b88190a4c1d2e3f4a5b6c7","status":"completed","usage":{"input_tokens":18234,"input_tokens_details":{"cached_tokens":17920},"output_tokens":912,"total_tokens":19146}}}"#;
    push(&mut out, "response.completed", completed.to_owned());
    (Bytes::from(out), events)
}

fn decode(c: &mut Criterion) {
    let (input, events) = stream();
    let chunks: Vec<Bytes> = (0..input.len())
        .step_by(16 * 1024)
        .map(|start| input.slice(start..(start + 16 * 1024).min(input.len())))
        .collect();

    let mut group = c.benchmark_group("sse");
    group.throughput(Throughput::Bytes(input.len() as u64));
    group.bench_function("decode_16k_chunks_and_sniff", |b| {
        b.iter(|| {
            let mut decoder = SseDecoder::new();
            let (mut seen, mut content) = (0, 0);
            for chunk in &chunks {
                decoder.push(chunk.clone());
                while let Some(event) = decoder.next_event().unwrap() {
                    seen += 1;
                    content += usize::from(event.kind() == EventKind::Content);
                    black_box(&event);
                }
            }
            assert!(decoder.finish().unwrap().is_none());
            assert_eq!(seen, events);
            content
        })
    });

    let datas: Vec<Bytes> = {
        let mut decoder = SseDecoder::new();
        decoder.push(input.clone());
        std::iter::from_fn(|| decoder.next_event().unwrap())
            .map(|e| e.data)
            .collect()
    };
    group.throughput(Throughput::Elements(datas.len() as u64));
    group.bench_function("sniff_type_first", |b| {
        b.iter(|| {
            datas
                .iter()
                .filter_map(|d| sniff_type(black_box(d)))
                .map(str::len)
                .sum::<usize>()
        })
    });

    // `type` after a nested object: the walk that skips top-level values.
    let late: Vec<Vec<u8>> = datas
        .iter()
        .take(2000)
        .map(|d| {
            let mut v =
                br#"{"response":{"id":"resp_1","output":[{"type":"message","content":["a\"}"]}]},"#
                    .to_vec();
            v.extend_from_slice(&d[1..]);
            v
        })
        .collect();
    group.throughput(Throughput::Elements(late.len() as u64));
    group.bench_function("sniff_type_late", |b| {
        b.iter(|| {
            late.iter()
                .filter_map(|d| sniff_type(black_box(d)))
                .map(str::len)
                .sum::<usize>()
        })
    });
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
