//! One connection of a command source: topology (queue, exchange, binding),
//! prefetch, and a consumer whose deliveries arrive in order on a channel.

use std::time::Duration;

use lapin::message::DeliveryResult;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection, Consumer, ExchangeKind};
use tokio::sync::mpsc;

use super::Settings;

/// Bound on each step of an orderly cancel/close, so a dead peer cannot
/// hold up the gateway's shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) struct Session {
    conn: Connection,
    channel: Channel,
    /// Kept alive on purpose: dropping the consumer cancels it.
    consumer: Consumer,
    /// Deliveries (then the error / cancellation that ends the consumer), in
    /// the order the broker sent them. Unbounded, but the prefetch bounds it.
    pub deliveries: mpsc::UnboundedReceiver<DeliveryResult>,
}

impl Session {
    /// Connects, sets up the topology and starts consuming (manual acks).
    pub async fn open(s: &Settings) -> lapin::Result<Session> {
        let name = format!("mqbridge/{}/downlink/{}", s.backend, s.route);
        let conn = s.uri.connect(name).await?;
        let mut channel = conn.create_channel().await?;
        if s.declare_queue {
            let durable = QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            };
            let declared = channel
                .queue_declare(s.queue.clone(), durable, FieldTable::default())
                .await;
            channel = carry_on(&conn, channel, declared, s, "queue").await?;
        }
        if let Some((exchange, key)) = &s.bind {
            let durable = ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            };
            let declared = channel
                .exchange_declare(
                    exchange.clone(),
                    ExchangeKind::Topic,
                    durable,
                    FieldTable::default(),
                )
                .await;
            channel = carry_on(&conn, channel, declared, s, "exchange").await?;
            channel
                .queue_bind(
                    s.queue.clone(),
                    exchange.clone(),
                    key.clone(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        channel
            .basic_qos(s.prefetch, BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                s.queue.clone(),
                ShortString::from(""),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let (tx, deliveries) = mpsc::unbounded_channel();
        // The delegate is called in delivery order and sends synchronously,
        // so the channel keeps that order (the future it returns is empty).
        consumer.set_delegate(move |d: DeliveryResult| {
            let _ = tx.send(d);
            std::future::ready(())
        });
        Ok(Session {
            conn,
            channel,
            consumer,
            deliveries,
        })
    }

    pub fn alive(&self) -> bool {
        self.conn.status().connected() && self.channel.status().connected()
    }

    /// Asks the broker to stop delivering; what it already sent stays
    /// ours to settle until the channel closes.
    pub async fn cancel(&self) {
        if !self.alive() {
            return;
        }
        let cancel = self
            .channel
            .basic_cancel(self.consumer.tag(), BasicCancelOptions::default());
        if let Ok(Err(e)) = tokio::time::timeout(CLOSE_TIMEOUT, cancel).await {
            tracing::debug!(error = %e, "AMQP downlink: basic.cancel failed");
        }
    }

    /// Closes the connection; the broker requeues whatever is still unacked.
    pub async fn close(self) {
        if self.conn.status().connected() {
            let close = self.conn.close(200, ShortString::from("OK"));
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, close).await;
        }
    }
}

/// A declaration refused by the broker (typically 406: it exists with other
/// properties) closes the channel, but the queue or exchange is there and
/// usable as it is: say so and go on with a fresh channel.
async fn carry_on(
    conn: &Connection,
    channel: Channel,
    declared: lapin::Result<impl Sized>,
    s: &Settings,
    what: &str,
) -> lapin::Result<Channel> {
    match declared {
        Ok(_) => Ok(channel),
        Err(e) if e.is_amqp_soft_error() => {
            tracing::error!(route = %s.route, queue = %s.queue, error = %e,
                "AMQP downlink: could not declare the {what}; using it as it is");
            conn.create_channel().await
        }
        Err(e) => Err(e),
    }
}
