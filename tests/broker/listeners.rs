//! Listeners: several at once (the plain `mqtt.listen` and
//! `[[mqtt.listeners]]` entries), TLS and mTLS with reload, WebSocket and
//! secure WebSocket, each driven by clients nobody here wrote where the
//! transport allows (mosquitto_pub/sub, paho, MQTT.js).

mod tcp;
