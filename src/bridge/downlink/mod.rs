//! The downlink: commands consumed from Kafka or AMQP, delivered into the
//! broker's sessions.
//!
//! A source ([`kafka`], [`amqp`]) consumes in order and hands each command
//! to the route's processor as a [`CommandEnvelope`]; the processor turns it
//! into an MQTT message, gives it to the router and answers the envelope's
//! `done` with a [`CommandOutcome`] once the router has stored it durably in
//! every session it is for. Only then does the source commit the offset /
//! ack the delivery. `Retry` means "not stored": do not commit, deliver again.

mod process;
mod template;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

pub use process::{start, start_receipts, Downlink, MessageLimits, ReceiptSender, Reporting};
pub use template::{CommandTemplate, CommandTemplateError};

/// One consumed command.
#[derive(Debug, Clone)]
pub struct Command {
    /// Kafka message key.
    pub key: Option<String>,
    /// AMQP routing key.
    pub routing_key: Option<String>,
    /// Kafka / AMQP headers (string values).
    pub headers: Vec<(String, String)>,
    pub payload: Bytes,
    /// Where it came from, for logs and receipts: `topic/partition/offset`
    /// or `queue/delivery-tag`.
    pub position: String,
    /// When it was produced (Kafka timestamp / AMQP timestamp), unix ms:
    /// message expiry counts from here.
    pub timestamp_ms: Option<u64>,
}

impl Command {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What the source may do with a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandOutcome {
    /// Stored in every session it is for (or delivered to clean sessions).
    Stored,
    /// Settled without delivery (expired, malformed → dead-lettered, no
    /// matching session): commit/ack it so it does not block the partition.
    Dropped,
    /// Not stored (store failure, a full global store budget, or shutdown):
    /// do not commit; consume again after a pause.
    Retry,
}

/// A command and where to report its outcome.
#[derive(Debug)]
pub struct CommandEnvelope {
    pub command: Command,
    pub done: oneshot::Sender<CommandOutcome>,
}

/// The input of a downlink route's processor (bounded: a full channel makes
/// the source wait, i.e. consume no further).
pub type CommandTx = mpsc::Sender<CommandEnvelope>;
