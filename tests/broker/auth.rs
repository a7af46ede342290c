//! Authentication (docs/security.md section 2): a password file written by
//! Debian's `mosquitto_passwd` ($7$ and $6$) is accepted; wrong passwords,
//! unknown users and missing credentials are refused with the 3.1.1 and
//! 5.0 codes, by rumqttc, `mosquitto_pub` and paho; repeated failures from one
//! address are slowed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mqbridge::config::Config;

use crate::common::{self, b4, b5, opts_v4, opts_v5, scrape, service, TestGateway};

/// A password file made by `mosquitto_passwd`: alice with the default
/// ($7$, PBKDF2-SHA512), bob with `-H sha512` ($6$). `None` when the tool is
/// missing (recorded; fails under CI).
fn mosquitto_password_file(dir: &Path) -> Option<PathBuf> {
    let path = dir.join("passwords");
    let p = path.to_str().expect("utf-8 temp path");
    for args in [
        vec!["-c", "-b", p, "alice", "s3cret"],
        vec!["-H", "sha512", "-b", p, "bob", "hunter2"],
    ] {
        match std::process::Command::new("mosquitto_passwd")
            .args(&args)
            .status()
        {
            Ok(s) => assert!(s.success(), "mosquitto_passwd {args:?} failed"),
            Err(_) => {
                service::missing("mosquitto_passwd (Debian package mosquitto)");
                return None;
            }
        }
    }
    let text = std::fs::read_to_string(&path).expect("password file");
    assert!(
        text.contains("alice:$7$") && text.contains("bob:$6$"),
        "{text}"
    );
    Some(path)
}

fn with_password_file(cfg: &mut Config, file: &Path) {
    cfg.auth.methods = vec!["password_file".into()];
    cfg.auth.allow_anonymous = false;
    cfg.auth.password_file = file.to_path_buf();
    cfg.admin.listen = "127.0.0.1:0".into();
}

async fn start_with_passwords(
    dir: &Path,
    f: impl FnOnce(&mut Config),
) -> Option<(TestGateway, PathBuf)> {
    let file = mosquitto_password_file(dir)?;
    let t = common::start_with(|cfg| {
        with_password_file(cfg, &file);
        f(cfg);
    })
    .await;
    Some((t, file))
}

fn v4(t: &TestGateway, id: &str, login: Option<(&str, &str)>) -> rumqttc::MqttOptions {
    let mut o = opts_v4(t.addr, id, true);
    if let Some((u, p)) = login {
        o.set_credentials(u, p);
    }
    o
}

fn v5(t: &TestGateway, id: &str, login: Option<(&str, &str)>) -> rumqttc::v5::MqttOptions {
    let mut o = opts_v5(t.addr, id, true, None);
    if let Some((u, p)) = login {
        o.set_credentials(u, p);
    }
    o
}

async fn v4_refusal(o: rumqttc::MqttOptions) -> rumqttc::ConnectReturnCode {
    match b4::try_connect(o).await {
        Err(rumqttc::ConnectionError::ConnectionRefused(code)) => code,
        Err(e) => panic!("expected a refusing CONNACK, got {e:?}"),
        Ok(_) => panic!("expected a refusal, the client connected"),
    }
}

async fn v5_refusal(o: rumqttc::v5::MqttOptions) -> rumqttc::v5::mqttbytes::v5::ConnectReturnCode {
    match b5::try_connect(o).await {
        Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => code,
        Err(e) => panic!("expected a refusing CONNACK, got {e:?}"),
        Ok(_) => panic!("expected a refusal, the client connected"),
    }
}

#[tokio::test]
async fn mosquitto_passwd_file_accepts_the_right_password_only() {
    use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as C5;
    use rumqttc::ConnectReturnCode as C4;
    let dir = tempfile::tempdir().unwrap();
    // No delay here: this test is about the codes.
    let Some((t, _)) =
        start_with_passwords(dir.path(), |c| c.auth.failure_delay_after = 1000).await
    else {
        return;
    };
    // Both hash formats, both protocol versions.
    b4::connect(v4(&t, "a4", Some(("alice", "s3cret"))))
        .await
        .disconnect()
        .await;
    b4::connect(v4(&t, "b4", Some(("bob", "hunter2"))))
        .await
        .disconnect()
        .await;
    b5::connect(v5(&t, "a5", Some(("alice", "s3cret"))))
        .await
        .disconnect()
        .await;
    b5::connect(v5(&t, "b5", Some(("bob", "hunter2"))))
        .await
        .disconnect()
        .await;

    assert_eq!(
        v4_refusal(v4(&t, "x", Some(("alice", "S3cret")))).await,
        C4::BadUserNamePassword
    );
    assert_eq!(
        v4_refusal(v4(&t, "x", Some(("bob", "s3cret")))).await,
        C4::BadUserNamePassword,
        "another user's password"
    );
    assert_eq!(
        v4_refusal(v4(&t, "x", Some(("carol", "s3cret")))).await,
        C4::BadUserNamePassword,
        "unknown user"
    );
    assert_eq!(v4_refusal(v4(&t, "x", None)).await, C4::NotAuthorized);
    assert_eq!(
        v5_refusal(v5(&t, "x", Some(("alice", "nope")))).await,
        C5::BadUserNamePassword
    );
    assert_eq!(v5_refusal(v5(&t, "x", None)).await, C5::NotAuthorized);

    let sample = |method: &str, result: &str| {
        format!("mqbridge_auth_results_total{{listener=\"tcp\",method=\"{method}\",result=\"{result}\"}}")
    };
    assert_eq!(
        scrape(&t, &sample("password_file", "accepted")).await,
        Some(4.0)
    );
    assert_eq!(
        scrape(&t, &sample("password_file", "bad_credentials")).await,
        Some(4.0)
    );
    assert_eq!(
        scrape(&t, &sample("none", "not_authorized")).await,
        Some(2.0)
    );
    t.gw.shutdown().await;
}

/// `mosquitto_pub` exit status with these credentials (none: `None`).
async fn mosquitto_pub(port: u16, version: &str, login: Option<(&str, &str)>) -> bool {
    let port = port.to_string();
    let mut args = vec![
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-V",
        version,
        "-q",
        "1",
        "-t",
        "auth/x",
        "-m",
        "m",
    ];
    if let Some((u, p)) = login {
        args.extend(["-u", u, "-P", p]);
    }
    tokio::process::Command::new("mosquitto_pub")
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .expect("mosquitto_pub runs")
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_pub_is_let_in_with_the_right_password_only() {
    if !service::program(
        "mosquitto_pub",
        "mosquitto_pub (Debian package mosquitto-clients)",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some((t, _)) =
        start_with_passwords(dir.path(), |c| c.auth.failure_delay_after = 1000).await
    else {
        return;
    };
    let port = t.addr.port();
    for version in ["mqttv311", "mqttv5"] {
        assert!(
            mosquitto_pub(port, version, Some(("alice", "s3cret"))).await,
            "{version}"
        );
        assert!(
            mosquitto_pub(port, version, Some(("bob", "hunter2"))).await,
            "{version}"
        );
        assert!(
            !mosquitto_pub(port, version, Some(("alice", "wrong"))).await,
            "{version}"
        );
        assert!(!mosquitto_pub(port, version, None).await, "{version}");
    }
    t.gw.shutdown().await;
}

/// From the `failure_delay_after`-th failure, each refusing CONNACK comes no
/// earlier than 100 ms × 2^(n − after), capped: lower bounds only, so a slow
/// machine cannot fail it, and a gateway that does not delay always does.
#[tokio::test]
async fn repeated_failures_from_one_address_are_slowed() {
    let dir = tempfile::tempdir().unwrap();
    let Some((t, _)) = start_with_passwords(dir.path(), |c| {
        c.auth.failure_delay_after = 2;
        c.auth.failure_delay_max_ms = 400;
    })
    .await
    else {
        return;
    };
    // Exported from start-up, at 0.
    assert_eq!(
        scrape(&t, "mqbridge_auth_delayed_total{listener=\"tcp\"}").await,
        Some(0.0)
    );
    let expected_ms = [0u64, 100, 200, 400, 400];
    for (i, min) in expected_ms.iter().enumerate() {
        let started = Instant::now();
        let code = v4_refusal(v4(&t, "brute", Some(("alice", "guess")))).await;
        let took = started.elapsed();
        assert_eq!(code, rumqttc::ConnectReturnCode::BadUserNamePassword);
        assert!(
            took >= Duration::from_millis(*min),
            "failure {}: refused after {took:?}, expected at least {min} ms",
            i + 1
        );
    }
    assert_eq!(
        scrape(&t, "mqbridge_auth_delayed_total{listener=\"tcp\"}").await,
        Some(4.0)
    );
    // The right password still gets in (and is not counted as delayed).
    b4::connect(v4(&t, "alice", Some(("alice", "s3cret"))))
        .await
        .disconnect()
        .await;
    assert_eq!(
        scrape(&t, "mqbridge_auth_delayed_total{listener=\"tcp\"}").await,
        Some(4.0)
    );
    t.gw.shutdown().await;
}

/// With `ban_after`, the address is closed at accept for `ban_secs`, even
/// with the right password.
#[tokio::test]
async fn a_banned_address_is_closed_before_connect() {
    let dir = tempfile::tempdir().unwrap();
    let Some((t, _)) = start_with_passwords(dir.path(), |c| {
        c.auth.failure_delay_after = 1000;
        c.auth.ban_after = 2;
        c.auth.ban_secs = 3600;
    })
    .await
    else {
        return;
    };
    for _ in 0..2 {
        v4_refusal(v4(&t, "brute", Some(("alice", "guess")))).await;
    }
    match b4::try_connect(v4(&t, "alice", Some(("alice", "s3cret")))).await {
        Ok(_) => panic!("a banned address connected"),
        Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
            panic!("a banned address got a CONNACK ({code:?}) instead of a close")
        }
        Err(_) => {}
    }
    assert_eq!(scrape(&t, "mqbridge_auth_bans_total").await, Some(1.0));
    assert_eq!(
        scrape(
            &t,
            "mqbridge_mqtt_connections_refused_total{listener=\"tcp\",reason=\"banned\"}"
        )
        .await,
        Some(1.0)
    );
    t.gw.shutdown().await;
}

/// The embedded default still lets anyone in, and takes the user name as
/// given (for templates and the `mqtt_username` header).
#[tokio::test]
async fn the_default_lets_anonymous_and_named_clients_in() {
    let t = common::start().await;
    b4::connect(opts_v4(t.addr, "anon", true))
        .await
        .disconnect()
        .await;
    let mut o = opts_v4(t.addr, "named", true);
    o.set_credentials("anyone", "anything");
    b4::connect(o).await.disconnect().await;
    t.gw.shutdown().await;
}

/// Python paho's view: the return code / reason code of the CONNACK.
async fn paho_code(port: u16, version: &str, user: &str, password: &str) -> String {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/auth_paho.py");
    let out = crate::common::within(
        20,
        tokio::process::Command::new("python3")
            .arg(script)
            .args([&port.to_string(), version, "paho-auth", user, password])
            .output(),
    )
    .await
    .expect("python3 runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_sees_the_refusal_codes() {
    if !service::tool(
        "python3",
        &["-c", "import paho.mqtt"],
        None,
        "Python paho-mqtt",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some((t, _)) =
        start_with_passwords(dir.path(), |c| c.auth.failure_delay_after = 1000).await
    else {
        return;
    };
    let port = t.addr.port();
    assert_eq!(paho_code(port, "311", "alice", "s3cret").await, "0");
    assert_eq!(paho_code(port, "311", "alice", "wrong").await, "4");
    assert_eq!(paho_code(port, "5", "bob", "hunter2").await, "0");
    assert_eq!(paho_code(port, "5", "bob", "wrong").await, "134");
    t.gw.shutdown().await;
}
