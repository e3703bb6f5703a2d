use std::fmt;
use std::sync::Arc;

use crate::json::find_in_object;
use crate::sse::scan::skip_value;

/// Sees every event of a stream that [`SoftFailureDetectLayer`](super::SoftFailureDetectLayer)
/// parses, so outer layers learn from a stream without parsing it again.
pub trait StreamObserver: Send + Sync + 'static {
    /// One event: the credential that served it (from the request's
    /// [`CredentialLease`](crate::credentials::CredentialLease), if any), its type, and its
    /// `data` bytes.
    fn event(&self, credential: Option<&str>, event_type: &str, data: &[u8]);

    /// Whether this observer reads content events (`*.delta`, `response.output_item.*`, the
    /// bulk of a stream). When no observer of a request does, they are not shown to any:
    /// a stream of deltas then costs the observers nothing. Asked once per stream; the
    /// default is `true`.
    fn reads_content(&self) -> bool {
        true
    }

    /// The stream's terminal event (`response.completed`, `.incomplete`, `.failed`), with its
    /// response's usage read once for every observer. The default hands it to
    /// [`event`](Self::event).
    fn terminal(&self, credential: Option<&str>, terminal: &TerminalEvent<'_>) {
        self.event(credential, terminal.event_type, terminal.data);
    }
}

/// A terminal event as [`StreamObserver::terminal`] sees it: its bytes, and the usage of its
/// response, scanned once (without parsing the output it carries) for all observers.
#[derive(Debug, Clone, Copy)]
pub struct TerminalEvent<'a> {
    /// The event's type.
    pub event_type: &'a str,
    /// The event's `data` bytes.
    pub data: &'a [u8],
    /// `response.usage`, when it is an object.
    pub usage: Option<TerminalUsage>,
}

/// The token counts of a terminal event's `response.usage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TerminalUsage {
    /// `input_tokens`, when present.
    pub input_tokens: Option<u64>,
    /// `output_tokens`, when present.
    pub output_tokens: Option<u64>,
}

impl TerminalUsage {
    /// The input and output tokens, when the input count is there (an absent output count
    /// reads as 0), as [`response_tokens`](crate::continuity::response_tokens) gives them.
    pub fn tokens(&self) -> Option<(u64, u64)> {
        Some((self.input_tokens?, self.output_tokens.unwrap_or(0)))
    }
}

impl<'a> TerminalEvent<'a> {
    /// Reads the event's usage: one walk over the event's top level to `response`, one over
    /// the response's to `usage`, and a parse of that small object only.
    pub fn new(event_type: &'a str, data: &'a [u8]) -> Self {
        TerminalEvent {
            event_type,
            data,
            usage: terminal_usage(data),
        }
    }
}

/// Request extension: the observers of this request's stream. Layers add theirs with
/// [`StreamObservers::add`] before calling inward.
#[derive(Clone, Default)]
pub struct StreamObservers(Vec<Arc<dyn StreamObserver>>);

impl fmt::Debug for StreamObservers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("StreamObservers")
            .field(&self.0.len())
            .finish()
    }
}

impl StreamObservers {
    /// Adds `observer` to the request's observers.
    pub fn add<B>(req: &mut http::Request<B>, observer: Arc<dyn StreamObserver>) {
        match req.extensions_mut().get_mut::<StreamObservers>() {
            Some(list) => list.0.push(observer),
            None => {
                req.extensions_mut().insert(StreamObservers(vec![observer]));
            }
        }
    }

    pub(super) fn notify(&self, credential: Option<&str>, event_type: &str, data: &[u8]) {
        for o in &self.0 {
            o.event(credential, event_type, data);
        }
    }

    /// Shows a terminal event to every observer, its usage read once for all.
    pub(super) fn notify_terminal(&self, credential: Option<&str>, event_type: &str, data: &[u8]) {
        let Some(first) = self.0.first() else {
            return;
        };
        let terminal = TerminalEvent::new(event_type, data);
        first.terminal(credential, &terminal);
        for o in &self.0[1..] {
            o.terminal(credential, &terminal);
        }
    }

    /// Whether any observer reads content events.
    pub(super) fn read_content(&self) -> bool {
        self.0.iter().any(|o| o.reads_content())
    }
}

/// Response extension: the stream's events were (and will be) shown to the request's
/// [`StreamObservers`]; an observer need not parse the body itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventsObserved;

/// The `response.usage` object of a terminal event, scanned without parsing its output.
pub(crate) fn terminal_usage(data: &[u8]) -> Option<TerminalUsage> {
    #[derive(serde::Deserialize)]
    struct Usage {
        input_tokens: Option<u64>,
        #[serde(default)]
        output_tokens: Option<u64>,
    }
    let at = find_in_object(data, |key, _, at| (key == b"response").then_some(at))?;
    let resp = &data[at..];
    let usage_at = find_in_object(resp, |key, _, at| (key == b"usage").then_some(at))?;
    let end = skip_value(resp, usage_at)?;
    let usage = serde_json::from_slice::<Usage>(&resp[usage_at..end]).ok()?;
    Some(TerminalUsage {
        input_tokens: usage.input_tokens,
        output_tokens: usage.output_tokens,
    })
}
