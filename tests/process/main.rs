//! The real `mqbridge` binary as a child process: restarts and crashes
//! (durability of sessions, spool and downlink positions) and the command
//! line. One test binary; each child gets its own port and store directory.

#[path = "../common/mod.rs"]
mod common;

mod config_cli;
mod downlink_amqp_crash;
mod downlink_kafka_crash;
mod restart;
mod spool;
