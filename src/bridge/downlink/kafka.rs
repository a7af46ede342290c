//! Kafka command source (placeholder until implemented).
use super::CommandTx;
use crate::bridge::BridgeError;
use crate::config::{DownlinkRoute, KafkaBackend};

/// Starts consuming `route.topics` with a consumer group; hands commands to `tx`.
pub async fn start(
    backend: &KafkaBackend,
    route: &DownlinkRoute,
    _tx: CommandTx,
    _stop: tokio::sync::watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, BridgeError> {
    let _ = route;
    Err(BridgeError::Backend {
        backend: backend.name.clone(),
        reason: "the Kafka downlink is not implemented yet".into(),
    })
}
