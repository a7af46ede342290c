//! The Kafka sink task.
//!
//! Records are handed to librdkafka in the order they arrive, without
//! waiting for each other; their delivery reports are settled in the same
//! order from a bounded queue ([`MAX_PENDING`]), so the channel in front of
//! the sink fills (backpressure) when the broker is slow or away. A report
//! of success confirms the record; a permanent error rejects it; anything
//! else re-sends it, since nothing may be confirmed that the broker has not.
//! [`recovery`] holds what happens when things go wrong.

mod recovery;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureRecord, Producer as _};
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::mpsc;

use super::message::{code, headers, permanent};
use super::topics::{Presence, Topics};
use super::{Producer, SinkContext};
use crate::bridge::driver::{Backoff, SettleQueue};
use crate::bridge::metrics::BackendCounters;
use crate::bridge::{Envelope, SinkError};

/// Records handed to librdkafka whose delivery report is not settled yet.
const MAX_PENDING: usize = 10_000;
/// Wait before retrying when librdkafka's own queue is full.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(20);
/// Bound on the final flush at shutdown.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// What the task needs besides the producer.
pub(super) struct Settings {
    pub backend: Arc<str>,
    /// Kept to build an admin client, and a new producer after a fatal error.
    pub client_cfg: ClientConfig,
    pub context: SinkContext,
    pub create_topics: bool,
    pub partitions: i32,
    pub replication: i32,
}

pub(super) struct Sink {
    settings: Settings,
    producer: Producer,
    counters: BackendCounters,
    topics: Topics,
    /// Topics the sink creates (the routes' literal targets, when
    /// `create_topics` is on): created again if they disappear.
    owned: HashSet<String>,
    /// In hand-off order; the front is settled first.
    pending: SettleQueue<Pending>,
    /// Bumped when records must be re-sent; new records wait until every
    /// record of an older generation is settled, so that a re-sent record
    /// does not fall behind newer ones of the same key.
    generation: u64,
    /// Which producer this is (counts replacements).
    producer_no: u64,
    /// Delay before the next retry; grows while retries fail.
    backoff: Backoff,
}

struct Pending {
    envelope: Envelope,
    /// Hand-off to the sink, for the confirmation time.
    since: Instant,
    /// Last time this record was sent or found stalled.
    sent: Instant,
    generation: u64,
    /// The producer that sent it (see `Sink::producer_no`).
    producer_no: u64,
    delivery: DeliveryFuture,
}

/// A delivery report, or `Err` if the producer was dropped before reporting.
type Report = <DeliveryFuture as std::future::Future>::Output;

impl Sink {
    pub(super) fn new(settings: Settings, producer: Producer, counters: BackendCounters) -> Sink {
        let topics = Topics::new(settings.backend.clone(), counters.up.clone());
        Sink {
            settings,
            producer,
            counters,
            topics,
            owned: HashSet::new(),
            pending: SettleQueue::new(),
            generation: 0,
            producer_no: 0,
            backoff: recovery::backoff(),
        }
    }

    /// Prepares the topics, then runs until the input is closed and every
    /// record handed over is settled.
    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Envelope>, topics: Vec<String>) {
        self.prepare_topics(topics).await;
        let mut open = true;
        loop {
            let current = self
                .pending
                .front()
                .is_none_or(|p| p.generation == self.generation);
            let stalled_at = self
                .pending
                .front()
                .map(|p| p.sent + recovery::STALLED_AFTER);
            tokio::select! {
                biased;
                report = self.pending.oldest(|p| &mut p.delivery), if !self.pending.is_empty() => {
                    if let Some(p) = self.pending.pop_front() {
                        self.settle(p, report).await;
                    }
                }
                _ = sleep_until(stalled_at), if stalled_at.is_some() => self.check_stalled().await,
                envelope = rx.recv(), if open && current && self.pending.len() < MAX_PENDING => {
                    match envelope {
                        Some(envelope) => self.submit(envelope, Instant::now()).await,
                        None => open = false,
                    }
                }
                else => break,
            }
        }
        let backend = self.settings.backend.clone();
        let producer = self.producer;
        let flushed = tokio::task::spawn_blocking(move || producer.flush(FLUSH_TIMEOUT)).await;
        if let Ok(Err(e)) = flushed {
            tracing::warn!(backend = &*backend, "Kafka producer flush at shutdown: {e}");
        }
    }

    /// Checks the target and hands the record to librdkafka, queueing it as
    /// pending; or rejects it.
    async fn submit(&mut self, envelope: Envelope, since: Instant) {
        loop {
            let target = &envelope.record.target;
            match self.topics.presence(&self.producer, target).await {
                Presence::Usable => break,
                Presence::Refused(why) => return self.reject(envelope, why),
                Presence::Unknown(why) => {
                    self.pause(&format!("Kafka broker not answering ({why})"))
                        .await
                }
            }
        }
        loop {
            let record = &envelope.record;
            let mut out = FutureRecord::<str, [u8]>::to(&record.target)
                .payload(&record.payload[..])
                .headers(headers(record));
            if let Some(key) = &record.key {
                out = out.key(key.as_str());
            }
            match self.producer.send_result(out).map_err(|(e, _)| e) {
                Ok(delivery) => {
                    let (sent, generation) = (Instant::now(), self.generation);
                    let p = Pending {
                        envelope,
                        since,
                        sent,
                        generation,
                        producer_no: self.producer_no,
                        delivery,
                    };
                    return self.pending.push_back(p);
                }
                // Backpressure, not loss: librdkafka's queue drains as the
                // broker confirms.
                Err(e) if code(&e) == Some(RDKafkaErrorCode::QueueFull) => {
                    tokio::time::sleep(QUEUE_FULL_WAIT).await
                }
                Err(e) if permanent(&e) => return self.reject(envelope, e.to_string()),
                Err(e) => self.transient(&envelope, &e, true).await,
            }
        }
    }

    /// Acts on the delivery report of the oldest pending record.
    async fn settle(&mut self, p: Pending, report: Report) {
        let error = match report {
            Ok(Ok(_)) => {
                self.counters.up.set(1);
                self.backoff.reset();
                self.counters
                    .confirm
                    .observe(p.since.elapsed().as_secs_f64());
                p.envelope.record.counters.delivered.inc();
                if let Some(confirm) = p.envelope.confirm {
                    let _ = confirm.send(Ok(()));
                }
                return;
            }
            Ok(Err((e, _))) => e,
            // The producer was replaced (fatal error) before reporting.
            Err(_) => KafkaError::Canceled,
        };
        let target = &p.envelope.record.target;
        if permanent(&error) {
            self.topics.forget(target);
            return self.reject(p.envelope, error.to_string());
        }
        if code(&error) == Some(RDKafkaErrorCode::MessageTimedOut) {
            // Only with an operator-set timeout. Look the topic up again: a
            // missing one is then rejected by `submit`.
            self.topics.forget(target);
        }
        if p.generation == self.generation {
            self.generation += 1;
        }
        let current = p.producer_no == self.producer_no;
        self.transient(&p.envelope, &error, current).await;
        self.submit(p.envelope, p.since).await;
    }

    /// Reports a permanent refusal.
    fn reject(&self, envelope: Envelope, why: String) {
        let r = &envelope.record;
        tracing::warn!(
            backend = &*self.settings.backend,
            route = &*r.route,
            client_id = &*r.client_id,
            topic = r.target,
            "Kafka refused a message: {why}"
        );
        r.counters.rejected.inc();
        if let Some(confirm) = envelope.confirm {
            let _ = confirm.send(Err(SinkError::Rejected(why)));
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
