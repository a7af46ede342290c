//! The CONNECT handshake's parsing: version sniff (`codec::sniff_connect`),
//! CONNECT decode and the will validation, via `fuzz_api::connect`.
//!
//! Byte 0 picks the maximum packet size; the rest is the connection's first
//! bytes. Oracles: once the sniff has seen a complete CONNECT frame the parser
//! must return a CONNECT or an error (never nothing, never another packet),
//! and an accepted will has a valid topic name.
#![no_main]

use mqbridge::fuzz_api::{connect, ConnectParse};
use mqbridge::mqtt::topic::valid_topic_name;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let [size_pick, stream @ ..] = data else {
        return;
    };
    let max = if size_pick & 1 == 0 {
        1 << 20
    } else {
        16 + u32::from(*size_pick) * 4
    };
    match connect(stream, max) {
        ConnectParse::Incomplete | ConnectParse::Refused(_) => {}
        ConnectParse::Unexpected(p) => panic!("complete CONNECT frame decoded as {p:?}"),
        ConnectParse::Connect { will, .. } => {
            if let Some(Ok(w)) = will {
                assert!(
                    valid_topic_name(&w.message.topic),
                    "will accepted with invalid topic"
                );
            }
        }
    }
});
