//! The marks layers leave for each other in `http::Extensions`, in one place.
//!
//! Layers never share globals; they talk through typed extensions on the request (what an
//! outer layer tells the inner ones) and on the response (what an inner layer saw). Their
//! producers and consumers must sit in the stack's order, so every seam is listed here with
//! who writes it and who reads it.
//!
//! | mark | on | written by | read by |
//! |---|---|---|---|
//! | [`RequestFacts`] | request | the proxy's body check, else the first layer that needs it | every layer (model, stream, anchor, session) |
//! | [`PinnedCredential`] | request | `ContinuityLayer` (anchor owner, owner search) | `CredentialRotateLayer` (never goes elsewhere) |
//! | [`EncryptedOwner`] | request | `ContinuityLayer` (anchor owner, else the session's last account) | `CredentialRotateLayer` (strips encrypted reasoning on another account) |
//! | [`CredentialLease`] | request | `CredentialRotateLayer`, per attempt | `SoftFailureDetectLayer`'s body (failures after commit cool the credential) |
//! | [`Profile`] | request | `CredentialRotateLayer` (the member's profile) | `BodyNormalizeLayer` |
//! | [`RemoteCompactAttempt`] | request | `CompactRouteLayer` | `CredentialRotateLayer` (a refused compaction is the route's fault) |
//! | [`StreamObservers`] | request | `ContinuityLayer` | `SoftFailureDetectLayer` (calls them per parsed event) |
//! | [`SoftFailure`] | response | `SoftFailureDetectLayer`; `BodyNormalizeLayer` (fold, synthetic answers); `CompactRouteLayer` | `CredentialRotateLayer`'s policy, `ContinuityLayer`, `CompactRouteLayer` |
//! | [`ServedBy`] | response | `CredentialRotateLayer` | `ContinuityLayer` (learns owners), the proxy's logs |
//! | [`EventsObserved`] | response | `SoftFailureDetectLayer` | `ContinuityLayer` (skips its own reader) |
//! | [`Compacted`] | response | `CompactRouteLayer` | the proxy's logs and metrics |
//! | [`AttemptError`] | error | `FreshConnectionLayer`, the per-attempt head timeout | `CredentialRotateLayer`'s policy (may the request go again?) |
//!
//! An attempt's phase ([`Phase`]) is what retry safety is decided from: a request may go
//! upstream again only if it was never sent, or failed on a reused connection before the
//! upstream could have worked on it; and never once the client has seen content.

use std::fmt;
use std::sync::Arc;

use crate::classify::Failure;

pub use crate::compact::{Compacted, RemoteCompactAttempt};
pub use crate::credentials::CredentialLease;
pub use crate::facts::RequestFacts;
pub use crate::profile::Profile;
pub use crate::soft_failure::{EventsObserved, StreamObservers};

/// How far an upstream attempt got before it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// The upstream cannot have worked on it: the connection was never made, hyper handed
    /// the request back unsent, or a reused connection broke right after the write, before
    /// the upstream could have started.
    Unsent,
    /// The request reached the upstream and no answer head came back (a loss or a timeout
    /// after the upstream had it): it may have run.
    Sent,
    /// An answer came, and the client has seen nothing of it yet (an HTTP error, or a
    /// failure inside held-back stream events).
    BeforeContent,
    /// The client has seen content: nothing may be retried.
    AfterContent,
}

impl Phase {
    /// A `snake_case` label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Unsent => "unsent",
            Phase::Sent => "sent",
            Phase::BeforeContent => "before_content",
            Phase::AfterContent => "after_content",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Response extension: what was wrong with this answer, classified once, where it was known.
///
/// `SoftFailureDetectLayer` attaches it to HTTP errors, failed JSON objects and failures in
/// held-back stream events; layers that answer themselves (normalize's fold and synthetic
/// answers, compaction) attach it to their own answers, so no outer layer classifies again
/// from a bare status.
#[derive(Debug, Clone)]
pub struct SoftFailure {
    /// The classified failure.
    pub failure: Failure,
    /// `true` when the client has seen nothing yet (the failure came in an HTTP error, in a
    /// held-back stream, or in a JSON answer): retrying elsewhere is invisible to it.
    pub before_content: bool,
}

impl SoftFailure {
    /// The attempt's phase: [`Phase::BeforeContent`] or [`Phase::AfterContent`].
    pub fn phase(&self) -> Phase {
        if self.before_content {
            Phase::BeforeContent
        } else {
            Phase::AfterContent
        }
    }
}

/// Request extension: this request must be served by this credential (label), set by the
/// continuity layer for requests anchored to a response another credential created.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PinnedCredential(pub Arc<str>);

/// Response extension: the credential (label) that served this answer, set by rotation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServedBy(pub Arc<str>);

/// Request extension: encrypted items in this request (reasoning `encrypted_content`,
/// compaction items) were produced by this credential. When rotation must send the request
/// with another one, it strips encrypted reasoning items first: the other account cannot
/// decrypt them and the upstream would reject the whole request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EncryptedOwner(pub Arc<str>);

/// The error of an upstream attempt that got no HTTP answer: the classified failure and how
/// far the request got, so the retry policy can tell "never ran" from "may have run".
///
/// ```
/// use tower_responses::classify::Failure;
/// use tower_responses::marks::{AttemptError, Phase};
///
/// let err: tower_responses::error::BoxError =
///     AttemptError::new(Phase::Sent, Failure::transport(false, "connection reset")).into();
/// let found = AttemptError::find(&*err).expect("typed");
/// assert_eq!(found.phase, Phase::Sent);
/// ```
#[derive(Debug)]
pub struct AttemptError {
    /// How far the request got.
    pub phase: Phase,
    /// What went wrong, classified (origin `Transport`).
    pub failure: Failure,
    source: Option<crate::error::BoxError>,
}

impl AttemptError {
    /// An attempt error with no underlying error.
    pub fn new(phase: Phase, failure: Failure) -> Self {
        AttemptError {
            phase,
            failure,
            source: None,
        }
    }

    /// Keeps the underlying error (hyper's, io's) as the source.
    pub fn with_source(mut self, source: impl Into<crate::error::BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Finds an `AttemptError` in `err` or its chain of sources.
    pub fn find<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a AttemptError> {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
        while let Some(e) = cur {
            if let Some(a) = e.downcast_ref::<AttemptError>() {
                return Some(a);
            }
            cur = e.source();
        }
        None
    }
}

impl fmt::Display for AttemptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "upstream attempt failed ({}): {}",
            self.phase, self.failure
        )
    }
}

impl std::error::Error for AttemptError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}
