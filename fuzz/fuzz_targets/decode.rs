//! Shared body of the `decode_v311` / `decode_v5` targets.
//!
//! The input is a client's byte stream after CONNECT. Byte 0 picks the maximum
//! packet size (so both sides of the size check are reached by short inputs)
//! and byte 1 how many bytes arrive per read. Oracle: decoding the stream as
//! it trickles in must give exactly the packets and error that decoding it in
//! one piece gives (an incomplete frame must never consume or lose bytes).

use bytes::BytesMut;
use mqbridge::mqtt::codec::{decode, DecodeError, Version};
use rumqttc::v5::mqttbytes::v5::Packet;

type Step = Result<Packet, DecodeError>;

/// Decodes every packet in `buf`; stops at the first error (the connection is
/// closed then) or when more bytes are needed.
fn drain(buf: &mut BytesMut, version: Version, max: u32, out: &mut Vec<Step>) -> bool {
    loop {
        let before = buf.clone();
        match decode(buf, version, max) {
            Ok(Some(p)) => out.push(Ok(p)),
            Ok(None) => {
                assert_eq!(&before[..], &buf[..], "Ok(None) must not consume bytes");
                return true;
            }
            Err(e) => {
                out.push(Err(e));
                return false;
            }
        }
    }
}

pub fn run(data: &[u8], version: Version) {
    let [size_pick, chunk, stream @ ..] = data else {
        return;
    };
    let max = if size_pick & 1 == 0 {
        1 << 20
    } else {
        16 + u32::from(*size_pick) * 4
    };
    let chunk = usize::from(*chunk).max(1);

    let mut whole = Vec::new();
    drain(&mut BytesMut::from(stream), version, max, &mut whole);

    let mut trickled = Vec::new();
    let mut buf = BytesMut::new();
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        if !drain(&mut buf, version, max, &mut trickled) {
            break;
        }
    }
    assert_eq!(whole, trickled, "decode depends on how the bytes arrive");
}
