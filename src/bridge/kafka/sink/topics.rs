//! Which topics can be written to: a cache in front of metadata requests.
//!
//! Why: librdkafka keeps a message for a topic it cannot find queued until
//! `message.timeout.ms`, which is infinite here, and a broker that does not
//! auto-create topics (tansu, or Kafka with auto-creation off) would leave
//! the device waiting forever. So each new target is looked up once and a
//! missing one is rejected at once; a missing topic is looked up again after
//! [`MISSING_RECHECK`], in case someone created it.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer as _;
use rdkafka::types::RDKafkaErrorCode;

use super::{Producer, SinkContext};

/// How long a metadata request may take before the broker counts as away.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
/// How long "this topic does not exist" is believed.
const MISSING_RECHECK: Duration = Duration::from_secs(10);
/// Targets come from templates and may be many; past this, start over
/// rather than grow without bound.
const CACHE_LIMIT: usize = 10_000;

/// What the broker says about a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Presence {
    /// Writable; the name is shared so that records in flight can name it
    /// without a copy each.
    Usable(Arc<str>),
    /// Missing or not writable, for good (until someone changes it).
    Refused(String),
    /// The broker did not answer clearly; ask again later.
    Unknown(String),
}

pub(super) struct Topics {
    backend: Arc<str>,
    up: Gauge,
    known: HashMap<String, Known>,
}

enum Known {
    Usable(Arc<str>),
    Refused(String, Instant),
}

impl Topics {
    pub(super) fn new(backend: Arc<str>, up: Gauge) -> Topics {
        Topics {
            backend,
            up,
            known: HashMap::new(),
        }
    }

    /// Whether records for `topic` can be sent, asking the broker when the
    /// cache has no fresh answer.
    pub(super) async fn presence(&mut self, producer: &Arc<Producer>, topic: &str) -> Presence {
        match self.known.get(topic) {
            Some(Known::Usable(name)) => return Presence::Usable(name.clone()),
            Some(Known::Refused(why, at)) if at.elapsed() < MISSING_RECHECK => {
                return Presence::Refused(why.clone())
            }
            _ => {}
        }
        let answer = lookup(&Arc::downgrade(producer), topic).await;
        if self.known.len() >= CACHE_LIMIT {
            self.known.clear();
        }
        match &answer {
            Presence::Usable(name) => {
                self.up.set(1);
                self.known
                    .insert(topic.to_string(), Known::Usable(name.clone()));
            }
            Presence::Refused(why) => {
                self.up.set(1);
                self.known.insert(
                    topic.to_string(),
                    Known::Refused(why.clone(), Instant::now()),
                );
            }
            Presence::Unknown(_) => {
                self.up.set(0);
            }
        }
        answer
    }

    /// Drops what is known about `topic` (the broker said otherwise).
    pub(super) fn forget(&mut self, topic: &str) {
        self.known.remove(topic);
    }

    /// Creates `missing` topics. Returns those to try again (the broker did
    /// not answer); refusals are logged and not retried.
    pub(super) async fn create(
        &mut self,
        client_cfg: &ClientConfig,
        context: &SinkContext,
        missing: &[String],
        partitions: i32,
        replication: i32,
    ) -> Vec<String> {
        let backend = self.backend.clone();
        let backend = &*backend;
        let admin: AdminClient<SinkContext> = match client_cfg.create_with_context(context.clone())
        {
            Ok(admin) => admin,
            Err(e) => {
                tracing::error!(
                    backend,
                    error = %e,
                    "cannot create a Kafka admin client to create topics"
                );
                return Vec::new();
            }
        };
        let new: Vec<NewTopic> = missing
            .iter()
            .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(replication)))
            .collect();
        let opts = AdminOptions::new()
            .request_timeout(Some(METADATA_TIMEOUT))
            .operation_timeout(Some(METADATA_TIMEOUT));
        let results = match admin.create_topics(&new, &opts).await {
            Ok(results) => results,
            Err(e) => {
                tracing::warn!(backend, error = %e, "creating Kafka topics failed, will retry");
                return missing.to_vec();
            }
        };
        let mut again = Vec::new();
        for result in results {
            match result {
                Ok(topic) | Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    tracing::info!(backend, topic, partitions, replication, "Kafka topic ready");
                    self.forget(&topic);
                }
                Err((topic, code)) if transient_admin(code) => {
                    tracing::warn!(
                        backend,
                        topic,
                        error = %code,
                        "creating Kafka topic failed, will retry"
                    );
                    again.push(topic);
                }
                Err((topic, code)) => tracing::error!(
                    backend,
                    topic,
                    error = %code,
                    "cannot create Kafka topic; messages to it will be rejected"
                ),
            }
        }
        // Dropping the admin client joins its threads: keep that off the runtime.
        let _ = tokio::task::spawn_blocking(move || drop(admin)).await;
        again
    }
}

/// Asks the broker about one topic (a blocking librdkafka call, so on the
/// blocking pool). A producer already replaced answers `Unknown`.
pub(super) async fn lookup(producer: &Weak<Producer>, topic: &str) -> Presence {
    let producer = producer.clone();
    let name = topic.to_string();
    // The upgraded producer is dropped on the blocking thread: if it was
    // the last handle, dropping joins librdkafka's threads.
    let fetched = tokio::task::spawn_blocking(move || {
        let producer = producer.upgrade().ok_or(KafkaError::Canceled)?;
        producer
            .client()
            .fetch_metadata(Some(&name), METADATA_TIMEOUT)
    })
    .await;
    let metadata = match fetched {
        Ok(Ok(metadata)) => metadata,
        Ok(Err(e)) => return Presence::Unknown(format!("metadata request failed: {e}")),
        Err(e) => return Presence::Unknown(format!("metadata request did not finish: {e}")),
    };
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Presence::Refused(format!("topic {topic} does not exist"));
    };
    match found.error().map(RDKafkaErrorCode::from) {
        None if found.partitions().is_empty() => {
            Presence::Refused(format!("topic {topic} has no partitions"))
        }
        None => Presence::Usable(topic.into()),
        Some(RDKafkaErrorCode::UnknownTopicOrPartition) => {
            Presence::Refused(format!("topic {topic} does not exist"))
        }
        Some(
            code @ (RDKafkaErrorCode::InvalidTopic | RDKafkaErrorCode::TopicAuthorizationFailed),
        ) => Presence::Refused(format!("topic {topic}: {code}")),
        // e.g. LeaderNotAvailable while a broker auto-creates it.
        Some(code) => Presence::Unknown(format!("topic {topic}: {code}")),
    }
}

/// Admin errors worth retrying: the broker or its controller was away.
fn transient_admin(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::OperationTimedOut
            | C::RequestTimedOut
            | C::BrokerTransportFailure
            | C::AllBrokersDown
            | C::NotController
            | C::LeaderNotAvailable
            | C::NetworkException
            | C::BrokerNotAvailable
            | C::TimedOutQueue
            | C::Resolve
            | C::ThrottlingQuotaExceeded
    )
}
