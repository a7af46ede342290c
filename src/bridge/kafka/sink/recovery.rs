//! What the Kafka sink's `connect` does besides the first connection:
//! preparing the routes' topics, replacing a producer librdkafka declared
//! unusable, and taking back records queued for a topic that disappeared.

use std::sync::Arc;

use rdkafka::producer::{Producer as _, PurgeConfig};

use std::time::Duration;

use super::client::KafkaSink;
use super::topics::Presence;

/// How long connecting waits for a broker to answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

impl KafkaSink {
    /// Start-up: checks the routes' literal topics, then creates the missing
    /// ones, or names them in an error when creating is off. `Err` gives
    /// back the topics still to check and why (the broker did not answer):
    /// the driver tries again after its backoff, and sends nothing before.
    pub(super) async fn prepare_topics(
        &mut self,
        mut topics: Vec<String>,
    ) -> Result<(), (Vec<String>, String)> {
        topics.sort();
        topics.dedup();
        if self.settings.create_topics {
            self.owned.extend(topics.iter().cloned());
        }
        let mut missing = Vec::new();
        for topic in &topics {
            match self.topics.presence(&self.producer, topic).await {
                Presence::Usable(_) => {}
                Presence::Refused(why) => missing.push((topic.clone(), why)),
                Presence::Unknown(why) => {
                    return Err((topics, format!("Kafka broker not answering ({why})")))
                }
            }
        }
        if !self.settings.create_topics {
            for (topic, why) in &missing {
                tracing::error!(
                    backend = &*self.settings.backend,
                    topic,
                    reason = %why,
                    "Kafka topic unusable and create_topics is off; messages to it will be rejected"
                );
            }
            return Ok(());
        }
        let missing: Vec<String> = missing.into_iter().map(|(topic, _)| topic).collect();
        let again = self.create(&missing).await;
        if again.is_empty() {
            Ok(())
        } else {
            Err((again, "Kafka topics not created yet".into()))
        }
    }

    /// After a failure: forgets what the broker contradicted, creates owned
    /// topics found gone, takes back records queued for topics found gone,
    /// and replaces a producer that cannot go on.
    pub(super) async fn recover(&mut self) {
        let forget = self.trouble.take_forget();
        let (gone, lost) = {
            let mut t = self.trouble.lock();
            (std::mem::take(&mut t.gone), t.lost.take())
        };
        for topic in &forget {
            self.topics.forget(topic);
        }
        let backend = self.settings.backend.clone();
        let recreate: Vec<String> = gone
            .iter()
            .filter(|t| self.owned.contains(*t))
            .cloned()
            .collect();
        for topic in &gone {
            if self.owned.contains(topic) {
                tracing::warn!(
                    backend = &*backend,
                    topic,
                    "Kafka topic gone; creating it again"
                );
            } else {
                tracing::warn!(
                    backend = &*backend,
                    topic,
                    "Kafka topic gone; taking queued messages back to reject them"
                );
            }
        }
        if !recreate.is_empty() {
            self.create(&recreate).await;
        }
        let fatal = self.producer.client().fatal_error();
        let fatal = fatal.map(|(code, why)| format!("{code}: {why}"));
        if let Some(why) = fatal.or(lost) {
            self.replace_producer(&why).await;
        } else if !gone.is_empty() {
            // Queued only: in-flight ones still get the broker's answer. The
            // driver re-sends every unsettled record, so a taken-back one
            // comes again (and is rejected if its topic is still missing).
            let producer = self.producer.clone();
            let purge = move || producer.purge(PurgeConfig::default().queue());
            let _ = tokio::task::spawn_blocking(purge).await;
        }
    }

    /// Whether a broker answers (a cluster-id request): a connection that
    /// counts as up is one that was seen to work.
    pub(super) async fn broker_answers(&self) -> Result<(), String> {
        let producer = Arc::downgrade(&self.producer);
        let asked = tokio::task::spawn_blocking(move || {
            let producer = producer.upgrade()?;
            producer.client().fetch_cluster_id(PROBE_TIMEOUT)
        })
        .await;
        match asked {
            Ok(Some(_)) => Ok(()),
            _ => Err("no Kafka broker answers".into()),
        }
    }

    /// Creates `topics`; returns those to try again.
    async fn create(&mut self, topics: &[String]) -> Vec<String> {
        let s = &self.settings;
        let (cfg, ctx, partitions, replication) =
            (&s.client_cfg, &s.context, s.partitions, s.replication);
        self.topics
            .create(cfg, ctx, topics, partitions, replication)
            .await
    }

    /// An idempotent producer cannot go on after some errors (a broken
    /// sequence, or a broker that forgot it, e.g. restarted with empty
    /// storage); a new one starts over, and the driver re-sends what was
    /// not settled.
    async fn replace_producer(&mut self, why: &str) {
        let backend = &*self.settings.backend;
        tracing::error!(
            backend,
            reason = why,
            "Kafka producer cannot go on; starting a new one"
        );
        let s = &self.settings;
        match s.client_cfg.create_with_context(s.context.clone()) {
            Ok(new) => {
                let old = std::mem::replace(&mut self.producer, Arc::new(new));
                // Dropping purges its queue and joins threads; keep that off
                // the runtime.
                let _ = tokio::task::spawn_blocking(move || drop(old)).await;
            }
            Err(error) => {
                tracing::error!(backend, %error, "cannot create a new Kafka producer")
            }
        }
    }
}
