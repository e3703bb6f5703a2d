#![deny(unsafe_code)]
#![warn(missing_docs)]
// `ApiError` is large, but errors are the cold path; boxing it would cost every caller.
#![allow(clippy::result_large_err)]
//! # tower-responses
//!
//! `tower` middleware that keeps OpenAI Responses API traffic alive through long agent
//! sessions. See the README for the picture.

pub mod body;
pub mod classify;
pub mod compact;
pub mod connect;
pub mod continuity;
pub mod credentials;
pub mod error;
pub mod facts;
pub mod fresh;
pub mod json;
pub mod marks;
pub mod metrics;
pub mod normalize;
pub mod profile;
#[cfg(feature = "proxy")]
pub mod proxy;
pub mod soft_failure;
pub mod sse;
pub mod stack;
pub mod upstream;

#[cfg(feature = "test-util")]
pub mod testing;
