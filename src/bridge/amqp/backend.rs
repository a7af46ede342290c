//! The AMQP backend in the registry: checks the settings, starts the sink
//! and the downlink sources.

use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::bridge::contract::BoxFuture;
use crate::bridge::registry::{Backend, Kind, SettingError, SinkStart, SourceStart};
use crate::bridge::{BridgeError, RunningSink};
use crate::config::{AmqpBackend, BackendConfig, DownlinkRoute, UplinkRoute};

pub const KIND: Kind = Kind {
    kind: "amqp",
    parse,
};

fn parse(cfg: &BackendConfig) -> Result<Arc<dyn Backend>, Vec<SettingError>> {
    let BackendConfig::Amqp(a) = cfg else {
        return Err(vec![SettingError::new("kind", "not an AMQP backend")]);
    };
    if a.uri.is_empty() {
        return Err(vec![SettingError::new("uri", "must not be empty")]);
    }
    super::sink::check(a)?;
    Ok(Arc::new(Amqp(a.clone())))
}

#[derive(Debug)]
struct Amqp(AmqpBackend);

impl Backend for Amqp {
    fn name(&self) -> &str {
        &self.0.name
    }

    fn target_required(&self) -> bool {
        // Routes without a target publish to the backend's exchange.
        self.0.exchange.is_empty()
    }

    fn uplink_key(&self, route: &UplinkRoute) -> String {
        route
            .routing_key
            .clone()
            .unwrap_or_else(|| "{topic_dotted}".into())
    }

    fn check_downlink(&self, route: &DownlinkRoute) -> Vec<SettingError> {
        match super::source::check(&self.0, route) {
            Ok(_) => Vec::new(),
            // The URI is the backend's, reported with it.
            Err(errors) => errors.into_iter().filter(|e| e.key != "uri").collect(),
        }
    }

    fn start_sink(&self, start: SinkStart) -> BoxFuture<'_, Result<RunningSink, BridgeError>> {
        Box::pin(async move {
            super::sink::start(&self.0, start.counters, start.capacity, &start.tasks).await
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
