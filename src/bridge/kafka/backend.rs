//! The Kafka backend in the registry: checks the settings, starts the sink
//! and the downlink sources.

use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::bridge::contract::BoxFuture;
use crate::bridge::registry::{Backend, Kind, SettingError, SinkStart, SourceStart};
use crate::bridge::{BridgeError, RunningSink};
use crate::config::{BackendConfig, DownlinkRoute, KafkaBackend};

pub const KIND: Kind = Kind {
    kind: "kafka",
    parse,
};

/// librdkafka's `compression.type` values.
const COMPRESSION: [&str; 5] = ["none", "gzip", "snappy", "lz4", "zstd"];

fn parse(cfg: &BackendConfig) -> Result<Arc<dyn Backend>, Vec<SettingError>> {
    let BackendConfig::Kafka(k) = cfg else {
        return Err(vec![SettingError::new("kind", "not a Kafka backend")]);
    };
    let mut errors = Vec::new();
    if k.bootstrap_servers.trim().is_empty() {
        errors.push(SettingError::new("bootstrap_servers", "must not be empty"));
    }
    if !COMPRESSION.contains(&k.compression.as_str()) {
        errors.push(SettingError::new(
            "compression",
            format!(
                "{:?} is not one of {}",
                k.compression,
                COMPRESSION.join(", ")
            ),
        ));
    }
    if let Err(e) = super::properties(k) {
        errors.extend(e);
    }
    if errors.is_empty() {
        Ok(Arc::new(Kafka(k.clone())))
    } else {
        Err(errors)
    }
}

#[derive(Debug)]
struct Kafka(KafkaBackend);

impl Backend for Kafka {
    fn name(&self) -> &str {
        &self.0.name
    }

    fn check_downlink(&self, route: &DownlinkRoute) -> Vec<SettingError> {
        if route.topics.is_empty() {
            return vec![SettingError::new(
                "topics",
                "a Kafka downlink needs at least one topic",
            )];
        }
        Vec::new()
    }

    fn start_sink(&self, start: SinkStart) -> BoxFuture<'_, Result<RunningSink, BridgeError>> {
        Box::pin(async move {
            let SinkStart {
                counters,
                capacity,
                targets,
                tasks,
            } = start;
            super::sink::start(&self.0, targets, counters, capacity, &tasks).await
        })
    }

    fn start_source<'a>(
        &'a self,
        route: &'a DownlinkRoute,
        start: SourceStart,
    ) -> BoxFuture<'a, Result<JoinHandle<()>, BridgeError>> {
        Box::pin(async move { super::source::start(&self.0, route, start).await })
    }
}
