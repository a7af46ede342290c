//! # mqbridge
//!
//! An MQTT 3.1.1/5.0 gateway with durable sessions, bridged to Kafka and RabbitMQ.
//!
//! ## Layout
//! - [`acl`]: authorisation rules (config and Mosquitto `acl_file`), compiled
//!   per client and checked on PUBLISH, SUBSCRIBE, will and delivery.
//! - [`config`]: load (file + `MQBRIDGE__SECTION__KEY` env), then validate
//!   into `config::Validated` (every problem at once), the only form the
//!   runtime takes; documented defaults; `config::Secret` for passwords.
//! - [`auth`]: authentication at CONNECT (password file, anonymous
//!   access, failure delays and bans) and `mqbridge passwd`.
//! - [`mqtt`]: listener, per-client connection task, codec glue, router
//!   (subscriptions, retained, shared groups, sessions), wills.
//! - [`store`]: the durable session store (redb, group commit).
//! - [`bridge`]: the backend contract (`Sink`/`Source` traits, their drivers,
//!   the registry of backend kinds), uplink and downlink routes, and one
//!   folder per backend (Kafka, AMQP, file).
//! - [`metrics`]: Prometheus metrics, one typed struct registered into a registry.
//! - [`admin`]: HTTP endpoint for `/metrics`, `/healthz`, `/readyz`.
//! - [`node`]: this process's stable node id (Kafka static membership).
//! - [`app`]: wires the parts together and owns start-up and shutdown.
//! - [`tasks`]: the one task tracker and stop signal every spawned task runs
//!   under; names what did not finish, reports long-lived tasks that end early.
//! - `fuzz_api`: the few private entry points the fuzz targets in `fuzz/` call
//!   (hidden; not a stable API).
#![forbid(unsafe_code)]

pub mod acl;
pub mod admin;
pub mod app;
pub mod auth;
pub mod bridge;
pub mod cluster;
pub mod config;
#[doc(hidden)]
pub mod fuzz_api;
pub mod metrics;
pub mod mqtt;
pub mod node;
pub mod store;
pub mod tasks;
