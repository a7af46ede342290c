//! The publishing loop of one session, and how each message is settled.
//!
//! Messages are published in order with at most [`WINDOW`] unconfirmed;
//! confirms are settled in publish order, so a device's messages are answered
//! in the order it sent them. Any failure of the channel or connection ends
//! the loop with everything unsettled moved back to `replay`.

use std::time::{Duration, Instant};

use lapin::options::BasicPublishOptions;
use lapin::{Confirmation, PublisherConfirm};

use super::message::{destination, outgoing};
use super::session::{Probe, Session};
use super::Sink;
use crate::bridge::metrics::BackendCounters;
use crate::bridge::{ConfirmTx, Envelope, Record, SinkError};
use crate::config::AmqpBackend;

/// Most messages published and not yet confirmed on one channel. Bounds
/// memory and how much is published twice after a failure.
pub(super) const WINDOW: usize = 256;
/// How often an idle session checks that its connection is still up (so
/// the `up` gauge is right and reconnecting starts before the next message).
const HEALTH_CHECK: Duration = Duration::from_millis(500);

/// A message taken from the input and not settled yet.
pub(super) struct Pending {
    record: Record,
    confirm: Option<ConfirmTx>,
    /// When it was handed to this sink (for the confirm-duration histogram).
    since: Instant,
}

pub(super) struct InFlight {
    pub msg: Pending,
    confirm: PublisherConfirm,
}

/// Why a session's loop ended.
pub(super) enum End {
    /// Input closed and everything settled.
    Drained,
    /// The channel or connection failed; unsettled messages are in `replay`.
    Broken(String),
}

impl Pending {
    pub(super) fn new(env: Envelope) -> Pending {
        Pending {
            record: env.record,
            confirm: env.confirm,
            since: Instant::now(),
        }
    }

    fn answer(self, result: Result<(), SinkError>) {
        if let Some(tx) = self.confirm {
            // The device's connection may be gone; nothing left to tell then.
            let _ = tx.send(result);
        }
    }

    fn delivered(self, counters: &BackendCounters) {
        counters.confirm.observe(self.since.elapsed().as_secs_f64());
        self.record.counters.delivered.inc();
        self.answer(Ok(()));
    }

    /// One emit point for refusals: log line, counter, answer.
    fn rejected(self, cfg: &AmqpBackend, why: String) {
        let (exchange, routing_key) = destination(cfg, &self.record);
        tracing::warn!(backend = %cfg.name, route = %self.record.route, client_id = %self.record.client_id,
            exchange, routing_key, "AMQP broker refused a message: {why}");
        self.record.counters.rejected.inc();
        self.answer(Err(SinkError::Rejected(why)));
    }

    pub(super) fn closed(self) {
        self.record.counters.failed.inc();
        self.answer(Err(SinkError::Closed));
    }
}

impl Sink {
    /// Publishes and settles until the input is drained or the session fails.
    pub(super) async fn pump(&mut self, s: &mut Session) -> End {
        // Set when a publish failed: stop publishing, let the confirms of
        // what is in flight say what happened.
        let mut stalled = false;
        let mut health = tokio::time::interval(HEALTH_CHECK);
        // Health checks that found the session down while messages were in
        // flight; lapin normally fails their confirms first, this is a net.
        let mut sick = 0;
        loop {
            if stalled && self.inflight.is_empty() {
                return End::Broken("publishing failed".into());
            }
            let limit = if stalled {
                0
            } else if self.careful > 0 {
                1
            } else {
                WINDOW
            };
            if self.inflight.len() < limit {
                if let Some(p) = self.replay.pop_front() {
                    if let Err(why) = self.publish(s, p).await {
                        if self.inflight.is_empty() {
                            return End::Broken(why);
                        }
                        stalled = true;
                    }
                    continue;
                }
            }
            if self.inflight.is_empty() && self.replay.is_empty() && !self.rx_open {
                return End::Drained;
            }
            let take = self.rx_open && self.replay.is_empty() && self.inflight.len() < limit;
            let idle = self.inflight.is_empty();
            tokio::select! {
                biased;
                res = self.inflight.oldest(|f| &mut f.confirm), if !idle => {
                    if let Err(why) = self.settle(res) {
                        return End::Broken(why);
                    }
                }
                env = self.rx.recv(), if take => match env {
                    Some(env) => self.replay.push_back(Pending::new(env)),
                    None => self.rx_open = false,
                },
                _ = health.tick() => {
                    sick = if s.healthy() { 0 } else { sick + 1 };
                    if sick > usize::from(!idle) {
                        self.careful = self.careful.max(self.inflight.len());
                        self.requeue();
                        return End::Broken("connection or channel closed".into());
                    }
                }
            }
        }
    }

    /// Publishes one message, or settles it if it can never be published.
    /// On `Err` the message was not sent and is back at the front of `replay`.
    async fn publish(&mut self, s: &mut Session, p: Pending) -> Result<(), String> {
        let out = match outgoing(&self.cfg, &p.record) {
            Ok(out) => out,
            Err(why) => {
                self.progress();
                p.rejected(&self.cfg, why);
                return Ok(());
            }
        };
        match s.probe(&out.exchange).await {
            Ok(Probe::Exists) => {}
            Ok(Probe::Refused(why)) => {
                self.progress();
                p.rejected(&self.cfg, why);
                return Ok(());
            }
            Err(e) => {
                self.replay.push_front(p);
                return Err(format!("checking the exchange: {e}"));
            }
        }
        let options = BasicPublishOptions {
            mandatory: self.cfg.mandatory,
            immediate: false,
        };
        let sent = s
            .channel
            .basic_publish(
                out.exchange,
                out.routing_key,
                options,
                &p.record.payload,
                out.properties,
            )
            .await;
        match sent {
            Ok(confirm) => {
                self.inflight.push_back(InFlight { msg: p, confirm });
                Ok(())
            }
            Err(e) => {
                self.replay.push_front(p);
                Err(format!("publish: {e}"))
            }
        }
    }

    /// Settles the oldest in-flight message with its confirm. `Err` means
    /// the channel is unusable; unsettled messages were moved to `replay`.
    fn settle(&mut self, res: lapin::Result<Confirmation>) -> Result<(), String> {
        let Some(front) = self.inflight.pop_front() else {
            return Ok(());
        };
        match res {
            Ok(Confirmation::Ack(None)) => {
                self.progress();
                front.msg.delivered(&self.counters);
                Ok(())
            }
            Ok(Confirmation::Ack(Some(returned))) => {
                // mandatory and no queue bound for it: acked, but not stored.
                self.progress();
                let why = format!(
                    "unroutable: {} {}",
                    returned.reply_code, returned.reply_text
                );
                front.msg.rejected(&self.cfg, why);
                Ok(())
            }
            Err(e) if e.is_amqp_soft_error() && self.inflight.is_empty() => {
                // The channel died of a message-specific error and this was
                // the only message on it: it is the culprit.
                self.progress();
                front.msg.rejected(&self.cfg, e.to_string());
                Err(format!("channel closed by the broker: {e}"))
            }
            other => {
                self.inflight.push_front(front);
                let why = match other {
                    // RabbitMQ nacks on internal errors or a full queue with
                    // overflow=reject-publish: transient, publish again later.
                    Ok(Confirmation::Nack(_)) => "the broker nacked a message".to_string(),
                    Ok(_) => "publisher confirms are not enabled on the channel".to_string(),
                    Err(e) => {
                        if e.is_amqp_soft_error() {
                            self.careful = self.careful.max(self.inflight.len());
                        }
                        e.to_string()
                    }
                };
                self.requeue();
                Err(why)
            }
        }
    }

    /// A message was settled (the broker answered, or it could never be
    /// sent): backoff starts over, one fewer to publish carefully.
    fn progress(&mut self) {
        self.backoff.reset();
        self.careful = self.careful.saturating_sub(1);
    }

    /// Moves everything in flight back in front of `replay`, order kept.
    fn requeue(&mut self) {
        while let Some(f) = self.inflight.pop_back() {
            // Dropping the confirm is fine: its channel is being abandoned.
            self.replay.push_front(f.msg);
        }
    }
}
