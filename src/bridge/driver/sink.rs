//! [`run_sink`]: drives a [`Sink`] — the bounded input, the in-order
//! confirm, reconnects with backoff, re-sending after a failure, metrics.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use super::{Backoff, SettleQueue};
use crate::bridge::contract::{Chain, Delivery, Pending, Sink};
use crate::bridge::metrics::BackendCounters;
use crate::bridge::{Envelope, RunningSink, SinkError, SinkHandle};

/// The default of [`Sink::window`].
pub const WINDOW: usize = 256;
/// How often the driver asks [`Sink::healthy`].
pub const HEALTH_CHECK: Duration = Duration::from_millis(500);

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
        careful: 0,
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
    /// How many records at the front of inflight + replay must go one at a
    /// time: a [`Delivery::Suspect`] came while several were in flight, so
    /// the culprit is not known yet.
    careful: usize,
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
                            self.counters.last_error.set(why.clone());
                            tracing::warn!(backend = &*self.backend, unsettled = self.replay.len(), error = %why, "sending interrupted, will send again");
                        }
                    }
                }
                Err(error) => {
                    self.counters.up.set(0);
                    self.counters.last_error.set(Chain(&*error).to_string());
                    tracing::warn!(backend = &*self.backend, unsettled = self.replay.len(), error = %Chain(&*error), "backend could not be connected");
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
        // Set when a send failed: send nothing more, let the outcomes of
        // what is in flight say what became of it, then reconnect.
        let mut stalled: Option<String> = None;
        let mut health = tokio::time::interval(HEALTH_CHECK);
        // Health checks in a row that found the connection unusable.
        let mut sick = 0;
        loop {
            let limit = match (&stalled, self.careful) {
                (Some(_), _) => 0,
                (None, 0) => self.sink.window().max(1),
                (None, _) => 1,
            };
            while self.inflight.len() < limit {
                let Some(taken) = self.replay.pop_front() else {
                    break;
                };
                if let Err(why) = self.submit(taken).await {
                    stalled = Some(why);
                    break;
                }
            }
            if let Some(why) = &stalled {
                if self.inflight.is_empty() {
                    return Err(why.clone());
                }
            }
            if self.inflight.is_empty() && self.replay.is_empty() && !self.open {
                return Ok(());
            }
            let take = self.open && self.replay.is_empty() && self.inflight.len() < limit;
            let idle = self.inflight.is_empty();
            tokio::select! {
                biased;
                delivery = self.inflight.oldest(|f| &mut f.pending) => self.settle(delivery)?,
                envelope = self.rx.recv(), if take => match envelope {
                    Some(envelope) => self.replay.push_back(Taken { envelope, since: Instant::now() }),
                    None => self.open = false,
                },
                _ = health.tick() => {
                    sick = if self.sink.healthy() { 0 } else { sick + 1 };
                    if sick > usize::from(!idle) {
                        self.requeue();
                        return Err("connection lost".into());
                    }
                }
            }
        }
    }

    /// Hands one record to the sink. On `Err` it is back at the front of
    /// `replay`; what is in flight stays there.
    async fn submit(&mut self, taken: Taken) -> Result<(), String> {
        match self.sink.send(&taken.envelope.record).await {
            Ok(pending) => {
                self.inflight.push_back(InFlight { taken, pending });
                Ok(())
            }
            Err(e) => {
                self.replay.push_front(taken);
                Err(Chain(&*e).to_string())
            }
        }
    }

    /// Acts on the outcome of the oldest record in flight.
    fn settle(&mut self, delivery: Delivery) -> Result<(), String> {
        let Some(front) = self.inflight.pop_front() else {
            return Ok(());
        };
        let Taken { envelope, since } = front.taken;
        let mut ended = Ok(());
        let suspect = matches!(delivery, Delivery::Suspect(_));
        let answer = match delivery {
            Delivery::Confirmed => {
                self.counters.confirm.observe(since.elapsed().as_secs_f64());
                envelope.record.counters.delivered.inc();
                Ok(())
            }
            Delivery::Rejected(why) => Err(self.rejected(&envelope, why)),
            Delivery::Suspect(why) if self.inflight.is_empty() => {
                // Alone in flight: it is the culprit. The connection is
                // gone all the same.
                ended = Err(format!("connection closed by the backend: {why}"));
                Err(self.rejected(&envelope, why))
            }
            Delivery::Retry(why) | Delivery::Suspect(why) => {
                if suspect {
                    // The culprit is one of these: send them one at a time.
                    self.careful = self.careful.max(self.inflight.len() + 1);
                }
                // It and everything after it go again, in order: the
                // younger ones may have been lost with the same connection.
                self.requeue();
                self.replay.push_front(Taken { envelope, since });
                return Err(why);
            }
        };
        self.progress();
        if let Some(confirm) = envelope.confirm {
            // The device's connection may be gone; nothing left to tell then.
            let _ = confirm.send(answer);
        }
        ended
    }

    /// One emit point for refusals: log line, counter, the device's answer.
    fn rejected(&self, envelope: &Envelope, why: String) -> SinkError {
        let r = &envelope.record;
        tracing::warn!(backend = &*self.backend, route = &*r.route, client_id = &*r.client_id, target = %r.target, reason = %why, "backend refused a message");
        r.counters.rejected.inc();
        SinkError::Rejected(why)
    }

    /// A record was settled by the backend: backoff starts over, one fewer
    /// to send carefully.
    fn progress(&mut self) {
        self.backoff.reset();
        self.careful = self.careful.saturating_sub(1);
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

#[cfg(test)]
#[path = "sink_tests.rs"]
mod tests;
