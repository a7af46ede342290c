//! Unit tests of the parts that need no broker; the sink itself is tested
//! against RabbitMQ in `tests/bridge_amqp_sink.rs`.

use std::sync::Arc;

use bytes::Bytes;
use lapin::types::{AMQPValue, FieldArray, LongString};
use prometheus_client::registry::Registry;

use super::message::{destination, headers, outgoing};
use super::{check, exchange_kind};
use crate::bridge::metrics::BridgeMetrics;
use crate::bridge::Record;
use crate::config::AmqpBackend;

fn cfg() -> AmqpBackend {
    AmqpBackend {
        name: "rabbit".into(),
        uri: "amqp://guest:secret@127.0.0.1:5672/%2f".into(),
        exchange: "telemetry".into(),
        exchange_kind: "topic".into(),
        declare_exchange: true,
        persistent: true,
        mandatory: true,
        ..AmqpBackend::default()
    }
}

fn record(target: &str, key: Option<&str>) -> Record {
    Record {
        route: Arc::from("r"),
        counters: BridgeMetrics::new(&mut Registry::default()).route("r"),
        client_id: Arc::from("dev-1"),
        target: target.into(),
        key: key.map(String::from),
        payload: Bytes::from_static(b"{}"),
        headers: vec![("mqtt_client_id".into(), "dev-1".into())],
        content_type: Some("application/json".into()),
    }
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

#[test]
fn empty_target_means_the_backend_exchange() {
    let c = cfg();
    assert_eq!(
        destination(&c, &record("", Some("a.b"))),
        ("telemetry", "a.b")
    );
    assert_eq!(destination(&c, &record("other", None)), ("other", ""));
}

#[test]
fn properties_follow_the_record_and_config() {
    let out = outgoing(&cfg(), &record("", Some("devices.dev-1.telemetry"))).expect("valid record");
    assert_eq!(out.exchange.as_str(), "telemetry");
    assert_eq!(out.routing_key.as_str(), "devices.dev-1.telemetry");
    assert_eq!(*out.properties.delivery_mode(), Some(2));
    assert_eq!(
        out.properties.content_type().as_ref().map(|c| c.as_str()),
        Some("application/json")
    );
    assert!(out.properties.timestamp().is_some());
    let h = out.properties.headers().clone().unwrap_or_default();
    assert_eq!(h.inner().get("mqtt_client_id"), Some(&long("dev-1")));

    let transient = AmqpBackend {
        persistent: false,
        ..cfg()
    };
    let out = outgoing(&transient, &record("", None)).expect("valid record");
    assert_eq!(*out.properties.delivery_mode(), Some(1));
}

#[test]
fn repeated_header_names_keep_every_value_in_order() {
    let pairs: Vec<(String, String)> = [("a", "1"), ("b", "x"), ("a", "2"), ("a", "3")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let t = headers(&pairs).expect("valid headers");
    assert_eq!(t.inner().get("b"), Some(&long("x")));
    let expected = AMQPValue::FieldArray(FieldArray::from(vec![long("1"), long("2"), long("3")]));
    assert_eq!(t.inner().get("a"), Some(&expected));
}

#[test]
fn over_long_short_strings_are_refused_not_panicked_on() {
    let long_key = "k".repeat(256);
    let why = outgoing(&cfg(), &record("", Some(&long_key))).expect_err("routing key too long");
    assert!(why.contains("routing key"), "{why}");
    let mut r = record("", None);
    r.headers.push(("h".repeat(300), "v".into()));
    assert!(outgoing(&cfg(), &r).is_err());
    r = record(&"x".repeat(256), None);
    assert!(outgoing(&cfg(), &r).is_err());
}

#[test]
fn settings_that_cannot_work_fail_at_start() {
    assert!(check(&cfg()).is_ok());
    let bad_kind = AmqpBackend {
        exchange_kind: "fan-out".into(),
        ..cfg()
    };
    assert!(check(&bad_kind).is_err());
    let tls = AmqpBackend {
        uri: "amqps://127.0.0.1/%2f".into(),
        ..cfg()
    };
    assert!(check(&tls).is_ok(), "amqps with the system roots");
    let tls_files_on_plain = AmqpBackend {
        tls_ca_file: Some("Cargo.toml".into()),
        ..cfg()
    };
    assert!(check(&tls_files_on_plain).is_err());
    let half_identity = AmqpBackend {
        uri: "amqps://127.0.0.1/%2f".into(),
        tls_cert_file: Some("Cargo.toml".into()),
        tls_ca_file: Some("/nonexistent/ca.pem".into()),
        ..cfg()
    };
    let why = check(&half_identity).expect_err("key missing, CA unreadable");
    let keys: Vec<&str> = why.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["tls_ca_file", "tls_key_file"], "{why:?}");
    let nothing_to_declare = AmqpBackend {
        exchange: String::new(),
        ..cfg()
    };
    assert!(check(&nothing_to_declare).is_err());
    let bad_uri = AmqpBackend {
        uri: "nope://guest:secret@host".into(),
        ..cfg()
    };
    let why = check(&bad_uri).expect_err("bad scheme");
    assert_eq!(why.len(), 1, "{why:?}");
    assert!(
        why.iter().all(|e| !e.reason.contains("secret")),
        "the password leaked into {why:?}"
    );
    for k in ["direct", "fanout", "topic", "headers"] {
        assert!(exchange_kind(k).is_ok());
    }
}
