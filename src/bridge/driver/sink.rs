//! [`run_sink`]: drives a [`Sink`] — the bounded input, the in-order
//! confirm, reconnects with backoff, re-sending after a failure, metrics.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use super::{Backoff, SettleQueue};
use crate::bridge::contract::{Delivery, Pending, Sink};
use crate::bridge::metrics::BackendCounters;
use crate::bridge::{Envelope, RunningSink, SinkError, SinkHandle};

/// Records sent and not yet confirmed, at most: bounds memory and what is
/// sent twice after a failure.
pub const WINDOW: usize = 256;

/// Starts the driver task of `sink`. Its input holds `capacity` envelopes;
/// when full, senders wait (QoS 1/2) or drop and count (QoS 0, decided by
/// the connection). The task ends once every handle is dropped and what it
/// took is settled, or, if the backend is away then, answered `Closed`.
pub fn run_sink(
    backend: &str,
    sink: Box<dyn Sink>,
    counters: BackendCounters,
    capacity: usize,
    tasks: &TaskTracker,
) -> RunningSink {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let backend: Arc<str> = backend.into();
    counters.up.set(0);
    let driver = Driver {
        backend: backend.clone(),
        sink,
        counters,
        rx,
        open: true,
        inflight: SettleQueue::new(),
        replay: VecDeque::new(),
        backoff: Backoff::new(),
    };
    RunningSink {
        handle: SinkHandle { backend, tx },
        task: tasks.spawn(driver.run()),
    }
}

/// An envelope taken from the input.
struct Taken {
    envelope: Envelope,
    /// Hand-off to the driver, for the confirm-duration histogram.
    since: Instant,
}

struct InFlight {
    taken: Taken,
    pending: Pending,
}

struct Driver {
    backend: Arc<str>,
    sink: Box<dyn Sink>,
    counters: BackendCounters,
    rx: mpsc::Receiver<Envelope>,
    /// False once every handle is dropped and the input is drained.
    open: bool,
    inflight: SettleQueue<InFlight>,
    /// Taken but not sent on the current connection; always sent before
    /// anything new, so a device's records keep their order.
    replay: VecDeque<Taken>,
    backoff: Backoff,
}

impl Driver {
    async fn run(mut self) {
        loop {
            match self.sink.connect().await {
                Ok(()) => {
                    self.counters.up.set(1);
                    match self.pump().await {
                        Ok(()) => {
                            self.sink.close().await;
                            self.counters.up.set(0);
                            return;
                        }
                        Err(why) => {
                            self.counters.up.set(0);
                            tracing::warn!(backend = &*self.backend, unsettled = self.replay.len(), error = %why, "sending interrupted, will send again");
                        }
                    }
                }
                Err(error) => {
                    self.counters.up.set(0);
                    tracing::warn!(backend = &*self.backend, unsettled = self.replay.len(), %error, "backend could not be connected");
                }
            }
            if self.rx.is_closed() {
                // Shutting down and the backend is away: do not hold the
                // gateway's exit hostage; say what was not confirmed.
                return self.fail_all();
            }
            self.counters.retries.inc();
            tokio::time::sleep(self.backoff.next_delay()).await;
        }
    }

    /// Sends and settles until the input is drained (`Ok`) or the
    /// connection fails (`Err`, with everything unsettled back in `replay`).
    async fn pump(&mut self) -> Result<(), String> {
        loop {
            while self.inflight.len() < WINDOW {
                let Some(taken) = self.replay.pop_front() else {
                    break;
                };
                self.submit(taken).await?;
            }
            if self.inflight.is_empty() && self.replay.is_empty() && !self.open {
                return Ok(());
            }
            let take = self.open && self.replay.is_empty() && self.inflight.len() < WINDOW;
            tokio::select! {
                biased;
                delivery = self.inflight.oldest(|f| &mut f.pending) => self.settle(delivery)?,
                envelope = self.rx.recv(), if take => match envelope {
                    Some(envelope) => {
                        let taken = Taken { envelope, since: Instant::now() };
                        self.submit(taken).await?;
                    }
                    None => self.open = false,
                },
            }
        }
    }

    async fn submit(&mut self, taken: Taken) -> Result<(), String> {
        match self.sink.send(&taken.envelope.record).await {
            Ok(pending) => {
                self.inflight.push_back(InFlight { taken, pending });
                Ok(())
            }
            Err(e) => {
                self.replay.push_front(taken);
                self.requeue();
                Err(e.to_string())
            }
        }
    }

    /// Acts on the outcome of the oldest record in flight.
    fn settle(&mut self, delivery: Delivery) -> Result<(), String> {
        let Some(front) = self.inflight.pop_front() else {
            return Ok(());
        };
        let Taken { envelope, since } = front.taken;
        let answer = match delivery {
            Delivery::Confirmed => {
                self.backoff.reset();
                self.counters.confirm.observe(since.elapsed().as_secs_f64());
                envelope.record.counters.delivered.inc();
                Ok(())
            }
            Delivery::Rejected(why) => {
                let r = &envelope.record;
                tracing::warn!(backend = &*self.backend, route = &*r.route, client_id = &*r.client_id, target = %r.target, "backend refused a message: {why}");
                r.counters.rejected.inc();
                Err(SinkError::Rejected(why))
            }
            Delivery::Retry(why) => {
                // It and everything after it go again, in order: the
                // younger ones may have been lost with the same connection.
                self.requeue();
                self.replay.push_front(Taken { envelope, since });
                return Err(why);
            }
        };
        if let Some(confirm) = envelope.confirm {
            // The device's connection may be gone; nothing left to tell then.
            let _ = confirm.send(answer);
        }
        Ok(())
    }

    /// Moves everything in flight back in front of `replay`, order kept.
    fn requeue(&mut self) {
        while let Some(f) = self.inflight.pop_back() {
            self.replay.push_front(f.taken);
        }
    }

    /// Answers `Closed` to everything taken and everything still queued.
    fn fail_all(&mut self) {
        self.requeue();
        self.rx.close();
        let mut unconfirmed = 0;
        let queued = std::iter::from_fn(|| self.rx.try_recv().ok());
        for envelope in self.replay.drain(..).map(|t| t.envelope).chain(queued) {
            unconfirmed += 1;
            envelope.record.counters.failed.inc();
            if let Some(confirm) = envelope.confirm {
                let _ = confirm.send(Err(SinkError::Closed));
            }
        }
        if unconfirmed > 0 {
            tracing::error!(
                backend = &*self.backend,
                unconfirmed,
                "sink stopped with messages the backend never confirmed"
            );
        }
    }
}
