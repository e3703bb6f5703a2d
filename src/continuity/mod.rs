//! Conversations keep their anchor through upstream trouble (seed 003).
//!
//! A client that receives `400 previous_response_not_found` drops its `previous_response_id`
//! and resends the whole history: one report saw per-turn input grow from ~2.3K to ~70K
//! tokens, filling the context window in 17 turns instead of 200+. [`ContinuityLayer`]:
//!
//! - **learns owners**: which credential created each response id (from `response.created` /
//!   `response.completed` in streams, and from JSON answers), in the pool's
//!   [`PoolState`](crate::credentials::PoolState) (bounded, with a TTL). Only ids that can be
//!   anchors later are recorded: not those a `chatgpt-codex` member creates (that backend
//!   stores nothing over HTTP; `store` is forced off there);
//! - **pins anchored requests to their owner** with a
//!   [`PinnedCredential`](crate::credentials::PinnedCredential): requests carrying
//!   `previous_response_id`, and the calls that name a response in their path
//!   (`GET`/`DELETE /responses/{id}`, `POST /responses/{id}/cancel`,
//!   `GET /responses/{id}/input_items`). Rotation never sends a pinned request elsewhere; a
//!   cooling owner gives `503 previous_response_owner_unavailable` with `Retry-After`;
//! - **maps recovery errors**: on an anchored request, a transport loss or a stream cut
//!   before content reaches the client as a retryable `502 upstream_unavailable` (an
//!   upstream 5xx passes as it came), never as `400 previous_response_not_found`. A genuine
//!   "not found" from the known owner passes through;
//! - **searches for an unknown owner** (after a restart, or for an id another replica
//!   created) when the first answer says the anchor is missing (`400
//!   previous_response_not_found`, normalize's own answer on `chatgpt-codex` included, or a
//!   `404` for a path-addressed call). The other credentials are asked in turn, each pinned:
//!
//!   | a credential... | counts as |
//!   |---|---|
//!   | is cooling (not asked) | inconclusive, waiting |
//!   | answers 429, or a rate-limit / quota failure | inconclusive, waiting |
//!   | loses the connection, answers 5xx, or another retryable failure (auth, overload, a stream cut) | inconclusive |
//!   | says "not found" too | not the owner |
//!   | answers anything else | the answer: the client gets it, and a success records the owner |
//!
//!   Not found anywhere: a retryable `502 upstream_unavailable` if any credential was
//!   inconclusive, a `503 previous_response_owner_unavailable` with `Retry-After` (the
//!   earliest return) if the inconclusive ones were only waiting, and the first "not found"
//!   as it came when every credential said so (the anchor is really gone);
//! - **ties encrypted items to their account**: the session's credential is recorded as the
//!   request's [`EncryptedOwner`](crate::credentials::EncryptedOwner), so rotation strips
//!   `encrypted_content` reasoning items before sending the request to another account;
//! - **counts tokens per turn** per session (`usage.input_tokens`), exported as
//!   `tr_session_input_tokens_last{session}` and friends, so a context blow-up shows in
//!   `/metrics`.
//!
//! Every attempt, the first and each one of a search, goes through the inner service this
//! layer readied in `poll_ready` (readied again for each further attempt), so a concurrency
//! limit beneath it cannot deadlock.
//!
//! ```
//! use std::sync::Arc;
//! use tower::ServiceBuilder;
//! use tower_responses::continuity::ContinuityLayer;
//! use tower_responses::credentials::{CredentialRotateLayer, Pool, PoolMember};
//!
//! let pool = Arc::new(Pool::new(vec![
//!     PoolMember::new("sk-first-aaaaaaaaaaaaaaaaaaaa".parse().unwrap()),
//!     PoolMember::new("sk-second-bbbbbbbbbbbbbbbbbbb".parse().unwrap()),
//! ]).unwrap());
//! let stack = ServiceBuilder::new()
//!     .layer(ContinuityLayer::new(pool.clone()))
//!     .layer(CredentialRotateLayer::new(pool.clone()));
//! # let _ = stack;
//! // Owners are learned as responses stream back; here one is recorded by hand.
//! let continuity = ContinuityLayer::new(pool.clone());
//! continuity.record_owner("resp_abc", "key-…bbbb");
//! assert_eq!(continuity.owner_of("resp_abc").as_deref(), Some("key-…bbbb"));
//! ```

mod anchor;
mod search;
mod service;
mod sessions;
mod watch;

pub use service::{Continuity, ContinuityConfig, ContinuityLayer};
pub use sessions::SessionStats;
pub use watch::response_tokens;
