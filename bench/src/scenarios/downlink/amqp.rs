//! `downlink-amqp` (see the parent module): commands from a fresh durable
//! queue of the main RabbitMQ node. Settled = no ready message in the queue
//! (passive `queue.declare`) and no unsettled command in the route (its
//! admin API), then confirmed with `rabbitmqctl list_queues messages`,
//! which also counts unacknowledged messages. The raw peer: its own count
//! of acked commands, then the same `rabbitmqctl` check.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::stream::{FuturesUnordered, StreamExt};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{measured, Fleet, Load, SETTLE_LIMIT};
use crate::peers::{Broker, Side};
use crate::scenarios::backends::stamp;
use crate::scenarios::common::Measured;

/// Unconfirmed commands at most while producing.
const WINDOW: usize = 1000;

pub(super) async fn downlink_amqp(side: Side, l: &Load) -> Result<Measured> {
    let fleet = Fleet::new(l.sessions);
    let (exchange, queue) = (format!("{}-x", fleet.run), format!("{}-q", fleet.run));
    let conn = Connection::connect(&l.amqp, ConnectionProperties::default())
        .await
        .context("lapin connect")?;
    let ch = conn.create_channel().await?;
    let r = round(side, l, &fleet, &ch, &exchange, &queue).await;
    let _ = ch
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = ch
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await;
    let _ = conn.close(200, "done".into()).await;
    r
}

/// Who settles the commands, and how the harness sees it.
enum Settler {
    /// mqbridge: its admin API's address (unsettled commands of the route).
    Route(Broker, String),
    Raw(super::raw::RawConsumer),
}

async fn round(
    side: Side,
    l: &Load,
    fleet: &Fleet,
    ch: &Channel,
    exchange: &str,
    queue: &str,
) -> Result<Measured> {
    // The route declares and binds them too (the same way); ours exist
    // before it connects, so nothing published meanwhile is lost.
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        exchange.into(),
        ExchangeKind::Topic,
        durable,
        FieldTable::default(),
    )
    .await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(queue.into(), durable, FieldTable::default())
        .await?;
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let config = format!(
        r##"
[session]
max_persistent_sessions_per_ip = 0
[bridge]
uplink = []
[[bridge.backends]]
kind = "amqp"
name = "amqp"
uri = "{}"
[[bridge.downlink]]
name = "commands"
backend = "amqp"
queue = "{queue}"
declare_queue = true
bind_exchange = "{exchange}"
binding_key = "#"
topic = "devices/{{routing_key}}/commands"
qos = 1
"##,
        l.amqp
    );
    let settler = if side == Side::Mqbridge {
        let env = [("MQBRIDGE__ADMIN__LISTEN", "127.0.0.1:FREE_PORT".to_owned())];
        let broker = Broker::start_with_env(side, &l.bin, Some(&config), &env)?;
        let admin = broker
            .env("MQBRIDGE__ADMIN__LISTEN")
            .context("no admin address")?
            .to_owned();
        fleet.create_sessions(broker.addr).await?;
        Settler::Route(broker, admin)
    } else {
        Settler::Raw(super::raw::amqp(&l.amqp, queue).await?)
    };
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let origin = Instant::now();
    // Warm-up: a command for no session, acked once the route consumes.
    let warm = format!("{}-warm", fleet.run);
    publish(ch, exchange, &[warm], 8, origin).await?;
    wait_settled(ch, queue, &settler, 1).await?;
    wait_empty(queue).await?;

    let start = Instant::now();
    let keys: Vec<String> = (0..l.commands).map(|j| fleet.of_command(j)).collect();
    publish(ch, exchange, &keys, l.size, origin).await?;
    wait_settled(ch, queue, &settler, 1 + l.commands).await?;
    let mut took = start.elapsed();
    if !queue_empty(queue)? {
        // Unacked deliveries remain: the end is when they are acked (to
        // rabbitmqctl's precision, about a second: worth knowing).
        eprintln!("downlink-amqp: deliveries still unacked when drained");
        wait_empty(queue).await?;
        took = start.elapsed();
    }
    if let Settler::Route(broker, _) = &settler {
        fleet.check_sample(broker.addr, l.commands).await?;
    }
    Ok(measured(l.commands, took))
}

/// One persistent message per routing key, at most [`WINDOW`] unconfirmed.
async fn publish(
    ch: &Channel,
    exchange: &str,
    keys: &[String],
    size: usize,
    origin: Instant,
) -> Result<()> {
    let mut window = FuturesUnordered::new();
    let mut payload = vec![0u8; size.max(8)];
    for key in keys {
        if window.len() >= WINDOW {
            if let Some(r) = window.next().await {
                r?;
            }
        }
        stamp(&mut payload, origin);
        let confirm = ch
            .basic_publish(
                exchange.into(),
                key.as_str().into(),
                BasicPublishOptions::default(),
                &payload,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?;
        window.push(confirm);
    }
    while let Some(r) = window.next().await {
        r?;
    }
    Ok(())
}

/// No ready message in `queue` and no unsettled command in the route; for
/// the raw consumer, `total` commands acked.
async fn wait_settled(ch: &Channel, queue: &str, settler: &Settler, total: usize) -> Result<()> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let deadline = Instant::now() + SETTLE_LIMIT;
    loop {
        let q = ch
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await?;
        let done = match settler {
            // The admin API may not answer yet right after the start.
            Settler::Route(_, admin) => {
                q.message_count() == 0 && unsettled(admin).await.ok() == Some(0)
            }
            Settler::Raw(raw) => raw.settled.load(Ordering::Relaxed) >= total,
        };
        if done {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{queue} not drained within {SETTLE_LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The route's unsettled commands, from `GET /api/v1/routes`.
async fn unsettled(admin: &str) -> Result<i64> {
    let mut s = tokio::net::TcpStream::connect(admin).await?;
    s.write_all(b"GET /api/v1/routes HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .await?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).await?;
    let reply = String::from_utf8_lossy(&reply);
    let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let routes: serde_json::Value =
        serde_json::from_str(body).with_context(|| format!("admin reply {reply:?}"))?;
    routes
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["name"] == "commands"))
        .and_then(|r| r["unsettled_commands"].as_i64())
        .context("no unsettled_commands for the route")
}

/// Ready and unacknowledged messages of `queue` are both 0 (rabbitmqctl on
/// the main node, read only).
fn queue_empty(queue: &str) -> Result<bool> {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "list_queues",
            "-q",
            "--no-table-headers",
            "name",
            "messages",
        ])
        .output()
        .context("rabbitmqctl list_queues")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(queue))
        .with_context(|| format!("{queue} not listed by rabbitmqctl"))?;
    Ok(line.split_whitespace().nth(1) == Some("0"))
}

async fn wait_empty(queue: &str) -> Result<()> {
    let deadline = Instant::now() + SETTLE_LIMIT;
    while !queue_empty(queue)? {
        if Instant::now() > deadline {
            bail!("{queue} still holds messages after {SETTLE_LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
