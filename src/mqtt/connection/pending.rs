//! Replies a client is owed, answered in the order its requests arrived.
//!
//! A QoS 1/2 PUBLISH is owed its PUBACK/PUBREC only when the router has
//! stored it for every persistent session it matched AND every uplink route
//! it matched has a backend confirmation (or gave up / refused it).
//! [`next_reply`] is cancel-safe: it is polled in a `select!`, so each result
//! is saved in the entry the moment it arrives.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use tokio::sync::oneshot;

use crate::bridge::uplink::Wait;
use crate::bridge::SinkError;
use crate::mqtt::router::{PublishOutcome, SubResult};

/// What the uplink routes of one PUBLISH came to.
#[derive(Debug, Default, Clone, Copy)]
pub struct BridgeSummary {
    /// A route's template could not be resolved.
    pub unresolved: bool,
    /// Routes whose confirmation was awaited.
    pub routes: usize,
    /// Backends refused the message for good.
    pub rejected: usize,
    /// Backends did not confirm within the route's give-up time (or closed).
    pub gave_up: usize,
}

pub struct PubWait {
    pub pkid: u16,
    pub qos: u8,
    pub rx: oneshot::Receiver<PublishOutcome>,
    /// The router's answer once it came (`Some(None)`: the router is gone).
    pub outcome: Option<Option<PublishOutcome>>,
    pub bridge: Vec<(Wait, Option<Result<(), SinkError>>)>,
    pub summary: BridgeSummary,
}

pub enum Pending {
    Pub(Box<PubWait>),
    /// A PUBLISH the ACL refused: answered in its turn, with nothing to wait for.
    Refused {
        pkid: u16,
        qos: u8,
    },
    Rel {
        pkid: u16,
        rx: oneshot::Receiver<bool>,
    },
    Sub {
        pkid: u16,
        rx: oneshot::Receiver<Vec<SubResult>>,
    },
    Unsub {
        pkid: u16,
        rx: oneshot::Receiver<Vec<bool>>,
    },
}

pub enum Ready {
    Pub {
        pkid: u16,
        qos: u8,
        outcome: Option<PublishOutcome>,
        bridge: BridgeSummary,
    },
    Refused {
        pkid: u16,
        qos: u8,
    },
    /// PUBREL answered; false: the packet id was not awaiting a PUBREL.
    Rel(u16, bool),
    Sub(u16, Option<Vec<SubResult>>),
    Unsub(u16, Option<Vec<bool>>),
}

/// Waits until the oldest owed reply can be given.
pub async fn next_reply(p: &mut VecDeque<Pending>) -> Ready {
    match p.front_mut() {
        Some(Pending::Pub(w)) => {
            if w.outcome.is_none() {
                w.outcome = Some((&mut w.rx).await.ok());
            }
            for (wait, result) in w.bridge.iter_mut().filter(|(_, r)| r.is_none()) {
                let r = match wait.deadline {
                    Some(at) => tokio::time::timeout_at(at, &mut wait.rx).await.ok(),
                    None => Some((&mut wait.rx).await),
                };
                *result = Some(match r {
                    Some(Ok(r)) => r,
                    _ => Err(SinkError::Closed),
                });
            }
            let mut summary = w.summary;
            for (_, r) in &w.bridge {
                match r {
                    Some(Err(SinkError::Rejected(_))) => summary.rejected += 1,
                    Some(Err(SinkError::Closed)) => summary.gave_up += 1,
                    _ => {}
                }
            }
            Ready::Pub {
                pkid: w.pkid,
                qos: w.qos,
                outcome: w.outcome.flatten(),
                bridge: summary,
            }
        }
        Some(Pending::Refused { pkid, qos }) => Ready::Refused {
            pkid: *pkid,
            qos: *qos,
        },
        Some(Pending::Rel { pkid, rx }) => {
            let known = rx.await.unwrap_or(true);
            Ready::Rel(*pkid, known)
        }
        Some(Pending::Sub { pkid, rx }) => Ready::Sub(*pkid, rx.await.ok()),
        Some(Pending::Unsub { pkid, rx }) => Ready::Unsub(*pkid, rx.await.ok()),
        None => std::future::pending().await,
    }
}

/// The oldest owed reply if it can be given now, without waiting: replies
/// that became due together are written together. The loop polls
/// [`next_reply`] again with its own waker before it sleeps, so the no-op
/// waker left here is never the one relied on.
pub fn ready_reply(p: &mut VecDeque<Pending>) -> Option<Ready> {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(next_reply(p)).poll(&mut cx) {
        Poll::Ready(r) => Some(r),
        Poll::Pending => None,
    }
}
