//! `Content-Encoding` decoding with the output bounded, so a small body cannot expand into
//! gigabytes (a decompression bomb).

use std::io::{self, Read};

use bytes::Bytes;
use flate2::{Decompress, FlushDecompress, Status};
use http::HeaderValue;

use super::BodyError;

/// The largest first output buffer and the smallest step it grows by; growth otherwise doubles.
const READ_STEP: usize = 64 * 1024;

/// The most output [`decode_off_runtime`] produces on an async worker (a millisecond or two
/// of work); larger bodies are decoded on the blocking pool.
pub const INLINE_DECODE_LIMIT: usize = 1024 * 1024;

/// Decodes `body` according to a `Content-Encoding` value, producing at most `limit` bytes.
///
/// Supported: `zstd`, `gzip` / `x-gzip` (several members are decoded one after another),
/// `deflate` (zlib-wrapped as RFC 9110 says; raw deflate, which some clients send, is accepted
/// too), `br` and `identity`. Names are case-insensitive; a comma-separated list was applied
/// left to right, so it is undone right to left. Every step stops once its output passes
/// `limit`, so no output buffer ever exceeds `limit + 1` bytes; a zstd frame that declares
/// a content size above the limit fails before decoding. An empty body decodes to an empty
/// body whatever the encoding.
///
/// # Errors
///
/// [`BodyError::UnsupportedEncoding`] for an unknown name (checked before any work),
/// [`BodyError::TooLarge`] when the output passes `limit`, and [`BodyError::Decode`] for data
/// that is not valid in its encoding, truncated, or followed by stray bytes.
pub fn decode(encoding: &HeaderValue, body: Bytes, limit: usize) -> Result<Bytes, BodyError> {
    let Ok(value) = encoding.to_str() else {
        return Err(BodyError::UnsupportedEncoding(
            String::from_utf8_lossy(encoding.as_bytes()).into_owned(),
        ));
    };
    let steps = value
        .split(',')
        .map(|name| name.trim_matches([' ', '\t']))
        .filter(|name| !name.is_empty())
        .map(|name| {
            Coding::parse(name).ok_or_else(|| BodyError::UnsupportedEncoding(name.to_owned()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    run(&steps, body, limit)
}

fn run(steps: &[Coding], body: Bytes, limit: usize) -> Result<Bytes, BodyError> {
    let mut body = body;
    for coding in steps.iter().rev() {
        body = coding.decode(body, limit)?;
    }
    Ok(body)
}

/// [`decode`], without holding an async worker for long.
///
/// Decoding 32 MiB of zstd or gzip takes tens of milliseconds, during which a runtime worker
/// would serve no other request (and a tiny zstd or brotli bomb can ask for that much). So
/// the body is first decoded in place with the output capped at [`INLINE_DECODE_LIMIT`];
/// only if it is larger is it decoded again, with the real `limit`, on tokio's blocking pool.
/// A large body thus costs at most 1 MiB of repeated work; the many small ones cost no thread
/// hop. Outside a tokio runtime everything runs in place.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use tower_responses::body::decode_off_runtime;
///
/// let big = vec![b'x'; 3 << 20];
/// let zstd = zstd::encode_all(&big[..], 1).unwrap();
/// let out = decode_off_runtime(&"zstd".parse().unwrap(), zstd.into(), 32 << 20).await.unwrap();
/// assert_eq!(out.len(), big.len());
/// # }
/// ```
///
/// # Errors
///
/// As [`decode`].
pub async fn decode_off_runtime(
    encoding: &HeaderValue,
    body: Bytes,
    limit: usize,
) -> Result<Bytes, BodyError> {
    let inline = limit.min(INLINE_DECODE_LIMIT);
    match decode(encoding, body.clone(), inline) {
        Err(BodyError::TooLarge { .. }) if limit > inline => {}
        done => return done,
    }
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return decode(encoding, body, limit);
    };
    let encoding = encoding.clone();
    let name = String::from_utf8_lossy(encoding.as_bytes()).into_owned();
    handle
        .spawn_blocking(move || decode(&encoding, body, limit))
        .await
        .unwrap_or_else(|_| {
            Err(BodyError::Decode {
                encoding: name,
                source: io::Error::other("the decoder stopped unexpectedly"),
            })
        })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    Identity,
    Zstd,
    Gzip,
    Deflate,
    Brotli,
}

impl Coding {
    fn parse(name: &str) -> Option<Self> {
        const NAMES: [(&str, Coding); 6] = [
            ("identity", Coding::Identity),
            ("zstd", Coding::Zstd),
            ("gzip", Coding::Gzip),
            ("x-gzip", Coding::Gzip),
            ("deflate", Coding::Deflate),
            ("br", Coding::Brotli),
        ];
        NAMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|&(_, c)| c)
    }

    fn name(self) -> &'static str {
        match self {
            Coding::Identity => "identity",
            Coding::Zstd => "zstd",
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
            Coding::Brotli => "br",
        }
    }

    fn decode(self, body: Bytes, limit: usize) -> Result<Bytes, BodyError> {
        let input = &body[..];
        let hint = input.len().saturating_mul(4);
        let out = match self {
            Coding::Identity if body.len() > limit => return Err(BodyError::TooLarge { limit }),
            Coding::Identity => return Ok(body),
            _ if body.is_empty() => return Ok(body),
            Coding::Zstd => decode_zstd(input, limit, hint),
            Coding::Gzip => read_bounded(flate2::bufread::MultiGzDecoder::new(input), limit, hint),
            Coding::Deflate => decode_deflate(input, limit, hint),
            // RFC 7932's `br` has windows of at most 16 MiB. The reserved window code
            // `0010001` starts brotli's large-window extension (windows up to 1 GiB), which
            // the decoder would otherwise allocate for a 60-byte body: refused.
            Coding::Brotli if input[0] & 0x7F == 0x11 => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a large-window brotli stream (not RFC 7932 br)",
            )),
            Coding::Brotli => read_bounded(
                brotli_decompressor::Decompressor::new(input, 16 * 1024),
                limit,
                hint,
            ),
        };
        match out {
            Ok(Some(out)) => Ok(Bytes::from(out)),
            Ok(None) => Err(BodyError::TooLarge { limit }),
            Err(source) => Err(BodyError::Decode {
                encoding: self.name().to_owned(),
                source,
            }),
        }
    }
}

/// Reads `reader` to its end into a buffer of at most `limit + 1` bytes.
///
/// `Ok(None)` means the output passed `limit`: reading stops there (the slice handed to the
/// reader ends at `limit + 1`, the same bound as `Read::take`), so a bomb costs at most that
/// much memory and the work to produce it. Growth doubles but is capped at `limit + 1`.
fn read_bounded(mut reader: impl Read, limit: usize, hint: usize) -> io::Result<Option<Vec<u8>>> {
    let cap = limit.saturating_add(1);
    let mut buf = vec![0u8; hint.clamp(4096, READ_STEP).min(cap)];
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            if buf.len() >= cap {
                return Ok(None);
            }
            let grown = buf.len().saturating_mul(2).max(filled + READ_STEP).min(cap);
            buf.reserve_exact(grown - buf.len());
            buf.resize(grown, 0);
        }
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok((filled <= limit).then_some(buf))
}

fn decode_zstd(input: &[u8], limit: usize, hint: usize) -> io::Result<Option<Vec<u8>>> {
    // A frame that announces more than the limit is refused before the decoder sizes its
    // buffers from it.
    if let Ok(Some(size)) = zstd::zstd_safe::get_frame_content_size(input) {
        if size > limit as u64 {
            return Ok(None);
        }
    }
    let mut decoder = zstd::stream::read::Decoder::with_buffer(input)?;
    // The window is memory the decoder allocates for a frame of unknown size. Allow what the
    // limit needs, and at least 8 MiB (zstd's window at high levels), so ordinary frames from
    // small-limit configurations still decode; zstd's own default cap is 128 MiB.
    let limit_log = limit
        .checked_next_power_of_two()
        .map_or(usize::BITS, usize::trailing_zeros);
    decoder.window_log_max(limit_log.clamp(23, 30))?;
    read_bounded(decoder, limit, hint)
}

fn decode_deflate(input: &[u8], limit: usize, hint: usize) -> io::Result<Option<Vec<u8>>> {
    if !looks_like_zlib(input) {
        return read_bounded(Inflate::new(input, false), limit, hint);
    }
    match read_bounded(Inflate::new(input, true), limit, hint) {
        // About one raw deflate stream in a few hundred starts with bytes that pass the zlib
        // header check; when zlib fails, try raw before calling the data corrupt.
        Err(zlib_err) => {
            read_bounded(Inflate::new(input, false), limit, hint).map_err(|_| zlib_err)
        }
        done => done,
    }
}

/// RFC 1950: CM = 8 (deflate), window at most 32 KiB, and the header checksum holds.
fn looks_like_zlib(input: &[u8]) -> bool {
    match input {
        [cmf, flg, ..] => {
            cmf & 0x0f == 8 && cmf >> 4 <= 7 && (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 == 0
        }
        _ => false,
    }
}

/// Inflates zlib or raw deflate from a slice, and reports a stream that ends early or is
/// followed by stray bytes, which `flate2::read` decoders pass over as a clean end.
struct Inflate<'a> {
    input: &'a [u8],
    state: Decompress,
    done: bool,
}

impl<'a> Inflate<'a> {
    fn new(input: &'a [u8], zlib: bool) -> Self {
        Inflate {
            input,
            state: Decompress::new(zlib),
            done: false,
        }
    }
}

impl Read for Inflate<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while !self.done && !out.is_empty() {
            let (in_before, out_before) = (self.state.total_in(), self.state.total_out());
            let status = self
                .state
                .decompress(self.input, out, FlushDecompress::None)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            let consumed = (self.state.total_in() - in_before) as usize;
            let produced = (self.state.total_out() - out_before) as usize;
            self.input = &self.input[consumed..];
            if status == Status::StreamEnd {
                self.done = true;
                if !self.input.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "stray bytes after the end of the deflate stream",
                    ));
                }
            }
            if produced > 0 {
                return Ok(produced);
            }
            if consumed == 0 && !self.done {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "deflate stream ends before its final block",
                ));
            }
        }
        Ok(0)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    const JSON: &[u8] = br#"{"model":"gpt-5","stream":true,"input":[{"role":"user","content":"hello hello hello"}]}"#;

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn raw_deflate(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn brotli(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut enc = brotli::CompressorWriter::new(&mut out, 4096, 1, 22);
            enc.write_all(data).unwrap();
        }
        out
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        zstd::encode_all(data, 1).unwrap()
    }

    fn ok(encoding: &str, body: Vec<u8>) -> Bytes {
        decode(&hv(encoding), Bytes::from(body), 1024 * 1024).unwrap()
    }

    #[test]
    fn round_trips_every_encoding() {
        assert_eq!(ok("zstd", zstd(JSON)), JSON);
        assert_eq!(ok("gzip", gzip(JSON)), JSON);
        assert_eq!(ok("x-gzip", gzip(JSON)), JSON);
        assert_eq!(ok("deflate", zlib(JSON)), JSON);
        assert_eq!(ok("deflate", raw_deflate(JSON)), JSON);
        assert_eq!(ok("br", brotli(JSON)), JSON);
        assert_eq!(ok("identity", JSON.to_vec()), JSON);
    }

    #[test]
    fn chains_are_undone_in_reverse() {
        // "gzip, br": gzip was applied first, then br.
        assert_eq!(ok("gzip, br", brotli(&gzip(JSON))), JSON);
        assert_eq!(ok("br,zstd", zstd(&brotli(JSON))), JSON);
        assert_eq!(ok("identity, deflate, gzip", gzip(&zlib(JSON))), JSON);
    }

    #[test]
    fn names_are_case_and_whitespace_insensitive() {
        assert_eq!(ok("ZSTD", zstd(JSON)), JSON);
        assert_eq!(ok(" GZip ,\tBr ", brotli(&gzip(JSON))), JSON);
        assert_eq!(ok("X-Gzip", gzip(JSON)), JSON);
        assert_eq!(ok("", JSON.to_vec()), JSON);
    }

    #[test]
    fn concatenated_gzip_members_are_all_decoded() {
        let mut body = gzip(b"hello ");
        body.extend(gzip(b"world"));
        assert_eq!(ok("gzip", body), "hello world");
    }

    #[test]
    fn unknown_encoding_is_unsupported_before_any_work() {
        let err = decode(&hv("gzip, lz4"), Bytes::from(gzip(JSON)), 1024).unwrap_err();
        assert!(
            matches!(err, BodyError::UnsupportedEncoding(ref e) if e == "lz4"),
            "{err:?}"
        );
        let odd = HeaderValue::from_bytes(b"gz\xffip").unwrap();
        assert!(matches!(
            decode(&odd, Bytes::new(), 1024),
            Err(BodyError::UnsupportedEncoding(_))
        ));
    }

    #[track_caller]
    fn assert_decode_error(encoding: &str, body: Vec<u8>) {
        match decode(&hv(encoding), Bytes::from(body), 1024 * 1024) {
            Err(BodyError::Decode { encoding: e, .. }) => assert_eq!(e, encoding),
            other => panic!("{encoding}: expected Decode, got {other:?}"),
        }
    }

    #[test]
    fn corrupt_data_is_a_decode_error() {
        let garbage = b"this is not compressed at all, just text".to_vec();
        for encoding in ["zstd", "gzip", "deflate", "br"] {
            assert_decode_error(encoding, garbage.clone());
        }
    }

    #[test]
    fn truncated_data_is_a_decode_error() {
        let cut = |mut v: Vec<u8>| {
            v.truncate(v.len() - 6);
            v
        };
        let long: Vec<u8> = JSON.iter().cycle().take(20_000).copied().collect();
        assert_decode_error("zstd", cut(zstd(&long)));
        assert_decode_error("gzip", cut(gzip(&long)));
        assert_decode_error("deflate", cut(zlib(&long)));
        assert_decode_error("deflate", cut(raw_deflate(&long)));
        assert_decode_error("br", cut(brotli(&long)));
    }

    #[test]
    fn stray_bytes_after_deflate_are_a_decode_error() {
        let mut body = zlib(JSON);
        body.extend_from_slice(b"junk");
        assert_decode_error("deflate", body);
    }

    #[test]
    fn output_exactly_at_the_limit_is_accepted() {
        let data = vec![b'a'; 100_000];
        let out = decode(&hv("gzip"), Bytes::from(gzip(&data)), 100_000).unwrap();
        assert_eq!(out.len(), 100_000);
        let err = decode(&hv("gzip"), Bytes::from(gzip(&data)), 99_999).unwrap_err();
        assert!(matches!(err, BodyError::TooLarge { limit: 99_999 }));
    }

    #[test]
    fn identity_over_the_limit_is_too_large() {
        let err = decode(&hv("identity"), Bytes::from(vec![0; 11]), 10).unwrap_err();
        assert!(matches!(err, BodyError::TooLarge { limit: 10 }));
    }

    /// 64 MiB of zeros, compressed by streaming so the test itself stays small.
    fn zeros_through(mut enc: impl Write) {
        let chunk = vec![0u8; 1024 * 1024];
        for _ in 0..64 {
            enc.write_all(&chunk).unwrap();
        }
    }

    #[track_caller]
    fn assert_bomb_stopped(encoding: &str, bomb: Vec<u8>) {
        let limit = 1024 * 1024;
        assert!(
            bomb.len() < limit,
            "{encoding} bomb is {} bytes",
            bomb.len()
        );
        let err = decode(&hv(encoding), Bytes::from(bomb), limit).unwrap_err();
        assert!(
            matches!(err, BodyError::TooLarge { limit: 1048576 }),
            "{encoding}: {err:?}"
        );
    }

    #[test]
    fn zstd_bomb_is_too_large() {
        let mut bomb = Vec::new();
        let mut enc = zstd::stream::write::Encoder::new(&mut bomb, 1).unwrap();
        zeros_through(&mut enc);
        enc.finish().unwrap();
        // Streamed, so the frame does not declare its size: the bound comes from reading.
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&bomb).ok(),
            Some(None)
        );
        assert_bomb_stopped("zstd", bomb);
    }

    #[test]
    fn zstd_frame_declaring_a_huge_size_is_refused() {
        // A 17-byte frame claiming 1 TiB of content: magic, a header with an 8-byte content
        // size, a 1 KiB window, then one empty last block. Decoding it would fail on the
        // size mismatch; the declared size must be refused first.
        let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd, 0xc0, 0x00];
        frame.extend_from_slice(&(1u64 << 40).to_le_bytes());
        frame.extend_from_slice(&[0x01, 0x00, 0x00]);
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&frame).ok(),
            Some(Some(1 << 40))
        );
        assert_bomb_stopped("zstd", frame);
    }

    #[test]
    fn zstd_window_beyond_the_bound_is_refused() {
        // A streamed frame asking for a 128 MiB window: with a 1 MiB limit the decoder may
        // allocate at most 8 MiB of window, so the frame is refused instead of decoded.
        let mut frame = Vec::new();
        let mut enc = zstd::stream::write::Encoder::new(&mut frame, 1).unwrap();
        enc.window_log(27).unwrap();
        enc.write_all(JSON).unwrap();
        enc.finish().unwrap();
        match decode(&hv("zstd"), Bytes::from(frame.clone()), 1024 * 1024) {
            Err(BodyError::Decode { encoding, .. }) => assert_eq!(encoding, "zstd"),
            other => panic!("expected Decode, got {other:?}"),
        }
        // A limit that needs such a window accepts it.
        assert_eq!(
            decode(&hv("zstd"), Bytes::from(frame), 128 << 20).unwrap(),
            JSON
        );
    }

    #[test]
    fn gzip_bomb_is_too_large() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        zeros_through(&mut enc);
        assert_bomb_stopped("gzip", enc.finish().unwrap());
    }

    #[test]
    fn deflate_bomb_is_too_large() {
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        zeros_through(&mut enc);
        assert_bomb_stopped("deflate", enc.finish().unwrap());
    }

    #[test]
    fn a_large_window_brotli_stream_is_refused_before_its_window_is_allocated() {
        // Found by the `decode` fuzz target: this 59-byte body made the decoder allocate a
        // 1 GiB window. The stream is large-window brotli, which `br` (RFC 7932) is not.
        let body: &[u8] = b"\x11\x9e\x9e\x9e\x9e\x9e\x9e\x9e\x9e\x9e\x9e\x9e\x9e\x9e\x9e\x9e\x9e\x9e\x9e\x9e\x9e\x9e\x9e\x9e\x9e\x9e\x9e\x9e\x9e\x9e\x9e\x9e\x9e\x9e\x9e\x9e\x9e\x9e\x9e\x9e\x9e\x9e\x9e\x9e\x9e\x9e\x9e\x9e\x14\x00\x00\x00\x11\x11~\x11\x11\x00\x03";
        assert_decode_error("br", body.to_vec());
        // Refused for what it is, before any decoding (which allocated the window).
        match decode(
            &HeaderValue::from_static("br"),
            Bytes::from_static(body),
            1 << 20,
        ) {
            Err(BodyError::Decode { source, .. }) => {
                assert!(source.to_string().contains("large-window"), "{source}")
            }
            other => panic!("{other:?}"),
        }
        // Standard streams of every window still decode.
        for lgwin in [10, 16, 22, 24] {
            let mut out = Vec::new();
            {
                let mut enc = brotli::CompressorWriter::new(&mut out, 4096, 5, lgwin);
                enc.write_all(JSON).unwrap();
            }
            assert_eq!(ok("br", out), JSON, "lgwin {lgwin}");
        }
    }

    #[test]
    fn brotli_bomb_is_too_large() {
        let mut bomb = Vec::new();
        {
            let mut enc = brotli::CompressorWriter::new(&mut bomb, 64 * 1024, 0, 22);
            zeros_through(&mut enc);
        }
        assert_bomb_stopped("br", bomb);
    }

    #[test]
    fn bounded_read_stops_an_endless_reader() {
        // `io::repeat` never ends: only the bound can stop it.
        let out = read_bounded(io::repeat(0), 1000, 0).unwrap();
        assert!(out.is_none());
    }

    #[test]
    fn bounded_read_never_grows_past_the_limit() {
        let limit = 300_000;
        let out = read_bounded(&vec![1u8; limit][..], limit, 0)
            .unwrap()
            .unwrap();
        assert_eq!(out.len(), limit);
        assert!(out.capacity() <= limit + 1, "capacity {}", out.capacity());
    }

    #[test]
    fn zlib_header_detection() {
        assert!(looks_like_zlib(&zlib(JSON)));
        assert!(!looks_like_zlib(&raw_deflate(JSON)));
        assert!(!looks_like_zlib(b"x"));
    }

    /// On a current-thread runtime a spawned task can only run while the decode is pending,
    /// so whether it ran tells whether the decode left the worker.
    #[tokio::test(flavor = "current_thread")]
    async fn large_bodies_are_decoded_off_the_async_worker() {
        let small = vec![b'a'; 512 * 1024];
        let large = vec![b'a'; 3 * 1024 * 1024];
        for (plain, leaves_worker) in [(&small, false), (&large, true)] {
            let compressed = Bytes::from(zstd::encode_all(&plain[..], 1).unwrap());
            let others_ran = Arc::new(AtomicBool::new(false));
            let flag = others_ran.clone();
            tokio::spawn(async move { flag.store(true, Ordering::SeqCst) });
            let out = decode_off_runtime(&hv("zstd"), compressed, 32 << 20)
                .await
                .unwrap();
            assert_eq!(out.len(), plain.len());
            assert_eq!(
                others_ran.load(Ordering::SeqCst),
                leaves_worker,
                "{} bytes",
                plain.len()
            );
            tokio::task::yield_now().await;
        }
        // The real limit still holds off the worker, and errors keep their limit.
        let large = Bytes::from(gzip(&large));
        match decode_off_runtime(&hv("gzip"), large, 2 << 20).await {
            Err(BodyError::TooLarge { limit }) => assert_eq!(limit, 2 << 20),
            other => panic!("{other:?}"),
        }
    }
}
