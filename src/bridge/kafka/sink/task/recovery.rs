//! What the sink does when things go wrong: waiting for the broker at
//! start-up, re-sending after transient errors, replacing a producer that
//! librdkafka declared unusable, and taking back records stuck on a topic
//! that disappeared.

use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::producer::{Producer as _, PurgeConfig};
use rdkafka::types::RDKafkaErrorCode;

use super::Sink;
use crate::bridge::driver::Backoff;
use crate::bridge::kafka::sink::message::code;
use crate::bridge::kafka::sink::topics::Presence;
use crate::bridge::Envelope;

const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The sink's retry delays: 250 ms doubling to 30 s, jittered.
pub(super) fn backoff() -> Backoff {
    Backoff::between(BACKOFF_MIN, BACKOFF_MAX)
}
/// How long the oldest record may wait before its topic is looked up again.
pub(super) const STALLED_AFTER: Duration = Duration::from_secs(15);
/// Most distinct topics looked up per stall check.
const STALL_TOPICS: usize = 32;

impl Sink {
    /// Start-up: waits for the broker, then creates the routes' literal
    /// topics that are missing, or names them in an error when creating is
    /// off. Nothing is sent before: records wait in the channel.
    pub(super) async fn prepare_topics(&mut self, mut topics: Vec<String>) {
        topics.sort();
        topics.dedup();
        if self.settings.create_topics {
            self.owned = topics.iter().cloned().collect();
        }
        while !topics.is_empty() {
            let mut missing = Vec::new();
            for topic in &topics {
                loop {
                    match self.topics.presence(&self.producer, topic).await {
                        Presence::Usable => break,
                        Presence::Refused(why) => {
                            missing.push((topic.clone(), why));
                            break;
                        }
                        Presence::Unknown(why) => {
                            self.pause(&format!("Kafka broker not answering ({why})"))
                                .await
                        }
                    }
                }
            }
            self.backoff.reset();
            if missing.is_empty() {
                return;
            }
            if !self.settings.create_topics {
                for (topic, why) in &missing {
                    tracing::error!(
                        backend = &*self.settings.backend,
                        topic,
                        "{why} and create_topics is off; messages to it will be rejected"
                    );
                }
                return;
            }
            let s = &self.settings;
            let (cfg, ctx) = (&s.client_cfg, &s.context);
            let missing: Vec<String> = missing.into_iter().map(|(topic, _)| topic).collect();
            topics = self
                .topics
                .create(cfg, ctx, &missing, s.partitions, s.replication)
                .await;
            if !topics.is_empty() {
                self.pause("Kafka topics not created yet").await;
            }
        }
    }

    /// The oldest record has waited [`STALLED_AFTER`]. With an infinite
    /// `message.timeout.ms`, librdkafka keeps messages for a topic that
    /// disappeared (deleted, or a broker restarted with empty storage)
    /// forever. So look up the waiting records' topics again: one the sink
    /// owns is created again; if any other is gone, take every queued
    /// message back: their failed reports make `settle` re-send each one,
    /// and `submit` rejects those for missing topics.
    pub(super) async fn check_stalled(&mut self) {
        let Some(front) = self.pending.front_mut() else {
            return;
        };
        front.sent = Instant::now();
        let mut waiting: Vec<String> = Vec::new();
        for p in self.pending.iter() {
            let target = &p.envelope.record.target;
            if !waiting.contains(target) {
                waiting.push(target.clone());
                if waiting.len() == STALL_TOPICS {
                    break;
                }
            }
        }
        let mut gone = false;
        for topic in waiting {
            self.topics.forget(&topic);
            let Presence::Refused(why) = self.topics.presence(&self.producer, &topic).await else {
                continue;
            };
            let backend = &*self.settings.backend;
            if self.owned.contains(&topic) {
                tracing::warn!(backend, topic, "{why}; creating it again");
                let s = &self.settings;
                let (cfg, ctx, topics) = (&s.client_cfg, &s.context, [topic]);
                self.topics
                    .create(cfg, ctx, &topics, s.partitions, s.replication)
                    .await;
            } else {
                tracing::warn!(
                    backend,
                    topic,
                    "{why}; taking queued messages back to reject them"
                );
                gone = true;
            }
        }
        if gone {
            self.generation += 1;
            let producer = self.producer.clone();
            // Queued only: in-flight ones still get the broker's answer. A
            // queued one may be a retry, so re-sending it can duplicate it
            // (at least once), never lose it.
            let purge = move || producer.purge(PurgeConfig::default().queue());
            let _ = tokio::task::spawn_blocking(purge).await;
        }
    }

    /// Before re-sending after a transient error: count, log, replace the
    /// producer if it cannot go on, and wait. `current`: the record was sent
    /// by this producer, not one already replaced.
    pub(super) async fn transient(
        &mut self,
        envelope: &Envelope,
        error: &KafkaError,
        current: bool,
    ) {
        self.counters.retries.inc();
        let record = &envelope.record;
        let backend = &*self.settings.backend;
        let purged = matches!(
            code(error),
            Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight)
        );
        // Taken back on purpose, or failed with a producer already
        // replaced: nothing to wait for.
        if purged || !current || matches!(error, KafkaError::Canceled) {
            tracing::debug!(backend, topic = record.target, "re-sending: {error}");
            return;
        }
        tracing::warn!(
            backend,
            route = &*record.route,
            topic = record.target,
            "Kafka send failed, re-sending: {error}"
        );
        let fatal = self.producer.client().fatal_error();
        let fatal = fatal.map(|(code, why)| format!("{code}: {why}"));
        if let Some(why) = fatal.or_else(|| producer_state_lost(error).then(|| error.to_string())) {
            self.replace_producer(&why).await;
        }
        self.pause("Kafka send failed").await;
    }

    /// An idempotent producer cannot go on after some errors (a broken
    /// sequence, or a broker that forgot it, e.g. restarted with empty
    /// storage); a new one starts over, and unsettled records are re-sent.
    async fn replace_producer(&mut self, why: &str) {
        let backend = &*self.settings.backend;
        tracing::error!(
            backend,
            "Kafka producer cannot go on ({why}); starting a new one"
        );
        let s = &self.settings;
        match s.client_cfg.create_with_context(s.context.clone()) {
            Ok(new) => {
                self.generation += 1;
                self.producer_no += 1;
                let old = std::mem::replace(&mut self.producer, new);
                // Dropping purges its queue (those records come back and are
                // re-sent) and joins threads; keep that off the runtime.
                let _ = tokio::task::spawn_blocking(move || drop(old)).await;
            }
            Err(e) => tracing::error!(backend, "cannot create a new Kafka producer: {e}"),
        }
    }

    /// Marks the backend down and waits, longer each time.
    pub(super) async fn pause(&mut self, why: &str) {
        self.counters.up.set(0);
        let backend = &*self.settings.backend;
        let delay = self.backoff.next_delay();
        tracing::debug!(backend, "{why}; retrying in {delay:?}");
        tokio::time::sleep(delay).await;
    }
}

/// Errors after which the producer's idempotence state is no good.
fn producer_state_lost(error: &KafkaError) -> bool {
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
