//! The producer side: the router collects a batch's cluster records
//! ([`Outgoing`]) and hands them to [`Link::send`], whose future says
//! whether Kafka acknowledged every one (acks=all, idempotent); the replies
//! of the batch (PUBACK, PUBCOMP...) wait for it as they wait for the store.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;

use super::metrics::ClusterMetrics;
use super::{ClusterError, Topics};
use crate::mqtt::message::Message;

/// How long a record may wait for Kafka before its PUBLISH is refused.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// One record for the cluster's topics.
#[derive(Debug)]
pub enum Outgoing {
    /// A message for the other nodes' sessions, keyed by its publisher.
    Message { key: Arc<str>, value: Vec<u8> },
    /// A retained change (`None`: a tombstone, the topic is cleared).
    Retained {
        topic: String,
        value: Option<Vec<u8>>,
    },
    /// A session's shared state (`None`: a tombstone, the session ended).
    Session {
        client_id: Arc<str>,
        value: Option<Vec<u8>>,
    },
    /// A heartbeat (see `members`); `None`: this node left.
    Heartbeat { value: Option<Vec<u8>> },
}

#[derive(Clone)]
pub struct Link {
    producer: FutureProducer,
    topics: Topics,
    node: Arc<str>,
    metrics: ClusterMetrics,
}

impl Link {
    pub fn new(
        base: &ClientConfig,
        topics: Topics,
        node: Arc<str>,
        metrics: ClusterMetrics,
    ) -> Result<Link, ClusterError> {
        let mut c = base.clone();
        c.set("client.id", format!("mqbridge-cluster-{node}"))
            .set("acks", "all")
            .set("enable.idempotence", "true")
            // Latency over batch size: a PUBACK waits for this record.
            .set("linger.ms", "1")
            .set(
                "message.timeout.ms",
                DELIVERY_TIMEOUT.as_millis().to_string(),
            );
        let producer = c.create().map_err(ClusterError::Client)?;
        Ok(Link {
            producer,
            topics,
            node,
            metrics,
        })
    }

    /// This node's id.
    pub fn node(&self) -> &Arc<str> {
        &self.node
    }

    /// The record carrying `message` from `publisher` (a device, or for a
    /// command its target or topic) to the other nodes; `None` (logged) if
    /// it cannot be encoded, which is a bug.
    pub fn message(
        &self,
        publisher: &Arc<str>,
        message: &Message,
        command: bool,
        target: Option<(&str, bool)>,
    ) -> Option<Outgoing> {
        let value = encoded(super::wire::encode_routed(
            &self.node, message, command, target,
        ))?;
        Some(Outgoing::Message {
            key: publisher.clone(),
            value,
        })
    }

    /// The record of a session's shared state (`None`: it ended).
    pub fn session(
        &self,
        client_id: &Arc<str>,
        shared: Option<&super::wire::SharedSession>,
    ) -> Option<Outgoing> {
        let value = encoded(shared.map(super::wire::encode_session).transpose())?;
        Some(Outgoing::Session {
            client_id: client_id.clone(),
            value,
        })
    }

    /// The record setting (or clearing, `None`) the retained message of `topic`.
    pub fn retained(&self, topic: &str, message: Option<&Message>) -> Option<Outgoing> {
        let value = encoded(message.map(super::wire::encode_retained).transpose())?;
        Some(Outgoing::Retained {
            topic: topic.to_owned(),
            value,
        })
    }

    /// Produces `batch`; the future says whether Kafka acknowledged all of it.
    pub fn send(&self, batch: Vec<Outgoing>) -> BoxFuture<'static, bool> {
        let mut pending = Vec::with_capacity(batch.len());
        let mut ok = true;
        for out in &batch {
            let (topic, kind, key, value) = match out {
                Outgoing::Message { key, value } => {
                    (&self.topics.messages, "messages", &**key, Some(value))
                }
                Outgoing::Retained { topic, value } => (
                    &self.topics.retained,
                    "retained",
                    topic.as_str(),
                    value.as_ref(),
                ),
                Outgoing::Session { client_id, value } => (
                    &self.topics.sessions,
                    "sessions",
                    &**client_id,
                    value.as_ref(),
                ),
                Outgoing::Heartbeat { value } => {
                    (&self.topics.nodes, "nodes", &*self.node, value.as_ref())
                }
            };
            let mut record = FutureRecord::<str, Vec<u8>>::to(topic).key(key);
            if let Some(v) = value {
                record = record.payload(v);
            }
            match self.producer.send_result(record) {
                Ok(delivery) => pending.push((kind, delivery)),
                Err((error, _)) => {
                    // The local queue is full: Kafka is unreachable or far behind.
                    self.failed(kind, &error);
                    ok = false;
                }
            }
        }
        let this = self.clone();
        let started = std::time::Instant::now();
        Box::pin(async move {
            for (kind, delivery) in pending {
                match delivery.await {
                    Ok(Ok(_)) => {
                        this.metrics
                            .produced
                            .get_or_create(&ClusterMetrics::topic(kind))
                            .inc();
                    }
                    Ok(Err((error, _))) => {
                        this.failed(kind, &error);
                        ok = false;
                    }
                    Err(_) => {
                        this.metrics
                            .produce_failures
                            .get_or_create(&ClusterMetrics::topic(kind))
                            .inc();
                        ok = false;
                    }
                }
            }
            this.metrics
                .produce_duration
                .observe(started.elapsed().as_secs_f64());
            ok
        })
    }

    fn failed(&self, kind: &'static str, error: &rdkafka::error::KafkaError) {
        self.metrics
            .produce_failures
            .get_or_create(&ClusterMetrics::topic(kind))
            .inc();
        tracing::warn!(topic = kind, %error, "cluster record not acknowledged by Kafka");
    }

    /// Waits (up to `timeout`) for what is queued to be sent, at shutdown.
    pub fn flush(&self, timeout: Duration) {
        if let Err(error) = self.producer.flush(timeout) {
            tracing::warn!(%error, "cluster producer not flushed at shutdown");
        }
    }
}

/// An encoded record value; `None`, logged, when encoding failed (a bug:
/// every field is serialisable).
fn encoded<T>(r: Result<T, crate::store::StoreError>) -> Option<T> {
    r.map_err(|e| {
        tracing::error!(
            error = &e as &dyn std::error::Error,
            "cluster record not encoded"
        )
    })
    .ok()
}
