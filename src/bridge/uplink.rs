//! Uplink routes: which backends a device's PUBLISH goes to, with what
//! target and key, and what the device's acknowledgement must wait for.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use prometheus_client::metrics::counter::Counter;

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

/// The gateway's own header names all start with this; a device's user
/// property with it (ASCII case-insensitive: consumers often compare header
/// names that way) is dropped, never renamed (a renamed header would only
/// open a second namespace to forge).
pub const RESERVED_PREFIX: &str = "mqtt_";

/// True when a device's user property name is reserved for the gateway.
pub fn is_reserved(name: &str) -> bool {
    name.len() >= RESERVED_PREFIX.len()
        && name.as_bytes()[..RESERVED_PREFIX.len()].eq_ignore_ascii_case(RESERVED_PREFIX.as_bytes())
}

/// The compiled uplink routes.
#[derive(Default)]
pub struct Uplink {
    routes: Vec<Route>,
    /// `mqbridge_bridge_reserved_properties_dropped_total`.
    reserved_dropped: Counter,
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
        Uplink {
            routes,
            reserved_dropped: metrics.reserved_dropped.clone(),
        }
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
            let record = record(route, msg, from, target, key, &self.reserved_dropped);
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
    reserved_dropped: &Counter,
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
    if let Some(u) = from.username {
        headers.push(("mqtt_username".to_string(), u.to_string()));
    }
    for (k, v) in &msg.props.user_properties {
        if is_reserved(k) {
            reserved_dropped.inc();
            tracing::debug!(route = %route.name, client_id = %from.client_id, property = %k, "reserved user property dropped from the bridged record");
        } else {
            headers.push((k.clone(), v.clone()));
        }
    }
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

#[cfg(test)]
mod tests {
    use super::is_reserved;

    #[test]
    fn reserved_prefix_is_case_insensitive() {
        for name in ["mqtt_client_id", "MQTT_client_id", "Mqtt_x", "mqtt_"] {
            assert!(is_reserved(name), "{name}");
        }
        for name in ["mqtt", "site", "mqttx_a", "", "x_mqtt_client_id"] {
            assert!(!is_reserved(name), "{name}");
        }
    }
}
