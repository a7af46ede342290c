//! AMQP command source (placeholder until implemented).
use super::CommandTx;
use crate::bridge::BridgeError;
use crate::config::{AmqpBackend, DownlinkRoute};

/// Starts consuming `route.queue`; hands commands to `tx`.
pub async fn start(
    backend: &AmqpBackend,
    route: &DownlinkRoute,
    _tx: CommandTx,
    _stop: tokio::sync::watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, BridgeError> {
    let _ = route;
    Err(BridgeError::Backend {
        backend: backend.name.clone(),
        reason: "the AMQP downlink is not implemented yet".into(),
    })
}
