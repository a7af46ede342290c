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
    /// The connection was closed because of *some* record in flight, not
    /// necessarily this one (an AMQP channel closed by a message-specific
    /// error such as a deleted exchange). The driver sends the records that
    /// were in flight again one at a time; one that gets `Suspect` while it
    /// is alone in flight is the culprit and is refused.
    Suspect(String),
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
    /// reconnects and sends the record again, but first waits for the
    /// outcomes of the records already in flight (they may be confirmed).
    fn send<'a>(&'a mut self, record: &'a Record) -> BoxFuture<'a, Result<Pending, BoxError>>;

    /// Records sent and not yet confirmed, at most: bounds memory and what
    /// is sent twice after a failure. A client that batches (Kafka) wants
    /// more in flight than one that confirms each record.
    fn window(&self) -> usize {
        super::driver::sink::WINDOW
    }

    /// Whether the connection still looks usable, checked by the driver
    /// every [`HEALTH_CHECK`](super::driver::sink::HEALTH_CHECK): `false`
    /// when idle, or twice in a row with records in flight (their `Pending`s
    /// should have failed first; this is the net), counts as a lost
    /// connection, so reconnecting starts before the next record.
    fn healthy(&self) -> bool {
        true
    }

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

    /// Whether settling `Retry` hands the command back by itself (an AMQP
    /// nack with requeue), so consuming goes on. If not (the default,
    /// Kafka's model), the driver ends the connection after a `Retry` and
    /// the source resumes from the last settled position on `connect`.
    fn requeues_on_retry(&self) -> bool {
        false
    }

    /// Called when a connection's consuming ends (lost, stopped, or the
    /// processor gone), after what could be settled was settled: release
    /// the connection; whatever is unsettled is consumed again later.
    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// Shows an error with its whole cause chain (`what: why: root cause`),
/// for log lines: `Display` of a typed error shows only its own level.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}
