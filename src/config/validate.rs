//! [`Config::validate`]: every check of every section, all problems at once,
//! into a [`Validated`] configuration — the only form the runtime takes.

use std::net::SocketAddr;

use super::listeners::{self, ListenerSpec};
use super::{
    Config, ConfigError, LogFormat, QueueFullPolicy, ValidAuth, ValidBridge, MAX_DURATION_SECS,
    MAX_NODE_ID_LEN, MAX_PACKET_SIZE, MIN_PACKET_SIZE,
};

/// A configuration that passed [`Config::validate`]; only it makes one.
///
/// The string-typed fields are here in parsed form (addresses, the queue
/// policy, the log filter); the numbers, already typed by serde, are
/// range-checked and read through `Deref` from the sections of [`Config`]
/// (with their `Duration` helpers), which this cannot be turned back into
/// mutably.
#[derive(Debug, Clone)]
pub struct Validated {
    config: Config,
    log_filter: String,
    log_format: LogFormat,
    /// The plain TCP listener (when `mqtt.listen` is set) first, then
    /// `[[mqtt.listeners]]` in order.
    listeners: Vec<ListenerSpec>,
    admin_listen: Option<SocketAddr>,
    admin_tls: Option<super::listeners::TlsSpec>,
    queue_full_policy: QueueFullPolicy,
    bridge: ValidBridge,
    acl: crate::acl::AclRules,
    auth: ValidAuth,
}

impl Validated {
    /// The bridge section, checked: backends built through the registry,
    /// routes with their backend and compiled templates.
    pub fn valid_bridge(&self) -> &ValidBridge {
        &self.bridge
    }

    /// `[acl]`: the config rules and the `acl_file`, read and parsed.
    pub fn acl_rules(&self) -> &crate::acl::AclRules {
        &self.acl
    }

    /// The `[auth]` section, checked, with its password file read.
    pub fn valid_auth(&self) -> &ValidAuth {
        &self.auth
    }

    /// `log.level`, a valid `tracing` filter directive.
    pub fn log_filter(&self) -> &str {
        &self.log_filter
    }

    /// `log.format`.
    pub fn log_format(&self) -> LogFormat {
        self.log_format
    }

    /// `log.level` as a filter.
    pub fn env_filter(&self) -> tracing_subscriber::EnvFilter {
        // Checked by validate: lossy parsing loses nothing.
        tracing_subscriber::EnvFilter::builder().parse_lossy(&self.log_filter)
    }

    /// Every MQTT listener: `mqtt.listen` (named `tcp`) unless it is empty,
    /// then the `[[mqtt.listeners]]` entries in order. Never empty.
    pub fn listeners(&self) -> &[ListenerSpec] {
        &self.listeners
    }

    /// `admin.listen`, or `None` when the endpoint is disabled.
    pub fn admin_listen(&self) -> Option<SocketAddr> {
        self.admin_listen
    }

    /// `admin.cert_file` / `key_file`, checked: `None` for plain HTTP.
    pub fn admin_tls(&self) -> Option<&super::listeners::TlsSpec> {
        self.admin_tls.as_ref()
    }

    /// `session.queue_full_policy`.
    pub fn queue_full_policy(&self) -> QueueFullPolicy {
        self.queue_full_policy
    }

    /// The configuration as loaded (every value in it is valid).
    pub fn raw(&self) -> &Config {
        &self.config
    }
}

impl std::ops::Deref for Validated {
    type Target = Config;

    fn deref(&self) -> &Config {
        &self.config
    }
}

/// The problems found so far.
#[derive(Default)]
struct Errors(Vec<ConfigError>);

impl Errors {
    fn check(&mut self, result: Result<(), ConfigError>) {
        self.0.extend(result.err());
    }

    /// The value, or `None` with its error recorded.
    fn take<T>(&mut self, result: Result<T, ConfigError>) -> Option<T> {
        result.map_err(|e| self.0.push(e)).ok()
    }
}

impl Config {
    /// Checks every section, and reports every problem found, each with its
    /// dotted key: unknown keys set aside by [`super::load`], ranges,
    /// addresses, enums, the log filter, the bridge. Nothing is bound or
    /// opened here.
    pub fn validate(&self) -> Result<Validated, Vec<ConfigError>> {
        let mut errors = Errors::default();
        errors.0.extend(self.problems.iter().map(|p| p.error()));
        let log_filter = errors.take(log_filter(&self.log.level));
        let log_format = errors.take(
            self.log
                .format
                .parse::<LogFormat>()
                .map_err(|reason| ConfigError::invalid("log.format", reason)),
        );
        let mqtt_listen = errors.take(self.mqtt.listen_addr());
        let listeners = self.check_listeners(&mut errors, mqtt_listen);
        self.check_mqtt(&mut errors);
        let queue_full_policy = errors.take(
            self.session
                .queue_full_policy
                .parse::<QueueFullPolicy>()
                .map_err(|reason| ConfigError::invalid("session.queue_full_policy", reason)),
        );
        self.check_session(&mut errors);
        self.check_store(&mut errors);
        let admin_listen = errors.take(self.admin.listen_addr());
        errors.check(self.admin.check_token());
        let admin_tls = errors.take(self.admin.tls());
        self.check_server(&mut errors);
        errors.0.extend(self.check_cluster());
        let bridge = match self.bridge.validate(self.session.max_session_expiry_secs) {
            Ok(bridge) => Some(bridge),
            Err(problems) => {
                errors.0.extend(problems);
                None
            }
        };
        let acl = match self.acl.validate() {
            Ok(acl) => Some(acl),
            Err(problems) => {
                errors.0.extend(problems);
                None
            }
        };
        let auth = match self.auth.validate(&self.mqtt.listeners) {
            Ok(auth) => Some(auth),
            Err(problems) => {
                errors.0.extend(problems);
                None
            }
        };
        match (
            (log_filter, log_format),
            listeners,
            queue_full_policy,
            (admin_listen, admin_tls),
            bridge,
            acl,
            auth,
        ) {
            (
                (Some(log_filter), Some(log_format)),
                Some(listeners),
                Some(queue_full_policy),
                (Some(admin_listen), Some(admin_tls)),
                Some(bridge),
                Some(acl),
                Some(auth),
            ) if errors.0.is_empty() => Ok(Validated {
                config: self.clone(),
                log_filter,
                log_format,
                listeners,
                admin_listen,
                admin_tls,
                queue_full_policy,
                bridge,
                acl,
                auth,
            }),
            _ => Err(errors.0),
        }
    }

    /// `mqtt.listen` (already parsed: `Some(None)` when empty) and the
    /// `[[mqtt.listeners]]`; at least one listener must remain.
    fn check_listeners(
        &self,
        errors: &mut Errors,
        tcp: Option<Option<SocketAddr>>,
    ) -> Option<Vec<ListenerSpec>> {
        let tcp_on = !self.mqtt.listen.is_empty();
        let more = match listeners::check(&self.mqtt.listeners, tcp_on) {
            Ok(specs) => specs,
            Err(problems) => {
                errors.0.extend(problems);
                return None;
            }
        };
        let tcp = tcp?;
        let all: Vec<ListenerSpec> = tcp
            .map(ListenerSpec::plain_tcp)
            .into_iter()
            .chain(more)
            .collect();
        if all.is_empty() {
            errors.0.push(ConfigError::invalid(
                "mqtt.listen",
                "is empty and no [[mqtt.listeners]] is configured: clients could not connect",
            ));
            return None;
        }
        Some(all)
    }

    fn check_mqtt(&self, errors: &mut Errors) {
        let m = &self.mqtt;
        errors.check(duration_secs(
            "mqtt.connect_timeout_secs",
            m.connect_timeout_secs,
        ));
        if !(MIN_PACKET_SIZE..=MAX_PACKET_SIZE).contains(&m.max_packet_size) {
            errors.0.push(ConfigError::invalid(
                "mqtt.max_packet_size",
                format!(
                    "{} is out of range {MIN_PACKET_SIZE}..={MAX_PACKET_SIZE}",
                    m.max_packet_size
                ),
            ));
        }
        errors.check(positive("mqtt.receive_maximum", m.receive_maximum));
        errors.check(positive("mqtt.max_inflight", m.max_inflight));
        errors.check(positive("mqtt.max_connections", m.max_connections));
        for (key, value) in [
            ("mqtt.max_topic_levels", m.max_topic_levels),
            ("mqtt.max_topic_bytes", m.max_topic_bytes),
        ] {
            if !(1..=65535).contains(&value) {
                errors.0.push(ConfigError::invalid(
                    key,
                    format!("{value} is out of range 1..=65535"),
                ));
            }
        }
        errors.check(positive("mqtt.max_retained_bytes", m.max_retained_bytes));
        errors.check(positive(
            "mqtt.max_retained_payload_bytes",
            m.max_retained_payload_bytes,
        ));
        errors.check(duration_secs("mqtt.send_timeout_secs", m.send_timeout_secs));
        errors.check(positive(
            "mqtt.max_outbound_buffer_bytes",
            m.max_outbound_buffer_bytes,
        ));
        errors.check(duration_secs(
            "mqtt.frame_timeout_secs",
            m.frame_timeout_secs,
        ));
        errors.check(positive("mqtt.max_awaiting_rel", m.max_awaiting_rel));
        errors.check(duration_secs(
            "mqtt.awaiting_rel_timeout_secs",
            m.awaiting_rel_timeout_secs,
        ));
    }

    fn check_session(&self, errors: &mut Errors) {
        let s = &self.session;
        errors.check(positive(
            "session.v311_session_expiry_secs",
            s.v311_session_expiry_secs,
        ));
        errors.check(positive(
            "session.max_queued_messages",
            s.max_queued_messages,
        ));
        errors.check(positive("session.max_queued_bytes", s.max_queued_bytes));
        errors.check(duration_secs(
            "session.expiry_check_interval_secs",
            s.expiry_check_interval_secs,
        ));
    }

    fn check_store(&self, errors: &mut Errors) {
        let st = &self.store;
        if st.path.as_os_str().is_empty() {
            errors
                .0
                .push(ConfigError::invalid("store.path", "must not be empty"));
        }
        errors.check(positive("store.max_batch_ops", st.max_batch_ops));
        errors.check(positive("store.queue_capacity", st.queue_capacity));
        let interval = st.free_space_check_interval_ms;
        if interval == 0 || interval > 60_000 {
            errors.0.push(ConfigError::invalid(
                "store.free_space_check_interval_ms",
                format!("{interval} is out of range 1..=60000"),
            ));
        }
        if st.commit_retry_max_secs > MAX_DURATION_SECS {
            errors.0.push(ConfigError::invalid(
                "store.commit_retry_max_secs",
                format!("is too large (at most {MAX_DURATION_SECS} seconds)"),
            ));
        }
    }

    fn check_server(&self, errors: &mut Errors) {
        errors.check(duration_secs(
            "server.shutdown_grace_secs",
            self.server.shutdown_grace_secs,
        ));
        let node_id = &self.server.node_id;
        if !node_id.is_empty() && !super::valid_node_id(node_id) {
            errors.0.push(ConfigError::invalid(
                "server.node_id",
                format!("{node_id:?}: use 1 to {MAX_NODE_ID_LEN} characters of A-Z a-z 0-9 . _ -"),
            ));
        }
    }
}

/// `log.level` if it is a valid, non-empty `tracing` filter directive.
fn log_filter(level: &str) -> Result<String, ConfigError> {
    if level.trim().is_empty() {
        return Err(ConfigError::invalid("log.level", "must not be empty"));
    }
    match tracing_subscriber::EnvFilter::builder().parse(level) {
        Ok(_) => Ok(level.to_owned()),
        Err(e) => Err(ConfigError::invalid(
            "log.level",
            format!("invalid filter directive {level:?}: {e}"),
        )),
    }
}

pub(super) fn parse_addr(key: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        ConfigError::invalid(
            key,
            format!("invalid socket address {value:?} (expected IP:PORT, e.g. \"0.0.0.0:1883\")"),
        )
    })
}

fn positive<T: PartialEq + Default>(key: &'static str, value: T) -> Result<(), ConfigError> {
    if value == T::default() {
        Err(ConfigError::invalid(key, "must be greater than 0"))
    } else {
        Ok(())
    }
}

pub(super) fn duration_secs(key: &'static str, value: u64) -> Result<(), ConfigError> {
    positive(key, value)?;
    if value > MAX_DURATION_SECS {
        return Err(ConfigError::invalid(
            key,
            format!("{value} is too large (at most {MAX_DURATION_SECS} seconds)"),
        ));
    }
    Ok(())
}
