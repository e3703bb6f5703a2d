//! Decisions about anchored requests (a `previous_response_id`, or a `/responses/{id}` path)
//! whose anchor an upstream says it does not have.
//!
//! | situation | decision |
//! |---|---|
//! | owner search, a credential's answer: `previous_response_not_found` (a 404 for a path anchor) | [`OwnerAnswer::Missing`]: ask the next credential |
//! | a 429, or a rate-limit or quota failure | [`OwnerAnswer::Waiting`]: it could not tell for a while |
//! | a 5xx, or any failure that retries elsewhere (transient, overloaded, auth, a stale connection) | [`OwnerAnswer::Unavailable`]: it could not tell |
//! | anything else (a success, a 400 about the input, a 404 for a `previous_response_id`) | [`OwnerAnswer::Found`]: this is the answer |
//! | search over, some credential was unavailable | `502 upstream_unavailable` (retryable, same id) |
//! | search over, the rest were only waiting | `503 previous_response_owner_unavailable`, `Retry-After` = the earliest return (5 s when none is known, at least 1 s) |
//! | search over, every credential said missing | the first answer as it came |
//! | an upstream socket says `previous_response_not_found` to a chained frame, before any output, the first time in the turn | resend the full request on the same socket ([`LostChain::ResendFull`]; seed 003: the client never resends its history) |
//! | the same, a second time, or after output, or to a full request | a failure like any other ([`LostChain::Failure`]: [`decide`](super::decide)) |

use std::time::Duration;

use http::StatusCode;

use crate::classify::FailureClass;
use crate::error::ApiError;

/// `Retry-After` of a search that only met waiting credentials, when none says when it
/// returns.
pub const OWNER_SEARCH_DEFAULT_WAIT: Duration = Duration::from_secs(5);

/// What one credential's answer to an anchored request says about the anchor, during an
/// owner search ([`owner_answer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerAnswer {
    /// It does not have the anchor: ask the next credential.
    Missing,
    /// It could not tell, for a while (cooling, a 429, a quota): it counts as waiting.
    Waiting,
    /// It could not tell (a transport loss, a 5xx, a retryable failure).
    Unavailable,
    /// It answered about the anchor: this is the answer the client gets.
    Found,
}

/// Reads one answer of an owner search. `class` is the failure classified before content,
/// if any; `path_anchor` is true when the anchor is a `/responses/{id}` path (a 404 means
/// missing) rather than a `previous_response_id` (only `previous_response_not_found` does).
pub fn owner_answer(
    status: StatusCode,
    class: Option<FailureClass>,
    path_anchor: bool,
) -> OwnerAnswer {
    let missing = if path_anchor {
        status == StatusCode::NOT_FOUND
    } else {
        class == Some(FailureClass::PreviousResponseNotFound)
    };
    if missing {
        OwnerAnswer::Missing
    } else if status == StatusCode::TOO_MANY_REQUESTS
        || matches!(
            class,
            Some(FailureClass::RateLimited | FailureClass::QuotaExhausted)
        )
    {
        OwnerAnswer::Waiting
    } else if status.is_server_error() || class.is_some_and(FailureClass::retry_elsewhere) {
        OwnerAnswer::Unavailable
    } else {
        OwnerAnswer::Found
    }
}

/// What the credentials of an owner search that found nobody added up to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SearchTally {
    /// Credentials that could not tell.
    pub unavailable: usize,
    /// Credentials that could not tell for a while (cooling or limited).
    pub waiting: usize,
    /// How long until the earliest waiting credential returns, when one said.
    pub earliest_return: Option<Duration>,
}

/// What the client gets when an owner search found no owner; `None`: the first answer as it
/// came (every credential said the anchor is missing). `anchor` names it for the message.
pub fn after_owner_search(tally: &SearchTally, anchor: &str) -> Option<ApiError> {
    if tally.unavailable > 0 {
        return Some(anchored_transport_loss());
    }
    if tally.waiting == 0 {
        return None;
    }
    let wait = tally
        .earliest_return
        .unwrap_or(OWNER_SEARCH_DEFAULT_WAIT)
        .max(Duration::from_secs(1));
    Some(
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            format!(
                "the credential that may own {anchor} is cooling; retry this request unchanged later"
            ),
        )
        .with_code("previous_response_owner_unavailable")
        .with_retry_after(wait),
    )
}

/// What an anchored request gets when its attempt was lost in transport, or an owner search
/// could not tell: a retryable `502 upstream_unavailable`, to be retried with the same id
/// (never `previous_response_not_found`, on which clients resend their whole history).
pub fn anchored_transport_loss() -> ApiError {
    ApiError::upstream_unavailable(
        "the upstream connection was lost; retry this request with the same previous_response_id",
    )
}

/// What a WebSocket turn does when the upstream says `previous_response_not_found`
/// ([`after_lost_chain`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostChain {
    /// Send the full request (from the socket's transcript) on the same socket.
    ResendFull,
    /// Treat it as any classified failure ([`decide`](super::decide)).
    Failure,
}

/// Decides for an upstream socket's `previous_response_not_found`. `chained`: the frame sent
/// only the new items after a `previous_response_id`; `visible`: the client has seen output
/// of the turn; `resent`: the turn already resent its full request once for this reason.
///
/// The upstream forgets a socket's responses on errors and restarts; the proxy's transcript
/// still has the full request, so the client never has to resend its history (seed 003).
/// Once per turn: a second loss means the full request is not the cure.
pub fn after_lost_chain(chained: bool, visible: bool, resent: bool) -> LostChain {
    if chained && !visible && !resent {
        LostChain::ResendFull
    } else {
        LostChain::Failure
    }
}
