//! MQTT 3.1.1 frame decoder and packet parser (`mqtt::codec::decode`).
#![no_main]

#[path = "decode.rs"]
mod decode;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    decode::run(data, mqbridge::mqtt::codec::Version::V311);
});
