//! Client-id binding and session identity (docs/security.md section 4): the
//! attacks of issue 10 where device B connects with device A's client id to
//! take A's queued commands (CleanSession=0) or delete them
//! (CleanSession=1) now fail, on 3.1.1 and 5.0, also across a restart.

use std::path::Path;

use mqbridge::app::Gateway;
use mqbridge::auth::passwd::{update, Change};
use mqbridge::config::Config;
use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as C5;
use rumqttc::ConnectReturnCode as C4;
use rumqttc::QoS;

use crate::common::{b4, b5, opts_v4, opts_v5, test_config};

/// devA, devB and ops with passwords "pw-<user>" (few iterations: fast).
fn passwords(dir: &Path) -> std::path::PathBuf {
    let file = dir.join("passwords");
    for user in ["devA", "devB", "ops"] {
        let change = Change::Set {
            password: format!("pw-{user}").into_bytes(),
            iterations: 10,
        };
        update(&file, user, &change).expect("password file");
    }
    file
}

fn auth_config(store: &Path, file: &Path, binding: &str) -> Config {
    let mut cfg = test_config(store);
    cfg.auth.methods = vec!["password_file".into()];
    cfg.auth.allow_anonymous = false;
    cfg.auth.password_file = file.to_path_buf();
    cfg.auth.client_id = binding.into();
    // The refusals here are the point; no delay between them.
    cfg.auth.failure_delay_after = 1000;
    cfg
}

async fn start(cfg: Config) -> Gateway {
    Gateway::start(cfg.validate().expect("valid config"))
        .await
        .expect("gateway starts")
}

fn v4(gw: &Gateway, id: &str, user: &str, clean: bool) -> rumqttc::MqttOptions {
    let mut o = opts_v4(gw.mqtt_addr, id, clean);
    o.set_credentials(user, format!("pw-{user}"));
    o
}

fn v5(gw: &Gateway, id: &str, user: &str, clean: bool) -> rumqttc::v5::MqttOptions {
    let mut o = opts_v5(gw.mqtt_addr, id, clean, (!clean).then_some(3600));
    o.set_credentials(user, format!("pw-{user}"));
    o
}

async fn v4_refused(o: rumqttc::MqttOptions) -> C4 {
    match b4::try_connect(o).await {
        Err(rumqttc::ConnectionError::ConnectionRefused(code)) => code,
        Err(e) => panic!("expected a refusing CONNACK, got {e:?}"),
        Ok(_) => panic!("the impostor connected"),
    }
}

async fn v5_refused(o: rumqttc::v5::MqttOptions) -> C5 {
    match b5::try_connect(o).await {
        Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => code,
        Err(e) => panic!("expected a refusing CONNACK, got {e:?}"),
        Ok(_) => panic!("the impostor connected"),
    }
}

/// A's persistent session with one command queued while A is away.
async fn queue_command_for_a(gw: &Gateway, payload: &str) {
    let mut a = b4::connect(v4(gw, "devA", "devA", false)).await;
    a.subscribe("devices/devA/commands", QoS::AtLeastOnce).await;
    a.disconnect().await;
    let mut ops = b4::connect(v4(gw, "ops", "ops", true)).await;
    ops.publish(
        "devices/devA/commands",
        QoS::AtLeastOnce,
        false,
        payload.as_bytes(),
    )
    .await;
    ops.disconnect().await;
}

/// A reconnects: its session is there with the queued command.
async fn a_gets(gw: &Gateway, payload: &str) {
    let mut a = b4::connect(v4(gw, "devA", "devA", false)).await;
    assert!(a.session_present(), "A's session survived the attempts");
    let got = a.expect_publishes(1).await;
    assert_eq!(b4::payloads(&got), vec![payload.to_string()]);
    a.disconnect().await;
}

#[tokio::test]
async fn another_identity_can_neither_take_over_nor_delete_a_session() {
    let dir = tempfile::tempdir().unwrap();
    let file = passwords(dir.path());
    // Binding off: the session identity alone must stop B.
    let gw = start(auth_config(dir.path(), &file, "any")).await;
    queue_command_for_a(&gw, "unlock-door").await;
    for clean in [false, true] {
        assert_eq!(
            v4_refused(v4(&gw, "devA", "devB", clean)).await,
            C4::NotAuthorized,
            "3.1.1 CleanSession={clean}"
        );
        assert_eq!(
            v5_refused(v5(&gw, "devA", "devB", clean)).await,
            C5::NotAuthorized,
            "5.0 CleanStart={clean}"
        );
    }
    a_gets(&gw, "unlock-door").await;

    // Online: the impostor does not kick A.
    let mut a = b4::connect(v4(&gw, "devA", "devA", false)).await;
    v4_refused(v4(&gw, "devA", "devB", true)).await;
    let mut ops = b4::connect(v4(&gw, "ops", "ops", true)).await;
    ops.publish("devices/devA/commands", QoS::AtLeastOnce, false, b"still-a")
        .await;
    let got = a.expect_publishes(1).await;
    assert_eq!(b4::payloads(&got), vec!["still-a".to_string()]);
    a.disconnect().await;
    ops.disconnect().await;
    gw.shutdown().await;

    // The owner is stored with the session: still refused after a restart.
    let gw = start(auth_config(dir.path(), &file, "any")).await;
    queue_command_for_a(&gw, "after-restart").await;
    let gw = {
        gw.shutdown().await;
        start(auth_config(dir.path(), &file, "any")).await
    };
    assert_eq!(
        v4_refused(v4(&gw, "devA", "devB", true)).await,
        C4::NotAuthorized
    );
    a_gets(&gw, "after-restart").await;
    gw.shutdown().await;
}

#[tokio::test]
async fn username_binding_allows_only_the_own_client_id() {
    let dir = tempfile::tempdir().unwrap();
    let file = passwords(dir.path());
    let gw = start(auth_config(dir.path(), &file, "username")).await;
    b4::connect(v4(&gw, "devA", "devA", true))
        .await
        .disconnect()
        .await;
    // A device that never connected yet (e.g. a session preset by a
    // command) is bound too: nobody else may use its id.
    for id in ["devB", "devA-2", "ops"] {
        assert_eq!(
            v4_refused(v4(&gw, id, "devA", true)).await,
            C4::NotAuthorized,
            "{id}"
        );
        assert_eq!(
            v5_refused(v5(&gw, id, "devA", true)).await,
            C5::NotAuthorized,
            "{id}"
        );
    }
    // An empty client id gets the user name.
    let c = b5::connect(v5(&gw, "", "devB", true)).await;
    let assigned = c
        .connack
        .properties
        .as_ref()
        .and_then(|p| p.assigned_client_identifier.clone());
    assert_eq!(assigned.as_deref(), Some("devB"));
    c.disconnect().await;
    gw.shutdown().await;

    let gw = start(auth_config(dir.path(), &file, "username_prefix")).await;
    for id in ["devA", "devA-2", "devA:x"] {
        b4::connect(v4(&gw, id, "devA", true))
            .await
            .disconnect()
            .await;
    }
    for id in ["devA2", "devB-1"] {
        assert_eq!(
            v4_refused(v4(&gw, id, "devA", true)).await,
            C4::NotAuthorized,
            "{id}"
        );
    }
    gw.shutdown().await;
}

/// With `%u` ACL rules, an offline session restored at start-up is compiled
/// for its stored owner: a command published while its device is away (after
/// the restart) is queued and delivered, and another device still cannot
/// read it.
#[tokio::test]
async fn a_restored_session_keeps_its_owner_for_the_acl() {
    use mqbridge::config::AclRuleConfig;
    let dir = tempfile::tempdir().unwrap();
    let file = passwords(dir.path());
    let cfg = || {
        let mut c = auth_config(dir.path(), &file, "username");
        let rule = |permission: &str, action: &str, topic: &str, users: Option<Vec<String>>| {
            AclRuleConfig {
                permission: permission.into(),
                action: action.into(),
                topic: topic.into(),
                users,
            }
        };
        c.acl.rules = vec![
            rule("allow", "publish", "devices/#", Some(vec!["ops".into()])),
            rule("allow", "subscribe", "devices/%u/commands", None),
        ];
        c
    };
    let gw = start(cfg()).await;
    let mut a = b4::connect(v4(&gw, "devA", "devA", false)).await;
    let ack = a.subscribe("devices/devA/commands", QoS::AtLeastOnce).await;
    assert_eq!(
        ack.return_codes,
        vec![rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    a.disconnect().await;
    gw.shutdown().await;

    let gw = start(cfg()).await;
    let mut ops = b4::connect(v4(&gw, "ops", "ops", true)).await;
    ops.publish("devices/devA/commands", QoS::AtLeastOnce, false, b"open")
        .await;
    ops.disconnect().await;
    a_gets(&gw, "open").await;
    gw.shutdown().await;
}

/// `Gateway::reload` (SIGHUP) re-reads the password file: a user added
/// gets in without a restart; a file broken afterwards is refused and the
/// previous one stays in force.
#[tokio::test]
async fn reload_reads_the_password_file_again() {
    let dir = tempfile::tempdir().unwrap();
    let file = passwords(dir.path());
    let gw = start(auth_config(dir.path(), &file, "username")).await;
    let new_user = || {
        let mut o = opts_v4(gw.mqtt_addr, "devC", true);
        o.set_credentials("devC", "pw-devC");
        o
    };
    assert_eq!(v4_refused(new_user()).await, C4::BadUserNamePassword);
    let change = Change::Set {
        password: b"pw-devC".to_vec(),
        iterations: 10,
    };
    update(&file, "devC", &change).unwrap();
    assert_eq!(gw.reload(), 0, "reload succeeded");
    b4::connect(new_user()).await.disconnect().await;

    let good = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, format!("{good}devD:plain-text\n")).unwrap();
    assert_eq!(gw.reload(), 1, "a broken file fails the reload");
    b4::connect(new_user()).await.disconnect().await;
    b4::connect(v4(&gw, "devA", "devA", true))
        .await
        .disconnect()
        .await;
    gw.shutdown().await;
}
