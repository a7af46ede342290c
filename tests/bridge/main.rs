//! The bridge, in-process: uplink sinks (file, Kafka, AMQP) and downlink
//! sources against the real brokers (RabbitMQ, a Kafka-protocol broker),
//! including outages. One test binary; tests that stop, freeze or block a
//! broker hold it exclusively (`common::service`), the others share it.

#[path = "../common/mod.rs"]
mod common;

mod amqp_e2e;
mod amqp_e2e_outage;
mod amqp_give_up;
mod amqp_outage;
mod amqp_sink;
mod amqp_tls;
mod downlink_amqp;
mod downlink_amqp_limits;
mod downlink_kafka;
mod file;
mod kafka_e2e;
mod kafka_e2e_outage;
mod kafka_security;
mod kafka_sink;
mod memory;
mod readiness;
