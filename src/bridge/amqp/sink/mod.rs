//! AMQP 0-9-1 (RabbitMQ) sink with publisher confirms, a [`Sink`] driven
//! by [`run_sink`] (which keeps the order, the window of unconfirmed
//! messages, reconnecting and publishing again what a failure left
//! unconfirmed).
//!
//! - [`start`] checks the settings and starts the driver; it connects in
//!   the background (backends come and go).
//! - `session`: one connection, its publishing channel (confirm mode) and a
//!   side channel that checks exchanges exist before the first publish.
//! - `message`: record → exchange, routing key, properties, headers.
//!
//! Delivery is at-least-once: a message is confirmed Ok only on the broker's
//! ack. A channel closed by a message-specific error (403, 404) is a
//! [`Delivery::Suspect`]: the driver finds the culprit by publishing what
//! was in flight one at a time.

mod message;
mod session;
#[cfg(test)]
mod tests;

use std::future::Future as _;
use std::task::Poll;

use lapin::options::BasicPublishOptions;
use lapin::{Confirmation, ExchangeKind};
use tokio_util::task::TaskTracker;

use self::message::outgoing;
use self::session::{Probe, Session};
use crate::bridge::amqp::Endpoint;
use crate::bridge::contract::{BoxError, BoxFuture, Delivery, Pending, Sink};
use crate::bridge::driver::run_sink;
use crate::bridge::metrics::BackendCounters;
use crate::bridge::registry::SettingError;
use crate::bridge::{BridgeError, Record, RunningSink};
use crate::config::AmqpBackend;

/// Starts the AMQP sink for `cfg`. Fails only on settings that can never
/// work (URI, exchange kind, exchange name); an unreachable broker is not an
/// error here, the driver keeps trying.
pub async fn start(
    cfg: &AmqpBackend,
    counters: BackendCounters,
    capacity: usize,
    tasks: &TaskTracker,
) -> Result<RunningSink, BridgeError> {
    let (uri, kind) = check(cfg).map_err(|errors| BridgeError::settings(&cfg.name, &errors))?;
    let sink = AmqpSink {
        cfg: cfg.clone(),
        uri,
        kind,
        session: None,
    };
    Ok(run_sink(
        &cfg.name,
        Box::new(sink),
        counters,
        capacity,
        tasks,
    ))
}

/// Validates what the broker would refuse for every message; every problem
/// is reported, keyed by the setting.
pub(super) fn check(cfg: &AmqpBackend) -> Result<(Endpoint, ExchangeKind), Vec<SettingError>> {
    let mut errors = Vec::new();
    let uri = super::endpoint(cfg).map_err(|e| errors.extend(e));
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

struct AmqpSink {
    cfg: AmqpBackend,
    uri: Endpoint,
    kind: ExchangeKind,
    session: Option<Session>,
}

impl Sink for AmqpSink {
    /// Replaces a failed publishing channel on a connection that is still
    /// up; otherwise opens a new connection.
    fn connect(&mut self) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async move {
            let opened = match self.session.take() {
                Some(s) if s.connection_alive() => s.reopen(&self.cfg, &self.kind).await,
                Some(s) => {
                    s.close().await;
                    Session::open(&self.cfg, &self.uri, &self.kind).await
                }
                None => Session::open(&self.cfg, &self.uri, &self.kind).await,
            };
            self.session = Some(opened?);
            Ok(())
        })
    }

    fn send<'a>(&'a mut self, record: &'a Record) -> BoxFuture<'a, Result<Pending, BoxError>> {
        // A record that can never be published is refused without a publish.
        let out = outgoing(&self.cfg, record);
        let payload = record.payload.clone();
        Box::pin(async move {
            let out = match out {
                Ok(out) => out,
                Err(why) => return Ok(settled(Delivery::Rejected(why))),
            };
            let Some(s) = self.session.as_mut() else {
                return Err("not connected".into());
            };
            match s.probe(&out.exchange).await {
                Ok(Probe::Exists) => {}
                Ok(Probe::Refused(why)) => return Ok(settled(Delivery::Rejected(why))),
                Err(e) => return Err(format!("checking the exchange: {e}").into()),
            }
            let options = BasicPublishOptions {
                mandatory: self.cfg.mandatory,
                immediate: false,
            };
            let channel = s.channel.clone();
            let mut publish = Box::pin(async move {
                channel
                    .basic_publish(
                        out.exchange,
                        out.routing_key,
                        options,
                        &payload,
                        out.properties,
                    )
                    .await
            });
            // The first poll queues the frames and takes the delivery tag,
            // which fixes the record's place; what is left is lapin's I/O
            // loop writing them. Awaiting that here made the driver wait a
            // round trip through that loop per record (one record at a time
            // for every device); the record's outcome waits for it instead.
            let first = std::future::poll_fn(|cx| Poll::Ready(publish.as_mut().poll(cx))).await;
            let pending: Pending = match first {
                Poll::Ready(Ok(confirm)) => Box::pin(async move { delivery(confirm.await) }),
                Poll::Ready(Err(e)) => return Err(format!("publish: {e}").into()),
                Poll::Pending => Box::pin(async move {
                    match publish.await {
                        Ok(confirm) => delivery(confirm.await),
                        Err(e) => delivery(Err(e)),
                    }
                }),
            };
            Ok(pending)
        })
    }

    fn healthy(&self) -> bool {
        self.session.as_ref().is_some_and(Session::healthy)
    }

    /// Orderly close once everything is confirmed.
    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(s) = self.session.take() {
                s.close().await;
            }
        })
    }
}

fn settled(delivery: Delivery) -> Pending {
    Box::pin(std::future::ready(delivery))
}

/// What a publisher confirm says about the message.
fn delivery(confirm: lapin::Result<Confirmation>) -> Delivery {
    match confirm {
        Ok(Confirmation::Ack(None)) => Delivery::Confirmed,
        // mandatory and no queue bound for it: acked, but not stored.
        Ok(Confirmation::Ack(Some(returned))) => Delivery::Rejected(format!(
            "unroutable: {} {}",
            returned.reply_code, returned.reply_text
        )),
        // RabbitMQ nacks on internal errors or a full queue with
        // overflow=reject-publish: transient, publish again later.
        Ok(Confirmation::Nack(_)) => Delivery::Retry("the broker nacked a message".into()),
        Ok(_) => Delivery::Retry("publisher confirms are not enabled on the channel".into()),
        // The channel died of a message-specific error: of this message,
        // or of another one in flight.
        Err(e) if e.is_amqp_soft_error() => Delivery::Suspect(e.to_string()),
        Err(e) => Delivery::Retry(e.to_string()),
    }
}
