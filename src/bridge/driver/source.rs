//! [`run_source`]: drives a [`Source`] — hands commands to the route's
//! processor, settles their positions strictly in consumption order,
//! reconnects with backoff, and stops on the cancellation token.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;

use crate::bridge::metrics::SourceGauges;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Backoff, SettleQueue};
use crate::bridge::contract::{BoxError, Chain, Source};
use crate::bridge::downlink::{CommandEnvelope, CommandOutcome, CommandTx};

/// Commands handed to the processor and not settled yet, at most: when
/// reached, the driver consumes no further until the oldest is answered.
pub const WINDOW: usize = 1000;
/// On stop, how long commands already handed over may take to be answered
/// (those not answered by then are consumed again after a restart).
const DRAIN: Duration = Duration::from_secs(5);

/// Starts the driver task of one route's `source`; commands go to `tx`.
pub fn run_source(
    route: &str,
    source: Box<dyn Source>,
    tx: CommandTx,
    gauges: SourceGauges,
    cancel: CancellationToken,
    tasks: &TaskTracker,
) -> JoinHandle<()> {
    gauges.up.set(0);
    let driver = Driver {
        up: gauges.up,
        unsettled: gauges.unsettled,
        last_error: gauges.last_error,
        route: route.into(),
        source,
        tx,
        cancel,
        backoff: Backoff::new(),
    };
    tasks.spawn(driver.run())
}

struct Driver {
    /// 1 while connected.
    up: Gauge,
    /// Handed to the processor and not settled.
    unsettled: Gauge,
    last_error: crate::bridge::metrics::LastError,
    route: Arc<str>,
    source: Box<dyn Source>,
    tx: CommandTx,
    cancel: CancellationToken,
    backoff: Backoff,
}

/// A command handed to the processor, awaiting its outcome.
struct Handed {
    position: String,
    outcome: oneshot::Receiver<CommandOutcome>,
}

/// Why a connection's consuming ended.
enum End {
    Stopped,
    /// The processor is gone: nothing can be delivered any more.
    ProcessorGone,
    /// The connection is no good: why, with the backend's error as source.
    Lost(BoxError),
}

/// Settling a position failed.
#[derive(Debug, thiserror::Error)]
#[error("settling {position}")]
struct Settling {
    position: String,
    #[source]
    source: BoxError,
}

impl Driver {
    async fn run(mut self) {
        let route = self.route.clone();
        loop {
            let connected = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return,
                c = self.source.connect() => c,
            };
            match connected {
                Ok(()) => {
                    self.up.set(1);
                    let end = self.consume().await;
                    self.up.set(0);
                    // What was not settled is consumed again on the next connection.
                    self.unsettled.set(0);
                    self.source.close().await;
                    match end {
                        End::Stopped => return,
                        End::ProcessorGone => {
                            tracing::error!(%route, "the command processor is gone; consuming stopped");
                            return;
                        }
                        End::Lost(error) => {
                            self.last_error.set(Chain(&*error).to_string());
                            tracing::warn!(%route, error = %Chain(&*error), "consuming interrupted, will resume from the last settled command")
                        }
                    }
                }
                Err(error) => {
                    self.last_error.set(Chain(&*error).to_string());
                    tracing::warn!(%route, error = %Chain(&*error), "command source could not connect")
                }
            }
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(self.backoff.next_delay()) => {}
            }
        }
    }

    async fn consume(&mut self) -> End {
        let mut handed: SettleQueue<Handed> = SettleQueue::new();
        loop {
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => {
                    self.drain(&mut handed).await;
                    return End::Stopped;
                }
                answer = handed.oldest(|h| &mut h.outcome) => {
                    let Some(h) = handed.pop_front() else { continue };
                    self.unsettled.set(handed.len() as i64);
                    if let Err(end) = self.settle(h, answer).await {
                        return end;
                    }
                }
                command = self.source.next(), if handed.len() < WINDOW => {
                    let command = match command {
                        Ok(c) => c,
                        Err(e) => return End::Lost(e),
                    };
                    let position = command.position.clone();
                    let (done, outcome) = oneshot::channel();
                    // A full processor input is backpressure; stopping
                    // meanwhile leaves the command unsettled (consumed again).
                    tokio::select! {
                        biased;
                        _ = self.cancel.cancelled() => {
                            self.drain(&mut handed).await;
                            return End::Stopped;
                        }
                        sent = self.tx.send(CommandEnvelope { command, done }) => if sent.is_err() {
                            return End::ProcessorGone;
                        },
                    }
                    handed.push_back(Handed { position, outcome });
                    self.unsettled.set(handed.len() as i64);
                }
            }
        }
    }

    /// Settles one answered command. A command not stored ends the
    /// connection (it and everything after it are consumed again) unless
    /// the source hands it back by itself.
    async fn settle(
        &mut self,
        h: Handed,
        answer: Result<CommandOutcome, oneshot::error::RecvError>,
    ) -> Result<(), End> {
        // The processor dropping `done` means it did not store the command.
        let outcome = answer.unwrap_or(CommandOutcome::Retry);
        if let Err(e) = self.source.settle(&h.position, outcome).await {
            return Err(End::Lost(Box::new(Settling {
                position: h.position,
                source: e,
            })));
        }
        if outcome == CommandOutcome::Retry {
            if self.source.requeues_on_retry() {
                return Ok(());
            }
            return Err(End::Lost(
                format!("command {} not stored", h.position).into(),
            ));
        }
        self.backoff.reset();
        Ok(())
    }

    /// On stop: settles what the processor answers within [`DRAIN`], in
    /// order, up to the first command not stored.
    async fn drain(&mut self, handed: &mut SettleQueue<Handed>) {
        let drained = tokio::time::timeout(DRAIN, async {
            while !handed.is_empty() {
                let answer = handed.oldest(|h| &mut h.outcome).await;
                let Some(h) = handed.pop_front() else { break };
                self.unsettled.set(handed.len() as i64);
                if self.settle(h, answer).await.is_err() {
                    break;
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                route = &*self.route,
                left = handed.len(),
                "stopping with unanswered commands; they will be consumed again"
            );
        }
    }
}
