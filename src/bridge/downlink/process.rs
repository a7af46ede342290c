//! A downlink route's processor: command → MQTT message → router, answered
//! in consumption order once stored. Bad commands are counted, logged with
//! their source position, dead-lettered when configured, and settled so they
//! never block the partition or queue.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use super::{Command, CommandEnvelope, CommandOutcome, CommandTemplate, CommandTx};
use crate::admin::Readiness;
use crate::bridge::metrics::{CommandCounters, RouteCounters};
use crate::bridge::{Envelope, Record, SinkHandle};
use crate::config::{DownlinkRoute, ValidDownlink};
use crate::mqtt::message::{now_ms, Message, MessageProps, Receipt};
use crate::mqtt::router::{BudgetRefusal, CommandResult, ReceiptEvent, RouterMsg};
use crate::mqtt::topic::{valid_topic_name, TopicLimits};

/// Headers that configure the MQTT message rather than becoming user properties.
const RESERVED: &[&str] = &[
    "mqtt_topic",
    "mqtt_client_id",
    "mqtt_message_expiry",
    "mqtt_correlation_data",
    "mqtt_response_topic",
    "mqtt_content_type",
    "content_type",
];

/// Commands handed to the router and not yet answered, per route. Bounds
/// the pipeline between consumption and durable storage.
const IN_FLIGHT: usize = 1024;

/// What a command must fit to become an MQTT message (from `[mqtt]`).
#[derive(Debug, Clone, Copy)]
pub struct MessageLimits {
    /// `mqtt.max_packet_size`.
    pub max_packet: u32,
    /// `mqtt.max_topic_levels` / `mqtt.max_topic_bytes`.
    pub topic: TopicLimits,
}

/// A started processor.
pub struct Downlink {
    pub tx: CommandTx,
    pub task: JoinHandle<()>,
}

struct Route {
    cfg: DownlinkRoute,
    topic: CommandTemplate,
    client_id: Option<CommandTemplate>,
    max_packet: u32,
    topic_limits: TopicLimits,
    counters: CommandCounters,
    /// The backend's sink, for dead letters.
    sink: Option<SinkHandle>,
    dead_counters: RouteCounters,
}

/// Where a route's processor reports: its command counters, its dead-letter
/// route counters, and readiness (paused by the store budget).
pub struct Reporting {
    pub counters: CommandCounters,
    pub dead_counters: RouteCounters,
    pub ready: Arc<Readiness>,
}

/// Starts the processor of one checked downlink route.
pub fn start(
    route: &ValidDownlink,
    router: mpsc::Sender<RouterMsg>,
    limits: MessageLimits,
    sink: Option<SinkHandle>,
    reporting: Reporting,
    capacity: usize,
    tasks: &TaskTracker,
) -> Downlink {
    let Reporting {
        counters,
        dead_counters,
        ready,
    } = reporting;
    let cfg = &route.route;
    let route = Route {
        cfg: cfg.clone(),
        topic: route.topic.clone(),
        client_id: route.client_id.clone(),
        max_packet: limits.max_packet,
        topic_limits: limits.topic,
        counters,
        sink,
        dead_counters,
    };
    let (tx, rx) = mpsc::channel(capacity);
    let (pending_tx, pending_rx) = mpsc::channel(IN_FLIGHT);
    let paused = Paused {
        route: cfg.name.clone(),
        blocked: false,
        ready,
    };
    let answer = tasks.spawn(answer(pending_rx, route.counters.clone(), paused));
    let task = tasks.spawn(async move {
        feed(route, rx, router, pending_tx).await;
        let _ = answer.await;
    });
    Downlink { tx, task }
}

type Pending = (oneshot::Sender<CommandOutcome>, PendingResult);

enum PendingResult {
    Router(oneshot::Receiver<CommandResult>),
    Settled(CommandOutcome),
}

/// Turns commands into router messages, in order.
async fn feed(
    route: Route,
    mut rx: mpsc::Receiver<CommandEnvelope>,
    router: mpsc::Sender<RouterMsg>,
    pending: mpsc::Sender<Pending>,
) {
    while let Some(CommandEnvelope { command, done }) = rx.recv().await {
        let result = match route.message(&command) {
            Ok((msg, client_id)) => {
                let (reply, rx) = oneshot::channel();
                let msg = RouterMsg::Command {
                    msg,
                    client_id,
                    create_session: route.cfg.create_sessions,
                    reply,
                };
                if router.send(msg).await.is_err() {
                    let _ = done.send(CommandOutcome::Retry);
                    continue;
                }
                PendingResult::Router(rx)
            }
            Err(Bad::Expired) => {
                route.counters.expired.inc();
                tracing::info!(route = %route.cfg.name, position = %command.position, "command expired before delivery; not delivered");
                PendingResult::Settled(CommandOutcome::Dropped)
            }
            Err(Bad::Invalid(why)) => PendingResult::Settled(route.reject(&command, &why).await),
        };
        if pending.send((done, result)).await.is_err() {
            return;
        }
    }
}

/// Whether a route is paused by a full global store budget: shown in
/// `mqbridge_bridge_downlink_blocked` and `/readyz`, logged on each change
/// (not per command: a paused source retries many times).
struct Paused {
    route: String,
    blocked: bool,
    ready: Arc<Readiness>,
}

impl Paused {
    fn set(&mut self, blocked: bool, counters: &CommandCounters, why: Option<BudgetRefusal>) {
        if self.blocked == blocked {
            return;
        }
        self.blocked = blocked;
        counters.blocked_now.set(blocked as i64);
        self.ready.downlink_blocked(blocked);
        match why {
            Some(why) => {
                tracing::warn!(route = %self.route, reason = why.as_str(), "downlink paused: the global store budget cannot take commands; they are not committed and are consumed again until it has room")
            }
            None => {
                tracing::info!(route = %self.route, "downlink resumed: the store budget has room again")
            }
        }
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        if self.blocked {
            self.ready.downlink_blocked(false);
        }
    }
}

/// Answers the source in consumption order once each command is settled.
async fn answer(mut rx: mpsc::Receiver<Pending>, counters: CommandCounters, mut paused: Paused) {
    while let Some((done, result)) = rx.recv().await {
        let outcome = match result {
            PendingResult::Settled(o) => o,
            PendingResult::Router(rx) => match rx.await {
                Ok(CommandResult::Blocked(why)) => {
                    counters.blocked.inc();
                    paused.set(true, &counters, Some(why));
                    CommandOutcome::Retry
                }
                Ok(CommandResult::Stored { refused }) => {
                    paused.set(false, &counters, None);
                    counters.stored.inc();
                    // Sessions whose queue limits refused it, counted per route.
                    counters.rejected.inc_by(refused as u64);
                    CommandOutcome::Stored
                }
                Ok(CommandResult::NoSession) => {
                    paused.set(false, &counters, None);
                    counters.no_session.inc();
                    CommandOutcome::Dropped
                }
                Ok(CommandResult::Rejected) => {
                    paused.set(false, &counters, None);
                    counters.rejected.inc();
                    CommandOutcome::Dropped
                }
                Ok(CommandResult::StoreFailed) | Err(_) => {
                    counters.retried.inc();
                    CommandOutcome::Retry
                }
            },
        };
        let _ = done.send(outcome);
    }
}

enum Bad {
    Expired,
    Invalid(String),
}

impl Route {
    /// The MQTT message (and target client, if addressed) for a command.
    fn message(&self, c: &Command) -> Result<(Message, Option<Arc<str>>), Bad> {
        let topic = self
            .topic
            .render(c)
            .map_err(|e| Bad::Invalid(format!("topic: {e}")))?;
        // Checked first: an over-long topic is not pasted into the reason.
        if let Err(e) = self.topic_limits.check(&topic) {
            return Err(Bad::Invalid(format!("topic: {e}")));
        }
        if !valid_topic_name(&topic) || crate::mqtt::codec::strings::check_str(&topic).is_err() {
            return Err(Bad::Invalid(format!(
                "{topic:?} is not a valid MQTT topic name"
            )));
        }
        // MQTT strings are at most 65535 bytes; headers become user properties.
        if let Some((k, _)) = c
            .headers
            .iter()
            .find(|(k, v)| k.len() > 65535 || v.len() > 65535)
        {
            let name: String = k.chars().take(40).collect();
            return Err(Bad::Invalid(format!(
                "header {name}... longer than an MQTT string allows"
            )));
        }
        let props: usize = c.headers.iter().map(|(k, v)| k.len() + v.len() + 5).sum();
        if topic.len() + c.payload.len() + props + 64 > self.max_packet as usize {
            return Err(Bad::Invalid(format!(
                "{} bytes exceed the maximum packet size",
                c.payload.len() + props
            )));
        }
        let client_id = match &self.client_id {
            Some(t) => {
                let id = t
                    .render(c)
                    .map_err(|e| Bad::Invalid(format!("client id: {e}")))?;
                if id.is_empty() || id.contains('\0') {
                    return Err(Bad::Invalid("empty or invalid client id".into()));
                }
                Some(Arc::from(id))
            }
            None => None,
        };
        let expiry = match c.header("mqtt_message_expiry") {
            Some(v) => Some(
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| Bad::Invalid(format!("mqtt_message_expiry {v:?}")))?,
            ),
            None => (self.cfg.expiry_secs > 0).then_some(self.cfg.expiry_secs as u64),
        };
        // Expiry counts from when the command was produced, if the source knows.
        let expires_at_ms = expiry.map(|s| c.timestamp_ms.unwrap_or_else(now_ms) + s * 1000);
        if expires_at_ms.is_some_and(|at| at <= now_ms()) {
            return Err(Bad::Expired);
        }
        let props = MessageProps {
            payload_format_indicator: None,
            content_type: c
                .header("mqtt_content_type")
                .or(c.header("content_type"))
                .map(str::to_string),
            response_topic: c.header("mqtt_response_topic").map(str::to_string),
            correlation_data: c
                .header("mqtt_correlation_data")
                .map(|v| bytes::Bytes::copy_from_slice(v.as_bytes())),
            user_properties: c
                .headers
                .iter()
                .filter(|(k, _)| !RESERVED.contains(&k.as_str()))
                .cloned()
                .collect(),
        };
        let receipt = self.cfg.receipt_target.as_ref().map(|_| Receipt {
            route: self.cfg.name.clone(),
            position: c.position.clone(),
            correlation: props.correlation_data.clone(),
        });
        let msg = Message {
            topic,
            payload: c.payload.clone(),
            qos: self.cfg.qos,
            retain: self.cfg.retain,
            props,
            expires_at_ms,
            receipt,
        };
        Ok((msg, client_id))
    }

    /// A command that can never be delivered: counted, logged with its
    /// position, sent to the dead-letter target when configured; settled.
    async fn reject(&self, c: &Command, why: &str) -> CommandOutcome {
        self.counters.invalid.inc();
        tracing::warn!(route = %self.cfg.name, position = %c.position, reason = %why, "command cannot be delivered");
        let (Some(target), Some(sink)) = (&self.cfg.dead_letter_target, &self.sink) else {
            return CommandOutcome::Dropped;
        };
        let mut headers = c.headers.clone();
        headers.push(("mqbridge_error".into(), why.to_string()));
        headers.push(("mqbridge_source".into(), c.position.clone()));
        let record = Record {
            route: Arc::from(self.cfg.name.as_str()),
            counters: self.dead_counters.clone(),
            client_id: Arc::from(""),
            target: target.clone(),
            key: c.key.clone().or_else(|| c.routing_key.clone()),
            payload: c.payload.clone(),
            headers,
            content_type: None,
        };
        let (tx, rx) = oneshot::channel();
        if sink
            .tx
            .send(Envelope {
                record,
                confirm: Some(tx),
            })
            .await
            .is_err()
        {
            return CommandOutcome::Retry;
        }
        match rx.await {
            Ok(Ok(())) => {
                self.counters.dead_lettered.inc();
                CommandOutcome::Dropped
            }
            // Refused for good (e.g. the dead-letter topic does not exist):
            // retrying would loop forever and hold up every later command.
            Ok(Err(crate::bridge::SinkError::Rejected(e))) => {
                tracing::error!(route = %self.cfg.name, position = %c.position, error = %e, "dead-letter target refused the command; it is dropped");
                CommandOutcome::Dropped
            }
            // The dead letter is not safe yet: consume the command again later.
            _ => CommandOutcome::Retry,
        }
    }
}

/// Turns receipt events from the router into records for each route's
/// receipt target. Best effort: a failed receipt is counted, not retried.
pub type ReceiptSender = mpsc::Sender<ReceiptEvent>;

pub fn start_receipts(
    targets: HashMap<String, (SinkHandle, String, RouteCounters, CommandCounters)>,
    mut rx: mpsc::Receiver<ReceiptEvent>,
    tasks: &TaskTracker,
) -> JoinHandle<()> {
    let confirms = tasks.clone();
    tasks.spawn(async move {
        while let Some(ev) = rx.recv().await {
            let Some((sink, target, route_counters, counters)) = targets.get(&ev.receipt.route)
            else {
                continue;
            };
            let body = serde_json::json!({
                "client_id": &*ev.client_id,
                "topic": ev.topic,
                "source": ev.receipt.position,
                "correlation_data": ev.receipt.correlation.as_ref().map(|c| String::from_utf8_lossy(c).into_owned()),
                "acked_at_ms": ev.acked_at_ms,
            });
            let record = Record {
                route: Arc::from(ev.receipt.route.as_str()),
                counters: route_counters.clone(),
                client_id: ev.client_id.clone(),
                target: target.clone(),
                key: Some(ev.client_id.to_string()),
                payload: body.to_string().into(),
                headers: vec![
                    ("mqtt_client_id".into(), ev.client_id.to_string()),
                    ("mqtt_topic".into(), ev.topic.clone()),
                ],
                content_type: Some("application/json".into()),
            };
            let (tx, confirm) = oneshot::channel();
            if sink
                .tx
                .send(Envelope {
                    record,
                    confirm: Some(tx),
                })
                .await
                .is_err()
            {
                counters.receipts_failed.inc();
                continue;
            }
            let counters = counters.clone();
            confirms.spawn(async move {
                match confirm.await {
                    Ok(Ok(())) => counters.receipts_sent.inc(),
                    _ => counters.receipts_failed.inc(),
                };
            });
        }
    })
}
