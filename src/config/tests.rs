use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use super::*;

/// Serializes the tests that change the process environment.
static ENV_LOCK: Mutex<()> = Mutex::new(());

fn env(pairs: &[(&str, &str)]) -> Option<config::Map<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
}

/// The one error of a configuration with one mistake.
fn one_error(result: Result<Validated, Vec<ConfigError>>) -> Result<Validated, ConfigError> {
    result.map_err(|mut errors| {
        assert_eq!(errors.len(), 1, "one mistake, one error: {errors:?}");
        errors.remove(0)
    })
}

/// Loads and validates (these tests make one mistake each).
fn load(file: Option<&Path>) -> Result<Validated, ConfigError> {
    one_error(super::load(file)?.validate())
}

/// Loads and validates, with `env` as the environment.
fn load_with_env(
    file: Option<&Path>,
    env: Option<config::Map<String, String>>,
) -> Result<Validated, ConfigError> {
    one_error(super::load_with_env(file, env)?.validate())
}

/// Loads with no process environment involved.
fn load_isolated(file: Option<&Path>) -> Result<Validated, ConfigError> {
    load_with_env(file, env(&[]))
}

fn toml_file(contents: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("create temp file");
    f.write_all(contents.as_bytes()).expect("write temp file");
    f.flush().expect("flush temp file");
    f
}

fn err_of(file: &str) -> String {
    let f = toml_file(file);
    match load_isolated(Some(f.path())) {
        Ok(c) => panic!("expected an error for {file:?}, got {c:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn default_toml_equals_default() {
    let loaded = load_isolated(None).expect("defaults load");
    assert_eq!(loaded.raw(), &Config::default());

    // The embedded file on its own, without validation, says the same.
    let raw: Config = config::Config::builder()
        .add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ))
        .build()
        .expect("default.toml parses")
        .try_deserialize()
        .expect("default.toml deserializes");
    assert_eq!(raw, Config::default());
}

#[test]
fn default_validates() {
    Config::default().validate().expect("defaults are valid");
}

#[test]
fn default_toml_comments_every_key() {
    let lines: Vec<&str> = DEFAULT_TOML.lines().map(str::trim).collect();
    let mut keys = 0;
    for (i, line) in lines.iter().enumerate() {
        if line.is_empty() || line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        keys += 1;
        let key = line.split('=').next().unwrap_or(line).trim();
        assert!(
            i > 0 && lines[i - 1].starts_with('#'),
            "key {key:?} in default.toml has no comment right above it"
        );
        let comment_block: Vec<&str> = lines[..i]
            .iter()
            .rev()
            .take_while(|l| l.starts_with('#'))
            .copied()
            .collect();
        assert!(
            comment_block.iter().any(|l| l.contains("Default")),
            "comment of key {key:?} in default.toml does not state the default"
        );
    }
    // 2 (log) + 25 + 11 + 7 + 3 (admin) + 2 fields, auth: 12 + 9 (jwt),
    // then bridge: 1 + 5 (file backend) + 6 (route), then acl: 1, cluster: 7.
    assert_eq!(keys, 91, "unexpected number of keys in default.toml");
}

#[test]
fn process_env_overrides() {
    let _guard = ENV_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let vars = [
        ("MQBRIDGE__MQTT__LISTEN", "127.0.0.1:1999"),
        ("MQBRIDGE__MQTT__MAX_CONNECTIONS", "42"),
        ("MQBRIDGE__SESSION__QUEUE_FULL_POLICY", "reject_new"),
        ("MQBRIDGE__SESSION__QUEUE_QOS0_OFFLINE", "true"),
    ];
    for (k, v) in vars {
        std::env::set_var(k, v);
    }
    let result = load(None);
    for (k, _) in vars {
        std::env::remove_var(k);
    }
    let c = result.expect("env overrides load");
    assert_eq!(c.mqtt.listen, "127.0.0.1:1999");
    assert_eq!(
        c.mqtt.listen_addr().expect("valid"),
        Some("127.0.0.1:1999".parse::<SocketAddr>().expect("literal"))
    );
    assert_eq!(c.mqtt.max_connections, 42);
    assert_eq!(c.session.queue_full_policy, "reject_new");
    assert_eq!(c.queue_full_policy(), QueueFullPolicy::RejectNew);
    assert!(c.session.queue_qos0_offline);
    // Untouched keys keep their defaults.
    assert_eq!(c.mqtt.max_inflight, MqttConfig::default().max_inflight);
}

#[test]
fn process_env_bad_value_names_key() {
    let _guard = ENV_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    std::env::set_var("MQBRIDGE__MQTT__LISTEN", "abc");
    let result = load(None);
    std::env::remove_var("MQBRIDGE__MQTT__LISTEN");
    let e = result.expect_err("bad listen address must fail");
    assert_eq!(e.key(), Some("mqtt.listen"));
    assert!(
        e.to_string()
            .starts_with("mqtt.listen: invalid socket address \"abc\""),
        "{e}"
    );
}

#[test]
fn env_beats_file_beats_defaults() {
    let f = toml_file("[mqtt]\nmax_inflight = 10\nmax_connections = 5\n");
    let c = load_with_env(
        Some(f.path()),
        env(&[("MQBRIDGE__MQTT__MAX_CONNECTIONS", "7")]),
    )
    .expect("loads");
    assert_eq!(c.mqtt.max_inflight, 10);
    assert_eq!(c.mqtt.max_connections, 7);
    assert_eq!(
        c.mqtt.receive_maximum,
        MqttConfig::default().receive_maximum
    );
}

#[test]
fn env_string_values_are_kept_verbatim() {
    // Values that look like numbers, floats or booleans must reach string
    // fields unchanged, and empty strings must stay empty.
    let c = load_with_env(
        None,
        env(&[
            ("MQBRIDGE__STORE__PATH", "0012"),
            ("MQBRIDGE__ADMIN__LISTEN", ""),
            ("MQBRIDGE__LOG__LEVEL", "warn,mqbridge=debug"),
            ("MQBRIDGE__MQTT__LISTEN", "[::1]:1883"),
        ]),
    )
    .expect("loads");
    assert_eq!(c.store.path, PathBuf::from("0012"));
    assert_eq!(c.admin.listen, "");
    assert_eq!(c.admin.listen_addr().expect("valid"), None);
    assert_eq!(c.log.level, "warn,mqbridge=debug");
    assert_eq!(c.mqtt.listen, "[::1]:1883");

    let c = load_with_env(None, env(&[("MQBRIDGE__STORE__PATH", "1e3")])).expect("loads");
    assert_eq!(c.store.path, PathBuf::from("1e3"));
}

#[test]
fn env_numbers_bools_and_enums_parse() {
    let c = load_with_env(
        None,
        env(&[
            ("MQBRIDGE__MQTT__MAX_PACKET_SIZE", "65536"),
            ("MQBRIDGE__SESSION__MAX_STORED_BYTES", "2147483648"),
            ("MQBRIDGE__MQTT__RETAIN_AVAILABLE", "false"),
            ("MQBRIDGE__SESSION__QUEUE_FULL_POLICY", "drop_oldest"),
        ]),
    )
    .expect("loads");
    assert_eq!(c.mqtt.max_packet_size, 65536);
    assert_eq!(c.session.max_stored_bytes, 2_147_483_648);
    assert!(!c.mqtt.retain_available);
    assert_eq!(c.queue_full_policy(), QueueFullPolicy::DropOldest);
}

#[test]
fn env_non_integer_for_integer_key_is_rejected() {
    for value in ["1.5", "lots", "-1", "70000"] {
        let e = load_with_env(None, env(&[("MQBRIDGE__MQTT__MAX_INFLIGHT", value)]))
            .expect_err("must fail");
        let msg = e.to_string();
        assert!(msg.contains("mqtt.max_inflight"), "{value}: {msg}");
    }
}

#[test]
fn env_bad_enum_is_rejected() {
    let e = load_with_env(
        None,
        env(&[("MQBRIDGE__SESSION__QUEUE_FULL_POLICY", "drop_newest")]),
    )
    .expect_err("must fail");
    let msg = e.to_string();
    assert!(msg.contains("drop_newest"), "{msg}");
    assert!(msg.contains("session.queue_full_policy"), "{msg}");
}

#[test]
fn unknown_keys_are_rejected() {
    let f = toml_file("[mqtt]\nlisten_port = 1883\n");
    let name = f
        .path()
        .file_name()
        .and_then(|n| n.to_str())
        .expect("utf-8 temp name")
        .to_owned();
    let e = load_isolated(Some(f.path())).expect_err("unknown key must fail");
    assert_eq!(e.key(), Some("mqtt.listen_port"), "{e}");
    let msg = e.to_string();
    assert!(msg.starts_with("mqtt.listen_port: unknown key"), "{msg}");
    assert!(msg.contains(&name), "{msg}");

    let msg = err_of("[kafka]\nbrokers = \"x\"\n");
    assert!(msg.starts_with("kafka: unknown key"), "{msg}");

    let msg = err_of("top_level = 1\n");
    assert!(msg.starts_with("top_level: unknown key"), "{msg}");

    let e = load_with_env(None, env(&[("MQBRIDGE__SESSION__MAX_QUEUE", "5")]))
        .expect_err("unknown env key must fail");
    assert_eq!(
        e.to_string(),
        "session.max_queue: unknown key (set in the environment)"
    );

    // A section given as a plain value is a type error naming the section.
    let e = load_with_env(None, env(&[("MQBRIDGE__MQTT", "x")])).expect_err("must fail");
    assert!(e.to_string().contains("`mqtt`"), "{e}");
}

#[test]
fn wrong_type_in_file_names_key() {
    let msg = err_of("[mqtt]\nmax_connections = \"lots\"\n");
    assert!(msg.contains("mqtt.max_connections"), "{msg}");
    let msg = err_of("[session]\nqueue_qos0_offline = \"maybe\"\n");
    assert!(msg.contains("session.queue_qos0_offline"), "{msg}");
}

#[test]
fn bad_toml_is_reported_with_file() {
    let f = toml_file("[mqtt\nlisten = \n");
    let e = load_isolated(Some(f.path())).expect_err("must fail");
    let name = f
        .path()
        .file_name()
        .and_then(|n| n.to_str())
        .expect("utf-8 temp name");
    assert!(e.to_string().contains(name), "{e}");
}

#[test]
fn missing_file_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nope.toml");
    let e = load_isolated(Some(&path)).expect_err("must fail");
    assert!(matches!(e, ConfigError::File { .. }), "{e:?}");
    assert!(e.to_string().contains("nope.toml"), "{e}");
    assert!(e.to_string().contains("not found"), "{e}");

    let e = load_isolated(Some(dir.path())).expect_err("a directory must fail");
    assert!(matches!(e, ConfigError::File { .. }), "{e:?}");
}

#[test]
fn each_validation_error_names_its_key() {
    type Mutate = fn(&mut Config);
    let cases: &[(&str, Mutate)] = &[
        ("log.level", |c| c.log.level = " ".into()),
        ("log.level", |c| c.log.level = "info,foo=notalevel".into()),
        ("mqtt.listen", |c| c.mqtt.listen = "abc".into()),
        ("mqtt.listen", |c| c.mqtt.listen = "".into()),
        ("mqtt.listen", |c| c.mqtt.listen = "localhost:1883".into()),
        ("mqtt.connect_timeout_secs", |c| {
            c.mqtt.connect_timeout_secs = 0
        }),
        ("mqtt.connect_timeout_secs", |c| {
            c.mqtt.connect_timeout_secs = u64::MAX
        }),
        ("mqtt.max_packet_size", |c| c.mqtt.max_packet_size = 63),
        ("mqtt.max_packet_size", |c| {
            c.mqtt.max_packet_size = 268_435_456
        }),
        ("mqtt.receive_maximum", |c| c.mqtt.receive_maximum = 0),
        ("mqtt.max_inflight", |c| c.mqtt.max_inflight = 0),
        ("mqtt.max_connections", |c| c.mqtt.max_connections = 0),
        ("mqtt.max_retained_bytes", |c| c.mqtt.max_retained_bytes = 0),
        ("mqtt.max_retained_payload_bytes", |c| {
            c.mqtt.max_retained_payload_bytes = 0
        }),
        ("mqtt.send_timeout_secs", |c| c.mqtt.send_timeout_secs = 0),
        ("mqtt.max_outbound_buffer_bytes", |c| {
            c.mqtt.max_outbound_buffer_bytes = 0
        }),
        ("mqtt.frame_timeout_secs", |c| c.mqtt.frame_timeout_secs = 0),
        ("mqtt.max_awaiting_rel", |c| c.mqtt.max_awaiting_rel = 0),
        ("mqtt.awaiting_rel_timeout_secs", |c| {
            c.mqtt.awaiting_rel_timeout_secs = 0
        }),
        ("session.v311_session_expiry_secs", |c| {
            c.session.v311_session_expiry_secs = 0
        }),
        ("session.max_queued_messages", |c| {
            c.session.max_queued_messages = 0
        }),
        ("session.max_queued_bytes", |c| {
            c.session.max_queued_bytes = 0
        }),
        ("session.expiry_check_interval_secs", |c| {
            c.session.expiry_check_interval_secs = 0
        }),
        ("store.path", |c| c.store.path = PathBuf::new()),
        ("store.max_batch_ops", |c| c.store.max_batch_ops = 0),
        ("store.queue_capacity", |c| c.store.queue_capacity = 0),
        ("store.free_space_check_interval_ms", |c| {
            c.store.free_space_check_interval_ms = 0
        }),
        ("store.free_space_check_interval_ms", |c| {
            c.store.free_space_check_interval_ms = 60_001
        }),
        ("store.commit_retry_max_secs", |c| {
            c.store.commit_retry_max_secs = u64::MAX
        }),
        ("admin.listen", |c| c.admin.listen = "9090".into()),
        ("server.shutdown_grace_secs", |c| {
            c.server.shutdown_grace_secs = 0
        }),
    ];
    for (key, mutate) in cases {
        let mut c = Config::default();
        mutate(&mut c);
        let e = one_error(c.validate()).expect_err(key);
        assert_eq!(e.key(), Some(*key), "{e}");
        assert!(e.to_string().starts_with(&format!("{key}: ")), "{e}");
    }
}

#[test]
fn boundary_values_are_accepted() {
    let mut c = Config::default();
    c.mqtt.max_packet_size = MIN_PACKET_SIZE;
    c.validate().expect("min packet size");
    c.mqtt.max_packet_size = MAX_PACKET_SIZE;
    c.validate().expect("max packet size");
    c.mqtt.topic_alias_maximum = 0;
    c.mqtt.max_keepalive_secs = 0;
    c.mqtt.max_connections_per_ip = 0;
    c.mqtt.max_connection_rate = 0;
    c.mqtt.max_retained_messages = 0;
    c.mqtt.max_delayed_wills = 0;
    c.mqtt.max_delayed_will_bytes = 0;
    c.session.max_persistent_sessions_per_user = 0;
    c.session.max_persistent_sessions_per_ip = 0;
    c.session.max_session_expiry_secs = 0;
    c.session.max_persistent_sessions = 0;
    c.store.cache_mb = 0;
    c.admin.listen = String::new();
    c.validate().expect("zero where zero is allowed");
}

#[test]
fn invalid_file_value_fails_load_with_key() {
    let msg = err_of("[mqtt]\nlisten = \"abc\"\n");
    assert!(
        msg.starts_with("mqtt.listen: invalid socket address \"abc\""),
        "{msg}"
    );
}

#[test]
fn helpers() {
    let c = Config::default();
    assert_eq!(c.mqtt.connect_timeout(), Duration::from_secs(10));
    assert_eq!(c.mqtt.max_keepalive(), None);
    assert_eq!(c.mqtt.send_timeout(), Duration::from_secs(30));
    assert_eq!(c.session.expiry_check_interval(), Duration::from_secs(5));
    assert_eq!(c.server.shutdown_grace(), Duration::from_secs(10));
    assert_eq!(c.store.cache_bytes(), 64 * 1024 * 1024);
    assert_eq!(
        c.admin.listen_addr().expect("valid"),
        Some("127.0.0.1:9883".parse().expect("literal"))
    );
}

#[test]
fn every_repo_config_file_loads_and_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("config/ exists") {
        let path = entry.expect("dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        if path.ends_with("production.toml") {
            // It names files under /etc/mqbridge and a token in the
            // environment: those are the only problems it may have here
            // (tests/process/production.rs runs it with real files).
            let loaded = super::load(Some(&path)).expect("production.toml loads");
            let errors = loaded.validate().err().unwrap_or_default();
            for e in &errors {
                let text = e.to_string();
                assert!(
                    text.contains("/etc/mqbridge/") || text.contains("MQBRIDGE_ADMIN_TOKEN"),
                    "production.toml: {text}"
                );
            }
            checked.push(path);
            continue;
        }
        if let Err(e) = load_isolated(Some(&path)) {
            panic!("{}: {e}", path.display());
        }
        checked.push(path);
    }
    assert!(
        checked.iter().any(|p| p.ends_with("default.toml")),
        "default.toml not found among {checked:?}"
    );
}

/// A file's `[[bridge.*]]` arrays replace the defaults' (the `config` crate
/// must not merge array entries by index into mixed backends).
#[test]
fn example_configs_replace_the_default_bridge() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let kafka = load_isolated(Some(&dir.join("kafka.toml"))).expect("kafka.toml loads");
    assert_eq!(kafka.bridge.backends.len(), 1);
    assert!(
        matches!(&kafka.bridge.backends[0], BackendConfig::Kafka(k) if k.bootstrap_servers == "127.0.0.1:9092")
    );
    assert_eq!(kafka.bridge.uplink.len(), 1);
    assert_eq!(kafka.bridge.uplink[0].target, "mqbridge.telemetry");
    let rabbit = load_isolated(Some(&dir.join("rabbitmq.toml"))).expect("rabbitmq.toml loads");
    assert!(
        matches!(&rabbit.bridge.backends[0], BackendConfig::Amqp(a) if a.exchange == "mqbridge.telemetry")
    );
    assert_eq!(
        rabbit.bridge.uplink[0].routing_key.as_deref(),
        Some("{topic_dotted}")
    );
}

#[test]
fn topic_limits_are_range_checked() {
    for (key, set) in [
        (
            "mqtt.max_topic_levels",
            (|c: &mut Config, v| c.mqtt.max_topic_levels = v) as fn(&mut Config, usize),
        ),
        ("mqtt.max_topic_bytes", |c: &mut Config, v| {
            c.mqtt.max_topic_bytes = v
        }),
    ] {
        for bad in [0, 65536] {
            let mut c = Config::default();
            set(&mut c, bad);
            let e = one_error(c.validate()).unwrap_err();
            assert_eq!(e.key(), Some(key), "{bad}: {e}");
        }
        let mut c = Config::default();
        set(&mut c, 65535);
        c.validate().unwrap();
    }
}

#[test]
fn removed_keep_alive_key_names_its_replacement() {
    let msg = err_of("[mqtt]\nserver_keep_alive_secs = 60\n");
    assert!(
        msg.starts_with("mqtt.server_keep_alive_secs: removed: use mqtt.max_keepalive_secs"),
        "{msg}"
    );
}

/// The keys of every problem `toml` has, sorted; checks that every error
/// names its key in its message.
fn problem_keys(toml: &str) -> Vec<String> {
    let f = toml_file(toml);
    let config = super::load_with_env(Some(f.path()), env(&[])).expect("loads");
    let errors = config.validate().expect_err("invalid");
    let mut keys = Vec::new();
    for e in &errors {
        let Some(key) = e.key() else {
            panic!("{e} names no key");
        };
        assert!(e.to_string().contains(key), "{e} does not name {key}");
        keys.push(key.to_owned());
    }
    keys.sort_unstable();
    keys
}

/// Values of the wrong type are reported with the other problems, one per
/// section (serde stops at the first wrong value of a section; the section
/// keeps its defaults meanwhile, so the others are still checked).
#[test]
fn wrong_types_are_reported_with_the_other_problems() {
    let keys = problem_keys(
        "[mqtt]\nmax_connections = \"lots\"\n\
         [store]\ncache_mb = -1\n\
         [server]\nshutdown_grace_secs = 0\n\
         [kafka]\nbrokers = \"x\"\n",
    );
    assert_eq!(
        keys,
        [
            "kafka",
            "mqtt.max_connections",
            "server.shutdown_grace_secs",
            "store.cache_mb"
        ]
    );
}

/// One run reports every problem: unknown and removed keys with the
/// values that are out of range or not parsable, in every section.
#[test]
fn every_problem_is_reported_at_once() {
    let keys = problem_keys(
        "[mqtt]\nlisten = \"nowhere\"\nmax_inflight = 0\nlisten_port = 1\nserver_keep_alive_secs = 5\n\
         [session]\nqueue_full_policy = \"drop_newest\"\n\
         [store]\nqueue_capacity = 0\n\
         [admin]\nlisten = \"9090\"\n\
         [server]\nshutdown_grace_secs = 0\n\
         [log]\nlevel = \"info,x=loud\"\n\
         [kafka]\nbrokers = \"x\"\n",
    );
    assert_eq!(
        keys,
        [
            "admin.listen",
            "kafka",
            "log.level",
            "mqtt.listen",
            "mqtt.listen_port",
            "mqtt.max_inflight",
            "mqtt.server_keep_alive_secs",
            "server.shutdown_grace_secs",
            "session.queue_full_policy",
            "store.queue_capacity",
        ]
    );
}

/// `mqtt.listen = ""` turns the plain listener off; with no other listener
/// that is a configuration error (nobody could connect).
#[test]
fn no_listener_at_all_is_refused() {
    let mut c = Config::default();
    c.mqtt.listen = String::new();
    let errors = c.validate().expect_err("no listener");
    assert!(
        errors.iter().any(|e| e.key() == Some("mqtt.listen")),
        "{errors:?}"
    );
    let mut c = Config::default();
    c.mqtt.listen = String::new();
    c.mqtt
        .listeners
        .push(crate::config::listeners::ListenerConfig {
            name: "tcp".into(),
            kind: "tcp".into(),
            listen: "127.0.0.1:0".into(),
            cert_file: String::new(),
            key_file: String::new(),
            client_ca_file: String::new(),
            client_certificates: "none".into(),
            min_tls_version: "1.2".into(),
            path: String::new(),
            auth: None,
            allow_anonymous: None,
        });
    let v = c
        .validate()
        .expect("the name tcp is free when mqtt.listen is off");
    assert_eq!(v.listeners().len(), 1);
}

/// `[[mqtt.listeners]]` read from a file, optional keys defaulted; an
/// unknown key inside an entry is refused.
#[test]
fn listeners_load_from_a_file() {
    // A method that can accept on a plain TCP listener ("certificate" needs
    // client certificates): the password file, here with no user.
    let passwords = toml_file("# no users yet\n");
    let f = toml_file(&format!(
        "[[mqtt.listeners]]\nname = \"web\"\nkind = \"ws\"\nlisten = \"127.0.0.1:8080\"\n\
         [[mqtt.listeners]]\nname = \"more\"\nkind = \"tcp\"\nlisten = \"127.0.0.1:1884\"\nallow_anonymous = false\n\
         auth = [\"password_file\"]\n[auth]\npassword_file = {:?}\n",
        passwords.path()
    ));
    let v = load_isolated(Some(f.path())).expect("valid");
    let names: Vec<&str> = v.listeners().iter().map(|l| &*l.name).collect();
    assert_eq!(names, ["tcp", "web", "more"]);
    assert_eq!(v.listeners()[1].path, "/mqtt");
    assert_eq!(v.listeners()[2].allow_anonymous, Some(false));
    // Anonymous access off with no method at all is refused.
    let e = err_of(
        "[[mqtt.listeners]]\nname = \"more\"\nkind = \"tcp\"\nlisten = \"127.0.0.1:1884\"\nallow_anonymous = false\n",
    );
    assert!(e.contains("mqtt.listeners[0].allow_anonymous"), "{e}");
    let e = err_of(
        "[[mqtt.listeners]]\nname = \"web\"\nkind = \"ws\"\nlisten = \"127.0.0.1:8080\"\nport = 1\n",
    );
    assert!(e.contains("port"), "{e}");
}

#[test]
fn log_format_is_text_by_default_json_on_request_and_checked() {
    let c = load_isolated(None).expect("valid");
    assert_eq!(c.log_format(), LogFormat::Text);
    let c = load_with_env(None, env(&[("MQBRIDGE__LOG__FORMAT", "json")])).expect("valid");
    assert_eq!(c.log_format(), LogFormat::Json);
    let e = load_with_env(None, env(&[("MQBRIDGE__LOG__FORMAT", "xml")])).expect_err("must fail");
    let msg = e.to_string();
    assert!(msg.contains("log.format") && msg.contains("xml"), "{msg}");
}

#[test]
fn cluster_needs_a_kafka_backend_and_valid_settings() {
    let mut c = Config::default();
    c.cluster.enabled = true;
    c.cluster.node_id = "bad id".into();
    c.cluster.topic_prefix = "a/b".into();
    c.cluster.partitions = 0;
    c.cluster.node_timeout_secs = 0;
    c.cluster.advertise = "nohost".into();
    let errors = c.validate().expect_err("invalid");
    let keys: Vec<String> = errors
        .iter()
        .filter_map(|e| e.key().map(str::to_owned))
        .collect();
    for key in [
        "cluster.node_id",
        "cluster.backend",
        "cluster.topic_prefix",
        "cluster.partitions",
        "cluster.node_timeout_secs",
        "cluster.advertise",
    ] {
        assert!(
            keys.iter().any(|k| k == key),
            "{key} not reported: {keys:?}"
        );
    }
    // Off, none of it is checked.
    c.cluster.enabled = false;
    assert!(c.validate().is_ok());
}
