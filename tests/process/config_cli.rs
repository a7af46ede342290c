//! The `mqbridge` binary's command line and configuration errors, run as a
//! child process: a bad configuration must stop it before it binds anything,
//! with a message on stderr that names the problem.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Exit code of the binary for an invalid configuration (EX_CONFIG, see `src/main.rs`).
const EXIT_CONFIG: i32 = 78;

/// The binary with a clean slate: no inherited `MQBRIDGE__*` variables or
/// `RUST_LOG`, and a store path and admin setting that cannot touch anything
/// outside `dir` should a check unexpectedly let it start.
fn mqbridge(dir: &Path) -> Command {
    let mut cmd = crate::mqbridge_command();
    cmd.env_remove("RUST_LOG")
        .env("MQBRIDGE__STORE__PATH", dir.join("store"))
        .env("MQBRIDGE__ADMIN__LISTEN", "")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs `cmd` to completion, failing the test if it is still running after
/// `secs` seconds (an invalid configuration must not start the gateway).
fn run_bounded(mut cmd: Command, secs: u64) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = cmd.spawn().expect("spawn mqbridge");
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            break;
        }
        if started.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect output");
            panic!(
                "mqbridge still running after {secs} s (it should have exited); stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = started.elapsed();
    (child.wait_with_output().expect("collect output"), elapsed)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn default_toml() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml")
}

/// Asserts the run failed as a configuration error, with `needles` in stderr,
/// and that it did not get as far as creating the store.
fn assert_config_error(out: &Output, dir: &Path, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(
        out.status.code(),
        Some(EXIT_CONFIG),
        "expected exit code {EXIT_CONFIG} (invalid configuration), got {:?}; stderr:\n{err}",
        out.status
    );
    for n in needles {
        assert!(err.contains(n), "stderr should mention {n:?}; got:\n{err}");
    }
    assert!(
        !dir.join("store").exists(),
        "an invalid configuration must be refused before the store is opened"
    );
}

#[test]
fn missing_config_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = mqbridge(dir.path());
    cmd.args(["--config", "nonexistent.toml"]);
    let (out, _) = run_bounded(cmd, 10);
    assert_config_error(&out, dir.path(), &["nonexistent.toml", "not found"]);
}

#[test]
fn invalid_listen_address_from_env_is_reported_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = mqbridge(dir.path());
    cmd.env("MQBRIDGE__MQTT__LISTEN", "not-an-addr");
    // Validation happens before anything starts, so it exits rather than
    // waiting; the bound only catches a hang (a tight one would fail on a
    // loaded machine for no fault of the gateway).
    let (out, _) = run_bounded(cmd, 10);
    assert_config_error(&out, dir.path(), &["mqtt.listen", "not-an-addr"]);
}

/// A valid `mqtt.listen` with another invalid key: the listener port must not
/// be bound, not even briefly. Checked by holding the port ourselves: if the
/// binary tried to bind it, it would fail with a bind error (exit 1), not a
/// configuration error (exit 78).
#[test]
fn invalid_value_stops_before_the_listener_is_bound() {
    let dir = tempfile::tempdir().unwrap();
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap();
    let mut cmd = mqbridge(dir.path());
    cmd.env("MQBRIDGE__MQTT__LISTEN", addr.to_string())
        .env("MQBRIDGE__SERVER__SHUTDOWN_GRACE_SECS", "0");
    let (out, _) = run_bounded(cmd, 10);
    assert_config_error(&out, dir.path(), &["server.shutdown_grace_secs"]);
    let err = stderr(&out);
    assert!(!err.contains("binding"), "stderr:\n{err}");
    drop(held);
}

#[test]
fn check_config_accepts_the_default_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = mqbridge(dir.path());
    cmd.arg("--check-config")
        .arg("--config")
        .arg(default_toml());
    let (out, _) = run_bounded(cmd, 10);
    assert!(
        out.status.success(),
        "status {:?}; stderr:\n{}",
        out.status,
        stderr(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("valid"), "stdout: {stdout}");
    assert!(
        !dir.path().join("store").exists(),
        "--check-config must not open the store"
    );
}

#[test]
fn check_config_without_file_uses_builtin_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = mqbridge(dir.path());
    cmd.arg("--check-config");
    let (out, _) = run_bounded(cmd, 10);
    assert!(
        out.status.success(),
        "status {:?}; stderr:\n{}",
        out.status,
        stderr(&out)
    );
}

#[test]
fn check_config_rejects_an_invalid_env_value() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = mqbridge(dir.path());
    cmd.arg("--check-config")
        .env("MQBRIDGE__MQTT__MAX_PACKET_SIZE", "10");
    let (out, _) = run_bounded(cmd, 10);
    assert_config_error(&out, dir.path(), &["mqtt.max_packet_size"]);
}

#[test]
fn unknown_key_in_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[mqtt]\nlisten = \"127.0.0.1:0\"\nlisten_port = 1883\n",
    )
    .unwrap();
    let mut cmd = mqbridge(dir.path());
    cmd.arg("--config").arg(&file);
    let (out, _) = run_bounded(cmd, 10);
    assert_config_error(&out, dir.path(), &["mqtt.listen_port", "unknown key"]);
}

#[test]
fn unknown_section_in_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[mqttt]\nlisten = \"127.0.0.1:0\"\n").unwrap();
    let mut cmd = mqbridge(dir.path());
    cmd.arg("--config").arg(&file);
    let (out, _) = run_bounded(cmd, 10);
    assert_config_error(&out, dir.path(), &["mqttt", "unknown key"]);
}

#[test]
fn unknown_key_in_env_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = mqbridge(dir.path());
    cmd.env("MQBRIDGE__MQTT__LISTEN_PORT", "1883");
    let (out, _) = run_bounded(cmd, 10);
    assert_config_error(&out, dir.path(), &["mqtt.listen_port", "unknown key"]);
}

#[test]
fn wrong_type_in_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[mqtt]\nmax_packet_size = \"big\"\n").unwrap();
    let mut cmd = mqbridge(dir.path());
    cmd.arg("--config").arg(&file);
    let (out, _) = run_bounded(cmd, 10);
    assert_config_error(&out, dir.path(), &["max_packet_size"]);
}

#[test]
fn file_value_is_overridden_by_env() {
    // The file holds an invalid address; the environment replaces it with a valid one.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cfg.toml");
    std::fs::write(&file, "[mqtt]\nlisten = \"nope\"\n").unwrap();
    let mut cmd = mqbridge(dir.path());
    cmd.arg("--check-config")
        .arg("--config")
        .arg(&file)
        .env("MQBRIDGE__MQTT__LISTEN", "127.0.0.1:0");
    let (out, _) = run_bounded(cmd, 10);
    assert!(
        out.status.success(),
        "status {:?}; stderr:\n{}",
        out.status,
        stderr(&out)
    );
}

/// Five mistakes in four sections: an `http://` AMQP URI, an unknown AMQP
/// `exchange_kind`, an unknown Kafka `compression`, an unknown
/// `session.queue_full_policy` and an out-of-range `mqtt.max_packet_size`.
const FIVE_MISTAKES: &str = r#"
[mqtt]
max_packet_size = 10

[session]
queue_full_policy = "drop_newest"

[[bridge.backends]]
kind = "amqp"
name = "rabbit"
uri = "http://127.0.0.1:5672/%2f"
exchange = "telemetry"
exchange_kind = "fanciful"

[[bridge.backends]]
kind = "kafka"
name = "kafka"
bootstrap_servers = "127.0.0.1:9092"
compression = "brotli"

[[bridge.uplink]]
name = "telemetry"
filter = "devices/#"
backend = "rabbit"
target = "telemetry"
"#;

/// The lines of `stderr` that report a configuration error.
fn config_error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("mqbridge: invalid configuration: "))
        .collect()
}

/// Every mistake is reported in one run, one line each with its key, with
/// exit 78; and no port was bound: nothing answered on the MQTT or admin
/// port while the binary ran, nothing was logged as listening, and both
/// ports can be bound right after it exited.
#[test]
fn every_mistake_is_reported_at_once_before_any_port_is_bound() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("five.toml");
    std::fs::write(&file, FIVE_MISTAKES).unwrap();
    // Free ports: bound by the OS for us, then released for the binary.
    let free_port = || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (mqtt, admin) = (free_port(), free_port());
    let mut cmd = mqbridge(dir.path());
    cmd.arg("--config")
        .arg(&file)
        .env("MQBRIDGE__MQTT__LISTEN", mqtt.to_string())
        .env("MQBRIDGE__ADMIN__LISTEN", admin.to_string())
        .env("RUST_LOG", "info");

    // Probe both ports for as long as the binary runs.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probe = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut answered = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                for addr in [mqtt, admin] {
                    let timeout = Duration::from_millis(50);
                    if std::net::TcpStream::connect_timeout(&addr, timeout).is_ok() {
                        answered.push(addr);
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            answered
        })
    };
    let (out, _) = run_bounded(cmd, 10);
    done.store(true, std::sync::atomic::Ordering::Release);
    let answered = probe.join().unwrap();

    let err = stderr(&out);
    assert_config_error(&out, dir.path(), &[]);
    let lines = config_error_lines(&err);
    let expected = [
        ("mqtt.max_packet_size", "10"),
        ("session.queue_full_policy", "drop_newest"),
        ("bridge.backends", "http"),
        ("bridge.backends", "fanciful"),
        ("bridge.backends", "brotli"),
    ];
    for (key, value) in expected {
        assert!(
            lines.iter().any(|l| l.contains(key) && l.contains(value)),
            "no error line names {key} with {value:?}; stderr:\n{err}"
        );
    }
    assert_eq!(
        lines.len(),
        expected.len(),
        "one line per mistake; stderr:\n{err}"
    );
    assert!(
        !err.contains("listening") && !err.contains("started"),
        "stderr:\n{err}"
    );
    assert!(answered.is_empty(), "answered during the run: {answered:?}");
    for addr in [mqtt, admin] {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            panic!("{addr} is not free after the run: {e}");
        }
    }
}

/// `--check-config` reports the same problems, the same way.
#[test]
fn check_config_reports_every_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("five.toml");
    std::fs::write(&file, FIVE_MISTAKES).unwrap();
    let mut cmd = mqbridge(dir.path());
    cmd.arg("--check-config").arg("--config").arg(&file);
    let (out, _) = run_bounded(cmd, 10);
    assert_config_error(&out, dir.path(), &["drop_newest", "brotli"]);
    assert_eq!(
        config_error_lines(&stderr(&out)).len(),
        5,
        "{}",
        stderr(&out)
    );
}

/// A bad ACL rule and a bad line in the acl_file: exit 78 naming both,
/// before the held listener port is bound.
#[test]
fn bad_acl_rules_and_file_stop_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std::fs::write(
        dir.path().join("bad.acl"),
        "pattern read devices/%u/commands\nuser\n",
    )
    .unwrap();
    let toml = "[acl]\nfile = \"bad.acl\"\n\n[[acl.rules]]\npermission = \"permit\"\n\
                action = \"publish\"\ntopic = \"devices/%u/#\"\n";
    std::fs::write(dir.path().join("acl.toml"), toml).unwrap();
    let mut cmd = mqbridge(dir.path());
    cmd.args(["--config", "acl.toml"]).env(
        "MQBRIDGE__MQTT__LISTEN",
        held.local_addr().unwrap().to_string(),
    );
    let (out, _) = run_bounded(cmd, 10);
    assert_config_error(
        &out,
        dir.path(),
        &["acl.rules[0].permission", "acl.file", "bad.acl: line 2"],
    );
    assert!(!stderr(&out).contains("binding"));
    drop(held);
}
