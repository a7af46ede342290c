//! How a message travels in a cluster record: the value is the origin
//! node's id and the message (versioned postcard, as the store writes it).

use serde::{Deserialize, Serialize};

use crate::mqtt::message::Message;
use crate::store::StoreError;

/// The value of a record in the `messages` topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Routed {
    /// The node that took the PUBLISH (it routed it to its own sessions
    /// already, so it skips the record when it reads it back).
    pub origin: String,
    pub message: Message,
    /// A downlink command (from the trusted backend: not checked against
    /// device ACLs), not a device's PUBLISH.
    pub command: bool,
    /// A client-addressed command: only this client's session.
    pub target: Option<String>,
    /// A client-addressed command may create a preset session.
    pub create: bool,
}

impl crate::store::Versioned for Routed {}

pub fn encode_routed(
    origin: &str,
    message: &Message,
    command: bool,
    target: Option<(&str, bool)>,
) -> Result<Vec<u8>, StoreError> {
    crate::store::encode_record(&Routed {
        origin: origin.to_owned(),
        message: message.clone(),
        command,
        target: target.map(|(t, _)| t.to_owned()),
        create: target.is_some_and(|(_, c)| c),
    })
}

pub fn decode_routed(bytes: &[u8]) -> Result<Routed, StoreError> {
    crate::store::decode_record(bytes)
}

/// The value of a record in the `sessions` topic, keyed by client id (a
/// tombstone: the session ended). Written by the node its client is
/// connected to; every node applies it in the log's order.
///
/// Ownership: a `claim` (written at CONNECT) with a generation at least the
/// current one makes its node the owner; any other record applies only if it
/// comes from the current owner at the current generation, so a node that
/// has not yet seen a takeover cannot undo it. Concurrent claims of one
/// generation: the later one in the log wins, on every node alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedSession {
    pub owner: String,
    pub generation: u64,
    pub claim: bool,
    /// Its client is connected to `owner` now.
    pub connected: bool,
    /// Subscriptions, expiry (0: a clean session), protocol, identity,
    /// when it went offline.
    pub record: crate::store::SessionRecord,
    /// Per `messages` partition, the offset up to which its client has
    /// acknowledged everything: the other nodes drop those entries.
    pub cursor: Vec<crate::store::ClusterPos>,
    /// QoS 2 packet ids received from its client and not yet released.
    pub incoming_qos2: Vec<u16>,
    /// QoS 2 deliveries its client has received (PUBREC) but not completed:
    /// another node resends their PUBREL, never the PUBLISH. Written before
    /// the PUBREL is sent.
    pub released: Vec<crate::store::ClusterPos>,
    /// The will of its connection (or the one waiting for its delay after
    /// an abnormal close): the cluster's leader publishes it if the owning
    /// node dies.
    pub will: Option<WillRecord>,
}

/// A will as shared between nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WillRecord {
    pub message: Message,
    pub delay_secs: u32,
    pub expiry_secs: Option<u32>,
}

impl crate::store::Versioned for SharedSession {}

pub fn encode_session(s: &SharedSession) -> Result<Vec<u8>, StoreError> {
    crate::store::encode_record(s)
}

pub fn decode_session(bytes: &[u8]) -> Result<SharedSession, StoreError> {
    crate::store::decode_record(bytes)
}

/// The value of a record in the `retained` topic (a tombstone clears it).
pub fn encode_retained(message: &Message) -> Result<Vec<u8>, StoreError> {
    crate::store::encode_record(message)
}

pub fn decode_retained(bytes: &[u8]) -> Result<Message, StoreError> {
    crate::store::decode_record(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routed_round_trips() {
        let m = Message {
            topic: "a/b".into(),
            payload: bytes::Bytes::from_static(b"x"),
            qos: 1,
            retain: false,
            props: Default::default(),
            expires_at_ms: Some(5),
            receipt: None,
        };
        let bytes = encode_routed("n1", &m, true, Some(("dev", true))).expect("encode");
        let back = decode_routed(&bytes).expect("decode");
        assert_eq!(back.origin, "n1");
        assert!(back.command);
        assert_eq!(back.target.as_deref(), Some("dev"));
        assert!(back.create);
        assert_eq!(back.message, m);
        assert_eq!(
            decode_retained(&encode_retained(&m).expect("e")).expect("d"),
            m
        );
        assert!(decode_routed(&[99, 1, 2]).is_err());
    }
}
