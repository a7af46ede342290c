//! What a connection hands on after handling packets: messages for the
//! router, then QoS 1/2 envelopes for the uplink sinks, each in order.
//!
//! Sent without waiting when the channels have room, as they nearly always
//! do. When one is full, the loop stops reading the client and waits for
//! room as one branch of its `select!` ([`room`]), so a slow backend slows
//! the device without stopping its acks, deliveries, keepalive or takeover.

use tokio::sync::mpsc::{self, error::SendError, error::TrySendError, OwnedPermit};

use super::{Conn, ConnError};
use crate::bridge::{Envelope, SinkError};
use crate::mqtt::router::RouterMsg;

/// The channel a connection waits for room in.
pub(super) enum Blocked {
    Router(mpsc::Sender<RouterMsg>),
    Sink(mpsc::Sender<Envelope>),
}

/// Room for one message, in the channel it was waited for.
pub(super) enum Reserved {
    Router(Result<OwnedPermit<RouterMsg>, SendError<()>>),
    Sink(Result<OwnedPermit<Envelope>, SendError<()>>),
}

/// Resolves when the channel has room; never when nothing is blocked.
pub(super) async fn room(blocked: Option<Blocked>) -> Reserved {
    match blocked {
        Some(Blocked::Router(tx)) => Reserved::Router(tx.reserve_owned().await),
        Some(Blocked::Sink(tx)) => Reserved::Sink(tx.reserve_owned().await),
        None => std::future::pending().await,
    }
}

impl Conn<'_> {
    /// Where the first unsent message waits, if any does.
    pub(super) fn blocked_on(&self) -> Option<Blocked> {
        if !self.outbox.is_empty() {
            return Some(Blocked::Router(self.sh.router.clone()));
        }
        let (tx, _) = self.sink_outbox.front()?;
        Some(Blocked::Sink(tx.clone()))
    }

    /// Sends what it can without waiting, in order; stops at a full channel.
    pub(super) fn try_flush_outbox(&mut self) -> Result<(), ConnError> {
        while let Some(msg) = self.outbox.pop_front() {
            match self.sh.router.try_send(msg) {
                Ok(()) => {}
                Err(TrySendError::Full(msg)) => {
                    self.outbox.push_front(msg);
                    return Ok(());
                }
                Err(TrySendError::Closed(_)) => return Err(ConnError::ShuttingDown),
            }
        }
        while let Some((tx, env)) = self.sink_outbox.pop_front() {
            match tx.try_send(env) {
                Ok(()) => {}
                Err(TrySendError::Full(env)) => {
                    self.sink_outbox.push_front((tx, env));
                    return Ok(());
                }
                Err(TrySendError::Closed(env)) => refuse_closed(env),
            }
        }
        Ok(())
    }

    /// Sends the first waiting message into the room found for it.
    pub(super) fn send_reserved(&mut self, r: Reserved) -> Result<(), ConnError> {
        match r {
            Reserved::Router(Ok(permit)) => {
                if let Some(msg) = self.outbox.pop_front() {
                    permit.send(msg);
                }
            }
            Reserved::Router(Err(_)) => return Err(ConnError::ShuttingDown),
            Reserved::Sink(Ok(permit)) => {
                if let Some((_, env)) = self.sink_outbox.pop_front() {
                    permit.send(env);
                }
            }
            Reserved::Sink(Err(_)) => {
                if let Some((_, env)) = self.sink_outbox.pop_front() {
                    refuse_closed(env);
                }
            }
        }
        Ok(())
    }

    /// For a closing connection: its acks decoded before the end still go
    /// to the router (which always drains); uplink envelopes no sink has
    /// room for are dropped unacknowledged (the device sends them again),
    /// so that a full sink cannot hold the close of a taken-over connection.
    pub(super) async fn flush_outbox(&mut self) -> Result<(), ConnError> {
        while let Some(msg) = self.outbox.pop_front() {
            self.sh
                .router
                .send(msg)
                .await
                .map_err(|_| ConnError::ShuttingDown)?;
        }
        for (tx, env) in self.sink_outbox.drain(..) {
            if let Err(TrySendError::Full(env) | TrySendError::Closed(env)) = tx.try_send(env) {
                refuse_closed(env);
            }
        }
        Ok(())
    }
}

/// A sink that is gone fails what was handed to it: the device is not
/// acknowledged.
fn refuse_closed(env: Envelope) {
    if let Some(c) = env.confirm {
        let _ = c.send(Err(SinkError::Closed));
    }
}
