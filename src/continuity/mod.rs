//! Conversations keep their anchor through upstream trouble (seed 003).
//!
//! A client that receives `400 previous_response_not_found` drops its `previous_response_id`
//! and resends the whole history: one report saw per-turn input grow from ~2.3K to ~70K
//! tokens, filling the context window in 17 turns instead of 200+. [`ContinuityLayer`]:
//!
//! - **learns owners**: which credential created each response id (from `response.created` /
//!   `response.completed` in streams, and from JSON answers), in the pool's
//!   [`PoolState`](crate::credentials::PoolState) (bounded, with a TTL), and pins every
//!   request carrying `previous_response_id` to its owner with a
//!   [`PinnedCredential`](crate::credentials::PinnedCredential). Rotation never sends a pinned
//!   request elsewhere; a cooling owner gives `503 previous_response_owner_unavailable` with
//!   `Retry-After`;
//! - **maps recovery errors**: on a request with `previous_response_id`, a transport loss, a
//!   stream cut before content, or a stale connection reaches the client as a retryable
//!   `502 upstream_unavailable` (an upstream 5xx passes as it came), never as
//!   `400 previous_response_not_found`. A genuine `previous_response_not_found` from the owner
//!   passes through; when the owner is unknown (say, after a restart), the other credentials
//!   are asked in turn before the client is told;
//! - **ties encrypted items to their account**: the session's credential is recorded as the
//!   request's [`EncryptedOwner`](crate::credentials::EncryptedOwner), so rotation strips
//!   `encrypted_content` reasoning items before sending the request to another account;
//! - **counts tokens per turn** per session (`usage.input_tokens`), exported as
//!   `tr_session_input_tokens_last{session}` and friends, so a context blow-up shows in
//!   `/metrics`.
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
