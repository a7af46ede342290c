//! Settles deliveries in consumption order as the driver passes on the
//! processor's answers: ack once stored (or dropped for good), nack back
//! to the queue on `Retry`.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::Acker;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::bridge::downlink::CommandOutcome;
use crate::bridge::driver::Backoff;

/// Wait before returning a command that could not be stored: an immediate
/// redelivery would most likely fail the same way.
const RETRY_BASE: Duration = Duration::from_millis(200);
/// Longest such wait while failures go on.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// A delivery and what the processor said about it.
pub(super) struct Pending {
    pub acker: Acker,
    pub outcome: CommandOutcome,
}

/// Runs until `rx` is closed and drained (the connection ends or stops).
pub(super) async fn run(
    mut rx: mpsc::UnboundedReceiver<Pending>,
    stop: CancellationToken,
    route: Arc<str>,
) {
    let mut backoff = Backoff::between(RETRY_BASE, RETRY_MAX);
    // Deliveries that may be returned without a wait of their own: those
    // consumed before the last wait ended belong to the same round (a wait
    // each would hold a prefetch's worth of commands back for minutes).
    let mut same_round = 0usize;
    while let Some(p) = rx.recv().await {
        let settled = match p.outcome {
            CommandOutcome::Stored | CommandOutcome::Dropped => {
                backoff.reset();
                same_round = 0;
                p.acker.ack(BasicAckOptions::default()).await
            }
            CommandOutcome::Retry => {
                // While stopping, hand it back at once: the next run takes it.
                if same_round > 0 {
                    same_round -= 1;
                } else if !stop.is_cancelled() {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                    same_round = rx.len();
                }
                tracing::debug!(%route, "command not stored; returned to the queue");
                let requeue = BasicNackOptions {
                    multiple: false,
                    requeue: true,
                };
                p.acker.nack(requeue).await
            }
        };
        match settled {
            Ok(true) => {}
            // The channel is gone: the broker redelivers the command.
            Ok(false) => tracing::debug!(%route, "delivery could not be settled (channel closed)"),
            Err(e) => tracing::debug!(%route, error = %e, "delivery could not be settled"),
        }
    }
}
