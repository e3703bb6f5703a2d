//! What the fuzz targets share: a cursor over the fuzzer's bytes, and the reference SSE
//! decoder the real one is compared with.

/// Reads the fuzzer's input a piece at a time; past its end every read is zero / empty, so a
/// target never has to reject short inputs.
pub struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    /// A cursor over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Cursor { data }
    }

    /// One byte (0 past the end).
    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// A little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    /// Up to `n` bytes.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// A length-prefixed (one byte) piece.
    pub fn piece(&mut self) -> &'a [u8] {
        let n = usize::from(self.byte());
        self.take(n)
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// One event as the reference decoder sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefEvent {
    /// Offset of the event's first raw byte (the end of the previous event).
    pub start: usize,
    /// Offset just past its terminating blank line.
    pub end: usize,
    /// The last `event:` value.
    pub event: Option<Vec<u8>>,
    /// `data:` values joined with `\n`.
    pub data: Vec<u8>,
    /// The last `id:` value without NUL, within this event's raw bytes.
    pub id: Option<Vec<u8>>,
}

/// What the reference decoder made of a whole input.
#[derive(Debug, Default)]
pub struct RefDecoded {
    /// Events, in order.
    pub events: Vec<RefEvent>,
    /// The last valid `retry:` value.
    pub retry: Option<u64>,
}

/// The WHATWG `text/event-stream` algorithm, line by line over the whole input at once, with
/// the crate's documented choices: a block with any `data:` line is an event (even empty
/// data), a trailing event without its blank line is delivered at the end when its last line
/// is terminated, and a leading BOM is skipped but counts as raw bytes of the first event.
///
/// Written for clarity, not speed: nothing incremental, every line a fresh slice.
pub fn reference_decode(input: &[u8]) -> RefDecoded {
    let mut out = RefDecoded::default();
    let mut pos = if input.starts_with(&[0xEF, 0xBB, 0xBF]) {
        3
    } else {
        0
    };
    let mut event_start = 0;
    let mut event: Option<Vec<u8>> = None;
    let mut data: Vec<Vec<u8>> = Vec::new();
    let mut id: Option<Vec<u8>> = None;
    while pos < input.len() {
        // Find the line's end; no terminator means an unfinished line: stop there.
        let Some(len) = input[pos..].iter().position(|&b| b == b'\n' || b == b'\r') else {
            return out;
        };
        let line = &input[pos..pos + len];
        let mut next = pos + len + 1;
        if input[pos + len] == b'\r' && input.get(next) == Some(&b'\n') {
            next += 1;
        }
        if line.is_empty() {
            if data.is_empty() {
                event = None;
            } else {
                out.events.push(RefEvent {
                    start: event_start,
                    end: next,
                    event: event.take(),
                    data: data.join(&b'\n'),
                    id: id.take(),
                });
                data.clear();
                event_start = next;
            }
        } else if line[0] != b':' {
            let (name, value) = match line.iter().position(|&b| b == b':') {
                Some(c) => {
                    let v = &line[c + 1..];
                    (&line[..c], v.strip_prefix(b" ").unwrap_or(v))
                }
                None => (line, &b""[..]),
            };
            match name {
                b"data" => data.push(value.to_vec()),
                b"event" => event = Some(value.to_vec()),
                b"id" if !value.contains(&0) => id = Some(value.to_vec()),
                b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                    let mut n: u64 = 0;
                    for d in value {
                        n = n.saturating_mul(10).saturating_add(u64::from(d - b'0'));
                    }
                    out.retry = Some(n);
                }
                _ => {}
            }
        }
        pos = next;
    }
    if !data.is_empty() {
        out.events.push(RefEvent {
            start: event_start,
            end: input.len(),
            event,
            data: data.join(&b'\n'),
            id,
        });
    }
    out
}

/// Splits `input` into chunks whose sizes come from `sizes` (cycled; a 0 is an empty chunk).
pub fn chunks<'a>(input: &'a [u8], sizes: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = input;
    let mut i = 0;
    while !rest.is_empty() {
        let size = match sizes.get(i % sizes.len().max(1)) {
            Some(&s) => usize::from(s),
            None => rest.len(),
        };
        let (head, tail) = rest.split_at(size.min(rest.len()));
        out.push(head);
        rest = tail;
        i += 1;
        // An endless run of empty chunks is no test.
        if i > input.len() + sizes.len() {
            out.push(rest);
            break;
        }
    }
    out
}
