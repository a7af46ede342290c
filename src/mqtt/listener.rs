//! Accepts TCP connections and spawns one task per client, within the
//! configured connection limit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::connection::{serve, Shared};

/// Accepts until `shutdown` resolves. Connections beyond `max_connections`
/// are closed at once and counted.
pub async fn run(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let limit = Arc::new(Semaphore::new(shared.cfg.mqtt.max_connections));
    let ids = AtomicU64::new(1);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut shutdown => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Typically EMFILE: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            shared
                .metrics
                .connection(crate::metrics::ConnectionResult::Rejected);
            tracing::warn!(%peer, "connection limit reached; connection closed");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let id = ids.fetch_add(1, Ordering::Relaxed);
        let shared = shared.clone();
        tokio::spawn(async move {
            serve(stream, shared, id).await;
            drop(permit);
        });
    }
}
