//! The re-framing against hyper reading the same bytes straight (see `oracle`).

use super::oracle::{Exchange, run};

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Data with the bytes that matter to chunked framing in it.
fn data(rng: &mut Rng, len: usize) -> Vec<u8> {
    const ALPHABET: &[u8] = b"data: {\"delta\":\"x\"}\r\n0\r\n\r\nabc;= \t";
    (0..len)
        .map(|_| ALPHABET[rng.below(ALPHABET.len())])
        .collect()
}

/// A chunked body of `n` chunks; `size_line` writes each chunk's line (the default: lower-case
/// hex and CRLF).
fn chunked(
    rng: &mut Rng,
    n: usize,
    size_line: &mut dyn FnMut(&mut Rng, usize, usize) -> Vec<u8>,
) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        // Now and then a chunk longer than hyper's read buffer: a read inside it comes out
        // longer than it went in (its own size line), and the rest waits for the next read.
        let max = match rng.below(40) {
            0 => 70_000,
            1..=5 => 2000,
            _ => 90,
        };
        let len = 1 + rng.below(max);
        out.extend_from_slice(&size_line(rng, i, len));
        out.extend_from_slice(&data(rng, len));
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn plain_line(_: &mut Rng, _: usize, len: usize) -> Vec<u8> {
    format!("{len:x}\r\n").into_bytes()
}

const CHUNKED: &str =
    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";

/// One upstream answer of a kind picked by the generator, with the request it answers.
fn answer(rng: &mut Rng) -> (&'static str, Vec<u8>) {
    let n = 1 + rng.below(70);
    let mut method = if rng.below(2) == 0 { "POST" } else { "GET" };
    let mut bytes = Vec::new();
    match rng.below(18) {
        // The common answer, in several spellings of the size line hyper and nginx write.
        0..=4 => {
            bytes.extend_from_slice(CHUNKED.as_bytes());
            let style = rng.below(3);
            bytes.extend(chunked(rng, n, &mut |_, _, len| match style {
                0 => format!("{len:x}\r\n").into_bytes(),
                1 => format!("{len:X}\r\n").into_bytes(),
                _ => format!("{len:06x}\r\n").into_bytes(),
            }));
            bytes.extend_from_slice(b"0\r\n\r\n");
        }
        5 => {
            let body = {
                let len = rng.below(3000);
                data(rng, len)
            };
            bytes.extend(
                format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes(),
            );
            bytes.extend(body);
        }
        6 => bytes.extend_from_slice(b"HTTP/1.1 204 No Content\r\n\r\n"),
        7 => {
            bytes.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            bytes.extend_from_slice(CHUNKED.as_bytes());
            bytes.extend(chunked(rng, n, &mut plain_line));
            bytes.extend_from_slice(b"0\r\n\r\n");
        }
        8 => {
            method = "HEAD";
            bytes.extend_from_slice(CHUNKED.as_bytes());
        }
        // Size lines this module hands to hyper: extensions, spaces, a bare LF, too many digits.
        9 => {
            bytes.extend_from_slice(CHUNKED.as_bytes());
            let odd = rng.below(n);
            let kind = rng.below(5);
            bytes.extend(chunked(rng, n, &mut |_, i, len| {
                if i != odd {
                    return format!("{len:x}\r\n").into_bytes();
                }
                match kind {
                    0 => format!("{len:x};name=value\r\n"),
                    1 => format!("{len:x} \r\n"),
                    2 => format!("{len:x}\n"),
                    3 => format!("{len:020x}\r\n"),
                    _ => format!("{len:x}\r\r\n"),
                }
                .into_bytes()
            }));
            bytes.extend_from_slice(b"0\r\n\r\n");
        }
        10 => {
            bytes.extend_from_slice(CHUNKED.as_bytes());
            bytes.extend(chunked(rng, n, &mut plain_line));
            bytes.extend_from_slice(b"0\r\nx-checksum: abc\r\nx-more: 1\r\n\r\n");
        }
        11 => {
            let te = ["gzip, chunked", "chunked, gzip", "identity"][rng.below(3)];
            bytes
                .extend(format!("HTTP/1.1 200 OK\r\ntransfer-encoding: {te}\r\n\r\n").into_bytes());
            bytes.extend(chunked(rng, n, &mut plain_line));
            bytes.extend_from_slice(b"0\r\n\r\n");
            bytes.push(0xff); // marks the close below
        }
        12 => {
            bytes.extend_from_slice(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n",
            );
            bytes.extend(chunked(rng, n, &mut plain_line));
            bytes.extend_from_slice(b"0\r\n\r\n");
        }
        13 => {
            let body = {
                let len = rng.below(500);
                data(rng, len)
            };
            bytes.extend(
                format!("HTTP/1.0 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes(),
            );
            bytes.extend(body);
        }
        // A body to the close, and a chunked one cut anywhere.
        14 | 15 => {
            if rng.below(2) == 0 {
                bytes.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\n");
                bytes.extend({
                    let len = rng.below(2000);
                    data(rng, len)
                });
            } else {
                bytes.extend_from_slice(CHUNKED.as_bytes());
                let body = chunked(rng, n, &mut plain_line);
                let cut = rng.below(body.len() + 1);
                bytes.extend_from_slice(&body[..cut]);
            }
            bytes.push(0xff);
        }
        // Broken framing after a chunk's data.
        16 => {
            bytes.extend_from_slice(CHUNKED.as_bytes());
            let mut body = chunked(rng, n, &mut plain_line);
            let last = body.len() - 2;
            body[last + rng.below(2)] = [b'0', b'X', b'\n'][rng.below(3)];
            bytes.extend(body);
            bytes.extend_from_slice(b"\r\n\r\n0\r\n\r\n");
        }
        _ => {
            bytes.extend_from_slice(
                b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n",
            );
        }
    }
    (method, bytes)
}

/// Splits an answer into reads; a trailing 0xff marker becomes the upstream closing.
fn pieces(rng: &mut Rng, mut bytes: Vec<u8>) -> Vec<Vec<u8>> {
    let close = bytes.last() == Some(&0xff);
    if close {
        bytes.pop();
    }
    let mut cuts: Vec<usize> = match rng.below(4) {
        0 => vec![],
        1 if bytes.len() < 400 => (1..bytes.len()).collect(),
        _ => (0..1 + rng.below(8))
            .map(|_| rng.below(bytes.len().max(1)))
            .collect(),
    };
    cuts.sort_unstable();
    cuts.dedup();
    let mut out = Vec::new();
    let mut from = 0;
    for cut in cuts {
        if cut > from {
            out.push(bytes[from..cut].to_vec());
            from = cut;
        }
    }
    out.push(bytes[from..].to_vec());
    out.retain(|p| !p.is_empty());
    if close {
        out.push(Vec::new());
    }
    out
}

#[test]
fn hyper_reads_the_same_responses_through_the_re_framing_as_without_it() {
    let mut checked = 0;
    for seed in 0..600 {
        let mut rng = Rng(seed);
        let exchanges: Vec<Exchange> = (0..1 + rng.below(4))
            .map(|_| {
                let (method, bytes) = answer(&mut rng);
                Exchange {
                    method,
                    pieces: pieces(&mut rng, bytes),
                }
            })
            .collect();
        let (straight, _) = run(&exchanges, false);
        let (through, _) = run(&exchanges, true);
        assert_eq!(through, straight, "seed {seed}");
        checked += straight.len();
    }
    assert!(checked > 1000);
}

#[test]
fn the_chunks_of_one_read_reach_hyper_as_one() {
    // Sixty events of 250 bytes, each its own chunk, as a hyper upstream writes them.
    let mut rng = Rng(7);
    let mut bytes = CHUNKED.as_bytes().to_vec();
    for _ in 0..60 {
        bytes.extend_from_slice(b"fa\r\n");
        bytes.extend(data(&mut rng, 250));
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b"0\r\n\r\n");
    // Two exchanges on one connection: the second is re-framed too, so the first ended cleanly.
    let exchanges = [
        Exchange {
            method: "POST",
            pieces: vec![bytes.clone()],
        },
        Exchange {
            method: "POST",
            pieces: vec![
                bytes[..bytes.len() / 2].to_vec(),
                bytes[bytes.len() / 2..].to_vec(),
            ],
        },
    ];
    let (straight, alone) = run(&exchanges, false);
    let (through, rechunked) = run(&exchanges, true);
    assert_eq!(through, straight);
    assert!(
        alone.frames >= 120,
        "hyper alone: a frame per chunk, {alone:?}"
    );
    assert!(
        rechunked.frames <= rechunked.reads,
        "a frame per read: {rechunked:?}"
    );
    assert!(rechunked.reads < 10, "{rechunked:?}");
}

#[test]
fn a_head_request_turns_the_re_framing_off_for_the_connection() {
    let mut rng = Rng(9);
    let mut body = CHUNKED.as_bytes().to_vec();
    body.extend(chunked(&mut rng, 10, &mut plain_line));
    body.extend_from_slice(b"0\r\n\r\n");
    let exchanges = [
        Exchange {
            method: "HEAD",
            pieces: vec![CHUNKED.as_bytes().to_vec()],
        },
        Exchange {
            method: "POST",
            pieces: vec![body],
        },
    ];
    let (straight, _) = run(&exchanges, false);
    let (through, counts) = run(&exchanges, true);
    assert_eq!(through, straight);
    assert_eq!(counts.frames, 10, "hyper decodes the chunks itself");
}
