//! The store's record decoder (`store::tables::decode`, via `fuzz_api`) on
//! bytes read back from disk: session records, queued entries and retained
//! messages. Byte 0 picks the record type. Oracle: whatever decodes must
//! encode again and decode to the same value (a record the store can read it
//! can also rewrite, e.g. when a queued entry changes state).
#![no_main]

use mqbridge::fuzz_api::{decode_record, encode_record};
use mqbridge::mqtt::message::Message;
use mqbridge::store::{QueuedEntry, SessionRecord, Versioned};

fn round_trip<T: Versioned + PartialEq + std::fmt::Debug>(bytes: &[u8]) {
    let Ok(value) = decode_record::<T>(bytes) else {
        return;
    };
    let encoded = encode_record(&value).expect("a decoded record encodes");
    let again: T = decode_record(&encoded).expect("an encoded record decodes");
    assert_eq!(value, again);
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let [kind, bytes @ ..] = data else {
        return;
    };
    match kind % 3 {
        0 => round_trip::<SessionRecord>(bytes),
        1 => round_trip::<QueuedEntry>(bytes),
        _ => round_trip::<Message>(bytes),
    }
});
