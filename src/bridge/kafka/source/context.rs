//! The consumer's context: librdkafka's logs and errors into `tracing`, and
//! the rebalance hook that commits settled offsets before partitions go.

use std::sync::Arc;

use prometheus_client::metrics::gauge::Gauge;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::{Statistics, TopicPartitionList};

use super::ledger::Shared;

pub(super) struct SourceContext {
    pub(super) route: Arc<str>,
    pub(super) ledger: Arc<Shared>,
    /// `mqbridge_bridge_downlink_lag_messages{route}`.
    pub(super) lag: Gauge,
}

fn partitions(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

impl ClientContext for SourceContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let owner = crate::bridge::kafka::Owner {
            backend: None,
            route: Some(&self.route),
        };
        crate::bridge::kafka::forward_log(owner, level, fac, message);
    }

    /// The lag of the partitions this consumer owns (librdkafka reports -1
    /// for one it does not know yet, and -1 as the partition of its internal
    /// "unassigned" entry: both skipped).
    fn stats(&self, statistics: Statistics) {
        let lag: i64 = statistics
            .topics
            .values()
            .flat_map(|t| t.partitions.values())
            .filter(|p| p.partition >= 0 && p.consumer_lag >= 0)
            .map(|p| p.consumer_lag)
            .sum();
        self.lag.set(lag);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(route = &*self.route, %error, reason, "Kafka consumer error");
    }
}

impl ConsumerContext for SourceContext {
    /// Before partitions are taken away, commit what was settled for them
    /// (synchronously, so that their next owner starts after it), then
    /// forget them. Runs on the thread that polls the consumer.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(revoked) = rebalance else {
            return;
        };
        // The lock is not held across the commit: librdkafka may call back
        // into this context meanwhile.
        let settled = self.ledger.lock().all();
        // Lost (not revoked) partitions may already belong to another
        // member; a commit would be refused or move its position back.
        if let (Some(tpl), false) = (settled, consumer.assignment_lost()) {
            match consumer.commit(&tpl, CommitMode::Sync) {
                Ok(()) => tracing::debug!(route = &*self.route, "committed before rebalance"),
                Err(e) => tracing::warn!(
                    route = &*self.route,
                    error = %e,
                    "commit before rebalance failed; the next owner consumes those commands again"
                ),
            }
        }
        self.ledger.lock().revoke(partitions(revoked));
        tracing::info!(
            route = &*self.route,
            partitions = revoked.count(),
            "partitions revoked"
        );
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                self.ledger.lock().assign(partitions(tpl));
                tracing::info!(
                    route = &*self.route,
                    partitions = tpl.count(),
                    "partitions assigned"
                );
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => {
                tracing::warn!(route = &*self.route, error = %e, "rebalance failed")
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            // Not lost: the offsets stay in the ledger and go with the next commit.
            tracing::warn!(
                route = &*self.route,
                error = %e,
                "offset commit failed; will retry"
            );
            self.ledger.lock().commit_failed();
        }
    }
}
