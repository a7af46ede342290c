//! The embedded MQTT broker, in-process: QoS, sessions, retained messages,
//! wills, features and limits, hostile input, regressions, and third-party
//! clients. One test binary (each binary links the whole crate and
//! librdkafka); every test starts its own gateway on an ephemeral port.

#[path = "../common/mod.rs"]
mod common;

mod acl;
mod admin_api;
mod auth;
mod auth_jwt;
mod auth_sessions;
mod features;
mod hostile;
mod interop;
mod limits;
mod listeners;
mod qos;
mod regression_codec;
mod regression_conn;
mod regression_router;
mod retained;
mod sessions;
mod smoke;
mod will;
