//! Entry points for the coverage-guided fuzz targets in `fuzz/` (cargo-fuzz).
//!
//! Hidden and NOT a stable API: it only forwards to the private functions that
//! read bytes a client or the disk controls, so the fuzzers run exactly the
//! code the gateway runs. The parsers that are already public
//! ([`crate::mqtt::codec`], [`crate::mqtt::topic`]) are fuzzed directly.

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::v5 as p5;

use crate::mqtt::codec::{self, DecodeError, Version};
use crate::mqtt::router::Will;
use crate::store::{StoreError, Versioned};

/// What the start of a connection's byte stream amounts to, read the way the
/// CONNECT handshake reads it.
#[derive(Debug)]
pub enum ConnectParse {
    /// More bytes are needed.
    Incomplete,
    /// Refused by the frame check, the version sniff or the parser.
    Refused(DecodeError),
    /// The sniff saw a complete CONNECT but the parser returned this instead
    /// (`None`: nothing). Never expected: the fuzz target treats it as a bug.
    Unexpected(Option<p5::Packet>),
    /// A parsed CONNECT and its will after the handshake's validation
    /// (`Err`: the CONNECT is refused with Topic Name invalid).
    Connect {
        version: Version,
        client_id: String,
        will: Option<Result<Will, String>>,
    },
}

/// Sniffs the version, decodes the CONNECT and validates its will, as
/// `connection::handshake` does before it talks to the router.
pub fn connect(bytes: &[u8], max_size: u32) -> ConnectParse {
    let version = match codec::sniff_connect(bytes, max_size) {
        Ok(Some(v)) => v,
        Ok(None) => return ConnectParse::Incomplete,
        Err(e) => return ConnectParse::Refused(e),
    };
    let mut buf = BytesMut::from(bytes);
    match codec::decode(&mut buf, version, max_size) {
        Ok(Some(p5::Packet::Connect(c, will, _login))) => ConnectParse::Connect {
            version,
            client_id: c.client_id,
            will: will.map(|w| {
                let limits = crate::config::Config::default().mqtt.topic_limits();
                crate::mqtt::connection::make_will(w, version, &limits, None)
                    .map_err(|(_, why)| why)
            }),
        },
        Ok(other) => ConnectParse::Unexpected(other),
        Err(e) => ConnectParse::Refused(e),
    }
}

/// Decodes one stored record (session, queued entry or retained message)
/// with the store's own decoder.
pub fn decode_record<T: Versioned>(bytes: &[u8]) -> Result<T, StoreError> {
    crate::store::decode_record(bytes)
}

/// Encodes one record with the store's own encoder.
pub fn encode_record<T: Versioned>(value: &T) -> Result<Vec<u8>, StoreError> {
    crate::store::encode_record(value)
}

#[cfg(test)]
mod seeds;
