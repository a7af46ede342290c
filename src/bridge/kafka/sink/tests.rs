//! Unit tests of the parts that need no broker: the producer configuration
//! and which errors count as permanent. The sink against a real broker is
//! tested in `tests/bridge_kafka_sink.rs`.

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use super::client_config;
use super::message::permanent;
use crate::config::KafkaBackend;

fn backend(properties: &[&str]) -> KafkaBackend {
    KafkaBackend {
        name: "k".into(),
        bootstrap_servers: "127.0.0.1:9092".into(),
        compression: "zstd".into(),
        create_topics: false,
        topic_partitions: 3,
        topic_replication: 1,
        properties: properties.iter().map(|p| p.to_string()).collect(),
        ..KafkaBackend::default()
    }
}

#[test]
fn defaults_are_safe() {
    let c = client_config(&backend(&[])).expect("valid");
    assert_eq!(c.get("acks"), Some("all"));
    assert_eq!(c.get("enable.idempotence"), Some("true"));
    assert_eq!(c.get("message.timeout.ms"), Some("0"));
    assert_eq!(c.get("compression.type"), Some("zstd"));
    assert_eq!(c.get("bootstrap.servers"), Some("127.0.0.1:9092"));
    assert_eq!(c.get("client.id"), Some("mqbridge-k"));
}

#[test]
fn properties_override_except_safety() {
    let c = client_config(&backend(&[
        "linger.ms = 20",
        "acks=1",
        "request.required.acks=0",
        "enable.idempotence=false",
        "delivery.timeout.ms=60000",
        "compression.codec=gzip",
        "sasl.password=a=b",
    ]))
    .expect("valid");
    assert_eq!(c.get("linger.ms"), Some("20"));
    assert_eq!(c.get("acks"), Some("all"));
    assert_eq!(c.get("request.required.acks"), None);
    assert_eq!(c.get("enable.idempotence"), Some("true"));
    assert_eq!(c.get("message.timeout.ms"), Some("60000"));
    assert_eq!(c.get("delivery.timeout.ms"), None);
    assert_eq!(c.get("compression.type"), Some("gzip"));
    assert_eq!(c.get("sasl.password"), Some("a=b"));
}

#[test]
fn equivalent_safety_values_are_accepted() {
    let c = client_config(&backend(&["acks=-1", "enable.idempotence=TRUE"])).expect("valid");
    assert_eq!(c.get("acks"), Some("-1"));
    assert_eq!(c.get("enable.idempotence"), Some("TRUE"));
}

#[test]
fn property_without_equals_is_an_error() {
    assert!(client_config(&backend(&["linger.ms"])).is_err());
}

#[test]
fn permanent_and_transient_errors() {
    let p = |c| permanent(&KafkaError::MessageProduction(c));
    assert!(p(RDKafkaErrorCode::UnknownTopicOrPartition));
    assert!(p(RDKafkaErrorCode::MessageSizeTooLarge));
    assert!(p(RDKafkaErrorCode::MessageBatchTooLarge));
    assert!(p(RDKafkaErrorCode::TopicAuthorizationFailed));
    assert!(!p(RDKafkaErrorCode::QueueFull));
    assert!(!p(RDKafkaErrorCode::MessageTimedOut));
    assert!(!p(RDKafkaErrorCode::NotLeaderForPartition));
    assert!(!p(RDKafkaErrorCode::Fatal));
    assert!(!permanent(&KafkaError::Canceled));
}

/// What a delivery report becomes, and what it leaves for the next
/// `connect` to act on.
#[test]
fn delivery_reports_become_deliveries() {
    use rdkafka::message::{OwnedMessage, Timestamp};

    use super::client::{outcome, Trouble};
    use crate::bridge::contract::Delivery;

    let failed = |c| {
        let m = OwnedMessage::new(None, None, "t".into(), Timestamp::NotAvailable, 0, 0, None);
        Ok(Err((KafkaError::MessageProduction(c), m)))
    };
    let trouble = Trouble::default();
    let delivered = rdkafka::producer::future_producer::Delivery {
        partition: 0,
        offset: 7,
        timestamp: Timestamp::NotAvailable,
    };
    assert_eq!(
        outcome(Ok(Ok(delivered)), "t", &trouble),
        Delivery::Confirmed
    );

    let d = outcome(failed(RDKafkaErrorCode::MessageSizeTooLarge), "t", &trouble);
    assert!(matches!(d, Delivery::Rejected(_)), "{d:?}");
    assert_eq!(trouble.take_forget(), ["t"]);

    let d = outcome(
        failed(RDKafkaErrorCode::OutOfOrderSequenceNumber),
        "t",
        &trouble,
    );
    assert!(matches!(d, Delivery::Retry(_)), "{d:?}");
    assert!(trouble.lock().lost.take().is_some(), "producer to replace");

    let d = outcome(failed(RDKafkaErrorCode::MessageTimedOut), "t", &trouble);
    assert!(matches!(d, Delivery::Retry(_)), "{d:?}");
    assert_eq!(trouble.take_forget(), ["t"]);

    let t = trouble.lock();
    assert!(t.forget.is_empty() && t.gone.is_empty() && t.lost.is_none());
}

#[test]
fn typed_security_keys_reach_the_producer_and_cannot_be_set_twice() {
    let mut b = backend(&["linger.ms=5"]);
    b.security_protocol = "sasl_plaintext".into();
    b.sasl_mechanism = "PLAIN".into();
    b.sasl_username = "gw".into();
    b.sasl_password = crate::config::Secret::new("pw");
    let c = client_config(&b).expect("valid");
    assert_eq!(c.get("security.protocol"), Some("sasl_plaintext"));
    assert_eq!(c.get("sasl.mechanism"), Some("PLAIN"));
    assert_eq!(c.get("sasl.password"), Some("pw"));
    assert_eq!(c.get("linger.ms"), Some("5"));

    b.properties = vec!["sasl.username=other".into()];
    let errors = client_config(&b).expect_err("set twice");
    assert_eq!(errors[0].key, "properties[0]");
}
