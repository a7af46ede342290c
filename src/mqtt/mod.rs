//! The embedded MQTT broker.
pub mod message;
