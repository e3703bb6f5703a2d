//! One chunk per read: an upstream's chunked body re-framed as it is read.
//!
//! An upstream that writes each SSE event as its own chunk sends sixty chunks per answer.
//! hyper's client decodes a chunk's size line one byte at a time and hands every chunk to the
//! response body through a channel, one task wake-up each, so a chunk costs about 3,300
//! instructions before any layer sees it (`BENCHMARKS.md`, the `mock` upstream). nginx pays per
//! read instead: it decodes what one read brought and writes it on as one buffer.
//!
//! [`Rechunk`] does that below hyper, on the connection's bytes: it follows the HTTP/1
//! responses on the connection and, inside a chunked body, replaces the chunks that one read
//! brought with a single chunk carrying the same data. hyper then decodes one chunk per read.
//! Everything else passes through unchanged: heads, fixed-length bodies, and the end of a
//! chunked body.
//!
//! It rewrites only what it fully understands. A body is re-framed only when the request
//! was a `GET` or `POST`, the response is `HTTP/1.1` with one `Transfer-Encoding: chunked`
//! and no `Content-Length`, and the status allows a body. Anything else (a size line with
//! extensions or spaces, trailers, a close-delimited body, an upgrade, a head it cannot
//! parse) hands the rest of the connection to hyper unchanged, at a point where hyper's view
//! and the original bytes agree: the start of a size line, or before the head. Bytes that
//! break the chunked syntax where hyper would fail too (no CRLF after a chunk's data) end the
//! connection with an error after the data before them.

use std::io;

/// The longest size line re-framed: 15 hex digits and CRLF. Longer ones go to hyper as they are.
const LINE_MAX: usize = 17;
/// The longest response head followed across reads; a longer one turns re-framing off.
const HEAD_MAX: usize = 16 * 1024;
/// The room a re-framed chunk's size line takes: eight hex digits and CRLF.
const SIZE_LINE: usize = 10;
/// hyper's default limit on a head's headers.
const MAX_HEADERS: usize = 100;

/// Where the connection's bytes are, as far as re-framing is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No response is owed: before the first request, or after a response ended.
    Idle,
    /// A response head is owed to a request whose body may be re-framed (`rewrite`) or not.
    Head { rewrite: bool },
    /// In a fixed-length body, with this many bytes left.
    Fixed(u64),
    /// At or in a chunk's size line (its bytes so far in `line`).
    Size,
    /// In a chunk's data, with this many bytes left.
    Data(u64),
    /// After a chunk's data, this many bytes of its CRLF seen.
    DataEnd(u8),
    /// After the last chunk's size line, this many bytes of the empty trailer line seen.
    LastEnd(u8),
    /// Not following the connection any more: every byte passes through.
    Off,
    /// The chunked syntax broke; the connection fails.
    Broken,
}

/// The error a malformed chunked body ends the connection with.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Malformed;

impl From<Malformed> for io::Error {
    fn from(_: Malformed) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "upstream sent a malformed chunked body (no CRLF after a chunk's data)",
        )
    }
}

/// Follows one HTTP/1 client connection's responses and re-frames their chunked bodies.
#[derive(Debug)]
pub(crate) struct Rechunk {
    state: State,
    /// A response head split across reads.
    head: Vec<u8>,
    /// The current size line's bytes, kept until the line is complete or handed on.
    line: [u8; LINE_MAX + 2],
    line_len: usize,
}

impl Default for Rechunk {
    fn default() -> Self {
        Rechunk {
            state: State::Idle,
            head: Vec::new(),
            line: [0; LINE_MAX + 2],
            line_len: 0,
        }
    }
}

impl Rechunk {
    /// Notes that a request begins with `first` (the start of its request line).
    pub(crate) fn request(&mut self, first: &[u8]) {
        // A request written while a response is still owed is the same exchange's body
        // (an early answer); only a new exchange changes what is expected.
        if self.state == State::Idle {
            let rewrite = first.starts_with(b"POST ") || first.starts_with(b"GET ");
            self.state = State::Head { rewrite };
        }
    }

    /// Whether bytes read now pass through unchanged and unseen.
    pub(crate) fn is_off(&self) -> bool {
        self.state == State::Off
    }

    /// Whether the connection failed on a malformed body.
    pub(crate) fn is_broken(&self) -> bool {
        self.state == State::Broken
    }

    /// What hyper should read in place of `input`: `input` itself or a prefix of it, or
    /// what was written to `out`. A malformed body leaves the state broken, after the data
    /// before the fault.
    pub(crate) fn feed(&mut self, all: &[u8], out: &mut Vec<u8>) -> Fed {
        let mut sink = Sink {
            out,
            same: 0,
            rewritten: false,
        };
        // Where the chunk being gathered starts in `out`, if one is.
        let mut run: Option<usize> = None;
        let mut at = 0;
        while at < all.len() {
            let input = &all[at..];
            match self.state {
                State::Off => {
                    sink.pass(all, at, input.len());
                    at = all.len();
                }
                State::Broken => break,
                State::Idle => {
                    // Bytes no request asked for: hyper decides what they mean.
                    self.state = State::Off;
                }
                State::Head { rewrite } => {
                    let n = self.head(rewrite, input);
                    sink.pass(all, at, n);
                    at += n;
                }
                State::Fixed(left) => {
                    let n = left.min(input.len() as u64) as usize;
                    sink.pass(all, at, n);
                    at += n;
                    self.state = if n as u64 == left {
                        State::Idle
                    } else {
                        State::Fixed(left - n as u64)
                    };
                }
                State::Size => {
                    // The common case, a whole chunk in the read: no state to keep.
                    // (Not while a size line split across reads is being gathered.)
                    if let Some((line, size)) =
                        (self.line_len == 0).then(|| whole_chunk(input)).flatten()
                    {
                        sink.data(all, &mut run, &input[line..line + size]);
                        at += line + size + 2;
                        continue;
                    }
                    match self.size_line(input) {
                        Line::Partial => break,
                        Line::Chunk(size, used) => {
                            at += used;
                            self.state = State::Data(size);
                        }
                        Line::Last(used) => {
                            at += used;
                            self.state = State::LastEnd(0);
                        }
                        Line::Foreign(used) => {
                            // hyper reads this line, and everything after, itself.
                            close(run.take(), sink.out);
                            sink.put(all, &self.line[..self.line_len]);
                            self.line_len = 0;
                            at += used;
                            self.state = State::Off;
                        }
                    }
                }
                State::Data(left) => {
                    let n = left.min(input.len() as u64) as usize;
                    sink.data(all, &mut run, &input[..n]);
                    at += n;
                    self.state = if n as u64 == left {
                        State::DataEnd(0)
                    } else {
                        State::Data(left - n as u64)
                    };
                }
                State::DataEnd(seen) => {
                    let want = if seen == 0 { b'\r' } else { b'\n' };
                    if input[0] != want {
                        self.state = State::Broken;
                        break;
                    }
                    at += 1;
                    self.state = if seen == 0 {
                        State::DataEnd(1)
                    } else {
                        State::Size
                    };
                }
                State::LastEnd(seen) => {
                    let want = if seen == 0 { b'\r' } else { b'\n' };
                    if input[0] != want {
                        // Trailers: hyper reads them, from the last chunk's size line on.
                        close(run.take(), sink.out);
                        sink.put(all, &self.line[..self.line_len]);
                        self.line_len = 0;
                        self.state = State::Off;
                        continue;
                    }
                    self.line[self.line_len] = want;
                    self.line_len += 1;
                    at += 1;
                    if seen == 0 {
                        self.state = State::LastEnd(1);
                    } else {
                        close(run.take(), sink.out);
                        sink.put(all, &self.line[..self.line_len]);
                        self.line_len = 0;
                        self.state = State::Idle;
                    }
                }
            }
        }
        close(run, sink.out);
        if sink.rewritten {
            Fed::Written
        } else {
            Fed::Prefix(sink.same)
        }
    }

    /// Reads a response head: how many bytes of `input` are head; once it is whole, its
    /// body decides the state.
    fn head(&mut self, rewrite: bool, input: &[u8]) -> usize {
        let gathered = !self.head.is_empty();
        if gathered {
            self.head.extend_from_slice(input);
        }
        let bytes = if gathered { &self.head[..] } else { input };
        let before = bytes.len() - input.len();
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut headers);
        let (len, next) = match res.parse(bytes) {
            Ok(httparse::Status::Complete(len)) if len > before => (len, body(rewrite, &res)),
            Ok(httparse::Status::Partial) if bytes.len() < HEAD_MAX => {
                if !gathered {
                    self.head.extend_from_slice(input);
                }
                return input.len();
            }
            // Too long, or not a head this module reads: hyper reads it, and everything after.
            _ => {
                self.head = Vec::new();
                self.state = State::Off;
                return 0;
            }
        };
        self.head = Vec::new();
        self.state = next;
        len - before
    }

    /// Reads (the rest of) a size line.
    fn size_line(&mut self, input: &[u8]) -> Line {
        let room = self.line.len() - self.line_len;
        let take = input.len().min(room);
        let Some(lf) = memchr::memchr(b'\n', &input[..take]) else {
            self.line[self.line_len..self.line_len + take].copy_from_slice(&input[..take]);
            self.line_len += take;
            if self.line_len == self.line.len() {
                return Line::Foreign(take);
            }
            return Line::Partial;
        };
        self.line[self.line_len..self.line_len + lf + 1].copy_from_slice(&input[..=lf]);
        self.line_len += lf + 1;
        let used = lf + 1;
        match chunk_size(&self.line[..self.line_len]) {
            Some(0) => Line::Last(used),
            Some(size) => {
                self.line_len = 0;
                Line::Chunk(size, used)
            }
            None => Line::Foreign(used),
        }
    }
}

/// What a size line turned out to be, and how many input bytes it took.
enum Line {
    /// Not complete yet; its bytes are kept.
    Partial,
    /// A chunk of this many bytes.
    Chunk(u64, usize),
    /// The last chunk (its line kept, for trailers).
    Last(usize),
    /// A line this module does not re-frame (kept whole, for hyper).
    Foreign(usize),
}

/// What hyper reads in place of a read's bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Fed {
    /// The first this many bytes of them, unchanged.
    Prefix(usize),
    /// What was written to `out`.
    Written,
}

/// Gathers what hyper reads: nothing is copied while it is the read's own bytes in order.
struct Sink<'o> {
    out: &'o mut Vec<u8>,
    /// How many of the read's first bytes go on unchanged, while nothing else has.
    same: usize,
    rewritten: bool,
}

impl Sink<'_> {
    /// Passes on `len` of the read's bytes from `at`.
    fn pass(&mut self, all: &[u8], at: usize, len: usize) {
        if !self.rewritten && at == self.same {
            self.same += len;
        } else {
            self.rewrite(all);
            self.out.extend_from_slice(&all[at..at + len]);
        }
    }

    /// Passes on a chunk's data, in the chunk `run` gathers (begun here if none is).
    fn data(&mut self, all: &[u8], run: &mut Option<usize>, bytes: &[u8]) {
        if run.is_none() {
            self.put(all, &[0; SIZE_LINE]);
            *run = Some(self.out.len() - SIZE_LINE);
        }
        self.out.extend_from_slice(bytes);
    }

    /// Passes on bytes of its own.
    fn put(&mut self, all: &[u8], bytes: &[u8]) {
        self.rewrite(all);
        self.out.extend_from_slice(bytes);
    }

    fn rewrite(&mut self, all: &[u8]) {
        if !self.rewritten {
            self.out.extend_from_slice(&all[..self.same]);
            self.rewritten = true;
        }
    }
}

/// The body a response head announces, in the state that reads it.
fn body(rewrite: bool, res: &httparse::Response<'_, '_>) -> State {
    let code = res.code.unwrap_or(0);
    match code {
        101 => return State::Off,
        100..=199 => return State::Head { rewrite },
        204 | 304 => return State::Idle,
        _ => {}
    }
    if !rewrite || res.version != Some(1) {
        return State::Off;
    }
    let mut chunked = 0;
    let mut length = None;
    let mut lengths = 0;
    for h in res.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked += if h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                1
            } else {
                2
            };
        } else if h.name.eq_ignore_ascii_case("content-length") {
            lengths += 1;
            length = std::str::from_utf8(h.value).ok().and_then(|v| {
                let v = v.trim_ascii();
                (!v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| v.parse::<u64>().ok())
                    .flatten()
            });
        }
    }
    match (chunked, lengths, length) {
        (1, 0, _) => State::Size,
        (0, 1, Some(0)) => State::Idle,
        (0, 1, Some(n)) => State::Fixed(n),
        _ => State::Off,
    }
}

/// A whole chunk at the start of `input`, with a size line this module re-frames and data
/// that is not empty: the size line's length and the data's, if the data's CRLF is there too.
fn whole_chunk(input: &[u8]) -> Option<(usize, usize)> {
    let digits = input
        .iter()
        .take(LINE_MAX - 1)
        .take_while(|b| b.is_ascii_hexdigit())
        .count();
    let line = digits + 2;
    let size = usize::try_from(chunk_size(input.get(..line)?)?).ok()?;
    let end = line.checked_add(size)?;
    (size > 0 && input.get(end..end.checked_add(2)?)? == b"\r\n").then_some((line, size))
}

/// A size line's chunk size, if it is one this module re-frames: hex digits and CRLF.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.strip_suffix(b"\r\n")?;
    if digits.is_empty() || digits.len() > LINE_MAX - 2 {
        return None;
    }
    let mut size = 0u64;
    for &b in digits {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => return None,
        };
        size = size << 4 | u64::from(d);
    }
    Some(size)
}

/// Ends the chunk gathered from `start` in `out`: writes its size line, or drops it if empty.
fn close(run: Option<usize>, out: &mut Vec<u8>) {
    let Some(start) = run else { return };
    let len = out.len() - start - SIZE_LINE;
    if len == 0 {
        out.truncate(start);
        return;
    }
    // Eight hex digits, zero-padded: a size line's length is then known before its data.
    let line = format_size(len);
    out[start..start + SIZE_LINE].copy_from_slice(&line);
    out.extend_from_slice(b"\r\n");
}

fn format_size(len: usize) -> [u8; SIZE_LINE] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    debug_assert!(len <= u32::MAX as usize);
    let mut line = [b'0'; SIZE_LINE];
    for (i, slot) in line[..8].iter_mut().enumerate() {
        *slot = HEX[(len >> (4 * (7 - i))) & 0xf];
    }
    line[8] = b'\r';
    line[9] = b'\n';
    line
}

#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod oracle;
#[cfg(test)]
mod tests;
