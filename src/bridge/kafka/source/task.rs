//! The source task: consume, hand commands to the processor in order, keep
//! the in-flight ones in order, commit what is settled.
//!
//! A `Retry` (not stored) ends the consumer: what was settled before it is
//! committed, the consumer is closed, and after a backoff a new one resumes
//! from the committed offsets, so that command and everything after it are
//! consumed again (duplicates possible, loss never).

use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::oneshot;
use tokio::time::{interval, sleep, timeout, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::context::SourceContext;
use super::inflight::InFlight;
use super::ledger::Shared;
use super::{backoff, command, route_name, Admin};
use crate::bridge::downlink::{CommandEnvelope, CommandTx};
use crate::config::DownlinkRoute;

type Kafka = StreamConsumer<SourceContext>;

/// Commands consumed and not settled yet, at most. When full, consuming
/// pauses until the oldest is answered.
const MAX_PENDING: usize = 1000;
/// Settled offsets are committed this often...
const COMMIT_EVERY: Duration = Duration::from_millis(200);
/// ...or as soon as this many commands were settled.
const COMMIT_BATCH: usize = 500;
/// On stop, how long in-flight commands may take to be answered.
const DRAIN: Duration = Duration::from_secs(5);
/// Pause after a consumer error, doubling up to ten times this while
/// errors follow each other.
const ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Final commit and leaving the group, at most (librdkafka may block).
const CLOSE: Duration = Duration::from_secs(3);

pub(super) struct Source {
    pub(super) route: DownlinkRoute,
    pub(super) config: ClientConfig,
    pub(super) admin: Option<Admin>,
    pub(super) tx: CommandTx,
    pub(super) stop: CancellationToken,
}

/// Creates a consumer of the route (its ledger starts empty).
pub(super) fn create(config: &ClientConfig, route: &DownlinkRoute) -> KafkaResult<Arc<Kafka>> {
    let ledger = Arc::new(Shared::default());
    let context = SourceContext {
        route: route_name(route),
        ledger,
    };
    Ok(Arc::new(config.create_with_context(context)?))
}

/// How a consumer's life ended.
enum Exit {
    Stop,
    /// A command was not stored: consume again from the committed offsets.
    Retry,
}

impl Source {
    pub(super) async fn run(mut self) {
        let name = self.route.name.clone();
        let mut backoff = backoff();
        if let Some(admin) = self.admin.take() {
            loop {
                let created = tokio::select! {
                    r = admin.create(&name) => r,
                    _ = self.stop.cancelled() => return,
                };
                let Err(e) = created else { break };
                let delay = backoff.next_delay();
                tracing::warn!(route = %name, "cannot create the command topics ({e}); retrying in {delay:?}");
                if self.pause(delay).await {
                    return;
                }
            }
            backoff.reset();
        }
        loop {
            let consumer = match create(&self.config, &self.route)
                .and_then(|c| c.subscribe(&self.topics()).map(|()| c))
            {
                Ok(c) => c,
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(route = %name, "cannot start the Kafka consumer ({e}); retrying in {delay:?}");
                    if self.pause(delay).await {
                        return;
                    }
                    continue;
                }
            };
            tracing::info!(route = %name, topics = ?self.route.topics, "consuming commands");
            let (exit, progressed) = self.consume(&consumer).await;
            close(consumer, &name).await;
            if matches!(exit, Exit::Stop) {
                return;
            }
            if progressed {
                backoff.reset();
            }
            let delay = backoff.next_delay();
            tracing::warn!(route = %name, "consuming again from the committed offsets in {delay:?}");
            if self.pause(delay).await {
                return;
            }
        }
    }

    fn topics(&self) -> Vec<&str> {
        self.route.topics.iter().map(String::as_str).collect()
    }

    /// Sleeps; true if told to stop meanwhile.
    async fn pause(&mut self, delay: Duration) -> bool {
        tokio::select! {
            _ = self.stop.cancelled() => true,
            _ = sleep(delay) => false,
        }
    }

    /// One consumer's life. Returns how it ended and whether any command
    /// was settled.
    async fn consume(&mut self, consumer: &Kafka) -> (Exit, bool) {
        let ledger = consumer.context().ledger.clone();
        let route = route_name(&self.route);
        let name = &*route;
        let mut pending = InFlight::default();
        let mut progressed = false;
        let mut tick = interval(COMMIT_EVERY);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut errors = Duration::ZERO;
        loop {
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => {
                    pending.drain(DRAIN, &ledger, name).await;
                    return (Exit::Stop, progressed);
                }
                answer = pending.oldest() => {
                    if !pending.settle_oldest(answer, &ledger, name) {
                        return (Exit::Retry, progressed);
                    }
                    progressed = true;
                    if ledger.lock().since_commit() >= COMMIT_BATCH {
                        commit_async(consumer, &ledger, name);
                    }
                }
                _ = tick.tick() => commit_async(consumer, &ledger, name),
                msg = consumer.recv(), if pending.len() < MAX_PENDING => {
                    let (cmd, topic, partition, offset) = match msg {
                        Ok(m) => (command(&m), m.topic().to_string(), m.partition(), m.offset()),
                        Err(e) => {
                            // librdkafka recovers by itself (reconnects, refreshes
                            // metadata); the pause only keeps a repeating error
                            // from spinning. Broker outages are already logged
                            // by the context.
                            if matches!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown)) {
                                tracing::debug!(route = name, "Kafka consumer error: {e}");
                            } else {
                                tracing::warn!(route = name, "Kafka consumer error: {e}");
                            }
                            errors = (errors * 2).clamp(ERROR_PAUSE, ERROR_PAUSE * 10);
                            if self.pause(errors).await {
                                return (Exit::Stop, progressed);
                            }
                            continue;
                        }
                    };
                    errors = Duration::ZERO;
                    tracing::trace!(route = name, position = %cmd.position, "consumed");
                    let (done_tx, done) = oneshot::channel();
                    let envelope = CommandEnvelope { command: cmd, done: done_tx };
                    // Awaiting a full processor is the backpressure.
                    let sent = tokio::select! {
                        r = self.tx.send(envelope) => r.is_ok(),
                        _ = self.stop.cancelled() => false,
                    };
                    if !sent {
                        pending.drain(DRAIN, &ledger, name).await;
                        return (Exit::Stop, progressed);
                    }
                    pending.push(topic, partition, offset, done);
                }
            }
        }
    }
}

fn commit_async(consumer: &Kafka, ledger: &Shared, route: &str) {
    let Some(tpl) = ledger.lock().take_changes() else {
        return;
    };
    tracing::trace!(route, offsets = ?tpl.to_topic_map(), "committing");
    if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
        tracing::warn!(route, "offset commit failed: {e}; will retry");
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
                if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
                    tracing::warn!(route = %name, "final offset commit failed: {e}; those commands will be consumed again");
                }
            }
            drop(consumer);
            let _ = done_tx.send(());
        });
    if let Err(e) = spawned {
        tracing::warn!(route, "cannot close the Kafka consumer on a thread: {e}");
        return;
    }
    if timeout(CLOSE, done).await.is_err() {
        tracing::warn!(
            route,
            "closing the Kafka consumer takes longer than {CLOSE:?}; not waiting"
        );
    }
}
