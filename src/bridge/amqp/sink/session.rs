//! One connection to the broker: a publishing channel in confirm mode, and a
//! side channel that checks whether an exchange exists before the first
//! publish to it.
//!
//! Why the side channel: publishing to a missing exchange makes the broker
//! close the channel (404), which fails every other message in flight on it
//! and says nothing about which one was the culprit. A passive declare on a
//! separate channel finds the bad exchange without disturbing anyone else's
//! traffic; only that channel is lost, and it is reopened on demand.

use std::collections::HashSet;
use std::io;

use lapin::options::{ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection, ExchangeKind};

use crate::bridge::amqp::Endpoint;
use crate::config::AmqpBackend;

/// Exchanges remembered as existing; the set is forgotten when full, which
/// only costs a few passive declares.
const MAX_KNOWN: usize = 1024;

/// Outcome of checking an exchange.
pub(super) enum Probe {
    Exists,
    /// The broker refused the exchange (not found, access refused): why.
    Refused(String),
}

pub(super) struct Session {
    conn: Connection,
    pub channel: Channel,
    probe: Option<Channel>,
    /// Exchanges seen to exist on this channel. Cleared with the channel,
    /// because a channel error may mean an exchange was deleted since.
    known: HashSet<String>,
}

impl Session {
    /// Connects, opens the publishing channel, declares the exchange if asked.
    pub async fn open(
        cfg: &AmqpBackend,
        uri: &Endpoint,
        kind: &ExchangeKind,
    ) -> lapin::Result<Session> {
        let conn = uri.connect(format!("mqbridge/{}", cfg.name)).await?;
        let channel = open_channel(&conn, cfg, kind).await?;
        Ok(Session {
            conn,
            channel,
            probe: None,
            known: HashSet::new(),
        })
    }

    /// Replaces a failed publishing channel on a connection that is still up.
    pub async fn reopen(
        mut self,
        cfg: &AmqpBackend,
        kind: &ExchangeKind,
    ) -> lapin::Result<Session> {
        self.channel = open_channel(&self.conn, cfg, kind).await?;
        self.known.clear();
        Ok(self)
    }

    pub fn connection_alive(&self) -> bool {
        self.conn.status().connected()
    }

    pub fn healthy(&self) -> bool {
        self.connection_alive() && self.channel.status().connected()
    }

    /// Checks (once per channel) that `exchange` exists. `Err` means the
    /// connection itself is in trouble, not the exchange.
    pub async fn probe(&mut self, exchange: &ShortString) -> lapin::Result<Probe> {
        if exchange.as_str().is_empty() || self.known.contains(exchange.as_str()) {
            return Ok(Probe::Exists);
        }
        let channel = match &self.probe {
            Some(ch) if ch.status().connected() => ch.clone(),
            _ => {
                let ch = self.conn.create_channel().await?;
                self.probe = Some(ch.clone());
                ch
            }
        };
        let passive = ExchangeDeclareOptions {
            passive: true,
            ..ExchangeDeclareOptions::default()
        };
        match channel
            .exchange_declare(
                exchange.clone(),
                ExchangeKind::Direct,
                passive,
                FieldTable::default(),
            )
            .await
        {
            Ok(()) => {
                if self.known.len() >= MAX_KNOWN {
                    self.known.clear();
                }
                self.known.insert(exchange.to_string());
                Ok(Probe::Exists)
            }
            Err(e) if e.is_amqp_soft_error() => {
                // The broker closed the probe channel; open a new one next time.
                self.probe = None;
                Ok(Probe::Refused(e.to_string()))
            }
            Err(e) => Err(e),
        }
    }

    /// Orderly close once everything is confirmed; errors no longer matter.
    pub async fn close(self) {
        if self.connection_alive() {
            let _ = self.conn.close(200, ShortString::from("OK")).await;
        }
    }
}

/// Opens a channel in confirm mode and declares the configured exchange.
async fn open_channel(
    conn: &Connection,
    cfg: &AmqpBackend,
    kind: &ExchangeKind,
) -> lapin::Result<Channel> {
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    if !cfg.declare_exchange {
        return Ok(channel);
    }
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    // The name was checked to be a valid short string at start-up.
    let name = ShortString::try_new(cfg.exchange.as_str())
        .map_err(|e| lapin::Error::from(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    match channel
        .exchange_declare(name, kind.clone(), durable, FieldTable::default())
        .await
    {
        Ok(()) => Ok(channel),
        Err(e) if e.is_amqp_soft_error() => {
            // Typically an existing exchange of another kind (406). Publishing
            // to it still works, so carry on, but the operator should know.
            tracing::error!(backend = %cfg.name, exchange = %cfg.exchange, error = %e,
                "AMQP: could not declare the exchange; publishing to it as it is");
            let channel = conn.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            Ok(channel)
        }
        Err(e) => Err(e),
    }
}
