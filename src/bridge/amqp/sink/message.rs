//! Turning a [`Record`] into an AMQP publish: exchange, routing key and
//! properties. Pure, so that it is unit-tested without a broker.

use std::collections::btree_map::{BTreeMap, Entry};
use std::time::{SystemTime, UNIX_EPOCH};

use lapin::types::{AMQPValue, FieldArray, FieldTable, ShortString};
use lapin::BasicProperties;

use crate::bridge::amqp::short;
use crate::bridge::Record;
use crate::config::AmqpBackend;

/// What `basic.publish` needs besides the payload.
#[derive(Debug)]
pub(super) struct Outgoing {
    pub exchange: ShortString,
    pub routing_key: ShortString,
    pub properties: BasicProperties,
}

/// Exchange and routing key of `record`, as text (also used in log lines).
pub(super) fn destination<'a>(cfg: &'a AmqpBackend, record: &'a Record) -> (&'a str, &'a str) {
    let exchange = if record.target.is_empty() {
        cfg.exchange.as_str()
    } else {
        record.target.as_str()
    };
    (exchange, record.key.as_deref().unwrap_or(""))
}

/// Builds the publish of `record`. The error is why the broker could never
/// accept it (AMQP short strings are limited to 255 bytes and lapin would
/// panic on longer ones), reported as a rejection.
pub(super) fn outgoing(cfg: &AmqpBackend, record: &Record) -> Result<Outgoing, String> {
    let (exchange, routing_key) = destination(cfg, record);
    let mut properties = BasicProperties::default()
        .with_delivery_mode(if cfg.persistent { 2 } else { 1 })
        .with_timestamp(now_secs())
        .with_headers(headers(&record.headers)?);
    if let Some(ct) = &record.content_type {
        properties = properties.with_content_type(short("content type", ct)?);
    }
    Ok(Outgoing {
        exchange: short("exchange name", exchange)?,
        routing_key: short("routing key", routing_key)?,
        properties,
    })
}

/// Header values become long strings. A name given several times (MQTT 5.0
/// user properties may repeat) becomes an array of its values in order,
/// instead of silently keeping only one of them.
pub(super) fn headers(pairs: &[(String, String)]) -> Result<FieldTable, String> {
    let mut table: BTreeMap<ShortString, AMQPValue> = BTreeMap::new();
    for (name, value) in pairs {
        let value = AMQPValue::LongString(value.as_str().into());
        match table.entry(short("header name", name)?) {
            Entry::Vacant(e) => {
                e.insert(value);
            }
            Entry::Occupied(mut e) => match e.get_mut() {
                AMQPValue::FieldArray(values) => values.push(value),
                first => {
                    let first = std::mem::replace(first, AMQPValue::Void);
                    *e.get_mut() = AMQPValue::FieldArray(FieldArray::from(vec![first, value]));
                }
            },
        }
    }
    Ok(FieldTable::from(table))
}

/// AMQP timestamps are whole seconds since the epoch.
fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
