//! A delivery as a [`Command`]: routing key, headers as text, payload, its
//! position (`<queue>/<delivery tag>`) and the producer's timestamp.

use bytes::Bytes;
use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable};
use lapin::Acker;

use crate::bridge::downlink::Command;

/// Converts a delivery; the acker settles it later.
pub(super) fn command(queue: &str, d: Delivery) -> (Command, Acker) {
    let p = &d.properties;
    let mut headers = Vec::new();
    // The AMQP property first, so it wins over a header of the same name.
    if let Some(ct) = p.content_type() {
        headers.push(("content_type".to_string(), ct.to_string()));
    }
    if let Some(table) = p.headers() {
        headers.extend(text_headers(table));
    }
    let command = Command {
        key: None,
        routing_key: Some(d.routing_key.to_string()),
        headers,
        // AMQP timestamps are seconds; a hostile value must not overflow.
        timestamp_ms: p.timestamp().map(|s| s.saturating_mul(1000)),
        position: format!("{queue}/{}", d.delivery_tag),
        payload: Bytes::from(d.data),
    };
    (command, d.acker)
}

/// Headers with a textual form; tables, arrays, byte arrays, decimals and
/// voids have none and are skipped.
fn text_headers(table: &FieldTable) -> impl Iterator<Item = (String, String)> + '_ {
    table
        .inner()
        .iter()
        .filter_map(|(k, v)| Some((k.to_string(), text(v)?)))
}

fn text(v: &AMQPValue) -> Option<String> {
    Some(match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Float(n) => n.to_string(),
        AMQPValue::Double(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{FieldArray, LongString, ShortString};
    use lapin::BasicProperties;

    #[test]
    fn delivery_becomes_a_command() {
        let mut table = FieldTable::default();
        table.insert("device".into(), AMQPValue::LongString("d1".into()));
        table.insert("short".into(), AMQPValue::ShortString("s".into()));
        table.insert("n".into(), AMQPValue::LongLongInt(-5));
        table.insert("ok".into(), AMQPValue::Boolean(true));
        table.insert("ratio".into(), AMQPValue::Double(0.5));
        table.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::default()),
        );
        table.insert("raw".into(), AMQPValue::ByteArray(vec![1u8, 2].into()));
        let mut d = Delivery::mock(
            7,
            ShortString::from("x"),
            ShortString::from("devices.d1.commands"),
            false,
            b"hi".to_vec(),
        );
        d.properties = BasicProperties::default()
            .with_headers(table)
            .with_content_type("text/plain".into())
            .with_timestamp(1_700_000_000);
        let (c, _) = command("q", d);
        assert_eq!(c.routing_key.as_deref(), Some("devices.d1.commands"));
        assert_eq!(c.position, "q/7");
        assert_eq!(c.timestamp_ms, Some(1_700_000_000_000));
        assert_eq!(&c.payload[..], b"hi");
        assert_eq!(c.header("content_type"), Some("text/plain"));
        assert_eq!(c.header("device"), Some("d1"));
        assert_eq!(c.header("short"), Some("s"));
        assert_eq!(c.header("n"), Some("-5"));
        assert_eq!(c.header("ok"), Some("true"));
        assert_eq!(c.header("ratio"), Some("0.5"));
        assert_eq!(c.header("x-death"), None);
        assert_eq!(c.header("raw"), None);
        assert_eq!(c.key, None);
    }

    #[test]
    fn no_properties_no_headers() {
        let d = Delivery::mock(1, "".into(), "".into(), false, Vec::new());
        let (c, _) = command("q", d);
        assert!(c.headers.is_empty());
        assert_eq!(c.timestamp_ms, None);
        assert_eq!(c.routing_key.as_deref(), Some(""));
    }

    #[test]
    fn hostile_timestamp_saturates_and_bad_utf8_is_replaced() {
        let mut table = FieldTable::default();
        table.insert(
            "b".into(),
            AMQPValue::LongString(LongString::from(vec![0xff, b'a'])),
        );
        let mut d = Delivery::mock(1, "".into(), "".into(), false, Vec::new());
        d.properties = BasicProperties::default()
            .with_headers(table)
            .with_timestamp(u64::MAX);
        let (c, _) = command("q", d);
        assert_eq!(c.timestamp_ms, Some(u64::MAX));
        assert_eq!(c.header("b"), Some("\u{fffd}a"));
    }
}
