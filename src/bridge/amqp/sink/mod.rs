//! AMQP 0-9-1 (RabbitMQ) sink with publisher confirms.
//!
//! - [`start`] checks the settings, opens the input channel and spawns the
//!   sink task; the task connects in the background (backends come and go).
//! - `session`: one connection, its publishing channel (confirm mode) and a
//!   side channel that checks exchanges exist before the first publish.
//! - `pump`: publishes envelopes in order with a bounded window of
//!   unconfirmed messages and settles their confirms in order.
//! - `message`: record → exchange, routing key, properties, headers.
//!
//! Delivery is at-least-once: a message is confirmed Ok only on the broker's
//! ack; anything unconfirmed when a channel or connection fails is published
//! again, in its original order, before new messages are taken.

mod message;
mod pump;
mod session;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::Arc;

use lapin::uri::AMQPUri;
use lapin::ExchangeKind;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use self::pump::{End, Pending};
use self::session::Session;
use crate::bridge::driver::{Backoff, SettleQueue};
use crate::bridge::metrics::BackendCounters;
use crate::bridge::registry::SettingError;
use crate::bridge::{BridgeError, Envelope, RunningSink, SinkHandle};
use crate::config::AmqpBackend;

/// Starts the AMQP sink for `cfg`. Fails only on settings that can never
/// work (URI, exchange kind, exchange name); an unreachable broker is not an
/// error here, the task keeps trying.
pub async fn start(
    cfg: &AmqpBackend,
    counters: BackendCounters,
    capacity: usize,
    tasks: &TaskTracker,
) -> Result<RunningSink, BridgeError> {
    let (uri, kind) = check(cfg).map_err(|errors| BridgeError::settings(&cfg.name, &errors))?;
    let (tx, rx) = mpsc::channel(capacity.max(1));
    counters.up.set(0);
    let sink = Sink {
        cfg: cfg.clone(),
        uri,
        kind,
        counters,
        rx,
        rx_open: true,
        backoff: Backoff::new(),
        inflight: SettleQueue::new(),
        replay: VecDeque::new(),
        careful: 0,
    };
    let task = tasks.spawn(sink.run());
    Ok(RunningSink {
        handle: SinkHandle {
            backend: Arc::from(cfg.name.as_str()),
            tx,
        },
        task,
    })
}

/// Validates what the broker would refuse for every message; every problem
/// is reported, keyed by the setting.
pub(super) fn check(cfg: &AmqpBackend) -> Result<(AMQPUri, ExchangeKind), Vec<SettingError>> {
    let mut errors = Vec::new();
    let uri =
        super::parse_uri(cfg.uri.expose()).map_err(|e| errors.push(SettingError::new("uri", e)));
    let kind = exchange_kind(&cfg.exchange_kind)
        .map_err(|e| errors.push(SettingError::new("exchange_kind", e)));
    if let Err(e) = super::short("exchange", &cfg.exchange) {
        errors.push(SettingError::new("exchange", e));
    }
    if cfg.declare_exchange && cfg.exchange.is_empty() {
        errors.push(SettingError::new(
            "declare_exchange",
            "needs a non-empty exchange name",
        ));
    }
    match (uri, kind) {
        (Ok(uri), Ok(kind)) if errors.is_empty() => Ok((uri, kind)),
        _ => Err(errors),
    }
}

pub(super) fn exchange_kind(kind: &str) -> Result<ExchangeKind, String> {
    match kind {
        "direct" => Ok(ExchangeKind::Direct),
        "fanout" => Ok(ExchangeKind::Fanout),
        "topic" => Ok(ExchangeKind::Topic),
        "headers" => Ok(ExchangeKind::Headers),
        other => Err(format!(
            "{other:?} is not one of direct, fanout, topic, headers"
        )),
    }
}

/// The sink task's state.
struct Sink {
    cfg: AmqpBackend,
    uri: AMQPUri,
    kind: ExchangeKind,
    counters: BackendCounters,
    rx: mpsc::Receiver<Envelope>,
    /// False once every handle is dropped and the channel is drained.
    rx_open: bool,
    backoff: Backoff,
    /// Published on the current channel, not yet confirmed, in order.
    inflight: SettleQueue<pump::InFlight>,
    /// Taken from `rx` but not published on the current channel (left over
    /// from a failed one); always published before anything new.
    replay: VecDeque<Pending>,
    /// How many messages at the front of inflight + replay must go one at a
    /// time: a channel died of a message-specific error (e.g. 403, 404)
    /// while several were in flight, so the culprit is not known yet.
    careful: usize,
}

impl Sink {
    /// Connects, pumps, and on failure reconnects after a backoff, until the
    /// input is closed and everything taken is settled.
    async fn run(mut self) {
        let mut session: Option<Session> = None;
        loop {
            let opened = match session.take() {
                Some(s) if s.connection_alive() => s.reopen(&self.cfg, &self.kind).await,
                Some(s) => {
                    s.close().await;
                    Session::open(&self.cfg, &self.uri, &self.kind).await
                }
                None => Session::open(&self.cfg, &self.uri, &self.kind).await,
            };
            match opened {
                Ok(mut s) => {
                    self.counters.up.set(1);
                    match self.pump(&mut s).await {
                        End::Drained => {
                            s.close().await;
                            self.counters.up.set(0);
                            return;
                        }
                        End::Broken(why) => {
                            tracing::warn!(backend = %self.cfg.name, unsettled = self.unsettled(), "AMQP publishing interrupted, will publish again: {why}");
                            if !s.connection_alive() {
                                self.counters.up.set(0);
                            }
                            session = Some(s);
                        }
                    }
                }
                Err(e) => {
                    self.counters.up.set(0);
                    tracing::warn!(backend = %self.cfg.name, unsettled = self.unsettled(), "AMQP connection or channel could not be opened: {e}");
                }
            }
            if self.rx.is_closed() {
                // Shutting down and the broker is not there: do not hold the
                // gateway's exit hostage; say what was not confirmed.
                self.fail_all();
                return;
            }
            self.counters.retries.inc();
            tokio::time::sleep(self.backoff.next_delay()).await;
        }
    }

    /// Messages taken but not settled.
    fn unsettled(&self) -> usize {
        self.inflight.len() + self.replay.len()
    }

    /// Answers `Closed` to everything taken and everything still queued.
    fn fail_all(&mut self) {
        let n = self.unsettled();
        for p in self
            .inflight
            .drain(..)
            .map(|f| f.msg)
            .chain(self.replay.drain(..))
        {
            p.closed();
        }
        self.rx.close();
        let mut queued = 0;
        while let Ok(env) = self.rx.try_recv() {
            Pending::new(env).closed();
            queued += 1;
        }
        if n + queued > 0 {
            tracing::error!(backend = %self.cfg.name, unconfirmed = n + queued, "AMQP sink stopped with messages the broker never confirmed");
        }
        self.counters.up.set(0);
    }
}
