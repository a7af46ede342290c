//! Commands handed to the processor and not answered yet, in consumption
//! order. The processor answers in that order too, so only the oldest is
//! ever awaited, and a command is recorded as settled only after every
//! command consumed before it.

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::timeout;

use super::ledger::Shared;
use crate::bridge::downlink::CommandOutcome;
use crate::bridge::driver::SettleQueue;

type Answer = Result<CommandOutcome, oneshot::error::RecvError>;

struct Pending {
    topic: String,
    partition: i32,
    offset: i64,
    done: oneshot::Receiver<CommandOutcome>,
}

#[derive(Default)]
pub(super) struct InFlight(SettleQueue<Pending>);

impl InFlight {
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    pub(super) fn push(
        &mut self,
        topic: String,
        partition: i32,
        offset: i64,
        done: oneshot::Receiver<CommandOutcome>,
    ) {
        self.0.push_back(Pending {
            topic,
            partition,
            offset,
            done,
        });
    }

    /// The answer for the oldest command (never resolves if there is none).
    /// Cancel-safe: the command stays until [`InFlight::settle_oldest`].
    pub(super) async fn oldest(&mut self) -> Answer {
        self.0.oldest(|p| &mut p.done).await
    }

    /// Removes the oldest command and records it in the ledger if it was
    /// stored or dropped. False if it was not stored (`Retry`, or the
    /// processor went away without answering): then nothing from it on
    /// may be committed.
    pub(super) fn settle_oldest(&mut self, answer: Answer, ledger: &Shared, route: &str) -> bool {
        let Some(p) = self.0.pop_front() else {
            return true;
        };
        match answer {
            Ok(CommandOutcome::Stored) | Ok(CommandOutcome::Dropped) => {
                ledger.lock().settled(&p.topic, p.partition, p.offset);
                true
            }
            _ => {
                tracing::warn!(
                    route,
                    position = %format_args!("{}/{}/{}", p.topic, p.partition, p.offset),
                    "command not stored; it and the commands after it will be consumed again"
                );
                false
            }
        }
    }

    /// On stop: lets in-flight commands be answered, at most `limit`,
    /// recording them up to the first one not stored.
    pub(super) async fn drain(&mut self, limit: Duration, ledger: &Shared, route: &str) {
        let drained = timeout(limit, async {
            while self.len() > 0 {
                let answer = self.oldest().await;
                if !self.settle_oldest(answer, ledger, route) {
                    return;
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                route,
                left = self.len(),
                "stopping with unanswered commands; they will be consumed again"
            );
        }
    }
}
