//! The owner search: when nobody knows which credential owns an anchor (after a restart, or
//! for an id another replica created) and the first credential says "not found", the others
//! are asked before the client is told.

use std::time::SystemTime;

use http::{Request, Response};
use tower::ServiceExt;
use tower_service::Service;

use super::anchor::Anchor;
use super::service::{ContinuityLayer, count};
use crate::body::{ReplayBody, ResponseBody, clone_request};
use crate::credentials::policy::{self, OwnerAnswer, SearchTally};
use crate::credentials::{PinnedCredential, ServedBy};
use crate::error::BoxError;
use crate::marks::AttemptError;
use crate::soft_failure::SoftFailure;

/// Reads an answer to an anchored request ([`policy::owner_answer`] decides).
pub(super) fn verdict(res: &Response<ResponseBody>, anchor: &Anchor) -> OwnerAnswer {
    let class = res
        .extensions()
        .get::<SoftFailure>()
        .filter(|s| s.before_content)
        .map(|s| s.failure.class);
    policy::owner_answer(res.status(), class, matches!(anchor, Anchor::Path(_)))
}

/// Counts the credentials that could not tell.
fn wait_until(tally: &mut SearchTally, until: Option<SystemTime>) {
    tally.waiting += 1;
    if let Some(back) = until.and_then(|t| t.duration_since(SystemTime::now()).ok()) {
        tally.earliest_return = Some(tally.earliest_return.map_or(back, |e| e.min(back)));
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
    let mut inconclusive = SearchTally::default();
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
            wait_until(&mut inconclusive, c.until);
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
            OwnerAnswer::Missing => {}
            OwnerAnswer::Waiting => {
                tracing::info!(
                    credential = &*label,
                    status = res.status().as_u16(),
                    "owner search: credential limited; inconclusive"
                );
                let hinted = res
                    .extensions()
                    .get::<SoftFailure>()
                    .and_then(|s| s.failure.retry.until(SystemTime::now()));
                wait_until(
                    &mut inconclusive,
                    pool.cooldown_of(&label).and_then(|c| c.until).or(hinted),
                );
            }
            OwnerAnswer::Unavailable => {
                tracing::info!(
                    credential = &*label,
                    status = res.status().as_u16(),
                    "owner search: credential could not tell; inconclusive"
                );
                inconclusive.unavailable += 1;
            }
            OwnerAnswer::Found => {
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
    match policy::after_owner_search(&inconclusive, anchor.name()) {
        Some(err) => {
            let res = err.into_stack_response();
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
