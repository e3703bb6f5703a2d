//! The events of a stream being folded, read as [`SseDecoder`] reads them, for less.
//!
//! The fold needs each event's type and, for a few types, its data; never its raw bytes, id
//! or retry. Responses streams are written one way: LF line endings, `event:` and one `data:`
//! line per event, no byte-order mark. Events of that shape are read here straight from the
//! chunks they arrived in: one `memchr` per line, no event assembled, data sliced out only
//! for the events the fold keeps. Anything else (a CR, a leading byte-order mark, an event
//! near the decoder's line bound) hands the stream from there on to an [`SseDecoder`], at an
//! event boundary, where a fresh decoder reads what the stream's own would have: every event
//! comes out the same, and the decoder's errors stay its own.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use memchr::memchr;

use crate::sse::{SseDecoder, SseError, sniff_type};

/// Bytes since the last event dispatched read without the decoder: past this, it decides
/// (well under its 4 MiB line and 8 MiB event bounds, so none of them is missed).
const MAX_FAST: usize = 1 << 20;

/// One event as the fold sees it.
pub(super) struct Seen<'a> {
    /// The event's type: its data's JSON `"type"`, else its `event:` field (as
    /// [`Event::event_type`](crate::sse::Event::event_type)).
    pub(super) kind: Option<&'a str>,
    data: &'a Bytes,
    range: Range<usize>,
}

impl Seen<'_> {
    /// The event's data, sharing the chunk it came in.
    pub(super) fn data(&self) -> Bytes {
        self.data.slice(self.range.clone())
    }

    /// The event's data, borrowed.
    pub(super) fn bytes(&self) -> &[u8] {
        &self.data[self.range.clone()]
    }
}

/// Reads a stream's events chunk by chunk; see the [module docs](self).
#[derive(Default)]
pub(super) struct EventReader {
    /// The bytes after the last event dispatched (data-less blocks included, as the decoder's
    /// event bound counts them), up to the first line not yet complete.
    pending: BytesMut,
    /// Where the first block not yet read starts in `pending`.
    block: usize,
    /// Set once the stream is the decoder's.
    decoder: Option<SseDecoder>,
    /// A non-empty chunk went by (a byte-order mark can only come first).
    started: bool,
}

impl EventReader {
    /// Reads the events `chunk` completes, giving each to `visit` until it returns `Some`.
    pub(super) fn push<T>(
        &mut self,
        chunk: Bytes,
        visit: &mut impl FnMut(Seen<'_>) -> Option<T>,
    ) -> Result<Option<T>, SseError> {
        if chunk.is_empty() {
            return Ok(None);
        }
        let first = !std::mem::replace(&mut self.started, true);
        if self.decoder.is_none()
            && ((first && chunk[0] == 0xEF) || memchr(b'\r', &chunk).is_some())
        {
            self.hand_over(first, chunk[0]);
        }
        if let Some(decoder) = &mut self.decoder {
            decoder.push(chunk);
            return drain(decoder, false, visit);
        }
        let bytes = if self.pending.is_empty() {
            chunk
        } else {
            let joined = self.pending.last() == Some(&b'\n') && chunk[0] == b'\n';
            self.pending.extend_from_slice(&chunk);
            if !joined && !has_blank_line(&chunk) {
                return self.check_bound(visit);
            }
            self.pending.split().freeze()
        };
        let at = std::mem::take(&mut self.block);
        let (found, rest) = read_blocks(&bytes, at, visit);
        if found.is_some() {
            return Ok(found);
        }
        self.pending.extend_from_slice(&bytes[rest.start..]);
        self.block = rest.block - rest.start;
        self.check_bound(visit)
    }

    /// At the end of the stream: the event still held, if its last line is complete (as
    /// [`SseDecoder::finish`]).
    pub(super) fn finish<T>(
        &mut self,
        visit: &mut impl FnMut(Seen<'_>) -> Option<T>,
    ) -> Result<Option<T>, SseError> {
        if let Some(decoder) = &mut self.decoder {
            return drain(decoder, true, visit);
        }
        let held = self.pending.split().freeze();
        let block = &held[self.block..];
        if block.last() != Some(&b'\n') {
            return Ok(None);
        }
        // No blank line ends it: the last line's terminator is the block's end.
        Ok(read_block(&held, self.block..held.len(), visit).flatten())
    }

    fn check_bound<T>(
        &mut self,
        visit: &mut impl FnMut(Seen<'_>) -> Option<T>,
    ) -> Result<Option<T>, SseError> {
        if self.pending.len() <= MAX_FAST {
            return Ok(None);
        }
        self.hand_over(false, 0);
        match &mut self.decoder {
            Some(decoder) => drain(decoder, false, visit),
            None => Ok(None),
        }
    }

    /// Gives the stream to a decoder from the start of `pending` (an event boundary: the
    /// decoder starts as the stream's own would be there), `next` the first byte pushed after.
    fn hand_over(&mut self, at_start: bool, next: u8) {
        let mut decoder = SseDecoder::new();
        let pending = self.pending.split().freeze();
        if !at_start && pending.first().copied().unwrap_or(next) == 0xEF {
            // Not the stream's start, so not a byte-order mark: a blank line first (no event)
            // keeps the new decoder from taking it for one.
            decoder.push(Bytes::from_static(b"\n"));
        }
        decoder.push(pending);
        self.block = 0;
        self.decoder = Some(decoder);
    }
}

/// Where reading stopped: the start of the bytes still to keep (after the last event
/// dispatched) and of the first block not read.
struct Rest {
    start: usize,
    block: usize,
}

/// Reads the complete blocks of `bytes` from `at`.
fn read_blocks<T>(
    bytes: &Bytes,
    mut at: usize,
    visit: &mut impl FnMut(Seen<'_>) -> Option<T>,
) -> (Option<T>, Rest) {
    let mut start = 0;
    loop {
        // A blank line right at a block's start ends a block without data: no event.
        while bytes.get(at) == Some(&b'\n') {
            at += 1;
        }
        let block = at;
        let mut fields = BlockFields::default();
        // One pass over the block's lines, until the blank line that ends it.
        loop {
            let Some(lf) = memchr(b'\n', &bytes[at..]) else {
                return (None, Rest { start, block });
            };
            fields.line(bytes, at..at + lf);
            at += lf + 1;
            if bytes.get(at) == Some(&b'\n') {
                at += 1;
                break;
            }
        }
        match fields.dispatch(bytes, visit) {
            // Data-less blocks stay with the next event's bytes, as the decoder counts them.
            None => {}
            Some(None) => start = at,
            Some(Some(found)) => return (Some(found), Rest { start, block: at }),
        }
    }
}

fn has_blank_line(d: &[u8]) -> bool {
    let mut i = 0;
    d.first() == Some(&b'\n')
        || std::iter::from_fn(|| {
            i += memchr(b'\n', &d[i..])? + 1;
            Some(d.get(i) == Some(&b'\n'))
        })
        .any(|blank| blank)
}

/// Reads the lines of one block (each ends with an LF, none is empty) and dispatches its
/// event: `None` when the block has no data (no event), else what `visit` said.
fn read_block<T>(
    bytes: &Bytes,
    block: Range<usize>,
    visit: &mut impl FnMut(Seen<'_>) -> Option<T>,
) -> Option<Option<T>> {
    let mut fields = BlockFields::default();
    let mut at = block.start;
    while at < block.end {
        let end = at + memchr(b'\n', &bytes[at..block.end]).unwrap_or(block.end - at);
        fields.line(bytes, at..end);
        at = end + 1;
    }
    fields.dispatch(bytes, visit)
}

/// The fields of the block being read, as ranges of its bytes.
#[derive(Default)]
struct BlockFields {
    event: Option<Range<usize>>,
    data: Option<Range<usize>>,
    more_data: Vec<Range<usize>>,
}

impl BlockFields {
    /// One non-empty line, by the decoder's field rules (`id` and `retry` are no concern of
    /// the fold's).
    fn line(&mut self, bytes: &[u8], line: Range<usize>) {
        let at = line.start;
        let text = &bytes[line.clone()];
        // The two fields of every Responses event, without a search for the colon.
        let (name, value) = if text.starts_with(b"data: ") {
            (&b"data"[..], at + 6..line.end)
        } else if text.starts_with(b"event: ") {
            (&b"event"[..], at + 7..line.end)
        } else {
            match memchr(b':', text) {
                Some(0) => return,
                Some(c) if text.get(c + 1) == Some(&b' ') => (&text[..c], at + c + 2..line.end),
                Some(c) => (&text[..c], at + c + 1..line.end),
                None => (text, line.end..line.end),
            }
        };
        match name {
            b"data" if self.data.is_none() => self.data = Some(value),
            b"data" => self.more_data.push(value),
            b"event" => self.event = Some(value),
            _ => {}
        }
    }

    fn dispatch<T>(
        self,
        bytes: &Bytes,
        visit: &mut impl FnMut(Seen<'_>) -> Option<T>,
    ) -> Option<Option<T>> {
        let data = self.data?;
        let joined;
        let (whole, range) = if self.more_data.is_empty() {
            (bytes, data)
        } else {
            let mut out = BytesMut::from(&bytes[data]);
            for line in self.more_data {
                out.extend_from_slice(b"\n");
                out.extend_from_slice(&bytes[line]);
            }
            joined = out.freeze();
            (&joined, 0..joined.len())
        };
        let kind = sniff_type(&whole[range.clone()]).or_else(|| {
            self.event
                .map(|e| &bytes[e])
                .filter(|e| !e.is_empty())
                .and_then(|e| std::str::from_utf8(e).ok())
        });
        Some(visit(Seen {
            kind,
            data: whole,
            range,
        }))
    }
}

fn drain<T>(
    decoder: &mut SseDecoder,
    at_end: bool,
    visit: &mut impl FnMut(Seen<'_>) -> Option<T>,
) -> Result<Option<T>, SseError> {
    loop {
        let next = if at_end {
            decoder.finish()?
        } else {
            decoder.next_event()?
        };
        let Some(event) = next else {
            return Ok(None);
        };
        let seen = Seen {
            kind: event.event_type(),
            data: &event.data,
            range: 0..event.data.len(),
        };
        if let Some(found) = visit(seen) {
            return Ok(Some(found));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a reader saw: each event's type and data, then whether the stream was refused.
    type Read = (Vec<(Option<String>, Vec<u8>)>, bool);

    fn by_reader(chunks: &[&[u8]]) -> Read {
        let mut reader = EventReader::default();
        let mut seen = Vec::new();
        let mut visit = |s: Seen<'_>| {
            seen.push((s.kind.map(str::to_owned), s.bytes().to_vec()));
            None::<()>
        };
        for chunk in chunks {
            if reader
                .push(Bytes::copy_from_slice(chunk), &mut visit)
                .is_err()
            {
                return (seen, true);
            }
        }
        let refused = reader.finish(&mut visit).is_err();
        (seen, refused)
    }

    fn by_decoder(chunks: &[&[u8]]) -> Read {
        let mut decoder = SseDecoder::new();
        let mut seen = Vec::new();
        let mut visit = |s: Seen<'_>| {
            seen.push((s.kind.map(str::to_owned), s.bytes().to_vec()));
            None::<()>
        };
        for chunk in chunks {
            decoder.push(Bytes::copy_from_slice(chunk));
            if drain(&mut decoder, false, &mut visit).is_err() {
                return (seen, true);
            }
        }
        let refused = drain(&mut decoder, true, &mut visit).is_err();
        (seen, refused)
    }

    /// Streams from these pieces, cut anywhere, read as the decoder reads them.
    #[test]
    fn reads_every_stream_as_the_decoder_does() {
        let pieces: [&[u8]; 18] = [
            b"data: {\"type\":\"response.output_text.delta.x\"}\nevent: a\n\n",
            b"data: {\"type\":\"response.output_text.delta\\u0022\"}\nevent: b\n\n",
            b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"a\"}\n\n",
            b"data: {\"type\":\"response.completed\",\"response\":{\"id\":\"r\"}}\n\n",
            b"event: error\ndata: {\"message\":\"x\"}\n\n",
            b"event:response.failed\ndata:{}\n\n",
            b": keep-alive\n\n",
            b"\n",
            b"data: {\"a\":\ndata: 1}\n\n",
            b"data\n\n",
            b"id: 7\nretry: 10\n",
            b"event: message\r\ndata: {\"type\":\"response.created\"}\r\n\r\n",
            b"\xEF\xBB\xBFdata: {\"type\":\"x\"}\n\n",
            b"data: {\"type\":\"response.output_item.done\",\"item\":{}}\n",
            b"\xEF\xBB",
            b"event: \n",
            b"data: tail",
            b"\r",
        ];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        for _ in 0..10000 {
            let mut stream = Vec::new();
            for _ in 0..next(8) {
                stream.extend_from_slice(pieces[next(pieces.len())]);
            }
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut rest = &stream[..];
            while !rest.is_empty() {
                let n = 1 + next(rest.len().min(40));
                chunks.push(&rest[..n]);
                rest = &rest[n..];
            }
            assert_eq!(
                by_reader(&chunks),
                by_decoder(&chunks),
                "{:?}",
                String::from_utf8_lossy(&stream)
            );
        }
    }

    #[test]
    fn a_long_event_is_the_decoders_to_bound() {
        let line = format!("data: {}\n", "x".repeat(5 << 20));
        let chunks: Vec<&[u8]> = line.as_bytes().chunks(64 << 10).collect();
        let (seen, refused) = by_reader(&chunks);
        assert!(
            seen.is_empty() && refused,
            "a line past the decoder's bound"
        );
        assert_eq!(by_decoder(&chunks), (seen, refused));
    }
}
