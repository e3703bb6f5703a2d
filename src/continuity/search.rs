//! The owner search: when nobody knows which credential owns an anchor (after a restart, or
//! for an id another replica created) and the first credential says "not found", the others
//! are asked before the client is told.

use std::time::{Duration, SystemTime};

use http::{Request, Response, StatusCode};
use tower::ServiceExt;
use tower_service::Service;

use super::anchor::Anchor;
use super::service::{ContinuityLayer, count, upstream_unavailable};
use crate::body::{ReplayBody, ResponseBody, clone_request};
use crate::classify::FailureClass;
use crate::credentials::{PinnedCredential, ServedBy};
use crate::error::{ApiError, BoxError};
use crate::marks::AttemptError;
use crate::soft_failure::SoftFailure;

/// `Retry-After` of a search that only met waiting credentials, when none says when it
/// returns.
const DEFAULT_WAIT: Duration = Duration::from_secs(5);

/// What one credential's answer says about the anchor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// It does not have it.
    Missing,
    /// It could not tell, for a while (cooling, a 429, a quota): ask again later.
    Waiting,
    /// It could not tell (a transport loss, a 5xx, a retryable failure): ask again.
    Unavailable,
    /// It answered about the anchor: this is the answer.
    Answer,
}

/// Reads an answer to an anchored request.
pub(super) fn verdict(res: &Response<ResponseBody>, anchor: &Anchor) -> Verdict {
    let class = res
        .extensions()
        .get::<SoftFailure>()
        .filter(|s| s.before_content)
        .map(|s| s.failure.class);
    let status = res.status();
    let missing = match anchor {
        Anchor::Previous(_) => class == Some(FailureClass::PreviousResponseNotFound),
        Anchor::Path(_) => status == StatusCode::NOT_FOUND,
    };
    if missing {
        Verdict::Missing
    } else if status == StatusCode::TOO_MANY_REQUESTS
        || matches!(
            class,
            Some(FailureClass::RateLimited | FailureClass::QuotaExhausted)
        )
    {
        Verdict::Waiting
    } else if status.is_server_error() || class.is_some_and(FailureClass::retry_elsewhere) {
        Verdict::Unavailable
    } else {
        Verdict::Answer
    }
}

/// What the credentials that could not tell add up to.
#[derive(Debug, Default)]
struct Inconclusive {
    unavailable: usize,
    waiting: usize,
    earliest: Option<SystemTime>,
}

impl Inconclusive {
    fn wait_until(&mut self, until: Option<SystemTime>) {
        self.waiting += 1;
        if let Some(t) = until {
            self.earliest = Some(self.earliest.map_or(t, |e| e.min(t)));
        }
    }

    /// The answer when no credential had the anchor; `None` when every one said so.
    fn answer(&self, anchor: &Anchor) -> Option<Response<ResponseBody>> {
        if self.unavailable > 0 {
            return Some(upstream_unavailable());
        }
        if self.waiting == 0 {
            return None;
        }
        let wait = self
            .earliest
            .and_then(|t| t.duration_since(SystemTime::now()).ok())
            .unwrap_or(DEFAULT_WAIT)
            .max(Duration::from_secs(1));
        Some(
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                format!(
                    "the credential that may own {} is cooling; retry this request unchanged later",
                    anchor.name()
                ),
            )
            .with_code("previous_response_owner_unavailable")
            .with_retry_after(wait)
            .into_stack_response(),
        )
    }
}

/// Asks every other credential for the anchor, each pinned, after `first` said it is missing.
///
/// Cooling credentials are not asked (they count as waiting). The first answer that is
/// neither "missing" nor inconclusive is returned, and a successful one records its
/// credential as the anchor's owner. When nobody has it: a retryable `502
/// upstream_unavailable` if any credential could not tell, a `503` with `Retry-After` if
/// those were only waiting ones, and `first` as it came when every credential said
/// "missing".
pub(super) async fn search_owner<S>(
    first: Response<ResponseBody>,
    template: &Request<ReplayBody>,
    inner: &mut S,
    layer: &ContinuityLayer,
    anchor: &Anchor,
) -> Response<ResponseBody>
where
    S: Service<Request<ReplayBody>, Response = Response<ResponseBody>, Error = BoxError>,
{
    let pool = layer.pool().clone();
    let served = first.extensions().get::<ServedBy>().map(|s| s.0.clone());
    let mut inconclusive = Inconclusive::default();
    for label in pool.labels() {
        if Some(&label) == served.as_ref() {
            continue;
        }
        if let Some(c) = pool.cooldown_of(&label) {
            tracing::info!(
                credential = &*label,
                reason = %c.reason,
                "owner search: not asking a cooling credential"
            );
            inconclusive.wait_until(c.until);
            continue;
        }
        let mut attempt = clone_request(template);
        attempt
            .extensions_mut()
            .insert(PinnedCredential(label.clone()));
        count(layer, "search_owner");
        // The instance readied for the first attempt is readied again: a clone would wait
        // for capacity (a concurrency limit's permit) that this one may hold.
        let answer = match inner.ready().await {
            Ok(svc) => svc.call(attempt).await,
            Err(e) => Err(e),
        };
        let res = match answer {
            Ok(res) => res,
            Err(e) => {
                // Sent or not, a lost attempt cannot say whether the credential has the anchor.
                let phase = AttemptError::find(&*e).map(|a| a.phase.as_str());
                tracing::info!(credential = &*label, error = %e, phase, "owner search: transport loss; inconclusive");
                inconclusive.unavailable += 1;
                continue;
            }
        };
        match verdict(&res, anchor) {
            Verdict::Missing => {}
            Verdict::Waiting => {
                tracing::info!(
                    credential = &*label,
                    status = res.status().as_u16(),
                    "owner search: credential limited; inconclusive"
                );
                let hinted = res
                    .extensions()
                    .get::<SoftFailure>()
                    .and_then(|s| s.failure.retry.until(SystemTime::now()));
                inconclusive.wait_until(pool.cooldown_of(&label).and_then(|c| c.until).or(hinted));
            }
            Verdict::Unavailable => {
                tracing::info!(
                    credential = &*label,
                    status = res.status().as_u16(),
                    "owner search: credential could not tell; inconclusive"
                );
                inconclusive.unavailable += 1;
            }
            Verdict::Answer => {
                tracing::info!(
                    credential = &*label,
                    anchor = anchor.name(),
                    "found the owner on another credential"
                );
                count(layer, "owner_found");
                if res.status().is_success() {
                    layer.record_owner(anchor.id(), &label);
                }
                return res;
            }
        }
    }
    match inconclusive.answer(anchor) {
        Some(res) => {
            tracing::info!(
                anchor = anchor.name(),
                unavailable = inconclusive.unavailable,
                waiting = inconclusive.waiting,
                status = res.status().as_u16(),
                "owner not found, but not every credential could tell; answering a retryable error"
            );
            count(layer, "search_inconclusive");
            res
        }
        None => first,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::full_body;
    use crate::classify::Failure;

    fn answer(status: u16, class: Option<FailureClass>) -> Response<ResponseBody> {
        let mut res = Response::new(full_body(bytes::Bytes::new()));
        *res.status_mut() = StatusCode::from_u16(status).unwrap();
        if let Some(class) = class {
            res.extensions_mut().insert(SoftFailure {
                failure: Failure::new(class),
                before_content: true,
            });
        }
        res
    }

    #[test]
    fn what_each_answer_says_about_the_anchor() {
        use FailureClass::*;
        let previous = Anchor::Previous("resp_1".into());
        let path = Anchor::Path("resp_1".into());
        let rows = [
            (
                400,
                Some(PreviousResponseNotFound),
                &previous,
                Verdict::Missing,
            ),
            (404, Some(RouteNotFound), &path, Verdict::Missing),
            (404, None, &path, Verdict::Missing),
            (429, Some(RateLimited), &previous, Verdict::Waiting),
            (429, None, &previous, Verdict::Waiting),
            (200, Some(QuotaExhausted), &previous, Verdict::Waiting),
            (500, Some(Transient), &previous, Verdict::Unavailable),
            (502, None, &path, Verdict::Unavailable),
            (200, Some(Transient), &previous, Verdict::Unavailable),
            (401, Some(Auth), &previous, Verdict::Unavailable),
            (200, None, &previous, Verdict::Answer),
            (400, Some(InvalidRequest), &previous, Verdict::Answer),
            // A 404 is not a missing previous_response_id.
            (404, Some(RouteNotFound), &previous, Verdict::Answer),
        ];
        for (status, class, anchor, expected) in rows {
            assert_eq!(
                verdict(&answer(status, class), anchor),
                expected,
                "{status} {class:?} {anchor:?}"
            );
        }
    }
}
