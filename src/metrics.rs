//! Prometheus metrics: one typed struct, registered into a [`Registry`] that
//! the caller owns (no globals).
//!
//! Every metric value is an atomic, so [`Metrics`] can be shared (e.g. in an
//! `Arc`) and updated from any task without a lock. Labels are small enums,
//! never client ids or topics. The label values of every family are created
//! up front, so all series are exported from start-up (at 0) and the helper
//! methods are a plain atomic add, without a lookup or an allocation.
//!
//! Counters are registered without the `_total` suffix; prometheus-client
//! appends it, so the exposed sample names are exactly the documented ones
//! (e.g. `mqbridge_mqtt_connections_total`).

use std::fmt::Write as _;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// Declares a label-value enum with its `&'static str` values, an `ALL`
/// list (in discriminant order) and an allocation-free `EncodeLabelValue`.
macro_rules! label_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $value:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The label value as exported.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $value,)+
                }
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                encoder.write_str(self.as_str())
            }
        }
    };
}

label_enum! {
    /// Outcome of an incoming connection (`result` label).
    ConnectionResult {
        /// CONNECT accepted.
        Accepted => "accepted",
        /// Connection refused (limit reached, bad CONNECT, ...).
        Rejected => "rejected",
    }
}

label_enum! {
    /// MQTT QoS level (`qos` label).
    Qos {
        /// QoS 0, at most once.
        AtMostOnce => "0",
        /// QoS 1, at least once.
        AtLeastOnce => "1",
        /// QoS 2, exactly once.
        ExactlyOnce => "2",
    }
}

impl Qos {
    /// The QoS for a wire value 0..=2; `None` otherwise.
    pub const fn from_u8(qos: u8) -> Option<Qos> {
        match qos {
            0 => Some(Qos::AtMostOnce),
            1 => Some(Qos::AtLeastOnce),
            2 => Some(Qos::ExactlyOnce),
            _ => None,
        }
    }
}

label_enum! {
    /// Why a client connection was closed for misbehaving (`reason` label).
    ProtocolErrorReason {
        /// A packet could not be decoded.
        Malformed => "malformed",
        /// A decodable packet broke a protocol rule.
        ProtocolError => "protocol_error",
        /// A packet exceeded `mqtt.max_packet_size`.
        PacketTooLarge => "packet_too_large",
        /// Nothing was received within 1.5 times the keep-alive.
        KeepaliveTimeout => "keepalive_timeout",
        /// No CONNECT within `mqtt.connect_timeout_secs`.
        ConnectTimeout => "connect_timeout",
        /// More unacknowledged QoS>0 PUBLISHes than our Receive Maximum.
        ReceiveMaximumExceeded => "receive_maximum_exceeded",
        /// A topic alias of 0, above our maximum, or unknown.
        TopicAliasInvalid => "topic_alias_invalid",
        /// The first packet was not CONNECT.
        NotConnectFirst => "not_connect_first",
        /// CONNECT named a protocol level other than 3.1.1 or 5.0.
        UnsupportedProtocol => "unsupported_protocol",
        /// The client identifier was refused.
        ClientIdInvalid => "client_id_invalid",
        /// A UTF-8 string with U+0000, a control character or a non-character
        /// (or not UTF-8 where the parser left bytes).
        InvalidString => "invalid_string",
        /// A topic name over `mqtt.max_topic_levels` / `mqtt.max_topic_bytes`.
        TopicLimit => "topic_limit",
        /// The client's socket did not take our bytes within `mqtt.send_timeout_secs`.
        SendTimeout => "send_timeout",
        /// A packet was started but not finished within `mqtt.frame_timeout_secs`.
        FrameTimeout => "frame_timeout",
        /// A 3.1.1 keep-alive above `mqtt.max_keepalive_secs` (or 0) was refused.
        KeepaliveRefused => "keepalive_refused",
        /// A 3.1.1 client went over `mqtt.max_awaiting_rel`.
        AwaitingRelExceeded => "awaiting_rel_exceeded",
        /// A `ws`/`wss` listener's HTTP upgrade failed (wrong path, no
        /// `mqtt` subprotocol, not WebSocket at all).
        WebsocketUpgrade => "websocket_upgrade",
        /// A WebSocket text frame (MQTT goes in binary frames).
        WebsocketText => "websocket_text",
    }
}

label_enum! {
    /// Which topic limit refused a topic name or filter (`reason` label).
    TopicLimitReason {
        /// More levels than `mqtt.max_topic_levels`.
        TooManyLevels => "too_many_levels",
        /// More bytes than `mqtt.max_topic_bytes`.
        TooLong => "too_long",
    }
}

label_enum! {
    /// Why the listener closed a connection before reading anything (`reason` label).
    RefusedReason {
        /// `mqtt.max_connections` was reached.
        MaxConnections => "max_connections",
        /// `mqtt.max_connections_per_ip` was reached for the peer's address.
        PerIp => "per_ip",
        /// `mqtt.max_connection_rate` was exceeded.
        Rate => "rate",
        /// The address is banned after repeated authentication failures
        /// (`auth.ban_after`).
        Banned => "banned",
    }
}

label_enum! {
    /// Why a message meant for a session was discarded (`reason` label).
    DropReason {
        /// The session queue was full (see `session.queue_full_policy`).
        QueueFull => "queue_full",
        /// The message expired before delivery.
        Expired => "expired",
        /// `session.max_stored_bytes` was reached.
        StoreFull => "store_full",
        /// A QoS 0 message for an offline session (`session.queue_qos0_offline` off).
        Qos0Offline => "qos0_offline",
        /// `session.max_persistent_sessions` was reached.
        SessionsFull => "sessions_full",
        /// Free space of the store below `store.min_free_bytes`, or its commits failing.
        DiskLow => "disk_low",
        /// Larger than the client's Maximum Packet Size (5.0): discarded as
        /// if delivered, as the specification says.
        TooLarge => "too_large",
    }
}

label_enum! {
    /// Why a retained message was not kept (`reason` label).
    RetainedRefusal {
        /// `mqtt.max_retained_messages` topics already hold one.
        Count => "count",
        /// `mqtt.max_retained_bytes` would be exceeded.
        Bytes => "bytes",
        /// The payload is larger than `mqtt.max_retained_payload_bytes`.
        PayloadSize => "payload_size",
    }
}

label_enum! {
    /// Why a 5.0 will was published without waiting for its Will Delay
    /// Interval (`reason` label).
    WillDelayRefusal {
        /// `mqtt.max_delayed_wills` wills were already waiting.
        Count => "count",
        /// `mqtt.max_delayed_will_bytes` would be exceeded.
        Bytes => "bytes",
    }
}

label_enum! {
    /// Which limit refused a new persistent session (`reason` label).
    SessionRefusal {
        /// `session.max_persistent_sessions`.
        Global => "global",
        /// `session.max_persistent_sessions_per_user`.
        PerUser => "per_user",
        /// `session.max_persistent_sessions_per_ip` (clients without a user name).
        PerIp => "per_ip",
    }
}

/// Label set `{reason=...}` of refused persistent sessions.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct SessionRefusalLabels {
    /// Which limit.
    pub reason: SessionRefusal,
}

/// Label set `{reason=...}` of refused retained messages.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RetainedLabels {
    /// Refusal reason.
    pub reason: RetainedRefusal,
}

/// Label set `{reason=...}` of wills published without their delay.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct WillDelayLabels {
    /// Refusal reason.
    pub reason: WillDelayRefusal,
}

/// Label set `{listener=...,result=...}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResultLabels {
    /// The listener the connection came in on.
    pub listener: ListenerName,
    /// Connection outcome.
    pub result: ConnectionResult,
}

/// Label set `{qos=...}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct QosLabels {
    /// QoS level.
    pub qos: Qos,
}

/// Label set `{listener=...,reason=...}` of protocol errors.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ProtocolErrorLabels {
    /// The listener the connection came in on.
    pub listener: ListenerName,
    /// Error reason.
    pub reason: ProtocolErrorReason,
}

/// Label set `{reason=...}` of topic limit refusals.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TopicLimitLabels {
    /// Which limit.
    pub reason: TopicLimitReason,
}

/// Label set `{listener=...,reason=...}` of connections refused by the listener.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RefusedLabels {
    /// The listener that refused it.
    pub listener: ListenerName,
    /// Refusal reason.
    pub reason: RefusedReason,
}

label_enum! {
    /// Why a 3.1.1 connection was closed with a PUBLISH unacknowledged
    /// (3.1.1 has no negative PUBACK; the device sends it again).
    UnackedReason {
        /// A bridge route's backend did not confirm within `give_up_secs`.
        BackendGaveUp => "backend_gave_up",
        /// The store's free space is below `store.min_free_bytes`.
        DiskLow => "disk_low",
        /// The store failed to commit.
        StoreFailure => "store_failure",
    }
}

/// Label set `{reason=...}` of unacknowledged closes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct UnackedLabels {
    pub reason: UnackedReason,
}

/// Label set `{reason=...}` of dropped messages.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DropLabels {
    /// Drop reason.
    pub reason: DropReason,
}

// After label_enum!, which it uses.
mod listener;
pub use listener::{
    ListenerLabels, ListenerMetrics, ListenerName, ReloadLabels, ReloadResult, TlsFailure,
    TlsFailureLabels,
};

/// Start of the store commit duration buckets: 100 µs.
pub const COMMIT_BUCKET_START_SECS: f64 = 0.000_1;
/// Factor between successive commit duration buckets.
pub const COMMIT_BUCKET_FACTOR: f64 = 2.0;
/// Number of commit duration buckets (100 µs .. ~3.3 s, then +Inf).
pub const COMMIT_BUCKET_COUNT: u16 = 16;

/// All mqbridge metrics. Gauges are meant to be set directly
/// (`m.queued_messages.set(n)`); counters mostly through the helper methods.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// `mqbridge_mqtt_connections_active{listener}`: open client connections.
    pub connections_active: Family<ListenerLabels, Gauge>,
    /// `mqbridge_mqtt_connections_total{listener,result}`: connection attempts by outcome.
    pub connections: Family<ResultLabels, Counter>,
    /// `mqbridge_mqtt_messages_received_total{qos}`: PUBLISH packets received from clients.
    pub messages_received: Family<QosLabels, Counter>,
    /// `mqbridge_mqtt_messages_sent_total{qos}`: PUBLISH packets sent to clients.
    pub messages_sent: Family<QosLabels, Counter>,
    /// `mqbridge_mqtt_bytes_received_total`: bytes read from client connections.
    pub bytes_received: Counter,
    /// `mqbridge_mqtt_bytes_sent_total`: bytes written to client connections.
    pub bytes_sent: Counter,
    /// `mqbridge_mqtt_protocol_errors_total{listener,reason}`: connections closed for a protocol error.
    pub protocol_errors: Family<ProtocolErrorLabels, Counter>,
    /// `mqbridge_mqtt_topics_refused_total{reason}`: topic names and filters
    /// refused for `mqtt.max_topic_levels` / `mqtt.max_topic_bytes` (PUBLISH,
    /// SUBSCRIBE, UNSUBSCRIBE, will, and stored ones dropped at start-up).
    pub topics_refused: Family<TopicLimitLabels, Counter>,
    /// `mqbridge_mqtt_connections_refused_total{listener,reason}`: connections the
    /// listener closed before CONNECT because of a connection limit.
    pub connections_refused: Family<RefusedLabels, Counter>,
    /// `mqbridge_tls_handshake_failures_total{listener,reason}`.
    pub tls_handshake_failures: Family<TlsFailureLabels, Counter>,
    /// `mqbridge_tls_reloads_total{result}`: certificate reloads of TLS listeners.
    pub tls_reloads: Family<ReloadLabels, Counter>,
    /// `mqbridge_tls_certificate_expiry_timestamp_seconds{listener}`: the
    /// notAfter of the certificate a TLS listener serves.
    pub tls_certificate_expiry: Family<ListenerLabels, Gauge>,
    /// `mqbridge_mqtt_awaiting_rel_refused_total`: incoming QoS 2 PUBLISHes
    /// refused because `mqtt.max_awaiting_rel` was reached.
    pub awaiting_rel_refused: Counter,
    /// `mqbridge_mqtt_awaiting_rel_expired_total`: incoming QoS 2 packet ids
    /// forgotten after `mqtt.awaiting_rel_timeout_secs` without PUBREL.
    pub awaiting_rel_expired: Counter,
    /// `mqbridge_session_persistent_sessions`: persistent sessions held.
    pub persistent_sessions: Gauge,
    /// `mqbridge_session_queued_messages`: messages queued or inflight across sessions.
    pub queued_messages: Gauge,
    /// `mqbridge_session_queued_bytes`: bytes of those messages.
    pub queued_bytes: Gauge,
    /// `mqbridge_session_stored_bytes`: bytes of queued messages of
    /// persistent sessions, held in the store (`session.max_stored_bytes`).
    pub stored_bytes: Gauge,
    /// `mqbridge_session_sessions`: sessions held, clean and persistent.
    pub sessions: Gauge,
    /// `mqbridge_session_inflight_messages`: deliveries handed to
    /// connections and not acknowledged yet (recounted on the router tick).
    pub inflight: Gauge,
    /// `mqbridge_session_dropped_messages_total{reason}`: messages discarded.
    pub dropped_messages: Family<DropLabels, Counter>,
    /// `mqbridge_session_refused_total{reason}`: new persistent sessions
    /// refused by a session limit (CONNACK 0x97 / 3.1.1 0x03).
    pub sessions_refused: Family<SessionRefusalLabels, Counter>,
    /// `mqbridge_session_expired_sessions_total`: sessions removed by expiry.
    pub expired_sessions: Counter,
    /// `mqbridge_session_takeovers_total`: connections that replaced a live
    /// connection with the same client id.
    pub takeovers: Counter,
    /// `mqbridge_retained_messages`: topics holding a retained message.
    pub retained_messages: Gauge,
    /// `mqbridge_retained_refused_total{reason}`: retained messages not
    /// kept (count, bytes or payload size limit), at run time or start-up.
    pub retained_refused: Family<RetainedLabels, Counter>,
    /// `mqbridge_retained_bytes`: size of the retained messages held.
    pub retained_bytes: Gauge,
    /// `mqbridge_will_delayed`: 5.0 wills waiting for their delay.
    pub wills_delayed: Gauge,
    /// `mqbridge_will_delay_refused_total{reason}`: wills published at once
    /// because the delayed-will limits were reached.
    pub will_delay_refused: Family<WillDelayLabels, Counter>,
    /// `mqbridge_store_commits_total`: store transactions committed.
    pub store_commits: Counter,
    /// `mqbridge_store_ops_total`: operations in those transactions.
    pub store_ops: Counter,
    /// `mqbridge_store_commit_duration_seconds`: commit latency.
    pub store_commit_duration: Histogram,
    /// `mqbridge_store_commit_batch_ops`: operations per commit (1 .. 4096+).
    pub store_commit_batch: Histogram,
    /// `mqbridge_store_file_bytes`: size of the store's database file.
    pub store_file_bytes: Gauge,
    /// `mqbridge_store_free_bytes`: bytes available on the store's filesystem.
    pub store_free_bytes: Gauge,
    /// `mqbridge_store_disk_low`: 1 while free space is below `store.min_free_bytes`.
    pub store_disk_low: Gauge,
    /// `mqbridge_store_commit_failures_total`: failed commit attempts (each retried).
    pub store_commit_failures: Counter,
    /// `mqbridge_store_quarantined_records_total`: undecodable records moved aside.
    pub store_quarantined_records: Counter,

    // Handles into the families above, one per label value, indexed by the
    // enum's discriminant; they share the families' atomics.
    received_by_qos: Vec<Counter>,
    sent_by_qos: Vec<Counter>,
    by_topic_limit: Vec<Counter>,
    by_drop_reason: Vec<Counter>,
    by_unacked: Vec<Counter>,
    by_retained_refusal: Vec<Counter>,
    by_session_refusal: Vec<Counter>,
    by_will_delay_refusal: Vec<Counter>,
}

fn handles<L, S>(family: &Family<S, Counter>, all: &[L], label: impl Fn(L) -> S) -> Vec<Counter>
where
    L: Copy,
    S: Clone + std::hash::Hash + Eq,
{
    all.iter()
        .map(|&l| family.get_or_create(&label(l)).clone())
        .collect()
}

fn inc_at(counters: &[Counter], index: usize, by: u64) {
    if let Some(counter) = counters.get(index) {
        counter.inc_by(by);
    }
}

impl Metrics {
    /// Creates every metric and registers it into `registry`.
    pub fn new(registry: &mut Registry) -> Metrics {
        let connections = Family::<ResultLabels, Counter>::default();
        let messages_received = Family::<QosLabels, Counter>::default();
        let messages_sent = Family::<QosLabels, Counter>::default();
        let protocol_errors = Family::<ProtocolErrorLabels, Counter>::default();
        let dropped_messages = Family::<DropLabels, Counter>::default();
        let topics_refused = Family::<TopicLimitLabels, Counter>::default();
        let retained_refused = Family::<RetainedLabels, Counter>::default();
        let sessions_refused = Family::<SessionRefusalLabels, Counter>::default();
        let will_delay_refused = Family::<WillDelayLabels, Counter>::default();
        let connections_refused = Family::<RefusedLabels, Counter>::default();

        let closed_unacknowledged = Family::<UnackedLabels, Counter>::default();
        registry.register(
            "mqbridge_mqtt_closed_unacknowledged",
            "3.1.1 connections closed with a PUBLISH unacknowledged (backend or store), by reason",
            closed_unacknowledged.clone(),
        );
        let m = Metrics {
            by_unacked: handles(&closed_unacknowledged, UnackedReason::ALL, |reason| {
                UnackedLabels { reason }
            }),
            received_by_qos: handles(&messages_received, Qos::ALL, |qos| QosLabels { qos }),
            sent_by_qos: handles(&messages_sent, Qos::ALL, |qos| QosLabels { qos }),
            by_drop_reason: handles(&dropped_messages, DropReason::ALL, |reason| DropLabels {
                reason,
            }),
            by_topic_limit: handles(&topics_refused, TopicLimitReason::ALL, |reason| {
                TopicLimitLabels { reason }
            }),
            by_retained_refusal: handles(&retained_refused, RetainedRefusal::ALL, |reason| {
                RetainedLabels { reason }
            }),
            by_session_refusal: handles(&sessions_refused, SessionRefusal::ALL, |reason| {
                SessionRefusalLabels { reason }
            }),
            by_will_delay_refusal: handles(&will_delay_refused, WillDelayRefusal::ALL, |reason| {
                WillDelayLabels { reason }
            }),
            connections_refused,
            tls_handshake_failures: Family::default(),
            tls_reloads: Family::default(),
            tls_certificate_expiry: Family::default(),
            awaiting_rel_refused: Counter::default(),
            awaiting_rel_expired: Counter::default(),
            connections_active: Family::default(),
            connections,
            messages_received,
            messages_sent,
            bytes_received: Counter::default(),
            bytes_sent: Counter::default(),
            protocol_errors,
            topics_refused,
            persistent_sessions: Gauge::default(),
            queued_messages: Gauge::default(),
            queued_bytes: Gauge::default(),
            stored_bytes: Gauge::default(),
            sessions: Gauge::default(),
            inflight: Gauge::default(),
            dropped_messages,
            expired_sessions: Counter::default(),
            takeovers: Counter::default(),
            retained_messages: Gauge::default(),
            retained_refused,
            sessions_refused,
            retained_bytes: Gauge::default(),
            wills_delayed: Gauge::default(),
            will_delay_refused,
            store_commits: Counter::default(),
            store_ops: Counter::default(),
            store_commit_duration: Histogram::new(exponential_buckets(
                COMMIT_BUCKET_START_SECS,
                COMMIT_BUCKET_FACTOR,
                COMMIT_BUCKET_COUNT,
            )),
            store_commit_batch: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            store_file_bytes: Gauge::default(),
            store_free_bytes: Gauge::default(),
            store_disk_low: Gauge::default(),
            store_commit_failures: Counter::default(),
            store_quarantined_records: Counter::default(),
        };

        for &result in ReloadResult::ALL {
            let _ = m.tls_reloads.get_or_create(&ReloadLabels { result });
        }
        let r = registry;
        r.register(
            "mqbridge_mqtt_connections_active",
            "Open MQTT client connections",
            m.connections_active.clone(),
        );
        r.register(
            "mqbridge_mqtt_connections",
            "MQTT connection attempts by result",
            m.connections.clone(),
        );
        r.register(
            "mqbridge_mqtt_messages_received",
            "PUBLISH packets received from clients, by QoS",
            m.messages_received.clone(),
        );
        r.register(
            "mqbridge_mqtt_messages_sent",
            "PUBLISH packets sent to clients, by QoS",
            m.messages_sent.clone(),
        );
        r.register(
            "mqbridge_mqtt_bytes_received",
            "Bytes read from MQTT client connections",
            m.bytes_received.clone(),
        );
        r.register(
            "mqbridge_mqtt_bytes_sent",
            "Bytes written to MQTT client connections",
            m.bytes_sent.clone(),
        );
        r.register(
            "mqbridge_mqtt_protocol_errors",
            "MQTT connections closed for a protocol error, by reason",
            m.protocol_errors.clone(),
        );
        r.register(
            "mqbridge_mqtt_topics_refused",
            "Topic names and filters refused for the topic level or byte limit, by reason",
            m.topics_refused.clone(),
        );
        r.register(
            "mqbridge_mqtt_connections_refused",
            "Connections closed by the listener before CONNECT because of a connection limit, by reason",
            m.connections_refused.clone(),
        );
        r.register(
            "mqbridge_tls_handshake_failures",
            "TLS handshakes that failed on a tls or wss listener, by reason",
            m.tls_handshake_failures.clone(),
        );
        r.register(
            "mqbridge_tls_reloads",
            "Certificate reloads of the TLS listeners, by result (a failed one keeps the old certificate)",
            m.tls_reloads.clone(),
        );
        r.register_with_unit(
            "mqbridge_tls_certificate_expiry_timestamp",
            "notAfter of the certificate a TLS listener serves, in Unix time",
            Unit::Seconds,
            m.tls_certificate_expiry.clone(),
        );
        r.register(
            "mqbridge_mqtt_awaiting_rel_refused",
            "Incoming QoS 2 PUBLISHes refused because the client had mqtt.max_awaiting_rel awaiting PUBREL",
            m.awaiting_rel_refused.clone(),
        );
        r.register(
            "mqbridge_mqtt_awaiting_rel_expired",
            "Incoming QoS 2 packet ids forgotten after mqtt.awaiting_rel_timeout_secs without PUBREL",
            m.awaiting_rel_expired.clone(),
        );
        r.register(
            "mqbridge_session_persistent_sessions",
            "Persistent sessions held",
            m.persistent_sessions.clone(),
        );
        r.register(
            "mqbridge_session_queued_messages",
            "Messages queued or in flight across all sessions",
            m.queued_messages.clone(),
        );
        r.register(
            "mqbridge_session_queued_bytes",
            "Bytes of messages queued or in flight across all sessions",
            m.queued_bytes.clone(),
        );
        r.register(
            "mqbridge_session_stored_bytes",
            "Bytes of queued messages of persistent sessions, held in the store",
            m.stored_bytes.clone(),
        );
        r.register(
            "mqbridge_session_sessions",
            "Sessions held, clean and persistent",
            m.sessions.clone(),
        );
        r.register(
            "mqbridge_session_inflight_messages",
            "Deliveries handed to connections and not acknowledged yet",
            m.inflight.clone(),
        );
        r.register(
            "mqbridge_session_dropped_messages",
            "Messages for sessions that were discarded, by reason",
            m.dropped_messages.clone(),
        );
        r.register(
            "mqbridge_session_refused",
            "New persistent sessions refused by a session limit, by reason",
            m.sessions_refused.clone(),
        );
        r.register(
            "mqbridge_session_expired_sessions",
            "Sessions removed because they expired",
            m.expired_sessions.clone(),
        );
        r.register(
            "mqbridge_session_takeovers",
            "Connections that took over a session from a live connection",
            m.takeovers.clone(),
        );
        r.register(
            "mqbridge_retained_messages",
            "Topics holding a retained message",
            m.retained_messages.clone(),
        );
        r.register(
            "mqbridge_retained_refused",
            "Retained messages not kept because a retained limit was reached, by reason",
            m.retained_refused.clone(),
        );
        r.register_with_unit(
            "mqbridge_retained",
            "Size of the retained messages held",
            Unit::Bytes,
            m.retained_bytes.clone(),
        );
        r.register(
            "mqbridge_will_delayed",
            "MQTT 5.0 wills waiting for their Will Delay Interval",
            m.wills_delayed.clone(),
        );
        r.register(
            "mqbridge_will_delay_refused",
            "Wills published without their delay because the delayed-will limits were reached",
            m.will_delay_refused.clone(),
        );
        r.register(
            "mqbridge_store_commits",
            "Session store transactions committed",
            m.store_commits.clone(),
        );
        r.register(
            "mqbridge_store_ops",
            "Operations written in session store transactions",
            m.store_ops.clone(),
        );
        r.register_with_unit(
            "mqbridge_store_commit_duration",
            "Duration of session store commits",
            Unit::Seconds,
            m.store_commit_duration.clone(),
        );
        r.register(
            "mqbridge_store_commit_batch_ops",
            "Operations per session store commit",
            m.store_commit_batch.clone(),
        );
        r.register(
            "mqbridge_store_file_bytes",
            "Size of the session store's database file",
            m.store_file_bytes.clone(),
        );
        r.register(
            "mqbridge_store_free_bytes",
            "Bytes available on the store's filesystem",
            m.store_free_bytes.clone(),
        );
        r.register(
            "mqbridge_store_disk_low",
            "1 while free space is below store.min_free_bytes (persistent writes refused)",
            m.store_disk_low.clone(),
        );
        r.register(
            "mqbridge_store_commit_failures",
            "Failed store commit attempts (each is retried after reopening the store)",
            m.store_commit_failures.clone(),
        );
        r.register(
            "mqbridge_store_quarantined_records",
            "Undecodable store records moved to the quarantine table",
            m.store_quarantined_records.clone(),
        );
        m
    }

    /// Counts a PUBLISH received from a client. Values above 2 are ignored.
    pub fn received(&self, qos: u8) {
        if let Some(qos) = Qos::from_u8(qos) {
            inc_at(&self.received_by_qos, qos as usize, 1);
        }
    }

    /// Counts a PUBLISH sent to a client. Values above 2 are ignored.
    pub fn sent(&self, qos: u8) {
        if let Some(qos) = Qos::from_u8(qos) {
            inc_at(&self.sent_by_qos, qos as usize, 1);
        }
    }

    /// Adds bytes read from a client connection.
    pub fn bytes_in(&self, bytes: usize) {
        self.bytes_received.inc_by(bytes as u64);
    }

    /// Adds bytes written to a client connection.
    pub fn bytes_out(&self, bytes: usize) {
        self.bytes_sent.inc_by(bytes as u64);
    }

    /// Counts a topic name or filter refused for a topic limit.
    pub fn topic_refused(&self, reason: TopicLimitReason) {
        inc_at(&self.by_topic_limit, reason as usize, 1);
    }

    /// Counts one connection closed with a PUBLISH unacknowledged.
    pub fn closed_unacknowledged(&self, reason: UnackedReason) {
        inc_at(&self.by_unacked, reason as usize, 1);
    }

    /// Counts one discarded message.
    pub fn dropped(&self, reason: DropReason) {
        self.dropped_n(reason, 1);
    }

    /// Counts `count` discarded messages.
    pub fn dropped_n(&self, reason: DropReason, count: u64) {
        inc_at(&self.by_drop_reason, reason as usize, count);
    }

    /// Counts a new persistent session refused by a session limit.
    pub fn session_refused(&self, reason: SessionRefusal) {
        inc_at(&self.by_session_refusal, reason as usize, 1);
    }

    /// Counts a retained message not kept (it was still delivered).
    pub fn retained_refused(&self, reason: RetainedRefusal) {
        inc_at(&self.by_retained_refusal, reason as usize, 1);
    }

    /// Counts a will published at once because the delayed wills are full.
    pub fn will_delay_refused(&self, reason: WillDelayRefusal) {
        inc_at(&self.by_will_delay_refusal, reason as usize, 1);
    }

    /// Records one committed store transaction of `ops` operations.
    pub fn store_commit(&self, ops: usize, duration: Duration) {
        self.store_commits.inc();
        self.store_ops.inc_by(ops as u64);
        self.store_commit_duration.observe(duration.as_secs_f64());
        self.store_commit_batch.observe(ops as f64);
    }
}

/// Renders `registry` in the text exposition format (OpenMetrics text, which
/// Prometheus also reads as its 0.0.4 text format; ends with `# EOF`).
pub fn render(registry: &Registry) -> String {
    let mut out = String::with_capacity(8 * 1024);
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        // Writing to a String cannot fail; a label encoder could in theory.
        tracing::warn!(error = %e, "encoding metrics failed; output is incomplete");
        let _ = writeln!(out, "# encoding error: {e}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered() -> (Metrics, Registry) {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        (m, registry)
    }

    #[test]
    fn type_lines_and_names() {
        let (m, registry) = rendered();
        m.listener(&"tcp".into(), false).active.set(3);
        m.listener(&"tls".into(), true);
        m.store_commit(10, Duration::from_micros(150));
        let text = render(&registry);

        let expected_types = [
            ("mqbridge_mqtt_connections_active", "gauge"),
            ("mqbridge_mqtt_connections", "counter"),
            ("mqbridge_mqtt_messages_received", "counter"),
            ("mqbridge_mqtt_messages_sent", "counter"),
            ("mqbridge_mqtt_bytes_received", "counter"),
            ("mqbridge_mqtt_bytes_sent", "counter"),
            ("mqbridge_mqtt_protocol_errors", "counter"),
            ("mqbridge_mqtt_closed_unacknowledged", "counter"),
            ("mqbridge_mqtt_topics_refused", "counter"),
            ("mqbridge_mqtt_connections_refused", "counter"),
            ("mqbridge_tls_handshake_failures", "counter"),
            ("mqbridge_tls_reloads", "counter"),
            ("mqbridge_tls_certificate_expiry_timestamp_seconds", "gauge"),
            ("mqbridge_mqtt_awaiting_rel_refused", "counter"),
            ("mqbridge_mqtt_awaiting_rel_expired", "counter"),
            ("mqbridge_session_persistent_sessions", "gauge"),
            ("mqbridge_session_queued_messages", "gauge"),
            ("mqbridge_session_queued_bytes", "gauge"),
            ("mqbridge_session_dropped_messages", "counter"),
            ("mqbridge_session_expired_sessions", "counter"),
            ("mqbridge_session_refused", "counter"),
            ("mqbridge_session_takeovers", "counter"),
            ("mqbridge_session_stored_bytes", "gauge"),
            ("mqbridge_session_sessions", "gauge"),
            ("mqbridge_session_inflight_messages", "gauge"),
            ("mqbridge_retained_messages", "gauge"),
            ("mqbridge_retained_refused", "counter"),
            ("mqbridge_retained_bytes", "gauge"),
            ("mqbridge_will_delayed", "gauge"),
            ("mqbridge_will_delay_refused", "counter"),
            ("mqbridge_store_commits", "counter"),
            ("mqbridge_store_ops", "counter"),
            ("mqbridge_store_commit_duration_seconds", "histogram"),
            ("mqbridge_store_commit_batch_ops", "histogram"),
            ("mqbridge_store_file_bytes", "gauge"),
            ("mqbridge_store_free_bytes", "gauge"),
            ("mqbridge_store_disk_low", "gauge"),
            ("mqbridge_store_commit_failures", "counter"),
            ("mqbridge_store_quarantined_records", "counter"),
        ];
        for (name, kind) in expected_types {
            let line = format!("# TYPE {name} {kind}\n");
            assert!(text.contains(&line), "missing {line:?} in\n{text}");
        }
        assert_eq!(
            text.matches("# TYPE ").count(),
            expected_types.len(),
            "unexpected metrics in\n{text}"
        );

        // Exposed sample names, exactly as documented.
        let samples = [
            "mqbridge_mqtt_connections_active{listener=\"tcp\"} 3",
            "mqbridge_mqtt_connections_active{listener=\"tls\"} 0",
            "mqbridge_mqtt_connections_total{listener=\"tcp\",result=\"accepted\"} 0",
            "mqbridge_mqtt_connections_total{listener=\"tls\",result=\"rejected\"} 0",
            "mqbridge_tls_handshake_failures_total{listener=\"tls\",reason=\"no_client_certificate\"} 0",
            "mqbridge_tls_reloads_total{result=\"failed\"} 0",
            "mqbridge_tls_certificate_expiry_timestamp_seconds{listener=\"tls\"} 0",
            "mqbridge_mqtt_messages_received_total{qos=\"0\"} 0",
            "mqbridge_mqtt_messages_sent_total{qos=\"2\"} 0",
            "mqbridge_mqtt_bytes_received_total 0",
            "mqbridge_mqtt_bytes_sent_total 0",
            "mqbridge_mqtt_protocol_errors_total{listener=\"tcp\",reason=\"receive_maximum_exceeded\"} 0",
            "mqbridge_mqtt_topics_refused_total{reason=\"too_many_levels\"} 0",
            "mqbridge_mqtt_connections_refused_total{listener=\"tcp\",reason=\"per_ip\"} 0",
            "mqbridge_mqtt_awaiting_rel_refused_total 0",
            "mqbridge_mqtt_awaiting_rel_expired_total 0",
            "mqbridge_session_persistent_sessions 0",
            "mqbridge_session_queued_messages 0",
            "mqbridge_session_queued_bytes 0",
            "mqbridge_session_dropped_messages_total{reason=\"qos0_offline\"} 0",
            "mqbridge_session_expired_sessions_total 0",
            "mqbridge_session_refused_total{reason=\"per_ip\"} 0",
            "mqbridge_session_takeovers_total 0",
            "mqbridge_retained_messages 0",
            "mqbridge_retained_refused_total{reason=\"bytes\"} 0",
            "mqbridge_retained_bytes 0",
            "mqbridge_will_delayed 0",
            "mqbridge_will_delay_refused_total{reason=\"count\"} 0",
            "mqbridge_store_commits_total 1",
            "mqbridge_store_ops_total 10",
            "mqbridge_store_commit_duration_seconds_count 1",
            "mqbridge_store_commit_duration_seconds_bucket{le=\"0.0001\"} 0",
            "mqbridge_store_commit_duration_seconds_bucket{le=\"0.0002\"} 1",
            "mqbridge_store_free_bytes 0",
            "mqbridge_store_disk_low 0",
            "mqbridge_store_commit_failures_total 0",
            "mqbridge_store_quarantined_records_total 0",
            "mqbridge_session_dropped_messages_total{reason=\"disk_low\"} 0",
        ];
        for sample in samples {
            assert!(
                text.lines().any(|l| l == sample),
                "missing sample {sample:?} in\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn every_label_value_is_exported() {
        let (m, registry) = rendered();
        m.listener(&"tcp".into(), true);
        let text = render(&registry);
        for r in TlsFailure::ALL {
            let s = format!(
                "mqbridge_tls_handshake_failures_total{{listener=\"tcp\",reason=\"{}\"}} 0",
                r.as_str()
            );
            assert!(text.contains(&s), "{s}");
        }
        for r in ConnectionResult::ALL {
            let s = format!(
                "mqbridge_mqtt_connections_total{{listener=\"tcp\",result=\"{}\"}} 0",
                r.as_str()
            );
            assert!(text.contains(&s), "{s}");
        }
        for q in Qos::ALL {
            for dir in ["received", "sent"] {
                let s = format!(
                    "mqbridge_mqtt_messages_{dir}_total{{qos=\"{}\"}} 0",
                    q.as_str()
                );
                assert!(text.contains(&s), "{s}");
            }
        }
        for r in ProtocolErrorReason::ALL {
            let s = format!(
                "mqbridge_mqtt_protocol_errors_total{{listener=\"tcp\",reason=\"{}\"}} 0",
                r.as_str()
            );
            assert!(text.contains(&s), "{s}");
        }
        for r in RefusedReason::ALL {
            let s = format!(
                "mqbridge_mqtt_connections_refused_total{{listener=\"tcp\",reason=\"{}\"}} 0",
                r.as_str()
            );
            assert!(text.contains(&s), "{s}");
        }
        for r in DropReason::ALL {
            let s = format!(
                "mqbridge_session_dropped_messages_total{{reason=\"{}\"}} 0",
                r.as_str()
            );
            assert!(text.contains(&s), "{s}");
        }
        for r in TopicLimitReason::ALL {
            let s = format!(
                "mqbridge_mqtt_topics_refused_total{{reason=\"{}\"}} 0",
                r.as_str()
            );
            assert!(text.contains(&s), "{s}");
        }
    }

    #[test]
    fn helpers_count_into_the_right_series() {
        let (m, registry) = rendered();
        let l = m.listener(&"tcp".into(), true);
        l.connection(ConnectionResult::Accepted);
        l.connection(ConnectionResult::Accepted);
        l.connection(ConnectionResult::Rejected);
        l.tls_failure(TlsFailure::Timeout);
        m.received(0);
        m.received(1);
        m.received(1);
        m.received(7); // ignored
        m.sent(2);
        m.bytes_in(100);
        m.bytes_out(40);
        l.protocol_error(ProtocolErrorReason::ClientIdInvalid);
        m.dropped(DropReason::QueueFull);
        l.connection_refused(RefusedReason::Rate);
        m.tls_reload(ReloadResult::Failed);
        m.dropped_n(DropReason::SessionsFull, 5);
        m.expired_sessions.inc();
        m.takeovers.inc();
        m.retained_refused(RetainedRefusal::PayloadSize);
        m.retained_messages.set(9);
        m.topic_refused(TopicLimitReason::TooLong);

        let text = render(&registry);
        for sample in [
            "mqbridge_mqtt_connections_total{listener=\"tcp\",result=\"accepted\"} 2",
            "mqbridge_mqtt_connections_total{listener=\"tcp\",result=\"rejected\"} 3",
            "mqbridge_mqtt_connections_refused_total{listener=\"tcp\",reason=\"rate\"} 1",
            "mqbridge_mqtt_connections_refused_total{listener=\"tcp\",reason=\"per_ip\"} 0",
            "mqbridge_tls_handshake_failures_total{listener=\"tcp\",reason=\"timeout\"} 1",
            "mqbridge_tls_reloads_total{result=\"failed\"} 1",
            "mqbridge_tls_reloads_total{result=\"ok\"} 0",
            "mqbridge_mqtt_messages_received_total{qos=\"0\"} 1",
            "mqbridge_mqtt_messages_received_total{qos=\"1\"} 2",
            "mqbridge_mqtt_messages_received_total{qos=\"2\"} 0",
            "mqbridge_mqtt_messages_sent_total{qos=\"2\"} 1",
            "mqbridge_mqtt_bytes_received_total 100",
            "mqbridge_mqtt_bytes_sent_total 40",
            "mqbridge_mqtt_protocol_errors_total{listener=\"tcp\",reason=\"client_id_invalid\"} 1",
            "mqbridge_mqtt_protocol_errors_total{listener=\"tcp\",reason=\"malformed\"} 0",
            "mqbridge_session_dropped_messages_total{reason=\"queue_full\"} 1",
            "mqbridge_session_dropped_messages_total{reason=\"sessions_full\"} 5",
            "mqbridge_session_expired_sessions_total 1",
            "mqbridge_session_takeovers_total 1",
            "mqbridge_retained_refused_total{reason=\"payload_size\"} 1",
            "mqbridge_retained_messages 9",
            "mqbridge_mqtt_topics_refused_total{reason=\"too_long\"} 1",
            "mqbridge_mqtt_topics_refused_total{reason=\"too_many_levels\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == sample),
                "missing sample {sample:?} in\n{text}"
            );
        }
        // The family handles and the cached handles are the same series.
        assert_eq!(
            m.messages_received
                .get_or_create(&QosLabels {
                    qos: Qos::AtLeastOnce
                })
                .get(),
            2
        );
    }

    #[test]
    fn enums_index_their_handles() {
        for (i, r) in ConnectionResult::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        for (i, q) in Qos::ALL.iter().enumerate() {
            assert_eq!(*q as usize, i);
            assert_eq!(Qos::from_u8(i as u8), Some(*q));
        }
        for (i, r) in ProtocolErrorReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        for (i, r) in RefusedReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        assert_eq!(Qos::from_u8(3), None);
    }
}
