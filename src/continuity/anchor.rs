//! What ties a request to a response one credential created.

use http::{Method, Request};

use crate::facts::RequestFacts;

/// Longest response id taken from a path; real ids are ~50 characters.
const MAX_ID: usize = 200;

/// A response id a request depends on, and how it names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Anchor {
    /// `previous_response_id` in the body: a non-owner answers `400 previous_response_not_found`.
    Previous(String),
    /// The path names it (`GET`/`DELETE /responses/{id}`, `POST /responses/{id}/cancel`,
    /// `GET /responses/{id}/input_items`): a non-owner answers `404`.
    Path(String),
}

impl Anchor {
    /// The request's anchor, if it has one; the body's `previous_response_id` first.
    pub(super) fn of<B>(req: &Request<B>, facts: &RequestFacts) -> Option<Anchor> {
        if let Some(id) = &facts.previous_response_id {
            return Some(Anchor::Previous(id.clone()));
        }
        addressed_id(req.method(), req.uri().path()).map(|id| Anchor::Path(id.to_owned()))
    }

    /// The response id.
    pub(super) fn id(&self) -> &str {
        match self {
            Anchor::Previous(id) | Anchor::Path(id) => id,
        }
    }

    /// How logs name it.
    pub(super) fn name(&self) -> &'static str {
        match self {
            Anchor::Previous(_) => "previous_response_id",
            Anchor::Path(_) => "the response in the path",
        }
    }
}

/// The response id of a path-addressed response operation, whatever prefix the upstream
/// path has (`/v1`, `/backend-api/codex`).
fn addressed_id<'a>(method: &Method, path: &'a str) -> Option<&'a str> {
    let mut segments = path.trim_end_matches('/').rsplit('/');
    let last = segments.next()?;
    let (id, operation) = match last {
        "cancel" | "input_items" => (segments.next()?, Some(last)),
        id => (id, None),
    };
    if segments.next()? != "responses" || !plausible_id(id) {
        return None;
    }
    let addressed = match operation {
        None => method == Method::GET || method == Method::DELETE,
        Some("cancel") => method == Method::POST,
        Some(_) => method == Method::GET,
    };
    addressed.then_some(id)
}

/// Ids are short and URL-safe; `compact` is the compaction route, not an id.
fn plausible_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID
        && id != "compact"
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_addressed_operations_name_their_response() {
        let get = Method::GET;
        let post = Method::POST;
        let delete = Method::DELETE;
        assert_eq!(addressed_id(&get, "/v1/responses/resp_1"), Some("resp_1"));
        assert_eq!(
            addressed_id(&delete, "/v1/responses/resp_1/"),
            Some("resp_1")
        );
        assert_eq!(
            addressed_id(&post, "/backend-api/codex/responses/resp_1/cancel"),
            Some("resp_1")
        );
        assert_eq!(
            addressed_id(&get, "/v1/responses/resp_1/input_items"),
            Some("resp_1")
        );
        // Not response operations, or not this method.
        assert_eq!(addressed_id(&post, "/v1/responses"), None);
        assert_eq!(addressed_id(&get, "/v1/responses"), None);
        assert_eq!(addressed_id(&post, "/v1/responses/compact"), None);
        assert_eq!(addressed_id(&get, "/v1/responses/compact"), None);
        assert_eq!(addressed_id(&post, "/v1/responses/resp_1"), None);
        assert_eq!(addressed_id(&get, "/v1/responses/resp_1/cancel"), None);
        assert_eq!(addressed_id(&get, "/v1/models/resp_1"), None);
        assert_eq!(addressed_id(&get, "/v1/responses/a%2Fb"), None);
        assert_eq!(addressed_id(&get, "/cancel"), None);
        assert_eq!(addressed_id(&get, ""), None);
        let long = format!("/v1/responses/{}", "a".repeat(MAX_ID + 1));
        assert_eq!(addressed_id(&get, &long), None);
    }

    #[test]
    fn the_body_anchor_comes_first() {
        let req = Request::get("/v1/responses/resp_path").body(()).unwrap();
        let facts = RequestFacts {
            previous_response_id: Some("resp_body".into()),
            ..RequestFacts::default()
        };
        assert_eq!(
            Anchor::of(&req, &facts),
            Some(Anchor::Previous("resp_body".into()))
        );
        assert_eq!(
            Anchor::of(&req, &RequestFacts::default()),
            Some(Anchor::Path("resp_path".into()))
        );
    }
}
