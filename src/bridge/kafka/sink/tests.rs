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
