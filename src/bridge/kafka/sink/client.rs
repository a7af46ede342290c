//! The Kafka [`Sink`]: hands records to librdkafka's idempotent producer
//! and turns each delivery report into a [`Delivery`]. Order, the window of
//! unconfirmed records, reconnecting and re-sending are the driver's
//! ([`run_sink`](crate::bridge::driver::run_sink)).
//!
//! What the driver cannot see is kept in [`Trouble`], written by the
//! `Pending` futures (only on errors) and acted on by the next
//! [`Sink::connect`]: topics to look up again, a producer that cannot go on,
//! topics found gone while records waited for them.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureRecord, Producer as _};
use rdkafka::types::RDKafkaErrorCode;

use super::message::{code, headers, permanent};
use super::topics::{lookup, Presence, Topics};
use super::{Producer, SinkContext};
use crate::bridge::contract::{BoxError, BoxFuture, Delivery, Pending, Sink};
use crate::bridge::metrics::BackendCounters;
use crate::bridge::Record;

/// Records handed to librdkafka and not settled yet, at most: librdkafka
/// batches, so many in flight is what makes it fast.
const WINDOW: usize = 10_000;
/// Wait before retrying when librdkafka's own queue is full.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(20);
/// Bound on the final flush at shutdown.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the oldest record may wait for its report before its topic is
/// looked up again (see [`stall_check`]).
pub(super) const STALLED_AFTER: Duration = Duration::from_secs(15);

/// What the sink needs besides the producer.
pub(super) struct Settings {
    pub backend: Arc<str>,
    /// Kept to build an admin client, and a new producer after a fatal error.
    pub client_cfg: ClientConfig,
    pub context: SinkContext,
    pub create_topics: bool,
    pub partitions: i32,
    pub replication: i32,
}

pub(super) struct KafkaSink {
    pub(super) settings: Settings,
    /// Shared with the records in flight only as a `Weak` (their stall
    /// look-ups), so that replacing it really drops it.
    pub(super) producer: Arc<Producer>,
    pub(super) topics: Topics,
    /// Topics the sink creates (the routes' literal targets, when
    /// `create_topics` is on): created again if they disappear.
    pub(super) owned: HashSet<String>,
    /// The routes' literal targets, until they were checked (and created)
    /// by the first `connect`.
    pub(super) unprepared: Option<Vec<String>>,
    pub(super) trouble: Arc<Trouble>,
}

/// What records in flight found out, for the next `connect` (or `send`)
/// to act on. `pending_forget` lets `send` skip the lock on every record
/// while there is nothing to forget.
#[derive(Default)]
pub(super) struct Trouble {
    troubles: Mutex<Troubles>,
    pending_forget: AtomicBool,
}

#[derive(Default)]
pub(super) struct Troubles {
    /// Topics the broker answered differently about than the cache says.
    pub forget: Vec<String>,
    /// Topics found missing while records waited for them.
    pub gone: Vec<String>,
    /// Why the producer's idempotence state is no good, if it is not.
    pub lost: Option<String>,
}

impl Trouble {
    /// Poisoning cannot leave it inconsistent: every update is one push or
    /// one assignment.
    pub(super) fn lock(&self) -> MutexGuard<'_, Troubles> {
        self.troubles.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The broker contradicted what is cached about `topic`.
    pub(super) fn forget(&self, topic: &str) {
        self.lock().forget.push(topic.to_string());
        self.pending_forget.store(true, Ordering::Release);
    }

    /// The topics to look up again; takes the lock only if there are any.
    pub(super) fn take_forget(&self) -> Vec<String> {
        if !self.pending_forget.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        std::mem::take(&mut self.lock().forget)
    }
}

impl KafkaSink {
    pub(super) fn new(
        settings: Settings,
        producer: Producer,
        counters: &BackendCounters,
        targets: Vec<String>,
    ) -> KafkaSink {
        let topics = Topics::new(settings.backend.clone(), counters.up.clone());
        KafkaSink {
            settings,
            producer: Arc::new(producer),
            topics,
            owned: HashSet::new(),
            unprepared: Some(targets),
            trouble: Arc::default(),
        }
    }

    /// The record's delivery report as a [`Delivery`], with a look-up of
    /// its topic each [`STALLED_AFTER`] while it waits.
    fn pending(&self, delivery: DeliveryFuture, topic: Arc<str>) -> Pending {
        let trouble = self.trouble.clone();
        let producer = Arc::downgrade(&self.producer);
        Box::pin(async move {
            let mut delivery = delivery;
            loop {
                tokio::select! {
                    report = &mut delivery => return outcome(report, &topic, &trouble),
                    _ = tokio::time::sleep(STALLED_AFTER) => {
                        if let Some(why) = stall_check(&producer, &topic, &trouble).await {
                            return Delivery::Retry(why);
                        }
                    }
                }
            }
        })
    }
}

impl Sink for KafkaSink {
    /// The first time: waits for the broker and prepares the routes' topics.
    /// After a failure: acts on what the records in flight found out.
    fn connect(&mut self) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async move {
            self.recover().await;
            self.broker_answers().await?;
            if let Some(targets) = self.unprepared.take() {
                if let Err((left, why)) = self.prepare_topics(targets).await {
                    self.unprepared = Some(left);
                    return Err(why.into());
                }
            }
            Ok(())
        })
    }

    fn send<'a>(&'a mut self, record: &'a Record) -> BoxFuture<'a, Result<Pending, BoxError>> {
        Box::pin(async move {
            for topic in self.trouble.take_forget() {
                self.topics.forget(&topic);
            }
            let topic = match self.topics.presence(&self.producer, &record.target).await {
                Presence::Usable(name) => name,
                Presence::Refused(why) => return Ok(settled(Delivery::Rejected(why))),
                Presence::Unknown(why) => {
                    return Err(format!("Kafka broker not answering ({why})").into())
                }
            };
            loop {
                let mut out = FutureRecord::<str, [u8]>::to(&record.target)
                    .payload(&record.payload[..])
                    .headers(headers(record));
                if let Some(key) = &record.key {
                    out = out.key(key.as_str());
                }
                match self.producer.send_result(out).map_err(|(e, _)| e) {
                    Ok(delivery) => return Ok(self.pending(delivery, topic)),
                    // Backpressure, not loss: librdkafka's queue drains as
                    // the broker confirms.
                    Err(e) if code(&e) == Some(RDKafkaErrorCode::QueueFull) => {
                        tokio::time::sleep(QUEUE_FULL_WAIT).await
                    }
                    Err(e) if permanent(&e) => {
                        self.topics.forget(&record.target);
                        return Ok(settled(Delivery::Rejected(e.to_string())));
                    }
                    Err(e) => {
                        if producer_state_lost(&e) {
                            self.trouble.lock().lost = Some(e.to_string());
                        }
                        return Err(e.into());
                    }
                }
            }
        })
    }

    fn window(&self) -> usize {
        WINDOW
    }

    /// A producer librdkafka declared unusable must be replaced before
    /// anything else is sent.
    fn healthy(&self) -> bool {
        self.producer.client().fatal_error().is_none()
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let backend = self.settings.backend.clone();
            let producer = self.producer.clone();
            let flushed = tokio::task::spawn_blocking(move || producer.flush(FLUSH_TIMEOUT)).await;
            if let Ok(Err(error)) = flushed {
                tracing::warn!(backend = &*backend, %error, "Kafka producer flush at shutdown");
            }
        })
    }
}

fn settled(delivery: Delivery) -> Pending {
    Box::pin(std::future::ready(delivery))
}

/// What a delivery report says about the record.
pub(super) fn outcome(
    report: <DeliveryFuture as std::future::Future>::Output,
    topic: &str,
    trouble: &Trouble,
) -> Delivery {
    let error = match report {
        Ok(Ok(_)) => return Delivery::Confirmed,
        Ok(Err((e, _))) => e,
        // The producer was dropped before reporting.
        Err(_) => return Delivery::Retry("the Kafka producer was replaced".into()),
    };
    if permanent(&error) {
        trouble.forget(topic);
        return Delivery::Rejected(error.to_string());
    }
    match code(&error) {
        // Only with an operator-set timeout. Look the topic up again: a
        // missing one is then rejected by `send`.
        Some(RDKafkaErrorCode::MessageTimedOut) => trouble.forget(topic),
        _ if producer_state_lost(&error) => trouble.lock().lost = Some(error.to_string()),
        _ => {}
    }
    Delivery::Retry(format!("Kafka send failed: {error}"))
}

/// A record has waited [`STALLED_AFTER`]. With an infinite
/// `message.timeout.ms`, librdkafka keeps messages for a topic that
/// disappeared (deleted, or a broker restarted with empty storage) forever.
/// So look its topic up again: if it is gone, say so (the next `connect`
/// creates it again if the sink owns it, and takes queued records back so
/// that they are re-sent, and rejected if their topic is still missing).
/// A broker that does not answer is waited for.
async fn stall_check(producer: &Weak<Producer>, topic: &str, trouble: &Trouble) -> Option<String> {
    match lookup(producer, topic).await {
        Presence::Refused(why) => {
            trouble.forget(topic);
            trouble.lock().gone.push(topic.to_string());
            Some(why)
        }
        Presence::Usable(_) | Presence::Unknown(_) => None,
    }
}

/// Errors after which the producer's idempotence state is no good.
pub(super) fn producer_state_lost(error: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code(error),
        Some(
            C::Fatal
                | C::ProducerFenced
                | C::InvalidProducerEpoch
                | C::UnknownProducerId
                | C::OutOfOrderSequenceNumber
                | C::InvalidProducerIdMapping
        )
    )
}
