//! Listeners: several at once (the plain `mqtt.listen` and
//! `[[mqtt.listeners]]` entries), TLS and mTLS with reload, WebSocket and
//! secure WebSocket, each driven by clients nobody here wrote where the
//! transport allows (mosquitto_pub/sub, paho, MQTT.js).

mod cert_auth;
mod tcp;
mod tls;
mod ws;

/// A script of tests/interop (third-party clients).
fn interop_script(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop")
        .join(name)
}
