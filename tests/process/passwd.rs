//! `mqbridge passwd FILE USER`: the file it writes is read by Debian's
//! Mosquitto broker (2.0.11) and by the gateway, with the same answers.
//! The binary's start-up warning about anonymous access, and SIGHUP
//! re-reading the password file.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{self, b4, opts_v4, service};

/// Runs `mqbridge passwd` with `stdin` piped in; returns whether it succeeded.
fn passwd(file: &Path, args: &[&str], stdin: &str) -> bool {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mqbridge"))
        .arg("passwd")
        .arg(file)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("mqbridge passwd runs");
    if let Some(mut i) = child.stdin.take() {
        i.write_all(stdin.as_bytes()).expect("stdin");
    }
    child.wait().expect("mqbridge passwd ends").success()
}

async fn mosquitto_pub(port: u16, user: &str, password: &str) -> bool {
    let port = port.to_string();
    tokio::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "x",
            "-m",
            "m",
            "-u",
            user,
            "-P",
            password,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .expect("mosquitto_pub runs")
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwd_writes_a_file_mosquitto_and_the_gateway_accept() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwords");
    assert!(passwd(&file, &["dev1", "--password-stdin"], "pw-one\n"));
    assert!(passwd(&file, &["dev2"], "pw-two\n"));
    assert!(passwd(&file, &["dev3"], "pw-three\n"));
    assert!(passwd(&file, &["dev3", "--delete"], ""));
    assert!(!passwd(&file, &["dev3", "--delete"], ""), "already gone");
    assert!(!passwd(&file, &["a:b"], "x\n"), "':' in a user name");
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.lines().all(|l| l.contains(":$7$1000$")), "{text}");

    // The gateway.
    let t = common::start_with(|cfg| {
        cfg.auth.methods = vec!["password_file".into()];
        cfg.auth.allow_anonymous = false;
        cfg.auth.password_file = file.clone();
    })
    .await;
    let login = |user: &str, pw: &str| {
        let mut o = opts_v4(t.addr, user, true);
        o.set_credentials(user, pw);
        o
    };
    b4::connect(login("dev1", "pw-one"))
        .await
        .disconnect()
        .await;
    b4::connect(login("dev2", "pw-two"))
        .await
        .disconnect()
        .await;
    for (user, pw) in [("dev1", "pw-two"), ("dev3", "pw-three")] {
        assert!(
            matches!(
                b4::try_connect(login(user, pw)).await,
                Err(rumqttc::ConnectionError::ConnectionRefused(
                    rumqttc::ConnectReturnCode::BadUserNamePassword
                ))
            ),
            "{user}"
        );
    }
    t.gw.shutdown().await;

    // Mosquitto's broker, reading the same file.
    if !service::program(
        "mosquitto_pub",
        "mosquitto_pub (Debian package mosquitto-clients)",
    ) {
        return;
    }
    let port = crate::free_port();
    let conf = dir.path().join("mosquitto.conf");
    // `user root` keeps a root test run from switching to the mosquitto
    // user, who could not read the 0600 file; ignored when not root.
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\nuser root\n",
            file.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("mosquitto.log")).unwrap();
    // Debian puts the broker in /usr/sbin, often not on a user's PATH.
    let broker = ["/usr/sbin/mosquitto", "mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("mosquitto");
    let child = Command::new(broker)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn();
    let Ok(mut child) = child else {
        service::missing("the mosquitto broker (Debian package mosquitto)");
        return;
    };
    let started = common::within(10, async {
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    })
    .await;
    let answers = if started {
        Some((
            mosquitto_pub(port, "dev1", "pw-one").await,
            mosquitto_pub(port, "dev2", "pw-two").await,
            mosquitto_pub(port, "dev1", "pw-two").await,
        ))
    } else {
        None
    };
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(dir.path().join("mosquitto.log")).unwrap_or_default();
    assert_eq!(
        answers,
        Some((true, true, false)),
        "mosquitto's answers for dev1, dev2, dev1 with dev2's password; its log:\n{log}"
    );
}

/// Starts the binary on the embedded defaults with `listen`, waits until it
/// accepts, stops it, and returns its log.
async fn log_of_a_start(listen_ip: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::free_port();
    let log_path = dir.path().join("log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut cmd = crate::mqbridge_command();
    let mut child = cmd
        .env_remove("RUST_LOG")
        .env("MQBRIDGE__MQTT__LISTEN", format!("{listen_ip}:{port}"))
        .env("MQBRIDGE__ADMIN__LISTEN", "")
        .env("MQBRIDGE__STORE__PATH", dir.path().join("store"))
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("mqbridge starts");
    crate::wait_started(&mut child, port, &log_path).await;
    let _ = child.kill();
    let _ = child.wait();
    std::fs::read_to_string(&log_path).unwrap_or_default()
}

/// The embedded default lets anyone in and says so at start-up for a
/// listener reachable from other hosts, not for a loopback one.
#[tokio::test]
async fn the_default_warns_about_anonymous_access_off_loopback() {
    const WARNING: &str = "anonymous access is allowed on a non-loopback listener";
    let log = log_of_a_start("0.0.0.0").await;
    assert!(log.contains(WARNING), "{log}");
    let log = log_of_a_start("127.0.0.1").await;
    assert!(log.contains("mqbridge started"), "{log}");
    assert!(!log.contains(WARNING), "{log}");
}

/// SIGHUP makes the running binary read the password file again: a user
/// added with `mqbridge passwd` gets in without a restart.
#[tokio::test]
async fn sighup_reloads_the_password_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwords");
    assert!(passwd(&file, &["devA"], "pw-a\n"));
    let port = crate::free_port();
    let conf = dir.path().join("gw.toml");
    std::fs::write(
        &conf,
        format!(
            "[mqtt]\nlisten = \"127.0.0.1:{port}\"\n[admin]\nlisten = \"\"\n\
             [store]\npath = \"{}\"\n[auth]\nmethods = [\"password_file\"]\n\
             allow_anonymous = false\npassword_file = \"{}\"\nfailure_delay_after = 1000\n",
            dir.path().join("store").display(),
            file.display()
        ),
    )
    .unwrap();
    let log_path = dir.path().join("log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut cmd = crate::mqbridge_command();
    let mut child = cmd
        .arg("--config")
        .arg(&conf)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("mqbridge starts");
    crate::wait_started(&mut child, port, &log_path).await;
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let login = |user: &str, pw: &str| {
        let mut o = opts_v4(addr, user, true);
        o.set_credentials(user, pw);
        o
    };
    let refused = matches!(
        b4::try_connect(login("devB", "pw-b")).await,
        Err(rumqttc::ConnectionError::ConnectionRefused(
            rumqttc::ConnectReturnCode::BadUserNamePassword
        ))
    );
    assert!(passwd(&file, &["devB"], "pw-b\n"));
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    // The reload is asynchronous: retry for a while.
    let mut admitted = false;
    for _ in 0..50 {
        if let Ok(c) = b4::try_connect(login("devB", "pw-b")).await {
            c.disconnect().await;
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(refused, "devB got in before it was added\n{log}");
    assert!(hup, "kill -HUP failed");
    assert!(admitted, "devB not admitted after SIGHUP\n{log}");
    assert!(log.contains("authentication files reloaded"), "{log}");
}
