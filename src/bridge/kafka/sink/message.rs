//! How a [`Record`] becomes a Kafka message, and which send errors are
//! final (the record is rejected) rather than worth a re-send.

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::types::RDKafkaErrorCode;

use crate::bridge::Record;

/// The record's metadata headers, then its content type.
pub(super) fn headers(record: &Record) -> OwnedHeaders {
    let mut h = OwnedHeaders::new_with_capacity(record.headers.len() + 1);
    for (key, value) in &record.headers {
        h = h.insert(Header {
            key: key.as_str(),
            value: Some(value.as_str()),
        });
    }
    if let Some(ct) = &record.content_type {
        h = h.insert(Header {
            key: "content_type",
            value: Some(ct.as_str()),
        });
    }
    h
}

pub(super) fn code(e: &KafkaError) -> Option<RDKafkaErrorCode> {
    e.rdkafka_error_code()
}

/// Errors that retrying the same record cannot fix.
pub(super) fn permanent(e: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code(e),
        Some(
            C::UnknownTopicOrPartition
                | C::UnknownTopic
                | C::UnknownPartition
                | C::InvalidTopic
                | C::MessageSizeTooLarge
                | C::InvalidMessageSize
                | C::MessageBatchTooLarge
                | C::InvalidMessage
                | C::InvalidRecord
                | C::InvalidTimestamp
                | C::InvalidArgument
                | C::TopicAuthorizationFailed
                | C::ClusterAuthorizationFailed
                | C::PolicyViolation
                | C::UnsupportedForMessageFormat
                | C::UnsupportedCompressionType
        )
    )
}
