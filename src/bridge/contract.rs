//! The two narrow traits a backend implements to get the shared machinery
//! of [`driver`](super::driver): [`Sink`] (uplink) and [`Source`] (downlink).
//!
//! A backend does only what is specific to it: hand a record to its client
//! and say what became of it; yield commands and settle their positions.
//! The driver does the rest, once for every backend: the bounded input, the
//! in-order confirm to the devices, reconnecting with jittered backoff,
//! re-sending what a broken connection left unconfirmed, the settle order of
//! commands, stop handling and the metrics.
//!
//! Both traits use boxed futures so that the registry can hold
//! `Box<dyn Sink>`; the cost is one allocation per call.

use std::future::Future;
use std::pin::Pin;

use super::downlink::{Command, CommandOutcome};
use super::Record;

/// A boxed, sendable future (what an object-safe async method returns).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A backend client's error, kept with its cause chain.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the backend said about one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The backend has it (delivery report, publisher confirm, fsync).
    Confirmed,
    /// Refused for good (unknown target, too large): the device is told.
    Rejected(String),
    /// Not confirmed, worth trying again (connection lost, nack): the
    /// driver reconnects and sends this record and every later one again.
    Retry(String),
}

/// Resolves once the backend confirmed or refused one record.
pub type Pending = BoxFuture<'static, Delivery>;

/// Uplink: one instance per configured backend, driven by
/// [`driver::run_sink`](super::driver::run_sink).
pub trait Sink: Send + 'static {
    /// (Re)connects. Called by the driver before the first record and after
    /// every failure, with its backoff in between.
    fn connect(&mut self) -> BoxFuture<'_, Result<(), BoxError>>;

    /// Hands a record to the backend client and returns once it is
    /// *accepted* (queued in the client), not confirmed; not returning is
    /// backpressure. `Err` means the connection is unusable: the driver
    /// reconnects and sends the record again.
    fn send(&mut self, record: &Record) -> BoxFuture<'_, Result<Pending, BoxError>>;

    /// Called once the input is closed and every record is settled.
    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// Downlink: one instance per route, driven by
/// [`driver::run_source`](super::driver::run_source).
pub trait Source: Send + 'static {
    /// (Re)connects and starts consuming from the last settled position.
    fn connect(&mut self) -> BoxFuture<'_, Result<(), BoxError>>;

    /// The next command in the backend's order. `Err` means the connection
    /// is lost: the driver reconnects, and whatever was not settled is
    /// consumed again.
    fn next(&mut self) -> BoxFuture<'_, Result<Command, BoxError>>;

    /// Settles one command's position; called in consumption order, each
    /// only after every earlier one. `Stored` and `Dropped` may be
    /// committed / acked; `Retry` must come back later.
    fn settle(
        &mut self,
        position: &str,
        outcome: CommandOutcome,
    ) -> BoxFuture<'_, Result<(), BoxError>>;
}
