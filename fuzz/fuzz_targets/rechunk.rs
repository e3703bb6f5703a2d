//! The re-framing of upstream chunked bodies below hyper (`connect::rechunk`): hyper reads
//! the same connection through it as without it.
//!
//! Input: a byte for the method, a byte for how many reads the bytes are split into, that many
//! bytes placing the splits, then the upstream's answer. It is the second exchange on its
//! connection, after a well-formed chunked answer, and the upstream closes after it. Checked:
//! hyper's client sees the same responses, statuses, body data, trailers and failures both
//! ways (the oracle is hyper's own decoder), and nothing panics or stalls.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_responses::__fuzz::{RechunkExchange, rechunk_run};
use tower_responses_fuzz::Cursor;

const FIRST: &[u8] =
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n";

fuzz_target!(|data: &[u8]| {
    let mut input = Cursor::new(data);
    let method = ["POST", "GET", "HEAD"][usize::from(input.byte() % 3)];
    let count = usize::from(input.byte() % 16);
    let splits: Vec<u8> = input.take(count).to_vec();
    let answer = input.rest();

    let mut cuts: Vec<usize> = splits
        .iter()
        .map(|&b| usize::from(b) * answer.len() / 256)
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut pieces = Vec::new();
    let mut from = 0;
    for cut in cuts {
        if cut > from {
            pieces.push(answer[from..cut].to_vec());
            from = cut;
        }
    }
    if from < answer.len() {
        pieces.push(answer[from..].to_vec());
    }
    pieces.push(Vec::new());

    let exchanges = [
        RechunkExchange {
            method: "POST",
            pieces: vec![FIRST.to_vec()],
        },
        RechunkExchange { method, pieces },
    ];
    let (straight, _) = rechunk_run(&exchanges, false);
    let (through, _) = rechunk_run(&exchanges, true);
    assert_eq!(through, straight);
});
