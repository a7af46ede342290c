//! The embedded MQTT broker.
//!
//! - [`listener`]: accepts TCP connections, one task per listener.
//! - [`transport`]: TCP, TLS, WebSocket and secure WebSocket streams.
//! - [`admission`]: per-IP and rate limits for new connections, rate-limited warnings.
//! - [`connection`]: one task per client (handshake, packets, keepalive, inflight).
//! - [`codec`]: wire format over rumqttc's `mqttbytes` (3.1.1 and 5.0).
//! - [`router`]: sessions, subscriptions, retained messages, wills (one task).
//! - [`topic`]: topic/filter validation and the subscription tree.
//! - [`message`]: the application message as routed and stored.

pub mod admission;
pub mod codec;
pub mod connection;
pub mod listener;
pub mod message;
pub mod router;
pub mod topic;
pub mod transport;
