//! The fuzzing surface: what the targets in `fuzz/` call that the public API does not reach.
//!
//! Only with the `fuzzing` feature, hidden from the docs, never a stable API. Everything here
//! hands straight through to the crate's own code: a target must exercise exactly what the
//! layers run, so no logic lives here. The parsers that are public already (the SSE decoder,
//! [`classify`](crate::classify), the hint parsers, [`decode`](crate::body::decode)) are called
//! through their public paths.

use std::time::Duration;

use bytes::Bytes;
use http::Response;

use crate::body::ResponseBody;
use crate::error::ApiError;
use crate::json::RawObject;
use crate::normalize::{Rule, TokenCapPolicy};

/// `RawObject::scan_valid`: the top-level scan used for bodies the edge already validated.
pub fn scan_valid(bytes: &[u8]) -> Option<RawObject<'_>> {
    RawObject::scan_valid(bytes)
}

/// `RawObject::parse_with_spans`: the edge's validating walk of a request body (the object
/// without its spans).
pub fn parse_with_spans(bytes: &[u8]) -> Option<RawObject<'_>> {
    RawObject::parse_with_spans(bytes).map(|(obj, _)| obj)
}

/// What `BodyNormalizeLayer`'s planner decided for one body (the crate-private `Rewrite`,
/// field for field).
#[derive(Debug)]
pub enum Normalized {
    /// Not a JSON object: forwarded untouched.
    Untouched,
    /// Answered by the layer itself.
    Rejected(ApiError),
    /// Forwarded, maybe rewritten.
    Planned {
        /// The new body, when anything changed.
        body: Option<Bytes>,
        /// Labels of what changed.
        changed: Vec<String>,
        /// The client asked for a stream.
        client_stream: bool,
        /// The upstream is asked for a stream.
        upstream_stream: bool,
        /// The `max_output_tokens` enforced on the way back.
        cap: Option<u64>,
    },
}

/// The normalization planner (`normalize::rewrite::rewrite`).
pub fn normalize(
    body: &[u8],
    validated: bool,
    rules: &[Rule],
    policy: TokenCapPolicy,
    learned: &[String],
) -> Normalized {
    // A validated body reaches the planner as the spans of the proxy's validating parse.
    let spans = validated
        .then(|| RawObject::parse_with_spans(body))
        .flatten();
    let parsed = spans.and_then(|(_, spans)| RawObject::from_spans(body, &spans));
    match crate::normalize::rewrite(body, validated, parsed, rules, policy, learned) {
        crate::normalize::Rewrite::Untouched => Normalized::Untouched,
        crate::normalize::Rewrite::Reject(e) => Normalized::Rejected(e),
        crate::normalize::Rewrite::Plan(p) => Normalized::Planned {
            body: p.body,
            changed: p.changed,
            client_stream: p.client_stream,
            upstream_stream: p.upstream_stream,
            cap: p.cap,
        },
    }
}

/// The `stream:false` fold (`normalize::fold::fold`): a streamed answer in, one JSON object
/// or an error response out.
pub async fn fold(
    res: Response<ResponseBody>,
    limit: usize,
    idle: Duration,
) -> Response<ResponseBody> {
    crate::normalize::fold(res, limit, idle).await
}

/// A `max_output_tokens` gate (`normalize::cap::CapGate`), as soft-failure detection and
/// `CapBody` run it (deferring), or counting every event on arrival: the behaviour deferral
/// must equal.
pub struct CapGate(crate::normalize::cap::CapGate);

/// What a [`CapGate`] decided for one event (`soft_failure::gate::Verdict`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapVerdict {
    /// Forwarded; the gate goes on.
    Forward,
    /// Forwarded, and nothing after it is looked at.
    ForwardLast,
    /// Not forwarded: the stream ends with [`CapGate::closing`].
    Cut,
}

impl CapGate {
    /// A gate for `cap` tokens tracking `budget` bytes of the response.
    pub fn new(cap: u64, budget: usize, deferring: bool) -> Self {
        use crate::normalize::cap::CapGate as Gate;
        CapGate(if deferring {
            Gate::new(cap, budget, None)
        } else {
            Gate::counting_on_arrival(cap, budget)
        })
    }

    /// One decoded event, as the layers show it to the gate.
    pub fn admit(&mut self, event: &crate::sse::Event) -> CapVerdict {
        use crate::soft_failure::gate::{Gate, Verdict};
        let event = event.borrowed();
        let ty = event.event_type();
        let kind = ty.map_or(crate::sse::EventKind::Other, crate::sse::event_kind);
        match self.0.admit(ty, kind, event) {
            Verdict::Forward => CapVerdict::Forward,
            Verdict::ForwardLast => CapVerdict::ForwardLast,
            Verdict::Cut => CapVerdict::Cut,
        }
    }

    /// The closing `response.incomplete` event of a cut stream.
    pub fn closing(&mut self) -> Bytes {
        use crate::soft_failure::gate::Gate;
        self.0.closing()
    }
}

/// The re-framing of chunked bodies below hyper (`connect::rechunk`), with hyper as the
/// oracle: `rechunk_run(exchanges, rechunk)` reads the scripted connection straight or through
/// the re-framing.
pub use crate::connect::rechunk::oracle::{
    Counts as RechunkCounts, Exchange as RechunkExchange, Seen as RechunkSeen, run as rechunk_run,
};
