//! The machinery every backend shares, written once.
//!
//! - [`settle`]: [`SettleQueue`], outcomes taken in hand-off order.
//! - [`backoff`]: [`Backoff`], jittered exponential delays.

pub mod backoff;
pub mod settle;

pub use backoff::Backoff;
pub use settle::SettleQueue;
