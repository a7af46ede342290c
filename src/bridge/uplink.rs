//! Uplink routes: which backends a device's PUBLISH goes to, with what
//! target and key, and what the device's acknowledgement must wait for.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::metrics::{BridgeMetrics, RouteCounters};
use super::template::{Template, Vars};
use super::{ConfirmTx, Envelope, Record, SinkError, SinkHandle};
use crate::config::ValidUplink;
use crate::mqtt::message::Message;
use crate::mqtt::topic::filter_matches;

struct Route {
    name: Arc<str>,
    filter: String,
    sink: mpsc::Sender<Envelope>,
    target: Template,
    key: Option<Template>,
    give_up: Option<Duration>,
    counters: RouteCounters,
}

/// The compiled uplink routes.
#[derive(Default)]
pub struct Uplink {
    routes: Vec<Route>,
}

/// A confirmation a device's acknowledgement waits for.
pub struct Wait {
    pub rx: oneshot::Receiver<Result<(), SinkError>>,
    pub deadline: Option<Instant>,
}

/// What one PUBLISH produced for the backends.
#[derive(Default)]
pub struct Dispatch {
    /// Envelopes to hand to sinks, in route order.
    pub sends: Vec<(mpsc::Sender<Envelope>, Envelope)>,
    /// Confirmations to wait for (QoS 1/2 only).
    pub waits: Vec<Wait>,
    /// A matching route could not build its target or key (logged, counted).
    pub unresolved: bool,
}

/// The publisher side of a message.
pub struct Origin<'a> {
    pub client_id: &'a Arc<str>,
    pub username: Option<&'a str>,
    pub received_at_ms: u64,
}

impl Uplink {
    /// The checked routes, each with where it sends (its backend's sink,
    /// or its spool in front of the backend).
    pub fn new(routes: Vec<(ValidUplink, SinkHandle)>, metrics: &BridgeMetrics) -> Uplink {
        let routes = routes
            .into_iter()
            .map(|(r, sink)| Route {
                counters: metrics.route(&r.route.name),
                name: r.route.name.as_str().into(),
                filter: r.route.filter,
                sink: sink.tx,
                target: r.target,
                key: Some(r.key),
                give_up: r.give_up,
            })
            .collect();
        Uplink { routes }
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Builds the envelopes of every route matching `msg`.
    pub fn dispatch(&self, msg: &Message, from: &Origin<'_>) -> Dispatch {
        let mut d = Dispatch::default();
        for route in self
            .routes
            .iter()
            .filter(|r| filter_matches(&r.filter, &msg.topic))
        {
            let vars = Vars {
                topic: &msg.topic,
                client_id: from.client_id,
                username: from.username,
            };
            let rendered = route.target.render(&vars).and_then(|t| {
                route
                    .key
                    .as_ref()
                    .map(|k| k.render(&vars))
                    .transpose()
                    .map(|k| (t, k))
            });
            let (target, key) = match rendered {
                Ok(tk) => tk,
                Err(e) => {
                    route.counters.unresolved.inc();
                    tracing::warn!(route = %route.name, client_id = %from.client_id, topic = %msg.topic, error = %e, "uplink template unresolved; message not sent to this route");
                    d.unresolved = true;
                    continue;
                }
            };
            let record = record(route, msg, from, target, key);
            let confirm: Option<ConfirmTx> = if msg.qos > 0 {
                let (tx, rx) = oneshot::channel();
                d.waits.push(Wait {
                    rx,
                    deadline: route.give_up.map(|g| Instant::now() + g),
                });
                Some(tx)
            } else {
                None
            };
            d.sends
                .push((route.sink.clone(), Envelope { record, confirm }));
        }
        d
    }
}

fn record(
    route: &Route,
    msg: &Message,
    from: &Origin<'_>,
    target: String,
    key: Option<String>,
) -> Record {
    let mut headers = vec![
        ("mqtt_topic".to_string(), msg.topic.clone()),
        ("mqtt_client_id".to_string(), from.client_id.to_string()),
        ("mqtt_qos".to_string(), msg.qos.to_string()),
        ("mqtt_retain".to_string(), msg.retain.to_string()),
        (
            "mqtt_received_at_ms".to_string(),
            from.received_at_ms.to_string(),
        ),
    ];
    headers.extend(msg.props.user_properties.iter().cloned());
    Record {
        route: route.name.clone(),
        counters: route.counters.clone(),
        client_id: from.client_id.clone(),
        target,
        key,
        payload: msg.payload.clone(),
        headers,
        content_type: msg.props.content_type.clone(),
    }
}
