//! Accepts TCP connections and spawns one task per client, within the
//! connection limits: the listener-wide rate, per-IP and total counts.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::admission::{LogLimiter, PerIp, TokenBucket, WARN_EVERY};
use super::connection::{serve, Shared};
use crate::metrics::RefusedReason;
use crate::tasks::Tasks;

/// Accepts until the stop signal of `tasks`; each connection is a task on
/// `tasks` (the router ends them on the same signal). Connections beyond a
/// limit are closed at once (before CONNECT) and counted; the warnings are
/// rate-limited.
pub async fn run(listener: TcpListener, shared: Arc<Shared>, tasks: Tasks) {
    let shutdown = tasks.cancelled();
    let m = &shared.cfg.mqtt;
    let limit = Arc::new(Semaphore::new(m.max_connections));
    let per_ip = PerIp::new(m.max_connections_per_ip);
    let mut rate = (m.max_connection_rate > 0).then(|| TokenBucket::new(m.max_connection_rate));
    let warn: Vec<LogLimiter> = RefusedReason::ALL
        .iter()
        .map(|_| LogLimiter::new(WARN_EVERY))
        .collect();
    let refuse = |reason: RefusedReason, peer: SocketAddr| {
        shared.metrics.connection_refused(reason);
        if let Some(suppressed) = warn.get(reason as usize).and_then(LogLimiter::allow) {
            tracing::warn!(%peer, reason = reason.as_str(), suppressed, "connection limit reached; connection closed");
        }
    };
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
        // Cheapest check first: a flood is turned away before any bookkeeping.
        if rate.as_mut().is_some_and(|r| !r.try_take()) {
            refuse(RefusedReason::Rate, peer);
            continue;
        }
        let Ok(ip_slot) = per_ip.acquire(peer.ip()) else {
            refuse(RefusedReason::PerIp, peer);
            continue;
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            refuse(RefusedReason::MaxConnections, peer);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let id = ids.fetch_add(1, Ordering::Relaxed);
        let shared = shared.clone();
        tasks.spawn("mqtt connection", async move {
            serve(stream, shared, id).await;
            drop((permit, ip_slot));
        });
    }
}
