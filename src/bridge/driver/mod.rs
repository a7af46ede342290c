//! The machinery every backend shares, written once.
//!
//! - [`settle`]: [`SettleQueue`], outcomes taken in hand-off order.
//! - [`backoff`]: [`Backoff`], jittered exponential delays.
//! - [`sink`]: [`run_sink`], drives a [`Sink`](crate::bridge::contract::Sink).
//! - [`source`]: [`run_source`], drives a [`Source`](crate::bridge::contract::Source).

pub mod backoff;
pub mod settle;
pub mod sink;
pub mod source;

pub use backoff::Backoff;
pub use settle::SettleQueue;
pub use sink::run_sink;
pub use source::run_source;
