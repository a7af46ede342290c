//! The Kafka [`Source`]: one consumer per connection, commands in partition
//! order, settled offsets recorded in the [`ledger`](super::ledger) and
//! committed in batches. The driver ([`run_source`]) hands the commands to
//! the processor and settles them in consumption order.
//!
//! A `Retry` (not stored) ends the consumer (Kafka cannot hand one message
//! back): what was settled before it is committed on `close`, and after the
//! driver's backoff a new consumer resumes from the committed offsets, so
//! that command and everything after it are consumed again (duplicates
//! possible, loss never).
//!
//! [`run_source`]: crate::bridge::driver::run_source

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::oneshot;
use tokio::time::{interval, timeout, Interval, MissedTickBehavior};

use super::context::SourceContext;
use super::ledger::Shared;
use super::{command, Admin};
use crate::bridge::contract::{BoxError, BoxFuture, Source};
use crate::bridge::downlink::{Command, CommandOutcome};
use crate::bridge::BridgeError;

type Kafka = StreamConsumer<SourceContext>;

/// Settled offsets are committed this often...
const COMMIT_EVERY: Duration = Duration::from_millis(200);
/// ...or as soon as this many commands were settled.
const COMMIT_BATCH: usize = 500;
/// Pause after a consumer error, doubling up to ten times this while
/// errors follow each other.
const ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Final commit and leaving the group, at most (librdkafka may block).
const CLOSE: Duration = Duration::from_secs(3);

pub(super) struct KafkaSource {
    pub(super) route: Arc<str>,
    pub(super) topics: Vec<String>,
    pub(super) config: ClientConfig,
    /// Topics to create before the first consumer (`create_topics`); `None`
    /// once done.
    pub(super) admin: Option<Admin>,
    pub(super) consumer: Option<Arc<Kafka>>,
    pub(super) tick: Interval,
    /// The current pause after consumer errors.
    pub(super) errors: Duration,
    /// Messages behind the partitions' ends, set from the statistics.
    pub(super) lag: Gauge,
}

/// Creates a consumer of the route (its ledger starts empty).
pub(super) fn create(
    config: &ClientConfig,
    route: Arc<str>,
    lag: Gauge,
) -> KafkaResult<Arc<Kafka>> {
    let context = SourceContext {
        route,
        ledger: Arc::new(Shared::default()),
        lag,
    };
    Ok(Arc::new(config.create_with_context(context)?))
}

impl KafkaSource {
    pub(super) fn new(
        route: Arc<str>,
        topics: Vec<String>,
        config: ClientConfig,
        admin: Option<Admin>,
        lag: Gauge,
    ) -> KafkaSource {
        let mut tick = interval(COMMIT_EVERY);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        KafkaSource {
            route,
            topics,
            config,
            admin,
            consumer: None,
            tick,
            errors: Duration::ZERO,
            lag,
        }
    }

    /// Logs a consumer error and pauses, longer while errors follow each
    /// other. librdkafka recovers by itself (reconnects, refreshes
    /// metadata): the pause only keeps a repeating error from spinning.
    async fn consumer_error(&mut self, error: rdkafka::error::KafkaError) {
        let route = &*self.route;
        if matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown)
        ) {
            // Broker outages are already logged by the context.
            tracing::debug!(route, %error, "Kafka consumer error");
        } else {
            tracing::warn!(route, %error, "Kafka consumer error");
        }
        self.errors = (self.errors * 2).clamp(ERROR_PAUSE, ERROR_PAUSE * 10);
        tokio::time::sleep(self.errors).await;
    }

    fn record(&mut self, position: &str, outcome: CommandOutcome) -> Result<(), BoxError> {
        let consumer = self.consumer.as_ref().ok_or("not connected")?;
        let (topic, partition, offset) =
            parse_position(position).ok_or_else(|| format!("not a Kafka position: {position}"))?;
        if outcome == CommandOutcome::Retry {
            // The driver ends this consumer: consumed again from here.
            return Ok(());
        }
        let ledger = &consumer.context().ledger;
        ledger.lock().settled(topic, partition, offset);
        if ledger.lock().since_commit() >= COMMIT_BATCH {
            commit_async(consumer, &self.route);
        }
        Ok(())
    }
}

impl Source for KafkaSource {
    fn connect(&mut self) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async move {
            if let Some(admin) = &self.admin {
                admin
                    .create(&self.route)
                    .await
                    .map_err(|source| BridgeError::Backend {
                        backend: "kafka".into(),
                        what: format!("creating the command topics of route {}", self.route),
                        source: source.into(),
                    })?;
                self.admin = None;
            }
            let consumer = create(&self.config, self.route.clone(), self.lag.clone())?;
            let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
            consumer.subscribe(&topics)?;
            tracing::info!(route = &*self.route, topics = ?self.topics, "consuming commands");
            self.consumer = Some(consumer);
            Ok(())
        })
    }

    /// The next message, committing what was settled on the way.
    /// Cancel-safe: `recv` and the commit tick both are.
    fn next(&mut self) -> BoxFuture<'_, Result<Command, BoxError>> {
        Box::pin(async move {
            let consumer = self.consumer.clone().ok_or("not connected")?;
            loop {
                let error = tokio::select! {
                    received = consumer.recv() => match received {
                        Ok(m) => {
                            self.errors = Duration::ZERO;
                            let command = command(&m);
                            tracing::trace!(route = &*self.route, position = %command.position, "consumed");
                            return Ok(command);
                        }
                        Err(e) => e,
                    },
                    _ = self.tick.tick() => {
                        commit_async(&consumer, &self.route);
                        continue;
                    }
                };
                self.consumer_error(error).await;
            }
        })
    }

    /// Records a stored or dropped command's offset (nothing waits: the
    /// commit goes out in the background).
    fn settle(
        &mut self,
        position: &str,
        outcome: CommandOutcome,
    ) -> BoxFuture<'_, Result<(), BoxError>> {
        let settled = self.record(position, outcome);
        Box::pin(std::future::ready(settled))
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(consumer) = self.consumer.take() {
                close(consumer, &self.route).await;
            }
        })
    }
}

/// `topic/partition/offset` (Kafka topic names cannot hold a `/`).
pub(super) fn parse_position(position: &str) -> Option<(&str, i32, i64)> {
    let mut parts = position.rsplitn(3, '/');
    let offset = parts.next()?.parse().ok()?;
    let partition = parts.next()?.parse().ok()?;
    Some((parts.next()?, partition, offset))
}

fn commit_async(consumer: &Kafka, route: &str) {
    let ledger = &consumer.context().ledger;
    let Some(tpl) = ledger.lock().take_changes() else {
        return;
    };
    tracing::trace!(route, offsets = ?tpl.to_topic_map(), "committing");
    if let Err(error) = consumer.commit(&tpl, CommitMode::Async) {
        tracing::warn!(route, %error, "offset commit failed; will retry");
        ledger.lock().commit_failed();
    }
}

/// Commits what is settled (synchronously) and leaves the group, on a
/// thread of its own: both may block on the broker, and a consumer must not
/// be dropped on the runtime. Bounded by [`CLOSE`]; past it the thread is
/// left to finish alone (what it did not commit is consumed again).
async fn close(consumer: Arc<Kafka>, route: &str) {
    let (done_tx, done) = oneshot::channel::<()>();
    let name = route.to_string();
    let spawned = std::thread::Builder::new()
        .name("kafka-close".into())
        .spawn(move || {
            let tpl = consumer.context().ledger.lock().all();
            if let Some(tpl) = tpl {
                if let Err(error) = consumer.commit(&tpl, CommitMode::Sync) {
                    tracing::warn!(route = %name, %error, "final offset commit failed; those commands will be consumed again");
                }
            }
            drop(consumer);
            let _ = done_tx.send(());
        });
    if let Err(error) = spawned {
        tracing::warn!(route, %error, "cannot close the Kafka consumer on a thread");
        return;
    }
    if timeout(CLOSE, done).await.is_err() {
        tracing::warn!(
            route,
            "closing the Kafka consumer takes longer than {CLOSE:?}; not waiting"
        );
    }
}
