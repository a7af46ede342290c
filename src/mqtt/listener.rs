//! Accepts connections, one task per listener, and spawns one task per
//! client, within the connection limits: the rate, per-IP and total
//! counts, global across listeners (adding a listener does not multiply
//! the budget).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::admission::{LogLimiter, PerIp, TokenBucket, WARN_EVERY};
use super::connection::Shared;
use super::transport::{establish, ConnCtx, ListenerCtx};
use crate::metrics::RefusedReason;
use crate::tasks::Tasks;

/// The connection limits every listener shares.
pub struct Admission {
    limit: Arc<Semaphore>,
    per_ip: PerIp,
    /// Taken once per accepted socket (never per packet).
    rate: Option<Mutex<TokenBucket>>,
    warn: Vec<LogLimiter>,
}

impl Admission {
    pub fn new(m: &crate::config::MqttConfig) -> Admission {
        Admission {
            limit: Arc::new(Semaphore::new(m.max_connections)),
            per_ip: PerIp::new(m.max_connections_per_ip),
            rate: (m.max_connection_rate > 0)
                .then(|| Mutex::new(TokenBucket::new(m.max_connection_rate))),
            warn: RefusedReason::ALL
                .iter()
                .map(|_| LogLimiter::new(WARN_EVERY))
                .collect(),
        }
    }
}

/// Accepts on `listener` until the stop signal of `tasks`; each connection
/// is a task on `tasks` (the router ends them on the same signal).
/// Connections beyond a limit are closed at once (before any TLS or
/// CONNECT) and counted; the warnings are rate-limited.
pub async fn run(
    listener: TcpListener,
    on: Arc<ListenerCtx>,
    admission: Arc<Admission>,
    shared: Arc<Shared>,
    tasks: Tasks,
) {
    let shutdown = tasks.cancelled();
    let refuse = |reason: RefusedReason, peer: SocketAddr| {
        on.metrics.connection_refused(reason);
        if let Some(suppressed) = admission
            .warn
            .get(reason as usize)
            .and_then(LogLimiter::allow)
        {
            tracing::warn!(%peer, listener = %on.name, reason = reason.as_str(), suppressed, "connection limit reached; connection closed");
        }
    };
    let connect_timeout = shared.cfg.mqtt.connect_timeout();
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
                tracing::warn!(error = %e, listener = %on.name, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        // Cheapest check first: a flood is turned away before any bookkeeping.
        let limited = admission
            .rate
            .as_ref()
            .is_some_and(|r| !r.lock().unwrap_or_else(PoisonError::into_inner).try_take());
        if limited {
            refuse(RefusedReason::Rate, peer);
            continue;
        }
        // Before any TLS work: a banned address costs one lookup.
        if shared.auth.banned(peer.ip()) {
            refuse(RefusedReason::Banned, peer);
            continue;
        }
        let Ok(ip_slot) = admission.per_ip.acquire(peer.ip()) else {
            refuse(RefusedReason::PerIp, peer);
            continue;
        };
        let Ok(permit) = admission.limit.clone().try_acquire_owned() else {
            refuse(RefusedReason::MaxConnections, peer);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let ctx = ConnCtx {
            id: shared.next_conn_id.fetch_add(1, Ordering::Relaxed),
            peer,
            listener: on.clone(),
            peer_identity: None,
            connect_deadline: tokio::time::Instant::now() + connect_timeout,
        };
        let shared = shared.clone();
        tasks.spawn("mqtt connection", async move {
            establish(stream, ctx, shared).await;
            drop((permit, ip_slot));
        });
    }
}
