#![deny(unsafe_code)]
#![warn(missing_docs)]
//! # tower-responses
//!
//! `tower` middleware that keeps OpenAI Responses API traffic alive through long agent
//! sessions. See the README for the picture.

pub mod body;
pub mod classify;
pub mod error;
pub mod sse;

#[cfg(feature = "test-util")]
pub mod testing;
