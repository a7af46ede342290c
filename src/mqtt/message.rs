//! The application message as it is routed, queued and stored.
//!
//! One type for both protocol versions: 3.1.1 messages simply carry no
//! MQTT 5 properties. It derives serde so the store can persist it as is.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// MQTT 5 properties that travel with an application message (MQTT-3.3.2-3.3.2.3.x).
/// Topic alias and subscription identifiers are per-connection, so they are not here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageProps {
    pub payload_format_indicator: Option<u8>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<(String, String)>,
}

/// An application message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub topic: String,
    pub payload: Bytes,
    /// QoS the message was published with (0, 1 or 2).
    pub qos: u8,
    pub retain: bool,
    pub props: MessageProps,
    /// Absolute expiry in unix milliseconds, from the 5.0 Message Expiry Interval.
    /// Kept absolute so that time spent offline or across a restart counts.
    pub expires_at_ms: Option<u64>,
    /// For a downlink command whose route wants a delivery receipt: where it
    /// came from. Stored with the message so a receipt survives restarts.
    pub receipt: Option<Receipt>,
}

/// What a delivery receipt names (see `bridge::downlink`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// Downlink route name.
    pub route: String,
    /// Source position: `topic/partition/offset` or `queue/delivery-tag`.
    pub position: String,
    /// The command's correlation data, if any.
    pub correlation: Option<Bytes>,
}

impl Message {
    /// Approximate stored size, used for the byte limits of queues and the store.
    pub fn size(&self) -> usize {
        let props = &self.props;
        self.topic.len()
            + self.payload.len()
            + props.content_type.as_ref().map_or(0, String::len)
            + props.response_topic.as_ref().map_or(0, String::len)
            + props.correlation_data.as_ref().map_or(0, Bytes::len)
            + props
                .user_properties
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + 16
    }

    /// Whether the message has expired at `now_ms` (unix milliseconds).
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|at| now_ms >= at)
    }

    /// [`Message::is_expired`] now; reads the clock only for a message that
    /// has an expiry (most have none: no clock read per delivery).
    pub fn is_expired_now(&self) -> bool {
        self.expires_at_ms.is_some_and(|at| now_ms() >= at)
    }

    /// Remaining expiry interval in whole seconds, to put in an outgoing PUBLISH.
    pub fn remaining_expiry_secs(&self, now_ms: u64) -> Option<u32> {
        self.expires_at_ms
            .map(|at| (at.saturating_sub(now_ms).div_ceil(1000)).min(u32::MAX as u64) as u32)
    }
}

/// Current time in unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
